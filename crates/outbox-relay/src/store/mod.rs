//! The outbox tables, per database: claiming batches, recording outcomes, status, dead letters
//! and cleanup (`inbox.rs`: the retention of consumers' inboxes too). Every SQL statement of
//! the relay lives here: one file per database (`postgres.rs`, `sqlite.rs`), plus the CDC source's statements ([`replication`]: slots,
//! publications, heartbeats; [`cdc`]: its dead letters), and [`connection`]: how to reach
//! PostgreSQL (libpq's URL parameters, TLS, the password) for every connection.

#[cfg(feature = "cdc")]
pub mod cdc;
mod checks;
pub mod connection;
pub mod console;
mod inbox;
mod pg_text;
mod postgres;
pub mod replication;
mod rows;
mod sqlite;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

pub use crate::delivery::{Postponed, Settlement};
use crate::error::Error;
use crate::record::Record;
use crate::urls::redact_url;
use replication::{CdcReaders, ReplicationSlot};

pub use console::{DeadLetterFilter, DeadLetterPage, EventState, EventView, TypeCount};
pub use inbox::InboxRows;

/// Longest `last_error` / dead-letter `error` kept, in characters.
pub const MAX_ERROR_LEN: usize = 2000;

/// Failed attempts an event's error history keeps (the latest ones).
pub const ERROR_HISTORY_LEN: usize = 10;

/// One failed attempt of an event, as its error history (`error_history`, a JSON array,
/// oldest first) keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FailedAttempt {
    /// When it failed.
    pub at: DateTime<Utc>,
    /// Why (cut to [`MAX_ERROR_LEN`] characters).
    pub error: String,
    /// Whether it counted toward `max_attempts` (an outage does not).
    pub counted: bool,
}

impl FailedAttempt {
    /// A failure now.
    pub fn now(error: &str, counted: bool) -> FailedAttempt {
        FailedAttempt {
            at: Utc::now(),
            error: truncate_error(error),
            counted,
        }
    }

    /// Appends `attempt` to `history`, keeping the latest [`ERROR_HISTORY_LEN`].
    pub fn push(history: &mut Vec<FailedAttempt>, attempt: FailedAttempt) {
        history.push(attempt);
        if history.len() > ERROR_HISTORY_LEN {
            history.drain(..history.len() - ERROR_HISTORY_LEN);
        }
    }

    /// Reads a stored history; entries that are not failed attempts (a hand-edited column)
    /// are skipped, anything else is an empty history.
    pub(crate) fn parse_history(text: Option<&str>) -> Vec<FailedAttempt> {
        let Some(Ok(serde_json::Value::Array(items))) =
            text.map(serde_json::from_str::<serde_json::Value>)
        else {
            return Vec::new();
        };
        items
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }
}

