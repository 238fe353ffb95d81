//! The CDC source's settings ([`CdcOptions`]) and their checks. (A Debezium connector
//! registration is read into these by the command line; the EventRouter's own options are
//! [`crate::route::debezium::EventRouterOptions`].)

use std::time::Duration;

use crate::error::Error;
use crate::retry::RetryPolicy;
use crate::store::replication::{
    validate_publication_name, validate_slot_name, TableName, DEFAULT_MAX_RETAINED_WAL,
};

/// The default bound on the bytes of events a relay holds in memory: 64 MiB.
pub const DEFAULT_MAX_BUFFER_BYTES: u64 = 64 << 20;

/// Settings of the CDC source.
#[derive(Debug, Clone)]
pub struct CdcOptions {
    /// Logical replication slot (created when missing and `create_slot` is set).
    pub slot: String,
    /// Publication (created when missing and `create_publication` is set).
    pub publication: String,
    /// Captured tables.
    pub tables: Vec<TableName>,
    /// Create a missing publication (`FOR TABLE …`, inserts and updates).
    pub create_publication: bool,
    /// Create a missing slot.
    pub create_slot: bool,
    /// Write a heartbeat into the WAL after this long without any change streamed.
    pub heartbeat_interval: Duration,
    /// Longest wait before a newly confirmed LSN is sent to the server.
    pub status_interval: Duration,
    /// When another reader holds the slot: wait for it as a hot standby (true) or fail.
    pub standby: bool,
    /// How often a standby checks the slot.
    pub standby_poll: Duration,
    /// How often the replication lag is logged.
    pub lag_log_interval: Duration,
    /// Warn (log, `outbox status`) when the slot retains more WAL than this many bytes.
    pub max_retained_wal: u64,
    /// Events per delivery round.
    pub batch_size: usize,
    /// Aggregates published at once within a round.
    pub max_in_flight: usize,
    /// Events held in memory (decoded, retrying) before the stream is paused.
    pub max_buffered: usize,
    /// Bytes of events held in memory (decoded, retrying, out for delivery) before the relay
    /// reads no further from the slot; one event larger than this still goes through alone.
    pub max_buffer_bytes: u64,
    /// Backoff and dead-lettering.
    pub retry: RetryPolicy,
    /// Whether a dead letter sends the later events of its aggregate after it.
    pub dead_letters_block: bool,
}

impl Default for CdcOptions {
    fn default() -> Self {
        CdcOptions {
            slot: "outbox_relay".into(),
            publication: "outbox_relay".into(),
            tables: vec![TableName {
                schema: "public".into(),
                name: outbox::OUTBOX_TABLE.into(),
            }],
            create_publication: true,
            create_slot: true,
            heartbeat_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(1),
            standby: true,
            standby_poll: Duration::from_millis(500),
            lag_log_interval: Duration::from_secs(60),
            max_retained_wal: DEFAULT_MAX_RETAINED_WAL,
            batch_size: 4096,
            max_in_flight: 1024,
            max_buffered: 65_536,
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
            retry: RetryPolicy::default(),
            dead_letters_block: true,
        }
    }
}

impl CdcOptions {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), Error> {
        validate_slot_name(&self.slot)?;
        validate_publication_name(&self.publication)?;
        if self.tables.is_empty() {
            return Err(Error::Config(
                "the CDC source needs a table to capture".into(),
            ));
        }
        if self.batch_size == 0 || self.max_in_flight == 0 {
            return Err(Error::Config(
                "batch_size and max_in_flight must be at least 1".into(),
            ));
        }
        if self.max_buffer_bytes == 0 {
            return Err(Error::Config(
                "max_buffer_bytes must be greater than zero".into(),
            ));
        }
        for (name, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("status_interval", self.status_interval),
            ("standby_poll", self.standby_poll),
            ("lag_log_interval", self.lag_log_interval),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!(
                    "cdc {name} must be greater than zero"
                )));
            }
        }
        self.retry.validate().map_err(Error::Config)
    }
}
