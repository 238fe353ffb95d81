//! `amqp://user:pass@host:5672/vhost`: RabbitMQ (AMQP 0.9.1), via lapin.
//!
//! Delivered = RabbitMQ acknowledged the message with a **publisher confirm** (`basic.ack`).
//! Messages are persistent (`delivery_mode` 2) and published `mandatory`: a message no queue is
//! bound for comes back as `basic.return` and counts as a failure ("unroutable"), never as a
//! delivery. The event id is the AMQP `message_id` and the `id` header; the message key travels
//! in the `key` header, beside the contract's headers (AMQP has no native key).
//!
//! The exchange and routing key are templates rendered from the message
//! ([`Template::parse_for_message`]): by default exchange `outbox` (declared as a durable topic
//! exchange when missing) and routing key `{topic}`.
//!
//! # Connections and channels
//!
//! lapin does not reconnect by itself. The sink keeps one connection, opened at start when the
//! broker is reachable and otherwise on the next publish; a broken connection is dropped and
//! re-opened by the next publish (one attempt at a time, and not more often than every
//! [`RECONNECT_PAUSE`]), so while RabbitMQ is unreachable publishes fail fast as
//! [`ErrorKind::Unavailable`](super::ErrorKind::Unavailable).
//!
//! Whose failure a failed publish is: a returned (unroutable) message or a `basic.nack` is the
//! message's ([`ErrorKind::Retryable`](super::ErrorKind::Retryable): counted, then
//! dead-lettered), one larger than the broker takes is
//! [`Permanent`](super::ErrorKind::Permanent); an unreachable broker, refused credentials or
//! permissions, a missing exchange, a timed-out confirm are the broker's
//! ([`Unavailable`](super::ErrorKind::Unavailable)); [`publish_kind`] decides for errors
//! RabbitMQ closes a channel with.
//!
//! # Many confirms in flight per channel
//!
//! Publishes are spread over `channels` channels (round robin), each with up to
//! `max_unconfirmed` messages awaiting their confirm; a task per channel publishes and tracks
//! the confirms ([`pipe`]). A message is delivered only once its confirm came and no return
//! names it: lapin pins each `basic.return` on whichever confirm it completes next, and one
//! `basic.ack` with `multiple` completes several, so the returned message's own `message_id`
//! (the event id) says whose return it is, and a message is decided only once every message
//! published before it on the channel is confirmed too, which is when its return, if any, has
//! surely arrived ([`confirms`] gives the argument). An unroutable message among many in flight
//! fails alone. Order per aggregate is the relay's: it publishes an aggregate's next event only
//! after the previous one's confirm.
//!
//! A channel that fails (closed by the server, a lost connection, a confirm overdue) fails the
//! messages waiting on it and is replaced; the messages it had not sent yet go on another
//! channel. A message too large for the broker closes its channel: it is refused for good, the
//! others waiting on the channel are not its fault and go again as unavailable.
//!
//! `amqps://host[:5671]` connects through TLS (rustls), trusting the system's root certificates
//! and, with `ca_file`, the PEM certificates in that file.

mod confirms;
mod options;
mod pipe;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lapin::options::ExchangeDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

use super::{ErrorKind, Message, Sink, SinkError};
use crate::template::Template;
use options::parse_url;
pub use options::AmqpOptions;
use pipe::{Job, Pipe, Reply};

/// How many times a message that a failing channel never sent is tried on another channel
/// before the publish fails as unavailable.
const SEND_TRIES: usize = 3;

/// How long after a failed connection attempt publishes fail at once (with that attempt's
/// error) instead of trying again: keeps an outage from turning into a connection storm.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// One AMQP connection and the channels publishing on it.
struct Conn {
    connection: Connection,
    /// `channels` slots, each with its channel once opened (replaced when it fails).
    pipes: Vec<tokio::sync::Mutex<Option<Arc<Pipe>>>>,
    /// The slot the next publish goes to.
    next: AtomicUsize,
    /// Exchanges declared (or found) on this connection.
    declared: Mutex<HashSet<String>>,
}