/// A connection pool on the database that holds the outbox table.
#[derive(Debug, Clone)]
pub enum Store {
    /// PostgreSQL: several relays at once, `FOR UPDATE SKIP LOCKED`, `LISTEN/NOTIFY`.
    Postgres(sqlx::PgPool),
    /// SQLite: one relay at a time (a lease row), polling.
    Sqlite(sqlite::SqliteStore),
}

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// Create a missing SQLite file (the demo does; the relay does not).
    pub create_sqlite_file: bool,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// PostgreSQL: commit without waiting for the WAL flush (`synchronous_commit = off`). Safe
    /// for the relay's own bookkeeping: a mark lost in a database crash only means the event is
    /// delivered again. The relay sets it; administrative commands (replay, purge) do not.
    pub asynchronous_commit: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 8,
            create_sqlite_file: false,
            connect_timeout: Duration::from_secs(10),
            asynchronous_commit: false,
        }
    }
}

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`
    Postgres,
    /// `sqlite:`
    Sqlite,
}

impl Backend {
    /// Recognizes a database URL, or says what is accepted.
    pub fn from_url(url: &str) -> Result<Backend, Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.is_empty() {
            Err(Error::Config(
                "no database URL: pass --database-url or set DATABASE_URL \
                 (postgres://user@host/db or sqlite:path.db)"
                    .into(),
            ))
        } else {
            Err(Error::Config(format!(
                "unsupported database URL {}: use postgres://user@host/db or sqlite:path.db",
                redact_url(url)
            )))
        }
    }
}

impl Store {
    /// Connects, checking the database is reachable now (a wrong URL fails here, not later).
    /// PostgreSQL URLs take libpq's parameters ([`connection`]: `sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey`, the password from the URL, `PGPASSWORD` or `~/.pgpass`).
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Store, Error> {
        let redacted = redact_url(url);
        let connect_err = |e: sqlx::Error| Error::Connect {
            url: redacted.clone(),
            reason: e.to_string(),
        };
        match Backend::from_url(url)? {
            Backend::Postgres => {
                let mut target = connection::PgTarget::parse(url)?;
                // One direct attempt first: a refused or misconfigured connection is reported
                // at once, instead of after the pool's retries run out. `prefer` and `allow`
                // get libpq's second attempt; the pool then uses what worked.
                let first = match Self::try_postgres(&target, options).await {
                    Ok(c) => c,
                    Err(raw) => match target.fallback(&raw) {
                        Some(next) => match Self::try_postgres(&next, options).await {
                            Ok(c) => {
                                tracing::info!(sslmode = next.mode.as_str(), first_attempt = %target.explain(&raw), "connected on the second attempt");
                                target = next;
                                c
                            }
                            Err(_) => return Err(target.connect_error(&raw)),
                        },
                        None => return Err(target.connect_error(&raw)),
                    },
                };
                let _ = sqlx::Connection::close(first).await;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(options.max_connections.max(1))
                    .acquire_timeout(options.connect_timeout)
                    .connect_lazy_with(Self::session_options(&target, options));
                Ok(Store::Postgres(pool))
            }
            Backend::Sqlite => Ok(Store::Sqlite(
                sqlite::SqliteStore::connect(url, options)
                    .await
                    .map_err(|e| match e {
                        Error::Database(db) => connect_err(db),
                        other => other,
                    })?,
            )),
        }
    }

    /// The relay's session settings on top of the target's connection options.
    fn session_options(
        target: &connection::PgTarget,
        options: &ConnectOptions,
    ) -> sqlx::postgres::PgConnectOptions {
        target
            .sqlx_options()
            .application_name("outbox")
            // Every statement of the relay walks an index in order (pending rows by seq,
            // rows by seq, published rows by time). A plan made while the table was small
            // or not yet analyzed (statistics lag a burst of events by a minute) must not
            // turn into a scan of the whole table or of every pending row: no sequential
            // or bitmap scans for the relay's sessions.
            .options([
                ("enable_seqscan", "off"),
                ("enable_bitmapscan", "off"),
                (
                    "synchronous_commit",
                    if options.asynchronous_commit {
                        "off"
                    } else {
                        "on"
                    },
                ),
            ])
    }

    /// One connection attempt, bounded by the connect timeout; the error's text on failure.
    async fn try_postgres(
        target: &connection::PgTarget,
        options: &ConnectOptions,
    ) -> Result<sqlx::PgConnection, String> {
        let opts = Self::session_options(target, options);
        match tokio::time::timeout(
            options.connect_timeout,
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", options.connect_timeout)),
        }
    }

    /// Where the database is, for log lines: host, port and database name, never credentials.
    pub fn describe(&self) -> String {
        match self {
            Store::Postgres(pool) => {
                let o = pool.connect_options();
                format!(
                    "postgres://{}:{}/{}",
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or("")
                )
            }
            Store::Sqlite(s) => format!(
                "sqlite:{}",
                s.pool.connect_options().get_filename().display()
            ),
        }
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Creates or upgrades the schema.
    pub async fn migrate(&self) -> Result<outbox::migrate::Report, Error> {
        Ok(match self {
            Store::Postgres(pool) => outbox::migrate(&mut *pool.acquire().await?).await?,
            Store::Sqlite(s) => outbox::migrate(&mut *s.pool.acquire().await?).await?,
        })
    }

    /// Fails with a hint to run `outbox migrate` when the schema is missing or outdated.
    pub async fn ensure_schema(&self) -> Result<i64, Error> {
        Ok(match self {
            Store::Postgres(pool) => {
                outbox::migrate::ensure_schema(&mut *pool.acquire().await?).await?
            }
            Store::Sqlite(s) => {
                outbox::migrate::ensure_schema(&mut *s.pool.acquire().await?).await?
            }
        })
    }

    /// Claims up to `limit` events that may be delivered now, in `seq` order.
    ///
    /// The claim holds its rows until [`Claim::settle`] (PostgreSQL: row locks in an open
    /// transaction; SQLite: the relay lease). For every aggregate it contains, the claimed events
    /// are the aggregate's *first* pending events: none is overtaken by a later one.
    pub async fn claim(&self, limit: usize, dead_letters_block: bool) -> Result<Claim, Error> {
        self.claim_partition(limit, dead_letters_block, Partition::WHOLE)
            .await
    }

    /// Like [`Store::claim`], restricted to the aggregates of one partition: the workers of a
    /// relay split the aggregates by hash so they never contend for the same rows. (SQLite has
    /// a single worker and ignores the partition.)
    pub async fn claim_partition(
        &self,
        limit: usize,
        dead_letters_block: bool,
        part: Partition,
    ) -> Result<Claim, Error> {
        self.claim_bounded(limit, u64::MAX, dead_letters_block, part)
            .await
    }

    /// Like [`Store::claim_partition`], and stopping once the claimed events' payloads and
    /// headers add up to `max_bytes` (the first event comes whatever its size), so a batch of
    /// large events does not take more memory than that.
    pub async fn claim_bounded(
        &self,
        limit: usize,
        max_bytes: u64,
        dead_letters_block: bool,
        part: Partition,
    ) -> Result<Claim, Error> {
        match self {
            Store::Postgres(pool) => {
                postgres::claim(pool, limit, max_bytes, dead_letters_block, part).await
            }
            Store::Sqlite(s) => s.claim(limit, max_bytes, dead_letters_block).await,
        }
    }

    /// Counts pending, retrying and dead events; on PostgreSQL also lists the replication
    /// slots and who reads the outbox table through them ([`Status::cdc`]).
    pub async fn status(&self) -> Result<Status, Error> {
        match self {
            Store::Postgres(pool) => {
                let mut status = self.explained(postgres::status(pool).await).await?;
                // Best effort: a hot standby server cannot compute the lag.
                match replication::replication_slots(pool).await {
                    Ok(slots) => status.replication_slots = slots,
                    Err(e) => tracing::debug!(error = %e, "cannot read replication slots"),
                }
                if !status.replication_slots.is_empty() {
                    match replication::max_slot_wal_keep_size(pool).await {
                        Ok(limit) => {
                            status.max_slot_wal_keep_size_bytes = Some(limit.unwrap_or(-1))
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot read max_slot_wal_keep_size"),
                    }
                    match replication::outbox_publications(pool).await {
                        Ok(found) => {
                            status.cdc = found.and_then(|(table, publications)| {
                                CdcReaders::find(table, publications, &status.replication_slots)
                            })
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot read publications"),
                    }
                }
                Ok(status)
            }
            Store::Sqlite(s) => self.explained(sqlite::status(&s.pool).await).await,
        }
    }

    /// What the metrics sample: dead letters and, with `pending`, pending events and the age
    /// of the oldest (in `seq` order on PostgreSQL). Cheaper than [`Store::status`].
    pub async fn backlog(&self, pending: bool) -> Result<Backlog, Error> {
        match self {
            Store::Postgres(pool) => postgres::backlog(pool, pending).await,
            Store::Sqlite(s) => {
                let st = sqlite::status(&s.pool).await?;
                Ok(Backlog {
                    pending: pending.then_some(st.pending),
                    oldest_pending_age_seconds: st.oldest_pending_age_seconds.filter(|_| pending),
                    dead_letters: st.dead_letters,
                })
            }
        }
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, Error> {
        let found = match self {
            Store::Postgres(pool) => postgres::dead_letters(pool, None, limit).await,
            Store::Sqlite(s) => sqlite::dead_letters(&s.pool, None, limit).await,
        };
        self.explained(found).await
    }

    /// One dead letter, by its own id or the event's id.
    pub async fn dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, Error> {
        let mut v = match self {
            Store::Postgres(pool) => postgres::dead_letters(pool, Some(id), 1).await?,
            Store::Sqlite(s) => sqlite::dead_letters(&s.pool, Some(id), 1).await?,
        };
        Ok(v.pop())
    }

    /// Moves dead letters back into the outbox (all of them when `ids` is `None`), with their
    /// original id and `seq`, so they are delivered again ahead of the events that waited
    /// behind them. Returns the event ids replayed.
    pub async fn replay(&self, ids: Option<&[Uuid]>) -> Result<Vec<Uuid>, Error> {
        let replayed = match self {
            Store::Postgres(pool) => postgres::replay(pool, ids).await,
            Store::Sqlite(s) => sqlite::replay(&s.pool, ids).await,
        };
        self.explained(replayed).await
    }

    /// Deletes dead letters (all of them when `ids` is `None`); returns how many.
    pub async fn purge(&self, ids: Option<&[Uuid]>) -> Result<u64, Error> {
        let purged = match self {
            Store::Postgres(pool) => postgres::purge(pool, ids).await,
            Store::Sqlite(s) => sqlite::purge(&s.pool, ids).await,
        };
        self.explained(purged).await
    }

    /// Counts published events older than `cutoff` (what [`Store::cleanup_batch`] would delete).
    pub async fn count_cleanable(&self, cutoff: DateTime<Utc>) -> Result<i64, Error> {
        let count = match self {
            Store::Postgres(pool) => postgres::count_cleanable(pool, cutoff).await,
            Store::Sqlite(s) => sqlite::count_cleanable(&s.pool, cutoff).await,
        };
        self.explained(count).await
    }

    /// Deletes up to `batch` published events older than `cutoff`, in one short transaction.
    /// Pending and dead events are never touched. Returns how many were deleted.
    pub async fn cleanup_batch(&self, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, Error> {
        match self {
            Store::Postgres(pool) => postgres::cleanup_batch(pool, cutoff, batch).await,
            Store::Sqlite(s) => sqlite::cleanup_batch(&s.pool, cutoff, batch).await,
        }
    }

    /// Registers (or refreshes) `relay` as waiting for new events, so writers' inserts wake it
    /// with `NOTIFY`; `false` removes it. PostgreSQL only; a no-op on SQLite.
    pub async fn set_waiting(&self, relay: &str, waiting: bool) -> Result<(), Error> {
        if let Store::Postgres(pool) = self {
            postgres::set_waiting(pool, relay, waiting).await?;
        }
        Ok(())
    }

    /// Gives up the SQLite relay lease so a standby can take over at once (no-op on PostgreSQL).
    pub async fn release(&self) {
        if let Store::Sqlite(s) = self {
            s.release_lease().await;
        }
    }

    /// A connection that hears the outbox table's wake-ups (`LISTEN outbox`, sent by its
    /// trigger while a relay waits), on PostgreSQL; `None` on SQLite, which has none. The
    /// listener reconnects by itself.
    pub async fn listen(&self) -> Result<Option<sqlx::postgres::PgListener>, Error> {
        let Store::Postgres(pool) = self else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(outbox::NOTIFY_CHANNEL).await?;
        Ok(Some(listener))
    }

    /// The PostgreSQL pool, when this is PostgreSQL.
    pub fn pg_pool(&self) -> Option<&sqlx::PgPool> {
        match self {
            Store::Postgres(pool) => Some(pool),
            Store::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, when this is SQLite.
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match self {
            Store::Postgres(_) => None,
            Store::Sqlite(s) => Some(&s.pool),
        }
    }
}

/// A share of the aggregates, by hash of `(aggregate_type, aggregate_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// This partition, `0..count`.
    pub index: u32,
    /// Number of partitions (1: everything).
    pub count: u32,
}

