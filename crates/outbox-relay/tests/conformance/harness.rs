//! What a sink provides to enroll, and the four tests every sink passes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_relay::route::{Envelope, Template};
use outbox_relay::sink::{self, ErrorKind, SinkOptions};
use outbox_relay::source::poll::PollOptions;
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::{Message, Sink, SinkError};
use outbox_relay::{Relay, RelayConfig, RetryPolicy, Router, Stats};
pub use outbox_testkit::{require, Proxy, TestDb};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// One message as a consumer of the broker saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Topic, subject, stream, routing key or URL path it arrived on.
    pub topic: String,
    /// The message key (native, or the `key` header/field/property where the broker has none).
    pub key: Option<String>,
    /// The value (the envelope).
    pub value: Vec<u8>,
    /// Headers / properties / fields, by name.
    pub headers: BTreeMap<String, String>,
}

/// Something the broker will refuse.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Size of the payload's filler field (make it larger than the broker accepts, or 0).
    pub payload_bytes: usize,
    /// A phrase the dead letter's error must contain.
    pub reason: &'static str,
    /// The kind of the sink's error: the message's (`Permanent`, or `Retryable` when the
    /// broker may take it later), never `Unavailable`.
    pub kind: ErrorKind,
}

/// A broker outage the test controls.
#[async_trait]
pub trait Outage: Send + Sync {
    /// Address (`host:port`) the sink should use: it goes down and comes back.
    fn addr(&self) -> String;
    /// Makes the broker unreachable (or stops it).
    async fn cut(&self);
    /// Brings it back on the same address.
    async fn restore(&self);
}

#[async_trait]
impl Outage for Proxy {
    fn addr(&self) -> String {
        Proxy::addr(self)
    }
    async fn cut(&self) {
        Proxy::cut(self).await
    }
    async fn restore(&self) {
        Proxy::restore(self).await
    }
}

/// How the suite drives one sink.
#[async_trait]
pub trait Harness: Send + Sync + Sized + 'static {
    /// Connects to this sink's broker, with names (topics, streams, queues) unique to this
    /// test. `None` once an unreachable service has been reported (see `outbox_testkit`).
    async fn setup() -> Option<Self>;
    /// `host:port` of the broker.
    fn broker(&self) -> String;
    /// The sink URL reaching the broker at `addr` (`host:port`).
    fn sink_url(&self, addr: &str) -> String;
    /// Sink options, with timeouts short enough for tests (an outage must fail fast).
    fn sink_options(&self) -> SinkOptions;
    /// The topic template. The suite writes events of aggregate type `Order` (read back by
    /// `receive`) and `Poison` (for rejections).
    fn topic_template(&self) -> String;
    /// The topic `Order` events arrive on, as the consumer names it.
    fn order_topic(&self) -> String;
    /// Everything delivered on the `Order` topic so far, in broker order, once at least `n`
    /// messages are there or `timeout` has passed.
    async fn receive(&self, n: usize, timeout: Duration) -> Vec<Received>;
    /// Prepares the broker to refuse the `Poison` event and says how.
    async fn rejection(&self) -> Rejection;
    /// A controllable outage. Default: a proxy in front of `broker()`.
    async fn outage(&self) -> Box<dyn Outage> {
        Box::new(Proxy::start(&self.broker()).await)
    }
    /// Removes what the test created on the broker.
    async fn cleanup(&self);
    /// True when the broker itself drops a redelivered event (the README's delivery-semantics
    /// table): JetStream by `Nats-Msg-Id` within the stream's duplicate window.
    fn broker_dedupes(&self) -> bool {
        false
    }
    /// The header names (as [`Harness::receive`] reports them) that carry the event id.
    fn id_headers(&self) -> &'static [&'static str] {
        &["id"]
    }
}

/// A relay running in this process.
pub struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), outbox_relay::Error>>,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// Every error its sink returned, in order.
    pub failures: Failures,
}

/// The errors a [`Recording`] sink returned.
pub type Failures = Arc<Mutex<Vec<(String, SinkError)>>>;

/// A sink that keeps every error of the sink it wraps (with the message's topic).
struct Recording {
    inner: Arc<dyn Sink>,
    failures: Failures,
}

impl Recording {
    fn keep<T>(&self, topic: &str, result: Result<T, SinkError>) -> Result<T, SinkError> {
        if let Err(e) = &result {
            self.failures
                .lock()
                .unwrap()
                .push((topic.to_string(), e.clone()));
        }
        result
    }
}

