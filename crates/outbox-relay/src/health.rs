//! What liveness and readiness probes need to know about a running relay, kept up to date where
//! things happen: the loops beat, the sources report whether the database answered, delivery
//! reports whether the sink answered, and the CDC session reports its phase (standby,
//! streaming). Plain atomics: a report costs a clock read and a store, once per batch.
//!
//! The probes' policy (how old is too old) belongs to whoever serves them: [`Health::alive`]
//! and [`Health::problems`] take it as arguments.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Where a CDC relay is: it streams only while it holds its replication slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdcPhase {
    /// Starting or reconnecting: not streaming yet.
    Connecting,
    /// Another reader holds the slot; this relay waits to take over.
    Standby,
    /// This relay holds the slot and streams from it.
    Streaming,
}

const PHASE_NONE: u8 = 0;
const PHASE_CONNECTING: u8 = 1;
const PHASE_STANDBY: u8 = 2;
const PHASE_STREAMING: u8 = 3;

/// The health of one relay. Timestamps are milliseconds since the value was made, plus one
/// (zero: never).
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    beat: AtomicU64,
    database_ok: AtomicU64,
    database_failed: AtomicU64,
    sink_ok: AtomicU64,
    sink_failed: AtomicU64,
    /// When the sink went down (a stamp), zero while it is up.
    sink_down: AtomicU64,
    /// Failed rounds in a row while the sink is down.
    sink_rounds: AtomicU32,
    /// When the database went down (a stamp), zero while it is up.
    database_down: AtomicU64,
    cdc: AtomicU8,
}

/// A change of a connection's state: what deserves one log line (the repeats do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It was up (or not tried yet) and failed.
    Down,
    /// It failed earlier and answers again.
    Up {
        /// How long it was down.
        after: Duration,
    },
}

impl Default for Health {
    fn default() -> Self {
        Health {
            epoch: Instant::now(),
            beat: AtomicU64::new(0),
            database_ok: AtomicU64::new(0),
            database_failed: AtomicU64::new(0),
            sink_ok: AtomicU64::new(0),
            sink_failed: AtomicU64::new(0),
            sink_down: AtomicU64::new(0),
            sink_rounds: AtomicU32::new(0),
            database_down: AtomicU64::new(0),
            cdc: AtomicU8::new(PHASE_NONE),
        }
    }
}

/// What keeps a relay from being ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The database has not answered yet.
    DatabaseNotReached,
    /// The database's last answer was an error.
    DatabaseFailing,
    /// The database has not answered for this long.
    DatabaseSilent(Duration),
    /// The sink's last delivery attempt failed (retryably: it did not answer or refused).
    SinkFailing,
    /// CDC: another reader holds the slot.
    Standby,
    /// CDC: connecting or reconnecting to the slot.
    NotStreaming,
}

impl Health {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn age(&self, stamp: u64) -> Option<Duration> {
        (stamp != 0).then(|| Duration::from_millis(self.now().saturating_sub(stamp)))
    }

    /// A loop of the relay went round (claimed, polled the slot, took an item).
    pub fn beat(&self) {
        self.beat.store(self.now(), Ordering::Relaxed);
    }

    /// The database answered (`true`) or failed (`false`); returns the change of state, if
    /// this report is one (only one caller sees each change, however many report at once).
    pub fn database(&self, ok: bool) -> Option<Change> {
        let slot = if ok {
            &self.database_ok
        } else {
            &self.database_failed
        };
        let now = self.now();
        slot.store(now, Ordering::Relaxed);
        self.transition(&self.database_down, ok, now)
    }

    /// The sink answered (`true`: acknowledged or refused a message) or failed to (`false`:
    /// unreachable, timed out); returns the change of state, if this report is one.
    pub fn sink(&self, ok: bool) -> Option<Change> {
        let slot = if ok { &self.sink_ok } else { &self.sink_failed };
        let now = self.now();
        slot.store(now, Ordering::Relaxed);
        if ok {
            self.sink_rounds.store(0, Ordering::Relaxed);
        } else {
            self.sink_rounds.fetch_add(1, Ordering::Relaxed);
        }
        self.transition(&self.sink_down, ok, now)
    }

    /// A side check of the database (the metrics sampler) answered or failed: counts for
    /// readiness, but the loops that use the database report and log its changes of state.
    pub fn database_sampled(&self, ok: bool) {
        let slot = if ok {
            &self.database_ok
        } else {
            &self.database_failed
        };
        slot.store(self.now(), Ordering::Relaxed);
    }

    fn transition(&self, down_since: &AtomicU64, ok: bool, now: u64) -> Option<Change> {
        if ok {
            if down_since.load(Ordering::Relaxed) == 0 {
                return None;
            }
            let since = down_since.swap(0, Ordering::Relaxed);
            (since != 0).then(|| Change::Up {
                after: Duration::from_millis(now.saturating_sub(since)),
            })
        } else {
            down_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                .ok()
                .map(|_| Change::Down)
        }
    }

