//! What the relay knows about itself while it runs: counters (for progress lines, status and
//! metrics), the metrics recorded where events happen, and its [`Health`].
//!
//! Metrics go through the [`metrics`] facade: without a recorder installed (the library alone,
//! the tests) every record is a no-op. The handles are resolved once, when a [`Stats`] is made
//! (when a relay is built), so a recorder must be installed before that; then a batch costs a
//! few atomic additions, and one histogram record per acknowledged event. Labels are bounded:
//! the source (`poll`, `cdc`) and the sink's kind (`nats`, `kafka`…), never an event's data.
//! The gauges that need a query (pending events, dead letters, replication slot) are sampled
//! by whoever serves the metrics; their names are here too, with every metric's help text.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Label};

pub use crate::health::Health;

/// The metric names (see the README's "Operating it").
pub mod names {
    /// Counter: events acknowledged by the sink and recorded as delivered.
    pub const EVENTS_DELIVERED: &str = "outbox_events_delivered_total";
    /// Counter: failed delivery attempts, by `kind` (`retryable`, `permanent`, `unavailable`).
    pub const DELIVERY_FAILURES: &str = "outbox_delivery_failures_total";
    /// Counter: events moved to the dead-letter table.
    pub const EVENTS_DEAD_LETTERED: &str = "outbox_events_dead_lettered_total";
    /// Histogram: seconds from an event's `created_at` to the sink's acknowledgement.
    pub const DELIVERY_LATENCY: &str = "outbox_delivery_latency_seconds";
    /// Histogram: events per claimed batch (per delivery round, for CDC).
    pub const CLAIM_BATCH_SIZE: &str = "outbox_claim_batch_size";
    /// Gauge (sampled): events not yet delivered.
    pub const PENDING_EVENTS: &str = "outbox_pending_events";
    /// Gauge (sampled): age of the oldest pending event, in seconds (0 when none).
    pub const OLDEST_PENDING_AGE: &str = "outbox_oldest_pending_age_seconds";
    /// Gauge (sampled): rows in the dead-letter table.
    pub const DEAD_LETTERS: &str = "outbox_dead_letters";
    /// Gauge (sampled): WAL bytes written since the slot's confirmed position.
    pub const CDC_REPLICATION_LAG: &str = "outbox_cdc_replication_lag_bytes";
    /// Gauge (sampled): WAL bytes the slot keeps the server from removing.
    pub const CDC_SLOT_RETAINED_WAL: &str = "outbox_cdc_slot_retained_wal_bytes";
    /// Gauge: 1 while this CDC relay stands by (another reader holds the slot), else 0.
    pub const CDC_STANDBY: &str = "outbox_cdc_standby";
    /// Gauge: bytes of events the relay holds in memory (CDC: read from the slot, not yet
    /// delivered or dead-lettered, bounded by `max_buffer_bytes` plus one event; polling: the
    /// claimed batches not yet settled).
    pub const BUFFER_BYTES: &str = "outbox_buffer_bytes";
    /// Gauge: 1, labelled with the relay's `version`, `source` and `sink`.
    pub const RELAY_INFO: &str = "outbox_relay_info";
}

/// Upper bounds of the delivery latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// Upper bounds of the claim batch size histogram's buckets, in events.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
    100000.0,
];

/// Every histogram with its buckets, for the recorder that exports them.
pub const HISTOGRAMS: [(&str, &[f64]); 2] = [
    (names::DELIVERY_LATENCY, LATENCY_BUCKETS),
    (names::CLAIM_BATCH_SIZE, BATCH_SIZE_BUCKETS),
];

/// Registers every metric's help text with the installed recorder (call it once, after
/// installing one).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_counter!(
        EVENTS_DELIVERED,
        "Events acknowledged by the sink and recorded as delivered."
    );
    describe_counter!(
        DELIVERY_FAILURES,
        "Failed delivery attempts, by kind: retryable (the message failed; retried with backoff, counted), permanent (dead-lettered) or unavailable (the sink could not be reached; not counted)."
    );
    describe_counter!(
        EVENTS_DEAD_LETTERED,
        "Events moved to the dead-letter table."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from an event's created_at to the sink's acknowledgement."
    );
    describe_histogram!(
        CLAIM_BATCH_SIZE,
        Unit::Count,
        "Events per claimed batch (per delivery round for the CDC source)."
    );
    describe_gauge!(PENDING_EVENTS, "Events not yet delivered (sampled).");
    describe_gauge!(
        OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest pending event, 0 when none (sampled)."
    );
    describe_gauge!(DEAD_LETTERS, "Rows in the dead-letter table (sampled).");
    describe_gauge!(
        CDC_REPLICATION_LAG,
        Unit::Bytes,
        "WAL written since the replication slot's confirmed position (sampled)."
    );
    describe_gauge!(
        CDC_SLOT_RETAINED_WAL,
        Unit::Bytes,
        "WAL the replication slot keeps the server from removing (sampled)."
    );
    describe_gauge!(
        CDC_STANDBY,
        "1 while this CDC relay stands by because another reader holds the slot."
    );
    describe_gauge!(
        BUFFER_BYTES,
        Unit::Bytes,
        "Bytes of events held in memory: read (CDC) or claimed (polling), not yet delivered or dead-lettered."
    );
    describe_gauge!(
        RELAY_INFO,
        "Always 1; the labels say which version, source and sink this relay runs."
    );
}

