//! `outbox bench`: the project's benchmark. Six scenarios, each printing its setup beside its
//! figures, a human table and (with `--json`) a machine-readable report, and the targets of the
//! performance issue marked met or not. Compare only figures from one run: the machine may be
//! shared and noisy.
//!
//! The benchmark creates, fills and drops its own database (`outbox_bench_<pid>`), replication
//! slot, JetStream stream `OUTBOX_BENCH` and Kafka topic `benchorder-events`; it touches
//! nothing else.

mod drain;
mod footprint;
mod steady;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use outbox_relay::sink::{self, SinkOptions};
use outbox_relay::source::poll::PollOptions;
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::{Relay, RelayConfig, RetryPolicy, Router, Sink, Stats};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cli::{OnPublish, SourceKind};
use crate::error::CliError;

/// JetStream stream the benchmark publishes to (deleted before and after each run).
const BENCH_STREAM: &str = "OUTBOX_BENCH";

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
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all six).
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,

    /// PostgreSQL server. The benchmark creates and drops its own database there.
    #[arg(
        long,
        env = "OUTBOX_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg: String,

    /// Sinks for the drain scenario, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "noop:,nats://127.0.0.1:4222,kafka://127.0.0.1:19092"
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
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "10s")]
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

    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub scenario: Scenario,
    /// What was measured, how: events, sink, source, batch size…
    pub setup: BTreeMap<&'static str, Value>,
    /// The figures.
    pub results: BTreeMap<&'static str, f64>,
}

impl Measurement {
    fn new(scenario: Scenario, setup: Value) -> Self {
        let setup = match setup {
            Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| (&*Box::leak(k.into_boxed_str()), v))
                .collect(),
            _ => BTreeMap::new(),
        };
        Measurement {
            scenario,
            setup,
            results: BTreeMap::new(),
        }
    }

    fn with(mut self, name: &'static str, value: f64) -> Self {
        self.results.insert(name, value);
        self
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.results.get(name).copied()
    }

    fn is(&self, key: &str, value: &str) -> bool {
        self.setup.get(key).and_then(Value::as_str) == Some(value)
    }
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    command: String,
    machine: Machine,
    postgres: BTreeMap<String, String>,
    measurements: Vec<Measurement>,
    targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory_gib: f64,
    load_average_at_start: String,
}

#[derive(Debug, Serialize)]
struct Target {
    what: String,
    target: String,
    measured: String,
    met: Option<bool>,
}

pub async fn run(args: &BenchArgs) -> Result<(), CliError> {
    if args.events == 0 || args.aggregates == 0 || args.rate == 0 || args.writers == 0 {
        return Err(CliError::usage(
            "--events, --aggregates, --rate and --writers must be at least 1",
        ));
    }
    let mut scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::Drain,
            Scenario::Steady,
            Scenario::WriteOverhead,
            Scenario::History,
            Scenario::Footprint,
            Scenario::Ceiling,
        ]
    } else {
        args.scenarios.clone()
    };
    scenarios.dedup();
    let db = BenchDb::connect(&args.pg).await?;
    let mut report = Report {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(),
        postgres: pg_settings(&db.admin).await?,
        measurements: Vec::new(),
        targets: Vec::new(),
    };
    let outcome = run_scenarios(args, &db, &scenarios, &mut report.measurements).await;
    db.drop().await;
    outcome?;
    report.targets = targets(&report.measurements, args);
    progress("");
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| CliError::runtime(e.to_string()))?
        );
    } else {
        print_report(&report);
    }
    Ok(())
}

async fn run_scenarios(
    args: &BenchArgs,
    db: &BenchDb,
    scenarios: &[Scenario],
    out: &mut Vec<Measurement>,
) -> Result<(), CliError> {
    for scenario in scenarios {
        match scenario {
            Scenario::Drain => drain::drains(args, db, out).await?,
            Scenario::Steady => steady::steady(args, db, out).await?,
            Scenario::WriteOverhead => steady::write_overhead(args, db, out).await?,
            Scenario::History => drain::history(args, db, out).await?,
            Scenario::Footprint => footprint::footprint(args, db, out).await?,
            Scenario::Ceiling => drain::ceiling(args, db, out).await?,
        }
    }
    Ok(())
}

