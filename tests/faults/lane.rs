//! A scenario: private servers (PostgreSQL, NATS, a cutting proxy in front of each, which the
//! relays go through) and its lanes. A lane is one database, one writer, its relays (poll or
//! CDC) and their broker side (a JetStream stream or a webhook receiver).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use outbox_testkit::{url_encode, NatsServer, PgServer, Proxy, APP_PASSWORD, APP_USER};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::collect::{check, follow_stream, Deliveries, Receiver, Verdict};
use super::profile::{Profile, ACK_TIMEOUT, RETRY_ARGS};
use super::relays::{bin, RelayPool};
use super::writer::{Writer, WriterStats};

/// Where a lane's events come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    Poll,
    Cdc,
}

/// Where a lane's relays deliver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Nats,
    Webhook,
}

/// The private servers of a scenario.
pub struct Servers {
    pub pg: PgServer,
    pub nats: NatsServer,
    /// In front of PostgreSQL, for the relays.
    pub pg_proxy: Proxy,
    /// In front of NATS, for the relays.
    pub nats_proxy: Proxy,
    /// The relays' logs (kept when the scenario fails).
    logs: PathBuf,
}

impl Servers {
    async fn start(name: &str) -> Option<Servers> {
        let pg = PgServer::start().await?;
        let nats = NatsServer::start().await?;
        let pg_proxy = Proxy::start(&format!("127.0.0.1:{}", pg.port)).await;
        let nats_proxy = Proxy::start(&format!("127.0.0.1:{}", nats.port)).await;
        let logs = std::env::temp_dir().join(format!(
            "outbox-faults-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&logs).expect("create the log directory");
        Some(Servers {
            pg,
            nats,
            pg_proxy,
            nats_proxy,
            logs,
        })
    }

    /// The application user's URL of `db`, over TLS, at `port` (the server's or its proxy's).
    fn app_url(&self, port: u16, db: &str) -> String {
        format!(
            "postgres://{APP_USER}:{}@127.0.0.1:{port}/{db}?sslmode=require",
            url_encode(APP_PASSWORD)
        )
    }
}

/// One database, its writer, its relays and their broker side.
pub struct Lane {
    pub name: &'static str,
    admin: sqlx::PgPool,
    writer: Option<Writer>,
    writer_stats: WriterStats,
    pub relays: RelayPool,
    pub deliveries: Deliveries,
    reader: Option<(CancellationToken, JoinHandle<()>)>,
    /// NATS URL and stream name of a NATS lane.
    stream: Option<(String, String)>,
    pub receiver: Option<Receiver>,
}

/// `outbox ARGS` with `DATABASE_URL`, which must succeed within 60 s.
async fn outbox(database_url: &str, args: &[&str]) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin())
            .args(args)
            .env("DATABASE_URL", database_url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("outbox finished within 60s")
    .expect("outbox ran");
    assert!(
        out.status.success(),
        "outbox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lane {
    async fn start(
        servers: &Servers,
        profile: &Profile,
        source: Source,
        relays: usize,
        target: Target,
    ) -> Lane {
        let name = match source {
            Source::Poll => "poll",
            Source::Cdc => "cdc",
        };
        let db = servers.pg.create_db().await;
        outbox(&servers.app_url(servers.pg.port, &db), &["migrate"]).await;
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&servers.pg.admin_url(&db))
            .await
            .expect("connect the writer");
        // Aggregate type `Poll` → subject `poll-events` (the default topic template).
        let aggregate_type = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
        let deliveries = Deliveries::new();
        let mut args: Vec<String> = vec!["--source".into(), name.into()];
        let (mut reader, mut receiver, mut stream_of) = (None, None, None);
        match target {
            Target::Nats => {
                let stream = name.to_uppercase();
                create_stream(&servers.nats.url(), &stream, &format!("{name}-events")).await;
                let stop = CancellationToken::new();
                let task = follow_stream(
                    servers.nats.url(),
                    stream.clone(),
                    deliveries.clone(),
                    stop.clone(),
                );
                reader = Some((stop, task));
                stream_of = Some((servers.nats.url(), stream.clone()));
                args.extend([
                    "--sink".into(),
                    format!(
                        "nats://{}?ack_timeout={ACK_TIMEOUT}",
                        servers.nats_proxy.addr()
                    ),
                    "--nats-stream".into(),
                    stream,
                ]);
            }
            Target::Webhook => {
                let r = Receiver::start(deliveries.clone()).await;
                args.extend(["--sink".into(), r.url.clone()]);
                receiver = Some(r);
            }
        }
        args.extend(RETRY_ARGS.iter().map(|s| s.to_string()));
        if source == Source::Cdc {
            args.extend(["--slot".into(), "faults".into()]);
        }
        let relay_url = servers.app_url(servers.pg_proxy.port(), &db);
        let relays = RelayPool::start(relays, &args, &relay_url, &servers.logs, name);
        if source == Source::Cdc {
            // Events committed before the slot reached its consistent point are not streamed.
            wait_for_slot(&admin, "faults").await;
        }
        let writer = Writer::start(admin.clone(), &aggregate_type, profile);
        Lane {
            name,
            admin,
            writer: Some(writer),
            writer_stats: WriterStats::default(),
            relays,
            deliveries,
            reader,
            stream: stream_of,
            receiver,
        }
    }

    /// Has the writer add `per_aggregate` events to every aggregate at once (a backlog).
    pub async fn burst(&self, per_aggregate: usize) {
        let writer = self.writer.as_ref().expect("the writer runs");
        assert!(
            writer.burst(per_aggregate).await,
            "{}: the burst was written",
            self.name
        );
    }

    async fn stop_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            self.writer_stats = w.stop().await;
        }
    }

    /// Waits (at most 120 s) until `distinct` events arrived; fails the test otherwise.
    pub async fn delivers(&self, distinct: usize, what: &str) {
        let arrived = self
            .deliveries
            .wait_distinct(distinct, Duration::from_secs(120))
            .await;
        assert!(
            arrived,
            "{}: {} events delivered, not {distinct} ({what}), within 120s\n{}",
            self.name,
            self.deliveries.distinct(),
            self.relays.log_tails(20).await
        );
    }

    /// Events written but not received yet.
    pub async fn backlog(&self) -> i64 {
        let written: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM outbox_dead_letter)",
        )
        .fetch_one(&self.admin)
        .await
        .expect("count the events written");
        written - self.deliveries.distinct() as i64
    }

    async fn dead_letters(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letter")
            .fetch_one(&self.admin)
            .await
            .expect("count dead letters")
    }

    /// Waits for everything written to arrive, stops the relays and judges.
    async fn finish(&mut self, limit: Duration) -> LaneReport {
        let written: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id::text, aggregate_id, (payload->>'n')::int8 FROM outbox
             UNION
             SELECT original_id::text, aggregate_id, (payload->>'n')::int8 FROM outbox_dead_letter",
        )
        .fetch_all(&self.admin)
        .await
        .expect("read what was written");
        let ids: HashSet<String> = written.iter().map(|(id, _, _)| id.clone()).collect();
        // A dead letter never arrives (and holds its aggregate back): the verdict is known, do
        // not wait long for it.
        let limit = if self.dead_letters().await > 0 {
            limit.min(Duration::from_secs(10))
        } else {
            limit
        };
        let drained = self.deliveries.wait_all(&ids, limit).await;
        let exits = self.relays.stop().await;
        if !drained {
            if let Some((url, stream)) = &self.stream {
                let client = async_nats::connect(url).await.expect("connect to NATS");
                let mut info = async_nats::jetstream::new(client)
                    .get_stream(stream)
                    .await
                    .expect("the stream");
                let state = info.info().await.expect("stream info").state.clone();
                println!(
                    "{}: not drained; the stream holds {} messages (sequences {}..={}), the reader saw {} distinct",
                    self.name, state.messages, state.first_sequence, state.last_sequence, self.deliveries.distinct()
                );
            }
        }
        let dead_letters = self.dead_letters().await;
        if let Some((stop, task)) = self.reader.take() {
            stop.cancel();
            let _ = task.await;
        }
        LaneReport {
            verdict: check(&written, &self.deliveries),
            drained,
            dead_letters,
            exits,
            peak_kb: self.relays.peak_rss_kb().await,
            kills: self.relays.kills(),
            writer: self.writer_stats,
        }
    }
}

