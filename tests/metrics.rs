//! `outbox relay --listen`: a real Prometheus scrapes the relay, `promtool` checks its
//! metrics, and the health endpoints answer as the README's "Operating it" says.

mod common;
#[path = "metrics/prometheus.rs"]
mod prometheus;

use std::time::Duration;

use common::*;
use outbox_testkit::free_port;
use prometheus::{promtool_check_metrics, Prometheus};

/// A password that must never appear in anything the relay serves.
const SECRET: &str = "hunter2metrics";

/// The test database's URL with a password in it (PostgreSQL trusts loopback here, so it
/// connects all the same).
fn url_with_password(db: &TestDb) -> String {
    db.url
        .replacen("postgres@", &format!("postgres:{SECRET}@"), 1)
}

/// A small HTTP client for the relay's endpoints.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// GET `http://127.0.0.1:port/path`: status and body, `None` while nothing answers.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = http()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// Waits (bounded) until GET `path` answers `status`; returns the body.
async fn wait_status(port: u16, path: &str, status: u16, limit: Duration) -> String {
    wait_until(limit, &format!("GET {path} answering {status}"), || async {
        get(port, path)
            .await
            .and_then(|(s, body)| (s == status).then_some(body))
    })
    .await
}

/// Inserts `n` events of one aggregate type, spread over 10 aggregates.
async fn insert(pool: &sqlx::PgPool, agg_type: &str, n: i64) {
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT $1, 'a' || (g % 10), 'Step', jsonb_build_object('n', g)
         FROM generate_series(1, $2) AS g ORDER BY g",
    )
    .bind(agg_type)
    .bind(n)
    .execute(pool)
    .await
    .expect("insert events");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_relay_and_counts_every_delivered_event() {
    const EVENTS: i64 = 750;
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    insert(&pool, &format!("Order{}", nats.prefix), EVENTS).await;
    let port = free_port();
    let prometheus = require!(Prometheus::start(&[format!("127.0.0.1:{port}")]));
    let stream = nats.stream();
    let listen = format!("127.0.0.1:{port}");
    let mut relay = spawn_relay(
        &db.url,
        &[
            "--sink",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            &stream,
            "--listen",
            &listen,
            "--batch-size",
            "100",
        ],
    );
    wait_all_published(&pool, Duration::from_secs(60)).await;

    let up = prometheus
        .wait_for("up{job=\"outbox\"}", Duration::from_secs(60), |v| v == 1.0)
        .await;
    assert_eq!(up, 1.0);
    let delivered = prometheus
        .wait_for(
            "sum(outbox_events_delivered_total{source=\"poll\",sink=\"nats\"})",
            Duration::from_secs(60),
            |v| v >= EVENTS as f64,
        )
        .await;
    assert_eq!(delivered, EVENTS as f64, "delivered exactly once each");
    prometheus
        .wait_for("outbox_pending_events", Duration::from_secs(60), |v| {
            v == 0.0
        })
        .await;
    let latencies = prometheus
        .wait_for(
            "sum(outbox_delivery_latency_seconds_count)",
            Duration::from_secs(30),
            |v| v >= EVENTS as f64,
        )
        .await;
    assert_eq!(latencies, EVENTS as f64, "one latency per delivered event");
    let batches = prometheus
        .wait_for(
            "sum(outbox_claim_batch_size_sum)",
            Duration::from_secs(30),
            |v| v >= EVENTS as f64,
        )
        .await;
    assert_eq!(batches, EVENTS as f64, "every event claimed once");
    let info = prometheus
        .wait_for(
            "outbox_relay_info{source=\"poll\",sink=\"nats\"}",
            Duration::from_secs(30),
            |v| v == 1.0,
        )
        .await;
    assert_eq!(info, 1.0);
    assert_eq!(
        prometheus
            .query("sum(outbox_delivery_failures_total)")
            .await,
        Some(0.0)
    );

    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn promtool_accepts_the_metrics_and_they_hold_no_secret() {
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    insert(&pool, &format!("Order{}", nats.prefix), 50).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let stream = nats.stream();
    let mut relay = spawn_relay(
        &url_with_password(&db),
        &[
            "--sink",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            &stream,
            "--listen",
            &listen,
        ],
    );
    wait_all_published(&pool, Duration::from_secs(60)).await;
    // The gauges are sampled every 5 s: wait for a sample taken after the drain.
    let text = wait_until(
        Duration::from_secs(30),
        "a sample with nothing pending",
        || async {
            get(port, "/metrics")
                .await
                .filter(|(_, t)| t.contains("outbox_pending_events 0"))
                .map(|(_, t)| t)
        },
    )
    .await;
    for name in [
        "outbox_events_delivered_total{",
        "outbox_delivery_failures_total{",
        "kind=\"retryable\"",
        "kind=\"permanent\"",
        "outbox_events_dead_lettered_total{",
        "outbox_oldest_pending_age_seconds 0",
        "outbox_dead_letters 0",
        "outbox_delivery_latency_seconds_bucket{",
        "outbox_claim_batch_size_bucket{",
        "outbox_relay_info{version=\"",
        // The polling relay's batches are settled: nothing held.
        "outbox_buffer_bytes{source=\"poll\",sink=\"nats\"} 0",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(!text.contains(SECRET), "a secret in /metrics");
    let (passed, said) = require!(promtool_check_metrics(&text).await);
    assert!(
        passed && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );
    let (_, ready) = require!(get(port, "/readyz").await);
    assert!(!ready.contains(SECRET));

    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_says_the_sink_is_unreachable_while_the_relay_stays_alive() {
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let stream = nats.stream();

    // A relay delivering to NATS: alive and ready.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut relay = spawn_relay(
        &db.url,
        &[
            "--sink",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            &stream,
            "--listen",
            &listen,
        ],
    );
    insert(&pool, &format!("Order{}", nats.prefix), 20).await;
    wait_all_published(&pool, Duration::from_secs(60)).await;
    let ready = wait_status(port, "/readyz", 200, Duration::from_secs(30)).await;
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("JSON from /readyz");
    assert_eq!(ready["ready"], true);
    assert_eq!(
        wait_status(port, "/healthz", 200, Duration::from_secs(10)).await,
        "ok\n"
    );
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);

    // A relay pointed at a NATS port nobody listens on (with credentials in its URL): it
    // starts, stays alive, and says why it is not ready once a delivery fails.
    let dead_port = free_port();
    let sink = format!("nats://outbox:{SECRET}@127.0.0.1:{dead_port}?ack_timeout=1s");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut relay = spawn_relay(
        &url_with_password(&db),
        &[
            "--sink",
            &sink,
            "--nats-stream",
            &stream,
            "--listen",
            &listen,
        ],
    );
    insert(&pool, &format!("Order{}", nats.prefix), 1).await;
    // (Right at the start it is not ready either: the database was not reached yet.)
    let body = wait_until(
        Duration::from_secs(60),
        "/readyz naming the sink",
        || async {
            get(port, "/readyz")
                .await
                .filter(|(s, b)| *s == 503 && b.contains("sink unreachable"))
                .map(|(_, b)| b)
        },
    )
    .await;
    let why: serde_json::Value = serde_json::from_str(&body).expect("JSON from /readyz");
    assert_eq!(why["ready"], false, "{body}");
    let reason = why["reason"].as_str().expect("a reason");
    assert!(
        reason.starts_with(&format!(
            "sink unreachable: nats://outbox:***@127.0.0.1:{dead_port}"
        )),
        "{body}"
    );
    assert!(!body.contains(SECRET), "a secret in /readyz: {body}");
    let (status, _) = require!(get(port, "/healthz").await);
    assert_eq!(status, 200, "the relay is alive while its sink is down");
    let (_, text) = require!(get(port, "/metrics").await);
    assert!(!text.contains(SECRET), "a secret in /metrics");
    assert!(
        text.contains(
            "outbox_delivery_failures_total{source=\"poll\",sink=\"nats\",kind=\"retryable\"}"
        ),
        "{text}"
    );
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(30)).await, 0);
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cdc_relay_on_standby_is_alive_but_not_ready() {
    let db = require!(TestDb::create().await);
    let _pool = migrate(&db).await;
    let slot = format!("m{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (first_port, second_port) = (free_port(), free_port());
    let (first_listen, second_listen) = (
        format!("127.0.0.1:{first_port}"),
        format!("127.0.0.1:{second_port}"),
    );
    let args = |listen: &str| {
        vec![
            "--source".to_string(),
            "cdc".into(),
            "--slot".into(),
            slot.clone(),
            "--publication".into(),
            slot.clone(),
            "--sink".into(),
            "noop:".into(),
            "--listen".into(),
            listen.to_string(),
        ]
    };
    let first_args = args(&first_listen);
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut first = spawn_relay(&db.url, &first_args);
    let body = wait_status(first_port, "/readyz", 200, Duration::from_secs(60)).await;
    assert!(body.contains("\"ready\":true"), "{body}");

    let second_args = args(&second_listen);
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let mut second = spawn_relay(&db.url, &second_args);
    let body = wait_until(
        Duration::from_secs(60),
        "the second relay on standby",
        || async {
            get(second_port, "/readyz")
                .await
                .filter(|(s, b)| *s == 503 && b.contains("standby"))
                .map(|(_, b)| b)
        },
    )
    .await;
    let why: serde_json::Value = serde_json::from_str(&body).expect("JSON from /readyz");
    assert!(
        why["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("standby")),
        "{body}"
    );
    assert_eq!(
        wait_status(second_port, "/healthz", 200, Duration::from_secs(10)).await,
        "ok\n"
    );
    let (_, text) = require!(get(second_port, "/metrics").await);
    assert!(
        text.contains(&format!("outbox_cdc_standby{{slot=\"{slot}\"}} 1")),
        "{text}"
    );
    let text = wait_until(Duration::from_secs(30), "the slot's gauges", || async {
        get(first_port, "/metrics")
            .await
            .filter(|(_, t)| t.contains("outbox_cdc_slot_retained_wal_bytes{"))
            .map(|(_, t)| t)
    })
    .await;
    for name in [
        format!("outbox_cdc_standby{{slot=\"{slot}\"}} 0"),
        format!("outbox_cdc_replication_lag_bytes{{slot=\"{slot}\"}}"),
        "outbox_relay_info{version=\"".to_string(),
        "source=\"cdc\",sink=\"noop\"".to_string(),
    ] {
        assert!(text.contains(&name), "/metrics lacks {name}:\n{text}");
    }
    assert!(
        !text.contains("outbox_pending_events"),
        "no pending gauge for CDC"
    );
    let (passed, said) = require!(promtool_check_metrics(&text).await);
    assert!(
        passed && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );

    // The first relay stops: the standby takes over and becomes ready.
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait(Duration::from_secs(30)).await, 0);
    let body = wait_status(second_port, "/readyz", 200, Duration::from_secs(60)).await;
    assert!(body.contains("\"ready\":true"), "{body}");
    second.signal(libc::SIGTERM);
    assert_eq!(second.wait(Duration::from_secs(30)).await, 0);
}
