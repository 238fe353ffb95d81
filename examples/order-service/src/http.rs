//! The HTTP API (feature `http`).
//!
//! | Request                                | Response                                   |
//! |----------------------------------------|--------------------------------------------|
//! | `POST /orders` `{customer_id, items, total}` | `201` and the order                  |
//! | `POST /orders/{id}/cancel` `{reason}`  | `200` and the order, `404`, `409`          |
//! | `GET /orders/{id}`                     | `200` and the order, `404`                 |
//! | `GET /healthz`                         | `200`                                      |
//!
//! Errors are JSON: `{"error": "…"}`.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::{Item, Order, OrderError, OrderService};

/// The API's routes, served by `service`.
pub fn router(service: OrderService) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .with_state(service)
}

/// Body of `POST /orders`.
#[derive(Debug, Deserialize)]
struct CreateOrder {
    customer_id: String,
    items: Vec<Item>,
    total: f64,
}

/// Body of `POST /orders/{id}/cancel`.
#[derive(Debug, Deserialize)]
struct CancelOrder {
    reason: String,
}

async fn create_order(
    State(service): State<OrderService>,
    Json(body): Json<CreateOrder>,
) -> Result<Response, ApiError> {
    let order = service
        .create_order(&body.customer_id, body.items, body.total)
        .await?;
    let location = format!("/orders/{}", order.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(order),
    )
        .into_response())
}

async fn get_order(
    State(service): State<OrderService>,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    match service.get_order(id).await? {
        Some(order) => Ok(Json(order)),
        None => Err(ApiError(OrderError::NotFound(id))),
    }
}

async fn cancel_order(
    State(service): State<OrderService>,
    Path(id): Path<Uuid>,
    Json(body): Json<CancelOrder>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(service.cancel_order(id, &body.reason).await?))
}

/// An [`OrderError`] as an HTTP response.
struct ApiError(OrderError);

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0 {
            OrderError::NotFound(_) => StatusCode::NOT_FOUND,
            OrderError::AlreadyCancelled(_) => StatusCode::CONFLICT,
            OrderError::Database(_) | OrderError::Outbox(_) => {
                tracing::error!(error = %self.0, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}
