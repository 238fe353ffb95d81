//! The Kafka sink's settings: [`KafkaOptions`] (config section `[kafka]`), the `kafka://` URL
//! whose query parameters override them, and the librdkafka producer configuration they make.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

/// Kafka settings (config section `[kafka]`; URL query parameters override them).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaOptions {
    /// Partitions of each topic the sink creates (URL `partitions`).
    pub partitions: i32,
    /// Replication factor of each topic the sink creates; `-1` leaves it to the broker's
    /// `default.replication.factor` (URL `replication_factor`).
    pub replication_factor: i32,
    /// Create a missing topic before the first publish to it (URL `create_topics`). Off: the
    /// topics must exist (or the broker auto-creates them).
    pub create_topics: bool,
    /// How long librdkafka may keep trying to deliver one message (`message.timeout.ms`)
    /// before the publish fails as unavailable and the event waits, uncounted
    /// (URL `message_timeout`).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub message_timeout: Duration,
    /// Extra librdkafka producer properties, e.g. `"linger.ms" = 10`,
    /// `"compression.type" = "lz4"`, `"security.protocol" = "sasl_plaintext"`,
    /// `"sasl.username"`…; they override the sink's defaults. Unknown properties are
    /// configuration errors.
    #[serde(deserialize_with = "properties")]
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            partitions: 3,
            replication_factor: -1,
            create_topics: true,
            message_timeout: Duration::from_secs(30),
            producer: BTreeMap::new(),
        }
    }
}

/// Producer properties as a TOML table whose values may be strings, numbers or booleans.
fn properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw: BTreeMap<String, Scalar> = serde::Deserialize::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// The sink's producer configuration: its defaults, then the user's properties.
pub(super) fn producer_config(bootstrap: &str, options: &KafkaOptions) -> ClientConfig {
    let timeout_ms = options.message_timeout.as_millis().min(i32::MAX as u128);
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "outbox-relay")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", timeout_ms.to_string())
        // A request to a broker that stopped answering fails within the message timeout.
        .set("request.timeout.ms", timeout_ms.min(30_000).to_string())
        .set("linger.ms", "5")
        // A broker closing an idle connection is no failure worth a warning.
        .set("log.connection.close", "false");
    for (k, v) in &options.producer {
        config.set(k, v);
    }
    config
}

pub(super) fn validate_options(o: &KafkaOptions) -> Result<(), crate::Error> {
    if o.partitions < 1 {
        return Err(crate::Error::Config(format!(
            "kafka.partitions must be at least 1, got {}",
            o.partitions
        )));
    }
    if o.replication_factor == 0 || o.replication_factor < -1 {
        return Err(crate::Error::Config(format!(
            "kafka.replication_factor must be at least 1, or -1 for the broker's default; got {}",
            o.replication_factor
        )));
    }
    if o.message_timeout < Duration::from_millis(10)
        || o.message_timeout > Duration::from_millis(i32::MAX as u64)
    {
        return Err(crate::Error::Config(format!(
            "kafka.message_timeout must be within 10ms..24d, got {:?}",
            o.message_timeout
        )));
    }
    Ok(())
}

/// A librdkafka configuration error, without property values (they may be secrets).
pub(super) fn config_error(e: &KafkaError) -> crate::Error {
    let text = match e {
        KafkaError::ClientConfig(_, description, key, _value) => {
            let secret = ["password", "secret", "token", "key"]
                .iter()
                .any(|s| key.to_ascii_lowercase().contains(s));
            if secret {
                format!("property {key:?}: invalid value (not shown)")
            } else {
                format!("property {key:?}: {description}")
            }
        }
        other => other.to_string(),
    };
    crate::Error::Config(format!("Kafka producer configuration: {text}"))
}

pub(super) struct KafkaUrl {
    pub(super) bootstrap: String,
    pub(super) query: Vec<(String, String)>,
}

pub(super) fn parse_url(url: &str) -> Result<KafkaUrl, crate::Error> {
    // Echo neither credentials nor query values (a librdkafka property may be a secret).
    let redacted = crate::redact_url(url.split('?').next().unwrap_or(url));
    let invalid = |why: &str| {
        crate::Error::Config(format!(
            "invalid Kafka URL {redacted}: {why} (e.g. kafka://127.0.0.1:9092 or \
             kafka://b1:9092,b2:9092?partitions=6)"
        ))
    };
    let rest = url
        .strip_prefix("kafka://")
        .ok_or_else(|| invalid("it must start with kafka://"))?;
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains('@') {
        return Err(invalid(
            "credentials do not go in the URL: set sasl.username and sasl.password in \
             [kafka.producer]",
        ));
    }
    if authority.contains('/') {
        return Err(invalid("it has no path"));
    }
    let mut brokers = Vec::new();
    for broker in authority.split(',') {
        let broker = broker.trim();
        if broker.is_empty() {
            return Err(invalid("it needs host:port for every broker"));
        }
        let has_port = match broker.rfind(':') {
            Some(i) => !broker.ends_with(']') && !broker[..i].ends_with(':'),
            None => false,
        };
        if has_port {
            let (host, port) = broker.rsplit_once(':').unwrap_or((broker, ""));
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid(&format!("{broker:?} is not host:port")));
            }
            brokers.push(broker.to_string());
        } else {
            brokers.push(format!("{broker}:9092"));
        }
    }
    let query = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Ok(KafkaUrl {
        bootstrap: brokers.join(","),
        query,
    })
}
