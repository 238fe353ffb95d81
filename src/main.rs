//! `outbox`: the command line over the `outbox` and `outbox-relay` crates.

mod cli;
mod commands;
mod config;
mod error;
mod logging;
mod server;
mod settings;
mod signals;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the relay allocates small, short-lived buffers per event on several threads, where
/// glibc's allocator showed up as a fifth of the relay's CPU time in profiles. Built with its
/// `no_thp` feature: mimalloc otherwise asks for transparent huge pages on its arena, and every
/// 2 MiB region it touches becomes resident whole (draining a million events, peak RSS 62–89 MiB
/// instead of 36–49 polling, 64–156 instead of 39–50 with CDC, at the same CPU; BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = match config::FileConfig::load(cli.config.as_deref()) {
        Ok(f) => f,
        Err(e) => return report(e),
    };
    if let Err(e) = init_logging(&cli, &file) {
        return report(e);
    }
    if !matches!(cli.command, Command::Relay(_) | Command::Console(_)) {
        restore_sigpipe();
    }
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
    // Not `eprintln!`: with stderr a broken pipe it panics, and the exit status would be 101
    // instead of the error's own.
    let _ = writeln!(std::io::stderr(), "error: {e}");
    ExitCode::from(e.code)
}

/// Commands that print lists (`outbox dlq list | head -1`) end quietly when the reader goes
/// away, as Unix tools do, instead of panicking on the broken pipe. Not the servers (`relay`,
/// `console`): they print only their log, and a log reader that went away must not stop them;
/// they keep the runtime's default (SIGPIPE ignored, errors returned, the line dropped).
fn restore_sigpipe() {
    // SAFETY: called once at start, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Log levels a bare `--log-level` word may name; anything else must be a directive list
/// such as `outbox_relay=debug,info` (a bare unknown word would silence every log line).
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn init_logging(cli: &Cli, file: &config::FileConfig) -> Result<(), error::CliError> {
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
    let bare_word = !level.contains(['=', ',', '[']);
    if bare_word && !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
        return Err(error::CliError::usage(format!(
            "log level {level:?}: use one of {} or directives such as \
             outbox_relay=debug,info",
            LEVELS.join(", ")
        )));
    }
    tracing_subscriber::EnvFilter::try_new(&level)
        .map_err(|e| error::CliError::usage(format!("log level {level:?}: {e}")))?;
    // The clients' noise held back, their secret-bearing targets capped (see `logging`).
    let filter = tracing_subscriber::EnvFilter::try_new(logging::directives(&level))
        .map_err(|e| error::CliError::usage(format!("log level {level:?}: {e}")))?;
    let json = cli.log_format == Some(LogFormat::Json)
        || (cli.log_format.is_none() && file.log.format.as_deref() == Some("json"));
    // A log line that cannot be written is dropped. tracing-subscriber would otherwise report
    // it with `eprintln!`, which panics when stderr is the broken pipe: once the reader of the
    // log went away, every task that logged died with it, the signal watcher among them (the
    // relay then ignored SIGTERM).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}
