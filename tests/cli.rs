//! The `outbox` command line: exit statuses and messages, status, dead letters, cleanup, SQLite.

mod common;

use std::time::Duration;

use common::*;

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "outbox-cli-{}-{name}",
        uuid::Uuid::new_v4().simple()
    ))
}

#[tokio::test]
async fn bad_inputs_exit_2_with_one_clear_line() {
    let cfg = temp_path("bad.toml");
    std::fs::write(&cfg, "[relay]\nbatchsize = 10\n").unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_string();
    // A syntax error on a line that holds a password, and a value of the wrong type.
    let broken = temp_path("broken.toml");
    std::fs::write(
        &broken,
        "[relay]\nsink = \"nats://app:hunter2@nats:4222\" oops\n",
    )
    .unwrap();
    let broken_arg = broken.to_str().unwrap().to_string();
    let mistyped = temp_path("mistyped.toml");
    std::fs::write(
        &mistyped,
        "[relay]\nbatch_size = \"nats://app:hunter2@nats:4222\"\n",
    )
    .unwrap();
    let mistyped_arg = mistyped.to_str().unwrap().to_string();
    let mem = Some("sqlite::memory:");
    let cases: Vec<(Option<&str>, Vec<&str>, Vec<&str>)> = vec![
        // Unknown sink scheme, with the supported ones listed.
        (
            mem,
            vec!["relay", "--sink", "kafkaa://localhost:9092"],
            vec!["unknown sink", "nats://"],
        ),
        (mem, vec!["relay"], vec!["no sink: pass --sink"]),
        // Bad config file: an unknown key is named.
        (
            mem,
            vec!["relay", "--sink", "stdout:", "--config", &cfg_arg],
            vec!["config file", "batchsize"],
        ),
        (
            mem,
            vec!["relay", "--sink", "stdout:", "--topic", "{nope}-events"],
            vec!["--topic: template", "unknown placeholder {nope}"],
        ),
        (
            mem,
            vec!["relay", "--sink", "stdout:", "--key", "{nope}"],
            vec!["--key: template", "unknown placeholder {nope}"],
        ),
        (
            mem,
            vec![
                "relay",
                "--sink",
                "stdout:",
                "--debezium-connector",
                "c.json",
            ],
            vec![
                "--debezium-connector configures the CDC source",
                "--source cdc",
            ],
        ),
        (
            mem,
            vec!["relay", "--sink", "stdout:", "--batch-size", "0"],
            vec!["batch_size"],
        ),
        (mem, vec!["relay", "--sink", "file:"], vec!["needs a path"]),
        (
            mem,
            vec!["relay", "--sink", "nats://:4222"],
            vec!["invalid NATS URL"],
        ),
        (
            mem,
            vec!["relay", "--sink", "stdout:", "--source", "cdc"],
            vec!["cdc"],
        ),
        // Unsupported database URL, with a password that must not be echoed.
        (
            Some("oracle://app:hunter2@db/shop"),
            vec!["status"],
            vec!["unsupported database URL"],
        ),
        // A MySQL server that is not there: one line, the password masked.
        (
            Some("mysql://app:hunter2@127.0.0.1:1/shop"),
            vec!["status"],
            vec!["cannot connect", "mysql://app:***@127.0.0.1:1/shop"],
        ),
        (
            Some("mariadb://app:hunter2@127.0.0.1:1/shop"),
            vec!["relay", "--sink", "stdout:", "--source", "cdc"],
            vec!["binlog is not implemented"],
        ),
        (None, vec!["status"], vec!["no database"]),
        // A libpq key=value connection string: refused without echoing its password.
        (
            Some("host=db user=app password=hunter2 dbname=shop"),
            vec!["status"],
            vec!["unsupported database URL", "password=***"],
        ),
        (
            mem,
            vec!["relay", "--sink", "stdout:", "--config", &broken_arg],
            vec!["config file", "line 2"],
        ),
        (
            mem,
            vec!["relay", "--sink", "stdout:", "--config", &mistyped_arg],
            vec!["config file", "line 2", "nats://app:***@nats:4222"],
        ),
        (mem, vec!["dlq", "show", "42"], vec!["is not an id"]),
        (
            mem,
            vec!["relay", "--sink", "stdout:extra"],
            vec!["takes nothing after the colon"],
        ),
        (
            mem,
            vec!["status", "--log-level", "bogus"],
            vec!["log level \"bogus\"", "trace"],
        ),
        (
            mem,
            vec!["cleanup", "--older-than", "9999999999d"],
            vec!["--older-than is too large"],
        ),
        (
            mem,
            vec!["cleanup", "--older-than", "soon"],
            vec!["not a duration"],
        ),
    ];
    for (db, args, expected) in cases {
        let r = outbox(db, &args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        for e in expected {
            assert!(
                r.stderr.contains(e),
                "{args:?}: expected {e:?} in {}",
                r.stderr
            );
        }
        assert!(
            !r.stderr.contains("hunter2"),
            "password leaked: {}",
            r.stderr
        );
        if !r.stderr.contains("Usage:") && !r.stderr.contains("For more information") {
            // Our own errors are one line; clap's usage errors add a usage hint.
            assert_eq!(r.stderr.trim().lines().count(), 1, "{args:?}: {}", r.stderr);
        }
    }
    std::fs::remove_file(&cfg).unwrap();
    std::fs::remove_file(&broken).unwrap();
    std::fs::remove_file(&mistyped).unwrap();
}

#[tokio::test]
async fn unreachable_database_exits_2_without_leaking_the_password() {
    let url = "postgres://app:s3cr3t-pw@127.0.0.1:1/shop";
    for args in [
        vec!["relay", "--sink", "stdout:"],
        vec!["status"],
        vec!["migrate"],
    ] {
        let r = outbox(Some(url), &args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("cannot connect to the database at postgres://app:***@127.0.0.1:1/shop"),
            "{}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("s3cr3t"),
            "password leaked: {}",
            r.stderr
        );
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    }
}

#[tokio::test]
async fn missing_table_exits_2_with_the_migrate_hint() {
    let db = require!(TestDb::create().await);
    for args in [
        vec!["relay", "--sink", "stdout:"],
        vec!["status"],
        vec!["dlq", "list"],
        vec!["cleanup", "--older-than", "7d"],
    ] {
        let r = outbox(Some(&db.url), &args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("run `outbox migrate`"),
            "{args:?}: {}",
            r.stderr
        );
    }
    let r = outbox(Some(&db.url), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("applied migration 1"), "{}", r.stdout);
    let r = outbox(Some(&db.url), &["migrate"]).await;
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("up to date"), "{}", r.stdout);
}

