//! The unit a source hands to the relay: one outbox row.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One event as read from the outbox table.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Delivery order (`seq` column).
    pub seq: i64,
    /// Event id: the dedupe key downstream.
    pub id: Uuid,
    /// Routes the event, e.g. `Order`.
    pub aggregate_type: String,
    /// Message key; order is kept per (aggregate_type, aggregate_id).
    pub aggregate_id: String,
    /// e.g. `OrderCreated`.
    pub event_type: String,
    /// The payload as JSON text.
    pub payload: String,
    /// Extra headers as a JSON object text, if any.
    pub headers: Option<String>,
    /// When the event was written.
    pub created_at: DateTime<Utc>,
    /// Failed attempts so far.
    pub retry_count: i32,
}

impl Record {
    /// The memory the record holds: itself and its strings (payload, headers, ids). What
    /// the byte budgets (`max_buffer_bytes`) and the `outbox_buffer_bytes` gauge count.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Record>()
            + self.aggregate_type.len()
            + self.aggregate_id.len()
            + self.event_type.len()
            + self.payload.len()
            + self.headers.as_ref().map_or(0, String::len)
    }

    /// The aggregate this event belongs to: order is kept within it.
    pub fn aggregate(&self) -> (&str, &str) {
        (&self.aggregate_type, &self.aggregate_id)
    }
}
