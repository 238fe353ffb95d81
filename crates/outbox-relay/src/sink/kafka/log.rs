//! librdkafka's log lines and errors, routed to `tracing` without the repeats.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Routes librdkafka's log lines and global errors to `tracing`, each failure once.
///
/// librdkafka reports a broker it cannot reach twice (a log line and the error callback), from
/// every client (the producer and the admin client), and again at every reconnect attempt. So
/// the log lines go to DEBUG (but for warnings that are not connection failures), the admin
/// client's errors too, and of the producer's errors the first one since the last successful
/// delivery goes to WARN, with the brokers' address, and the repeats to DEBUG.
#[derive(Debug, Clone, Default)]
pub struct KafkaLog {
    /// The bootstrap servers, for the warning (a Kafka URL holds no credentials).
    servers: String,
    /// Set once an outage was reported; cleared by a successful delivery.
    reported: Arc<AtomicBool>,
    /// The admin client's context: nothing above DEBUG (the producer says the same).
    quiet: bool,
}

impl KafkaLog {
    /// The producer's context, for the cluster at `servers`.
    pub(super) fn new(servers: &str) -> Self {
        KafkaLog {
            servers: servers.to_string(),
            ..KafkaLog::default()
        }
    }

    /// The admin client's copy: shares the state, reports only at DEBUG.
    pub(super) fn quiet(&self) -> Self {
        KafkaLog {
            quiet: true,
            ..self.clone()
        }
    }

    /// A delivery succeeded: the next failure is news again.
    pub(super) fn delivered(&self) {
        self.reported.store(false, Ordering::Relaxed);
    }
}

/// librdkafka log facilities of broker connection failures (the error callback reports them).
const CONNECTION_FACILITIES: [&str; 4] = ["FAIL", "REQTMOUT", "BROKERFAIL", "ERROR"];

impl ClientContext for KafkaLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let severe = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        if severe && !self.quiet && !CONNECTION_FACILITIES.contains(&fac) {
            tracing::warn!(facility = fac, "librdkafka: {message}");
        } else {
            tracing::debug!(facility = fac, "librdkafka: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let fatal = error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal);
        if !self.quiet && (fatal || !self.reported.swap(true, Ordering::Relaxed)) {
            tracing::warn!(
                servers = %self.servers,
                error = %error,
                "Kafka: {reason}; events wait in the outbox until the brokers answer"
            );
        } else {
            tracing::debug!(servers = %self.servers, error = %error, "Kafka: {reason}");
        }
    }
}
