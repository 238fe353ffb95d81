//! `outbox relay --source cdc`: PostgreSQL logical replication of the outbox table, routed by
//! the relay's topic template and envelope, or by Debezium's outbox EventRouter options (from
//! `[cdc.event_router]` or a connector registration given with `--debezium-connector`).
//!
//! Precedence: flags (and their environment variables), then the connector file, then the
//! TOML file, then defaults. In particular `--database-url` / `DATABASE_URL` override the
//! connector's `database.*`.

use std::path::Path;

use outbox_relay::redact_url;
use outbox_relay::route::debezium::{Connector, EventRouterOptions};
use outbox_relay::sink;
use outbox_relay::source::cdc::{CdcOptions, CdcRelay, CdcRouting, TableName};
use outbox_relay::store::{ConnectOptions, Store};

use crate::cli::{Cli, RelayArgs};
use crate::config::FileConfig;
use crate::error::CliError;

/// Reads and checks a connector registration file.
pub fn load_connector(path: &Path) -> Result<Connector, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the connector file {}: {e}",
            path.display()
        ))
    })?;
    Connector::parse(&text)
        .map_err(|e| CliError::usage(format!("connector file {}: {e}", path.display())))
}

fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Everything the CDC relay needs, resolved.
pub struct CdcSettings {
    pub database_url: String,
    pub sink_url: String,
    pub sink_options: sink::SinkOptions,
    pub routing: CdcRouting,
    pub options: CdcOptions,
    /// Warnings about options read but not acted on.
    pub notes: Vec<String>,
}

pub fn settings(cli: &Cli, args: &RelayArgs, file: &FileConfig) -> Result<CdcSettings, CliError> {
    let base = super::relay::settings(args, file)?;
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

    // Routing: EventRouter options from the TOML section, overridden by the connector file's.
    let mut router_options: Option<EventRouterOptions> = None;
    if let Some(section) = &file.cdc.event_router {
        let pairs: Vec<(String, String)> = section
            .iter()
            .map(|(k, v)| (k.clone(), toml_text(v)))
            .collect();
        let (o, n) =
            EventRouterOptions::from_options(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
        None => CdcRouting::Router(base.router),
    };

    // The database: --database-url / DATABASE_URL, then the connector's database.*, then the
    // config file.
    let database_url = cli
        .database_url
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| connector.as_ref().and_then(|c| c.database_url.clone()))
        .or_else(|| file.database_url.clone().filter(|u| !u.is_empty()))
        .ok_or_else(|| {
            CliError::usage(
                "no database: pass --database-url, set DATABASE_URL, or give database.hostname \
                 and database.dbname in the connector file",
            )
        })?;

    if outbox_relay::store::Backend::from_url(&database_url)?
        == outbox_relay::store::Backend::Sqlite
    {
        return Err(CliError::usage(
            "--source cdc needs PostgreSQL (logical replication); use --source poll with SQLite",
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
        retry: base.config.retry,
        dead_letters_block: base.config.poll.dead_letters_block,
    };
    options.validate()?;
    Ok(CdcSettings {
        database_url,
        sink_url: base.sink_url,
        sink_options: base.sink_options,
        routing,
        options,
        notes,
    })
}

pub async fn run(cli: &Cli, args: &RelayArgs, file: &FileConfig) -> Result<(), CliError> {
    let s = settings(cli, args, file)?;
    for note in &s.notes {
        tracing::warn!("{note}");
    }
    let sink = sink::from_url(&s.sink_url, &s.sink_options).await?;
    let store = Store::connect(
        &s.database_url,
        &ConnectOptions {
            max_connections: 4,
            asynchronous_commit: true,
            ..ConnectOptions::default()
        },
    )
    .await?;
    tracing::info!(database = %redact_url(&s.database_url), "CDC source");
    let relay = CdcRelay::new(store, &s.database_url, sink, s.routing, s.options);
    relay.run(crate::signals::shutdown_token()).await?;
    let st = relay.stats().snapshot();
    tracing::info!(
        delivered = st.delivered,
        failed = st.failed,
        dead_lettered = st.dead_lettered,
        "relay finished"
    );
    Ok(())
}
