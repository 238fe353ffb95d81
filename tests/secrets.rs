//! No secret in any log line, at any level, or in any error.
//!
//! Each case runs the `outbox` binary at `--log-level trace` with a URL (or an environment
//! variable) carrying a planted secret, against an endpoint that is unreachable or refuses it
//! (the real services where they check credentials, stand-ins speaking just enough of the
//! protocol where they do not), and greps everything it printed for the secret: as is, as the
//! decimal bytes of a `Debug` dump, in hex and in base64 (HTTP Basic, SASL `PLAIN`).
//!
//! A relay that keeps running is watched for a few seconds after it started (its sink failing
//! meanwhile), then killed: there is no event that says "everything that could leak has been
//! printed", so the window is the bound.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use common::{bin, require, TestDb};

/// The planted secret.
const SECRET: &str = "S3cr3tPlanted";

/// How long a running relay is watched after "relay started".
const WATCH: Duration = Duration::from_secs(4);

/// Everything one run printed, and how it ended (`None`: still running, killed).
struct Output {
    text: String,
    code: Option<i32>,
}

/// Runs `outbox ARGS` with `env`; returns once it exits, or [`WATCH`] after the relay started
/// (then kills it), and at the latest after 30 s.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .args(["--log-level", "trace"])
        .env_remove("DATABASE_URL")
        .env_remove("OUTBOX_SINK")
        .env_remove("OUTBOX_LOG")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn outbox");
    let text = Arc::new(Mutex::new(String::new()));
    let (started_tx, mut started) = tokio::sync::mpsc::channel::<()>(1);
    let mut readers = Vec::new();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for pipe in [
        Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(stderr),
    ] {
        let text = text.clone();
        let started = started_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("relay started") {
                    let _ = started.try_send(());
                }
                let mut t = text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        }));
    }
    drop(started_tx);
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    let code = tokio::select! {
        status = child.wait() => status.ok().and_then(|s| s.code()),
        _ = async {
            if started.recv().await.is_some() {
                tokio::time::sleep(WATCH).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => None,
        _ = &mut deadline => None,
    };
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    let text = text.lock().unwrap().clone();
    Output { text, code }
}

/// Standard base64, for the encoded forms of the secret.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | *b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The forms of [`SECRET`] that would be a leak.
fn forms() -> Vec<String> {
    let mut forms = vec![
        SECRET.to_string(),
        SECRET.to_ascii_lowercase(),
        // A Debug dump of its bytes (lapin printed the AMQP login this way).
        SECRET
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        SECRET.bytes().map(|b| format!("{b:02x}")).collect(),
    ];
    // Base64 at each alignment, without the edge characters the neighbours change.
    for pad in 0..3 {
        let mut input = vec![0u8; pad];
        input.extend_from_slice(SECRET.as_bytes());
        let encoded = base64(&input);
        forms.push(encoded[4..encoded.len() - 4].to_string());
    }
    forms
}

/// Fails the test with the lines that hold a form of the secret.
fn assert_no_secret(case: &str, out: &Output) {
    let mut found = Vec::new();
    for line in out.text.lines() {
        for form in forms() {
            if line.contains(&form) {
                found.push(format!(
                    "[{form}] {}",
                    line.chars().take(400).collect::<String>()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "{case}: the secret leaked in {} line(s):\n{}",
        found.len(),
        found.join("\n")
    );
}

/// One run of the binary and what it must show.
struct Case {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A phrase showing the case did what it is about (the endpoint refused, was unreachable).
    expect: String,
    /// The exit status it must end with; `None`: it may keep running (then it is killed).
    exit: Option<i32>,
    /// Its own database (one pending event), dropped after the run.
    db: Option<TestDb>,
}

impl Case {
    fn new(name: &str, args: &[&str], expect: &str) -> Case {
        Case {
            name: name.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            expect: expect.to_string(),
            exit: None,
            db: None,
        }
    }

    fn env(mut self, name: &str, value: &str) -> Case {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    fn exits(mut self, code: i32) -> Case {
        self.exit = Some(code);
        self
    }

    /// Runs it: it did what it is about, and leaked nothing.
    async fn check(self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let out = run(&args, &env).await;
        let case = &self.name;
        assert!(
            out.text.contains(&self.expect),
            "{case} (exit {:?}): expected {:?} in the output:\n{}",
            out.code,
            self.expect,
            tail(&out.text)
        );
        if let Some(code) = self.exit {
            assert_eq!(out.code, Some(code), "{case}:\n{}", tail(&out.text));
        }
        assert_no_secret(case, &out);
        drop(self.db);
    }
}

/// Runs the cases at once; the first failure fails the test.
async fn check_all(cases: Vec<Case>) {
    let mut set = tokio::task::JoinSet::new();
    for case in cases {
        set.spawn(case.check());
    }
    while let Some(done) = set.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.chars().take(300).collect())
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A migrated database with one pending event, so the relay publishes (and fails).
async fn database_with_an_event() -> Option<TestDb> {
    let db = TestDb::create().await?;
    let pool = common::migrate(&db).await;
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('Order', 'o-1', 'OrderCreated', '{\"n\": 1}')",
    )
    .execute(&pool)
    .await
    .expect("insert an event");
    pool.close().await;
    Some(db)
}

/// One relay case: its name, the sink URL, the phrase it must print, the exit status it must
/// end with (`None`: it keeps running).
type Relay<'a> = (&'a str, String, &'a str, Option<i32>);

/// `outbox relay` to each sink (with `env`), each from a database of its own holding one event
/// (so the relay publishes, and fails); `None` when PostgreSQL is unreachable (reported).
async fn relays(list: Vec<Relay<'_>>, env: &[(&str, &str)]) -> Option<Vec<Case>> {
    let mut cases = Vec::new();
    for (name, sink, expect, exit) in list {
        let db = database_with_an_event().await?;
        let mut case = Case::new(
            name,
            &["relay", "--database-url", &db.url, "--sink", &sink],
            expect,
        );
        case.db = Some(db);
        case.exit = exit;
        for (k, v) in env {
            case = case.env(k, v);
        }
        cases.push(case);
    }
    Some(cases)
}

/// A port nobody listens on.
fn closed_port() -> u16 {
    outbox_testkit::free_port()
}

/// A NATS stand-in that refuses every login (`-ERR 'Authorization Violation'`).
async fn nats_refusing() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let info = "INFO {\"server_id\":\"stand-in\",\"version\":\"2.10.0\",\"proto\":1,\
                            \"headers\":true,\"max_payload\":1048576,\"auth_required\":true}\r\n";
                let _ = write.write_all(info.as_bytes()).await;
                let mut line = String::new();
                let _ = BufReader::new(read).read_line(&mut line).await;
                let _ = write.write_all(b"-ERR 'Authorization Violation'\r\n").await;
            });
        }
    });
    (port, task)
}