    /// Reports in a row that the sink failed (zero while it answers): how far an outage's
    /// backoff has grown.
    pub fn sink_failures_in_a_row(&self) -> u32 {
        self.sink_rounds.load(Ordering::Relaxed)
    }

    /// How long the sink has been down, `None` while it is up.
    pub fn sink_down_for(&self) -> Option<Duration> {
        self.age(self.sink_down.load(Ordering::Relaxed))
    }

    /// Records the CDC relay's phase.
    pub fn set_cdc(&self, phase: CdcPhase) {
        let v = match phase {
            CdcPhase::Connecting => PHASE_CONNECTING,
            CdcPhase::Standby => PHASE_STANDBY,
            CdcPhase::Streaming => PHASE_STREAMING,
        };
        self.cdc.store(v, Ordering::Relaxed);
    }

    /// The CDC relay's phase; `None` for a polling relay.
    pub fn cdc(&self) -> Option<CdcPhase> {
        match self.cdc.load(Ordering::Relaxed) {
            PHASE_CONNECTING => Some(CdcPhase::Connecting),
            PHASE_STANDBY => Some(CdcPhase::Standby),
            PHASE_STREAMING => Some(CdcPhase::Streaming),
            _ => None,
        }
    }

    /// Time since a loop last went round (since the start, before the first beat).
    pub fn since_beat(&self) -> Duration {
        self.age(self.beat.load(Ordering::Relaxed))
            .unwrap_or_else(|| self.epoch.elapsed())
    }

    /// True while the loops went round within `window`.
    pub fn alive(&self, window: Duration) -> bool {
        self.since_beat() <= window
    }

    /// Why the relay is not ready, empty when it is: the database answered within `window`
    /// and its last answer was not an error; the sink's last delivery attempt did not fail
    /// (a relay that had nothing to deliver yet counts as ready); a CDC relay streams.
    pub fn problems(&self, window: Duration) -> Vec<Problem> {
        let mut out = Vec::new();
        let ok = self.database_ok.load(Ordering::Relaxed);
        let failed = self.database_failed.load(Ordering::Relaxed);
        match self.age(ok) {
            None => out.push(if failed == 0 {
                Problem::DatabaseNotReached
            } else {
                Problem::DatabaseFailing
            }),
            Some(_) if failed > ok => out.push(Problem::DatabaseFailing),
            Some(age) if age > window => out.push(Problem::DatabaseSilent(age)),
            Some(_) => {}
        }
        if self.sink_failed.load(Ordering::Relaxed) > self.sink_ok.load(Ordering::Relaxed) {
            out.push(Problem::SinkFailing);
        }
        match self.cdc() {
            Some(CdcPhase::Standby) => out.push(Problem::Standby),
            Some(CdcPhase::Connecting) => out.push(Problem::NotStreaming),
            Some(CdcPhase::Streaming) | None => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_last_answers() {
        let h = Health::default();
        assert_eq!(
            h.problems(Duration::from_secs(30)),
            [Problem::DatabaseNotReached]
        );
        h.database(true);
        assert!(h.problems(Duration::from_secs(30)).is_empty());
        std::thread::sleep(Duration::from_millis(3));
        h.sink(false);
        assert_eq!(h.problems(Duration::from_secs(30)), [Problem::SinkFailing]);
        std::thread::sleep(Duration::from_millis(3));
        h.sink(true);
        h.database(false);
        assert_eq!(
            h.problems(Duration::from_secs(30)),
            [Problem::DatabaseFailing]
        );
        std::thread::sleep(Duration::from_millis(3));
        h.database(true);
        std::thread::sleep(Duration::from_millis(3));
        assert!(matches!(
            h.problems(Duration::ZERO)[..],
            [Problem::DatabaseSilent(_)]
        ));
        h.set_cdc(CdcPhase::Standby);
        assert_eq!(h.problems(Duration::from_secs(30)), [Problem::Standby]);
        h.set_cdc(CdcPhase::Streaming);
        assert!(h.problems(Duration::from_secs(30)).is_empty());
    }

    #[test]
    fn each_change_of_state_is_reported_once() {
        let h = Health::default();
        assert_eq!(h.sink(true), None, "up from the start is no change");
        assert_eq!(h.sink(false), Some(Change::Down));
        assert_eq!(h.sink(false), None);
        assert_eq!(h.sink_failures_in_a_row(), 2);
        assert!(h.sink_down_for().is_some());
        assert!(matches!(h.sink(true), Some(Change::Up { .. })));
        assert_eq!(h.sink(true), None);
        assert_eq!(h.sink_failures_in_a_row(), 0);
        assert_eq!(h.sink_down_for(), None);
        assert_eq!(h.database(false), Some(Change::Down));
        assert_eq!(h.database(false), None);
        assert!(matches!(h.database(true), Some(Change::Up { .. })));
    }

    #[test]
    fn liveness_is_the_last_beat() {
        let h = Health::default();
        assert!(h.alive(Duration::from_secs(1)), "starting counts as alive");
        h.beat();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!h.alive(Duration::from_millis(1)));
        assert!(h.alive(Duration::from_secs(1)));
    }
}
