//! The claim's guarantees and the admin statements on MySQL, against the real MariaDB; the
//! schema's migrations (twice, concurrently) and plain-SQL writers.

mod claim_scenarios;

use claim_scenarios::{aggs, insert};
use outbox_relay::store::{ConnectOptions, Partition, Store};
use outbox_testkit::{require, MysqlTestDb};

async fn store(db: &MysqlTestDb) -> Store {
    let s = Store::connect(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    s.migrate().await.unwrap();
    s
}

#[tokio::test]
async fn a_second_claim_skips_aggregates_the_first_holds() {
    let db = require!(MysqlTestDb::create().await);
    claim_scenarios::a_second_claim_skips_aggregates_the_first_holds(&store(&db).await).await;
}

#[tokio::test]
async fn an_outage_postpones_without_counting_an_attempt() {
    let db = require!(MysqlTestDb::create().await);
    claim_scenarios::an_outage_postpones_without_counting_an_attempt(&store(&db).await).await;
}

#[tokio::test]
async fn backoff_holds_back_its_aggregate_only() {
    let db = require!(MysqlTestDb::create().await);
    claim_scenarios::backoff_holds_back_its_aggregate_only(&store(&db).await).await;
}

#[tokio::test]
async fn a_dead_letter_blocks_its_aggregate_unless_told_to_proceed_and_replay_restores_it() {
    let db = require!(MysqlTestDb::create().await);
    claim_scenarios::a_dead_letter_blocks_its_aggregate_unless_told_to_proceed_and_replay_restores_it(&store(&db).await).await;
}

#[tokio::test]
async fn purge_unblocks_the_aggregate() {
    let db = require!(MysqlTestDb::create().await);
    claim_scenarios::purge_unblocks_the_aggregate(&store(&db).await).await;
}

#[tokio::test]
async fn delete_on_publish_removes_delivered_rows_only() {
    let db = require!(MysqlTestDb::create().await);
    claim_scenarios::delete_on_publish_removes_delivered_rows_only(&store(&db).await).await;
}

#[tokio::test]
async fn partitions_split_aggregates_without_overlap() {
    let db = require!(MysqlTestDb::create().await);
    claim_scenarios::partitions_split_aggregates_without_overlap(&store(&db).await).await;
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

/// The dead letter's error history: see the scenario.
#[tokio::test]
async fn a_dead_letter_keeps_its_error_history() {
    let db = require!(MysqlTestDb::create().await);
    let s = store(&db).await;
    insert(&s, &[("a", 1)]).await;
    claim_scenarios::a_dead_letter_keeps_its_error_history(&s).await;
}
