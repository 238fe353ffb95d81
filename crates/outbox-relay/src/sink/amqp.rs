//! `amqp://user:pass@host:5672/vhost`: RabbitMQ (AMQP 0.9.1). (Being written: see the sinks issue.)

use async_trait::async_trait;

use super::{Message, Sink, SinkError};

/// RabbitMQ (AMQP 0.9.1) settings (config section `[amqp]`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpOptions {}

/// RabbitMQ (AMQP 0.9.1) sink.
pub struct AmqpSink {}

impl AmqpSink {
    /// Connects to `url`.
    pub async fn connect(url: &str, options: &AmqpOptions) -> Result<Self, crate::Error> {
        let _ = (url, options);
        Err(crate::Error::Config(
            "the amqp sink is not implemented yet".into(),
        ))
    }
}

#[async_trait]
impl Sink for AmqpSink {
    async fn publish(&self, _message: &Message) -> Result<(), SinkError> {
        Err(SinkError::retryable("not implemented"))
    }
    fn describe(&self) -> String {
        "amqp".into()
    }
}
