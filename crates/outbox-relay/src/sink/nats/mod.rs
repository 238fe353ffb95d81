//! `nats://host:4222`: NATS JetStream, via async-nats.
//!
//! Delivered = the stream acknowledged the message (`PubAck`). `Nats-Msg-Id` carries the event
//! id, so a redelivery within the stream's duplicate window is dropped by the server.
//! The message key (aggregate id) travels in the `key` header, beside the contract's headers.
//!
//! Unless `subjects` are configured, the sink creates its stream on first use and adds each new
//! subject to it as events for it appear.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;

mod log;
mod wave;

use log::{refused_at_start, ConnectionLog};

use super::{ErrorKind, Message, Sink, SinkError};
use crate::urls::{apply_params, percent_decode};

/// NATS JetStream settings (config section `[nats]`, or URL query `?stream=NAME`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsOptions {
    /// Stream that receives the events; created when missing.
    pub stream: String,
    /// Subjects the stream captures. Empty: start from none and add each topic as it appears.
    pub subjects: Vec<String>,
    /// How long to wait for the stream's acknowledgement before retrying.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub ack_timeout: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            stream: "OUTBOX".into(),
            subjects: Vec::new(),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// Publishes to a JetStream stream and waits for each acknowledgement.
pub struct NatsSink {
    js: jetstream::Context,
    options: NatsOptions,
    url: String,
    /// Subjects known to be captured by the stream.
    covered: RwLock<HashSet<String>>,
    ensure: tokio::sync::Mutex<()>,
}

