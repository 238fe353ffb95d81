//! The `mysql-drain` scenario: the polling relay draining a backlog on MySQL / MariaDB into each
//! `--sinks` sink, mark and delete, and beside it, in the same run, the database's own limit for
//! the same work (the bare claim/settle loop, no payload, no broker).

use std::time::{Duration, Instant};

use outbox_relay::store::{ConnectOptions, Store};
use serde_json::json;

use crate::args::{BenchArgs, OnPublish, Scenario, SourceKind};
use crate::cpu::CpuMeter;
use crate::db::BenchDb;
use crate::error::BenchError;
use crate::report::{progress, Measurement};
use crate::running::Running;
use crate::sinks::{open_sink, reset_sink};

/// The server's process and the name of its CPU figure.
const SERVER: (&str, &str) = ("mariadbd", "mysql_cpu_seconds_per_100k");

/// Rows per multi-row INSERT while loading the backlog.
const LOAD_CHUNK: usize = 5_000;

/// The benchmark's private database on the MySQL server.
struct MysqlBench {
    admin: sqlx::MySqlPool,
    name: String,
    url: String,
}

impl MysqlBench {
    async fn connect(admin_url: &str) -> Result<MysqlBench, BenchError> {
        if !admin_url.starts_with("mysql://") && !admin_url.starts_with("mariadb://") {
            return Err(BenchError::usage("--mysql must be a mysql:// URL"));
        }
        let base = admin_url
            .replacen("mariadb://", "mysql://", 1)
            .trim_end_matches('/')
            .to_string();
        let admin = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&base)
            .await
            .map_err(|e| {
                BenchError::usage(format!(
                    "cannot connect to MySQL at {}: {e}",
                    outbox_relay::redact_url(admin_url)
                ))
            })?;
        let name = format!("outbox_bench_{}", std::process::id());
        let url = format!("{base}/{name}");
        Ok(MysqlBench { admin, name, url })
    }

    async fn fresh(&self, max_connections: u32) -> Result<Store, BenchError> {
        self.drop().await;
        sqlx::query(&format!("CREATE DATABASE {}", self.name))
            .execute(&self.admin)
            .await?;
        let store = Store::connect(
            &self.url,
            &ConnectOptions {
                max_connections,
                ..ConnectOptions::default()
            },
        )
        .await?;
        store.migrate().await?;
        Ok(store)
    }

    async fn drop(&self) {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {}", self.name))
            .execute(&self.admin)
            .await;
    }

    async fn version(&self) -> Result<String, BenchError> {
        Ok(sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&self.admin)
            .await?)
    }
}

fn pool(store: &Store) -> Result<&sqlx::MySqlPool, BenchError> {
    store
        .mysql_pool()
        .ok_or_else(|| BenchError::runtime("expected a MySQL store"))
}

/// The same backlog as on PostgreSQL: `--events` over `--aggregates`, `--payload-bytes` each,
/// inserted with plain SQL in seq order.
async fn load_backlog(store: &Store, args: &BenchArgs, label: &str) -> Result<(), BenchError> {
    let pool = pool(store)?;
    let note = "x".repeat(args.payload_bytes.saturating_sub(110));
    let mut done = 0;
    while done < args.events {
        let n = (args.events - done).min(LOAD_CHUNK);
        progress(&format!("[{label}] loading {done}/{}", args.events));
        let mut sql = String::from(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ",
        );
        for g in done..done + n {
            let order = format!("order-{}", g % args.aggregates);
            let payload = json!({"order_id": order, "n": g, "customer_id": format!("customer-{}", g % 977),
                                 "total": (g % 1000) as f64 / 10.0, "status": "pending", "note": note});
            if g > done {
                sql.push(',');
            }
            // Generated values only (no quotes inside): safe to inline.
            sql.push_str(&format!(
                "('BenchOrder','{order}','OrderCreated','{payload}')"
            ));
        }
        sqlx::Executor::execute(pool, sql.as_str()).await?;
        done += n;
    }
    sqlx::Executor::execute(pool, "ANALYZE TABLE outbox").await?;
    Ok(())
}

