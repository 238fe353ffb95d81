//! The shipping-service against the real NATS JetStream: a durable pull consumer with explicit
//! acknowledgements, each event's effect exactly once.

mod common;

use async_nats::jetstream::{consumer, stream};
use common::*;
use outbox_testkit::TestNats;

struct Nats {
    nats: TestNats,
}

impl Nats {
    async fn setup() -> Option<Nats> {
        let nats = TestNats::connect().await?;
        nats.js
            .create_stream(stream::Config {
                name: nats.stream(),
                subjects: vec![format!("{}.>", nats.prefix)],
                ..Default::default()
            })
            .await
            .expect("create the test stream");
        Some(Nats { nats })
    }
}

impl Broker for Nats {
    fn from(&self) -> String {
        outbox_testkit::nats_url()
    }

    fn topic(&self) -> String {
        format!("{}.order-events", self.nats.prefix)
    }

    fn args(&self) -> Vec<String> {
        vec!["--ack-wait".into(), "1s".into()]
    }

    async fn publish(&self, events: &[Event]) {
        for e in events {
            // No Nats-Msg-Id: JetStream would drop a copy within its duplicate window, and
            // these copies stand for redeliveries it does not catch (after the window).
            let mut headers = async_nats::HeaderMap::new();
            for (k, v) in e.headers() {
                headers.insert(k, v.as_str());
            }
            self.nats
                .js
                .publish_with_headers(self.topic(), headers, e.value().into())
                .await
                .expect("publish")
                .await
                .expect("PubAck");
        }
    }

    async fn drained(&self) -> bool {
        let Ok(stream) = self.nats.js.get_stream(self.nats.stream()).await else {
            return false;
        };
        let Ok(mut c) = stream
            .get_consumer::<consumer::pull::Config>("shipping-service")
            .await
        else {
            return false;
        };
        match c.info().await {
            Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
            Err(_) => false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_duplicates_and_a_crash_after_commit_apply_each_event_once() {
    let db = require!(TestDb::create().await);
    let b = require!(Nats::setup().await);
    duplicates_and_a_crash_after_commit_apply_each_event_once(&b, &db).await;
    b.nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_crash_before_commit_leaves_nothing_and_the_redelivery_is_processed() {
    let db = require!(TestDb::create().await);
    let b = require!(Nats::setup().await);
    a_crash_before_commit_leaves_nothing_and_the_redelivery_is_processed(&b, &db).await;
    b.nats.cleanup().await;
}
