//! Outbox tables the relay did not create, and tables someone else reads: adopting the
//! reference SQLAlchemy model's table, Debezium's outbox table, tables of something else, and
//! a table that CDC streams (a polling relay must not deliver it all again).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// The DDL SQLAlchemy (2.x, `Base.metadata.create_all`) emits on PostgreSQL for the reference
/// document's `OutboxMessage` model: `id = Column(UUID(as_uuid=True), primary_key=True,
/// default=uuid4)`, `aggregate_type = Column(String(100), nullable=False)`, `aggregate_id =
/// Column(UUID(as_uuid=True), nullable=False)`, `event_type = Column(String(100),
/// nullable=False)`, `payload = Column(JSONB, nullable=False)`, `created_at = Column(DateTime,
/// nullable=False, default=datetime.utcnow)`, `published_at = Column(DateTime)`, `retry_count =
/// Column(Integer, default=0)`, `last_error = Column(Text)`, and the index its polling query
/// wants. Python-side defaults (uuid4, utcnow, 0) leave no default in the table.
const REFERENCE_DDL: &str = "
CREATE TABLE outbox (
	id UUID NOT NULL, 
	aggregate_type VARCHAR(100) NOT NULL, 
	aggregate_id UUID NOT NULL, 
	event_type VARCHAR(100) NOT NULL, 
	payload JSONB NOT NULL, 
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, 
	published_at TIMESTAMP WITHOUT TIME ZONE, 
	retry_count INTEGER, 
	last_error TEXT, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
";

/// Debezium's outbox table, as its documentation's example creates it (here named `outbox`).
const DEBEZIUM_DDL: &str = "
CREATE TABLE outbox (
    id uuid NOT NULL PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,
    aggregateid varchar(255) NOT NULL,
    type varchar(255) NOT NULL,
    payload jsonb
)";

/// Waits (bounded) until the sink file holds `n` lines; returns them.
async fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    wait_until(Duration::from_secs(30), &format!("{n} lines"), || async {
        let l = jsonl_lines(path);
        (l.len() >= n).then_some(l)
    })
    .await
}

/// Waits (bounded) until replication slot `slot` is created: from its consistent point on,
/// every committed insert is streamed (one committed before it would not be).
async fn wait_slot_created(pool: &sqlx::PgPool, slot: &str) {
    let what = format!("slot {slot} created");
    wait_until(Duration::from_secs(60), &what, || async {
        let slots = outbox_relay::store::replication::replication_slots(pool)
            .await
            .ok()?;
        let found = slots.into_iter().find(|s| s.slot == slot)?;
        found.confirmed_flush_lsn.map(drop)
    })
    .await;
}

/// `outbox relay --source cdc FLAGS` delivering to the JSON-lines file `out`.
fn spawn_cdc(url: &str, flags: &[&str], out: &Path) -> RelayProcess {
    let sink = format!("file:{}", out.display());
    let mut args = vec!["--source", "cdc", "--sink", &sink];
    args.extend(flags);
    spawn_relay(url, &args)
}

/// Runs `outbox ARGS` on `url` and asserts a clean refusal: exit 2 (not a panic's 101), one
/// line saying each of `says`.
async fn refused(url: &str, args: &[&str], says: &[&str]) {
    let r = outbox(Some(url), args).await;
    assert_eq!(r.code, 2, "{args:?}: {}{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{args:?}: {}", r.stderr);
    for s in says {
        assert!(r.stderr.contains(s), "{args:?}: {s:?} in {}", r.stderr);
    }
}

