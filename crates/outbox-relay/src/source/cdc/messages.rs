//! Events without a table: transactional logical decoding messages with the prefix `outbox`
//! (`pg_logical_emit_message(true, 'outbox', content)`, what `outbox::emit` writes). The
//! content is the row as a JSON object, its keys the columns: `{"id", "aggregate_type",
//! "aggregate_id", "event_type", "payload", "headers"}` for the contract's routing, or the
//! columns the EventRouter options name. The object goes through the same mapping as an
//! inserted row ([`RowMapper::event`]), so it is routed exactly like one: same envelopes,
//! topics, keys, headers, the same dead letters when it cannot be.
//!
//! A message has no `seq`: its LSN is its sequence (increasing within a transaction and
//! across them), and what the dead-letter table keeps. In a transaction that both inserts rows
//! and emits messages, its rows come first.

use serde_json::Value;

use super::rows::{Commit, Event, RowMapper};

/// The prefix of the messages the CDC source takes as events.
pub const PREFIX: &str = "outbox";

/// PostgreSQL type OIDs given to the message's values (they matter to the EventRouter: a
/// `jsonb` payload is expanded, a text one is a string).
const TEXT: u32 = 25;
const JSONB: u32 = 3802;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;
const BOOL: u32 = 16;

impl RowMapper {
    /// The event for an `outbox` message's content, found at `lsn` in `commit`'s transaction.
    pub fn message(&self, content: &[u8], lsn: u64, commit: &Commit) -> Event {
        let seq = i64::try_from(lsn).unwrap_or(i64::MAX);
        let parsed = serde_json::from_slice::<serde_json::Map<String, Value>>(content);
        let mut event = match parsed {
            Ok(object) => {
                let texts: Vec<(String, u32, Option<String>)> = object
                    .into_iter()
                    .filter(|(k, _)| k != "seq")
                    .map(|(k, v)| {
                        let (oid, text) = match v {
                            Value::Null => (TEXT, None),
                            Value::String(s) => (TEXT, Some(s)),
                            Value::Bool(b) => (BOOL, Some(b.to_string())),
                            Value::Number(n) if n.is_i64() || n.is_u64() => {
                                (INT8, Some(n.to_string()))
                            }
                            Value::Number(n) => (NUMERIC, Some(n.to_string())),
                            v @ (Value::Array(_) | Value::Object(_)) => {
                                (JSONB, Some(v.to_string()))
                            }
                        };
                        (k, oid, text)
                    })
                    .collect();
                let columns: Vec<(&str, u32)> =
                    texts.iter().map(|(k, oid, _)| (k.as_str(), *oid)).collect();
                let values: Vec<Option<&str>> =
                    texts.iter().map(|(_, _, v)| v.as_deref()).collect();
                let mapping = RowMapper::mapping(&self.routing, &columns)
                    .map_err(|why| format!("an outbox message at LSN {}: {why}", lsn_text(lsn)));
                self.event(
                    mapping.as_ref().map_err(Clone::clone),
                    &values,
                    commit,
                    None,
                )
            }
            Err(e) => {
                // Kept as it came (as text) so the dead letter shows what was sent.
                let text = String::from_utf8_lossy(content);
                let why = format!(
                    "an outbox message at LSN {} is not a JSON object: {e}",
                    lsn_text(lsn)
                );
                let mut ev = self.event(Err(why), &[], commit, None);
                ev.record.payload = Value::String(text.into_owned()).to_string();
                ev
            }
        };
        event.record.seq = seq;
        if let Some(origin) = event.origin.as_deref_mut() {
            origin.seq = seq;
        }
        event
    }
}

/// An LSN as PostgreSQL spells it (`16/B374D848`).
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}
