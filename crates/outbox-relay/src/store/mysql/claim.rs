//! The claim and the settle statement on MySQL / MariaDB.
//!
//! The claim keeps PostgreSQL's contract (see `store/postgres.rs`): for every aggregate in a
//! batch, the claimed events are the aggregate's first pending events; aggregates whose earlier
//! events another relay holds are left out whole; an aggregate with an event in backoff, or a
//! dead letter (unless dead letters do not block), is not claimed past it. MySQL cannot lock in
//! a CTE as PostgreSQL does, so the claim is three short steps, each at READ COMMITTED:
//!
//! 1. `candidates` (plain reads, no locks, no transaction): `blocked`, the aggregates in
//!    backoff (from `outbox_retrying_idx`) or behind a dead letter, usually none; then the first
//!    `limit × partitions` pending, due rows in `seq` order of the other aggregates, walking the
//!    NULL end of `outbox_pending_idx`. A blocked aggregate is left out whole, except for rows
//!    before the smallest blocking `seq` (an aggregate has no due pending row before its own
//!    blocker unless a replay put one there: leaving such a row for later is safe). Each row comes with whether its aggregate
//!    hashes to this worker's partition and the size of its payload and headers; this worker's
//!    rows are cut where their sizes pass the byte bound (the first always comes).
//! 2. `lock`: in a transaction, those rows again by primary key, re-checked (still pending,
//!    still due: the latest committed version), `FOR UPDATE SKIP LOCKED`, at most `limit`:
//!    rows another relay holds are skipped. The primary key is forced: walked through
//!    `outbox_pending_idx`, InnoDB locks every index entry it passes, not only the rows that
//!    match, and the other relays' claims would skip them all (seen on MariaDB 10.11).
//! 3. `clean`: when every candidate up to the batch's last `seq` was locked, nothing was skipped
//!    and every aggregate is clean (fast path). Otherwise the pending rows up to that `seq` are
//!    read again (a newer read than step 1: it sees what other relays committed meanwhile) and
//!    an aggregate is clean only when its claimed rows are exactly its first `n` pending rows
//!    and, when dead letters block, no dead letter of it precedes them (a row another relay
//!    dead-lettered between steps 1 and 2). Rows of unclean aggregates stay locked, undelivered,
//!    until the batch is settled, as on PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, Row, Transaction};

use super::{bytes, seq_list, uuid};
use crate::error::{db, Error};
use crate::record::Record;
use crate::store::rows::{self, Fault, Unreadable};
use crate::store::{truncate_error, Claim, FailedAttempt, Hold, Partition, Settlement};

/// Aggregates that must wait: an event in backoff (from the small `outbox_retrying_idx`) or,
/// when dead letters block, a dead letter; with the first blocking `seq` of each.
const BLOCKED: &str = "
SELECT x.aggregate_type, x.aggregate_id, MIN(x.seq) AS seq
FROM (
    SELECT r.aggregate_type, r.aggregate_id, r.seq
    FROM outbox r FORCE INDEX (outbox_retrying_idx)
    WHERE r.next_attempt_at > UTC_TIMESTAMP(6) AND r.published_at IS NULL
    UNION ALL
    SELECT d.aggregate_type, d.aggregate_id, d.seq
    FROM outbox_dead_letter d
    WHERE {dead_letters_block}
) x
GROUP BY x.aggregate_type, x.aggregate_id";

/// The candidates walk the pending end of `outbox_pending_idx` in `seq` order and stop at the
/// limit. `{blocked}` leaves out the blocked aggregates (a list of constants MySQL searches by
/// bisection): a join with a derived table would make MariaDB read and sort every pending row
/// first (seen: 0.5 s per claim on a 200k backlog).
const CANDIDATES: &str = "
SELECT o.seq, {mine} AS mine,
       CAST(LENGTH(o.payload) + COALESCE(LENGTH(o.headers), 0) AS SIGNED) AS size
FROM outbox o FORCE INDEX (outbox_pending_idx)
WHERE o.published_at IS NULL
  AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= UTC_TIMESTAMP(6))
  {blocked}
