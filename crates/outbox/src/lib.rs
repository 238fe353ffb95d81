//! # outbox
//!
//! The application side of the transactional outbox pattern: write your business row and an
//! [`Event`] in **the same database transaction**, and let the `outbox` relay deliver the event
//! to your message broker at least once, in order per aggregate.
//!
//! This crate depends on sqlx and serde only. It never talks to a broker.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::Event;
//! use serde_json::json;
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id, status) VALUES ($1, 'pending')")
//!     .bind(42_i64)
//!     .execute(&mut *tx)
//!     .await?;
//! let event = Event::new("Order", "42", "OrderCreated", json!({ "order_id": "42" }))
//!     .with_header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! outbox::enqueue(&mut *tx, &event).await?;
//! tx.commit().await?; // both rows, or neither
//! # Ok(()) }
//! ```
//!
//! Consumers apply each event once with the [`inbox`]: the event id recorded in their own
//! transaction, beside the event's effects.
//!
//! The table is a public contract (its columns are documented in the project README, under
//! "The table"): any language may insert into it with plain SQL. [`migrate()`] creates and
//! upgrades it, idempotently.
#![warn(missing_docs)]

pub mod adopt;
#[cfg(feature = "postgres")]
pub mod emit;
mod enqueue;
mod error;
mod event;
pub mod inbox;
pub mod migrate;

#[cfg(feature = "postgres")]
pub use emit::{emit, emit_all};
pub use enqueue::{enqueue, enqueue_all, OutboxConnection};
pub use error::{is_undefined_table, Error};
pub use event::Event;
pub use migrate::{migrate, SCHEMA_VERSION};

/// Name of the outbox table.
pub const OUTBOX_TABLE: &str = "outbox";
/// Name of the dead-letter table.
pub const DEAD_LETTER_TABLE: &str = "outbox_dead_letter";
/// PostgreSQL `NOTIFY` channel signalled after every insert into the outbox table.
pub const NOTIFY_CHANNEL: &str = "outbox";
