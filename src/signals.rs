//! Shutdown on signals, for every command that runs until stopped: the first SIGINT or SIGTERM
//! cancels a token (the relay finishes the batch in flight and stops), a second one exits at
//! once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First SIGINT/SIGTERM: finish the batch in flight and stop. Second: exit at once.
pub async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing the batch in flight (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::warn!("second signal: exiting now; undelivered events stay pending");
    tokio::time::sleep(Duration::from_millis(10)).await;
    std::process::exit(130);
}

/// A token cancelled on the first SIGINT/SIGTERM (see [`watch_signals`]).
pub fn shutdown_token() -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    shutdown
}
