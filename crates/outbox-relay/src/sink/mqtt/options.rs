//! The MQTT sink's settings: [`MqttOptions`] (config section `[mqtt]`) and the `mqtt://` /
//! `mqtts://` URL, whose query parameters override them.

use std::time::Duration;

use rumqttc::v5::MqttOptions as ClientOptions;

use crate::urls::{apply_params, percent_decode};

/// MQTT settings (config section `[mqtt]`; URL query parameters of the same names override them).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttOptions {
    /// How long to wait for the broker's `PUBACK` before the attempt fails (retryable).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub ack_timeout: Duration,
    /// How long a connection attempt may take (whole seconds, at least 1).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub connect_timeout: Duration,
    /// MQTT keep-alive: the client pings when idle this long (at least 5 s).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub keep_alive: Duration,
    /// Largest PUBLISH packet (topic, properties and payload), in bytes; a larger message is
    /// dead-lettered at once. The broker's announced maximum applies too, when smaller.
    pub max_packet_size: usize,
    /// Client identifier. Empty: `outbox-relay-<random>`. Must be unique per connection: a
    /// broker disconnects the older of two clients with the same id.
    pub client_id: String,
    /// Publish with the MQTT retain flag.
    pub retain: bool,
    /// Treat a `PUBACK` saying "no matching subscribers" as a failure (retryable), as AMQP's
    /// mandatory flag does. Off by default: MQTT brokers drop such messages by design.
    pub require_subscribers: bool,
    /// `mqtts://` only: a PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for MqttOptions {
    fn default() -> Self {
        MqttOptions {
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            max_packet_size: 1024 * 1024,
            client_id: String::new(),
            retain: false,
            require_subscribers: false,
            ca_file: None,
        }
    }
}

/// The client options, the effective sink options and `host:port`.
pub(super) fn parse_url(
    url: &str,
    options: &MqttOptions,
) -> Result<(ClientOptions, MqttOptions, String), crate::Error> {
    let redacted = crate::redact_url(url);
    let bad = |why: String| crate::Error::Config(format!("invalid MQTT URL {redacted}: {why}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let tls = match parsed.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(bad(format!("scheme {other:?} is not mqtt or mqtts"))),
    };
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("it needs a host, e.g. mqtt://127.0.0.1:1883".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
    if !matches!(parsed.path(), "" | "/") {
        return Err(bad(
            "an MQTT URL has no path (the topic comes from the topic template)".into(),
        ));
    }
    let mut options = options.clone();
    let known = "ack_timeout, connect_timeout, keep_alive, max_packet_size, client_id, retain, \
                 require_subscribers, ca_file";
    apply_params(parsed.query_pairs(), known, bad, |p| {
        match p.name {
            "ack_timeout" => options.ack_timeout = p.duration()?,
            "connect_timeout" => options.connect_timeout = p.duration()?,
            "keep_alive" => options.keep_alive = p.duration()?,
            "max_packet_size" => options.max_packet_size = p.number("a whole number")?,
            "client_id" => options.client_id = p.text(),
            "retain" => options.retain = p.boolean()?,
            "require_subscribers" => options.require_subscribers = p.boolean()?,
            "ca_file" => options.ca_file = Some(p.text().into()),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if options.keep_alive < Duration::from_secs(5) {
        return Err(crate::Error::Config(
            "mqtt.keep_alive must be at least 5s".into(),
        ));
    }
    if options.ack_timeout.is_zero() || options.connect_timeout.is_zero() {
        return Err(crate::Error::Config(
            "mqtt.ack_timeout and mqtt.connect_timeout must be more than 0".into(),
        ));
    }
    if options.ca_file.is_some() && !tls {
        return Err(bad("ca_file applies to mqtts:// only".into()));
    }
    if options.max_packet_size < 1024 {
        return Err(crate::Error::Config(
            "mqtt.max_packet_size must be at least 1024 bytes".into(),
        ));
    }
    let client_id = if options.client_id.is_empty() {
        format!("outbox-relay-{:016x}", fastrand::u64(..))
    } else {
        options.client_id.clone()
    };
    let mut client = ClientOptions::new(client_id, host.clone(), port);
    client
        .set_clean_start(true)
        .set_keep_alive(options.keep_alive)
        .set_connection_timeout(options.connect_timeout.as_secs_f64().ceil().max(1.0) as u64);
    if !parsed.username().is_empty() {
        let user = percent_decode(parsed.username())
            .ok_or_else(|| bad("the user name is not valid percent-encoding".into()))?;
        let password = percent_decode(parsed.password().unwrap_or(""))
            .ok_or_else(|| bad("the password is not valid percent-encoding".into()))?;
        client.set_credentials(user, password);
    }
    if tls {
        let config = crate::sink::tls::client_config(options.ca_file.as_deref())
            .map_err(|e| crate::Error::Config(format!("MQTT {redacted}: {e}")))?;
        client.set_transport(rumqttc::Transport::tls_with_config(config.into()));
    }
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((client, options, addr))
}
