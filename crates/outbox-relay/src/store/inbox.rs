//! Retention of the consumer inbox (`outbox cleanup --inbox`): the `outbox_inbox` rows and the
//! per-aggregate positions older than a cutoff, deleted in short transactions. The inbox's
//! own statements (record an id, move a position) are the library's (`outbox::inbox`).

use chrono::{DateTime, Utc};
use sqlx::{PgPool, SqlitePool};

use super::sqlite::ts;
use super::Store;
use crate::error::Error;

/// Rows of the two inbox tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxRows {
    /// Processed event ids (`outbox_inbox`).
    pub received: u64,
    /// Per-aggregate positions (`outbox_inbox_position`).
    pub positions: u64,
}

const PG_COUNT: [&str; 2] = [
    "SELECT count(*) FROM outbox_inbox WHERE received_at < $1",
    "SELECT count(*) FROM outbox_inbox_position WHERE updated_at < $1",
];
// Bounded DELETEs (PostgreSQL has no DELETE … LIMIT): the sub-selects walk the time indexes,
// SKIP LOCKED keeps them from waiting on a consumer's transaction.
const PG_DELETE: [&str; 2] = [
    "DELETE FROM outbox_inbox WHERE (consumer, id) IN (
         SELECT consumer, id FROM outbox_inbox WHERE received_at < $1
         ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    "DELETE FROM outbox_inbox_position WHERE (consumer, aggregate_type, aggregate_id) IN (
         SELECT consumer, aggregate_type, aggregate_id FROM outbox_inbox_position
         WHERE updated_at < $1 ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
];
const SQLITE_COUNT: [&str; 2] = [
    "SELECT count(*) FROM outbox_inbox WHERE received_at < ?1",
    "SELECT count(*) FROM outbox_inbox_position WHERE updated_at < ?1",
];
const SQLITE_DELETE: [&str; 2] = [
    "DELETE FROM outbox_inbox WHERE (consumer, id) IN (
         SELECT consumer, id FROM outbox_inbox WHERE received_at < ?1
         ORDER BY received_at LIMIT ?2)",
    "DELETE FROM outbox_inbox_position WHERE (consumer, aggregate_type, aggregate_id) IN (
         SELECT consumer, aggregate_type, aggregate_id FROM outbox_inbox_position
         WHERE updated_at < ?1 ORDER BY updated_at LIMIT ?2)",
];

impl Store {
    /// Counts inbox rows and positions older than `cutoff` (what
    /// [`Store::cleanup_inbox_batch`] would delete).
    pub async fn count_inbox_cleanable(&self, cutoff: DateTime<Utc>) -> Result<InboxRows, Error> {
        let mut n = [0_i64; 2];
        for (i, count) in n.iter_mut().enumerate() {
            *count = match self {
                Store::Postgres(pool) => pg_count(pool, PG_COUNT[i], cutoff).await,
                Store::Sqlite(s) => sqlite_count(&s.pool, SQLITE_COUNT[i], cutoff).await,
            }
            .map_err(missing)?;
        }
        Ok(InboxRows {
            received: n[0].max(0) as u64,
            positions: n[1].max(0) as u64,
        })
    }

    /// Deletes up to `batch` inbox rows and up to `batch` positions older than `cutoff`, each
    /// in one short transaction; returns how many of each.
    pub async fn cleanup_inbox_batch(
        &self,
        cutoff: DateTime<Utc>,
        batch: i64,
    ) -> Result<InboxRows, Error> {
        let mut n = [0_u64; 2];
        for (i, deleted) in n.iter_mut().enumerate() {
            let query = match self {
                Store::Postgres(pool) => sqlx::query(PG_DELETE[i])
                    .bind(cutoff)
                    .bind(batch)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected()),
                Store::Sqlite(s) => sqlx::query(SQLITE_DELETE[i])
                    .bind(ts(cutoff))
                    .bind(batch)
                    .execute(&s.pool)
                    .await
                    .map(|r| r.rows_affected()),
            };
            *deleted = query.map_err(missing)?;
        }
        Ok(InboxRows {
            received: n[0],
            positions: n[1],
        })
    }
}

async fn pg_count(pool: &PgPool, sql: &str, cutoff: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql).bind(cutoff).fetch_one(pool).await
}

async fn sqlite_count(
    pool: &SqlitePool,
    sql: &str,
    cutoff: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql)
        .bind(ts(cutoff))
        .fetch_one(pool)
        .await
}

/// A missing inbox table is a set-up problem (exit 2) with its own hint, not the outbox's.
fn missing(err: sqlx::Error) -> Error {
    if outbox::is_undefined_table(&err) {
        Error::Schema(outbox::Error::InboxMissing)
    } else {
        Error::Database(err)
    }
}