#[tokio::test]
async fn the_reference_models_table_is_adopted_and_delivers_in_created_at_order() {
    let db = require!(TestDb::create().await);
    let pool = db.pool().await;
    sqlx::Executor::execute(&pool, REFERENCE_DDL).await.unwrap();
    // What the reference OrderService writes (utcnow: zone-less UTC), then its publisher's
    // failed attempt on OrderCreated: the UPDATE moves that row behind OrderPaid on disk.
    let order = uuid::Uuid::new_v4();
    sqlx::Executor::execute(
        &pool,
        format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, created_at, retry_count)
             VALUES (gen_random_uuid(), 'Order', '{order}', 'OrderCreated', '{{\"n\": 1}}',
                     '2026-03-01 10:00:00.000001', 0);
             INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, created_at, retry_count)
             VALUES (gen_random_uuid(), 'Order', '{order}', 'OrderPaid', '{{\"n\": 2}}',
                     '2026-03-01 10:00:01', 0);
             UPDATE outbox SET retry_count = 1, last_error = 'broker down'
             WHERE event_type = 'OrderCreated';"
        )
        .as_str(),
    )
    .await
    .unwrap();

    // Before `outbox migrate`, the commands say so rather than "does not exist".
    refused(
        &db.url,
        &["status"],
        &["has not adopted it yet", "run `outbox migrate`"],
    )
    .await;

    let r = outbox(Some(&db.url), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("applied migration 4"), "{}", r.stdout);
    // A writer without the ORM's Python-side defaults (no id, created_at, retry_count).
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('Order', $1, 'OrderShipped', '{\"n\": 3}')",
    )
    .bind(order)
    .execute(&pool)
    .await
    .unwrap();

    let out = scratch_file("reference.jsonl");
    let mut relay = spawn_relay(
        &db.url,
        &[
            "--sink",
            &format!("file:{}", out.display()),
            "--poll-interval",
            "50ms",
        ],
    );
    let got = wait_lines(&out, 3).await;
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
    let types: Vec<&str> = got
        .iter()
        .map(|l| l["value"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["OrderCreated", "OrderPaid", "OrderShipped"],
        "created_at order"
    );
    assert_eq!(
        got[0]["key"],
        order.to_string(),
        "the uuid's usual spelling"
    );
    // The zone-less time was read as UTC.
    assert_eq!(
        got[0]["value"]["timestamp"],
        "2026-03-01T10:00:00.000001+00:00"
    );
    assert_eq!(got[1]["value"]["timestamp"], "2026-03-01T10:00:01+00:00");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let r = outbox(Some(&db.url), &["migrate"]).await;
    assert!(r.stdout.contains("up to date (version 6)"), "{}", r.stdout);
    let _ = std::fs::remove_file(out);
}

#[tokio::test]
async fn debeziums_outbox_table_is_named_and_left_to_the_cdc_source() {
    let db = require!(TestDb::create().await);
    let pool = db.pool().await;
    sqlx::Executor::execute(&pool, DEBEZIUM_DDL).await.unwrap();
    let says = [
        "Debezium's outbox column layout",
        "--source cdc --debezium-connector",
    ];
    for args in [
        vec!["status"],
        vec!["relay", "--sink", "stdout:"],
        vec!["dlq", "list"],
    ] {
        refused(&db.url, &args, &says).await;
    }
    for _ in 0..2 {
        let r = outbox(Some(&db.url), &["migrate"]).await;
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        for s in says
            .iter()
            .chain(&["created the dead-letter table outbox_dead_letter"])
        {
            assert!(r.stdout.contains(s), "{s:?} in {}", r.stdout);
        }
    }
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_name = 'outbox' ORDER BY ordinal_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        columns,
        ["id", "aggregatetype", "aggregateid", "type", "payload"]
    );
    // After migrate the polling source still says what the table is.
    refused(&db.url, &["relay", "--sink", "stdout:"], &says).await;

    // What the message advises works: the CDC source with Debezium's routing streams it.
    let slot = format!("dbz_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let connector = scratch_file("connector.json");
    std::fs::write(
        &connector,
        format!(
            r#"{{"name": "outbox-connector", "config": {{
                "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
                "table.include.list": "public.outbox", "slot.name": "{slot}",
                "publication.name": "{slot}", "transforms": "outbox",
                "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter"}}}}"#
        ),
    )
    .unwrap();
    let out = scratch_file("debezium.jsonl");
    let mut relay = spawn_cdc(
        &db.url,
        &["--debezium-connector", connector.to_str().unwrap()],
        &out,
    );
    wait_slot_created(&pool, &slot).await;
    sqlx::query(
        "INSERT INTO outbox VALUES (gen_random_uuid(), 'order', 'o-1', 'OrderCreated', '{\"id\": 1}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let got = wait_lines(&out, 1).await;
    assert_eq!(got[0]["topic"], "outbox.event.order", "{}", got[0]);
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(30)).await, 0);
    outbox_relay::store::replication::drop_slot(&pool, &slot, Duration::from_secs(10))
        .await
        .unwrap();
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(connector);
}

