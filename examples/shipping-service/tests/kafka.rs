//! The shipping-service against a real Kafka-protocol broker (tansu on 127.0.0.1:19092, started
//! by `.ci/services`): a consumer group with offsets committed by hand after each commit, each
//! event's effect exactly once.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The shared tansu (override with `OUTBOX_TEST_KAFKA`).
fn kafka_addr() -> String {
    std::env::var("OUTBOX_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

struct Kafka {
    topic: String,
    /// The consumer group (`--name`): one per test, so parallel tests never share a group.
    group: String,
}

impl Kafka {
    /// A fresh one-partition topic; `None` (reported) when the broker is unreachable.
    async fn setup() -> Option<Kafka> {
        let addr = kafka_addr();
        let reached = addr.parse().map_err(|e| format!("{e}")).and_then(|a| {
            std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = reached {
            outbox_testkit::unavailable(&format!("Kafka (tansu) at {addr}"), &e);
            return None;
        }
        let topic = format!(
            "t{}-order-events",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .create()
            .expect("admin client");
        let created = admin
            .create_topics(
                &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topic");
        for r in created {
            r.expect("topic created");
        }
        let group = format!("shipping-{topic}");
        Some(Kafka { topic, group })
    }

    async fn cleanup(&self) {
        if let Ok(admin) = ClientConfig::new()
            .set("bootstrap.servers", kafka_addr())
            .create::<AdminClient<DefaultClientContext>>()
        {
            let _ = admin
                .delete_topics(&[&self.topic], &AdminOptions::new())
                .await;
        }
    }
}

impl Broker for Kafka {
    fn from(&self) -> String {
        format!("kafka://{}", kafka_addr())
    }

    fn topic(&self) -> String {
        self.topic.clone()
    }

    fn args(&self) -> Vec<String> {
        // A killed member's partitions move after its session times out: keep that short.
        vec![
            "--name".into(),
            self.group.clone(),
            "--kafka-property".into(),
            "session.timeout.ms=2000".into(),
            "--kafka-property".into(),
            "heartbeat.interval.ms=500".into(),
        ]
    }

    async fn publish(&self, events: &[Event]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka_addr())
            .create()
            .expect("producer");
        for e in events {
            let mut headers = OwnedHeaders::new();
            for (k, v) in e.headers() {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let value = e.value();
            producer
                .send(
                    FutureRecord::to(&self.topic)
                        .key(&e.order_id)
                        .payload(&value)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .expect("delivered");
        }
    }

    async fn drained(&self) -> bool {
        let (topic, group) = (self.topic.clone(), self.group.clone());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", kafka_addr())
                .set("group.id", &group)
                .create()
                .expect("consumer");
            let Ok((_, high)) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(5)) else {
                return false;
            };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, 0);
            match consumer.committed_offsets(tpl, Duration::from_secs(5)) {
                Ok(c) => c
                    .elements()
                    .first()
                    .is_some_and(|e| e.offset() == Offset::Offset(high)),
                Err(_) => false,
            }
        })
        .await
        .unwrap_or(false)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_duplicates_and_a_crash_after_commit_apply_each_event_once() {
    let db = require!(TestDb::create().await);
    let b = require!(Kafka::setup().await);
    duplicates_and_a_crash_after_commit_apply_each_event_once(&b, &db).await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_crash_before_commit_leaves_nothing_and_the_redelivery_is_processed() {
    let db = require!(TestDb::create().await);
    let b = require!(Kafka::setup().await);
    a_crash_before_commit_leaves_nothing_and_the_redelivery_is_processed(&b, &db).await;
    b.cleanup().await;
}
