//! `order-service`: the reference OrderService over HTTP.
//!
//! Configuration from the environment: `DATABASE_URL` (`postgres://…`, `mysql://…` or
//! `sqlite:…`, required)
//! and `BIND` (default `127.0.0.1:3000`).

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use order_service::{OrderPool, OrderService};
use sqlx::Connection;

const DEFAULT_BIND: &str = "127.0.0.1:3000";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A line that cannot be written is dropped, not reported by a panicking `eprintln!`.
        .log_internal_errors(false)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order-service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let url = std::env::var("DATABASE_URL").map_err(|_| {
        "DATABASE_URL is not set (postgres://user@host/db, mysql://user@host/db or sqlite:orders.db)"
            .to_string()
    })?;
    let service = OrderService::new(connect(&url).await?);
    service
        .migrate()
        .await
        .map_err(|e| format!("cannot create the schema: {e}"))?;

    let bind = std::env::var("BIND").unwrap_or_else(|_| DEFAULT_BIND.to_string());
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "order-service listening");
    axum::serve(listener, order_service::http::router(service))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server error: {e}"))
}

/// Opens a pool on `url`; errors never echo the URL (it may hold a password).
async fn connect(url: &str) -> Result<OrderPool, String> {
    let timeout = Duration::from_secs(10);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)
            .map_err(|e| format!("invalid DATABASE_URL: {e}"))?
            .application_name("order-service");
        // One direct connection first: a pool would only report "timed out" for, say, a
        // refused connection or a wrong password.
        let probe = tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(&options))
            .await
            .map_err(|_| format!("cannot connect to PostgreSQL: no answer within {timeout:?}"))?
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        let _ = probe.close().await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        Ok(pool.into())
    } else if let Some(rest) = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))
    {
        let options = sqlx::mysql::MySqlConnectOptions::from_str(&format!("mysql://{rest}"))
            .map_err(|e| format!("invalid DATABASE_URL: {e}"))?;
        let probe = tokio::time::timeout(timeout, sqlx::MySqlConnection::connect_with(&options))
            .await
            .map_err(|_| format!("cannot connect to MySQL: no answer within {timeout:?}"))?
            .map_err(|e| format!("cannot connect to MySQL: {e}"))?;
        let _ = probe.close().await;
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(|e| format!("cannot connect to MySQL: {e}"))?;
        Ok(pool.into())
    } else if url.starts_with("sqlite:") {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .map_err(|e| format!("invalid DATABASE_URL: {e}"))?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(timeout);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(|e| format!("cannot open the SQLite database: {e}"))?;
        Ok(pool.into())
    } else {
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        Err(format!(
            "DATABASE_URL must start with postgres://, postgresql://, mysql://, mariadb:// or \
             sqlite: (got scheme {scheme:?})"
        ))
    }
}
