//! Settings: every value a command runs with, resolved once, here, before the command starts.
//!
//! Precedence: flags (and their environment variables, which clap reads), then the TOML file
//! given with `--config`, then defaults. The CDC source also reads a Debezium connector
//! registration (`--debezium-connector`), which sits between the flags and the TOML file; in
//! particular `--database-url` / `DATABASE_URL` override the connector's `database.*`.
//! Commands take the resolved settings and resolve nothing themselves.

use std::net::SocketAddr;

use outbox_relay::route::{Envelope, Template};
use outbox_relay::sink::{self, SinkOptions};
use outbox_relay::source::poll::PollOptions;
use outbox_relay::{RelayConfig, RetryPolicy, Router};

use crate::cli::{Cli, OnDeadLetter, OnPublish, RelayArgs, SourceKind};
use crate::config::FileConfig;
use crate::error::CliError;

/// The database URL from `--database-url`, `DATABASE_URL` or the config file.
pub fn database_url(cli: &Cli, file: &FileConfig) -> Result<String, CliError> {
    cli.database_url
        .clone()
        .or_else(|| file.database_url.clone())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            CliError::usage(
                "no database: pass --database-url or set DATABASE_URL \
                 (postgres://user@host/db or sqlite:path.db)",
            )
        })
}

/// What `outbox relay` runs: the polling relay or the CDC relay, with its settings.
// Resolved once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum RelaySettings {
    /// `--source poll`.
    Poll(PollSettings),
    /// `--source cdc`.
    #[cfg(feature = "cdc")]
    Cdc(CdcSettings),
}

/// Where events go.
pub struct SinkSettings {
    /// `--sink`, `OUTBOX_SINK` or `relay.sink`.
    pub url: String,
    /// The sinks' sections of the config file (`[nats]`, `[kafka]`…), with `--nats-stream`.
    pub options: SinkOptions,
}

/// Everything the polling relay needs.
pub struct PollSettings {
    pub database_url: String,
    /// `--listen`, `OUTBOX_LISTEN` or `[http] listen`.
    pub listen: Option<SocketAddr>,
    /// `--console-token` or `OUTBOX_CONSOLE_TOKEN`: the web console's actions need it.
    pub console_token: Option<String>,
    pub sink: SinkSettings,
    pub router: Router,
    pub config: RelayConfig,
    /// `--allow-with-cdc`: poll a table that CDC reads.
    pub allow_with_cdc: bool,
}

/// Resolves `outbox relay`'s settings for the source `--source` / `relay.source` names.
pub fn relay(cli: &Cli, args: &RelayArgs, file: &FileConfig) -> Result<RelaySettings, CliError> {
    let source = source_kind(args, file)?;
    if source == SourceKind::Poll && args.debezium_connector.is_some() {
        return Err(CliError::usage(
            "--debezium-connector configures the CDC source: add --source cdc (the polling \
             source reads the outbox table's contract columns and routes with --topic, --key \
             and --envelope)",
        ));
    }
    if source == SourceKind::Cdc {
        #[cfg(feature = "cdc")]
        return cdc(cli, args, file).map(RelaySettings::Cdc);
        #[cfg(not(feature = "cdc"))]
        return Err(CliError::usage(
            "this build has no CDC source (cargo feature cdc); use --source poll",
        ));
    }
    let sink = sink_settings(args, file)?;
    let router = router(args, file)?;
    let config = relay_config(args, file)?;
    Ok(RelaySettings::Poll(PollSettings {
        database_url: database_url(cli, file)?,
        listen: listen(args, file)?,
        console_token: args.console.token.clone(),
        sink,
        router,
        config,
        allow_with_cdc: args.allow_with_cdc,
    }))
}

/// The HTTP listener's address from `--listen`, `OUTBOX_LISTEN` or `[http] listen`.
fn listen(args: &RelayArgs, file: &FileConfig) -> Result<Option<SocketAddr>, CliError> {
    args.listen
        .as_deref()
        .or(file.http.listen.as_deref())
        .filter(|a| !a.trim().is_empty())
        .map(crate::server::parse_listen)
        .transpose()
}

/// The source from `--source`, `OUTBOX_SOURCE` or `relay.source`.
fn source_kind(args: &RelayArgs, file: &FileConfig) -> Result<SourceKind, CliError> {
    match (args.source, file.relay.source.as_deref()) {
        (Some(s), _) => Ok(s),
        (None, None | Some("poll")) => Ok(SourceKind::Poll),
        (None, Some("cdc")) => Ok(SourceKind::Cdc),
        (None, Some(other)) => Err(CliError::usage(format!(
            "config relay.source = {other:?}: use \"poll\" or \"cdc\""
        ))),
    }
}

