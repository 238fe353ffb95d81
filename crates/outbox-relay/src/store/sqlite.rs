//! SQLite: one relay at a time. SQLite has no `SKIP LOCKED`, so a lease row names the relay
//! that may claim; others stand by and take over when the lease expires or is released.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::rows::{self, Fault, Unreadable};
use super::{
    parse_json, truncate_error, Claim, ConnectOptions, DeadLetter, FailedAttempt, Hold, Settlement,
    Status,
};
use crate::error::db;
use crate::error::Error;
use crate::record::Record;

/// How long a relay's lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(15);

/// A SQLite pool plus this process's relay lease.
#[derive(Debug)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    holder: String,
    lease_until: Mutex<Option<DateTime<Utc>>>,
}

impl Clone for SqliteStore {
    fn clone(&self) -> Self {
        // Clones share the pool and the lease holder name; each renews as needed.
        SqliteStore {
            pool: self.pool.clone(),
            holder: self.holder.clone(),
            lease_until: Mutex::new(*self.lease_until.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }
}

/// The text form of timestamps in SQLite: sorts and compares like time.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Reads a timestamp in the forms SQLite writers use (RFC 3339, or `CURRENT_TIMESTAMP`'s).
pub(crate) fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .map(|n| n.and_utc())
}

fn ts_or_now(s: &str) -> DateTime<Utc> {
    parse_ts(s).unwrap_or_else(Utc::now)
}

impl SqliteStore {
    pub(super) async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, Error> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("invalid SQLite URL {url}: {e}")))?
            .create_if_missing(options.create_sqlite_file)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.connect_timeout)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore {
            pool,
            holder: format!("{}-{}", std::process::id(), Uuid::new_v4().simple()),
            lease_until: Mutex::new(None),
        })
    }

    /// Takes or renews the lease; false when another relay holds it.
    async fn lease(&self) -> Result<bool, Error> {
        let now = Utc::now();
        let held = *self.lease_until.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(held, Some(until) if until - now > chrono::Duration::from_std(LEASE / 2).unwrap_or_default())
        {
            return Ok(true);
        }
        let until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        let got = sqlx::query(
            "INSERT INTO outbox_relay_lease (id, holder, expires_at) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE outbox_relay_lease.holder = excluded.holder OR outbox_relay_lease.expires_at < ?3",
        )
        .bind(&self.holder)
        .bind(ts(until))
        .bind(ts(now))
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected()
            == 1;
        *self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) = got.then_some(until);
        Ok(got)
    }

    pub(super) async fn release_lease(&self) {
        let _ = sqlx::query("DELETE FROM outbox_relay_lease WHERE holder = ?1")
            .bind(&self.holder)
            .execute(&self.pool)
            .await;
        *self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Up to `limit` events, stopping where their payloads and headers pass `max_bytes` (the
    /// first event always comes).
    pub(super) async fn claim(
        &self,
        limit: usize,
        max_bytes: u64,
        dead_letters_block: bool,
    ) -> Result<Claim, Error> {
        if !self.lease().await? {
            return Ok(Claim::new(Vec::new(), true, None));
        }
        let now = ts(Utc::now());
        let rows = sqlx::query(
            "WITH blocked AS MATERIALIZED (
                 SELECT aggregate_type, aggregate_id, min(seq) AS seq FROM outbox
                 WHERE published_at IS NULL AND next_attempt_at IS NOT NULL AND next_attempt_at > ?1
                 GROUP BY aggregate_type, aggregate_id
                 UNION ALL
                 SELECT aggregate_type, aggregate_id, min(seq) FROM outbox_dead_letter
                 WHERE ?2
                 GROUP BY aggregate_type, aggregate_id
             ),
             batch AS (
                 SELECT seq, id, aggregate_type, aggregate_id, event_type, payload, headers,
                        created_at, retry_count,
                        length(CAST(payload AS BLOB)) + coalesce(length(CAST(headers AS BLOB)), 0) AS size
                 FROM outbox o
                 WHERE published_at IS NULL
                   AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
                   AND NOT EXISTS (
                       SELECT 1 FROM blocked b
                       WHERE b.aggregate_type = o.aggregate_type AND b.aggregate_id = o.aggregate_id
                         AND b.seq < o.seq)
                 ORDER BY seq
                 LIMIT ?3
             )
             SELECT * FROM (
                 SELECT b.*, sum(size) OVER (ORDER BY seq) - size AS bytes_before FROM batch b)
             WHERE bytes_before < ?4
             ORDER BY seq",
        )
        .bind(&now)
        .bind(dead_letters_block)
        .bind(limit as i64)
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut records = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in rows {
            let seq: i64 = row.try_get("seq")?;
            match rows::finish(seq, fields(&row, seq))? {
                Ok(record) => records.push(record),
                Err(bad) => unreadable.push(bad),
            }
        }
        if !unreadable.is_empty() {
            // Out of the way, then claim again soon (`contended`): the others come back then,
            // after the blocking rules had their say about the new dead letters.
            self.dead_letter_unreadable(&unreadable).await?;
            return Ok(Claim::after_dead_letters(unreadable.len()));
        }
        let next_due = if records.is_empty() {
            let due: Option<String> = sqlx::query_scalar(
                "SELECT min(next_attempt_at) FROM outbox
                 WHERE published_at IS NULL AND next_attempt_at IS NOT NULL AND next_attempt_at > ?1",
            )
            .bind(&now)
            .fetch_one(&self.pool)
            .await?;
            due.as_deref()
                .and_then(parse_ts)
                .map(|t| (t - Utc::now()).to_std().unwrap_or_default())
        } else {
            None
        };
        let mut claim = Claim::new(records, false, next_due);
        claim.hold = Hold::Sqlite(self.pool.clone());
        Ok(claim)
    }
}

