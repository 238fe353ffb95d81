//! The claim's scenarios both databases with `SKIP LOCKED` run the same way: PostgreSQL
//! (`claim.rs`) and MySQL / MariaDB (`claim_mysql.rs`) each call them on a store of their own.
//! The few statements a scenario writes or reads directly go through the helpers below.
#![allow(dead_code)] // each test binary uses its own subset

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_relay::store::{Backend, Claim, Partition, Postponed, Settlement, Store};

/// Inserts one event per `(aggregate_id, n)`, aggregate type `T`, payload `{"n": n}`.
pub async fn insert(store: &Store, rows: &[(&str, i64)]) {
    for (agg, n) in rows {
        match store.backend() {
            Backend::Postgres => sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('T', $1, 'E', jsonb_build_object('n', $2::bigint))")
                .bind(agg)
                .bind(n)
                .execute(store.pg_pool().unwrap())
                .await
                .map(drop),
            Backend::Mysql => sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('T', ?, 'E', JSON_OBJECT('n', ?))")
                .bind(agg)
                .bind(n)
                .execute(store.mysql_pool().unwrap())
                .await
                .map(drop),
            Backend::Sqlite => panic!("the claim scenarios run on PostgreSQL and MySQL"),
        }
        .unwrap();
    }
}

/// A row's retry state: `retry_count`, `last_error`, `next_attempt_at` (the first row when
/// `seq` is `None`).
async fn retry_state(store: &Store, seq: Option<i64>) -> (i32, String, Option<DateTime<Utc>>) {
    let filter = match seq {
        Some(seq) => format!("WHERE seq = {seq}"),
        None => "ORDER BY seq LIMIT 1".to_string(),
    };
    let sql = format!("SELECT retry_count, last_error, next_attempt_at FROM outbox {filter}");
    match store.backend() {
        Backend::Postgres => {
            sqlx::query_as(&sql)
                .fetch_one(store.pg_pool().unwrap())
                .await
        }
        Backend::Mysql => {
            sqlx::query_as(&sql)
                .fetch_one(store.mysql_pool().unwrap())
                .await
        }
        Backend::Sqlite => panic!("the claim scenarios run on PostgreSQL and MySQL"),
    }
    .unwrap()
}

/// Every row left in the outbox: `seq`, `published_at`.
async fn rows_left(store: &Store) -> Vec<(i64, Option<DateTime<Utc>>)> {
    let sql = "SELECT seq, published_at FROM outbox ORDER BY seq";
    match store.backend() {
        Backend::Postgres => {
            sqlx::query_as(sql)
                .fetch_all(store.pg_pool().unwrap())
                .await
        }
        Backend::Mysql => {
            sqlx::query_as(sql)
                .fetch_all(store.mysql_pool().unwrap())
                .await
        }
        Backend::Sqlite => panic!("the claim scenarios run on PostgreSQL and MySQL"),
    }
    .unwrap()
}

/// "a1", "b2", …: aggregate id and payload n of each claimed record.
pub fn aggs(claim: &Claim) -> Vec<String> {
    claim
        .records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
            format!("{}{}", r.aggregate_id, v["n"])
        })
        .collect()
}

pub fn postponed(seq: i64, secs: u64, error: &str, counted: bool) -> Postponed {
    Postponed {
        seq,
        delay: Duration::from_secs(secs),
        error: error.into(),
        counted,
    }
}

pub async fn a_second_claim_skips_aggregates_the_first_holds(s: &Store) {
    insert(s, &[("a", 1), ("a", 2), ("b", 1), ("a", 3), ("c", 1)]).await;
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

pub async fn an_outage_postpones_without_counting_an_attempt(s: &Store) {
    insert(s, &[("a", 1), ("a", 2)]).await;
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
    let (retry_count, last_error, due) = retry_state(s, None).await;
    assert_eq!(
        (retry_count, last_error.as_str()),
        (0, "connection refused")
    );
    assert!(due.is_some(), "the outage's backoff is kept in the row");
    assert_eq!(s.status().await.unwrap().dead_letters, 0);
}

pub async fn backoff_holds_back_its_aggregate_only(s: &Store) {
    insert(s, &[("a", 1), ("a", 2), ("b", 1)]).await;
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
    let (retry_count, last_error, _) = retry_state(s, Some(a1)).await;
    assert_eq!((retry_count, last_error.as_str()), (1, "broker nack"));
}

pub async fn a_dead_letter_blocks_its_aggregate_unless_told_to_proceed_and_replay_restores_it(
    s: &Store,
) {
    insert(s, &[("a", 1), ("a", 2), ("b", 1)]).await;
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

pub async fn purge_unblocks_the_aggregate(s: &Store) {
    insert(s, &[("a", 1), ("a", 2)]).await;
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

pub async fn delete_on_publish_removes_delivered_rows_only(s: &Store) {
    insert(s, &[("a", 1), ("b", 1), ("c", 1)]).await;
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
    let left = rows_left(s).await;
    assert_eq!(
        left,
        vec![(seqs[1], None)],
        "published row deleted, retrying row kept"
    );
    assert_eq!(s.status().await.unwrap().dead_letters, 1);
}

pub async fn partitions_split_aggregates_without_overlap(s: &Store) {
    let rows: Vec<(String, i64)> = (0..40).map(|i| (format!("g{}", i % 8), i / 8)).collect();
    let refs: Vec<(&str, i64)> = rows.iter().map(|(a, n)| (a.as_str(), *n)).collect();
    insert(s, &refs).await;
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

/// On a store whose only event is `a`'s (SQLite too): two retries (an outage, then a counted
/// failure) and the final failure: the dead letter's error history holds all three, oldest
/// first; replay carries it back to the row.
pub async fn a_dead_letter_keeps_its_error_history(s: &Store) {
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
