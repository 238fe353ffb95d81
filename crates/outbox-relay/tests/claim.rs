//! The claim's guarantees, against real PostgreSQL (and SQLite for its lease); the scenarios
//! MySQL shares are in `claim_scenarios/`.

use std::time::Duration;

mod claim_scenarios;

use claim_scenarios::insert;
use outbox_relay::store::{ConnectOptions, Store};
use outbox_testkit::{require, TestDb};

async fn store(db: &TestDb) -> Store {
    let s = Store::connect(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    s.migrate().await.unwrap();
    s
}

#[tokio::test]
async fn a_second_claim_skips_aggregates_the_first_holds() {
    let db = require!(TestDb::create().await);
    claim_scenarios::a_second_claim_skips_aggregates_the_first_holds(&store(&db).await).await;
}

#[tokio::test]
async fn an_outage_postpones_without_counting_an_attempt() {
    let db = require!(TestDb::create().await);
    claim_scenarios::an_outage_postpones_without_counting_an_attempt(&store(&db).await).await;
}

#[tokio::test]
async fn backoff_holds_back_its_aggregate_only() {
    let db = require!(TestDb::create().await);
    claim_scenarios::backoff_holds_back_its_aggregate_only(&store(&db).await).await;
}

#[tokio::test]
async fn a_dead_letter_blocks_its_aggregate_unless_told_to_proceed_and_replay_restores_it() {
    let db = require!(TestDb::create().await);
    claim_scenarios::a_dead_letter_blocks_its_aggregate_unless_told_to_proceed_and_replay_restores_it(&store(&db).await).await;
}

#[tokio::test]
async fn purge_unblocks_the_aggregate() {
    let db = require!(TestDb::create().await);
    claim_scenarios::purge_unblocks_the_aggregate(&store(&db).await).await;
}

#[tokio::test]
async fn delete_on_publish_removes_delivered_rows_only() {
    let db = require!(TestDb::create().await);
    claim_scenarios::delete_on_publish_removes_delivered_rows_only(&store(&db).await).await;
}

#[tokio::test]
async fn partitions_split_aggregates_without_overlap() {
    let db = require!(TestDb::create().await);
    claim_scenarios::partitions_split_aggregates_without_overlap(&store(&db).await).await;
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
        claim_scenarios::a_dead_letter_keeps_its_error_history(s).await;
    }
    let _ = std::fs::remove_file(&path);
}