ORDER BY o.seq
LIMIT {candidates}";

/// Past this many blocked aggregates, each candidate is checked by two index probes instead of
/// against a list of constants (which then gets too long to send).
const MAX_BLOCKED_LIST: usize = 10_000;

/// The filter for many blocked aggregates: correlated probes (exact, slower per row).
const BLOCKED_PROBES: &str = "AND NOT EXISTS (
      SELECT 1 FROM outbox r FORCE INDEX (outbox_retrying_idx)
      WHERE r.next_attempt_at > UTC_TIMESTAMP(6) AND r.published_at IS NULL
        AND r.aggregate_type = o.aggregate_type AND r.aggregate_id = o.aggregate_id
        AND r.seq < o.seq)
  AND NOT ({dead_letters_block} AND EXISTS (
      SELECT 1 FROM outbox_dead_letter d
      WHERE d.aggregate_type = o.aggregate_type AND d.aggregate_id = o.aggregate_id
        AND d.seq < o.seq))";

const LOCK: &str = "
SELECT seq, id, aggregate_type, aggregate_id, event_type, payload, headers, created_at,
       retry_count
FROM outbox FORCE INDEX (PRIMARY)
WHERE seq IN ({seqs})
  AND published_at IS NULL
  AND (next_attempt_at IS NULL OR next_attempt_at <= UTC_TIMESTAMP(6))
ORDER BY seq
LIMIT {limit}
FOR UPDATE SKIP LOCKED";

/// Microseconds until the earliest event in backoff is due.
const NEXT_DUE: &str = "
SELECT CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), MIN(next_attempt_at)) AS SIGNED)
FROM outbox FORCE INDEX (outbox_retrying_idx)
WHERE next_attempt_at > UTC_TIMESTAMP(6) AND published_at IS NULL";

/// An aggregate: (aggregate_type, aggregate_id) as stored.
type Key = (Vec<u8>, Vec<u8>);

struct Candidate {
    seq: i64,
    mine: bool,
    size: i64,
}

fn candidates_sql(
    limit: usize,
    part: Partition,
    dead_letters_block: bool,
    blocked: &[(Vec<u8>, Vec<u8>, i64)],
) -> String {
    let parts = part.count.max(1);
    let mine = if parts == 1 {
        "1".to_string()
    } else {
        format!(
            "CAST(CRC32(CONCAT(o.aggregate_type, ':', o.aggregate_id)) % {parts} = {} AS SIGNED)",
            part.index
        )
    };
    let filter = if blocked.is_empty() {
        String::new()
    } else if blocked.len() > MAX_BLOCKED_LIST {
        BLOCKED_PROBES.replace(
            "{dead_letters_block}",
            if dead_letters_block { "TRUE" } else { "FALSE" },
        )
    } else {
        let first = blocked.iter().map(|b| b.2).min().unwrap_or(i64::MAX);
        format!(
            "AND ((o.aggregate_type, o.aggregate_id) NOT IN ({}) OR o.seq < {first})",
            vec!["(?, ?)"; blocked.len()].join(", ")
        )
    };
    CANDIDATES
        .replace("{mine}", &mine)
        .replace("{blocked}", &filter)
        .replace("{candidates}", &(limit * parts as usize).to_string())
}

fn key(row: &MySqlRow) -> Result<Key, sqlx::Error> {
    Ok((
        bytes(row, "aggregate_type")?.unwrap_or_default().to_vec(),
        bytes(row, "aggregate_id")?.unwrap_or_default().to_vec(),
    ))
}

