//! The CDC relay: supervises replication sessions on one slot. It waits as a hot standby while
//! another reader holds the slot, (re)creates the publication and slot when missing, reconnects
//! with backoff, and runs each session's delivery loop: the reader task's items go into the
//! [`Engine`], rounds are delivered, heartbeats and lag measurements happen on the side, and
//! the confirmed LSN goes back to the reader.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use pgwire_replication::{PgWireError, ReplicationClient};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::CdcOptions;
use super::connect::{self, busy_pid, replication_config, wire_error};
use super::engine::{Engine, EngineConfig, Item, Parts};
use super::pressure::Budget;
use super::reader::{read, ReaderLinks};
use super::rows::{self, CdcRouting, RowMapper};
use super::state::CdcState;
use crate::error::Error;
use crate::health::{CdcPhase, Change};
use crate::retry::Backoff;
use crate::route::debezium::InvalidOperation;
use crate::route::Router;
use crate::sink::Sink;
use crate::stats::Stats;
use crate::store::cdc::{self as store_cdc, Blocked, CapturedTable};
use crate::store::connection::PgTarget;
use crate::store::replication;
use crate::store::Store;

/// Delivery rounds out at once. The engine keeps aggregates out of overlapping rounds, so
/// more are safe; with NATS JetStream on a 2-core machine two rounds measured slower (about
/// 40k/s against 47-52k/s: twice the publishes in flight for the same broker), so one it is.
const ROUNDS_IN_FLIGHT: usize = 1;

/// A CDC relay: one replication session on one slot, delivering to one sink.
pub struct CdcRelay {
    store: Store,
    url: String,
    sink: Arc<dyn Sink>,
    routing: Arc<CdcRouting>,
    router: Arc<Router>,
    options: CdcOptions,
    stats: Arc<Stats>,
    state: Arc<CdcState>,
}

enum SessionEnd {
    /// Shutdown requested.
    Stopped,
    /// Another reader holds the slot.
    SlotBusy(String),
}

impl CdcRelay {
    /// Puts the parts together. `database_url` is used for the replication connection (the
    /// store's pool for everything else).
    pub fn new(
        store: Store,
        database_url: &str,
        sink: Arc<dyn Sink>,
        routing: CdcRouting,
        options: CdcOptions,
    ) -> Self {
        let router = match &routing {
            CdcRouting::Router(r) => r.clone(),
            CdcRouting::EventRouter(_) => rows::prerouted_router(),
        };
        let stats = Stats::new("cdc", &crate::sink::kind(&*sink));
        let state = CdcState::new(Arc::new(Budget::new(
            options.max_buffer_bytes,
            stats.buffer_bytes_gauge(),
        )));
        stats.health().set_cdc(CdcPhase::Connecting);
        CdcRelay {
            store,
            url: database_url.to_string(),
            sink,
            routing: Arc::new(routing),
            router: Arc::new(router),
            options,
            stats: Arc::new(stats),
            state: Arc::new(state),
        }
    }

    /// Live counters (delivered, failed, dead-lettered), metrics and health (standby,
    /// streaming). Its metrics go to the recorder installed when the relay was made.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Live replication state (confirmed LSN, lag).
    pub fn state(&self) -> Arc<CdcState> {
        self.state.clone()
    }

    fn pool(&self) -> Result<&PgPool, Error> {
        self.store.pg_pool().ok_or_else(|| {
            Error::Config("--source cdc needs PostgreSQL (use --source poll on SQLite)".into())
        })
    }

