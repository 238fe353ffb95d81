//! `outbox relay --source cdc`: PostgreSQL logical replication of the outbox table, routed by
//! the relay's topic template and envelope, or by Debezium's outbox EventRouter options (from
//! `[cdc.event_router]` or a connector registration given with `--debezium-connector`; see
//! `settings.rs` for how they are resolved). With `--listen`, serves metrics and health probes.

use std::time::Duration;

use outbox_relay::redact_url;
use outbox_relay::sink;
use outbox_relay::source::cdc::{CdcRelay, CdcRouting};
use outbox_relay::store::{ConnectOptions, Store};

use crate::error::CliError;
use crate::server::{Listener, Sampled, Target};
use crate::settings::CdcSettings;

pub async fn run(s: CdcSettings) -> Result<(), CliError> {
    for note in &s.notes {
        tracing::warn!("{note}");
    }
    // The recorder goes in before the relay is built: the relay resolves its metrics then.
    let listener = match s.listen {
        Some(addr) => Some(Listener::bind(addr).await?),
        None => None,
    };
    let sink = sink::from_url(&s.sink.url, &s.sink.options).await?;
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
    // The loops go round at least once per heartbeat interval (streaming) or standby poll.
    let live_window =
        (s.options.heartbeat_interval.max(s.options.standby_poll) * 3).max(Duration::from_secs(60));
    let slot = s.options.slot.clone();
    let topic = match &s.routing {
        CdcRouting::Router(router) => Some(router.topic().clone()),
        CdcRouting::EventRouter(_) => None,
    };
    let relay = CdcRelay::new(store, &s.database_url, sink.clone(), s.routing, s.options);
    let shutdown = crate::signals::shutdown_token();
    if let Some(listener) = listener {
        let target = Target {
            stats: relay.stats(),
            source: "cdc",
            sink: sink.describe(),
            sink_kind: sink::kind(&*sink),
            sampled: Sampled {
                database_shown: redact_url(&s.database_url),
                database_url: s.database_url.clone(),
                pending: false,
                slot: Some(slot),
            },
            live_window,
            console_token: s.console_token.clone(),
            topic,
            ready_window: Duration::from_secs(30),
        };
        listener.serve(target, shutdown.clone());
    }
    relay.run(shutdown).await?;
    let st = relay.stats().snapshot();
    tracing::info!(
        delivered = st.delivered,
        failed = st.failed,
        dead_lettered = st.dead_lettered,
        "relay finished"
    );
    Ok(())
}
