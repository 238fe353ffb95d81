//! The outbox tables, per database: claiming batches, recording outcomes, status, dead letters
//! and cleanup (`inbox.rs`: the retention of consumers' inboxes too). Every SQL statement of
//! the relay lives here: one file per database (`postgres.rs`, `mysql/`, `sqlite.rs`), plus the
//! CDC source's statements ([`replication`]: slots,
//! publications, heartbeats; [`cdc`]: its dead letters), and [`connection`]: how to reach
//! PostgreSQL (libpq's URL parameters, TLS, the password) for every connection.

#[cfg(feature = "cdc")]
pub mod cdc;
mod checks;
pub mod connection;
pub mod console;
mod inbox;
mod mysql;
mod pg_text;
mod postgres;
pub mod replication;
mod reports;
mod rows;
mod sqlite;

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use crate::delivery::{Postponed, Settlement};
use crate::error::Error;
use crate::record::Record;
use crate::urls::redact_url;
use replication::CdcReaders;

pub use console::{DeadLetterFilter, DeadLetterPage, EventState, EventView, TypeCount};
pub use inbox::InboxRows;
pub use reports::{Backlog, DeadLetter, FailedAttempt, Status, ERROR_HISTORY_LEN};

/// Longest `last_error` / dead-letter `error` kept, in characters.
pub const MAX_ERROR_LEN: usize = 2000;

/// A connection pool on the database that holds the outbox table.
#[derive(Debug, Clone)]
pub enum Store {
    /// PostgreSQL: several relays at once, `FOR UPDATE SKIP LOCKED`, `LISTEN/NOTIFY`.
    Postgres(sqlx::PgPool),
    /// SQLite: one relay at a time (a lease row), polling.
    Sqlite(sqlite::SqliteStore),
    /// MySQL 8.0+ / MariaDB 10.6+: several relays at once, `FOR UPDATE SKIP LOCKED`, polling.
    Mysql(sqlx::MySqlPool),
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
    /// `mysql://` or `mariadb://`
    Mysql,
}

