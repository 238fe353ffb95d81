//! `mqtt://[user:pass@]host:1883`: MQTT 5, via rumqttc.
//!
//! Delivered = the broker acknowledged the QoS 1 publish (`PUBACK` with a success reason code).
//! The topic is the message's topic (the relay's topic template); topics with the wildcards `+`
//! or `#`, a NUL, or a leading `$` are refused for good. The message key, the event id and the
//! other headers travel as MQTT 5 **user properties** (`key`, `id`, `event_type`,
//! `aggregate_type`, the row's own), so consumers can dedupe by `id`. A `content-type` header
//! also sets the MQTT content type. MQTT 3.1.1 has no user properties: the sink needs an MQTT 5
//! broker (Mosquitto ≥ 1.6, EMQX, HiveMQ, VerneMQ, RabbitMQ ≥ 3.13) and says so when the broker
//! refuses the protocol.
//!
//! # Connection and acknowledgements
//!
//! A background task owns the rumqttc event loop. Each connection is a fresh client with a clean
//! session; when it breaks, every publish waiting on it fails (unavailable: not the message's
//! fault) and the task connects again after a short pause (100 ms, doubling up to 2 s). Between
//! connections publishes fail at once, so an outage costs nothing but waiting, never hung
//! publishes. A lost connection is logged once (WARN), the attempts after it at DEBUG, and the
//! reconnection once (INFO).
//!
//! rumqttc 0.25 hands out no per-publish token. The task pairs each publish with its packet id
//! instead: requests leave the client's queue in order, and the event loop reports each one as
//! `Outgoing::Publish(pkid)` (or `AwaitAck` on a packet-id collision, then `Publish` once it is
//! resolved), so a FIFO of waiters filled under the same lock as the queue maps packet ids to
//! publishes; the `PUBACK` for a packet id answers its publish.
//!
//! A packet larger than `max_packet_size` (or the broker's own maximum, when it announces one)
//! is refused before sending: rumqttc would otherwise fail the whole connection on it.
//!
//! # TLS
//!
//! `mqtts://host[:8883]` connects through TLS (rustls), trusting the system's root certificates
//! and, with `ca_file` (URL parameter or `[mqtt] ca_file`), the PEM certificates in that file —
//! for a broker whose certificate a private CA signed. The broker's name in the URL must match
//! its certificate.

mod options;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet, PubAck, PubAckReason, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions as ClientOptions};
use rumqttc::Outgoing;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{ErrorKind, Message, Sink, SinkError};
use crate::retry::Backoff;
use options::parse_url;
pub use options::MqttOptions;

/// Publishes the client may queue before the event loop takes them (beyond that, a publish
/// fails as unavailable).
const QUEUE_CAPACITY: usize = 65_536;
/// First pause before reconnecting; doubles up to [`MAX_RECONNECT_PAUSE`].
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between connection attempts.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);

type Waiter = oneshot::Sender<Result<(), SinkError>>;

/// Publishes of one connection waiting for their acknowledgement.
#[derive(Default)]
struct Pending {
    /// Queued in the client, not yet taken by the event loop (in queue order).
    queued: VecDeque<Waiter>,
    /// Sent, by packet id.
    inflight: HashMap<u16, Waiter>,
    /// Taken but held back by a packet-id collision: sent next.
    collided: Option<Waiter>,
    /// Set when the connection ended: why.
    closed: Option<String>,
}

/// One connection (one rumqttc client and event loop).
struct Session {
    client: AsyncClient,
    pending: Mutex<Pending>,
    /// The broker's maximum packet size (`u32::MAX` until it announces one).
    broker_max: AtomicU32,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sent(&self, pkid: u16) {
        let mut p = self.lock();
        let waiter = p.collided.take().or_else(|| p.queued.pop_front());
        match waiter {
            Some(w) => {
                if let Some(stale) = p.inflight.insert(pkid, w) {
                    let _ = stale.send(Err(SinkError::unavailable(format!(
                        "MQTT: packet id {pkid} was reused before its PUBACK"
                    ))));
                }
            }
            None => tracing::debug!(pkid, "MQTT publish sent with no waiter"),
        }
    }

    fn collided(&self) {
        let mut p = self.lock();
        if p.collided.is_none() {
            p.collided = p.queued.pop_front();
        }
    }

    fn acked(&self, ack: &PubAck, require_subscribers: bool) {
        let waiter = self.lock().inflight.remove(&ack.pkid);
        if let Some(w) = waiter {
            let _ = w.send(puback_result(ack, require_subscribers));
        }
    }

