//! Outbox tables that `outbox migrate` did not create: what they are, whether `migrate` can
//! adopt them, and, when it cannot, what to tell the user.
//!
//! A table with the contract's core columns (`id uuid`, `aggregate_type`, `aggregate_id`,
//! `event_type`, `payload`), as the reference SQLAlchemy model creates it, is adopted: its rows
//! are numbered in `created_at` order (`adopt_seq.sql`), then the migrations add the missing
//! columns and convert the column types the relay cannot compare (migration 4). Any other table
//! named `outbox` (Debezium's outbox layout, a table of something else) is left alone, with an
//! error that says what it is and what to do.

use std::fmt;

use crate::{Error, OutboxConnection};

/// The columns every adoptable table must already have.
const CORE: [&str; 5] = [
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
];

/// Debezium's outbox columns (its `EventRouter` defaults) that replace the contract's.
const DEBEZIUM: [&str; 3] = ["aggregatetype", "aggregateid", "type"];

/// The `outbox` table as found in a database that `outbox migrate` has not adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// There is no table named `outbox`.
    Missing,
    /// A table `outbox migrate` adopts: the contract's core columns with usable types.
    Adoptable {
        /// It already has a `seq` column (then its numbering is kept).
        has_seq: bool,
    },
    /// A table `outbox migrate` leaves alone.
    Foreign(ForeignTable),
}

/// Why an existing `outbox` table cannot be adopted; its `Display` says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForeignTable {
    /// Debezium's outbox layout: `aggregatetype`, `aggregateid`, `type` instead of the
    /// contract's `aggregate_type`, `aggregate_id`, `event_type`.
    Debezium,
    /// Columns the relay needs are missing.
    MissingColumns {
        /// The missing ones.
        missing: Vec<String>,
        /// The table's columns.
        present: Vec<String>,
    },
    /// A column has a type the relay cannot use.
    ColumnType {
        /// The column.
        column: String,
        /// Its type.
        found: String,
        /// What the relay needs.
        needed: &'static str,
    },
    /// SQLite: the table has no `seq` rowid, and SQLite cannot add one to an existing table.
    SqliteWithoutSeq,
}

impl fmt::Display for ForeignTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForeignTable::Debezium => write!(
                f,
                "table outbox exists with Debezium's outbox column layout (aggregatetype, \
                 aggregateid, type, payload), not this relay's (aggregate_type, aggregate_id, \
                 event_type, payload, seq, …): `outbox migrate` leaves it unchanged and the \
                 polling source cannot read it. Keep it and stream it with `outbox relay \
                 --source cdc --debezium-connector FILE` (Debezium's EventRouter routing; \
                 `outbox migrate` creates the dead-letter table it needs beside it), or move to \
                 the relay's table: rename this one (ALTER TABLE outbox RENAME TO \
                 outbox_debezium), run `outbox migrate`, and have writers fill aggregate_type, \
                 aggregate_id, event_type and payload"
            ),
            ForeignTable::MissingColumns { missing, present } => write!(
                f,
                "table outbox exists but is not an outbox table `outbox migrate` can adopt: it \
                 lacks column(s) {} (it has {}). Rename it, or add those columns, then run \
                 `outbox migrate` (README, \"The table\")",
                missing.join(", "),
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            ),
            ForeignTable::ColumnType {
                column,
                found,
                needed,
            } => write!(
                f,
                "table outbox exists but `outbox migrate` cannot adopt it: column {column} is \
                 {found}, the relay needs {needed}. Rename the table, run `outbox migrate`, \
                 and copy its rows into the new one"
            ),
            ForeignTable::SqliteWithoutSeq => write!(
                f,
                "table outbox exists in this SQLite database but was not created by `outbox \
                 migrate`, and SQLite cannot add the seq rowid the relay orders events by to an \
                 existing table: rename it (ALTER TABLE outbox RENAME TO outbox_old), run \
                 `outbox migrate`, and copy the rows (INSERT INTO outbox (id, aggregate_type, \
                 aggregate_id, event_type, payload, created_at) SELECT … FROM outbox_old ORDER \
                 BY created_at)"
            ),
        }
    }
}

/// What the `outbox` table is, judged from its columns `(name, type)`; `postgres` tells which
/// database's type names these are.
pub(crate) fn classify(columns: &[(String, String)], postgres: bool) -> Layout {
    if columns.is_empty() {
        return Layout::Missing;
    }
    let has = |name: &str| columns.iter().any(|(n, _)| n == name);
    let type_of = |name: &str| {
        columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.to_ascii_lowercase())
            .unwrap_or_default()
    };
    let missing: Vec<String> = CORE
        .iter()
        .filter(|c| !has(c))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        if DEBEZIUM.iter().all(|c| has(c)) {
            return Layout::Foreign(ForeignTable::Debezium);
        }
        return Layout::Foreign(ForeignTable::MissingColumns {
            missing,
            present: columns.iter().map(|(n, _)| n.clone()).collect(),
        });
    }
    if !postgres {
        return if has("seq") {
            Layout::Adoptable { has_seq: true }
        } else {
            Layout::Foreign(ForeignTable::SqliteWithoutSeq)
        };
    }
    let id = type_of("id");
    if id != "uuid" {
        return Layout::Foreign(ForeignTable::ColumnType {
            column: "id".into(),
            found: id,
            needed: "uuid (the event id consumers dedupe by)",
        });
    }
    let payload = type_of("payload");
    if !["jsonb", "json", "text"].contains(&payload.as_str())
        && !payload.starts_with("character varying")
    {
        return Layout::Foreign(ForeignTable::ColumnType {
            column: "payload".into(),
            found: payload,
            needed: "jsonb (or json or text holding JSON, which `outbox migrate` converts)",
        });
    }
    Layout::Adoptable {
        has_seq: has("seq"),
    }
}

