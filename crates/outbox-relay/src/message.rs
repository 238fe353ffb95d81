//! What a sink receives and what it answers: a routed [`Message`], and a [`SinkError`] that says
//! whether a failed publish may succeed later. The types every layer above shares: the router
//! builds messages, sinks publish them, delivery judges their errors.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

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
