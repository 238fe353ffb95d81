//! The claim's guarantees and the admin statements on MySQL, against the real MariaDB; the
//! schema's migrations (twice, concurrently) and plain-SQL writers.

use std::time::Duration;

use outbox_relay::store::{ConnectOptions, Partition, Postponed, Settlement, Store};
use outbox_testkit::{require, MysqlTestDb};

async fn store(db: &MysqlTestDb) -> Store {
    let s = Store::connect(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    s.migrate().await.unwrap();
    s
}

async fn insert(store: &Store, rows: &[(&str, i64)]) {
    let pool = store.mysql_pool().unwrap();
    for (agg, n) in rows {
        sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('T', ?, 'E', JSON_OBJECT('n', ?))")
            .bind(agg)
            .bind(n)
            .execute(pool)
            .await
            .unwrap();
    }
}

/// "a1", "b2", …: aggregate id and payload n of each claimed record.
fn aggs(claim: &outbox_relay::store::Claim) -> Vec<String> {
    claim
        .records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
            format!("{}{}", r.aggregate_id, v["n"])
        })
        .collect()
}

fn postponed(seq: i64, secs: u64, error: &str, counted: bool) -> Postponed {
    Postponed {
        seq,
        delay: Duration::from_secs(secs),
        error: error.into(),
        counted,
    }
}

#[tokio::test]
async fn migrate_twice_and_concurrently_applies_each_version_once() {
    let db = require!(MysqlTestDb::create().await);
    let options = ConnectOptions::default();
    let stores: Vec<Store> =
        futures::future::join_all((0..4).map(|_| Store::connect(&db.url, &options)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let reports = futures::future::join_all(stores.iter().map(|s| s.migrate())).await;
    let mut applied = 0;
    for r in reports {
        let r = r.unwrap();
        assert_eq!(r.version, outbox::SCHEMA_VERSION);
        applied += r.applied.len();
    }
    assert_eq!(applied as i64, outbox::SCHEMA_VERSION, "each version once");
    let again = stores[0].migrate().await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM outbox_migrations ORDER BY version")
            .fetch_all(stores[0].mysql_pool().unwrap())
            .await
            .unwrap();
    assert_eq!(versions, (1..=outbox::SCHEMA_VERSION).collect::<Vec<_>>());
    assert_eq!(
        stores[0].ensure_schema().await.unwrap(),
        outbox::SCHEMA_VERSION
    );
}

#[tokio::test]
async fn a_plain_sql_insert_naming_four_columns_gets_id_and_timestamps() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    // A writer in another time zone: the defaults are UTC whatever the session says.
    let pool = db.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET time_zone = '+05:00'")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('Order', 'o-1', 'OrderCreated', '{\"order_id\": \"o-1\"}')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let c = s.claim(10, true).await.unwrap();
    assert_eq!(c.records.len(), 1);
    let r = &c.records[0];
    assert!(!r.id.is_nil(), "a UUID by default");
    assert_eq!((r.retry_count, r.seq), (0, 1));
    let skew = (chrono::Utc::now() - r.created_at).num_seconds().abs();
    assert!(
        skew < 60,
        "created_at is UTC: {} ({skew} s off)",
        r.created_at
    );
    c.release().await;
}

#[tokio::test]
async fn enqueue_writes_in_the_callers_transaction_in_order() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    let pool = s.mysql_pool().unwrap();
    let events: Vec<outbox::Event> = (1..=3)
        .map(|n| outbox::Event::new("T", "a", "E", serde_json::json!({ "n": n })))
        .collect();
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue_all(&mut *tx, &events).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        s.status().await.unwrap().pending,
        0,
        "rolled back with the caller"
    );
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue_all(&mut *tx, &events).await.unwrap();
    outbox::enqueue(
        &mut *tx,
        &outbox::Event::new("T", "b", "E", serde_json::json!({ "n": 1 }))
            .with_header("traceparent", "00-abc-01"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let c = s.claim(10, true).await.unwrap();
    assert_eq!(aggs(&c), ["a1", "a2", "a3", "b1"]);
    assert_eq!(c.records[0].id, events[0].id());
    let h: serde_json::Value =
        serde_json::from_str(c.records[3].headers.as_deref().unwrap()).unwrap();
    assert_eq!(h["traceparent"], "00-abc-01");
    c.release().await;
}

#[tokio::test]
async fn a_second_claim_skips_aggregates_the_first_holds() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1), ("a", 2), ("b", 1), ("a", 3), ("c", 1)]).await;
    let first = s.claim(1, true).await.unwrap();
    assert_eq!(aggs(&first), ["a1"]);
    let second = s.claim(10, true).await.unwrap();
    // a2 and a3 must wait for a1: only b and c may go.
    assert_eq!(aggs(&second), ["b1", "c1"]);
    assert!(second.contended, "rows of a were seen but left");
    second.release().await;
    first.release().await;
    let all = s.claim(10, true).await.unwrap();
    assert_eq!(
        aggs(&all),
        ["a1", "a2", "b1", "a3", "c1"],
        "whole aggregates, in seq order"
    );
    all.release().await;
}