impl Conn {
    fn is_open(&self) -> bool {
        self.connection.status().connected()
    }
}

/// The last failed connection attempt.
struct Failure {
    at: Instant,
    failed: ConnectFailure,
}

/// A failed connection attempt: why ([`ErrorKind::Unavailable`]), and whether the broker
/// refused the credentials or vhost (a configuration error at start).
#[derive(Clone)]
struct ConnectFailure {
    error: SinkError,
    refused: bool,
}

/// Publishes to RabbitMQ with publisher confirms.
pub struct AmqpSink {
    uri: AMQPUri,
    /// Extra CAs for `amqps://` (PEM).
    tls: lapin::tcp::OwnedTLSConfig,
    url: String,
    options: AmqpOptions,
    exchange: Template,
    routing_key: Template,
    exchange_kind: ExchangeKind,
    current: RwLock<Option<Arc<Conn>>>,
    /// Serializes connection attempts; holds the last failure.
    connecting: tokio::sync::Mutex<Option<Failure>>,
}

impl AmqpSink {
    /// Connects to `url` (`amqp://user:pass@host:5672/vhost`, vhost percent-encoded: `%2f` is
    /// `/`, which is also the default). Query parameters override `options`: `exchange`,
    /// `routing_key`, `declare_exchange`, `exchange_type`, `mandatory`, `channels`,
    /// `max_unconfirmed`, `confirm_timeout`, `connect_timeout`, `max_message_size`, `ca_file`; and lapin's own
    /// `heartbeat`, `frame_max`, `channel_max`, `auth_mechanism` pass through. Others are
    /// configuration errors.
    ///
    /// A broker that cannot be reached now is not an error (a warning says why): the sink
    /// connects on the next publish, and publishes fail as unavailable until it can. Refused
    /// credentials or vhost are configuration errors at start (later, publishes fail as
    /// unavailable until the operator fixes them). `amqps://` connects through TLS.
    pub async fn connect(url: &str, options: &AmqpOptions) -> Result<Self, crate::Error> {
        let (uri, options) = parse_url(url, options)?;
        let redacted = crate::redact_url(url);
        let exchange = Template::parse_for_message(&options.exchange)
            .map_err(|e| crate::Error::Config(format!("amqp.exchange: {e}")))?;
        let routing_key = Template::parse_for_message(&options.routing_key)
            .map_err(|e| crate::Error::Config(format!("amqp.routing_key: {e}")))?;
        let exchange_kind = match options.exchange_type.as_str() {
            "topic" => ExchangeKind::Topic,
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            "" => {
                return Err(crate::Error::Config(
                    "amqp.exchange_type is empty: use topic, direct, fanout or headers".into(),
                ))
            }
            other => ExchangeKind::Custom(other.to_string()),
        };
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: match &options.ca_file {
                Some(path) => Some(
                    crate::sink::tls::ca_pem(path)
                        .map_err(|e| crate::Error::Config(format!("RabbitMQ: {e}")))?,
                ),
                None => None,
            },
        };
        let sink = AmqpSink {
            uri,
            tls,
            url: redacted,
            exchange,
            routing_key,
            exchange_kind,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(None),
            options,
        };
        match sink.connection().await {
            Ok(_) => tracing::info!(sink = %sink.describe(), "connected to RabbitMQ"),
            Err(f) if f.refused => return Err(crate::Error::Config(f.error.message)),
            Err(f) => tracing::warn!(
                broker = %sink.url,
                error = %f.error,
                "RabbitMQ is unreachable for now; events wait in the outbox until it is back"
            ),
        }
        Ok(sink)
    }

    /// The open connection, opening one if needed.
    async fn connection(&self) -> Result<Arc<Conn>, ConnectFailure> {
        if let Some(conn) = self.open_connection() {
            return Ok(conn);
        }
        let mut last = self.connecting.lock().await;
        if let Some(conn) = self.open_connection() {
            return Ok(conn);
        }
        if let Some(failure) = last.as_ref() {
            if failure.at.elapsed() < RECONNECT_PAUSE {
                return Err(failure.failed.clone());
            }
        }
        let props = ConnectionProperties::default().with_connection_name("outbox-relay".into());
        let result = tokio::time::timeout(self.options.connect_timeout, async {
            let runtime = lapin::runtime::default_runtime()?;
            Connection::connect_uri_with_config(self.uri.clone(), props, self.tls.clone(), runtime)
                .await
        })
        .await;
        let connection = match result {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.connect_error(&e)),
            Err(_) => Err(ConnectFailure {
                error: SinkError::unavailable(format!(
                    "RabbitMQ {}: no connection within {:?}",
                    self.url, self.options.connect_timeout
                )),
                refused: false,
            }),
        };
        let connection = match connection {
            Ok(c) => c,
            Err(failed) => {
                *last = Some(Failure {
                    at: Instant::now(),
                    failed: failed.clone(),
                });
                return Err(failed);
            }
        };
        *last = None;
        let conn = Arc::new(Conn {
            connection,
            pipes: (0..self.options.channels)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            declared: Mutex::new(HashSet::new()),
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn open_connection(&self) -> Option<Arc<Conn>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().filter(|c| c.is_open()).cloned()
    }

    /// Forgets `conn` if it is still the current connection (the next publish reconnects).
    fn drop_connection(&self, conn: &Arc<Conn>) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
        }
    }

    fn connect_error(&self, e: &lapin::Error) -> ConnectFailure {
        let text = format!("RabbitMQ {}: cannot connect: {e}", self.url);
        let refused = matches!(
            e.kind(),
            lapin::ErrorKind::ProtocolError(amqp) if matches!(
                amqp.kind(),
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                    | AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            )
        );
        let error = if refused {
            SinkError::unavailable(format!(
                "{text} (check the user, password and vhost in the URL)"
            ))
        } else {
            SinkError::unavailable(text)
        };
        ConnectFailure { error, refused }
    }

    /// The next channel in turn, opened (in confirm mode, with its task) when it is not yet or
    /// no longer open.
    async fn pipe(&self, conn: &Conn) -> Result<Arc<Pipe>, SinkError> {
        let slot = conn.next.fetch_add(1, Ordering::Relaxed) % conn.pipes.len().max(1);
        let Some(slot) = conn.pipes.get(slot) else {
            return Err(SinkError::unavailable("RabbitMQ: no channel configured"));
        };
        let mut slot = slot.lock().await;
        if let Some(pipe) = slot.as_ref().filter(|p| p.is_open()) {
            return Ok(pipe.clone());
        }
        let settings = pipe::Settings {
            mandatory: self.options.mandatory,
            confirm_timeout: self.options.confirm_timeout,
            max_unconfirmed: self.options.max_unconfirmed,
        };
        let opened = tokio::time::timeout(
            self.options.connect_timeout,
            Pipe::open(&conn.connection, settings),
        )
        .await;
        match opened {
            Ok(Ok(pipe)) => Ok(slot.insert(Arc::new(pipe)).clone()),
            Ok(Err(e)) => Err(SinkError::unavailable(format!(
                "RabbitMQ {}: opening a channel: {e}",
                self.url
            ))),
            Err(_) => Err(SinkError::unavailable(format!(
                "RabbitMQ {}: no channel within {:?}",
                self.url, self.options.connect_timeout
            ))),
        }
    }

    /// Declares `exchange` once per connection (when configured to), on a channel of its own
    /// (a refused declaration closes its channel, never one with publishes in flight).
    async fn ensure_exchange(&self, conn: &Conn, exchange: &str) -> Result<(), SinkError> {
        if !self.options.declare_exchange || exchange.is_empty() || exchange.starts_with("amq.") {
            return Ok(());
        }
        if conn
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(exchange)
        {
            return Ok(());
        }
        let name = short(exchange, "exchange name")?;
        let declared = tokio::time::timeout(self.options.confirm_timeout, async {
            let channel = conn.connection.create_channel().await?;
            channel
                .exchange_declare(
                    name,
                    self.exchange_kind.clone(),
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = channel.close(200, ShortString::from("declared")).await;
            Ok::<_, lapin::Error>(())
        })
        .await;
        match declared {
            Ok(Ok(())) => {
                conn.declared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(exchange.to_string());
                Ok(())
            }
            Ok(Err(e)) => Err(SinkError::unavailable(format!(
                "RabbitMQ: declaring exchange {exchange:?} (durable, type {}) failed: {e}; \
                 if it exists with other settings, set amqp.declare_exchange = false \
                 or amqp.exchange_type to match",
                self.options.exchange_type
            ))),
            Err(_) => Err(SinkError::unavailable(format!(
                "RabbitMQ: declaring exchange {exchange:?} took longer than {:?}",
                self.options.confirm_timeout
            ))),
        }
    }
}

