//! PostgreSQL logical replication, over an ordinary SQL connection: the CDC source's control
//! plane (pre-flight checks of `wal_level`, the REPLICATION privilege and the captured tables'
//! columns; the publication and the slot, created when missing; who holds the slot; heartbeats)
//! and what `outbox status` shows of the database's slots (their lag).

use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::error::Error;

/// Retained WAL past which a slot is worth a warning, unless configured otherwise: 1 GiB.
pub const DEFAULT_MAX_RETAINED_WAL: u64 = 1 << 30;

/// Prefix of the heartbeat messages the relay writes into the WAL.
pub const HEARTBEAT_PREFIX: &str = "outbox-relay-heartbeat";

/// A table named `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// Schema, e.g. `public`.
    pub schema: String,
    /// Table, e.g. `outbox`.
    pub name: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`).
    pub fn parse(s: &str) -> Result<TableName, Error> {
        let s = s.trim();
        let (schema, name) = s.split_once('.').unwrap_or(("public", s));
        if schema.is_empty() || name.is_empty() || name.contains('.') {
            return Err(Error::Config(format!(
                "table {s:?}: expected schema.table, e.g. public.outbox"
            )));
        }
        Ok(TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        })
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Checks a replication slot name: PostgreSQL allows lowercase letters, digits and `_`.
pub fn validate_slot_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::Config(format!(
            "replication slot name {name:?} is invalid: use 1 to 63 lowercase letters, digits \
             or _"
        )));
    }
    Ok(())
}

/// Checks a publication name (letters, digits and `_`, so it needs no quoting anywhere).
pub fn validate_publication_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(Error::Config(format!(
            "publication name {name:?} is invalid: use 1 to 63 letters, digits or _"
        )));
    }
    Ok(())
}

/// The error for a `wal_level` other than `logical`, if it is one.
pub fn wal_level_error(level: &str) -> Option<Error> {
    (level != "logical").then(|| {
        Error::Config(format!(
            "PostgreSQL runs with wal_level = {level}; the CDC source needs wal_level = logical \
             (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL), or use \
             --source poll"
        ))
    })
}

/// Fails unless `wal_level = logical`.
pub async fn check_wal_level(pool: &PgPool) -> Result<(), Error> {
    let level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(pool)
        .await?;
    match wal_level_error(&level) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Fails unless the user may stream changes: the REPLICATION attribute, superuser, or (on
/// Amazon RDS) membership in `rds_replication`.
pub async fn check_replication_privilege(pool: &PgPool) -> Result<(), Error> {
    let row = sqlx::query(
        "SELECT current_user::text AS who,
                (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)
                OR EXISTS (SELECT 1 FROM pg_roles r
                           WHERE r.rolname IN ('rds_replication', 'rds_superuser')
                             AND pg_has_role(current_user, r.oid, 'member')) AS ok",
    )
    .fetch_one(pool)
    .await?;
    let who: String = row.try_get("who")?;
    let ok: Option<bool> = row.try_get("ok")?;
    if ok != Some(true) {
        return Err(Error::Config(format!(
            "user {who} lacks the REPLICATION privilege the CDC source needs \
             (ALTER ROLE {} REPLICATION), or use --source poll",
            quote_ident(&who)
        )));
    }
    Ok(())
}

/// A table's columns, `(name, type OID)` in column order; an error when the table is missing.
pub async fn table_columns(pool: &PgPool, table: &TableName) -> Result<Vec<(String, u32)>, Error> {
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, a.atttypid::int8 AS oid
         FROM pg_attribute a
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum",
    )
    .bind(table.quoted())
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Err(Error::Config(format!(
            "table {table} does not exist (run `outbox migrate` for the outbox table, or name \
             the captured table in [cdc] table / table.include.list)"
        )));
    }
    rows.iter()
        .map(|r| {
            let oid: i64 = r.try_get("oid")?;
            Ok((r.try_get("name")?, oid as u32))
        })
        .collect()
}

/// True when the dead-letter table exists; an error when it lacks a column a later migration
/// added (`error_history`, schema version 5) and `outbox migrate` must run.
pub async fn dead_letter_table_exists(pool: &PgPool) -> Result<bool, Error> {
    let (exists, current): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('outbox_dead_letter') IS NOT NULL,
                EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = to_regclass('outbox_dead_letter')
                          AND attname = 'error_history' AND NOT attisdropped)",
    )
    .fetch_one(pool)
    .await?;
    if exists && !current {
        return Err(Error::Config(
            "table outbox_dead_letter has no error_history column (added by schema version 5): \
             run `outbox migrate` with this version"
                .into(),
        ));
    }
    Ok(exists)
}

/// Makes sure publication `name` exists and publishes inserts of `tables`. A missing one is
/// created (`FOR TABLE …` publishing inserts and updates: deletes are ignored anyway, updates
/// are warned about) when `create` is set.
pub async fn ensure_publication(
    pool: &PgPool,
    name: &str,
    tables: &[TableName],
    create: bool,
) -> Result<(), Error> {
    let exists: Option<bool> =
        sqlx::query_scalar("SELECT pubinsert FROM pg_publication WHERE pubname = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    let publishes_inserts = match exists {
        Some(inserts) => inserts,
        None if !create => {
            return Err(Error::Config(format!(
                "publication {name} does not exist and creating it is disabled: \
                 CREATE PUBLICATION {name} FOR TABLE {}",
                tables
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        None => {
            let list = tables
                .iter()
                .map(TableName::quoted)
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish = 'insert, update')",
                quote_ident(name)
            );
            match sqlx::query(&sql).execute(pool).await {
                Ok(_) => tracing::info!(publication = name, tables = %list, "created publication"),
                // Another relay created it at the same moment.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => {}
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                    return Err(Error::Config(format!(
                        "cannot create publication {name}: {} (create it as the table's owner: \
                         CREATE PUBLICATION {name} FOR TABLE {list})",
                        e.message()
                    )))
                }
                Err(e) => return Err(e.into()),
            }
            true
        }
    };
    if !publishes_inserts {
        return Err(Error::Config(format!(
            "publication {name} does not publish inserts (ALTER PUBLICATION {name} SET \
             (publish = 'insert, update'))"
        )));
    }
    for t in tables {
        let published: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables
                            WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
        )
        .bind(name)
        .bind(&t.schema)
        .bind(&t.name)
        .fetch_one(pool)
        .await?;
        if !published {
            return Err(Error::Config(format!(
                "publication {name} does not include table {t} \
                 (ALTER PUBLICATION {name} ADD TABLE {t})"
            )));
        }
    }
    Ok(())
}

/// Makes sure logical replication slot `name` exists for `pgoutput` in this database, creating
/// it when missing and `create` is set. Creating a slot waits for transactions open at that
/// moment to finish.
pub async fn ensure_slot(pool: &PgPool, name: &str, create: bool) -> Result<(), Error> {
    for _ in 0..2 {
        let row = sqlx::query(
            "SELECT slot_type::text AS kind, plugin::text AS plugin, database::text AS db,
                    current_database()::text AS here
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await?;
        match row {
            Some(row) => {
                let kind: String = row.try_get("kind")?;
                let plugin: Option<String> = row.try_get("plugin")?;
                let db: Option<String> = row.try_get("db")?;
                let here: String = row.try_get("here")?;
                if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
                    return Err(Error::Config(format!(
                        "replication slot {name} exists but is not a pgoutput logical slot \
                         ({kind}, plugin {}); choose another --slot",
                        plugin.as_deref().unwrap_or("none")
                    )));
                }
                if db.as_deref() != Some(here.as_str()) {
                    return Err(Error::Config(format!(
                        "replication slot {name} belongs to database {}, not {here}; choose \
                         another --slot",
                        db.as_deref().unwrap_or("?")
                    )));
                }
                return Ok(());
            }
            None if !create => {
                return Err(Error::Config(format!(
                    "replication slot {name} does not exist and creating it is disabled"
                )))
            }
            None => {
                tracing::info!(
                    slot = name,
                    "creating logical replication slot (waits for open transactions to finish)"
                );
                match sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
                    .bind(name)
                    .execute(pool)
                    .await
                {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => {}
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("53400") => {
                        return Err(Error::Config(format!(
                            "cannot create replication slot {name}: {} (raise \
                             max_replication_slots or drop unused slots)",
                            e.message()
                        )))
                    }
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55000") => {
                        return Err(Error::Config(format!(
                            "cannot create replication slot {name}: {}",
                            e.message()
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// Who holds a slot and how far it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    /// Backend PID of the walsender streaming from it, when one is.
    pub active_pid: Option<i32>,
    /// `confirmed_flush_lsn` as a number.
    pub confirmed_flush: u64,
    /// Bytes of WAL written since `confirmed_flush_lsn`.
    pub lag_bytes: i64,
    /// Bytes of WAL the server keeps for the slot (since its `restart_lsn`).
    pub retained_wal_bytes: i64,
}

/// The state of slot `name`, `None` when it does not exist.
pub async fn slot_state(pool: &PgPool, name: &str) -> Result<Option<SlotState>, Error> {
    let row = sqlx::query(
        "SELECT active_pid,
                COALESCE(pg_wal_lsn_diff(confirmed_flush_lsn, '0/0'), 0)::int8 AS confirmed,
                COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8 AS lag,
                COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8 AS retained
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let confirmed: i64 = r.try_get("confirmed")?;
        Ok(SlotState {
            active_pid: r.try_get("active_pid")?,
            confirmed_flush: confirmed.max(0) as u64,
            lag_bytes: r.try_get("lag")?,
            retained_wal_bytes: r.try_get("retained")?,
        })
    })
    .transpose()
}

/// One logical replication slot of this database, as `outbox status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationSlot {
    /// Slot name.
    pub slot: String,
    /// Output plugin (`pgoutput` for the relay's slots).
    pub plugin: String,
    /// Whether a reader streams from it now.
    pub active: bool,
    /// `confirmed_flush_lsn`, as PostgreSQL prints it.
    pub confirmed_flush_lsn: Option<String>,
    /// WAL bytes written since `confirmed_flush_lsn`: the replication lag.
    pub lag_bytes: Option<i64>,
    /// WAL bytes the server keeps for this slot (since its `restart_lsn`): what a stalled or
    /// abandoned slot costs in disk.
    pub retained_wal_bytes: Option<i64>,
    /// PostgreSQL's `wal_status`: `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
}

