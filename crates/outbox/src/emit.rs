//! Events without a table (PostgreSQL, for the CDC relay): [`emit`] writes an event as a
//! transactional logical decoding message instead of an outbox row.
//!
//! The writer inserts no row, so nothing needs vacuum or cleanup, and the CDC relay (`outbox
//! relay --source cdc`) decodes the message from its slot and routes it exactly like a row of
//! the table: same envelopes, topics, keys, headers, order per aggregate, dead letters. A
//! rolled-back transaction emits nothing. The polling relay never sees these events: use them
//! only with the CDC source.
//!
//! The message is plain SQL any language can write:
//!
//! ```sql
//! SELECT pg_logical_emit_message(true, 'outbox', json_build_object(
//!     'id', gen_random_uuid(), 'aggregate_type', 'Order', 'aggregate_id', '42',
//!     'event_type', 'OrderCreated', 'payload', json_build_object('total', 9.5))::text);
//! ```
//!
//! Its content is the row as a JSON object (the columns as keys: `id`, `aggregate_type`,
//! `aggregate_id`, `event_type`, `payload`, optionally `headers` and `created_at`); `true` makes
//! it transactional (required: a non-transactional message is ignored with a warning).

use std::collections::BTreeMap;

use crate::{Error, Event};

/// The logical decoding message prefix the CDC relay reads.
pub const MESSAGE_PREFIX: &str = "outbox";

/// Emits `event` as a transactional logical decoding message on `conn` (PostgreSQL), inside
/// whatever transaction `conn` is in: the CDC relay delivers it if and when that commits.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), outbox::Error> {
/// let mut tx = pool.begin().await?;
/// let event = outbox::Event::new("Order", "42", "OrderCreated", serde_json::json!({"total": 9.5}));
/// outbox::emit(&mut *tx, &event).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn emit(conn: &mut sqlx::PgConnection, event: &Event) -> Result<(), Error> {
    sqlx::query("SELECT pg_logical_emit_message(true, 'outbox', $1::text)")
        .bind(content(event)?)
        .execute(conn)
        .await
        .map_err(Error::from_query)?;
    Ok(())
}

/// Emits several events in one statement, in slice order (the order the relay delivers the
/// events of one aggregate in).
pub async fn emit_all(conn: &mut sqlx::PgConnection, events: &[Event]) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let contents = events.iter().map(content).collect::<Result<Vec<_>, _>>()?;
    // The function scan yields the array in order and the aggregate consumes it in order.
    sqlx::query(
        "SELECT count(pg_logical_emit_message(true, 'outbox', m)) \
         FROM unnest($1::text[]) WITH ORDINALITY AS t(m, n)",
    )
    .bind(&contents)
    .execute(conn)
    .await
    .map_err(Error::from_query)?;
    Ok(())
}

/// The message's content: the event as the row the relay would read, a JSON object, written in
/// one pass (the payload is serialized in place, never copied into a new `Value`).
fn content(event: &Event) -> Result<String, Error> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: uuid::Uuid,
        aggregate_type: &'a str,
        aggregate_id: &'a str,
        event_type: &'a str,
        payload: &'a serde_json::Value,
        #[serde(skip_serializing_if = "no_headers")]
        headers: &'a BTreeMap<String, String>,
    }
    fn no_headers(headers: &&BTreeMap<String, String>) -> bool {
        headers.is_empty()
    }
    Ok(serde_json::to_string(&Row {
        id: event.id(),
        aggregate_type: event.aggregate_type(),
        aggregate_id: event.aggregate_id(),
        event_type: event.event_type(),
        payload: event.payload(),
        headers: event.headers(),
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_content_is_the_row_as_json() {
        let e = Event::new("Order", "42", "OrderCreated", json!({"total": 9.5}))
            .with_header("traceparent", "00-abc");
        let v: serde_json::Value = serde_json::from_str(&content(&e).unwrap()).unwrap();
        assert_eq!(v["id"], json!(e.id()));
        assert_eq!(v["aggregate_type"], "Order");
        assert_eq!(v["aggregate_id"], "42");
        assert_eq!(v["event_type"], "OrderCreated");
        assert_eq!(v["payload"], json!({"total": 9.5}));
        assert_eq!(v["headers"], json!({"traceparent": "00-abc"}));
        let plain = Event::new("Order", "42", "OrderCreated", json!(null));
        let v: serde_json::Value = serde_json::from_str(&content(&plain).unwrap()).unwrap();
        assert!(v.get("headers").is_none());
    }
}
