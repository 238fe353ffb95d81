//! What the web console reads beyond [`Store::status`]: counts per aggregate type, one event
//! wherever it is (pending, retrying, published or dead-lettered), an aggregate's recent
//! events, a filtered page of dead letters, and how many events were published since a time.
//! Read-only: the console's actions use [`Store::replay`] and [`Store::purge`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::sqlite::{parse_ts, ts};
use super::{parse_json, Store};
use crate::error::{db, Error};

/// Pending, retrying and dead-lettered events of one aggregate type and event type (what a
/// topic template names: the web console adds them up per routed topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeCount {
    /// The aggregate type.
    pub aggregate_type: String,
    /// The event type.
    pub event_type: String,
    /// Events not yet delivered.
    pub pending: i64,
    /// Pending events that failed at least once.
    pub retrying: i64,
    /// Dead letters.
    pub dead_letters: i64,
}

/// Where an event is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EventState {
    /// Waiting for its first delivery.
    Pending,
    /// Failed before; waits for its next attempt.
    Retrying {
        /// When it may be tried again (`None`: now).
        next_attempt_at: Option<DateTime<Utc>>,
        /// The last failure.
        last_error: Option<String>,
    },
    /// Delivered and marked (a relay with `on_publish = delete` leaves no trace).
    Published {
        /// When the sink acknowledged it.
        at: DateTime<Utc>,
    },
    /// Given up: in the dead-letter table.
    DeadLettered {
        /// The dead letter's own id.
        dead_letter_id: Uuid,
        /// Why.
        error: String,
        /// When.
        failed_at: DateTime<Utc>,
    },
}

/// One event, from the outbox or the dead-letter table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    /// The event's id.
    pub id: Uuid,
    /// Its position in the outbox.
    pub seq: i64,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// Headers.
    pub headers: Option<serde_json::Value>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Failed attempts counted so far.
    pub retry_count: i32,
    /// Where it is.
    pub state: EventState,
}

/// Which dead letters a console page shows (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Exactly this aggregate type.
    pub aggregate_type: Option<String>,
    /// The error contains this text (case-insensitive).
    pub error: Option<String>,
    /// Failed at or after.
    pub failed_from: Option<DateTime<Utc>>,
    /// Failed before.
    pub failed_to: Option<DateTime<Utc>>,
}

/// A dead letter as a list shows it (the detail is [`Store::dead_letter`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterSummary {
    /// The dead letter's own id.
    pub id: Uuid,
    /// The event's id.
    pub original_id: Uuid,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// Attempts made.
    pub retry_count: i32,
    /// Why it was given up.
    pub error: String,
    /// When.
    pub failed_at: DateTime<Utc>,
}

/// One page of dead letters and how many match in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeadLetterPage {
    /// The page, oldest failure first.
    pub rows: Vec<DeadLetterSummary>,
    /// Dead letters matching the filter.
    pub total: i64,
}

/// The columns every event query selects: the outbox's rows (`src = 'o'`) and the dead-letter
/// table's (`src = 'd'`, whose `id` is the event's and `dl_id` its own).
const EVENT_COLUMNS_PG: &str = "
    SELECT 'o' AS src, id, NULL::uuid AS dl_id, seq, aggregate_type, aggregate_id, event_type,
           payload::text AS payload, headers::text AS headers, created_at, retry_count,
           published_at, next_attempt_at, last_error AS error, NULL::timestamptz AS failed_at
    FROM outbox WHERE {outbox}
    UNION ALL
    SELECT 'd', original_id, id, seq, aggregate_type, aggregate_id, event_type, payload::text,
           headers::text, created_at, retry_count, NULL, NULL, error, failed_at
    FROM outbox_dead_letter WHERE {dead}";

/// The same in plain SQL: SQLite's and MySQL's event queries.
pub(super) const EVENT_COLUMNS_PLAIN: &str = "
    SELECT 'o' AS src, id, NULL AS dl_id, seq, aggregate_type, aggregate_id, event_type,
           payload, headers, created_at, retry_count, published_at, next_attempt_at,
           last_error AS error, NULL AS failed_at
    FROM outbox WHERE {outbox}
    UNION ALL
    SELECT 'd', original_id, id, seq, aggregate_type, aggregate_id, event_type, payload,
           headers, created_at, retry_count, NULL, NULL, error, failed_at
    FROM outbox_dead_letter WHERE {dead}";

fn events_sql(template: &str, outbox: &str, dead: &str, tail: &str) -> String {
    format!(
        "{} {tail}",
        template.replace("{outbox}", outbox).replace("{dead}", dead)
    )
}

