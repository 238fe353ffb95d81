//! Sinks: where messages go. One file per broker, all behind the [`Sink`] trait.
//!
//! A sink's `publish` returns once the broker has **acknowledged** the message (that is what lets
//! the relay mark the row published). The relay calls `publish` concurrently for different
//! aggregates and sequentially within one aggregate, then `flush` once per batch.
//!
//! Adding a sink: implement [`Sink`] in a new file, add its URL scheme to [`from_url`], put it
//! behind a cargo feature.

mod jsonl;
#[cfg(feature = "nats")]
pub mod nats;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

pub use jsonl::{FileSink, StdoutSink};

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

/// A message ready for a broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The event id (dedupe key).
    pub id: Uuid,
    /// Topic / subject / routing key / stream name.
    pub topic: String,
    /// Message key: the aggregate id.
    pub key: String,
    /// Serialized value (the envelope).
    pub value: Bytes,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
}

/// Whether a failed publish may succeed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Broker down, timeout, throttled: try again after a backoff.
    Retryable,
    /// The broker will never accept this message (too large, rejected): dead-letter it now.
    Permanent,
}

/// A failed publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError {
    /// Retry or give up.
    pub kind: ErrorKind,
    /// What happened, readable by an operator (stored in `last_error` / the dead-letter table).
    pub message: String,
    /// Earliest useful retry, when the broker said so (e.g. HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl SinkError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError {
            kind: ErrorKind::Retryable,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError {
            kind: ErrorKind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }

    /// True for [`ErrorKind::Retryable`].
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SinkError {}

/// A message broker (or file, or stdout) the relay delivers to.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Publishes one message and waits for the broker's acknowledgement.
    async fn publish(&self, message: &Message) -> Result<(), SinkError>;

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
    async fn flush(&self) -> Result<(), SinkError> {
        (**self).flush().await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Options for the sinks that take any, beyond their URL.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// NATS JetStream settings.
    #[cfg(feature = "nats")]
    pub nats: nats::NatsOptions,
}

/// The URL schemes this build can deliver to.
pub fn supported_schemes() -> Vec<&'static str> {
    let mut v = vec!["stdout:", "file:PATH", "noop:"];
    if cfg!(feature = "nats") {
        v.push("nats://host:4222");
    }
    v
}

/// Builds the sink a URL names. Unknown schemes and malformed URLs are configuration errors.
pub async fn from_url(url: &str, options: &SinkOptions) -> Result<Arc<dyn Sink>, crate::Error> {
    let _ = options;
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
    match scheme {
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
        _ => Err(crate::Error::Config(format!(
            "unknown sink {:?}: supported sinks are {}",
            crate::redact_url(url),
            supported_schemes().join(", ")
        ))),
    }
}
