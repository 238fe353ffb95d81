//! The CDC source: PostgreSQL logical replication (`pgoutput`) of the outbox table.
//!
//! ```text
//! walsender ──pgwire-replication──▶ reader task: decode (pgoutput), assemble transactions,
//!                                   map rows (contract columns or Debezium's EventRouter)
//!                                        │ Items, in commit order (bounded channel)
//!                                        ▼
//!                                   engine: rounds through relay::deliver, retries in memory,
//!                                   dead letters, confirmed LSN ──▶ standby status updates
//! ```
//!
//! * **Events**: inserts into the captured table(s). Deletes are ignored (so
//!   insert-then-delete in one transaction keeps the table empty), updates are ignored with a
//!   warning (or stop the relay, per `table.op.invalid.behavior`). Transactions leave in commit
//!   order; within a round, aggregates are published concurrently and each aggregate's events
//!   one after another.
//! * **No loss**: the slot's confirmed LSN only moves past transactions whose every event the
//!   sink acknowledged (or that went to the dead-letter table). A relay killed at any point
//!   resumes from the slot and redelivers at most that unacknowledged tail.
//! * **Retries** happen in memory with the relay's backoff; other aggregates keep flowing.
//!   After `max_attempts` an event is written to `outbox_dead_letter` (later events of its
//!   aggregate follow it there, unless dead letters do not block).
//! * **Slot safety**: heartbeats (`pg_logical_emit_message`) and keep-alive positions move an
//!   idle or filtered slot forward; the lag in bytes is logged and shown by `outbox status`.
//! * **One reader per slot**: PostgreSQL lets one session stream from a slot. A second relay
//!   stands by, polling the slot, and takes over within about a second of the first one's
//!   death.
//! * The CDC relay never updates outbox rows (no `published_at`): cleaning the table is the
//!   application's job (Debezium users often delete in the same transaction).

pub mod connector;
pub mod pgoutput;
pub mod slot;

mod engine;
mod rows;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use connector::Connector;
pub use rows::CdcRouting;
pub use slot::{ReplicationSlot, TableName};

use crate::route::debezium::InvalidOperation;
use crate::sink::Sink;
use crate::store::Store;
use crate::{redact_url, Error, RetryPolicy, Router, Stats};
use engine::{Blocked, Engine, EngineConfig, Item, Parts};
use pgoutput::PgOutput;
use rows::{Commit, RowMapper, Target};

/// Settings of the CDC source.
#[derive(Debug, Clone)]
pub struct CdcOptions {
    /// Logical replication slot (created when missing and `create_slot` is set).
    pub slot: String,
    /// Publication (created when missing and `create_publication` is set).
    pub publication: String,
    /// Captured tables.
    pub tables: Vec<TableName>,
    /// Create a missing publication (`FOR TABLE …`, inserts and updates).
    pub create_publication: bool,
    /// Create a missing slot.
    pub create_slot: bool,
    /// Write a heartbeat into the WAL after this long without any change streamed.
    pub heartbeat_interval: Duration,
    /// Longest wait before a newly confirmed LSN is sent to the server.
    pub status_interval: Duration,
    /// When another reader holds the slot: wait for it as a hot standby (true) or fail.
    pub standby: bool,
    /// How often a standby checks the slot.
    pub standby_poll: Duration,
    /// How often the replication lag is logged.
    pub lag_log_interval: Duration,
    /// Events per delivery round.
    pub batch_size: usize,
    /// Aggregates published at once within a round.
    pub max_in_flight: usize,
    /// Events held in memory (decoded, retrying) before the stream is paused.
    pub max_buffered: usize,
    /// Backoff and dead-lettering.
    pub retry: RetryPolicy,
    /// Whether a dead letter sends the later events of its aggregate after it.
    pub dead_letters_block: bool,
}

impl Default for CdcOptions {
    fn default() -> Self {
        CdcOptions {
            slot: "outbox_relay".into(),
            publication: "outbox_relay".into(),
            tables: vec![TableName {
                schema: "public".into(),
                name: outbox::OUTBOX_TABLE.into(),
            }],
            create_publication: true,
            create_slot: true,
            heartbeat_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(1),
            standby: true,
            standby_poll: Duration::from_millis(500),
            lag_log_interval: Duration::from_secs(60),
            batch_size: 4096,
            max_in_flight: 1024,
            max_buffered: 65_536,
            retry: RetryPolicy::default(),
            dead_letters_block: true,
        }
    }
}

