//! MySQL / MariaDB: status, the metrics' sample, dead letters (list, replay, purge) and
//! cleanup in batches.

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

use super::{bytes, lossy, placeholders, seq_list, uuid};
use crate::error::{db, Error};
use crate::store::{parse_json, Backlog, DeadLetter, FailedAttempt, Status};

pub(in crate::store) async fn status(pool: &MySqlPool) -> Result<Status, Error> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS pending,
                CAST(COALESCE(SUM(retry_count > 0), 0) AS SIGNED) AS retrying,
                MIN(created_at) AS oldest,
                MIN(CASE WHEN next_attempt_at > UTC_TIMESTAMP(6) THEN next_attempt_at END)
                    AS next_retry,
                (SELECT COUNT(*) FROM outbox_dead_letter) AS dead
         FROM outbox FORCE INDEX (outbox_pending_idx)
         WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(Status {
        pending: row.try_get("pending")?,
        retrying: row.try_get("retrying")?,
        oldest_pending_at: row.try_get("oldest").ok().flatten(),
        oldest_pending_age_seconds: None,
        next_retry_at: row.try_get("next_retry").ok().flatten(),
        dead_letters: row.try_get("dead")?,
        ..Status::default()
    }
    .finish())
}

/// The metrics' sample: an index-only count of the pending rows (the NULL end of
/// `outbox_pending_idx`), one index probe for the oldest pending event in `seq` order, the
/// dead-letter count.
pub(in crate::store) async fn backlog(pool: &MySqlPool, pending: bool) -> Result<Backlog, Error> {
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_dead_letter")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    if !pending {
        return Ok(Backlog {
            dead_letters: dead,
            ..Backlog::default()
        });
    }
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM outbox FORCE INDEX (outbox_pending_idx)
                 WHERE published_at IS NULL) AS pending,
                (SELECT CAST(TIMESTAMPDIFF(MICROSECOND, created_at, UTC_TIMESTAMP(6)) AS SIGNED)
                 FROM outbox FORCE INDEX (outbox_pending_idx)
                 WHERE published_at IS NULL ORDER BY seq LIMIT 1) AS oldest_micros",
    )
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(Backlog {
        pending: Some(row.try_get("pending")?),
        oldest_pending_age_seconds: row
            .try_get::<Option<i64>, _>("oldest_micros")?
            .map(|m| m.max(0) as f64 / 1e6),
        dead_letters: dead,
    })
}

/// `id IN (…) OR original_id IN (…)` for the given ids, or everything.
fn dead_match(ids: Option<&[Uuid]>) -> (String, Vec<String>) {
    match ids {
        None => ("TRUE".into(), Vec::new()),
        Some([]) => ("FALSE".into(), Vec::new()),
        Some(ids) => {
            let list = placeholders(ids.len());
            let text: Vec<String> = ids.iter().map(|u| u.hyphenated().to_string()).collect();
            let mut binds = text.clone();
            binds.extend(text);
            (format!("(id IN {list} OR original_id IN {list})"), binds)
        }
    }
}

