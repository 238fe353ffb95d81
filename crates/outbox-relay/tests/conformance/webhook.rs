//! HTTP webhooks in the conformance suite, plus webhook-only behaviour: signatures, status
//! codes, `Retry-After`. The broker is an axum receiver run by the test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{options, post};
use outbox_relay::sink::webhook::{sign, WebhookOptions};
use outbox_relay::sink::{ErrorKind, SinkOptions};

use crate::harness::{Harness, Received, Rejection};

/// A Standard Webhooks secret ("whsec_" + base64 of "conformance-secret").
const SECRET: &str = "whsec_Y29uZm9ybWFuY2Utc2VjcmV0";
const KEY: &[u8] = b"conformance-secret";

/// A scripted answer: status, optional Retry-After, body.
type Answer = (u16, Option<&'static str>, &'static str);

/// What the receiver answers to the next requests (then 204 to everything).
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<Vec<Answer>>>,
}

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<(Received, bool)>>>,
    script: Script,
    /// `OPTIONS` requests (the sink's start probe).
    probes: Arc<AtomicUsize>,
}

async fn hook(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let answer = {
        let mut a = r.script.answers.lock().unwrap();
        if a.is_empty() {
            None
        } else {
            Some(a.remove(0))
        }
    };
    if let Some((status, retry_after, text)) = answer {
        let mut h = HeaderMap::new();
        if let Some(ra) = retry_after {
            h.insert("retry-after", ra.parse().unwrap());
        }
        return (StatusCode::from_u16(status).unwrap(), h, text).into_response();
    }
    let map: BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let signed = match (
        map.get("webhook-id"),
        map.get("webhook-timestamp"),
        map.get("webhook-signature"),
    ) {
        (Some(id), Some(ts), Some(sig)) => *sig == sign(KEY, id, ts, &body),
        _ => false,
    };
    let received = Received {
        topic: map.get("outbox-topic").cloned().unwrap_or_default(),
        key: map.get("outbox-key").cloned(),
        value: body.to_vec(),
        headers: map,
    };
    r.got.lock().unwrap().push((received, signed));
    StatusCode::NO_CONTENT.into_response()
}

/// The start probe: counted, answered 405 as a receiver that routes only `POST` would.
async fn probe(State(r): State<Receiver>) -> StatusCode {
    r.probes.fetch_add(1, Ordering::SeqCst);
    StatusCode::METHOD_NOT_ALLOWED
}

pub struct WebhookHarness {
    addr: SocketAddr,
    receiver: Receiver,
    server: tokio::task::JoinHandle<()>,
}

impl WebhookHarness {
    fn all(&self) -> Vec<(Received, bool)> {
        self.receiver.got.lock().unwrap().clone()
    }
}

#[async_trait]
impl Harness for WebhookHarness {
    async fn setup() -> Option<Self> {
        let receiver = Receiver {
            got: Arc::default(),
            script: Script::default(),
            probes: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hooks/{*rest}", post(hook).merge(options(probe)))
            .layer(DefaultBodyLimit::max(1024 * 1024))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Some(WebhookHarness {
            addr,
            receiver,
            server,
        })
    }

    fn broker(&self) -> String {
        self.addr.to_string()
    }

    fn sink_url(&self, addr: &str) -> String {
        format!("http://{addr}/hooks/orders")
    }

    fn sink_options(&self) -> SinkOptions {
        SinkOptions {
            http: WebhookOptions {
                secret: Some(SECRET.into()),
                timeout: Duration::from_secs(2),
            },
            ..SinkOptions::default()
        }
    }

    fn topic_template(&self) -> String {
        "{aggregate_type:lower}-events".into()
    }

    fn order_topic(&self) -> String {
        "order-events".into()
    }

    async fn receive(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got: Vec<Received> = self
                .all()
                .into_iter()
                .map(|(r, _)| r)
                .filter(|r| r.topic == self.order_topic())
                .collect();
            if got.len() >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn rejection(&self) -> Rejection {
        // The receiver takes at most 1 MiB: a larger body is answered 413.
        Rejection {
            payload_bytes: 2 * 1024 * 1024,
            reason: "413 Payload Too Large",
            kind: ErrorKind::Permanent,
        }
    }

    fn id_headers(&self) -> &'static [&'static str] {
        &["id", "webhook-id"]
    }

    async fn cleanup(&self) {
        self.server.abort();
    }
}

impl Drop for WebhookHarness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

mod behaviour {
    use super::*;
    use crate::harness::{start_relay, store, wait_status};
    use outbox_relay::RetryPolicy;
    use outbox_testkit::{require, TestDb};

    async fn one_event(store: &outbox_relay::Store) {
        sqlx::query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('Order', 'o-1', 'OrderCreated', '{\"n\": 1}')")
            .execute(store.pg_pool().unwrap())
            .await
            .unwrap();
    }

