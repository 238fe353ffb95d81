//! Shared fixtures: the service on a private PostgreSQL database or a temporary SQLite file.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::time::Duration;

use order_service::{OrderPool, OrderService};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// Runs each named `async fn scenario(&OrderService)` as three tests: `scenario::postgres` and
/// `scenario::mysql` (skipped loudly when the server is unreachable) and `scenario::sqlite`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = outbox_testkit::require!(outbox_testkit::TestDb::create().await);
                let service = $crate::common::postgres(&db).await;
                super::$scenario(&service).await;
                $crate::common::close(&service).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                let db = outbox_testkit::require!(outbox_testkit::MysqlTestDb::create().await);
                let service = order_service::OrderService::new(db.pool().await);
                service.migrate().await.expect("migrate");
                super::$scenario(&service).await;
                $crate::common::close(&service).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::common::TempSqlite::create().await;
                super::$scenario(&db.service).await;
                $crate::common::close(&db.service).await;
            }
        }
    )*};
}

/// A migrated service on the test database `db`.
pub async fn postgres(db: &outbox_testkit::TestDb) -> OrderService {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&db.url)
        .await
        .expect("connect to the test database");
    let service = OrderService::new(pool);
    service.migrate().await.expect("migrate");
    service
}

/// A migrated service on a SQLite file in the temp directory, deleted on drop.
pub struct TempSqlite {
    pub service: OrderService,
    path: PathBuf,
}

impl TempSqlite {
    pub async fn create() -> TempSqlite {
        let path = std::env::temp_dir().join(format!(
            "order-service-test-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .expect("open the SQLite file");
        let service = OrderService::new(pool);
        service.migrate().await.expect("migrate");
        TempSqlite { service, path }
    }
}

impl Drop for TempSqlite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

/// Closes the service's pool (so dropping the database finds no open connection).
pub async fn close(service: &OrderService) {
    match service.pool() {
        OrderPool::Postgres(p) => p.close().await,
        OrderPool::Sqlite(p) => p.close().await,
        OrderPool::Mysql(p) => p.close().await,
    }
}

/// One row of the outbox table.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: Value,
}

/// Every outbox row, in `seq` order.
pub async fn events(service: &OrderService) -> Vec<EventRow> {
    const COLUMNS: &str = "aggregate_type, aggregate_id, event_type";
    let rows: Vec<(String, String, String, String)> = match service.pool() {
        OrderPool::Postgres(p) => {
            let sql = format!("SELECT {COLUMNS}, payload::text FROM outbox ORDER BY seq");
            sqlx::query_as(&sql).fetch_all(p).await
        }
        OrderPool::Sqlite(p) => {
            let sql = format!("SELECT {COLUMNS}, payload FROM outbox ORDER BY seq");
            sqlx::query_as(&sql).fetch_all(p).await
        }
        OrderPool::Mysql(p) => {
            // Binary collations: cast to text (sqlx refuses String for utf8mb4_bin columns).
            let sql = "SELECT CAST(aggregate_type AS CHAR), CAST(aggregate_id AS CHAR),
                              CAST(event_type AS CHAR), CAST(payload AS CHAR)
                       FROM outbox ORDER BY seq";
            sqlx::query_as(sql).fetch_all(p).await
        }
    }
    .expect("read the outbox");
    rows.into_iter()
        .map(
            |(aggregate_type, aggregate_id, event_type, payload)| EventRow {
                aggregate_type,
                aggregate_id,
                event_type,
                payload: serde_json::from_str(&payload).expect("payload is JSON"),
            },
        )
        .collect()
}

/// Number of rows in the `orders` table.
pub async fn order_count(service: &OrderService) -> i64 {
    const SQL: &str = "SELECT count(*) FROM orders";
    match service.pool() {
        OrderPool::Postgres(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
        OrderPool::Sqlite(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
        OrderPool::Mysql(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
    }
    .expect("count orders")
}

/// Runs `postgres`, `mysql` or `sqlite` (statements, no parameters), whichever applies.
pub async fn execute(service: &OrderService, postgres: &str, mysql: &str, sqlite: &str) {
    match service.pool() {
        OrderPool::Postgres(p) => sqlx::Executor::execute(p, postgres).await.map(drop),
        OrderPool::Sqlite(p) => sqlx::Executor::execute(p, sqlite).await.map(drop),
        OrderPool::Mysql(p) => sqlx::Executor::execute(p, mysql).await.map(drop),
    }
    .expect("execute test SQL");
}

/// Bounds a wait: panics naming `what` after `secs` seconds.
pub async fn within<F: std::future::Future>(secs: u64, what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs}s"))
}
