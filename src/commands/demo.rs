//! `outbox demo`: the whole product on an embedded SQLite file, no server needed.
//!
//! Concurrent writers run the reference OrderService (order row + event in one transaction);
//! the relay delivers to a JSON-lines file through a sink that fails a few percent of publishes
//! at random; one "poison" order is refused by the sink until it is repaired, exhausts its
//! retries into the dead-letter table, and is replayed. Then the file is checked against the
//! database: nothing lost, per-aggregate order kept.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use order_service::{Item, OrderService};
use outbox_relay::sink::{FileSink, Message, Sink, SinkError};
use outbox_relay::source::poll::PollOptions;
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::{Relay, RelayConfig, RetryPolicy, Router};
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::error::CliError;

/// (aggregate id, event type): identifies a demo event from both the writer and the sink side.
type EventKey = (String, String);

/// The demo's broker: a JSON-lines file behind random failures and one poison aggregate.
struct DemoSink {
    inner: FileSink,
    failure_rate: f64,
    poison: RwLock<Option<String>>,
    poison_attempts: AtomicU64,
    injected: AtomicU64,
    delivered_at: Mutex<HashMap<EventKey, Instant>>,
}

#[async_trait]
impl Sink for DemoSink {
    async fn publish(&self, m: &Message) -> Result<(), SinkError> {
        let poisoned = self
            .poison
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            == Some(m.key.as_str());
        if poisoned {
            self.poison_attempts.fetch_add(1, Ordering::Relaxed);
            return Err(SinkError::retryable(format!(
                "demo broker refuses order {} (the poison pill)",
                m.key
            )));
        }
        if fastrand::f64() < self.failure_rate {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(SinkError::retryable("demo broker: injected failure"));
        }
        self.inner.publish(m).await?;
        let event_type = m
            .headers
            .iter()
            .find(|(k, _)| k == "event_type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.delivered_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((m.key.clone(), event_type))
            .or_insert_with(Instant::now);
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.inner.flush().await
    }

    fn describe(&self) -> String {
        format!(
            "demo ({} with {:.0}% failures)",
            self.inner.describe(),
            self.failure_rate * 100.0
        )
    }
}

pub async fn run(args: &DemoArgs) -> Result<(), CliError> {
    if !(0.0..=0.5).contains(&args.failure_rate) {
        return Err(CliError::usage("--failure-rate must be within 0..=0.5"));
    }
    if args.orders == 0 || args.writers == 0 || args.writers > 256 {
        return Err(CliError::usage(
            "--orders must be at least 1 and --writers within 1..=256",
        ));
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| CliError::runtime(format!("cannot create {}: {e}", args.dir.display())))?;
    let db_path = args.dir.join("demo.db");
    let events_path = args.dir.join("events.jsonl");
    for p in [
        db_path.clone(),
        args.dir.join("demo.db-wal"),
        args.dir.join("demo.db-shm"),
        events_path.clone(),
    ] {
        if p.exists() {
            std::fs::remove_file(&p)
                .map_err(|e| CliError::runtime(format!("cannot remove {}: {e}", p.display())))?;
        }
    }
    println!(
        "outbox demo: {} orders from {} concurrent writers, SQLite at {}",
        args.orders,
        args.writers,
        db_path.display()
    );
    println!(
        "relay → {} (a broker that fails {:.0}% of publishes; one poison order it refuses)",
        events_path.display(),
        args.failure_rate * 100.0
    );

    let store = Store::connect(
        &format!("sqlite:{}", db_path.display()),
        &ConnectOptions {
            max_connections: args.writers as u32 + 2,
            create_sqlite_file: true,
            ..ConnectOptions::default()
        },
    )
    .await?;
    store.migrate().await?;
    let pool = store
        .sqlite_pool()
        .cloned()
        .ok_or_else(|| CliError::runtime("the demo store is not SQLite"))?;
    let service = OrderService::new(pool.clone());
    service
        .migrate()
        .await
        .map_err(|e| CliError::runtime(format!("demo schema: {e}")))?;

    let sink = Arc::new(DemoSink {
        inner: FileSink::create(&events_path).await?,
        failure_rate: args.failure_rate,
        poison: RwLock::new(None),
        poison_attempts: AtomicU64::new(0),
        injected: AtomicU64::new(0),
        delivered_at: Mutex::new(HashMap::new()),
    });
    let retry = RetryPolicy {
        base: Duration::from_millis(20),
        max: Duration::from_millis(400),
        max_attempts: 5,
        jitter: 0.5,
    };
    let relay = Arc::new(Relay::new(
        store.clone(),
        sink.clone(),
        Router::default(),
        RelayConfig {
            poll: PollOptions {
                batch_size: 256,
                poll_interval: Duration::from_millis(10),
                dead_letters_block: true,
                delete_published: false,
                ..PollOptions::default()
            },
            workers: 1,
            max_in_flight: 256,
            retry: retry.clone(),
        },
    ));
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let relay_task = {
        let relay = relay.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { relay.run(shutdown).await })
    };

