//! The whole path on real servers: the reference order-service writes orders and events on
//! PostgreSQL, the relay (in this process) delivers its reference envelope to NATS JetStream or
//! Kafka, and the shipping-service consumes the relay's own output into its database.

mod common;

use std::time::Duration;

use common::*;
use order_service::{Item, OrderService};
use outbox_relay::route::{Envelope, Template};
use outbox_relay::sink::{self, SinkOptions};
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::{Relay, RelayConfig, Router};
use tokio_util::sync::CancellationToken;

/// Writes 20 orders (every third cancelled) and returns the shipments they must yield.
async fn write_orders(service: &OrderService) -> Tables {
    let mut want = Tables {
        shipments: Default::default(),
        inbox: 0,
    };
    for n in 0..20 {
        let item = Item {
            sku: format!("sku-{n}"),
            quantity: 1,
            price: 9.5,
        };
        let order = service
            .create_order(&format!("c-{n}"), vec![item], 9.5)
            .await
            .expect("create an order");
        let mut shipment = ("ready".to_string(), 1);
        if n % 3 == 0 {
            service
                .cancel_order(order.id, "changed my mind")
                .await
                .expect("cancel the order");
            shipment = ("cancelled".to_string(), 2);
        }
        want.inbox += i64::from(shipment.1);
        want.shipments.insert(order.id.to_string(), shipment);
    }
    want
}

/// Orders → relay (`sink_url`, topic template `topic`) → shipping-service (`--from from`).
async fn pipeline(sink_url: &str, options: SinkOptions, topic: &str, from: &str, args: &[&str]) {
    let orders = require!(TestDb::create().await);
    let shipping = require!(TestDb::create().await);
    let service = OrderService::new(orders.pool().await);
    service.migrate().await.expect("the order-service's schema");
    let want = write_orders(&service).await;

    let store = Store::connect(&orders.url, &ConnectOptions::default())
        .await
        .expect("the relay's store");
    let sink = sink::from_url(sink_url, &options).await.expect("the sink");
    let router = Router::new(
        Template::parse(topic).expect("template"),
        Envelope::Reference,
    );
    let relay = Relay::new(store, sink, router, RelayConfig::default());
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn({
        let token = stop_relay.clone();
        async move { relay.run(token).await }
    });

    let topic = topic.replace("{aggregate_type:lower}", "order");
    let consumer = start(&shipping.url, from, &topic, args, &[]);
    let pool = shipping.pool().await;
    wait_until(
        Duration::from_secs(60),
        "every order's shipment",
        || async {
            let got = tables(&pool).await;
            (got == want, got)
        },
    )
    .await;
    consumer.stop().await;
    stop_relay.cancel();
    relay
        .await
        .expect("relay task")
        .expect("relay stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_the_relays_output_from_nats() {
    let nats = require!(outbox_testkit::TestNats::connect().await);
    let mut options = SinkOptions::default();
    options.nats.stream = nats.stream();
    let topic = format!("{}.{{aggregate_type:lower}}-events", nats.prefix);
    pipeline(
        &outbox_testkit::nats_url(),
        options,
        &topic,
        &outbox_testkit::nats_url(),
        &[],
    )
    .await;
    nats.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_the_relays_output_from_kafka() {
    let addr = std::env::var("OUTBOX_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    if let Err(e) = std::net::TcpStream::connect(&addr) {
        outbox_testkit::unavailable(&format!("Kafka (tansu) at {addr}"), &e.to_string());
        return;
    }
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let topic = format!("{prefix}-{{aggregate_type:lower}}-events");
    let group = format!("shipping-{prefix}");
    pipeline(
        &format!("kafka://{addr}"),
        SinkOptions::default(),
        &topic,
        &format!("kafka://{addr}"),
        // tansu answers a group's first JoinGroup after a delay that grows with the session
        // timeout (23 s at librdkafka's 45 s default): keep it short in tests.
        &[
            "--name",
            &group,
            "--kafka-property",
            "session.timeout.ms=2000",
            "--kafka-property",
            "heartbeat.interval.ms=500",
        ],
    )
    .await;
}