/// The sink: its URL and its options.
fn sink_settings(args: &RelayArgs, file: &FileConfig) -> Result<SinkSettings, CliError> {
    Ok(SinkSettings {
        url: sink_url(args, file)?,
        options: sink_options(args, file),
    })
}

/// The sink URL from `--sink`, `OUTBOX_SINK` or `relay.sink`.
fn sink_url(args: &RelayArgs, file: &FileConfig) -> Result<String, CliError> {
    args.sink
        .clone()
        .or_else(|| file.relay.sink.clone())
        .ok_or_else(|| {
            CliError::usage(format!(
                "no sink: pass --sink URL or set OUTBOX_SINK ({})",
                sink::supported_schemes().join(", ")
            ))
        })
}

/// The envelope, topic and key templates.
fn router(args: &RelayArgs, file: &FileConfig) -> Result<Router, CliError> {
    let envelope_name = args
        .envelope
        .as_deref()
        .or(file.relay.envelope.as_deref())
        .unwrap_or("default");
    let mut envelope = Envelope::parse(envelope_name).map_err(CliError::usage)?;
    if let Some(source) = &file.relay.cloudevents_source {
        envelope = envelope.with_source(source);
    }
    let topic = args
        .topic
        .as_deref()
        .or(file.relay.topic.as_deref())
        .unwrap_or(envelope.default_topic());
    let topic = Template::parse(topic).map_err(|e| CliError::usage(format!("--topic: {e}")))?;
    let mut router = Router::new(topic, envelope);
    if let Some(key) = args.key.as_deref().or(file.relay.key.as_deref()) {
        let key = Template::parse(key).map_err(|e| CliError::usage(format!("--key: {e}")))?;
        router = router.with_key(key);
    }
    Ok(router)
}

/// Claiming, retries and dead letters, validated.
fn relay_config(args: &RelayArgs, file: &FileConfig) -> Result<RelayConfig, CliError> {
    let on_dead_letter = match (args.on_dead_letter, file.relay.on_dead_letter.as_deref()) {
        (Some(m), _) => m,
        (None, None | Some("wait")) => OnDeadLetter::Wait,
        (None, Some("proceed")) => OnDeadLetter::Proceed,
        (None, Some(other)) => {
            return Err(CliError::usage(format!(
                "config relay.on_dead_letter = {other:?}: use \"wait\" or \"proceed\""
            )))
        }
    };
    let defaults = RelayConfig::default();
    let retry_defaults = RetryPolicy::default();
    let config = RelayConfig {
        poll: PollOptions {
            batch_size: args
                .batch_size
                .or(file.relay.batch_size)
                .unwrap_or(defaults.poll.batch_size),
            max_batch_bytes: max_buffer_bytes(args, file, None, defaults.poll.max_batch_bytes)?,
            poll_interval: args
                .poll_interval
                .or(file.relay.poll_interval)
                .unwrap_or(defaults.poll.poll_interval),
            dead_letters_block: on_dead_letter == OnDeadLetter::Wait,
            delete_published: match args.on_publish.or(file.relay.on_publish) {
                Some(OnPublish::Delete) => true,
                Some(OnPublish::Mark) | None => false,
            },
        },
        workers: args
            .workers
            .or(file.relay.workers)
            .unwrap_or(defaults.workers),
        max_in_flight: file.relay.max_in_flight.unwrap_or(defaults.max_in_flight),
        retry: RetryPolicy {
            base: args
                .backoff_base
                .or(file.retry.base)
                .unwrap_or(retry_defaults.base),
            max: args
                .backoff_max
                .or(file.retry.max)
                .unwrap_or(retry_defaults.max),
            max_attempts: args
                .max_attempts
                .or(file.retry.max_attempts)
                .unwrap_or(retry_defaults.max_attempts),
            jitter: file.retry.jitter.unwrap_or(retry_defaults.jitter),
        },
    };
    config.validate()?;
    Ok(config)
}

/// `--max-buffer-bytes`, then the source's section (`[cdc]`), then `[relay]`, then `default`;
/// more than zero.
fn max_buffer_bytes(
    args: &RelayArgs,
    file: &FileConfig,
    section: Option<bytesize::ByteSize>,
    default: u64,
) -> Result<u64, CliError> {
    let bytes = args
        .max_buffer_bytes
        .or(section)
        .or(file.relay.max_buffer_bytes)
        .map_or(default, |b| b.as_u64());
    if bytes == 0 {
        return Err(CliError::usage(
            "max_buffer_bytes must be greater than zero",
        ));
    }
    Ok(bytes)
}

