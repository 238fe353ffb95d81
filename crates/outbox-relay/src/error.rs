//! The relay's error type.

/// Errors from the relay engine. Configuration problems are separated from runtime failures
/// so a command line can exit with the right status (2 for configuration, 1 for runtime).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid: the message says what to fix.
    #[error("{0}")]
    Config(String),
    /// The database could not be reached at start-up.
    #[error("cannot connect to the database at {url}: {reason}")]
    Connect {
        /// The database URL with any password replaced by `***`.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The schema is missing or not one this build can use.
    #[error(transparent)]
    Schema(outbox::Error),
    /// A database statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A sink could not be set up.
    #[error("sink: {0}")]
    Sink(String),
    /// Input/output error (files).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// True when the error is the user's configuration or set-up (wrong URL, missing schema),
    /// rather than a failure at run time.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Config(_) | Error::Connect { .. } | Error::Schema(_)
        )
    }
}

impl From<outbox::Error> for Error {
    fn from(e: outbox::Error) -> Self {
        match e {
            outbox::Error::Database(db) if outbox::is_undefined_table(&db) => {
                Error::Schema(outbox::Error::SchemaMissing)
            }
            outbox::Error::Database(db) => Error::Database(db),
            other => Error::Schema(other),
        }
    }
}

/// Maps a query error, turning "table does not exist" into the schema error with its hint.
pub(crate) fn db(err: sqlx::Error) -> Error {
    if outbox::is_undefined_table(&err) {
        Error::Schema(outbox::Error::SchemaMissing)
    } else {
        Error::Database(err)
    }
}
