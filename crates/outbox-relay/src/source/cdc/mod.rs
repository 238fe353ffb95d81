//! The CDC source: PostgreSQL logical replication (`pgoutput`) of the outbox table.
//!
//! ```text
//! walsender ──pgwire-replication──▶ reader.rs: decode (pgoutput.rs), assemble transactions,
//!                                   map rows (rows.rs: contract columns or the EventRouter)
//!                                        │ Items, in commit order (bounded channel)
//!                                        ▼
//!                                   engine.rs: rounds through delivery::deliver, retries in
//!                                   memory, dead letters, confirmed LSN ──▶ status updates
//! ```
//!
//! `session.rs` supervises it all ([`CdcRelay`]: standby, reconnects, heartbeats, lag),
//! `connect.rs` opens the replication connection (the database URL's libpq parameters, TLS),
//! `config.rs` holds the settings ([`CdcOptions`]); every SQL statement is in
//! [`crate::store::replication`] (slot, publication, checks) and [`crate::store::cdc`] (dead
//! letters).
//!
//! * **Events**: inserts into the captured table(s). Deletes are ignored (so
//!   insert-then-delete in one transaction keeps the table empty), updates are ignored with a
//!   warning (or stop the relay, per `table.op.invalid.behavior`). Transactions leave in commit
//!   order; within a round, aggregates are published concurrently and each aggregate's events
//!   one after another.
//! * **No loss**: the slot's confirmed LSN only moves past transactions whose every event the
//!   sink acknowledged (or that went to the dead-letter table). A relay killed at any point
//!   resumes from the slot and redelivers at most that unacknowledged tail.
//! * **Retries** happen in memory with the relay's backoff; other aggregates keep flowing.
//!   After `max_attempts` an event is written to `outbox_dead_letter` (later events of its
//!   aggregate follow it there, unless dead letters do not block).
//! * **Slot safety**: heartbeats (`pg_logical_emit_message`) and keep-alive positions move an
//!   idle or filtered slot forward; the lag in bytes is logged and shown by `outbox status`.
//! * **One reader per slot**: PostgreSQL lets one session stream from a slot. A second relay
//!   stands by, polling the slot, and takes over within about a second of the first one's
//!   death.
//! * The CDC relay never updates outbox rows (no `published_at`): cleaning the table is the
//!   application's job (Debezium users often delete in the same transaction).

mod config;
mod connect;
pub mod connector;
mod engine;
pub mod messages;
pub mod pgoutput;
mod pressure;
mod reader;
mod rows;
mod session;
mod state;

pub use config::CdcOptions;
pub use connector::Connector;
pub use rows::CdcRouting;
pub use session::CdcRelay;
pub use state::CdcState;

pub use crate::store::replication::{ReplicationSlot, TableName};
