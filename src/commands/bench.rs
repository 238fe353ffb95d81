//! `outbox bench`: the project's benchmark. Every scenario prints its setup beside its figures;
//! compare only figures from one run (the machine may be shared and noisy).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use outbox_relay::sink::{self, SinkOptions};
use outbox_relay::source::poll::PollOptions;
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::{Relay, RelayConfig, RetryPolicy, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::CliError;

/// Name of the database the benchmark creates, fills and drops. Never any other.
const BENCH_DB: &str = "outbox_bench";
/// JetStream stream the benchmark publishes to (deleted before and after each run).
const BENCH_STREAM: &str = "OUTBOX_BENCH";
/// Replication slot (and publication) of the CDC drain; dropped after each run.
#[cfg(feature = "cdc")]
const BENCH_SLOT: &str = "outbox_bench_cdc";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Drain a backlog of --events into the sink.
    Drain,
    /// Drain the same backlog with --history published rows retained, beside a drain without.
    History,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all).
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,

    /// PostgreSQL server to use. The benchmark creates, fills and drops its own database
    /// `outbox_bench` there and touches nothing else.
    #[arg(
        long,
        env = "OUTBOX_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg: String,

    /// Sink URL (nats://…, noop:, file:…). NATS publishes go to the stream OUTBOX_BENCH.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub sink: String,

    /// Events in the backlog.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,

    /// Distinct aggregates the backlog is spread over.
    #[arg(long, default_value_t = 10_000)]
    pub aggregates: usize,

    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,

    /// Published rows retained for the history scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub history: usize,

    /// Relay batch size.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,

    /// Relay workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,

    /// What the relay does with a delivered row: mark it published or delete it.
    #[arg(long, value_enum, default_value = "mark")]
    pub on_publish: crate::cli::OnPublish,

    /// Sources the drain scenario measures, one drain each, in this order: poll, cdc (e.g.
    /// `--source poll,cdc`) [default: poll]. The history scenario uses poll.
    #[arg(long = "source", value_enum, value_delimiter = ',')]
    pub sources: Vec<crate::cli::SourceKind>,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
struct DrainResult {
    scenario: &'static str,
    source: &'static str,
    sink: String,
    events: usize,
    aggregates: usize,
    payload_bytes: usize,
    history_rows: usize,
    batch_size: usize,
    workers: usize,
    on_publish: crate::cli::OnPublish,
    seconds: f64,
    events_per_second: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    machine: Machine,
    postgres: Vec<(String, String)>,
    results: Vec<DrainResult>,
    ratios: Vec<(String, f64)>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory_gib: f64,
}

pub async fn run(args: &BenchArgs) -> Result<(), CliError> {
    if args.events == 0 || args.aggregates == 0 {
        return Err(CliError::usage(
            "--events and --aggregates must be at least 1",
        ));
    }
    let scenarios = if args.scenarios.is_empty() {
        vec![Scenario::Drain, Scenario::History]
    } else {
        args.scenarios.clone()
    };
    let admin = admin_pool(&args.pg).await?;
    let mut report = Report {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: machine(),
        postgres: pg_settings(&admin).await?,
        results: Vec::new(),
        ratios: Vec::new(),
    };
    let mut empty: Option<f64> = None;
    for scenario in scenarios {
        match scenario {
            Scenario::Drain => {
                let sources = if args.sources.is_empty() {
                    vec![crate::cli::SourceKind::Poll]
                } else {
                    args.sources.clone()
                };
                for source in sources {
                    let r = drain_from(args, &admin, 0, "drain", source).await?;
                    if source == crate::cli::SourceKind::Poll {
                        empty = Some(r.events_per_second);
                    }
                    report.results.push(r);
                }
            }
            Scenario::History => {
                let base = match empty {
                    Some(rate) => rate,
                    None => {
                        let r = drain(args, &admin, 0, "history-0").await?;
                        let rate = r.events_per_second;
                        report.results.push(r);
                        rate
                    }
                };
                let r = drain(args, &admin, args.history, "history").await?;
                report.ratios.push((
                    format!("drain rate with {} published rows / without", args.history),
                    r.events_per_second / base,
                ));
                report.results.push(r);
            }
        }
    }
    drop_bench_db(&admin).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| CliError::runtime(e.to_string()))?
        );
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn admin_pool(url: &str) -> Result<sqlx::PgPool, CliError> {
    if !url.starts_with("postgres") {
        return Err(CliError::usage("--pg must be a postgres:// URL"));
    }
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| {
            CliError::usage(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                outbox_relay::redact_url(url)
            ))
        })
}

