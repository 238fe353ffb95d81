//! The delivery side of a CDC session: takes events in commit order, delivers them in rounds
//! through [`crate::delivery::deliver`], retries failures in memory (the retry / dead-letter
//! decision is [`crate::delivery::judge`], as for the polling relay), writes dead letters, and
//! works out how far the slot may be confirmed.
//!
//! Bookkeeping: every stream transaction (and every keep-alive position between transactions)
//! is a *book* with a count of events not yet done. An event is done once the sink acknowledged
//! it or it is in the dead-letter table. The confirmed LSN moves to a book's end only when it
//! and every book before it are done, so a restart from the slot redelivers at most what was
//! not acknowledged.

use std::collections::VecDeque;

use hashbrown::{Equivalent, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::pressure::Budget;
use super::rows::Event;
use crate::delivery::{deliver, judge, observe, Outcome, Verdict};
use crate::record::Record;
use crate::retry::{Backoff, RetryPolicy};
use crate::route::Router;
use crate::sink::Sink;
use crate::stats::Stats;
use crate::store::cdc::{insert_dead_letters, refresh_blocks, Block, Blocked, DeadLetterRow};
use crate::store::FailedAttempt;

/// What the reader hands to the engine, in stream order.
#[derive(Debug)]
pub(crate) enum Item {
    /// Events of one transaction (a transaction may come in several chunks).
    Events(Vec<Event>),
    /// The transaction is complete; confirming `end_lsn` covers it.
    Commit { txn: u64, end_lsn: u64 },
    /// Nothing is open up to `lsn` (a keep-alive between transactions).
    Position { txn: u64, lsn: u64 },
}

#[derive(Debug)]
struct Book {
    id: u64,
    outstanding: usize,
    end: Option<u64>,
}

/// Events of one aggregate that wait: behind a failure until `due`, or behind a delivery
/// round that has the aggregate's earlier events out (`round`).
#[derive(Debug)]
struct Parked {
    /// When the queue may go again (ignored while `round` is set).
    due: Instant,
    queue: VecDeque<Event>,
    /// The round that has this aggregate's earlier events out, if any.
    round: Option<u64>,
}

/// A delivery round on its way: its events, and their records (taken out for [`deliver`]).
pub(crate) struct Round {
    pub id: u64,
    pub events: Vec<Event>,
    pub records: Vec<Record>,
}

impl Round {
    /// Publishes the round's records (aggregates concurrently, each in order).
    pub async fn deliver(self, p: &Parts<'_>) -> (Round, Vec<Outcome>) {
        p.stats.claimed(self.records.len());
        let outcomes = deliver(&self.records, p.router, p.sink, p.config.max_in_flight).await;
        observe(&self.records, &outcomes, p.sink, p.stats);
        (self, outcomes)
    }
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub batch_size: usize,
    pub max_in_flight: usize,
    pub max_buffered: usize,
    /// Largest round in bytes (the first event always goes): the sink holds a routed copy of
    /// each event while it is out.
    pub max_round_bytes: u64,
    pub retry: RetryPolicy,
    pub dead_letters_block: bool,
    /// The statement that writes dead letters ([`crate::store::cdc::dead_letter_sql`]).
    pub dead_letter_sql: String,
}

/// The shared parts the engine needs.
pub(crate) struct Parts<'a> {
    pub pool: &'a PgPool,
    pub sink: &'a dyn Sink,
    pub router: &'a Router,
    pub stats: &'a Arc<Stats>,
    pub config: &'a EngineConfig,
}

/// One session's delivery state.
pub(crate) struct Engine {
    books: VecDeque<Book>,
    ready: VecDeque<Event>,
    parked: HashMap<(String, String), Parked>,
    dead: Vec<(Event, String)>,
    dead_retry_at: Option<Instant>,
    /// Pause after a failed dead-letter write.
    dead_backoff: Backoff,
    buffered: usize,
    /// Bytes of the events in memory (shared with the reader, which stops when it is full).
    budget: Arc<Budget>,
    confirmed: u64,
    rounds: u64,
}

fn chain_key(r: &Record) -> (String, String) {
    (r.aggregate_type.clone(), r.aggregate_id.clone())
}

/// A record's aggregate, borrowed: looks up a [`chain_key`] without allocating one. Hashes as
/// the `(String, String)` key does (a tuple and this struct both hash their fields in order).
#[derive(Hash)]
struct Agg<'a>(&'a str, &'a str);