/// Logical replication slots of the current database, with their lag.
pub async fn replication_slots(pool: &PgPool) -> Result<Vec<ReplicationSlot>, Error> {
    let rows = sqlx::query(
        "SELECT slot_name::text AS slot, plugin::text AS plugin, active,
                confirmed_flush_lsn::text AS confirmed,
                pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 AS lag,
                pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 AS retained,
                wal_status::text AS wal_status
         FROM pg_replication_slots
         WHERE slot_type = 'logical' AND database = current_database()
         ORDER BY slot_name",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ReplicationSlot {
                slot: r.try_get("slot")?,
                plugin: r
                    .try_get::<Option<String>, _>("plugin")?
                    .unwrap_or_default(),
                active: r.try_get("active")?,
                confirmed_flush_lsn: r.try_get("confirmed")?,
                lag_bytes: r.try_get("lag")?,
                retained_wal_bytes: r.try_get("retained")?,
                wal_status: r.try_get("wal_status")?,
            })
        })
        .collect()
}

/// Who reads the outbox table through logical replication (CDC): the publications that include
/// it and the logical slots of its database that can stream it. CDC never marks rows published,
/// so while a CDC reader exists the table's unpublished rows are not a backlog, and a polling
/// relay would deliver them all again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CdcReaders {
    /// The table, `schema.table`.
    pub table: String,
    /// Publications that include it.
    pub publications: Vec<String>,
    /// Logical slots of this database that stream it: `pgoutput` slots while a publication
    /// includes the table, and slots of any other plugin (they decode every table).
    pub slots: Vec<String>,
}

