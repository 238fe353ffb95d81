//! `kafka://host:9092`: Apache Kafka (or any Kafka-protocol broker), via rdkafka / librdkafka.
//!
//! Delivered = the partition leader acknowledged the message with `acks=all` (every in-sync
//! replica has it): `publish` awaits the message's delivery report. The producer is
//! idempotent (`enable.idempotence=true`), so librdkafka's own retries neither duplicate nor
//! reorder messages within a partition.
//!
//! The message key is the aggregate id, and the default partitioner is `murmur2_random`
//! (the Java client's): one aggregate always lands in one partition, the same one a Java
//! producer would pick. The value is the envelope; the headers are the contract's (`id`,
//! `event_type`, `aggregate_type`, then the row's own), so consumers dedupe on the `id` header.
//!
//! Missing topics are created on first use (CreateTopics, `partitions` ×
//! `replication_factor`); topics known to exist are cached. Any librdkafka producer property
//! can be set in `[kafka.producer]` (or as a URL query parameter with a dot in its name),
//! TLS and SASL included (`security.protocol`, `ssl.ca.location`, `sasl.*`): librdkafka is built
//! with a vendored OpenSSL.

mod log;
mod options;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::{DeliveryFuture, OwnedDeliveryResult};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{ErrorKind, Message, Sink, SinkError};
use crate::urls::apply_params;
pub use log::KafkaLog;
pub use options::KafkaOptions;
use options::{config_error, parse_url, producer_config, validate_options};

type KafkaProducer = FutureProducer<KafkaLog>;

/// Publishes to Kafka and waits for each message's delivery report.
pub struct KafkaSink {
    /// The producer in use; replaced after a fatal producer error.
    producer: RwLock<Arc<KafkaProducer>>,
    /// Recreates the producer (fatal errors are final for a librdkafka instance).
    config: ClientConfig,
    admin: AdminClient<KafkaLog>,
    /// The producers' log context (shared state: an outage reported or not).
    log: KafkaLog,
    options: KafkaOptions,
    /// `kafka://host:port,…` without credentials, for logs.
    describe: String,
    /// Topics known to exist.
    topics: RwLock<HashSet<String>>,
    ensure: tokio::sync::Mutex<()>,
}

