//! `redis://host:6379`: Redis Streams. (Being written: see the sinks issue.)

use async_trait::async_trait;

use super::{Message, Sink, SinkError};

/// Redis Streams settings (config section `[redis]`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisOptions {}

/// Redis Streams sink.
pub struct RedisSink {}

impl RedisSink {
    /// Connects to `url`.
    pub async fn connect(url: &str, options: &RedisOptions) -> Result<Self, crate::Error> {
        let _ = (url, options);
        Err(crate::Error::Config(
            "the redis sink is not implemented yet".into(),
        ))
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn publish(&self, _message: &Message) -> Result<(), SinkError> {
        Err(SinkError::retryable("not implemented"))
    }
    fn describe(&self) -> String {
        "redis".into()
    }
}