/// One drain on a fresh database: events/s from the relay's start to the last event delivered.
async fn drain_one(
    args: &BenchArgs,
    pg: &BenchDb,
    my: &MysqlBench,
    sink_url: &str,
    on_publish: OnPublish,
) -> Result<Measurement, BenchError> {
    let label = format!("MysqlDrain → {sink_url} ({})", on_publish.name());
    let store = my.fresh(args.workers as u32 + 3).await?;
    load_backlog(&store, args, &label).await?;
    let sink = open_sink(sink_url).await?;
    let cpu = CpuMeter::start_with(sink_url, SERVER);
    let started = Instant::now();
    let relay = Running::start(SourceKind::Poll, pg, &store, sink, args, on_publish).await?;
    relay
        .wait_delivered(args.events, &label, Duration::from_secs(900))
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu.per_100k(args.events, "relay_cpu_seconds_per_100k");
    relay.stop().await?;
    reset_sink(sink_url).await;
    let mut m = Measurement::new(
        Scenario::MysqlDrain,
        json!({
            "database": "mysql",
            "source": "poll",
            "sink": outbox_relay::redact_url(sink_url),
            "on_publish": on_publish.name(),
            "events": args.events,
            "aggregates": args.aggregates,
            "payload_bytes": args.payload_bytes,
            "batch_size": args.batch_size,
            "workers": args.workers,
        }),
    )
    .with("seconds", secs)
    .with("events_per_second", args.events as f64 / secs);
    m.results.extend(cpu);
    Ok(m)
}

/// The database's limit: `--workers` connections looping over the bare claim and mark (or
/// delete) — `SELECT seq … FOR UPDATE SKIP LOCKED LIMIT batch`, one `UPDATE` or `DELETE`,
/// `COMMIT` — with no payload transfer, ordering check or broker.
async fn ceiling(
    args: &BenchArgs,
    my: &MysqlBench,
    mode: OnPublish,
) -> Result<Measurement, BenchError> {
    let store = my.fresh(args.workers as u32 + 2).await?;
    load_backlog(&store, args, "mysql ceiling").await?;
    let pool = pool(&store)?.clone();
    progress("[mysql ceiling] bare claim/settle loop");
    let cpu = CpuMeter::start_with("noop:", SERVER);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.workers.max(1) {
        let pool = pool.clone();
        let batch = args.batch_size;
        tasks.spawn(async move {
            loop {
                let mut tx = pool.begin().await?;
                let claim = format!(
                    "SELECT seq FROM outbox FORCE INDEX (outbox_pending_idx)
                     WHERE published_at IS NULL ORDER BY seq LIMIT {batch}
                     FOR UPDATE SKIP LOCKED"
                );
                let seqs: Vec<i64> = sqlx::query_scalar(&claim).fetch_all(&mut *tx).await?;
                if seqs.is_empty() {
                    tx.rollback().await?;
                    return Ok::<(), sqlx::Error>(());
                }
                let list = seqs
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let settle = match mode {
                    OnPublish::Mark => format!(
                        "UPDATE outbox SET published_at = UTC_TIMESTAMP(6) WHERE seq IN ({list})"
                    ),
                    OnPublish::Delete => format!("DELETE FROM outbox WHERE seq IN ({list})"),
                };
                sqlx::Executor::execute(&mut *tx, settle.as_str()).await?;
                tx.commit().await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| BenchError::runtime(format!("ceiling task: {e}")))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut m = Measurement::new(
        Scenario::MysqlDrain,
        json!({
            "database": "mysql",
            "source": "ceiling",
            "on_publish": mode.name(),
            "events": args.events,
            "batch_size": args.batch_size,
            "connections": args.workers,
            "work": "SELECT seq … FOR UPDATE SKIP LOCKED; UPDATE/DELETE … WHERE seq IN; COMMIT",
        }),
    )
    .with("seconds", secs)
    .with("events_per_second", args.events as f64 / secs);
    m.results
        .extend(cpu.per_100k(args.events, "bench_cpu_seconds_per_100k"));
    Ok(m)
}

/// The scenario: every `--sinks` sink × `--on-publish` mode, then the ceiling of each mode.
pub async fn drains(
    args: &BenchArgs,
    pg: &BenchDb,
    out: &mut Vec<Measurement>,
) -> Result<(), BenchError> {
    let my = MysqlBench::connect(&args.mysql).await?;
    let version = my.version().await?;
    let outcome = async {
        for sink in &args.sinks {
            for &mode in &args.on_publish {
                let mut m = drain_one(args, pg, &my, sink, mode).await?;
                m.setup.insert("server", json!(version));
                out.push(m);
            }
        }
        for &mode in &args.on_publish {
            let mut m = ceiling(args, &my, mode).await?;
            m.setup.insert("server", json!(version));
            out.push(m);
        }
        Ok::<(), BenchError>(())
    }
    .await;
    my.drop().await;
    outcome
}