impl Equivalent<(String, String)> for Agg<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

fn agg(r: &Record) -> Agg<'_> {
    Agg(&r.aggregate_type, &r.aggregate_id)
}

fn placeholder() -> Record {
    Record {
        seq: 0,
        id: Uuid::nil(),
        aggregate_type: String::new(),
        aggregate_id: String::new(),
        event_type: String::new(),
        payload: String::new(),
        headers: None,
        created_at: Default::default(),
        retry_count: 0,
    }
}

/// Why an event goes to the dead-letter table after failing.
#[derive(Clone, Copy)]
enum Fate {
    Parked,
    Dead(Uuid),
}

impl Engine {
    /// An engine whose slot is confirmed up to `confirmed`, releasing done events' bytes
    /// from `budget`.
    pub fn new(confirmed: u64, budget: Arc<Budget>) -> Self {
        Engine {
            books: VecDeque::new(),
            ready: VecDeque::new(),
            parked: HashMap::default(),
            dead: Vec::new(),
            dead_retry_at: None,
            dead_backoff: Backoff::new(Duration::from_millis(400), Duration::from_secs(5)),
            buffered: 0,
            budget,
            confirmed,
            rounds: 0,
        }
    }

    /// Events held in memory (not yet done).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Takes one item from the reader.
    pub fn apply(&mut self, item: Item) {
        match item {
            Item::Events(events) => {
                for ev in events {
                    match self.books.back_mut() {
                        Some(b) if b.id == ev.txn => b.outstanding += 1,
                        _ => self.books.push_back(Book {
                            id: ev.txn,
                            outstanding: 1,
                            end: None,
                        }),
                    }
                    self.buffered += 1;
                    self.ready.push_back(ev);
                }
            }
            Item::Commit { txn, end_lsn } => match self.books.back_mut() {
                Some(b) if b.id == txn => b.end = Some(end_lsn),
                _ => self.books.push_back(Book {
                    id: txn,
                    outstanding: 0,
                    end: Some(end_lsn),
                }),
            },
            Item::Position { txn, lsn } => match self.books.back_mut() {
                // Nothing after the last complete book: the position supersedes its end.
                Some(b) if b.outstanding == 0 && b.end.is_some() => b.end = Some(lsn),
                _ => self.books.push_back(Book {
                    id: txn,
                    outstanding: 0,
                    end: Some(lsn),
                }),
            },
        }
    }

    fn done(&mut self, ev: &Event) {
        self.buffered = self.buffered.saturating_sub(1);
        self.budget.release(ev.bytes);
        if let Ok(i) = self.books.binary_search_by_key(&ev.txn, |b| b.id) {
            let b = &mut self.books[i];
            b.outstanding = b.outstanding.saturating_sub(1);
        }
    }

    /// Moves the confirmed LSN over complete books; returns it when it moved.
    pub fn advance(&mut self) -> Option<u64> {
        let before = self.confirmed;
        while let Some(b) = self.books.front() {
            match b.end {
                Some(end) if b.outstanding == 0 => {
                    self.confirmed = self.confirmed.max(end);
                    self.books.pop_front();
                }
                _ => break,
            }
        }
        (self.confirmed != before).then_some(self.confirmed)
    }

    /// True when a round would do something now.
    pub fn has_work(&self, now: Instant) -> bool {
        !self.ready.is_empty()
            || self
                .parked
                .values()
                .any(|p| p.round.is_none() && p.due <= now)
            || (!self.dead.is_empty() && self.dead_retry_at.map_or(true, |t| t <= now))
    }

    /// When the next parked aggregate (or dead-letter write) becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        let parked = self
            .parked
            .values()
            .filter(|p| p.round.is_none())
            .map(|p| p.due)
            .min();
        let dead = if self.dead.is_empty() {
            None
        } else {
            self.dead_retry_at
        };
        match (parked, dead) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Puts an event into round `id`, or behind the round that has its aggregate out.
    fn admit(&mut self, id: u64, now: Instant, ev: Event, batch: &mut Vec<Event>) {
        match self.parked.get_mut(&agg(&ev.record)) {
            // (A queue left behind this round keeps its place before `ev`.)
            Some(pk) if pk.round == Some(id) && pk.queue.is_empty() => batch.push(ev),
            Some(pk) => pk.queue.push_back(ev),
            None => {
                self.parked.insert(
                    chain_key(&ev.record),
                    Parked {
                        due: now,
                        queue: VecDeque::new(),
                        round: Some(id),
                    },
                );
                batch.push(ev);
            }
        }
    }