    // Progress line.
    let written = Arc::new(AtomicU64::new(0));
    let progress_stop = CancellationToken::new();
    let progress = tokio::spawn(progress_line(
        store.clone(),
        stats.clone(),
        written.clone(),
        progress_stop.clone(),
    ));

    // The poison pill: an order the broker refuses, then cancelled (its cancel waits behind it).
    let started = Instant::now();
    let commits: Arc<Mutex<HashMap<EventKey, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let poison = service
        .create_order("poison-pill", vec![item(0)], 1.0)
        .await
        .map_err(|e| CliError::runtime(format!("writing the poison order: {e}")))?;
    *sink.poison.write().unwrap_or_else(|p| p.into_inner()) =
        Some(poison.id.hyphenated().to_string());
    service
        .cancel_order(poison.id, "poison pill")
        .await
        .map_err(|e| CliError::runtime(format!("cancelling the poison order: {e}")))?;
    written.fetch_add(2, Ordering::Relaxed);

    // Writers.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..args.writers {
        let service = service.clone();
        let commits = commits.clone();
        let written = written.clone();
        let count = args.orders / args.writers + usize::from(w < args.orders % args.writers);
        writers.spawn(async move {
            for i in 0..count {
                let n = w * 1_000_000 + i;
                let order = service
                    .create_order(
                        &format!("customer-{}", n % 97),
                        vec![item(n), item(n + 1)],
                        19.9 + (n % 10) as f64,
                    )
                    .await?;
                let id = order.id.hyphenated().to_string();
                commits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((id.clone(), "OrderCreated".into()), Instant::now());
                written.fetch_add(1, Ordering::Relaxed);
                if n % 5 == 0 {
                    service
                        .cancel_order(order.id, "customer changed their mind")
                        .await?;
                    commits
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((id, "OrderCancelled".into()), Instant::now());
                    written.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), order_service::OrderError>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CliError::runtime(format!("a writer failed: {e}"))),
            Err(e) => return Err(CliError::runtime(format!("a writer panicked: {e}"))),
        }
    }
    let writes_done = started.elapsed();

    // Everything but the poison order's two events gets delivered; the pill is dead-lettered.
    wait_for(&store, Duration::from_secs(120), |s| {
        s.dead_letters == 1 && s.pending == 1
    })
    .await?;
    let dead = store.dead_letters(10).await?;
    let pill_error = dead.first().map(|d| d.error.clone()).unwrap_or_default();

    // Repair the broker, replay the dead letter: both poison events now flow, in order.
    *sink.poison.write().unwrap_or_else(|p| p.into_inner()) = None;
    let replayed = store.replay(None).await?;
    wait_for(&store, Duration::from_secs(60), |s| {
        s.dead_letters == 0 && s.pending == 0
    })
    .await?;
    let drained = started.elapsed();
    shutdown.cancel();
    match relay_task.await {
        Ok(r) => r?,
        Err(e) => return Err(CliError::runtime(format!("relay task failed: {e}"))),
    }
    progress_stop.cancel();
    let _ = progress.await;

    // Check the delivered file against the database.
    let expected = expected_events(&pool).await?;
    let check = check_file(&events_path, &expected)?;
    let latencies = latency(&commits, &sink.delivered_at);
    let s = stats.snapshot();
    let written_total = written.load(Ordering::Relaxed);

