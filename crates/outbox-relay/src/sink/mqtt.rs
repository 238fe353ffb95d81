//! `mqtt://host:1883`: MQTT. (Being written: see the sinks issue.)

use async_trait::async_trait;

use super::{Message, Sink, SinkError};

/// MQTT settings (config section `[mqtt]`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttOptions {}

/// MQTT sink.
pub struct MqttSink {}

impl MqttSink {
    /// Connects to `url`.
    pub async fn connect(url: &str, options: &MqttOptions) -> Result<Self, crate::Error> {
        let _ = (url, options);
        Err(crate::Error::Config(
            "the mqtt sink is not implemented yet".into(),
        ))
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn publish(&self, _message: &Message) -> Result<(), SinkError> {
        Err(SinkError::retryable("not implemented"))
    }
    fn describe(&self) -> String {
        "mqtt".into()
    }
}