pub(super) async fn settle(pool: &SqlitePool, s: &Settlement) -> Result<(), Error> {
    if s.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    if !s.published.is_empty() {
        let seqs = serde_json::to_string(&s.published).unwrap_or_else(|_| "[]".into());
        let sql = if s.delete_published {
            "DELETE FROM outbox WHERE ?1 IS NOT NULL AND seq IN (SELECT value FROM json_each(?2))"
        } else {
            "UPDATE outbox SET published_at = ?1 WHERE seq IN (SELECT value FROM json_each(?2))"
        };
        sqlx::query(sql)
            .bind(ts(now))
            .bind(seqs)
            .execute(&mut *tx)
            .await?;
    }
    for p in &s.retry {
        let due = now + chrono::Duration::from_std(p.delay).unwrap_or_default();
        let attempt = FailedAttempt::now(&p.error, p.counted);
        let history = pushed_history(&mut tx, p.seq, attempt).await?;
        sqlx::query(
            "UPDATE outbox SET retry_count = retry_count + ?4, next_attempt_at = ?1, last_error = ?2,
                               error_history = ?5
             WHERE seq = ?3",
        )
        .bind(ts(due))
        .bind(truncate_error(&p.error))
        .bind(p.seq)
        .bind(i32::from(p.counted))
        .bind(history)
        .execute(&mut *tx)
        .await?;
    }
    for (seq, error) in &s.dead {
        let history = pushed_history(&mut tx, *seq, FailedAttempt::now(error, true)).await?;
        sqlx::query(
            "INSERT INTO outbox_dead_letter
                 (original_id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
                  created_at, retry_count, error, failed_at, error_history)
             SELECT id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
                    created_at, retry_count + 1, ?2, ?3, ?4
             FROM outbox WHERE seq = ?1",
        )
        .bind(seq)
        .bind(truncate_error(error))
        .bind(ts(now))
        .bind(history)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM outbox WHERE seq = ?1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A row's error history with `attempt` appended (the latest [`super::ERROR_HISTORY_LEN`]
/// kept), as the text to store.
async fn pushed_history(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    seq: i64,
    attempt: FailedAttempt,
) -> Result<String, Error> {
    let stored: Option<Option<Vec<u8>>> =
        sqlx::query_scalar("SELECT error_history FROM outbox WHERE seq = ?1")
            .bind(seq)
            .fetch_optional(&mut **tx)
            .await?;
    let text = stored
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let mut history = FailedAttempt::parse_history(text.as_deref());
    FailedAttempt::push(&mut history, attempt);
    Ok(serde_json::to_string(&history).unwrap_or_else(|_| "[]".into()))
}

pub(super) async fn status(pool: &SqlitePool) -> Result<Status, Error> {
    let now = ts(Utc::now());
    let row = sqlx::query(
        "SELECT count(*) AS pending,
                coalesce(sum(retry_count > 0), 0) AS retrying,
                min(created_at) AS oldest,
                min(CASE WHEN next_attempt_at > ?1 THEN next_attempt_at END) AS next_retry,
                (SELECT count(*) FROM outbox_dead_letter) AS dead
         FROM outbox WHERE published_at IS NULL",
    )
    .bind(now)
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(Status {
        pending: row.try_get("pending")?,
        retrying: row.try_get("retrying")?,
        oldest_pending_at: time(&row, "oldest")?,
        oldest_pending_age_seconds: None,
        next_retry_at: time(&row, "next_retry")?,
        dead_letters: row.try_get("dead")?,
        ..Status::default()
    }
    .finish())
}

/// A nullable time column, whatever bytes a writer left in it (`None` when unreadable).
fn time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, Error> {
    Ok(row
        .try_get::<Option<&[u8]>, _>(column)?
        .and_then(|b| parse_ts(&String::from_utf8_lossy(b))))
}

fn ids_json(ids: Option<&[Uuid]>) -> Option<String> {
    ids.map(|ids| {
        serde_json::to_string(
            &ids.iter()
                .map(|u| u.hyphenated().to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap_or_else(|_| "[]".into())
    })
}

const DEAD_MATCH: &str =
    "(?1 IS NULL OR id IN (SELECT value FROM json_each(?1)) OR original_id IN (SELECT value FROM json_each(?1)))";

pub(super) async fn dead_letters(
    pool: &SqlitePool,
    id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeadLetter>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT id, original_id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
                created_at, retry_count, error, failed_at, error_history
         FROM outbox_dead_letter WHERE {DEAD_MATCH} ORDER BY failed_at, seq LIMIT ?2"
    ))
    .bind(ids_json(id.as_ref().map(std::slice::from_ref)))
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(|row| {
            // Whatever a row holds (text that is not UTF-8 among it), it can be listed.
            let text = |column: &str| -> Result<String, Error> {
                Ok(rows::lossy(row.try_get::<Option<&[u8]>, _>(column)?))
            };
            let uuid = |column: &str| -> Result<Uuid, Error> {
                Ok(Uuid::parse_str(&text(column)?).unwrap_or_else(|_| Uuid::nil()))
            };
            Ok(DeadLetter {
                id: uuid("id")?,
                original_id: uuid("original_id")?,
                seq: row.try_get("seq")?,
                aggregate_type: text("aggregate_type")?,
                aggregate_id: text("aggregate_id")?,
                event_type: text("event_type")?,
                payload: parse_json(&text("payload")?),
                headers: row
                    .try_get::<Option<&[u8]>, _>("headers")?
                    .map(|b| parse_json(&String::from_utf8_lossy(b))),
                created_at: ts_or_now(&text("created_at")?),
                retry_count: row.try_get("retry_count")?,
                error: text("error")?,
                failed_at: ts_or_now(&text("failed_at")?),
                error_history: FailedAttempt::parse_history(Some(&text("error_history")?)),
            })
        })
        .collect()
}

pub(super) async fn replay(pool: &SqlitePool, ids: Option<&[Uuid]>) -> Result<Vec<Uuid>, Error> {
    let filter = ids_json(ids);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let replayed: Vec<String> = sqlx::query_scalar(&format!(
        "INSERT INTO outbox (seq, id, aggregate_type, aggregate_id, event_type, payload, headers,
                             created_at, retry_count, error_history)
         SELECT seq, original_id, aggregate_type, aggregate_id, event_type, payload, headers,
                created_at, 0, error_history
         FROM outbox_dead_letter WHERE {DEAD_MATCH}
         RETURNING id"
    ))
    .bind(&filter)
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query(&format!(
        "DELETE FROM outbox_dead_letter WHERE {DEAD_MATCH}"
    ))
    .bind(&filter)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(replayed
        .iter()
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect())
}

pub(super) async fn purge(pool: &SqlitePool, ids: Option<&[Uuid]>) -> Result<u64, Error> {
    Ok(sqlx::query(&format!(
        "DELETE FROM outbox_dead_letter WHERE {DEAD_MATCH}"
    ))
    .bind(ids_json(ids))
    .execute(pool)
    .await
    .map_err(db)?
    .rows_affected())
}

pub(super) async fn count_cleanable(
    pool: &SqlitePool,
    cutoff: DateTime<Utc>,
) -> Result<i64, Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND published_at < ?1",
    )
    .bind(ts(cutoff))
    .fetch_one(pool)
    .await
    .map_err(db)
}

