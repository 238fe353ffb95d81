//! Configuration: flags, then environment variables, then the TOML file given with `--config`,
//! then defaults. Unknown keys in the file are errors, so a typo never silently does nothing.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::CliError;

/// The TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub database_url: Option<String>,
    #[serde(default)]
    pub relay: RelaySection,
    #[serde(default)]
    pub retry: RetrySection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    #[cfg_attr(not(feature = "cdc"), allow(dead_code))]
    pub cdc: CdcSection,
    #[cfg(feature = "nats")]
    #[serde(default)]
    pub nats: outbox_relay::sink::nats::NatsOptions,
    #[cfg(feature = "kafka")]
    #[serde(default)]
    pub kafka: outbox_relay::sink::kafka::KafkaOptions,
    #[cfg(feature = "amqp")]
    #[serde(default)]
    pub amqp: outbox_relay::sink::amqp::AmqpOptions,
    #[cfg(feature = "redis")]
    #[serde(default)]
    pub redis: outbox_relay::sink::redis_streams::RedisOptions,
    #[cfg(feature = "mqtt")]
    #[serde(default)]
    pub mqtt: outbox_relay::sink::mqtt::MqttOptions,
    #[serde(default)]
    pub http: HttpSection,
}

/// `[http]`: the relay's own HTTP listener (`listen`) and the webhook sink's options (the
/// other keys, read by [`WebhookOptions`](outbox_relay::sink::webhook::WebhookOptions), which
/// refuses unknown ones).
#[derive(Debug, Default)]
pub struct HttpSection {
    /// Serve /metrics, /healthz and /readyz on this address.
    pub listen: Option<String>,
    /// The webhook sink's options.
    #[cfg(feature = "http")]
    pub webhook: outbox_relay::sink::webhook::WebhookOptions,
}

impl<'de> Deserialize<'de> for HttpSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(d)?;
        let listen = match table.remove("listen") {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "[http] listen = {other}: expected an address such as \"0.0.0.0:9090\""
                )))
            }
        };
        #[cfg(feature = "http")]
        let webhook = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| D::Error::custom(format!("[http] {}", e.message())))?;
        #[cfg(not(feature = "http"))]
        if let Some(key) = table.keys().next() {
            return Err(D::Error::custom(format!(
                "[http] {key}: unknown key (this build has no webhook sink; only listen is read)"
            )));
        }
        Ok(HttpSection {
            listen,
            #[cfg(feature = "http")]
            webhook,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    pub source: Option<String>,
    pub sink: Option<String>,
    pub envelope: Option<String>,
    pub topic: Option<String>,
    pub key: Option<String>,
    pub batch_size: Option<usize>,
    pub workers: Option<usize>,
    pub max_in_flight: Option<usize>,
    /// Most bytes of events held in memory, e.g. `"64 MiB"` (a polled batch stops there).
    pub max_buffer_bytes: Option<bytesize::ByteSize>,
    #[serde(
        default,
        deserialize_with = "outbox_relay::duration::deserialize_option"
    )]
    pub poll_interval: Option<Duration>,
    pub on_dead_letter: Option<String>,
    pub on_publish: Option<crate::cli::OnPublish>,
    pub cloudevents_source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    #[serde(
        default,
        deserialize_with = "outbox_relay::duration::deserialize_option"
    )]
    pub base: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "outbox_relay::duration::deserialize_option"
    )]
    pub max: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub jitter: Option<f64>,
}

/// `[cdc]`: the CDC source (`relay.source = "cdc"`).
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(not(feature = "cdc"), allow(dead_code))]
#[serde(deny_unknown_fields)]
pub struct CdcSection {
    /// Logical replication slot (created when missing).
    pub slot: Option<String>,
    /// Publication (created when missing).
    pub publication: Option<String>,
    /// Captured table, `schema.table` [default: public.outbox].
    pub table: Option<String>,
    /// Create the slot when it is missing [default: true].
    pub create_slot: Option<bool>,
    /// Create the publication when it is missing [default: true].
    pub create_publication: Option<bool>,
    /// Heartbeat after this long without changes [default: 10s].
    #[serde(
        default,
        deserialize_with = "outbox_relay::duration::deserialize_option"
    )]
    pub heartbeat_interval: Option<Duration>,
    /// Longest wait before a confirmed position reaches the server [default: 1s].
    #[serde(
        default,
        deserialize_with = "outbox_relay::duration::deserialize_option"
    )]
    pub status_interval: Option<Duration>,
    /// How often the replication lag is logged [default: 60s].
    #[serde(
        default,
        deserialize_with = "outbox_relay::duration::deserialize_option"
    )]
    pub lag_log_interval: Option<Duration>,
    /// Stand by while another relay holds the slot (true) or exit with an error [default: true].
    pub standby: Option<bool>,
    /// Events per delivery round [default: 4096].
    pub batch_size: Option<usize>,
    /// Events held in memory before the stream is paused [default: 65536].
    pub max_buffered: Option<usize>,
    /// Bytes of events held in memory before the relay reads no further from the slot, e.g.
    /// `"64 MiB"` [default: `[relay] max_buffer_bytes`, else 64 MiB].
    pub max_buffer_bytes: Option<bytesize::ByteSize>,
    /// Warn when the slot retains more WAL than this, e.g. `"512 MiB"` or a number of bytes
    /// [default: 1 GiB]. `outbox status` uses it too.
    pub max_retained_wal: Option<bytesize::ByteSize>,
    /// Debezium outbox EventRouter options by their Debezium names, e.g.
    /// `"route.by.field" = "aggregate_type"`. When present, rows are routed as Debezium does.
    pub event_router: Option<std::collections::BTreeMap<String, toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub level: Option<String>,
    pub format: Option<String>,
}

