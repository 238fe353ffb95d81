//! Helpers for the command-line integration tests: run `outbox`, spawn relays, wait for things.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub use outbox_testkit::{require, MysqlTestDb, TestDb, TestNats};

pub mod mysql;
pub mod relays;

/// Path of the `outbox` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outbox"))
}

/// Output of one `outbox` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `outbox ARGS` with `DATABASE_URL=db_url` (if given) and waits (bounded) for it.
pub async fn outbox(db_url: Option<&str>, args: &[&str]) -> Run {
    outbox_with_env(db_url, &[], args).await
}

/// [`outbox`] with more environment variables (e.g. `PGPASSWORD`).
pub async fn outbox_with_env(db_url: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("OUTBOX_SINK")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    if let Some(url) = db_url {
        cmd.env("DATABASE_URL", url);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("outbox finished within 60s")
        .expect("outbox ran");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A relay process, SIGKILLed when dropped.
pub struct RelayProcess {
    pub child: Child,
}

/// Starts `outbox relay ARGS` against `db_url`.
pub fn spawn_relay(db_url: &str, args: &[&str]) -> RelayProcess {
    let child = Command::new(bin())
        .arg("relay")
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("OUTBOX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn outbox relay");
    RelayProcess { child }
}

impl RelayProcess {
    /// Sends a signal (e.g. `libc::SIGTERM`, `libc::SIGKILL`).
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a pid we spawned and still own.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// Waits (bounded) for the process to exit; returns its exit code (-signal when killed).
    pub async fn wait(&mut self, limit: Duration) -> i32 {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("relay exited in time")
            .expect("wait for relay");
        status
            .code()
            .unwrap_or_else(|| -std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0))
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.wait(Duration::from_secs(10)).await;
    }
}

/// Polls `check` every 10 ms until it returns `Some`, failing the test after `limit`.
pub async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Messages currently stored in a JetStream stream (0 when it does not exist yet).
pub async fn stream_len(nats: &TestNats, stream: &str) -> u64 {
    match nats.js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Pending (unpublished) events in the outbox table.
pub async fn pending(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
        .expect("count pending")
}

/// Waits (bounded) until no event is pending.
pub async fn wait_all_published(pool: &sqlx::PgPool, limit: Duration) {
    wait_until(limit, "every event published", || async {
        (pending(pool).await == 0).then_some(())
    })
    .await;
}

/// Waits (bounded) until the stream holds at least `n` messages.
pub async fn wait_stream_len(nats: &TestNats, stream: &str, n: u64, limit: Duration) {
    wait_until(
        limit,
        &format!("{n} messages in stream {stream}"),
        || async { (stream_len(nats, stream).await >= n).then_some(()) },
    )
    .await;
}

/// Migrates a PostgreSQL test database through the library.
pub async fn migrate(db: &TestDb) -> sqlx::PgPool {
    let pool = db.pool().await;
    outbox::migrate(&mut *pool.acquire().await.expect("acquire"))
        .await
        .expect("migrate");
    pool
}

/// Inserts `per` events for each of `aggregates` aggregates of type `agg_type`, interleaved,
/// with payload `{"n": k}` counting up per aggregate from `start`.
pub async fn insert_sequenced(
    pool: &sqlx::PgPool,
    agg_type: &str,
    aggregates: usize,
    per: usize,
    start: usize,
) {
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT $1, 'a' || (g % $2), 'Step', jsonb_build_object('n', $4 + g / $2)
         FROM generate_series(0, $2 * $3 - 1) AS g ORDER BY g",
    )
    .bind(agg_type)
    .bind(aggregates as i64)
    .bind(per as i64)
    .bind(start as i64)
    .execute(pool)
    .await
    .expect("insert events");
}

/// From stream messages: checks every aggregate's first deliveries come with increasing `n`
/// and returns the number of distinct events seen.
pub fn check_order(messages: &[async_nats::jetstream::Message]) -> usize {
    use std::collections::{HashMap, HashSet};
    let mut seen: HashSet<String> = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in messages {
        let headers = m.headers.as_ref().expect("headers");
        let id = headers.get("id").expect("id header").to_string();
        if !seen.insert(id) {
            continue;
        }
        let key = headers.get("key").expect("key header").to_string();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json value");
        let n = v["n"].as_i64().expect("n in payload");
        let prev = last.insert(key.clone(), n);
        if let Some(p) = prev {
            assert!(
                n > p,
                "order violated for aggregate {key}: {n} delivered first after {p}"
            );
        }
    }
    seen.len()
}

/// A path in the temporary directory no other test uses.
pub fn scratch_file(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "outbox-test-{}-{what}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// The complete lines of a JSON-lines sink file (`file:PATH`), parsed.
pub fn jsonl_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A new SQLite database file, migrated by `outbox migrate`: its path, URL and a store on it.
pub async fn migrated_sqlite(what: &str) -> (PathBuf, String, outbox_relay::Store) {
    let path = scratch_file(what);
    std::fs::File::create(&path).expect("create the database file");
    let url = format!("sqlite:{}", path.display());
    let r = outbox(Some(&url), &["migrate"]).await;
    assert_eq!(r.code, 0, "migrate {url}: {}", r.stderr);
    let store = outbox_relay::Store::connect(&url, &Default::default())
        .await
        .expect("open the database");
    (path, url, store)
}

/// Closes `store` and removes its SQLite file with the `-wal` and `-shm` files beside it.
pub async fn remove_sqlite(path: &std::path::Path, store: outbox_relay::Store) {
    if let Some(pool) = store.sqlite_pool() {
        pool.close().await;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}
