//! The gauges that need a query (pending events, the oldest pending age, dead letters, and
//! for CDC the slot's lag and retained WAL), sampled every few seconds on a connection of the
//! sampler's own, never per batch. A sample that succeeds also tells readiness the database
//! answered; each round also runs the Prometheus recorder's upkeep.

use std::sync::Arc;
use std::time::Duration;

use metrics::Gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use outbox_relay::stats::names;
use outbox_relay::store::{replication, ConnectOptions, Store};
use outbox_relay::{Error, Stats};
use tokio_util::sync::CancellationToken;

/// How often the gauges are sampled.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What the sampler reads.
#[derive(Clone)]
pub struct Sampled {
    /// The database, for the sampler's own connection (never shown: it may hold a password).
    pub database_url: String,
    /// The database URL without secrets, for messages.
    pub database_shown: String,
    /// Sample pending events and the oldest pending age (the polling source: the CDC relay
    /// never marks rows, so its table has no "pending").
    pub pending: bool,
    /// CDC: the replication slot whose lag and retained WAL are sampled.
    pub slot: Option<String>,
}

struct Gauges {
    pending: Option<Gauge>,
    oldest_age: Option<Gauge>,
    dead_letters: Gauge,
    lag: Option<Gauge>,
    retained: Option<Gauge>,
}

/// Samples every [`INTERVAL`] until `shutdown`.
pub async fn run(
    sampled: Sampled,
    stats: Arc<Stats>,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) {
    let slot_gauge = |name: &'static str| {
        sampled
            .slot
            .as_ref()
            .map(|slot| metrics::gauge!(name, "slot" => slot.clone()))
    };
    let gauges = Gauges {
        pending: sampled
            .pending
            .then(|| metrics::gauge!(names::PENDING_EVENTS)),
        oldest_age: sampled
            .pending
            .then(|| metrics::gauge!(names::OLDEST_PENDING_AGE)),
        dead_letters: metrics::gauge!(names::DEAD_LETTERS),
        lag: slot_gauge(names::CDC_REPLICATION_LAG),
        retained: slot_gauge(names::CDC_SLOT_RETAINED_WAL),
    };
    let mut store: Option<Store> = None;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        handle.run_upkeep();
        let outcome = tokio::time::timeout(INTERVAL, async {
            if store.is_none() {
                let options = ConnectOptions {
                    max_connections: 1,
                    connect_timeout: INTERVAL,
                    ..ConnectOptions::default()
                };
                store = Some(Store::connect(&sampled.database_url, &options).await?);
            }
            match &store {
                Some(s) => sample(s, &sampled, &gauges).await,
                None => Ok(()),
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => stats.health().database_sampled(true),
            Ok(Err(e)) => {
                stats.health().database_sampled(false);
                tracing::debug!(error = %e, "sampling the metrics' gauges failed");
            }
            Err(_) => {
                stats.health().database_sampled(false);
                tracing::debug!("sampling the metrics' gauges timed out");
            }
        }
    }
}

async fn sample(store: &Store, sampled: &Sampled, g: &Gauges) -> Result<(), Error> {
    let backlog = store.backlog(sampled.pending).await?;
    g.dead_letters.set(backlog.dead_letters as f64);
    if let (Some(pending), Some(gauge)) = (backlog.pending, &g.pending) {
        gauge.set(pending as f64);
    }
    if let Some(gauge) = &g.oldest_age {
        gauge.set(backlog.oldest_pending_age_seconds.unwrap_or(0.0));
    }
    if let (Some(slot), Some(pool)) = (&sampled.slot, store.pg_pool()) {
        if let Some(state) = replication::slot_state(pool, slot).await? {
            if let Some(lag) = &g.lag {
                lag.set(state.lag_bytes as f64);
            }
            if let Some(retained) = &g.retained {
                retained.set(state.retained_wal_bytes as f64);
            }
        }
    }
    Ok(())
}
