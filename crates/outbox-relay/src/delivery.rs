//! Delivery: publish records through a router and a sink, and decide what each outcome means.
//!
//! Both sources deliver through here. [`deliver`] publishes a batch in waves: events of
//! *different* aggregates together (acks awaited together), events of the *same* aggregate one
//! wave after the other, each waiting for the previous one's acknowledgement; the first failure
//! stops the rest of its aggregate, so nothing overtakes it. [`judge`] is the one retry / dead-letter
//! decision: a failed event is never slept on, it gets a delay (the source keeps it out of
//! delivery until then) or goes to the dead-letter table. [`plan`] applies it to a polled batch,
//! giving the [`Settlement`] the store records in one statement.

use std::collections::HashMap;
use std::time::Duration;

use crate::health::Change;
use crate::message::{ErrorKind, SinkError};
use crate::record::Record;
use crate::retry::RetryPolicy;
use crate::route::Router;
use crate::sink::Sink;
use crate::stats::Stats;

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

/// Publishes a batch in waves: the first event of every aggregate together
/// ([`Sink::publish_all`], at most `max_in_flight` of them outstanding at once), then the second
/// event of each aggregate whose first was acknowledged, and so on. An aggregate stops at its
/// first failure; the rest of it is [`Outcome::NotAttempted`]. Then flushes the sink; if that
/// fails, nothing in the batch counts as delivered.
pub async fn deliver(
    records: &[Record],
    router: &Router,
    sink: &dyn Sink,
    max_in_flight: usize,
) -> Vec<Outcome> {
    const NONE: usize = usize::MAX;
    // `next[i]`: the record after `i` in its aggregate; the first wave is every aggregate's first.
    let mut next = vec![NONE; records.len()];
    let mut wave: Vec<usize> = Vec::with_capacity(records.len());
    {
        let mut last: HashMap<(&str, &str), usize, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(records.len(), Default::default());
        for (i, r) in records.iter().enumerate() {
            match last.insert(r.aggregate(), i) {
                Some(before) => next[before] = i,
                None => wave.push(i),
            }
        }
    }
    let mut outcomes = vec![Outcome::NotAttempted; records.len()];
    let mut messages = Vec::with_capacity(wave.len());
    let mut sent = Vec::with_capacity(wave.len());
    while !wave.is_empty() {
        messages.clear();
        sent.clear();
        for &i in &wave {
            match router.route(&records[i]) {
                Ok(message) => {
                    messages.push(message);
                    sent.push(i);
                }
                Err(reason) => outcomes[i] = Outcome::Failed(SinkError::permanent(reason)),
            }
        }
        wave.clear();
        if messages.is_empty() {
            break;
        }
        let mut results = sink.publish_all(&messages, max_in_flight).await.into_iter();
        for &i in &sent {
            let result = results.next().unwrap_or_else(|| {
                Err(SinkError::unavailable(format!(
                    "sink {} answered fewer results than messages",
                    sink.describe()
                )))
            });
            outcomes[i] = match result {
                Ok(()) => {
                    if next[i] != NONE {
                        wave.push(next[i]);
                    }
                    Outcome::Delivered
                }
                Err(e) => Outcome::Failed(e),
            };
        }
    }
    if outcomes.contains(&Outcome::Delivered) {
        if let Err(e) = sink.flush().await {
            for o in outcomes.iter_mut().filter(|o| **o == Outcome::Delivered) {
                *o = Outcome::Failed(SinkError {
                    message: format!("flush: {e}"),
                    ..e.clone()
                });
            }
        }
    }
    outcomes
}

