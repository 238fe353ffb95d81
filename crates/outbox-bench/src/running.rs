//! Relays measured inside this process, polling or CDC, with their delivery counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_relay::source::poll::PollOptions;
use outbox_relay::store::Store;
use outbox_relay::{Relay, RelayConfig, RetryPolicy, Router, Sink, Stats};
use tokio_util::sync::CancellationToken;

use crate::args::{BenchArgs, OnPublish, SourceKind};
use crate::db::BenchDb;
use crate::error::BenchError;
use crate::report::progress;

/// A relay running in this process, polling or CDC.
pub struct Running {
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), outbox_relay::Error>>,
}

impl Running {
    /// Starts the relay of `source` from `store` into `sink`, as the benchmark configures it.
    pub async fn start(
        source: SourceKind,
        db: &BenchDb,
        store: &Store,
        sink: Arc<dyn Sink>,
        args: &BenchArgs,
        on_publish: OnPublish,
    ) -> Result<Running, BenchError> {
        let shutdown = CancellationToken::new();
        match source {
            SourceKind::Poll => {
                let relay = Relay::new(
                    store.clone(),
                    sink,
                    Router::default(),
                    RelayConfig {
                        poll: PollOptions {
                            batch_size: args.batch_size,
                            poll_interval: Duration::from_secs(1),
                            dead_letters_block: true,
                            delete_published: on_publish == OnPublish::Delete,
                            ..PollOptions::default()
                        },
                        workers: args.workers,
                        max_in_flight: args.batch_size,
                        retry: RetryPolicy::default(),
                    },
                );
                let stats = relay.stats();
                Ok(Running::spawn(stats, shutdown, |token| async move {
                    relay.run(token).await
                }))
            }
            SourceKind::Cdc => {
                use outbox_relay::source::cdc::{CdcOptions, CdcRelay, CdcRouting};
                let relay = CdcRelay::new(
                    store.clone(),
                    &db.url,
                    sink,
                    CdcRouting::Router(Router::default()),
                    CdcOptions {
                        slot: db.slot(),
                        publication: db.slot(),
                        ..CdcOptions::default()
                    },
                );
                let stats = relay.stats();
                Ok(Running::spawn(stats, shutdown, |token| async move {
                    relay.run(token).await
                }))
            }
        }
    }

    /// Runs a relay (`run` given its shutdown token) as a task.
    fn spawn<F, Fut>(stats: Arc<Stats>, shutdown: CancellationToken, run: F) -> Running
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = Result<(), outbox_relay::Error>> + Send + 'static,
    {
        let task = tokio::spawn(run(shutdown.clone()));
        Running {
            stats,
            shutdown,
            task,
        }
    }

    /// Waits until `n` events were delivered (bounded), reporting progress.
    pub async fn wait_delivered(
        &self,
        n: usize,
        label: &str,
        limit: Duration,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + limit;
        let mut last = Instant::now();
        loop {
            let delivered = self.stats.snapshot().delivered as usize;
            if delivered >= n {
                return Ok(());
            }
            if self.task.is_finished() || Instant::now() > deadline {
                return Err(BenchError::runtime(format!(
                    "[{label}] the relay stopped or stalled after delivering {delivered}/{n} events"
                )));
            }
            if last.elapsed() > Duration::from_millis(250) {
                progress(&format!("[{label}] delivered {delivered}/{n}"));
                last = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops the relay (bounded) and returns how its run ended.
    pub async fn stop(self) -> Result<(), BenchError> {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(e)) => Err(BenchError::runtime(format!("relay task: {e}"))),
            Err(_) => Err(BenchError::runtime("the relay did not stop within 60s")),
        }
    }
}
