//! The service's database: the `shipments` table beside the inbox, on PostgreSQL or SQLite.
//! Every event is handled in one transaction: the inbox row, the position and the shipment.

use std::str::FromStr;
use std::time::Duration;

use outbox::inbox::{self, Freshness, Receipt};
use sqlx::types::Json;
use sqlx::{PgPool, SqlitePool};

use crate::event::{EventKind, OrderEvent};
use crate::Error;

/// The `aggregate_type` of the order-service's events: the inbox keeps positions under it.
const AGGREGATE_TYPE: &str = "Order";

const PG_TABLE: &str = "CREATE TABLE IF NOT EXISTS shipments (
    order_id      text             PRIMARY KEY,
    customer_id   text,
    items         jsonb,
    total         double precision,
    status        text             NOT NULL,
    cancel_reason text,
    events        integer          NOT NULL,
    created_at    timestamptz      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at    timestamptz      NOT NULL DEFAULT CURRENT_TIMESTAMP
)";

const SQLITE_TABLE: &str = "CREATE TABLE IF NOT EXISTS shipments (
    order_id      TEXT    PRIMARY KEY,
    customer_id   TEXT,
    items         TEXT,
    total         REAL,
    status        TEXT    NOT NULL,
    cancel_reason TEXT,
    events        INTEGER NOT NULL,
    created_at    TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at    TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
)";

// Shared by both databases (sqlx binds `$n` on SQLite too). `events` counts the events applied
// to a shipment: with the inbox, each exactly once. Created and Cancelled commute: a Created
// that comes after a Cancelled (without a `seq` to tell) fills in the details and leaves the
// status alone.
const CREATED: &str = "INSERT INTO shipments (order_id, customer_id, items, total, status, events)
     VALUES ($1, $2, $3, $4, 'ready', 1)
     ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id,
         items = excluded.items, total = excluded.total, events = shipments.events + 1,
         updated_at = CURRENT_TIMESTAMP";
const CANCELLED: &str = "INSERT INTO shipments (order_id, status, cancel_reason, events)
     VALUES ($1, 'cancelled', $2, 1)
     ON CONFLICT (order_id) DO UPDATE SET status = 'cancelled',
         cancel_reason = excluded.cancel_reason, events = shipments.events + 1,
         updated_at = CURRENT_TIMESTAMP";

/// What handling one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New: its effect is committed.
    Applied,
    /// Processed before (a redelivery): nothing written.
    Duplicate,
    /// Older than an event of its order already applied: recorded, effect skipped.
    Stale {
        /// The `seq` already applied.
        latest: i64,
    },
    /// A type the service does not act on: recorded in the inbox only.
    Ignored,
}

/// The service's database.
#[derive(Debug, Clone)]
pub struct Shipments {
    db: Db,
    consumer: String,
}

#[derive(Debug, Clone)]
enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` in a transaction on either database; `$before_commit` runs just before COMMIT.
macro_rules! in_transaction {
    ($db:expr, $before_commit:expr, |$tx:ident| $body:block) => {
        match $db {
            Db::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let out = $body;
                $before_commit();
                $tx.commit().await?;
                Ok(out)
            }
            // IMMEDIATE: the write lock up front, so concurrent writers queue.
            Db::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out = $body;
                $before_commit();
                $tx.commit().await?;
                Ok(out)
            }
        }
    };
}

impl Shipments {
    /// Opens `url` (`postgres://…` or `sqlite:…`, created when missing); `consumer` is the
    /// inbox's consumer name. Errors never echo the URL (it may hold a password).
    pub async fn connect(url: &str, consumer: &str) -> Result<Shipments, Error> {
        let timeout = Duration::from_secs(10);
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = sqlx::postgres::PgConnectOptions::from_str(url)
                .map_err(|e| Error::Config(format!("invalid --database-url: {e}")))?
                .application_name("shipping-service");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(timeout)
                .connect_with(options)
                .await?;
            Db::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(|e| Error::Config(format!("invalid --database-url: {e}")))?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(timeout);
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .acquire_timeout(timeout)
                .connect_with(options)
                .await?;
            Db::Sqlite(pool)
        } else {
            let scheme = url.split_once(':').map_or("", |(s, _)| s);
            return Err(Error::Config(format!(
                "--database-url must start with postgres://, postgresql:// or sqlite: (got scheme {scheme:?})"
            )));
        };
        Ok(Shipments {
            db,
            consumer: consumer.to_string(),
        })
    }

    /// Creates the `shipments` table and the inbox tables, idempotently.
    pub async fn create_tables(&self) -> Result<(), Error> {
        match &self.db {
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                sqlx::Executor::execute(&mut *conn, PG_TABLE).await?;
                inbox::create_tables(&mut *conn).await?;
            }
            Db::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                sqlx::Executor::execute(&mut *conn, SQLITE_TABLE).await?;
                inbox::create_tables(&mut *conn).await?;
            }
        }
        Ok(())
    }

    /// Handles `event` in one transaction: the inbox row, then (for a new, not stale event)
    /// its effect. `before_commit` runs just before COMMIT (the test-only crash switch).
    pub async fn handle(
        &self,
        event: &OrderEvent,
        before_commit: impl FnOnce(),
    ) -> Result<Outcome, Error> {
        let consumer = self.consumer.as_str();
        in_transaction!(&self.db, before_commit, |tx| {
            if inbox::receive(&mut *tx, consumer, event.id).await? == Receipt::Duplicate {
                Outcome::Duplicate
            } else if matches!(event.kind, EventKind::Other(_)) {
                Outcome::Ignored
            } else {
                let freshness = match event.seq {
                    Some(seq) => {
                        inbox::advance(&mut *tx, consumer, AGGREGATE_TYPE, &event.order_id, seq)
                            .await?
                    }
                    None => Freshness::Newer,
                };
                match freshness {
                    Freshness::Stale { latest } => Outcome::Stale { latest },
                    Freshness::Newer => {
                        let v = &event.value;
                        let query = match event.kind {
                            EventKind::Created => sqlx::query(CREATED)
                                .bind(&event.order_id)
                                .bind(v.get("customer_id").and_then(|c| c.as_str()))
                                .bind(v.get("items").map(Json))
                                .bind(v.get("total").and_then(|t| t.as_f64())),
                            _ => sqlx::query(CANCELLED)
                                .bind(&event.order_id)
                                .bind(v.get("reason").and_then(|r| r.as_str())),
                        };
                        query.execute(&mut *tx).await?;
                        Outcome::Applied
                    }
                }
            }
        })
    }

    /// The PostgreSQL pool, when the database is PostgreSQL (tests read the tables with it).
    pub fn pg_pool(&self) -> Option<&PgPool> {
        match &self.db {
            Db::Postgres(pool) => Some(pool),
            Db::Sqlite(_) => None,
        }
    }
}
