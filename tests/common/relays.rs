//! The relay scenarios PostgreSQL and MySQL share (`relay_nats.rs`, `relay_mysql.rs`): a relay
//! SIGKILLed under load, and three relays at once, checked on a NATS stream. [`OutboxPool`] is
//! what they need from the database.

use std::future::Future;
use std::time::Duration;

use super::*;

/// The outbox table's pool on a server the relay tests run against.
pub trait OutboxPool: Clone + Send + Sync + 'static {
    /// See [`insert_sequenced`](super::insert_sequenced).
    fn insert_sequenced(
        &self,
        agg_type: &str,
        aggregates: usize,
        per: usize,
        start: usize,
    ) -> impl Future<Output = ()> + Send;
    /// Events not yet published.
    fn pending(&self) -> impl Future<Output = i64> + Send;
}

impl OutboxPool for sqlx::PgPool {
    async fn insert_sequenced(&self, agg_type: &str, aggregates: usize, per: usize, start: usize) {
        super::insert_sequenced(self, agg_type, aggregates, per, start).await
    }
    async fn pending(&self) -> i64 {
        super::pending(self).await
    }
}

impl OutboxPool for sqlx::MySqlPool {
    async fn insert_sequenced(&self, agg_type: &str, aggregates: usize, per: usize, start: usize) {
        super::mysql::insert_sequenced(self, agg_type, aggregates, per, start).await
    }
    async fn pending(&self) -> i64 {
        super::mysql::pending(self).await
    }
}

/// Waits (bounded) until no event is pending.
async fn all_published<P: OutboxPool>(pool: &P, limit: Duration) {
    wait_until(limit, "every event published", || async {
        (pool.pending().await == 0).then_some(())
    })
    .await;
}

/// How big a scenario is: `aggregates` × `per` events first, then `rounds` × `more` per
/// aggregate while the relays run.
pub struct Load {
    pub aggregates: usize,
    pub per: usize,
    pub rounds: usize,
    pub more: usize,
}

impl Load {
    fn total(&self) -> usize {
        self.aggregates * (self.per + self.rounds * self.more)
    }
}

/// Relays SIGKILLed once the stream holds each of `kill_at` messages while a writer adds
/// events, then one that drains: every event arrives, the first deliveries in order.
pub async fn sigkill_under_load<P: OutboxPool>(
    url: &str,
    pool: &P,
    nats: &TestNats,
    relay_args: &[&str],
    load: Load,
    kill_at: &[u64],
) {
    let stream = nats.stream();
    let agg = format!("Crash{}", nats.prefix);
    pool.insert_sequenced(&agg, load.aggregates, load.per, 0)
        .await;
    // A writer keeps adding events while relays die and restart.
    let writer = {
        let (pool, agg) = (pool.clone(), agg.clone());
        let Load {
            aggregates,
            per,
            rounds,
            more,
        } = load;
        tokio::spawn(async move {
            for round in 0..rounds {
                pool.insert_sequenced(&agg, aggregates, more, per + round * more)
                    .await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    for &n in kill_at {
        let mut relay = spawn_relay(url, relay_args);
        wait_stream_len(nats, &stream, n, Duration::from_secs(60)).await;
        relay.kill().await;
    }
    writer.await.unwrap();
    let mut relay = spawn_relay(url, relay_args);
    all_published(pool, Duration::from_secs(120)).await;
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait(Duration::from_secs(15)).await, 0);
    let total = load.total();
    let msgs = nats
        .read_stream(&stream, total * 2, Duration::from_secs(5))
        .await;
    assert_eq!(
        check_order(&msgs),
        total,
        "every event delivered at least once"
    );
    nats.cleanup().await;
}

/// Three relays drain few aggregates with many events each (they contend for the same
/// aggregates) while more arrive: nothing lost, first deliveries in order.
pub async fn three_relays<P: OutboxPool>(
    url: &str,
    pool: &P,
    nats: &TestNats,
    relay_args: &[&str],
    load: Load,
) {
    let stream = nats.stream();
    let agg = format!("Multi{}", nats.prefix);
    pool.insert_sequenced(&agg, load.aggregates, load.per, 0)
        .await;
    let mut relays: Vec<_> = (0..3).map(|_| spawn_relay(url, relay_args)).collect();
    for round in 0..load.rounds {
        pool.insert_sequenced(
            &agg,
            load.aggregates,
            load.more,
            load.per + round * load.more,
        )
        .await;
    }
    all_published(pool, Duration::from_secs(120)).await;
    for r in &relays {
        r.signal(libc::SIGTERM);
    }
    for r in &mut relays {
        assert_eq!(r.wait(Duration::from_secs(15)).await, 0);
    }
    let total = load.total();
    let msgs = nats
        .read_stream(&stream, total * 2, Duration::from_secs(5))
        .await;
    assert_eq!(check_order(&msgs), total);
    nats.cleanup().await;
}