impl Backend {
    /// Recognizes a database URL, or says what is accepted.
    pub fn from_url(url: &str) -> Result<Backend, Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Ok(Backend::Mysql)
        } else if url.is_empty() {
            Err(Error::Config(
                "no database URL: pass --database-url or set DATABASE_URL \
                 (postgres://user@host/db, mysql://user@host/db or sqlite:path.db)"
                    .into(),
            ))
        } else {
            Err(Error::Config(format!(
                "unsupported database URL {}: use postgres://user@host/db, \
                 mysql://user@host/db or sqlite:path.db",
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
            Backend::Mysql => Ok(Store::Mysql(mysql::connect(url, options).await?)),
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
            Store::Mysql(pool) => mysql::describe(pool),
        }
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Mysql(_) => Backend::Mysql,
        }
    }

    /// Creates or upgrades the schema.
    pub async fn migrate(&self) -> Result<outbox::migrate::Report, Error> {
        Ok(match self {
            Store::Postgres(pool) => outbox::migrate(&mut *pool.acquire().await?).await?,
            Store::Sqlite(s) => outbox::migrate(&mut *s.pool.acquire().await?).await?,
            Store::Mysql(pool) => outbox::migrate(&mut *pool.acquire().await?).await?,
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
            Store::Mysql(pool) => {
                outbox::migrate::ensure_schema(&mut *pool.acquire().await?).await?
            }
        })
    }

    /// Claims up to `limit` events that may be delivered now, in `seq` order.
    ///
    /// The claim holds its rows until [`Claim::settle`] (PostgreSQL, MySQL: row locks in an
    /// open transaction; SQLite: the relay lease). For every aggregate it contains, the claimed events
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
            Store::Mysql(pool) => {
                mysql::claim::claim(pool, limit, max_bytes, dead_letters_block, part).await
            }
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
            Store::Mysql(pool) => self.explained(mysql::admin::status(pool).await).await,
        }
    }

    /// What the metrics sample: dead letters and, with `pending`, pending events and the age
    /// of the oldest (in `seq` order on PostgreSQL and MySQL). Cheaper than [`Store::status`].
    pub async fn backlog(&self, pending: bool) -> Result<Backlog, Error> {
        match self {
            Store::Postgres(pool) => postgres::backlog(pool, pending).await,
            Store::Mysql(pool) => mysql::admin::backlog(pool, pending).await,
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
            Store::Mysql(pool) => mysql::admin::dead_letters(pool, None, limit).await,
        };
        self.explained(found).await
    }

    /// One dead letter, by its own id or the event's id.
    pub async fn dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, Error> {
        let mut v = match self {
            Store::Postgres(pool) => postgres::dead_letters(pool, Some(id), 1).await?,
            Store::Sqlite(s) => sqlite::dead_letters(&s.pool, Some(id), 1).await?,
            Store::Mysql(pool) => mysql::admin::dead_letters(pool, Some(id), 1).await?,
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
            Store::Mysql(pool) => mysql::admin::replay(pool, ids).await,
        };
        self.explained(replayed).await
    }

    /// Deletes dead letters (all of them when `ids` is `None`); returns how many.
    pub async fn purge(&self, ids: Option<&[Uuid]>) -> Result<u64, Error> {
        let purged = match self {
            Store::Postgres(pool) => postgres::purge(pool, ids).await,
            Store::Sqlite(s) => sqlite::purge(&s.pool, ids).await,
            Store::Mysql(pool) => mysql::admin::purge(pool, ids).await,
        };
        self.explained(purged).await
    }

    /// Counts published events older than `cutoff` (what [`Store::cleanup_batch`] would delete).
    pub async fn count_cleanable(&self, cutoff: DateTime<Utc>) -> Result<i64, Error> {
        let count = match self {
            Store::Postgres(pool) => postgres::count_cleanable(pool, cutoff).await,
            Store::Sqlite(s) => sqlite::count_cleanable(&s.pool, cutoff).await,
            Store::Mysql(pool) => mysql::admin::count_cleanable(pool, cutoff).await,
        };
        self.explained(count).await
    }

    /// Deletes up to `batch` published events older than `cutoff`, in one short transaction.
    /// Pending and dead events are never touched. Returns how many were deleted.
    pub async fn cleanup_batch(&self, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, Error> {
        match self {
            Store::Postgres(pool) => postgres::cleanup_batch(pool, cutoff, batch).await,
            Store::Sqlite(s) => sqlite::cleanup_batch(&s.pool, cutoff, batch).await,
            Store::Mysql(pool) => mysql::admin::cleanup_batch(pool, cutoff, batch).await,
        }
    }

    /// Registers (or refreshes) `relay` as waiting for new events, so writers' inserts wake it
    /// with `NOTIFY`; `false` removes it. PostgreSQL only; a no-op on MySQL and SQLite.
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
    /// trigger while a relay waits), on PostgreSQL; `None` on MySQL and SQLite, which have
    /// none (their relays poll). The listener reconnects by itself.
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
            _ => None,
        }
    }

    /// The SQLite pool, when this is SQLite.
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match self {
            Store::Sqlite(s) => Some(&s.pool),
            _ => None,
        }
    }

    /// The MySQL pool, when this is MySQL or MariaDB.
    pub fn mysql_pool(&self) -> Option<&sqlx::MySqlPool> {
        match self {
            Store::Mysql(pool) => Some(pool),
            _ => None,
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
    Mysql(sqlx::Transaction<'static, sqlx::MySql>),
}

impl Claim {
    /// No records: `n` unreadable rows went to the dead-letter table (committed); claim again
    /// soon (`contended`), the rows read well come back then, after the blocking rules had
    /// their say about the new dead letters.
    pub(crate) fn after_dead_letters(n: usize) -> Self {
        let mut claim = Claim::new(Vec::new(), true, None);
        claim.dead_lettered = n;
        claim
    }

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
            Hold::Mysql(tx) => mysql::claim::settle(tx, settlement).await,
        }
    }

    /// Releases the claim without recording anything.
    pub async fn release(self) {
        match self.hold {
            Hold::Postgres(tx) => {
                let _ = tx.rollback().await;
            }
            Hold::Mysql(tx) => {
                let _ = tx.rollback().await;
            }
            Hold::None | Hold::Sqlite(_) => {}
        }
    }
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
        assert_eq!(Backend::from_url("mysql://u@h/db").unwrap(), Backend::Mysql);
        assert_eq!(
            Backend::from_url("mariadb://u@h/db").unwrap(),
            Backend::Mysql
        );
        let err = Backend::from_url("oracle://u:pw@h/db")
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