/// Creates the lane's stream as the NATS sink would, but with JetStream's duplicate window (2
/// minutes by default, in which a redelivered `Nats-Msg-Id` is dropped) down to a tenth of a
/// second, its floor: the stream then keeps nearly every redelivery (a relay redelivers after
/// a SIGKILL, a lost acknowledgement or a failed commit, seconds later), and the duplicates
/// counted are the relays' own, not what JetStream's deduplication would leave.
async fn create_stream(url: &str, stream: &str, subject: &str) {
    let client = async_nats::connect(url)
        .await
        .expect("connect to the private NATS");
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.to_string(),
            subjects: vec![subject.to_string()],
            duplicate_window: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .expect("create the stream");
}

/// Waits until a relay streams from `slot` (a walsender holds it): the slot has reached its
/// consistent point, so every event committed from now on is streamed. (The slot is listed
/// from the moment its creation starts, before that point.)
async fn wait_for_slot(admin: &sqlx::PgPool, slot: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let streaming: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_replication_slots s
             JOIN pg_stat_activity a ON a.pid = s.active_pid AND a.backend_type = 'walsender'
             WHERE s.slot_name = $1",
        )
        .bind(slot)
        .fetch_one(admin)
        .await
        .unwrap_or(0);
        if streaming > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a CDC relay streams from slot {slot} within 60s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct LaneReport {
    verdict: Verdict,
    drained: bool,
    dead_letters: i64,
    exits: Vec<String>,
    peak_kb: u64,
    kills: usize,
    writer: WriterStats,
}

