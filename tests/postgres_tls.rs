//! The `outbox` binary against a private PostgreSQL that accepts only TLS (SCRAM-SHA-256, one
//! md5 user; `hostnossl … reject`): the poll and CDC relays deliver to NATS JetStream with
//! `sslmode=verify-full`, the admin commands connect with `sslmode=require`, the password comes
//! from the URL or `PGPASSWORD`, and each failure exits with status 2 and one line that names
//! its cause without the password.

mod common;

use std::time::Duration;

use common::*;
use outbox_testkit::{PgServer, TlsFiles, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER};

/// Events for aggregate type `agg_type`, written over the private server's Unix socket.
async fn insert(pg: &PgServer, db: &str, agg_type: &str, n: i64) {
    let pool = sqlx::PgPool::connect(&pg.admin_url(db))
        .await
        .expect("admin connection");
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT $1, 'o-' || g, 'Created', jsonb_build_object('n', g)
         FROM generate_series(1, $2) g",
    )
    .bind(agg_type)
    .bind(n)
    .execute(&pool)
    .await
    .expect("insert events");
}

/// TLS in use by the sessions of `application_name`, seen by the server.
async fn ssl_of(pg: &PgServer, application_name: &str) -> Vec<bool> {
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

fn verify_full(pg: &PgServer, db: &str) -> String {
    pg.url(
        APP_USER,
        Some(APP_PASSWORD),
        "localhost",
        db,
        &format!("sslmode=verify-full&sslrootcert={}", pg.ca()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_poll_relay_delivers_over_verify_full() {
    let pg = require!(PgServer::start().await);
    let nats = require!(TestNats::connect().await);
    let db = pg.create_db().await;
    let url = verify_full(&pg, &db);
    let r = outbox(Some(&url), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let agg_type = format!("Order{}", nats.prefix);
    insert(&pg, &db, &agg_type, 30).await;
    let stream = nats.stream();
    let mut relay = spawn_relay(
        &url,
        &[
            "--sink",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            &stream,
            "--poll-interval",
            "200ms",
        ],
    );
    wait_stream_len(&nats, &stream, 30, Duration::from_secs(30)).await;
    let ssl = ssl_of(&pg, "outbox").await;
    assert!(!ssl.is_empty() && ssl.iter().all(|&s| s), "{ssl:?}");
    relay.kill().await;
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cdc_relay_delivers_over_verify_full() {
    let pg = require!(PgServer::start().await);
    let nats = require!(TestNats::connect().await);
    let db = pg.create_db().await;
    let url = verify_full(&pg, &db);
    let r = outbox(Some(&url), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let stream = nats.stream();
    let mut relay = spawn_relay(
        &url,
        &[
            "--source",
            "cdc",
            "--slot",
            "tls_slot",
            "--sink",
            "nats://127.0.0.1:4222",
            "--nats-stream",
            &stream,
        ],
    );
    // Streaming: the walsender runs (over TLS).
    wait_until(
        Duration::from_secs(30),
        "the replication connection",
        || async {
            let ssl = ssl_of(&pg, "outbox-relay-cdc").await;
            (!ssl.is_empty()).then_some(ssl)
        },
    )
    .await
    .iter()
    .for_each(|&ssl| assert!(ssl, "the replication connection is not TLS"));
    let agg_type = format!("Order{}", nats.prefix);
    insert(&pg, &db, &agg_type, 30).await;
    wait_stream_len(&nats, &stream, 30, Duration::from_secs(30)).await;
    relay.kill().await;
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_connect_with_require_and_the_password_from_pgpassword() {
    let pg = require!(PgServer::start().await);
    let db = pg.create_db().await;
    let require = pg.url(
        APP_USER,
        Some(APP_PASSWORD),
        "localhost",
        &db,
        "sslmode=require",
    );
    let r = outbox(Some(&require), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = outbox(Some(&require), &["status"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("pending       0"), "{}", r.stdout);
    // No password in the URL: PGPASSWORD (SCRAM), then an md5 user.
    for (user, password) in [(APP_USER, APP_PASSWORD), (MD5_USER, MD5_PASSWORD)] {
        let url = pg.url(user, None, "localhost", &db, "sslmode=require");
        let r = outbox_with_env(Some(&url), &[("PGPASSWORD", password)], &["status"]).await;
        assert_eq!(r.code, 0, "{user}: {}", r.stderr);
        let r = outbox_with_env(Some(&url), &[("PGPASSWORD", password)], &["dlq", "list"]).await;
        assert_eq!(r.code, 0, "{user}: {}", r.stderr);
    }
    // The default sslmode (prefer) uses the server's TLS.
    let prefer = pg.url(APP_USER, Some(APP_PASSWORD), "127.0.0.1", &db, "");
    let r = outbox(Some(&prefer), &["status", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_failure_exits_2_with_one_line_naming_its_cause() {
    let pg = require!(PgServer::start().await);
    let other = require!(TlsFiles::generate());
    let db = pg.create_db().await;
    let r = outbox(Some(&verify_full(&pg, &db)), &["migrate"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (ca, wrong_ca) = (pg.ca(), other.ca.display().to_string());
    let url = |password: &str, host: &str, params: String| {
        pg.url(APP_USER, Some(password), host, &db, &params)
    };
    let cases = [
        (
            url(APP_PASSWORD, "localhost", format!("sslmode=verify-full&sslrootcert={wrong_ca}")),
            format!("certificate not trusted: the server's certificate was not issued by a CA of sslrootcert={wrong_ca}"),
        ),
        (
            url(APP_PASSWORD, "127.0.0.2", format!("sslmode=verify-full&sslrootcert={ca}")),
            "host name mismatch: the server's certificate is not valid for \"127.0.0.2\"".into(),
        ),
        (
            url("wrong-pw-1", "localhost", "sslmode=require".into()),
            "password authentication failed for user \"app\"".into(),
        ),
        (
            url(APP_PASSWORD, "localhost", "sslmode=disable".into()),
            "server requires TLS (pg_hba.conf rejects connection for host \"127.0.0.1\", user \"app\"".into(),
        ),
    ];
    let commands: [&[&str]; 3] = [
        &["status"],
        &["relay", "--sink", "stdout:"],
        &[
            "relay", "--source", "cdc", "--slot", "never", "--sink", "stdout:",
        ],
    ];
    for (bad, cause) in &cases {
        for args in commands {
            let r = outbox(Some(bad), args).await;
            let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(r.code, 2, "{args:?} {bad}: {}", r.stderr);
            assert_eq!(lines.len(), 1, "{args:?}: not one line: {}", r.stderr);
            assert!(
                lines[0].contains(cause.as_str()),
                "{args:?}: {cause:?} not in {}",
                lines[0]
            );
            for secret in [APP_PASSWORD, "wrong-pw-1", &super_encoded(APP_PASSWORD)] {
                assert!(!r.stderr.contains(secret), "password leaked: {}", r.stderr);
            }
        }
    }
    // A wrong PGPASSWORD: named, never shown.
    let no_pw = pg.url(APP_USER, None, "localhost", &db, "sslmode=require");
    let r = outbox_with_env(Some(&no_pw), &[("PGPASSWORD", "wrong-pw-2")], &["status"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("password authentication failed for user \"app\""),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("wrong-pw-2"), "{}", r.stderr);
    println!("{}", r.stderr);
}

/// The password as it appears in the URL.
fn super_encoded(p: &str) -> String {
    outbox_testkit::url_encode(p)
}
