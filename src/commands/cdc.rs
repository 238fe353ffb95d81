//! `outbox relay --source cdc`: PostgreSQL logical replication of the outbox table, routed by
//! the relay's topic template and envelope, or by Debezium's outbox EventRouter options (from
//! `[cdc.event_router]` or a connector registration given with `--debezium-connector`; see
//! `settings.rs` for how they are resolved).

use outbox_relay::redact_url;
use outbox_relay::sink;
use outbox_relay::source::cdc::CdcRelay;
use outbox_relay::store::{ConnectOptions, Store};

use crate::error::CliError;
use crate::settings::CdcSettings;

pub async fn run(s: CdcSettings) -> Result<(), CliError> {
    for note in &s.notes {
        tracing::warn!("{note}");
    }
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