#[tokio::test]
async fn a_row_held_elsewhere_holds_back_the_rest_of_its_aggregate() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1), ("b", 1), ("a", 2), ("b", 2)]).await;
    // Another session (a writer, an operator) locks b1: b is skipped whole.
    let pool = db.pool().await;
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT seq FROM outbox WHERE seq = 2 FOR UPDATE")
        .fetch_all(&mut *other)
        .await
        .unwrap();
    let c = s.claim(10, true).await.unwrap();
    assert_eq!(aggs(&c), ["a1", "a2"]);
    assert!(c.contended);
    c.release().await;
    other.rollback().await.unwrap();
    let c = s.claim(10, true).await.unwrap();
    assert_eq!(aggs(&c), ["a1", "b1", "a2", "b2"]);
    c.release().await;
}

#[tokio::test]
async fn an_outage_postpones_without_counting_an_attempt() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1), ("a", 2)]).await;
    for _ in 0..3 {
        let c = s.claim(10, true).await.unwrap();
        assert_eq!(aggs(&c), ["a1", "a2"], "held in order, never dropped");
        let a1 = c.records[0].seq;
        c.settle(&Settlement {
            retry: vec![postponed(a1, 0, "connection refused", false)],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let (retry_count, last_error, due): (i32, String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "SELECT retry_count, last_error, next_attempt_at FROM outbox ORDER BY seq LIMIT 1",
        )
        .fetch_one(s.mysql_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (retry_count, last_error.as_str()),
        (0, "connection refused")
    );
    assert!(due.is_some(), "the outage's backoff is kept in the row");
    assert_eq!(s.status().await.unwrap().dead_letters, 0);
}

#[tokio::test]
async fn backoff_holds_back_its_aggregate_only() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1), ("a", 2), ("b", 1)]).await;
    let c = s.claim(1, true).await.unwrap();
    let a1 = c.records[0].seq;
    c.settle(&Settlement {
        retry: vec![postponed(a1, 3600, "broker nack", true)],
        ..Default::default()
    })
    .await
    .unwrap();
    let c = s.claim(10, true).await.unwrap();
    assert_eq!(aggs(&c), ["b1"]);
    let b1 = c.records[0].seq;
    c.settle(&Settlement {
        published: vec![b1],
        ..Default::default()
    })
    .await
    .unwrap();
    let c = s.claim(10, true).await.unwrap();
    assert!(c.records.is_empty());
    let due = c.next_due.expect("the retry's due time is reported");
    assert!(
        due > Duration::from_secs(3500) && due <= Duration::from_secs(3600),
        "{due:?}"
    );
    c.release().await;
    let status = s.status().await.unwrap();
    assert_eq!((status.pending, status.retrying), (2, 1));
    assert!(status.next_retry_at.is_some() && status.oldest_pending_at.is_some());
    let (retry_count, last_error): (i32, String) =
        sqlx::query_as("SELECT retry_count, last_error FROM outbox WHERE seq = ?")
            .bind(a1)
            .fetch_one(s.mysql_pool().unwrap())
            .await
            .unwrap();
    assert_eq!((retry_count, last_error.as_str()), (1, "broker nack"));
}

