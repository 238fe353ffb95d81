//! Redis Streams in the conformance suite (Redis on 127.0.0.1:6379; the outage goes through
//! the default proxy).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use outbox_relay::sink::{ErrorKind, SinkOptions};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::AsyncConnectionConfig;

use crate::harness::{Harness, Received, Rejection};

/// The shared Redis (override with `OUTBOX_TEST_REDIS`, `host:port`).
pub fn redis_addr() -> String {
    std::env::var("OUTBOX_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

pub struct RedisHarness {
    prefix: String,
    conn: MultiplexedConnection,
}

#[async_trait]
impl Harness for RedisHarness {
    async fn setup() -> Option<Self> {
        let addr = redis_addr();
        let service = format!("Redis at {addr}");
        let client = match redis::Client::open(format!("redis://{addr}")) {
            Ok(c) => c,
            Err(e) => {
                outbox_testkit::unavailable(&service, &e.to_string());
                return None;
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                outbox_testkit::unavailable(&service, &e.to_string());
                return None;
            }
        };
        if let Err(e) = redis::cmd("PING").query_async::<String>(&mut conn).await {
            outbox_testkit::unavailable(&service, &e.to_string());
            return None;
        }
        Some(RedisHarness {
            prefix: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            conn,
        })
    }

    fn broker(&self) -> String {
        redis_addr()
    }

    fn sink_url(&self, addr: &str) -> String {
        format!("redis://{addr}")
    }

    fn sink_options(&self) -> SinkOptions {
        let mut o = SinkOptions::default();
        o.redis.timeout = Duration::from_secs(1);
        o
    }

    fn topic_template(&self) -> String {
        format!("{}-{{aggregate_type:lower}}", self.prefix)
    }

    fn order_topic(&self) -> String {
        format!("{}-order", self.prefix)
    }

    async fn receive(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let stream = self.order_topic();
        let mut conn = self.conn.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = "0-0".to_string();
        let mut out = Vec::new();
        loop {
            // Wait for new entries while fewer than `n` are in; then take what is left.
            let block = if out.len() < n {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                left.min(Duration::from_secs(1))
            } else {
                Duration::ZERO
            };
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(1000);
            if !block.is_zero() {
                cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
            }
            cmd.arg("STREAMS").arg(&stream).arg(&last);
            let reply: Option<StreamReadReply> = cmd.query_async(&mut conn).await.expect("XREAD");
            let entries: Vec<_> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            if entries.is_empty() && out.len() >= n {
                break;
            }
            for entry in entries {
                last = entry.id.clone();
                out.push(received(&stream, &entry.map));
            }
        }
        out
    }

    async fn rejection(&self) -> Rejection {
        // A plain string where the Poison stream should be: XADD answers WRONGTYPE.
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(format!("{}-poison", self.prefix))
            .arg("not a stream")
            .query_async::<()>(&mut conn)
            .await
            .expect("SET the poison key");
        Rejection {
            payload_bytes: 0,
            reason: "WRONGTYPE",
            kind: ErrorKind::Permanent,
        }
    }

    async fn cleanup(&self) {
        let mut conn = self.conn.clone();
        let _ = redis::cmd("DEL")
            .arg(self.order_topic())
            .arg(format!("{}-poison", self.prefix))
            .query_async::<i64>(&mut conn)
            .await;
    }
}

/// One stream entry as the contract lays it out: `id`, `key`, `type`, `value`, `headers`.
fn received(stream: &str, fields: &std::collections::HashMap<String, redis::Value>) -> Received {
    let bytes = |name: &str| -> Option<Vec<u8>> {
        fields
            .get(name)
            .map(|v| redis::from_redis_value_ref(v).expect("a string field"))
    };
    let text = |name: &str| bytes(name).map(|b| String::from_utf8(b).expect("UTF-8 field"));
    let headers: BTreeMap<String, String> = match text("headers") {
        Some(json) => serde_json::from_str(&json).expect("headers: a JSON object of strings"),
        None => BTreeMap::new(),
    };
    let id = text("id").expect("every entry has an id field");
    assert_eq!(
        headers.get("id"),
        Some(&id),
        "the id field and the id header agree"
    );
    if let Some(event_type) = headers.get("event_type") {
        assert_eq!(text("type").as_ref(), Some(event_type), "type field");
    }
    Received {
        topic: stream.to_string(),
        key: text("key"),
        value: bytes("value").expect("every entry has a value field"),
        headers,
    }
}

/// `rediss://` against a private redis-server with a TLS port whose certificate a test CA
/// signed: trusted through `ca_file` the entry lands (read back on the instance's plain port);
/// with the system's roots only, the publish fails as retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_over_tls_with_a_private_ca() {
    use outbox_relay::sink::redis_streams::{RedisOptions, RedisSink};
    use outbox_relay::{Message, Sink};

    let tls = outbox_testkit::require!(outbox_testkit::TlsFiles::generate());
    let (tls_port, plain_port) = (outbox_testkit::free_port(), outbox_testkit::free_port());
    let (tls_port_s, plain_port_s) = (tls_port.to_string(), plain_port.to_string());
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    let _server = outbox_testkit::require!(outbox_testkit::ChildServer::start(
        "redis-server",
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            &plain_port_s,
            "--tls-port",
            &tls_port_s,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        tls_port
    ));
    let id = uuid::Uuid::new_v4();
    let message = Message {
        id,
        topic: "secure-orders".into(),
        key: "o-1".into(),
        value: bytes::Bytes::from_static(b"{\"n\":1}"),
        headers: vec![("id".into(), id.to_string())],
    };
    let options = RedisOptions {
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };

    let untrusted = RedisSink::connect(&format!("rediss://localhost:{tls_port}"), &options)
        .await
        .expect("the URL is valid");
    let err = crate::harness::untrusted_publish_fails(&untrusted, &message).await;
    assert!(err.to_string().contains("certificate"), "{err}");

    let url = format!("rediss://localhost:{tls_port}?ca_file={ca}");
    let sink = RedisSink::connect(&url, &options)
        .await
        .expect("Redis sink");
    sink.publish(&message).await.expect("delivered over TLS");

    let client = redis::Client::open(format!("redis://127.0.0.1:{plain_port}")).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("plain connection to the private instance");
    let reply: StreamReadReply = redis::cmd("XREAD")
        .arg("STREAMS")
        .arg("secure-orders")
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("XREAD");
    let entries: Vec<_> = reply.keys.iter().flat_map(|k| &k.ids).collect();
    assert_eq!(entries.len(), 1);
    let got = received("secure-orders", &entries[0].map);
    assert_eq!(got.value, b"{\"n\":1}".to_vec());
    assert_eq!(got.headers.get("id"), Some(&id.to_string()));
}
