//! `redis://host:6379`: Redis Streams, via the redis crate.
//!
//! Each message is one `XADD <topic> [MAXLEN ~ n] * …` entry on the stream named by the topic
//! template, with the fields
//!
//! | field | holds |
//! |---|---|
//! | `id` | the event id (consumers dedupe on it) |
//! | `key` | the aggregate id |
//! | `type` | the event type (when the envelope sends the `event_type` header) |
//! | `value` | the envelope bytes |
//! | `headers` | the contract's headers as a JSON object of strings (`id`, `event_type`, `aggregate_type`, then the row's own) |
//!
//! Delivered = Redis replied with the new entry's id: the entry is in the server's memory
//! (and in its append-only file, as far as the server's `appendfsync` policy goes).
//! Streams are created by the first `XADD`. One aggregate's events land in one stream, in
//! order.
//!
//! `rediss://` connects through TLS (rustls), trusting the system's root certificates, or only
//! the PEM certificates of `ca_file` when that is given (a server signed by a private CA).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;

use super::{ErrorKind, Message, Sink, SinkError};
use crate::urls::apply_params;

/// Redis Streams settings (config section `[redis]`; URL query parameters override them).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisOptions {
    /// Cap every stream at about this many entries (`XADD … MAXLEN ~ n`, URL `maxlen`).
    /// None (the default): streams grow until consumers trim them.
    pub maxlen: Option<u64>,
    /// Trim to exactly `maxlen` entries (`MAXLEN n`) instead of the much cheaper approximate
    /// trim (URL `maxlen_exact`).
    pub maxlen_exact: bool,
    /// How long one publish may wait for Redis's reply, reconnecting included, before it
    /// fails as unavailable (URL `timeout`).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub timeout: Duration,
    /// `rediss://` only: trust the CA certificates of this PEM file instead of the system's
    /// (URL `ca_file`).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            maxlen: None,
            maxlen_exact: false,
            timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

/// Appends each message to a Redis stream and waits for the entry id.
pub struct RedisSink {
    /// Multiplexed connection, re-made in the background after failures.
    conn: ConnectionManager,
    options: RedisOptions,
    /// The URL without its password, for logs.
    url: String,
}

