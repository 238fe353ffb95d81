//! Sources: where events come from.
//!
//! * [`poll`]: claims batches from the outbox table (`FOR UPDATE SKIP LOCKED` on PostgreSQL),
//!   woken by `LISTEN/NOTIFY` so new events leave within milliseconds, with a poll interval as
//!   the fallback.
//! * [`cdc`] (feature `cdc`): streams the table's inserts through PostgreSQL logical
//!   replication (`pgoutput`), with Debezium-compatible outbox routing.

#[cfg(feature = "cdc")]
pub mod cdc;
pub mod poll;
