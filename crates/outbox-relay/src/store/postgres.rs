//! PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, safe with any number of relays.

use super::pg_text::{as_bytes, not_utf8, raw, text_columns_as_bytes};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::rows::{self, Fault, Read, Unreadable, PG_MAX_TIME, PG_MIN_TIME};
use super::{
    parse_json, truncate_error, Backlog, Claim, DeadLetter, FailedAttempt, Hold, Partition,
    Settlement, Status,
};
use crate::error::db;
use crate::error::Error;
use crate::record::Record;

/// One statement claims a batch:
///
/// 1. `blocked`: aggregates that must wait — an event in backoff, or (when dead letters block)
///    a dead letter — from the small `outbox_retrying_idx` and the dead-letter table;
/// 2. `candidates`: the first `limit × partitions` pending, due, unblocked rows in `seq` order
///    (a plain read of the statement's snapshot), each marked `mine` when its aggregate hashes
///    to this worker's partition (workers of one relay split the aggregates and never wait for
///    each other);
/// 3. `claimed`: up to `limit` of my candidates, and only while their payloads and headers as
///    stored (`pg_column_size`: cheap, compressed for large values) stay under the byte bound
///    (`budget`), locked `FOR UPDATE SKIP LOCKED` (rows another relay holds are skipped, rows
///    changed since the snapshot are re-checked);
/// 4. `clean`: the aggregates whose claimed rows are exactly their first `n` pending rows. An
///    aggregate whose earlier rows another relay holds (or that changed under the scan) is left
///    out of this batch, so no event overtakes an earlier one. Fast path: when every one of my
///    candidates up to the batch's last `seq` was claimed (`eligible.n = tally.n`), nothing was
///    skipped and every aggregate is clean; otherwise the pending rows up to the batch's last
///    `seq` are counted per aggregate in one scan of the pending index.
/// 5. The rows returned stop where the text of their payloads and headers passes the byte bound
///    (the first row always comes): a `seq` prefix of a clean batch is clean. No step joins the
///    batch with itself: the planner's estimate of `claimed` is a guess (two rows once a long
///    published history skews the statistics), and a nested loop there made the claim
///    quadratic in the batch size (BENCHMARKS.md, the history scenario). Rows past it stay
///    locked until the batch is settled and come in the next claim.
const CLAIM: &str = r#"
WITH blocked AS MATERIALIZED (
    SELECT aggregate_type, aggregate_id, min(seq) AS seq
    FROM outbox
    WHERE published_at IS NULL AND next_attempt_at IS NOT NULL AND next_attempt_at > now()
    GROUP BY aggregate_type, aggregate_id
    UNION ALL
    SELECT aggregate_type, aggregate_id, min(seq)
    FROM outbox_dead_letter
    WHERE $1
    GROUP BY aggregate_type, aggregate_id
),
candidates AS MATERIALIZED (
    SELECT o.seq,
           {mine} AS mine,
           pg_column_size(o.payload) + coalesce(pg_column_size(o.headers), 0) AS size
    FROM outbox o
    WHERE o.published_at IS NULL
      AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
      AND NOT EXISTS (
          SELECT 1 FROM blocked b
          WHERE b.aggregate_type = o.aggregate_type
            AND b.aggregate_id = o.aggregate_id
            AND b.seq < o.seq)
    ORDER BY o.seq
    LIMIT {candidates}
),
budget AS MATERIALIZED (
    SELECT m.seq
    FROM (SELECT c.seq, sum(c.size) OVER (ORDER BY c.seq) - c.size AS bytes_before
          FROM candidates c
          WHERE c.mine) m
    WHERE m.bytes_before < {max_bytes}
),
claimed AS MATERIALIZED (
    SELECT o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type,
           o.payload::text AS payload, o.headers::text AS headers,
           -- NULL when the relay's time type cannot hold it (infinity): that row is unreadable.
           CASE WHEN o.created_at BETWEEN {min_time} AND {max_time} THEN o.created_at END
               AS created_at,
           o.retry_count
    FROM outbox o
    WHERE o.seq = ANY (ARRAY(SELECT b.seq FROM budget b))
      AND o.published_at IS NULL
      AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
    ORDER BY o.seq
    LIMIT {limit}
    FOR UPDATE OF o SKIP LOCKED
),
tally AS MATERIALIZED (
    SELECT count(*) AS n, max(seq) AS hi FROM claimed
),
eligible AS MATERIALIZED (
    SELECT count(*) AS n FROM candidates c, tally t WHERE c.mine AND c.seq <= t.hi
),
heads AS (
    SELECT aggregate_type, aggregate_id, max(seq) AS hi, count(*) AS n
    FROM claimed
    GROUP BY aggregate_type, aggregate_id
),
slow AS MATERIALIZED (
    -- Only when the fast path fails (a one-time filter: otherwise nothing is scanned): every
    -- pending row up to the batch's last seq, through the pending index.
    SELECT q.aggregate_type, q.aggregate_id, q.seq
    FROM outbox q
    WHERE q.published_at IS NULL
      AND q.seq <= (SELECT hi FROM tally)
      AND (SELECT n FROM eligible) <> (SELECT n FROM tally)
),
slow_clean AS (
    SELECT h.aggregate_type, h.aggregate_id
    FROM heads h
    JOIN slow q
      ON q.aggregate_type = h.aggregate_type
     AND q.aggregate_id = h.aggregate_id
     AND q.seq <= h.hi
    GROUP BY h.aggregate_type, h.aggregate_id, h.n
    HAVING count(*) = h.n
),
sized AS (
    SELECT c.*,
           sum(octet_length(c.payload) + coalesce(octet_length(c.headers), 0))
               OVER (ORDER BY c.seq)
           - octet_length(c.payload) - coalesce(octet_length(c.headers), 0) AS bytes_before
    FROM claimed c
)
-- No join of the claimed rows with themselves or with `slow_clean`: the planner cannot
-- estimate how many rows `claimed` holds (two, with a long published history behind the
-- pending rows), and a nested loop over a batch with itself cost 1000 × 1000 comparisons.
-- `IN` is a hashed subplan, evaluated only when the fast path fails.
SELECT c.seq, c.id, {text_columns}, c.created_at, c.retry_count,
       ((SELECT n FROM eligible) = (SELECT n FROM tally)
        OR (c.aggregate_type, c.aggregate_id) IN (SELECT k.aggregate_type, k.aggregate_id
                                                  FROM slow_clean k)) AS clean