#[tokio::test]
async fn a_dead_letter_blocks_its_aggregate_unless_told_to_proceed_and_replay_restores_it() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1), ("a", 2), ("b", 1)]).await;
    let c = s.claim(1, true).await.unwrap();
    let (a1_seq, a1_id) = (c.records[0].seq, c.records[0].id);
    c.settle(&Settlement {
        dead: vec![(a1_seq, "poison".into())],
        ..Default::default()
    })
    .await
    .unwrap();

    let c = s.claim(10, true).await.unwrap();
    assert_eq!(aggs(&c), ["b1"], "a2 waits behind the dead letter");
    c.release().await;
    let c = s.claim(10, false).await.unwrap();
    assert_eq!(aggs(&c), ["a2", "b1"], "proceed mode lets a2 go");
    c.release().await;

    let dead = s.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].original_id,
            dead[0].seq,
            dead[0].error.as_str(),
            dead[0].retry_count
        ),
        (a1_id, a1_seq, "poison", 1)
    );
    assert_eq!(dead[0].payload, serde_json::json!({"n": 1}));
    assert_eq!(
        s.dead_letter(dead[0].id)
            .await
            .unwrap()
            .unwrap()
            .original_id,
        a1_id
    );

    let replayed = s.replay(Some(&[a1_id])).await.unwrap();
    assert_eq!(replayed, vec![a1_id]);
    let c = s.claim(10, true).await.unwrap();
    assert_eq!(
        aggs(&c),
        ["a1", "a2", "b1"],
        "replayed with its original seq: first again"
    );
    assert_eq!(c.records[0].id, a1_id);
    assert_eq!(c.records[0].retry_count, 0);
    c.release().await;
    assert_eq!(s.status().await.unwrap().dead_letters, 0);
}

#[tokio::test]
async fn purge_unblocks_the_aggregate() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1), ("a", 2)]).await;
    let c = s.claim(1, true).await.unwrap();
    let seq = c.records[0].seq;
    c.settle(&Settlement {
        dead: vec![(seq, "x".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let c = s.claim(10, true).await.unwrap();
    assert!(c.records.is_empty());
    c.release().await;
    assert_eq!(s.purge(None).await.unwrap(), 1);
    let c = s.claim(10, true).await.unwrap();
    assert_eq!(aggs(&c), ["a2"]);
    c.release().await;
}

#[tokio::test]
async fn delete_on_publish_removes_delivered_rows_only() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1), ("b", 1), ("c", 1)]).await;
    let c = s.claim(10, true).await.unwrap();
    let seqs: Vec<i64> = c.records.iter().map(|r| r.seq).collect();
    c.settle(&Settlement {
        published: vec![seqs[0]],
        retry: vec![postponed(seqs[1], 60, "later", true)],
        dead: vec![(seqs[2], "never".into())],
        delete_published: true,
    })
    .await
    .unwrap();
    let left: Vec<(i64, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as("SELECT seq, published_at FROM outbox ORDER BY seq")
            .fetch_all(s.mysql_pool().unwrap())
            .await
            .unwrap();
    assert_eq!(
        left,
        vec![(seqs[1], None)],
        "published row deleted, retrying row kept"
    );
    assert_eq!(s.status().await.unwrap().dead_letters, 1);
}

#[tokio::test]
async fn partitions_split_aggregates_without_overlap() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    let rows: Vec<(String, i64)> = (0..40).map(|i| (format!("g{}", i % 8), i / 8)).collect();
    let refs: Vec<(&str, i64)> = rows.iter().map(|(a, n)| (a.as_str(), *n)).collect();
    insert(&s, &refs).await;
    let p0 = s
        .claim_partition(100, true, Partition { index: 0, count: 2 })
        .await
        .unwrap();
    let p1 = s
        .claim_partition(100, true, Partition { index: 1, count: 2 })
        .await
        .unwrap();
    assert!(
        !p0.contended && !p1.contended,
        "partitions never contend: {} {}",
        p0.contended,
        p1.contended
    );
    let a0: std::collections::HashSet<&str> =
        p0.records.iter().map(|r| r.aggregate_id.as_str()).collect();
    let a1: std::collections::HashSet<&str> =
        p1.records.iter().map(|r| r.aggregate_id.as_str()).collect();
    assert!(a0.is_disjoint(&a1), "{a0:?} / {a1:?}");
    assert!(!a0.is_empty() && !a1.is_empty(), "{a0:?} / {a1:?}");
    assert_eq!(
        p0.records.len() + p1.records.len(),
        40,
        "together they take everything"
    );
    for c in [&p0, &p1] {
        assert!(c.records.windows(2).all(|w| w[0].seq < w[1].seq));
    }
    p0.release().await;
    p1.release().await;
}

