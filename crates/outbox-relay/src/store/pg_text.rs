//! PostgreSQL text the server cannot send as UTF-8 (`SQL_ASCII` databases): the claim's
//! fallback reads those columns as bytes, and the rows are judged one by one.

/// The same as their bytes: a `SQL_ASCII` database stores any bytes in text, and the server
/// refuses to send text that is not UTF-8 to the relay (SQLSTATE 22021), failing the whole
/// statement. After such a failure the claim runs again this way, and the rows are judged one
/// by one.
pub(super) fn text_columns_as_bytes() -> String {
    [
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "payload",
        "headers",
    ]
    .iter()
    .map(|c| format!("{} AS {c}", as_bytes(&format!("c.{c}"))))
    .collect::<Vec<_>>()
    .join(", ")
}

/// SQL for the bytes of text expression `expr`, in UTF-8: converted from the database's
/// encoding, except in a `SQL_ASCII` database, which has no encoding to convert from: there
/// they are the bytes stored.
pub(super) fn as_bytes(expr: &str) -> String {
    format!(
        "convert_to({expr}, CASE current_setting('server_encoding') \
         WHEN 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END)"
    )
}

/// The server could not send text as UTF-8 (`SQL_ASCII` databases).
pub(super) fn not_utf8(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("22021"))
}

/// A column's bytes as PostgreSQL sent them (text arrives as its bytes), `None` for NULL.
pub(super) fn raw<'r>(
    row: &'r sqlx::postgres::PgRow,
    column: &str,
) -> Result<Option<&'r [u8]>, sqlx::Error> {
    use sqlx::{Row, ValueRef};
    let value = row.try_get_raw(column)?;
    if value.is_null() {
        return Ok(None);
    }
    Ok(Some(value.as_bytes().map_err(sqlx::Error::Decode)?))
}
