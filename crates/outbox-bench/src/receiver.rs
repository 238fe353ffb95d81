//! The local webhook receiver: an HTTP server in this process that answers every POST with
//! `200 OK` once it has read the body, so the webhook sink is measured without a remote
//! service (the receiver shares the machine's CPU with the relay, as the other brokers do).

use tokio::sync::OnceCell;

use crate::error::BenchError;

static RECEIVER: OnceCell<String> = OnceCell::const_new();

/// The URL of the receiver, started on a free loopback port on first use (then kept for the
/// rest of the run).
pub async fn local_webhook() -> Result<String, BenchError> {
    RECEIVER
        .get_or_try_init(|| async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| BenchError::runtime(format!("local webhook receiver: {e}")))?;
            let address = listener
                .local_addr()
                .map_err(|e| BenchError::runtime(format!("local webhook receiver: {e}")))?;
            let app = axum::Router::new()
                .fallback(axum::routing::post(|_body: axum::body::Bytes| async {}));
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("local webhook receiver stopped: {e}");
                }
            });
            Ok(format!("http://{address}/events"))
        })
        .await
        .cloned()
}
