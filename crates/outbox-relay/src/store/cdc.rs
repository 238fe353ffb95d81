//! The CDC source's statements on the outbox tables (PostgreSQL): moving events it gives up on
//! into `outbox_dead_letter` (and out of the captured table, as the polling relay's settle
//! does), and reading which aggregates wait behind a dead letter.

use std::collections::HashMap;

use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::replication::{quote_ident, TableName};
use super::{truncate_error, FailedAttempt};
use crate::error::{db, Error};
use crate::record::Record;

/// The first dead letter of an aggregate: later events of it wait behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Its `seq`.
    pub seq: i64,
    /// The event's id.
    pub id: Uuid,
}

/// Aggregates with a dead letter, by `(aggregate_type, aggregate_id)`.
pub type Blocked = HashMap<(String, String), Block>;

/// A captured table the CDC source can move dead letters out of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedTable {
    /// The table.
    pub table: TableName,
    /// Its event id column.
    pub id_column: String,
    /// Whether that column is a `uuid` (else it is compared as text).
    pub id_is_uuid: bool,
}

/// An event given up on, as it goes into the dead-letter table.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterRow<'a> {
    /// The event as it was read from the captured table.
    pub record: &'a Record,
    /// Failed attempts (stored as `retry_count`).
    pub attempts: u32,
    /// Why it was given up.
    pub error: &'a str,
    /// Its earlier failed attempts, oldest first (the final one is added on writing).
    pub history: &'a [FailedAttempt],
}

/// The statement that moves events into the dead-letter table: the same rows the polling
/// relay's settle statement writes, and, as there, the rows leave the captured tables, so
/// `outbox dlq replay` can insert them again. Built once per relay, run by
/// [`insert_dead_letters`].
pub fn dead_letter_sql(tables: &[CapturedTable]) -> String {
    let mut sql = String::new();
    for (i, t) in tables.iter().enumerate() {
        sql.push_str(if i == 0 { "WITH " } else { ", " });
        let column = quote_ident(&t.id_column);
        let cond = if t.id_is_uuid {
            format!("{column} = ANY($1::uuid[])")
        } else {
            format!("{column}::text = ANY($1::uuid[]::text[])")
        };
        sql.push_str(&format!(
            "moved_{i} AS (DELETE FROM {} WHERE {cond})\n",
            t.table.quoted()
        ));
    }
    sql.push_str(
        "INSERT INTO outbox_dead_letter
             (original_id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
              created_at, retry_count, error, error_history)
         SELECT u.id, u.seq, u.t, u.a, u.e, u.p::jsonb, u.h::jsonb, u.c, u.r, u.err, u.hist::jsonb
         FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::timestamptz[], $9::int4[], $10::text[], $11::text[])
              AS u(id, seq, t, a, e, p, h, c, r, err, hist)
         -- Read again after a restart (the slot was not yet confirmed past it), an event
         -- already given up on is not a second dead letter: replay would insert it twice.
         WHERE NOT EXISTS (SELECT 1 FROM outbox_dead_letter d WHERE d.original_id = u.id)",
    );
    sql
}

fn json_or_string(text: &str) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        text.to_string()
    } else {
        serde_json::Value::String(text.to_string()).to_string()
    }
}

/// Writes dead letters in one statement ([`dead_letter_sql`]).
pub async fn insert_dead_letters(
    pool: &PgPool,
    sql: &str,
    dead: &[DeadLetterRow<'_>],
) -> Result<(), Error> {
    let n = dead.len();
    let mut ids = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut aggs = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut headers: Vec<Option<String>> = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut retries = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut histories = Vec::with_capacity(n);
    for d in dead {
        let o = d.record;
        ids.push(o.id);
        seqs.push(o.seq);
        types.push(o.aggregate_type.clone());
        aggs.push(o.aggregate_id.clone());
        events.push(o.event_type.clone());
        payloads.push(json_or_string(&o.payload));
        headers.push(
            o.headers
                .as_deref()
                .filter(|h| serde_json::from_str::<serde::de::IgnoredAny>(h).is_ok())
                .map(str::to_string),
        );
        created.push(o.created_at);
        retries.push(i32::try_from(d.attempts).unwrap_or(i32::MAX));
        errors.push(truncate_error(d.error));
        let mut history = d.history.to_vec();
        FailedAttempt::push(&mut history, FailedAttempt::now(d.error, true));
        histories.push(serde_json::to_string(&history).unwrap_or_else(|_| "[]".into()));
    }
    sqlx::query(sql)
        .bind(&ids)
        .bind(&seqs)
        .bind(&types)
        .bind(&aggs)
        .bind(&events)
        .bind(&payloads)
        .bind(&headers)
        .bind(&created)
        .bind(&retries)
        .bind(&errors)
        .bind(&histories)
        .execute(pool)
        .await
        .map_err(db)?;
    Ok(())
}

/// Re-reads the first dead letter of the given aggregates into `blocked` (a replay or purge
/// may have removed it since).
pub async fn refresh_blocks(
    pool: &PgPool,
    aggregates: impl IntoIterator<Item = (String, String)>,
    blocked: &mut Blocked,
) -> Result<(), Error> {
    let mut keys: Vec<(String, String)> = aggregates.into_iter().collect();
    keys.sort();
    keys.dedup();
    let (types, ids): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
    let rows = sqlx::query(
        "SELECT u.t, u.i, d.seq, d.original_id
         FROM unnest($1::text[], $2::text[]) AS u(t, i)
         LEFT JOIN LATERAL (
             SELECT seq, original_id FROM outbox_dead_letter
             WHERE aggregate_type = u.t AND aggregate_id = u.i
             ORDER BY seq LIMIT 1) d ON true",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    for row in rows {
        let key: (String, String) = (row.try_get("t")?, row.try_get("i")?);
        let seq: Option<i64> = row.try_get("seq")?;
        let id: Option<Uuid> = row.try_get("original_id")?;
        match (seq, id) {
            (Some(seq), Some(id)) => {
                blocked.insert(key, Block { seq, id });
            }
            _ => {
                blocked.remove(&key);
            }
        }
    }
    Ok(())
}

/// Every aggregate with a dead letter, with its first one.
pub async fn load_blocks(pool: &PgPool) -> Result<Blocked, Error> {
    let rows = sqlx::query(
        "SELECT DISTINCT ON (aggregate_type, aggregate_id)
                aggregate_type, aggregate_id, seq, original_id
         FROM outbox_dead_letter
         ORDER BY aggregate_type, aggregate_id, seq",
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut out = Blocked::with_capacity(rows.len());
    for row in rows {
        out.insert(
            (row.try_get("aggregate_type")?, row.try_get("aggregate_id")?),
            Block {
                seq: row.try_get("seq")?,
                id: row.try_get("original_id")?,
            },
        );
    }
    Ok(out)
}
