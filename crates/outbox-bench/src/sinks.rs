//! The sinks a measurement publishes to: opened on the benchmark's own JetStream stream, and
//! emptied before and after (the stream and the Kafka topic deleted).

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

/// Deletes the benchmark's NATS stream and Kafka topic so each run starts empty.
pub async fn reset_sink(url: &str) {
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

/// Opens the sink at `url`, emptied first; NATS publishes to [`BENCH_STREAM`].
pub async fn open_sink(url: &str) -> Result<Arc<dyn Sink>, BenchError> {
    reset_sink(url).await;
    let mut options = SinkOptions::default();
    options.nats.stream = BENCH_STREAM.into();
    Ok(sink::from_url(url, &options).await?)
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
