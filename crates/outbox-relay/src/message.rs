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

/// Whose failure a failed publish is, and whether it may succeed later.
///
/// Only the *message's* failures count toward `max_attempts`: [`ErrorKind::Retryable`] and
/// [`ErrorKind::Permanent`]. A sink that cannot be reached, timed out as a whole or refuses the
/// relay's credentials fails every message alike; that is [`ErrorKind::Unavailable`], which
/// never counts as an attempt and never dead-letters: the relay backs off and holds order
/// until the sink is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The broker answered and failed *this message* in a way that may pass later (a nack,
    /// an error status for this request): counts as an attempt, retried with backoff, and
    /// dead-lettered after `max_attempts`.
    Retryable,
    /// The broker will never accept this message (too large, rejected, cannot be routed):
    /// dead-letter it now.
    Permanent,
    /// The sink itself is down: unreachable, connection lost, timed out as a whole,
    /// throttling, or refusing the relay's credentials. Not the message's fault: not counted,
    /// never dead-lettered; the relay backs off and tries again.
    Unavailable,
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

    /// A failure of the sink rather than of the message: unreachable, timed out as a whole,
    /// refusing credentials. Never counted as an attempt.
    pub fn unavailable(message: impl Into<String>) -> Self {
        SinkError {
            kind: ErrorKind::Unavailable,
            message: message.into(),
            retry_after: None,
        }
    }

    /// True when trying again may succeed: [`ErrorKind::Retryable`] or
    /// [`ErrorKind::Unavailable`].
    pub fn is_retryable(&self) -> bool {
        self.kind != ErrorKind::Permanent
    }

    /// True for [`ErrorKind::Unavailable`]: the sink, not the message, failed.
    pub fn is_unavailable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SinkError {}
