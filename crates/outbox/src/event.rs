//! [`Event`]: one event as the application builds it (aggregate, type, JSON payload, headers),
//! before [`crate::enqueue`] writes it as an outbox row.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// One event to be delivered by the relay: a row of the `outbox` table.
///
/// The relay routes it by `aggregate_type` (topic `{aggregate_type lowercased}-events` by
/// default), keys it by `aggregate_id`, and keeps the order of events that share both.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    id: Uuid,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: Value,
    headers: BTreeMap<String, String>,
}

impl Event {
    /// A new event with a fresh UUIDv7 id (time-ordered, so ids sort by creation).
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: Value,
    ) -> Self {
        Event {
            id: Uuid::now_v7(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload,
            headers: BTreeMap::new(),
        }
    }

    /// Like [`Event::new`], serializing any `Serialize` value as the payload.
    pub fn from_serializable<T: Serialize + ?Sized>(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: &T,
    ) -> Result<Self, crate::Error> {
        Ok(Event::new(
            aggregate_type,
            aggregate_id,
            event_type,
            serde_json::to_value(payload)?,
        ))
    }

    /// Adds a message header (for example `traceparent`); delivered beside the contract's own.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Replaces the generated id, for callers that derive ids themselves (idempotent writers).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// The event id: the dedupe key consumers see.
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// The aggregate's type, e.g. `Order`.
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }
    /// The aggregate's id: the message key.
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
    /// The event's type, e.g. `OrderCreated`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The event body.
    pub fn payload(&self) -> &Value {
        &self.payload
    }
    /// Extra message headers.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// The headers as the JSON object stored in the `headers` column, or `None` when empty.
    pub(crate) fn headers_json(&self) -> Option<String> {
        if self.headers.is_empty() {
            None
        } else {
            serde_json::to_string(&self.headers).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_time_ordered_v7() {
        let a = Event::new("Order", "1", "OrderCreated", json!({}));
        let b = Event::new("Order", "1", "OrderCreated", json!({}));
        assert_eq!(a.id().get_version_num(), 7);
        assert!(a.id() < b.id());
    }

    #[test]
    fn headers_serialize_as_object_or_null() {
        let e = Event::new("Order", "1", "OrderCreated", json!({}));
        assert_eq!(e.headers_json(), None);
        let e = e.with_header("traceparent", "00-abc");
        assert_eq!(
            e.headers_json().as_deref(),
            Some(r#"{"traceparent":"00-abc"}"#)
        );
    }

    #[test]
    fn from_serializable_builds_payload() {
        #[derive(Serialize)]
        struct Created {
            order_id: String,
        }
        let e = Event::from_serializable(
            "Order",
            "7",
            "OrderCreated",
            &Created {
                order_id: "7".into(),
            },
        )
        .unwrap();
        assert_eq!(e.payload(), &json!({"order_id": "7"}));
    }
}
