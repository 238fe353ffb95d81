//! Helpers for integration tests against the real services on this machine.
//!
//! Every test gets its own PostgreSQL (or MariaDB) database, NATS stream and subjects, so tests
//! run in parallel. When a service is unreachable, a test fails naming it if `OUTBOX_REQUIRE_SERVICES`
//! is set (CI sets it), and otherwise skips with a loud message on stderr.

use std::time::Duration;

mod mysql;
mod nats;
mod postgres;
mod proxy;
mod tls;
pub use mysql::{mysql_admin_url, MysqlTestDb};
pub use nats::NatsServer;
pub use postgres::{
    url_encode, PgServer, APP_PASSWORD, APP_USER, CERT_USER, MD5_PASSWORD, MD5_USER,
};
pub use proxy::Proxy;
pub use tls::{free_port, write_file, ChildServer, TlsFiles, TlsProxy};

/// PostgreSQL admin URL (override with `OUTBOX_TEST_PG`).
pub fn pg_admin_url() -> String {
    std::env::var("OUTBOX_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// NATS URL (override with `OUTBOX_TEST_NATS`).
pub fn nats_url() -> String {
    std::env::var("OUTBOX_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// True when CI demands every service.
pub fn services_required() -> bool {
    std::env::var("OUTBOX_REQUIRE_SERVICES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Reports an unreachable service: panics when services are required, else prints a loud skip.
pub fn unavailable(service: &str, detail: &str) {
    if services_required() {
        panic!("{service} is unreachable ({detail}); OUTBOX_REQUIRE_SERVICES is set, so this test fails");
    }
    eprintln!("\n*** SKIPPED: {service} is unreachable ({detail}); set OUTBOX_REQUIRE_SERVICES=1 to make this a failure ***\n");
}

/// A connection to a server's admin URL within 10 s; `None` (after reporting `service` as
/// unreachable) otherwise.
pub(crate) async fn connect_admin<C: sqlx::Connection>(url: &str, service: &str) -> Option<C> {
    match tokio::time::timeout(Duration::from_secs(10), C::connect(url)).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            unavailable(service, &e.to_string());
            None
        }
        Err(_) => {
            unavailable(service, "connect timed out");
            None
        }
    }
}

/// Runs `cleanup` to the end on a thread and runtime of its own: what a `Drop` that must await
/// does (it cannot await itself, and may run inside or outside a runtime).
pub(crate) fn on_own_runtime(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(cleanup);
        }
    })
    .join();
}

/// Unwraps an `Option` from this module or returns from the test (a skip was already reported).
#[macro_export]
macro_rules! require {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

/// The confirmed flush position of replication slot `slot`, in bytes from `0/0`.
pub async fn confirmed_flush(pool: &sqlx::PgPool, slot: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::int8 FROM pg_replication_slots
         WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_one(pool)
    .await
    .expect("read the slot")
}

/// A fresh PostgreSQL database, dropped when this value is dropped.
pub struct TestDb {
    /// Connection URL of the database.
    pub url: String,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// Creates `outbox_test_<random>`; `None` (after reporting) when PostgreSQL is unreachable.
    pub async fn create() -> Option<TestDb> {
        let admin = pg_admin_url();
        let mut conn: sqlx::PgConnection =
            connect_admin(&admin, "PostgreSQL at 127.0.0.1:5432").await?;
        let name = format!("outbox_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("CREATE DATABASE");
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(b, _)| b)
            .to_string();
        Some(TestDb {
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// A pool on the database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = pg_admin_url();
        // Drop from a separate thread with its own runtime: Drop cannot await.
        on_own_runtime(async move {
            if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
                // Logical replication slots pin a database: stop their readers and
                // drop them first. A walsender takes a moment to exit: retry briefly.
                for _ in 0..50 {
                    for sql in [
                        format!(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                             WHERE database = '{name}' AND active_pid IS NOT NULL"
                        ),
                        format!(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                             WHERE database = '{name}' AND NOT active"
                        ),
                    ] {
                        let _ = sqlx::Executor::execute(&mut c, sql.as_str()).await;
                    }
                    let left: Result<i64, _> = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                    )
                    .bind(&name)
                    .fetch_one(&mut c)
                    .await;
                    if matches!(left, Ok(0) | Err(_)) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = sqlx::Executor::execute(&mut c, drop.as_str()).await;
            }
        });
    }
}

/// A NATS connection plus a unique prefix for this test's stream and subjects.
pub struct TestNats {
    /// Connected client.
    pub client: async_nats::Client,
    /// JetStream context.
    pub js: async_nats::jetstream::Context,
    /// Unique token, e.g. `t3f2a…`: use it in stream names and subjects.
    pub prefix: String,
}

impl TestNats {
    /// Connects; `None` (after reporting) when NATS is unreachable.
    pub async fn connect() -> Option<TestNats> {
        let url = nats_url();
        match tokio::time::timeout(Duration::from_secs(5), async_nats::connect(&url)).await {
            Ok(Ok(client)) => Some(TestNats {
                js: async_nats::jetstream::new(client.clone()),
                client,
                prefix: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            }),
            Ok(Err(e)) => {
                unavailable("NATS at 127.0.0.1:4222", &e.to_string());
                None
            }
            Err(_) => {
                unavailable("NATS at 127.0.0.1:4222", "connect timed out");
                None
            }
        }
    }

    /// The stream name this test should use.
    pub fn stream(&self) -> String {
        format!("{}_STREAM", self.prefix.to_uppercase())
    }

    /// Reads every message of `stream` (up to `expected`, waiting at most `timeout` for them).
    pub async fn read_stream(
        &self,
        stream: &str,
        expected: usize,
        timeout: Duration,
    ) -> Vec<async_nats::jetstream::Message> {
        use futures::StreamExt;
        let s = self.js.get_stream(stream).await.expect("stream exists");
        let consumer = s
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("create consumer");
        let mut out = Vec::with_capacity(expected);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut messages = consumer.messages().await.expect("consume");
        while out.len() < expected {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => out.push(m),
                Ok(Some(Err(e))) => panic!("reading stream {stream}: {e}"),
                Ok(None) | Err(_) => break,
            }
        }
        out
    }

    /// Deletes this test's stream (ignores a missing one).
    pub async fn cleanup(&self) {
        let _ = self.js.delete_stream(self.stream()).await;
    }
}
