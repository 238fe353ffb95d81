//! Sources: where events come from.
//!
//! * [`poll`]: claims batches from the outbox table (`FOR UPDATE SKIP LOCKED` on PostgreSQL),
//!   woken by `LISTEN/NOTIFY` so new events leave within milliseconds, with a poll interval as
//!   the fallback.

pub mod poll;