impl NatsSink {
    /// Connects to `url`. Query parameters override `options`: `stream`, `ack_timeout` (e.g. `5s`).
    ///
    /// A server that cannot be reached now is not an error (a warning says why): the client
    /// connects in the background and reconnects after failures, and meanwhile publishes fail
    /// as [`ErrorKind::Unavailable`] and events wait in the outbox. A server that refuses the
    /// credentials at start is a configuration error.
    pub async fn connect(url: &str, options: &NatsOptions) -> Result<Self, crate::Error> {
        let redacted = crate::redact_url(url);
        let parsed = url::Url::parse(url)
            .map_err(|e| crate::Error::Config(format!("invalid NATS URL {redacted}: {e}")))?;
        if parsed.host_str().unwrap_or("").is_empty() {
            return Err(crate::Error::Config(format!(
                "invalid NATS URL {redacted}: it needs a host, e.g. nats://127.0.0.1:4222"
            )));
        }
        let mut options = options.clone();
        let bad = |m: String| crate::Error::Config(format!("NATS URL: {m}"));
        apply_params(parsed.query_pairs(), "stream, ack_timeout", bad, |p| {
            match p.name {
                "stream" => options.stream = p.text(),
                "ack_timeout" => options.ack_timeout = p.duration()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if options.stream.is_empty() || options.stream.contains(['.', ' ', '*', '>', '\t']) {
            return Err(crate::Error::Config(format!(
                "NATS stream name {:?} is invalid: no spaces, '.', '*' or '>'",
                options.stream
            )));
        }
        // Credentials go to the client as options, never inside the server address: the
        // client logs its addresses (at debug level) as they are.
        let mut server = parsed.clone();
        server.set_query(None);
        let _ = server.set_username("");
        let _ = server.set_password(None);
        let decode = |s: &str, what: &str| {
            percent_decode(s).ok_or_else(|| {
                crate::Error::Config(format!(
                    "invalid NATS URL {redacted}: the {what} is not valid percent-encoding"
                ))
            })
        };
        let (user, pass) = (parsed.username(), parsed.password());
        let token = match (user, pass) {
            ("", None) => None,
            (token, None) => Some(decode(token, "token")?),
            _ => None,
        };
        let login = match pass {
            Some(pass) => Some((decode(user, "user name")?, decode(pass, "password")?)),
            None => None,
        };
        let log = Arc::new(ConnectionLog::new(&redacted));
        let connect = || {
            let log = log.clone();
            let mut c = async_nats::ConnectOptions::new().event_callback(move |event| {
                log.event(event);
                std::future::ready(())
            });
            if let Some(token) = &token {
                c = c.token(token.clone());
            }
            if let Some((user, pass)) = &login {
                c = c.user_and_password(user.clone(), pass.clone());
            }
            c.name("outbox-relay")
                .connection_timeout(Duration::from_secs(5))
        };
        // One attempt first, to say once and clearly why the server cannot be reached (the
        // client's own reconnect loop only reports "IO error", and only at INFO).
        let client = match connect().connect(server.as_str()).await {
            Ok(client) => {
                tracing::info!(server = %redacted, "connected to NATS");
                log.connected_at_start();
                client
            }
            Err(e) if refused_at_start(e.kind()) => {
                return Err(crate::Error::Config(format!(
                    "NATS {redacted} refused the connection: {e} (check the user, password \
                     or token in the URL)"
                )))
            }
            Err(e) => {
                tracing::warn!(
                    server = %redacted,
                    error = %e,
                    "NATS is unreachable for now; events wait in the outbox until it is back"
                );
                connect()
                    .retry_on_initial_connect()
                    .connect(server.as_str())
                    .await
                    .map_err(|e| crate::Error::Sink(format!("NATS {redacted}: {e}")))?
            }
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(options.ack_timeout)
            .max_ack_inflight(16_384)
            .backpressure_on_inflight(true)
            .build(client);
        let sink = NatsSink {
            js,
            options,
            url: redacted,
            covered: RwLock::new(HashSet::new()),
            ensure: tokio::sync::Mutex::new(()),
        };
        Ok(sink)
    }

    /// Makes sure the stream exists and captures `subject`.
    async fn ensure_subject(&self, subject: &str) -> Result<(), SinkError> {
        let _guard = self.ensure.lock().await;
        if self.is_covered(subject) {
            return Ok(());
        }
        let name = &self.options.stream;
        let fixed = !self.options.subjects.is_empty();
        match self.js.get_stream(name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| {
                    SinkError::unavailable(format!("NATS: reading stream {name}: {e}"))
                })?;
                if !info
                    .config
                    .subjects
                    .iter()
                    .any(|p| subject_matches(p, subject))
                {
                    if fixed {
                        return Err(SinkError::unavailable(format!(
                            "NATS: stream {name} does not capture subject {subject}; \
                             add it to nats.subjects or the stream"
                        )));
                    }
                    let mut config = info.config.clone();
                    config.subjects.push(subject.to_string());
                    self.js.update_stream(config).await.map_err(|e| {
                        SinkError::unavailable(format!(
                            "NATS: adding subject {subject} to stream {name}: {e}"
                        ))
                    })?;
                }
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                let subjects = if fixed {
                    self.options.subjects.clone()
                } else {
                    vec![subject.to_string()]
                };
                self.js
                    .create_stream(stream::Config {
                        name: name.clone(),
                        subjects,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        SinkError::unavailable(format!("NATS: creating stream {name}: {e}"))
                    })?;
                tracing::info!(stream = %name, subject, "created JetStream stream");
            }
            Err(e) => {
                return Err(SinkError::unavailable(format!(
                    "NATS: looking up stream {name}: {e}"
                )))
            }
        }
        self.covered
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subject.to_string());
        Ok(())
    }

    fn is_covered(&self, subject: &str) -> bool {
        self.covered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(subject)
    }

    fn forget(&self, subject: &str) {
        self.covered
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(subject);
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        validate_subject(&message.topic)?;
        // While the client is disconnected a publish would be queued in the client until the
        // reconnect (a copy of every failed round's messages) and time out anyway: fail at
        // once instead, as an outage, and hold no copy.
        if self.js.client().connection_state() == async_nats::connection::State::Disconnected {
            return Err(SinkError::unavailable(format!(
                "NATS {}: not connected",
                self.url
            )));
        }
        // Optimistic: publish, and only when no stream captures the subject (the server answers
        // "no responders" at once) create or extend the stream and publish again.
        match self.send(message, headers(message)?).await {
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                self.forget(&message.topic);
                self.ensure_subject(&message.topic).await?;
                self.send(message, headers(message)?)
                    .await
                    .map_err(|e| self.classify(&message.topic, e))
            }
            other => other.map_err(|e| self.classify(&message.topic, e)),
        }
    }

