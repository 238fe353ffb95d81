//! Drain, history and ceiling: how fast a backlog leaves, and what the database alone allows.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::{BenchArgs, MetricsMode, OnPublish, Scenario, SourceKind};
use crate::cpu::CpuMeter;
use crate::db::{in_chunks, load_backlog, pg, BenchDb};
use crate::error::BenchError;
use crate::recorder;
use crate::report::{progress, Measurement};
use crate::running::Running;
use crate::sinks::{open_sink, reset_sink};

/// One drain: a fresh database, `events` of backlog (plus `history` published rows), the relay
/// from `source` into `sink`; events/s from the relay's start to the last event delivered.
async fn drain_one(
    args: &BenchArgs,
    db: &BenchDb,
    source: SourceKind,
    sink_url: &str,
    on_publish: OnPublish,
    history: usize,
    scenario: Scenario,
) -> Result<Measurement, BenchError> {
    let label = format!("{scenario:?} {source:?} → {sink_url}");
    let store = db.fresh(args.workers as u32 + 3).await?;
    if source == SourceKind::Cdc {
        db.create_slot(&store).await?;
    }
    if history > 0 {
        load_history(&store, args, history, &label).await?;
    }
    load_backlog(&store, args, args.events, &label).await?;
    let sink = open_sink(sink_url).await?;
    let cpu = CpuMeter::start(sink_url);
    let started = Instant::now();
    let relay = Running::start(source, db, &store, sink, args, on_publish).await?;
    relay
        .wait_delivered(args.events, &label, Duration::from_secs(900))
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu.per_100k(args.events, "relay_cpu_seconds_per_100k");
    relay.stop().await?;
    reset_sink(sink_url).await;
    let mut setup = json!({
        "source": source.name(),
        "sink": outbox_relay::redact_url(sink_url),
        "events": args.events,
        "aggregates": args.aggregates,
        "payload_bytes": args.payload_bytes,
        "history_rows": history,
    });
    if source == SourceKind::Poll {
        setup["on_publish"] = json!(on_publish.name());
        setup["batch_size"] = json!(args.batch_size);
        setup["workers"] = json!(args.workers);
    }
    let mut m = Measurement::new(scenario, setup)
        .with("seconds", secs)
        .with("events_per_second", args.events as f64 / secs);
    m.results.extend(cpu);
    Ok(m)
}

async fn load_history(
    store: &outbox_relay::Store,
    args: &BenchArgs,
    rows: usize,
    label: &str,
) -> Result<(), BenchError> {
    let pool = pg(store)?;
    let note = args.payload_bytes.saturating_sub(110) as i32;
    let what = format!("[{label}] loading published history");
    in_chunks(rows, &what, |_, n| {
        sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at, published_at)
             SELECT 'BenchOrder', 'old-' || (g % 50000), 'OrderCreated',
                    jsonb_build_object('order_id', 'old-' || (g % 50000), 'n', g, 'note', repeat('x', $2::int)),
                    now() - interval '2 days', now() - interval '1 day'
             FROM generate_series(1, $1::bigint) AS g",
        )
        .bind(n as i64)
        .bind(note)
        .execute(pool)
    })
    .await
}

/// Scenario 1: every source × sink (× polling mode).
pub async fn drains(
    args: &BenchArgs,
    db: &BenchDb,
    out: &mut Vec<Measurement>,
) -> Result<(), BenchError> {
    for &source in &args.sources {
        for sink in &args.sinks {
            let modes: Vec<OnPublish> = match source {
                SourceKind::Poll => args.on_publish.clone(),
                SourceKind::Cdc => vec![OnPublish::Mark],
            };
            for mode in modes {
                for &metrics in &args.metrics {
                    recorder::switch(metrics)?;
                    let m = drain_one(args, db, source, sink, mode, 0, Scenario::Drain).await;
                    recorder::switch(MetricsMode::Off)?;
                    let mut m = m?;
                    if args.metrics != [MetricsMode::Off] {
                        m.setup.insert("metrics", json!(metrics.name()));
                    }
                    out.push(m);
                }
            }
        }
    }
    Ok(())
}