fn bench_url(admin_url: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin_url, String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    format!("{base}/{BENCH_DB}{query}")
}

async fn drop_bench_db(admin: &sqlx::PgPool) -> Result<(), CliError> {
    // A replication slot of the CDC drain (left by a failed run) would keep the database.
    for sql in [
        format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE database = '{BENCH_DB}' AND active_pid IS NOT NULL"
        ),
        format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = '{BENCH_DB}' AND NOT active"
        ),
    ] {
        let _ = sqlx::query(&sql).execute(admin).await;
    }
    sqlx::query(&format!("DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))
        .execute(admin)
        .await?;
    Ok(())
}

fn progress(msg: &str) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{msg}");
    } else {
        let _ = writeln!(err, "{msg}");
    }
}

async fn drain(
    args: &BenchArgs,
    admin: &sqlx::PgPool,
    history: usize,
    name: &'static str,
) -> Result<DrainResult, CliError> {
    drain_from(args, admin, history, name, crate::cli::SourceKind::Poll).await
}

async fn drain_from(
    args: &BenchArgs,
    admin: &sqlx::PgPool,
    history: usize,
    name: &'static str,
    source: crate::cli::SourceKind,
) -> Result<DrainResult, CliError> {
    drop_bench_db(admin).await?;
    sqlx::query(&format!("CREATE DATABASE {BENCH_DB}"))
        .execute(admin)
        .await?;
    let url = bench_url(&args.pg);
    let store = Store::connect(
        &url,
        &ConnectOptions {
            max_connections: args.workers as u32 + 3,
            ..ConnectOptions::default()
        },
    )
    .await?;
    store.migrate().await?;
    let pool = store
        .pg_pool()
        .cloned()
        .ok_or_else(|| CliError::runtime("not PostgreSQL"))?;
    let note = args.payload_bytes.saturating_sub(110);
    // CDC streams what is written after its slot exists: create it before the backlog.
    #[cfg(feature = "cdc")]
    if source == crate::cli::SourceKind::Cdc {
        use outbox_relay::source::cdc::{slot, TableName};
        let table = TableName::parse("public.outbox")?;
        slot::ensure_publication(&pool, BENCH_SLOT, &[table], true).await?;
        slot::ensure_slot(&pool, BENCH_SLOT, true).await?;
    }
    #[cfg(not(feature = "cdc"))]
    if source == crate::cli::SourceKind::Cdc {
        return Err(CliError::usage("this build has no CDC source"));
    }
    if history > 0 {
        let chunk = 250_000;
        let mut done = 0;
        while done < history {
            let n = chunk.min(history - done);
            progress(&format!(
                "[{name}] loading published history: {done}/{history}"
            ));
            sqlx::query(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at, published_at)
                 SELECT 'BenchOrder', 'old-' || (g % 50000), 'OrderCreated',
                        jsonb_build_object('order_id', 'old-' || (g % 50000), 'n', g, 'note', repeat('x', $2::int)),
                        now() - interval '2 days', now() - interval '1 day'
                 FROM generate_series(1, $1::bigint) AS g",
            )
            .bind(n as i64)
            .bind(note as i32)
            .execute(&pool)
            .await?;
            done += n;
        }
    }
    progress(&format!(
        "[{name}] loading a backlog of {} events",
        args.events
    ));
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'BenchOrder', 'order-' || (g % $2::bigint), 'OrderCreated',
                jsonb_build_object('order_id', 'order-' || (g % $2::bigint), 'n', g,
                                   'customer_id', 'customer-' || (g % 977), 'total', (g % 1000) / 10.0,
                                   'status', 'pending', 'note', repeat('x', $3::int))
         FROM generate_series(1, $1::bigint) AS g ORDER BY g",
    )
    .bind(args.events as i64)
    .bind(args.aggregates as i64)
    .bind(note as i32)
    .execute(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(&pool).await?;

    let mut options = SinkOptions::default();
    #[cfg(feature = "nats")]
    {
        options.nats.stream = BENCH_STREAM.into();
        reset_stream(&args.sink).await;
    }
    #[cfg(feature = "kafka")]
    reset_kafka_topic(&args.sink).await;
    let sink = sink::from_url(&args.sink, &options).await?;
    #[cfg(feature = "cdc")]
    if source == crate::cli::SourceKind::Cdc {
        return cdc_drain(args, store, &url, sink, name).await;
    }
    let relay = Arc::new(Relay::new(
        store.clone(),
        sink,
        Router::default(),
        RelayConfig {
            poll: PollOptions {
                batch_size: args.batch_size,
                poll_interval: Duration::from_millis(100),
                dead_letters_block: true,
                delete_published: args.on_publish == crate::cli::OnPublish::Delete,
            },
            workers: args.workers,
            max_in_flight: args.batch_size,
            retry: RetryPolicy::default(),
        },
    ));
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = {
        let relay = relay.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { relay.run(shutdown).await })
    };
    let deadline = started + Duration::from_secs(600);
    let mut last_report = Instant::now();
    loop {
        let delivered = stats.snapshot().delivered as usize;
        if delivered >= args.events {
            break;
        }
        if task.is_finished() || Instant::now() > deadline {
            shutdown.cancel();
            return Err(CliError::runtime(format!(
                "[{name}] the relay stopped or stalled after delivering {delivered}/{} events",
                args.events
            )));
        }
        if last_report.elapsed() > Duration::from_millis(250) {
            progress(&format!("[{name}] drained {delivered}/{}", args.events));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    match task.await {
        Ok(r) => r?,
        Err(e) => return Err(CliError::runtime(format!("relay task: {e}"))),
    }
    progress("");
    #[cfg(feature = "nats")]
    reset_stream(&args.sink).await;
    #[cfg(feature = "kafka")]
    reset_kafka_topic(&args.sink).await;
    pool.close().await;
    Ok(DrainResult {
        scenario: name,
        source: "poll",
        sink: outbox_relay::redact_url(&args.sink),
        events: args.events,
        aggregates: args.aggregates,
        payload_bytes: args.payload_bytes,
        history_rows: history,
        batch_size: args.batch_size,
        workers: args.workers,
        on_publish: args.on_publish,
        seconds: secs,
        events_per_second: args.events as f64 / secs,
    })
}

/// The CDC drain: the backlog streamed from the slot created before it was written.
#[cfg(feature = "cdc")]
async fn cdc_drain(
    args: &BenchArgs,
    store: Store,
    url: &str,
    sink: Arc<dyn outbox_relay::Sink>,
    name: &'static str,
) -> Result<DrainResult, CliError> {
    use outbox_relay::source::cdc::{slot, CdcOptions, CdcRelay, CdcRouting};
    let pool = store
        .pg_pool()
        .cloned()
        .ok_or_else(|| CliError::runtime("not PostgreSQL"))?;
    let options = CdcOptions {
        slot: BENCH_SLOT.into(),
        publication: BENCH_SLOT.into(),
        ..CdcOptions::default()
    };
    let batch_size = options.batch_size;
    let relay = Arc::new(CdcRelay::new(
        store,
        url,
        sink,
        CdcRouting::Router(Router::default()),
        options,
    ));
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = {
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        tokio::spawn(async move { relay.run(shutdown).await })
    };
    let deadline = started + Duration::from_secs(600);
    let mut last_report = Instant::now();
    let outcome = loop {
        let delivered = stats.snapshot().delivered as usize;
        if delivered >= args.events {
            break Ok(started.elapsed().as_secs_f64());
        }
        if task.is_finished() || Instant::now() > deadline {
            break Err(CliError::runtime(format!(
                "[{name}/cdc] the relay stopped or stalled after delivering {delivered}/{} events",
                args.events
            )));
        }
        if last_report.elapsed() > Duration::from_millis(250) {
            progress(&format!("[{name}/cdc] drained {delivered}/{}", args.events));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    shutdown.cancel();
    let stopped = task.await;
    progress("");
    // The slot would keep the database (and WAL) around.
    let dropped = slot::drop_slot(&pool, BENCH_SLOT, Duration::from_secs(10)).await;
    #[cfg(feature = "nats")]
    reset_stream(&args.sink).await;
    #[cfg(feature = "kafka")]
    reset_kafka_topic(&args.sink).await;
    pool.close().await;
    let secs = outcome?;
    match stopped {
        Ok(r) => r?,
        Err(e) => return Err(CliError::runtime(format!("relay task: {e}"))),
    }
    dropped?;
    Ok(DrainResult {
        scenario: name,
        source: "cdc",
        sink: outbox_relay::redact_url(&args.sink),
        events: args.events,
        aggregates: args.aggregates,
        payload_bytes: args.payload_bytes,
        history_rows: 0,
        batch_size,
        workers: 1,
        on_publish: args.on_publish,
        seconds: secs,
        events_per_second: args.events as f64 / secs,
    })
}

/// Deletes the benchmark's stream so each run starts empty and leaves nothing behind.
#[cfg(feature = "nats")]
async fn reset_stream(sink: &str) {
    if !sink.starts_with("nats://") {
        return;
    }
    let server = sink.split('?').next().unwrap_or(sink);
    if let Ok(Ok(client)) =
        tokio::time::timeout(Duration::from_secs(5), async_nats::connect(server)).await
    {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(BENCH_STREAM).await;
    }
}

/// Deletes the benchmark's Kafka topic (`benchorder-events`, the default template's topic
/// for its `BenchOrder` events) so each run starts empty and leaves nothing behind.
#[cfg(feature = "kafka")]
async fn reset_kafka_topic(sink: &str) {
    if sink.starts_with("kafka://") {
        let options = outbox_relay::sink::kafka::KafkaOptions::default();
        let _ = tokio::time::timeout(
            Duration::from_secs(15),
            outbox_relay::sink::kafka::delete_topics(sink, &options, &["benchorder-events"]),
        )
        .await;
    }
}

async fn pg_settings(pool: &sqlx::PgPool) -> Result<Vec<(String, String)>, CliError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings
         WHERE name IN ('server_version', 'shared_buffers', 'synchronous_commit', 'fsync', 'wal_level', 'max_wal_size')
         ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
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
    }
}

fn print_table(r: &Report) {
    println!("outbox bench, {}", r.date);
    println!(
        "machine: {} CPUs ({}), {:.1} GiB",
        r.machine.cpus, r.machine.cpu_model, r.machine.memory_gib
    );
    println!(
        "postgres: {}",
        r.postgres
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!(
        "{:<10} {:<6} {:<24} {:>8} {:>10} {:>8} {:>9} {:>6} {:>7} {:>9} {:>12}",
        "scenario",
        "source",
        "sink",
        "events",
        "aggregates",
        "payload",
        "history",
        "batch",
        "workers",
        "seconds",
        "events/s"
    );
    for d in &r.results {
        println!(
            "{:<10} {:<6} {:<24} {:>8} {:>10} {:>8} {:>9} {:>6} {:>7} {:>9.2} {:>12.0}",
            d.scenario,
            d.source,
            d.sink,
            d.events,
            d.aggregates,
            d.payload_bytes,
            d.history_rows,
            d.batch_size,
            d.workers,
            d.seconds,
            d.events_per_second
        );
    }
    for (what, ratio) in &r.ratios {
        println!("{what}: {ratio:.3}");
    }
}
