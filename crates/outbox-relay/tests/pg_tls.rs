//! PostgreSQL over TLS with password authentication, against a private server that accepts
//! only TLS (SCRAM-SHA-256, one md5 user, one client-certificate user; `hostnossl … reject`):
//! the pool (`Store::connect`) and the CDC replication connection, what works and how each
//! failure is named.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_relay::sink::{Message, Sink, SinkError};
use outbox_relay::source::cdc::{CdcOptions, CdcRelay, CdcRouting};
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::Router;
use outbox_testkit::{
    require, PgServer, TlsFiles, APP_PASSWORD, APP_USER, CERT_USER, MD5_PASSWORD, MD5_USER,
};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Message>>,
}

#[async_trait]
impl Sink for Recorder {
    async fn publish(&self, m: &Message) -> Result<(), SinkError> {
        self.seen.lock().unwrap().push(m.clone());
        Ok(())
    }
    fn describe(&self) -> String {
        "recorder".into()
    }
}

fn options(slot: &str) -> CdcOptions {
    CdcOptions {
        slot: slot.to_string(),
        publication: slot.to_string(),
        status_interval: Duration::from_millis(100),
        ..CdcOptions::default()
    }
}

fn slot_name() -> String {
    format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// The failure must be one line, name its cause, and hold no password.
fn assert_one_clear_line(e: &outbox_relay::Error, cause: &str) {
    let text = e.to_string();
    assert!(e.is_config(), "not a configuration error (exit 2): {text}");
    assert!(!text.contains('\n'), "more than one line: {text}");
    assert!(text.contains(cause), "{cause:?} not in: {text}");
    for secret in [APP_PASSWORD, MD5_PASSWORD, "wrong-pw-1", "s3cret"] {
        assert!(!text.contains(secret), "password leaked: {text}");
    }
}

async fn store(url: &str) -> Result<Store, outbox_relay::Error> {
    Store::connect(
        url,
        &ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            ..ConnectOptions::default()
        },
    )
    .await
}

/// TLS in use by `application_name`'s sessions (from the server's point of view).
async fn ssl_in_use(pg: &PgServer, application_name: &str) -> Vec<bool> {
    let pool = sqlx::PgPool::connect(&pg.admin_url("postgres"))
        .await
        .expect("admin connection");
    sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = $1",
    )
    .bind(application_name)
    .fetch_all(&pool)
    .await
    .expect("pg_stat_ssl")
}

