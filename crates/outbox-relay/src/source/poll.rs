//! The polling source: claim a batch, hand it over, wait for more.
//!
//! Waiting is cheap and prompt: on PostgreSQL a `LISTEN outbox` connection turns every commit
//! of an event (the table's statement trigger sends `NOTIFY outbox`) into an immediate wake-up;
//! the poll interval is only the fallback (and the rhythm on SQLite). When events wait in
//! backoff, the source sleeps just until the earliest is due.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{Claim, Partition, Store};
use crate::{Error, Stats};

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
        if let Some(pool) = store.pg_pool() {
            let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
            listener.listen(outbox::NOTIFY_CHANNEL).await?;
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
            batch_size: 500,
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
    options: PollOptions,
    wake: Wakeups,
    stats: std::sync::Arc<Stats>,
    errors_in_a_row: u32,
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
            options,
            wake,
            stats,
            errors_in_a_row: 0,
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
            let wait = match self
                .store
                .claim_partition(
                    self.options.batch_size,
                    self.options.dead_letters_block,
                    self.partition,
                )
                .await
            {
                Ok(claim) if !claim.records.is_empty() => {
                    self.errors_in_a_row = 0;
                    return Some(claim);
                }
                Ok(claim) => {
                    self.errors_in_a_row = 0;
                    let wait = if claim.contended {
                        // Another relay holds earlier events of these aggregates; it will be
                        // done within a batch.
                        Duration::from_millis(5 + fastrand::u64(0..20))
                    } else {
                        claim.next_due.map_or(self.options.poll_interval, |d| {
                            d.min(self.options.poll_interval)
                        })
                    };
                    claim.release().await;
                    wait
                }
                Err(e) => {
                    self.stats.error();
                    self.errors_in_a_row += 1;
                    let pause = Duration::from_millis(100 * 2u64.pow(self.errors_in_a_row.min(6)))
                        .min(Duration::from_secs(5));
                    if matches!(e, Error::Schema(_)) {
                        tracing::error!(error = %e, "cannot claim events");
                    } else {
                        tracing::warn!(error = %e, retry_in = ?pause, "claiming events failed; will retry");
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
