//! The CDC source against real PostgreSQL (wal_level = logical): streaming, commit order,
//! retries, dead letters, heartbeats, configuration errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_relay::route::debezium::EventRouterOptions;
use outbox_relay::sink::{Message, Sink, SinkError};
use outbox_relay::source::cdc::{CdcOptions, CdcRelay, CdcRouting};
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::{RetryPolicy, Router};
use outbox_testkit::{require, TestDb};
use tokio_util::sync::CancellationToken;

/// Records every publish; refuses aggregates listed in `fail` (retryable) until cleared.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Message>>,
    fail: Mutex<Vec<String>>,
    attempts: Mutex<HashMap<String, usize>>,
}

#[async_trait]
impl Sink for Recorder {
    async fn publish(&self, m: &Message) -> Result<(), SinkError> {
        *self
            .attempts
            .lock()
            .unwrap()
            .entry(m.key.clone())
            .or_default() += 1;
        if self.fail.lock().unwrap().contains(&m.key) {
            return Err(SinkError::retryable(format!("broker refuses {}", m.key)));
        }
        self.seen.lock().unwrap().push(m.clone());
        Ok(())
    }
    fn describe(&self) -> String {
        "recorder".into()
    }
}

impl Recorder {
    fn values(&self) -> Vec<(String, serde_json::Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|m| (m.key.clone(), serde_json::from_slice(&m.value).unwrap()))
            .collect()
    }
    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn slot_name() -> String {
    format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

fn options(slot: &str) -> CdcOptions {
    CdcOptions {
        slot: slot.to_string(),
        publication: slot.to_string(),
        heartbeat_interval: Duration::from_secs(60),
        status_interval: Duration::from_millis(100),
        retry: RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
            max_attempts: 3,
            jitter: 0.0,
        },
        ..CdcOptions::default()
    }
}

async fn setup(db: &TestDb) -> (Store, sqlx::PgPool) {
    let store = Store::connect(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pg_pool().unwrap().clone();
    (store, pool)
}

struct Running {
    relay: Arc<CdcRelay>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), outbox_relay::Error>>,
}

