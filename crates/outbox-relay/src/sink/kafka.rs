//! `kafka://host:9092`: Kafka. (Being written: see the sinks issue.)

use async_trait::async_trait;

use super::{Message, Sink, SinkError};

/// Kafka settings (config section `[kafka]`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaOptions {}

/// Kafka sink.
pub struct KafkaSink {}

impl KafkaSink {
    /// Connects to `url`.
    pub async fn connect(url: &str, options: &KafkaOptions) -> Result<Self, crate::Error> {
        let _ = (url, options);
        Err(crate::Error::Config(
            "the kafka sink is not implemented yet".into(),
        ))
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn publish(&self, _message: &Message) -> Result<(), SinkError> {
        Err(SinkError::retryable("not implemented"))
    }
    fn describe(&self) -> String {
        "kafka".into()
    }
}
