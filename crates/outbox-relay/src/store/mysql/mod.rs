//! MySQL 8.0+ and MariaDB 10.6+ (InnoDB): several relays at once through `FOR UPDATE SKIP
//! LOCKED`, plain polling (there is no `LISTEN`). One file per job: [`claim`] (the claim and
//! the settle statement), [`admin`] (status, the metrics' sample, dead letters, cleanup),
//! [`console`] (the web console's reads).
//!
//! The relay's sessions run at READ COMMITTED: every statement reads the latest committed rows
//! (so the claim's checks see what other relays committed since), and InnoDB takes no gap locks
//! that would make writers' inserts wait for a relay. Times are `DATETIME(6)` in UTC: sqlx sets
//! the session's `time_zone` to `+00:00`, and every "now" is `UTC_TIMESTAMP(6)`.

pub(super) mod admin;
pub(super) mod claim;
pub(super) mod console;

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

use super::ConnectOptions;
use crate::error::Error;
use crate::urls::redact_url;

/// Opens a pool on `url` (`mysql://` or `mariadb://`), after one direct connection attempt so
/// that a wrong address or password is reported at once, in one line.
pub(super) async fn connect(url: &str, options: &ConnectOptions) -> Result<MySqlPool, Error> {
    let redacted = redact_url(url);
    let sqlx_url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_string(),
    };
    let opts = MySqlConnectOptions::from_str(&sqlx_url)
        .map_err(|e| Error::Config(format!("invalid MySQL URL {redacted}: {e}")))?;
    let connect_err = |reason: String| Error::Connect {
        url: redacted.clone(),
        reason,
    };
    match tokio::time::timeout(
        options.connect_timeout,
        <sqlx::MySqlConnection as sqlx::Connection>::connect_with(&opts),
    )
    .await
    {
        Ok(Ok(c)) => {
            let _ = sqlx::Connection::close(c).await;
        }
        Ok(Err(e)) => return Err(connect_err(e.to_string())),
        Err(_) => {
            return Err(connect_err(format!(
                "no answer within {:?}",
                options.connect_timeout
            )))
        }
    }
    Ok(MySqlPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.connect_timeout)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(
                    &mut *conn,
                    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                )
                .await
                .map(drop)
            })
        })
        .connect_lazy_with(opts))
}

/// Where the database is, for log lines (never credentials).
pub(super) fn describe(pool: &MySqlPool) -> String {
    let o = pool.connect_options();
    format!(
        "mysql://{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("")
    )
}

/// A column's bytes whatever its declared type (text in a binary collation, JSON, BLOB), `None`
/// for NULL. sqlx's type check refuses `String` for `utf8mb4_bin` columns (they carry the
/// BINARY flag), so text is read as bytes and checked for UTF-8 here.
pub(super) fn bytes<'r>(row: &'r MySqlRow, column: &str) -> Result<Option<&'r [u8]>, sqlx::Error> {
    row.try_get_unchecked::<Option<&[u8]>, _>(column)
}

/// A text column for display: invalid UTF-8 replaced, NULL as empty.
pub(super) fn lossy(row: &MySqlRow, column: &str) -> Result<String, sqlx::Error> {
    Ok(super::rows::lossy(bytes(row, column)?))
}

/// A UUID stored as text (`CHAR(36)`); the nil UUID when a writer stored something else.
pub(super) fn uuid(row: &MySqlRow, column: &str) -> Result<Uuid, sqlx::Error> {
    Ok(Uuid::parse_str(lossy(row, column)?.trim()).unwrap_or_else(|_| Uuid::nil()))
}

/// `seq IN (…)` lists are built from the relay's own integers, never from input text.
pub(super) fn seq_list(seqs: &[i64]) -> String {
    let mut out = String::with_capacity(seqs.len() * 8);
    for (i, s) in seqs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&s.to_string());
    }
    out
}

/// `(?, ?, …)` for `n` bound values (n ≥ 1).
pub(super) fn placeholders(n: usize) -> String {
    let mut out = String::from("(");
    for i in 0..n.max(1) {
        out.push_str(if i == 0 { "?" } else { ", ?" });
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_placeholders() {
        assert_eq!(seq_list(&[3, 10, 11]), "3,10,11");
        assert_eq!(placeholders(3), "(?, ?, ?)");
        assert_eq!(placeholders(1), "(?)");
    }
}
