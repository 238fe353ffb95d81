//! The sink conformance suite: one set of tests every sink runs against its real server.
//!
//! A sink enrolls by implementing [`Harness`] (how to reach its broker, how to read back what
//! was delivered, what its broker refuses) in a file of its own and adding one `conformance!`
//! line below. Every enrolled sink then proves, with the relay running in-process against a
//! private PostgreSQL database:
//!
//! 1. `delivers_exact_message`: topic, key, value and headers as the contract says, and the
//!    event id reaches the consumer (for dedupe);
//! 2. `keeps_order_per_aggregate`: 100 aggregates × 50 events arrive in order per aggregate;
//! 3. `survives_an_outage`: the broker becomes unreachable mid-stream, then returns: the relay
//!    retries and nothing is lost, order still holds;
//! 4. `dead_letters_what_the_broker_refuses`: an oversize or rejected message ends in the
//!    dead-letter table with a readable reason while other events flow;
//! 5. `a_redelivered_event_is_applied_once_through_the_inbox`: an event delivered again is
//!    stored once (a broker that dedupes) or twice, with its id in the headers the README's
//!    delivery-semantics table names, and the inbox applies it once.

mod amqp;
mod harness;
mod kafka;
mod mqtt;
mod nats;
mod redis;
mod webhook;

pub use harness::*;

/// Enrolls a sink: generates the five conformance tests for `$harness` in module `$name`.
macro_rules! conformance {
    ($name:ident, $harness:ty) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delivers_exact_message() {
                crate::harness::delivers_exact_message::<$harness>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keeps_order_per_aggregate() {
                crate::harness::keeps_order_per_aggregate::<$harness>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn survives_an_outage() {
                crate::harness::survives_an_outage::<$harness>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dead_letters_what_the_broker_refuses() {
                crate::harness::dead_letters_what_the_broker_refuses::<$harness>().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_redelivered_event_is_applied_once_through_the_inbox() {
                crate::harness::a_redelivered_event_is_applied_once_through_the_inbox::<$harness>()
                    .await;
            }
        }
    };
}

conformance!(nats_jetstream, crate::nats::NatsHarness);
conformance!(kafka_sink, crate::kafka::KafkaHarness);
conformance!(rabbitmq, crate::amqp::AmqpHarness);
conformance!(redis_streams, crate::redis::RedisHarness);
conformance!(mqtt_sink, crate::mqtt::MqttHarness);
conformance!(http_webhook, crate::webhook::WebhookHarness);
