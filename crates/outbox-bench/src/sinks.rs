//! The sinks a measurement publishes to, each emptied before and after: the benchmark's own
//! JetStream stream and Kafka topic deleted, its RabbitMQ queue (bound to the sink's default
//! exchange for the benchmark's routing key, so every message is routable) declared and
//! deleted, its Redis stream deleted; MQTT keeps nothing (QoS 1, no retained messages). The
//! pseudo-URL [`LOCAL_WEBHOOK`] is a webhook receiver in this process.

use std::sync::Arc;
use std::time::Duration;

use outbox_relay::sink::{self, SinkOptions};
use outbox_relay::Sink;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

use crate::error::BenchError;

/// JetStream stream the benchmark publishes to (deleted before and after each run).
pub const BENCH_STREAM: &str = "OUTBOX_BENCH";

/// Kafka topic the benchmark's events go to (the default topic template for `BenchOrder`).
const BENCH_TOPIC: &str = "benchorder-events";

/// RabbitMQ queue the benchmark binds to the sink's default exchange (`outbox`) for
/// [`BENCH_TOPIC`], declared before and deleted after each run.
const BENCH_QUEUE: &str = "outbox-bench";

/// `--sinks` pseudo-URL of a webhook receiver in this process (answers every POST with 200).
pub const LOCAL_WEBHOOK: &str = "webhook:local";

/// Deletes what the benchmark left in the sink's broker so each run starts empty.
pub async fn reset_sink(url: &str) {
    if url.starts_with("amqp://") {
        let _ = tokio::time::timeout(Duration::from_secs(15), amqp_queue(url, false)).await;
    }
    if url.starts_with("redis://") {
        let _ = tokio::time::timeout(Duration::from_secs(15), redis_delete(url)).await;
    }
    if url.starts_with("nats://") {
        let server = url.split('?').next().unwrap_or(url);
        if let Ok(Ok(client)) =
            tokio::time::timeout(Duration::from_secs(5), async_nats::connect(server)).await
        {
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(BENCH_STREAM).await;
        }
    }
    if url.starts_with("kafka://") {
        let _ =
            tokio::time::timeout(Duration::from_secs(15), delete_topics(url, &[BENCH_TOPIC])).await;
    }
}

/// Opens the sink at `url`, emptied first; NATS publishes to [`BENCH_STREAM`], RabbitMQ to a
/// queue of its own, [`LOCAL_WEBHOOK`] to a receiver in this process.
pub async fn open_sink(url: &str) -> Result<Arc<dyn Sink>, BenchError> {
    reset_sink(url).await;
    if url.starts_with("amqp://") {
        tokio::time::timeout(Duration::from_secs(15), amqp_queue(url, true))
            .await
            .map_err(|_| {
                BenchError::usage("RabbitMQ: declaring the benchmark queue timed out")
            })??;
    }
    let mut options = SinkOptions::default();
    options.nats.stream = BENCH_STREAM.into();
    if url == LOCAL_WEBHOOK {
        let address = crate::receiver::local_webhook().await?;
        return Ok(sink::from_url(&address, &options).await?);
    }
    Ok(sink::from_url(url, &options).await?)
}

/// Declares (`create`) or deletes the benchmark's RabbitMQ queue, bound to the sink's default
/// exchange (declared as the sink declares it) for [`BENCH_TOPIC`].
async fn amqp_queue(url: &str, create: bool) -> Result<(), BenchError> {
    use lapin::options::{
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    let failed = |e: lapin::Error| BenchError::usage(format!("RabbitMQ: {e}"));
    let server = url.split('?').next().unwrap_or(url);
    let conn = lapin::Connection::connect(server, lapin::ConnectionProperties::default())
        .await
        .map_err(failed)?;
    let channel = conn.create_channel().await.map_err(failed)?;
    if create {
        let exchange = outbox_relay::sink::amqp::AmqpOptions::default().exchange;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let table = FieldTable::default;
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                durable,
                table(),
            )
            .await
            .map_err(failed)?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(BENCH_QUEUE.into(), durable, table())
            .await
            .map_err(failed)?;
        channel
            .queue_bind(
                BENCH_QUEUE.into(),
                exchange.as_str().into(),
                BENCH_TOPIC.into(),
                QueueBindOptions::default(),
                table(),
            )
            .await
            .map_err(failed)?;
    } else {
        channel
            .queue_delete(BENCH_QUEUE.into(), QueueDeleteOptions::default())
            .await
            .map_err(failed)?;
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// Deletes the benchmark's Redis stream (named by the default topic template).
async fn redis_delete(url: &str) -> Result<(), BenchError> {
    let failed = |e: redis::RedisError| BenchError::usage(format!("Redis: {e}"));
    let server = url.split('?').next().unwrap_or(url);
    let client = redis::Client::open(server).map_err(failed)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(failed)?;
    redis::cmd("DEL")
        .arg(BENCH_TOPIC)
        .query_async::<()>(&mut conn)
        .await
        .map_err(failed)
}

/// Deletes `topics` on the Kafka cluster `url` names (`kafka://host:port[,host:port…]`, its
/// query's librdkafka properties such as `security.protocol` applied); missing topics are
/// ignored. The relay itself never deletes topics.
async fn delete_topics(url: &str, topics: &[&str]) -> Result<(), BenchError> {
    let rest = url
        .strip_prefix("kafka://")
        .ok_or_else(|| BenchError::usage("a Kafka URL starts with kafka://"))?;
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let bootstrap = authority
        .trim_end_matches('/')
        .split(',')
        .map(|broker| {
            let broker = broker.trim();
            if broker
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            {
                broker.to_string()
            } else {
                format!("{broker}:9092")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "outbox-bench");
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key.contains('.') {
            config.set(key.into_owned(), value.into_owned());
        }
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| BenchError::usage(format!("Kafka admin client: {e}")))?;
    let timeout = Duration::from_secs(30);
    let results = admin
        .delete_topics(
            topics,
            &AdminOptions::new()
                .request_timeout(Some(timeout))
                .operation_timeout(Some(timeout)),
        )
        .await
        .map_err(|e| BenchError::runtime(format!("Kafka: deleting topics: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(BenchError::runtime(format!(
                    "Kafka: deleting topic {topic}: {code}"
                )))
            }
        }
    }
    Ok(())
}
