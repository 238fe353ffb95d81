//! The service's error type.

/// Errors of the shipping service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad command-line input or configuration: the message says what to fix.
    #[error("{0}")]
    Config(String),
    /// The database failed (connect, a statement, a commit).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The inbox failed.
    #[error("inbox: {0}")]
    Inbox(#[from] outbox::Error),
    /// The broker failed (connect, consume, acknowledge).
    #[error("{0}")]
    Broker(String),
}

impl Error {
    /// True for errors a retry may cure (the database or the broker), false for configuration.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Error::Config(_))
    }
}
