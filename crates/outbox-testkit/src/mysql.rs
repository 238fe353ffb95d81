//! Private MariaDB / MySQL databases for tests.

use std::time::Duration;

use super::{connect_admin, on_own_runtime};

/// MySQL / MariaDB admin URL (override with `OUTBOX_TEST_MYSQL`).
pub fn mysql_admin_url() -> String {
    std::env::var("OUTBOX_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A fresh MariaDB / MySQL database, dropped when this value is dropped.
pub struct MysqlTestDb {
    /// Connection URL of the database.
    pub url: String,
    /// Its name.
    pub name: String,
}

impl MysqlTestDb {
    /// Creates `outbox_test_<random>`; `None` (after reporting) when MariaDB is unreachable.
    pub async fn create() -> Option<MysqlTestDb> {
        let admin = mysql_admin_url();
        let mut conn: sqlx::MySqlConnection =
            connect_admin(&admin, "MariaDB at 127.0.0.1:3306").await?;
        let name = format!("outbox_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("CREATE DATABASE");
        let _ = sqlx::Connection::close(conn).await;
        Some(MysqlTestDb {
            url: format!("{}/{name}", admin.trim_end_matches('/')),
            name,
        })
    }

    /// A pool on the database.
    pub async fn pool(&self) -> sqlx::MySqlPool {
        sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for MysqlTestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = mysql_admin_url();
        // Drop from a separate thread with its own runtime: Drop cannot await. Connections
        // still open on the database (a relay just killed) do not block DROP DATABASE in
        // MySQL, only their metadata locks, which end with their sessions.
        on_own_runtime(async move {
            if let Ok(mut c) = <sqlx::MySqlConnection as sqlx::Connection>::connect(&admin).await {
                // Kill sessions left on the database so their locks do not hold it.
                let ids: Vec<u64> = sqlx::query_scalar(
                    "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist
                     WHERE db = ? AND id <> CONNECTION_ID()",
                )
                .bind(&name)
                .fetch_all(&mut c)
                .await
                .unwrap_or_default();
                for id in ids {
                    let _ = sqlx::Executor::execute(&mut c, format!("KILL {id}").as_str()).await;
                }
                let drop = format!("DROP DATABASE IF EXISTS {name}");
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    sqlx::Executor::execute(&mut c, drop.as_str()),
                )
                .await;
            }
        });
    }
}
