//! A **test-only** fault switch: `SHIPPING_SERVICE_CRASH=before-commit:N` or
//! `after-commit:N` makes the process abort (SIGABRT, no cleanup) while handling its N-th
//! message (counted from 1 since start): just before the database COMMIT, or after the commit
//! and before the broker acknowledgement. The crash tests use it to show that nothing is lost
//! and nothing applied twice. Unset in production: then it does nothing.

use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable.
pub const VAR: &str = "SHIPPING_SERVICE_CRASH";

/// Where to crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Inside the transaction, before COMMIT: nothing of the message is stored.
    BeforeCommit,
    /// After COMMIT, before the acknowledgement: the broker will redeliver a processed event.
    AfterCommit,
}

/// The switch, read once from the environment.
#[derive(Debug, Default)]
pub struct Crash {
    at: Option<(Point, u64)>,
    handled: AtomicU64,
}

impl Crash {
    /// Reads [`VAR`]; an unreadable value is a configuration error.
    pub fn from_env() -> Result<Crash, String> {
        let Ok(spec) = std::env::var(VAR) else {
            return Ok(Crash::default());
        };
        let bad = || format!("{VAR}={spec:?}: use before-commit:N or after-commit:N");
        let (point, n) = spec.split_once(':').ok_or_else(bad)?;
        let point = match point {
            "before-commit" => Point::BeforeCommit,
            "after-commit" => Point::AfterCommit,
            _ => return Err(bad()),
        };
        let n: u64 = n.parse().map_err(|_| bad())?;
        tracing::warn!("{VAR} is set: this process aborts at {spec} (a test-only fault switch)");
        Ok(Crash {
            at: Some((point, n)),
            handled: AtomicU64::new(0),
        })
    }

    /// Counts a message about to be handled; returns its number (from 1).
    pub fn next(&self) -> u64 {
        self.handled.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Aborts the process if the switch names this point and message number.
    pub fn at(&self, point: Point, message: u64) {
        if self.at == Some((point, message)) {
            eprintln!("shipping-service: {VAR}: aborting at {point:?} of message {message}");
            std::process::abort();
        }
    }
}