    /// One acknowledgement inbox for the whole wave (see `wave.rs`).
    async fn publish_all(
        &self,
        messages: &[Message],
        max_in_flight: usize,
    ) -> Vec<Result<(), SinkError>> {
        self.publish_wave(messages, max_in_flight).await
    }

    fn describe(&self) -> String {
        format!("{} (stream {})", self.url, self.options.stream)
    }
}

impl NatsSink {
    /// One publish, awaiting the stream's acknowledgement.
    async fn send(
        &self,
        message: &Message,
        headers: HeaderMap,
    ) -> Result<(), jetstream::context::PublishError> {
        self.js
            .publish_with_headers(message.topic.clone(), headers, message.value.clone())
            .await?
            .await
            .map(|_ack| ())
    }

    fn classify(&self, subject: &str, e: jetstream::context::PublishError) -> SinkError {
        let code = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .map(|j| j.error_code().0);
        let kind = publish_kind(e.kind(), code);
        let message = match e.kind() {
            PublishErrorKind::StreamNotFound => {
                self.forget(subject);
                format!("NATS: no JetStream stream captures subject {subject}")
            }
            PublishErrorKind::TimedOut => format!(
                "NATS: no acknowledgement within {:?} on {subject} (server unreachable?)",
                self.options.ack_timeout
            ),
            _ if kind == ErrorKind::Permanent => format!("NATS rejected the message: {e}"),
            _ => format!("NATS publish to {subject} failed: {e}"),
        };
        SinkError {
            kind,
            message,
            retry_after: None,
        }
    }
}

/// Whose failure a failed JetStream publish is: `kind` as async-nats reports it, `code` the
/// JetStream error code when the stream answered with one.
///
/// - [`ErrorKind::Permanent`]: larger than the server's `max_payload` or the stream's
///   `max_msg_size` (10054).
/// - [`ErrorKind::Unavailable`]: no stream for the subject, no acknowledgement in time, the
///   connection gone or saturated, and the stream's or server's own state (storage full or
///   failing (10077, 10023, 10047, 10028, 10002), JetStream off or without a leader (10076,
///   10039, 10008, 10009), the stream missing (10059)); also a failure without a JetStream
///   code (the client could not send it).
/// - [`ErrorKind::Retryable`]: any other answer of the stream about this message.
pub fn publish_kind(kind: PublishErrorKind, code: Option<u64>) -> ErrorKind {
    use jetstream::ErrorCode as C;
    let server_side = [
        C::STREAM_STORE_FAILED,
        C::INSUFFICIENT_RESOURCES,
        C::STORAGE_RESOURCES_EXCEEDED,
        C::MEMORY_RESOURCES_EXCEEDED,
        C::ACCOUNT_RESOURCES_EXCEEDED,
        C::JETSTREAM_NOT_ENABLED,
        C::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
        C::CLUSTER_NOT_AVAILABLE,
        C::CLUSTER_NOT_LEADER,
        C::STREAM_NOT_FOUND,
    ];
    match kind {
        PublishErrorKind::MaxPayloadExceeded => ErrorKind::Permanent,
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => ErrorKind::Unavailable,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            ErrorKind::Retryable
        }
        _ => match code {
            Some(c) if c == C::STREAM_MESSAGE_EXCEEDS_MAXIMUM.0 => ErrorKind::Permanent,
            Some(c) if server_side.iter().any(|s| s.0 == c) => ErrorKind::Unavailable,
            Some(_) => ErrorKind::Retryable,
            None => ErrorKind::Unavailable,
        },
    }
}

