//! The order aggregate, its events and the service's errors.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// The outbox `aggregate_type` of every order event.
pub const AGGREGATE_TYPE: &str = "Order";
/// Event type written when an order is created.
pub const ORDER_CREATED: &str = "OrderCreated";
/// Event type written when an order is cancelled.
pub const ORDER_CANCELLED: &str = "OrderCancelled";
/// Status of a new order.
pub const STATUS_PENDING: &str = "pending";
/// Status of a cancelled order.
pub const STATUS_CANCELLED: &str = "cancelled";

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Stock-keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Unit price.
    pub price: f64,
}

/// An order, as stored in the `orders` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Order {
    /// Order id (UUIDv7); also the outbox `aggregate_id`, hyphenated.
    pub id: Uuid,
    /// Who ordered.
    pub customer_id: String,
    /// What was ordered.
    pub items: Vec<Item>,
    /// Order total.
    pub total: f64,
    /// [`STATUS_PENDING`] or [`STATUS_CANCELLED`].
    pub status: String,
    /// When the order was created.
    pub created_at: DateTime<Utc>,
    /// When the order was cancelled, if it was.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Why the order was cancelled, if it was.
    pub cancellation_reason: Option<String>,
}

impl Order {
    /// A new pending order with a fresh UUIDv7 id.
    pub(crate) fn new(customer_id: &str, items: Vec<Item>, total: f64) -> Order {
        Order {
            id: Uuid::now_v7(),
            customer_id: customer_id.to_string(),
            items,
            total,
            status: STATUS_PENDING.to_string(),
            created_at: now(),
            cancelled_at: None,
            cancellation_reason: None,
        }
    }

    /// Marks this order cancelled now, for `reason`.
    pub(crate) fn cancel(&mut self, reason: &str) {
        self.status = STATUS_CANCELLED.to_string();
        self.cancelled_at = Some(now());
        self.cancellation_reason = Some(reason.to_string());
    }

    /// True once the order is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.status == STATUS_CANCELLED
    }

    /// The `OrderCreated` event for this order.
    pub(crate) fn created_event(&self) -> outbox::Event {
        self.event(
            ORDER_CREATED,
            json!({
                "order_id": self.id,
                "customer_id": self.customer_id,
                "items": self.items,
                "total": self.total,
                "status": self.status,
                "created_at": self.created_at,
            }),
        )
    }

    /// The `OrderCancelled` event for this order.
    pub(crate) fn cancelled_event(&self) -> outbox::Event {
        self.event(
            ORDER_CANCELLED,
            json!({
                "order_id": self.id,
                "reason": self.cancellation_reason,
                "cancelled_at": self.cancelled_at,
            }),
        )
    }

    fn event(&self, event_type: &str, payload: serde_json::Value) -> outbox::Event {
        outbox::Event::new(
            AGGREGATE_TYPE,
            self.id.hyphenated().to_string(),
            event_type,
            payload,
        )
    }
}

/// The current time at the precision PostgreSQL stores (microseconds), so a stored order
/// reads back equal to the value returned when it was written.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Errors of the [`OrderService`](crate::OrderService).
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// No order has this id.
    #[error("order {0} not found")]
    NotFound(Uuid),
    /// The order was cancelled before.
    #[error("order {0} is already cancelled")]
    AlreadyCancelled(Uuid),
    /// The database rejected a statement or the connection failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Writing the outbox event failed.
    #[error("outbox error: {0}")]
    Outbox(#[from] outbox::Error),
}