/// The sinks' options: the config file's sections, `--nats-stream` over `[nats] stream`.
#[cfg_attr(not(feature = "nats"), allow(unused_variables))]
fn sink_options(args: &RelayArgs, file: &FileConfig) -> SinkOptions {
    SinkOptions {
        #[cfg(feature = "nats")]
        nats: {
            let mut nats = file.nats.clone();
            if let Some(s) = &args.nats_stream {
                nats.stream = s.clone();
            }
            nats
        },
        #[cfg(feature = "kafka")]
        kafka: file.kafka.clone(),
        #[cfg(feature = "amqp")]
        amqp: file.amqp.clone(),
        #[cfg(feature = "redis")]
        redis: file.redis.clone(),
        #[cfg(feature = "mqtt")]
        mqtt: file.mqtt.clone(),
        #[cfg(feature = "http")]
        http: file.http.webhook.clone(),
    }
}

#[cfg(feature = "cdc")]
pub use cdc_settings::{cdc, CdcSettings};

/// The CDC source's settings: `[cdc]`, the connector file, the routing.
#[cfg(feature = "cdc")]
mod cdc_settings {
    use std::path::Path;

    use outbox_relay::route::debezium::EventRouterOptions;
    use outbox_relay::source::cdc::Connector;
    use outbox_relay::source::cdc::{CdcOptions, CdcRouting, TableName};

    use super::{listen, max_buffer_bytes, relay_config, router, sink_settings, SinkSettings};
    use crate::cli::{Cli, RelayArgs};
    use crate::config::FileConfig;
    use crate::error::CliError;

    /// Everything the CDC relay needs, resolved.
    pub struct CdcSettings {
        pub database_url: String,
        /// `--listen`, `OUTBOX_LISTEN` or `[http] listen`.
        pub listen: Option<std::net::SocketAddr>,
        /// `--console-token` or `OUTBOX_CONSOLE_TOKEN`: the web console's actions need it.
        pub console_token: Option<String>,
        pub sink: SinkSettings,
        pub routing: CdcRouting,
        pub options: CdcOptions,
        /// Warnings about options read but not acted on.
        pub notes: Vec<String>,
    }