/// A running scenario.
pub struct Scenario {
    pub name: &'static str,
    pub profile: Profile,
    pub servers: Servers,
    pub lanes: Vec<Lane>,
    /// Faults that hit every lane (outages, restarts, cuts, refusals), and what they were.
    faults: usize,
    what: Vec<String>,
    started: std::time::Instant,
}

impl Scenario {
    /// Starts the servers and the lanes `(source, relays, target)`; `None` when a private
    /// server cannot run (reported: a failure with `OUTBOX_REQUIRE_SERVICES`, else a skip).
    async fn start(name: &'static str, lanes: &[(Source, usize, Target)]) -> Option<Scenario> {
        let profile = Profile::from_env();
        let started = std::time::Instant::now();
        let servers = Servers::start(name).await?;
        let mut started_lanes = Vec::new();
        for &(source, relays, target) in lanes {
            started_lanes.push(Lane::start(&servers, &profile, source, relays, target).await);
        }
        Some(Scenario {
            name,
            profile,
            servers,
            lanes: started_lanes,
            faults: 0,
            what: Vec::new(),
            started,
        })
    }

    /// Starts a poll lane with `poll_relays` relays and a CDC lane with one, both delivering to
    /// `target`, and returns once both deliver.
    pub async fn running(
        name: &'static str,
        poll_relays: usize,
        target: Target,
    ) -> Option<Scenario> {
        let s = Scenario::start(
            name,
            &[
                (Source::Poll, poll_relays, target),
                (Source::Cdc, 1, target),
            ],
        )
        .await?;
        s.flowing().await;
        Some(s)
    }

    /// Counts `n` faults that hit every lane.
    pub fn fault(&mut self, n: usize, what: &str) {
        self.faults += n;
        if !self.what.iter().any(|w| w == what) {
            self.what.push(what.to_string());
        }
    }

    /// Waits until every lane delivered `profile.flow` more events (writer running): before
    /// the faults, the relays work; after them, they recovered. A lane that does not (within
    /// 120 s, or at once when it has dead letters) is left to [`Scenario::finish`] to report.
    pub async fn flowing(&self) {
        for lane in &self.lanes {
            let target = lane.deliveries.distinct() + self.profile.flow;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while !lane
                .deliveries
                .wait_distinct(target, Duration::from_secs(1))
                .await
            {
                let dead = lane.dead_letters().await;
                if dead > 0 || tokio::time::Instant::now() > deadline {
                    println!(
                        "{}/{}: not flowing ({} delivered, {dead} dead letters)",
                        self.name,
                        lane.name,
                        lane.deliveries.distinct()
                    );
                    break;
                }
            }
        }
    }

    /// Once the faults are over: waits until the lanes deliver again (writers running), stops
    /// the writers, waits for every event to arrive, prints one line per lane and asserts 0
    /// lost, 0 order violations, 0 dead letters.
    pub async fn finish(mut self) {
        self.flowing().await;
        for lane in &mut self.lanes {
            lane.stop_writer().await;
        }
        let mut failures = Vec::new();
        for lane in &mut self.lanes {
            let r = lane.finish(self.profile.drain_limit).await;
            let v = &r.verdict;
            let mut what = self.what.clone();
            if r.kills > 0 {
                what.push("SIGKILL".into());
            }
            println!(
                "faults[{}] {}/{}: events={} faults={} ({}) lost={} order_violations={} \
                 duplicates={} dead_letters={} unexpected={} relay_exits={} peak_rss={:.1}MiB \
                 writer_failures={} after {:.0}s",
                self.profile.name,
                self.name,
                lane.name,
                v.events,
                self.faults + r.kills,
                what.join(", "),
                v.lost,
                v.violations,
                v.duplicates,
                r.dead_letters,
                v.unexpected,
                r.exits.len(),
                r.peak_kb as f64 / 1024.0,
                r.writer.failed,
                self.started.elapsed().as_secs_f64(),
            );
            if !r.exits.is_empty() {
                println!("  {}/{} relay exits: {:?}", self.name, lane.name, r.exits);
            }
            let ok = v.lost == 0 && v.violations == 0 && r.dead_letters == 0 && v.unexpected == 0;
            if !ok || !r.drained {
                failures.push(format!(
                    "{}/{}: lost {}, order violations {}, dead letters {}, unexpected {} \
                     (drained: {}); e.g. {:#?}\n{}",
                    self.name,
                    lane.name,
                    v.lost,
                    v.violations,
                    r.dead_letters,
                    v.unexpected,
                    r.drained,
                    v.examples,
                    lane.relays.log_tails(15).await
                ));
            }
        }
        if failures.is_empty() {
            let _ = std::fs::remove_dir_all(&self.servers.logs);
        } else {
            panic!(
                "{}\n(relay logs kept in {})",
                failures.join("\n"),
                self.servers.logs.display()
            );
        }
    }
}