/// An event row's columns, whatever the database.
pub(super) struct Columns {
    pub(super) src: String,
    pub(super) id: Uuid,
    pub(super) dl_id: Option<Uuid>,
    pub(super) seq: i64,
    pub(super) aggregate_type: String,
    pub(super) aggregate_id: String,
    pub(super) event_type: String,
    pub(super) payload: String,
    pub(super) headers: Option<String>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) retry_count: i32,
    pub(super) published_at: Option<DateTime<Utc>>,
    pub(super) next_attempt_at: Option<DateTime<Utc>>,
    pub(super) error: Option<String>,
    pub(super) failed_at: Option<DateTime<Utc>>,
}

impl Columns {
    fn from_pg(row: &sqlx::postgres::PgRow) -> Result<Columns, Error> {
        Ok(Columns {
            src: row.try_get("src")?,
            id: row.try_get("id")?,
            dl_id: row.try_get("dl_id")?,
            seq: row.try_get("seq")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            event_type: row.try_get("event_type")?,
            payload: row.try_get("payload")?,
            headers: row.try_get("headers")?,
            created_at: row.try_get("created_at")?,
            retry_count: row.try_get("retry_count")?,
            published_at: row.try_get("published_at")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            error: row.try_get("error")?,
            failed_at: row.try_get("failed_at")?,
        })
    }

    fn from_sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<Columns, Error> {
        let time = |col: &str| -> Result<Option<DateTime<Utc>>, Error> {
            Ok(row
                .try_get::<Option<String>, _>(col)?
                .as_deref()
                .and_then(parse_ts))
        };
        let uuid = |col: &str| -> Result<Option<Uuid>, Error> {
            Ok(row
                .try_get::<Option<String>, _>(col)?
                .and_then(|s| Uuid::parse_str(&s).ok()))
        };
        Ok(Columns {
            src: row.try_get("src")?,
            id: uuid("id")?.unwrap_or_else(Uuid::nil),
            dl_id: uuid("dl_id")?,
            seq: row.try_get("seq")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            event_type: row.try_get("event_type")?,
            payload: row.try_get("payload")?,
            headers: row.try_get("headers")?,
            created_at: time("created_at")?.unwrap_or_else(Utc::now),
            retry_count: row.try_get("retry_count")?,
            published_at: time("published_at")?,
            next_attempt_at: time("next_attempt_at")?,
            error: row.try_get("error")?,
            failed_at: time("failed_at")?,
        })
    }

    pub(super) fn view(self) -> EventView {
        let state = if self.src == "d" {
            EventState::DeadLettered {
                dead_letter_id: self.dl_id.unwrap_or_else(Uuid::nil),
                error: self.error.unwrap_or_default(),
                failed_at: self.failed_at.unwrap_or(self.created_at),
            }
        } else if let Some(at) = self.published_at {
            EventState::Published { at }
        } else if self.retry_count > 0 || self.next_attempt_at.is_some() {
            EventState::Retrying {
                next_attempt_at: self.next_attempt_at,
                last_error: self.error,
            }
        } else {
            EventState::Pending
        };
        EventView {
            id: self.id,
            seq: self.seq,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            payload: parse_json(&self.payload),
            headers: self.headers.as_deref().map(parse_json),
            created_at: self.created_at,
            retry_count: self.retry_count,
            state,
        }
    }
}

/// The dead-letter filter's conditions; PostgreSQL numbers its parameters, SQLite too.
const DEAD_FILTER_PG: &str = "($1::text IS NULL OR aggregate_type = $1)
      AND ($2::text IS NULL OR strpos(lower(error), lower($2)) > 0)
      AND ($3::timestamptz IS NULL OR failed_at >= $3)
      AND ($4::timestamptz IS NULL OR failed_at < $4)";
const DEAD_FILTER_LITE: &str = "(?1 IS NULL OR aggregate_type = ?1)
      AND (?2 IS NULL OR instr(lower(error), lower(?2)) > 0)
      AND (?3 IS NULL OR failed_at >= ?3)
      AND (?4 IS NULL OR failed_at < ?4)";
const SUMMARY_COLUMNS: &str =
    "id, original_id, aggregate_type, aggregate_id, event_type, retry_count, error, failed_at";

/// Most dead letters one "replay all matching" moves.
pub const MAX_REPLAY_MATCHING: i64 = 10_000;

