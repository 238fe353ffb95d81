//! The web console's queries on MySQL / MariaDB (see `store/console.rs`).

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

use super::{bytes, lossy, uuid};
use crate::error::{db, Error};
use crate::store::console::{Columns, DeadLetterSummary, EVENT_COLUMNS_PLAIN as EVENTS};
use crate::store::{DeadLetterFilter, DeadLetterPage};

const DEAD_FILTER: &str = "(? IS NULL OR aggregate_type = ?)
      AND (? IS NULL OR LOCATE(LOWER(?), LOWER(error)) > 0)
      AND (? IS NULL OR failed_at >= ?)
      AND (? IS NULL OR failed_at < ?)";

fn time(row: &MySqlRow, column: &str) -> Option<DateTime<Utc>> {
    row.try_get::<Option<DateTime<Utc>>, _>(column)
        .ok()
        .flatten()
}

fn columns(row: &MySqlRow) -> Result<Columns, Error> {
    let text_opt = |c: &str| -> Result<Option<String>, Error> {
        Ok(bytes(row, c)?.map(|b| String::from_utf8_lossy(b).into_owned()))
    };
    Ok(Columns {
        src: lossy(row, "src")?,
        id: uuid(row, "id")?,
        dl_id: bytes(row, "dl_id")?
            .and_then(|b| Uuid::parse_str(String::from_utf8_lossy(b).trim()).ok()),
        seq: row.try_get("seq")?,
        aggregate_type: lossy(row, "aggregate_type")?,
        aggregate_id: lossy(row, "aggregate_id")?,
        event_type: lossy(row, "event_type")?,
        payload: lossy(row, "payload")?,
        headers: text_opt("headers")?,
        created_at: time(row, "created_at").unwrap_or_else(Utc::now),
        retry_count: row.try_get("retry_count")?,
        published_at: time(row, "published_at"),
        next_attempt_at: time(row, "next_attempt_at"),
        error: text_opt("error")?,
        failed_at: time(row, "failed_at"),
    })
}

pub(in crate::store) async fn counts_by_type(
    pool: &MySqlPool,
) -> Result<Vec<(String, String, i64, i64, i64)>, Error> {
    let rows = sqlx::query(
        "SELECT aggregate_type, event_type, CAST(SUM(pending) AS SIGNED) AS pending,
                CAST(SUM(retrying) AS SIGNED) AS retrying, CAST(SUM(dead) AS SIGNED) AS dead
         FROM (SELECT aggregate_type, event_type, COUNT(*) AS pending,
                      SUM(retry_count > 0) AS retrying, 0 AS dead
               FROM outbox WHERE published_at IS NULL GROUP BY aggregate_type, event_type
               UNION ALL
               SELECT aggregate_type, event_type, 0, 0, COUNT(*)
               FROM outbox_dead_letter GROUP BY aggregate_type, event_type) t
         GROUP BY aggregate_type, event_type ORDER BY aggregate_type, event_type LIMIT 500",
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok((
                lossy(r, "aggregate_type")?,
                lossy(r, "event_type")?,
                r.try_get("pending")?,
                r.try_get("retrying")?,
                r.try_get("dead")?,
            ))
        })
        .collect()
}

pub(in crate::store) async fn find_event(
    pool: &MySqlPool,
    id: Uuid,
) -> Result<Vec<Columns>, Error> {
    let sql = format!(
        "{} LIMIT 1",
        EVENTS
            .replace("{outbox}", "id = ?")
            .replace("{dead}", "original_id = ? OR id = ?")
    );
    let id = id.hyphenated().to_string();
    let rows = sqlx::query(&sql)
        .bind(&id)
        .bind(&id)
        .bind(&id)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    rows.iter().map(columns).collect()
}

/// The latest `limit` events of one aggregate, newest first. The outbox has no index on the
/// aggregate of published rows: the scan walks back from the newest row, bounded to 10 s
/// (MariaDB's `max_statement_time`, MySQL's `max_execution_time`; each server ignores the
/// other's).
pub(in crate::store) async fn aggregate_events(
    pool: &MySqlPool,
    aggregate_type: &str,
    aggregate_id: &str,
    limit: i64,
) -> Result<Vec<Columns>, Error> {
    let cond = "aggregate_type = ? AND aggregate_id = ?";
    let sql = format!(
        "{} ORDER BY seq DESC LIMIT ?",
        EVENTS.replace("{outbox}", cond).replace("{dead}", cond)
    );
    let mut conn = pool.acquire().await?;
    for bound in [
        "SET SESSION max_statement_time = 10",
        "SET SESSION max_execution_time = 10000",
    ] {
        let _ = sqlx::Executor::execute(&mut *conn, bound).await;
    }
    let rows = sqlx::query(&sql)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(db);
    for reset in [
        "SET SESSION max_statement_time = DEFAULT",
        "SET SESSION max_execution_time = DEFAULT",
    ] {
        let _ = sqlx::Executor::execute(&mut *conn, reset).await;
    }
    rows?.iter().map(columns).collect()
}

pub(in crate::store) async fn dead_letter_page(
    pool: &MySqlPool,
    f: &DeadLetterFilter,
    offset: i64,
    limit: i64,
) -> Result<DeadLetterPage, Error> {
    macro_rules! filtered {
        ($query:expr) => {
            $query
                .bind(&f.aggregate_type)
                .bind(&f.aggregate_type)
                .bind(&f.error)
                .bind(&f.error)
                .bind(f.failed_from)
                .bind(f.failed_from)
                .bind(f.failed_to)
                .bind(f.failed_to)
        };
    }
    let count = format!("SELECT COUNT(*) FROM outbox_dead_letter WHERE {DEAD_FILTER}");
    let total: i64 = filtered!(sqlx::query_scalar(&count))
        .fetch_one(pool)
        .await
        .map_err(db)?;
    let page = format!(
        "SELECT id, original_id, aggregate_type, aggregate_id, event_type, retry_count, error,
                failed_at
         FROM outbox_dead_letter WHERE {DEAD_FILTER}
         ORDER BY failed_at, seq LIMIT ? OFFSET ?"
    );
    let rows = filtered!(sqlx::query(&page))
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok(DeadLetterSummary {
                id: uuid(r, "id")?,
                original_id: uuid(r, "original_id")?,
                aggregate_type: lossy(r, "aggregate_type")?,
                aggregate_id: lossy(r, "aggregate_id")?,
                event_type: lossy(r, "event_type")?,
                retry_count: r.try_get("retry_count")?,
                error: lossy(r, "error")?,
                failed_at: time(r, "failed_at").unwrap_or_else(Utc::now),
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(DeadLetterPage { rows, total })
}
