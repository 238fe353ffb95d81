//! The command line: `outbox-bench [SCENARIO…] [flags]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Drain a backlog into each sink, from each source.
    Drain,
    /// Writers commit at a fixed rate; commit → broker-ack latency.
    Steady,
    /// The order-service transaction with and without its outbox row.
    WriteOverhead,
    /// Drain rate with no and with many published rows retained.
    History,
    /// Relay peak RSS and CPU seconds per 100k events, as a separate process.
    Footprint,
    /// The database's own limit for the same claim/mark (or WAL decode) work.
    Ceiling,
    /// The polling drain on MySQL / MariaDB (`--mysql`), each sink × mark/delete, with the
    /// bare SQL claim/settle loop's ceiling measured in the same run. Only when named.
    MysqlDrain,
}

/// Where the relay under test takes its events from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// Poll the outbox table (FOR UPDATE SKIP LOCKED, LISTEN/NOTIFY wake-ups).
    Poll,
    /// PostgreSQL logical replication.
    Cdc,
}

impl SourceKind {
    /// The name in the report's setup.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Poll => "poll",
            SourceKind::Cdc => "cdc",
        }
    }
}

/// What the polling relay under test does to a row once its event is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnPublish {
    /// Set `published_at` (history kept until `outbox cleanup`).
    Mark,
    /// Delete the row (no history; much less database work per event).
    Delete,
}

impl OnPublish {
    /// The name in the report's setup.
    pub fn name(self) -> &'static str {
        match self {
            OnPublish::Mark => "mark",
            OnPublish::Delete => "delete",
        }
    }
}

/// Whether the relay under test records its metrics into a Prometheus recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsMode {
    /// No recorder: every metric is a no-op (the library alone).
    Off,
    /// The Prometheus recorder `outbox relay --listen` installs, rendered once a second as if
    /// scraped.
    On,
}

impl MetricsMode {
    /// The name in the report's setup.
    pub fn name(self) -> &'static str {
        match self {
            MetricsMode::Off => "off",
            MetricsMode::On => "on",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "outbox-bench",
    version,
    about = "Measure the outbox relay (see BENCHMARKS.md). Creates and drops its own database, \
             replication slot, JetStream stream OUTBOX_BENCH, Kafka topic and Redis stream \
             benchorder-events and RabbitMQ queue outbox-bench.",
    after_help = "Exit status: 0 success, 2 bad usage or set-up, 1 failure while measuring."
)]
pub struct BenchArgs {
    /// Scenarios to run (default: all six).
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,

    /// PostgreSQL server. The benchmark creates and drops its own database there. Plain TCP by
    /// default, as the recorded figures were measured (the relay's own default, sslmode=prefer,
    /// would use TLS on a server that offers it: about a quarter of CDC throughput on loopback);
    /// add `?sslmode=require` to measure with TLS.
    #[arg(
        long,
        env = "OUTBOX_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    pub pg: String,

    /// MySQL / MariaDB server for the mysql-drain scenario; the benchmark creates and drops its
    /// own database there.
    #[arg(
        long,
        env = "OUTBOX_BENCH_MYSQL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    pub mysql: String,

    /// Sinks for the drain and ceiling scenarios, comma-separated. `webhook:local` is a
    /// webhook receiver in this process.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "noop:,nats://127.0.0.1:4222,kafka://127.0.0.1:19092,\
                         amqp://guest:guest@127.0.0.1:5672/%2f,redis://127.0.0.1:6379,\
                         mqtt://127.0.0.1:1883,webhook:local"
    )]
    pub sinks: Vec<String>,

    /// Sink for the steady, history and footprint scenarios.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub sink: String,

    /// Sources for the drain and steady scenarios, comma-separated.
    #[arg(
        long = "source",
        value_enum,
        value_delimiter = ',',
        default_value = "poll,cdc"
    )]
    pub sources: Vec<SourceKind>,

    /// Polling relay modes to measure, comma-separated: mark (set published_at), delete.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "mark,delete")]
    pub on_publish: Vec<OnPublish>,

    /// Drain: run each drain without (off) and/or with (on) the Prometheus recorder, in this
    /// order, e.g. off,on,off,on to measure the metrics' cost in one run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
    pub metrics: Vec<MetricsMode>,

    /// Events in each drain backlog.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,

    /// Distinct aggregates the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub aggregates: usize,

    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,

    /// Polling relay batch size.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,

    /// Polling relay workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,

    /// Steady: events committed per second.
    #[arg(long, default_value_t = 5000)]
    pub rate: u32,

    /// Steady: how long the writers run.
    #[arg(long, value_parser = outbox_relay::duration::parse, default_value = "10s")]
    pub duration: Duration,

    /// Steady and write-overhead: concurrent writers (enough for group commit to reach the
    /// steady rate with one event per transaction on a small machine).
    #[arg(long, default_value_t = 32)]
    pub writers: usize,

    /// Write-overhead: transactions per variant.
    #[arg(long, default_value_t = 20_000)]
    pub transactions: usize,

    /// History: published rows retained.
    #[arg(long, default_value_t = 1_000_000)]
    pub history: usize,

    /// Footprint: events the relay process drains.
    #[arg(long, default_value_t = 1_000_000)]
    pub footprint_events: usize,

    /// Footprint: the `outbox` binary to run as the relay process [default: `outbox` beside
    /// this executable, as `cargo build --release -p outbox-cli` leaves it].
    #[arg(long, value_name = "PATH")]
    pub outbox_bin: Option<PathBuf>,

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Log level of the relay measured in this process: error, warn, info, debug, trace (or a
    /// tracing filter) [default: error].
    #[arg(long, env = "OUTBOX_LOG")]
    pub log_level: Option<String>,
}