impl Store {
    /// Pending, retrying and dead-lettered events per aggregate type and event type (at most
    /// 500 pairs).
    pub async fn counts_by_type(&self) -> Result<Vec<TypeCount>, Error> {
        let rows: Vec<(String, String, i64, i64, i64)> = match self {
            Store::Postgres(pool) => sqlx::query_as(
                "SELECT aggregate_type, event_type, sum(pending)::bigint, sum(retrying)::bigint,
                        sum(dead)::bigint
                 FROM (SELECT aggregate_type, event_type, count(*) AS pending,
                              count(*) FILTER (WHERE retry_count > 0) AS retrying,
                              0::bigint AS dead
                       FROM outbox WHERE published_at IS NULL GROUP BY 1, 2
                       UNION ALL
                       SELECT aggregate_type, event_type, 0, 0, count(*)
                       FROM outbox_dead_letter GROUP BY 1, 2) t
                 GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 500",
            )
            .fetch_all(pool)
            .await
            .map_err(db)?,
            Store::Sqlite(s) => sqlx::query_as(
                "SELECT aggregate_type, event_type, sum(pending), sum(retrying), sum(dead)
                 FROM (SELECT aggregate_type, event_type, count(*) AS pending,
                              coalesce(sum(retry_count > 0), 0) AS retrying, 0 AS dead
                       FROM outbox WHERE published_at IS NULL GROUP BY 1, 2
                       UNION ALL
                       SELECT aggregate_type, event_type, 0, 0, count(*)
                       FROM outbox_dead_letter GROUP BY 1, 2)
                 GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 500",
            )
            .fetch_all(&s.pool)
            .await
            .map_err(db)?,
            Store::Mysql(pool) => super::mysql::console::counts_by_type(pool).await?,
        };
        Ok(rows
            .into_iter()
            .map(
                |(aggregate_type, event_type, pending, retrying, dead_letters)| TypeCount {
                    aggregate_type,
                    event_type,
                    pending,
                    retrying,
                    dead_letters,
                },
            )
            .collect())
    }

    /// One event by its id (or its dead letter's id), wherever it is.
    pub async fn find_event(&self, id: Uuid) -> Result<Option<EventView>, Error> {
        let mut found = match self {
            Store::Postgres(pool) => {
                let sql = events_sql(
                    EVENT_COLUMNS_PG,
                    "id = $1",
                    "original_id = $1 OR id = $1",
                    "LIMIT 1",
                );
                let rows = sqlx::query(&sql)
                    .bind(id)
                    .fetch_all(pool)
                    .await
                    .map_err(db)?;
                rows.iter()
                    .map(Columns::from_pg)
                    .collect::<Result<Vec<_>, _>>()?
            }
            Store::Sqlite(s) => {
                let sql = events_sql(
                    EVENT_COLUMNS_PLAIN,
                    "id = ?1",
                    "original_id = ?1 OR id = ?1",
                    "LIMIT 1",
                );
                let rows = sqlx::query(&sql)
                    .bind(id.hyphenated().to_string())
                    .fetch_all(&s.pool)
                    .await
                    .map_err(db)?;
                rows.iter()
                    .map(Columns::from_sqlite)
                    .collect::<Result<Vec<_>, _>>()?
            }
            Store::Mysql(pool) => super::mysql::console::find_event(pool, id).await?,
        };
        Ok(found.pop().map(Columns::view))
    }