impl KafkaSink {
    /// Connects to `url`: `kafka://host:9092[,host2:9092…][?param=value…]`. Query parameters
    /// override `options`: `partitions`, `replication_factor`, `create_topics`,
    /// `message_timeout` (e.g. `10s`), and any librdkafka property (a name with a dot,
    /// e.g. `linger.ms=10`).
    ///
    /// No connection is made here: librdkafka connects in the background and reconnects after
    /// failures, so while the brokers are unreachable publishes fail as unavailable and events
    /// wait in the outbox.
    pub async fn connect(url: &str, options: &KafkaOptions) -> Result<Self, crate::Error> {
        let parsed = parse_url(url)?;
        let mut options = options.clone();
        let bad = |m: String| crate::Error::Config(format!("Kafka URL: {m}"));
        let known = "partitions, replication_factor, create_topics, message_timeout, or a \
                     librdkafka property such as linger.ms";
        apply_params(parsed.query.iter().map(|(k, v)| (k, v)), known, bad, |p| {
            match p.name {
                "partitions" => options.partitions = p.number("a number of partitions")?,
                "replication_factor" => {
                    options.replication_factor = p.number("a replication factor")?
                }
                "create_topics" => options.create_topics = p.boolean()?,
                "message_timeout" => options.message_timeout = p.duration()?,
                property if property.contains('.') => {
                    options.producer.insert(property.to_string(), p.text());
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        validate_options(&options)?;
        let config = producer_config(&parsed.bootstrap, &options);
        let log = KafkaLog::new(&format!("kafka://{}", parsed.bootstrap));
        let producer: KafkaProducer = config
            .create_with_context(log.clone())
            .map_err(|e| config_error(&e))?;
        let mut admin_config = config.clone();
        // The admin client never produces: no producer id to acquire.
        admin_config.set("enable.idempotence", "false");
        let admin: AdminClient<KafkaLog> = admin_config
            .create_with_context(log.quiet())
            .map_err(|e| config_error(&e))?;
        Ok(KafkaSink {
            producer: RwLock::new(Arc::new(producer)),
            config,
            admin,
            log,
            options,
            describe: format!("kafka://{}", parsed.bootstrap),
            topics: RwLock::new(HashSet::new()),
            ensure: tokio::sync::Mutex::new(()),
        })
    }

    fn producer(&self) -> Arc<KafkaProducer> {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn is_known(&self, topic: &str) -> bool {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    fn forget(&self, topic: &str) {
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// Makes sure `topic` exists (creating it when allowed), then remembers it.
    async fn ensure_topic(&self, topic: &str) -> Result<(), SinkError> {
        let _guard = self.ensure.lock().await;
        if self.is_known(topic) {
            return Ok(());
        }
        if self.options.create_topics {
            let new = NewTopic::new(
                topic,
                self.options.partitions,
                TopicReplication::Fixed(self.options.replication_factor),
            );
            let timeout = self.options.message_timeout.min(Duration::from_secs(30));
            let admin_options = AdminOptions::new()
                .request_timeout(Some(timeout))
                .operation_timeout(Some(timeout));
            let results = self
                .admin
                .create_topics([&new], &admin_options)
                .await
                .map_err(|e| {
                    SinkError::unavailable(format!("Kafka: creating topic {topic}: {e}"))
                })?;
            for result in results {
                match result {
                    Ok(_) => tracing::info!(
                        topic,
                        partitions = self.options.partitions,
                        replication_factor = self.options.replication_factor,
                        "created Kafka topic"
                    ),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, RDKafkaErrorCode::InvalidTopic)) => {
                        return Err(SinkError::permanent(format!(
                            "Kafka refused the topic name {topic:?} (invalid topic)"
                        )))
                    }
                    Err((
                        _,
                        code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                        | RDKafkaErrorCode::UnsupportedVersion
                        | RDKafkaErrorCode::PolicyViolation),
                    )) => {
                        // The topic may well exist (or be auto-created): try to publish.
                        tracing::warn!(topic, error = %code, "Kafka: could not create the topic; publishing anyway");
                    }
                    Err((_, code)) => {
                        return Err(SinkError::unavailable(format!(
                            "Kafka: creating topic {topic} ({} partitions, replication factor \
                             {}): {code}",
                            self.options.partitions, self.options.replication_factor
                        )))
                    }
                }
            }
        }
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
        Ok(())
    }

    /// Replaces a producer that hit a fatal error (a librdkafka instance cannot recover).
    fn replace(&self, failed: &Arc<KafkaProducer>) {
        let mut current = self.producer.write().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&current, failed) {
            return; // someone else already did
        }
        match self
            .config
            .create_with_context::<_, KafkaProducer>(self.log.clone())
        {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                drop(current);
                // Dropping a producer joins its polling thread: keep that off the async workers.
                tokio::task::spawn_blocking(move || drop(old));
                tracing::warn!("Kafka: replaced the producer after a fatal error");
            }
            Err(e) => tracing::warn!(error = %e, "Kafka: could not recreate the producer"),
        }
    }

    fn classify(
        &self,
        message: &Message,
        error: &KafkaError,
        producer: &Arc<KafkaProducer>,
    ) -> SinkError {
        let topic = &message.topic;
        let code = match error {
            KafkaError::MessageProduction(code) => *code,
            other => {
                return SinkError::unavailable(format!("Kafka publish to {topic} failed: {other}"))
            }
        };
        let text = match code {
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge => format!(
                "Kafka refused the message: too large ({} bytes of value, key and headers; \
                 see message.max.bytes): {code}",
                message_size(message)
            ),
            RDKafkaErrorCode::InvalidTopic => format!("Kafka refused the topic {topic:?}: {code}"),
            RDKafkaErrorCode::MessageTimedOut => format!(
                "Kafka: no delivery report within {:?} for {topic} (brokers unreachable or \
                 partition without leader?)",
                self.options.message_timeout
            ),
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                self.forget(topic);
                format!("Kafka: topic {topic} does not exist (yet)")
            }
            RDKafkaErrorCode::Fatal => {
                let reason = producer
                    .client()
                    .fatal_error()
                    .map(|(code, reason)| format!("{code}: {reason}"))
                    .unwrap_or_else(|| code.to_string());
                self.replace(producer);
                format!("Kafka producer failed fatally ({reason})")
            }
            // The idempotent producer's identity is no longer accepted (e.g. its epoch bump
            // after timed-out messages was refused): only a new producer id gets it going.
            RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::OutOfOrderSequenceNumber => {
                self.replace(producer);
                format!(
                    "Kafka refused the producer's idempotence state ({code}); starting a new producer"
                )
            }
            _ => match error_kind(code) {
                ErrorKind::Permanent => format!("Kafka refused the message for {topic}: {code}"),
                _ => format!("Kafka publish to {topic} failed: {code}"),
            },
        };
        SinkError {
            kind: error_kind(code),
            message: text,
            retry_after: None,
        }
    }
}

/// Whose failure a failed delivery is, by librdkafka's error code.
///
/// - [`ErrorKind::Permanent`], this message never fits: too large, an invalid topic name,
///   record, timestamp or argument, or a broker policy refusing it.
/// - [`ErrorKind::Unavailable`], the cluster's or the producer's trouble: brokers unreachable,
///   timed out or throttling, no leader or too few in-sync replicas, the topic missing,
///   authentication or authorization refused, storage failing, a fenced or fatally failed
///   producer (replaced), an unsupported broker version or setting.
/// - [`ErrorKind::Retryable`], any other answer about this message (e.g. a corrupt batch).
pub fn error_kind(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidTopic
        | C::InvalidRecord
        | C::InvalidTimestamp
        | C::InvalidArgument
        | C::BadMessage
        | C::PolicyViolation => ErrorKind::Permanent,
        C::MessageTimedOut
        | C::BrokerTransportFailure
        | C::Resolve
        | C::AllBrokersDown
        | C::OperationTimedOut
        | C::TimedOutQueue
        | C::QueueFull
        | C::RequestTimedOut
        | C::NetworkException
        | C::BrokerNotAvailable
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::ReplicaNotAvailable
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::ISRInsufficient
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::UnknownPartition
        | C::UnknownTopicId
        | C::ThrottlingQuotaExceeded
        | C::KafkaStorageError
        | C::SSL
        | C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::UnacceptableCredential
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::Fatal
        | C::Fenced
        | C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::UnknownProducerId
        | C::InvalidProducerIdMapping
        | C::OutOfOrderSequenceNumber
        | C::UnsupportedVersion
        | C::UnsupportedForMessageFormat
        | C::UnsupportedCompressionType
        | C::InvalidRequiredAcks
        | C::BrokerDestroy
        | C::DestroyBroker
        | C::PurgeQueue
        | C::PurgeInflight
        | C::Interrupted
        | C::CriticalSystemResource
        | C::FileSystem
        | C::RebootstrapRequired => ErrorKind::Unavailable,
        _ => ErrorKind::Retryable,
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        // One message is a wave of one: the same topic checks, queueing and delivery report.
        self.publish_all(std::slice::from_ref(message), 1)
            .await
            .pop()
            .unwrap_or_else(|| Err(SinkError::unavailable("Kafka: not sent")))
    }