pub(in crate::store) async fn dead_letters(
    pool: &MySqlPool,
    id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeadLetter>, Error> {
    let (filter, binds) = dead_match(id.as_ref().map(std::slice::from_ref));
    let sql = format!(
        "SELECT id, original_id, seq, aggregate_type, aggregate_id, event_type, payload,
                headers, created_at, retry_count, error, failed_at, error_history
         FROM outbox_dead_letter WHERE {filter} ORDER BY failed_at, seq LIMIT ?"
    );
    let mut query = sqlx::query(&sql);
    for b in &binds {
        query = query.bind(b);
    }
    let rows = query.bind(limit).fetch_all(pool).await.map_err(db)?;
    rows.iter()
        .map(|row| {
            Ok(DeadLetter {
                id: uuid(row, "id")?,
                original_id: uuid(row, "original_id")?,
                seq: row.try_get("seq")?,
                aggregate_type: lossy(row, "aggregate_type")?,
                aggregate_id: lossy(row, "aggregate_id")?,
                event_type: lossy(row, "event_type")?,
                payload: parse_json(&lossy(row, "payload")?),
                headers: bytes(row, "headers")?.map(|b| parse_json(&String::from_utf8_lossy(b))),
                created_at: row.try_get("created_at").unwrap_or_else(|_| Utc::now()),
                retry_count: row.try_get("retry_count")?,
                error: lossy(row, "error")?,
                failed_at: row.try_get("failed_at").unwrap_or_else(|_| Utc::now()),
                error_history: FailedAttempt::parse_history(
                    bytes(row, "error_history")?
                        .map(String::from_utf8_lossy)
                        .as_deref(),
                ),
            })
        })
        .collect()
}

/// Moves dead letters back with their original id and `seq`, in one transaction.
pub(in crate::store) async fn replay(
    pool: &MySqlPool,
    ids: Option<&[Uuid]>,
) -> Result<Vec<Uuid>, Error> {
    let (filter, binds) = dead_match(ids);
    let mut tx = pool.begin().await?;
    let select = format!(
        "SELECT seq, original_id FROM outbox_dead_letter WHERE {filter} ORDER BY seq FOR UPDATE"
    );
    let mut query = sqlx::query(&select);
    for b in &binds {
        query = query.bind(b);
    }
    let moved = query.fetch_all(&mut *tx).await.map_err(db)?;
    if moved.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let mut seqs = Vec::with_capacity(moved.len());
    let mut replayed = Vec::with_capacity(moved.len());
    for row in &moved {
        seqs.push(row.try_get::<i64, _>("seq")?);
        replayed.push(uuid(row, "original_id")?);
    }
    let list = seq_list(&seqs);
    let sql = format!(
        "INSERT INTO outbox (seq, id, aggregate_type, aggregate_id, event_type, payload, headers,
                             created_at, retry_count, error_history)
         SELECT seq, original_id, aggregate_type, aggregate_id, event_type, payload, headers,
                created_at, 0, error_history
         FROM outbox_dead_letter WHERE seq IN ({list}) ORDER BY seq;
         DELETE FROM outbox_dead_letter WHERE seq IN ({list})"
    );
    // Two statements in one text-protocol round trip.
    sqlx::Executor::execute(&mut *tx, sql.as_str())
        .await
        .map_err(db)?;
    tx.commit().await?;
    Ok(replayed)
}

pub(in crate::store) async fn purge(pool: &MySqlPool, ids: Option<&[Uuid]>) -> Result<u64, Error> {
    let (filter, binds) = dead_match(ids);
    let sql = format!("DELETE FROM outbox_dead_letter WHERE {filter}");
    let mut query = sqlx::query(&sql);
    for b in &binds {
        query = query.bind(b);
    }
    Ok(query.execute(pool).await.map_err(db)?.rows_affected())
}

pub(in crate::store) async fn count_cleanable(
    pool: &MySqlPool,
    cutoff: DateTime<Utc>,
) -> Result<i64, Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL AND published_at < ?",
    )
    .bind(cutoff)
    .fetch_one(pool)
    .await
    .map_err(db)
}

/// Up to `batch` published rows older than `cutoff`, in one short transaction: their keys are
/// read from the published end of `outbox_pending_idx` (`SKIP LOCKED`: never waits), then
/// deleted by primary key.
pub(in crate::store) async fn cleanup_batch(
    pool: &MySqlPool,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM outbox FORCE INDEX (outbox_pending_idx)
         WHERE published_at IS NOT NULL AND published_at < ?
         ORDER BY published_at
         LIMIT ?
         FOR UPDATE SKIP LOCKED",
    )
    .bind(cutoff)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    if seqs.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let sql = format!("DELETE FROM outbox WHERE seq IN ({})", seq_list(&seqs));
    let deleted = sqlx::Executor::execute(&mut *tx, sql.as_str())
        .await
        .map_err(db)?
        .rows_affected();
    tx.commit().await?;
    Ok(deleted)
}
