//! Kafka in the conformance suite, against tansu (a Kafka-protocol broker; `.ci/services`
//! starts one on 127.0.0.1:19092).
//!
//! Kafka clients connect to the address a broker *advertises*, so a proxy in front of the
//! shared broker would be bypassed. The outage test therefore starts a private tansu (own
//! port, memory storage) that advertises the proxy's address; it is killed when the test ends.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_relay::sink::{ErrorKind, SinkOptions};
use outbox_testkit::Proxy;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::harness::{Harness, Outage, Received, Rejection};

/// The shared tansu (override with `OUTBOX_TEST_KAFKA`).
pub fn kafka_addr() -> String {
    std::env::var("OUTBOX_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub struct KafkaHarness {
    prefix: String,
    /// The private broker of the outage test, when one is running: `receive` reads from it.
    private: Mutex<Option<Arc<PrivateTansu>>>,
}

/// True when something accepts TCP connections at `addr`.
fn reachable(addr: &str) -> Result<(), String> {
    let sock = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not host:port: {e}"))?;
    TcpStream::connect_timeout(&sock, Duration::from_secs(3))
        .map(drop)
        .map_err(|e| e.to_string())
}

#[async_trait]
impl Harness for KafkaHarness {
    async fn setup() -> Option<Self> {
        let addr = kafka_addr();
        if let Err(e) = reachable(&addr) {
            outbox_testkit::unavailable(&format!("Kafka (tansu) at {addr}"), &e);
            return None;
        }
        Some(KafkaHarness {
            prefix: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            private: Mutex::new(None),
        })
    }

    fn broker(&self) -> String {
        kafka_addr()
    }

    fn sink_url(&self, addr: &str) -> String {
        format!("kafka://{addr}")
    }

    fn sink_options(&self) -> SinkOptions {
        let mut o = SinkOptions::default();
        o.kafka.message_timeout = Duration::from_secs(3);
        o
    }

    fn topic_template(&self) -> String {
        format!("{}-{{aggregate_type:lower}}", self.prefix)
    }

    fn order_topic(&self) -> String {
        format!("{}-order", self.prefix)
    }

    async fn receive(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let bootstrap = match &*self.private.lock().unwrap() {
            Some(private) => private.addr.clone(),
            None => kafka_addr(),
        };
        let topic = self.order_topic();
        tokio::task::spawn_blocking(move || consume(&bootstrap, &topic, n, timeout))
            .await
            .expect("consumer thread")
    }

    async fn rejection(&self) -> Rejection {
        // Larger than the producer's message.max.bytes (1 MB by default).
        Rejection {
            payload_bytes: 2 * 1024 * 1024,
            reason: "Kafka refused the message: too large",
            kind: ErrorKind::Permanent,
        }
    }

    async fn outage(&self) -> Box<dyn Outage> {
        let proxy = Proxy::start(&kafka_addr()).await;
        let advertised = proxy.addr();
        let tansu = tokio::task::spawn_blocking(move || PrivateTansu::start(&advertised))
            .await
            .expect("starting a private tansu");
        let tansu = Arc::new(tansu);
        proxy.set_upstream(&tansu.addr);
        *self.private.lock().unwrap() = Some(tansu.clone());
        Box::new(KafkaOutage {
            proxy,
            _tansu: tansu,
        })
    }

    async fn cleanup(&self) {
        // The private broker (memory storage) goes with its process.
        self.private.lock().unwrap().take();
        let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
            .set("bootstrap.servers", kafka_addr())
            .create()
        {
            Ok(a) => a,
            Err(_) => return,
        };
        let topics = [self.order_topic(), format!("{}-poison", self.prefix)];
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            admin.delete_topics(
                &names,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
            ),
        )
        .await;
    }
}