impl RedisSink {
    /// Connects to `url`: `redis://[user:password@]host:6379[/db][?param=value…]`. Query
    /// parameters override `options`: `maxlen`, `maxlen_exact`, `timeout` (e.g. `5s`).
    ///
    /// Redis is asked a `PING` at once: refused credentials are a configuration error, an
    /// unreachable server only a warning. The connection is re-made after failures: while Redis
    /// is unreachable, publishes fail as unavailable and events wait in the outbox.
    /// `rediss://` connects through TLS; `ca_file` names the CAs to trust.
    pub async fn connect(url: &str, options: &RedisOptions) -> Result<Self, crate::Error> {
        let redacted = crate::redact_url(url);
        let mut parsed = url::Url::parse(url)
            .map_err(|e| crate::Error::Config(format!("invalid Redis URL {redacted}: {e}")))?;
        if parsed.host_str().unwrap_or("").is_empty() {
            return Err(crate::Error::Config(format!(
                "invalid Redis URL {redacted}: it needs a host, e.g. redis://127.0.0.1:6379"
            )));
        }
        let mut options = options.clone();
        let bad = |m: String| crate::Error::Config(format!("Redis URL: {m}"));
        let known = "maxlen, maxlen_exact, timeout, ca_file";
        apply_params(parsed.query_pairs(), known, bad, |p| {
            match p.name {
                "maxlen" => options.maxlen = Some(p.number("a stream length")?),
                "maxlen_exact" => options.maxlen_exact = p.boolean()?,
                "timeout" => options.timeout = p.duration()?,
                "ca_file" => options.ca_file = Some(p.text().into()),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if options.maxlen == Some(0) {
            return Err(crate::Error::Config(
                "redis.maxlen must be at least 1 (leave it out for unbounded streams)".into(),
            ));
        }
        if options.timeout < Duration::from_millis(10) {
            return Err(crate::Error::Config(format!(
                "redis.timeout must be at least 10ms, got {:?}",
                options.timeout
            )));
        }
        parsed.set_query(None);
        let client = match &options.ca_file {
            None => redis::Client::open(parsed.as_str()),
            Some(_) if parsed.scheme() != "rediss" => {
                return Err(crate::Error::Config(format!(
                    "Redis URL {redacted}: ca_file applies to rediss:// only"
                )))
            }
            Some(path) => {
                let pem = super::tls::ca_pem(path)
                    .map_err(|e| crate::Error::Config(format!("Redis: {e}")))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.into_bytes()),
                };
                redis::Client::build_with_tls(parsed.as_str(), certs)
            }
        }
        .map_err(|e| {
            crate::Error::Config(format!(
                "Redis URL {}: {e}",
                crate::redact_url(parsed.as_str())
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            // Fail a publish soon when Redis is down; the next publish tries again.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| crate::Error::Config(format!("Redis {redacted}: {e}")))?;
        let sink = RedisSink {
            conn,
            options,
            url: crate::redact_url(parsed.as_str()),
        };
        sink.ping().await?;
        Ok(sink)
    }

    /// Says at start whether Redis answers: refused credentials are a configuration error, an
    /// unreachable server a warning (the sink connects on the next publish).
    async fn ping(&self) -> Result<(), crate::Error> {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        let answer = tokio::time::timeout(self.options.timeout, ping.query_async::<()>(&mut conn));
        let cause = match answer.await {
            Ok(Ok(())) => {
                tracing::info!(sink = %self.describe(), "connected to Redis");
                return Ok(());
            }
            Ok(Err(e))
                if e.kind() == redis::ErrorKind::AuthenticationFailed
                    || matches!(e.code(), Some("NOAUTH" | "WRONGPASS")) =>
            {
                return Err(crate::Error::Config(format!(
                    "Redis {} refused the credentials: {e} (check the user and password in \
                     the URL)",
                    self.url
                )))
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.options.timeout),
        };
        tracing::warn!(
            server = %self.url,
            error = %cause,
            "Redis is unreachable for now; events wait in the outbox until it is back"
        );
        Ok(())
    }

    fn command(&self, message: &Message) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&message.topic);
        if let Some(n) = self.options.maxlen {
            cmd.arg("MAXLEN");
            if !self.options.maxlen_exact {
                cmd.arg("~");
            }
            cmd.arg(n);
        }
        let mut id = uuid::Uuid::encode_buffer();
        cmd.arg("*")
            .arg("id")
            .arg(&*message.id.hyphenated().encode_lower(&mut id))
            .arg("key")
            .arg(&message.key);
        if let Some((_, event_type)) = message.headers.iter().find(|(k, _)| k == "event_type") {
            cmd.arg("type").arg(event_type);
        }
        cmd.arg("value")
            .arg(message.value.as_ref())
            .arg("headers")
            .arg(headers_json(&message.headers));
        cmd
    }

    fn classify(&self, topic: &str, e: &RedisError) -> SinkError {
        let code = e.code().unwrap_or("");
        let text = e.to_string();
        let kind = error_kind(code, &text);
        let message = if code == "WRONGTYPE" {
            format!(
                "Redis refused the entry: WRONGTYPE (key {topic:?} holds a value that is not a \
                 stream): {text}"
            )
        } else if kind == ErrorKind::Permanent {
            format!("Redis refused the entry for {topic}: too large: {text}")
        } else {
            let hint = match e.kind() {
                redis::ErrorKind::AuthenticationFailed => " (check the URL's credentials)",
                _ if matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM") => {
                    " (check the URL's credentials and the user's ACL)"
                }
                _ if e.is_timeout() => " (no reply in time)",
                _ if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
                    " (Redis unreachable)"
                }
                _ => "",
            };
            format!("Redis XADD to {topic} failed{hint}: {text}")
        };
        SinkError {
            kind,
            message,
            retry_after: None,
        }
    }
}

/// Error codes of a server that cannot take any entry now: credentials or ACL refused, full,
/// read-only, loading, busy, failing over, redirecting.
const SERVER_CODES: [&str; 13] = [
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "MISCONF",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MOVED",
    "ASK",
];

/// Whose failure a failed `XADD` is, by the error code of Redis's reply (`""` when there is
/// none: the connection failed, timed out or authentication failed) and its text.
///
/// - [`ErrorKind::Permanent`]: the key holds something else than a stream (`WRONGTYPE`), or
///   the entry is larger than Redis takes.
/// - [`ErrorKind::Unavailable`]: no reply, credentials or ACL refused (`NOAUTH`, `WRONGPASS`,
///   `NOPERM`), the server full, read-only, loading, busy or failing over (`OOM`,
///   `READONLY`, `LOADING`, `BUSY`, `MASTERDOWN`, `MISCONF`, `TRYAGAIN`, `CLUSTERDOWN`,
///   `MOVED`, `ASK`), too many clients, or a server without streams (unknown command).
/// - [`ErrorKind::Retryable`]: any other error reply.
pub fn error_kind(code: &str, text: &str) -> ErrorKind {
    if code == "WRONGTYPE"
        || text.contains("invalid bulk length")
        || text.contains("string exceeds maximum")
    {
        return ErrorKind::Permanent;
    }
    if code.is_empty()
        || SERVER_CODES.contains(&code)
        || text.contains("max number of clients")
        || text.contains("unknown command")
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Retryable
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        let cmd = self.command(message);
        let mut conn = self.conn.clone();
        match tokio::time::timeout(
            self.options.timeout,
            cmd.query_async::<redis::Value>(&mut conn),
        )
        .await
        {
            Ok(Ok(_entry_id)) => Ok(()),
            Ok(Err(e)) => Err(self.classify(&message.topic, &e)),
            Err(_) => Err(SinkError::unavailable(format!(
                "Redis: no reply to XADD {} within {:?} (Redis unreachable?)",
                message.topic, self.options.timeout
            ))),
        }
    }

