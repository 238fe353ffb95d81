//! `outbox relay --sink kafka://…` end to end: real PostgreSQL, the reference OrderService's
//! workload, the `outbox` binary, and a Kafka-protocol broker (tansu on 127.0.0.1:19092,
//! started by `.ci/services`), read back with rdkafka.
#![cfg(feature = "kafka")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The shared tansu (override with `OUTBOX_TEST_KAFKA`).
fn kafka_addr() -> String {
    std::env::var("OUTBOX_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// `Some(())` when the broker accepts connections; else reported (skip, or failure in CI).
fn kafka_up() -> Option<()> {
    let addr = kafka_addr();
    let reached = addr
        .parse()
        .map_err(|e| format!("{addr:?}: {e}"))
        .and_then(|a| {
            std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3))
                .map_err(|e| e.to_string())
        });
    match reached {
        Ok(_) => Some(()),
        Err(e) => {
            outbox_testkit::unavailable(&format!("Kafka (tansu) at {addr}"), &e);
            None
        }
    }
}

/// One consumed record.
struct Record {
    partition: i32,
    key: String,
    value: serde_json::Value,
    headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning of every partition until `n` records are in (bounded).
/// Returns the topic's partition count and the records, each partition in offset order.
fn consume(topic: &str, n: usize, limit: Duration) -> (i32, Vec<Record>) {
    let deadline = Instant::now() + limit;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", format!("outbox-test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("Kafka consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    assert!(partitions > 0, "topic {topic} exists");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} reading {n} records from {topic}: got {}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(Record {
                partition: m.partition(),
                key: String::from_utf8(m.key().expect("a key").to_vec()).expect("UTF-8 key"),
                value: serde_json::from_slice(m.payload().expect("a value")).expect("JSON value"),
                headers: m
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
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(e)) => eprintln!("Kafka consumer: {e}"),
            None => {}
        }
    }
    (partitions, out)
}

/// The Java client's partitioner (murmur2 of the key): what `murmur2_random` must agree with.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}

async fn delete_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()
    {
        Ok(a) => a,
        Err(_) => return,
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        admin.delete_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn order_service_events_reach_kafka_keyed_partitioned_and_in_order() {
    let db = require!(TestDb::create().await);
    require!(kafka_up());
    let pool = db.pool().await;
    let service = order_service::OrderService::new(pool.clone());
    service.migrate().await.expect("migrate");

    // The OrderService's workload: 300 orders from 6 concurrent writers, every third cancelled
    // (OrderCreated then OrderCancelled for the same aggregate).
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..6 {
        let service = service.clone();
        writers.spawn(async move {
            for i in 0..50 {
                let items = vec![order_service::Item {
                    sku: format!("sku-{}", i % 7),
                    quantity: 1 + i % 3,
                    price: 9.5,
                }];
                let order = service
                    .create_order(&format!("customer-{w}"), items, 9.5)
                    .await
                    .expect("create order");
                if i % 3 == 0 {
                    service
                        .cancel_order(order.id, "changed my mind")
                        .await
                        .expect("cancel order");
                }
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    let rows: Vec<(uuid::Uuid, String, String, String)> = sqlx::query_as(
        "SELECT id, aggregate_type, aggregate_id, event_type FROM outbox ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("outbox rows");
    // 17 of each writer's 50 orders are cancelled: 300 + 102 events.
    assert_eq!(rows.len(), 402);
    let n = rows.len();

    // A topic of this test's own; partitions and a producer property from the config file.
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let topic = format!("order-events-t{suffix}");
    let dir = std::env::temp_dir().join(format!("outbox-kafka-{suffix}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("outbox.toml");
    std::fs::write(
        &config,
        "[kafka]\npartitions = 4\nmessage_timeout = \"10s\"\n\n[kafka.producer]\n\"linger.ms\" = 2\n",
    )
    .expect("config file");
    let sink = format!("kafka://{}", kafka_addr());
    let template = format!("{{aggregate_type:lower}}-events-t{suffix}");
    let config_arg = config.to_string_lossy().into_owned();
    let mut relay = spawn_relay(
        &db.url,
        &[
            "--config",
            &config_arg,
            "--sink",
            &sink,
            "--topic",
            &template,
            "--poll-interval",
            "200ms",
        ],
    );
    wait_all_published(&pool, Duration::from_secs(60)).await;
    relay.signal(libc::SIGTERM);
    assert_eq!(
        relay.wait(Duration::from_secs(20)).await,
        0,
        "SIGTERM exits 0"
    );

    let consumed = topic.clone();
    let (partitions, records) =
        tokio::task::spawn_blocking(move || consume(&consumed, n, Duration::from_secs(30)))
            .await
            .expect("consumer thread");
    assert_eq!(
        partitions, 4,
        "the topic was created with [kafka] partitions"
    );

    // Every event exactly as the contract says: key = aggregate id, headers, value.
    let by_id: HashMap<String, &(uuid::Uuid, String, String, String)> =
        rows.iter().map(|r| (r.0.to_string(), r)).collect();
    let mut seen = HashSet::new();
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    let mut delivered: HashMap<&str, Vec<String>> = HashMap::new();
    for r in &records {
        let id = r.headers.get("id").expect("id header");
        let (_, aggregate_type, aggregate_id, event_type) =
            by_id.get(id.as_str()).expect("an event of this test");
        assert_eq!(&r.key, aggregate_id, "key = aggregate id");
        assert_eq!(r.headers.get("event_type"), Some(event_type));
        assert_eq!(r.headers.get("aggregate_type"), Some(aggregate_type));
        assert_eq!(r.value["id"], id.as_str());
        assert_eq!(r.value["type"], event_type.as_str());
        assert_eq!(r.value["aggregate_id"], aggregate_id.as_str());
        // One aggregate, one partition: the Java client's choice for that key.
        let p = *partition_of.entry(aggregate_id).or_insert(r.partition);
        assert_eq!(
            r.partition, p,
            "aggregate {aggregate_id} stays in one partition"
        );
        assert_eq!(
            p,
            java_partition(aggregate_id.as_bytes(), partitions),
            "murmur2 partitioning, as Java producers do"
        );
        if seen.insert(id.clone()) {
            delivered
                .entry(aggregate_id)
                .or_default()
                .push(event_type.clone());
        }
    }
    assert_eq!(seen.len(), n, "every event delivered");
    assert!(
        partition_of.values().collect::<HashSet<_>>().len() > 1,
        "300 aggregates spread over the partitions"
    );
    // In order per aggregate: its events in the partition follow `seq`.
    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    for (_, _, aggregate_id, event_type) in &rows {
        expected
            .entry(aggregate_id)
            .or_default()
            .push(event_type.clone());
    }
    assert_eq!(delivered, expected, "each aggregate's events in seq order");

    delete_topic(&topic).await;
    let _ = std::fs::remove_dir_all(&dir);
}
