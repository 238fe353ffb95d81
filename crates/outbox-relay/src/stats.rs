//! Counters the relay keeps while it runs (for progress lines, status and metrics).

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals, shared by the relay's workers. Cheap to read at any time.
#[derive(Debug, Default)]
pub struct Stats {
    delivered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Events acknowledged by the sink and marked published.
    pub delivered: u64,
    /// Failed attempts that were scheduled for a retry.
    pub failed: u64,
    /// Events moved to the dead-letter table.
    pub dead_lettered: u64,
    /// Batches settled.
    pub batches: u64,
    /// Database errors the relay recovered from (claim or settle failed; the batch is redelivered).
    pub errors: u64,
}

impl Stats {
    pub(crate) fn settled(&self, delivered: usize, failed: usize, dead: usize) {
        self.delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.failed.fetch_add(failed as u64, Ordering::Relaxed);
        self.dead_lettered.fetch_add(dead as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}