/// The `outbox` table as found in the database behind `conn`, before `outbox migrate` adopted
/// it. Only meaningful while [`crate::migrate::schema_version`] is `None`.
pub async fn layout<C>(conn: &mut C) -> Result<Layout, Error>
where
    C: OutboxConnection + ?Sized,
{
    conn.table_layout().await
}

/// Why the schema is not usable when no migration is recorded: the table is missing, was
/// created by other code and awaits `outbox migrate`, or cannot be adopted.
pub(crate) fn unmigrated(layout: Layout) -> Error {
    match layout {
        Layout::Missing => Error::SchemaMissing,
        Layout::Adoptable { .. } => Error::NotAdopted,
        Layout::Foreign(f) => Error::ForeignTable(f),
    }
}

#[cfg(feature = "postgres")]
pub(crate) mod postgres {
    use super::*;
    use sqlx::PgConnection;

    /// Numbers an adopted table's rows in `created_at` order (see the file's comment).
    pub(crate) const ADOPT_SEQ: &str = include_str!("../migrations/postgres/adopt_seq.sql");

    pub(crate) async fn layout(conn: &mut PgConnection) -> Result<Layout, Error> {
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass('outbox') AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(classify(&columns, true))
    }

    /// The dead-letter table alone (from migration 1): what the CDC source needs beside a
    /// table `outbox migrate` leaves alone, such as Debezium's.
    pub(crate) fn dead_letter_ddl() -> &'static str {
        let sql = crate::migrate::POSTGRES[0].sql;
        let start = sql
            .find("CREATE TABLE IF NOT EXISTS outbox_dead_letter")
            .unwrap_or(sql.len());
        let end = sql[start..].find("\n-- ").map_or(sql.len(), |i| start + i);
        &sql[start..end]
    }
}

#[cfg(feature = "sqlite")]
pub(crate) mod sqlite {
    use super::*;
    use sqlx::SqliteConnection;

    pub(crate) async fn layout(conn: &mut SqliteConnection) -> Result<Layout, Error> {
        let columns: Vec<(String, String)> =
            sqlx::query_as("SELECT name, type FROM pragma_table_info('outbox') ORDER BY cid")
                .fetch_all(&mut *conn)
                .await?;
        Ok(classify(&columns, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn the_reference_model_is_adoptable_and_debezium_is_not() {
        let reference = cols(&[
            ("id", "uuid"),
            ("aggregate_type", "character varying(100)"),
            ("aggregate_id", "uuid"),
            ("event_type", "character varying(100)"),
            ("payload", "jsonb"),
            ("created_at", "timestamp without time zone"),
        ]);
        assert_eq!(
            classify(&reference, true),
            Layout::Adoptable { has_seq: false }
        );
        let debezium = cols(&[
            ("id", "uuid"),
            ("aggregatetype", "character varying(255)"),
            ("aggregateid", "character varying(255)"),
            ("type", "character varying(255)"),
            ("payload", "jsonb"),
        ]);
        let layout = classify(&debezium, true);
        assert_eq!(layout, Layout::Foreign(ForeignTable::Debezium));
        let Layout::Foreign(f) = layout else {
            unreachable!()
        };
        let text = f.to_string();
        assert!(
            text.contains("Debezium's outbox column layout") && text.contains("--source cdc"),
            "{text}"
        );
        assert_eq!(classify(&[], true), Layout::Missing);
    }

    #[test]
    fn unusable_tables_say_why() {
        let int_id = cols(&[
            ("id", "bigint"),
            ("aggregate_type", "text"),
            ("aggregate_id", "text"),
            ("event_type", "text"),
            ("payload", "jsonb"),
        ]);
        let Layout::Foreign(f) = classify(&int_id, true) else {
            panic!("an integer id is not adoptable")
        };
        assert!(f.to_string().contains("column id is bigint"), "{f}");
        let other = cols(&[("id", "integer"), ("name", "text")]);
        let Layout::Foreign(f) = classify(&other, true) else {
            panic!("a table of something else is not adoptable")
        };
        assert!(
            f.to_string()
                .contains("lacks column(s) aggregate_type, aggregate_id, event_type, payload"),
            "{f}"
        );
        let mut sqlite = cols(&[
            ("id", "TEXT"),
            ("aggregate_type", "TEXT"),
            ("aggregate_id", "TEXT"),
            ("event_type", "TEXT"),
            ("payload", "TEXT"),
        ]);
        assert_eq!(
            classify(&sqlite, false),
            Layout::Foreign(ForeignTable::SqliteWithoutSeq)
        );
        sqlite.push(("seq".into(), "INTEGER".into()));
        assert_eq!(
            classify(&sqlite, false),
            Layout::Adoptable { has_seq: true }
        );
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn the_dead_letter_ddl_is_migration_1s() {
        let ddl = postgres::dead_letter_ddl();
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS outbox_dead_letter"));
        assert!(ddl.contains("outbox_dead_letter_original_idx"), "{ddl}");
        assert!(!ddl.contains("outbox_notify"), "{ddl}");
    }
}