#[tokio::test]
async fn a_table_of_something_else_is_refused_with_the_reason() {
    let db = require!(TestDb::create().await);
    let pool = db.pool().await;
    sqlx::Executor::execute(
        &pool,
        "CREATE TABLE outbox (id serial PRIMARY KEY, aggregate_type text, aggregate_id text,
                              event_type text, payload jsonb)",
    )
    .await
    .unwrap();
    refused(
        &db.url,
        &["migrate"],
        &["column id is integer", "the relay needs uuid"],
    )
    .await;
    refused(
        &db.url,
        &["relay", "--sink", "stdout:"],
        &["column id is integer"],
    )
    .await;
    sqlx::Executor::execute(
        &pool,
        "DROP TABLE outbox; CREATE TABLE outbox (id int, name text)",
    )
    .await
    .unwrap();
    refused(
        &db.url,
        &["migrate"],
        &[
            "lacks column(s) aggregate_type, aggregate_id, event_type, payload",
            "(it has id, name)",
        ],
    )
    .await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE tablename IN ('outbox_migrations', 'outbox_dead_letter')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "a refused migrate changes nothing");

    // SQLite: a table of the same columns, created by other code, cannot get the seq rowid.
    let path = scratch_file("foreign.db");
    let url = format!("sqlite:{}", path.display());
    std::fs::File::create(&path).unwrap();
    let store = outbox_relay::Store::connect(&url, &Default::default())
        .await
        .unwrap();
    sqlx::Executor::execute(
        store.sqlite_pool().unwrap(),
        "CREATE TABLE outbox (id TEXT PRIMARY KEY, aggregate_type TEXT, aggregate_id TEXT,
                              event_type TEXT, payload TEXT, created_at TEXT)",
    )
    .await
    .unwrap();
    refused(
        &url,
        &["migrate"],
        &["SQLite cannot add the seq rowid", "rename it"],
    )
    .await;
    refused(&url, &["status"], &["SQLite cannot add the seq rowid"]).await;
    remove_sqlite(&path, store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_the_polling_relay_see_a_cdc_reader_of_the_table() {
    let db = require!(TestDb::create().await);
    let pool = migrate(&db).await;
    let slot = format!("guard_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let cdc_out = scratch_file("cdc.jsonl");
    let mut cdc = spawn_cdc(
        &db.url,
        &["--slot", &slot, "--publication", &slot],
        &cdc_out,
    );
    wait_slot_created(&pool, &slot).await;
    insert_sequenced(&pool, "Order", 3, 2, 0).await;
    wait_lines(&cdc_out, 6).await;

    // Everything was delivered, yet no row is marked: status says what the rows are.
    let r = outbox(Some(&db.url), &["status"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    for s in [
        format!("read by CDC   table public.outbox: replication slot {slot}, publication {slot}"),
        "unmarked rows 6".into(),
        "not a backlog: CDC never marks rows published".into(),
        format!("slot {slot}"),
    ] {
        assert!(r.stdout.contains(&s), "{s:?} in {}", r.stdout);
    }
    assert!(!r.stdout.contains("pending "), "{}", r.stdout);
    let r = outbox(Some(&db.url), &["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json["cdc"]["slots"][0], slot.as_str(), "{json}");
    assert_eq!(json["cdc"]["publications"][0], slot.as_str(), "{json}");
    let r = outbox(Some(&db.url), &["status", "--check"]).await;
    assert_eq!(
        r.code, 0,
        "rows CDC delivered are no alarm: {}{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stdout.starts_with(&format!("ok: CDC slot {slot} active")),
        "{}",
        r.stdout
    );

    // A polling relay would deliver all six again: refused, saying how to override.
    refused(
        &db.url,
        &["relay", "--sink", "stdout:"],
        &[
            "is read by CDC",
            &format!("replication slot {slot}"),
            "--allow-with-cdc",
        ],
    )
    .await;

    cdc.signal(libc::SIGTERM);
    assert_eq!(cdc.wait(Duration::from_secs(30)).await, 0);
    let r = outbox(Some(&db.url), &["status", "--check"]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!("CDC slot {slot} has no reader")),
        "{}",
        r.stderr
    );

    // The override polls (and delivers again, as it warns).
    let poll_out = scratch_file("poll.jsonl");
    let mut poll = spawn_relay(
        &db.url,
        &[
            "--allow-with-cdc",
            "--sink",
            &format!("file:{}", poll_out.display()),
        ],
    );
    wait_lines(&poll_out, 6).await;
    poll.signal(libc::SIGTERM);
    assert_eq!(poll.wait(Duration::from_secs(15)).await, 0);

    // Without the slot, the table is the polling relay's again.
    outbox_relay::store::replication::drop_slot(&pool, &slot, Duration::from_secs(10))
        .await
        .unwrap();
    let r = outbox(Some(&db.url), &["status"]).await;
    assert!(r.stdout.contains("pending       0"), "{}", r.stdout);
    let _ = std::fs::remove_file(cdc_out);
    let _ = std::fs::remove_file(poll_out);
}
