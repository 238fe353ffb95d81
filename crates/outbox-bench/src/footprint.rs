//! Footprint: the relay as its own process (the `outbox` binary), draining a large backlog:
//! peak RSS and CPU.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::{BenchArgs, Scenario};
use crate::cpu::cpu_seconds;
use crate::db::{load_backlog, pg, BenchDb};
use crate::error::BenchError;
use crate::report::{progress, Measurement};
use crate::sinks::{reset_sink, BENCH_STREAM};

/// The `outbox` binary the footprint scenario runs: `--outbox-bin`, else `outbox` beside this
/// executable (both are in `target/release` after `cargo build --release -p outbox-cli -p outbox-bench`).
pub fn outbox_binary(args: &BenchArgs) -> Result<PathBuf, BenchError> {
    let (path, given) = match &args.outbox_bin {
        Some(path) => (path.clone(), true),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| BenchError::runtime(format!("own executable: {e}")))?;
            let dir = exe.parent().ok_or_else(|| {
                BenchError::runtime(format!("own executable {} has no folder", exe.display()))
            })?;
            (dir.join("outbox"), false)
        }
    };
    if path.is_file() {
        return Ok(path);
    }
    Err(BenchError::usage(if given {
        format!(
            "--outbox-bin {}: no such file (the footprint scenario runs the `outbox` binary \
             as the relay process)",
            path.display()
        )
    } else {
        format!(
            "the footprint scenario runs the relay as the `outbox` binary, not found at {}: \
             build both binaries with `cargo build --release -p outbox-cli -p outbox-bench` (or pass --outbox-bin PATH)",
            path.display()
        )
    }))
}

/// Resident memory of a process: (current, peak) in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Scenario 5: `outbox relay` (`outbox`, a child process, with its default settings) drains
/// `--footprint-events` into `--sink`; its peak RSS (VmHWM) and CPU seconds (user + system) per
/// 100k events.
pub async fn footprint(
    args: &BenchArgs,
    db: &BenchDb,
    outbox: &Path,
    out: &mut Vec<Measurement>,
) -> Result<(), BenchError> {
    let store = db.fresh(4).await?;
    load_backlog(&store, args, args.footprint_events, "footprint").await?;
    reset_sink(&args.sink).await;
    let mut child = tokio::process::Command::new(outbox)
        .arg("relay")
        .args(["--sink", &args.sink, "--nats-stream", BENCH_STREAM])
        .args(["--log-level", "warn"])
        .env("DATABASE_URL", &db.url)
        .env_remove("OUTBOX_CONFIG")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            BenchError::runtime(format!(
                "starting the relay process {}: {e}",
                outbox.display()
            ))
        })?;
    let pid = child
        .id()
        .ok_or_else(|| BenchError::runtime("relay process has no pid"))?;
    let pool = pg(&store)?.clone();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1800);
    let mut peak_sampled = 0u64;
    let mut last_check = Instant::now() - Duration::from_secs(1);
    let mut hwm = 0u64;
    let cpu = loop {
        if let Some((rss, high)) = rss_kib(pid) {
            peak_sampled = peak_sampled.max(rss);
            hwm = hwm.max(high);
        }
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&pool)
                    .await?;
            progress(&format!(
                "[footprint] relay process: {} pending, RSS {:.1} MiB",
                pending,
                peak_sampled as f64 / 1024.0
            ));
            if pending == 0 {
                break cpu_seconds(pid);
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::runtime(
                "[footprint] the relay did not drain within 30 minutes",
            ));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::runtime(format!(
                "[footprint] the relay process exited: {status}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    // SAFETY: kill(2) on the child we spawned and still own.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    reset_sink(&args.sink).await;
    let mut m = Measurement::new(
        Scenario::Footprint,
        json!({
            "source": "poll",
            "sink": outbox_relay::redact_url(&args.sink),
            "events": args.footprint_events,
            "settings": "the relay's defaults (batch_size 2000, workers 2, on_publish mark)",
            "process": "outbox relay (child process)",
        }),
    )
    .with("seconds", secs)
    .with("events_per_second", args.footprint_events as f64 / secs)
    .with("peak_rss_mib", hwm.max(peak_sampled) as f64 / 1024.0);
    if let Some(cpu) = cpu {
        m = m.with(
            "cpu_seconds_per_100k",
            cpu / args.footprint_events as f64 * 100_000.0,
        );
    }
    out.push(m);
    Ok(())
}
