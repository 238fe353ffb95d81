//! # outbox-relay
//!
//! The engine behind the `outbox relay` command. Events flow one way:
//!
//! ```text
//! store (outbox table) ──claim──▶ source ──Record──▶ route (topic + envelope) ──Message──▶ sink
//!        ▲                                                                                 │
//!        └──────────── delivery: published / retry later / dead letter ◀───────────────────┘
//! ```
//!
//! The modules are layers, each using only those below it (`ARCHITECTURE.md` lists them, and a
//! test checks it):
//!
//! 1. Foundation: [`error`], [`record`], [`message`] ([`Message`], [`SinkError`]), [`template`],
//!    [`retry`] ([`RetryPolicy`], [`retry::Backoff`]), [`duration`], [`urls`] ([`redact_url`]),
//!    [`stats`] (counters and metrics), [`health`] (what liveness and readiness probes read).
//! 2. [`route`]: from a record to a message (topic templates, envelopes, Debezium's
//!    EventRouter). [`sink`]: where messages go, one file per broker behind [`Sink`].
//! 3. [`delivery`]: publishes batches (aggregates concurrently, each in order) and makes the one
//!    retry / dead-letter decision both sources use.
//! 4. [`store`]: every SQL statement, per database: claim, settle, status, dead letters,
//!    cleanup, and the CDC source's control plane.
//! 5. [`source`]: where events come from: [`source::poll`] claims batches from the store,
//!    `source::cdc` (feature `cdc`) streams them by logical replication.
//! 6. [`relay`]: the polling relay's worker loop (and the CDC relay, re-exported).
#![warn(missing_docs)]

pub mod delivery;
pub mod duration;
pub mod error;
pub mod health;
pub mod message;
pub mod record;
pub mod relay;
pub mod retry;
pub mod route;
pub mod sink;
pub mod source;
pub mod stats;
pub mod store;
pub mod template;
pub mod urls;

pub use error::Error;
pub use message::{Message, SinkError};
pub use record::Record;
pub use relay::{Relay, RelayConfig};
pub use retry::RetryPolicy;
pub use route::Router;
pub use sink::Sink;
pub use stats::Stats;
pub use store::Store;
pub use urls::redact_url;
