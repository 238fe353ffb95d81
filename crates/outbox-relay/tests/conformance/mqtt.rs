//! MQTT 5 (Mosquitto) in the conformance suite.
//!
//! Each test uses its own topic prefix. A subscriber on `<prefix>/#` (QoS 1) is connected and
//! its subscription acknowledged before the relay starts, so no message is published before
//! someone listens. The broker refuses nothing by itself here: the rejection is the 2 MiB
//! payload, over the sink's 1 MiB `max_packet_size`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_relay::sink::{ErrorKind, SinkOptions};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::Notify;

use crate::harness::{Harness, Received, Rejection};

/// The broker (override with `OUTBOX_TEST_MQTT`, `host:port`).
fn broker() -> String {
    std::env::var("OUTBOX_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into())
}

#[derive(Default)]
struct Inbox {
    messages: Vec<Received>,
    /// Set if the subscriber's connection failed (its subscription is then gone).
    error: Option<String>,
}

pub struct MqttHarness {
    prefix: String,
    client: AsyncClient,
    inbox: Arc<Mutex<Inbox>>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl Harness for MqttHarness {
    async fn setup() -> Option<Self> {
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let addr = broker();
        let service = format!("Mosquitto (MQTT) at {addr}");
        let (host, port) = match addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse().ok()?)))
        {
            Some(hp) => hp,
            None => panic!("OUTBOX_TEST_MQTT must be host:port, got {addr:?}"),
        };
        let mut options = MqttOptions::new(format!("{prefix}-reader"), host, port);
        options
            .set_clean_start(true)
            .set_connection_timeout(5)
            // Large enough for anything the suite publishes.
            .set_max_packet_size(Some(8 * 1024 * 1024))
            // Let the broker send as many QoS 1 messages unacknowledged as it likes: Mosquitto
            // queues only 1000 beyond the in-flight window (max_queued_messages) and drops the
            // rest for a subscriber that falls behind.
            .set_receive_maximum(Some(u16::MAX));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        // Connect and subscribe before the relay starts.
        let filter = format!("{prefix}/#");
        client
            .subscribe(filter.as_str(), QoS::AtLeastOnce)
            .await
            .expect("queue the subscription");
        let subscribed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await;
        match subscribed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                outbox_testkit::unavailable(&service, &e);
                return None;
            }
            Err(_) => {
                outbox_testkit::unavailable(&service, "no SUBACK within 10s");
                return None;
            }
        }
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let arrived = Arc::new(Notify::new());
        let task = {
            let inbox = inbox.clone();
            let arrived = arrived.clone();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let headers: BTreeMap<String, String> = p
                                .properties
                                .as_ref()
                                .map(|props| props.user_properties.iter().cloned().collect())
                                .unwrap_or_default();
                            let received = Received {
                                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                key: headers.get("key").cloned(),
                                value: p.payload.to_vec(),
                                headers,
                            };
                            inbox
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .messages
                                .push(received);
                            arrived.notify_waiters();
                        }
                        Ok(_) => {}
                        Err(e) => {
                            inbox.lock().unwrap_or_else(|e| e.into_inner()).error =
                                Some(e.to_string());
                            arrived.notify_waiters();
                            return;
                        }
                    }
                }
            })
        };
        Some(MqttHarness {
            prefix,
            client,
            inbox,
            arrived,
            task,
        })
    }

    fn broker(&self) -> String {
        broker()
    }

    fn sink_url(&self, addr: &str) -> String {
        format!("mqtt://{addr}")
    }

    fn sink_options(&self) -> SinkOptions {
        let mut o = SinkOptions::default();
        o.mqtt.ack_timeout = Duration::from_secs(1);
        o.mqtt.connect_timeout = Duration::from_secs(1);
        o
    }

    fn topic_template(&self) -> String {
        format!("{}/{{aggregate_type:lower}}", self.prefix)
    }

    fn order_topic(&self) -> String {
        format!("{}/order", self.prefix)
    }

    async fn receive(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let topic = self.order_topic();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register for the wake-up before looking, so no arrival is missed in between.
            let notified = self.arrived.notified();
            {
                let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
                let on_topic: Vec<Received> = inbox
                    .messages
                    .iter()
                    .filter(|m| m.topic == topic)
                    .cloned()
                    .collect();
                if let Some(e) = &inbox.error {
                    panic!("the MQTT subscriber lost its connection: {e}");
                }
                if on_topic.len() >= n || tokio::time::Instant::now() >= deadline {
                    return on_topic;
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    async fn rejection(&self) -> Rejection {
        // Over the sink's default max_packet_size (1 MiB).
        Rejection {
            payload_bytes: 2 * 1024 * 1024,
            reason: "exceeds the maximum packet size",
            kind: ErrorKind::Permanent,
        }
    }

    async fn cleanup(&self) {
        let _ = self.client.try_disconnect();
        self.task.abort();
    }
}

impl Drop for MqttHarness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sink behaviour outside the shared suite.
mod sink {
    use std::time::{Duration, Instant};

    use outbox_relay::sink::mqtt::{MqttOptions, MqttSink};
    use outbox_relay::sink::ErrorKind;
    use outbox_relay::{Message, Sink};

    use super::MqttHarness;
    use crate::harness::Harness;

    fn message(topic: &str, n: usize) -> Message {
        let id = uuid::Uuid::new_v4();
        Message {
            id,
            topic: topic.into(),
            key: format!("k{}", n % 7),
            value: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
            headers: vec![("id".into(), id.to_string())],
        }
    }

    /// Many concurrent publishes: each gets its own PUBACK, all arrive once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishes_are_each_acknowledged() {
        let Some(h) = MqttHarness::setup().await else {
            return;
        };
        let sink = std::sync::Arc::new(
            MqttSink::connect(&h.sink_url(&h.broker()), &MqttOptions::default())
                .await
                .expect("MQTT sink"),
        );
        let tasks: Vec<_> = (0..2000)
            .map(|n| {
                let sink = sink.clone();
                let topic = h.order_topic();
                tokio::spawn(async move { sink.publish(&message(&topic, n)).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("acknowledged");
        }
        let got = h.receive(2000, Duration::from_secs(20)).await;
        let ids: std::collections::HashSet<_> =
            got.iter().filter_map(|m| m.headers.get("id")).collect();
        assert_eq!(ids.len(), 2000);
        h.cleanup().await;
    }

    /// `mqtts://` against a private Mosquitto with a TLS listener whose certificate a test CA
    /// signed: trusted through `ca_file` it delivers (read back on the instance's plain
    /// listener); without the CA, the publish fails as retryable, never as a success.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_over_tls_with_a_private_ca() {
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::{AsyncClient, Event, MqttOptions as ClientOptions};

        let tls = outbox_testkit::require!(outbox_testkit::TlsFiles::generate());
        let (tls_port, plain_port) = (outbox_testkit::free_port(), outbox_testkit::free_port());
        let conf = outbox_testkit::write_file(
            &tls.dir,
            "mosquitto.conf",
            &format!(
                "user root\npersistence false\nallow_anonymous true\n\
                 listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 listener {plain_port} 127.0.0.1\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            ),
        );
        let conf = conf.display().to_string();
        let _server = outbox_testkit::require!(outbox_testkit::ChildServer::start(
            "mosquitto",
            &["-c", &conf],
            tls_port
        ));

        // A subscriber on the plain listener, subscribed before anything is published.
        let mut options = ClientOptions::new("tls-reader", "127.0.0.1", plain_port);
        options.set_clean_start(true);
        let (reader, mut events) = AsyncClient::new(options, 10);
        reader
            .subscribe("secure/#", QoS::AtLeastOnce)
            .await
            .expect("queue the subscription");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(None);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Some(p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let suback = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(suback, Ok(Some(None))), "no SUBACK: {suback:?}");

        let options = MqttOptions {
            connect_timeout: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(2),
            ..MqttOptions::default()
        };
        let untrusted = MqttSink::connect(&format!("mqtts://localhost:{tls_port}"), &options)
            .await
            .expect("the URL is valid");
        let err =
            crate::harness::untrusted_publish_fails(&untrusted, &message("secure/orders", 0)).await;
        assert!(err.to_string().contains("certificate"), "{err}");

        let url = format!("mqtts://localhost:{tls_port}?ca_file={}", tls.ca.display());
        let sink = MqttSink::connect(&url, &options).await.expect("MQTT sink");
        let sent = message("secure/orders", 1);
        let started = Instant::now();
        loop {
            // The first publish may meet the connection still being made.
            match sink.publish(&sent).await {
                Ok(()) => break,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no delivery over TLS within 10s: {e}"),
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(got, Ok(Some(Some(sent.value.to_vec()))));
        task.abort();
    }

    #[tokio::test]
    async fn unreachable_broker_fails_fast_as_unavailable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let options = MqttOptions {
            connect_timeout: Duration::from_secs(1),
            ..MqttOptions::default()
        };
        let sink = MqttSink::connect(&format!("mqtt://127.0.0.1:{port}"), &options)
            .await
            .expect("an unreachable broker is not a configuration error");
        let started = Instant::now();
        for _ in 0..20 {
            let err = sink.publish(&message("a/b", 0)).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn wildcard_topics_are_permanent_errors() {
        let Some(h) = MqttHarness::setup().await else {
            return;
        };
        let sink = MqttSink::connect(&h.sink_url(&h.broker()), &MqttOptions::default())
            .await
            .expect("MQTT sink");
        for topic in ["a/+/b", "a/#", "$SYS/x", ""] {
            let err = sink.publish(&message(topic, 0)).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Permanent, "{topic}: {err}");
        }
        // The connection is still fine afterwards.
        sink.publish(&message(&h.order_topic(), 1))
            .await
            .expect("a valid publish");
        h.cleanup().await;
    }
}
