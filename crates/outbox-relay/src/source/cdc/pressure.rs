//! Memory and slot pressure: the byte budget of the events a CDC session holds in memory, and
//! warnings that fire once when a condition starts and once when it clears.
//!
//! The budget counts every decoded event from the moment the reader makes it until the engine
//! is done with it (acknowledged or dead-lettered): the reader's open chunk, the items on
//! their way to the engine, the engine's queues, retries and the round out. The reader stops
//! reading from the replication stream while the budget is full (PostgreSQL keeps the WAL;
//! the replication client keeps sending standby status updates), and reads on once events
//! are done, once it is down to three quarters of its bound (so it reads in bursts, not an
//! event at a time). The first event is always admitted, so one event larger than the bound
//! still goes through: the budget never holds more than its bound plus one event.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::Gauge;
use tokio::sync::Notify;

/// Bytes of decoded events held in memory by a CDC relay, against a bound.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicU64,
    peak: AtomicU64,
    limit: u64,
    /// A reader held back by a full budget reads again below this.
    resume: u64,
    room: Notify,
    gauge: Gauge,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(u64::MAX, Gauge::noop())
    }
}

impl Budget {
    /// A budget of `limit` bytes (at least 1), reported to `gauge`.
    pub fn new(limit: u64, gauge: Gauge) -> Self {
        let limit = limit.max(1);
        Budget {
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            limit,
            resume: limit - limit / 4,
            room: Notify::new(),
            gauge,
        }
    }

    /// Counts `bytes` of a new event.
    pub fn take(&self, bytes: u64) {
        let now = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        self.gauge.set(now as f64);
    }

    /// An event of `bytes` is done (or dropped): wakes the reader when that makes room.
    pub fn release(&self, bytes: u64) {
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            })
            .unwrap_or_default();
        let now = before.saturating_sub(bytes);
        if before >= self.resume && now < self.resume {
            // Stored when nobody waits yet, so a reader about to wait still wakes.
            self.room.notify_one();
        }
        self.gauge.set(now as f64);
    }

    /// Forgets everything counted: a new session starts with nothing in memory.
    pub fn reset(&self) {
        self.used.store(0, Ordering::Release);
        self.gauge.set(0.0);
        self.room.notify_one();
    }

    /// True while no further event may be read.
    pub fn is_full(&self) -> bool {
        self.used.load(Ordering::Acquire) >= self.limit
    }

    /// Whether a reader may read: below the bound, or, once `held` back by a full budget,
    /// below three quarters of it.
    pub fn may_read(&self, held: bool) -> bool {
        self.used.load(Ordering::Acquire) < if held { self.resume } else { self.limit }
    }

    /// Resolves once events were done after the budget was full (may resolve early: check
    /// [`Budget::may_read`] again).
    pub async fn room(&self) {
        self.room.notified().await
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The bound.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// A condition that is logged when it starts and when it clears, not at every check.
#[derive(Debug, Default)]
pub(crate) struct Alarm(AtomicBool);

impl Alarm {
    /// Records the condition's state; `Some(state)` when it changed.
    pub fn set(&self, on: bool) -> Option<bool> {
        (self.0.swap(on, Ordering::Relaxed) != on).then_some(on)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_wakes_its_reader_once_there_is_room() {
        let b = std::sync::Arc::new(Budget::new(100, Gauge::noop()));
        b.take(60);
        assert!(!b.is_full());
        b.take(60);
        assert!(
            b.is_full(),
            "one event past the bound is admitted, then it is full"
        );
        assert!(!b.may_read(true) && !b.may_read(false));
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                while !b.may_read(true) {
                    b.room().await;
                }
                b.used()
            })
        };
        b.release(40);
        assert!(
            b.may_read(false) && !b.may_read(true),
            "80: under the bound, not 3/4"
        );
        b.release(20);
        let used = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the reader wakes")
            .unwrap();
        assert_eq!(used, 60);
        assert_eq!(b.peak(), 120);
        b.release(1000);
        assert_eq!(b.used(), 0, "never below zero");
    }

    #[test]
    fn an_alarm_reports_changes_only() {
        let a = Alarm::default();
        assert_eq!(a.set(false), None);
        assert_eq!(a.set(true), Some(true));
        assert_eq!(a.set(true), None);
        assert_eq!(a.set(false), Some(false));
    }
}
