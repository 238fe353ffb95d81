//! One module per command; `run` resolves the command's settings (see `settings.rs`) and hands
//! them to it. No command uses another.

#[cfg(feature = "cdc")]
mod cdc;
mod cleanup;
mod console;
mod demo;
mod dlq;
mod migrate;
mod relay;
mod status;

use outbox_relay::store::{ConnectOptions, Store};

use crate::cli::{Cli, Command};
use crate::config::FileConfig;
use crate::error::CliError;
use crate::settings::{self, RelaySettings};

pub async fn run(cli: Cli, file: FileConfig) -> Result<(), CliError> {
    match &cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Migrate => migrate::run(&connect_creating(&cli, &file).await?).await,
        Command::Relay(args) => match settings::relay(&cli, args, &file)? {
            RelaySettings::Poll(s) => relay::run(s).await,
            #[cfg(feature = "cdc")]
            RelaySettings::Cdc(s) => cdc::run(s).await,
        },
        Command::Status(args) => {
            let max_retained_wal = settings::max_retained_wal(&file);
            status::run(&connect(&cli, &file).await?, args, max_retained_wal).await
        }
        Command::Dlq(cmd) => dlq::run(&connect(&cli, &file).await?, cmd).await,
        Command::Cleanup(args) => cleanup::run(&connect(&cli, &file).await?, args).await,
        Command::Console(args) => console::run(settings::console(&cli, args, &file)?).await,
    }
}

/// The configured database, with the two connections an administrative command needs.
async fn connect(cli: &Cli, file: &FileConfig) -> Result<Store, CliError> {
    open(cli, file, false).await
}

/// Like [`connect`], creating a missing SQLite file (`outbox migrate` makes the database).
async fn connect_creating(cli: &Cli, file: &FileConfig) -> Result<Store, CliError> {
    open(cli, file, true).await
}

async fn open(cli: &Cli, file: &FileConfig, create_sqlite_file: bool) -> Result<Store, CliError> {
    let url = settings::database_url(cli, file)?;
    let options = ConnectOptions {
        max_connections: 2,
        create_sqlite_file,
        ..ConnectOptions::default()
    };
    Ok(Store::connect(&url, &options).await?)
}
