//! The relay end to end: real PostgreSQL, real NATS JetStream, the `outbox` binary.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Topic template → subject for an aggregate type made unique per test.
fn args<'a>(stream: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--sink",
        "nats://127.0.0.1:4222",
        "--nats-stream",
        stream,
        "--poll-interval",
        "200ms",
    ];
    v.extend_from_slice(extra);
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn library_and_plain_sql_events_reach_nats_per_the_contract() {
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let agg_type = format!("Order{}", nats.prefix);
    let subject = format!("order{}-events", nats.prefix);

    // Library write, with a header, inside the caller's transaction.
    let event = outbox::Event::new(
        &agg_type,
        "o-1",
        "OrderCreated",
        json!({"order_id": "o-1", "total": 9.5}),
    )
    .with_header("traceparent", "00-abc-01");
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    // Plain SQL with only the reference code's columns.
    let plain_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, created_at, retry_count)
         VALUES ($1, $2, 'o-1', 'OrderCancelled', '{\"order_id\": \"o-1\", \"reason\": \"x\"}', now(), 0)",
    )
    .bind(plain_id)
    .bind(&agg_type)
    .execute(&pool)
    .await
    .unwrap();

    let stream = nats.stream();
    let mut relay = spawn_relay(&db.url, &args(&stream, &[]));
    wait_stream_len(&nats, &stream, 2, Duration::from_secs(20)).await;
    let msgs = nats.read_stream(&stream, 2, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 2);

    let first = &msgs[0];
    assert_eq!(first.subject.as_str(), subject);
    let h = first.headers.as_ref().unwrap();
    let id = event.id().to_string();
    assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), id);
    assert_eq!(h.get("id").unwrap().as_str(), id);
    assert_eq!(h.get("key").unwrap().as_str(), "o-1");
    assert_eq!(h.get("event_type").unwrap().as_str(), "OrderCreated");
    assert_eq!(h.get("aggregate_type").unwrap().as_str(), agg_type);
    assert_eq!(h.get("traceparent").unwrap().as_str(), "00-abc-01");
    let value: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    let created: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT created_at FROM outbox WHERE id = $1")
            .bind(event.id())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        value,
        json!({
            "id": id, "type": "OrderCreated", "aggregate_id": "o-1",
            "timestamp": outbox_relay::route::envelope::isoformat(&created),
            "order_id": "o-1", "total": 9.5
        })
    );
    // Field order follows the reference: id, type, aggregate_id, timestamp, then the payload.
    assert!(std::str::from_utf8(&first.payload)
        .unwrap()
        .starts_with(&format!("{{\"id\":\"{id}\",\"type\":")));

    let second = &msgs[1];
    assert_eq!(second.subject.as_str(), subject);
    let h = second.headers.as_ref().unwrap();
    assert_eq!(h.get("id").unwrap().as_str(), plain_id.to_string());
    let value: serde_json::Value = serde_json::from_slice(&second.payload).unwrap();
    assert_eq!(value["type"], "OrderCancelled");
    assert_eq!(value["reason"], "x");

    // Both rows are marked published (the relay marks them after the broker's ack, so a
    // consumer can see a message a moment before its row is marked).
    wait_all_published(&pool, Duration::from_secs(10)).await;
    relay.signal(libc::SIGTERM);
    assert_eq!(
        relay.wait(Duration::from_secs(15)).await,
        0,
        "SIGTERM exits 0"
    );
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_wakes_the_relay_long_before_the_poll_interval() {
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let stream = nats.stream();
    let agg = format!("Ping{}", nats.prefix);
    let insert = |n: i64| {
        let pool = pool.clone();
        let agg = agg.clone();
        async move {
            sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ($1, 'p', 'Ping', jsonb_build_object('n', $2::bigint))")
                .bind(agg)
                .bind(n)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    insert(1).await;
    let mut relay = spawn_relay(
        &db.url,
        &[
            "--sink",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            &stream,
            "--poll-interval",
            "60s",
        ],
    );
    wait_stream_len(&nats, &stream, 1, Duration::from_secs(20)).await;
    // The relay is now idle, waiting up to 60 s unless a notification wakes it.
    let started = std::time::Instant::now();
    insert(2).await;
    wait_stream_len(&nats, &stream, 2, Duration::from_secs(5)).await;
    eprintln!("plain-SQL insert → stream: {:?}", started.elapsed());
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_drain_loses_nothing_and_keeps_order() {
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let stream = nats.stream();
    let load = relays::Load {
        aggregates: 100,
        per: 100,
        rounds: 20,
        more: 10,
    };
    let relay_args = args(&stream, &["--batch-size", "100"]);
    let kill_at = [500, 3_000, 8_000, 14_000];
    relays::sigkill_under_load(&db.url, &pool, &nats, &relay_args, load, &kill_at).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_relays_at_once_lose_nothing_and_keep_order() {
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let stream = nats.stream();
    let load = relays::Load {
        aggregates: 40,
        per: 150,
        rounds: 10,
        more: 5,
    };
    let relay_args = args(&stream, &["--batch-size", "64", "--workers", "2"]);
    relays::three_relays(&db.url, &pool, &nats, &relay_args, load).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_level_failure_is_never_dead_lettered_others_flow_and_it_resumes_by_itself() {
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let stream = nats.stream();
    let good = format!("Good{}", nats.prefix);
    let bad = format!("Bad{}", nats.prefix);
    let good_subject = format!("good{}-events", nats.prefix);
    let bad_subject = format!("bad{}-events", nats.prefix);
    // The stream captures only the good subject: publishes of `bad` find no stream.
    let config = std::env::temp_dir().join(format!("{}.toml", nats.prefix));
    std::fs::write(
        &config,
        format!("[nats]\nsubjects = [\"{good_subject}\"]\n"),
    )
    .unwrap();

    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ($1, 'p', 'Step', '{\"n\": 1}'), ($1, 'p', 'Step', '{\"n\": 2}')",
    )
    .bind(&bad)
    .execute(&pool)
    .await
    .unwrap();
    insert_sequenced(&pool, &good, 20, 10, 0).await;

    let config_arg = config.to_string_lossy().to_string();
    let mut relay = spawn_relay(
        &db.url,
        &args(
            &stream,
            &[
                "--config",
                &config_arg,
                "--max-attempts",
                "3",
                "--backoff-base",
                "50ms",
                "--backoff-max",
                "200ms",
            ],
        ),
    );
    // The good aggregates flow while the bad one waits.
    wait_stream_len(&nats, &stream, 200, Duration::from_secs(30)).await;
    // A stream that does not capture the subject is the sink's problem, not the message's:
    // the head event is retried, never counted, never dead-lettered, however long it lasts —
    // watch it be rescheduled well past `--max-attempts 3`.
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for six rescheduled attempts (saw {})",
            seen.len()
        );
        let (retry_count, last_error, due): (
            i32,
            Option<String>,
            Option<chrono::DateTime<chrono::Utc>>,
        ) = sqlx::query_as(
            "SELECT retry_count, last_error, next_attempt_at FROM outbox
             WHERE aggregate_type = $1 ORDER BY seq LIMIT 1",
        )
        .bind(&bad)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(retry_count, 0, "an unavailable sink counted an attempt");
        if let (Some(e), Some(due)) = (last_error, due) {
            assert!(e.contains(&bad_subject), "{e}");
            seen.insert(due);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letter")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "an outage made a dead letter");

    // Fix the stream: both events of the bad aggregate arrive by themselves, in order.
    let mut s = nats.js.get_stream(&stream).await.unwrap();
    let mut cfg = s.info().await.unwrap().config.clone();
    cfg.subjects.push(bad_subject.clone());
    nats.js.update_stream(cfg).await.unwrap();
    wait_stream_len(&nats, &stream, 202, Duration::from_secs(30)).await;
    let msgs = nats.read_stream(&stream, 202, Duration::from_secs(5)).await;
    assert_eq!(check_order(&msgs), 202);
    let bad_ns: Vec<i64> = msgs
        .iter()
        .filter(|m| m.subject.as_str() == bad_subject)
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(bad_ns, vec![1, 2]);
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
    let _ = std::fs::remove_file(config);
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_batch_in_flight_and_exits_zero() {
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let stream = nats.stream();
    insert_sequenced(&pool, &format!("Term{}", nats.prefix), 500, 40, 0).await;
    let mut relay = spawn_relay(&db.url, &args(&stream, &["--batch-size", "200"]));
    wait_stream_len(&nats, &stream, 1000, Duration::from_secs(30)).await;
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
    // Every event that reached the stream was marked published: nothing acknowledged was left
    // unrecorded (the stream dedupes by id, so its count is the distinct deliveries).
    let published: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(published as u64, stream_len(&nats, &stream).await);
    assert!(published < 20_000, "stopped before the end of the backlog");
    nats.cleanup().await;
}

/// Runs a relay at trace level with credentials in the NATS URL until it delivered one event;
/// returns everything it logged.
async fn logs_of_a_relay_with(sink: &str, db: &TestDb, nats: &TestNats) -> String {
    let pool = migrate(db).await;
    let stream = nats.stream();
    let agg_type = format!("Order{}", nats.prefix);
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ($1, 'o-1', 'OrderCreated', '{}')",
    )
    .bind(&agg_type)
    .execute(&pool)
    .await
    .unwrap();
    let log = std::env::temp_dir().join(format!("outbox-secret-{}.log", nats.prefix));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = tokio::process::Command::new(bin())
        .args(["relay", "--sink", sink, "--nats-stream", &stream])
        .args(["--log-level", "trace", "--poll-interval", "200ms"])
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_stream_len(nats, &stream, 1, Duration::from_secs(20)).await;
    let _ = child.kill().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("relay started"), "the relay logged: {text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_credentials_never_reach_the_logs_even_at_trace_level() {
    for sink in [
        "nats://planted-user:PLANTED-SECRET-pass@127.0.0.1:4222",
        "nats://PLANTED-SECRET-token@127.0.0.1:4222",
    ] {
        let db = require!(TestDb::create().await);
        let nats = require!(TestNats::connect().await);
        let logs = logs_of_a_relay_with(sink, &db, &nats).await;
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("PLANTED-SECRET"))
            .collect();
        assert!(
            leaks.is_empty(),
            "{sink}: {} lines leak it: {leaks:#?}",
            leaks.len()
        );
        nats.cleanup().await;
    }
}