/// The benchmark's private database on the server.
pub struct BenchDb {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl BenchDb {
    async fn connect(admin_url: &str) -> Result<BenchDb, CliError> {
        if !admin_url.starts_with("postgres") {
            return Err(CliError::usage("--pg must be a postgres:// URL"));
        }
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(admin_url)
            .await
            .map_err(|e| {
                CliError::usage(format!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    outbox_relay::redact_url(admin_url)
                ))
            })?;
        let name = format!("outbox_bench_{}", std::process::id());
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url, String::new()),
        };
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = format!("{base}/{name}{query}");
        Ok(BenchDb { admin, name, url })
    }

    /// The slot name for this run (slots are cluster-wide).
    #[cfg_attr(not(feature = "cdc"), allow(dead_code))]
    fn slot(&self) -> String {
        format!("{}_cdc", self.name)
    }

    /// Drops and re-creates the database; returns a migrated store on it.
    async fn fresh(&self, max_connections: u32) -> Result<Store, CliError> {
        self.drop().await;
        sqlx::query(&format!("CREATE DATABASE {}", self.name))
            .execute(&self.admin)
            .await?;
        let store = Store::connect(
            &self.url,
            &ConnectOptions {
                max_connections,
                asynchronous_commit: true,
                ..ConnectOptions::default()
            },
        )
        .await?;
        store.migrate().await?;
        Ok(store)
    }

    /// A connection pool as an application would open it (default session settings).
    async fn app_pool(&self, max_connections: u32) -> Result<sqlx::PgPool, CliError> {
        app_pool(&self.url, max_connections).await
    }

    async fn drop(&self) {
        let name = &self.name;
        for sql in [
            format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE database = '{name}' AND active_pid IS NOT NULL"
            ),
            format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = '{name}' AND NOT active"
            ),
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ] {
            let _ = sqlx::query(&sql).execute(&self.admin).await;
        }
    }

    /// Creates the CDC publication and slot, before the events it should see are written.
    #[cfg(feature = "cdc")]
    async fn create_slot(&self, store: &Store) -> Result<(), CliError> {
        use outbox_relay::store::replication::{self as slot, TableName};
        let pool = pg(store)?;
        let table = TableName::parse("public.outbox")?;
        slot::ensure_publication(pool, &self.slot(), &[table], true).await?;
        slot::ensure_slot(pool, &self.slot(), true).await?;
        Ok(())
    }
}

fn pg(store: &Store) -> Result<&sqlx::PgPool, CliError> {
    store
        .pg_pool()
        .ok_or_else(|| CliError::runtime("the benchmark needs PostgreSQL"))
}

/// Inserts `events` events (`seq` order = `n` order) over `aggregates` aggregates.
async fn load_backlog(
    store: &Store,
    args: &BenchArgs,
    events: usize,
    label: &str,
) -> Result<(), CliError> {
    let pool = pg(store)?;
    let note = args.payload_bytes.saturating_sub(110) as i32;
    in_chunks(events, &format!("[{label}] loading"), |first, n| {
        sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'BenchOrder', 'order-' || (g % $2::bigint), 'OrderCreated',
                    jsonb_build_object('order_id', 'order-' || (g % $2::bigint), 'n', g,
                                       'customer_id', 'customer-' || (g % 977), 'total', (g % 1000) / 10.0,
                                       'status', 'pending', 'note', repeat('x', $3::int))
             FROM generate_series($4::bigint, $4::bigint + $1::bigint - 1) AS g ORDER BY g",
        )
        .bind(n as i64)
        .bind(args.aggregates as i64)
        .bind(note)
        .bind(first as i64)
        .execute(pool)
    })
    .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    Ok(())
}

/// Runs `insert(first, n)` over `rows` rows in chunks of 250k, printing `what first/rows`.
async fn in_chunks<F, Fut>(rows: usize, what: &str, mut insert: F) -> Result<(), CliError>
where
    F: FnMut(usize, usize) -> Fut,
    Fut: std::future::Future<Output = Result<sqlx::postgres::PgQueryResult, sqlx::Error>>,
{
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(250_000);
        progress(&format!("{what} {done}/{rows}"));
        insert(done, n).await?;
        done += n;
    }
    Ok(())
}

