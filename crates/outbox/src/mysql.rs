//! MySQL 8.0.13+ and MariaDB 10.6+: `enqueue`, migrations under a named lock, and what an
//! `outbox` table found in the database is.

use sqlx::MySqlConnection;

use crate::adopt::{ForeignTable, Layout};
use crate::enqueue::BoxFuture;
use crate::migrate::{pending, Report, MYSQL};
use crate::{Error, Event, OutboxConnection};

/// The contract's columns: a table `outbox migrate` did not create is used only when it has
/// them all (MySQL cannot number existing rows in `created_at` order as PostgreSQL's adoption
/// does, so nothing is adopted: a half-applied first migration is the case this covers).
const COLUMNS: [&str; 12] = [
    "seq",
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "headers",
    "created_at",
    "published_at",
    "retry_count",
    "next_attempt_at",
    "last_error",
];

/// Longest wait for another `migrate` holding the named lock, in seconds.
const LOCK_WAIT_SECS: i64 = 60;

/// The named lock (server-wide, so it names the database; at most 64 characters).
const LOCK_NAME: &str = "LEFT(CONCAT('outbox_migrate:', COALESCE(DATABASE(), '')), 64)";

/// Rows per multi-row `INSERT` (6 placeholders each, well under MySQL's 65,535).
const INSERT_CHUNK: usize = 1000;

impl OutboxConnection for MySqlConnection {
    fn run_migrations(&mut self) -> BoxFuture<'_, Result<Report, Error>> {
        Box::pin(run(self))
    }
    fn schema_version(&mut self) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        Box::pin(version(self))
    }
    fn table_layout(&mut self) -> BoxFuture<'_, Result<Layout, Error>> {
        Box::pin(layout(self))
    }
    fn insert_events<'a>(&'a mut self, events: &'a [Event]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // One multi-row INSERT per chunk: InnoDB numbers its rows in the order given.
            for chunk in events.chunks(INSERT_CHUNK) {
                let mut sql = String::from(
                    "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) VALUES ",
                );
                for i in 0..chunk.len() {
                    sql.push_str(if i == 0 { "" } else { ", " });
                    sql.push_str("(?, ?, ?, ?, ?, ?)");
                }
                let mut query = sqlx::query(&sql).persistent(chunk.len() == 1);
                for e in chunk {
                    query = query
                        .bind(e.id().hyphenated().to_string())
                        .bind(e.aggregate_type())
                        .bind(e.aggregate_id())
                        .bind(e.event_type())
                        .bind(serde_json::to_string(e.payload())?)
                        .bind(e.headers_json());
                }
                query.execute(&mut *self).await.map_err(Error::from_query)?;
            }
            Ok(())
        })
    }
}

/// Applies the pending migrations while holding the database's named lock. MySQL commits DDL
/// statement by statement, so there is no enclosing transaction: each migration is idempotent
/// and recorded once applied, and the lock keeps two `migrate` runs from interleaving.
pub(crate) async fn run(conn: &mut MySqlConnection) -> Result<Report, Error> {
    let got: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({LOCK_NAME}, ?)"))
        .bind(LOCK_WAIT_SECS)
        .fetch_one(&mut *conn)
        .await?;
    if got != Some(1) {
        return Err(Error::MigrationLocked {
            waited_secs: LOCK_WAIT_SECS as u64,
        });
    }
    let result = apply(conn).await;
    let released = sqlx::query(&format!("DO RELEASE_LOCK({LOCK_NAME})"))
        .execute(&mut *conn)
        .await;
    let report = result?;
    released?;
    Ok(report)
}

async fn apply(conn: &mut MySqlConnection) -> Result<Report, Error> {
    sqlx::Executor::execute(
        &mut *conn,
        "CREATE TABLE IF NOT EXISTS outbox_migrations (
             version    BIGINT       NOT NULL PRIMARY KEY,
             name       VARCHAR(255) NOT NULL,
             applied_at DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6))
         ) ENGINE = InnoDB",
    )
    .await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM outbox_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let mut report = Report {
        applied: Vec::new(),
        version: applied.iter().copied().max().unwrap_or(0),
    };
    let todo = pending(MYSQL, &applied)?;
    if todo.iter().any(|m| m.version == 1) {
        if let Layout::Foreign(f) = layout(conn).await? {
            return Err(Error::ForeignTable(f));
        }
    }
    for m in todo {
        sqlx::Executor::execute(&mut *conn, m.sql).await?;
        sqlx::query("INSERT INTO outbox_migrations (version, name) VALUES (?, ?)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *conn)
            .await?;
        report.applied.push((m.version, m.name));
        report.version = report.version.max(m.version);
    }
    Ok(report)
}

pub(crate) async fn version(conn: &mut MySqlConnection) -> Result<Option<i64>, Error> {
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables
         WHERE table_schema = DATABASE() AND table_name IN ('outbox', 'outbox_migrations')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if tables < 2 {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar("SELECT MAX(version) FROM outbox_migrations")
            .fetch_one(&mut *conn)
            .await?,
    )
}

pub(crate) async fn layout(conn: &mut MySqlConnection) -> Result<Layout, Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(column_name AS CHAR(64)) FROM information_schema.columns
         WHERE table_schema = DATABASE() AND table_name = 'outbox'
         ORDER BY ordinal_position",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(classify(&names))
}

/// What the `outbox` table is: missing, one with every contract column (usable as is), or one
/// `outbox migrate` leaves alone.
fn classify(names: &[String]) -> Layout {
    if names.is_empty() {
        return Layout::Missing;
    }
    let typed: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.to_ascii_lowercase(), String::new()))
        .collect();
    if let Layout::Foreign(ForeignTable::Debezium) = crate::adopt::classify(&typed, false) {
        return Layout::Foreign(ForeignTable::Debezium);
    }
    let missing: Vec<String> = COLUMNS
        .iter()
        .filter(|c| !typed.iter().any(|(n, _)| n == *c))
        .map(|c| c.to_string())
        .collect();
    if missing.is_empty() {
        Layout::Adoptable { has_seq: true }
    } else {
        Layout::Foreign(ForeignTable::MissingColumns {
            missing,
            present: names.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_a_table_with_every_contract_column_is_used() {
        assert_eq!(classify(&[]), Layout::Missing);
        assert_eq!(
            classify(&names(&COLUMNS)),
            Layout::Adoptable { has_seq: true }
        );
        let reference = names(&[
            "id",
            "aggregate_type",
            "aggregate_id",
            "event_type",
            "payload",
            "created_at",
        ]);
        match classify(&reference) {
            Layout::Foreign(ForeignTable::MissingColumns { missing, .. }) => {
                assert!(missing.contains(&"seq".to_string()), "{missing:?}")
            }
            other => panic!("{other:?}"),
        }
        let debezium = names(&["id", "aggregatetype", "aggregateid", "type", "payload"]);
        assert_eq!(classify(&debezium), Layout::Foreign(ForeignTable::Debezium));
    }
}