async fn wait(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a CDC relay on `replication_url` (the pool on `pool_url`) until `events` events
/// arrive; returns them. The replication connection must be TLS.
async fn stream_events(pg: &PgServer, pool_url: &str, replication_url: &str, events: i64) {
    let store = store(pool_url).await.expect("the pool connects");
    store.migrate().await.expect("migrate");
    let pool = store.pg_pool().unwrap().clone();
    let sink = Arc::new(Recorder::default());
    let slot = slot_name();
    let relay = Arc::new(CdcRelay::new(
        store,
        replication_url,
        sink.clone(),
        CdcRouting::Router(Router::default()),
        options(&slot),
    ));
    relay.prepare().await.expect("prepare");
    let stop = CancellationToken::new();
    let task = {
        let (relay, stop) = (relay.clone(), stop.clone());
        tokio::spawn(async move { relay.run(stop).await })
    };
    let state = relay.state();
    wait(Duration::from_secs(20), "the relay to stream", || {
        state.is_streaming() || task.is_finished()
    })
    .await;
    assert!(!task.is_finished(), "the relay stopped: {:?}", task.await);
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'Order', 'o-' || g, 'Created', jsonb_build_object('n', g)
         FROM generate_series(1, $1) g",
    )
    .bind(events)
    .execute(&pool)
    .await
    .expect("insert");
    wait(Duration::from_secs(20), "the events", || {
        sink.seen.lock().unwrap().len() as i64 >= events
    })
    .await;
    assert_eq!(
        ssl_in_use(pg, "outbox-relay-cdc").await,
        [true],
        "the replication connection uses TLS"
    );
    assert!(ssl_in_use(pg, "outbox").await.iter().all(|&ssl| ssl));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the relay stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cdc_streams_with_scram_md5_and_a_client_certificate() {
    let pg = require!(PgServer::start().await);
    let ca = pg.ca();
    let db = pg.create_db().await;
    let full = pg.url(
        APP_USER,
        Some(APP_PASSWORD),
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    stream_events(&pg, &full, &full, 50).await;

    // md5 on both connections, by address, the chain verified (verify-ca) or not (require).
    let db = pg.create_db().await;
    let md5 = pg.url(
        MD5_USER,
        Some(MD5_PASSWORD),
        "127.0.0.1",
        &db,
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    );
    let md5_require = pg.url(
        MD5_USER,
        Some(MD5_PASSWORD),
        "127.0.0.1",
        &db,
        "sslmode=require",
    );
    stream_events(&pg, &md5, &md5_require, 20).await;

    // A client certificate (`cert` authentication) on both connections; `allow` on the
    // replication connection: refused without TLS, then connected with it.
    let (cert, key) = require!(pg.tls.client_cert(CERT_USER));
    let db = pg.create_db().await;
    let with_cert = |params: &str| {
        pg.url(
            CERT_USER,
            None,
            "localhost",
            &db,
            &format!(
                "{params}&sslcert={}&sslkey={}",
                cert.display(),
                key.display()
            ),
        )
    };
    stream_events(
        &pg,
        &with_cert(&format!("sslmode=verify-full&sslrootcert={ca}")),
        &with_cert("sslmode=allow"),
        20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replication_connection_names_each_failure() {
    let pg = require!(PgServer::start().await);
    let other = require!(TlsFiles::generate());
    let (ca, wrong_ca) = (pg.ca(), other.ca.display().to_string());
    let db = pg.create_db().await;
    let good = pg.url(
        APP_USER,
        Some(APP_PASSWORD),
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    store(&good).await.unwrap().migrate().await.unwrap();
    let url = |user: &str, password: &str, host: &str, params: String| {
        pg.url(user, Some(password), host, &db, &params)
    };
    let cases = [
        (
            url(APP_USER, APP_PASSWORD, "localhost", format!("sslmode=verify-full&sslrootcert={wrong_ca}")),
            format!("certificate not trusted: the server's certificate was not issued by a CA of sslrootcert={wrong_ca}"),
        ),
        (
            url(APP_USER, APP_PASSWORD, "127.0.0.2", format!("sslmode=verify-full&sslrootcert={ca}")),
            "host name mismatch: the server's certificate is not valid for \"127.0.0.2\" (it names localhost or 127.0.0.1)".to_string(),
        ),
        (
            url(APP_USER, "wrong-pw-1", "localhost", "sslmode=require".into()),
            "replication connection: password authentication failed for user \"app\"".into(),
        ),
        (
            url(MD5_USER, "wrong-pw-1", "localhost", "sslmode=require".into()),
            "password authentication failed for user \"md5user\"".into(),
        ),
        (
            url(APP_USER, APP_PASSWORD, "localhost", "sslmode=disable".into()),
            "server requires TLS (pg_hba.conf rejects connection for host \"127.0.0.1\", user \"app\"".into(),
        ),
    ];
    for (replication_url, cause) in cases {
        let relay = CdcRelay::new(
            store(&good).await.unwrap(),
            &replication_url,
            Arc::new(Recorder::default()),
            CdcRouting::Router(Router::default()),
            options(&slot_name()),
        );
        let e = tokio::time::timeout(Duration::from_secs(30), relay.run(CancellationToken::new()))
            .await
            .expect("the relay gives up at once")
            .expect_err("the relay must fail");
        println!("{e}");
        assert_one_clear_line(&e, &cause);
    }
    // verify-ca checks the chain only: the replication connection accepts a name the
    // certificate does not hold.
    let relay = CdcRelay::new(
        store(&good).await.unwrap(),
        &url(
            APP_USER,
            APP_PASSWORD,
            "127.0.0.2",
            format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        Arc::new(Recorder::default()),
        CdcRouting::Router(Router::default()),
        options(&slot_name()),
    );
    let stop = CancellationToken::new();
    let relay = Arc::new(relay);
    let task = {
        let (relay, stop) = (relay.clone(), stop.clone());
        tokio::spawn(async move { relay.run(stop).await })
    };
    let state = relay.state();
    wait(Duration::from_secs(20), "verify-ca to stream", || {
        state.is_streaming() || task.is_finished()
    })
    .await;
    stop.cancel();
    let result = task.await.unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(state.sessions(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pool_connects_as_libpq_and_names_each_failure() {
    let pg = require!(PgServer::start().await);
    let other = require!(TlsFiles::generate());
    let (ca, wrong_ca) = (pg.ca(), other.ca.display().to_string());
    let db = pg.create_db().await;
    let url = |user: &str, password: Option<&str>, host: &str, params: String| {
        pg.url(user, password, host, &db, &params)
    };

    // Works: verify-full by name and by address, require, the default (prefer: TLS), allow
    // (refused without TLS, then with it), md5, a client certificate.
    let (cert, key) = require!(pg.tls.client_cert(CERT_USER));
    for ok in [
        url(
            APP_USER,
            Some(APP_PASSWORD),
            "localhost",
            format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        url(
            APP_USER,
            Some(APP_PASSWORD),
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        url(
            APP_USER,
            Some(APP_PASSWORD),
            "localhost",
            "sslmode=require".into(),
        ),
        url(APP_USER, Some(APP_PASSWORD), "localhost", String::new()),
        url(
            APP_USER,
            Some(APP_PASSWORD),
            "localhost",
            "sslmode=allow".into(),
        ),
        url(
            MD5_USER,
            Some(MD5_PASSWORD),
            "localhost",
            "sslmode=require".into(),
        ),
        url(
            CERT_USER,
            None,
            "localhost",
            format!(
                "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
                cert.display(),
                key.display()
            ),
        ),
    ] {
        let s = store(&ok).await.unwrap_or_else(|e| panic!("{ok}: {e}"));
        let pool = s.pg_pool().unwrap();
        let ssl: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(pool)
                .await
                .unwrap();
        assert!(ssl, "{ok}: not TLS");
    }

    let cases = [
        (
            url(APP_USER, Some(APP_PASSWORD), "localhost", format!("sslmode=verify-full&sslrootcert={wrong_ca}")),
            format!("certificate not trusted: the server's certificate was not issued by a CA of sslrootcert={wrong_ca}"),
        ),
        (
            url(APP_USER, Some(APP_PASSWORD), "127.0.0.2", format!("sslmode=verify-full&sslrootcert={ca}")),
            "host name mismatch: the server's certificate is not valid for \"127.0.0.2\" (it names localhost or 127.0.0.1); sslmode=verify-full checks".into(),
        ),
        (
            url(APP_USER, Some("wrong-pw-1"), "localhost", "sslmode=require".into()),
            "password authentication failed for user \"app\"".into(),
        ),
        (
            url(APP_USER, None, "localhost", "sslmode=require".into()),
            "password authentication failed for user \"app\" (no password given".into(),
        ),
        (
            url(MD5_USER, Some("wrong-pw-1"), "localhost", "sslmode=require".into()),
            "password authentication failed for user \"md5user\"".into(),
        ),
        (
            url(APP_USER, Some(APP_PASSWORD), "localhost", "sslmode=disable".into()),
            "server requires TLS (pg_hba.conf rejects connection for host \"127.0.0.1\", user \"app\"".into(),
        ),
        (
            url(APP_USER, Some(APP_PASSWORD), "localhost", "sslmode=verify-full".into()),
            "sslmode=verify-full needs the CA that signed the server's certificate".into(),
        ),
        (
            url(CERT_USER, None, "localhost", "sslmode=require".into()),
            "client certificate required".into(),
        ),
    ];
    for (bad, cause) in cases {
        let e = store(&bad).await.expect_err(&bad);
        println!("{e}");
        assert_one_clear_line(&e, &cause);
    }
}