#[async_trait]
impl Sink for AmqpSink {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        let exchange = self.exchange.render_message(message);
        let routing_key = self.routing_key.render_message(message);
        check_name(&exchange, "exchange name")?;
        check_name(&routing_key, "routing key")?;
        if message.value.len() > self.options.max_message_size {
            return Err(SinkError::permanent(format!(
                "message of {} bytes is larger than the RabbitMQ limit of {} bytes \
                 (amqp.max_message_size)",
                message.value.len(),
                self.options.max_message_size
            )));
        }
        let mut job = Job {
            exchange: short(&exchange, "exchange name")?,
            routing_key: short(&routing_key, "routing key")?,
            body: message.value.clone(),
            properties: properties(message)?,
            id: message.id.hyphenated().to_string(),
        };
        for _ in 0..SEND_TRIES {
            // Refused credentials after start too: the operator fixes them, the events wait.
            let conn = self.connection().await.map_err(|f| f.error)?;
            let ready = match self.ensure_exchange(&conn, &exchange).await {
                Ok(()) => self.pipe(&conn).await,
                Err(e) => Err(e),
            };
            let reply = match ready {
                Ok(pipe) => pipe.publish(job).await,
                Err(e) => Reply::Failed(e),
            };
            if !conn.is_open() {
                self.drop_connection(&conn);
            }
            match reply {
                Reply::Confirmed => return Ok(()),
                Reply::Failed(e) => {
                    if e.kind == ErrorKind::Unavailable {
                        // The server may have closed the channel over a deleted exchange.
                        conn.declared
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clear();
                    }
                    return Err(e);
                }
                Reply::NotSent(back) => job = *back,
            }
        }
        Err(SinkError::unavailable(format!(
            "RabbitMQ {}: its channels kept failing before the message could be sent",
            self.url
        )))
    }

    fn describe(&self) -> String {
        format!(
            "{} (exchange {:?}, routing key {:?})",
            self.url,
            self.exchange.as_str(),
            self.routing_key.as_str()
        )
    }
}