/// Running totals, shared by the relay's workers. Cheap to read at any time.
#[derive(Debug, Default)]
pub struct Stats {
    delivered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
    meters: Meters,
    health: Health,
}

/// The metric handles of one relay, labelled once.
#[derive(Debug)]
struct Meters {
    delivered: Counter,
    retryable: Counter,
    permanent: Counter,
    unavailable: Counter,
    dead_lettered: Counter,
    latency: Histogram,
    batch_size: Histogram,
    buffer_bytes: Gauge,
}

impl Default for Meters {
    fn default() -> Self {
        Meters {
            delivered: Counter::noop(),
            retryable: Counter::noop(),
            permanent: Counter::noop(),
            unavailable: Counter::noop(),
            dead_lettered: Counter::noop(),
            latency: Histogram::noop(),
            batch_size: Histogram::noop(),
            buffer_bytes: Gauge::noop(),
        }
    }
}

impl Meters {
    fn new(source: &'static str, sink: &str) -> Meters {
        let labels = vec![
            Label::new("source", source),
            Label::new("sink", sink.to_string()),
        ];
        let with_kind = |kind: &'static str| {
            let mut l = labels.clone();
            l.push(Label::new("kind", kind));
            l
        };
        Meters {
            delivered: metrics::counter!(names::EVENTS_DELIVERED, labels.clone()),
            retryable: metrics::counter!(names::DELIVERY_FAILURES, with_kind("retryable")),
            permanent: metrics::counter!(names::DELIVERY_FAILURES, with_kind("permanent")),
            unavailable: metrics::counter!(names::DELIVERY_FAILURES, with_kind("unavailable")),
            dead_lettered: metrics::counter!(names::EVENTS_DEAD_LETTERED, labels.clone()),
            latency: metrics::histogram!(names::DELIVERY_LATENCY, labels.clone()),
            batch_size: metrics::histogram!(names::CLAIM_BATCH_SIZE, labels.clone()),
            buffer_bytes: metrics::gauge!(names::BUFFER_BYTES, labels),
        }
    }
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
    /// Totals of a relay reading from `source` (`poll`, `cdc`) into a sink of kind `sink`
    /// (`nats`, `kafka`…: the metrics' labels), with metric handles from the recorder
    /// installed now (no-ops when there is none).
    pub fn new(source: &'static str, sink: &str) -> Stats {
        Stats {
            meters: Meters::new(source, sink),
            ..Stats::default()
        }
    }

    pub(crate) fn settled(&self, delivered: usize, failed: usize, dead: usize) {
        self.delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.failed.fetch_add(failed as u64, Ordering::Relaxed);
        self.dead_lettered.fetch_add(dead as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.meters.delivered.increment(delivered as u64);
        self.meters.dead_lettered.increment(dead as u64);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch (or delivery round) of `n` events was claimed.
    pub(crate) fn claimed(&self, n: usize) {
        self.meters.batch_size.record(n as f64);
    }

    /// Rows a claim could not read went straight to the dead-letter table.
    pub(crate) fn dead_lettered_at_claim(&self, n: usize) {
        self.dead_lettered.fetch_add(n as u64, Ordering::Relaxed);
        self.meters.dead_lettered.increment(n as u64);
    }

    /// Delivery attempts failed: `retryable`, `permanent` and `unavailable` of them.
    pub(crate) fn failures(&self, retryable: usize, permanent: usize, unavailable: usize) {
        if unavailable > 0 {
            self.meters.unavailable.increment(unavailable as u64);
        }
        if retryable > 0 {
            self.meters.retryable.increment(retryable as u64);
        }
        if permanent > 0 {
            self.meters.permanent.increment(permanent as u64);
        }
    }

    /// An event was acknowledged `seconds` after it was created.
    pub(crate) fn acknowledged(&self, seconds: f64) {
        self.meters.latency.record(seconds);
    }

    /// The handle of the `outbox_buffer_bytes` gauge (bytes of events held in memory).
    pub(crate) fn buffer_bytes_gauge(&self) -> Gauge {
        self.meters.buffer_bytes.clone()
    }

    /// The relay's health, for liveness and readiness probes.
    pub fn health(&self) -> &Health {
        &self.health
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