impl CdcReaders {
    /// From the table's publications and the database's logical slots; `None` when no slot
    /// streams the table.
    pub fn find(
        table: String,
        publications: Vec<String>,
        slots: &[ReplicationSlot],
    ) -> Option<CdcReaders> {
        let slots: Vec<String> = slots
            .iter()
            .filter(|s| s.plugin != "pgoutput" || !publications.is_empty())
            .map(|s| s.slot.clone())
            .collect();
        (!slots.is_empty()).then_some(CdcReaders {
            table,
            publications,
            slots,
        })
    }

    /// Who reads: `replication slot s1, publication p1`.
    pub fn readers(&self) -> String {
        let mut text = format!("replication slot {}", self.slots.join(", "));
        if !self.publications.is_empty() {
            text.push_str(&format!(", publication {}", self.publications.join(", ")));
        }
        text
    }

    /// Why a polling relay refuses to start, with what to do instead.
    pub fn refusal(&self) -> String {
        let drops = self
            .slots
            .iter()
            .map(|s| format!("SELECT pg_drop_replication_slot('{s}')"))
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "table {} is read by CDC ({}): a CDC reader never marks rows published, so a \
             polling relay would deliver again every event it already delivered. Run the CDC \
             relay instead (--source cdc); if the slot is abandoned, drop it ({drops}); or \
             pass --allow-with-cdc to poll anyway",
            self.table,
            self.readers()
        )
    }
}