pub(in crate::store) async fn claim(
    pool: &MySqlPool,
    limit: usize,
    max_bytes: u64,
    dead_letters_block: bool,
    part: Partition,
) -> Result<Claim, Error> {
    let blocked = blocked(pool, dead_letters_block).await?;
    let sql = candidates_sql(limit, part, dead_letters_block, &blocked);
    let rows = if blocked.is_empty() || blocked.len() > MAX_BLOCKED_LIST {
        // Text protocol (no parameters): one round trip, no prepared statement per batch size.
        sqlx::Executor::fetch_all(pool, sql.as_str()).await
    } else {
        let mut query = sqlx::query(&sql).persistent(false);
        for (t, a, _) in &blocked {
            query = query.bind(t.as_slice()).bind(a.as_slice());
        }
        query.fetch_all(pool).await
    }
    .map_err(db)?;
    let mut candidates = Vec::with_capacity(rows.len());
    for row in &rows {
        candidates.push(Candidate {
            seq: row.try_get("seq")?,
            mine: row.try_get::<i64, _>("mine")? != 0,
            size: row.try_get::<Option<i64>, _>("size")?.unwrap_or(0),
        });
    }
    // This worker's candidates, in seq order, while the bytes before each stay under the bound.
    let mut budget = Vec::new();
    let mut before: u64 = 0;
    for c in candidates.iter().filter(|c| c.mine) {
        if before >= max_bytes {
            break;
        }
        budget.push(c.seq);
        before = before.saturating_add(c.size.max(0) as u64);
    }
    if budget.is_empty() {
        return Ok(Claim::new(Vec::new(), false, next_due(pool).await?));
    }

    let mut tx = pool.begin().await?;
    let sql = LOCK
        .replace("{seqs}", &seq_list(&budget))
        .replace("{limit}", &limit.to_string());
    let locked = sqlx::Executor::fetch_all(&mut *tx, sql.as_str())
        .await
        .map_err(db)?;
    let Some(hi) = locked
        .last()
        .map(|r| r.try_get::<i64, _>("seq"))
        .transpose()?
    else {
        // Everything this worker could take is held by other relays: they finish within a batch.
        tx.rollback().await?;
        return Ok(Claim::new(Vec::new(), true, None));
    };
    let eligible = budget.iter().filter(|&&s| s <= hi).count();
    let clean = if eligible == locked.len() {
        None // fast path: nothing skipped, every aggregate clean
    } else {
        Some(clean_aggregates(&mut tx, &locked, hi, dead_letters_block).await?)
    };

    let total = locked.len();
    let mut records = Vec::with_capacity(total);
    let mut unreadable = Vec::new();
    for row in &locked {
        if let Some(clean) = &clean {
            if !clean.contains_key(&key(row)?) {
                continue;
            }
        }
        let seq: i64 = row.try_get("seq")?;
        match rows::finish(seq, fields(row, seq))? {
            Ok(record) => records.push(record),
            Err(bad) => unreadable.push(bad),
        }
    }
    if !unreadable.is_empty() {
        // Out of the way first, then claim again soon (`contended`): the rows read well come
        // back in the next claim, after the blocking rules had their say about the new dead
        // letters.
        dead_letter_unreadable(&mut tx, &unreadable).await?;
        tx.commit().await?;
        return Ok(Claim::after_dead_letters(unreadable.len()));
    }
    let contended = total > records.len();
    let mut claim = Claim::new(records, contended, None);
    claim.hold = Hold::Mysql(tx);
    Ok(claim)
}