    /// Hands the whole wave to librdkafka's queue at once, then awaits the delivery reports in
    /// order: no task or timer per message.
    async fn publish_all(
        &self,
        messages: &[Message],
        max_in_flight: usize,
    ) -> Vec<Result<(), SinkError>> {
        let mut results: Vec<Option<Result<(), SinkError>>> = vec![None; messages.len()];
        let mut topics: std::collections::HashMap<&str, Result<(), SinkError>> =
            std::collections::HashMap::new();
        for m in messages {
            if !topics.contains_key(m.topic.as_str()) {
                let check = match validate_topic(&m.topic) {
                    Ok(()) if !self.is_known(&m.topic) => self.ensure_topic(&m.topic).await,
                    other => other,
                };
                topics.insert(&m.topic, check);
            }
        }
        let producer = self.producer();
        let limit = max_in_flight.max(1);
        let mut pending: std::collections::VecDeque<(usize, DeliveryFuture)> =
            std::collections::VecDeque::with_capacity(messages.len().min(limit));
        for (i, m) in messages.iter().enumerate() {
            if let Some(Err(e)) = topics.get(m.topic.as_str()) {
                results[i] = Some(Err(e.clone()));
                continue;
            }
            let mut record = record(m);
            let started = std::time::Instant::now();
            loop {
                if pending.len() >= limit {
                    if let Some((j, report)) = pending.pop_front() {
                        results[j] = Some(self.reported(&messages[j], report.await, &producer));
                    }
                }
                match producer.send_result(record) {
                    Ok(report) => {
                        pending.push_back((i, report));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if started.elapsed() < self.options.message_timeout =>
                    {
                        // librdkafka's queue is full: wait for the oldest report, or a moment.
                        record = back;
                        match pending.pop_front() {
                            Some((j, report)) => {
                                let r = self.reported(&messages[j], report.await, &producer);
                                results[j] = Some(r);
                            }
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => {
                        results[i] = Some(Err(self.classify(m, &e, &producer)));
                        break;
                    }
                }
            }
        }
        for (j, report) in pending {
            results[j] = Some(self.reported(&messages[j], report.await, &producer));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(SinkError::unavailable("Kafka: not sent"))))
            .collect()
    }

    fn describe(&self) -> String {
        format!("{} (idempotent, acks=all)", self.describe)
    }
}

impl KafkaSink {
    /// What a delivery report says about `message`.
    fn reported(
        &self,
        message: &Message,
        report: Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
        producer: &Arc<KafkaProducer>,
    ) -> Result<(), SinkError> {
        match report {
            Ok(Ok(_)) => {
                self.log.delivered();
                Ok(())
            }
            Ok(Err((e, _))) => Err(self.classify(message, &e, producer)),
            Err(_) => Err(SinkError::unavailable(
                "Kafka: the producer went away before reporting the delivery",
            )),
        }
    }
}

/// The record for `message`: its topic, key, value and headers.
fn record(message: &Message) -> FutureRecord<'_, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
    for (key, value) in &message.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    FutureRecord::to(&message.topic)
        .key(message.key.as_bytes())
        .payload(message.value.as_ref())
        .headers(headers)
}

fn message_size(m: &Message) -> usize {
    m.value.len()
        + m.key.len()
        + m.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// Kafka topic names: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn validate_topic(topic: &str) -> Result<(), SinkError> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SinkError::permanent(format!(
            "{topic:?} is not a valid Kafka topic (1-249 characters of a-z, A-Z, 0-9, '.', '_', '-')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed() {
        let u = parse_url("kafka://127.0.0.1:19092").unwrap();
        assert_eq!(u.bootstrap, "127.0.0.1:19092");
        let u = parse_url("kafka://a:1,b/?partitions=6&linger.ms=10").unwrap();
        assert_eq!(u.bootstrap, "a:1,b:9092");
        assert_eq!(
            u.query,
            vec![
                ("partitions".to_string(), "6".to_string()),
                ("linger.ms".to_string(), "10".to_string())
            ]
        );
        let u = parse_url("kafka://[::1]:9092,[::1]").unwrap();
        assert_eq!(u.bootstrap, "[::1]:9092,[::1]:9092");
        for bad in [
            "kafka://",
            "kafka://a:x",
            "kafka://a:1,,b:2",
            "kafka://a:1/topic",
            "nats://a:1",
        ] {
            assert!(
                matches!(parse_url(bad), Err(crate::Error::Config(_))),
                "{bad}"
            );
        }
        for secret in [
            "kafka://user:secret@a:1",
            "kafka://a:x?sasl.password=secret",
        ] {
            match parse_url(secret) {
                Err(crate::Error::Config(m)) => assert!(!m.contains("secret"), "{m}"),
                _ => panic!("{secret} is refused"),
            }
        }
    }