pub(super) async fn cleanup_batch(
    pool: &SqlitePool,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<u64, Error> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE seq IN (
             SELECT seq FROM outbox
             WHERE published_at IS NOT NULL AND published_at < ?1
             ORDER BY published_at LIMIT ?2)",
    )
    .bind(ts(cutoff))
    .bind(batch)
    .execute(pool)
    .await
    .map_err(db)?
    .rows_affected())
}

/// One claimed row as a [`Record`]; text that is not UTF-8, or a retry_count that is not a
/// number, is the row's fault. (A malformed id reads as the nil UUID and an unreadable
/// created_at as now, as before.)
fn fields(row: &SqliteRow, seq: i64) -> Result<Record, Fault> {
    let raw = |column: &str| row.try_get::<Option<&[u8]>, _>(column);
    let text = |column: &str| rows::text(column, raw(column)?).map_err(Fault::Row);
    Ok(Record {
        seq,
        id: Uuid::parse_str(&rows::lossy(raw("id")?)).unwrap_or_else(|_| Uuid::nil()),
        aggregate_type: text("aggregate_type")?,
        aggregate_id: text("aggregate_id")?,
        event_type: text("event_type")?,
        payload: text("payload")?,
        headers: rows::text_opt("headers", raw("headers")?).map_err(Fault::Row)?,
        created_at: ts_or_now(&rows::lossy(raw("created_at")?)),
        retry_count: row
            .try_get::<i64, _>("retry_count")
            .map(|n| n.clamp(0, i32::MAX.into()) as i32)
            .map_err(|_| Fault::Row("column retry_count is not an integer".into()))?,
    })
}