/// Message properties: persistent, `message_id` = event id, headers `key` + the message's.
fn properties(message: &Message) -> Result<BasicProperties, SinkError> {
    let mut headers = FieldTable::default();
    headers.insert(
        short("key", "header name")?,
        AMQPValue::LongString(LongString::from(message.key.as_bytes())),
    );
    let mut content_type = None;
    for (name, value) in &message.headers {
        // The first header of a name wins: the contract's own (`id`, …) come first.
        if headers.contains_key(name) {
            continue;
        }
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.as_str());
        }
        headers.insert(
            short(name, "header name")?,
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    let id = message.id.hyphenated().to_string();
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(short(&id, "message id")?)
        .with_headers(headers);
    if let Some(ct) = content_type {
        props = props.with_content_type(short(ct, "content-type header")?);
    }
    Ok(props)
}

/// An AMQP short string (at most 255 bytes), or a permanent error naming `what`.
fn short(s: &str, what: &str) -> Result<ShortString, SinkError> {
    ShortString::try_new(s).map_err(|_| {
        let start: String = s.chars().take(40).collect();
        SinkError::permanent(format!(
            "{what} {start:?}… is {} bytes; AMQP allows at most 255",
            s.len()
        ))
    })
}

fn check_name(s: &str, what: &str) -> Result<(), SinkError> {
    short(s, what).map(|_| ())
}