/// The message's NATS headers: `Nats-Msg-Id` (JetStream's dedupe), `key`, then the envelope's.
fn headers(message: &Message) -> Result<HeaderMap, SinkError> {
    const MSG_ID: HeaderName = HeaderName::from_static("Nats-Msg-Id");
    const KEY: HeaderName = HeaderName::from_static("key");
    let mut headers = HeaderMap::new();
    let id = message.id.hyphenated().to_string();
    headers.insert(MSG_ID, HeaderValue::from(id));
    headers.insert(KEY, header_value("key", &message.key)?);
    for (k, v) in &message.headers {
        let name = match known_name(k) {
            Some(name) => name,
            None => HeaderName::from_str(k).map_err(|_| {
                SinkError::permanent(format!(
                    "header name {k:?} is not allowed by NATS (printable ASCII, no ':')"
                ))
            })?,
        };
        headers.append(name, header_value(k, v)?);
    }
    Ok(headers)
}

/// The envelopes' own header names, without parsing or allocating one per message.
fn known_name(name: &str) -> Option<HeaderName> {
    Some(HeaderName::from_static(match name {
        "id" => "id",
        "event_type" => "event_type",
        "aggregate_type" => "aggregate_type",
        "seq" => "seq",
        "ce_specversion" => "ce_specversion",
        "ce_id" => "ce_id",
        "ce_source" => "ce_source",
        "ce_type" => "ce_type",
        "ce_subject" => "ce_subject",
        "ce_time" => "ce_time",
        "content-type" => "content-type",
        _ => return None,
    }))
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, SinkError> {
    HeaderValue::from_str(value).map_err(|_| {
        SinkError::permanent(format!(
            "header {name:?} has a value NATS cannot carry (line breaks)"
        ))
    })
}

fn validate_subject(subject: &str) -> Result<(), SinkError> {
    let ok = !subject.is_empty()
        && !subject.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        && subject.split('.').all(|t| !t.is_empty());
    if ok {
        Ok(())
    } else {
        Err(SinkError::permanent(format!(
            "{subject:?} is not a valid NATS subject (no spaces, wildcards or empty tokens)"
        )))
    }
}

/// NATS subject matching: `*` matches one token, `>` one or more trailing tokens.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::ConnectErrorKind;

    #[test]
    fn wildcard_matching() {
        assert!(subject_matches("order-events", "order-events"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("order-events", "user-events"));
    }

    #[test]
    fn subjects_are_validated() {
        assert!(validate_subject("order-events").is_ok());
        assert!(validate_subject("a b").is_err());
        assert!(validate_subject("a..b").is_err());
        assert!(validate_subject("").is_err());
        assert_eq!(
            validate_subject("x.*").unwrap_err().kind,
            ErrorKind::Permanent
        );
    }

    #[test]
    fn publish_failures_are_classified() {
        use jetstream::ErrorCode as C;
        use PublishErrorKind as P;
        assert_eq!(
            publish_kind(P::MaxPayloadExceeded, None),
            ErrorKind::Permanent
        );
        for k in [
            P::StreamNotFound,
            P::TimedOut,
            P::BrokenPipe,
            P::MaxAckPending,
        ] {
            assert_eq!(publish_kind(k, None), ErrorKind::Unavailable, "{k:?}");
        }
        let other = |c: C| publish_kind(P::Other, Some(c.0));
        assert_eq!(
            other(C::STREAM_MESSAGE_EXCEEDS_MAXIMUM),
            ErrorKind::Permanent
        );
        assert_eq!(other(C::STREAM_STORE_FAILED), ErrorKind::Unavailable);
        assert_eq!(other(C::JETSTREAM_NOT_ENABLED), ErrorKind::Unavailable);
        assert_eq!(other(C::BAD_REQUEST), ErrorKind::Retryable);
        assert_eq!(publish_kind(P::Other, None), ErrorKind::Unavailable);
        assert!(refused_at_start(ConnectErrorKind::AuthorizationViolation));
        assert!(!refused_at_start(ConnectErrorKind::Io));
    }
}