FROM sized c
WHERE c.bytes_before < {max_bytes}
ORDER BY c.seq
"#;

/// An `infinity` next_attempt_at (a writer parking an event) is never due: it is left out.
const NEXT_DUE: &str = "SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now())::float8 \
     FROM outbox WHERE published_at IS NULL AND next_attempt_at IS NOT NULL AND next_attempt_at > now() \
       AND next_attempt_at < 'infinity'";

/// The claimed rows' text columns, as text (the fast path).
const TEXT_COLUMNS: &str = "c.aggregate_type, c.aggregate_id, c.event_type, c.payload, c.headers";

/// The claim statement for one batch size, byte bound and partition; `bytes`: the text
/// columns as bytes (see [`text_columns_as_bytes`]).
fn claim_sql(limit: usize, max_bytes: u64, part: Partition, bytes: bool) -> String {
    let parts = part.count.max(1);
    let mine = if parts == 1 {
        "true".to_string()
    } else {
        format!(
            "((hashtext(o.aggregate_type || ':' || o.aggregate_id) & 2147483647) % {parts} = {})",
            part.index
        )
    };
    CLAIM
        .replace("{mine}", &mine)
        .replace("{candidates}", &(limit * parts as usize).to_string())
        .replace("{limit}", &limit.to_string())
        .replace("{max_bytes}", &max_bytes.min(i64::MAX as u64).to_string())
        .replace("{min_time}", PG_MIN_TIME)
        .replace("{max_time}", PG_MAX_TIME)
        .replace(
            "{text_columns}",
            &if bytes {
                text_columns_as_bytes()
            } else {
                TEXT_COLUMNS.to_string()
            },
        )
}

