//! Bad inputs the `outbox` binary meets (RELIABILITY.md, "Bad inputs"): rows a plain-SQL
//! writer may leave in the table, database states, and command-line misuse. Nothing panics:
//! a bad row is dead-lettered with the reason and the others keep flowing; a bad invocation
//! exits 2 with one line that says what to fix.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// The `value` of each line of a JSON-lines sink file.
fn values(path: &Path) -> Vec<serde_json::Value> {
    jsonl_lines(path)
        .into_iter()
        .map(|l| l["value"].clone())
        .collect()
}

/// `outbox status --json`, parsed (it must succeed).
async fn status(url: &str) -> serde_json::Value {
    let r = outbox(Some(url), &["status", "--json"]).await;
    assert_eq!(r.code, 0, "status: {}", r.stderr);
    serde_json::from_str(&r.stdout).expect("status --json")
}

/// Runs a relay to a file until `delivered` events arrived and `dead` dead letters exist;
/// returns the delivered values (in order) and `outbox dlq list --json`'s lines.
async fn relay_until(
    url: &str,
    delivered: usize,
    dead: i64,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let out = scratch_file("out.jsonl");
    let mut relay = spawn_relay(
        url,
        &[
            "--sink",
            &format!("file:{}", out.display()),
            "--poll-interval",
            "50ms",
        ],
    );
    wait_until(
        Duration::from_secs(30),
        &format!("{delivered} delivered, {dead} dead letters"),
        || async {
            let st = status(url).await;
            (values(&out).len() >= delivered && st["dead_letters"] == dead).then_some(())
        },
    )
    .await;
    relay.signal(libc::SIGTERM);
    assert_eq!(
        relay.wait(Duration::from_secs(15)).await,
        0,
        "the relay stops cleanly"
    );
    let got = values(&out);
    let _ = std::fs::remove_file(&out);
    let r = outbox(Some(url), &["dlq", "list", "--json"]).await;
    assert_eq!(r.code, 0, "dlq list: {}", r.stderr);
    let letters = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (got, letters)
}

/// Asserts the dead letter of aggregate `agg` gives a reason containing `why`.
fn dead_because(letters: &[serde_json::Value], agg: &str, why: &str) {
    let l = letter(letters, agg);
    let error = l["error"].as_str().unwrap_or_default();
    assert!(error.contains(why), "{agg}: {why:?} in {l}");
}

/// The dead letter of aggregate `agg`.
fn letter<'a>(letters: &'a [serde_json::Value], agg: &str) -> &'a serde_json::Value {
    letters
        .iter()
        .find(|l| l["aggregate_id"] == agg)
        .unwrap_or_else(|| panic!("a dead letter for {agg} in {letters:?}"))
}

#[tokio::test]
async fn sqlite_rows_the_relay_cannot_use_are_dead_lettered_and_the_rest_flow() {
    let (path, url, store) = migrated_sqlite("rows.db").await;
    {
        sqlx::Executor::execute(
            store.sqlite_pool().unwrap(),
            r#"INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers) VALUES
                 ('T', 'good', 'E', '{"n": 1}', NULL),
                 ('T', 'latin1', 'E', CAST(x'7b226e223a2263616fe9227d' AS TEXT), NULL),
                 ('T', 'latin1', 'E', '{"n": 3}', NULL),
                 ('T', 'array-headers', 'E', '{"n": 4}', '[1, 2]'),
                 ('T', 'forged-id', 'E', '{"n": 5}', '{"ID": "0190a6b2-0000-7000-8000-000000000000"}'),
                 ('T', 'array-payload', 'E', '[6]', NULL),
                 ('T', 'retry-count', 'E', '{"n": 7}', NULL);
               UPDATE outbox SET retry_count = 'x' WHERE aggregate_id = 'retry-count';"#,
        )
        .await
        .unwrap();
        // The table refuses a payload that is not JSON at the writer's insert.
        let refused = sqlx::Executor::execute(
            store.sqlite_pool().unwrap(),
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('T', 'x', 'E', '{nope')",
        )
        .await
        .unwrap_err();
        assert!(refused.to_string().contains("CHECK"), "{refused}");
    }
    let (got, letters) = relay_until(&url, 2, 4).await;
    assert_eq!(got[0]["n"], 1);
    assert_eq!(
        got[1]["payload"],
        serde_json::json!([6]),
        "nested, not refused"
    );
    dead_because(&letters, "latin1", "column payload is not valid UTF-8");
    dead_because(
        &letters,
        "array-headers",
        "the headers column must hold a JSON object",
    );
    dead_because(&letters, "forged-id", "would shadow");
    dead_because(
        &letters,
        "retry-count",
        "column retry_count is not an integer",
    );
    // latin1's next event waits behind its dead letter (on_dead_letter = wait).
    assert_eq!(status(&url).await["pending"], 1);
    // `dlq show` prints the unreadable row (its bytes replaced where not UTF-8).
    let id = letter(&letters, "latin1")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = outbox(Some(&url), &["dlq", "show", &id]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("cannot read this row"), "{}", r.stdout);
    remove_sqlite(&path, store).await;
}

