//! The library's error type.

/// Errors returned by this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database rejected a statement or the connection failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The outbox table does not exist in this database.
    #[error("the outbox table does not exist in this database; run `outbox migrate` first")]
    SchemaMissing,
    /// The `outbox` table exists, created by other code (e.g. the reference SQLAlchemy model),
    /// and `outbox migrate` has not adopted it yet.
    #[error("the outbox table exists but `outbox migrate` has not adopted it yet (it was created by other code): run `outbox migrate`, which numbers its rows in created_at order and adds and converts the columns the relay needs (README, \"Adopting an existing table\")")]
    NotAdopted,
    /// The `outbox` table exists in a layout `outbox migrate` cannot adopt (Debezium's, or a
    /// table of something else): the message says what it is and what to do.
    #[error("{0}")]
    ForeignTable(crate::adopt::ForeignTable),
    /// The schema in the database is newer than this build knows.
    #[error("the database schema is at version {found}, newer than this build's {supported}; upgrade outbox")]
    SchemaTooNew {
        /// Version recorded in the database.
        found: i64,
        /// Newest version this build ships.
        supported: i64,
    },
    /// The schema in the database is older than this build needs.
    #[error("the database schema is at version {found}, this build needs {required}; run `outbox migrate`")]
    SchemaOutdated {
        /// Version recorded in the database.
        found: i64,
        /// Version this build needs.
        required: i64,
    },
    /// The inbox tables do not exist in this database.
    #[error("the outbox_inbox table does not exist in this database; create it with outbox::inbox::create_tables (a consumer does at start) or `outbox migrate`")]
    InboxMissing,
    /// An event payload could not be serialized to JSON.
    #[error("event payload is not serializable to JSON: {0}")]
    Payload(#[from] serde_json::Error),
}

impl Error {
    /// Maps "relation does not exist" errors to [`Error::SchemaMissing`].
    pub(crate) fn from_query(err: sqlx::Error) -> Self {
        if is_undefined_table(&err) {
            Error::SchemaMissing
        } else {
            Error::Database(err)
        }
    }

    /// Maps "relation does not exist" errors of the inbox's statements to
    /// [`Error::InboxMissing`].
    pub(crate) fn from_inbox(err: sqlx::Error) -> Self {
        if is_undefined_table(&err) {
            Error::InboxMissing
        } else {
            Error::Database(err)
        }
    }
}

/// True when the error says a table is missing (PostgreSQL `42P01`, SQLite "no such table").
pub fn is_undefined_table(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("42P01") || db.message().starts_with("no such table")
        }
        _ => false,
    }
}
