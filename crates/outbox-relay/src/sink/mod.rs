//! Sinks: where messages go. One file per broker, all behind the [`Sink`] trait.
//!
//! A sink's `publish` returns once the broker has **acknowledged** the message (that is what lets
//! the relay mark the row published). The relay hands a batch over in *waves*
//! ([`Sink::publish_all`]): the first event of every aggregate, then, once those are
//! acknowledged, the second of each, and so on; then `flush` once per batch. So events of
//! different aggregates travel together and an event never leaves before the one ahead of it
//! in its aggregate is acknowledged.
//!
//! Adding a sink: implement [`Sink`] in a new file (`publish`; `publish_all` too when the broker
//! can take a wave for less than a publish per message), add its URL scheme to [`from_url`],
//! put it behind a cargo feature.

#[cfg(feature = "amqp")]
pub mod amqp;
mod jsonl;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis_streams;
#[cfg(any(feature = "amqp", feature = "mqtt", feature = "redis"))]
mod tls;
#[cfg(feature = "http")]
pub mod webhook;

use std::sync::Arc;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};

pub use jsonl::{FileSink, StdoutSink};

pub use crate::message::{ErrorKind, Message, SinkError};

/// `noop:`: acknowledges everything at once. For benchmarks (it measures the relay and the
/// database alone) and dry runs; it delivers nothing anywhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopSink;

#[async_trait]
impl Sink for NoopSink {
    async fn publish(&self, _message: &Message) -> Result<(), SinkError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "noop".into()
    }
}

/// A message broker (or file, or stdout) the relay delivers to.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Publishes one message and waits for the broker's acknowledgement.
    async fn publish(&self, message: &Message) -> Result<(), SinkError>;

    /// Publishes a wave: messages of *different* aggregates (never two of one), each
    /// acknowledged or failed on its own. Answers one result per message, in the same order.
    ///
    /// The default publishes them concurrently through [`Sink::publish`], at most
    /// `max_in_flight` at once. A sink overrides it when the broker can take a wave for less
    /// than a publish per message (one acknowledgement inbox, one timer).
    async fn publish_all(
        &self,
        messages: &[Message],
        max_in_flight: usize,
    ) -> Vec<Result<(), SinkError>> {
        let mut results = vec![None; messages.len()];
        let mut running = futures::stream::FuturesUnordered::new();
        let mut waiting = messages.iter().enumerate();
        loop {
            while running.len() < max_in_flight.max(1) {
                let Some((i, m)) = waiting.next() else { break };
                running.push(self.publish(m).map(move |r| (i, r)));
            }
            let Some((i, r)) = running.next().await else {
                break;
            };
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(SinkError::unavailable("not published"))))
            .collect()
    }

    /// Makes everything published so far durable. Called once per batch, after its publishes;
    /// an error fails every message of the batch (they are retried).
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// A short description for logs, without secrets.
    fn describe(&self) -> String;
}

#[async_trait]
impl<S: Sink + ?Sized> Sink for Arc<S> {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        (**self).publish(message).await
    }
    async fn publish_all(
        &self,
        messages: &[Message],
        max_in_flight: usize,
    ) -> Vec<Result<(), SinkError>> {
        (**self).publish_all(messages, max_in_flight).await
    }
    async fn flush(&self) -> Result<(), SinkError> {
        (**self).flush().await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// A sink's kind, for metric labels: the scheme its description starts with (`nats`, `kafka`,
/// `webhook`, `noop`…), never its address.
pub fn kind(sink: &dyn Sink) -> String {
    let described = sink.describe();
    let kind: String = described
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(32)
        .collect();
    if kind.is_empty() {
        "other".into()
    } else {
        kind
    }
}

/// Options for the sinks, beyond their URL: one section each in the configuration file
/// (`[nats]`, `[kafka]`, `[amqp]`, `[redis]`, `[mqtt]`, `[http]`). A sink's URL query parameters
/// override its section.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkOptions {
    /// NATS JetStream settings.
    #[cfg(feature = "nats")]
    pub nats: nats::NatsOptions,
    /// Kafka settings.
    #[cfg(feature = "kafka")]
    pub kafka: kafka::KafkaOptions,
    /// RabbitMQ settings.
    #[cfg(feature = "amqp")]
    pub amqp: amqp::AmqpOptions,
    /// Redis Streams settings.
    #[cfg(feature = "redis")]
    pub redis: redis_streams::RedisOptions,
    /// MQTT settings.
    #[cfg(feature = "mqtt")]
    pub mqtt: mqtt::MqttOptions,
    /// HTTP webhook settings.
    #[cfg(feature = "http")]
    pub http: webhook::WebhookOptions,
}

/// The URL schemes this build can deliver to.
pub fn supported_schemes() -> Vec<&'static str> {
    let mut v = vec!["stdout:", "file:PATH", "noop:"];
    if cfg!(feature = "nats") {
        v.push("nats://host:4222");
    }
    if cfg!(feature = "kafka") {
        v.push("kafka://host:9092");
    }
    if cfg!(feature = "amqp") {
        v.push("amqp://user:pass@host:5672/vhost");
    }
    if cfg!(feature = "redis") {
        v.push("redis://host:6379");
    }
    if cfg!(feature = "mqtt") {
        v.push("mqtt://host:1883");
    }
    if cfg!(feature = "http") {
        v.push("http(s)://host/path");
    }
    v
}

/// Builds the sink a URL names. Unknown schemes and malformed URLs are configuration errors.
pub async fn from_url(url: &str, options: &SinkOptions) -> Result<Arc<dyn Sink>, crate::Error> {
    let _ = options;
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
    match scheme {
        "stdout" | "noop" if !matches!(&url[scheme.len() + 1..], "" | "//") => {
            Err(crate::Error::Config(format!(
                "sink {:?}: {scheme}: takes nothing after the colon (write {scheme}:)",
                crate::redact_url(url)
            )))
        }
        "stdout" => Ok(Arc::new(StdoutSink::new())),
        "noop" => Ok(Arc::new(NoopSink)),
        "file" => {
            let path = url["file:".len()..].trim_start_matches("//");
            if path.is_empty() {
                return Err(crate::Error::Config(
                    "sink file: needs a path, e.g. --sink file:events.jsonl".into(),
                ));
            }
            Ok(Arc::new(FileSink::create(path).await?))
        }
        #[cfg(feature = "nats")]
        "nats" | "tls" => Ok(Arc::new(nats::NatsSink::connect(url, &options.nats).await?)),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Arc::new(
            kafka::KafkaSink::connect(url, &options.kafka).await?,
        )),
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => Ok(Arc::new(amqp::AmqpSink::connect(url, &options.amqp).await?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(
            redis_streams::RedisSink::connect(url, &options.redis).await?,
        )),
        #[cfg(feature = "mqtt")]
        "mqtt" | "mqtts" => Ok(Arc::new(mqtt::MqttSink::connect(url, &options.mqtt).await?)),
        #[cfg(feature = "http")]
        "http" | "https" => Ok(Arc::new(
            webhook::WebhookSink::connect(url, &options.http).await?,
        )),
        _ => Err(crate::Error::Config(format!(
            "unknown sink {:?}: supported sinks are {}",
            crate::redact_url(url),
            supported_schemes().join(", ")
        ))),
    }
}