/// The slow path of step 3: the claimed aggregates whose claimed rows are exactly their first
/// pending rows, with no blocking dead letter before them.
async fn clean_aggregates(
    tx: &mut Transaction<'static, MySql>,
    locked: &[MySqlRow],
    hi: i64,
    dead_letters_block: bool,
) -> Result<HashMap<Key, ()>, Error> {
    // Per aggregate: rows claimed and the last claimed seq.
    let mut heads: HashMap<Key, (usize, i64)> = HashMap::new();
    for row in locked {
        let seq: i64 = row.try_get("seq")?;
        let e = heads.entry(key(row)?).or_insert((0, seq));
        e.0 += 1;
        e.1 = e.1.max(seq);
    }
    let sql = format!(
        "SELECT seq, aggregate_type, aggregate_id FROM outbox FORCE INDEX (outbox_pending_idx)
         WHERE published_at IS NULL AND seq <= {hi}"
    );
    let pending = sqlx::Executor::fetch_all(&mut **tx, sql.as_str())
        .await
        .map_err(db)?;
    let mut before: HashMap<Key, usize> = HashMap::new();
    for row in &pending {
        let k = key(row)?;
        if let Some(&(_, last)) = heads.get(&k) {
            if row.try_get::<i64, _>("seq")? <= last {
                *before.entry(k).or_default() += 1;
            }
        }
    }
    let mut clean: HashMap<Key, ()> = heads
        .iter()
        .filter(|(k, (n, _))| before.get(*k) == Some(n))
        .map(|(k, _)| (k.clone(), ()))
        .collect();
    if dead_letters_block && !clean.is_empty() {
        let keys: Vec<&Key> = clean.keys().collect();
        let sql = format!(
            "SELECT aggregate_type, aggregate_id, MIN(seq) AS seq FROM outbox_dead_letter
             WHERE (aggregate_type, aggregate_id) IN ({}) AND seq < {hi}
             GROUP BY aggregate_type, aggregate_id",
            vec!["(?, ?)"; keys.len()].join(", ")
        );
        let mut query = sqlx::query(&sql).persistent(false);
        for (t, a) in keys {
            query = query.bind(t.as_slice()).bind(a.as_slice());
        }
        let dead = query.fetch_all(&mut **tx).await.map_err(db)?;
        for row in &dead {
            let k = key(row)?;
            let first_dead: i64 = row.try_get("seq")?;
            if heads.get(&k).is_some_and(|&(_, last)| first_dead < last) {
                clean.remove(&k);
            }
        }
    }
    Ok(clean)
}

/// The blocked aggregates with their first blocking `seq` (usually none: one cheap query).
async fn blocked(
    pool: &MySqlPool,
    dead_letters_block: bool,
) -> Result<Vec<(Vec<u8>, Vec<u8>, i64)>, Error> {
    let sql = BLOCKED.replace(
        "{dead_letters_block}",
        if dead_letters_block { "TRUE" } else { "FALSE" },
    );
    let rows = sqlx::Executor::fetch_all(pool, sql.as_str())
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let (t, a) = key(r)?;
            Ok((t, a, r.try_get::<i64, _>("seq")?))
        })
        .collect()
}

async fn next_due(pool: &MySqlPool) -> Result<Option<Duration>, Error> {
    let micros: Option<i64> = sqlx::query_scalar(NEXT_DUE)
        .fetch_one(pool)
        .await
        .map_err(db)?;
    Ok(micros.map(|m| Duration::from_micros(m.max(0) as u64)))
}

/// One claimed row as a [`Record`], or the row's fault (text not UTF-8, a zero date).
fn fields(row: &MySqlRow, seq: i64) -> Result<Record, Fault> {
    let text = |column: &str| rows::text(column, bytes(row, column)?).map_err(Fault::Row);
    let created_at: DateTime<Utc> = row.try_get("created_at").map_err(|e| {
        Fault::Row(format!(
            "column created_at is not a time the relay can read ({e})"
        ))
    })?;
    Ok(Record {
        seq,
        id: uuid(row, "id")?,
        aggregate_type: text("aggregate_type")?,
        aggregate_id: text("aggregate_id")?,
        event_type: text("event_type")?,
        payload: text("payload")?,
        headers: rows::text_opt("headers", bytes(row, "headers")?).map_err(Fault::Row)?,
        created_at,
        retry_count: row.try_get::<i32, _>("retry_count")?,
    })
}

/// Moves claimed rows the relay cannot read into the dead-letter table, in the claim's
/// transaction (it holds their locks).
async fn dead_letter_unreadable(
    tx: &mut Transaction<'static, MySql>,
    rows: &[Unreadable],
) -> Result<(), Error> {
    for bad in rows {
        dead_letter(tx, bad.seq, &bad.error(), 0).await?;
        tracing::warn!(seq = bad.seq, reason = %bad.reason, "dead-lettered a row the relay cannot read");
    }
    Ok(())
}

