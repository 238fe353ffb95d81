//! The polling source: claim a batch, hand it over, wait for more.
//!
//! Waiting is cheap and prompt. Right after a batch the source claims again at once; when it
//! finds nothing it waits 1 ms, then 2, 4, … up to the poll interval, so a busy relay notices new
//! events within a millisecond or two without any signal. Once idle (16 ms without events) a
//! PostgreSQL worker registers in `outbox_relay_waiting`, claims once more (closing the race with
//! writers that committed meanwhile) and sleeps: while someone waits there, the table's statement
//! trigger sends `NOTIFY outbox` and the `LISTEN` connection wakes the relay immediately. Busy
//! relays are not registered, so writers do not pay for NOTIFY (which makes committing
//! transactions take a database-wide lock in turn) while the relay would find their rows anyway.
//! When events wait in backoff, the source sleeps just until the earliest is due.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::health::Change;
use crate::retry::Backoff;
use crate::stats::Stats;
use crate::store::{Claim, Partition, Store};

/// First wait after an empty claim; it doubles up to the poll interval.
const MIN_IDLE: Duration = Duration::from_millis(1);
/// The poll interval where nothing wakes an idle relay (MySQL), unless configured: a new event
/// waits at most this long once the relay is idle (right after a batch it waits 1 ms).
pub const POLL_ONLY_INTERVAL: Duration = Duration::from_millis(100);
/// Idle this long, a worker registers for NOTIFY wake-ups.
const REGISTER_AFTER: Duration = Duration::from_millis(16);

/// Wake-ups shared by all workers of a relay: a counter bumped on every notification.
#[derive(Debug, Clone)]
pub struct Wakeups {
    rx: watch::Receiver<u64>,
}

impl Wakeups {
    /// Listens for `NOTIFY outbox` on PostgreSQL (nothing on SQLite). The listener reconnects by
    /// itself; after a reconnect it wakes everyone, since notifications may have been missed.
    pub async fn start(store: &Store, shutdown: CancellationToken) -> Result<Wakeups, Error> {
        let (tx, rx) = watch::channel(0u64);
        if let Some(mut listener) = store.listen().await? {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        n = listener.try_recv() => {
                            match n {
                                Ok(Some(_)) => {}
                                Ok(None) => tracing::debug!("LISTEN connection re-established"),
                                Err(e) => {
                                    tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                }
                            }
                            tx.send_modify(|v| *v = v.wrapping_add(1));
                        }
                    }
                }
            });
        } else {
            // Keep the sender alive so `changed()` waits rather than failing at once.
            tokio::spawn(async move {
                shutdown.cancelled().await;
                drop(tx);
            });
        }
        Ok(Wakeups { rx })
    }

    /// Wake-ups that never fire (tests, one-shot drains).
    pub fn none() -> Wakeups {
        let (tx, rx) = watch::channel(0u64);
        std::mem::forget(tx);
        Wakeups { rx }
    }
}

/// Settings of the polling source.
#[derive(Debug, Clone)]
pub struct PollOptions {
    /// Largest batch claimed at once.
    pub batch_size: usize,
    /// Largest batch in bytes of payloads and headers (the first event always comes).
    pub max_batch_bytes: u64,
    /// Longest wait between claims when nothing wakes the source.
    pub poll_interval: Duration,
    /// Whether a dead letter holds back the later events of its aggregate.
    pub dead_letters_block: bool,
    /// Delete rows once published instead of setting `published_at` (no history to clean up;
    /// markedly less database work per event).
    pub delete_published: bool,
}

impl Default for PollOptions {
    fn default() -> Self {
        PollOptions {
            batch_size: 2000,
            max_batch_bytes: 64 << 20,
            poll_interval: Duration::from_secs(1),
            dead_letters_block: true,
            delete_published: false,
        }
    }
}

/// One worker's view of the outbox table: yields non-empty claims until shutdown.
pub struct PollSource {
    store: Store,
    partition: Partition,
    /// This worker's name in `outbox_relay_waiting`.
    id: String,
    /// Current idle wait (doubles while claims come back empty).
    idle: Duration,
    /// Registered as waiting for NOTIFY.
    registered: bool,
    options: PollOptions,
    wake: Wakeups,
    stats: std::sync::Arc<Stats>,
    /// Pause after a failed claim (the database may be restarting).
    errors: Backoff,
}