/// Deletes the benchmark's NATS stream and Kafka topic so each run starts empty.
async fn reset_sink(url: &str) {
    let _ = url; // unused when built without the NATS and Kafka sinks
    #[cfg(feature = "nats")]
    if url.starts_with("nats://") {
        let server = url.split('?').next().unwrap_or(url);
        if let Ok(Ok(client)) =
            tokio::time::timeout(Duration::from_secs(5), async_nats::connect(server)).await
        {
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(BENCH_STREAM).await;
        }
    }
    #[cfg(feature = "kafka")]
    if url.starts_with("kafka://") {
        let options = outbox_relay::sink::kafka::KafkaOptions::default();
        let _ = tokio::time::timeout(
            Duration::from_secs(15),
            outbox_relay::sink::kafka::delete_topics(url, &options, &["benchorder-events"]),
        )
        .await;
    }
}

async fn open_sink(url: &str) -> Result<Arc<dyn Sink>, CliError> {
    reset_sink(url).await;
    #[allow(unused_mut)]
    let mut options = SinkOptions::default();
    #[cfg(feature = "nats")]
    {
        options.nats.stream = BENCH_STREAM.into();
    }
    Ok(sink::from_url(url, &options).await?)
}

/// The application's pool: default session settings, as a service using the library has.
async fn app_pool(url: &str, max_connections: u32) -> Result<sqlx::PgPool, CliError> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await?)
}

/// A relay running in this process, polling or CDC.
struct Running {
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), outbox_relay::Error>>,
}

impl Running {
    async fn start(
        source: SourceKind,
        db: &BenchDb,
        store: &Store,
        sink: Arc<dyn Sink>,
        args: &BenchArgs,
        on_publish: OnPublish,
    ) -> Result<Running, CliError> {
        let shutdown = CancellationToken::new();
        match source {
            SourceKind::Poll => {
                let relay = Relay::new(
                    store.clone(),
                    sink,
                    Router::default(),
                    RelayConfig {
                        poll: PollOptions {
                            batch_size: args.batch_size,
                            poll_interval: Duration::from_secs(1),
                            dead_letters_block: true,
                            delete_published: on_publish == OnPublish::Delete,
                        },
                        workers: args.workers,
                        max_in_flight: args.batch_size,
                        retry: RetryPolicy::default(),
                    },
                );
                let stats = relay.stats();
                Ok(Running::spawn(stats, shutdown, |token| async move {
                    relay.run(token).await
                }))
            }
            #[cfg(feature = "cdc")]
            SourceKind::Cdc => {
                use outbox_relay::source::cdc::{CdcOptions, CdcRelay, CdcRouting};
                let relay = CdcRelay::new(
                    store.clone(),
                    &db.url,
                    sink,
                    CdcRouting::Router(Router::default()),
                    CdcOptions {
                        slot: db.slot(),
                        publication: db.slot(),
                        ..CdcOptions::default()
                    },
                );
                let stats = relay.stats();
                Ok(Running::spawn(stats, shutdown, |token| async move {
                    relay.run(token).await
                }))
            }
            #[cfg(not(feature = "cdc"))]
            SourceKind::Cdc => {
                let _ = db;
                Err(CliError::usage("this build has no CDC source"))
            }
        }
    }

    /// Runs a relay (`run` given its shutdown token) as a task.
    fn spawn<F, Fut>(stats: Arc<Stats>, shutdown: CancellationToken, run: F) -> Running
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = Result<(), outbox_relay::Error>> + Send + 'static,
    {
        let task = tokio::spawn(run(shutdown.clone()));
        Running {
            stats,
            shutdown,
            task,
        }
    }

    /// Waits until `n` events were delivered (bounded), reporting progress.
    async fn wait_delivered(&self, n: usize, label: &str, limit: Duration) -> Result<(), CliError> {
        let deadline = Instant::now() + limit;
        let mut last = Instant::now();
        loop {
            let delivered = self.stats.snapshot().delivered as usize;
            if delivered >= n {
                return Ok(());
            }
            if self.task.is_finished() || Instant::now() > deadline {
                return Err(CliError::runtime(format!(
                    "[{label}] the relay stopped or stalled after delivering {delivered}/{n} events"
                )));
            }
            if last.elapsed() > Duration::from_millis(250) {
                progress(&format!("[{label}] delivered {delivered}/{n}"));
                last = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) -> Result<(), CliError> {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(e)) => Err(CliError::runtime(format!("relay task: {e}"))),
            Err(_) => Err(CliError::runtime("the relay did not stop within 60s")),
        }
    }
}