    /// Pre-flight checks (`wal_level`, the REPLICATION privilege, the tables' columns, the
    /// dead-letter table), then the publication and the slot, created when missing. Run by
    /// [`CdcRelay::run`]; call it first to create the slot before writing events that must be
    /// streamed.
    pub async fn prepare(&self) -> Result<(), Error> {
        self.options.validate()?;
        PgTarget::parse(&self.url)?;
        let pool = self.pool()?;
        replication::check_wal_level(pool).await?;
        replication::check_replication_privilege(pool).await?;
        for t in &self.options.tables {
            let cols = replication::table_columns(pool, t).await?;
            let cols: Vec<(&str, u32)> = cols.iter().map(|(n, o)| (n.as_str(), *o)).collect();
            RowMapper::check_columns(&self.routing, &cols)
                .map_err(|e| Error::Config(format!("table {t}: {e}")))?;
        }
        if !replication::dead_letter_table_exists(pool).await? {
            return Err(Error::Schema(outbox::Error::SchemaMissing));
        }
        replication::ensure_publication(
            pool,
            &self.options.publication,
            &self.options.tables,
            self.options.create_publication,
        )
        .await?;
        replication::ensure_slot(pool, &self.options.slot, self.options.create_slot).await
    }

    /// Streams and delivers until `shutdown` is cancelled; then finishes the round in flight,
    /// confirms what was acknowledged and returns. Waits as a hot standby while another reader
    /// holds the slot (unless `standby` is off: then that is an error).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        self.prepare().await?;
        let pool = self.pool()?.clone();
        let mut blocked = if self.options.dead_letters_block {
            store_cdc::load_blocks(&pool).await?
        } else {
            Blocked::new()
        };
        tracing::info!(
            slot = %self.options.slot,
            publication = %self.options.publication,
            tables = %self.options.tables.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            sink = %self.sink.describe(),
            routing = match &*self.routing { CdcRouting::Router(_) => "router", CdcRouting::EventRouter(_) => "debezium-event-router" },
            "CDC relay started"
        );
        match replication::max_slot_wal_keep_size(&pool).await {
            Ok(None) => tracing::warn!(
                slot = %self.options.slot,
                "max_slot_wal_keep_size is unlimited on this server: if this relay stops for good \
                 without its slot being dropped, PostgreSQL keeps WAL until the disk is full \
                 (set max_slot_wal_keep_size, and watch outbox_cdc_slot_retained_wal_bytes)"
            ),
            Ok(Some(_)) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read max_slot_wal_keep_size"),
        }
        let dead_sql = self.dead_letter_sql(&pool).await?;
        let mut failures = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut standing_by: Option<i32> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Wait while another reader holds the slot.
            let health = self.stats.health();
            health.beat();
            let state = match replication::slot_state(&pool, &self.options.slot).await {
                Ok(s) => {
                    self.database_answered();
                    s
                }
                Err(e) => {
                    let _ = health.database(false);
                    self.pause_after(&mut failures, &e, &shutdown).await;
                    continue;
                }
            };
            match state {
                None => {
                    if let Err(e) = self.prepare().await {
                        if e.is_config() {
                            return Err(e);
                        }
                        self.pause_after(&mut failures, &e, &shutdown).await;
                    }
                    continue;
                }
                Some(s) if s.active_pid.is_some() => {
                    let pid = s.active_pid.unwrap_or_default();
                    if !self.options.standby {
                        return Err(slot_busy(&self.options.slot, &pid.to_string()));
                    }
                    health.set_cdc(CdcPhase::Standby);
                    if standing_by != Some(pid) {
                        tracing::warn!(slot = %self.options.slot, pid, "replication slot is in use by another reader; standing by to take over");
                        standing_by = Some(pid);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(self.options.standby_poll) => {}
                    }
                    continue;
                }
                Some(s) => {
                    health.set_cdc(CdcPhase::Connecting);
                    if standing_by.take().is_some() {
                        tracing::info!(slot = %self.options.slot, "replication slot is free; taking over");
                    }
                    let sessions = self.state.sessions.load(Ordering::Relaxed);
                    let ended = self
                        .session(&pool, s.confirmed_flush, &mut blocked, &dead_sql, &shutdown)
                        .await;
                    if self.state.sessions.load(Ordering::Relaxed) != sessions {
                        // It streamed: a failure now is a new outage, not the same one.
                        failures.reset();
                    }
                    match ended {
                        Ok(SessionEnd::Stopped) => break,
                        Ok(SessionEnd::SlotBusy(pid)) => {
                            if !self.options.standby {
                                return Err(slot_busy(&self.options.slot, &pid));
                            }
                            failures.reset();
                        }
                        Err(e) if e.is_config() => return Err(e),
                        Err(e) => self.pause_after(&mut failures, &e, &shutdown).await,
                    }
                }
            }
        }
        tracing::info!("CDC relay stopped");
        Ok(())
    }

    /// The dead-letter statement for the captured tables (by their event id column).
    async fn dead_letter_sql(&self, pool: &PgPool) -> Result<String, Error> {
        let id_column = match &*self.routing {
            CdcRouting::Router(_) => "id",
            CdcRouting::EventRouter(o) => o.event_id.as_str(),
        };
        let mut tables = Vec::new();
        for t in &self.options.tables {
            let cols = replication::table_columns(pool, t).await?;
            if let Some((_, oid)) = cols.iter().find(|(n, _)| n == id_column) {
                tables.push(CapturedTable {
                    table: t.clone(),
                    id_column: id_column.to_string(),
                    id_is_uuid: *oid == 2950,
                });
            }
        }
        Ok(store_cdc::dead_letter_sql(&tables))
    }

    /// The database answered: says so once if it had failed before.
    fn database_answered(&self) {
        if let Some(Change::Up { after }) = self.stats.health().database(true) {
            tracing::info!(
                down_for = %humantime::format_duration(after),
                "database reachable again"
            );
        }
    }

    async fn pause_after(&self, failures: &mut Backoff, e: &Error, shutdown: &CancellationToken) {
        self.stats.error();
        let first = failures.failures() == 0;
        let pause = failures.fail();
        if first {
            tracing::warn!(error = %e, retry_in = ?pause, "replication failed; reconnecting with backoff (unconfirmed events will be delivered again)");
        } else {
            tracing::debug!(error = %e, retry_in = ?pause, "replication failed again; reconnecting");
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }

    /// One replication session, from `start` (the slot's confirmed LSN).
    async fn session(
        &self,
        pool: &PgPool,
        start: u64,
        blocked: &mut Blocked,
        dead_sql: &str,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, Error> {
        replication::ensure_publication(
            pool,
            &self.options.publication,
            &self.options.tables,
            self.options.create_publication,
        )
        .await?;
        // libpq's second attempt (`prefer` without TLS, `allow` with it) when the first one
        // fails in a way it covers; the first attempt's failure is the one reported.
        let first = PgTarget::parse(&self.url)?;
        let mut target = first.clone();
        let mut first_error: Option<PgWireError> = None;
        let (client, _bridge) = loop {
            let bridge = connect::open(&target).await?;
            let cfg = replication_config(&target, bridge.as_ref(), &self.options, start);
            let mut client = ReplicationClient::connect(cfg)
                .await
                .map_err(|e| wire_error(e, &first))?;
            let started = tokio::select! {
                _ = shutdown.cancelled() => return Ok(SessionEnd::Stopped),
                r = tokio::time::timeout(Duration::from_secs(30), client.wait_started()) => r,
            };
            match started {
                Ok(Ok(())) => break (client, bridge),
                Ok(Err(e)) => {
                    if let Some(pid) = busy_pid(&e) {
                        return Ok(SessionEnd::SlotBusy(pid));
                    }
                    if let Some(first_error) = first_error {
                        return Err(wire_error(first_error, &first));
                    }
                    match target.fallback(&e.to_string()) {
                        Some(next) => {
                            target = next;
                            first_error = Some(e);
                        }
                        None => return Err(wire_error(e, &first)),
                    }
                }
                Err(_) => {
                    client.abort();
                    return Err(Error::Io(std::io::Error::other(format!(
                        "the replication connection to {} did not start within 30s",
                        target.redacted
                    ))));
                }
            }
        };
        self.state.sessions.fetch_add(1, Ordering::Relaxed);
        self.state.confirmed.store(start, Ordering::Relaxed);
        self.state.streaming.store(true, Ordering::Relaxed);
        self.stats.health().set_cdc(CdcPhase::Streaming);
        tracing::info!(slot = %self.options.slot, from = %replication::format_lsn(start), "streaming changes");

        // Whatever the last session read is gone with it.
        self.state.buffer.reset();
        let (item_tx, item_rx) = mpsc::channel::<Item>(64);
        let (confirm_tx, confirm_rx) = watch::channel(start);
        let stop = CancellationToken::new();
        let invalid_op = match &*self.routing {
            CdcRouting::EventRouter(o) => o.invalid_operation,
            CdcRouting::Router(_) => InvalidOperation::Warn,
        };
        let reader = tokio::spawn(read(
            client,
            RowMapper::new(self.routing.clone(), self.options.tables.clone()),
            invalid_op,
            ReaderLinks {
                items: item_tx,
                confirm: confirm_rx,
                stop: stop.clone(),
                status_interval: self.options.status_interval,
                budget: self.state.buffer.clone(),
            },
        ));
        let ctx = SessionCtx {
            pool,
            start,
            confirm: &confirm_tx,
            dead_sql,
        };
        let outcome = self.deliver_loop(&ctx, item_rx, blocked, shutdown).await;
        stop.cancel();
        let read_result = match reader.await {
            Ok(r) => r,
            Err(e) => Err(Error::Sink(format!("the replication reader failed: {e}"))),
        };
        self.state.streaming.store(false, Ordering::Relaxed);
        self.stats.health().set_cdc(CdcPhase::Connecting);
        match outcome {
            Loop::Stopped => {
                if let Err(e) = read_result {
                    tracing::debug!(error = %e, "replication reader ended with an error while stopping");
                }
                Ok(SessionEnd::Stopped)
            }
            Loop::ReaderEnded => Err(read_result.err().unwrap_or_else(|| {
                Error::Io(std::io::Error::other("the replication stream ended"))
            })),
        }
    }

    async fn deliver_loop(
        &self,
        ctx: &SessionCtx<'_>,
        mut items: mpsc::Receiver<Item>,
        blocked: &mut Blocked,
        shutdown: &CancellationToken,
    ) -> Loop {
        let (pool, start, confirm, dead_sql) = (ctx.pool, ctx.start, ctx.confirm, ctx.dead_sql);
        let config = EngineConfig {
            batch_size: self.options.batch_size,
            max_in_flight: self.options.max_in_flight,
            max_buffered: self.options.max_buffered,
            // The sink holds a routed copy of each event out: a quarter of the budget.
            max_round_bytes: (self.options.max_buffer_bytes / 4).max(1),
            retry: self.options.retry.clone(),
            dead_letters_block: self.options.dead_letters_block,
            dead_letter_sql: dead_sql.to_string(),
        };
        let parts = Parts {
            pool,
            sink: &*self.sink,
            router: &self.router,
            stats: &self.stats,
            config: &config,
        };
        let mut engine = Engine::new(start, self.state.buffer.clone());
        // Last time a transaction came through (keep-alive positions do not count: a heartbeat
        // also proves the stream works end to end).
        let mut last_item = tokio::time::Instant::now();
        let mut heartbeat = tokio::time::interval(self.options.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lag = tokio::time::interval(self.options.lag_log_interval);
        lag.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval(Duration::from_secs(10));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut side: Option<tokio::task::JoinHandle<()>> = None;
        // Up to ROUNDS_IN_FLIGHT rounds are out at once (an aggregate is never in two); the
        // loop keeps taking the reader's items while a round is out.
        let mut rounds = FuturesUnordered::new();
        let mut reader_gone = false;
        let health = self.stats.health();
        let ended = loop {
            health.beat();
            // Take what the reader has ready, up to the memory bound.
            while !reader_gone && engine.buffered() < config.max_buffered {
                match items.try_recv() {
                    Ok(item) => {
                        self.database_answered();
                        if !matches!(item, Item::Position { .. }) {
                            last_item = tokio::time::Instant::now();
                        }
                        engine.apply(item);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => reader_gone = true,
                }
            }
            self.confirm(&mut engine, confirm);
            let stopping = shutdown.is_cancelled();
            if (stopping || reader_gone) && rounds.is_empty() {
                break if stopping {
                    Loop::Stopped
                } else {
                    Loop::ReaderEnded
                };
            }
            if !stopping
                && !reader_gone
                && rounds.len() < ROUNDS_IN_FLIGHT
                && engine.has_work(tokio::time::Instant::now())
            {
                if let Some(round) = engine.form(&parts, blocked).await {
                    rounds.push(round.deliver(&parts));
                    continue;
                }
            }
            let wake = engine.next_due();
            let room = engine.buffered() < config.max_buffered;
            tokio::select! {
                biased;
                done = rounds.next(), if !rounds.is_empty() => {
                    if let Some((round, outcomes)) = done {
                        engine.finish(&parts, blocked, round, outcomes).await;
                    }
                }
                _ = shutdown.cancelled(), if !stopping => {}
                item = items.recv(), if room && !reader_gone => match item {
                    Some(item) => {
                        self.database_answered();
                        if !matches!(item, Item::Position { .. }) {
                            last_item = tokio::time::Instant::now();
                        }
                        engine.apply(item);
                    }
                    None => reader_gone = true,
                },
                _ = async { if let Some(w) = wake { tokio::time::sleep_until(w).await } }, if wake.is_some() => {}
                _ = heartbeat.tick() => {
                    let idle = last_item.elapsed() >= self.options.heartbeat_interval;
                    if idle && side.as_ref().map_or(true, |h| h.is_finished()) {
                        let (pool, state) = (pool.clone(), self.state.clone());
                        side = Some(tokio::spawn(async move {
                            match replication::heartbeat(&pool).await {
                                Ok(()) => {
                                    state.heartbeats.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => tracing::warn!(error = %e, "writing a heartbeat failed"),
                            }
                        }));
                    }
                }
                _ = lag.tick() => {
                    let (pool, state, slot_name) = (pool.clone(), self.state.clone(), self.options.slot.clone());
                    let buffered = engine.buffered();
                    let max_retained = i64::try_from(self.options.max_retained_wal).unwrap_or(i64::MAX);
                    tokio::spawn(async move { state.measure(&pool, &slot_name, max_retained, buffered).await });
                }
                _ = refresh.tick(), if config.dead_letters_block => {
                    // Dead letters purged or replayed elsewhere let their aggregates go.
                    match store_cdc::load_blocks(pool).await {
                        Ok(b) => *blocked = b,
                        Err(e) => tracing::debug!(error = %e, "reading dead letters failed"),
                    }
                }
            }
        };
        self.confirm(&mut engine, confirm);
        ended
    }

    fn confirm(&self, engine: &mut Engine, confirm: &watch::Sender<u64>) {
        if let Some(lsn) = engine.advance() {
            self.state.confirmed.store(lsn, Ordering::Relaxed);
            confirm.send_replace(lsn);
        }
    }
}

enum Loop {
    Stopped,
    ReaderEnded,
}

/// What a session's delivery loop works with.
struct SessionCtx<'a> {
    pool: &'a PgPool,
    /// The LSN the session started from (the slot's confirmed position).
    start: u64,
    confirm: &'a watch::Sender<u64>,
    dead_sql: &'a str,
}

fn slot_busy(slot: &str, pid: &str) -> Error {
    Error::Io(std::io::Error::other(format!(
        "replication slot {slot} is in use by another reader (walsender PID {pid}); stop it, \
         choose another --slot, or let this relay stand by ([cdc] standby = true)"
    )))
}
