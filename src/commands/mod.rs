//! One module per command.

#[cfg(feature = "cdc")]
mod cdc;
mod cleanup;
mod demo;
mod dlq;
mod migrate;
mod relay;
mod status;

use outbox_relay::store::{ConnectOptions, Store};

use crate::cli::{Cli, Command};
use crate::config::FileConfig;
use crate::error::CliError;

pub async fn run(cli: Cli, file: FileConfig) -> Result<(), CliError> {
    match &cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Migrate => migrate::run(&connect(&cli, &file, 2).await?).await,
        Command::Relay(args) => relay::run(&cli, args, &file).await,
        Command::Status { json } => status::run(&connect(&cli, &file, 2).await?, *json).await,
        Command::Dlq(cmd) => dlq::run(&connect(&cli, &file, 2).await?, cmd).await,
        Command::Cleanup(args) => cleanup::run(&connect(&cli, &file, 2).await?, args).await,
    }
}

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

pub async fn connect(
    cli: &Cli,
    file: &FileConfig,
    max_connections: u32,
) -> Result<Store, CliError> {
    let url = database_url(cli, file)?;
    let options = ConnectOptions {
        max_connections,
        ..ConnectOptions::default()
    };
    Ok(Store::connect(&url, &options).await?)
}

/// Parses event or dead-letter ids given on the command line.
pub fn parse_ids(ids: &[String]) -> Result<Vec<uuid::Uuid>, CliError> {
    ids.iter()
        .map(|s| {
            uuid::Uuid::parse_str(s).map_err(|_| {
                CliError::usage(format!("{s:?} is not an id (a UUID such as 0190a6b2-…)"))
            })
        })
        .collect()
}
