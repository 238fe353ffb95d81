//! The fault suite: the `outbox` binary's relays under SIGKILLs, broker and database outages,
//! connection cuts and refused credentials, while a writer keeps committing events.
//!
//! Every scenario runs its own private servers (PostgreSQL with TLS and `wal_level = logical`,
//! NATS with JetStream, a cutting TCP proxy in front of each for the relays) and never touches
//! the shared services. It runs a poll lane and a CDC lane side by side (each its own database,
//! writer, relays and stream or webhook receiver) and judges from the broker's side: every
//! event written arrived at least once (0 lost), each aggregate's first deliveries came in the
//! order they were written (0 order violations), nothing went to `outbox_dead_letter`;
//! duplicates are counted and reported (the streams' duplicate window is cut to its 100 ms
//! floor, so they are the relays' redeliveries, not what JetStream's 2-minute deduplication
//! would leave; the webhook receiver counts every 2xx). Each lane prints one line: events,
//! faults injected, lost, order violations, duplicates, dead letters, unexpected relay exits,
//! peak RSS of its relay processes (VmHWM, sampled every 100 ms and before each kill or stop).
//!
//! Two forms. The short one is what `cargo test` runs (CI): a few kills, 5 s outages (still
//! longer than the relays' whole retry budget). The full one:
//!
//! ```text
//! OUTBOX_FAULTS=full cargo test --release --test faults -- --nocapture --test-threads 1
//! ```
//!
//! (≥ 30 SIGKILLs across three poll relays and ≥ 8 of the CDC relay, NATS stopped 60 s,
//! PostgreSQL stopped 15 s, 90 s of connection cuts, 30 s of 401s.)
//! `OUTBOX_FAULTS_VERBOSE=1` narrates the stream readers' reconnections.

mod faults {
    pub mod collect;
    pub mod lane;
    pub mod profile;
    pub mod relays;
    pub mod writer;
}

use faults::lane::{Lane, Scenario, Target};
use faults::profile::random_ms;
use outbox_testkit::require;

/// Three poll relays and one CDC relay, SIGKILLed at random moments (the victim chosen at
/// random among the poll relays) and started again after up to half a second.
#[tokio::test(flavor = "multi_thread")]
async fn sigkills() {
    let mut s = require!(Scenario::running("sigkills", 3, Target::Nats).await);
    let p = s.profile;
    let (poll, cdc) = s.lanes.split_at_mut(1);
    let (poll, cdc) = (&mut poll[0], &mut cdc[0]);
    tokio::join!(
        kill_at_random(poll, p.poll_kills, p.poll_kill_gap),
        kill_at_random(cdc, p.cdc_kills, p.cdc_kill_gap)
    );
    s.finish().await;
}

/// SIGKILLs `kills` relays of `lane`, each after a random pause of `gap` and once the lane
/// delivered something since the last one (every kill hits a relay at work); each victim starts
/// again after up to half a second.
async fn kill_at_random(lane: &mut Lane, kills: usize, gap: (u64, u64)) {
    for _ in 0..kills {
        let before = lane.deliveries.distinct();
        tokio::time::sleep(random_ms(gap)).await;
        lane.delivers(before + 20, "again after a SIGKILL").await;
        assert!(lane.relays.kill_random(random_ms((0, 500))).await);
    }
}

/// NATS stopped (gracefully: its store survives) for longer than the relays' whole retry
/// budget, then started again on the same port: nothing dead-lettered, all delivered after.
#[tokio::test(flavor = "multi_thread")]
async fn nats_outage() {
    let mut s = require!(Scenario::running("nats_outage", 2, Target::Nats).await);
    let outage = s.profile.nats_outage;
    s.servers.nats.stop().await;
    s.fault(1, "NATS stopped");
    tokio::time::sleep(outage).await;
    let nats = &mut s.servers.nats;
    nats.start_again().await.expect("NATS starts again");
    s.finish().await;
}

/// PostgreSQL restarted (`pg_ctl restart -m fast`), then stopped for a while, each time while
/// the relays drain a backlog.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_and_stop() {
    let mut s = require!(Scenario::running("postgres", 2, Target::Nats).await);
    mid_drain(&s, "PostgreSQL restarted").await;
    let pg = &mut s.servers.pg;
    pg.restart_fast().await.expect("pg_ctl restart -m fast");
    s.fault(1, "PostgreSQL restarted");
    s.flowing().await;
    mid_drain(&s, "PostgreSQL stopped").await;
    s.servers.pg.stop_fast().await.expect("pg_ctl stop -m fast");
    s.fault(1, "PostgreSQL stopped");
    tokio::time::sleep(s.profile.pg_stop).await;
    let pg = &mut s.servers.pg;
    pg.start_again().await.expect("PostgreSQL starts again");
    s.finish().await;
}

/// Writes a backlog in every lane and returns once the relays are draining it (a hundred of it
/// arrived); prints what is left of it, which `what` then hits.
async fn mid_drain(s: &Scenario, what: &str) {
    let mut left = Vec::new();
    for lane in &s.lanes {
        let before = lane.deliveries.distinct();
        lane.burst(s.profile.burst).await;
        lane.delivers(before + 100, "the backlog").await;
        left.push(format!("{} {}", lane.backlog().await, lane.name));
    }
    println!(
        "{}: {what} with events still to deliver: {}",
        s.name,
        left.join(", ")
    );
}

/// Connections to NATS and to PostgreSQL cut at random (every connection through the proxy
/// closed, new ones refused for 0.1–1 s), again and again.
#[tokio::test(flavor = "multi_thread")]
async fn connection_cuts() {
    let mut s = require!(Scenario::running("cuts", 2, Target::Nats).await);
    let end = tokio::time::Instant::now() + s.profile.cuts_for;
    let (mut to_pg, mut to_nats) = (0, 0);
    while tokio::time::Instant::now() < end {
        let proxy = if fastrand::bool() {
            to_pg += 1;
            &s.servers.pg_proxy
        } else {
            to_nats += 1;
            &s.servers.nats_proxy
        };
        proxy.cut().await;
        tokio::time::sleep(random_ms((100, 1000))).await;
        proxy.restore().await;
        tokio::time::sleep(random_ms((200, 1500))).await;
    }
    s.fault(
        to_pg + to_nats,
        &format!("connections cut: {to_pg} to PostgreSQL, {to_nats} to NATS"),
    );
    s.finish().await;
}

/// The webhook refuses the relays' credentials (401) for longer than their retry budget, then
/// accepts them.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_refuses_credentials() {
    let mut s = require!(Scenario::running("webhook_401", 2, Target::Webhook).await);
    let refuse = s.profile.refuse_for;
    for lane in &s.lanes {
        lane.receiver
            .as_ref()
            .expect("a webhook lane")
            .refuse_for(refuse);
    }
    s.fault(1, "webhook answering 401");
    tokio::time::sleep(refuse).await;
    let refused: Vec<String> = s
        .lanes
        .iter()
        .map(|l| {
            format!(
                "{}: {}",
                l.name,
                l.receiver.as_ref().map_or(0, |r| r.refused())
            )
        })
        .collect();
    println!(
        "webhook_401: requests refused with 401 — {}",
        refused.join(", ")
    );
    s.finish().await;
}
