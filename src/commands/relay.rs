//! `outbox relay` with the polling source: claims pending rows, delivers them, marks (or
//! deletes) them, until SIGINT/SIGTERM.

use outbox_relay::sink;
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::Relay;

use crate::error::CliError;
use crate::settings::PollSettings;

pub async fn run(settings: PollSettings) -> Result<(), CliError> {
    let sink = sink::from_url(&settings.sink.url, &settings.sink.options).await?;
    let options = ConnectOptions {
        // One connection per worker for its claim, one for LISTEN, one spare.
        max_connections: settings.config.workers as u32 + 2,
        asynchronous_commit: true,
        ..ConnectOptions::default()
    };
    let store = Store::connect(&settings.database_url, &options).await?;
    store.ensure_schema().await?;
    let relay = Relay::new(store, sink, settings.router, settings.config);
    relay.run(crate::signals::shutdown_token()).await?;
    let s = relay.stats().snapshot();
    tracing::info!(
        delivered = s.delivered,
        failed = s.failed,
        dead_lettered = s.dead_lettered,
        "relay finished"
    );
    Ok(())
}
