//! The web console in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, `fantoccini`) against the `outbox` binary, a real PostgreSQL and NATS. Every
//! wait is bounded; screenshots of each page go to `target/console-screenshots/`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use outbox_testkit::{free_port, unavailable, ChildServer};
use serde_json::json;
use tokio::process::{Child, Command};

/// The longest any single page wait may take.
const WAIT: Duration = Duration::from_secs(20);
/// The longest a whole browser test may take.
const WHOLE: Duration = Duration::from_secs(240);

/// A headless Chromium session.
struct Browser {
    client: Client,
}

/// What a browser test gets: its own database and NATS stream, and a browser.
struct Env {
    db: TestDb,
    nats: TestNats,
    b: Browser,
}

/// Runs `test` (bounded by [`WHOLE`]) with a fresh database, NATS and headless Chromium,
/// skipping loudly (or failing, with `OUTBOX_REQUIRE_SERVICES`) without them. The browser
/// session is closed whatever happens, then chromedriver is killed.
async fn in_browser<F, Fut>(test: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let db = require!(TestDb::create().await);
    let nats = require!(TestNats::connect().await);
    let (b, driver) = require!(Browser::start().await);
    let client = b.client.clone();
    let run = tokio::spawn(tokio::time::timeout(WHOLE, test(Env { db, nats, b }))).await;
    let _ = client.close().await;
    drop(driver);
    match run {
        Ok(finished) => finished.expect("the browser test finished in time"),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Browser {
    /// `None` (reported as a missing service) without chromedriver or Chromium; the
    /// chromedriver process comes along, killed when dropped.
    async fn start() -> Option<(Browser, ChildServer)> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(chromium) = chromium else {
            unavailable(
                "Chromium (Debian's chromium package)",
                "no /usr/bin/chromium; run .ci/services",
            );
            return None;
        };
        let port = free_port();
        let driver = ChildServer::start("chromedriver", &[&format!("--port={port}")], port)?;
        let caps = json!({
            "browserName": "chrome",
            "timeouts": { "pageLoad": 30_000, "script": 10_000, "implicit": 0 },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,1000"],
            },
        });
        let caps = caps.as_object().cloned().unwrap_or_default();
        let connect = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match connect {
            Ok(client) => Some((Browser { client }, driver)),
            Err(e) => {
                unavailable("Chromium through chromedriver", &e.to_string());
                None
            }
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Waits (bounded) for an element.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let page = self.client.source().await.unwrap_or_default();
                let main = page.split("<main>").nth(1).unwrap_or(&page);
                panic!("no element {css} within {WAIT:?} ({e}) on: {main:.3000}")
            }
        }
    }

    /// The element's text, found and read in one step, again when the page was replaced in
    /// between (a form's answer loading): a stale element is not an answer.
    async fn text(&self, css: &str) -> String {
        self.find(css).await;
        self.wait_text(css, &format!("the text of {css}"), |_| true)
            .await
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Waits (bounded) until the element's text satisfies `ok`; returns it.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        wait_until(WAIT, what, || async {
            let t = self.client.find(Locator::Css(css)).await.ok()?;
            let text = t.text().await.ok()?;
            ok(&text).then_some(text)
        })
        .await
    }

    async fn js(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("run script")
    }

    /// Writes a screenshot of the page to `target/console-screenshots/NAME.png`.
    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshots();
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }
}

fn screenshots() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("console-screenshots")
}

/// `outbox console ARGS` (no relaying), killed when dropped; waits (bounded) until it listens.
async fn spawn_console(db_url: &str, port: u16, args: &[&str]) -> Child {
    let child = Command::new(bin())
        .arg("console")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env_remove("OUTBOX_CONSOLE_TOKEN")
        .env("OUTBOX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn outbox console");
    wait_listening(port).await;
    child
}

