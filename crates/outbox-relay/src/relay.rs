//! The delivery loop: claim → route → publish → settle, on one or more workers.
//!
//! Within a batch, events of *different* aggregates are published concurrently (acks awaited
//! together), events of the *same* aggregate one after the other, each waiting for the
//! previous one's acknowledgement. When one fails, the rest of its aggregate in the batch is
//! not attempted: nothing overtakes it. A failed event is not slept on: it gets a
//! `next_attempt_at` and the worker moves on to other aggregates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sink::{ErrorKind, Sink, SinkError};
use crate::source::poll::{PollOptions, PollSource, Wakeups};
use crate::store::{Backend, Partition, Settlement, Store};
use crate::{Error, Record, RetryPolicy, Router, Stats};

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
    /// Puts the parts together.
    pub fn new(store: Store, sink: Arc<dyn Sink>, router: Router, config: RelayConfig) -> Self {
        Relay {
            store,
            sink,
            router: Arc::new(router),
            config,
            stats: Arc::new(Stats::default()),
        }
    }

    /// Live counters.
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
        let parts = Arc::new(Parts {
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
            set.spawn(worker(source, parts.clone(), shutdown.clone()));
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

/// What the workers of one relay share.
struct Parts {
    sink: Arc<dyn Sink>,
    router: Arc<Router>,
    config: RelayConfig,
    stats: Arc<Stats>,
}

async fn worker(mut source: PollSource, parts: Arc<Parts>, shutdown: CancellationToken) {
    let Parts {
        sink,
        router,
        config,
        stats,
    } = &*parts;
    while let Some(claim) = source.next_batch(&shutdown).await {
        let outcomes = deliver(&claim.records, router, &**sink, config.max_in_flight).await;
        let mut settlement = plan(&claim.records, &outcomes, &config.retry);
        settlement.delete_published = config.poll.delete_published;
        let (ok, failed, dead) = (
            settlement.published.len(),
            settlement.retry.len(),
            settlement.dead.len(),
        );
        match claim.settle(&settlement).await {
            Ok(()) => {
                stats.settled(ok, failed, dead);
                tracing::debug!(delivered = ok, failed, dead, "batch settled");
            }
            Err(e) => {
                stats.error();
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

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The sink acknowledged it.
    Delivered,
    /// The sink (or routing) failed it.
    Failed(SinkError),
    /// Not tried: an earlier event of its aggregate failed in this batch.
    NotAttempted,
}

/// Publishes a batch: aggregates concurrently (at most `max_in_flight` at once), each
/// aggregate's events in order, stopping an aggregate at its first failure. Then flushes the
/// sink; if that fails, nothing in the batch counts as delivered.
pub async fn deliver(
    records: &[Record],
    router: &Router,
    sink: &dyn Sink,
    max_in_flight: usize,
) -> Vec<Outcome> {
    let mut chains: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let slot = *index.entry(r.aggregate()).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[slot].push(i);
    }
    let mut outcomes = vec![Outcome::NotAttempted; records.len()];
    let mut results = futures::stream::iter(chains)
        .map(|chain| async move {
            let mut done = Vec::with_capacity(chain.len());
            for i in chain {
                let result = match router.route(&records[i]) {
                    Ok(message) => sink.publish(&message).await,
                    Err(reason) => Err(SinkError::permanent(reason)),
                };
                match result {
                    Ok(()) => done.push((i, Outcome::Delivered)),
                    Err(e) => {
                        done.push((i, Outcome::Failed(e)));
                        break;
                    }
                }
            }
            done
        })
        .buffer_unordered(max_in_flight.max(1));
    while let Some(done) = results.next().await {
        for (i, outcome) in done {
            outcomes[i] = outcome;
        }
    }
    if outcomes.contains(&Outcome::Delivered) {
        if let Err(e) = sink.flush().await {
            for o in outcomes.iter_mut().filter(|o| **o == Outcome::Delivered) {
                *o = Outcome::Failed(SinkError::retryable(format!("flush: {e}")));
            }
        }
    }
    outcomes
}

/// Turns outcomes into the database writes: published, retry later, or dead-letter.
pub fn plan(records: &[Record], outcomes: &[Outcome], retry: &RetryPolicy) -> Settlement {
    let mut s = Settlement::default();
    let mut first_error: Option<&str> = None;
    for (r, o) in records.iter().zip(outcomes) {
        match o {
            Outcome::Delivered => s.published.push(r.seq),
            Outcome::NotAttempted => {}
            Outcome::Failed(e) => {
                first_error.get_or_insert(&e.message);
                let failures = u32::try_from(r.retry_count.max(0))
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                if e.kind == ErrorKind::Permanent {
                    tracing::warn!(id = %r.id, seq = r.seq, error = %e, "event cannot be delivered; moving it to the dead-letter table");
                    s.dead.push((r.seq, e.message.clone()));
                } else if retry.exhausted(failures) {
                    tracing::warn!(id = %r.id, seq = r.seq, attempts = failures, error = %e, "event failed too often; moving it to the dead-letter table");
                    s.dead.push((
                        r.seq,
                        format!("gave up after {failures} attempts: {}", e.message),
                    ));
                } else {
                    let delay = retry
                        .delay(failures)
                        .max(e.retry_after.unwrap_or(Duration::ZERO));
                    s.retry.push((r.seq, delay, e.message.clone()));
                }
            }
        }
    }
    if !s.retry.is_empty() {
        tracing::warn!(
            failed = s.retry.len(),
            error = first_error.unwrap_or(""),
            "deliveries failed; retrying with backoff"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Message;
    use async_trait::async_trait;
    use std::sync::Mutex;

    fn rec(seq: i64, agg: &str, retry_count: i32) -> Record {
        Record {
            seq,
            id: uuid::Uuid::now_v7(),
            aggregate_type: "Order".into(),
            aggregate_id: agg.into(),
            event_type: "E".into(),
            payload: format!(r#"{{"n":{seq}}}"#),
            headers: None,
            created_at: chrono::Utc::now(),
            retry_count,
        }
    }

    /// Records publishes; fails the aggregates listed.
    struct Recorder {
        seen: Mutex<Vec<String>>,
        fail: Vec<&'static str>,
        permanent: bool,
    }

    #[async_trait]
    impl Sink for Recorder {
        async fn publish(&self, m: &Message) -> Result<(), SinkError> {
            tokio::task::yield_now().await;
            self.seen.lock().unwrap().push(format!(
                "{}:{}",
                m.key,
                String::from_utf8_lossy(&m.value)
            ));
            if self.fail.contains(&m.key.as_str()) {
                return Err(if self.permanent {
                    SinkError::permanent("nope")
                } else {
                    SinkError::retryable("down")
                });
            }
            Ok(())
        }
        fn describe(&self) -> String {
            "recorder".into()
        }
    }

    #[tokio::test]
    async fn a_failure_stops_its_aggregate_but_not_others() {
        let records = vec![
            rec(1, "a", 0),
            rec(2, "b", 0),
            rec(3, "a", 0),
            rec(4, "b", 0),
        ];
        let sink = Recorder {
            seen: Mutex::default(),
            fail: vec!["a"],
            permanent: false,
        };
        let out = deliver(&records, &Router::default(), &sink, 16).await;
        assert!(matches!(out[0], Outcome::Failed(_)));
        assert_eq!(out[1], Outcome::Delivered);
        assert_eq!(out[2], Outcome::NotAttempted);
        assert_eq!(out[3], Outcome::Delivered);
        let seen = sink.seen.lock().unwrap().clone();
        assert!(
            !seen.iter().any(|s| s.contains("\"n\":3")),
            "a's second event must not be sent: {seen:?}"
        );
        let b: Vec<_> = seen.iter().filter(|s| s.starts_with("b:")).collect();
        assert!(b[0].contains("\"n\":2") && b[1].contains("\"n\":4"));
    }

    #[test]
    fn plan_retries_then_dead_letters() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let records = vec![
            rec(1, "a", 0),
            rec(2, "b", 2),
            rec(3, "c", 0),
            rec(4, "d", 0),
        ];
        let outcomes = vec![
            Outcome::Failed(SinkError::retryable("x")),
            Outcome::Failed(SinkError::retryable("y")),
            Outcome::Failed(SinkError::permanent("too big")),
            Outcome::Delivered,
        ];
        let s = plan(&records, &outcomes, &policy);
        assert_eq!(s.published, vec![4]);
        assert_eq!(s.retry.len(), 1);
        assert_eq!(s.retry[0].0, 1);
        assert_eq!(s.dead.len(), 2);
        assert_eq!(s.dead[0], (2, "gave up after 3 attempts: y".to_string()));
        assert_eq!(s.dead[1], (3, "too big".to_string()));
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut e = SinkError::retryable("slow down");
        e.retry_after = Some(Duration::from_secs(3600));
        let s = plan(
            &[rec(1, "a", 0)],
            &[Outcome::Failed(e)],
            &RetryPolicy::default(),
        );
        assert!(s.retry[0].1 >= Duration::from_secs(300));
    }

    #[test]
    fn config_validation() {
        let mut c = RelayConfig::default();
        assert!(c.validate().is_ok());
        c.poll.batch_size = 0;
        assert!(c.validate().is_err());
    }
}
