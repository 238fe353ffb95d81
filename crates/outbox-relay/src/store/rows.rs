//! Reading outbox rows that plain-SQL writers may have filled with anything: text that is not
//! UTF-8 (SQLite stores any bytes; a PostgreSQL database in `SQL_ASCII` too), NULLs where an
//! adopted table allows them, timestamps the relay cannot carry (`infinity`). A claim must not
//! fail on one such row, or no event of any aggregate would move again: each row is read on
//! its own, and a row that cannot be read is dead-lettered with the reason, naming the column.

use crate::error::Error;
use crate::record::Record;

/// Lowest timestamp the relay reads from PostgreSQL (as SQL): earlier ones, `-infinity` among
/// them, do not fit the time type the relay works with.
pub(crate) const PG_MIN_TIME: &str = "'0001-01-01 00:00:00+00'::timestamptz";
/// Highest timestamp the relay reads from PostgreSQL (as SQL); `infinity` is past it.
pub(crate) const PG_MAX_TIME: &str = "'9999-12-31 23:59:59+00'::timestamptz";

/// A claimed row that cannot become a [`Record`]: it goes to the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unreadable {
    /// Its `seq`.
    pub seq: i64,
    /// Why, naming the column.
    pub reason: String,
}

impl Unreadable {
    /// The dead letter's `error`.
    pub(crate) fn error(&self) -> String {
        format!("the relay cannot read this row: {}", self.reason)
    }
}

/// A claimed row, read or not.
pub(crate) type Read = Result<Record, Unreadable>;

/// Why a row could not be read: its own fault (a reason naming the column) or the database's.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The row's: it is dead-lettered with this reason.
    Row(String),
    /// The database's: the claim fails.
    Db(Error),
}

impl From<sqlx::Error> for Fault {
    fn from(e: sqlx::Error) -> Self {
        Fault::Db(e.into())
    }
}

/// Sorts a row's [`Fault`] from the database's.
pub(crate) fn finish(seq: i64, read: Result<Record, Fault>) -> Result<Read, Error> {
    match read {
        Ok(record) => Ok(Ok(record)),
        Err(Fault::Row(reason)) => Ok(Err(Unreadable { seq, reason })),
        Err(Fault::Db(e)) => Err(e),
    }
}

/// A text column's value: `Err` with the reason when it is NULL or not UTF-8.
pub(crate) fn text(column: &str, bytes: Option<&[u8]>) -> Result<String, String> {
    match bytes {
        None => Err(format!("column {column} is NULL")),
        Some(b) => utf8(column, b),
    }
}

/// A nullable text column's value: `Err` with the reason when it is not UTF-8.
pub(crate) fn text_opt(column: &str, bytes: Option<&[u8]>) -> Result<Option<String>, String> {
    bytes.map(|b| utf8(column, b)).transpose()
}

fn utf8(column: &str, bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| format!("column {column} is not valid UTF-8 ({})", e.utf8_error()))
}

/// For display (dead letters): invalid UTF-8 replaced, NULL as empty.
pub(crate) fn lossy(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_column() {
        assert_eq!(text("payload", Some(b"{}")).unwrap(), "{}");
        let e = text("payload", Some(b"{\"n\":\"f\xff\"}")).unwrap_err();
        assert!(e.starts_with("column payload is not valid UTF-8"), "{e}");
        assert_eq!(
            text("aggregate_id", None).unwrap_err(),
            "column aggregate_id is NULL"
        );
        assert_eq!(text_opt("headers", None).unwrap(), None);
        assert!(text_opt("headers", Some(b"\xc3")).is_err());
        assert_eq!(lossy(Some(b"caf\xe9")), "caf\u{fffd}");
        let u = Unreadable {
            seq: 3,
            reason: e.clone(),
        };
        assert!(u.error().contains("cannot read this row: column payload"));
    }
}
