//! What the NATS client says about its connection, said once per change.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use async_nats::ConnectErrorKind;

/// What the NATS client says about its connection, said once per change rather than at every
/// reconnect attempt (the client itself reports "IO error" at INFO without the address, every
/// few seconds; the binary's default log filter keeps it quiet).
pub(super) struct ConnectionLog {
    server: String,
    /// [`NEVER_UP`], [`UP`] or [`DOWN`].
    state: AtomicU8,
    /// Errors reported since the connection went down.
    seen: Mutex<HashSet<String>>,
}

/// Not connected since the start (the sink's warning at start said why).
const NEVER_UP: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

impl ConnectionLog {
    pub(super) fn new(server: &str) -> Self {
        ConnectionLog {
            server: server.to_string(),
            state: AtomicU8::new(NEVER_UP),
            seen: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn connected_at_start(&self) {
        self.state.store(UP, Ordering::Relaxed);
    }

    pub(super) fn event(&self, event: async_nats::Event) {
        use async_nats::Event;
        let server = &self.server;
        match event {
            Event::Connected => {
                if self.state.swap(UP, Ordering::Relaxed) == UP {
                    tracing::debug!(%server, "NATS connected");
                } else {
                    self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    tracing::info!(%server, "NATS connected");
                }
            }
            Event::Disconnected => {
                if self.state.swap(DOWN, Ordering::Relaxed) == UP {
                    tracing::warn!(
                        %server,
                        "NATS connection lost; reconnecting, events wait in the outbox"
                    );
                }
            }
            Event::ClientError(_) | Event::ServerError(_) => {
                let text = event.to_string();
                let new = self.state.load(Ordering::Relaxed) != NEVER_UP
                    && self
                        .seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(text.clone());
                if new {
                    tracing::warn!(%server, "NATS {text}");
                } else {
                    tracing::debug!(%server, "NATS {text}");
                }
            }
            other => tracing::info!(%server, "NATS: {other}"),
        }
    }
}

/// Connection failures at start that no retry fixes: the server refused the credentials.
pub(super) fn refused_at_start(kind: ConnectErrorKind) -> bool {
    matches!(
        kind,
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
    )
}
