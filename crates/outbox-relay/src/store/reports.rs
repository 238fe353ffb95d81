//! What the store reports to commands and metrics: [`Status`] (`outbox status`), [`Backlog`]
//! (the metrics' sample), [`DeadLetter`] rows and their error history ([`FailedAttempt`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::replication::{CdcReaders, ReplicationSlot};
use super::truncate_error;

/// What `outbox status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// Events not yet delivered.
    pub pending: i64,
    /// Pending events that failed at least once.
    pub retrying: i64,
    /// Creation time of the oldest pending event.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Age of the oldest pending event, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Earliest scheduled retry.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Rows in the dead-letter table.
    pub dead_letters: i64,
    /// PostgreSQL: the database's logical replication slots (the CDC source's), with their
    /// replication lag in bytes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replication_slots: Vec<ReplicationSlot>,
    /// PostgreSQL with replication slots: the server's `max_slot_wal_keep_size` in bytes, -1
    /// when unlimited (a stalled slot then keeps WAL until the disk is full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_slot_wal_keep_size_bytes: Option<i64>,
    /// PostgreSQL: who reads the outbox table through logical replication. CDC never marks
    /// rows published: while it reads the table, `pending` counts rows, not a backlog (the
    /// slots' lag is the backlog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdc: Option<CdcReaders>,
}

impl Status {
    pub(crate) fn finish(mut self) -> Self {
        self.oldest_pending_age_seconds = self
            .oldest_pending_at
            .map(|t| ((Utc::now() - t).num_milliseconds().max(0) as f64) / 1000.0);
        self
    }
}

/// What [`Store::backlog`] samples for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Events not yet delivered (when asked for).
    pub pending: Option<i64>,
    /// Age of the oldest pending event, in seconds (`None` when none, or not asked for).
    pub oldest_pending_age_seconds: Option<f64>,
    /// Rows in the dead-letter table.
    pub dead_letters: i64,
}

/// A row of the dead-letter table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// The dead letter's own id.
    pub id: Uuid,
    /// The event's id.
    pub original_id: Uuid,
    /// The event's `seq`, restored on replay.
    pub seq: i64,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// Headers.
    pub headers: Option<serde_json::Value>,
    /// When the event was written.
    pub created_at: DateTime<Utc>,
    /// Attempts made.
    pub retry_count: i32,
    /// Why it was given up.
    pub error: String,
    /// When it was given up.
    pub failed_at: DateTime<Utc>,
    /// Its last failed attempts, oldest first, the final one included (empty for dead letters
    /// written before schema version 5).
    pub error_history: Vec<FailedAttempt>,
}

/// Failed attempts an event's error history keeps (the latest ones).
pub const ERROR_HISTORY_LEN: usize = 10;

/// One failed attempt of an event, as its error history (`error_history`, a JSON array,
/// oldest first) keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FailedAttempt {
    /// When it failed.
    pub at: DateTime<Utc>,
    /// Why (cut to [`MAX_ERROR_LEN`] characters).
    pub error: String,
    /// Whether it counted toward `max_attempts` (an outage does not).
    pub counted: bool,
}

impl FailedAttempt {
    /// A failure now.
    pub fn now(error: &str, counted: bool) -> FailedAttempt {
        FailedAttempt {
            at: Utc::now(),
            error: truncate_error(error),
            counted,
        }
    }

    /// Appends `attempt` to `history`, keeping the latest [`ERROR_HISTORY_LEN`].
    pub fn push(history: &mut Vec<FailedAttempt>, attempt: FailedAttempt) {
        history.push(attempt);
        if history.len() > ERROR_HISTORY_LEN {
            history.drain(..history.len() - ERROR_HISTORY_LEN);
        }
    }

    /// Reads a stored history; entries that are not failed attempts (a hand-edited column)
    /// are skipped, anything else is an empty history.
    pub(crate) fn parse_history(text: Option<&str>) -> Vec<FailedAttempt> {
        let Some(Ok(serde_json::Value::Array(items))) =
            text.map(serde_json::from_str::<serde_json::Value>)
        else {
            return Vec::new();
        };
        items
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }
}
