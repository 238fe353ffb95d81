//! # outbox-relay
//!
//! The engine behind the `outbox relay` command. Events flow one way:
//!
//! ```text
//! store (outbox table) ──claim──▶ source ──Record──▶ route (topic + envelope) ──Message──▶ sink
//!        ▲                                                                                 │
//!        └───────────────────── settle: published / retry later / dead letter ◀────────────┘
//! ```
//!
//! * [`store`]: the SQL for each database (PostgreSQL, SQLite): claim, settle, status,
//!   dead letters, cleanup.
//! * [`source`]: where events come from; [`source::poll`] claims batches from the store.
//! * [`route`]: topic templates and envelopes (reference, Debezium, CloudEvents).
//! * [`sink`]: where events go, one file per broker behind the [`sink::Sink`] trait.
//! * [`relay`]: the delivery loop that ties them together, with retries ([`retry`]) that never
//!   hold up other aggregates.
#![warn(missing_docs)]

pub mod error;
pub mod record;
pub mod relay;
pub mod retry;
pub mod route;
pub mod sink;
pub mod source;
pub mod stats;
pub mod store;

pub use error::Error;
pub use record::Record;
pub use relay::{Relay, RelayConfig};
pub use retry::RetryPolicy;
pub use route::Router;
pub use sink::{Message, Sink, SinkError};
pub use stats::Stats;
pub use store::Store;

/// Replaces the password of a URL, and the values of query parameters whose names say
/// `password`, `secret` or `token`, with `***`, for logs and error messages.
///
/// ```
/// assert_eq!(
///     outbox_relay::redact_url("postgres://app:s3cret@db:5432/shop"),
///     "postgres://app:***@db:5432/shop"
/// );
/// assert_eq!(
///     outbox_relay::redact_url("kafka://k:9093?sasl.username=app&sasl.password=s3cret"),
///     "kafka://k:9093?sasl.username=app&sasl.password=***"
/// );
/// assert_eq!(outbox_relay::redact_url("sqlite:demo.db"), "sqlite:demo.db");
/// ```
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            // Secrets passed as parameters (`sasl.password=…`, `token=…`) are masked too.
            let secret = |k: &str| {
                let k = k.to_ascii_lowercase();
                ["password", "secret", "token"]
                    .iter()
                    .any(|s| k.contains(s))
            };
            let secret_query = u.query_pairs().any(|(k, _)| secret(&k));
            if u.password().is_none() && !secret_query {
                return raw.to_string();
            }
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if secret_query {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Not a URL we can parse: never echo something that may hold a secret after '@'.
        Err(_) => match raw.rfind('@') {
            Some(at) => match raw[..at].find("://") {
                Some(scheme) => format!("{}://***@{}", &raw[..scheme], &raw[at + 1..]),
                None => format!("***@{}", &raw[at + 1..]),
            },
            None => raw.to_string(),
        },
    }
}