impl SqliteStore {
    /// Moves claimed rows the relay cannot read into the dead-letter table, under the lease.
    async fn dead_letter_unreadable(&self, rows: &[Unreadable]) -> Result<(), Error> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let failed_at = ts(Utc::now());
        for bad in rows {
            let error = bad.error();
            let history =
                pushed_history(&mut tx, bad.seq, FailedAttempt::now(&error, true)).await?;
            sqlx::query(
                "INSERT INTO outbox_dead_letter
                     (original_id, seq, aggregate_type, aggregate_id, event_type, payload,
                      headers, created_at, retry_count, error, failed_at, error_history)
                 SELECT id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
                        created_at,
                        CASE typeof(retry_count) WHEN 'integer' THEN retry_count ELSE 0 END,
                        ?2, ?3, ?4
                 FROM outbox WHERE seq = ?1;
                 DELETE FROM outbox WHERE seq = ?1",
            )
            .bind(bad.seq)
            .bind(truncate_error(&error))
            .bind(&failed_at)
            .bind(history)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tracing::warn!(seq = bad.seq, reason = %bad.reason, "dead-lettered a row the relay cannot read");
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_round_trip_and_sort() {
        let a = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let b = a + chrono::Duration::milliseconds(1500);
        assert_eq!(ts(a), "2024-01-02T03:04:05.000Z");
        assert!(ts(a) < ts(b));
        assert_eq!(parse_ts(&ts(b)), Some(b));
        assert_eq!(parse_ts("2024-01-02 03:04:05"), Some(a));
    }
}
