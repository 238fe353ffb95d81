//! Embedded, idempotent schema migrations for PostgreSQL and SQLite.
//!
//! Applied versions are recorded in `outbox_migrations` (not sqlx's `_sqlx_migrations`, so they
//! never collide with your own migrations). Concurrent `migrate` calls are safe: PostgreSQL
//! serializes them with an advisory lock, SQLite with `BEGIN IMMEDIATE`.

use crate::{Error, OutboxConnection};

/// One schema migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Increasing version number.
    pub version: i64,
    /// Short name.
    pub name: &'static str,
    /// The SQL, possibly several statements.
    pub sql: &'static str,
}

/// The schema version this build creates and expects.
pub const SCHEMA_VERSION: i64 = 6;

/// Migrations for PostgreSQL, oldest first.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox",
        sql: include_str!("../migrations/postgres/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        name: "drop_pending_aggregate_idx",
        sql: include_str!("../migrations/postgres/0002_drop_pending_aggregate_idx.sql"),
    },
    Migration {
        version: 3,
        name: "gated_notify",
        sql: include_str!("../migrations/postgres/0003_gated_notify.sql"),
    },
    Migration {
        version: 4,
        name: "adopt_column_types",
        sql: include_str!("../migrations/postgres/0004_adopt_column_types.sql"),
    },
    Migration {
        version: 5,
        name: "error_history",
        sql: include_str!("../migrations/postgres/0005_error_history.sql"),
    },
    Migration {
        version: 6,
        name: "inbox",
        sql: include_str!("../migrations/postgres/0006_inbox.sql"),
    },
];

/// Migrations for SQLite, oldest first.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox",
        sql: include_str!("../migrations/sqlite/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        // Nothing to change on SQLite: the version moves with PostgreSQL's.
        name: "drop_pending_aggregate_idx",
        sql: "SELECT 1",
    },
    Migration {
        // SQLite has no NOTIFY: nothing to change.
        version: 3,
        name: "gated_notify",
        sql: "SELECT 1",
    },
    Migration {
        // Tables SQLite did not create through `outbox migrate` are not adopted: nothing to
        // convert.
        version: 4,
        name: "adopt_column_types",
        sql: "SELECT 1",
    },
    Migration {
        version: 5,
        name: "error_history",
        sql: include_str!("../migrations/sqlite/0005_error_history.sql"),
    },
    Migration {
        version: 6,
        name: "inbox",
        sql: include_str!("../migrations/sqlite/0006_inbox.sql"),
    },
];

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Versions applied by this call, oldest first (empty when already up to date).
    pub applied: Vec<(i64, &'static str)>,
    /// The schema version after this call.
    pub version: i64,
}

/// Creates or upgrades the outbox schema on `conn`. Idempotent.
///
/// An `outbox` table created by other code is adopted when it has the contract's core columns
/// (the reference SQLAlchemy model's table: its rows are numbered in `created_at` order, its
/// `uuid` aggregate ids become text and its zone-less timestamps `timestamptz`, read as UTC);
/// any other is left unchanged and the call fails with [`Error::ForeignTable`], saying what the
/// table is and what to do (see [`crate::adopt`]).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), outbox::Error> {
/// let mut conn = pool.acquire().await?;
/// let report = outbox::migrate(&mut *conn).await?;
/// println!("schema at version {}", report.version);
/// # Ok(()) }
/// ```
pub async fn migrate<C>(conn: &mut C) -> Result<Report, Error>
where
    C: OutboxConnection + ?Sized,
{
    conn.run_migrations().await
}

/// The schema version recorded in the database, or `None` when `outbox migrate` never ran.
pub async fn schema_version<C>(conn: &mut C) -> Result<Option<i64>, Error>
where
    C: OutboxConnection + ?Sized,
{
    conn.schema_version().await
}

/// Checks that the schema exists and this build can work with it. With no migration recorded,
/// the error says whether the table is missing ([`Error::SchemaMissing`]), awaits adoption
/// ([`Error::NotAdopted`]) or cannot be adopted ([`Error::ForeignTable`]).
pub async fn ensure_schema<C>(conn: &mut C) -> Result<i64, Error>
where
    C: OutboxConnection + ?Sized,
{
    match conn.schema_version().await? {
        None => Err(crate::adopt::unmigrated(conn.table_layout().await?)),
        Some(v) if v > SCHEMA_VERSION => Err(Error::SchemaTooNew {
            found: v,
            supported: SCHEMA_VERSION,
        }),
        Some(v) if v < SCHEMA_VERSION => Err(Error::SchemaOutdated {
            found: v,
            required: SCHEMA_VERSION,
        }),
        Some(v) => Ok(v),
    }
}

fn pending(all: &'static [Migration], applied: &[i64]) -> Result<Vec<Migration>, Error> {
    if let Some(&newest) = applied.iter().max() {
        let supported = all.last().map_or(0, |m| m.version);
        if newest > supported {
            return Err(Error::SchemaTooNew {
                found: newest,
                supported,
            });
        }
    }
    Ok(all
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .copied()
        .collect())
}

/// Creates the dead-letter table alone (as migration 1 does), beside an `outbox` table that
/// `outbox migrate` leaves unchanged, such as Debezium's: the CDC source moves the events it
/// gives up on there. Idempotent; records no migration.
#[cfg(feature = "postgres")]
pub async fn create_dead_letter_table(conn: &mut sqlx::PgConnection) -> Result<(), Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // The table as migration 1 made it, with the columns later migrations added to it.
    let sql = format!(
        "SET LOCAL client_min_messages = warning; {};
         ALTER TABLE outbox_dead_letter ADD COLUMN IF NOT EXISTS error_history jsonb",
        crate::adopt::postgres::dead_letter_ddl()
    );
    sqlx::Executor::execute(&mut *tx, sql.as_str()).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(feature = "postgres")]
