//! NATS JetStream in the conformance suite.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use outbox_relay::sink::{ErrorKind, SinkOptions};
use outbox_testkit::TestNats;

use crate::harness::{Harness, Received, Rejection};

pub struct NatsHarness {
    nats: TestNats,
}

#[async_trait]
impl Harness for NatsHarness {
    async fn setup() -> Option<Self> {
        Some(NatsHarness {
            nats: TestNats::connect().await?,
        })
    }

    fn broker(&self) -> String {
        outbox_testkit::nats_url()
            .trim_start_matches("nats://")
            .to_string()
    }

    fn sink_url(&self, addr: &str) -> String {
        format!("nats://{addr}")
    }

    fn sink_options(&self) -> SinkOptions {
        let mut o = SinkOptions::default();
        o.nats.stream = self.nats.stream();
        o.nats.ack_timeout = Duration::from_secs(1);
        o
    }

    fn topic_template(&self) -> String {
        format!("{}.{{aggregate_type:lower}}", self.nats.prefix)
    }

    fn order_topic(&self) -> String {
        format!("{}.order", self.nats.prefix)
    }

    async fn receive(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let stream = match self.nats.js.get_stream(self.nats.stream()).await {
            Ok(s) => s,
            Err(_) => return Vec::new(),
        };
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                filter_subject: self.order_topic(),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => {
                    let headers: BTreeMap<String, String> = m
                        .headers
                        .iter()
                        .flat_map(|h| h.iter())
                        .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
                        .collect();
                    out.push(Received {
                        topic: m.subject.to_string(),
                        key: headers.get("key").cloned(),
                        value: m.payload.to_vec(),
                        headers,
                    });
                }
                _ => break,
            }
        }
        out
    }

    async fn rejection(&self) -> Rejection {
        // Larger than the server's max_payload (1 MiB by default).
        Rejection {
            payload_bytes: 2 * 1024 * 1024,
            reason: "NATS rejected the message",
            kind: ErrorKind::Permanent,
        }
    }

    fn broker_dedupes(&self) -> bool {
        true // by Nats-Msg-Id, within the stream's duplicate window (2 minutes by default)
    }

    fn id_headers(&self) -> &'static [&'static str] {
        &["id", "Nats-Msg-Id"]
    }

    async fn cleanup(&self) {
        self.nats.cleanup().await;
    }
}

/// A server nobody runs: not a configuration error; publishes fail as unavailable. (Refused
/// credentials at start: `tests/secrets.rs`, against a stand-in server.)
#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    use outbox_relay::sink::nats::{NatsOptions, NatsSink};

    let port = outbox_testkit::free_port();
    let options = NatsOptions {
        ack_timeout: Duration::from_millis(300),
        ..NatsOptions::default()
    };
    let sink = NatsSink::connect(&format!("nats://127.0.0.1:{port}"), &options)
        .await
        .expect("an unreachable server is not a configuration error");
    crate::harness::unreachable_publish_fails(&sink, "orders.created").await;
}

/// The NATS row's limit: JetStream drops a redelivered event only within the stream's
/// duplicate window. Redelivered after it (a relay down longer than the window), the event is
/// stored again — the inbox applies it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_duplicate_window_a_redelivery_is_stored_again() {
    use crate::harness::{apply_through_the_inbox, deliver_twice, receive_copies, store};
    let db = outbox_testkit::require!(outbox_testkit::TestDb::create().await);
    let h = outbox_testkit::require!(NatsHarness::setup().await);
    let window = Duration::from_millis(500);
    h.nats
        .js
        .create_stream(async_nats::jetstream::stream::Config {
            name: h.nats.stream(),
            subjects: vec![format!("{}.>", h.nats.prefix)],
            duplicate_window: window,
            ..Default::default()
        })
        .await
        .expect("a stream with a short duplicate window");
    let store = store(&db).await;
    // The window is a time: nothing to await but its passing.
    let sent = deliver_twice(&h, &store, window * 3).await;
    let got = receive_copies(&h, &sent, 2).await;
    apply_through_the_inbox(store.pg_pool().unwrap(), &got).await;
    h.cleanup().await;
}

/// A wave ([`Sink::publish_all`]) on one acknowledgement inbox: the stream does not exist yet
/// (it is created on the "no responders" answer), a message too large and one with an invalid
/// subject fail alone and permanently, and every other message is acknowledged and stored
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_is_acknowledged_message_by_message() {
    use outbox_relay::sink::nats::NatsSink;
    use outbox_relay::sink::{Message, Sink};

    let h = outbox_testkit::require!(NatsHarness::setup().await);
    let sink = NatsSink::connect(&h.sink_url(&h.broker()), &h.sink_options().nats)
        .await
        .expect("NATS sink");
    let message = |i: usize, topic: String, bytes: usize| Message {
        id: uuid::Uuid::now_v7(),
        topic,
        key: format!("order-{i}"),
        value: bytes::Bytes::from(vec![b'x'; bytes]),
        headers: vec![("event_type".into(), "OrderCreated".into())],
    };
    let mut wave: Vec<Message> = (0..50).map(|i| message(i, h.order_topic(), 100)).collect();
    wave[10] = message(10, h.order_topic(), 2 * 1024 * 1024);
    wave[20] = message(20, format!("{} bad", h.order_topic()), 100);
    let results = sink.publish_all(&wave, 16).await;
    assert_eq!(results.len(), wave.len());
    for (i, r) in results.iter().enumerate() {
        match i {
            10 | 20 => assert_eq!(
                r.as_ref().map_err(|e| e.kind),
                Err(ErrorKind::Permanent),
                "message {i}: {r:?}"
            ),
            _ => assert!(r.is_ok(), "message {i}: {r:?}"),
        }
    }
    let got = h.receive(48, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 48, "every acknowledged message stored once");
    // The same wave again: JetStream drops the copies by Nats-Msg-Id, and acknowledges them.
    let again = sink.publish_all(&wave, 1024).await;
    assert_eq!(again.iter().filter(|r| r.is_ok()).count(), 48);
    assert_eq!(h.receive(49, Duration::from_secs(2)).await.len(), 48);
    h.cleanup().await;
}