    /// Forms the next delivery round: the due retries and up to `batch_size` events in stream
    /// order, skipping (queueing) aggregates another round has out, so no aggregate is in two
    /// rounds at once. Events that cannot be routed, or wait behind a dead letter, go to the
    /// dead-letter table. `None` when nothing can go now.
    pub async fn form(&mut self, p: &Parts<'_>, blocked: &mut Blocked) -> Option<Round> {
        let now = Instant::now();
        self.rounds += 1;
        let id = self.rounds;
        let mut batch: Vec<Event> =
            Vec::with_capacity(p.config.batch_size.min(self.ready.len() + 64));
        let due: Vec<(String, String)> = self
            .parked
            .iter()
            .filter(|(_, v)| v.round.is_none() && v.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        // Up to `max_round_bytes` (the first event always goes): an aggregate cut short keeps
        // the rest of its queue behind this round.
        let cap = p.config.max_round_bytes;
        let mut bytes = 0u64;
        for k in due {
            if !batch.is_empty() && bytes >= cap {
                break;
            }
            let Some(mut parked) = self.parked.remove(&k) else {
                continue;
            };
            let mut n = 0;
            for ev in &parked.queue {
                if (n > 0 || !batch.is_empty()) && bytes >= cap {
                    break;
                }
                bytes += ev.bytes;
                n += 1;
            }
            let rest = parked.queue.split_off(n);
            batch.extend(parked.queue);
            self.parked.insert(
                k,
                Parked {
                    due: now,
                    queue: rest,
                    round: Some(id),
                },
            );
        }
        let mut candidates: Vec<Event> = Vec::new();
        while batch.len() < p.config.batch_size && (batch.is_empty() || bytes < cap) {
            let Some(mut ev) = self.ready.pop_front() else {
                break;
            };
            if let Some(why) = ev.invalid.take() {
                tracing::warn!(id = %ev.origin().id, error = %why, "event cannot be routed; moving it to the dead-letter table");
                if p.config.dead_letters_block {
                    let o = ev.origin();
                    blocked.entry(ev.origin_key()).or_insert(Block {
                        seq: o.seq,
                        id: o.id,
                    });
                }
                self.dead.push((ev, why));
                continue;
            }
            if let Some(parked) = self.parked.get_mut(&agg(&ev.record)) {
                if parked.round != Some(id) || !parked.queue.is_empty() {
                    parked.queue.push_back(ev);
                    continue;
                }
            }
            if p.config.dead_letters_block
                && !blocked.is_empty()
                && blocked.contains_key(&ev.origin_key())
            {
                candidates.push(ev);
                continue;
            }
            let (size, before) = (ev.bytes, batch.len());
            self.admit(id, now, ev, &mut batch);
            if batch.len() > before {
                bytes += size;
            }
        }
        if !candidates.is_empty() {
            let aggregates = candidates.iter().map(Event::origin_key);
            match refresh_blocks(p.pool, aggregates, blocked).await {
                Ok(()) => {
                    for ev in candidates {
                        match blocked.get(&ev.origin_key()) {
                            Some(b) if ev.origin().seq >= b.seq && ev.origin().id != b.id => {
                                let why = format!("waiting behind dead letter {}", b.id);
                                self.dead.push((ev, why));
                            }
                            _ => self.admit(id, now, ev, &mut batch),
                        }
                    }
                }
                Err(e) => {
                    p.stats.error();
                    tracing::warn!(error = %e, "reading dead letters failed; will retry");
                    for ev in candidates.into_iter().rev() {
                        self.ready.push_front(ev);
                    }
                }
            }
        }
        if !self.dead.is_empty() && self.dead_retry_at.map_or(true, |t| t <= Instant::now()) {
            self.write_dead(p).await;
        }
        if batch.is_empty() {
            self.parked
                .retain(|_, v| v.round != Some(id) || !v.queue.is_empty());
            for v in self.parked.values_mut() {
                if v.round == Some(id) {
                    v.round = None;
                }
            }
            return None;
        }
        let records = batch
            .iter_mut()
            .map(|e| std::mem::replace(&mut e.record, placeholder()))
            .collect();
        Some(Round {
            id,
            events: batch,
            records,
        })
    }

    /// Takes a delivered round back: acknowledged events are done, failed ones wait with
    /// backoff (with the rest of their aggregate behind them) or go to the dead-letter table.
    pub async fn finish(
        &mut self,
        p: &Parts<'_>,
        blocked: &mut Blocked,
        round: Round,
        outcomes: Vec<Outcome>,
    ) {
        let Round {
            id,
            events,
            records,
        } = round;
        let now = Instant::now();
        // Later events of the round's aggregates that queued while it was out.
        let mut held: Vec<((String, String), VecDeque<Event>)> = Vec::new();
        for r in &records {
            if self
                .parked
                .get(&agg(r))
                .is_some_and(|pk| pk.round == Some(id))
            {
                if let Some((key, pk)) = self.parked.remove_entry(&agg(r)) {
                    held.push((key, pk.queue));
                }
            }
        }
        let mut fates: HashMap<(String, String), Fate> = HashMap::default();
        let outage = p.stats.health().sink_failures_in_a_row();
        let (mut delivered, mut failed) = (0usize, 0usize);
        let mut first_error: Option<String> = None;
        for ((mut ev, record), outcome) in events.into_iter().zip(records).zip(outcomes) {
            ev.record = record;
            let fate = fates.get(&agg(&ev.record)).copied();
            match (outcome, fate) {
                (Outcome::Delivered, None) => {
                    self.done(&ev);
                    delivered += 1;
                }
                (Outcome::Failed(e), None) => {
                    match judge(&e, ev.attempts, &p.config.retry, outage) {
                        Verdict::DeadLetter { reason } => {
                            ev.attempts = ev.attempts.saturating_add(1);
                            tracing::warn!(id = %ev.origin().id, attempts = ev.attempts, error = %e, "event cannot be delivered; moving it to the dead-letter table");
                            let o = ev.origin();
                            if p.config.dead_letters_block {
                                blocked.entry(ev.origin_key()).or_insert(Block {
                                    seq: o.seq,
                                    id: o.id,
                                });
                            }
                            fates.insert(chain_key(&ev.record), Fate::Dead(o.id));
                            self.dead.push((ev, reason));
                        }
                        Verdict::Retry { delay, counted } => {
                            FailedAttempt::push(
                                &mut ev.history,
                                FailedAttempt::now(&e.message, counted),
                            );
                            if counted {
                                ev.attempts = ev.attempts.saturating_add(1);
                                first_error.get_or_insert_with(|| e.message.clone());
                                failed += 1;
                            }
                            let key = chain_key(&ev.record);
                            fates.insert(key.clone(), Fate::Parked);
                            self.parked.insert(
                                key,
                                Parked {
                                    due: now + delay,
                                    queue: VecDeque::from([ev]),
                                    round: None,
                                },
                            );
                        }
                    }
                }
                // Behind a failure of its aggregate in this round (not attempted, or failed
                // with it when the flush failed): it keeps its place.
                (_, Some(Fate::Parked)) | (Outcome::NotAttempted, None) => {
                    self.park_now(chain_key(&ev.record), now, [ev]);
                }
                (_, Some(Fate::Dead(dead))) => {
                    if p.config.dead_letters_block {
                        let why = format!("waiting behind dead letter {dead}");
                        self.dead.push((ev, why));
                    } else {
                        // on_dead_letter = proceed: the rest of the aggregate goes next round.
                        self.park_now(chain_key(&ev.record), now, [ev]);
                    }
                }
            }
        }
        for (key, queue) in held {
            if queue.is_empty() {
                continue;
            }
            match fates.get(&key) {
                Some(Fate::Dead(dead)) if p.config.dead_letters_block => {
                    for ev in queue {
                        let why = format!("waiting behind dead letter {dead}");
                        self.dead.push((ev, why));
                    }
                }
                _ => self.park_now(key, now, queue),
            }
        }
        if failed > 0 {
            tracing::warn!(
                failed,
                error = first_error.as_deref().unwrap_or(""),
                "deliveries failed; retrying with backoff"
            );
        }
        p.stats.settled(delivered, failed, 0);
        if !self.dead.is_empty() && self.dead_retry_at.map_or(true, |t| t <= Instant::now()) {
            self.write_dead(p).await;
        }
    }

    /// Queues events behind what their aggregate already has waiting (due at once if nothing).
    fn park_now(
        &mut self,
        key: (String, String),
        now: Instant,
        evs: impl IntoIterator<Item = Event>,
    ) {
        self.parked
            .entry(key)
            .or_insert_with(|| Parked {
                due: now,
                queue: VecDeque::new(),
                round: None,
            })
            .queue
            .extend(evs);
    }

    /// Writes pending dead letters in one statement; they count as done once written.
    async fn write_dead(&mut self, p: &Parts<'_>) {
        let dead = std::mem::take(&mut self.dead);
        let rows: Vec<DeadLetterRow<'_>> = dead
            .iter()
            .map(|(ev, why)| DeadLetterRow {
                record: ev.origin(),
                attempts: ev.attempts,
                error: why,
                history: &ev.history,
            })
            .collect();
        let written = insert_dead_letters(p.pool, &p.config.dead_letter_sql, &rows).await;
        drop(rows);
        match written {
            Ok(()) => {
                let n = dead.len();
                for (ev, _) in &dead {
                    self.done(ev);
                }
                self.dead_backoff.reset();
                self.dead_retry_at = None;
                p.stats.settled(0, 0, n);
            }
            Err(e) => {
                p.stats.error();
                let pause = self.dead_backoff.fail();
                tracing::warn!(error = %e, events = dead.len(), retry_in = ?pause, "writing dead letters failed; will retry (the slot is not confirmed past them)");
                self.dead_retry_at = Some(Instant::now() + pause);
                self.dead = dead;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SinkError;

    fn ev(txn: u64) -> Event {
        Event::new(txn, placeholder(), None, None)
    }

    fn engine(confirmed: u64) -> Engine {
        Engine::new(confirmed, Arc::new(Budget::default()))
    }

    #[test]
    fn confirmation_waits_for_every_earlier_event() {
        let mut e = engine(10);
        e.apply(Item::Events(vec![ev(1), ev(1)]));
        e.apply(Item::Commit {
            txn: 1,
            end_lsn: 100,
        });
        e.apply(Item::Events(vec![ev(2)]));
        e.apply(Item::Commit {
            txn: 2,
            end_lsn: 200,
        });
        e.apply(Item::Commit {
            txn: 3,
            end_lsn: 300,
        }); // a transaction without events
        assert_eq!(e.advance(), None);
        // The second transaction finishes first: nothing moves yet.
        e.done(&ev(2));
        assert_eq!(e.advance(), None);
        e.done(&ev(1));
        assert_eq!(e.advance(), None);
        e.done(&ev(1));
        assert_eq!(e.advance(), Some(300));
        assert_eq!(e.buffered(), 0);
    }

    fn keyed(txn: u64, agg: &str) -> Event {
        let mut e = ev(txn);
        e.record.aggregate_type = "T".into();
        e.record.aggregate_id = agg.into();
        e.record.id = Uuid::new_v4();
        e.record.payload = "{}".into();
        e
    }

    fn aggs(r: &Round) -> Vec<String> {
        r.records.iter().map(|r| r.aggregate_id.clone()).collect()
    }

    #[tokio::test]
    async fn an_aggregate_is_never_in_two_rounds_at_once() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let router = Router::default();
        let stats = Arc::new(Stats::default());
        let config = EngineConfig {
            batch_size: 2,
            max_in_flight: 8,
            max_buffered: 100,
            max_round_bytes: u64::MAX,
            retry: RetryPolicy::default(),
            dead_letters_block: true,
            dead_letter_sql: String::new(),
        };
        let p = Parts {
            pool: &pool,
            sink: &crate::sink::NoopSink,
            router: &router,
            stats: &stats,
            config: &config,
        };
        let mut blocked = Blocked::new();
        let mut e = engine(0);
        e.apply(Item::Events(vec![keyed(1, "a"), keyed(1, "a")]));
        e.apply(Item::Commit {
            txn: 1,
            end_lsn: 10,
        });
        e.apply(Item::Events(vec![keyed(2, "a"), keyed(2, "b")]));
        e.apply(Item::Commit {
            txn: 2,
            end_lsn: 20,
        });
        let first = e.form(&p, &mut blocked).await.unwrap();
        assert_eq!(aggs(&first), ["a", "a"], "one round takes a whole chain");
        // While the first round is out, a's third event waits; b goes.
        let second = e.form(&p, &mut blocked).await.unwrap();
        assert_eq!(aggs(&second), ["b"]);
        assert!(e.form(&p, &mut blocked).await.is_none());
        let (second, out) = second.deliver(&p).await;
        e.finish(&p, &mut blocked, second, out).await;
        assert_eq!(e.advance(), None, "the first transaction is not done");
        let (first, out) = first.deliver(&p).await;
        e.finish(&p, &mut blocked, first, out).await;
        assert_eq!(e.advance(), Some(10));
        // a's held event goes next, and then everything is confirmed.
        let third = e.form(&p, &mut blocked).await.unwrap();
        assert_eq!(aggs(&third), ["a"]);
        let (third, out) = third.deliver(&p).await;
        e.finish(&p, &mut blocked, third, out).await;
        assert_eq!(e.advance(), Some(20));
        assert_eq!(e.buffered(), 0);
        assert_eq!(stats.snapshot().delivered, 4);
    }

    /// Fails every publish while `down` is set.
    #[derive(Default)]
    struct Flaky {
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Sink for Flaky {
        async fn publish(&self, _: &crate::message::Message) -> Result<(), SinkError> {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(SinkError::retryable("down"));
            }
            Ok(())
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    #[tokio::test]
    async fn rounds_stop_at_their_byte_cap_and_keep_each_aggregate_in_order() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let (router, stats, sink) = (
            Router::default(),
            Arc::new(Stats::default()),
            Flaky::default(),
        );
        let budget = Arc::new(Budget::new(u64::MAX, metrics::Gauge::noop()));
        let mut e = Engine::new(0, budget.clone());
        let events: Vec<Event> = (1..=4)
            .map(|n| {
                let mut ev = keyed(1, "a");
                ev.record.payload = n.to_string();
                ev
            })
            .collect();
        let size = events[0].bytes;
        for ev in &events {
            budget.take(ev.bytes);
        }
        e.apply(Item::Events(events));
        e.apply(Item::Commit {
            txn: 1,
            end_lsn: 10,
        });
        let config = |cap: u64| EngineConfig {
            batch_size: 100,
            max_in_flight: 8,
            max_buffered: 100,
            max_round_bytes: cap,
            retry: RetryPolicy {
                base: Duration::ZERO,
                max: Duration::ZERO,
                max_attempts: 100,
                jitter: 0.0,
            },
            dead_letters_block: true,
            dead_letter_sql: String::new(),
        };
        let (two, one) = (config(2 * size), config(size));
        let parts = |config| Parts {
            pool: &pool,
            sink: &sink,
            router: &router,
            stats: &stats,
            config,
        };
        let mut blocked = Blocked::new();
        let payloads =
            |r: &Round| -> Vec<String> { r.records.iter().map(|r| r.payload.clone()).collect() };
        // Two events fit the cap; the sink is down: both wait for a retry.
        sink.down.store(true, std::sync::atomic::Ordering::Relaxed);
        let p = parts(&two);
        let round = e.form(&p, &mut blocked).await.unwrap();
        assert_eq!(payloads(&round), ["1", "2"]);
        let (round, out) = round.deliver(&p).await;
        e.finish(&p, &mut blocked, round, out).await;
        sink.down.store(false, std::sync::atomic::Ordering::Relaxed);
        // With one event per round, the retry is cut short and the rest follow in order.
        let p = parts(&one);
        let mut seen = Vec::new();
        while let Some(round) = e.form(&p, &mut blocked).await {
            assert_eq!(round.records.len(), 1, "one event per round");
            seen.extend(payloads(&round));
            let (round, out) = round.deliver(&p).await;
            e.finish(&p, &mut blocked, round, out).await;
        }
        assert_eq!(seen, ["1", "2", "3", "4"]);
        assert_eq!(e.advance(), Some(10));
        assert_eq!(budget.used(), 0, "every byte taken was released");
    }

    #[test]
    fn an_open_transaction_holds_the_position_back() {
        let mut e = engine(0);
        e.apply(Item::Position { txn: 1, lsn: 50 });
        assert_eq!(e.advance(), Some(50));
        e.apply(Item::Events(vec![ev(2)]));
        e.done(&ev(2));
        // All its events are done but its commit has not arrived.
        assert_eq!(e.advance(), None);
        e.apply(Item::Commit {
            txn: 2,
            end_lsn: 80,
        });
        e.apply(Item::Position { txn: 3, lsn: 90 });
        e.apply(Item::Position { txn: 4, lsn: 95 });
        assert_eq!(e.books.len(), 1, "positions coalesce");
        assert_eq!(e.advance(), Some(95));
    }
}