#[async_trait]
impl Sink for Recording {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        let result = self.inner.publish(message).await;
        self.keep(&message.topic, result)
    }
    async fn flush(&self) -> Result<(), SinkError> {
        let result = self.inner.flush().await;
        self.keep("", result)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Waits (bounded) until `failures` holds at least one error; returns them all.
pub async fn first_failures(failures: &Failures, limit: Duration, what: &str) -> Vec<SinkError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got: Vec<SinkError> = failures
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect();
        if !got.is_empty() {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Running {
    /// Stops it (finishing the batch in flight) and checks it ended cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("relay stops within 30s")
            .expect("relay task")
            .expect("relay ends without error");
    }
}

/// A message for `topic` with a fresh event id (in the `id` header too).
pub fn message(topic: &str) -> Message {
    let id = uuid::Uuid::new_v4();
    Message {
        id,
        topic: topic.into(),
        key: "o-1".into(),
        value: bytes::Bytes::from_static(b"{}"),
        headers: vec![("id".into(), id.to_string())],
    }
}

/// Publishing to a broker that cannot be reached fails, as unavailable. Returns the error.
pub async fn unreachable_publish_fails(sink: &dyn Sink, topic: &str) -> SinkError {
    let err = sink
        .publish(&message(topic))
        .await
        .expect_err("nothing answers");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    err
}

/// TLS tests: publishing to a server whose certificate no trusted CA signed must fail, and
/// as unavailable (the operator fixes the trust store; the events wait). Returns the error.
pub async fn untrusted_publish_fails(sink: &dyn Sink, message: &Message) -> SinkError {
    let err = sink
        .publish(message)
        .await
        .expect_err("a certificate no trusted CA signed must not be accepted");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    err
}

/// A migrated store on a private database.
pub async fn store(db: &TestDb) -> Store {
    let s = Store::connect(&db.url, &ConnectOptions::default())
        .await
        .expect("connect");
    s.migrate().await.expect("migrate");
    s
}

/// Starts a relay from `store` to the sink at `url`.
pub async fn start_relay<H: Harness>(
    h: &H,
    store: &Store,
    url: &str,
    retry: RetryPolicy,
) -> Running {
    let failures = Failures::default();
    let sink = Arc::new(Recording {
        inner: sink::from_url(url, &h.sink_options())
            .await
            .expect("sink from URL"),
        failures: failures.clone(),
    });
    let router = Router::new(
        Template::parse(&h.topic_template()).expect("template"),
        Envelope::Reference,
    );
    let relay = Relay::new(
        store.clone(),
        sink,
        router,
        RelayConfig {
            poll: PollOptions {
                batch_size: 200,
                poll_interval: Duration::from_millis(100),
                dead_letters_block: true,
                delete_published: false,
                ..PollOptions::default()
            },
            workers: 2,
            max_in_flight: 256,
            retry,
        },
    );
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { relay.run(token).await });
    Running {
        shutdown,
        task,
        stats,
        failures,
    }
}

fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(50),
        max: Duration::from_millis(500),
        max_attempts,
        jitter: 0.3,
    }
}