    /// Reads and checks a connector registration file.
    fn load_connector(path: &Path) -> Result<Connector, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::usage(format!(
                "cannot read the connector file {}: {e}",
                path.display()
            ))
        })?;
        Connector::parse(&text)
            .map_err(|e| CliError::usage(format!("connector file {}: {e}", path.display())))
    }

    /// A `[cdc.event_router]` value as Debezium's option text (strings without quotes).
    fn toml_text(v: &toml::Value) -> String {
        match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// Resolves the CDC relay's settings: the polling relay's sink, routing and retry
    /// settings, then the connector file and `[cdc]`.
    pub fn cdc(cli: &Cli, args: &RelayArgs, file: &FileConfig) -> Result<CdcSettings, CliError> {
        let sink = sink_settings(args, file)?;
        let router = router(args, file)?;
        let config = relay_config(args, file)?;
        if args.on_publish.is_some() || file.relay.on_publish.is_some() {
            return Err(CliError::usage(
                "--on-publish applies to the polling source: the CDC relay never changes \
                 delivered rows",
            ));
        }
        let connector = match &args.debezium_connector {
            Some(path) => Some(load_connector(path)?),
            None => None,
        };
        let mut notes = Vec::new();

        // Routing: EventRouter options from the TOML section, overridden by the connector
        // file's.
        let mut router_options: Option<EventRouterOptions> = None;
        if let Some(section) = &file.cdc.event_router {
            let pairs: Vec<(String, String)> = section
                .iter()
                .map(|(k, v)| (k.clone(), toml_text(v)))
                .collect();
            let (o, n) = EventRouterOptions::from_options(
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .map_err(|e| CliError::usage(format!("config [cdc.event_router]: {e}")))?;
            if connector.is_none() {
                router_options = Some(o);
                notes.extend(n);
            }
        }
        if let Some(c) = &connector {
            router_options = Some(c.router.clone());
            notes.extend(c.notes.iter().cloned());
        }
        let routing = match router_options {
            Some(o) => {
                let routed_flags = [
                    (
                        "--envelope",
                        args.envelope.is_some() || file.relay.envelope.is_some(),
                    ),
                    (
                        "--topic",
                        args.topic.is_some() || file.relay.topic.is_some(),
                    ),
                    ("--key", args.key.is_some() || file.relay.key.is_some()),
                ];
                if let Some((flag, _)) = routed_flags.iter().find(|(_, set)| *set) {
                    return Err(CliError::usage(format!(
                        "{flag} does not apply with Debezium EventRouter options: \
                         route.topic.replacement and table.field.event.key decide"
                    )));
                }
                CdcRouting::EventRouter(o)
            }
            None => CdcRouting::Router(router),
        };

        // The database: --database-url / DATABASE_URL, then the connector's database.*, then
        // the config file.
        let database_url = cli
            .database_url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| connector.as_ref().and_then(|c| c.database_url.clone()))
            .or_else(|| file.database_url.clone().filter(|u| !u.is_empty()))
            .ok_or_else(|| {
                CliError::usage(
                    "no database: pass --database-url, set DATABASE_URL, or give \
                     database.hostname and database.dbname in the connector file",
                )
            })?;

        if outbox_relay::store::Backend::from_url(&database_url)?
            == outbox_relay::store::Backend::Sqlite
        {
            return Err(CliError::usage(
                "--source cdc needs PostgreSQL (logical replication); use --source poll with \
                 SQLite",
            ));
        }

        let defaults = CdcOptions::default();
        let tables = match (&connector, &file.cdc.table) {
            (Some(c), _) if !c.tables.is_empty() => c
                .tables
                .iter()
                .map(|t| TableName::parse(t))
                .collect::<Result<Vec<_>, _>>()?,
            (_, Some(t)) => vec![TableName::parse(t)?],
            _ => defaults.tables.clone(),
        };
        let options = CdcOptions {
            slot: args
                .slot
                .clone()
                .or_else(|| connector.as_ref().map(|c| c.slot.clone()))
                .or_else(|| file.cdc.slot.clone())
                .unwrap_or(defaults.slot),
            publication: args
                .publication
                .clone()
                .or_else(|| connector.as_ref().map(|c| c.publication.clone()))
                .or_else(|| file.cdc.publication.clone())
                .unwrap_or(defaults.publication),
            tables,
            create_publication: connector.as_ref().map_or(true, |c| c.create_publication)
                && file.cdc.create_publication.unwrap_or(true),
            create_slot: file.cdc.create_slot.unwrap_or(defaults.create_slot),
            heartbeat_interval: connector
                .as_ref()
                .and_then(|c| c.heartbeat)
                .or(file.cdc.heartbeat_interval)
                .unwrap_or(defaults.heartbeat_interval),
            status_interval: file.cdc.status_interval.unwrap_or(defaults.status_interval),
            standby: file.cdc.standby.unwrap_or(defaults.standby),
            standby_poll: defaults.standby_poll,
            lag_log_interval: file
                .cdc
                .lag_log_interval
                .unwrap_or(defaults.lag_log_interval),
            batch_size: args
                .batch_size
                .or(file.cdc.batch_size)
                .unwrap_or(defaults.batch_size),
            max_in_flight: file.relay.max_in_flight.unwrap_or(defaults.max_in_flight),
            max_buffered: file.cdc.max_buffered.unwrap_or(defaults.max_buffered),
            max_buffer_bytes: max_buffer_bytes(
                args,
                file,
                file.cdc.max_buffer_bytes,
                defaults.max_buffer_bytes,
            )?,
            max_retained_wal: super::max_retained_wal(file),
            retry: config.retry,
            dead_letters_block: config.poll.dead_letters_block,
        };
        options.validate()?;
        Ok(CdcSettings {
            database_url,
            listen: listen(args, file)?,
            console_token: args.console.token.clone(),
            sink,
            routing,
            options,
            notes,
        })
    }
}

/// What `outbox console` needs.
pub struct ConsoleSettings {
    pub database_url: String,
    /// `--listen` or `OUTBOX_CONSOLE_LISTEN` [default: 127.0.0.1:8080].
    pub listen: SocketAddr,
    /// `--console-token` or `OUTBOX_CONSOLE_TOKEN`.
    pub token: Option<String>,
    /// `--topic`, `[relay] topic`, else the default envelope's: what the counts per topic
    /// are grouped by.
    pub topic: Template,
}

/// Resolves `outbox console`'s settings.
pub fn console(
    cli: &Cli,
    args: &crate::cli::ConsoleArgs,
    file: &FileConfig,
) -> Result<ConsoleSettings, CliError> {
    Ok(ConsoleSettings {
        database_url: database_url(cli, file)?,
        listen: crate::server::parse_listen(&args.listen)?,
        token: args.console.token.clone(),
        topic: Template::parse(
            args.topic
                .as_deref()
                .or(file.relay.topic.as_deref())
                .unwrap_or(Envelope::Reference.default_topic()),
        )
        .map_err(|e| CliError::usage(format!("--topic: {e}")))?,
    })
}

/// The retained-WAL warning threshold: `[cdc] max_retained_wal`, else 1 GiB. The CDC relay warns
/// past it, and `outbox status` flags slots past it.
pub fn max_retained_wal(file: &FileConfig) -> u64 {
    file.cdc.max_retained_wal.map_or(
        outbox_relay::store::replication::DEFAULT_MAX_RETAINED_WAL,
        |b| b.as_u64(),
    )
}
