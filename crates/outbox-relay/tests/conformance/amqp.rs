//! RabbitMQ (AMQP 0.9.1) in the conformance suite.
//!
//! Each test gets its own exchange (`<prefix>.outbox`) and a queue bound to the `Order` routing
//! key only: the `Poison` routing key has no queue, so RabbitMQ returns it (unroutable) and the
//! relay dead-letters it after `max_attempts`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox_relay::sink::{ErrorKind, SinkOptions};

use crate::harness::{Harness, Received, Rejection};

/// The broker (override with `OUTBOX_TEST_AMQP`, `host:port`; user guest/guest, vhost `/`).
fn broker() -> String {
    std::env::var("OUTBOX_TEST_AMQP").unwrap_or_else(|_| "127.0.0.1:5672".into())
}

/// True when the broker accepts TCP connections; otherwise reports it (skip, or failure when
/// services are required) and returns false.
async fn reachable() -> bool {
    let addr = broker();
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            outbox_testkit::unavailable(&format!("RabbitMQ at {addr}"), &e.to_string());
            false
        }
        Err(_) => {
            outbox_testkit::unavailable(&format!("RabbitMQ at {addr}"), "connect timed out");
            false
        }
    }
}

pub struct AmqpHarness {
    _conn: Connection,
    channel: Channel,
    prefix: String,
}

impl AmqpHarness {
    fn exchange(&self) -> String {
        format!("{}.outbox", self.prefix)
    }

    fn queue(&self) -> String {
        format!("{}.order-queue", self.prefix)
    }
}