impl Partition {
    /// All aggregates.
    pub const WHOLE: Partition = Partition { index: 0, count: 1 };
}

/// A batch of claimed events, held until settled.
pub struct Claim {
    /// Events to deliver, in `seq` order.
    pub records: Vec<Record>,
    /// True when rows were available but another relay holds earlier events of their
    /// aggregates (or, on SQLite, the lease): worth retrying soon rather than sleeping.
    pub contended: bool,
    /// When nothing is claimable: time until the earliest event in backoff becomes due.
    pub next_due: Option<Duration>,
    /// Rows this claim could not read and moved to the dead-letter table (committed).
    pub dead_lettered: usize,
    hold: Hold,
}

enum Hold {
    None,
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::SqlitePool),
}

impl Claim {
    pub(crate) fn new(records: Vec<Record>, contended: bool, next_due: Option<Duration>) -> Self {
        Claim {
            records,
            contended,
            next_due,
            dead_lettered: 0,
            hold: Hold::None,
        }
    }

    /// Records the outcome of the batch and releases it. If this fails, nothing was recorded
    /// and the events stay pending: they will be delivered again (at least once).
    pub async fn settle(self, settlement: &Settlement) -> Result<(), Error> {
        match self.hold {
            Hold::None => Ok(()),
            Hold::Postgres(tx) => postgres::settle(tx, settlement).await,
            Hold::Sqlite(pool) => sqlite::settle(&pool, settlement).await,
        }
    }

