//! `outbox::inbox` against the real databases: the inbox row commits with the handler's writes
//! or not at all, duplicates are recognised, consumers are kept apart, racing transactions of
//! one consumer apply an event once, and positions tell stale events.

use std::time::Duration;

use outbox::inbox::{self, Freshness, Receipt};
use outbox_testkit::{require, TestDb};
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

async fn pg() -> Option<(TestDb, PgPool)> {
    let db = TestDb::create().await?;
    let pool = db.pool().await;
    inbox::create_tables(&mut *pool.acquire().await.unwrap())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    Some((db, pool))
}

async fn sqlite() -> (std::path::PathBuf, SqlitePool) {
    let path = std::env::temp_dir().join(format!("outbox-inbox-{}.db", Uuid::new_v4().simple()));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    inbox::create_tables(&mut *conn).await.unwrap();
    inbox::create_tables(&mut *conn).await.unwrap(); // idempotent
    sqlx::query("CREATE TABLE effects (event_id TEXT NOT NULL)")
        .execute(&mut *conn)
        .await
        .unwrap();
    (path, pool)
}

async fn effects_pg(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The handler a consumer writes: the inbox, then the effect, in one transaction.
async fn handle_pg(pool: &PgPool, consumer: &str, id: Uuid, commit: bool) -> Receipt {
    let mut tx = pool.begin().await.unwrap();
    let receipt = inbox::receive(&mut *tx, consumer, id).await.unwrap();
    if receipt == Receipt::New {
        sqlx::query("INSERT INTO effects VALUES ($1)")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    receipt
}

#[tokio::test]
async fn postgres_applies_each_event_once_and_a_rollback_leaves_nothing() {
    let (_db, pool) = require!(pg().await);
    let id = Uuid::now_v7();
    // A crash before the commit: nothing stays, the redelivery is new.
    assert_eq!(handle_pg(&pool, "shipping", id, false).await, Receipt::New);
    assert_eq!(effects_pg(&pool, id).await, 0);
    assert_eq!(handle_pg(&pool, "shipping", id, true).await, Receipt::New);
    // Redelivered after the commit: a duplicate, no second effect.
    assert_eq!(
        handle_pg(&pool, "shipping", id, true).await,
        Receipt::Duplicate
    );
    assert!(handle_pg(&pool, "shipping", id, true).await.is_duplicate());
    assert_eq!(effects_pg(&pool, id).await, 1);
    // Another consumer of the same database sees the event as new.
    assert_eq!(handle_pg(&pool, "billing", id, true).await, Receipt::New);
    assert_eq!(effects_pg(&pool, id).await, 2);
}

/// Waits (bounded) until a session of this database waits on a lock: the racing insert.
async fn wait_for_a_lock_wait(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the racing insert never waited on the first transaction"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn postgres_racing_transactions_of_one_consumer_apply_an_event_once() {
    let (_db, pool) = require!(pg().await);
    let id = Uuid::now_v7();
    let mut first = pool.begin().await.unwrap();
    assert_eq!(
        inbox::receive(&mut *first, "shipping", id).await.unwrap(),
        Receipt::New
    );
    // The second waits for the first transaction to end ...
    let racer = tokio::spawn({
        let pool = pool.clone();
        async move { handle_pg(&pool, "shipping", id, true).await }
    });
    wait_for_a_lock_wait(&pool).await;
    assert!(!racer.is_finished(), "the second insert waits on the first");
    sqlx::query("INSERT INTO effects VALUES ($1)")
        .bind(id)
        .execute(&mut *first)
        .await
        .unwrap();
    first.commit().await.unwrap();
    // ... then sees it processed.
    assert_eq!(racer.await.unwrap(), Receipt::Duplicate);
    assert_eq!(effects_pg(&pool, id).await, 1);

    // When the first rolls back instead, the second applies it.
    let id = Uuid::now_v7();
    let mut first = pool.begin().await.unwrap();
    let _ = inbox::receive(&mut *first, "shipping", id).await.unwrap();
    let racer = tokio::spawn({
        let pool = pool.clone();
        async move { handle_pg(&pool, "shipping", id, true).await }
    });
    wait_for_a_lock_wait(&pool).await;
    first.rollback().await.unwrap();
    assert_eq!(racer.await.unwrap(), Receipt::New);
    assert_eq!(effects_pg(&pool, id).await, 1);
}

#[tokio::test]
async fn postgres_positions_tell_stale_events_and_roll_back_with_the_transaction() {
    let (_db, pool) = require!(pg().await);
    let advance = |seq: i64, commit: bool| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let f = inbox::advance(&mut *tx, "shipping", "Order", "o-1", seq)
                .await
                .unwrap();
            if commit {
                tx.commit().await.unwrap();
            }
            f
        }
    };
    assert_eq!(advance(5, true).await, Freshness::Newer);
    assert_eq!(advance(3, true).await, Freshness::Stale { latest: 5 });
    assert_eq!(advance(5, true).await, Freshness::Stale { latest: 5 });
    assert_eq!(advance(9, false).await, Freshness::Newer); // rolled back
    assert_eq!(advance(7, true).await, Freshness::Newer);
    assert_eq!(advance(6, true).await, Freshness::Stale { latest: 7 });
    // Other aggregates and consumers have their own positions.
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        inbox::advance(&mut *conn, "shipping", "Order", "o-2", 1)
            .await
            .unwrap(),
        Freshness::Newer
    );
    assert_eq!(
        inbox::advance(&mut *conn, "billing", "Order", "o-1", 1)
            .await
            .unwrap(),
        Freshness::Newer
    );
}

#[tokio::test]
async fn postgres_migrate_creates_the_inbox_and_a_missing_one_is_named() {
    let db = require!(TestDb::create().await);
    let pool = db.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let err = inbox::receive(&mut *conn, "shipping", Uuid::now_v7())
        .await
        .unwrap_err();
    assert!(matches!(err, outbox::Error::InboxMissing), "{err}");
    assert!(err.to_string().contains("create_tables"), "{err}");
    // Tables made by a consumer first, then the full schema: migration 6 finds them there.
    inbox::create_tables(&mut *conn).await.unwrap();
    let report = outbox::migrate(&mut *conn).await.unwrap();
    assert_eq!(report.version, outbox::SCHEMA_VERSION);
    assert_eq!(
        inbox::receive(&mut *conn, "shipping", Uuid::now_v7())
            .await
            .unwrap(),
        Receipt::New
    );
}

#[tokio::test]
async fn sqlite_applies_each_event_once_and_tells_stale_events() {
    let (path, pool) = sqlite().await;
    let id = Uuid::now_v7();
    for (commit, expected) in [
        (false, Receipt::New),
        (true, Receipt::New),
        (true, Receipt::Duplicate),
    ] {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let receipt = inbox::receive(&mut *tx, "shipping", id).await.unwrap();
        assert_eq!(receipt, expected);
        if receipt == Receipt::New {
            sqlx::query("INSERT INTO effects VALUES ($1)")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        if commit {
            tx.commit().await.unwrap();
        }
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        inbox::receive(&mut *conn, "billing", id).await.unwrap(),
        Receipt::New
    );
    for (seq, expected) in [
        (2, Freshness::Newer),
        (1, Freshness::Stale { latest: 2 }),
        (3, Freshness::Newer),
    ] {
        let f = inbox::advance(&mut *conn, "shipping", "Order", "o-1", seq)
            .await
            .unwrap();
        assert_eq!(f, expected, "seq {seq}");
    }
    drop(conn);
    pool.close().await;
    let _ = std::fs::remove_file(&path);
}