fn progress(msg: &str) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{msg}");
    } else if !msg.is_empty() {
        let _ = writeln!(err, "{msg}");
    }
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds (user + system) used so far by every live process whose command name is `comm`
/// (all of a PostgreSQL server's backends are named `postgres`); `None` when none runs here.
fn cpu_seconds_named(comm: &str) -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim_end() == comm {
            if let Some(cpu) = cpu_seconds(pid) {
                *total.get_or_insert(0.0) += cpu;
            }
        }
    }
    total
}

/// Where the CPU went during a measurement: this process (the relay, or the sink alone), the
/// PostgreSQL server and the broker, when they run on this machine. Processes that exit in
/// between (a short-lived autovacuum worker) are not counted.
struct CpuMeter {
    broker: Option<&'static str>,
    before: [Option<f64>; 3],
}

impl CpuMeter {
    fn start(sink_url: &str) -> Self {
        let local = url::Url::parse(sink_url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| h == "127.0.0.1" || h == "localhost" || h == "[::1]")
            })
            .unwrap_or(false);
        let broker = match sink_url.split(':').next() {
            Some("nats") if local => Some("nats-server"),
            Some("kafka") if local => Some("tansu"),
            _ => None,
        };
        let mut meter = CpuMeter {
            broker,
            before: [None; 3],
        };
        meter.before = meter.read();
        meter
    }

    fn read(&self) -> [Option<f64>; 3] {
        [
            cpu_seconds(std::process::id()),
            cpu_seconds_named("postgres"),
            self.broker.and_then(cpu_seconds_named),
        ]
    }

    /// `<who>_cpu_seconds_per_100k` figures for `events` events, `this_process` naming the
    /// figure of this process.
    fn per_100k(&self, events: usize, this_process: &'static str) -> Vec<(&'static str, f64)> {
        let names = [
            this_process,
            "postgres_cpu_seconds_per_100k",
            "broker_cpu_seconds_per_100k",
        ];
        names
            .into_iter()
            .zip(self.read())
            .zip(self.before)
            .filter_map(|((name, after), before)| {
                Some((name, (after? - before?) / events.max(1) as f64 * 100_000.0))
            })
            .collect()
    }
}

async fn pg_settings(pool: &sqlx::PgPool) -> Result<BTreeMap<String, String>, CliError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings
         WHERE name IN ('server_version', 'shared_buffers', 'synchronous_commit', 'fsync',
                        'wal_level', 'max_wal_size', 'checkpoint_timeout')
         ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<f64>().ok())
                })
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        memory_gib: (memory_gib * 10.0).round() / 10.0,
        load_average_at_start: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The performance issue's targets, evaluated against this run.