    /// Fails every waiting publish and refuses new ones.
    fn close(&self, reason: &str) {
        let mut guard = self.lock();
        let p = &mut *guard;
        p.closed = Some(reason.to_string());
        let waiters: Vec<Waiter> = p
            .queued
            .drain(..)
            .chain(p.collided.take())
            .chain(p.inflight.drain().map(|(_, w)| w))
            .collect();
        drop(guard);
        for w in waiters {
            let _ = w.send(Err(SinkError::unavailable(reason.to_string())));
        }
    }
}

/// State shared by the sink and its connection task.
struct Shared {
    addr: String,
    current: RwLock<Option<Arc<Session>>>,
    last_error: Mutex<String>,
}

impl Shared {
    fn current(&self) -> Option<Arc<Session>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_current(&self, session: Option<Arc<Session>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = session;
    }

    fn unreachable(&self) -> SinkError {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        SinkError::unavailable(format!(
            "MQTT broker {} is unreachable: {last}; reconnecting",
            self.addr
        ))
    }
}

/// Publishes with QoS 1 and waits for each `PUBACK`.
pub struct MqttSink {
    shared: Arc<Shared>,
    options: MqttOptions,
    url: String,
    stop: CancellationToken,
}

impl MqttSink {
    /// Connects to `url` (`mqtt://[user:pass@]host[:1883]`). Query parameters override
    /// `options`: `ack_timeout`, `connect_timeout`, `keep_alive`, `max_packet_size`,
    /// `client_id`, `retain`, `require_subscribers`; others are configuration errors.
    ///
    /// Waits for the first connection (up to `connect_timeout`): a broker that refuses the
    /// credentials or MQTT 5 is a configuration error; one that cannot be reached is not (a
    /// warning says why, the sink keeps trying in the background and publishes fail as
    /// unavailable meanwhile).
    pub async fn connect(url: &str, options: &MqttOptions) -> Result<Self, crate::Error> {
        let (client_options, options, addr) = parse_url(url, options)?;
        let shared = Arc::new(Shared {
            addr,
            current: RwLock::new(None),
            last_error: Mutex::new("not connected yet".into()),
        });
        let stop = CancellationToken::new();
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(supervise(
            shared.clone(),
            client_options,
            options.require_subscribers,
            stop.clone(),
            first_tx,
        ));
        let sink = MqttSink {
            shared,
            url: crate::redact_url(url),
            options,
            stop,
        };
        let wait = sink.options.connect_timeout + Duration::from_secs(1);
        match tokio::time::timeout(wait, first_rx).await {
            Ok(Ok(Ok(()))) => tracing::info!(sink = %sink.describe(), "connected to MQTT broker"),
            Ok(Ok(Err(f))) if f.refused => {
                return Err(crate::Error::Config(format!("{}: {}", sink.url, f.message)))
            }
            Ok(Ok(Err(f))) => tracing::warn!(
                broker = %sink.shared.addr,
                error = %f.message,
                "MQTT broker is unreachable for now; events wait in the outbox until it is back"
            ),
            Ok(Err(_)) | Err(_) => tracing::warn!(
                sink = %sink.describe(),
                "no MQTT connection yet; events wait in the outbox until there is one"
            ),
        }
        Ok(sink)
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        validate_topic(&message.topic)?;
        let properties = properties(message)?;
        let session = self
            .shared
            .current()
            .ok_or_else(|| self.shared.unreachable())?;
        let mut sized = Publish::new(
            message.topic.as_str(),
            QoS::AtLeastOnce,
            message.value.clone(),
            Some(properties.clone()),
        );
        sized.pkid = 1;
        let size = sized.size();
        let broker_max = session.broker_max.load(Ordering::Relaxed) as usize;
        let limit = self.options.max_packet_size.min(broker_max);
        if size > limit {
            let whose = if broker_max < self.options.max_packet_size {
                "the broker's maximum packet size"
            } else {
                "the maximum packet size (mqtt.max_packet_size)"
            };
            return Err(SinkError::permanent(format!(
                "MQTT message of {size} bytes exceeds {whose} of {limit} bytes"
            )));
        }

        let (tx, rx) = oneshot::channel();
        {
            let mut pending = session.lock();
            if let Some(reason) = &pending.closed {
                return Err(SinkError::unavailable(reason.clone()));
            }
            session
                .client
                .try_publish_with_properties(
                    message.topic.as_str(),
                    QoS::AtLeastOnce,
                    self.options.retain,
                    message.value.clone(),
                    properties,
                )
                .map_err(|e| {
                    SinkError::unavailable(format!(
                        "MQTT: cannot queue the publish to {} ({e}); the connection is \
                         closing or {QUEUE_CAPACITY} publishes are already waiting",
                        message.topic
                    ))
                })?;
            pending.queued.push_back(tx);
        }
        match tokio::time::timeout(self.options.ack_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SinkError::unavailable(format!(
                "MQTT: the connection to {} ended before the PUBACK",
                self.shared.addr
            ))),
            Err(_) => Err(SinkError::unavailable(format!(
                "MQTT: no PUBACK within {:?} for topic {}",
                self.options.ack_timeout, message.topic
            ))),
        }
    }

    fn describe(&self) -> String {
        format!("{} (MQTT 5, QoS 1)", self.url)
    }
}

