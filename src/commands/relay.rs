//! `outbox relay` with the polling source: claims pending rows, delivers them, marks (or
//! deletes) them, until SIGINT/SIGTERM. With `--listen`, serves metrics and health probes.

use std::time::Duration;

use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::{redact_url, sink, Relay};

use crate::error::CliError;
use crate::server::{Listener, Sampled, Target};
use crate::settings::PollSettings;

pub async fn run(settings: PollSettings) -> Result<(), CliError> {
    // The recorder goes in before the relay is built: the relay resolves its metrics then.
    let listener = match settings.listen {
        Some(addr) => Some(Listener::bind(addr).await?),
        None => None,
    };
    let sink = sink::from_url(&settings.sink.url, &settings.sink.options).await?;
    let options = ConnectOptions {
        // One connection per worker for its claim, one for LISTEN, one spare.
        max_connections: settings.config.workers as u32 + 2,
        asynchronous_commit: true,
        ..ConnectOptions::default()
    };
    let store = Store::connect(&settings.database_url, &options).await?;
    store.ensure_schema().await?;
    store.check_poll_source(settings.allow_with_cdc).await?;
    // Claims come at least once per poll interval: three missed ones is trouble.
    let window = settings.config.poll.poll_interval * 3;
    let topic = settings.router.topic().clone();
    let relay = Relay::new(store, sink.clone(), settings.router, settings.config);
    let shutdown = crate::signals::shutdown_token();
    if let Some(listener) = listener {
        let target = Target {
            stats: relay.stats(),
            source: "poll",
            sink: sink.describe(),
            sink_kind: sink::kind(&*sink),
            sampled: Sampled {
                database_shown: redact_url(&settings.database_url),
                database_url: settings.database_url,
                pending: true,
                slot: None,
            },
            live_window: window.max(Duration::from_secs(60)),
            console_token: settings.console_token.clone(),
            topic: Some(topic),
            ready_window: window.max(Duration::from_secs(30)),
        };
        listener.serve(target, shutdown.clone());
    }
    relay.run(shutdown).await?;
    let s = relay.stats().snapshot();
    tracing::info!(
        delivered = s.delivered,
        failed = s.failed,
        dead_lettered = s.dead_lettered,
        "relay finished"
    );
    Ok(())
}
