//! The RabbitMQ sink's settings: [`AmqpOptions`] (config section `[amqp]`) and the `amqp://` /
//! `amqps://` URL, whose query parameters override them.

use std::time::Duration;

use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};

use crate::urls::{apply_params, percent_decode};

/// RabbitMQ (AMQP 0.9.1) settings (config section `[amqp]`; URL query parameters of the same
/// names override them).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpOptions {
    /// Exchange template: `{topic}`, `{aggregate_type}`, `{aggregate_id}`, `{event_type}` and the
    /// `:lower` / `:upper` filters. `""` is the default exchange (routing key = queue name).
    pub exchange: String,
    /// Routing key template, same placeholders. Default `{topic}`.
    pub routing_key: String,
    /// Declare each exchange the sink publishes to (durable, of `exchange_type`) when missing.
    /// Built-in `amq.*` exchanges and the default exchange are never declared.
    pub declare_exchange: bool,
    /// Type of the declared exchange: `topic`, `direct`, `fanout`, `headers` (or a plugin's).
    pub exchange_type: String,
    /// Publish `mandatory`: a message no queue is bound for is returned and fails ("unroutable",
    /// retried, then dead-lettered). `false` lets RabbitMQ drop such messages silently.
    pub mandatory: bool,
    /// Channels the publishes are spread over (round robin), each with a task of its own.
    pub channels: usize,
    /// Publishes awaiting their publisher confirm on one channel at most; a publish waits for
    /// room beyond that. In flight at once: `channels × max_unconfirmed`.
    pub max_unconfirmed: usize,
    /// How long to wait for a publisher confirm before the attempt fails (retryable).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub confirm_timeout: Duration,
    /// How long to wait for a connection (and a new channel) before the attempt fails.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub connect_timeout: Duration,
    /// Largest message body accepted, in bytes; a larger one is dead-lettered at once. RabbitMQ
    /// refuses bodies over its `max_message_size` (16 MiB by default since 4.0, 128 MiB before).
    pub max_message_size: usize,
    /// `amqps://` only: a PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            exchange: "outbox".into(),
            routing_key: "{topic}".into(),
            declare_exchange: true,
            exchange_type: "topic".into(),
            mandatory: true,
            channels: 4,
            max_unconfirmed: 512,
            confirm_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_message_size: 16 * 1024 * 1024,
            ca_file: None,
        }
    }
}

/// Splits `url` into lapin's URI and the effective options.
pub(super) fn parse_url(
    url: &str,
    options: &AmqpOptions,
) -> Result<(AMQPUri, AmqpOptions), crate::Error> {
    let redacted = crate::redact_url(url);
    let bad = |why: String| crate::Error::Config(format!("invalid AMQP URL {redacted}: {why}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let scheme = match parsed.scheme() {
        "amqp" => AMQPScheme::AMQP,
        "amqps" => AMQPScheme::AMQPS,
        other => return Err(bad(format!("scheme {other:?} is not amqp or amqps"))),
    };
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("it needs a host, e.g. amqp://guest:guest@127.0.0.1:5672/%2f".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port().unwrap_or(if scheme == AMQPScheme::AMQPS {
        5671
    } else {
        5672
    });
    let decode = |s: &str, what: &str| {
        percent_decode(s).ok_or_else(|| bad(format!("the {what} is not valid percent-encoding")))
    };
    let mut userinfo = AMQPUserInfo::default();
    if !parsed.username().is_empty() {
        userinfo.username = decode(parsed.username(), "user name")?;
    }
    if let Some(p) = parsed.password() {
        userinfo.password = decode(p, "password")?;
    }
    // `amqp://host` and `amqp://host/` both mean the default vhost `/` (an empty vhost name
    // is never what is meant); `/%2f` is `/` too, `/shop` is `shop`.
    let vhost = match parsed.path() {
        "" | "/" => "/".to_string(),
        path => decode(&path[1..], "vhost")?,
    };
    let mut options = options.clone();
    let mut query = AMQPQueryString::default();
    let known = "exchange, routing_key, exchange_type, declare_exchange, mandatory, channels, \
                 max_unconfirmed, confirm_timeout, connect_timeout, max_message_size, ca_file, heartbeat, \
                 frame_max, channel_max, auth_mechanism";
    apply_params(parsed.query_pairs(), known, bad, |p| {
        let int = || p.number::<u64>("a whole number");
        match p.name {
            "exchange" => options.exchange = p.text(),
            "routing_key" => options.routing_key = p.text(),
            "exchange_type" => options.exchange_type = p.text(),
            "declare_exchange" => options.declare_exchange = p.boolean()?,
            "mandatory" => options.mandatory = p.boolean()?,
            "channels" => options.channels = int()? as usize,
            "max_unconfirmed" => options.max_unconfirmed = int()? as usize,
            "max_message_size" => options.max_message_size = int()? as usize,
            "ca_file" => options.ca_file = Some(p.text().into()),
            "confirm_timeout" => options.confirm_timeout = p.duration()?,
            "connect_timeout" => options.connect_timeout = p.duration()?,
            "heartbeat" => {
                let n =
                    u16::try_from(int()?).map_err(|_| "heartbeat is at most 65535 (seconds)")?;
                query.heartbeat = Some(n)
            }
            "frame_max" => {
                query.frame_max = Some(u32::try_from(int()?).map_err(|_| "frame_max is too large")?)
            }
            "channel_max" => {
                let n = u16::try_from(int()?).map_err(|_| "channel_max is at most 65535")?;
                query.channel_max = Some(n)
            }
            "auth_mechanism" => {
                let m = p.value.parse::<SASLMechanism>();
                query.auth_mechanism = Some(m.map_err(|e| format!("auth_mechanism: {e}"))?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if options.ca_file.is_some() && scheme != AMQPScheme::AMQPS {
        return Err(bad("ca_file applies to amqps:// only".into()));
    }
    if options.channels == 0 {
        return Err(crate::Error::Config(
            "amqp.channels must be at least 1".into(),
        ));
    }
    if options.max_unconfirmed == 0 {
        return Err(crate::Error::Config(
            "amqp.max_unconfirmed must be at least 1".into(),
        ));
    }
    if options.channels > u16::MAX as usize {
        return Err(crate::Error::Config(
            "amqp.channels must be at most 65535 (RabbitMQ allows 2047 by default)".into(),
        ));
    }
    if options.confirm_timeout.is_zero() || options.connect_timeout.is_zero() {
        return Err(crate::Error::Config(
            "amqp.confirm_timeout and amqp.connect_timeout must be more than 0".into(),
        ));
    }
    let uri = AMQPUri {
        scheme,
        authority: AMQPAuthority {
            userinfo,
            host,
            port,
        },
        vhost,
        query,
    };
    Ok((uri, options))
}