    #[tokio::test]
    async fn bad_options_are_configuration_errors() {
        let o = KafkaOptions::default();
        for url in [
            "kafka://127.0.0.1:1?nope=1",
            "kafka://127.0.0.1:1?partitions=zero",
            "kafka://127.0.0.1:1?partitions=0",
            "kafka://127.0.0.1:1?replication_factor=0",
            "kafka://127.0.0.1:1?message_timeout=soon",
            "kafka://127.0.0.1:1?create_topics=maybe",
            "kafka://127.0.0.1:1?no.such.property=1",
            "kafka://127.0.0.1:1?linger.ms=abc",
        ] {
            assert!(
                matches!(
                    KafkaSink::connect(url, &o).await,
                    Err(crate::Error::Config(_))
                ),
                "{url}"
            );
        }
        let leaked = config_error(&KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for configuration property \"sasl.password\"".into(),
            "sasl.password".into(),
            "hunter2".into(),
        ));
        assert!(!leaked.to_string().contains("hunter2"), "{leaked}");
    }

    #[tokio::test]
    async fn connecting_needs_no_broker() {
        let sink = KafkaSink::connect(
            "kafka://127.0.0.1:1?partitions=6&linger.ms=1",
            &KafkaOptions::default(),
        )
        .await
        .expect("librdkafka connects in the background");
        assert_eq!(sink.options.partitions, 6);
        assert_eq!(sink.options.producer["linger.ms"], "1");
        assert!(sink.describe().starts_with("kafka://127.0.0.1:1"));
    }

    #[test]
    fn options_read_from_config() {
        let o: KafkaOptions = serde_json::from_str(
            r#"{"partitions": 6, "message_timeout": "5s",
                "producer": {"linger.ms": 10, "compression.type": "lz4", "enable.idempotence": true}}"#,
        )
        .unwrap();
        assert_eq!(o.partitions, 6);
        assert_eq!(o.message_timeout, Duration::from_secs(5));
        assert_eq!(o.producer["linger.ms"], "10");
        assert_eq!(o.producer["compression.type"], "lz4");
        assert_eq!(o.producer["enable.idempotence"], "true");
        assert!(serde_json::from_str::<KafkaOptions>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn topics_are_validated() {
        assert!(validate_topic("order-events").is_ok());
        assert!(validate_topic("outbox.event.Order_1").is_ok());
        for bad in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(250)] {
            let e = validate_topic(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Permanent, "{bad}");
        }
    }

    #[test]
    fn error_codes_are_classified() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidTopic,
            C::InvalidRecord,
            C::PolicyViolation,
        ] {
            assert_eq!(error_kind(code), ErrorKind::Permanent, "{code:?}");
        }
        for code in [
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::NotLeaderForPartition,
            C::TopicAuthorizationFailed,
            C::SaslAuthenticationFailed,
            C::ThrottlingQuotaExceeded,
            C::UnknownTopicOrPartition,
            C::Fatal,
            C::ProducerFenced,
        ] {
            assert_eq!(error_kind(code), ErrorKind::Unavailable, "{code:?}");
        }
        for code in [C::InvalidMessage, C::Unknown] {
            assert_eq!(error_kind(code), ErrorKind::Retryable, "{code:?}");
        }
    }
}
