//! The live state of a CDC relay ([`CdcState`]), and the slot measurement that updates it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::PgPool;

use super::pressure::{Alarm, Budget};
use crate::store::replication;

/// Live state of a CDC relay, readable at any time.
#[derive(Debug, Default)]
pub struct CdcState {
    pub(super) confirmed: AtomicU64,
    pub(super) lag: AtomicI64,
    pub(super) retained: AtomicI64,
    pub(super) streaming: AtomicBool,
    pub(super) sessions: AtomicU64,
    pub(super) heartbeats: AtomicU64,
    /// Bytes of events in memory, against `max_buffer_bytes`.
    pub(super) buffer: Arc<Budget>,
    /// The slot retains more WAL than `max_retained_wal`.
    wal_alarm: Alarm,
}

impl CdcState {
    /// The state of a relay that has not measured its slot yet, counting buffered events in
    /// `buffer`.
    pub(super) fn new(buffer: Arc<Budget>) -> Self {
        CdcState {
            lag: AtomicI64::new(-1),
            retained: AtomicI64::new(-1),
            buffer,
            ..CdcState::default()
        }
    }

    /// The LSN confirmed to the slot (as a number).
    pub fn confirmed_lsn(&self) -> u64 {
        self.confirmed.load(Ordering::Relaxed)
    }
    /// The replication lag in bytes at the last measurement (-1 before the first).
    pub fn lag_bytes(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }
    /// WAL bytes the server retained for the slot at the last measurement (-1 before the
    /// first).
    pub fn retained_wal_bytes(&self) -> i64 {
        self.retained.load(Ordering::Relaxed)
    }
    /// Whether this relay holds the slot and streams from it.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }
    /// Replication sessions started so far.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }
    /// Heartbeats written into the WAL so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }
    /// Bytes of decoded events held in memory now (read, not yet delivered or dead-lettered).
    pub fn buffered_bytes(&self) -> u64 {
        self.buffer.used()
    }
    /// The most bytes of events held in memory at once so far; the relay keeps it within
    /// `max_buffer_bytes` plus one event.
    pub fn peak_buffered_bytes(&self) -> u64 {
        self.buffer.peak()
    }

    /// Measures the slot (lag, retained WAL), logs it, and warns once when the retained WAL
    /// passes `max_retained` and once when it is back under. `buffered`: events in memory.
    pub(super) async fn measure(
        &self,
        pool: &PgPool,
        slot: &str,
        max_retained: i64,
        buffered: usize,
    ) {
        let s = match replication::slot_state(pool, slot).await {
            Ok(Some(s)) => s,
            Ok(None) => return tracing::warn!(slot, "replication slot disappeared"),
            Err(e) => return tracing::debug!(error = %e, "measuring the replication lag failed"),
        };
        self.lag.store(s.lag_bytes, Ordering::Relaxed);
        self.retained.store(s.retained_wal_bytes, Ordering::Relaxed);
        let (lag_bytes, retained_wal_bytes) = (s.lag_bytes, s.retained_wal_bytes);
        tracing::info!(slot, lag_bytes, retained_wal_bytes, confirmed = %replication::format_lsn(s.confirmed_flush), buffered, buffered_bytes = self.buffer.used(), "replication lag");
        match self.wal_alarm.set(retained_wal_bytes > max_retained) {
            Some(true) => tracing::warn!(slot, lag_bytes, retained_wal_bytes, max_retained_wal = max_retained, "the replication slot retains more WAL than cdc.max_retained_wal: events are not being confirmed (is the sink down or slow?)"),
            Some(false) => tracing::warn!(slot, lag_bytes, retained_wal_bytes, max_retained_wal = max_retained, "the replication slot's retained WAL is back under cdc.max_retained_wal"),
            None => {}
        }
    }
}
