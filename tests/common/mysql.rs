//! MySQL / MariaDB versions of the helpers that read or write the outbox table.

use std::time::Duration;

use super::{wait_until, MysqlTestDb};

/// Migrates a MariaDB test database with `outbox migrate` (the command, as users do).
pub async fn migrate(db: &MysqlTestDb) -> sqlx::MySqlPool {
    let r = super::outbox(Some(&db.url), &["migrate"]).await;
    assert_eq!(r.code, 0, "outbox migrate: {}", r.stderr);
    db.pool().await
}

/// Pending (unpublished) events in the outbox table.
pub async fn pending(pool: &sqlx::MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
        .expect("count pending")
}

/// Waits (bounded) until no event is pending.
pub async fn wait_all_published(pool: &sqlx::MySqlPool, limit: Duration) {
    wait_until(limit, "every event published", || async {
        (pending(pool).await == 0).then_some(())
    })
    .await;
}

/// Inserts `per` events for each of `aggregates` aggregates of type `agg_type`, interleaved,
/// with payload `{"n": k}` counting up per aggregate from `start`, with plain SQL naming only
/// the four columns a writer must give.
pub async fn insert_sequenced(
    pool: &sqlx::MySqlPool,
    agg_type: &str,
    aggregates: usize,
    per: usize,
    start: usize,
) {
    let rows: Vec<(String, usize)> = (0..aggregates * per)
        .map(|g| (format!("a{}", g % aggregates), start + g / aggregates))
        .collect();
    for chunk in rows.chunks(1000) {
        let mut sql = String::from(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 { "" } else { ", " });
            sql.push_str("(?, ?, 'Step', JSON_OBJECT('n', ?))");
        }
        let mut q = sqlx::query(&sql);
        for (agg, n) in chunk {
            q = q.bind(agg_type).bind(agg).bind(*n as i64);
        }
        q.execute(pool).await.expect("insert events");
    }
}