impl Running {
    async fn start(relay: CdcRelay) -> Running {
        let relay = Arc::new(relay);
        relay.prepare().await.unwrap();
        let stop = CancellationToken::new();
        let task = {
            let (relay, stop) = (relay.clone(), stop.clone());
            tokio::spawn(async move { relay.run(stop).await })
        };
        let state = relay.state();
        wait(Duration::from_secs(20), "the relay to stream", || {
            state.is_streaming()
        })
        .await;
        Running { relay, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("relay stops")
            .unwrap()
            .unwrap();
    }
}

async fn wait(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn insert(pool: &sqlx::PgPool, agg: &str, n: i64) {
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('Order', $1, 'Step', jsonb_build_object('n', $2::bigint))",
    )
    .bind(agg)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// Drops a test's slot (slots are cluster-global), waiting for its reader to let go.
async fn drop_slot(pool: &sqlx::PgPool, slot: &str) {
    outbox_relay::store::replication::drop_slot(pool, slot, Duration::from_secs(10))
        .await
        .expect("drop the test's slot");
}

#[tokio::test(flavor = "multi_thread")]
async fn inserts_stream_in_commit_order_updates_and_deletes_are_ignored() {
    let db = require!(TestDb::create().await);
    let (store, pool) = setup(&db).await;
    let slot = slot_name();
    let sink = Arc::new(Recorder::default());
    let relay = CdcRelay::new(
        store,
        &db.url,
        sink.clone(),
        CdcRouting::Router(Router::default()),
        options(&slot),
    );
    let run = Running::start(relay).await;

    // Two transactions on one aggregate, committed in the opposite order of their inserts:
    // the later commit's event was written first, and it must leave second.
    let mut t1 = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('Order', 'a', 'First', '{\"n\": 1}')")
        .execute(&mut *t1).await.unwrap();
    let mut t2 = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('Order', 'a', 'Second', '{\"n\": 2}')")
        .execute(&mut *t2).await.unwrap();
    t2.commit().await.unwrap();
    t1.commit().await.unwrap();
    // Insert and delete in one transaction: delivered once, the table stays empty of it.
    let mut t3 = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('Order', 'b', 'Gone', '{\"n\": 3}')")
        .execute(&mut *t3).await.unwrap();
    sqlx::query("DELETE FROM outbox WHERE aggregate_id = 'b'")
        .execute(&mut *t3)
        .await
        .unwrap();
    t3.commit().await.unwrap();
    // Updates (e.g. a polling relay marking rows) are not events.
    sqlx::query("UPDATE outbox SET published_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    insert(&pool, "c", 4).await;

    wait(Duration::from_secs(20), "4 events", || sink.len() >= 4).await;
    let got = sink.values();
    let a: Vec<i64> = got
        .iter()
        .filter(|(k, _)| k == "a")
        .map(|(_, v)| v["n"].as_i64().unwrap())
        .collect();
    assert_eq!(a, [2, 1], "commit order, not insert order");
    let m = sink.seen.lock().unwrap()[0].clone();
    assert_eq!(m.topic, "order-events");
    assert!(got.iter().any(|(k, v)| k == "b" && v["type"] == "Gone"));
    // Nothing else arrives (the UPDATE and DELETE produced no events).
    let last_c = sink.values().iter().position(|(k, _)| k == "c");
    assert!(last_c.is_some());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_id = 'b'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    // The slot is confirmed past everything once it is delivered.
    let state = run.relay.state();
    let end: i64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8")
        .fetch_one(&pool)
        .await
        .unwrap();
    wait(
        Duration::from_secs(20),
        "the confirmed LSN to pass the last commit",
        || state.confirmed_lsn() as i64 >= end - 200_000,
    )
    .await;
    assert_eq!(sink.len(), 4, "exactly once each");
    run.stop().await;
    // The stop reported the confirmed position to the server (whose walsender records it in
    // the slot as it reads the report: bounded wait, not an instant).
    let confirmed = state.confirmed_lsn() as i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut flushed = outbox_testkit::confirmed_flush(&pool, &slot).await;
    while flushed < confirmed && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        flushed = outbox_testkit::confirmed_flush(&pool, &slot).await;
    }
    assert!(
        flushed >= confirmed,
        "the slot's confirmed_flush_lsn {flushed} reached the relay's {confirmed}"
    );
    drop_slot(&pool, &slot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_retry_in_memory_then_dead_letter_and_replay_comes_back_in_order() {
    let db = require!(TestDb::create().await);
    let (store, pool) = setup(&db).await;
    let slot = slot_name();
    let sink = Arc::new(Recorder::default());
    sink.fail.lock().unwrap().push("bad".into());
    let relay = CdcRelay::new(
        store.clone(),
        &db.url,
        sink.clone(),
        CdcRouting::Router(Router::default()),
        options(&slot),
    );
    let run = Running::start(relay).await;
    let before = outbox_testkit::confirmed_flush(&pool, &slot).await;
    insert(&pool, "bad", 1).await;
    insert(&pool, "good", 1).await;
    insert(&pool, "bad", 2).await;
    insert(&pool, "good", 2).await;

    // The good aggregate is not held up by the failing one.
    wait(Duration::from_secs(20), "good events", || {
        sink.values().iter().filter(|(k, _)| k == "good").count() == 2
    })
    .await;
    // bad#1 fails 3 times, then both bad events are dead letters (the second waits behind).
    let dead = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, i32, String)>(
            "SELECT payload->>'n', retry_count, error FROM outbox_dead_letter ORDER BY seq",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = dead(pool.clone()).await;
        if rows.len() == 2 || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "1");
    assert_eq!(rows[0].1, 3);
    assert!(
        rows[0]
            .2
            .contains("gave up after 3 attempts: broker refuses bad"),
        "{rows:?}"
    );
    assert!(
        rows[1].2.starts_with("waiting behind dead letter "),
        "{rows:?}"
    );
    assert_eq!(
        sink.attempts.lock().unwrap()["bad"],
        3,
        "bad#2 was never attempted"
    );
    // The error history: the two retried failures and the one that gave it up.
    let history: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT jsonb_array_length(error_history)::int8,
                (SELECT count(*) FROM jsonb_array_elements(error_history) e
                 WHERE (e->>'counted')::bool AND e->>'error' LIKE '%broker refuses bad%')
         FROM outbox_dead_letter ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        [(3, 3), (1, 0)],
        "bad#1: 3 failures; bad#2: why it waited"
    );
    // Everything is done: the slot moves on.
    let state = run.relay.state();
    wait(Duration::from_secs(20), "the slot to be confirmed", || {
        state.confirmed_lsn() as i64 > before
    })
    .await;
    // A new event of the aggregate follows its dead letters.
    insert(&pool, "bad", 3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dead(pool.clone()).await.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad#3 dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The broker recovers; replay brings all three back through the WAL, in order.
    sink.fail.lock().unwrap().clear();
    let replayed = store.replay(None).await.unwrap();
    assert_eq!(replayed.len(), 3);
    wait(Duration::from_secs(20), "the replayed events", || {
        sink.values().iter().filter(|(k, _)| k == "bad").count() == 3
    })
    .await;
    let bad: Vec<i64> = sink
        .values()
        .iter()
        .filter(|(k, _)| k == "bad")
        .map(|(_, v)| v["n"].as_i64().unwrap())
        .collect();
    assert_eq!(bad, [1, 2, 3]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letter")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    run.stop().await;
    drop_slot(&pool, &slot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_database_still_advances_the_slot() {
    let db = require!(TestDb::create().await);
    let (store, pool) = setup(&db).await;
    let slot = slot_name();
    let relay = CdcRelay::new(
        store,
        &db.url,
        Arc::new(outbox_relay::sink::NoopSink),
        CdcRouting::Router(Router::default()),
        CdcOptions {
            heartbeat_interval: Duration::from_millis(500),
            ..options(&slot)
        },
    );
    let run = Running::start(relay).await;
    let first = outbox_testkit::confirmed_flush(&pool, &slot).await;
    // Nothing is written to this database but the relay's heartbeats (other databases of the
    // cluster may be busy: their WAL moves the slot too, through keep-alives).
    let state = run.relay.state();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = outbox_testkit::confirmed_flush(&pool, &slot).await;
        if now > first && state.heartbeats() >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot's confirmed LSN did not move from {first}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        run.relay.state().heartbeats() >= 1,
        "a heartbeat was written"
    );
    let lag: i64 = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(lag >= 0);
    run.stop().await;
    // `outbox status` sees the slot and its lag.
    let store = Store::connect(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    let status = store.status().await.unwrap();
    assert!(
        status
            .replication_slots
            .iter()
            .any(|s| s.slot == slot && s.lag_bytes.is_some()),
        "{status:?}"
    );
    drop_slot(&pool, &slot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_problems_are_clear_errors() {
    let db = require!(TestDb::create().await);
    let (store, pool) = setup(&db).await;

    // A user without the REPLICATION privilege.
    let role = format!(
        "norepl_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let weak = Store::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    let slot = slot_name();
    let relay = CdcRelay::new(
        weak.clone(),
        &url,
        Arc::new(outbox_relay::sink::NoopSink),
        CdcRouting::Router(Router::default()),
        options(&slot),
    );
    let err = relay.prepare().await.unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(
        err.to_string().contains("lacks the REPLICATION privilege"),
        "{err}"
    );
    if let Some(p) = weak.pg_pool() {
        p.close().await;
    }
    sqlx::query(&format!("DROP OWNED BY {role}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&pool)
        .await
        .unwrap();

    // EventRouter options naming columns the table does not have.
    let (opts, _) = EventRouterOptions::from_options([]).unwrap();
    let relay = CdcRelay::new(
        store.clone(),
        &db.url,
        Arc::new(outbox_relay::sink::NoopSink),
        CdcRouting::EventRouter(opts),
        options(&slot),
    );
    let err = relay.prepare().await.unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("no column aggregateid"), "{err}");

    // A second reader without standby fails naming the slot's holder.
    let relay = CdcRelay::new(
        store.clone(),
        &db.url,
        Arc::new(outbox_relay::sink::NoopSink),
        CdcRouting::Router(Router::default()),
        options(&slot),
    );
    let run = Running::start(relay).await;
    let second = CdcRelay::new(
        store,
        &db.url,
        Arc::new(outbox_relay::sink::NoopSink),
        CdcRouting::Router(Router::default()),
        CdcOptions {
            standby: false,
            ..options(&slot)
        },
    );
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        second.run(CancellationToken::new()),
    )
    .await
    .expect("the second reader gives up at once")
    .unwrap_err();
    assert!(
        err.to_string().contains("is in use by another reader"),
        "{err}"
    );
    run.stop().await;
    drop_slot(&pool, &slot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_in_debeziums_default_shape_routes_with_debeziums_defaults() {
    let db = require!(TestDb::create().await);
    let (store, pool) = setup(&db).await;
    sqlx::query(
        "CREATE TABLE inventory_outboxevent (
             id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
             aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let slot = slot_name();
    let sink = Arc::new(Recorder::default());
    let (router, _) = EventRouterOptions::from_options([]).unwrap();
    let relay = CdcRelay::new(
        store,
        &db.url,
        sink.clone(),
        CdcRouting::EventRouter(router),
        CdcOptions {
            tables: vec![outbox_relay::source::cdc::TableName::parse(
                "public.inventory_outboxevent",
            )
            .unwrap()],
            ..options(&slot)
        },
    );
    let run = Running::start(relay).await;
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO inventory_outboxevent VALUES ($1, 'order', '1', 'OrderCreated', '{\"id\": 1, \"customerId\": 123}')",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    // Rows of other tables are not captured.
    insert(&pool, "x", 1).await;
    wait(Duration::from_secs(20), "the event", || sink.len() >= 1).await;
    let m = sink.seen.lock().unwrap()[0].clone();
    assert_eq!(m.topic, "outbox.event.order");
    assert_eq!(m.key, "\"1\"");
    assert_eq!(&m.value[..], br#""{\"id\": 1, \"customerId\": 123}""#);
    assert_eq!(m.headers, [("id".to_string(), id.to_string())]);
    run.stop().await;
    assert_eq!(sink.len(), 1);
    drop_slot(&pool, &slot).await;
}

/// Events without a table (`outbox::emit`): routed exactly like rows (the same message for the
/// same event written either way), in order per aggregate beside the table's rows; a
/// rolled-back transaction emits nothing; a message that is not a JSON object, or lacks a
/// column, is dead-lettered with the reason; messages of other prefixes are not events.
#[tokio::test(flavor = "multi_thread")]
async fn emitted_messages_are_routed_like_rows() {
    let db = require!(TestDb::create().await);
    let (store, pool) = setup(&db).await;
    let slot = slot_name();
    let sink = Arc::new(Recorder::default());
    let relay = CdcRelay::new(
        store.clone(),
        &db.url,
        sink.clone(),
        CdcRouting::Router(Router::default()),
        options(&slot),
    );
    let run = Running::start(relay).await;

    // The same event written as a row and emitted (different ids, so both are delivered).
    let as_row = outbox::Event::new("Order", "row", "OrderCreated", serde_json::json!({"n": 1}))
        .with_header("traceparent", "00-abc");
    let as_message =
        outbox::Event::new("Order", "msg", "OrderCreated", serde_json::json!({"n": 1}))
            .with_header("traceparent", "00-abc");
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut *tx, &as_row).await.unwrap();
    outbox::emit(&mut tx, &as_message).await.unwrap();
    tx.commit().await.unwrap();
    // Rolled back: nothing.
    let mut tx = pool.begin().await.unwrap();
    let ghost = outbox::Event::new("Order", "ghost", "OrderCreated", serde_json::json!({}));
    outbox::emit(&mut tx, &ghost).await.unwrap();
    tx.rollback().await.unwrap();
    // Order per aggregate: ten emitted in three transactions (one of them emit_all).
    let seq = |n: i64| outbox::Event::new("Order", "o-1", "Step", serde_json::json!({"n": n}));
    let mut tx = pool.begin().await.unwrap();
    for n in 1..=3 {
        outbox::emit(&mut tx, &seq(n)).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let batch: Vec<_> = (4..=9).map(seq).collect();
    outbox::emit_all(&mut tx, &batch).await.unwrap();
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    outbox::emit(&mut conn, &seq(10)).await.unwrap();
    // Not events: another prefix; non-transactional; bad contents are dead letters.
    for sql in [
        "SELECT pg_logical_emit_message(true, 'other', '{}')",
        "SELECT pg_logical_emit_message(false, 'outbox', '{}')",
        "SELECT pg_logical_emit_message(true, 'outbox', 'not json')",
        r#"SELECT pg_logical_emit_message(true, 'outbox', '{"id": "0190a6b2-1111-7000-8000-000000000009", "aggregate_type": "Order"}')"#,
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    wait(Duration::from_secs(20), "12 events delivered", || {
        sink.len() >= 12
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let dead: Vec<(String, String)> = loop {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT payload::text, error FROM outbox_dead_letter ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        if rows.len() >= 2 || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A message the sink refuses is dead-lettered with its LSN as seq; replayed, it comes back
    // as a row of the table with that seq, and the table's identity moves past it.
    sink.fail.lock().unwrap().push("flaky".into());
    let flaky = outbox::Event::new("Order", "flaky", "OrderCreated", serde_json::json!({}));
    outbox::emit(&mut conn, &flaky).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let flaky_seq: i64 = loop {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM outbox_dead_letter WHERE original_id = $1")
                .bind(flaky.id())
                .fetch_optional(&pool)
                .await
                .unwrap();
        match seq {
            Some(seq) => break seq,
            None if tokio::time::Instant::now() > deadline => panic!("flaky not dead-lettered"),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    sink.fail.lock().unwrap().clear();
    assert_eq!(store.replay(Some(&[flaky.id()])).await.unwrap().len(), 1);
    wait(Duration::from_secs(20), "the replayed message", || {
        sink.seen.lock().unwrap().iter().any(|m| m.key == "flaky")
    })
    .await;
    let next: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('Order', 'after', 'E', '{}') RETURNING seq",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        next > flaky_seq,
        "identity {next} moved past the replayed {flaky_seq}"
    );
    wait(Duration::from_secs(20), "the row after", || {
        sink.seen.lock().unwrap().iter().any(|m| m.key == "after")
    })
    .await;
    run.stop().await;

    let seen = sink.seen.lock().unwrap().clone();
    let by_key = |k: &str| -> Vec<&Message> { seen.iter().filter(|m| m.key == k).collect() };
    assert!(
        by_key("ghost").is_empty(),
        "a rolled-back emit was delivered"
    );
    let (row, msg) = (by_key("row"), by_key("msg"));
    assert_eq!((row.len(), msg.len()), (1, 1));
    assert_eq!(row[0].topic, msg[0].topic);
    let strip = |m: &Message| {
        let mut v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("id");
        o.remove("aggregate_id");
        o.remove("timestamp");
        let mut h: Vec<(String, String)> = m
            .headers
            .iter()
            // The seq header differs by nature: the row's identity value, the message's LSN.
            .filter(|(k, _)| k != "id" && k != "seq")
            .cloned()
            .collect();
        h.sort();
        (v, h)
    };
    assert_eq!(
        strip(row[0]),
        strip(msg[0]),
        "the same envelope and headers"
    );
    assert!(msg[0]
        .headers
        .iter()
        .any(|(k, v)| k == "id" && *v == as_message.id().to_string()));
    let order: Vec<i64> = by_key("o-1")
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.value).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(order, (1..=10).collect::<Vec<_>>());
    assert_eq!(seen.len(), 14, "no other message was an event");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .any(|(p, e)| p.contains("not json") && e.contains("not a JSON object")),
        "{dead:?}"
    );
    assert!(
        dead.iter().any(|(_, e)| e.contains("aggregate_id")),
        "{dead:?}"
    );
    outbox_relay::store::replication::drop_slot(&pool, &slot, Duration::from_secs(10))
        .await
        .unwrap();
}
