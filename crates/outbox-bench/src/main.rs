//! `outbox-bench`: the project's benchmark, a binary of its own beside `outbox`. Six
//! scenarios on PostgreSQL (and `mysql-drain`, when named, on MySQL / MariaDB), each printing its setup beside its figures, a human table and (with `--json`) a
//! machine-readable report, and the targets of the performance issue marked met or not.
//! Compare only figures from one run: the machine may be shared and noisy.
//!
//! The benchmark creates, fills and drops its own database (`outbox_bench_<pid>`), replication
//! slot, JetStream stream `OUTBOX_BENCH`, Kafka topic and Redis stream `benchorder-events` and
//! RabbitMQ queue `outbox-bench`; it touches nothing else. The relay is measured in this process (drain, steady, history), except for
//! the footprint scenario, which runs the `outbox` binary as a child process.

mod args;
mod cpu;
mod db;
mod drain;
mod error;
mod footprint;
mod mysql;
mod receiver;
mod recorder;
mod report;
mod running;
mod sinks;
mod steady;
mod targets;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{BenchArgs, Scenario};
use crate::db::BenchDb;
use crate::error::BenchError;
use crate::report::{machine, print_report, progress, Measurement, Report};

/// mimalloc, as in the `outbox` binary: the relay measured in this process allocates as it
/// does there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report_error(BenchError::runtime(format!(
                "cannot start the runtime: {e}"
            )))
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report_error(e),
    }
}

fn report_error(e: BenchError) -> ExitCode {
    let message = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("error: {message}");
    ExitCode::from(e.exit_code())
}

/// Logs of the relay under test go to stderr, errors only unless `--log-level` / `OUTBOX_LOG`
/// or `RUST_LOG` say otherwise: the benchmark prints its own progress and report.
fn init_logging(args: &BenchArgs) {
    let default = "error";
    let level = args
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A line that cannot be written is dropped, not reported by a panicking `eprintln!`.
        .log_internal_errors(false)
        .init();
}

async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    if args.events == 0 || args.aggregates == 0 || args.rate == 0 || args.writers == 0 {
        return Err(BenchError::usage(
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
    // Found before anything runs, so a long run does not fail at its fifth scenario.
    let outbox_bin = if scenarios.contains(&Scenario::Footprint) {
        Some(footprint::outbox_binary(args)?)
    } else {
        None
    };
    let db = BenchDb::connect(&args.pg).await?;
    let mut report = Report {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(),
        postgres: db.pg_settings().await?,
        measurements: Vec::new(),
        targets: Vec::new(),
    };
    let outcome = run_scenarios(
        args,
        &db,
        &scenarios,
        outbox_bin.as_deref(),
        &mut report.measurements,
    )
    .await;
    db.drop().await;
    outcome?;
    report.targets = targets::targets(&report.measurements, args);
    progress("");
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| BenchError::runtime(e.to_string()))?
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
    outbox_bin: Option<&std::path::Path>,
    out: &mut Vec<Measurement>,
) -> Result<(), BenchError> {
    for scenario in scenarios {
        match scenario {
            Scenario::Drain => drain::drains(args, db, out).await?,
            Scenario::Steady => steady::steady(args, db, out).await?,
            Scenario::WriteOverhead => steady::write_overhead(args, db, out).await?,
            Scenario::History => drain::history(args, db, out).await?,
            Scenario::Footprint => {
                let bin = match outbox_bin {
                    Some(bin) => bin.to_path_buf(),
                    None => footprint::outbox_binary(args)?,
                };
                footprint::footprint(args, db, &bin, out).await?
            }
            Scenario::Ceiling => drain::ceiling(args, db, out).await?,
            Scenario::MysqlDrain => mysql::drains(args, db, out).await?,
        }
    }
    Ok(())
}