async fn wait_listening(port: u16) {
    wait_until(WAIT, &format!("a listener on port {port}"), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// Inserts an event and moves it to the dead letters (as the relay would), returning its id.
async fn dead_letter(
    pool: &sqlx::PgPool,
    agg: &str,
    id: &str,
    payload: serde_json::Value,
    why: &str,
) -> uuid::Uuid {
    let event: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ($1, $2, 'OrderPlaced', $3) RETURNING id",
    )
    .bind(agg)
    .bind(id)
    .bind(payload)
    .fetch_one(pool)
    .await
    .expect("insert an event");
    sqlx::query(
        "WITH gone AS (DELETE FROM outbox WHERE id = $1 RETURNING *)
         INSERT INTO outbox_dead_letter (original_id, seq, aggregate_type, aggregate_id,
                                         event_type, payload, created_at, retry_count, error)
         SELECT id, seq, aggregate_type, aggregate_id, event_type, payload, created_at, 3, $2
         FROM gone",
    )
    .bind(event)
    .bind(why)
    .execute(pool)
    .await
    .expect("dead-letter the event");
    event
}

/// Inserts a pending event; returns its id.
async fn event(pool: &sqlx::PgPool, agg: &str, id: &str, n: i64) -> uuid::Uuid {
    sqlx::query_scalar(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ($1, $2, 'Step', jsonb_build_object('n', $3)) RETURNING id",
    )
    .bind(agg)
    .bind(id)
    .bind(n)
    .fetch_one(pool)
    .await
    .expect("insert an event")
}

async fn dead_count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letter")
        .fetch_one(pool)
        .await
        .expect("count dead letters")
}

/// The relay's console: the overview shows the pending count `outbox status` reports and
/// follows it live; an event is found by id; a `<script>` payload shows as text; a purge
/// without the token is refused; a dead letter replayed from the page reaches NATS.
#[tokio::test(flavor = "multi_thread")]
async fn the_relays_console_in_a_browser() {
    in_browser(relay_console).await;
}

