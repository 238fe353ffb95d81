//! Steady load and write overhead: what writers see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_relay::sink::{Message, Sink, SinkError};
use serde_json::json;
use uuid::Uuid;

use crate::args::{BenchArgs, OnPublish, Scenario, SourceKind};
use crate::db::{app_pool, BenchDb};
use crate::error::BenchError;
use crate::report::{progress, Measurement};
use crate::running::Running;
use crate::sinks::{open_sink, reset_sink};

/// The application's tokio runtime. Dropped from async code (also on an early return), it
/// shuts down in the background: a plain drop there would panic.
struct AppRuntime(Option<tokio::runtime::Runtime>);

impl AppRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
    }
}

impl Drop for AppRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Wraps the real sink and notes when each event was first acknowledged.
struct TimedSink {
    inner: Arc<dyn Sink>,
    acks: Mutex<HashMap<Uuid, Instant>>,
}

#[async_trait]
impl Sink for TimedSink {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        self.inner.publish(message).await?;
        let now = Instant::now();
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(message.id)
            .or_insert(now);
        Ok(())
    }
    async fn flush(&self) -> Result<(), SinkError> {
        self.inner.flush().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn event(n: u64, aggregates: usize) -> outbox::Event {
    let order = format!("order-{}", n % aggregates as u64);
    outbox::Event::new(
        "BenchOrder",
        order.clone(),
        "OrderCreated",
        json!({"order_id": order, "n": n, "customer_id": format!("customer-{}", n % 977),
               "total": (n % 1000) as f64 / 10.0, "status": "pending", "note": "x".repeat(90)}),
    )
}

/// Scenario 2: `--writers` commit `--rate` events/s in all for `--duration`, each event in its
/// own transaction through the library, while the relay runs (polling with LISTEN/NOTIFY, or
/// CDC). Latency: from the writer sending `COMMIT` to the broker's acknowledgement (and, as a
/// lower bound, from `COMMIT` returning).
pub async fn steady(
    args: &BenchArgs,
    db: &BenchDb,
    out: &mut Vec<Measurement>,
) -> Result<(), BenchError> {
    for &source in &args.sources {
        let label = format!("steady {}", source.name());
        let store = db.fresh((args.writers + args.workers + 4) as u32).await?;
        if source == SourceKind::Cdc {
            db.create_slot(&store).await?;
        }
        let sink = Arc::new(TimedSink {
            inner: open_sink(&args.sink).await?,
            acks: Mutex::new(HashMap::new()),
        });
        let relay = Running::start(source, db, &store, sink.clone(), args, OnPublish::Mark).await?;
        // The writers are the application, a service of its own: their own runtime (threads)
        // and pool. On the relay's runtime, the relay's tasks would queue behind 32 writers'.
        let runtime = AppRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bench-app")
                .enable_all()
                .build()
                .map_err(|e| BenchError::runtime(format!("application runtime: {e}")))?,
        ));
        let app = runtime.handle();
        let joined = |e: tokio::task::JoinError| BenchError::runtime(format!("writer: {e}"));
        let app_pool = {
            let (db_url, size) = (db.url.clone(), args.writers as u32 + 1);
            app.spawn(async move { app_pool(&db_url, size).await })
        };
        let pool = app_pool.await.map_err(joined)??;

        // Warm-up: the relay is listening and the broker connection is up.
        let warm = 200;
        let warm_up = {
            let (pool, aggregates) = (pool.clone(), args.aggregates);
            app.spawn(async move {
                for n in 0..warm {
                    let mut tx = pool.begin().await?;
                    outbox::enqueue(&mut *tx, &event(n, aggregates)).await?;
                    tx.commit().await?;
                }
                Ok::<(), outbox::Error>(())
            })
        };
        warm_up.await.map_err(joined)??;
        relay
            .wait_delivered(warm as usize, &label, Duration::from_secs(60))
            .await?;

        progress(&format!(
            "[{label}] {} events/s for {:?}",
            args.rate, args.duration
        ));
        // Per event: when its writer sent COMMIT, and when COMMIT returned.
        let commits: Arc<Mutex<Vec<(Uuid, Instant, Instant)>>> = Arc::default();
        let period = Duration::from_secs_f64(args.writers as f64 / args.rate as f64);
        let started = Instant::now();
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..args.writers {
            let (pool, commits) = (pool.clone(), commits.clone());
            let (duration, aggregates, writers_n) =
                (args.duration, args.aggregates, args.writers as u64);
            writers.spawn_on(
                async move {
                    let mut tick = tokio::time::interval(period);
                    let mut n = warm + w as u64;
                    while started.elapsed() < duration {
                        tick.tick().await;
                        let e = event(n, aggregates);
                        n += writers_n;
                        let mut tx = pool.begin().await?;
                        outbox::enqueue(&mut *tx, &e).await?;
                        let sent = Instant::now();
                        tx.commit().await?;
                        let returned = Instant::now();
                        commits.lock().unwrap_or_else(|p| p.into_inner()).push((
                            e.id(),
                            sent,
                            returned,
                        ));
                    }
                    Ok::<(), outbox::Error>(())
                },
                app,
            );
        }
        while let Some(done) = writers.join_next().await {
            done.map_err(joined)??;
        }
        drop(pool);
        let wrote_for = started.elapsed();
        let written = commits.lock().unwrap_or_else(|p| p.into_inner()).len();
        relay
            .wait_delivered(warm as usize + written, &label, Duration::from_secs(120))
            .await?;
        let caught_up = started.elapsed().saturating_sub(wrote_for);
        relay.stop().await?;
        reset_sink(&args.sink).await;

        // Latency from COMMIT sent (the figure: conservative, it includes the commit itself)
        // and from COMMIT returned (a lower bound: on a busy machine the writer may observe
        // its commit only after the relay has already delivered the event).
        let histogram = || {
            hdrhistogram::Histogram::<u64>::new(3)
                .map_err(|e| BenchError::runtime(format!("histogram: {e}")))
        };
        let (mut from_sent, mut from_returned) = (histogram()?, histogram()?);
        {
            let acks = sink.acks.lock().unwrap_or_else(|p| p.into_inner());
            for (id, sent, returned) in commits.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if let Some(acked) = acks.get(id) {
                    let micros =
                        |since: &Instant| acked.saturating_duration_since(*since).as_micros();
                    let _ = from_sent.record(micros(sent) as u64);
                    let _ = from_returned.record(micros(returned) as u64);
                }
            }
        }
        let ms = |q: f64| from_sent.value_at_quantile(q) as f64 / 1000.0;
        let achieved = written as f64 / wrote_for.as_secs_f64();
        let kept_up = achieved >= 0.95 * args.rate as f64 && caught_up < Duration::from_secs(1);
        out.push(
            Measurement::new(
                Scenario::Steady,
                json!({
                    "source": source.name(),
                    "sink": outbox_relay::redact_url(&args.sink),
                    "offered_rate": args.rate,
                    "seconds": args.duration.as_secs_f64(),
                    "writers": args.writers,
                    "events_per_transaction": 1,
                    "on_publish": "mark",
                    "batch_size": args.batch_size,
                    "workers": args.workers,
                }),
            )
            .with("written", written as f64)
            .with("achieved_rate", achieved)
            .with("p50_ms", ms(0.5))
            .with("p99_ms", ms(0.99))
            .with("p999_ms", ms(0.999))
            .with("max_ms", from_sent.max() as f64 / 1000.0)
            .with(
                "p50_from_commit_return_ms",
                from_returned.value_at_quantile(0.5) as f64 / 1000.0,
            )
            .with(
                "p99_from_commit_return_ms",
                from_returned.value_at_quantile(0.99) as f64 / 1000.0,
            )
            .with(
                "caught_up_after_writes_ms",
                caught_up.as_secs_f64() * 1000.0,
            )
            .with("kept_up", if kept_up { 1.0 } else { 0.0 }),
        );
    }
    Ok(())
}

