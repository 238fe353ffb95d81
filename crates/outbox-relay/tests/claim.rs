//! The claim's guarantees, against real PostgreSQL (and SQLite for its lease).

use std::time::Duration;

use outbox_relay::store::{ConnectOptions, Postponed, Settlement, Store};
use outbox_testkit::{require, TestDb};

async fn store(db: &TestDb) -> Store {
    let s = Store::connect(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    s.migrate().await.unwrap();
    s
}

async fn insert(store: &Store, rows: &[(&str, i64)]) {
    let pool = store.pg_pool().unwrap();
    for (agg, n) in rows {
        sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('T', $1, 'E', jsonb_build_object('n', $2::bigint))")
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

#[tokio::test]
async fn a_second_claim_skips_aggregates_the_first_holds() {
    let db = require!(TestDb::create().await);
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

fn postponed(seq: i64, secs: u64, error: &str, counted: bool) -> Postponed {
    Postponed {
        seq,
        delay: Duration::from_secs(secs),
        error: error.into(),
        counted,
    }
}

#[tokio::test]
async fn an_outage_postpones_without_counting_an_attempt() {
    let db = require!(TestDb::create().await);
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
        .fetch_one(s.pg_pool().unwrap())
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
    let db = require!(TestDb::create().await);
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
    let (retry_count, last_error): (i32, String) =
        sqlx::query_as("SELECT retry_count, last_error FROM outbox WHERE seq = $1")
            .bind(a1)
            .fetch_one(s.pg_pool().unwrap())
            .await
            .unwrap();
    assert_eq!((retry_count, last_error.as_str()), (1, "broker nack"));
}

#[tokio::test]
async fn a_dead_letter_blocks_its_aggregate_unless_told_to_proceed_and_replay_restores_it() {
    let db = require!(TestDb::create().await);
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
    let db = require!(TestDb::create().await);
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
async fn a_second_sqlite_relay_stands_by_while_the_first_holds_the_lease() {
    let path =
        std::env::temp_dir().join(format!("outbox-lease-{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite:{}", path.display());
    let opts = ConnectOptions {
        create_sqlite_file: true,
        ..ConnectOptions::default()
    };
    let first = Store::connect(&url, &opts).await.unwrap();
    first.migrate().await.unwrap();
    let second = Store::connect(&url, &opts).await.unwrap();
    sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('T', 'a', 'E', '{}')")
        .execute(first.sqlite_pool().unwrap())
        .await
        .unwrap();
    let c = first.claim(10, true).await.unwrap();
    assert_eq!(c.records.len(), 1);
    c.release().await;
    let c = second.claim(10, true).await.unwrap();
    assert!(
        c.records.is_empty() && c.contended,
        "the second relay stands by"
    );
    first.release().await;
    let c = second.claim(10, true).await.unwrap();
    assert_eq!(
        c.records.len(),
        1,
        "and takes over once the lease is released"
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn delete_on_publish_removes_delivered_rows_only() {
    let db = require!(TestDb::create().await);
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
            .fetch_all(s.pg_pool().unwrap())
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
    use outbox_relay::store::Partition;
    let db = require!(TestDb::create().await);
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
    assert!(!p0.contended && !p1.contended, "partitions never contend");
    let a0: std::collections::HashSet<&str> =
        p0.records.iter().map(|r| r.aggregate_id.as_str()).collect();
    let a1: std::collections::HashSet<&str> =
        p1.records.iter().map(|r| r.aggregate_id.as_str()).collect();
    assert!(a0.is_disjoint(&a1), "{a0:?} / {a1:?}");
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
async fn inserts_notify_only_while_a_relay_waits() {
    let db = require!(TestDb::create().await);
    let s = store(&db).await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen(outbox::NOTIFY_CHANNEL).await.unwrap();
    let quiet = Duration::from_millis(300);

    insert(&s, &[("a", 1)]).await;
    let got = tokio::time::timeout(quiet, listener.recv()).await;
    assert!(got.is_err(), "no relay waits: writers do not NOTIFY");

    s.set_waiting("test-relay", true).await.unwrap();
    insert(&s, &[("a", 2)]).await;
    let got = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(
        matches!(got, Ok(Ok(_))),
        "a waiting relay is woken: {got:?}"
    );

    s.set_waiting("test-relay", false).await.unwrap();
    insert(&s, &[("a", 3)]).await;
    assert!(tokio::time::timeout(quiet, listener.recv()).await.is_err());
}

/// Two retries (an outage, then a counted failure) and the final failure: the dead letter's
/// error history holds all three, oldest first; replay carries it back to the row. PostgreSQL
/// and SQLite alike.
#[tokio::test]
async fn a_dead_letter_keeps_its_error_history() {
    let db = require!(TestDb::create().await);
    let path = std::env::temp_dir().join(format!(
        "outbox-history-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let sqlite_url = format!("sqlite:{}", path.display());
    let sqlite = Store::connect(
        &sqlite_url,
        &ConnectOptions {
            create_sqlite_file: true,
            ..ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    sqlite.migrate().await.unwrap();
    sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('T', 'a', 'E', '{\"n\": 1}')")
        .execute(sqlite.sqlite_pool().unwrap())
        .await
        .unwrap();
    let pg = store(&db).await;
    insert(&pg, &[("a", 1)]).await;
    for s in [&pg, &sqlite] {
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
            ],
            "{s:?}"
        );
        assert!(dead.error_history.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(dead.retry_count, 2, "the outage did not count");

        // Replayed, failed once more: the history goes on.
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
    let _ = std::fs::remove_file(&path);
}