pub(super) async fn claim(
    pool: &PgPool,
    limit: usize,
    max_bytes: u64,
    dead_letters_block: bool,
    part: Partition,
) -> Result<Claim, Error> {
    let mut tx = pool.begin().await?;
    let rows = match sqlx::query(&claim_sql(limit, max_bytes, part, false))
        .bind(dead_letters_block)
        .fetch_all(&mut *tx)
        .await
    {
        Err(e) if not_utf8(&e) => {
            tx.rollback().await?;
            tx = pool.begin().await?;
            sqlx::query(&claim_sql(limit, max_bytes, part, true))
                .bind(dead_letters_block)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?
        }
        other => other.map_err(db)?,
    };
    let total = rows.len();
    let mut records = Vec::with_capacity(total);
    let mut unreadable = Vec::new();
    for row in rows {
        if !row.try_get::<bool, _>("clean")? {
            continue;
        }
        match read(&row)? {
            Ok(record) => records.push(record),
            Err(bad) => unreadable.push(bad),
        }
    }
    if !unreadable.is_empty() {
        // Out of the way first, then claim again (soon: `contended`): the rows read well are
        // released untouched and come back in the next claim, after the blocking rules had
        // their say about the new dead letters.
        dead_letter_unreadable(&mut tx, &unreadable).await?;
        tx.commit().await?;
        return Ok(Claim::after_dead_letters(unreadable.len()));
    }
    let contended = total > records.len();
    let next_due = if records.is_empty() && !contended {
        let secs: Option<f64> = sqlx::query_scalar(NEXT_DUE).fetch_one(&mut *tx).await?;
        secs.map(|s| Duration::from_secs_f64(s.max(0.0)))
    } else {
        None
    };
    let mut claim = Claim::new(records, contended, next_due);
    claim.hold = Hold::Postgres(tx);
    Ok(claim)
}

const SETTLE_PUBLISHED: &str = "UPDATE outbox SET published_at = $2 WHERE seq = ANY($1::bigint[])";
/// Delete-on-publish: no row version, no index entries to write, nothing for cleanup.
const DELETE_PUBLISHED: &str = "DELETE FROM outbox WHERE seq = ANY($1::bigint[])";

/// Published, retried and dead-lettered rows in one statement; `$published` marks or deletes.
macro_rules! settle_all {
    ($published:literal) => {
        concat!(
            "WITH published AS (",
            $published,
            r#"
),
retried AS (
    UPDATE outbox o
    SET retry_count = o.retry_count + u.counted,
        next_attempt_at = clock_timestamp() + u.delay_ms * interval '1 millisecond',
        last_error = u.error,
        error_history = outbox_error_history_push(o.error_history, jsonb_build_object(
            'at', clock_timestamp(), 'error', u.error, 'counted', u.counted > 0))
    FROM unnest($3::bigint[], $4::float8[], $5::text[], $8::int4[]) AS u(seq, delay_ms, error, counted)
    WHERE o.seq = u.seq
),
dead AS (
    DELETE FROM outbox o
    USING unnest($6::bigint[], $7::text[]) AS u(seq, error)
    WHERE o.seq = u.seq
    RETURNING o.id, o.seq, o.aggregate_type, o.aggregate_id, o.event_type, o.payload, o.headers,
              o.created_at, o.retry_count, u.error, o.error_history
)
INSERT INTO outbox_dead_letter
    (original_id, seq, aggregate_type, aggregate_id, event_type, payload, headers, created_at,
     retry_count, error, error_history)
SELECT id, seq, aggregate_type, aggregate_id, event_type, payload, headers, created_at,
       retry_count + 1, error,
       outbox_error_history_push(error_history, jsonb_build_object(
           'at', clock_timestamp(), 'error', error, 'counted', true))
FROM dead
"#
        )
    };
}