/// An HTTP stand-in answering `401 Unauthorized` to everything.
async fn http_refusing() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 12\r\n\
                          connection: close\r\n\r\ntoken denied",
                    )
                    .await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_never_prints_the_password_or_token() {
    let (refusing, stand_in) = nats_refusing().await;
    let closed = closed_port();
    let unreachable = "NATS is unreachable";
    let cases = require!(
        relays(
            vec![
                (
                    "NATS, unreachable, user and password",
                    format!("nats://app:{SECRET}@127.0.0.1:{closed}?ack_timeout=500ms"),
                    unreachable,
                    None,
                ),
                (
                    "NATS, unreachable, token",
                    format!("nats://{SECRET}@127.0.0.1:{closed}?ack_timeout=500ms"),
                    unreachable,
                    None,
                ),
                (
                    "NATS, credentials refused (a configuration error)",
                    format!("nats://app:{SECRET}@127.0.0.1:{refusing}"),
                    "refused the connection",
                    Some(2),
                ),
                (
                    "NATS, the real server (no authentication: the login is sent anyway)",
                    format!("nats://app:{SECRET}@127.0.0.1:4222?ack_timeout=500ms"),
                    "relay started",
                    None,
                ),
            ],
            &[],
        )
        .await
    );
    check_all(cases).await;
    stand_in.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_never_prints_the_sasl_password() {
    let closed = closed_port();
    let sasl = format!(
        "security.protocol=sasl_plaintext&sasl.mechanism=PLAIN&sasl.username=app\
         &sasl.password={SECRET}&message_timeout=1s"
    );
    let cases = require!(
        relays(
            vec![
                (
                    "Kafka, unreachable, SASL",
                    format!("kafka://127.0.0.1:{closed}?{sasl}"),
                    "Connection refused",
                    None,
                ),
                (
                    "Kafka, the real broker (tansu, no SASL), SASL",
                    format!("kafka://127.0.0.1:19092?{sasl}"),
                    "relay started",
                    None,
                ),
                (
                    "Kafka, credentials in the URL (refused at start)",
                    format!("kafka://app:{SECRET}@127.0.0.1:{closed}"),
                    "credentials do not go in the URL",
                    Some(2),
                ),
            ],
            &[],
        )
        .await
    );
    check_all(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_redis_and_mqtt_never_print_the_password() {
    let closed = closed_port();
    let cases = require!(
        relays(
            vec![
                (
                    "RabbitMQ, wrong password (the real broker checks it)",
                    format!("amqp://guest:{SECRET}@127.0.0.1:5672/%2f"),
                    "ACCESS_REFUSED",
                    Some(2),
                ),
                (
                    "RabbitMQ, unreachable",
                    format!("amqp://guest:{SECRET}@127.0.0.1:{closed}/%2f?connect_timeout=1s"),
                    "RabbitMQ is unreachable",
                    None,
                ),
                (
                    "Redis, wrong password (the real server checks it)",
                    format!("redis://nobody:{SECRET}@127.0.0.1:6379"),
                    "refused the credentials",
                    Some(2),
                ),
                (
                    "Redis, unreachable",
                    format!("redis://app:{SECRET}@127.0.0.1:{closed}?timeout=1s"),
                    "Redis is unreachable",
                    None,
                ),
                (
                    "MQTT, the real broker (the login is sent)",
                    format!("mqtt://app:{SECRET}@127.0.0.1:1883?ack_timeout=1s"),
                    "relay started",
                    None,
                ),
                (
                    "MQTT, unreachable",
                    format!("mqtt://app:{SECRET}@127.0.0.1:{closed}?connect_timeout=1s"),
                    "MQTT broker is unreachable",
                    None,
                ),
            ],
            &[],
        )
        .await
    );
    check_all(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_never_print_the_password_or_signing_secret() {
    let (refusing, stand_in) = http_refusing().await;
    let closed = closed_port();
    let cases = require!(
        relays(
            vec![
                (
                    "webhook answering 401",
                    format!("http://app:{SECRET}@127.0.0.1:{refusing}/hook"),
                    "401 Unauthorized",
                    None,
                ),
                (
                    "webhook unreachable",
                    format!("http://app:{SECRET}@127.0.0.1:{closed}/hook"),
                    "connection failed",
                    None,
                ),
            ],
            &[("OUTBOX_WEBHOOK_SECRET", SECRET)],
        )
        .await
    );
    check_all(cases).await;
    stand_in.abort();
}

/// The database: a wrong password against a server that checks it (the private PostgreSQL:
/// SCRAM over TLS), a refusing port, a libpq key=value string and `PGPASSWORD`, through
/// `status`, `migrate` and both relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_failures_never_print_the_password() {
    let server = require!(outbox_testkit::PgServer::start().await);
    let user = outbox_testkit::APP_USER;
    let wrong = server.url(
        user,
        Some(SECRET),
        "127.0.0.1",
        "postgres",
        "sslmode=require",
    );
    let closed = format!("postgres://app:{SECRET}@127.0.0.1:{}/shop", closed_port());
    let key_value = format!("host=127.0.0.1 port=5432 user=app password={SECRET} dbname=shop");
    let mut cases = Vec::new();
    for (what, url, expect) in [
        ("wrong password", &wrong, "password authentication failed"),
        ("refusing port", &closed, "cannot connect to the database"),
        ("key=value string", &key_value, "unsupported database URL"),
    ] {
        for command in [
            &["status"][..],
            &["migrate"],
            &["relay", "--sink", "stdout:"],
            &["relay", "--source", "cdc", "--sink", "stdout:"],
        ] {
            let mut args = command.to_vec();
            args.extend(["--database-url", url]);
            let name = format!("{what}: outbox {}", command.join(" "));
            cases.push(Case::new(&name, &args, expect).exits(2));
        }
    }
    let no_password = server.url(user, None, "127.0.0.1", "postgres", "sslmode=require");
    cases.push(
        Case::new(
            "PGPASSWORD, wrong: outbox status",
            &["status", "--database-url", &no_password],
            "password authentication failed",
        )
        .env("PGPASSWORD", SECRET)
        .exits(2),
    );
    check_all(cases).await;
}

#[test]
fn the_encoded_forms_are_right() {
    assert_eq!(base64(b"app:S3cr3tPlanted"), "YXBwOlMzY3IzdFBsYW50ZWQ=");
    let forms = forms();
    assert!(forms.contains(&"83, 51, 99, 114, 51, 116, 80, 108, 97, 110, 116, 101, 100".into()));
    // The Basic credentials of `app:S3cr3tPlanted` contain one of the base64 forms.
    assert!(forms
        .iter()
        .any(|f| "YXBwOlMzY3IzdFBsYW50ZWQ=".contains(f.as_str())));
}
