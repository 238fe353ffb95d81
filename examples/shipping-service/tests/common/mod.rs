//! Helpers for the shipping-service's tests: run the binary, publish order events, read the
//! service's tables.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use uuid::Uuid;

pub use outbox_testkit::{require, TestDb};

/// An order event as the relay's reference envelope carries it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Uuid,
    pub event_type: &'static str,
    pub order_id: String,
    pub seq: i64,
}

impl Event {
    pub fn created(order_id: &str, seq: i64) -> Event {
        Event {
            id: Uuid::now_v7(),
            event_type: "OrderCreated",
            order_id: order_id.to_string(),
            seq,
        }
    }

    pub fn cancelled(order_id: &str, seq: i64) -> Event {
        Event {
            event_type: "OrderCancelled",
            ..Event::created(order_id, seq)
        }
    }

    /// The headers the relay sets (`id`, `event_type`, `aggregate_type`, `seq`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("event_type", self.event_type.to_string()),
            ("aggregate_type", "Order".to_string()),
            ("seq", self.seq.to_string()),
        ]
    }

    /// The reference envelope's value.
    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": self.id, "type": self.event_type, "aggregate_id": self.order_id,
            "timestamp": "2026-12-03T12:00:00+00:00",
            "order_id": self.order_id, "customer_id": "c-1",
            "items": [{"sku": "book", "quantity": 1, "price": 9.5}], "total": 9.5,
            "reason": "changed my mind",
        }))
        .unwrap()
    }
}

/// Ten orders: each created, every other one then cancelled (15 events).
pub fn workload() -> Vec<Event> {
    let mut events = Vec::new();
    for n in 0..10 {
        let order = format!("o-{n}");
        events.push(Event::created(&order, 2 * n + 1));
        if n % 2 == 0 {
            events.push(Event::cancelled(&order, 2 * n + 2));
        }
    }
    events
}

/// A running `shipping-service`, killed when dropped.
pub struct Service {
    pub child: Child,
}

/// Starts `shipping-service` with `args` (and `env`), its output inherited for failure logs.
pub fn start(
    db_url: &str,
    from: &str,
    topic: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Service {
    let child = Command::new(env!("CARGO_BIN_EXE_shipping-service"))
        .args(["--database-url", db_url, "--from", from, "--topic", topic])
        .args(args)
        .env_remove("SHIPPING_SERVICE_CRASH")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run shipping-service");
    Service { child }
}

impl Service {
    /// Waits (bounded) for the process to end; its exit status.
    pub async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("shipping-service did not exit within {limit:?}"))
            .expect("wait for shipping-service")
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on a child we spawned.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.wait(Duration::from_secs(30)).await;
        assert!(status.success(), "a clean stop on SIGTERM: {status:?}");
    }

    /// Waits for the test-only crash switch to abort the process.
    pub async fn wait_crash(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let status = self.wait(Duration::from_secs(60)).await;
        assert_eq!(status.signal(), Some(libc::SIGABRT), "aborted: {status:?}");
    }
}

/// What the service's tables hold.
#[derive(Debug, PartialEq)]
pub struct Tables {
    /// order id → (status, events applied).
    pub shipments: BTreeMap<String, (String, i32)>,
    /// Rows in the inbox.
    pub inbox: i64,
}

pub async fn tables(pool: &sqlx::PgPool) -> Tables {
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT order_id, status, events FROM shipments")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let inbox = sqlx::query_scalar("SELECT count(*) FROM outbox_inbox")
        .fetch_one(pool)
        .await
        .unwrap_or(0);
    Tables {
        shipments: rows.into_iter().map(|(o, s, e)| (o, (s, e))).collect(),
        inbox,
    }
}

/// What the tables must hold once every event of `events` was applied exactly once.
pub fn expected(events: &[Event]) -> Tables {
    let mut shipments: BTreeMap<String, (String, i32)> = BTreeMap::new();
    for e in events {
        let entry = shipments
            .entry(e.order_id.clone())
            .or_insert(("ready".into(), 0));
        entry.1 += 1;
        if e.event_type == "OrderCancelled" {
            entry.0 = "cancelled".into();
        }
    }
    Tables {
        shipments,
        inbox: events.len() as i64,
    }
}

/// Waits (bounded) until `check` holds; panics with `what` and the last value otherwise.
pub async fn wait_until<T: std::fmt::Debug, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (done, value) = check().await;
        if done {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A broker the scenarios run against.
pub trait Broker {
    /// `--from`.
    fn from(&self) -> String;
    /// `--topic`.
    fn topic(&self) -> String;
    /// Extra arguments for the service (short redelivery delays for tests).
    fn args(&self) -> Vec<String>;
    /// Publishes `events` in order, as a relay would, each acknowledged by the broker.
    async fn publish(&self, events: &[Event]);
    /// True once the service's consumer has acknowledged every message.
    async fn drained(&self) -> bool;
}

fn run<B: Broker>(b: &B, db: &TestDb, crash: Option<&str>) -> Service {
    let args = b.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = crash
        .map(|c| ("SHIPPING_SERVICE_CRASH", c))
        .into_iter()
        .collect();
    start(&db.url, &b.from(), &b.topic(), &args, &env)
}

/// Waits (bounded) until every message is acknowledged and the tables hold `want`.
async fn settle<B: Broker>(b: &B, pool: &sqlx::PgPool, want: &Tables) {
    wait_until(
        Duration::from_secs(60),
        "every message handled and acknowledged",
        || async {
            let got = tables(pool).await;
            (&got == want && b.drained().await, got)
        },
    )
    .await;
}

/// The same events published twice (a relay's redelivery), an order whose cancellation comes
/// before its creation, and the service killed between a commit and its acknowledgement, then
/// restarted: each event's effect exists exactly once, the late creation is skipped as stale.
pub async fn duplicates_and_a_crash_after_commit_apply_each_event_once<B: Broker>(
    b: &B,
    db: &TestDb,
) {
    let events = workload();
    b.publish(&events).await;
    b.publish(&events).await;
    let late = [Event::cancelled("o-late", 2), Event::created("o-late", 1)];
    b.publish(&late).await;

    let mut service = run(b, db, Some("after-commit:5"));
    service.wait_crash().await;
    let pool = db.pool().await;
    assert_eq!(
        tables(&pool).await.inbox,
        5,
        "the fifth message's transaction committed before the crash, its ack did not happen"
    );

    let service = run(b, db, None);
    let mut want = expected(&events);
    want.shipments
        .insert("o-late".into(), ("cancelled".into(), 1));
    want.inbox += 2;
    settle(b, &pool, &want).await;
    service.stop().await;
}

/// A crash before the commit leaves nothing of the message; after a restart it is processed.
pub async fn a_crash_before_commit_leaves_nothing_and_the_redelivery_is_processed<B: Broker>(
    b: &B,
    db: &TestDb,
) {
    let events = &workload()[..3];
    b.publish(events).await;
    let mut service = run(b, db, Some("before-commit:2"));
    service.wait_crash().await;
    let pool = db.pool().await;
    assert_eq!(
        tables(&pool).await,
        expected(&events[..1]),
        "only the first message's transaction committed"
    );
    let service = run(b, db, None);
    settle(b, &pool, &expected(events)).await;
    service.stop().await;
}
