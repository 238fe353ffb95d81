//! How the command line reports failures: one line on stderr, and an exit status
//! (2: bad usage or configuration, 1: failure at run time).

use std::fmt;

/// A failure to report to the user.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// Bad usage or configuration: exit status 2.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: 2,
            message: message.into(),
        }
    }

    /// Failure at run time: exit status 1.
    pub fn runtime(message: impl Into<String>) -> Self {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<outbox_relay::Error> for CliError {
    fn from(e: outbox_relay::Error) -> Self {
        let message = one_line(&e.to_string());
        if e.is_config() {
            CliError::usage(message)
        } else {
            CliError::runtime(message)
        }
    }
}

impl From<outbox::Error> for CliError {
    fn from(e: outbox::Error) -> Self {
        outbox_relay::Error::from(e).into()
    }
}

impl From<sqlx::Error> for CliError {
    fn from(e: sqlx::Error) -> Self {
        outbox_relay::Error::from(outbox::Error::Database(e)).into()
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::runtime(e.to_string())
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