    /// Releases the claim without recording anything.
    pub async fn release(self) {
        if let Hold::Postgres(tx) = self.hold {
            let _ = tx.rollback().await;
        }
    }
}

/// What `outbox status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// Events not yet delivered.
    pub pending: i64,
    /// Pending events that failed at least once.
    pub retrying: i64,
    /// Creation time of the oldest pending event.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Age of the oldest pending event, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Earliest scheduled retry.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Rows in the dead-letter table.
    pub dead_letters: i64,
    /// PostgreSQL: the database's logical replication slots (the CDC source's), with their
    /// replication lag in bytes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replication_slots: Vec<ReplicationSlot>,
    /// PostgreSQL with replication slots: the server's `max_slot_wal_keep_size` in bytes, -1
    /// when unlimited (a stalled slot then keeps WAL until the disk is full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_slot_wal_keep_size_bytes: Option<i64>,
    /// PostgreSQL: who reads the outbox table through logical replication. CDC never marks
    /// rows published: while it reads the table, `pending` counts rows, not a backlog (the
    /// slots' lag is the backlog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdc: Option<CdcReaders>,
}

impl Status {
    pub(crate) fn finish(mut self) -> Self {
        self.oldest_pending_age_seconds = self
            .oldest_pending_at
            .map(|t| ((Utc::now() - t).num_milliseconds().max(0) as f64) / 1000.0);
        self
    }
}