/// Waits (bounded) for `check` on the store's status.
pub async fn wait_status(
    store: &Store,
    limit: Duration,
    what: &str,
    check: impl Fn(&outbox_relay::store::Status) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = store.status().await.expect("status");
        if check(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; status {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn insert_orders(store: &Store, aggregates: usize, per: usize, start: usize) {
    let pool = store.pg_pool().expect("PostgreSQL");
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'Order', 'a' || (g % $1), 'Step', jsonb_build_object('n', $3 + g / $1)
         FROM generate_series(0, $1 * $2 - 1) AS g ORDER BY g",
    )
    .bind(aggregates as i64)
    .bind(per as i64)
    .bind(start as i64)
    .execute(pool)
    .await
    .expect("insert events");
}

/// Checks first deliveries per key come with increasing `n`; returns the distinct event ids.
fn check_order(msgs: &[Received]) -> usize {
    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in msgs {
        let id = m
            .headers
            .get("id")
            .expect("every message carries the event id")
            .clone();
        if !seen.insert(id) {
            continue;
        }
        let key = m.key.clone().expect("every message carries its key");
        let v: serde_json::Value = serde_json::from_slice(&m.value).expect("JSON value");
        let n = v["n"].as_i64().expect("n");
        if let Some(prev) = last.insert(key.clone(), n) {
            assert!(
                n > prev,
                "order violated for {key}: {n} first delivered after {prev}"
            );
        }
    }
    seen.len()
}

pub async fn delivers_exact_message<H: Harness>() {
    let db = require!(TestDb::create().await);
    let h = require!(H::setup().await);
    let store = store(&db).await;
    let event = outbox::Event::new(
        "Order",
        "o-1",
        "OrderCreated",
        json!({"order_id": "o-1", "total": 9.5}),
    )
    .with_header("traceparent", "00-abc-01");
    {
        let pool = store.pg_pool().unwrap();
        let mut tx = pool.begin().await.unwrap();
        outbox::enqueue(&mut *tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }
    let relay = start_relay(&h, &store, &h.sink_url(&h.broker()), quick_retry(5)).await;
    wait_status(
        &store,
        Duration::from_secs(30),
        "the event to be published",
        |s| s.pending == 0,
    )
    .await;
    let got = h.receive(1, Duration::from_secs(10)).await;
    relay.stop().await;
    assert_eq!(got.len(), 1, "exactly one message: {got:?}");
    let m = &got[0];
    assert_eq!(m.topic, h.order_topic());
    assert_eq!(m.key.as_deref(), Some("o-1"));
    let created: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT created_at FROM outbox WHERE id = $1")
            .bind(event.id())
            .fetch_one(store.pg_pool().unwrap())
            .await
            .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&m.value).expect("JSON value");
    assert_eq!(
        value,
        json!({
            "id": event.id().to_string(), "type": "OrderCreated", "aggregate_id": "o-1",
            "timestamp": outbox_relay::route::envelope::isoformat(&created),
            "order_id": "o-1", "total": 9.5
        })
    );
    let id = event.id().to_string();
    assert_eq!(
        m.headers.get("id"),
        Some(&id),
        "the event id reaches the consumer: {:?}",
        m.headers
    );
    assert_eq!(
        m.headers.get("event_type").map(String::as_str),
        Some("OrderCreated")
    );
    assert_eq!(
        m.headers.get("aggregate_type").map(String::as_str),
        Some("Order")
    );
    assert_eq!(
        m.headers.get("traceparent").map(String::as_str),
        Some("00-abc-01")
    );
    h.cleanup().await;
}

pub async fn keeps_order_per_aggregate<H: Harness>() {
    let db = require!(TestDb::create().await);
    let h = require!(H::setup().await);
    let store = store(&db).await;
    insert_orders(&store, 100, 50, 0).await;
    let relay = start_relay(&h, &store, &h.sink_url(&h.broker()), quick_retry(5)).await;
    wait_status(
        &store,
        Duration::from_secs(120),
        "5000 events to be published",
        |s| s.pending == 0,
    )
    .await;
    let got = h.receive(5000, Duration::from_secs(30)).await;
    relay.stop().await;
    assert_eq!(check_order(&got), 5000);
    h.cleanup().await;
}

pub async fn survives_an_outage<H: Harness>() {
    let db = require!(TestDb::create().await);
    let h = require!(H::setup().await);
    let store = store(&db).await;
    let outage = h.outage().await;
    let relay = start_relay(
        &h,
        &store,
        &h.sink_url(&outage.addr()),
        quick_retry(100_000),
    )
    .await;
    insert_orders(&store, 20, 10, 0).await;
    wait_status(&store, Duration::from_secs(60), "the first events", |s| {
        s.pending == 0
    })
    .await;
    relay.failures.lock().unwrap().clear();
    outage.cut().await;
    insert_orders(&store, 20, 10, 10).await;
    let failed = first_failures(
        &relay.failures,
        Duration::from_secs(60),
        "failed attempts during the outage",
    )
    .await;
    outage.restore().await;
    for e in &failed {
        assert_eq!(
            e.kind,
            ErrorKind::Unavailable,
            "a broker outage is the sink's failure, never the message's: {e}"
        );
    }
    wait_status(
        &store,
        Duration::from_secs(120),
        "every event after the outage",
        |s| s.pending == 0,
    )
    .await;
    let got = h.receive(400, Duration::from_secs(30)).await;
    relay.stop().await;
    assert_eq!(check_order(&got), 400, "nothing lost");
    h.cleanup().await;
}

pub async fn dead_letters_what_the_broker_refuses<H: Harness>() {
    let db = require!(TestDb::create().await);
    let h = require!(H::setup().await);
    let store = store(&db).await;
    let rejection = h.rejection().await;
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('Poison', 'p-1', 'Refused', jsonb_build_object('n', 1, 'blob', repeat('x', $1)))",
    )
    .bind(rejection.payload_bytes as i32)
    .execute(store.pg_pool().unwrap())
    .await
    .unwrap();
    insert_orders(&store, 5, 2, 0).await;
    let relay = start_relay(&h, &store, &h.sink_url(&h.broker()), quick_retry(2)).await;
    wait_status(
        &store,
        Duration::from_secs(60),
        "the dead letter and the other events",
        |s| s.dead_letters == 1 && s.pending == 0,
    )
    .await;
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].aggregate_type, "Poison");
    let refusals: Vec<SinkError> = relay
        .failures
        .lock()
        .unwrap()
        .iter()
        .filter(|(topic, _)| topic.contains("poison"))
        .map(|(_, e)| e.clone())
        .collect();
    assert!(!refusals.is_empty(), "the sink refused the poison message");
    for e in &refusals {
        assert_eq!(e.kind, rejection.kind, "{e}");
    }
    assert!(
        dead[0].error.contains(rejection.reason),
        "the dead letter says why ({:?}): {}",
        rejection.reason,
        dead[0].error
    );
    let got = h.receive(10, Duration::from_secs(10)).await;
    relay.stop().await;
    assert_eq!(check_order(&got), 10, "other events flowed");
    h.cleanup().await;
}

