//! Memory bounded in bytes, against real PostgreSQL (and SQLite): the CDC relay holds at most
//! `max_buffer_bytes` (plus one event) of events while its sink is down and reads on when it
//! is back; a polled batch stops at its byte bound; an event larger than the bound still goes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_relay::route::{Envelope, Template};
use outbox_relay::sink::{Message, Sink, SinkError};
use outbox_relay::source::cdc::{CdcOptions, CdcRelay, CdcRouting};
use outbox_relay::store::{ConnectOptions, Partition, Settlement, Store};
use outbox_relay::{RetryPolicy, Router};
use outbox_testkit::{require, TestDb};
use tokio_util::sync::CancellationToken;

/// A broker that is down while `down` is set; records `(aggregate, n)` of what it took.
#[derive(Default)]
struct Gate {
    down: AtomicBool,
    attempts: AtomicUsize,
    seen: Mutex<Vec<(String, i64)>>,
}

#[async_trait]
impl Sink for Gate {
    async fn publish(&self, m: &Message) -> Result<(), SinkError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Err(SinkError::unavailable("broker down"));
        }
        let v: serde_json::Value = serde_json::from_slice(&m.value).expect("JSON payload");
        let n = v["n"].as_i64().expect("payload n");
        self.seen.lock().unwrap().push((m.key.clone(), n));
        Ok(())
    }
    fn describe(&self) -> String {
        "gate".into()
    }
}

