//! `http(s)://host/path`: HTTP webhooks. (Being written: see the sinks issue.)

use async_trait::async_trait;

use super::{Message, Sink, SinkError};

/// HTTP webhooks settings (config section `[http]`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookOptions {}

/// HTTP webhooks sink.
pub struct WebhookSink {}

impl WebhookSink {
    /// Connects to `url`.
    pub async fn connect(url: &str, options: &WebhookOptions) -> Result<Self, crate::Error> {
        let _ = (url, options);
        Err(crate::Error::Config(
            "the http sink is not implemented yet".into(),
        ))
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn publish(&self, _message: &Message) -> Result<(), SinkError> {
        Err(SinkError::retryable("not implemented"))
    }
    fn describe(&self) -> String {
        "http".into()
    }
}