/// Reads `topic` from the beginning of every partition: at least `n` messages, then whatever
/// else the partitions held by then; stops at `timeout`.
fn consume(bootstrap: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Received> {
    consume_with(bootstrap, &[], topic, n, timeout)
}

/// [`consume`] with extra client properties (TLS settings).
fn consume_with(
    bootstrap: &str,
    extra: &[(&str, &str)],
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Received> {
    let deadline = Instant::now() + timeout;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("conformance-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().expect("Kafka consumer");
    let partitions = loop {
        let found = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().len() as i32)
            })
            .filter(|&p| p > 0);
        if let Some(p) = found {
            break p;
        }
        if Instant::now() > deadline {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&tpl).expect("assign partitions");
    let mut out = Vec::new();
    // Once `n` are in: how many the partitions hold in all, read up to that.
    let mut target: Option<usize> = None;
    while Instant::now() < deadline {
        if out.len() >= n {
            let total = *target.get_or_insert_with(|| {
                (0..partitions)
                    .filter_map(|p| {
                        consumer
                            .fetch_watermarks(topic, p, Duration::from_secs(5))
                            .ok()
                    })
                    .map(|(low, high)| (high - low).max(0) as usize)
                    .sum()
            });
            if out.len() >= total {
                break;
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect::<BTreeMap<_, _>>()
                    })
                    .unwrap_or_default();
                out.push(Received {
                    topic: m.topic().to_string(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => eprintln!("Kafka consumer: {e}"),
            None => {}
        }
    }
    out
}

/// A proxy in front of a private tansu that advertises the proxy's address.
struct KafkaOutage {
    proxy: Proxy,
    _tansu: Arc<PrivateTansu>,
}

#[async_trait]
impl Outage for KafkaOutage {
    fn addr(&self) -> String {
        self.proxy.addr()
    }
    async fn cut(&self) {
        self.proxy.cut().await
    }
    async fn restore(&self) {
        self.proxy.restore().await
    }
}

/// The tansu binary: `OUTBOX_TANSU_BIN`, the copy `.ci/services` installs, or `tansu` on PATH.
pub fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("OUTBOX_TANSU_BIN") {
        return bin.into();
    }
    let ci = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ci/cache/tansu-0.1.2/tansu");
    if ci.exists() {
        return ci;
    }
    "tansu".into()
}

/// A tansu broker of this test's own (memory storage), killed when dropped.
pub struct PrivateTansu {
    /// `127.0.0.1:<port>` it listens on.
    pub addr: String,
    _process: outbox_testkit::ChildServer,
}

impl PrivateTansu {
    /// Starts tansu on a free port, advertising `advertised` (`host:port`) to clients.
    pub fn start(advertised: &str) -> PrivateTansu {
        let bin = tansu_bin();
        let program = bin.display().to_string();
        let mut last = String::new();
        for _ in 0..5 {
            let port = outbox_testkit::free_port();
            let addr = format!("127.0.0.1:{port}");
            let (listen, advertise) = (format!("tcp://{addr}"), format!("tcp://{advertised}"));
            let args = [
                "broker",
                "--listener-url",
                &listen,
                "--advertised-listener-url",
                &advertise,
                "--storage-engine",
                "memory://tansu/",
            ];
            // An exit is usually a port lost to someone else: try another.
            match outbox_testkit::ChildServer::spawn(&program, &args, port) {
                Ok(process) => {
                    return PrivateTansu {
                        addr,
                        _process: process,
                    }
                }
                Err(why) => last = why,
            }
        }
        panic!("could not start a private tansu (5 attempts; last: {last}); run .ci/services to install it");
    }
}

/// Kafka over TLS (`security.protocol=ssl`): a private tansu behind a TLS-terminating proxy
/// whose certificate a test CA signed, advertising the proxy. Trusted through
/// `ssl.ca.location`, the message is acknowledged and read back over TLS; with the system's
/// roots only, the publish fails as retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_over_tls_with_a_private_ca() {
    use outbox_relay::sink::kafka::{KafkaOptions, KafkaSink};
    use outbox_relay::Sink;

    let tls = outbox_testkit::require!(outbox_testkit::TlsFiles::generate());
    let proxy = outbox_testkit::TlsProxy::start("127.0.0.1:1", &tls)
        .await
        .expect("TLS proxy");
    let advertised = format!("localhost:{}", proxy.port);
    let tansu = tokio::task::spawn_blocking(move || PrivateTansu::start(&advertised))
        .await
        .expect("starting a private tansu");
    proxy.set_upstream(&tansu.addr);
    let bootstrap = format!("localhost:{}", proxy.port);
    let topic = format!("tls-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let id = uuid::Uuid::new_v4();
    let message = outbox_relay::Message {
        id,
        topic: topic.clone(),
        key: "o-1".into(),
        value: bytes::Bytes::from_static(b"{\"n\":1}"),
        headers: vec![("id".into(), id.to_string())],
    };
    let mut options = KafkaOptions {
        partitions: 1,
        message_timeout: Duration::from_secs(3),
        ..KafkaOptions::default()
    };
    options
        .producer
        .insert("security.protocol".into(), "ssl".into());

    let untrusted = KafkaSink::connect(&format!("kafka://{bootstrap}"), &options)
        .await
        .expect("the URL is valid");
    crate::harness::untrusted_publish_fails(&untrusted, &message).await;
    drop(untrusted);

    let ca = tls.ca.display().to_string();
    options
        .producer
        .insert("ssl.ca.location".into(), ca.clone());
    options.message_timeout = Duration::from_secs(15);
    let sink = KafkaSink::connect(&format!("kafka://{bootstrap}"), &options)
        .await
        .expect("Kafka sink");
    sink.publish(&message).await.expect("acknowledged over TLS");

    let got = tokio::task::spawn_blocking(move || {
        consume_with(
            &bootstrap,
            &[("security.protocol", "ssl"), ("ssl.ca.location", &ca)],
            &topic,
            1,
            Duration::from_secs(20),
        )
    })
    .await
    .expect("consumer thread");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, b"{\"n\":1}".to_vec());
    assert_eq!(got[0].headers.get("id"), Some(&id.to_string()));
}

/// Brokers nobody runs: not a configuration error; a publish fails as unavailable once the
/// message timeout is over (never counted against the event).
#[tokio::test]
async fn unreachable_brokers_are_unavailable() {
    use outbox_relay::sink::kafka::{KafkaOptions, KafkaSink};

    let port = outbox_testkit::free_port();
    let options = KafkaOptions {
        message_timeout: Duration::from_millis(500),
        ..KafkaOptions::default()
    };
    let sink = KafkaSink::connect(&format!("kafka://127.0.0.1:{port}"), &options)
        .await
        .expect("librdkafka connects in the background");
    crate::harness::unreachable_publish_fails(&sink, "unreachable").await;
}
