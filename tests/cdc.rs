//! `outbox relay --source cdc` end to end: the `outbox` binary, real PostgreSQL (wal_level =
//! logical), NATS JetStream or a JSON-lines file.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The reference connector registration, verbatim (its database.* point elsewhere: the tests'
/// DATABASE_URL overrides them, as documented).
const REFERENCE: &str = r#"{"name": "outbox-connector", "config": {"connector.class": "io.debezium.connector.postgresql.PostgresConnector", "database.hostname": "postgres", "database.port": "5432", "database.user": "app", "database.password": "secret", "database.dbname": "myapp", "topic.prefix": "myapp", "table.include.list": "public.outbox", "transforms": "outbox", "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter", "transforms.outbox.table.field.event.id": "id", "transforms.outbox.table.field.event.key": "aggregate_id", "transforms.outbox.table.field.event.type": "event_type", "transforms.outbox.table.field.event.payload": "payload", "transforms.outbox.route.by.field": "aggregate_type", "transforms.outbox.route.topic.replacement": "${routedByValue}-events"}}"#;

/// A slot name no other test (or engineer) uses: slots are cluster-global.
fn unique_slot() -> String {
    format!("cdc_{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

fn temp_file(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "outbox-cdc-{what}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

fn write_connector(text: &str) -> PathBuf {
    let path = temp_file("connector.json");
    std::fs::write(&path, text).expect("write connector file");
    path
}

/// Waits (bounded) until a relay streams from `slot`; returns the walsender's PID. (While
/// the slot is being created, the creating session holds it: that does not count.)
async fn wait_slot_active(pool: &sqlx::PgPool, slot: &str, limit: Duration) -> i32 {
    wait_until(
        limit,
        &format!("slot {slot} to be streamed from"),
        || async {
            sqlx::query_scalar::<_, Option<i32>>(
                "SELECT s.active_pid FROM pg_replication_slots s
                 JOIN pg_stat_activity a ON a.pid = s.active_pid AND a.backend_type = 'walsender'
                 WHERE s.slot_name = $1",
            )
            .bind(slot)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten()
            .flatten()
        },
    )
    .await
}

/// Drops a test's slot, waiting for its walsender to exit: slots are cluster-global and keep
/// the database from being dropped.
async fn drop_slot(pool: &sqlx::PgPool, slot: &str) {
    outbox_relay::store::replication::drop_slot(pool, slot, Duration::from_secs(10))
        .await
        .expect("drop the test's slot");
}

async fn current_lsn(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8")
        .fetch_one(pool)
        .await
        .expect("read the WAL position")
}

/// The complete lines of a JSON-lines sink file, parsed (a line cut by a SIGKILL is skipped).
fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_connector_registration_emits_what_debezium_emits() {
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let pool = migrate(&db).await;
    let slot = unique_slot();
    let connector = write_connector(REFERENCE);
    let stream = nats.stream();
    let agg_type = format!("Order{}", nats.prefix);
    let mut relay = spawn_relay(
        &db.url,
        &[
            "--source",
            "cdc",
            "--debezium-connector",
            connector.to_str().unwrap(),
            "--slot",
            &slot,
            "--sink",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            &stream,
        ],
    );
    wait_slot_active(&pool, &slot, Duration::from_secs(30)).await;

    let mut ids = Vec::new();
    for (agg, payload) in [
        (
            "o-1",
            r#"{"order_id": "o-1", "total": 9.5, "items": [{"sku": "a"}]}"#,
        ),
        ("o-2", r#"{"order_id": "o-2", "note": "naïve \"quoted\""}"#),
        ("o-1", r#"{"order_id": "o-1", "status": "shipped"}"#),
    ] {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             VALUES ($1, $2, 'OrderChanged', $3::jsonb) RETURNING id",
        )
        .bind(&agg_type)
        .bind(agg)
        .bind(payload)
        .fetch_one(&pool)
        .await
        .unwrap();
        ids.push(id);
    }
    wait_stream_len(&nats, &stream, 3, Duration::from_secs(30)).await;
    let msgs = nats.read_stream(&stream, 3, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        let m = msgs
            .iter()
            .find(|m| m.headers.as_ref().unwrap().get("id").unwrap().as_str() == id.to_string())
            .expect("every event arrives");
        let (agg, text): (String, String) =
            sqlx::query_as("SELECT aggregate_id, payload::text FROM outbox WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        // Topic: the aggregate type as written (no lower-casing) + "-events".
        assert_eq!(
            m.subject.as_str(),
            format!("{agg_type}-events"),
            "event {i}"
        );
        // Key and value as Kafka Connect's JsonConverter writes Debezium's string key and
        // string payload: JSON strings.
        let h = m.headers.as_ref().unwrap();
        assert_eq!(h.get("key").unwrap().as_str(), format!("\"{agg}\""));
        let expected_value = serde_json::to_string(&text).unwrap();
        assert_eq!(
            std::str::from_utf8(&m.payload).unwrap(),
            expected_value,
            "the jsonb payload is a JSON string, byte for byte"
        );
        // Debezium adds only the `id` header.
        assert!(h.get("event_type").is_none() && h.get("aggregate_type").is_none());
    }
    // Per aggregate, in commit order.
    let o1: Vec<String> = msgs
        .iter()
        .filter(|m| m.headers.as_ref().unwrap().get("key").unwrap().as_str() == "\"o-1\"")
        .map(|m| m.headers.as_ref().unwrap().get("id").unwrap().to_string())
        .collect();
    assert_eq!(o1, [ids[0].to_string(), ids[2].to_string()]);

    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(20)).await, 0);
    drop_slot(&pool, &slot).await;
    nats.cleanup().await;
    let _ = std::fs::remove_file(connector);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_transactions_and_one_of_100k_rows_arrive_once_each_in_commit_order() {
    let db = require!(TestDb::create().await);
    let pool = migrate(&db).await;
    let slot = unique_slot();
    let connector = write_connector(REFERENCE);
    let out = temp_file("many.jsonl");
    let sink = format!("file:{}", out.display());
    let mut relay = spawn_relay(
        &db.url,
        &[
            "--source",
            "cdc",
            "--debezium-connector",
            connector.to_str().unwrap(),
            "--slot",
            &slot,
            "--sink",
            &sink,
        ],
    );
    wait_slot_active(&pool, &slot, Duration::from_secs(30)).await;

    // n counts up per aggregate in the order the events must leave: commit order.
    // 1. 300 small transactions over 20 aggregates.
    for t in 0..300i64 {
        sqlx::query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'Small', 's' || ((($1 * 3) + g) % 20), 'Step',
                    jsonb_build_object('n', $1 * 3 + g)
             FROM generate_series(0, 2) AS g",
        )
        .bind(t)
        .execute(&pool)
        .await
        .unwrap();
    }
    // 2. One transaction of 100k rows over 1000 aggregates.
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'Big', 'b' || (g % 1000), 'Step', jsonb_build_object('n', g)
         FROM generate_series(0, 99999) AS g ORDER BY g",
    )
    .execute(&pool)
    .await
    .unwrap();
    // 3. Insert then delete in one transaction: delivered once, the table keeps nothing.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'Gone', 'g', 'Step', jsonb_build_object('n', g) FROM generate_series(0, 9) AS g",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("DELETE FROM outbox WHERE aggregate_type = 'Gone'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // 4. Two transactions on one aggregate that commit in the opposite order of their inserts.
    let mut first = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('Cross', 'c', 'Step', '{\"n\": 1}')")
        .execute(&mut *first).await.unwrap();
    let mut second = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('Cross', 'c', 'Step', '{\"n\": 0}')")
        .execute(&mut *second).await.unwrap();
    second.commit().await.unwrap();
    first.commit().await.unwrap();
    let expected = 900 + 100_000 + 10 + 2;

    let started = Instant::now();
    wait_until(
        Duration::from_secs(180),
        &format!("{expected} lines"),
        || async { (count_lines(&out) >= expected).then_some(()) },
    )
    .await;
    eprintln!(
        "{expected} events through CDC into a file in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_type = 'Gone'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(gone, 0);

    // The rows as written, by id.
    let rows: Vec<(uuid::Uuid, String, String, String)> =
        sqlx::query_as("SELECT id, aggregate_type, aggregate_id, payload::text FROM outbox")
            .fetch_all(&pool)
            .await
            .unwrap();
    let by_id: HashMap<String, (String, String, String)> = rows
        .into_iter()
        .map(|(id, t, a, p)| (id.to_string(), (t, a, p)))
        .collect();
    // Let a few more seconds pass: nothing more may arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lines = read_lines(&out);
    assert_eq!(lines.len(), expected, "once each, nothing more");
    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for l in &lines {
        let id = l["headers"]["id"].as_str().expect("id header").to_string();
        assert!(seen.insert(id.clone()), "event {id} delivered twice");
        let topic = l["topic"].as_str().unwrap();
        let key = l["key"].as_str().unwrap();
        let value = l["value"].as_str().expect("the value is a JSON string");
        if let Some((t, a, p)) = by_id.get(&id) {
            assert_eq!(topic, format!("{t}-events"));
            assert_eq!(key, format!("\"{a}\""));
            assert_eq!(value, p);
        } else {
            // The deleted rows.
            assert_eq!(topic, "Gone-events");
        }
        assert_eq!(
            l["headers"].as_object().unwrap().len(),
            1,
            "only the id header"
        );
        let n = serde_json::from_str::<serde_json::Value>(value).unwrap()["n"]
            .as_i64()
            .unwrap();
        if let Some(prev) = last.insert(format!("{topic}/{key}"), n) {
            assert!(
                n > prev,
                "{topic}/{key}: {n} after {prev}: not in commit order"
            );
        }
    }
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(30)).await, 0);
    drop_slot(&pool, &slot).await;
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(connector);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_nothing_and_redelivers_only_the_unconfirmed_tail() {
    let db = require!(TestDb::create().await);
    let pool = migrate(&db).await;
    let slot = unique_slot();
    let out = temp_file("kill.jsonl");
    let sink = format!("file:{}", out.display());
    let args = ["--source", "cdc", "--slot", &slot, "--sink", &sink];
    let mut relay = spawn_relay(&db.url, &args);
    wait_slot_active(&pool, &slot, Duration::from_secs(30)).await;

    // One writer: transaction t inserts 10 events (aggregates a0..a49, n = t) and records
    // the WAL position after its commit, an upper bound of the commit's end.
    const TXNS: i64 = 1500;
    let after_commit: Arc<Mutex<Vec<i64>>> = Arc::default();
    let writer = {
        let (pool, after_commit) = (pool.clone(), after_commit.clone());
        tokio::spawn(async move {
            for t in 0..TXNS {
                sqlx::query(
                    "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
                     SELECT 'Load', 'a' || (($1 * 10 + g) % 50), 'Step',
                            jsonb_build_object('n', $1, 'g', g)
                     FROM generate_series(0, 9) AS g",
                )
                .bind(t)
                .execute(&pool)
                .await
                .expect("insert");
                let lsn = current_lsn(&pool).await;
                after_commit.lock().unwrap().push(lsn);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };

    // SIGKILL at three points under load; remember where each run's output ends and how far
    // the slot was confirmed when it died.
    let mut cuts: Vec<(u64, i64, i64)> = Vec::new();
    for threshold in [1_000usize, 5_000, 9_000] {
        wait_until(
            Duration::from_secs(60),
            &format!("{threshold} lines"),
            || async { (count_lines(&out) >= threshold).then_some(()) },
        )
        .await;
        relay.kill().await;
        let confirmed = outbox_testkit::confirmed_flush(&pool, &slot).await;
        let at_kill = current_lsn(&pool).await;
        // A line cut by the kill stays a separate, unparsable line.
        let mut bytes = std::fs::read(&out).unwrap_or_default();
        if bytes.last().is_some_and(|&b| b != b'\n') {
            bytes.push(b'\n');
            std::fs::write(&out, &bytes).unwrap();
        }
        cuts.push((bytes.len() as u64, confirmed, at_kill));
        relay = spawn_relay(&db.url, &args);
    }
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writer finished")
        .unwrap();
    let total = (TXNS * 10) as usize;
    let ids: HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(ids.len(), total);
    wait_until(Duration::from_secs(60), "every event delivered", || async {
        let seen: HashSet<String> = read_lines(&out)
            .iter()
            .filter_map(|l| l["headers"]["id"].as_str().map(str::to_string))
            .collect();
        (seen.len() >= total).then_some(())
    })
    .await;
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(30)).await, 0);

    // Walk the file run by run.
    let bytes = std::fs::read(&out).unwrap();
    let after_commit = after_commit.lock().unwrap().clone();
    let mut seen: HashSet<String> = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let (mut start, mut report) = (0usize, Vec::new());
    for run in 0..=cuts.len() {
        let end = cuts.get(run).map_or(bytes.len(), |c| c.0 as usize);
        let confirmed_before = run.checked_sub(1).map(|k| cuts[k].1);
        let mut duplicates = 0usize;
        for line in bytes[start..end].split(|&b| b == b'\n') {
            let Ok(l) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            let id = l["headers"]["id"].as_str().unwrap().to_string();
            let key = l["key"].as_str().unwrap().to_string();
            let t = l["value"]["n"].as_i64().unwrap();
            assert!(ids.contains(&id), "unknown event {id}");
            if !seen.insert(id.clone()) {
                duplicates += 1;
                // Redelivered: its transaction must not have been confirmed when the previous
                // relay died (its commit ended after the slot's confirmed position).
                let confirmed = confirmed_before.expect("no duplicates within the first run");
                let upper = after_commit[t as usize];
                assert!(
                    upper > confirmed,
                    "event {id} of transaction {t} (committed by {upper}) was redelivered although \
                     the slot was confirmed to {confirmed}"
                );
                continue;
            }
            if let Some(prev) = last.insert(key.clone(), t) {
                assert!(
                    t > prev,
                    "aggregate {key}: transaction {t} first delivered after {prev}"
                );
            }
        }
        if let Some(k) = run.checked_sub(1) {
            // The unacknowledged tail: transactions committed before the kill but after the
            // slot's confirmed position (10 events each; one more for the boundary).
            let (_, confirmed, at_kill) = cuts[k];
            let tail = after_commit
                .iter()
                .filter(|&&u| u > confirmed && u <= at_kill)
                .count();
            assert!(
                duplicates <= (tail + 1) * 10,
                "run {run}: {duplicates} duplicates, more than the unacknowledged tail of {tail} \
                 transactions"
            );
            report.push((duplicates, tail * 10));
        }
        start = end;
    }
    assert_eq!(seen.len(), total, "nothing lost");
    eprintln!("after each kill: (duplicates, events in the unacknowledged tail) = {report:?}");
    drop_slot(&pool, &slot).await;
    let _ = std::fs::remove_file(out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_relay_takes_over_within_seconds() {
    let db = require!(TestDb::create().await);
    let pool = migrate(&db).await;
    let slot = unique_slot();
    let (out_a, out_b) = (temp_file("a.jsonl"), temp_file("b.jsonl"));
    let args = |out: &Path| -> Vec<String> {
        vec![
            "--source".into(),
            "cdc".into(),
            "--slot".into(),
            slot.clone(),
            "--sink".into(),
            format!("file:{}", out.display()),
        ]
    };
    let a_args = args(&out_a);
    let b_args = args(&out_b);
    let mut a = spawn_relay(
        &db.url,
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let a_pid = wait_slot_active(&pool, &slot, Duration::from_secs(30)).await;
    let mut b = spawn_relay(
        &db.url,
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    insert_sequenced(&pool, "Standby", 5, 2, 0).await;
    wait_until(Duration::from_secs(30), "10 events through A", || async {
        (count_lines(&out_a) >= 10).then_some(())
    })
    .await;
    // B stood by: it delivered nothing and the slot is still A's.
    assert_eq!(count_lines(&out_b), 0);
    let still: Option<i32> =
        sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&slot)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(still, Some(a_pid));

    a.kill().await;
    let killed = Instant::now();
    insert_sequenced(&pool, "Standby", 5, 1, 2).await;
    wait_until(
        Duration::from_secs(15),
        "B to deliver the new events",
        || async {
            let lines = read_lines(&out_b);
            (lines.iter().filter(|l| l["value"]["n"] == 2).count() == 5).then_some(())
        },
    )
    .await;
    let took = killed.elapsed();
    eprintln!(
        "standby took over and delivered in {:.2}s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait(Duration::from_secs(30)).await, 0);
    let _ = std::fs::remove_file(out_a);
    drop_slot(&pool, &slot).await;
    let _ = std::fs::remove_file(out_b);
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_problems_exit_with_status_2_and_no_password() {
    let db = require!(TestDb::create().await);
    let pool = migrate(&db).await;
    let slot = unique_slot();
    let base = ["relay", "--source", "cdc", "--sink", "stdout:", "--slot"];
    let run = |db_url: Option<String>, extra: Vec<String>| {
        let slot = slot.clone();
        async move {
            let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            args.push(slot);
            args.extend(extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            outbox(db_url.as_deref(), &args).await
        }
    };

    // A connector of another kind.
    let mysql = write_connector(
        r#"{"name": "x", "config": {"connector.class": "io.debezium.connector.mysql.MySqlConnector"}}"#,
    );
    let r = run(
        Some(db.url.clone()),
        vec!["--debezium-connector".into(), mysql.display().to_string()],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("only Debezium's PostgreSQL connector"),
        "{}",
        r.stderr
    );
    // Not JSON, an EventRouter option the relay cannot honour.
    let bad = write_connector("{\"config\": ");
    let r = run(
        Some(db.url.clone()),
        vec!["--debezium-connector".into(), bad.display().to_string()],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not valid JSON"), "{}", r.stderr);
    let regex = write_connector(&REFERENCE.replace(
        "\"transforms.outbox.route.by.field\"",
        "\"transforms.outbox.route.topic.regex\": \"(.*)\", \"transforms.outbox.route.by.field\"",
    ));
    let r = run(
        Some(db.url.clone()),
        vec!["--debezium-connector".into(), regex.display().to_string()],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("route.topic.regex"), "{}", r.stderr);

    // The connector's own database.* (no --database-url): its password never shows.
    let own = write_connector(
        &REFERENCE
            .replace(
                "\"postgres\", \"database.port\"",
                "\"127.0.0.1\", \"database.port\"",
            )
            .replace("\"secret\"", "\"s3cret-pw\"")
            .replace(
                "\"myapp\", \"topic.prefix\"",
                "\"no_such_db_for_cdc\", \"topic.prefix\"",
            ),
    );
    let r = run(
        None,
        vec!["--debezium-connector".into(), own.display().to_string()],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("127.0.0.1"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("s3cret-pw"),
        "password leaked: {}",
        r.stderr
    );

    // A user without the REPLICATION privilege.
    let role = format!(
        "cdc_norepl_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
        .execute(&pool)
        .await
        .unwrap();
    let weak_url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let r = run(Some(weak_url), vec![]).await;
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("lacks the REPLICATION privilege"),
        "{}",
        r.stderr
    );

    // Routing flags that Debezium options decide.
    let reference = write_connector(REFERENCE);
    let r = run(
        Some(db.url.clone()),
        vec![
            "--debezium-connector".into(),
            reference.display().to_string(),
            "--topic".into(),
            "x".into(),
        ],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--topic does not apply"), "{}", r.stderr);
    drop_slot(&pool, &slot).await;
    for f in [mysql, bad, regex, own, reference] {
        let _ = std::fs::remove_file(f);
    }
}
