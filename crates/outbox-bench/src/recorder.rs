//! The metrics' cost, measured: the Prometheus recorder that `outbox relay --listen` installs
//! (same histogram buckets), behind a switch so one run can drain with and without it. The
//! relay resolves its metric handles when it is built, so a relay built while the switch is
//! off records nothing (as with no recorder at all), and one built while it is on records into
//! Prometheus. While on, the metrics are rendered once a second, as a scrape would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use outbox_relay::stats;

use crate::args::MetricsMode;
use crate::error::BenchError;

/// The Prometheus recorder, when the switch is on; no-op handles when it is off.
struct Switch {
    on: Arc<AtomicBool>,
    inner: PrometheusRecorder,
}

impl Recorder for Switch {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}

/// The switch of the installed recorder.
static SWITCH: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs the switched recorder (once) and a task rendering it every second while on.
fn install() -> Result<Arc<AtomicBool>, BenchError> {
    if let Some(on) = SWITCH.get() {
        return Ok(on.clone());
    }
    let inner = stats::HISTOGRAMS
        .iter()
        .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
            b.set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
        })
        .map_err(|e| BenchError::runtime(format!("metrics recorder: {e}")))?
        .build_recorder();
    let handle = inner.handle();
    let on = Arc::new(AtomicBool::new(false));
    metrics::set_global_recorder(Switch {
        on: on.clone(),
        inner,
    })
    .map_err(|e| BenchError::runtime(format!("metrics recorder: {e}")))?;
    stats::describe_metrics();
    let scraping = on.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if scraping.load(Ordering::Relaxed) {
                handle.run_upkeep();
                std::hint::black_box(handle.render());
            }
        }
    });
    Ok(SWITCH.get_or_init(|| on).clone())
}

/// Relays built from now on record into Prometheus (`On`) or nothing (`Off`).
pub fn switch(mode: MetricsMode) -> Result<(), BenchError> {
    match (mode, SWITCH.get()) {
        (MetricsMode::Off, None) => Ok(()),
        (MetricsMode::Off, Some(on)) => {
            on.store(false, Ordering::Relaxed);
            Ok(())
        }
        (MetricsMode::On, _) => {
            install()?.store(true, Ordering::Relaxed);
            Ok(())
        }
    }
}
