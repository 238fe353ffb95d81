//! `outbox`: the command line over the `outbox` and `outbox-relay` crates.

mod cli;
mod commands;
mod config;
mod error;
mod server;
mod settings;
mod signals;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the relay allocates small, short-lived buffers per event on several threads, where
/// glibc's allocator showed up as a fifth of the relay's CPU time in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = match config::FileConfig::load(cli.config.as_deref()) {
        Ok(f) => f,
        Err(e) => return report(e),
    };
    init_logging(&cli, &file);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(error::CliError::runtime(format!(
                "cannot start the runtime: {e}"
            )))
        }
    };
    match runtime.block_on(commands::run(cli, file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

fn report(e: error::CliError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.code)
}

fn init_logging(cli: &Cli, file: &config::FileConfig) {
    let default = match cli.command {
        Command::Relay(_) => "info",
        // The demo prints its own progress and summary.
        Command::Demo(_) => "error",
        _ => "warn",
    };
    let level = cli
        .log_level
        .clone()
        .or_else(|| file.log.level.clone())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = cli.log_format == Some(LogFormat::Json)
        || (cli.log_format.is_none() && file.log.format.as_deref() == Some("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
