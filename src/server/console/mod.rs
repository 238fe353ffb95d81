//! The web console, served under `/` by the relay's listener (`outbox relay --listen`) and by
//! `outbox console` (no relaying, for a database another relay drains). Server-rendered HTML
//! (maud escapes every value), one CSS file and a little JavaScript, embedded in the binary.
//!
//! One file per area: [`overview`] (live counts, the delivery rate, the sink, CDC slots),
//! [`events`] (find an event by id or by aggregate), [`dead_letters`] (list, detail, replay and
//! purge with a confirmation step), [`guard`] (the action token and CSRF), [`layout`] (the
//! page frame and small formatting helpers).

mod dead_letters;
mod events;
mod guard;
mod layout;
mod overview;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use outbox_relay::route::Template;
use outbox_relay::store::{ConnectOptions, Store};
use outbox_relay::Stats;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// How often the delivery rate is sampled, and how many samples the chart keeps (5 minutes).
const RATE_EVERY: Duration = Duration::from_secs(2);
const RATE_POINTS: usize = 150;

/// The relay this console runs in (absent for `outbox console`).
pub struct RelayView {
    /// The relay's counters and health.
    pub stats: Arc<Stats>,
    /// `poll` or `cdc`.
    pub source: &'static str,
    /// The sink, as it describes itself (no secrets).
    pub sink: String,
    /// CDC: the relay's replication slot.
    pub slot: Option<String>,
}

/// What the console needs to run.
pub struct ConsoleOptions {
    /// The database (never shown: it may hold a password).
    pub database_url: String,
    /// The database without secrets, for the page.
    pub database_shown: String,
    /// The running relay, when the console is served by one.
    pub relay: Option<RelayView>,
    /// The token actions need; `None` disables them.
    pub token: Option<String>,
    /// The topic template events are routed by, for the counts per topic (`None`: counts per
    /// aggregate type and event type).
    pub topic: Option<Template>,
}

/// The console's state, shared by its handlers.
pub struct Console {
    database_url: String,
    database_shown: String,
    store: OnceCell<Store>,
    relay: Option<RelayView>,
    topic: Option<Template>,
    guard: guard::Guard,
    rate: Mutex<Rate>,
}

/// The delivery rate's recent samples.
#[derive(Default)]
struct Rate {
    /// `(unix milliseconds, events per second)`, oldest first.
    points: VecDeque<(i64, f64)>,
    /// When a page last asked for the overview.
    watched: Option<Instant>,
    /// The relay's delivered total at the last sample.
    last_total: Option<u64>,
    /// The last sample's time (for counting rows published since).
    last_at: Option<(Instant, chrono::DateTime<Utc>)>,
}

impl Console {
    /// A console on `options`; `store`, when given, is used instead of connecting on first use.
    pub fn new(options: ConsoleOptions, store: Option<Store>) -> Arc<Console> {
        let cell = OnceCell::new();
        if let Some(s) = store {
            let _ = cell.set(s);
        }
        Arc::new(Console {
            database_url: options.database_url,
            database_shown: options.database_shown,
            store: cell,
            relay: options.relay,
            topic: options.topic,
            guard: guard::Guard::new(options.token),
            rate: Mutex::new(Rate::default()),
        })
    }

    /// The console's routes (`/`, `/events`, `/dead-letters`…, `/assets/…`).
    pub fn router(self: &Arc<Console>) -> Router {
        Router::new()
            .route("/", get(overview::page))
            .route("/api/overview", get(overview::json))
            .route("/events", get(events::page))
            .route("/dead-letters", get(dead_letters::list))
            .route("/dead-letters/confirm", post(dead_letters::confirm))
            .route("/dead-letters/apply", post(dead_letters::apply))
            .route("/dead-letters/{id}", get(dead_letters::detail))
            .route("/assets/console.css", get(css))
            .route("/assets/console.js", get(js))
            .layer(axum::middleware::map_response(secure_headers))
            .with_state(self.clone())
    }

    /// Samples the delivery rate every 2 s until `shutdown` (a relay's counter is free; a
    /// database's published rows are counted only while a page watches).
    pub fn spawn_sampler(self: &Arc<Console>, shutdown: CancellationToken) {
        let console = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RATE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => console.sample_rate().await,
                }
            }
        });
    }

    async fn sample_rate(&self) {
        let now = Instant::now();
        let wall = Utc::now();
        let (last_at, watched) = match self.rate.lock() {
            Ok(r) => (r.last_at, r.watched),
            Err(_) => return,
        };
        let delivered = match &self.relay {
            Some(relay) => {
                let total = relay.stats.snapshot().delivered;
                let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
                let d = r.last_total.map(|last| total.saturating_sub(last));
                r.last_total = Some(total);
                d
            }
            None => {
                let watching = watched.is_some_and(|w| w.elapsed() < Duration::from_secs(30));
                match (last_at, watching) {
                    (Some((_, since)), true) => match self.store().await {
                        Ok(store) => store.published_since(since).await.ok().map(|n| n as u64),
                        Err(_) => None,
                    },
                    _ => None,
                }
            }
        };
        let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(n), Some((then, _))) = (delivered, last_at) {
            let secs = now.duration_since(then).as_secs_f64().max(0.001);
            r.points
                .push_back((wall.timestamp_millis(), n as f64 / secs));
            while r.points.len() > RATE_POINTS {
                r.points.pop_front();
            }
        }
        r.last_at = Some((now, wall));
    }

    /// The rate's samples, noting that a page watches.
    fn rate_points(&self) -> Vec<(i64, f64)> {
        let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        r.watched = Some(Instant::now());
        r.points.iter().copied().collect()
    }

    /// The database, connected on first use (two connections: the console is not the relay).
    async fn store(&self) -> Result<&Store, outbox_relay::Error> {
        self.store
            .get_or_try_init(|| async {
                let options = ConnectOptions {
                    max_connections: 2,
                    connect_timeout: Duration::from_secs(5),
                    ..ConnectOptions::default()
                };
                Store::connect(&self.database_url, &options).await
            })
            .await
    }
}

/// A database failure as a page (the error names no secret: see `outbox_relay::Error`).
fn unavailable(c: &Console, e: &outbox_relay::Error) -> Response {
    tracing::warn!(error = %e, "web console: database query failed");
    let body = layout::page(
        c,
        "Database unavailable",
        layout::Nav::None,
        maud::html! {
            h1 { "Database unavailable" }
            p.error { (e.to_string()) }
            p { "Database: " code { (c.database_shown) } }
        },
    );
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
        .into_response()
}

/// No inline script runs (even if something escaped the templates), no framing, no sniffing,
/// no referrer leaves the console (same-origin: the browser still sends the `Origin` the
/// CSRF check compares).
async fn secure_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
