//! Kafka: a consumer group with automatic commits off. A message's offset is committed
//! (synchronously) only after its transaction committed; after a crash the group resumes from
//! the last committed offset and the inbox recognises what was already applied.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::consume::{handle, pause, Verdict};
use crate::crash::Crash;
use crate::event::Delivery;
use crate::shipments::Shipments;
use crate::Error;

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// The topic (e.g. `order-events`).
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Extra librdkafka properties (e.g. `session.timeout.ms`), over the defaults.
    pub properties: Vec<(String, String)>,
}

impl KafkaSource {
    /// Consumes until `shutdown`; offsets are committed after each message's commit.
    pub async fn run(
        &self,
        shipments: &Shipments,
        crash: &Crash,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("client.id", "shipping-service");
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        let consumer: StreamConsumer = config
            .create()
            .map_err(|e| Error::Config(format!("Kafka consumer: {e}")))?;
        consumer
            .subscribe(&[self.topic.as_str()])
            .map_err(|e| Error::Broker(format!("cannot subscribe to {}: {e}", self.topic)))?;
        tracing::info!(brokers = %self.brokers, group = %self.group, topic = %self.topic, "consuming from Kafka");
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = consumer.recv() => next,
            };
            let message = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "consuming");
                    if pause(Duration::from_millis(500), shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let delivery = Delivery {
                headers: message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_string(), v.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                value: message.payload().unwrap_or_default().to_vec(),
                origin: format!(
                    "{}/{}@{}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                ),
            };
            if handle(shipments, crash, &delivery, shutdown).await == Verdict::Leave {
                break;
            }
            // A synchronous commit blocks until the broker answers: off the async workers.
            let committed =
                tokio::task::block_in_place(|| consumer.commit_message(&message, CommitMode::Sync));
            if let Err(e) = committed {
                // The group resumes before this offset: the inbox knows the event.
                tracing::warn!(origin = %delivery.origin, error = %e, "offset commit failed; the message will come again as a duplicate");
            }
        }
        // Leave the group now rather than after the session times out.
        consumer.unsubscribe();
        Ok(())
    }
}