    /// The latest `limit` events of one aggregate (outbox and dead letters), in `seq` order.
    /// PostgreSQL walks the outbox backwards from its newest row (there is no index on the
    /// aggregate of published rows), bounded by a 10 s statement timeout.
    pub async fn aggregate_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        limit: i64,
    ) -> Result<Vec<EventView>, Error> {
        let mut events = match self {
            Store::Postgres(pool) => {
                let cond = "aggregate_type = $1 AND aggregate_id = $2";
                let sql = events_sql(EVENT_COLUMNS_PG, cond, cond, "ORDER BY seq DESC LIMIT $3");
                let mut tx = pool.begin().await.map_err(db)?;
                sqlx::query("SET LOCAL statement_timeout = '10s'")
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                let rows = sqlx::query(&sql)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.rollback().await.map_err(db)?;
                rows.iter()
                    .map(Columns::from_pg)
                    .collect::<Result<Vec<_>, _>>()?
            }
            Store::Sqlite(s) => {
                let cond = "aggregate_type = ?1 AND aggregate_id = ?2";
                let sql = events_sql(
                    EVENT_COLUMNS_PLAIN,
                    cond,
                    cond,
                    "ORDER BY seq DESC LIMIT ?3",
                );
                let rows = sqlx::query(&sql)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(limit)
                    .fetch_all(&s.pool)
                    .await
                    .map_err(db)?;
                rows.iter()
                    .map(Columns::from_sqlite)
                    .collect::<Result<Vec<_>, _>>()?
            }
            Store::Mysql(pool) => {
                super::mysql::console::aggregate_events(pool, aggregate_type, aggregate_id, limit)
                    .await?
            }
        };
        events.reverse();
        Ok(events.into_iter().map(Columns::view).collect())
    }

    /// A page of the dead letters matching `filter`, oldest failure first, and their number.
    pub async fn dead_letter_page(
        &self,
        filter: &DeadLetterFilter,
        offset: i64,
        limit: i64,
    ) -> Result<DeadLetterPage, Error> {
        let f = filter;
        match self {
            Store::Postgres(pool) => {
                let total: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM outbox_dead_letter WHERE {DEAD_FILTER_PG}"
                ))
                .bind(&f.aggregate_type)
                .bind(&f.error)
                .bind(f.failed_from)
                .bind(f.failed_to)
                .fetch_one(pool)
                .await
                .map_err(db)?;
                let rows = sqlx::query(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM outbox_dead_letter WHERE {DEAD_FILTER_PG}
                     ORDER BY failed_at, seq LIMIT $5 OFFSET $6"
                ))
                .bind(&f.aggregate_type)
                .bind(&f.error)
                .bind(f.failed_from)
                .bind(f.failed_to)
                .bind(limit)
                .bind(offset)
                .fetch_all(pool)
                .await
                .map_err(db)?;
                let rows = rows
                    .iter()
                    .map(|r| {
                        Ok(DeadLetterSummary {
                            id: r.try_get("id")?,
                            original_id: r.try_get("original_id")?,
                            aggregate_type: r.try_get("aggregate_type")?,
                            aggregate_id: r.try_get("aggregate_id")?,
                            event_type: r.try_get("event_type")?,
                            retry_count: r.try_get("retry_count")?,
                            error: r.try_get("error")?,
                            failed_at: r.try_get("failed_at")?,
                        })
                    })
                    .collect::<Result<_, Error>>()?;
                Ok(DeadLetterPage { rows, total })
            }
            Store::Sqlite(s) => {
                let (from, to) = (f.failed_from.map(ts), f.failed_to.map(ts));
                let total: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM outbox_dead_letter WHERE {DEAD_FILTER_LITE}"
                ))
                .bind(&f.aggregate_type)
                .bind(&f.error)
                .bind(&from)
                .bind(&to)
                .fetch_one(&s.pool)
                .await
                .map_err(db)?;
                let rows = sqlx::query(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM outbox_dead_letter WHERE {DEAD_FILTER_LITE}
                     ORDER BY failed_at, seq LIMIT ?5 OFFSET ?6"
                ))
                .bind(&f.aggregate_type)
                .bind(&f.error)
                .bind(&from)
                .bind(&to)
                .bind(limit)
                .bind(offset)
                .fetch_all(&s.pool)
                .await
                .map_err(db)?;
                let uuid = |r: &sqlx::sqlite::SqliteRow, col: &str| -> Result<Uuid, Error> {
                    Ok(Uuid::parse_str(r.try_get::<&str, _>(col)?).unwrap_or_else(|_| Uuid::nil()))
                };
                let rows = rows
                    .iter()
                    .map(|r| {
                        Ok(DeadLetterSummary {
                            id: uuid(r, "id")?,
                            original_id: uuid(r, "original_id")?,
                            aggregate_type: r.try_get("aggregate_type")?,
                            aggregate_id: r.try_get("aggregate_id")?,
                            event_type: r.try_get("event_type")?,
                            retry_count: r.try_get("retry_count")?,
                            error: r.try_get("error")?,
                            failed_at: parse_ts(r.try_get::<&str, _>("failed_at")?)
                                .unwrap_or_else(Utc::now),
                        })
                    })
                    .collect::<Result<_, Error>>()?;
                Ok(DeadLetterPage { rows, total })
            }
            Store::Mysql(pool) => {
                super::mysql::console::dead_letter_page(pool, f, offset, limit).await
            }
        }
    }

    /// The ids of the dead letters matching `filter` (at most [`MAX_REPLAY_MATCHING`]), oldest
    /// failure first: what "replay all matching" hands to [`Store::replay`].
    pub async fn dead_letter_ids(&self, filter: &DeadLetterFilter) -> Result<Vec<Uuid>, Error> {
        let page = self
            .dead_letter_page(filter, 0, MAX_REPLAY_MATCHING)
            .await?;
        Ok(page.rows.into_iter().map(|r| r.id).collect())
    }

    /// Events marked published after `since` (0 for a relay that deletes published rows).
    pub async fn published_since(&self, since: DateTime<Utc>) -> Result<i64, Error> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at > $1")
                    .bind(since)
                    .fetch_one(pool)
                    .await
                    .map_err(db)
            }
            Store::Sqlite(s) => {
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at > ?1")
                    .bind(ts(since))
                    .fetch_one(&s.pool)
                    .await
                    .map_err(db)
            }
            Store::Mysql(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at > ?")
                    .bind(since)
                    .fetch_one(pool)
                    .await
                    .map_err(db)
            }
        }
    }
}
