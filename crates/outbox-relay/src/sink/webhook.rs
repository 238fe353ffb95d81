//! `http(s)://host/path`: HTTP webhooks, signed the [Standard Webhooks] way.
//!
//! Each message is POSTed to the URL: body = the message value (`application/json`), headers =
//! the message headers plus `outbox-topic` and `outbox-key`, and, when a secret is configured,
//! `webhook-id` (the event id), `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! Delivered = a 2xx answer. What any other answer means is [`classify`]'s one decision: the
//! endpoint's own trouble (unreachable, timed out, 401/403/404, 408, 429, 502/503/504, a
//! redirect) is [`ErrorKind::Unavailable`], never counted against the event; a refusal of this
//! request (400, 413, 415, 422…) is [`ErrorKind::Permanent`]: dead-lettered with the status and
//! the start of the response body; a 500 (and other answers that may pass later) is
//! [`ErrorKind::Retryable`]. `Retry-After` is honoured whatever the kind. Redirects are not
//! followed. At start the endpoint is asked once (`OPTIONS`, any answer counts); one that does
//! not answer is logged as unreachable, and the relay starts anyway.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use sha2::Sha256;

use super::{ErrorKind, Message, Sink, SinkError};

/// HTTP webhook settings (config section `[http]`).
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookOptions {
    /// Signing secret, `whsec_<base64>` as Standard Webhooks issues them (a raw string is used
    /// as-is). Also read from `OUTBOX_WEBHOOK_SECRET`. Without one, requests are not signed.
    pub secret: Option<String>,
    /// Per-request timeout.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub timeout: Duration,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            secret: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for WebhookOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookOptions")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// POSTs each message to one URL.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    shown: String,
    key: Option<Vec<u8>>,
}

/// Longest excerpt of a refusing response kept in the dead-letter reason.
const BODY_EXCERPT: usize = 200;

/// Longest wait for the endpoint's answer to the start probe (less when `timeout` is shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl WebhookSink {
    /// Prepares the client and asks the endpoint once whether it is there (`OPTIONS`, any answer
    /// counts): an endpoint that does not answer is a warning; only a malformed URL or secret is
    /// refused.
    pub async fn connect(url: &str, options: &WebhookOptions) -> Result<Self, crate::Error> {
        let shown = crate::redact_url(url);
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| crate::Error::Config(format!("invalid webhook URL {shown}: {e}")))?;
        if parsed.host_str().unwrap_or("").is_empty() {
            return Err(crate::Error::Config(format!(
                "invalid webhook URL {shown}: it needs a host"
            )));
        }
        let secret = options
            .secret
            .clone()
            .or_else(|| std::env::var("OUTBOX_WEBHOOK_SECRET").ok())
            .filter(|s| !s.is_empty());
        let key = secret.as_deref().map(signing_key).transpose()?;
        if key.is_none() {
            tracing::warn!(url = %shown, "no webhook secret configured: requests are not signed");
        }
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("outbox-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::Error::Config(format!("webhook client: {e}")))?;
        let sink = WebhookSink {
            client,
            url: parsed,
            shown,
            key,
        };
        sink.probe(options.timeout.min(PROBE_TIMEOUT)).await;
        Ok(sink)
    }

    /// Asks the endpoint once, at start, whether it is there: an `OPTIONS` request, where any
    /// answer counts whatever its status (a receiver that routes only `POST` answers 405). An
    /// endpoint that does not answer is a warning, never a refusal to start: it may come up
    /// later, and events wait in the outbox until it does.
    async fn probe(&self, timeout: Duration) {
        let answer = self
            .client
            .request(reqwest::Method::OPTIONS, self.url.clone())
            .timeout(timeout)
            .send()
            .await;
        match answer {
            Ok(response) => tracing::info!(
                sink = %self.describe(),
                status = %response.status(),
                "webhook endpoint answered"
            ),
            Err(e) => tracing::warn!(
                url = %self.shown,
                error = %describe_error(&e),
                "webhook endpoint is unreachable for now; events wait in the outbox until it is back"
            ),
        }
    }

    fn headers(&self, message: &Message) -> Result<HeaderMap, SinkError> {
        let mut h = HeaderMap::with_capacity(message.headers.len() + 6);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut put = |name: &str, value: &str| -> Result<(), SinkError> {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                SinkError::permanent(format!("header name {name:?} is not valid in HTTP"))
            })?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                SinkError::permanent(format!("header {name:?} has a value HTTP cannot carry"))
            })?;
            h.append(n, v);
            Ok(())
        };
        put("outbox-topic", &message.topic)?;
        put("outbox-key", &message.key)?;
        for (k, v) in &message.headers {
            put(k, v)?;
        }
        if let Some(key) = &self.key {
            let id = message.id.hyphenated().to_string();
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string();
            put("webhook-id", &id)?;
            put("webhook-timestamp", &ts)?;
            put("webhook-signature", &sign(key, &id, &ts, &message.value))?;
        }
        Ok(h)
    }
}