#[tokio::test]
async fn postgres_infinite_times_neither_crash_nor_stop_the_relay() {
    let db = require!(TestDb::create().await);
    let pool = migrate(&db).await;
    sqlx::Executor::execute(
        &pool,
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at) VALUES
           ('T', 'future', 'E', '{\"n\": 1}', 'infinity'),
           ('T', 'past', 'E', '{\"n\": 2}', '-infinity'),
           ('T', 'good', 'E', '{\"n\": 3}', now());
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, next_attempt_at)
           VALUES ('T', 'parked', 'E', '{\"n\": 4}', 'infinity');",
    )
    .await
    .unwrap();
    // status reads them (it panicked decoding -infinity before).
    assert_eq!(status(&db.url).await["pending"], 4);
    let (got, letters) = relay_until(&db.url, 1, 2).await;
    assert_eq!(got[0]["n"], 3);
    for agg in ["future", "past"] {
        dead_because(
            &letters,
            agg,
            "column created_at is not a time the relay can carry",
        );
    }
    // The parked event stays parked: never due, and the claim does not fail on it.
    let st = status(&db.url).await;
    assert_eq!(st["pending"], 1, "{st}");
    assert!(st["next_retry_at"].is_null(), "{st}");
    // With nothing else pending the claim asks when the next retry is due: `infinity` made
    // that question fail every claim ("cannot subtract infinite timestamps").
    let store = outbox_relay::Store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let claim = store.claim(10, true).await.expect("the claim succeeds");
    assert!(claim.records.is_empty() && claim.next_due.is_none());
    claim.release().await;
}

/// A database in `SQL_ASCII`: PostgreSQL stores any bytes in text there and refuses to send
/// the ones that are not UTF-8. Dropped when this value is.
struct SqlAsciiDb {
    name: String,
    url: String,
}

impl SqlAsciiDb {
    async fn create() -> Option<SqlAsciiDb> {
        let probe = TestDb::create().await?;
        let admin = outbox_testkit::pg_admin_url();
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .expect("connect as admin");
        let name = format!("{}_ascii", probe.name);
        sqlx::Executor::execute(
            &mut conn,
            format!(
                "CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' \
                 TEMPLATE template0"
            )
            .as_str(),
        )
        .await
        .expect("CREATE DATABASE … SQL_ASCII");
        let url = probe.url.replace(&probe.name, &name);
        Some(SqlAsciiDb { name, url })
    }
}

impl Drop for SqlAsciiDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let admin = outbox_testkit::pg_admin_url();
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
                sqlx::Executor::execute(&mut c, sql.as_str()).await
            })
            .map_err(std::io::Error::other)
            .map(drop)
        })
        .join();
    }
}