async fn enqueue(store: &Store, event: &outbox::Event) {
    let pool = store.pg_pool().expect("PostgreSQL");
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut *tx, event).await.unwrap();
    tx.commit().await.unwrap();
}

/// Delivers what is pending with a relay of its own (its own connection or producer session),
/// then stops it.
async fn deliver_pending<H: Harness>(h: &H, store: &Store) {
    let relay = start_relay(h, store, &h.sink_url(&h.broker()), quick_retry(5)).await;
    wait_status(store, Duration::from_secs(30), "delivery", |s| {
        s.pending == 0
    })
    .await;
    relay.stop().await;
}

/// Delivers an event, makes it pending again as a relay that died after the broker's
/// acknowledgement and before its mark leaves it, waits `between`, then delivers it again and
/// a later event of its aggregate (a new relay: a new connection or producer session). Returns
/// (the event, the later one): once the later one is in, every copy before it is too.
pub async fn deliver_twice<H: Harness>(
    h: &H,
    store: &Store,
    between: Duration,
) -> (outbox::Event, outbox::Event) {
    let event = outbox::Event::new("Order", "o-1", "OrderCreated", json!({"n": 1}));
    enqueue(store, &event).await;
    deliver_pending(h, store).await;
    sqlx::query("UPDATE outbox SET published_at = NULL WHERE id = $1")
        .bind(event.id())
        .execute(store.pg_pool().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(between).await;
    let later = outbox::Event::new("Order", "o-1", "OrderCancelled", json!({"n": 2}));
    enqueue(store, &later).await;
    deliver_pending(h, store).await;
    (event, later)
}

/// Reads `copies` copies of `event` then `later` from the broker, and checks each copy carries
/// the event id in every header of [`Harness::id_headers`].
pub async fn receive_copies<H: Harness>(
    h: &H,
    (event, later): &(outbox::Event, outbox::Event),
    copies: usize,
) -> Vec<Received> {
    let got = h.receive(copies + 1, Duration::from_secs(30)).await;
    let ids: Vec<Option<&String>> = got.iter().map(|m| m.headers.get("id")).collect();
    assert_eq!(
        got.len(),
        copies + 1,
        "{copies} cop(ies) of the redelivered event, then the next one: {ids:?}"
    );
    let (id, later_id) = (event.id().to_string(), later.id().to_string());
    assert_eq!(got[copies].headers.get("id"), Some(&later_id), "{ids:?}");
    for m in &got[..copies] {
        for name in h.id_headers() {
            assert_eq!(m.headers.get(*name), Some(&id), "{name}: {:?}", m.headers);
        }
        assert_eq!(m.value, got[0].value, "a copy is the same message");
    }
    got
}

/// Feeds every message through the inbox as a consumer does (the effect written only for a new
/// event, in the inbox's transaction) and checks each event's effect exists exactly once.
pub async fn apply_through_the_inbox(pool: &sqlx::PgPool, got: &[Received]) {
    sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    let mut events = Vec::new();
    for m in got {
        let id = uuid::Uuid::parse_str(&m.headers["id"]).expect("a UUID event id");
        events.push(id);
        let mut tx = pool.begin().await.unwrap();
        if outbox::inbox::receive(&mut *tx, "conformance", id)
            .await
            .unwrap()
            == outbox::inbox::Receipt::New
        {
            sqlx::query("INSERT INTO effects VALUES ($1)")
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    events.sort();
    events.dedup();
    let applied: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM effects ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(applied, events, "each event's effect exactly once");
}

/// The delivery-semantics table's row for this sink: an event delivered again is stored once by
/// a broker that dedupes and twice by the others, every copy carrying the event id in the
/// headers the table names; through the inbox (`outbox::inbox`) a consumer applies it once.
pub async fn a_redelivered_event_is_applied_once_through_the_inbox<H: Harness>() {
    let db = require!(TestDb::create().await);
    let h = require!(H::setup().await);
    let store = store(&db).await;
    let sent = deliver_twice(&h, &store, Duration::ZERO).await;
    let copies = if h.broker_dedupes() { 1 } else { 2 };
    let got = receive_copies(&h, &sent, copies).await;
    apply_through_the_inbox(store.pg_pool().unwrap(), &got).await;
    h.cleanup().await;
}
