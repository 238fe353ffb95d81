//! What arrives from the broker and the order event read out of it.

use uuid::Uuid;

/// One message as the broker delivered it.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Message headers (NATS headers, Kafka record headers), by name.
    pub headers: Vec<(String, String)>,
    /// The message key (Kafka), if any.
    pub key: Option<String>,
    /// The value: the relay's reference envelope `{"id", "type", "aggregate_id", "timestamp",
    /// …payload}`.
    pub value: Vec<u8>,
    /// Where it came from, for log lines (subject and stream sequence, or topic/partition@offset).
    pub origin: String,
}

impl Delivery {
    /// The first header of this name (exact, then without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .or_else(|| {
                self.headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.as_str())
    }
}

/// The event types the service acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `OrderCreated`: a shipment to prepare.
    Created,
    /// `OrderCancelled`: the shipment is cancelled.
    Cancelled,
    /// Any other type: recorded in the inbox, otherwise ignored.
    Other(String),
}

/// An order event read from a [`Delivery`].
#[derive(Debug, Clone)]
pub struct OrderEvent {
    /// The event id: the `id` header, else the value's `id`. The inbox dedupes by it.
    pub id: Uuid,
    /// Its type (`event_type` header, else the value's `type`).
    pub kind: EventKind,
    /// The order (the payload's `order_id`, else the value's `aggregate_id`, else the key).
    pub order_id: String,
    /// The relay's `seq` header, when present: the order of events within an order.
    pub seq: Option<i64>,
    /// The whole value.
    pub value: serde_json::Value,
}

impl OrderEvent {
    /// Reads the event, or says why the message is not one (a poison message).
    pub fn parse(d: &Delivery) -> Result<OrderEvent, String> {
        let value: serde_json::Value =
            serde_json::from_slice(&d.value).map_err(|e| format!("the value is not JSON: {e}"))?;
        let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let id = d
            .header("id")
            .map(str::to_string)
            .or_else(|| text("id"))
            .ok_or("no event id (neither an `id` header nor an `id` field)")?;
        let id = Uuid::parse_str(&id).map_err(|_| format!("the event id {id:?} is not a UUID"))?;
        let kind = match d
            .header("event_type")
            .map(str::to_string)
            .or_else(|| text("type"))
            .as_deref()
        {
            Some("OrderCreated") => EventKind::Created,
            Some("OrderCancelled") => EventKind::Cancelled,
            Some(other) => EventKind::Other(other.to_string()),
            None => return Err("no event type (`event_type` header or `type` field)".into()),
        };
        let order_id = text("order_id")
            .or_else(|| text("aggregate_id"))
            .or_else(|| d.key.clone())
            .ok_or("no order id (`order_id`, `aggregate_id` or the key)")?;
        let seq = match d.header("seq") {
            Some(s) => Some(
                s.parse::<i64>()
                    .map_err(|_| format!("the seq header {s:?} is not a number"))?,
            ),
            None => None,
        };
        Ok(OrderEvent {
            id,
            kind,
            order_id,
            seq,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(headers: &[(&str, &str)], value: &str) -> Delivery {
        Delivery {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: value.as_bytes().to_vec(),
            ..Delivery::default()
        }
    }

    #[test]
    fn reads_the_reference_envelope() {
        let id = "0190a6b2-1111-7000-8000-000000000001";
        let e = OrderEvent::parse(&delivery(
            &[("id", id), ("event_type", "OrderCreated"), ("seq", "7")],
            r#"{"id":"0190a6b2-1111-7000-8000-000000000001","type":"OrderCreated","aggregate_id":"o-1","order_id":"o-1"}"#,
        ))
        .unwrap();
        assert_eq!(e.id.to_string(), id);
        assert_eq!(e.kind, EventKind::Created);
        assert_eq!(e.order_id, "o-1");
        assert_eq!(e.seq, Some(7));
    }

    #[test]
    fn falls_back_to_the_value_and_refuses_poison() {
        let e = OrderEvent::parse(&delivery(
            &[],
            r#"{"id":"0190a6b2-1111-7000-8000-000000000002","type":"OrderCancelled","aggregate_id":"o-2"}"#,
        ))
        .unwrap();
        assert_eq!(e.kind, EventKind::Cancelled);
        assert_eq!(e.order_id, "o-2");
        assert_eq!(e.seq, None);
        for bad in [
            delivery(&[], "not json"),
            delivery(&[], r#"{"type":"OrderCreated","order_id":"o"}"#),
            delivery(
                &[("id", "nope")],
                r#"{"type":"OrderCreated","order_id":"o"}"#,
            ),
            delivery(
                &[("id", "0190a6b2-1111-7000-8000-000000000002"), ("seq", "x")],
                r#"{"type":"OrderCreated","order_id":"o"}"#,
            ),
        ] {
            assert!(OrderEvent::parse(&bad).is_err());
        }
    }
}
