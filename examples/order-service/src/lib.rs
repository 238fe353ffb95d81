//! # order-service
//!
//! The reference `OrderService` of the outbox toolkit: every write stores the order **and** its
//! outbox event in one database transaction, so an event exists exactly when its change
//! committed. The `outbox` relay then delivers the events (`aggregate_type` `Order`, key the
//! order id) to the broker.
//!
//! Works on PostgreSQL and SQLite:
//!
//! ```no_run
//! # async fn demo(pool: sqlx::SqlitePool) -> Result<(), order_service::OrderError> {
//! use order_service::{Item, OrderService};
//!
//! let service = OrderService::new(pool);
//! service.migrate().await?; // the outbox schema and the `orders` table
//! let item = Item { sku: "book-42".into(), quantity: 2, price: 12.5 };
//! let order = service.create_order("customer-7", vec![item], 25.0).await?; // + OrderCreated
//! service.cancel_order(order.id, "changed my mind").await?; // + OrderCancelled
//! # Ok(()) }
//! ```
//!
//! [`create_order_in`] and [`cancel_order_in`] do the same inside a transaction you own.
//! With the default `http` feature, [`http::router`] serves the service over HTTP; build
//! with `default-features = false` to leave axum out.
#![warn(missing_docs)]

#[cfg(feature = "http")]
pub mod http;
mod model;
mod service;
mod store;

pub use model::{
    Item, Order, OrderError, AGGREGATE_TYPE, ORDER_CANCELLED, ORDER_CREATED, STATUS_CANCELLED,
    STATUS_PENDING,
};
pub use service::{cancel_order_in, create_order_in, OrderPool, OrderService};
pub use store::OrderConnection;
