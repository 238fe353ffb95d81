//! # shipping-service
//!
//! The reference **consumer** of the outbox toolkit. It reads the order-service's events
//! (`OrderCreated`, `OrderCancelled` on `order-events`) from NATS JetStream (a durable pull
//! consumer, explicit acks) or Kafka (a consumer group, offsets committed by hand), and keeps a
//! `shipments` table in its own database — **effectively once**:
//!
//! 1. each message is handled in one database transaction that records the event id in the
//!    inbox ([`outbox::inbox::receive`]) and, for a new event, writes its effect;
//! 2. the message is acknowledged (NATS `ack`, Kafka offset commit) only after that commit.
//!
//! A crash before the commit leaves nothing: the broker redelivers and the event is processed.
//! A crash between the commit and the acknowledgement makes the broker redeliver an event that
//! is already applied: the inbox says [`Receipt::Duplicate`](outbox::inbox::Receipt) and it is
//! only acknowledged. Events of an order that arrive older than one already applied (by the
//! relay's `seq` header) are skipped ([`outbox::inbox::advance`]).
//!
//! Messages are handled one at a time, in the order the broker hands them out; a database
//! error is retried in place (with backoff) so a later event never overtakes an earlier one.
#![warn(missing_docs)]

pub mod consume;
pub mod crash;
mod error;
pub mod event;
pub mod kafka;
pub mod nats;
pub mod shipments;

pub use error::Error;
pub use event::{Delivery, EventKind, OrderEvent};
pub use shipments::{Outcome, Shipments};

/// The inbox consumer name, Kafka consumer group and NATS durable consumer by default.
pub const DEFAULT_NAME: &str = "shipping-service";
