//! The command line: `outbox <command>`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "outbox",
    version,
    about = "Transactional outbox relay: delivers committed events to your broker, at least once, in order per aggregate.",
    after_help = "Exit status: 0 success, 2 bad usage or configuration, 1 failure at run time."
)]
pub struct Cli {
    /// Database holding the outbox table: postgres://user@host/db, mysql://user@host/db
    /// (MySQL 8.0+, MariaDB 10.6+) or sqlite:path.db
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// TOML configuration file (flags and environment variables override it).
    #[arg(long, env = "OUTBOX_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace (or a tracing filter such as outbox=debug).
    #[arg(long, env = "OUTBOX_LOG", global = true)]
    pub log_level: Option<String>,

    /// Log format.
    #[arg(long, env = "OUTBOX_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded demo: SQLite, an order workload, a flaky sink, the relay, a summary.
    Demo(DemoArgs),
    /// Create or upgrade the outbox schema (idempotent).
    Migrate,
    /// Deliver events until SIGINT/SIGTERM, then finish the batch in flight and exit 0.
    Relay(RelayArgs),
    /// Pending events, the oldest pending age, retrying events, dead letters.
    Status(StatusArgs),
    /// Inspect and re-enqueue dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Delete published events older than a retention, in batches.
    Cleanup(CleanupArgs),
    /// Serve the web console (overview, find an event, dead letters) without relaying, for a
    /// database whose relay runs elsewhere.
    Console(ConsoleArgs),
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Where events go: nats://host:4222, stdout:, file:PATH
    #[arg(long, env = "OUTBOX_SINK")]
    pub sink: Option<String>,

    /// Where events come from.
    #[arg(long, env = "OUTBOX_SOURCE", value_enum)]
    pub source: Option<SourceKind>,

    /// Message format: default (the reference format), debezium, cloudevents,
    /// cloudevents-binary.
    #[arg(long, env = "OUTBOX_ENVELOPE")]
    pub envelope: Option<String>,

    /// Topic template, e.g. '{aggregate_type:lower}-events' (placeholders: aggregate_type,
    /// aggregate_id, event_type; filters :lower, :upper).
    #[arg(long, env = "OUTBOX_TOPIC")]
    pub topic: Option<String>,

    /// Message key template [default: '{aggregate_id}'].
    #[arg(long, env = "OUTBOX_KEY")]
    pub key: Option<String>,

    /// Largest batch claimed at once [default: 2000].
    #[arg(long)]
    pub batch_size: Option<usize>,

    /// Most bytes of events held in memory: a polled batch stops there, the CDC relay reads no
    /// further from the slot (one larger event still goes alone), e.g. 64MiB [default: 64MiB].
    #[arg(long, value_name = "SIZE")]
    pub max_buffer_bytes: Option<bytesize::ByteSize>,

    /// Claim loops running at once on PostgreSQL and MySQL [default: 2].
    #[arg(long)]
    pub workers: Option<usize>,

    /// Longest wait between claims when idle: the fallback when no notification arrives on
    /// PostgreSQL, the longest a new event waits on MySQL and SQLite [default: 1s; 100ms on
    /// MySQL].
    #[arg(long, value_parser = outbox_relay::duration::parse)]
    pub poll_interval: Option<std::time::Duration>,

    /// Failed attempts before an event moves to the dead-letter table [default: 10].
    #[arg(long)]
    pub max_attempts: Option<u32>,

    /// Backoff after the first failure [default: 1s].
    #[arg(long, value_parser = outbox_relay::duration::parse)]
    pub backoff_base: Option<std::time::Duration>,

    /// Longest backoff [default: 5m].
    #[arg(long, value_parser = outbox_relay::duration::parse)]
    pub backoff_max: Option<std::time::Duration>,

    /// What a dead letter does to later events of its aggregate [default: wait].
    #[arg(long, value_enum)]
    pub on_dead_letter: Option<OnDeadLetter>,

    /// What happens to a row once its event is delivered [default: mark].
    #[arg(long, value_enum)]
    pub on_publish: Option<OnPublish>,

    /// JetStream stream for the NATS sink [default: OUTBOX].
    #[arg(long, env = "OUTBOX_NATS_STREAM")]
    pub nats_stream: Option<String>,