/// How the write-overhead transaction carries its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Carrier {
    /// The business row alone.
    Nothing,
    /// `outbox::enqueue`: an outbox row.
    Row,
    /// `outbox::emit`: a logical decoding message (CDC), no row.
    Message,
}

/// Scenario 3: the order-service transaction (`INSERT INTO orders …`, commit) without an
/// event, with its outbox row, and with its event emitted as a logical decoding message,
/// `--writers` at once, `--transactions` each, the three alternating twice.
pub async fn write_overhead(
    args: &BenchArgs,
    db: &BenchDb,
    out: &mut Vec<Measurement>,
) -> Result<(), BenchError> {
    let _store = db.fresh(2).await?;
    let pool = db.app_pool(args.writers as u32 + 1).await?;
    order_service::OrderService::new(pool.clone())
        .migrate()
        .await
        .map_err(|e| BenchError::runtime(format!("orders table: {e}")))?;
    let mut rates: HashMap<Carrier, Vec<f64>> = HashMap::new();
    let order = [Carrier::Nothing, Carrier::Row, Carrier::Message];
    for round in 0..6 {
        let carrier = order[round % 3];
        progress(&format!(
            "[write-overhead] round {} of 6 ({})",
            round + 1,
            match carrier {
                Carrier::Nothing => "no event",
                Carrier::Row => "the outbox row",
                Carrier::Message => "the event as a logical decoding message",
            }
        ));
        let started = Instant::now();
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..args.writers {
            let pool = pool.clone();
            let count = args.transactions / args.writers;
            writers.spawn(async move {
                for i in 0..count {
                    let id = Uuid::now_v7();
                    let items = json!([{"sku": format!("sku-{}", i % 100), "quantity": 1, "price": 9.5}]);
                    let created = chrono::Utc::now();
                    let mut tx = pool.begin().await?;
                    sqlx::query(
                        "INSERT INTO orders (id, customer_id, items, total, status, created_at)
                         VALUES ($1, $2, $3, $4, 'pending', $5)",
                    )
                    .bind(id)
                    .bind(format!("customer-{w}"))
                    .bind(&items)
                    .bind(9.5_f64)
                    .bind(created)
                    .execute(&mut *tx)
                    .await?;
                    if carrier != Carrier::Nothing {
                        let e = outbox::Event::new(
                            "Order",
                            id.to_string(),
                            "OrderCreated",
                            json!({"order_id": id.to_string(), "customer_id": format!("customer-{w}"),
                                   "items": items, "total": 9.5, "status": "pending",
                                   "created_at": created.to_rfc3339()}),
                        );
                        if carrier == Carrier::Row {
                            outbox::enqueue(&mut *tx, &e).await?;
                        } else {
                            outbox::emit(&mut tx, &e).await?;
                        }
                    }
                    tx.commit().await?;
                }
                Ok::<(), outbox::Error>(())
            });
        }
        while let Some(done) = writers.join_next().await {
            done.map_err(|e| BenchError::runtime(format!("writer: {e}")))??;
        }
        let tps = (args.transactions / args.writers * args.writers) as f64
            / started.elapsed().as_secs_f64();
        rates.entry(carrier).or_default().push(tps);
    }
    let mean = |c: Carrier| {
        let v = rates.get(&c).map_or(&[][..], |v| v);
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (without, with, emitted) = (
        mean(Carrier::Nothing),
        mean(Carrier::Row),
        mean(Carrier::Message),
    );
    out.push(
        Measurement::new(
            Scenario::WriteOverhead,
            json!({
                "writers": args.writers,
                "transactions_per_round": args.transactions,
                "rounds": "no event, row, message, no event, row, message",
                "transaction": "INSERT INTO orders (+ outbox::enqueue of its OrderCreated event, \
                                or + outbox::emit of it); COMMIT",
            }),
        )
        .with("tps_without_outbox", without)
        .with("tps_with_outbox", with)
        .with("tps_with_emit", emitted)
        .with("overhead_percent", (1.0 - with / without) * 100.0)
        .with("emit_overhead_percent", (1.0 - emitted / without) * 100.0),
    );
    Ok(())
}