/// Waits (at most `limit`) until `done`.
async fn wait(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let poll = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(limit, poll).await.is_err() {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// Inserts events `n` of `aggregate` with a payload of about `pad` bytes, in one transaction.
async fn insert(pool: &sqlx::PgPool, rows: &[(String, i64)], pad: usize) {
    let mut tx = pool.begin().await.unwrap();
    for (aggregate, n) in rows {
        sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('Order', $1, 'Big', jsonb_build_object('n', $2::bigint, 'pad', repeat('x', $3)))",
        )
        .bind(aggregate)
        .bind(n)
        .bind(pad as i32)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cdc_relay_holds_at_most_its_byte_bound_while_the_sink_is_down() {
    const BOUND: u64 = 256 * 1024;
    const PAD: usize = 32 * 1024;
    const BIG: usize = 600 * 1024;
    const EVENTS: i64 = 120;
    let db = require!(TestDb::create().await);
    let store = Store::connect(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pg_pool().unwrap().clone();
    let slot = format!("m_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let sink = Arc::new(Gate::default());
    sink.down.store(true, Ordering::Relaxed);
    let router = Router::new(Template::parse("orders").unwrap(), Envelope::Debezium);
    let relay = CdcRelay::new(
        store,
        &db.url,
        sink.clone(),
        CdcRouting::Router(router),
        CdcOptions {
            slot: slot.clone(),
            publication: slot.clone(),
            heartbeat_interval: Duration::from_secs(60),
            status_interval: Duration::from_millis(100),
            max_buffer_bytes: BOUND,
            retry: RetryPolicy {
                base: Duration::from_millis(20),
                max: Duration::from_millis(100),
                max_attempts: 1_000_000,
                jitter: 0.0,
            },
            ..CdcOptions::default()
        },
    );
    let state = relay.state();
    relay.prepare().await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { relay.run(stop).await }
    });
    wait(Duration::from_secs(20), "streaming", || {
        state.is_streaming()
    })
    .await;

    // About 4 MB of events (16 times the bound) on four aggregates, then one event larger
    // than the bound.
    let rows: Vec<(String, i64)> = (0..EVENTS).map(|n| (format!("o-{}", n % 4), n)).collect();
    for chunk in rows.chunks(30) {
        insert(&pool, chunk, PAD).await;
    }
    insert(&pool, &[("o-big".to_string(), EVENTS)], BIG).await;

    // The sink is down: the relay fills its budget and reads no further, however long the
    // retries go on.
    wait(Duration::from_secs(30), "the buffer to fill", || {
        state.buffered_bytes() >= BOUND
    })
    .await;
    let attempts = sink.attempts.load(Ordering::Relaxed);
    wait(Duration::from_secs(30), "50 more failed attempts", || {
        sink.attempts.load(Ordering::Relaxed) >= attempts + 50
    })
    .await;
    let one_event = (PAD + 1024) as u64;
    assert!(
        state.peak_buffered_bytes() < BOUND + one_event,
        "held {} bytes with a bound of {BOUND} and events of about {PAD}",
        state.peak_buffered_bytes()
    );
    assert!(sink.seen.lock().unwrap().is_empty());

    // Back up: everything arrives, in order per aggregate, the large event too.
    sink.down.store(false, Ordering::Relaxed);
    wait(Duration::from_secs(60), "every event", || {
        sink.seen.lock().unwrap().len() as i64 > EVENTS
    })
    .await;
    let seen = sink.seen.lock().unwrap().clone();
    assert_eq!(seen.len() as i64, EVENTS + 1, "each event once");
    let mut per_aggregate: HashMap<&str, Vec<i64>> = HashMap::new();
    for (aggregate, n) in &seen {
        per_aggregate.entry(aggregate).or_default().push(*n);
    }
    for (aggregate, ns) in &per_aggregate {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{aggregate}: {ns:?}");
    }
    assert_eq!(per_aggregate["o-big"], [EVENTS]);
    assert!(
        state.peak_buffered_bytes() < BOUND + (BIG + 1024) as u64,
        "held {} bytes: more than the bound plus the one large event",
        state.peak_buffered_bytes()
    );
    wait(Duration::from_secs(20), "the buffer to empty", || {
        state.buffered_bytes() == 0
    })
    .await;

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("relay stops")
        .unwrap()
        .unwrap();
    outbox_relay::store::replication::drop_slot(&pool, &slot, Duration::from_secs(10))
        .await
        .expect("drop the test's slot");
}

/// The `n` of each claimed record.
fn ns(claim: &outbox_relay::store::Claim) -> Vec<i64> {
    claim
        .records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
            v["n"].as_i64().unwrap()
        })
        .collect()
}

/// Claims the pending rows in byte-bounded batches of up to 10 (each published as claimed):
/// the `n`s of each batch.
async fn drain(store: &Store, max_bytes: u64) -> Vec<Vec<i64>> {
    let mut batches = Vec::new();
    loop {
        let c = store
            .claim_bounded(10, max_bytes, true, Partition::WHOLE)
            .await
            .unwrap();
        if c.records.is_empty() {
            c.release().await;
            return batches;
        }
        batches.push(ns(&c));
        let published = c.records.iter().map(|r| r.seq).collect();
        c.settle(&Settlement {
            published,
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_polled_batch_stops_at_its_byte_bound() {
    let db = require!(TestDb::create().await);
    let store = Store::connect(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.pg_pool().unwrap();
    // Payloads of about 100 kB that compress well (as stored they are small: the bound is on
    // the text the relay receives), one of 300 kB, two small ones, on two aggregates.
    let rows: Vec<(String, i64)> = (1..=3).map(|n| (format!("a{}", n % 2), n)).collect();
    insert(pool, &rows, 100_000).await;
    insert(pool, &[("a0".to_string(), 4)], 300_000).await;
    insert(pool, &[("a1".to_string(), 5), ("a0".to_string(), 6)], 10).await;
    // A claim released unsettled gives the rows back, those past the bound included.
    let c = store
        .claim_bounded(10, 250_000, true, Partition::WHOLE)
        .await
        .unwrap();
    assert_eq!(ns(&c), [1, 2, 3], "three rows start under 250 kB");
    c.release().await;
    // Each batch starts under the bound; the large row goes alone.
    assert_eq!(
        drain(&store, 250_000).await,
        [vec![1, 2, 3], vec![4], vec![5, 6]]
    );
}

#[tokio::test]
async fn a_sqlite_batch_stops_at_its_byte_bound() {
    let path =
        std::env::temp_dir().join(format!("outbox-bytes-{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite:{}", path.display());
    let opts = ConnectOptions {
        create_sqlite_file: true,
        ..ConnectOptions::default()
    };
    let store = Store::connect(&url, &opts).await.unwrap();
    store.migrate().await.unwrap();
    for (n, pad) in [(1, 1000), (2, 1000), (3, 5000), (4, 10)] {
        sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('T', 'a', 'E', json_object('n', ?1, 'pad', printf('%.*c', ?2, 'x')))",
        )
        .bind(n)
        .bind(pad)
        .execute(store.sqlite_pool().unwrap())
        .await
        .unwrap();
    }
    assert_eq!(
        drain(&store, 1500).await,
        [vec![1, 2], vec![3], vec![4]],
        "batches start under 1500 bytes; the large row goes alone"
    );
    let _ = std::fs::remove_file(&path);
}