impl CdcOptions {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), Error> {
        slot::validate_slot_name(&self.slot)?;
        slot::validate_publication_name(&self.publication)?;
        if self.tables.is_empty() {
            return Err(Error::Config(
                "the CDC source needs a table to capture".into(),
            ));
        }
        if self.batch_size == 0 || self.max_in_flight == 0 {
            return Err(Error::Config(
                "batch_size and max_in_flight must be at least 1".into(),
            ));
        }
        for (name, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("status_interval", self.status_interval),
            ("standby_poll", self.standby_poll),
            ("lag_log_interval", self.lag_log_interval),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!(
                    "cdc {name} must be greater than zero"
                )));
            }
        }
        self.retry.validate().map_err(Error::Config)
    }
}

/// Live state of a CDC relay, readable at any time.
#[derive(Debug, Default)]
pub struct CdcState {
    confirmed: AtomicU64,
    lag: AtomicI64,
    streaming: AtomicBool,
    sessions: AtomicU64,
    heartbeats: AtomicU64,
}

impl CdcState {
    /// The LSN confirmed to the slot (as a number).
    pub fn confirmed_lsn(&self) -> u64 {
        self.confirmed.load(Ordering::Relaxed)
    }
    /// The replication lag in bytes at the last measurement (-1 before the first).
    pub fn lag_bytes(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }
    /// Whether this relay holds the slot and streams from it.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }
    /// Replication sessions started so far.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }
    /// Heartbeats written into the WAL so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }
}

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
        let state = CdcState::default();
        state.lag.store(-1, Ordering::Relaxed);
        CdcRelay {
            store,
            url: database_url.to_string(),
            sink,
            routing: Arc::new(routing),
            router: Arc::new(router),
            options,
            stats: Arc::new(Stats::default()),
            state: Arc::new(state),
        }
    }

    /// Live counters (delivered, failed, dead-lettered).
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
        replication_config(&self.url, &self.options, 0)?;
        let pool = self.pool()?;
        slot::check_wal_level(pool).await?;
        slot::check_replication_privilege(pool).await?;
        for t in &self.options.tables {
            let cols = slot::table_columns(pool, t).await?;
            let cols: Vec<(&str, u32)> = cols.iter().map(|(n, o)| (n.as_str(), *o)).collect();
            RowMapper::check_columns(&self.routing, &cols)
                .map_err(|e| Error::Config(format!("table {t}: {e}")))?;
        }
        if !slot::dead_letter_table_exists(pool).await? {
            return Err(Error::Schema(outbox::Error::SchemaMissing));
        }
        slot::ensure_publication(
            pool,
            &self.options.publication,
            &self.options.tables,
            self.options.create_publication,
        )
        .await?;
        slot::ensure_slot(pool, &self.options.slot, self.options.create_slot).await
    }

    /// Streams and delivers until `shutdown` is cancelled; then finishes the round in flight,
    /// confirms what was acknowledged and returns. Waits as a hot standby while another reader
    /// holds the slot (unless `standby` is off: then that is an error).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        self.prepare().await?;
        let pool = self.pool()?.clone();
        let mut blocked = if self.options.dead_letters_block {
            engine::load_blocks(&pool).await?
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
        let dead_sql = self.dead_letter_sql(&pool).await?;
        let mut failures = 0u32;
        let mut standing_by: Option<i32> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Wait while another reader holds the slot.
            let state = match slot::slot_state(&pool, &self.options.slot).await {
                Ok(s) => s,
                Err(e) => {
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
                    if standing_by.take().is_some() {
                        tracing::info!(slot = %self.options.slot, "replication slot is free; taking over");
                    }
                    match self
                        .session(&pool, s.confirmed_flush, &mut blocked, &dead_sql, &shutdown)
                        .await
                    {
                        Ok(SessionEnd::Stopped) => break,
                        Ok(SessionEnd::SlotBusy(pid)) => {
                            if !self.options.standby {
                                return Err(slot_busy(&self.options.slot, &pid));
                            }
                            failures = 0;
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
            let cols = slot::table_columns(pool, t).await?;
            if let Some((_, oid)) = cols.iter().find(|(n, _)| n == id_column) {
                tables.push((t.clone(), id_column.to_string(), *oid == 2950));
            }
        }
        Ok(engine::dead_letter_sql(&tables))
    }

    async fn pause_after(&self, failures: &mut u32, e: &Error, shutdown: &CancellationToken) {
        self.stats.error();
        *failures = failures.saturating_add(1);
        let pause =
            Duration::from_millis(250 * 2u64.pow((*failures).min(5))).min(Duration::from_secs(10));
        tracing::warn!(error = %e, retry_in = ?pause, "replication failed; reconnecting (unconfirmed events will be delivered again)");
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
        slot::ensure_publication(
            pool,
            &self.options.publication,
            &self.options.tables,
            self.options.create_publication,
        )
        .await?;
        let cfg = replication_config(&self.url, &self.options, start)?;
        let mut client = ReplicationClient::connect(cfg)
            .await
            .map_err(|e| self.wire_error(e))?;
        let started = tokio::select! {
            _ = shutdown.cancelled() => return Ok(SessionEnd::Stopped),
            r = tokio::time::timeout(Duration::from_secs(30), client.wait_started()) => r,
        };
        match started {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if let Some(pid) = busy_pid(&e) {
                    return Ok(SessionEnd::SlotBusy(pid));
                }
                return Err(self.wire_error(e));
            }
            Err(_) => {
                client.abort();
                return Err(Error::Io(std::io::Error::other(format!(
                    "the replication connection to {} did not start within 30s",
                    redact_url(&self.url)
                ))));
            }
        }
        self.state.sessions.fetch_add(1, Ordering::Relaxed);
        self.state.confirmed.store(start, Ordering::Relaxed);
        self.state.streaming.store(true, Ordering::Relaxed);
        tracing::info!(slot = %self.options.slot, from = %slot::format_lsn(start), "streaming changes");

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
            item_tx,
            confirm_rx,
            stop.clone(),
            self.options.status_interval,
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
        let mut engine = Engine::new(start);
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
        let ended = loop {
            // Take what the reader has ready, up to the memory bound.
            while !reader_gone && engine.buffered() < config.max_buffered {
                match items.try_recv() {
                    Ok(item) => {
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
                            match slot::heartbeat(&pool).await {
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
                    tokio::spawn(async move {
                        match slot::slot_state(&pool, &slot_name).await {
                            Ok(Some(s)) => {
                                state.lag.store(s.lag_bytes, Ordering::Relaxed);
                                tracing::info!(slot = %slot_name, lag_bytes = s.lag_bytes, confirmed = %slot::format_lsn(s.confirmed_flush), buffered, "replication lag");
                            }
                            Ok(None) => tracing::warn!(slot = %slot_name, "replication slot disappeared"),
                            Err(e) => tracing::debug!(error = %e, "measuring the replication lag failed"),
                        }
                    });
                }
                _ = refresh.tick(), if config.dead_letters_block => {
                    // Dead letters purged or replayed elsewhere let their aggregates go.
                    match engine::load_blocks(pool).await {
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

    fn wire_error(&self, e: PgWireError) -> Error {
        wire_error(e, &self.url)
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

/// The PID in "replication slot … is active for PID n" (SQLSTATE 55006).
fn busy_pid(e: &PgWireError) -> Option<String> {
    let PgWireError::Server(msg) = e else {
        return None;
    };
    if !msg.contains("55006") {
        return None;
    }
    Some(
        msg.split("PID")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?")
            .to_string(),
    )
}

/// Classifies a replication connection error: authentication and privilege problems are
/// configuration errors (exit status 2), the rest is retried.
fn wire_error(e: PgWireError, url: &str) -> Error {
    let text = e.to_string();
    let config = match &e {
        PgWireError::Auth(_) | PgWireError::Tls(_) => true,
        PgWireError::Server(m) => ["28000", "28P01", "42501", "3D000"]
            .iter()
            .any(|code| m.contains(&format!("SQLSTATE {code}"))),
        _ => false,
    };
    let msg = format!("replication connection to {}: {text}", redact_url(url));
    if config {
        Error::Config(msg)
    } else {
        Error::Io(std::io::Error::other(msg))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The replication connection's settings from the database URL.
fn replication_config(url: &str, o: &CdcOptions, start: u64) -> Result<ReplicationConfig, Error> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    let redacted = redact_url(url);
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| Error::Config(format!("invalid database URL {redacted}: {e}")))?;
    if matches!(
        opts.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    ) {
        return Err(Error::Config(format!(
            "{redacted}: sslmode={:?} is not available for the CDC replication connection in \
             this build (pgwire-replication without TLS); use sslmode=disable/prefer on a \
             trusted network or --source poll",
            opts.get_ssl_mode()
        )));
    }
    let password = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(percent_decode))
        .or_else(|| std::env::var("PGPASSWORD").ok())
        .unwrap_or_default();
    let user = opts.get_username().to_string();
    let database = opts.get_database().unwrap_or(&user).to_string();
    let cfg = match opts.get_socket() {
        Some(dir) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            opts.get_port(),
            user,
            password,
            database,
            o.slot.clone(),
            o.publication.clone(),
        ),
        None => ReplicationConfig::new(
            opts.get_host(),
            user,
            password,
            database,
            o.slot.clone(),
            o.publication.clone(),
        )
        .with_port(opts.get_port()),
    };
    Ok(cfg
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn(start))
        .with_status_interval(o.status_interval)
        .with_wakeup_interval(Duration::from_secs(10))
        .with_buffer_size(16_384)
        .with_application_name("outbox-relay-cdc")
        // Render values the way the decoder reads them (timestamps in ISO, UTC).
        .with_options("-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres"))
}

/// Rate-limits a repeated warning: the first at once, then one summary per interval.
struct Throttle {
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    fn hit(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(10) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Reader task state: the open transaction and the row mapper.
struct Assembler {
    mapper: RowMapper,
    invalid_op: InvalidOperation,
    next_id: u64,
    open: Option<(Commit, Vec<rows::Event>)>,
    last_pos: u64,
    updates: Throttle,
}

/// Delivery rounds out at once. The engine keeps aggregates out of overlapping rounds, so
/// more are safe; with NATS JetStream on a 2-core machine two rounds measured slower (about
/// 40k/s against 47-52k/s: twice the publishes in flight for the same broker), so one it is.
const ROUNDS_IN_FLIGHT: usize = 1;

/// Events per chunk handed to the engine.
const CHUNK: usize = 1024;

impl Assembler {
    fn flush(&mut self, out: &mut Vec<Item>) {
        if let Some((_, buf)) = &mut self.open {
            if !buf.is_empty() {
                let mut chunk = std::mem::take(buf);
                // Rows of one transaction in `seq` order: a replay re-inserts dead letters in
                // one statement, whose order need not be theirs.
                chunk.sort_by_key(|e| e.origin().seq);
                out.push(Item::Events(chunk));
            }
        }
    }

    fn handle(&mut self, ev: ReplicationEvent, out: &mut Vec<Item>) -> Result<(), Error> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                self.flush(out);
                self.next_id += 1;
                self.open = Some((
                    Commit {
                        txn: self.next_id,
                        lsn: final_lsn.0,
                        time: commit_time_micros,
                    },
                    Vec::new(),
                ));
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.flush(out);
                if let Some((c, _)) = self.open.take() {
                    out.push(Item::Commit {
                        txn: c.txn,
                        end_lsn: end_lsn.0,
                    });
                }
                self.last_pos = self.last_pos.max(end_lsn.0);
            }
            ReplicationEvent::KeepAlive { wal_end, .. }
                if self.open.is_none() && wal_end.0 > self.last_pos =>
            {
                self.next_id += 1;
                out.push(Item::Position {
                    txn: self.next_id,
                    lsn: wal_end.0,
                });
                self.last_pos = wal_end.0;
            }
            ReplicationEvent::KeepAlive { .. } => {}
            ReplicationEvent::XLogData { data, .. } => {
                let msg = pgoutput::decode(&data)
                    .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
                match msg {
                    PgOutput::Relation(r) => self.mapper.relation(&r),
                    PgOutput::Insert { relation, new } => {
                        if let Some((commit, buf)) = &mut self.open {
                            if let Some(e) = self.mapper.insert(relation, &new, commit) {
                                buf.push(e);
                                if buf.len() >= CHUNK {
                                    self.flush(out);
                                }
                            }
                        }
                    }
                    PgOutput::Update { relation, new, .. } => {
                        if let Target::Captured(table) = self.mapper.target(relation) {
                            let what = format!(
                                "an UPDATE of an outbox row in {table} was ignored (only inserts \
                                 are events)"
                            );
                            match self.invalid_op {
                                InvalidOperation::Fatal => {
                                    return Err(Error::Config(format!(
                                        "{what}; table.op.invalid.behavior = fatal stops the relay"
                                    )))
                                }
                                op => {
                                    if let Some(suppressed) = self.updates.hit() {
                                        let first =
                                            new.first().and_then(|d| d.as_str()).unwrap_or("");
                                        if op == InvalidOperation::Error {
                                            tracing::error!(
                                                first_column = first,
                                                suppressed,
                                                "{what}"
                                            );
                                        } else {
                                            tracing::warn!(
                                                first_column = first,
                                                suppressed,
                                                "{what}"
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                    PgOutput::Delete { .. } => {}
                    PgOutput::Truncate { .. } => {
                        tracing::info!("a TRUNCATE of a captured table was ignored");
                    }
                    PgOutput::Begin { .. }
                    | PgOutput::Commit { .. }
                    | PgOutput::Origin { .. }
                    | PgOutput::Type { .. }
                    | PgOutput::Message { .. } => {}
                }
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            #[allow(unreachable_patterns)]
            _ => {}
        }
        Ok(())
    }
}

/// The reader task: replication events → items, confirmed LSNs → standby status updates.
async fn read(
    mut client: ReplicationClient,
    mapper: RowMapper,
    invalid_op: InvalidOperation,
    items: mpsc::Sender<Item>,
    mut confirm: watch::Receiver<u64>,
    stop: CancellationToken,
    status_interval: Duration,
) -> Result<(), Error> {
    let metrics = client.metrics();
    let mut asm = Assembler {
        mapper,
        invalid_op,
        next_id: 0,
        open: None,
        last_pos: 0,
        updates: Throttle {
            last: None,
            suppressed: 0,
        },
    };
    let mut pending: std::collections::VecDeque<Item> = std::collections::VecDeque::new();
    let mut out: Vec<Item> = Vec::new();
    let result = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            changed = confirm.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                client.update_applied_lsn(Lsn(*confirm.borrow_and_update()));
            }
            permit = items.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(item) = pending.pop_front() {
                        permit.send(item);
                    }
                }
                Err(_) => break Ok(()),
            },
            ev = client.recv(), if pending.len() < 8 => match ev {
                Ok(Some(ev)) => {
                    if let Err(e) = asm.handle(ev, &mut out) {
                        break Err(e);
                    }
                    pending.extend(out.drain(..));
                }
                Ok(None) => break Err(Error::Io(std::io::Error::other("the replication stream ended"))),
                Err(e) => break Err(Error::Io(std::io::Error::other(format!("replication stream: {e}")))),
            },
        }
    };
    // Report the last confirmed position before leaving, so a restart redelivers as little
    // as possible.
    let last = *confirm.borrow();
    client.update_applied_lsn(Lsn(last));
    if result.is_ok() {
        let deadline = tokio::time::Instant::now() + status_interval + Duration::from_secs(2);
        while metrics.last_applied_lsn().0 < last && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.stop();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
    } else {
        client.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_settings_from_urls() {
        let o = CdcOptions::default();
        let c = replication_config("postgres://app:p%40ss@db.example:6543/shop", &o, 7).unwrap();
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "app");
        assert_eq!(c.password, "p@ss");
        assert_eq!(c.database, "shop");
        assert_eq!(c.start_lsn, Lsn(7));
        let e = replication_config("postgres://a:secret@h/db?sslmode=require", &o, 0).unwrap_err();
        assert!(e.is_config() && !e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn busy_and_config_errors() {
        let busy = PgWireError::Server(
            "replication slot \"s\" is active for PID 4242 (SQLSTATE 55006)".into(),
        );
        assert_eq!(busy_pid(&busy).as_deref(), Some("4242"));
        assert!(busy_pid(&PgWireError::Server("x (SQLSTATE 42704)".into())).is_none());
        let e = wire_error(
            PgWireError::Server("must be superuser or replication role (SQLSTATE 42501)".into()),
            "postgres://u:pw@h/d",
        );
        assert!(e.is_config() && !e.to_string().contains("pw@"), "{e}");
        assert!(!wire_error(PgWireError::Protocol("x".into()), "postgres://h/d").is_config());
        assert_eq!(percent_decode("a%2Fb%"), "a/b%");
    }
}