fn targets(ms: &[Measurement], args: &BenchArgs) -> Vec<Target> {
    let mut t = Vec::new();
    let find = |scenario: Scenario, pairs: &[(&str, &str)]| {
        ms.iter()
            .find(|m| m.scenario == scenario && pairs.iter().all(|(k, v)| m.is(k, v)))
    };
    let rate = |m: Option<&Measurement>| m.and_then(|m| m.get("events_per_second"));
    let fmt_rate =
        |r: Option<f64>| r.map_or("not measured".to_string(), |r| format!("{r:.0} events/s"));
    let nats = args
        .sinks
        .iter()
        .find(|s| s.starts_with("nats"))
        .cloned()
        .unwrap_or_default();
    let kafka = args
        .sinks
        .iter()
        .find(|s| s.starts_with("kafka"))
        .cloned()
        .unwrap_or_default();
    for mode in ["mark", "delete"] {
        let drain = rate(find(
            Scenario::Drain,
            &[("source", "poll"), ("sink", &nats), ("on_publish", mode)],
        ));
        let ceiling = rate(find(
            Scenario::Ceiling,
            &[("source", "poll"), ("on_publish", mode)],
        ));
        if drain.is_none() && ceiling.is_none() {
            continue;
        }
        t.push(Target {
            what: format!("polling drain into NATS JetStream ({mode} mode)"),
            target: "≥ 50,000 events/s".into(),
            measured: fmt_rate(drain),
            met: drain.map(|r| r >= 50_000.0),
        });
        let share = drain.zip(ceiling).map(|(d, c)| d / c);
        t.push(Target {
            what: format!("polling drain into NATS / SQL ceiling ({mode} mode)"),
            target: "≥ 70%".into(),
            measured: share.map_or("not measured".into(), |s| format!("{:.0}%", s * 100.0)),
            met: share.map(|s| s >= 0.7),
        });
    }
    let cdc_nats = rate(find(Scenario::Drain, &[("source", "cdc"), ("sink", &nats)]));
    t.push(Target {
        what: "CDC drain into NATS JetStream".into(),
        target: "≥ 80,000 events/s".into(),
        measured: fmt_rate(cdc_nats),
        met: cdc_nats.map(|r| r >= 80_000.0),
    });
    for (source, mode) in [("poll", "mark"), ("poll", "delete"), ("cdc", "")] {
        let mut pairs = vec![("source", source), ("sink", kafka.as_str())];
        if !mode.is_empty() {
            pairs.push(("on_publish", mode));
        }
        let r = rate(find(Scenario::Drain, &pairs));
        if r.is_none() && source == "poll" && mode == "delete" {
            continue;
        }
        t.push(Target {
            what: format!(
                "Kafka drain, {source}{}",
                if mode.is_empty() {
                    String::new()
                } else {
                    format!(" ({mode} mode)")
                }
            ),
            target: "≥ 40,000 events/s".into(),
            measured: fmt_rate(r),
            met: r.map(|r| r >= 40_000.0),
        });
    }
    for source in ["poll", "cdc"] {
        let m = find(Scenario::Steady, &[("source", source)]);
        let p99 = m.and_then(|m| m.get("p99_ms"));
        let achieved = m.and_then(|m| m.get("achieved_rate")).unwrap_or(0.0);
        let kept_up = m.and_then(|m| m.get("kept_up")) == Some(1.0);
        t.push(Target {
            what: format!("steady {} events/s, {source}: p99 commit → ack", args.rate),
            target: "≤ 10 ms, at the offered rate".into(),
            measured: p99.map_or("not measured".into(), |v| {
                format!("{v:.1} ms at {achieved:.0}/s")
            }),
            met: p99.map(|v| v <= 10.0 && kept_up),
        });
    }
    let overhead = find(Scenario::WriteOverhead, &[]).and_then(|m| m.get("overhead_percent"));
    t.push(Target {
        what: "write overhead of the outbox row".into(),
        target: "≤ 20%".into(),
        measured: overhead.map_or("not measured".into(), |v| format!("{v:.1}%")),
        met: overhead.map(|v| v <= 20.0),
    });
    let history = ms
        .iter()
        .filter(|m| m.scenario == Scenario::History)
        .find_map(|m| m.get("ratio"));
    t.push(Target {
        what: format!(
            "history: drain rate with {} published rows / without",
            args.history
        ),
        target: "within 10% (≥ 0.90)".into(),
        measured: history.map_or("not measured".into(), |v| format!("{v:.3}")),
        met: history.map(|v| v >= 0.9),
    });
    let rss = find(Scenario::Footprint, &[]).and_then(|m| m.get("peak_rss_mib"));
    t.push(Target {
        what: format!(
            "relay peak RSS during a {}-event drain",
            args.footprint_events
        ),
        target: "≤ 64 MB".into(),
        measured: rss.map_or("not measured".into(), |v| format!("{v:.1} MiB")),
        met: rss.map(|v| v <= 64.0),
    });
    t
}

fn print_report(r: &Report) {
    println!("outbox bench, {}", r.date);
    println!("command: {}", r.command);
    println!(
        "machine: {} CPUs ({}), {:.1} GiB, load average at start {}",
        r.machine.cpus, r.machine.cpu_model, r.machine.memory_gib, r.machine.load_average_at_start
    );
    println!(
        "postgres: {}",
        r.postgres
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for m in &r.measurements {
        let setup = m
            .setup
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        let results = m
            .results
            .iter()
            .map(|(k, v)| {
                if v.fract() == 0.0 || v.abs() >= 100.0 {
                    format!("{k}={v:.0}")
                } else {
                    format!("{k}={v:.3}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        println!();
        println!("{:?}: {setup}", m.scenario);
        println!("  {results}");
    }
    println!();
    println!("targets");
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        println!("  {:<62} {:<22} {:<20} {met}", t.what, t.target, t.measured);
    }
}
