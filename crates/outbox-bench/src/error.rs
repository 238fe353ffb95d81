//! The benchmark's failures: one line on stderr and an exit status (2: bad flags or an
//! unusable set-up, 1: a failure while measuring).

/// A failure that ends the benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad flags, or a set-up the benchmark cannot use (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// A failure while setting up or measuring (exit status 1).
    #[error("{0}")]
    Runtime(String),
    /// From the relay library; its configuration errors count as usage errors.
    #[error(transparent)]
    Relay(#[from] outbox_relay::Error),
}

impl BenchError {
    /// Bad flags or an unusable set-up.
    pub fn usage(message: impl Into<String>) -> Self {
        BenchError::Usage(message.into())
    }

    /// A failure while setting up or measuring.
    pub fn runtime(message: impl Into<String>) -> Self {
        BenchError::Runtime(message.into())
    }

    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::Usage(_) => 2,
            BenchError::Relay(e) if e.is_config() => 2,
            BenchError::Runtime(_) | BenchError::Relay(_) => 1,
        }
    }
}

impl From<outbox::Error> for BenchError {
    fn from(e: outbox::Error) -> Self {
        outbox_relay::Error::from(e).into()
    }
}

impl From<sqlx::Error> for BenchError {
    fn from(e: sqlx::Error) -> Self {
        outbox::Error::Database(e).into()
    }
}