/// Scenario 4: the polling drain (mark mode, the one that keeps history) with and without
/// `--history` published rows, into `--sink`, alternated twice; the ratio of the mean rates.
pub async fn history(
    args: &BenchArgs,
    db: &BenchDb,
    out: &mut Vec<Measurement>,
) -> Result<(), BenchError> {
    // Alternated rounds, compared by their means: one drain of each varies by ±10% on a
    // shared two-core machine, as much as the effect measured.
    const ROUNDS: usize = 2;
    let (mut empty, mut full) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (rows, into) in [(0, &mut empty), (args.history, &mut full)] {
            let m = drain_one(
                args,
                db,
                SourceKind::Poll,
                &args.sink,
                OnPublish::Mark,
                rows,
                Scenario::History,
            )
            .await?;
            into.push(m);
        }
    }
    let rates = |v: &[Measurement]| -> Vec<f64> {
        v.iter()
            .map(|m| m.get("events_per_second").unwrap_or(0.0))
            .collect()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (empty_rates, full_rates) = (rates(&empty), rates(&full));
    let ratio = mean(&full_rates) / mean(&empty_rates);
    // Each reported drain is the last round's (its CPU split), with the rounds' mean rate.
    for (mut v, r, with_ratio) in [(empty, empty_rates, false), (full, full_rates, true)] {
        if let Some(mut m) = v.pop() {
            m.setup.insert("rounds", json!(r));
            m = m.with("events_per_second", mean(&r));
            if with_ratio {
                m = m.with("ratio", ratio);
            }
            out.push(m);
        }
    }
    Ok(())
}