/// Runs connections one after another until `stop`; reports the first outcome on `first`.
async fn supervise(
    shared: Arc<Shared>,
    options: ClientOptions,
    require_subscribers: bool,
    stop: CancellationToken,
    first: oneshot::Sender<Result<(), ConnectFailure>>,
) {
    let mut first = Some(first);
    let mut pause = Backoff::new(RECONNECT_PAUSE, MAX_RECONNECT_PAUSE);
    // Whether the last connection attempt failed (the outage was reported).
    let mut down = false;
    loop {
        let (client, mut eventloop) = AsyncClient::new(options.clone(), QUEUE_CAPACITY);
        let session = Arc::new(Session {
            client,
            pending: Mutex::new(Pending::default()),
            broker_max: AtomicU32::new(u32::MAX),
        });
        shared.set_current(Some(session.clone()));
        let error = loop {
            let event = tokio::select! {
                _ = stop.cancelled() => {
                    shared.set_current(None);
                    session.close("the MQTT sink is shutting down");
                    return;
                }
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if let Some(max) = ack.properties.as_ref().and_then(|p| p.max_packet_size) {
                        session.broker_max.store(max, Ordering::Relaxed);
                    }
                    pause.reset();
                    if std::mem::take(&mut down) {
                        tracing::info!(broker = %shared.addr, "MQTT reconnected");
                    } else {
                        tracing::debug!(broker = %shared.addr, "MQTT connected");
                    }
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => session.sent(pkid),
                Ok(Event::Outgoing(Outgoing::AwaitAck(_))) => session.collided(),
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    session.acked(&ack, require_subscribers)
                }
                Ok(_) => {}
                Err(e) => break connection_error(&shared.addr, &e),
            }
        };
        shared.set_current(None);
        *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error.message.clone();
        session.close(&format!(
            "MQTT connection to {} lost: {}",
            shared.addr, error.message
        ));
        drop(eventloop);
        if let Some(tx) = first.take() {
            // `connect` says it (a warning, or a configuration error when refused).
            tracing::debug!(broker = %shared.addr, error = %error.message, "MQTT connection failed");
            let refused = error.refused;
            let _ = tx.send(Err(error));
            if refused {
                return;
            }
        } else if down {
            tracing::debug!(broker = %shared.addr, error = %error.message, "MQTT connection failed");
        } else {
            tracing::warn!(
                broker = %shared.addr,
                error = %error.message,
                "MQTT connection lost; reconnecting, events wait in the outbox"
            );
        }
        down = true;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause.fail()) => {}
        }
    }
}

/// A failed connection: why, and whether the broker refused us (credentials, client id,
/// protocol version: a configuration error at start).
struct ConnectFailure {
    message: String,
    refused: bool,
}

/// What a failed connection means.
fn connection_error(addr: &str, e: &ConnectionError) -> ConnectFailure {
    let (message, refused) = match e {
        ConnectionError::ConnectionRefused(code) => {
            let text = format!("MQTT broker {addr} refused the connection: {code:?}");
            match code {
                ConnectReturnCode::BadUserNamePassword
                | ConnectReturnCode::NotAuthorized
                | ConnectReturnCode::BadAuthenticationMethod
                | ConnectReturnCode::Banned
                | ConnectReturnCode::ClientIdentifierNotValid
                | ConnectReturnCode::BadClientId => (
                    format!("{text} (check the user, password and client id)"),
                    true,
                ),
                ConnectReturnCode::UnsupportedProtocolVersion
                | ConnectReturnCode::RefusedProtocolVersion => (
                    format!(
                        "{text}: the MQTT sink needs an MQTT 5 broker (user properties carry \
                         the headers)"
                    ),
                    true,
                ),
                _ => (text, false),
            }
        }
        ConnectionError::NotConnAck(_) | ConnectionError::MqttState(_) => (
            format!("MQTT broker {addr}: {e} (does it speak MQTT 5?)"),
            false,
        ),
        _ => (format!("MQTT broker {addr}: {e}"), false),
    };
    ConnectFailure { message, refused }
}