/// What [`Store::backlog`] samples for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Events not yet delivered (when asked for).
    pub pending: Option<i64>,
    /// Age of the oldest pending event, in seconds (`None` when none, or not asked for).
    pub oldest_pending_age_seconds: Option<f64>,
    /// Rows in the dead-letter table.
    pub dead_letters: i64,
}

/// A row of the dead-letter table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// The dead letter's own id.
    pub id: Uuid,
    /// The event's id.
    pub original_id: Uuid,
    /// The event's `seq`, restored on replay.
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
    /// When the event was written.
    pub created_at: DateTime<Utc>,
    /// Attempts made.
    pub retry_count: i32,
    /// Why it was given up.
    pub error: String,
    /// When it was given up.
    pub failed_at: DateTime<Utc>,
    /// Its last failed attempts, oldest first, the final one included (empty for dead letters
    /// written before schema version 5).
    pub error_history: Vec<FailedAttempt>,
}

/// Cuts an error message to [`MAX_ERROR_LEN`] characters.
pub(crate) fn truncate_error(s: &str) -> String {
    match s.char_indices().nth(MAX_ERROR_LEN) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

pub(crate) fn parse_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_history_keeps_the_latest_failures() {
        let mut h = Vec::new();
        for i in 0..ERROR_HISTORY_LEN + 3 {
            FailedAttempt::push(&mut h, FailedAttempt::now(&format!("e{i}"), i % 2 == 0));
        }
        assert_eq!(h.len(), ERROR_HISTORY_LEN);
        assert_eq!(h[0].error, "e3");
        assert_eq!(
            h[ERROR_HISTORY_LEN - 1].error,
            format!("e{}", ERROR_HISTORY_LEN + 2)
        );
        // Stored and read back; PostgreSQL's timestamp spelling reads too; junk is skipped.
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(FailedAttempt::parse_history(Some(&text)), h);
        let pg = r#"[{"at": "2026-12-03T22:50:29.123456+00:00", "error": "500", "counted": true},
                     {"nonsense": 1}, 7]"#;
        let read = FailedAttempt::parse_history(Some(pg));
        assert_eq!(read.len(), 1);
        assert!(read[0].counted);
        assert!(FailedAttempt::parse_history(Some("")).is_empty());
        assert!(FailedAttempt::parse_history(Some("{}")).is_empty());
        assert!(FailedAttempt::parse_history(None).is_empty());
    }

    #[test]
    fn backends_by_url() {
        assert_eq!(
            Backend::from_url("postgres://x/y").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://x/y").unwrap(),
            Backend::Postgres
        );
        assert_eq!(Backend::from_url("sqlite:a.db").unwrap(), Backend::Sqlite);
        let err = Backend::from_url("mysql://u:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported database URL") && !err.contains("pw"),
            "{err}"
        );
    }

    #[test]
    fn errors_are_truncated_on_char_boundaries() {
        let long = "é".repeat(MAX_ERROR_LEN + 10);
        let t = truncate_error(&long);
        assert_eq!(t.chars().count(), MAX_ERROR_LEN + 1);
        assert_eq!(truncate_error("short"), "short");
    }
}