/// The HMAC key for a Standard Webhooks secret (`whsec_<base64>`), or the raw bytes otherwise.
fn signing_key(secret: &str) -> Result<Vec<u8>, crate::Error> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| {
                crate::Error::Config("webhook secret: whsec_ must be followed by base64".into())
            }),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key size");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

#[async_trait]
impl Sink for WebhookSink {
    async fn publish(&self, message: &Message) -> Result<(), SinkError> {
        let headers = self.headers(message)?;
        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(message.value.clone())
            .send()
            .await
            .map_err(|e| {
                SinkError::unavailable(format!("POST {} {}", self.shown, describe_error(&e)))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let wait = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let excerpt: String = body.chars().take(BODY_EXCERPT).collect();
        let kind = classify(status);
        let hint = match status.as_u16() {
            401 | 403 | 407 => " (the endpoint refuses the relay's credentials)",
            404 | 405 | 410 => " (no webhook at this URL)",
            300..=399 => " (redirects are not followed: use the URL it points to)",
            _ => "",
        };
        Err(SinkError {
            kind,
            message: format!("POST {} answered {status}{hint}: {excerpt}", self.shown),
            retry_after: wait.filter(|_| kind != ErrorKind::Permanent),
        })
    }

    fn describe(&self) -> String {
        format!("webhook {}", self.shown)
    }
}

/// Whose failure a non-2xx answer is.
///
/// - [`ErrorKind::Unavailable`], the endpoint's trouble, fixed without touching the event:
///   refused credentials or permission (401, 403, 407, 511), no webhook there (404, 405, 410,
///   a redirect), timeouts and throttling (408, 429), a gateway or server that is down or
///   misconfigured (501, 502, 503, 504, 505, 507), and requests this relay would always
///   send wrong (411, 414, 426).
/// - [`ErrorKind::Permanent`], this request will never be accepted: every other 4xx, e.g. 400,
///   413, 415, 422, 431.
/// - [`ErrorKind::Retryable`], an answer about this request that may change: 409, 423, 425, 500
///   and the other 5xx.
pub fn classify(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        300..=399 => ErrorKind::Unavailable,
        401 | 403 | 404 | 405 | 407 | 408 | 410 | 411 | 414 | 426 | 429 => ErrorKind::Unavailable,
        409 | 423 | 425 => ErrorKind::Retryable,
        400..=499 => ErrorKind::Permanent,
        501..=505 | 507 | 511 => ErrorKind::Unavailable,
        _ => ErrorKind::Retryable,
    }
}

/// What went wrong, without the URL (reqwest's own message prints it, with any credentials).
fn describe_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "failed"
    };
    let mut innermost = None;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        innermost = Some(c.to_string());
        cause = c.source();
    }
    match innermost {
        Some(c) if !c.contains("://") => format!("{kind}: {c}"),
        _ => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_reference() {
        // The example from the Standard Webhooks specification's reference implementations.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let o = WebhookOptions {
            secret: Some("whsec_c2VjcmV0".into()),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn statuses_are_classified() {
        use ErrorKind::*;
        let kind = |code: u16| classify(StatusCode::from_u16(code).unwrap());
        for code in [
            301, 302, 307, 308, 401, 403, 404, 405, 407, 408, 410, 429, 502, 503, 504,
        ] {
            assert_eq!(kind(code), Unavailable, "{code}");
        }
        for code in [400, 406, 412, 413, 415, 422, 431, 451] {
            assert_eq!(kind(code), Permanent, "{code}");
        }
        for code in [409, 423, 425, 500, 506, 508, 599] {
            assert_eq!(kind(code), Retryable, "{code}");
        }
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    }
}