async fn cleanup_fixture(url: &str, pg: bool) {
    // Four kinds of rows: old published (deleted), recent published, old pending, old dead.
    let q = if pg {
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at, published_at) VALUES
           ('T', 'old', 'E', '{}', now() - interval '30 days', now() - interval '10 days'),
           ('T', 'old', 'E', '{}', now() - interval '30 days', now() - interval '9 days'),
           ('T', 'old', 'E', '{}', now() - interval '30 days', now() - interval '8 days'),
           ('T', 'new', 'E', '{}', now() - interval '1 day', now() - interval '1 hour'),
           ('T', 'pending', 'E', '{}', now() - interval '30 days', NULL);
         INSERT INTO outbox_dead_letter (original_id, seq, aggregate_type, aggregate_id, event_type, payload, created_at, retry_count, error, failed_at)
           VALUES (gen_random_uuid(), 999, 'T', 'dead', 'E', '{}', now() - interval '30 days', 5, 'x', now() - interval '20 days');"
    } else {
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at, published_at) VALUES
           ('T', 'old', 'E', '{}', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 days')),
           ('T', 'old', 'E', '{}', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-9 days')),
           ('T', 'old', 'E', '{}', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-8 days')),
           ('T', 'new', 'E', '{}', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 days'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hours')),
           ('T', 'pending', 'E', '{}', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days'), NULL);
         INSERT INTO outbox_dead_letter (original_id, seq, aggregate_type, aggregate_id, event_type, payload, created_at, retry_count, error, failed_at)
           VALUES ('00000000-0000-4000-8000-000000000001', 999, 'T', 'dead', 'E', '{}', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days'), 5, 'x', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-20 days'));"
    };
    let store = outbox_relay::Store::connect(url, &outbox_relay::store::ConnectOptions::default())
        .await
        .unwrap();
    match &store {
        outbox_relay::Store::Postgres(p) => {
            sqlx::Executor::execute(p, q).await.unwrap();
        }
        outbox_relay::Store::Sqlite(_) => {
            sqlx::Executor::execute(store.sqlite_pool().unwrap(), q)
                .await
                .unwrap();
        }
        outbox_relay::Store::Mysql(_) => panic!("this fixture is PostgreSQL or SQLite"),
    }
}

