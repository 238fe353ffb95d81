//! The relay end to end on MySQL: real MariaDB, real NATS JetStream, the `outbox` binary —
//! `outbox migrate`, plain-SQL writers, delivery in the reference format, a relay SIGKILLed
//! under load, three relays at once, and the admin commands.

mod common;

use std::time::Duration;

use common::mysql::{insert_sequenced, migrate, wait_all_published};
use common::*;
use serde_json::json;

/// A relay on NATS with a short poll interval.
fn args<'a>(stream: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--sink", "nats://127.0.0.1:4222", "--nats-stream", stream];
    v.extend_from_slice(extra);
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_then_plain_sql_then_relay_delivers_in_the_reference_format_in_order() {
    let db = require!(MysqlTestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let again = outbox(Some(&db.url), &["migrate"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    let agg_type = format!("Order{}", nats.prefix);
    let subject = format!("order{}-events", nats.prefix);

    // The reference code's columns, with its own id and a naive UTC created_at.
    let plain_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, created_at, retry_count)
         VALUES (?, ?, 'o-1', 'OrderCreated', '{\"order_id\": \"o-1\", \"total\": 9.5}', UTC_TIMESTAMP(6), 0)",
    )
    .bind(plain_id.to_string())
    .bind(&agg_type)
    .execute(&pool)
    .await
    .unwrap();
    // The four columns a writer must give; the id and timestamps are defaults.
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES (?, 'o-1', 'OrderCancelled', '{\"order_id\": \"o-1\", \"reason\": \"x\"}')",
    )
    .bind(&agg_type)
    .execute(&pool)
    .await
    .unwrap();
    // And through the library, in the caller's transaction.
    let event = outbox::Event::new(&agg_type, "o-2", "OrderCreated", json!({"order_id": "o-2"}))
        .with_header("traceparent", "00-abc-01");
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();

    let stream = nats.stream();
    let url = db.url.clone();
    let mut relay = spawn_relay(&url, &args(&stream, &[]));
    wait_stream_len(&nats, &stream, 3, Duration::from_secs(20)).await;
    let msgs = nats.read_stream(&stream, 3, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 3);

    // Aggregate o-1's two events in order; o-2's (the library's) anywhere around them.
    let header = |m: &async_nats::jetstream::Message, name: &str| {
        m.headers.as_ref().unwrap().get(name).unwrap().to_string()
    };
    let (o1, o2): (Vec<_>, Vec<_>) = msgs.iter().partition(|m| header(m, "key") == "o-1");
    assert_eq!((o1.len(), o2.len()), (2, 1));
    let first = o1[0];
    assert_eq!(first.subject.as_str(), subject);
    let h = first.headers.as_ref().unwrap();
    let id = plain_id.to_string();
    assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), id);
    assert_eq!(h.get("id").unwrap().as_str(), id);
    assert_eq!(h.get("key").unwrap().as_str(), "o-1");
    assert_eq!(h.get("event_type").unwrap().as_str(), "OrderCreated");
    assert_eq!(h.get("aggregate_type").unwrap().as_str(), agg_type);
    let created: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT created_at FROM outbox WHERE id = ?")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(
        value,
        json!({
            "id": id, "type": "OrderCreated", "aggregate_id": "o-1",
            "timestamp": outbox_relay::route::envelope::isoformat(&created),
            "order_id": "o-1", "total": 9.5
        })
    );
    assert!(std::str::from_utf8(&first.payload)
        .unwrap()
        .starts_with(&format!("{{\"id\":\"{id}\",\"type\":")));

    let second: serde_json::Value = serde_json::from_slice(&o1[1].payload).unwrap();
    assert_eq!(
        (second["type"].as_str(), second["reason"].as_str()),
        (Some("OrderCancelled"), Some("x"))
    );
    let default_id = header(o1[1], "id");
    assert!(uuid::Uuid::parse_str(&default_id).is_ok(), "{default_id}");
    let third = o2[0].headers.as_ref().unwrap();
    assert_eq!(third.get("id").unwrap().as_str(), event.id().to_string());
    assert_eq!(third.get("traceparent").unwrap().as_str(), "00-abc-01");

    wait_all_published(&pool, Duration::from_secs(10)).await;
    // An idle relay notices a new event within its poll interval (100 ms on MySQL).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    insert_sequenced(&pool, &agg_type, 1, 1, 0).await;
    wait_stream_len(&nats, &stream, 4, Duration::from_secs(5)).await;
    let latency = started.elapsed();
    eprintln!("idle relay: plain-SQL insert → stream in {latency:?}");
    assert!(latency < Duration::from_secs(2), "{latency:?}");

    let status = outbox(Some(&url), &["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        (s["pending"].as_i64(), s["dead_letters"].as_i64()),
        (Some(0), Some(0))
    );
    relay.signal(libc::SIGTERM);
    assert_eq!(
        relay.wait(Duration::from_secs(15)).await,
        0,
        "SIGTERM exits 0"
    );
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_nothing_and_keeps_order() {
    let db = require!(MysqlTestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let stream = nats.stream();
    let load = relays::Load {
        aggregates: 100,
        per: 60,
        rounds: 20,
        more: 5,
    };
    let relay_args = args(&stream, &["--batch-size", "100"]);
    let kill_at = [300, 2_000, 5_000, 9_000];
    relays::sigkill_under_load(&db.url, &pool, &nats, &relay_args, load, &kill_at).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_relays_at_once_lose_nothing_and_keep_order() {
    let db = require!(MysqlTestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let stream = nats.stream();
    let load = relays::Load {
        aggregates: 40,
        per: 100,
        rounds: 10,
        more: 5,
    };
    let relay_args = args(&stream, &["--batch-size", "64", "--workers", "2"]);
    relays::three_relays(&db.url, &pool, &nats, &relay_args, load).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_backoff_and_the_admin_commands() {
    let db = require!(MysqlTestDb::create().await);
    let pool = migrate(&db).await;
    // An event whose headers are not a JSON object cannot be routed: it is dead-lettered (a
    // permanent failure), and the later event of its aggregate waits behind it.
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers) VALUES
         ('Bad', 'b', 'E', '{\"n\": 1}', '[1]'), ('Bad', 'b', 'E', '{\"n\": 2}', NULL),
         ('Good', 'g', 'E', '{\"n\": 1}', NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = scratch_file("mysql-sink.jsonl");
    let sink = format!("file:{}", out.display());
    let mut relay = spawn_relay(&db.url, &["--sink", &sink, "--poll-interval", "50ms"]);
    wait_until(Duration::from_secs(20), "a dead letter", || async {
        let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_dead_letter")
            .fetch_one(&pool)
            .await
            .unwrap();
        (dead == 1).then_some(())
    })
    .await;
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
    let status = outbox(Some(&db.url), &["status", "--json"]).await;
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        (s["pending"].as_i64(), s["dead_letters"].as_i64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let check = outbox(Some(&db.url), &["status", "--check"]).await;
    assert_eq!(check.code, 1, "{}", check.stdout);

    let list = outbox(Some(&db.url), &["dlq", "list"]).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains("Bad"), "{}", list.stdout);
    let id: String = sqlx::query_scalar("SELECT original_id FROM outbox_dead_letter")
        .fetch_one(&pool)
        .await
        .unwrap();
    let show = outbox(Some(&db.url), &["dlq", "show", &id]).await;
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(show.stdout.contains(&id), "{}", show.stdout);
    console_reads(&db.url, &id).await;
    let replay = outbox(Some(&db.url), &["dlq", "replay", &id]).await;
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM outbox WHERE aggregate_type = 'Bad' AND published_at IS NULL ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(seqs, vec![1, 2], "replayed with its original seq");
    // The good event was delivered, the bad aggregate held back.
    assert_eq!(jsonl_lines(&out).len(), 1);
    // Dead-letter it again by hand and purge.
    sqlx::query(
        "INSERT INTO outbox_dead_letter (original_id, seq, aggregate_type, aggregate_id,
             event_type, payload, created_at, retry_count, error)
         SELECT id, seq, aggregate_type, aggregate_id, event_type, payload, created_at, 1, 'x'
         FROM outbox WHERE seq = 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    let purge = outbox(Some(&db.url), &["dlq", "purge", "--all"]).await;
    assert_eq!(purge.code, 0, "{} {}", purge.stdout, purge.stderr);
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_dead_letter")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);

    sqlx::query("UPDATE outbox SET published_at = UTC_TIMESTAMP(6) - INTERVAL 30 DAY WHERE aggregate_type = 'Good'")
        .execute(&pool)
        .await
        .unwrap();
    let cleanup = outbox(Some(&db.url), &["cleanup", "--older-than", "7d"]).await;
    assert_eq!(cleanup.code, 0, "{}", cleanup.stderr);
    assert!(cleanup.stdout.contains("deleted 1 "), "{}", cleanup.stdout);
    let _ = std::fs::remove_file(out);
}

/// `outbox console` on MySQL: the overview (counts per routed topic), a dead letter's page with
/// its error history, an event found by its id (the dead letter `original_id` names).
async fn console_reads(url: &str, event_id: &str) {
    let port = outbox_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut console = tokio::process::Command::new(bin())
        .args(["console", "--listen", &listen])
        .env("DATABASE_URL", url)
        .env("OUTBOX_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let get = |path: String| async move {
        let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    };
    let overview = wait_until(Duration::from_secs(20), "the console", || {
        get("/api/overview".to_string())
    })
    .await;
    assert_eq!(overview.0, 200, "{}", overview.1);
    let v: serde_json::Value = serde_json::from_str(&overview.1).unwrap();
    assert_eq!(v["fields"]["dead_letters"], "1", "{v}");
    assert!(v["by_topic"].to_string().contains("bad-events"), "{v}");
    let (code, page) = get(format!("/events?id={event_id}")).await.unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains("headers column must hold a JSON object"),
        "{page}"
    );
    let (code, page) = get(format!("/dead-letters/{event_id}")).await.unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("error-history"), "{page}");
    let _ = console.kill().await;
}
