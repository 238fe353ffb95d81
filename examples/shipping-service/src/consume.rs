//! The loop both brokers share: read a message, handle it in one transaction (retrying
//! database errors in place, so a later message never overtakes it), then acknowledge.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::crash::{Crash, Point};
use crate::event::{Delivery, OrderEvent};
use crate::shipments::{Outcome, Shipments};

/// What to do with a message once handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Committed (or a duplicate, or poison that can never be handled): acknowledge it.
    Ack,
    /// Shutting down before it was committed: leave it unacknowledged, the broker redelivers.
    Leave,
}

/// Handles one delivery: parse, transaction (with retries), crash points. Returns whether to
/// acknowledge it.
pub async fn handle(
    shipments: &Shipments,
    crash: &Crash,
    delivery: &Delivery,
    shutdown: &CancellationToken,
) -> Verdict {
    let event = match OrderEvent::parse(delivery) {
        Ok(e) => e,
        Err(why) => {
            // A message no retry can fix: logged and acknowledged so it does not block the rest.
            tracing::error!(origin = %delivery.origin, "skipping a message that is not an order event: {why}");
            return Verdict::Ack;
        }
    };
    let n = crash.next();
    let mut delay = Duration::from_millis(100);
    let outcome = loop {
        match shipments
            .handle(&event, || crash.at(Point::BeforeCommit, n))
            .await
        {
            Ok(outcome) => break outcome,
            Err(e) => {
                tracing::warn!(event_id = %event.id, error = %e, "handling failed; retrying in {delay:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Verdict::Leave,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    match outcome {
        Outcome::Applied => {
            tracing::debug!(event_id = %event.id, order_id = %event.order_id, kind = ?event.kind, "applied")
        }
        Outcome::Duplicate => {
            tracing::info!(event_id = %event.id, origin = %delivery.origin, "duplicate: already processed, acknowledging")
        }
        Outcome::Stale { latest } => {
            tracing::info!(event_id = %event.id, order_id = %event.order_id, seq = ?event.seq, latest, "stale: a newer event of this order was applied, skipping")
        }
        Outcome::Ignored => {
            tracing::debug!(event_id = %event.id, kind = ?event.kind, "not an event this service acts on")
        }
    }
    crash.at(Point::AfterCommit, n);
    Verdict::Ack
}

/// Waits `delay` (or less, on shutdown); true when shutting down.
pub async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}