impl FileConfig {
    /// Reads the file, or an empty configuration when no file is given.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, CliError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::usage(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            CliError::usage(format!(
                "config file {}: {}",
                path.display(),
                describe(&e, &text)
            ))
        })
    }
}

/// A TOML error as one line: the parser's message and where, but never the offending line
/// itself (it may hold a password), and with URLs in the message redacted (serde quotes the
/// rejected value).
fn describe(e: &toml::de::Error, text: &str) -> String {
    let message = e
        .message()
        .split_whitespace()
        .map(|word| {
            let bare = word.trim_matches(|c: char| "\"'`,".contains(c));
            if bare.contains("://") || bare.to_ascii_lowercase().contains("password") {
                word.replace(bare, &outbox_relay::redact_url(bare))
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let c: FileConfig = toml::from_str(
            r#"
            database_url = "postgres://localhost/app"
            [relay]
            sink = "nats://127.0.0.1:4222"
            batch_size = 200
            poll_interval = "250ms"
            on_dead_letter = "proceed"
            [retry]
            base = "2s"
            max = "1m"
            max_attempts = 4
            [nats]
            stream = "EVENTS"
            subjects = ["order-events"]
            "#,
        )
        .unwrap();
        assert_eq!(c.relay.batch_size, Some(200));
        assert_eq!(c.relay.poll_interval, Some(Duration::from_millis(250)));
        assert_eq!(c.retry.max, Some(Duration::from_secs(60)));
        #[cfg(feature = "nats")]
        {
            assert_eq!(c.nats.subjects, vec!["order-events"]);
            assert_eq!(c.nats.stream, "EVENTS");
        }
    }

    #[test]
    fn parses_the_cdc_section() {
        let c: FileConfig = toml::from_str(
            r#"
            [relay]
            source = "cdc"
            [cdc]
            slot = "orders_slot"
            heartbeat_interval = "5s"
            standby = false
            [cdc.event_router]
            "route.by.field" = "aggregate_type"
            "table.expand.json.payload" = true
            "#,
        )
        .unwrap();
        assert_eq!(c.cdc.slot.as_deref(), Some("orders_slot"));
        assert_eq!(c.cdc.heartbeat_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.cdc.standby, Some(false));
        let er = c.cdc.event_router.unwrap();
        assert_eq!(er["table.expand.json.payload"], toml::Value::Boolean(true));
        assert!(toml::from_str::<FileConfig>("[cdc]\nslots = \"x\"").is_err());
    }

    /// The README's configuration examples are real: every ```toml block parses.
    #[test]
    fn readme_examples_parse() {
        let readme = include_str!("../README.md");
        let mut blocks = 0;
        for block in readme.split("```toml").skip(1) {
            let text = block.split("```").next().unwrap_or_default();
            if let Err(e) = toml::from_str::<FileConfig>(text) {
                panic!("README example does not parse: {e}\n{text}");
            }
            blocks += 1;
        }
        assert!(blocks >= 2, "README has its configuration examples");
    }

    #[test]
    fn the_http_section_holds_the_listener_and_the_webhook_keys() {
        let c: FileConfig = toml::from_str(
            "[http]\nlisten = \"127.0.0.1:9090\"\nsecret = \"whsec_x\"\ntimeout = \"3s\"",
        )
        .unwrap();
        assert_eq!(c.http.listen.as_deref(), Some("127.0.0.1:9090"));
        #[cfg(feature = "http")]
        {
            assert_eq!(c.http.webhook.timeout, Duration::from_secs(3));
            assert_eq!(c.http.webhook.secret.as_deref(), Some("whsec_x"));
        }
        let c: FileConfig = toml::from_str("[http]\ntimeout = \"2s\"").unwrap();
        assert_eq!(c.http.listen, None);
        for bad in [
            "[http]\nlisten = 9090",
            "[http]\nlisen = \"x\"",
            "[http]\ntimeout = \"soon\"",
        ] {
            assert!(toml::from_str::<FileConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        assert!(toml::from_str::<FileConfig>("[relay]\nbatchsize = 3").is_err());
        let e = toml::from_str::<FileConfig>("[retry]\nbase = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("not a duration"));
    }
}