fn puback_result(ack: &PubAck, require_subscribers: bool) -> Result<(), SinkError> {
    let Some(kind) = puback_kind(ack.reason, require_subscribers) else {
        return Ok(());
    };
    let reason = ack
        .properties
        .as_ref()
        .and_then(|p| p.reason_string.as_deref())
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    let message = match ack.reason {
        PubAckReason::NoMatchingSubscribers => {
            "MQTT broker has no subscriber for the topic (mqtt.require_subscribers)".to_string()
        }
        other if kind == ErrorKind::Permanent => {
            format!("MQTT broker rejected the message ({other:?}{reason})")
        }
        other => format!("MQTT broker refused the message ({other:?}{reason})"),
    };
    Err(SinkError {
        kind,
        message,
        retry_after: None,
    })
}

/// Whose failure a `PUBACK` reason code is; `None` for a delivery.
///
/// - [`ErrorKind::Permanent`]: the broker will never take this message (topic name or payload
///   format invalid).
/// - [`ErrorKind::Unavailable`]: not authorized (the broker's ACL), quota exceeded (throttling).
/// - [`ErrorKind::Retryable`]: no subscriber when `require_subscribers` is set (the message
///   could not be routed), or the broker's unspecified or implementation-specific refusal.
pub fn puback_kind(reason: PubAckReason, require_subscribers: bool) -> Option<ErrorKind> {
    match reason {
        PubAckReason::Success => None,
        PubAckReason::NoMatchingSubscribers if !require_subscribers => None,
        PubAckReason::TopicNameInvalid | PubAckReason::PayloadFormatInvalid => {
            Some(ErrorKind::Permanent)
        }
        PubAckReason::NotAuthorized | PubAckReason::QuotaExceeded => Some(ErrorKind::Unavailable),
        _ => Some(ErrorKind::Retryable),
    }
}

/// User properties `key`, then the message's headers; a `content-type` header also sets the
/// MQTT content type.
fn properties(message: &Message) -> Result<PublishProperties, SinkError> {
    let mut user = Vec::with_capacity(message.headers.len() + 1);
    user.push(("key".to_string(), mqtt_string("key", &message.key)?));
    let mut content_type = None;
    for (name, value) in &message.headers {
        let name = mqtt_string("header name", name)?;
        let value = mqtt_string(&name, value)?;
        if name.eq_ignore_ascii_case("content-type") && content_type.is_none() {
            content_type = Some(value.clone());
        }
        user.push((name, value));
    }
    Ok(PublishProperties {
        user_properties: user,
        content_type,
        ..PublishProperties::default()
    })
}

/// An MQTT UTF-8 string: no NUL, at most 65535 bytes.
fn mqtt_string(what: &str, s: &str) -> Result<String, SinkError> {
    if s.contains('\0') || s.len() > u16::MAX as usize {
        return Err(SinkError::permanent(format!(
            "{what} cannot travel in MQTT (NUL character or longer than 65535 bytes)"
        )));
    }
    Ok(s.to_string())
}