#[async_trait]
impl Harness for AmqpHarness {
    async fn setup() -> Option<Self> {
        let url = format!("amqp://guest:guest@{}/%2f", broker());
        let service = format!("RabbitMQ at {}", broker());
        let conn = match tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&url, ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                outbox_testkit::unavailable(&service, &e.to_string());
                return None;
            }
            Err(_) => {
                outbox_testkit::unavailable(&service, "connect timed out");
                return None;
            }
        };
        let channel = conn.create_channel().await.expect("AMQP channel");
        let h = AmqpHarness {
            _conn: conn,
            channel,
            prefix: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        };
        // The exchange as the sink declares it, and a queue for the Order events only.
        h.channel
            .exchange_declare(
                h.exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the test exchange");
        h.channel
            .queue_declare(
                h.queue().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the test queue");
        h.channel
            .queue_bind(
                h.queue().into(),
                h.exchange().into(),
                h.order_topic().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the test queue");
        Some(h)
    }

    fn broker(&self) -> String {
        broker()
    }

    fn sink_url(&self, addr: &str) -> String {
        format!("amqp://guest:guest@{addr}/%2f")
    }

    fn sink_options(&self) -> SinkOptions {
        let mut o = SinkOptions::default();
        o.amqp.exchange = self.exchange();
        o.amqp.confirm_timeout = Duration::from_secs(1);
        o.amqp.connect_timeout = Duration::from_secs(1);
        o
    }

    fn topic_template(&self) -> String {
        format!("{}.{{aggregate_type:lower}}", self.prefix)
    }

    fn order_topic(&self) -> String {
        format!("{}.order", self.prefix)
    }

    async fn receive(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut consumer = self
            .channel
            .basic_consume(
                self.queue().into(),
                format!("{}-reader", self.prefix).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the test queue");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    let headers: BTreeMap<String, String> = d
                        .properties
                        .headers()
                        .as_ref()
                        .map(|t| {
                            t.inner()
                                .iter()
                                .filter_map(|(k, v)| match v {
                                    AMQPValue::LongString(s) => {
                                        Some((k.to_string(), s.to_string()))
                                    }
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    // The event id is also the AMQP message id.
                    assert_eq!(
                        d.properties.message_id().as_ref().map(|m| m.to_string()),
                        headers.get("id").cloned(),
                        "message_id is the event id"
                    );
                    out.push(Received {
                        topic: d.routing_key.to_string(),
                        key: headers.get("key").cloned(),
                        value: d.data,
                        headers,
                    });
                }
                Ok(Some(Err(e))) => panic!("reading the test queue: {e}"),
                Ok(None) | Err(_) => break,
            }
        }
        out
    }

    async fn rejection(&self) -> Rejection {
        // No queue is bound for the Poison routing key: RabbitMQ returns the mandatory message.
        Rejection {
            payload_bytes: 0,
            reason: "unroutable",
            kind: ErrorKind::Retryable,
        }
    }

    async fn cleanup(&self) {
        let _ = self
            .channel
            .queue_delete(self.queue().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(self.exchange().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Sink behaviour outside the shared suite.
mod sink {
    use std::time::{Duration, Instant};

    use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
    use lapin::types::FieldTable;
    use lapin::ExchangeKind;
    use outbox_relay::sink::amqp::{AmqpOptions, AmqpSink};
    use outbox_relay::sink::ErrorKind;
    use outbox_relay::{Message, Sink};

    use crate::harness::Harness;

    use super::AmqpHarness;

    fn message(topic: &str) -> Message {
        let id = uuid::Uuid::new_v4();
        Message {
            id,
            topic: topic.into(),
            key: "k".into(),
            value: bytes::Bytes::from_static(b"{}"),
            headers: vec![("id".into(), id.to_string())],
        }
    }

    async fn sink(h: &AmqpHarness, options: AmqpOptions) -> AmqpSink {
        AmqpSink::connect(&h.sink_url(&h.broker()), &options)
            .await
            .expect("AMQP sink")
    }

    #[tokio::test]
    async fn refused_credentials_are_a_configuration_error() {
        if !super::reachable().await {
            return;
        }
        let err = AmqpSink::connect(
            &format!("amqp://guest:wrong-secret@{}/%2f", super::broker()),
            &AmqpOptions::default(),
        )
        .await
        .map(|_| ())
        .unwrap_err();
        assert!(err.is_config(), "{err}");
        assert!(!err.to_string().contains("wrong-secret"), "{err}");
    }

    /// `amqps://` through a TLS-terminating proxy (a test CA signed its certificate) in front
    /// of the real RabbitMQ: trusted through `ca_file`, the message is confirmed and arrives;
    /// with the system's roots only, the publish fails as unavailable, naming the certificate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_over_tls_with_a_private_ca() {
        let Some(h) = AmqpHarness::setup().await else {
            return;
        };
        let tls = outbox_testkit::require!(outbox_testkit::TlsFiles::generate());
        let proxy = outbox_testkit::TlsProxy::start(&h.broker(), &tls)
            .await
            .expect("TLS proxy");
        let options = h.sink_options().amqp;
        let url = format!("amqps://guest:guest@localhost:{}/%2f", proxy.port);

        let untrusted = AmqpSink::connect(&url, &options)
            .await
            .expect("an untrusted server is not a configuration error");
        let err =
            crate::harness::untrusted_publish_fails(&untrusted, &message(&h.order_topic())).await;
        assert!(err.to_string().contains("certificate"), "{err}");

        let trusted = format!("{url}?ca_file={}", tls.ca.display());
        let sink = AmqpSink::connect(&trusted, &options)
            .await
            .expect("AMQP sink");
        let sent = message(&h.order_topic());
        sink.publish(&sent).await.expect("confirmed over TLS");
        let got = h.receive(1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].headers.get("id"), Some(&sent.id.to_string()));
        h.cleanup().await;
    }

    #[tokio::test]
    async fn unreachable_broker_fails_fast_as_unavailable() {
        // A port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let sink = AmqpSink::connect(
            &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            &AmqpOptions::default(),
        )
        .await
        .expect("an unreachable broker is not a configuration error");
        let started = Instant::now();
        for _ in 0..20 {
            let err = sink.publish(&message("t")).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
            assert!(err.message.contains("cannot connect"), "{err}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Concurrent publishes, half of them unroutable, many in flight on each of two
    /// channels: each learns its own fate (a return is never pinned on another message).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_reach_the_right_publish() {
        let Some(h) = AmqpHarness::setup().await else {
            return;
        };
        let options = AmqpOptions {
            exchange: h.exchange(),
            channels: 2,
            ..AmqpOptions::default()
        };
        let sink = std::sync::Arc::new(sink(&h, options).await);
        let mut tasks = Vec::new();
        for i in 0..400 {
            let sink = sink.clone();
            let topic = if i % 2 == 0 {
                h.order_topic()
            } else {
                format!("{}.nowhere", h.prefix)
            };
            tasks.push(tokio::spawn(async move {
                (i, sink.publish(&message(&topic)).await)
            }));
        }
        for t in tasks {
            let (i, result) = t.await.expect("task");
            if i % 2 == 0 {
                result.unwrap_or_else(|e| panic!("publish {i} to a bound key failed: {e}"));
            } else {
                let e = result.expect_err("an unroutable publish fails");
                assert_eq!(e.kind, ErrorKind::Retryable, "{e}");
                assert!(e.message.contains("unroutable"), "{e}");
            }
        }
        assert_eq!(h.receive(200, Duration::from_secs(10)).await.len(), 200);
        h.cleanup().await;
    }

    /// One channel, 400 publishes in flight on it, one of them unroutable: that one fails
    /// (returned), every other one is confirmed and arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unroutable_message_among_many_in_flight_fails_alone() {
        let Some(h) = AmqpHarness::setup().await else {
            return;
        };
        let options = AmqpOptions {
            exchange: h.exchange(),
            channels: 1,
            max_unconfirmed: 1000,
            ..AmqpOptions::default()
        };
        let sink = std::sync::Arc::new(sink(&h, options).await);
        let poison = 217;
        let (start, _) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for i in 0..400 {
            let sink = sink.clone();
            let mut go = start.subscribe();
            let topic = if i == poison {
                format!("{}.nowhere", h.prefix)
            } else {
                h.order_topic()
            };
            tasks.push(tokio::spawn(async move {
                let _ = go.wait_for(|go| *go).await;
                (i, sink.publish(&message(&topic)).await)
            }));
        }
        // Connected and the exchange known: all 400 go out back to back.
        sink.publish(&message(&h.order_topic()))
            .await
            .expect("a first publish");
        start.send_replace(true);
        for t in tasks {
            let (i, result) = t.await.expect("task");
            if i == poison {
                let e = result.expect_err("the unroutable publish fails");
                assert_eq!(e.kind, ErrorKind::Retryable, "{e}");
                assert!(e.message.contains("unroutable"), "{e}");
            } else {
                result.unwrap_or_else(|e| panic!("publish {i} to a bound key failed: {e}"));
            }
        }
        assert_eq!(h.receive(400, Duration::from_secs(10)).await.len(), 400);
        h.cleanup().await;
    }

    #[tokio::test]
    async fn declares_the_exchange_or_says_it_is_missing() {
        let Some(h) = AmqpHarness::setup().await else {
            return;
        };
        let missing = format!("{}.missing", h.prefix);
        let sink_without = sink(
            &h,
            AmqpOptions {
                exchange: missing.clone(),
                declare_exchange: false,
                ..AmqpOptions::default()
            },
        )
        .await;
        let err = sink_without.publish(&message("x")).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
        assert!(err.message.contains("does not exist"), "{err}");
        // The sink recovers from the closed channel: the next publish works once declared.
        let declaring = sink(
            &h,
            AmqpOptions {
                exchange: "{topic}".into(),
                ..AmqpOptions::default()
            },
        )
        .await;
        let err = declaring.publish(&message(&missing)).await.unwrap_err();
        assert!(
            err.message.contains("unroutable"),
            "declared, but unbound: {err}"
        );
        h.channel
            .exchange_declare(
                missing.clone().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the sink declared the exchange");
        let err = sink_without.publish(&message("x")).await.unwrap_err();
        assert!(err.message.contains("unroutable"), "{err}");
        let _ = h
            .channel
            .exchange_delete(missing.into(), ExchangeDeleteOptions::default())
            .await;
        h.cleanup().await;
    }

    #[tokio::test]
    async fn oversize_and_overlong_names_are_permanent() {
        let Some(h) = AmqpHarness::setup().await else {
            return;
        };
        let sink = sink(
            &h,
            AmqpOptions {
                exchange: h.exchange(),
                max_message_size: 1024,
                ..AmqpOptions::default()
            },
        )
        .await;
        let mut big = message(&h.order_topic());
        big.value = bytes::Bytes::from(vec![b'x'; 2048]);
        let err = sink.publish(&big).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent, "{err}");
        assert!(err.message.contains("larger than"), "{err}");
        let err = sink.publish(&message(&"k".repeat(300))).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent, "{err}");
        h.cleanup().await;
    }
}
