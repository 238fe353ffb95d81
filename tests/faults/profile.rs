//! How hard the suite pushes: the short form (the default: CI, `cargo test`) or the full form
//! (`OUTBOX_FAULTS=full`).

use std::time::Duration;

/// The relays' retry settings: short, so an outage outlasts the whole retry budget.
pub const RETRY_ARGS: [&str; 6] = [
    "--max-attempts",
    "3",
    "--backoff-base",
    "200ms",
    "--backoff-max",
    "1s",
];
/// The NATS sink's acknowledgement timeout (`?ack_timeout=` in its URL).
pub const ACK_TIMEOUT: &str = "1s";

/// The longest a relay can spend on an event before giving up on it, were a sink outage
/// counted against it: three attempts that each wait out the acknowledgement timeout, and the
/// two backoffs between them (200 ms and 400 ms, +50% jitter at most).
pub fn retry_budget() -> Duration {
    Duration::from_secs(3) + Duration::from_millis((200 + 400) * 3 / 2)
}

/// The knobs of one form.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// `full` or `short`.
    pub name: &'static str,
    /// Aggregates each writer spreads its events over.
    pub aggregates: usize,
    /// Events a writer commits per statement (distinct aggregates), once per `tick`.
    pub events_per_tick: usize,
    /// The writer's pace.
    pub tick: Duration,
    /// Events each lane must have delivered before the faults start, and again after them.
    pub flow: usize,
    /// SIGKILLs of the three poll relays.
    pub poll_kills: usize,
    /// SIGKILLs of the CDC relay.
    pub cdc_kills: usize,
    /// Random pause before each SIGKILL of a poll relay, in milliseconds.
    pub poll_kill_gap: (u64, u64),
    /// Random pause before each SIGKILL of the CDC relay, in milliseconds.
    pub cdc_kill_gap: (u64, u64),
    /// How long NATS stays stopped.
    pub nats_outage: Duration,
    /// How long PostgreSQL stays stopped (mid-drain).
    pub pg_stop: Duration,
    /// Events per aggregate written at once before a PostgreSQL fault (the backlog it hits).
    pub burst: usize,
    /// How long the proxies keep cutting connections.
    pub cuts_for: Duration,
    /// How long the webhook answers 401.
    pub refuse_for: Duration,
    /// Longest wait for everything written to arrive once the faults are over.
    pub drain_limit: Duration,
}

const SHORT: Profile = Profile {
    name: "short",
    aggregates: 200,
    events_per_tick: 8,
    tick: Duration::from_millis(25),
    flow: 200,
    poll_kills: 8,
    cdc_kills: 3,
    poll_kill_gap: (400, 1200),
    cdc_kill_gap: (1000, 2500),
    nats_outage: Duration::from_secs(5),
    pg_stop: Duration::from_secs(5),
    burst: 20,
    cuts_for: Duration::from_secs(10),
    refuse_for: Duration::from_secs(5),
    drain_limit: Duration::from_secs(120),
};

const FULL: Profile = Profile {
    name: "full",
    aggregates: 1000,
    events_per_tick: 20,
    tick: Duration::from_millis(20),
    flow: 2000,
    poll_kills: 36,
    cdc_kills: 10,
    poll_kill_gap: (1000, 3000),
    cdc_kill_gap: (3000, 7000),
    nats_outage: Duration::from_secs(60),
    pg_stop: Duration::from_secs(15),
    burst: 40,
    cuts_for: Duration::from_secs(90),
    refuse_for: Duration::from_secs(30),
    drain_limit: Duration::from_secs(300),
};

impl Profile {
    /// `OUTBOX_FAULTS=full` selects the full form; anything else the short one.
    pub fn from_env() -> Profile {
        let p = match std::env::var("OUTBOX_FAULTS").as_deref() {
            Ok("full") => FULL,
            _ => SHORT,
        };
        assert!(
            p.nats_outage > retry_budget() && p.refuse_for > retry_budget(),
            "every outage outlasts the relays' retry budget"
        );
        p
    }
}

/// A random duration between `range.0` and `range.1` milliseconds.
pub fn random_ms(range: (u64, u64)) -> Duration {
    Duration::from_millis(fastrand::u64(range.0..=range.1))
}