    /// Serve GET /metrics (Prometheus), /healthz and /readyz on this address, e.g.
    /// 0.0.0.0:9090 (off unless set; also `[http] listen`).
    #[arg(long, env = "OUTBOX_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// The web console (served under / on --listen).
    #[command(flatten)]
    pub console: ConsoleToken,

    /// CDC: a Debezium connector registration (the JSON POSTed to Kafka Connect). Its
    /// database.*, slot.name, publication.name, table.include.list and the outbox
    /// EventRouter's transforms.<name>.* options are honoured; --database-url overrides
    /// database.*.
    #[arg(long, value_name = "FILE")]
    pub debezium_connector: Option<PathBuf>,

    /// CDC: logical replication slot, created when missing [default: outbox_relay, or the
    /// connector's slot.name].
    #[arg(long)]
    pub slot: Option<String>,

    /// CDC: publication, created when missing [default: outbox_relay, or the connector's
    /// publication.name].
    #[arg(long)]
    pub publication: Option<String>,

    /// Poll even though CDC reads the outbox table (a logical replication slot streams it).
    /// CDC never marks rows published: every event it delivered is delivered again.
    #[arg(long)]
    pub allow_with_cdc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// Poll the outbox table (FOR UPDATE SKIP LOCKED, LISTEN/NOTIFY wake-ups).
    Poll,
    /// PostgreSQL logical replication.
    Cdc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnDeadLetter {
    /// Later events of the aggregate wait until the dead letter is replayed or purged.
    Wait,
    /// Later events of the aggregate are delivered.
    Proceed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPublish {
    /// Set `published_at` (history kept until `outbox cleanup`).
    Mark,
    /// Delete the row (no history; much less database work per event).
    Delete,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter (by its id or the event's id) in full, as JSON.
    Show {
        /// Dead-letter id or event id.
        id: String,
    },
    /// Move dead letters back into the outbox, keeping their id and order (all when no ID).
    Replay {
        /// Dead-letter ids or event ids.
        ids: Vec<String>,
    },
    /// Delete dead letters for good; later events of their aggregates proceed. With no ID,
    /// every dead letter (on a terminal, after asking, unless `--all`).
    Purge {
        /// Dead-letter ids or event ids.
        ids: Vec<String>,
        /// Purge every dead letter without asking.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,

    /// For cron jobs and exec probes: print one line and exit 1 when the oldest pending event
    /// is older than --max-age or dead letters exist (unless --allow-dead-letters), else 0.
    #[arg(long)]
    pub check: bool,

    /// With --check: the oldest pending event may be this old.
    #[arg(long, value_parser = outbox_relay::duration::parse, default_value = "5m")]
    pub max_age: std::time::Duration,

    /// With --check: dead letters do not fail the check.
    #[arg(long)]
    pub allow_dead_letters: bool,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Address to serve the console on; 127.0.0.1 keeps it on this machine.
    #[arg(
        long,
        env = "OUTBOX_CONSOLE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: String,

    /// The relay's topic template, for the overview's counts per topic (as `outbox relay
    /// --topic`; also `[relay] topic`) [default: {aggregate_type:lower}-events].
    #[arg(long, value_name = "TEMPLATE")]
    pub topic: Option<String>,

    #[command(flatten)]
    pub console: ConsoleToken,
}

/// `--console-token` / `OUTBOX_CONSOLE_TOKEN`, for the relay's console and `outbox console`.
#[derive(Debug, Args)]
pub struct ConsoleToken {
    /// The token the web console's actions (replay, purge) ask for; without one they are
    /// disabled.
    #[arg(
        long = "console-token",
        env = "OUTBOX_CONSOLE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Retention: delete published events older than this (e.g. 7d, 12h).
    #[arg(long, value_parser = outbox_relay::duration::parse)]
    pub older_than: std::time::Duration,

    /// Clean a consumer's inbox instead (`outbox_inbox` rows and per-aggregate positions
    /// older than --older-than); keep them longer than any redelivery can come late.
    #[arg(long)]
    pub inbox: bool,

    /// Rows deleted per transaction.
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: i64,

    /// Only count what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Orders to create.
    #[arg(long, default_value_t = 3000)]
    pub orders: usize,

    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,

    /// Share of publishes the demo sink fails at random (retries show).
    #[arg(long, default_value_t = 0.03)]
    pub failure_rate: f64,

    /// Directory for the demo database and the delivered-events file.
    #[arg(long, default_value = "outbox-demo")]
    pub dir: PathBuf,
}