/// A row's error history with `attempt` appended (the latest ones kept), as JSON text. The
/// history is built here rather than with JSON functions, which MySQL and MariaDB spell
/// differently; a failure is rare enough for the extra read.
async fn pushed_history(
    tx: &mut Transaction<'static, MySql>,
    seq: i64,
    attempt: FailedAttempt,
) -> Result<String, Error> {
    let row = sqlx::query("SELECT error_history FROM outbox WHERE seq = ?")
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let stored = match &row {
        Some(row) => bytes(row, "error_history")?.map(String::from_utf8_lossy),
        None => None,
    };
    let mut history = FailedAttempt::parse_history(stored.as_deref());
    FailedAttempt::push(&mut history, attempt);
    Ok(serde_json::to_string(&history).unwrap_or_else(|_| "[]".into()))
}

/// Moves one row to the dead-letter table (its `retry_count` plus `attempt`), its error
/// history ending with `error`, in `tx`.
async fn dead_letter(
    tx: &mut Transaction<'static, MySql>,
    seq: i64,
    error: &str,
    attempt: i32,
) -> Result<(), Error> {
    let history = pushed_history(tx, seq, FailedAttempt::now(error, true)).await?;
    sqlx::query(
        "INSERT INTO outbox_dead_letter
             (original_id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
              created_at, retry_count, error, error_history)
         SELECT id, seq, aggregate_type, aggregate_id, event_type, payload, headers,
                created_at, retry_count + ?, ?, ?
         FROM outbox WHERE seq = ?",
    )
    .bind(attempt)
    .bind(truncate_error(error))
    .bind(history)
    .bind(seq)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    sqlx::query("DELETE FROM outbox WHERE seq = ?")
        .bind(seq)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

/// Records a batch's outcome and commits, releasing the claim.
pub(in crate::store) async fn settle(
    mut tx: Transaction<'static, MySql>,
    s: &Settlement,
) -> Result<(), Error> {
    if !s.published.is_empty() {
        let sql = if s.delete_published {
            // Delete-on-publish: no history to clean up, no index entry to move.
            format!(
                "DELETE FROM outbox WHERE seq IN ({})",
                seq_list(&s.published)
            )
        } else {
            format!(
                "UPDATE outbox SET published_at = UTC_TIMESTAMP(6) WHERE seq IN ({})",
                seq_list(&s.published)
            )
        };
        sqlx::Executor::execute(&mut *tx, sql.as_str())
            .await
            .map_err(db)?;
    }
    for p in &s.retry {
        let history =
            pushed_history(&mut tx, p.seq, FailedAttempt::now(&p.error, p.counted)).await?;
        sqlx::query(
            "UPDATE outbox
             SET retry_count = retry_count + ?,
                 next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND,
                 last_error = ?,
                 error_history = ?
             WHERE seq = ?",
        )
        .bind(i32::from(p.counted))
        .bind(i64::try_from(p.delay.as_micros()).unwrap_or(i64::MAX))
        .bind(truncate_error(&p.error))
        .bind(history)
        .bind(p.seq)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    for (seq, error) in &s.dead {
        dead_letter(&mut tx, *seq, error, 1).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_is_a_hash_of_the_aggregate() {
        let whole = candidates_sql(10, Partition::WHOLE, true, &[]);
        assert!(whole.contains("1 AS mine") && whole.contains("LIMIT 10"));
        assert!(!whole.contains("NOT IN") && !whole.contains("NOT EXISTS"));
        let blocked = [
            (b"T".to_vec(), b"a".to_vec(), 7),
            (b"T".to_vec(), b"b".to_vec(), 3),
        ];
        let part = candidates_sql(10, Partition { index: 1, count: 3 }, false, &blocked);
        assert!(part.contains("% 3 = 1") && part.contains("LIMIT 30"));
        assert!(
            part.contains("NOT IN ((?, ?), (?, ?)) OR o.seq < 3)"),
            "{part}"
        );
        let many = vec![(b"T".to_vec(), b"a".to_vec(), 1); MAX_BLOCKED_LIST + 1];
        let probes = candidates_sql(10, Partition::WHOLE, false, &many);
        assert!(probes.contains("NOT EXISTS") && probes.contains("NOT (FALSE AND EXISTS"));
    }
}