/// Records what a delivered batch says about the relay in `stats`: failed attempts by kind,
/// the time from each acknowledged event's creation to its acknowledgement (now), and whether
/// the sink answered (an acknowledgement or a refusal of a message) or only failed (unreachable:
/// for readiness and for the outage's backoff). Logs one line when the sink goes down (its
/// redacted address and the cause) and one when it is back (how long it was down).
pub fn observe(records: &[Record], outcomes: &[Outcome], sink: &dyn Sink, stats: &Stats) {
    let now = chrono::Utc::now();
    let (mut delivered, mut retryable, mut permanent, mut unavailable) = (0, 0, 0, 0);
    let mut cause = None;
    for (r, o) in records.iter().zip(outcomes) {
        match o {
            Outcome::Delivered => {
                delivered += 1;
                let micros = (now - r.created_at).num_microseconds().unwrap_or(i64::MAX);
                stats.acknowledged(micros.max(0) as f64 / 1e6);
            }
            Outcome::Failed(e) => match e.kind {
                ErrorKind::Permanent => permanent += 1,
                ErrorKind::Retryable => retryable += 1,
                ErrorKind::Unavailable => {
                    unavailable += 1;
                    cause.get_or_insert(e);
                }
            },
            Outcome::NotAttempted => {}
        }
    }
    stats.failures(retryable, permanent, unavailable);
    let change = if delivered + permanent + retryable > 0 {
        stats.health().sink(true)
    } else if unavailable > 0 {
        stats.health().sink(false)
    } else {
        None
    };
    match change {
        Some(Change::Down) => tracing::warn!(
            sink = %sink.describe(),
            error = %cause.map_or("", |e| e.message.as_str()),
            "sink unreachable; events wait in order and are retried with backoff (an outage is not counted as a delivery attempt)"
        ),
        Some(Change::Up { after }) => tracing::info!(
            sink = %sink.describe(),
            down_for = %humantime::format_duration(after),
            "sink reachable again; delivering"
        ),
        None => {}
    }
}

/// Longest backoff while the sink is down, whatever the retry policy's `max`: a long outage
/// must not leave the relay asleep for minutes once the sink is back.
pub const OUTAGE_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What to do with an event whose delivery failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Try again after `delay` (the policy's backoff, or longer when the broker asked).
    Retry {
        /// How long the event (and the rest of its aggregate) waits.
        delay: Duration,
        /// Whether this failure counts toward `max_attempts` (the message's failure) or not
        /// (the sink was unavailable).
        counted: bool,
    },
    /// Give up: move it to the dead-letter table with `reason`.
    DeadLetter {
        /// Why, as stored in the dead-letter table's `error`.
        reason: String,
    },
}

/// The retry / dead-letter decision for an event that had failed `earlier` times before this
/// failure. A permanent error dead-letters at once; a retryable one counts and waits with
/// backoff until the policy's attempts are used up; an unavailable sink is not the message's
/// failure: it does not count, never dead-letters, and waits by the outage's backoff, grown by
/// `outage` (failed reports in a row, see [`crate::health::Health::sink_failures_in_a_row`])
/// and capped at [`OUTAGE_MAX_BACKOFF`].
pub fn judge(error: &SinkError, earlier: u32, policy: &RetryPolicy, outage: u32) -> Verdict {
    let asked = error.retry_after.unwrap_or(Duration::ZERO);
    match error.kind {
        ErrorKind::Permanent => Verdict::DeadLetter {
            reason: error.message.clone(),
        },
        ErrorKind::Unavailable => {
            let capped = RetryPolicy {
                max: policy.max.min(OUTAGE_MAX_BACKOFF),
                base: policy.base.min(OUTAGE_MAX_BACKOFF),
                ..policy.clone()
            };
            Verdict::Retry {
                delay: capped.delay(outage.max(1)).max(asked),
                counted: false,
            }
        }
        ErrorKind::Retryable => {
            let failures = earlier.saturating_add(1);
            if policy.exhausted(failures) {
                Verdict::DeadLetter {
                    reason: format!("gave up after {failures} attempts: {}", error.message),
                }
            } else {
                Verdict::Retry {
                    delay: policy.delay(failures).max(asked),
                    counted: true,
                }
            }
        }
    }
}

/// An event that failed and waits: when to try it again and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Postponed {
    /// The event's `seq`.
    pub seq: i64,
    /// How long it (and the rest of its aggregate) waits.
    pub delay: Duration,
    /// The failure, kept in `last_error`.
    pub error: String,
    /// Whether the failure counts toward `max_attempts` (adds one to `retry_count`).
    pub counted: bool,
}

/// What happened to each event of a polled batch, as the store records it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settlement {
    /// Acknowledged by the sink: mark published.
    pub published: Vec<i64>,
    /// Failed: keep the error, try again after the delay (counting the attempt or not).
    pub retry: Vec<Postponed>,
    /// Give up: move to the dead-letter table with `error`.
    pub dead: Vec<(i64, String)>,
    /// Delete published rows instead of setting `published_at` (delete-on-publish mode).
    pub delete_published: bool,
}

impl Settlement {
    /// True when nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.published.is_empty() && self.retry.is_empty() && self.dead.is_empty()
    }
}

