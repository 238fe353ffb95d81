//! `outbox console --listen ADDR`: the web console alone, without relaying, for a database
//! whose relay runs elsewhere (it shows what the database knows; the sink's state is the
//! relay's). Until SIGINT/SIGTERM.

use outbox_relay::redact_url;
use outbox_relay::store::{ConnectOptions, Store};

use crate::error::CliError;
use crate::server::console::{Console, ConsoleOptions};
use crate::settings::ConsoleSettings;

pub async fn run(s: ConsoleSettings) -> Result<(), CliError> {
    let options = ConnectOptions {
        max_connections: 2,
        ..ConnectOptions::default()
    };
    let store = Store::connect(&s.database_url, &options).await?;
    store.ensure_schema().await?;
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| CliError::runtime(format!("cannot listen on {}: {e}", s.listen)))?;
    let actions = if s.token.is_some() {
        "actions enabled (token)"
    } else {
        "read-only: no --console-token"
    };
    tracing::info!(addr = %s.listen, database = %redact_url(&s.database_url), "web console: {actions}");
    let console = Console::new(
        ConsoleOptions {
            database_shown: store.describe(),
            database_url: s.database_url,
            relay: None,
            token: s.token,
            topic: Some(s.topic),
        },
        Some(store),
    );
    let shutdown = crate::signals::shutdown_token();
    console.spawn_sampler(shutdown.clone());
    axum::serve(listener, console.router())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| CliError::runtime(format!("the web console's listener failed: {e}")))
}