/// The broker's own limit as the relay drives it: the same messages (`--events` over
/// `--aggregates`, routed and enveloped as in a drain) published through the sink by `--workers`
/// tasks, batch by batch, with no database at all.
async fn sink_ceiling(args: &BenchArgs, url: &str) -> Result<Measurement, BenchError> {
    use outbox_relay::delivery::{deliver, Outcome};
    use outbox_relay::{Record, Router};
    use std::sync::Arc;
    let sink = open_sink(url).await?;
    let note = "x".repeat(args.payload_bytes.saturating_sub(110));
    let now = chrono::Utc::now();
    let records: Arc<Vec<Record>> = Arc::new(
        (0..args.events)
            .map(|g| {
                let order = format!("order-{}", g % args.aggregates);
                Record {
                    seq: g as i64,
                    id: uuid::Uuid::now_v7(),
                    aggregate_type: "BenchOrder".into(),
                    aggregate_id: order.clone(),
                    event_type: "OrderCreated".into(),
                    payload: json!({"order_id": order, "n": g, "customer_id": format!("customer-{}", g % 977),
                                    "total": (g % 1000) as f64 / 10.0, "status": "pending", "note": note})
                        .to_string(),
                    headers: None,
                    created_at: now,
                    retry_count: 0,
                }
            })
            .collect(),
    );
    progress(&format!(
        "[ceiling] {} through the sink alone",
        outbox_relay::redact_url(url)
    ));
    let router = Arc::new(Router::default());
    let cpu = CpuMeter::start(url);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = args.workers.max(1);
    for w in 0..workers {
        let (records, router, sink) = (records.clone(), router.clone(), sink.clone());
        let batch = args.batch_size.max(1);
        tasks.spawn(async move {
            let mut delivered = 0usize;
            for chunk in records.chunks(batch).skip(w).step_by(workers) {
                let outcomes = deliver(chunk, &router, &*sink, batch).await;
                delivered += outcomes
                    .iter()
                    .filter(|o| **o == Outcome::Delivered)
                    .count();
            }
            delivered
        });
    }
    let mut delivered = 0;
    while let Some(done) = tasks.join_next().await {
        delivered += done.map_err(|e| BenchError::runtime(format!("sink ceiling task: {e}")))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu.per_100k(delivered, "sink_cpu_seconds_per_100k");
    reset_sink(url).await;
    let mut m = Measurement::new(
        Scenario::Ceiling,
        json!({
            "source": "none (in memory)",
            "sink": outbox_relay::redact_url(url),
            "events": args.events,
            "aggregates": args.aggregates,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "work": "route + publish batches through the sink, no database",
        }),
    )
    .with("delivered", delivered as f64)
    .with("seconds", secs)
    .with("events_per_second", delivered as f64 / secs);
    m.results.extend(cpu);
    Ok(m)
}

/// Scenario 6: the database's own limit (and, for comparison, each broker's). Polling: `--workers` connections loop over the bare
/// claim and mark (or delete) — `SELECT … FOR UPDATE SKIP LOCKED LIMIT batch`, one `UPDATE` or
/// `DELETE`, `COMMIT` — with no payload transfer, ordering check or broker. CDC: the server
/// decoding the backlog's WAL with pgoutput (`pg_logical_slot_get_binary_changes`).
pub async fn ceiling(
    args: &BenchArgs,
    db: &BenchDb,
    out: &mut Vec<Measurement>,
) -> Result<(), BenchError> {
    if args.sources.contains(&SourceKind::Poll) {
        for &mode in &args.on_publish {
            let store = db.fresh(args.workers as u32 + 2).await?;
            load_backlog(&store, args, args.events, "ceiling").await?;
            let pool = pg(&store)?.clone();
            progress("[ceiling] bare claim/settle loop");
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..args.workers.max(1) {
                let pool = pool.clone();
                let batch = args.batch_size as i64;
                tasks.spawn(async move {
                    let settle = match mode {
                        OnPublish::Mark => {
                            "UPDATE outbox SET published_at = now() WHERE seq = ANY($1)"
                        }
                        OnPublish::Delete => "DELETE FROM outbox WHERE seq = ANY($1)",
                    };
                    loop {
                        let mut tx = pool.begin().await?;
                        let seqs: Vec<i64> = sqlx::query_scalar(
                            "SELECT seq FROM outbox WHERE published_at IS NULL
                             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                        )
                        .bind(batch)
                        .fetch_all(&mut *tx)
                        .await?;
                        if seqs.is_empty() {
                            tx.rollback().await?;
                            return Ok::<(), sqlx::Error>(());
                        }
                        sqlx::query(settle).bind(&seqs).execute(&mut *tx).await?;
                        tx.commit().await?;
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.map_err(|e| BenchError::runtime(format!("ceiling task: {e}")))??;
            }
            let secs = started.elapsed().as_secs_f64();
            out.push(
                Measurement::new(
                    Scenario::Ceiling,
                    json!({
                        "source": "poll",
                        "on_publish": mode.name(),
                        "events": args.events,
                        "batch_size": args.batch_size,
                        "connections": args.workers,
                        "work": "SELECT seq … FOR UPDATE SKIP LOCKED; UPDATE/DELETE … WHERE seq = ANY; COMMIT",
                    }),
                )
                .with("seconds", secs)
                .with("events_per_second", args.events as f64 / secs),
            );
        }
    }
    for url in args.sinks.iter().filter(|u| !u.starts_with("noop")) {
        out.push(sink_ceiling(args, url).await?);
    }
    if args.sources.contains(&SourceKind::Cdc) {
        let store = db.fresh(3).await?;
        db.create_slot(&store).await?;
        load_backlog(&store, args, args.events, "ceiling cdc").await?;
        let pool = pg(&store)?;
        progress("[ceiling] WAL decode");
        let started = Instant::now();
        let changes: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
                 'proto_version', '1', 'publication_names', $1)",
        )
        .bind(db.slot())
        .fetch_one(pool)
        .await?;
        let secs = started.elapsed().as_secs_f64();
        out.push(
            Measurement::new(
                Scenario::Ceiling,
                json!({
                    "source": "cdc",
                    "events": args.events,
                    "work": "pg_logical_slot_get_binary_changes (pgoutput), counted on the server",
                }),
            )
            .with("messages", changes as f64)
            .with("seconds", secs)
            .with("events_per_second", args.events as f64 / secs),
        );
    }
    Ok(())
}
