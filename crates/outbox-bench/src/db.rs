//! The benchmark's private PostgreSQL database: created fresh for each measurement, filled
//! with a backlog or a published history, dropped at the end (with its replication slot).

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_relay::store::{ConnectOptions, Store};

use crate::args::BenchArgs;
use crate::error::BenchError;
use crate::report::progress;

/// The benchmark's private database on the server.
pub struct BenchDb {
    admin: sqlx::PgPool,
    name: String,
    /// The URL of the benchmark's database.
    pub url: String,
}

impl BenchDb {
    /// Connects to the server at `admin_url` (the private database is created later).
    pub async fn connect(admin_url: &str) -> Result<BenchDb, BenchError> {
        if !admin_url.starts_with("postgres") {
            return Err(BenchError::usage("--pg must be a postgres:// URL"));
        }
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(admin_url)
            .await
            .map_err(|e| {
                BenchError::usage(format!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    outbox_relay::redact_url(admin_url)
                ))
            })?;
        let name = format!("outbox_bench_{}", std::process::id());
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url, String::new()),
        };
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = format!("{base}/{name}{query}");
        Ok(BenchDb { admin, name, url })
    }

    /// The slot name for this run (slots are cluster-wide).
    pub fn slot(&self) -> String {
        format!("{}_cdc", self.name)
    }

    /// Drops and re-creates the database; returns a migrated store on it.
    pub async fn fresh(&self, max_connections: u32) -> Result<Store, BenchError> {
        self.drop().await;
        sqlx::query(&format!("CREATE DATABASE {}", self.name))
            .execute(&self.admin)
            .await?;
        let store = Store::connect(
            &self.url,
            &ConnectOptions {
                max_connections,
                asynchronous_commit: true,
                ..ConnectOptions::default()
            },
        )
        .await?;
        store.migrate().await?;
        Ok(store)
    }

    /// A connection pool as an application would open it (default session settings).
    pub async fn app_pool(&self, max_connections: u32) -> Result<sqlx::PgPool, BenchError> {
        app_pool(&self.url, max_connections).await
    }

    /// Drops the database and its replication slot (errors ignored: nothing may be left).
    /// A terminated walsender releases its slot a moment later, and a database with a slot
    /// cannot be dropped, so the slot is dropped again until it is gone (up to 10 s): a slot left
    /// behind would keep WAL on the server for good.
    pub async fn drop(&self) {
        let name = &self.name;
        let terminate = format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE database = '{name}' AND active_pid IS NOT NULL"
        );
        let drop_slots = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = '{name}' AND NOT active"
        );
        let left = format!("SELECT count(*) FROM pg_replication_slots WHERE database = '{name}'");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let _ = sqlx::query(&terminate).execute(&self.admin).await;
            let _ = sqlx::query(&drop_slots).execute(&self.admin).await;
            let remaining: i64 = sqlx::query_scalar(&left)
                .fetch_one(&self.admin)
                .await
                .unwrap_or(0);
            if remaining == 0 || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let drop_db = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::query(&drop_db).execute(&self.admin).await;
    }

    /// Creates the CDC publication and slot, before the events it should see are written.
    pub async fn create_slot(&self, store: &Store) -> Result<(), BenchError> {
        use outbox_relay::store::replication::{ensure_publication, ensure_slot, TableName};
        let pool = pg(store)?;
        let table = TableName::parse("public.outbox")?;
        ensure_publication(pool, &self.slot(), &[table], true).await?;
        ensure_slot(pool, &self.slot(), true).await?;
        Ok(())
    }

    /// The server's settings that bear on the figures.
    pub async fn pg_settings(&self) -> Result<BTreeMap<String, String>, BenchError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, setting FROM pg_settings
             WHERE name IN ('server_version', 'shared_buffers', 'synchronous_commit', 'fsync',
                            'wal_level', 'max_wal_size', 'checkpoint_timeout')
             ORDER BY name",
        )
        .fetch_all(&self.admin)
        .await?;
        Ok(rows.into_iter().collect())
    }
}

/// The PostgreSQL pool behind a store.
pub fn pg(store: &Store) -> Result<&sqlx::PgPool, BenchError> {
    store
        .pg_pool()
        .ok_or_else(|| BenchError::runtime("the benchmark needs PostgreSQL"))
}

/// Inserts `events` events (`seq` order = `n` order) over `aggregates` aggregates.
pub async fn load_backlog(
    store: &Store,
    args: &BenchArgs,
    events: usize,
    label: &str,
) -> Result<(), BenchError> {
    let pool = pg(store)?;
    let note = args.payload_bytes.saturating_sub(110) as i32;
    in_chunks(events, &format!("[{label}] loading"), |first, n| {
        sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'BenchOrder', 'order-' || (g % $2::bigint), 'OrderCreated',
                    jsonb_build_object('order_id', 'order-' || (g % $2::bigint), 'n', g,
                                       'customer_id', 'customer-' || (g % 977), 'total', (g % 1000) / 10.0,
                                       'status', 'pending', 'note', repeat('x', $3::int))
             FROM generate_series($4::bigint, $4::bigint + $1::bigint - 1) AS g ORDER BY g",
        )
        .bind(n as i64)
        .bind(args.aggregates as i64)
        .bind(note)
        .bind(first as i64)
        .execute(pool)
    })
    .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    // Start every drain on a fresh checkpoint: otherwise the WAL of the load (a million history
    // rows in the history scenario) triggers a checkpoint at a random point of the drain that
    // follows, and its writes and full-page images move the rate by ±30%.
    if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
        progress(&format!(
            "CHECKPOINT before the drain failed ({e}); figures may vary more"
        ));
    }
    Ok(())
}

/// Runs `insert(first, n)` over `rows` rows in chunks of 250k, printing `what first/rows`.
pub async fn in_chunks<F, Fut>(rows: usize, what: &str, mut insert: F) -> Result<(), BenchError>
where
    F: FnMut(usize, usize) -> Fut,
    Fut: std::future::Future<Output = Result<sqlx::postgres::PgQueryResult, sqlx::Error>>,
{
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(250_000);
        progress(&format!("{what} {done}/{rows}"));
        insert(done, n).await?;
        done += n;
    }
    Ok(())
}

/// The application's pool: default session settings, as a service using the library has.
pub async fn app_pool(url: &str, max_connections: u32) -> Result<sqlx::PgPool, BenchError> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await?)
}