#[tokio::test]
async fn the_byte_bound_cuts_a_batch_and_the_first_event_always_comes() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1), ("b", 1), ("c", 1), ("d", 1)]).await;
    // Each payload `{"n": 1}` is 8 bytes: a bound of 20 takes the first three (0, 8, 16 before).
    let c = s
        .claim_bounded(10, 20, true, Partition::WHOLE)
        .await
        .unwrap();
    assert_eq!(aggs(&c), ["a1", "b1", "c1"]);
    c.release().await;
    let c = s
        .claim_bounded(10, 1, true, Partition::WHOLE)
        .await
        .unwrap();
    assert_eq!(aggs(&c), ["a1"]);
    c.release().await;
}

#[tokio::test]
async fn cleanup_deletes_published_rows_older_than_the_cutoff_in_batches() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    let pool = s.mysql_pool().unwrap();
    let rows: Vec<(String, i64)> = (0..25).map(|i| (format!("g{i}"), 1)).collect();
    let refs: Vec<(&str, i64)> = rows.iter().map(|(a, n)| (a.as_str(), *n)).collect();
    insert(&s, &refs).await;
    // 20 published long ago, 3 just now, 2 pending.
    sqlx::query(
        "UPDATE outbox SET published_at = UTC_TIMESTAMP(6) - INTERVAL 10 DAY WHERE seq <= 20",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox SET published_at = UTC_TIMESTAMP(6) WHERE seq > 20 AND seq <= 23")
        .execute(pool)
        .await
        .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(7);
    assert_eq!(s.count_cleanable(cutoff).await.unwrap(), 20);
    let mut batches = Vec::new();
    loop {
        let n = s.cleanup_batch(cutoff, 8).await.unwrap();
        batches.push(n);
        if n < 8 {
            break;
        }
    }
    assert_eq!(batches, vec![8, 8, 4]);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 5, "recent and pending rows stay");
    assert_eq!(s.status().await.unwrap().pending, 2);
    let b = s.backlog(true).await.unwrap();
    assert_eq!((b.pending, b.dead_letters), (Some(2), 0));
    assert!(
        b.oldest_pending_age_seconds.is_some_and(|a| a < 60.0),
        "{b:?}"
    );
}

/// Two retries (an outage, then a counted failure) and the final failure: the dead letter's
/// error history holds all three, oldest first; replay carries it back to the row.
#[tokio::test]
async fn a_dead_letter_keeps_its_error_history() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1)]).await;
    for (error, counted) in [("connection refused", false), ("HTTP 500", true)] {
        let c = s.claim(10, false).await.unwrap();
        let seq = c.records[0].seq;
        c.settle(&Settlement {
            retry: vec![postponed(seq, 0, error, counted)],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let c = s.claim(10, false).await.unwrap();
    let (seq, id) = (c.records[0].seq, c.records[0].id);
    c.settle(&Settlement {
        dead: vec![(seq, "HTTP 400: refused".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let dead = s.dead_letter(id).await.unwrap().unwrap();
    let history: Vec<(&str, bool)> = dead
        .error_history
        .iter()
        .map(|f| (f.error.as_str(), f.counted))
        .collect();
    assert_eq!(
        history,
        [
            ("connection refused", false),
            ("HTTP 500", true),
            ("HTTP 400: refused", true)
        ]
    );
    assert!(dead.error_history.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(dead.retry_count, 2, "the outage did not count");

    s.replay(Some(&[id])).await.unwrap();
    let c = s.claim(10, false).await.unwrap();
    c.settle(&Settlement {
        dead: vec![(seq, "again".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let dead = s.dead_letter(id).await.unwrap().unwrap();
    assert_eq!(dead.error_history.len(), 4);
    assert_eq!(dead.error_history[3].error, "again");
}