impl PollSource {
    /// A source over `store`, claiming the aggregates of `partition`.
    pub fn new(
        store: Store,
        partition: Partition,
        options: PollOptions,
        wake: Wakeups,
        stats: std::sync::Arc<Stats>,
    ) -> Self {
        PollSource {
            store,
            partition,
            id: format!(
                "{}/{}/{}",
                std::process::id(),
                partition.index,
                uuid::Uuid::new_v4().simple()
            ),
            idle: Duration::ZERO,
            registered: false,
            options,
            wake,
            stats,
            errors: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        }
    }

    /// The database answered: says so once if it had not before.
    fn database_answered(&self) {
        if let Some(Change::Up { after }) = self.stats.health().database(true) {
            tracing::info!(
                database = %self.store.describe(),
                down_for = %humantime::format_duration(after),
                "database reachable again"
            );
        }
    }

    /// Removes this worker's NOTIFY registration (on shutdown).
    pub async fn unregister(&mut self) {
        if self.registered {
            self.registered = false;
            let _ = self.store.set_waiting(&self.id, false).await;
        }
    }

    /// Waits for the next non-empty batch. `None` once `shutdown` is cancelled. Database errors
    /// are logged and retried with a growing pause (the database may be restarting).
    pub async fn next_batch(&mut self, shutdown: &CancellationToken) -> Option<Claim> {
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            // Mark what we have seen *before* claiming: a notification that arrives during the
            // claim then still wakes the wait below.
            self.wake.rx.borrow_and_update();
            let health = self.stats.health();
            health.beat();
            let wait = match self
                .store
                .claim_bounded(
                    self.options.batch_size,
                    self.options.max_batch_bytes,
                    self.options.dead_letters_block,
                    self.partition,
                )
                .await
            {
                Ok(claim) if !claim.records.is_empty() => {
                    self.database_answered();
                    self.stats.claimed(claim.records.len());
                    self.errors.reset();
                    self.idle = Duration::ZERO;
                    if self.registered {
                        self.registered = false;
                        if let Err(e) = self.store.set_waiting(&self.id, false).await {
                            tracing::debug!(error = %e, "could not unregister as waiting");
                        }
                    }
                    return Some(claim);
                }
                Ok(claim) => {
                    self.database_answered();
                    self.errors.reset();
                    if claim.dead_lettered > 0 {
                        self.stats.dead_lettered_at_claim(claim.dead_lettered);
                    }
                    let contended = claim.contended;
                    let next_due = claim.next_due;
                    claim.release().await;
                    if contended {
                        // Another relay holds earlier events of these aggregates; it will be
                        // done within a batch.
                        Duration::from_millis(5 + fastrand::u64(0..20))
                    } else {
                        self.idle = (self.idle * 2)
                            .max(MIN_IDLE)
                            .min(self.options.poll_interval);
                        if self.idle >= REGISTER_AFTER
                            && (!self.registered || self.idle == self.options.poll_interval)
                        {
                            // Going to sleep: ask writers to NOTIFY (or refresh the request),
                            // then claim once more before sleeping.
                            match self.store.set_waiting(&self.id, true).await {
                                Ok(()) if !self.registered => {
                                    self.registered = true;
                                    continue;
                                }
                                Ok(()) => {}
                                Err(e) => {
                                    tracing::debug!(error = %e, "could not register as waiting")
                                }
                            }
                        }
                        next_due.map_or(self.idle, |d| d.min(self.idle))
                    }
                }
                Err(e) => {
                    self.stats.error();
                    let change = health.database(false);
                    let pause = self.errors.fail();
                    if matches!(e, Error::Schema(_)) {
                        tracing::error!(error = %e, "cannot claim events");
                    } else if change == Some(Change::Down) {
                        tracing::warn!(database = %self.store.describe(), error = %e, "database unreachable; events wait, retrying with backoff");
                    } else {
                        tracing::debug!(error = %e, retry_in = ?pause, "claiming events failed; will retry");
                    }
                    pause
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = self.wake.rx.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