#[tokio::test]
async fn postgres_text_that_is_not_utf8_is_dead_lettered_and_the_rest_flow() {
    let db = require!(SqlAsciiDb::create().await);
    let r = outbox(Some(&db.url), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::Executor::execute(
        &pool,
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES
           ('T', 'first', 'E', '{\"n\": 1}'),
           ('T', convert_from('\\x636166e9'::bytea, 'SQL_ASCII'), 'E', '{\"n\": 2}'),
           ('T', 'last', convert_from('\\x4f7264e9'::bytea, 'SQL_ASCII'), '{\"n\": 3}'),
           ('T', 'good', 'E', '{\"n\": 4}');",
    )
    .await
    .unwrap();
    let (got, letters) = relay_until(&db.url, 2, 2).await;
    let mut ns: Vec<i64> = got.iter().map(|v| v["n"].as_i64().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, [1, 4], "two aggregates, in either order");
    dead_because(
        &letters,
        "caf\u{fffd}",
        "column aggregate_id is not valid UTF-8",
    );
    dead_because(&letters, "last", "column event_type is not valid UTF-8");
    pool.close().await;
}

#[tokio::test]
async fn command_line_misuse_exits_2_saying_what_to_fix() {
    let mem = Some("sqlite::memory:");
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--config", "/nonexistent/outbox.toml", "status"],
            "cannot read config file /nonexistent/outbox.toml",
        ),
        (vec!["bogus"], "unrecognized subcommand 'bogus'"),
        (vec!["relay", "--bogus"], "unexpected argument '--bogus'"),
        (vec!["dlq", "replay", "nope"], "\"nope\" is not an id"),
        (vec!["cleanup"], "--older-than"),
        (
            vec![
                "dlq",
                "purge",
                "--all",
                "0190a6b2-0000-7000-8000-000000000000",
            ],
            "cannot be used with",
        ),
    ];
    // `outbox relay` with these flags (and, unless they name one, the stdout: sink).
    let relay: [(&[&str], &str); 12] = [
        (&["--listen", "nope"], "expected HOST:PORT"),
        (&["--poll-interval", "soon"], "is not a duration like 500ms"),
        (
            &["--on-dead-letter", "maybe"],
            "[possible values: wait, proceed]",
        ),
        (&["--max-attempts", "0"], "max_attempts must be at least 1"),
        (&["--workers", "0"], "workers must be within 1..=64"),
        (&["--envelope", "nope"], "unknown envelope \"nope\""),
        (
            &["--backoff-base", "10m", "--backoff-max", "1s"],
            "retry.base must not exceed retry.max",
        ),
        (&["--sink", "http://"], "invalid webhook URL http://"),
        (&["--sink", "kafka://"], "it needs host:port"),
        (&["--sink", "redis://:6379"], "invalid Redis URL"),
        (
            &["--sink", "mqtt://h:1883?qos=7"],
            "unknown parameter \"qos\"",
        ),
        (
            &["--sink", "amqp://h:5672/%zz"],
            "the vhost is not valid percent-encoding",
        ),
    ];
    for (flags, says) in relay {
        let mut args = vec!["relay"];
        if flags[0] != "--sink" {
            args.extend(["--sink", "stdout:"]);
        }
        args.extend(flags);
        cases.push((args, says));
    }
    for (args, says) in cases {
        let r = outbox(mem, &args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(says),
            "{args:?}: {says:?} in {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
    }
}

#[tokio::test]
async fn database_files_and_schemas_that_do_not_fit_exit_2_with_the_reason() {
    // No such directory; a file that is not a database.
    let garbage = scratch_file("garbage.db");
    std::fs::write(&garbage, [0x5a_u8; 4096]).unwrap();
    for (url, says) in [
        (
            "sqlite:/nonexistent/dir/x.db".to_string(),
            "unable to open database file",
        ),
        (
            format!("sqlite:{}", garbage.display()),
            "file is not a database",
        ),
    ] {
        for cmd in ["status", "migrate"] {
            let r = outbox(Some(&url), &[cmd]).await;
            assert_eq!(r.code, 2, "{cmd} {url}: {}", r.stderr);
            assert!(
                r.stderr.contains("cannot connect to the database") && r.stderr.contains(says),
                "{cmd} {url}: {}",
                r.stderr
            );
        }
    }
    let _ = std::fs::remove_file(&garbage);

    // A schema newer than this build.
    let (path, url, store) = migrated_sqlite("newer.db").await;
    sqlx::Executor::execute(
        store.sqlite_pool().unwrap(),
        "INSERT INTO outbox_migrations (version, name) VALUES (99, 'future')",
    )
    .await
    .unwrap();
    for args in [vec!["relay", "--sink", "stdout:"], vec!["migrate"]] {
        let r = outbox(Some(&url), &args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("version 99, newer than this build's")
                && r.stderr.contains("upgrade outbox"),
            "{args:?}: {}",
            r.stderr
        );
    }
    remove_sqlite(&path, store).await;

    // A PostgreSQL database that does not exist; an sslmode libpq does not know.
    for (url, says) in [
        (
            format!(
                "{}/outbox_no_such_db",
                outbox_testkit::pg_admin_url().rsplit_once('/').unwrap().0
            ),
            "database \"outbox_no_such_db\" does not exist",
        ),
        (
            format!("{}?sslmode=bogus", outbox_testkit::pg_admin_url()),
            "sslmode=\"bogus\": use disable, allow, prefer, require, verify-ca or verify-full",
        ),
    ] {
        let r = outbox(Some(&url), &["status"]).await;
        assert_eq!(r.code, 2, "{url}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{url}: {}", r.stderr);
    }
}