    fn retry() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_secs(5),
            max_attempts: 5,
            jitter: 0.0,
        }
    }

    #[tokio::test]
    async fn requests_carry_a_valid_standard_webhooks_signature() {
        let db = require!(TestDb::create().await);
        let h = WebhookHarness::setup().await.unwrap();
        let store = store(&db).await;
        one_event(&store).await;
        let relay = start_relay(&h, &store, &h.sink_url(&h.broker()), retry()).await;
        wait_status(&store, Duration::from_secs(30), "delivery", |s| {
            s.pending == 0
        })
        .await;
        relay.stop().await;
        let all = h.all();
        assert_eq!(all.len(), 1);
        let (r, signed) = &all[0];
        assert!(
            signed,
            "webhook-signature verifies with the secret: {:?}",
            r.headers
        );
        assert_eq!(
            r.headers.get("webhook-id"),
            r.headers.get("id"),
            "webhook-id is the event id"
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }

    /// A 500 is the endpoint's answer about this request: counted, retried after the
    /// `Retry-After` it asked for.
    #[tokio::test]
    async fn a_500_with_retry_after_is_retried_no_sooner_than_asked() {
        let db = require!(TestDb::create().await);
        let h = WebhookHarness::setup().await.unwrap();
        h.receiver
            .script
            .answers
            .lock()
            .unwrap()
            .push((500, Some("2"), "busy"));
        let store = store(&db).await;
        one_event(&store).await;
        let started = std::time::Instant::now();
        let relay = start_relay(&h, &store, &h.sink_url(&h.broker()), retry()).await;
        wait_status(
            &store,
            Duration::from_secs(30),
            "delivery after the retry",
            |s| s.pending == 0,
        )
        .await;
        relay.stop().await;
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "Retry-After honoured: {:?}",
            started.elapsed()
        );
        let (count, error): (i32, String) =
            sqlx::query_as("SELECT retry_count, last_error FROM outbox")
                .fetch_one(store.pg_pool().unwrap())
                .await
                .unwrap();
        assert_eq!(count, 1);
        assert!(error.contains("500") && error.contains("busy"), "{error}");
        assert_eq!(h.all().len(), 1);
    }

    #[tokio::test]
    async fn a_400_is_dead_lettered_at_once_with_status_and_body() {
        let db = require!(TestDb::create().await);
        let h = WebhookHarness::setup().await.unwrap();
        h.receiver
            .script
            .answers
            .lock()
            .unwrap()
            .push((400, None, "field total is required"));
        let store = store(&db).await;
        one_event(&store).await;
        let relay = start_relay(&h, &store, &h.sink_url(&h.broker()), retry()).await;
        wait_status(&store, Duration::from_secs(30), "the dead letter", |s| {
            s.dead_letters == 1
        })
        .await;
        relay.stop().await;
        let dead = store.dead_letters(1).await.unwrap();
        assert_eq!(dead[0].retry_count, 1, "no retries for a 400");
        assert!(
            dead[0].error.contains("400 Bad Request")
                && dead[0].error.contains("field total is required"),
            "{}",
            dead[0].error
        );
    }
}

/// What each answer of the endpoint means, against a real HTTP server.
mod kinds {
    use super::*;
    use outbox_relay::sink::webhook::WebhookSink;
    use outbox_relay::Sink;

    fn message() -> outbox_relay::Message {
        crate::harness::message("order-events")
    }

    /// 401/403/404 (a revoked token, a removed endpoint), 429 and 503 are the endpoint's
    /// trouble: unavailable, never dead-lettered, `Retry-After` kept. A 500 is retryable, a 400
    /// or 413 permanent.
    #[tokio::test]
    async fn statuses_map_to_kinds() {
        let h = WebhookHarness::setup().await.unwrap();
        let cases: [(Answer, ErrorKind, Option<u64>); 8] = [
            ((401, None, "token revoked"), ErrorKind::Unavailable, None),
            ((403, None, "forbidden"), ErrorKind::Unavailable, None),
            ((404, None, "no such hook"), ErrorKind::Unavailable, None),
            (
                (429, Some("7"), "slow down"),
                ErrorKind::Unavailable,
                Some(7),
            ),
            (
                (503, Some("3"), "maintenance"),
                ErrorKind::Unavailable,
                Some(3),
            ),
            ((500, None, "oops"), ErrorKind::Retryable, None),
            ((400, None, "bad"), ErrorKind::Permanent, None),
            ((413, None, "too big"), ErrorKind::Permanent, None),
        ];
        h.receiver
            .script
            .answers
            .lock()
            .unwrap()
            .extend(cases.iter().map(|(a, _, _)| *a));
        let sink = WebhookSink::connect(&h.sink_url(&h.broker()), &h.sink_options().http)
            .await
            .expect("webhook sink");
        for ((status, _, body), kind, wait) in cases {
            let err = sink.publish(&message()).await.unwrap_err();
            assert_eq!(err.kind, kind, "{status}: {err}");
            assert!(err.message.contains(&status.to_string()), "{err}");
            assert!(err.message.contains(body), "{err}");
            assert_eq!(err.retry_after, wait.map(Duration::from_secs), "{status}");
        }
        sink.publish(&message()).await.expect("then 204");
    }

    /// The endpoint is asked once at start, and a 405 to that question is an answer: the sink
    /// starts, and its first event is delivered by `POST` as usual.
    #[tokio::test]
    async fn the_endpoint_is_asked_once_at_start() {
        let h = WebhookHarness::setup().await.unwrap();
        let sink = WebhookSink::connect(&h.sink_url(&h.broker()), &h.sink_options().http)
            .await
            .expect("webhook sink");
        assert_eq!(h.receiver.probes.load(Ordering::SeqCst), 1, "one probe");
        assert!(h.all().is_empty(), "the probe is not a delivery");
        sink.publish(&message()).await.expect("delivered");
        assert_eq!(h.all().len(), 1);
        assert_eq!(
            h.receiver.probes.load(Ordering::SeqCst),
            1,
            "asked once only"
        );
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable() {
        let port = outbox_testkit::free_port();
        let sink = WebhookSink::connect(
            &format!("http://127.0.0.1:{port}/hooks/orders"),
            &WebhookOptions::default(),
        )
        .await
        .expect("webhook sink");
        let err = crate::harness::unreachable_publish_fails(&sink, "order-events").await;
        assert!(err.message.contains("connection failed"), "{err}");
    }
}