/// Turns a polled batch's outcomes into the database writes: published, retry later, or
/// dead-letter (by [`judge`], counting the row's earlier failures; `outage` as there).
pub fn plan(
    records: &[Record],
    outcomes: &[Outcome],
    retry: &RetryPolicy,
    outage: u32,
) -> Settlement {
    let mut s = Settlement::default();
    let mut first_error: Option<&str> = None;
    let mut counted = 0usize;
    for (r, o) in records.iter().zip(outcomes) {
        match o {
            Outcome::Delivered => s.published.push(r.seq),
            Outcome::NotAttempted => {}
            Outcome::Failed(e) => {
                let earlier = u32::try_from(r.retry_count.max(0)).unwrap_or(u32::MAX);
                match judge(e, earlier, retry, outage) {
                    Verdict::DeadLetter { reason } => {
                        tracing::warn!(id = %r.id, seq = r.seq, attempts = earlier.saturating_add(1), error = %e, "event cannot be delivered; moving it to the dead-letter table");
                        s.dead.push((r.seq, reason));
                    }
                    Verdict::Retry { delay, counted: c } => {
                        if c {
                            first_error.get_or_insert(&e.message);
                            counted += 1;
                        }
                        s.retry.push(Postponed {
                            seq: r.seq,
                            delay,
                            error: e.message.clone(),
                            counted: c,
                        });
                    }
                }
            }
        }
    }
    if counted > 0 {
        tracing::warn!(
            failed = counted,
            error = first_error.unwrap_or(""),
            "deliveries failed; retrying with backoff"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
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
        let s = plan(&records, &outcomes, &policy, 0);
        assert_eq!(s.published, vec![4]);
        assert_eq!(s.retry.len(), 1);
        assert_eq!(s.retry[0].seq, 1);
        assert!(s.retry[0].counted);
        assert_eq!(s.dead.len(), 2);
        assert_eq!(s.dead[0], (2, "gave up after 3 attempts: y".to_string()));
        assert_eq!(s.dead[1], (3, "too big".to_string()));
    }

    #[test]
    fn observe_tells_health_whether_the_sink_answered() {
        use crate::health::Problem;
        let stats = Stats::default();
        stats.health().database(true);
        let records = vec![rec(1, "a", 0), rec(2, "b", 0)];
        let down = vec![
            Outcome::Failed(SinkError::unavailable("connection refused")),
            Outcome::NotAttempted,
        ];
        let sink = Recorder {
            seen: Mutex::default(),
            fail: vec![],
            permanent: false,
        };
        observe(&records, &down, &sink, &stats);
        let window = Duration::from_secs(60);
        assert_eq!(stats.health().problems(window), [Problem::SinkFailing]);
        std::thread::sleep(Duration::from_millis(3));
        // A refusal is an answer: the sink is up, the event is the problem.
        let refused = vec![
            Outcome::Failed(SinkError::permanent("too big")),
            Outcome::NotAttempted,
        ];
        observe(&records, &refused, &sink, &stats);
        assert!(stats.health().problems(window).is_empty());
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut e = SinkError::retryable("slow down");
        e.retry_after = Some(Duration::from_secs(3600));
        let s = plan(
            &[rec(1, "a", 0)],
            &[Outcome::Failed(e)],
            &RetryPolicy::default(),
            0,
        );
        assert!(s.retry[0].delay >= Duration::from_secs(300));
    }

    #[test]
    fn an_unavailable_sink_never_counts_nor_dead_letters() {
        let policy = RetryPolicy {
            max_attempts: 1,
            base: Duration::from_millis(200),
            max: Duration::from_secs(600),
            jitter: 0.0,
        };
        let down = SinkError::unavailable("connection refused");
        for outage in [0, 1, 5, 50, u32::MAX] {
            let v = judge(&down, 1_000, &policy, outage);
            let Verdict::Retry { delay, counted } = v else {
                panic!("an outage dead-lettered an event: {v:?}");
            };
            assert!(!counted);
            assert!(delay <= OUTAGE_MAX_BACKOFF, "{delay:?}");
        }
        assert_eq!(
            judge(&down, 0, &policy, 3),
            Verdict::Retry {
                delay: Duration::from_millis(800),
                counted: false
            }
        );
        // The message's own failure counts and is dead-lettered once the attempts are used.
        assert!(matches!(
            judge(&SinkError::retryable("nack"), 0, &policy, 0),
            Verdict::DeadLetter { .. }
        ));
        let s = plan(&[rec(1, "a", 9)], &[Outcome::Failed(down)], &policy, 2);
        assert!(s.dead.is_empty());
        assert_eq!(s.retry.len(), 1);
        assert!(!s.retry[0].counted);
    }
}
