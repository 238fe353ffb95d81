//! The polling relay: claim → [`deliver`](crate::delivery::deliver) → [`plan`] → settle, on
//! one or more workers, each claiming its own partition of the aggregates.
//!
//! How a batch is published and what a failure means is [`crate::delivery`]'s job; this module
//! only runs the loop. A failed event is not slept on: it gets a `next_attempt_at` and the
//! worker moves on to other aggregates. (The CDC relay, [`CdcRelay`], is the other relay; it
//! lives with its source because it supervises replication sessions.)

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::delivery::{deliver, observe, plan};
use crate::error::Error;
use crate::record::Record;
use crate::retry::RetryPolicy;
use crate::route::Router;
use crate::sink::Sink;
use crate::source::poll::{PollOptions, PollSource, Wakeups};
use crate::stats::Stats;
use crate::store::{Backend, Partition, Store};

#[cfg(feature = "cdc")]
pub use crate::source::cdc::{CdcOptions, CdcRelay};

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How batches are claimed.
    pub poll: PollOptions,
    /// Claim loops running at once (PostgreSQL; SQLite always uses one). Each holds a database
    /// connection while its batch is in flight.
    pub workers: usize,
    /// Most publishes awaiting acknowledgement at once, per worker.
    pub max_in_flight: usize,
    /// Backoff and dead-lettering.
    pub retry: RetryPolicy,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            poll: PollOptions::default(),
            workers: 2,
            max_in_flight: 1024,
            retry: RetryPolicy::default(),
        }
    }
}

impl RelayConfig {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), Error> {
        if self.poll.batch_size == 0 || self.poll.batch_size > 100_000 {
            return Err(Error::Config(format!(
                "batch_size must be within 1..=100000, got {}",
                self.poll.batch_size
            )));
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(Error::Config(format!(
                "workers must be within 1..=64, got {}",
                self.workers
            )));
        }
        if self.max_in_flight == 0 {
            return Err(Error::Config("max_in_flight must be at least 1".into()));
        }
        if self.poll.poll_interval.is_zero() {
            return Err(Error::Config(
                "poll_interval must be greater than zero".into(),
            ));
        }
        self.retry.validate().map_err(Error::Config)
    }
}

/// A relay: a store to claim from, a router, a sink.
pub struct Relay {
    store: Store,
    sink: Arc<dyn Sink>,
    router: Arc<Router>,
    config: RelayConfig,
    stats: Arc<Stats>,
}

impl Relay {
    /// Puts the parts together. Its metrics go to the recorder installed now, if any.
    pub fn new(store: Store, sink: Arc<dyn Sink>, router: Router, config: RelayConfig) -> Self {
        let stats = Arc::new(Stats::new("poll", &crate::sink::kind(&*sink)));
        Relay {
            store,
            sink,
            router: Arc::new(router),
            config,
            stats,
        }
    }

    /// Live counters, metrics and health.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Delivers until `shutdown` is cancelled, then finishes the batches in flight and returns.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        self.config.validate()?;
        self.store.ensure_schema().await?;
        let listener_stop = CancellationToken::new();
        let wake = Wakeups::start(&self.store, listener_stop.clone()).await?;
        let workers = match self.store.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => self.config.workers,
        };
        tracing::info!(
            sink = %self.sink.describe(),
            workers,
            batch_size = self.config.poll.batch_size,
            topic = self.router.topic().as_str(),
            "relay started"
        );
        let worker = Arc::new(Worker {
            sink: self.sink.clone(),
            router: self.router.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
        });
        let mut set = JoinSet::new();
        for index in 0..workers {
            let source = PollSource::new(
                self.store.clone(),
                Partition {
                    index: index as u32,
                    count: workers as u32,
                },
                self.config.poll.clone(),
                wake.clone(),
                self.stats.clone(),
            );
            set.spawn(worker.clone().run(source, shutdown.clone()));
        }
        let mut panicked = None;
        while let Some(done) = set.join_next().await {
            if let Err(e) = done {
                // A worker panicked: stop the others too rather than run degraded.
                shutdown.cancel();
                panicked.get_or_insert(e.to_string());
            }
        }
        listener_stop.cancel();
        self.store.release().await;
        match panicked {
            Some(p) => Err(Error::Sink(format!("a relay worker failed: {p}"))),
            None => {
                tracing::info!("relay stopped");
                Ok(())
            }
        }
    }
}

/// What every worker of one relay runs with.
struct Worker {
    sink: Arc<dyn Sink>,
    router: Arc<Router>,
    config: RelayConfig,
    stats: Arc<Stats>,
}

impl Worker {
    /// Claims, delivers and settles batches from `source` until `shutdown`.
    async fn run(self: Arc<Self>, mut source: PollSource, shutdown: CancellationToken) {
        let Worker {
            sink,
            router,
            config,
            stats,
        } = &*self;
        let buffered = stats.buffer_bytes_gauge();
        while let Some(claim) = source.next_batch(&shutdown).await {
            // The batch is held in memory until it is settled.
            let bytes: usize = claim.records.iter().map(Record::size_bytes).sum();
            buffered.increment(bytes as f64);
            let outcomes = deliver(&claim.records, router, &**sink, config.max_in_flight).await;
            observe(&claim.records, &outcomes, &**sink, stats);
            let outage = stats.health().sink_failures_in_a_row();
            let mut settlement = plan(&claim.records, &outcomes, &config.retry, outage);
            settlement.delete_published = config.poll.delete_published;
            let (ok, failed, dead) = (
                settlement.published.len(),
                settlement.retry.len(),
                settlement.dead.len(),
            );
            let settled = claim.settle(&settlement).await;
            buffered.decrement(bytes as f64);
            match settled {
                Ok(()) => {
                    stats.settled(ok, failed, dead);
                    tracing::debug!(delivered = ok, failed, dead, "batch settled");
                }
                Err(e) => {
                    stats.error();
                    // The claim loop reports the database's state changes; this batch's
                    // loss of its bookkeeping is worth its own line.
                    let _ = stats.health().database(false);
                    tracing::warn!(
                        error = %e,
                        events = ok + failed + dead,
                        "recording a batch failed; its events stay pending and will be delivered again"
                    );
                }
            }
        }
        source.unregister().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        let mut c = RelayConfig::default();
        assert!(c.validate().is_ok());
        c.poll.batch_size = 0;
        assert!(c.validate().is_err());
    }
}