async fn cleanup_removes_only_old_published(url: &str, pg: bool) {
    let r = outbox(Some(url), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    cleanup_fixture(url, pg).await;

    let r = outbox(Some(url), &["cleanup", "--older-than", "7d", "--dry-run"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("3 published event(s)"), "{}", r.stdout);

    let r = outbox(
        Some(url),
        &["cleanup", "--older-than", "7d", "--batch-size", "2"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("deleted 3 published event(s)"),
        "{}",
        r.stdout
    );

    let store = outbox_relay::Store::connect(url, &outbox_relay::store::ConnectOptions::default())
        .await
        .unwrap();
    let status = store.status().await.unwrap();
    assert_eq!(status.pending, 1, "pending rows untouched");
    assert_eq!(status.dead_letters, 1, "dead letters untouched");
    assert_eq!(
        store.count_cleanable(chrono::Utc::now()).await.unwrap(),
        1,
        "the recent published row stays"
    );
}

#[tokio::test]
async fn cleanup_deletes_only_published_rows_past_retention_postgres() {
    let db = require!(TestDb::create().await);
    cleanup_removes_only_old_published(&db.url, true).await;
}

#[tokio::test]
async fn cleanup_deletes_only_published_rows_past_retention_sqlite() {
    let path = temp_path("cleanup.db");
    std::fs::File::create(&path).unwrap();
    cleanup_removes_only_old_published(&format!("sqlite:{}", path.display()), false).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn sqlite_relay_delivers_to_a_file_and_status_dlq_work() {
    let out = temp_path("events.jsonl");
    let (path, url, store) = migrated_sqlite("relay.db").await;
    {
        let pool = store.sqlite_pool().unwrap();
        let mut tx = pool.begin().await.unwrap();
        for n in 0..50 {
            let e = outbox::Event::new(
                "Order",
                format!("o-{}", n % 5),
                "Step",
                serde_json::json!({ "n": n }),
            );
            outbox::enqueue(&mut *tx, &e).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let r = outbox(Some(&url), &["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(status["pending"], 50);

    let mut relay = spawn_relay(
        &url,
        &[
            "--sink",
            &format!("file:{}", out.display()),
            "--poll-interval",
            "50ms",
        ],
    );
    let lines = wait_until(Duration::from_secs(20), "50 lines in the file", || async {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        (text.lines().count() >= 50).then_some(text)
    })
    .await;
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
    let mut last = std::collections::HashMap::new();
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["topic"], "order-events");
        let n = v["value"]["n"].as_i64().unwrap();
        if let Some(prev) = last.insert(v["key"].as_str().unwrap().to_string(), n) {
            assert!(n > prev, "order per aggregate");
        }
    }
    let r = outbox(Some(&url), &["status"]).await;
    assert!(r.stdout.contains("pending       0"), "{}", r.stdout);
    let r = outbox(Some(&url), &["dlq", "list"]).await;
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("no dead letters"));
    remove_sqlite(&path, store).await;
    let _ = std::fs::remove_file(&out);
}

#[tokio::test]
async fn the_demo_loses_nothing_and_keeps_order() {
    let dir = temp_path("demo");
    let r = outbox(
        None,
        &[
            "demo",
            "--orders",
            "400",
            "--writers",
            "4",
            "--dir",
            dir.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for line in [
        "lost                      0",
        "order violations          0",
        "dead-lettered             1",
        "replayed 1",
    ] {
        assert!(
            r.stdout.contains(line),
            "missing {line:?} in:\n{}",
            r.stdout
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_older_schema_asks_for_migrate_and_migrate_upgrades_it() {
    let db = require!(TestDb::create().await);
    let pool = db.pool().await;
    // A database migrated by the first release: version 1 only.
    let v1 = outbox::migrate::POSTGRES[0];
    sqlx::Executor::execute(&pool, v1.sql).await.unwrap();
    sqlx::Executor::execute(
        &pool,
        "CREATE TABLE outbox_migrations (version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO outbox_migrations (version, name) VALUES (1, 'outbox');",
    )
    .await
    .unwrap();
    let r = outbox(Some(&db.url), &["relay", "--sink", "stdout:"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("schema is at version 1") && r.stderr.contains("run `outbox migrate`"),
        "{}",
        r.stderr
    );
    let r = outbox(Some(&db.url), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("applied migration 2"), "{}", r.stdout);
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE indexname = 'outbox_pending_aggregate_idx'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn status_check_fails_on_old_pending_events_and_dead_letters() {
    let path = temp_path("check.db");
    std::fs::File::create(&path).unwrap();
    let url = format!("sqlite:{}", path.display());
    assert_eq!(outbox(Some(&url), &["migrate"]).await.code, 0);

    let r = outbox(Some(&url), &["status", "--check"]).await;
    assert_eq!(
        r.code, 0,
        "an empty outbox passes: {}{}",
        r.stdout, r.stderr
    );
    assert!(r.stdout.starts_with("ok: 0 pending"), "{}", r.stdout);

    // A 30-day-old pending event and a dead letter.
    cleanup_fixture(&url, false).await;
    let r = outbox(Some(&url), &["status", "--check"]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    assert!(
        line.contains("oldest pending event is 30.0d old (--max-age 5.0m)"),
        "{line}"
    );
    assert!(line.contains("1 dead letter"), "{line}");

    let r = outbox(Some(&url), &["status", "--check", "--max-age", "60d"]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("oldest pending"), "{}", r.stderr);
    assert!(r.stderr.contains("dead letter"), "{}", r.stderr);

    let r = outbox(
        Some(&url),
        &[
            "status",
            "--check",
            "--max-age",
            "60d",
            "--allow-dead-letters",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn migrate_creates_a_missing_sqlite_file_and_purging_everything_says_so() {
    let path = temp_path("created-by-migrate.db");
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite:{}", path.display());
    let r = outbox(Some(&url), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(path.exists(), "migrate created {}", path.display());

    // One dead letter among other rows.
    cleanup_fixture(&url, false).await;
    // Not on a terminal, with no ids: as before, everything, and it says so.
    let r = outbox(Some(&url), &["dlq", "purge"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("purging all 1 dead letters"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("purged 1"), "{}", r.stdout);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_reader_that_stops_early_does_not_make_dlq_list_panic() {
    use tokio::io::AsyncBufReadExt;
    let (path, url, store) = migrated_sqlite("pipe.db").await;
    {
        let pool = store.sqlite_pool().unwrap();
        for n in 0..2000 {
            sqlx::query(
                "INSERT INTO outbox_dead_letter (original_id, seq, aggregate_type, aggregate_id,
                     event_type, payload, created_at, retry_count, error, failed_at)
                 VALUES (?, ?, 'T', 'a', 'E', '{}', '2026-01-01T00:00:00Z', 1, 'x',
                         '2026-01-01T00:00:00Z')",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(n)
            .execute(pool)
            .await
            .unwrap();
        }
    }
    // `outbox dlq list --limit 2000 | head -1`: read one line, then close the pipe.
    let mut child = tokio::process::Command::new(bin())
        .args(["dlq", "list", "--limit", "2000"])
        .env("DATABASE_URL", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut first)
        .await
        .unwrap();
    assert!(!first.is_empty());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("dlq list ended")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    remove_sqlite(&path, store).await;
}

/// `cleanup --inbox`: inbox rows and positions past retention go, recent ones stay; a database
/// without the inbox says how to create it.
async fn cleanup_inbox_removes_only_old_rows(url: &str, pg: bool) {
    let r = outbox(Some(url), &["cleanup", "--inbox", "--older-than", "7d"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("outbox_inbox"), "{}", r.stderr);
    let store = outbox_relay::Store::connect(url, &outbox_relay::store::ConnectOptions::default())
        .await
        .unwrap();
    let (ago, recent) = if pg {
        ("now() - interval '10 days'", "now() - interval '1 hour'")
    } else {
        (
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 days')",
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hours')",
        )
    };
    let ids = [
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    ];
    let fixture = format!(
        "INSERT INTO outbox_inbox (id, consumer, received_at) VALUES
           ('{}', 'shipping', {ago}), ('{}', 'billing', {ago}), ('{}', 'shipping', {recent});
         INSERT INTO outbox_inbox_position (consumer, aggregate_type, aggregate_id, last_position, updated_at)
           VALUES ('shipping', 'Order', 'o-1', 3, {ago}), ('shipping', 'Order', 'o-2', 4, {recent});",
        ids[0], ids[1], ids[2]
    );
    match &store {
        outbox_relay::Store::Postgres(p) => {
            outbox::inbox::create_tables(&mut *p.acquire().await.unwrap())
                .await
                .unwrap();
            sqlx::Executor::execute(p, fixture.as_str()).await.unwrap();
        }
        outbox_relay::Store::Sqlite(_) => {
            let p = store.sqlite_pool().unwrap();
            outbox::inbox::create_tables(&mut *p.acquire().await.unwrap())
                .await
                .unwrap();
            sqlx::Executor::execute(p, fixture.as_str()).await.unwrap();
        }
        outbox_relay::Store::Mysql(_) => panic!("this fixture is PostgreSQL or SQLite"),
    }
    let r = outbox(
        Some(url),
        &["cleanup", "--inbox", "--older-than", "7d", "--dry-run"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("2 inbox row(s) and 1 aggregate position(s)"),
        "{}",
        r.stdout
    );
    let r = outbox(
        Some(url),
        &[
            "cleanup",
            "--inbox",
            "--older-than",
            "7d",
            "--batch-size",
            "1",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("deleted 2 inbox row(s) and 1 aggregate position(s)"),
        "{}",
        r.stdout
    );
    let left = store
        .count_inbox_cleanable(chrono::Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!((left.received, left.positions), (1, 1), "recent rows stay");
}

#[tokio::test]
async fn cleanup_inbox_deletes_only_rows_past_retention_postgres() {
    let db = require!(TestDb::create().await);
    cleanup_inbox_removes_only_old_rows(&db.url, true).await;
}

#[tokio::test]
async fn cleanup_inbox_deletes_only_rows_past_retention_sqlite() {
    let path = temp_path("inbox.db");
    std::fs::File::create(&path).unwrap();
    cleanup_inbox_removes_only_old_rows(&format!("sqlite:{}", path.display()), false).await;
    let _ = std::fs::remove_file(&path);
}

/// Runs a relay to `file:out` until the file holds `lines` lines, then stops it cleanly.
async fn relay_to_file_until(url: &str, out: &std::path::Path, lines: usize) {
    let mut relay = spawn_relay(
        url,
        &[
            "--sink",
            &format!("file:{}", out.display()),
            "--poll-interval",
            "50ms",
        ],
    );
    wait_until(Duration::from_secs(20), "the lines in the file", || async {
        (jsonl_lines(out).len() >= lines).then_some(())
    })
    .await;
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
}

/// The delivery-semantics table's `file:` row: nothing dedupes, an event delivered again is
/// written again with the same `headers.id`, and through the inbox it is applied once.
#[tokio::test]
async fn a_redelivered_event_is_written_again_to_a_file_and_applied_once_through_the_inbox() {
    let out = temp_path("redelivered.jsonl");
    let (path, url, store) = migrated_sqlite("redelivered.db").await;
    let pool = store.sqlite_pool().unwrap().clone();
    let event = outbox::Event::new("Order", "o-1", "OrderCreated", serde_json::json!({"n": 1}));
    outbox::enqueue(&mut *pool.acquire().await.unwrap(), &event)
        .await
        .unwrap();
    relay_to_file_until(&url, &out, 1).await;
    // As a relay that died after the write and before its mark leaves it.
    sqlx::query("UPDATE outbox SET published_at = NULL")
        .execute(&pool)
        .await
        .unwrap();
    relay_to_file_until(&url, &out, 2).await;
    let lines = jsonl_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], lines[1], "the same message twice");
    assert_eq!(lines[0]["headers"]["id"], event.id().to_string());

    let mut conn = pool.acquire().await.unwrap();
    let mut applied = 0;
    for line in &lines {
        let id = uuid::Uuid::parse_str(line["headers"]["id"].as_str().unwrap()).unwrap();
        if outbox::inbox::receive(&mut *conn, "file-reader", id)
            .await
            .unwrap()
            == outbox::inbox::Receipt::New
        {
            applied += 1;
        }
    }
    assert_eq!(applied, 1, "applied once through the inbox");
    drop(conn);
    remove_sqlite(&path, store).await;
    let _ = std::fs::remove_file(&out);
}

/// When whoever reads the relay's log goes away (a log shipper restarted, `| head`), the relay
/// drops the lines it cannot write and goes on: it still delivers, and it still stops on the
/// first SIGTERM. (The logging library used to report the failed write with `eprintln!`, which
/// panicked in whichever task logged; the signal watcher died logging "shutting down".)
#[tokio::test]
async fn a_relay_whose_log_reader_went_away_still_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let (path, url, store) = migrated_sqlite("broken-log.db").await;
    let mut child = tokio::process::Command::new(bin())
        .args(["relay", "--sink", "noop:", "--poll-interval", "50ms"])
        .args(["--log-level", "info"])
        .env("DATABASE_URL", &url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn outbox relay");
    let stderr = child.stderr.take().expect("the relay's stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read the log") {
            if line.contains("relay started") {
                return;
            }
        }
        panic!("the relay's log ended before it started");
    })
    .await
    .expect("the relay started within 20 s");
    drop(lines); // the reader goes away: the log is a broken pipe from here on
    {
        let mut tx = store.sqlite_pool().unwrap().begin().await.unwrap();
        let e = outbox::Event::new("Order", "o-1", "Step", serde_json::json!({ "n": 1 }));
        outbox::enqueue(&mut *tx, &e).await.unwrap();
        tx.commit().await.unwrap();
    }
    wait_until(Duration::from_secs(20), "the event delivered", || async {
        let r = outbox(Some(&url), &["status", "--json"]).await;
        let status: serde_json::Value = serde_json::from_str(&r.stdout).ok()?;
        (status["pending"] == 0).then_some(())
    })
    .await;
    let mut relay = RelayProcess { child };
    relay.signal(libc::SIGTERM);
    assert_eq!(
        relay.wait(Duration::from_secs(15)).await,
        0,
        "stopped by SIGTERM"
    );
    remove_sqlite(&path, store).await;
}

/// The console is a server too: with the reader of its log gone, a request that logs (a refused
/// action) neither kills it (SIGPIPE) nor stops it answering.
#[tokio::test]
async fn the_console_outlives_the_reader_of_its_log() {
    let (path, url, store) = migrated_sqlite("console-broken-log.db").await;
    let port = outbox_testkit::free_port();
    let mut child = tokio::process::Command::new(bin())
        .args(["console", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--log-level", "info"])
        .env("DATABASE_URL", &url)
        .env_remove("OUTBOX_CONSOLE_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn outbox console");
    drop(child.stderr.take()); // nobody reads its log
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(20), "the console answering", || async {
        let r = http.get(format!("{base}/")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let refused = http
        .post(format!("{base}/dead-letters/apply"))
        .body("action=purge")
        .send()
        .await
        .expect("the console answers the action");
    assert_eq!(refused.status(), 403, "no token: refused (and logged)");
    let r = http.get(format!("{base}/")).send().await;
    assert!(
        r.as_ref().is_ok_and(|r| r.status().is_success()),
        "still serving after logging into a broken pipe: {r:?}"
    );
    assert!(
        child.try_wait().expect("the console's status").is_none(),
        "still running"
    );
    child.kill().await.expect("stop the console");
    remove_sqlite(&path, store).await;
}