/// Classifies a failed publish (the channel or connection was closed under it).
fn publish_error(exchange: &str, routing_key: &str, e: &lapin::Error) -> SinkError {
    let text = e.to_string();
    let amqp = match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.kind().clone()),
        _ => None,
    };
    let kind = publish_kind(amqp.as_ref(), &text);
    if kind == ErrorKind::Permanent {
        return SinkError::permanent(format!("RabbitMQ rejected the message: {text}"));
    }
    let hint = match amqp {
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) => {
            " (the exchange does not exist: create it or set amqp.declare_exchange = true)"
        }
        Some(AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)) => {
            " (the user may not write to this exchange)"
        }
        _ => "",
    };
    SinkError {
        kind,
        message: format!(
            "RabbitMQ publish to exchange {exchange:?} with routing key {routing_key:?} \
             failed: {text}{hint}"
        ),
        retry_after: None,
    }
}

/// Whose failure a publish is that RabbitMQ answered by closing the channel (`amqp`: the AMQP
/// error it closed it with, `None` when the connection failed instead).
///
/// - [`ErrorKind::Permanent`]: larger than the broker's `max_message_size` (406 with
///   "larger than configured max size", or 311 content too large).
/// - [`ErrorKind::Retryable`]: the broker could not route this message (312, 313) or refused
///   it for a reason of its own (406).
/// - [`ErrorKind::Unavailable`]: a missing exchange (404), no permission (403), a locked
///   resource (405), any connection-level error, or no answer.
pub fn publish_kind(amqp: Option<&AMQPErrorKind>, text: &str) -> ErrorKind {
    if text.contains("larger than configured max size") || text.contains("max_message_size") {
        return ErrorKind::Permanent;
    }
    match amqp {
        Some(AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE)) => ErrorKind::Permanent,
        Some(AMQPErrorKind::Soft(
            AMQPSoftError::NOROUTE | AMQPSoftError::NOCONSUMERS | AMQPSoftError::PRECONDITIONFAILED,
        )) => ErrorKind::Retryable,
        _ => ErrorKind::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::urls::percent_decode;
    use lapin::uri::AMQPScheme;

    fn message() -> Message {
        Message {
            id: uuid::Uuid::nil(),
            topic: "order-events".into(),
            key: "o-1".into(),
            value: bytes::Bytes::from_static(b"{}"),
            headers: vec![
                ("id".into(), uuid::Uuid::nil().to_string()),
                ("event_type".into(), "OrderCreated".into()),
                ("aggregate_type".into(), "Order".into()),
                ("traceparent".into(), "00-abc-01".into()),
                ("id".into(), "not-the-event-id".into()),
            ],
        }
    }

    #[test]
    fn parses_urls_and_overrides() {
        let (uri, o) = parse_url(
            "amqp://guest:p%40ss@127.0.0.1:5673/%2f?exchange=ev&routing_key=x.{topic}\
             &confirm_timeout=1s&channels=8&heartbeat=10&declare_exchange=false",
            &AmqpOptions::default(),
        )
        .unwrap();
        assert_eq!(uri.authority.host, "127.0.0.1");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.authority.userinfo.username, "guest");
        assert_eq!(uri.authority.userinfo.password, "p@ss");
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.query.heartbeat, Some(10));
        assert_eq!(o.exchange, "ev");
        assert_eq!(o.routing_key, "x.{topic}");
        assert_eq!(o.confirm_timeout, Duration::from_secs(1));
        assert_eq!(o.channels, 8);
        assert!(!o.declare_exchange);

        let (uri, o) = parse_url("amqp://rabbit", &AmqpOptions::default()).unwrap();
        assert_eq!(uri.authority.host, "rabbit");
        assert_eq!(uri.authority.port, 5672);
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.authority.userinfo.username, "guest");
        assert_eq!(o, AmqpOptions::default());
        let (uri, _) = parse_url("amqp://h/shop", &AmqpOptions::default()).unwrap();
        assert_eq!(uri.vhost, "shop");
        let (uri, o) = parse_url("amqps://h?ca_file=/etc/ca.pem", &AmqpOptions::default()).unwrap();
        assert_eq!((uri.scheme, uri.authority.port), (AMQPScheme::AMQPS, 5671));
        assert_eq!(o.ca_file, Some("/etc/ca.pem".into()));
    }

    #[test]
    fn refuses_bad_urls_without_leaking_the_password() {
        for bad in [
            "amqp://u:secret@h/%2f?nope=1",
            "amqp://u:secret@h/%2f?channels=x",
            "amqp://u:secret@h/%2f?channels=0",
            "amqp://u:secret@h/%2f?confirm_timeout=soon",
            "amqp://u:secret@h/%zz",
            "amqp://u:secret@h/%2f?ca_file=/tmp/ca.pem",
            "amqp://u:secret@/%2f",
        ] {
            let err = parse_url(bad, &AmqpOptions::default())
                .map(|_| ())
                .unwrap_err();
            assert!(err.is_config(), "{bad}: {err}");
            assert!(!err.to_string().contains("secret"), "{bad}: {err}");
        }
    }

    #[test]
    fn properties_carry_id_key_and_headers() {
        let p = properties(&message()).unwrap();
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(uuid::Uuid::nil().to_string().as_str())
        );
        let headers = p.headers().as_ref().unwrap().inner();
        let get = |k: &str| match headers.get(k) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        };
        assert_eq!(get("key").as_deref(), Some("o-1"));
        // The contract's `id` wins over a row header of the same name.
        assert_eq!(get("id"), Some(uuid::Uuid::nil().to_string()));
        assert_eq!(get("traceparent").as_deref(), Some("00-abc-01"));
        assert_eq!(get("event_type").as_deref(), Some("OrderCreated"));
    }

    #[test]
    fn long_names_are_permanent_errors() {
        let mut m = message();
        m.headers.push(("h".repeat(300), "v".into()));
        assert_eq!(properties(&m).unwrap_err().kind, ErrorKind::Permanent);
        assert_eq!(
            check_name(&"k".repeat(256), "routing key")
                .unwrap_err()
                .kind,
            ErrorKind::Permanent
        );
        assert!(check_name(&"k".repeat(255), "routing key").is_ok());
    }

    #[test]
    fn publish_failures_are_classified() {
        use AMQPErrorKind::{Hard, Soft};
        let too_large =
            "PRECONDITION_FAILED - message size 2048 is larger than configured max size 1024";
        let soft = |e| publish_kind(Some(&Soft(e)), "");
        assert_eq!(
            publish_kind(Some(&Soft(AMQPSoftError::PRECONDITIONFAILED)), too_large),
            ErrorKind::Permanent
        );
        assert_eq!(soft(AMQPSoftError::CONTENTTOOLARGE), ErrorKind::Permanent);
        assert_eq!(soft(AMQPSoftError::NOROUTE), ErrorKind::Retryable);
        assert_eq!(
            soft(AMQPSoftError::PRECONDITIONFAILED),
            ErrorKind::Retryable
        );
        assert_eq!(soft(AMQPSoftError::NOTFOUND), ErrorKind::Unavailable);
        assert_eq!(soft(AMQPSoftError::ACCESSREFUSED), ErrorKind::Unavailable);
        assert_eq!(
            publish_kind(Some(&Hard(AMQPHardError::CONNECTIONFORCED)), ""),
            ErrorKind::Unavailable
        );
        assert_eq!(publish_kind(None, "IO error"), ErrorKind::Unavailable);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2f").as_deref(), Some("/"));
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