    fn describe(&self) -> String {
        match self.options.maxlen {
            Some(n) => format!("{} (streams, MAXLEN ~{n})", self.url),
            None => format!("{} (streams)", self.url),
        }
    }
}

/// The headers as a JSON object of strings, in their order.
fn headers_json(headers: &[(String, String)]) -> String {
    let mut map = serde_json::Map::with_capacity(headers.len());
    for (k, v) in headers {
        map.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            id: uuid::Uuid::nil(),
            topic: "order-events".into(),
            key: "o-1".into(),
            value: bytes::Bytes::from_static(b"{\"n\":1}"),
            headers: vec![
                ("id".into(), uuid::Uuid::nil().to_string()),
                ("event_type".into(), "OrderCreated".into()),
                ("traceparent".into(), "00-\"x\"-01".into()),
            ],
        }
    }

    fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    #[tokio::test]
    async fn xadd_carries_the_contract() {
        let sink = RedisSink::connect("redis://127.0.0.1:1", &RedisOptions::default())
            .await
            .expect("an unreachable server is not a configuration error");
        let a = args(&sink.command(&message()));
        let nil = uuid::Uuid::nil().to_string();
        assert_eq!(
            a[..10],
            [
                "XADD",
                "order-events",
                "*",
                "id",
                &nil,
                "key",
                "o-1",
                "type",
                "OrderCreated",
                "value"
            ]
        );
        assert_eq!(a[10], "{\"n\":1}");
        assert_eq!(a[11], "headers");
        let h: serde_json::Value = serde_json::from_str(&a[12]).unwrap();
        assert_eq!(h["traceparent"], "00-\"x\"-01");
        assert_eq!(h["event_type"], "OrderCreated");

        let sink = RedisSink::connect(
            "redis://:pw@127.0.0.1:1/2?maxlen=1000",
            &RedisOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            args(&sink.command(&message()))[..5],
            ["XADD", "order-events", "MAXLEN", "~", "1000"]
        );
        assert!(!sink.describe().contains("pw"), "{}", sink.describe());
        let sink = RedisSink::connect(
            "redis://127.0.0.1:1?maxlen=5&maxlen_exact=true",
            &RedisOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            args(&sink.command(&message()))[..4],
            ["XADD", "order-events", "MAXLEN", "5"]
        );
    }

    #[tokio::test]
    async fn bad_urls_are_configuration_errors() {
        for url in [
            "redis://127.0.0.1:1?nope=1",
            "redis://127.0.0.1:1?maxlen=lots",
            "redis://127.0.0.1:1?maxlen=0",
            "redis://127.0.0.1:1?timeout=soon",
            "redis://127.0.0.1:1?maxlen_exact=maybe",
            "redis://",
            "redis://:secret@127.0.0.1:1/notadb",
            "redis://:secret@127.0.0.1:1?ca_file=/tmp/ca.pem",
            "rediss://:secret@127.0.0.1:1?ca_file=/nonexistent/ca.pem",
            "unix:///tmp/redis.sock",
        ] {
            match RedisSink::connect(url, &RedisOptions::default()).await {
                Err(crate::Error::Config(m)) => assert!(!m.contains("secret"), "{m}"),
                Err(e) => panic!("{url}: not a configuration error: {e}"),
                Ok(_) => panic!("{url} is accepted"),
            }
        }
    }

    #[tokio::test]
    async fn unreachable_redis_fails_as_unavailable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let sink = RedisSink::connect(
            &format!("redis://127.0.0.1:{port}?timeout=500ms"),
            &RedisOptions::default(),
        )
        .await
        .unwrap();
        let e = sink.publish(&message()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    }

    #[test]
    fn replies_are_classified() {
        use ErrorKind::*;
        assert_eq!(
            error_kind("WRONGTYPE", "WRONGTYPE Operation against a key"),
            Permanent
        );
        assert_eq!(
            error_kind("ERR", "Protocol error: invalid bulk length"),
            Permanent
        );
        for code in std::iter::once("").chain(SERVER_CODES) {
            assert_eq!(error_kind(code, "x"), Unavailable, "{code}");
        }
        assert_eq!(
            error_kind("ERR", "ERR max number of clients reached"),
            Unavailable
        );
        assert_eq!(error_kind("ERR", "ERR unknown command 'XADD'"), Unavailable);
        assert_eq!(
            error_kind("ERR", "ERR something about this entry"),
            Retryable
        );
    }

    #[test]
    fn options_read_from_config() {
        let o: RedisOptions =
            serde_json::from_str(r#"{"maxlen": 100000, "timeout": "2s"}"#).unwrap();
        assert_eq!(o.maxlen, Some(100_000));
        assert_eq!(o.timeout, Duration::from_secs(2));
        assert!(serde_json::from_str::<RedisOptions>(r#"{"stream": "x"}"#).is_err());
    }
}