const SETTLE_ALL: &str =
    settle_all!("UPDATE outbox SET published_at = $2 WHERE seq = ANY($1::bigint[])");
const SETTLE_ALL_DELETE: &str =
    settle_all!("DELETE FROM outbox WHERE seq = ANY($1::bigint[]) RETURNING $2::timestamptz");

pub(super) async fn settle(
    mut tx: Transaction<'static, Postgres>,
    s: &Settlement,
) -> Result<(), Error> {
    let now = Utc::now();
    if s.retry.is_empty() && s.dead.is_empty() {
        if !s.published.is_empty() && s.delete_published {
            sqlx::query(DELETE_PUBLISHED)
                .bind(&s.published)
                .execute(&mut *tx)
                .await?;
        } else if !s.published.is_empty() {
            sqlx::query(SETTLE_PUBLISHED)
                .bind(&s.published)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
    } else {
        let retry_seq: Vec<i64> = s.retry.iter().map(|p| p.seq).collect();
        let retry_delay: Vec<f64> = s
            .retry
            .iter()
            .map(|p| p.delay.as_secs_f64() * 1000.0)
            .collect();
        let retry_err: Vec<String> = s.retry.iter().map(|p| truncate_error(&p.error)).collect();
        let retry_counted: Vec<i32> = s.retry.iter().map(|p| i32::from(p.counted)).collect();
        let (dead_seq, dead_err): (Vec<i64>, Vec<String>) = s
            .dead
            .iter()
            .map(|(seq, e)| (*seq, truncate_error(e)))
            .unzip();
        let sql = if s.delete_published {
            SETTLE_ALL_DELETE
        } else {
            SETTLE_ALL
        };
        sqlx::query(sql)
            .bind(&s.published)
            .bind(now)
            .bind(&retry_seq)
            .bind(&retry_delay)
            .bind(&retry_err)
            .bind(&dead_seq)
            .bind(&dead_err)
            .bind(&retry_counted)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn set_waiting(pool: &PgPool, relay: &str, waiting: bool) -> Result<(), Error> {
    let sql = if waiting {
        "INSERT INTO outbox_relay_waiting (relay) VALUES ($1)
         ON CONFLICT (relay) DO UPDATE SET seen = now()"
    } else {
        "DELETE FROM outbox_relay_waiting WHERE relay = $1"
    };
    sqlx::query(sql)
        .bind(relay)
        .execute(pool)
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn status(pool: &PgPool) -> Result<Status, Error> {
    // Times the relay cannot carry (infinity: a writer's) are left out of oldest and next.
    let row = sqlx::query(&format!(
        "SELECT count(*) AS pending,
                count(*) FILTER (WHERE retry_count > 0) AS retrying,
                min(created_at) FILTER (WHERE created_at BETWEEN {PG_MIN_TIME} AND {PG_MAX_TIME})
                    AS oldest,
                min(next_attempt_at)
                    FILTER (WHERE next_attempt_at > now() AND next_attempt_at <= {PG_MAX_TIME})
                    AS next_retry,
                (SELECT count(*) FROM outbox_dead_letter) AS dead
         FROM outbox WHERE published_at IS NULL"
    ))
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(Status {
        pending: row.try_get("pending")?,
        retrying: row.try_get("retrying")?,
        oldest_pending_at: row.try_get("oldest")?,
        oldest_pending_age_seconds: None,
        next_retry_at: row.try_get("next_retry")?,
        dead_letters: row.try_get("dead")?,
        ..Status::default()
    }
    .finish())
}

/// The metrics' sample: cheap enough to run every few seconds on a large backlog (an
/// index-only count of the pending index, one index probe for the oldest pending event in
/// `seq` order, the dead-letter count).
pub(super) async fn backlog(pool: &PgPool, pending: bool) -> Result<Backlog, Error> {
    let row = sqlx::query(
        "SELECT CASE WHEN $1 THEN (SELECT count(*) FROM outbox WHERE published_at IS NULL) END
                  AS pending,
                CASE WHEN $1 THEN
                  (SELECT CASE WHEN isfinite(created_at)
                               THEN extract(epoch FROM now() - created_at)::float8 END
                   FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT 1) END AS oldest_age,
                (SELECT count(*) FROM outbox_dead_letter) AS dead",
    )
    .bind(pending)
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(Backlog {
        pending: row.try_get("pending")?,
        oldest_pending_age_seconds: row
            .try_get::<Option<f64>, _>("oldest_age")?
            .map(|a| a.max(0.0)),
        dead_letters: row.try_get("dead")?,
    })
}

pub(super) async fn dead_letters(
    pool: &PgPool,
    id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeadLetter>, Error> {
    // Whatever a row holds (text that is not UTF-8 in a SQL_ASCII database, infinity), it can
    // be listed and shown: text comes as its bytes, times within what the relay can carry.
    let rows = sqlx::query(&format!(
        "SELECT id, original_id, seq, {} AS aggregate_type, {} AS aggregate_id,
                {} AS event_type, {} AS payload, {} AS headers,
                least(greatest(created_at, {PG_MIN_TIME}), {PG_MAX_TIME}) AS created_at,
                retry_count, {} AS error,
                least(greatest(failed_at, {PG_MIN_TIME}), {PG_MAX_TIME}) AS failed_at,
                error_history::text AS error_history
         FROM outbox_dead_letter
         WHERE $1::uuid IS NULL OR id = $1 OR original_id = $1
         ORDER BY failed_at, seq
         LIMIT $2",
        as_bytes("aggregate_type"),
        as_bytes("aggregate_id"),
        as_bytes("event_type"),
        as_bytes("payload::text"),
        as_bytes("headers::text"),
        as_bytes("error"),
    ))
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(|row| {
            let text = |column: &str| raw(&row, column).map(rows::lossy);
            Ok(DeadLetter {
                id: row.try_get("id")?,
                original_id: row.try_get("original_id")?,
                seq: row.try_get("seq")?,
                aggregate_type: text("aggregate_type")?,
                aggregate_id: text("aggregate_id")?,
                event_type: text("event_type")?,
                payload: parse_json(&text("payload")?),
                headers: raw(&row, "headers")?.map(|b| parse_json(&rows::lossy(Some(b)))),
                created_at: row.try_get("created_at")?,
                retry_count: row.try_get("retry_count")?,
                error: text("error")?,
                failed_at: row.try_get("failed_at")?,
                error_history: FailedAttempt::parse_history(
                    row.try_get::<Option<String>, _>("error_history")?
                        .as_deref(),
                ),
            })
        })
        .collect()
}

pub(super) async fn replay(pool: &PgPool, ids: Option<&[Uuid]>) -> Result<Vec<Uuid>, Error> {
    // Original id and seq come back: the event is again ahead of those that waited behind it.
    let replayed: Vec<Uuid> = sqlx::query_scalar(
        "WITH moved AS (
             DELETE FROM outbox_dead_letter
             WHERE $1::uuid[] IS NULL OR id = ANY($1) OR original_id = ANY($1)
             RETURNING *
         )
         INSERT INTO outbox (id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
                             created_at, retry_count, error_history)
         OVERRIDING SYSTEM VALUE
         SELECT original_id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
                created_at, 0, error_history
         FROM moved
         ORDER BY seq
         RETURNING id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    // An event the CDC source read from a logical decoding message (`outbox::emit`) comes back
    // as a row whose seq is the message's LSN: move the identity past it, so no writer's
    // insert ever draws that number.
    if !replayed.is_empty() {
        sqlx::query(
            "SELECT setval(s, m)
             FROM (SELECT pg_get_serial_sequence('outbox', 'seq') AS s,
                          (SELECT max(seq) FROM outbox) AS m) t
             WHERE s IS NOT NULL AND m > coalesce(pg_sequence_last_value(s::regclass), 0)",
        )
        .execute(pool)
        .await
        .map_err(db)?;
    }
    Ok(replayed)
}

pub(super) async fn purge(pool: &PgPool, ids: Option<&[Uuid]>) -> Result<u64, Error> {
    Ok(sqlx::query(
        "DELETE FROM outbox_dead_letter WHERE $1::uuid[] IS NULL OR id = ANY($1) OR original_id = ANY($1)",
    )
    .bind(ids)
    .execute(pool)
    .await
    .map_err(db)?
    .rows_affected())
}

pub(super) async fn count_cleanable(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<i64, Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND published_at < $1",
    )
    .bind(cutoff)
    .fetch_one(pool)
    .await
    .map_err(db)
}

pub(super) async fn cleanup_batch(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<u64, Error> {
    // A bounded DELETE (PostgreSQL has no DELETE … LIMIT): the sub-select walks the
    // published_at index, SKIP LOCKED keeps it from waiting on anything.
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE seq = ANY(ARRAY(
             SELECT seq FROM outbox
             WHERE published_at IS NOT NULL AND published_at < $1
             ORDER BY published_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED))",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(pool)
    .await
    .map_err(db)?
    .rows_affected())
}

/// One claimed row as a [`Record`], or why it cannot be one.
fn read(row: &PgRow) -> Result<Read, Error> {
    let seq: i64 = row.try_get("seq")?;
    rows::finish(seq, fields(row, seq))
}

fn fields(row: &PgRow, seq: i64) -> Result<Record, Fault> {
    let text = |column: &str| rows::text(column, raw(row, column)?).map_err(Fault::Row);
    let created_at: Option<DateTime<Utc>> = row.try_get("created_at")?;
    Ok(Record {
        seq,
        id: row.try_get("id")?,
        aggregate_type: text("aggregate_type")?,
        aggregate_id: text("aggregate_id")?,
        event_type: text("event_type")?,
        payload: text("payload")?,
        headers: rows::text_opt("headers", raw(row, "headers")?).map_err(Fault::Row)?,
        created_at: created_at.ok_or_else(|| {
            Fault::Row(
                "column created_at is not a time the relay can carry (infinity, or outside \
                 the years 1 to 9999)"
                    .into(),
            )
        })?,
        retry_count: row.try_get::<Option<i32>, _>("retry_count")?.unwrap_or(0),
    })
}

/// Moves claimed rows the relay cannot read into the dead-letter table, in the claim's
/// transaction (it holds their locks). NULLs an adopted table let in become empty values there.
async fn dead_letter_unreadable(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[Unreadable],
) -> Result<(), Error> {
    for bad in rows {
        let id: Option<Uuid> = sqlx::query_scalar(
            "WITH moved AS (DELETE FROM outbox WHERE seq = $1 RETURNING *)
             INSERT INTO outbox_dead_letter
                 (original_id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
                  created_at, retry_count, error, error_history)
             SELECT id, seq, coalesce(aggregate_type, ''), coalesce(aggregate_id, ''),
                    coalesce(event_type, ''), coalesce(payload, 'null'), headers, created_at,
                    coalesce(retry_count, 0), $2,
                    outbox_error_history_push(error_history, jsonb_build_object(
                        'at', clock_timestamp(), 'error', $2::text, 'counted', true))
             FROM moved
             RETURNING original_id",
        )
        .bind(bad.seq)
        .bind(truncate_error(&bad.error()))
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
        tracing::warn!(seq = bad.seq, id = ?id, reason = %bad.reason, "dead-lettered a row the relay cannot read");
    }
    Ok(())
}