fn validate_topic(topic: &str) -> Result<(), SinkError> {
    let problem = if topic.is_empty() {
        Some("it is empty")
    } else if topic.contains(['+', '#']) {
        Some("it contains a wildcard (+ or #)")
    } else if topic.contains('\0') {
        Some("it contains a NUL character")
    } else if topic.starts_with('$') {
        Some("topics starting with $ are reserved for the broker")
    } else if topic.len() > u16::MAX as usize {
        Some("it is longer than 65535 bytes")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(why) => Err(SinkError::permanent(format!(
            "{:?} is not a valid MQTT topic to publish to: {why}",
            topic.chars().take(80).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            id: uuid::Uuid::nil(),
            topic: "order-events".into(),
            key: "o-1".into(),
            value: bytes::Bytes::from_static(b"{}"),
            headers: vec![
                ("id".into(), uuid::Uuid::nil().to_string()),
                ("content-type".into(), "application/json".into()),
            ],
        }
    }

    #[test]
    fn parses_urls_and_overrides() {
        let (client, o, addr) = parse_url(
            "mqtt://u:p%40ss@broker:1884?ack_timeout=1s&max_packet_size=2048&client_id=me\
             &retain=true",
            &MqttOptions::default(),
        )
        .unwrap();
        assert_eq!(addr, "broker:1884");
        assert_eq!(client.broker_address(), ("broker".to_string(), 1884));
        assert_eq!(client.client_id(), "me");
        assert!(client.clean_start());
        let login = client.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u", "p@ss")
        );
        assert_eq!(o.ack_timeout, Duration::from_secs(1));
        assert_eq!(o.max_packet_size, 2048);
        assert!(o.retain);

        let (client, o, addr) = parse_url("mqtt://127.0.0.1", &MqttOptions::default()).unwrap();
        assert_eq!(addr, "127.0.0.1:1883");
        assert!(client.client_id().starts_with("outbox-relay-"));
        assert!(client.credentials().is_none());
        assert_eq!(o, MqttOptions::default());
    }

    #[test]
    fn refuses_bad_urls_without_leaking_the_password() {
        for bad in [
            "mqtt://u:secret@h?nope=1",
            "mqtt://u:secret@h?keep_alive=1s",
            "mqtt://u:secret@h?ack_timeout=soon",
            "mqtt://u:secret@h?max_packet_size=big",
            "mqtt://u:secret@h/topic",
            "mqtt://u:secret@h?ca_file=/tmp/ca.pem",
            "mqtts://u:secret@h?ca_file=/nonexistent/ca.pem",
            "mqtt://u:secret@",
        ] {
            let err = parse_url(bad, &MqttOptions::default())
                .map(|_| ())
                .unwrap_err();
            assert!(err.is_config(), "{bad}: {err}");
            assert!(!err.to_string().contains("secret"), "{bad}: {err}");
        }
    }

    #[test]
    fn topics_are_validated() {
        assert!(validate_topic("orders/o-1").is_ok());
        for bad in ["", "a/+/b", "a/#", "$SYS/x", "a\0b"] {
            let e = validate_topic(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Permanent, "{bad}");
        }
    }

    #[test]
    fn properties_carry_key_and_headers() {
        let p = properties(&message()).unwrap();
        assert_eq!(p.user_properties[0], ("key".into(), "o-1".into()));
        assert_eq!(
            p.user_properties[1],
            ("id".into(), uuid::Uuid::nil().to_string())
        );
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        let mut m = message();
        m.headers.push(("bad".into(), "a\0b".into()));
        assert_eq!(properties(&m).unwrap_err().kind, ErrorKind::Permanent);
    }

    #[test]
    fn puback_reasons() {
        let ack = |reason| PubAck {
            pkid: 1,
            reason,
            properties: None,
        };
        assert!(puback_result(&ack(PubAckReason::Success), true).is_ok());
        assert!(puback_result(&ack(PubAckReason::NoMatchingSubscribers), false).is_ok());
        for (reason, require, kind) in [
            (
                PubAckReason::NoMatchingSubscribers,
                true,
                ErrorKind::Retryable,
            ),
            (PubAckReason::TopicNameInvalid, false, ErrorKind::Permanent),
            (
                PubAckReason::PayloadFormatInvalid,
                false,
                ErrorKind::Permanent,
            ),
            (PubAckReason::QuotaExceeded, false, ErrorKind::Unavailable),
            (PubAckReason::NotAuthorized, false, ErrorKind::Unavailable),
            (PubAckReason::UnspecifiedError, false, ErrorKind::Retryable),
        ] {
            let e = puback_result(&ack(reason), require).unwrap_err();
            assert_eq!(e.kind, kind, "{reason:?}");
        }
    }

    /// The FIFO pairing of waiters and packet ids, collisions included.
    #[tokio::test]
    async fn pairs_pubacks_with_publishes() {
        let (client, _eventloop) = AsyncClient::new(ClientOptions::new("t", "h", 1), 10);
        let session = Session {
            client,
            pending: Mutex::new(Pending::default()),
            broker_max: AtomicU32::new(u32::MAX),
        };
        let mut rx = Vec::new();
        for _ in 0..3 {
            let (tx, r) = oneshot::channel();
            session.lock().queued.push_back(tx);
            rx.push(r);
        }
        session.sent(1);
        session.collided(); // the second publish waits for packet id 1
        let ok = |pkid| PubAck::new(pkid, None);
        session.acked(&ok(1), false);
        session.sent(1); // the collided one goes out with id 1
        session.sent(2);
        let mut refused = ok(2);
        refused.reason = PubAckReason::QuotaExceeded;
        session.acked(&refused, false);
        session.acked(&ok(1), false);
        let results: Vec<_> = futures::future::join_all(rx).await;
        assert!(results[0].as_ref().unwrap().is_ok());
        assert!(results[1].as_ref().unwrap().is_ok());
        assert!(results[2].as_ref().unwrap().is_err());

        let (tx, r) = oneshot::channel();
        session.lock().queued.push_back(tx);
        session.close("gone");
        assert_eq!(r.await.unwrap().unwrap_err().message, "gone");
        assert!(session.lock().closed.is_some());
    }
}