/// The outbox table's name (`schema.table`, as `outbox` resolves) and the publications that
/// include it; `None` when there is no outbox table.
pub async fn outbox_publications(pool: &PgPool) -> Result<Option<(String, Vec<String>)>, Error> {
    let row = sqlx::query(
        "SELECT n.nspname::text AS schema, c.relname::text AS name,
                ARRAY(SELECT p.pubname::text FROM pg_publication_tables p
                      WHERE p.schemaname = n.nspname AND p.tablename = c.relname
                      ORDER BY p.pubname) AS publications
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = to_regclass('outbox')",
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let schema: String = r.try_get("schema")?;
        let name: String = r.try_get("name")?;
        Ok((format!("{schema}.{name}"), r.try_get("publications")?))
    })
    .transpose()
}

/// The server's `max_slot_wal_keep_size` in bytes; `None` when unlimited (-1, the default):
/// then an abandoned slot keeps WAL until the disk is full.
pub async fn max_slot_wal_keep_size(pool: &PgPool) -> Result<Option<i64>, Error> {
    let mb: i64 = sqlx::query_scalar(
        "SELECT setting::int8 FROM pg_settings WHERE name = 'max_slot_wal_keep_size'",
    )
    .fetch_one(pool)
    .await?;
    Ok((mb >= 0).then(|| mb.saturating_mul(1024 * 1024)))
}

/// Writes a heartbeat into the WAL (a transactional logical decoding message), so an idle or
/// filtered database still moves the slot forward.
pub async fn heartbeat(pool: &PgPool) -> Result<(), Error> {
    sqlx::query("SELECT pg_logical_emit_message(true, $1, '')")
        .bind(HEARTBEAT_PREFIX)
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops slot `name` (waiting up to `wait` for its reader to let go). For benchmarks, tests and
/// decommissioning; the relay never drops its slot by itself.
pub async fn drop_slot(pool: &PgPool, name: &str, wait: std::time::Duration) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1",
        )
        .bind(name)
        .execute(pool)
        .await
        {
            Ok(_) => return Ok(()),
            // Still active: its walsender is exiting.
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55006")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Formats an LSN as PostgreSQL prints it (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_level_and_names() {
        assert!(wal_level_error("logical").is_none());
        let e = wal_level_error("replica").unwrap();
        assert!(e.is_config());
        assert!(e.to_string().contains("wal_level = logical"), "{e}");
        assert!(validate_slot_name("outbox_relay_1").is_ok());
        assert!(validate_slot_name("Outbox").is_err());
        assert!(validate_slot_name("a-b").is_err());
        assert!(validate_slot_name("").is_err());
        assert!(validate_publication_name("dbz_publication").is_ok());
        assert!(validate_publication_name("x'y").is_err());
    }

    #[test]
    fn table_names() {
        let t = TableName::parse("outbox").unwrap();
        assert_eq!(t.to_string(), "public.outbox");
        assert_eq!(
            TableName::parse("inv.\"odd\"").unwrap().quoted(),
            "\"inv\".\"\"\"odd\"\"\""
        );
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse(".b").is_err());
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
    }
}
