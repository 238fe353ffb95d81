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

    async fn cleanup(&self) {
        self.nats.cleanup().await;
    }
}

/// Sink behaviour outside the shared suite.
mod sink {
    use std::time::Duration;

    use outbox_relay::sink::nats::{NatsOptions, NatsSink};
    use outbox_relay::sink::ErrorKind;
    use outbox_relay::{Message, Sink};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    fn message() -> Message {
        let id = uuid::Uuid::new_v4();
        Message {
            id,
            topic: "orders.created".into(),
            key: "o-1".into(),
            value: bytes::Bytes::from_static(b"{}"),
            headers: vec![("id".into(), id.to_string())],
        }
    }

    /// A server nobody runs: not a configuration error; publishes fail as unavailable.
    #[tokio::test]
    async fn an_unreachable_server_is_unavailable() {
        let port = outbox_testkit::free_port();
        let options = NatsOptions {
            ack_timeout: Duration::from_millis(300),
            ..NatsOptions::default()
        };
        let sink = NatsSink::connect(&format!("nats://127.0.0.1:{port}"), &options)
            .await
            .expect("an unreachable server is not a configuration error");
        let err = sink.publish(&message()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    }

    /// A server that refuses the credentials at start (a stand-in speaking just enough of the
    /// protocol): a configuration error that names neither the password nor the token.
    #[tokio::test]
    async fn refused_credentials_are_a_configuration_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (read, mut write) = socket.into_split();
                let info = "INFO {\"server_id\":\"stand-in\",\"version\":\"2.10.0\",\"proto\":1,\
                            \"headers\":true,\"max_payload\":1048576,\"auth_required\":true}\r\n";
                let _ = write.write_all(info.as_bytes()).await;
                let mut line = String::new();
                let _ = BufReader::new(read).read_line(&mut line).await;
                let _ = write.write_all(b"-ERR 'Authorization Violation'\r\n").await;
            }
        });
        for url in [
            format!("nats://app:wr0ng-pa55@127.0.0.1:{port}"),
            format!("nats://t0ken-wr0ng@127.0.0.1:{port}"),
        ] {
            let err = NatsSink::connect(&url, &NatsOptions::default())
                .await
                .map(|_| ())
                .unwrap_err();
            assert!(err.is_config(), "{err}");
            let text = err.to_string();
            assert!(text.contains("refused"), "{text}");
            assert!(!text.contains("wr0ng"), "{text}");
        }
        server.abort();
    }
}