    println!();
    println!("summary");
    println!("  events written            {written_total}");
    println!(
        "  events delivered          {} ({} lines in the file, {} duplicates)",
        check.delivered,
        check.lines,
        check.lines - check.delivered
    );
    println!(
        "  failed attempts retried   {} ({} injected failures, {} refusals of the poison pill)",
        s.failed,
        sink.injected.load(Ordering::Relaxed),
        sink.poison_attempts.load(Ordering::Relaxed)
    );
    println!(
        "  dead-lettered             {} (\"{}\"), replayed {}",
        s.dead_lettered,
        pill_error,
        replayed.len()
    );
    println!("  lost                      {}", check.lost);
    println!("  order violations          {}", check.order_violations);
    println!(
        "  writes took               {:.2}s",
        writes_done.as_secs_f64()
    );
    println!(
        "  throughput                {:.0} events/s (written and delivered in {:.2}s)",
        check.delivered as f64 / drained.as_secs_f64(),
        drained.as_secs_f64()
    );
    if let Some((p50, p99)) = latencies {
        println!(
            "  commit → delivery         p50 {:.1} ms, p99 {:.1} ms",
            p50, p99
        );
    }
    println!(
        "  files                     {} and {}",
        db_path.display(),
        events_path.display()
    );
    if check.lost > 0 || check.order_violations > 0 || written_total != expected.len() as u64 {
        return Err(CliError::runtime(format!(
            "demo check failed: {} lost, {} order violations, {} written vs {} in the table",
            check.lost,
            check.order_violations,
            written_total,
            expected.len()
        )));
    }
    Ok(())
}

fn item(n: usize) -> Item {
    Item {
        sku: format!("sku-{}", n % 1000),
        quantity: 1 + (n % 3) as u32,
        price: 4.5 + (n % 7) as f64,
    }
}

async fn progress_line(
    store: Store,
    stats: Arc<outbox_relay::Stats>,
    written: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let s = stats.snapshot();
        let status = store.status().await.unwrap_or_default();
        let line = format!(
            "  written {:>6} · delivered {:>6} · retried {:>4} · dead-lettered {} · pending {:>5}",
            written.load(Ordering::Relaxed),
            s.delivered,
            s.failed,
            status.dead_letters,
            status.pending
        );
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
    if tty {
        let _ = writeln!(std::io::stderr());
    }
}

async fn wait_for(
    store: &Store,
    limit: Duration,
    done: impl Fn(&outbox_relay::store::Status) -> bool,
) -> Result<(), CliError> {
    let deadline = Instant::now() + limit;
    loop {
        let s = store.status().await?;
        if done(&s) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::runtime(format!(
                "demo stalled: {} pending, {} dead letters after {:?}",
                s.pending, s.dead_letters, limit
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// id → (aggregate id, seq) for every event in the table.
async fn expected_events(
    pool: &sqlx::SqlitePool,
) -> Result<HashMap<String, (String, i64)>, CliError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT id, aggregate_id, seq FROM outbox")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, agg, seq)| (id, (agg, seq)))
        .collect())
}

struct FileCheck {
    lines: usize,
    delivered: usize,
    lost: usize,
    order_violations: usize,
}

/// Reads the delivered file: first deliveries per aggregate must come in `seq` order.
fn check_file(
    path: &Path,
    expected: &HashMap<String, (String, i64)>,
) -> Result<FileCheck, CliError> {
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::runtime(format!("{}: {e}", path.display())))?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let (mut lines, mut violations) = (0, 0);
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        lines += 1;
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| CliError::runtime(format!("bad line in {}: {e}", path.display())))?;
        let Some(id) = v["headers"]["id"].as_str() else {
            continue;
        };
        if !seen.insert(id.to_string()) {
            continue; // a duplicate (at-least-once); only first deliveries count for order
        }
        if let Some((agg, seq)) = expected.get(id) {
            let last = last_seq.entry(agg.clone()).or_insert(i64::MIN);
            if *seq < *last {
                violations += 1;
            }
            *last = (*last).max(*seq);
        }
    }
    let lost = expected.keys().filter(|id| !seen.contains(*id)).count();
    Ok(FileCheck {
        lines,
        delivered: seen.len(),
        lost,
        order_violations: violations,
    })
}

/// p50 and p99 commit → first delivery, in milliseconds.
fn latency(
    commits: &Mutex<HashMap<EventKey, Instant>>,
    delivered: &Mutex<HashMap<EventKey, Instant>>,
) -> Option<(f64, f64)> {
    let commits = commits.lock().unwrap_or_else(|p| p.into_inner());
    let delivered = delivered.lock().unwrap_or_else(|p| p.into_inner());
    let mut h = hdrhistogram::Histogram::<u64>::new(3).ok()?;
    for (key, committed) in commits.iter() {
        if let Some(at) = delivered.get(key) {
            // A delivery can be recorded before the writer notes its commit time: count it as 0.
            let _ = h.record(at.saturating_duration_since(*committed).as_micros() as u64);
        }
    }
    (!h.is_empty()).then(|| {
        (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        )
    })
}
