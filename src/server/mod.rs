//! The relay's HTTP listener (`outbox relay --listen ADDR`): `GET /metrics` (Prometheus text,
//! rendered by `metrics-exporter-prometheus`), `GET /healthz` (liveness) and `GET /readyz`
//! (readiness, with a JSON reason when not ready), and the web [`console`] under `/`. Off
//! unless an address is given.
//!
//! Order matters: [`Listener::bind`] installs the metrics recorder, so it runs before the relay
//! is built (the relay resolves its metric handles then); [`Listener::serve`] then serves the
//! built relay's [`Stats`] and starts the [`sampler`] of the gauges that need a query.

pub mod console;
mod sampler;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use outbox_relay::health::{CdcPhase, Problem};
use outbox_relay::stats::{self, names};
use outbox_relay::Stats;
use tokio_util::sync::CancellationToken;

use crate::error::CliError;

pub use sampler::Sampled;

/// What the endpoints report on: one running relay.
pub struct Target {
    /// The relay's counters and health.
    pub stats: Arc<Stats>,
    /// `poll` or `cdc`.
    pub source: &'static str,
    /// The sink, as it describes itself (no secrets).
    pub sink: String,
    /// The sink's kind (`nats`, `kafka`…), for `outbox_relay_info`.
    pub sink_kind: String,
    /// What the sampler reads, and the database URL for its own connection.
    pub sampled: Sampled,
    /// `/healthz` fails when no loop of the relay went round for this long.
    pub live_window: Duration,
    /// `/readyz` fails when the database has not answered for this long.
    pub ready_window: Duration,
    /// The web console's action token (`--console-token`); `None` disables its actions.
    pub console_token: Option<String>,
    /// The relay's topic template, for the console's counts per topic (`None` when the
    /// relay routes otherwise: Debezium's EventRouter).
    pub topic: Option<outbox_relay::route::Template>,
}

/// A bound listener with the metrics recorder installed, not serving yet.
pub struct Listener {
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
}

/// The process's one Prometheus recorder (installed on first use).
fn recorder() -> Result<PrometheusHandle, CliError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = stats::HISTOGRAMS
        .iter()
        .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
            b.set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| CliError::runtime(format!("cannot install the metrics recorder: {e}")))?;
    stats::describe_metrics();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

impl Listener {
    /// Installs the metrics recorder and binds `addr` (a busy port fails here, at start).
    pub async fn bind(addr: SocketAddr) -> Result<Listener, CliError> {
        let metrics = recorder()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::runtime(format!("cannot listen on {addr}: {e}")))?;
        Ok(Listener { listener, metrics })
    }

    /// Serves the endpoints for `target` and samples its gauges until `shutdown`.
    pub fn serve(self, target: Target, shutdown: CancellationToken) {
        metrics::gauge!(
            names::RELAY_INFO,
            "version" => env!("CARGO_PKG_VERSION"),
            "source" => target.source,
            "sink" => target.sink_kind.clone(),
        )
        .set(1.0);
        let standby = target
            .sampled
            .slot
            .as_ref()
            .map(|slot| metrics::gauge!(names::CDC_STANDBY, "slot" => slot.clone()));
        let shared = Arc::new(Shared {
            target,
            metrics: self.metrics,
            standby,
        });
        tokio::spawn(sampler::run(
            shared.target.sampled.clone(),
            shared.target.stats.clone(),
            shared.metrics.clone(),
            shutdown.clone(),
        ));
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "serving /metrics, /healthz, /readyz and the web console");
        }
        let t = &shared.target;
        let console = console::Console::new(
            console::ConsoleOptions {
                database_url: t.sampled.database_url.clone(),
                database_shown: t.sampled.database_shown.clone(),
                relay: Some(console::RelayView {
                    stats: t.stats.clone(),
                    source: t.source,
                    sink: t.sink.clone(),
                    slot: t.sampled.slot.clone(),
                }),
                token: t.console_token.clone(),
                topic: t.topic.clone(),
            },
            None,
        );
        console.spawn_sampler(shutdown.clone());
        let app = router(shared).merge(console.router());
        tokio::spawn(async move {
            let served = axum::serve(self.listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP listener failed");
            }
        });
    }
}

struct Shared {
    target: Target,
    metrics: PrometheusHandle,
    standby: Option<metrics::Gauge>,
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn metrics_text(State(s): State<Arc<Shared>>) -> Response {
    if let (Some(gauge), Some(phase)) = (&s.standby, s.target.stats.health().cdc()) {
        gauge.set(if phase == CdcPhase::Standby { 1.0 } else { 0.0 });
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let health = s.target.stats.health();
    if health.alive(s.target.live_window) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let since = health.since_beat().as_secs();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the relay's loops have not gone round for {since}s\n"),
        )
            .into_response()
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let t = &s.target;
    let reasons: Vec<String> = t
        .stats
        .health()
        .problems(t.ready_window)
        .iter()
        .map(|p| describe(p, t))
        .collect();
    match reasons.first() {
        None => (StatusCode::OK, Json(serde_json::json!({ "ready": true }))).into_response(),
        Some(first) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": first, "reasons": reasons })),
        )
            .into_response(),
    }
}

/// A readiness problem in words, naming the database and sink without their secrets.
fn describe(p: &Problem, t: &Target) -> String {
    let db = &t.sampled.database_shown;
    let slot = t.sampled.slot.as_deref().unwrap_or("?");
    match p {
        Problem::DatabaseNotReached => format!("database not reached yet: {db}"),
        Problem::DatabaseFailing => format!("database unreachable: {db}"),
        Problem::DatabaseSilent(age) => {
            format!("database has not answered for {}s: {db}", age.as_secs())
        }
        Problem::SinkFailing => format!("sink unreachable: {}", t.sink),
        Problem::Standby => format!("standby: another reader holds replication slot {slot}"),
        Problem::NotStreaming => format!("not streaming: connecting to replication slot {slot}"),
    }
}

/// `--listen` / `OUTBOX_LISTEN` / `[http] listen`: `HOST:PORT`, `[IPv6]:PORT`, or `:PORT`
/// (and a bare `PORT`) for 127.0.0.1 only; `0.0.0.0:PORT` for every interface.
pub fn parse_listen(text: &str) -> Result<SocketAddr, CliError> {
    let text = text.trim();
    // A bare port (`:9090` or `9090`) stays on this machine: the console's actions and the
    // metrics are not for the network unless an address says so (`0.0.0.0:9090`).
    let port_only = text.strip_prefix(':').unwrap_or(text);
    let full = if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{port_only}")
    } else {
        text.to_string()
    };
    if let Ok(addr) = full.parse::<SocketAddr>() {
        return Ok(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(&full)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            CliError::usage(format!(
                "--listen {text:?}: expected HOST:PORT or :PORT (127.0.0.1), e.g. 127.0.0.1:9090 or 0.0.0.0:9090 for every interface"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("127.0.0.1:9090").unwrap(),
            "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
        );
        let local: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        assert_eq!(parse_listen(":9090").unwrap(), local);
        assert_eq!(parse_listen("9090").unwrap(), local);
        assert!(parse_listen("0.0.0.0:9090").unwrap().ip().is_unspecified());
        assert!(parse_listen("[::1]:9090").unwrap().is_ipv6());
        assert_eq!(parse_listen("localhost:9091").unwrap().port(), 9091);
        assert_eq!(parse_listen("nonsense").unwrap_err().code, 2);
    }
}
