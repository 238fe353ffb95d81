//! The writer: commits events for many aggregates throughout a scenario, straight to the
//! private PostgreSQL (its Unix socket: the relays' proxies do not stand in its way). Each
//! event's payload is `{"n": k}`, `k` counting up per aggregate; one writer per lane and one
//! statement at a time, so an aggregate's events commit in the order of their `n`.
//!
//! A statement that fails (the database is restarting) may or may not have committed: the
//! writer never reuses its numbers, and what was written is read back from the table at the
//! end, not taken from the writer's word.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::profile::Profile;

/// What the writer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterStats {
    /// Statements that committed.
    pub committed: usize,
    /// Statements that failed (committed or not: unknown).
    pub failed: usize,
}

/// A running writer.
pub struct Writer {
    stop: CancellationToken,
    bursts: mpsc::Sender<(usize, oneshot::Sender<bool>)>,
    task: JoinHandle<WriterStats>,
}

struct State {
    pool: sqlx::PgPool,
    aggregate_type: String,
    next: Vec<i64>,
    stats: WriterStats,
}

impl Writer {
    /// Starts writing events of `aggregate_type` through `pool`, at `profile`'s pace.
    pub fn start(pool: sqlx::PgPool, aggregate_type: &str, profile: &Profile) -> Writer {
        let stop = CancellationToken::new();
        let (bursts, mut requests) = mpsc::channel::<(usize, oneshot::Sender<bool>)>(4);
        let mut state = State {
            pool,
            aggregate_type: aggregate_type.to_string(),
            next: vec![0; profile.aggregates],
            stats: WriterStats::default(),
        };
        let (per_tick, tick) = (profile.events_per_tick, profile.tick);
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(tick);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    Some((per_aggregate, done)) = requests.recv() => {
                        let ok = state.burst(per_aggregate).await;
                        let _ = done.send(ok);
                    }
                    _ = ticks.tick() => {
                        if !state.tick(per_tick).await {
                            // The database is away: do not spin on it.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            state.stats
        });
        Writer { stop, bursts, task }
    }

    /// Writes `per_aggregate` events for every aggregate in one statement (a backlog for the
    /// relays) and returns once it committed (true) or failed.
    pub async fn burst(&self, per_aggregate: usize) -> bool {
        let (done, answer) = oneshot::channel();
        if self.bursts.send((per_aggregate, done)).await.is_err() {
            return false;
        }
        tokio::time::timeout(Duration::from_secs(120), answer)
            .await
            .is_ok_and(|r| r.unwrap_or(false))
    }

    /// Stops writing (after the statement in flight) and reports.
    pub async fn stop(self) -> WriterStats {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the writer stops within 60s")
            .expect("the writer task")
    }
}

impl State {
    /// One statement: one event for each of `count` distinct random aggregates.
    async fn tick(&mut self, count: usize) -> bool {
        let picked = fastrand::choose_multiple(0..self.next.len(), count);
        self.write(&picked).await
    }

    async fn burst(&mut self, per_aggregate: usize) -> bool {
        let all: Vec<usize> = (0..per_aggregate)
            .flat_map(|_| 0..self.next.len())
            .collect();
        self.write(&all).await
    }

    /// Inserts one event per entry of `aggregates` (indices; repeats allowed), in that order.
    async fn write(&mut self, aggregates: &[usize]) -> bool {
        let mut ids = Vec::with_capacity(aggregates.len());
        let mut ns = Vec::with_capacity(aggregates.len());
        for &a in aggregates {
            ids.push(format!("a{a}"));
            ns.push(self.next[a]);
            // Never reused, whatever becomes of this statement.
            self.next[a] += 1;
        }
        let result = sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             SELECT $1, a, 'Step', jsonb_build_object('n', n)
             FROM unnest($2::text[], $3::int8[]) WITH ORDINALITY AS t(a, n, o) ORDER BY o",
        )
        .bind(&self.aggregate_type)
        .bind(&ids)
        .bind(&ns)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => self.stats.committed += 1,
            Err(_) => self.stats.failed += 1,
        }
        result.is_ok()
    }
}