pub(crate) mod postgres {
    use super::*;
    use crate::adopt::Layout;
    use sqlx::PgConnection;

    /// Arbitrary constant: the advisory lock that serializes concurrent `migrate` runs.
    const LOCK_KEY: i64 = 0x6f75_7462_6f78; // "outbox"

    pub(crate) async fn run(conn: &mut PgConnection) -> Result<Report, Error> {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        sqlx::Executor::execute(
            &mut *tx,
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS outbox_migrations (
                 version    bigint PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM outbox_migrations")
            .fetch_all(&mut *tx)
            .await?;
        let mut report = Report {
            applied: Vec::new(),
            version: applied.iter().copied().max().unwrap_or(0),
        };
        let todo = pending(POSTGRES, &applied)?;
        if todo.iter().any(|m| m.version == 1) {
            // The first migration: an `outbox` table already there was made by other code.
            match crate::adopt::postgres::layout(&mut tx).await? {
                Layout::Foreign(f) => return Err(Error::ForeignTable(f)),
                Layout::Adoptable { has_seq: false } => {
                    sqlx::Executor::execute(&mut *tx, crate::adopt::postgres::ADOPT_SEQ).await?;
                }
                Layout::Adoptable { has_seq: true } | Layout::Missing => {}
            }
        }
        for m in todo {
            sqlx::Executor::execute(&mut *tx, m.sql).await?;
            sqlx::query("INSERT INTO outbox_migrations (version, name) VALUES ($1, $2)")
                .bind(m.version)
                .bind(m.name)
                .execute(&mut *tx)
                .await?;
            report.applied.push((m.version, m.name));
            report.version = report.version.max(m.version);
        }
        tx.commit().await?;
        Ok(report)
    }

    pub(crate) async fn version(conn: &mut PgConnection) -> Result<Option<i64>, Error> {
        let exists: bool = sqlx::query_scalar(
            "SELECT to_regclass('outbox_migrations') IS NOT NULL AND to_regclass('outbox') IS NOT NULL",
        )
        .fetch_one(&mut *conn)
        .await?;
        if !exists {
            return Ok(None);
        }
        Ok(
            sqlx::query_scalar("SELECT max(version) FROM outbox_migrations")
                .fetch_one(&mut *conn)
                .await?,
        )
    }
}

#[cfg(feature = "sqlite")]
pub(crate) mod sqlite {
    use super::*;
    use crate::adopt::Layout;
    use sqlx::SqliteConnection;

    pub(crate) async fn run(conn: &mut SqliteConnection) -> Result<Report, Error> {
        // IMMEDIATE takes the write lock up front: two concurrent migrations cannot interleave.
        sqlx::Executor::execute(&mut *conn, "BEGIN IMMEDIATE").await?;
        match apply(conn).await {
            Ok(report) => {
                sqlx::Executor::execute(&mut *conn, "COMMIT").await?;
                Ok(report)
            }
            Err(e) => {
                let _ = sqlx::Executor::execute(&mut *conn, "ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn apply(conn: &mut SqliteConnection) -> Result<Report, Error> {
        sqlx::Executor::execute(
            &mut *conn,
            "CREATE TABLE IF NOT EXISTS outbox_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             )",
        )
        .await?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM outbox_migrations")
            .fetch_all(&mut *conn)
            .await?;
        let mut report = Report {
            applied: Vec::new(),
            version: applied.iter().copied().max().unwrap_or(0),
        };
        let todo = pending(SQLITE, &applied)?;
        if todo.iter().any(|m| m.version == 1) {
            if let Layout::Foreign(f) = crate::adopt::sqlite::layout(conn).await? {
                return Err(Error::ForeignTable(f));
            }
        }
        for m in todo {
            sqlx::Executor::execute(&mut *conn, m.sql).await?;
            sqlx::query("INSERT INTO outbox_migrations (version, name) VALUES (?1, ?2)")
                .bind(m.version)
                .bind(m.name)
                .execute(&mut *conn)
                .await?;
            report.applied.push((m.version, m.name));
            report.version = report.version.max(m.version);
        }
        Ok(report)
    }

    pub(crate) async fn version(conn: &mut SqliteConnection) -> Result<Option<i64>, Error> {
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('outbox', 'outbox_migrations')",
        )
        .fetch_one(&mut *conn)
        .await?;
        if tables < 2 {
            return Ok(None);
        }
        Ok(
            sqlx::query_scalar("SELECT max(version) FROM outbox_migrations")
                .fetch_one(&mut *conn)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase() {
        for set in [POSTGRES, SQLITE] {
            assert!(set.windows(2).all(|w| w[0].version < w[1].version));
            assert_eq!(set.last().map(|m| m.version), Some(SCHEMA_VERSION));
        }
    }

    #[test]
    fn pending_skips_applied_and_refuses_newer() {
        assert_eq!(pending(POSTGRES, &[]).unwrap().len(), POSTGRES.len());
        let left = pending(POSTGRES, &[1]).unwrap();
        assert_eq!(
            left.iter().map(|m| m.version).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        assert!(pending(POSTGRES, &[1, 2, 3, 4, 5, 6]).unwrap().is_empty());
        assert!(matches!(
            pending(POSTGRES, &[1, 99]),
            Err(Error::SchemaTooNew { found: 99, .. })
        ));
    }
}