async fn relay_console(env: Env) {
    let Env { db, nats, b } = &env;
    let pool = migrate(db).await;
    let agg = format!("Order{}", nats.prefix);
    // A dead letter first: the later events of its aggregate wait behind it (pending).
    let script = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">";
    let dead = dead_letter(
        &pool,
        &agg,
        "o-1",
        json!({ "note": script }),
        "broker said <b>no</b>",
    )
    .await;
    let waiting = [
        event(&pool, &agg, "o-1", 1).await,
        event(&pool, &agg, "o-1", 2).await,
    ];
    // Another aggregate's events are delivered at once.
    event(&pool, &agg, "o-2", 1).await;

    let port = free_port();
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
            "--poll-interval",
            "200ms",
            "--console-token",
            "let-me-in",
        ],
    );
    wait_listening(port).await;
    wait_stream_len(nats, &stream, 1, WAIT).await;
    let base = format!("http://127.0.0.1:{port}");

    // Overview: the pending count `outbox status` reports.
    let status = outbox(Some(&db.url), &["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(status["pending"], 2);
    b.goto(&format!("{base}/")).await;
    assert_eq!(b.text("[data-k=pending]").await, "2");
    assert_eq!(b.text("[data-k=dead_letters]").await, "1");
    assert_eq!(b.text("[data-k=sink]").await, "reachable");
    // Live: more waiting events show up without a reload.
    b.js("window.__samePage = true; return null").await;
    event(&pool, &agg, "o-1", 3).await;
    b.wait_text("[data-k=pending]", "the overview to show 3 pending", |t| {
        t == "3"
    })
    .await;
    assert_eq!(
        b.js("return window.__samePage === true").await,
        json!(true),
        "no reload"
    );
    b.wait_text("[data-k=rate]", "a delivery rate", |t| t.ends_with("/s"))
        .await;
    b.shot("overview").await;

    // Find an event by id: pending, with its aggregate's events in order.
    b.goto(&format!("{base}/events")).await;
    b.find("input[name=id]")
        .await
        .send_keys(&waiting[0].to_string())
        .await
        .expect("type");
    b.click("form.search button").await;
    let found = b.find("#event").await;
    assert_eq!(
        found.attr("data-state").await.expect("attr").as_deref(),
        Some("pending")
    );
    assert!(b.text("#event h2").await.contains(&waiting[0].to_string()));
    let rows = b.text("#aggregate-events tbody").await;
    assert!(
        rows.contains("dead letter") && rows.contains("pending"),
        "{rows}"
    );
    b.shot("find-event").await;

    // The dead letter's detail: the payload is text, the script never ran.
    b.goto(&format!("{base}/dead-letters")).await;
    b.shot("dead-letters").await;
    b.click("#dead-letters tbody a").await;
    let payload = b.text("#payload").await;
    assert!(
        payload.contains("<script>window.__pwned = 1</script><img src=x onerror="),
        "payload shown as text: {payload}"
    );
    assert!(b
        .text("#dead-letter")
        .await
        .contains("broker said <b>no</b>"));
    assert_eq!(
        b.js("return window.__pwned === undefined").await,
        json!(true),
        "script ran"
    );
    b.shot("dead-letter").await;

    // Purge without the token: refused, nothing purged.
    b.goto(&format!("{base}/dead-letters")).await;
    b.click("#dead-letters tbody input[type=checkbox]").await;
    b.click("button[value=purge]").await;
    assert!(b.text("#question").await.starts_with("Purge 1 selected"));
    b.shot("confirm").await;
    b.click("form.confirm button").await;
    assert!(b
        .text("#refused")
        .await
        .contains("wrong or missing console token"));
    assert_eq!(dead_count(&pool).await, 1, "the purge was refused");

    // Replay with the token: the dead letter and the events behind it reach NATS, in order.
    b.goto(&format!("{base}/dead-letters")).await;
    b.click("#dead-letters tbody input[type=checkbox]").await;
    b.click("button[value=replay]").await;
    b.find("input[name=token]")
        .await
        .send_keys("let-me-in")
        .await
        .expect("type");
    b.click("form.confirm button").await;
    assert_eq!(b.text("#done").await, "Replayed 1 event(s)");
    assert_eq!(dead_count(&pool).await, 0);
    wait_stream_len(nats, &stream, 5, Duration::from_secs(30)).await;
    let msgs = nats.read_stream(&stream, 5, Duration::from_secs(10)).await;
    let ids: Vec<String> = msgs
        .iter()
        .filter_map(|m| m.headers.as_ref()?.get("id").map(|v| v.to_string()))
        .collect();
    let at = |id: &uuid::Uuid| ids.iter().position(|x| *x == id.to_string());
    let (d, w0, w1) = (at(&dead), at(&waiting[0]), at(&waiting[1]));
    assert!(
        d.is_some() && d < w0 && w0 < w1,
        "replayed first, then in order: {ids:?}"
    );
    // The overview follows.
    b.goto(&format!("{base}/")).await;
    b.wait_text("[data-k=dead_letters]", "no dead letters", |t| t == "0")
        .await;
    relay.kill().await;
    nats.cleanup().await;
}

/// `outbox console` alone, on a database another relay drains: no secret on any page,
/// dead-letter filters and paging, actions disabled without a token (the page says how).
#[tokio::test(flavor = "multi_thread")]
async fn outbox_console_beside_a_relay() {
    in_browser(console_alone).await;
}

async fn console_alone(env: Env) {
    let Env { db, nats, b } = &env;
    let pool = migrate(db).await;
    let (invoice, refund) = (
        format!("Invoice{}", nats.prefix),
        format!("Refund{}", nats.prefix),
    );
    let kinds = [
        (&invoice, 55, "timeout talking to the broker"),
        (&refund, 3, "schema REJECTED the value"),
    ];
    for (agg, n, why) in kinds {
        for i in 0..n {
            dead_letter(&pool, agg, &format!("a-{i}"), json!({ "i": i }), why).await;
        }
    }
    let stream = nats.stream();
    let mut relay = spawn_relay(
        &db.url,
        &[
            "--sink",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            &stream,
            "--poll-interval",
            "200ms",
        ],
    );
    let published = event(&pool, &format!("Order{}", nats.prefix), "o-9", 1).await;
    wait_all_published(&pool, WAIT).await;

    // The password in the URL (trust authentication ignores it) must reach no page.
    let secret = "s3cret-pw-never-shown";
    let url = db
        .url
        .replacen("postgres@", &format!("postgres:{secret}@"), 1);
    let port = free_port();
    let mut console = spawn_console(&url, port, &[]).await;
    let base = format!("http://127.0.0.1:{port}");

    b.goto(&format!("{base}/")).await;
    assert_eq!(b.text("[data-k=pending]").await, "0");
    assert_eq!(b.text("[data-k=dead_letters]").await, "58");
    assert!(b
        .text("[data-k=sink]")
        .await
        .contains("relay runs elsewhere"));
    b.wait_text("#by-topic", "counts per topic", |t| {
        t.contains(&format!("{}-events", invoice.to_lowercase())) && t.contains("OrderPlaced")
    })
    .await;
    b.shot("console-overview").await;
    let mut pages = b.source().await;

    // A published event, found by id.
    b.goto(&format!("{base}/events?id={published}")).await;
    let found = b.find("#event").await;
    assert_eq!(
        found.attr("data-state").await.expect("attr").as_deref(),
        Some("published")
    );
    pages += &b.source().await;

    // Filters and paging.
    b.goto(&format!("{base}/dead-letters")).await;
    b.find("input[name=aggregate_type]")
        .await
        .send_keys(&invoice)
        .await
        .expect("type");
    b.click("form.filters button").await;
    b.wait_text("#dl-total", "the filtered total", |t| {
        t.starts_with("55 matching · page 1 of 2")
    })
    .await;
    let rows = b
        .client
        .find_all(Locator::Css("#dead-letters tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 50);
    b.click("a[rel=next]").await;
    b.wait_text("#dl-total", "page 2", |t| t.contains("page 2 of 2"))
        .await;
    let rows = b
        .client
        .find_all(Locator::Css("#dead-letters tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 5);
    b.goto(&format!("{base}/dead-letters?error=rejected")).await;
    assert!(b.text("#dl-total").await.starts_with("3 matching"));
    b.goto(&format!("{base}/dead-letters?from=2999-01-01T00:00"))
        .await;
    assert!(b.text("#dl-total").await.starts_with("0 matching"));

    // No token: the page says how to enable actions, and the server refuses them anyway.
    b.goto(&format!("{base}/dead-letters")).await;
    assert!(b
        .text("#actions-disabled")
        .await
        .contains("--console-token"));
    b.click("#dead-letters tbody input[type=checkbox]").await;
    b.click("button[value=replay]").await;
    b.wait_text(
        "#actions-disabled",
        "the refusal naming OUTBOX_CONSOLE_TOKEN",
        |t| t.contains("OUTBOX_CONSOLE_TOKEN"),
    )
    .await;
    pages += &b.source().await;
    assert!(
        !pages.contains(secret),
        "a page showed the database password"
    );
    let csrf = {
        b.goto(&format!("{base}/dead-letters")).await;
        let input = b.find("input[name=csrf]").await;
        input.attr("value").await.expect("attr").unwrap_or_default()
    };
    let http = reqwest::Client::new();
    for form in [
        format!("csrf={csrf}&action=purge&token=&id=00000000-0000-0000-0000-000000000000"),
        "action=purge&token=x".to_string(),
    ] {
        let res = http
            .post(format!("{base}/dead-letters/apply"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .timeout(WAIT)
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status().as_u16(), 403);
    }
    assert_eq!(dead_count(&pool).await, 58);
    relay.kill().await;
    let _ = console.kill().await;
    nats.cleanup().await;
}

/// A webhook receiver on a free port that answers every POST with the status the test sets.
struct Hook {
    status: Arc<AtomicU16>,
    received: Arc<AtomicUsize>,
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Hook {
    async fn start(status: u16) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let port = listener.local_addr().expect("its address").port();
        let (answer, received) = (
            Arc::new(AtomicU16::new(status)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (a, r) = (answer.clone(), received.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let (a, r) = (a.clone(), r.clone());
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    let code = a.load(Ordering::SeqCst);
                    axum::http::StatusCode::from_u16(code)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                }
            }),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hook {
            status: answer,
            received,
            url: format!("http://127.0.0.1:{port}/hook"),
            server,
        }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// On SQLite, through a webhook that first answers 503 (the sink is down: not counted), then
/// 500 (counted: the event is dead-lettered after 2 attempts), then 200: the overview shows
/// the sink down since when and back, the counts per routed topic; the dead letter's detail
/// shows its error history, outages marked; finding the event by id says where it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_down_sink_and_an_error_history_on_sqlite() {
    in_browser(sqlite_console).await;
}

async fn sqlite_console(env: Env) {
    let Env { b, .. } = &env;
    let (path, url, store) = migrated_sqlite("console").await;
    let pool = store.sqlite_pool().expect("a SQLite store").clone();
    let event: String = sqlx::query_scalar(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('Parcel', 'p-1', 'ParcelSent', '{\"n\": 1}') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("insert an event");
    let hook = Hook::start(503).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut relay = spawn_relay(
        &url,
        &[
            "--sink",
            &hook.url,
            "--listen",
            &listen,
            "--poll-interval",
            "100ms",
            "--max-attempts",
            "2",
            "--backoff-base",
            "100ms",
            "--backoff-max",
            "300ms",
        ],
    );
    wait_listening(port).await;
    let base = format!("http://127.0.0.1:{port}");

    // The sink answers 503: down, since when; the event waits, counted per topic.
    b.goto(&format!("{base}/")).await;
    b.wait_text("[data-k=sink]", "the sink shown down", |t| {
        t.starts_with("unreachable since")
    })
    .await;
    let sink = b.find("span[data-s=sink]").await;
    assert_eq!(
        sink.attr("data-state").await.expect("attr").as_deref(),
        Some("down")
    );
    let topics = b
        .wait_text("#by-topic", "the event counted under its topic", |t| {
            t.contains("parcel-events")
        })
        .await;
    assert!(topics.contains("Parcel: ParcelSent"), "{topics}");
    b.shot("sink-down").await;

    // 500s count: two attempts, then the dead-letter table. The sink answered: reachable.
    hook.answer(500);
    wait_until(WAIT, "the event to be dead-lettered", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letter")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    b.wait_text("[data-k=sink]", "the sink shown back", |t| t == "reachable")
        .await;
    b.wait_text("[data-k=dead_letters]", "one dead letter", |t| t == "1")
        .await;

    // Its detail: the history ends with the counted 500s, after the outage's entries.
    b.goto(&format!("{base}/dead-letters")).await;
    b.click("#dead-letters tbody a").await;
    let history = b.text("#error-history tbody").await;
    let lines: Vec<&str> = history.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        history.contains("outage (not counted)"),
        "the 503s are in the history: {history}"
    );
    assert!(
        lines.last().is_some_and(|l| l.contains("attempt")) && history.contains("500"),
        "the last entry is the counted 500: {history}"
    );
    b.shot("error-history").await;

    // Found by id on SQLite: dead-lettered, with why.
    b.goto(&format!("{base}/events?id={event}")).await;
    let found = b.find("#event").await;
    assert_eq!(
        found.attr("data-state").await.expect("attr").as_deref(),
        Some("dead_lettered")
    );
    assert!(hook.received.load(Ordering::SeqCst) >= 2);
    relay.kill().await;
    remove_sqlite(&path, store).await;
}

/// The CDC relay's console: its phase (streaming from its slot; a second relay on the same
/// slot shows standby) and the replication slot with its lag and retained WAL.
#[tokio::test(flavor = "multi_thread")]
async fn the_cdc_slot_panel_active_and_standby() {
    in_browser(cdc_console).await;
}

async fn cdc_console(env: Env) {
    let Env { db, nats, b } = &env;
    let pool = migrate(db).await;
    let slot = format!(
        "console_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let stream = nats.stream();
    let (p1, p2) = (free_port(), free_port());
    let cdc = |port: u16| {
        let listen = format!("127.0.0.1:{port}");
        spawn_relay(
            &db.url,
            &[
                "--source",
                "cdc",
                "--slot",
                &slot,
                "--sink",
                "nats://127.0.0.1:4222",
                "--nats-stream",
                &stream,
                "--listen",
                &listen,
            ],
        )
    };
    let mut active = cdc(p1);
    wait_listening(p1).await;
    b.goto(&format!("http://127.0.0.1:{p1}/")).await;
    b.wait_text("[data-k=cdc]", "the relay streaming", |t| {
        t == format!("active: streaming from slot {slot}")
    })
    .await;
    let slots = b
        .wait_text("#slots", "the slot in the slot table", |t| {
            t.contains(&slot)
        })
        .await;
    assert!(slots.contains("active"), "{slots}");
    // An event goes through: the slot panel stays, the pending count is the table's rows.
    event(&pool, &format!("Order{}", nats.prefix), "o-1", 1).await;
    wait_stream_len(nats, &stream, 1, WAIT).await;
    b.shot("cdc-overview").await;

    let mut standby = cdc(p2);
    wait_listening(p2).await;
    b.goto(&format!("http://127.0.0.1:{p2}/")).await;
    b.wait_text("[data-k=cdc]", "the second relay in standby", |t| {
        t == format!("standby: another reader holds slot {slot}")
    })
    .await;
    b.shot("cdc-standby").await;
    standby.kill().await;
    active.kill().await;
    outbox_relay::store::replication::drop_slot(&pool, &slot, Duration::from_secs(10))
        .await
        .expect("drop the test's slot");
    nats.cleanup().await;
}
