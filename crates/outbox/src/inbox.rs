//! The consumer side of the pattern: an **inbox** that applies each event's effects once.
//!
//! The relay delivers at least once, so a consumer sees some events twice (after a relay
//! crash, a broker redelivery, a consumer killed between its commit and its acknowledgement).
//! [`receive`] records the event id in `outbox_inbox`, **inside the consumer's own
//! transaction**, and says whether an earlier transaction already processed it. The handler's
//! writes and the inbox row commit together or not at all: a crash before the commit leaves
//! nothing (the event is processed on redelivery); after it, the redelivered copy is a
//! [`Receipt::Duplicate`] and only needs acknowledging.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool, event_id: uuid::Uuid) -> Result<(), outbox::Error> {
//! use outbox::inbox::{self, Receipt};
//!
//! let mut tx = pool.begin().await?;
//! if inbox::receive(&mut *tx, "shipping-service", event_id).await? == Receipt::New {
//!     sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
//!         .bind("42")
//!         .execute(&mut *tx)
//!         .await?;
//! }
//! tx.commit().await?; // the shipment and the inbox row, or neither
//! // now acknowledge the message to the broker
//! # Ok(()) }
//! ```
//!
//! Consumer names let several consumers share one database: each has its own set of ids.
//! Create the tables with [`create_tables`] (a consumer's database needs no outbox table) or
//! with [`crate::migrate()`] (migration 6). `outbox cleanup --inbox --older-than 30d` deletes
//! rows past retention: keep them longer than any redelivery can come late (the broker's
//! retention, a replay you may run).
//!
//! Two consumers of one name racing on the same event are safe on PostgreSQL: the second
//! `INSERT` waits for the first transaction and then reports a duplicate (or, if the first
//! rolled back, a new event). On SQLite start the transaction with `BEGIN IMMEDIATE`
//! (`pool.begin_with("BEGIN IMMEDIATE")`) so concurrent writers queue instead of failing.
//!
//! # Ordering help
//!
//! [`advance`] keeps, per consumer and aggregate, the highest *position* applied so far and
//! tells whether an event is [`Freshness::Stale`]: older than what was applied. The position is
//! the event's `seq` (the `seq` header of the relay's reference and CloudEvents envelopes) or,
//! weaker, its timestamp in microseconds. Skipping stale events is safe when:
//!
//! - positions are `seq` numbers and the relay keeps order per aggregate (it does, with one
//!   or several relays, poll or CDC) and the writers serialize writes per aggregate (the
//!   order-service does: `seq` is assigned at insert, not at commit);
//! - the effect of a newer event replaces what a stale one would have done (a status, a
//!   latest value), so skipping loses nothing.
//!
//! It is **not** safe with timestamps of concurrent writers (clocks and commit order differ,
//! two events may share a timestamp: an equal position counts as stale), across a replay of a
//! dead letter while later events of its aggregate went ahead (`on_dead_letter = "proceed"`:
//! the replayed event is older than what was applied and would be skipped), for events that
//! carry data nothing later repeats, or when positions of different sources are mixed under
//! one consumer name, or for an aggregate written both as rows and as messages ([`crate::emit()`]:
//! a message's `seq` is its LSN). The Debezium envelope carries no `seq`.
//!
//! All SQL of the inbox lives in this file, one module per database (its tables: migration 6,
//! `migrations/<database>/0006_inbox.sql`).

use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

use crate::Error;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Name of the inbox table.
pub const INBOX_TABLE: &str = "outbox_inbox";
/// Name of the table of per-aggregate positions ([`advance`]).
pub const POSITION_TABLE: &str = "outbox_inbox_position";

/// What the inbox says about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Receipt {
    /// Not processed before: apply its effects in this transaction, then commit.
    New,
    /// A committed transaction already processed it: apply nothing, acknowledge it.
    Duplicate,
}

impl Receipt {
    /// True for [`Receipt::Duplicate`].
    pub fn is_duplicate(self) -> bool {
        self == Receipt::Duplicate
    }
}

/// What [`advance`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Freshness {
    /// Newer than anything applied for its aggregate (or the first): recorded as the latest.
    Newer,
    /// Not newer than `latest`, the position already applied: an older event arriving late.
    Stale {
        /// The highest position applied so far for this aggregate.
        latest: i64,
    },
}

/// A database connection the inbox works on: `PgConnection` or `SqliteConnection`.
///
/// Pass `&mut *tx` for a `sqlx::Transaction`. Implemented by this crate only.
pub trait InboxConnection: Send {
    #[doc(hidden)]
    fn inbox_insert<'a>(
        &'a mut self,
        consumer: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    #[doc(hidden)]
    fn inbox_advance<'a>(
        &'a mut self,
        key: PositionKey<'a>,
        position: i64,
    ) -> BoxFuture<'a, Result<Freshness, Error>>;
    #[doc(hidden)]
    fn inbox_create_tables(&mut self) -> BoxFuture<'_, Result<(), Error>>;
}

/// Whose position [`advance`] moves.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct PositionKey<'a> {
    consumer: &'a str,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
}

/// Records that `consumer` processes event `event_id`, inside whatever transaction `conn` is
/// in, and says whether it was processed before. See the [module documentation](self).
pub async fn receive<C>(conn: &mut C, consumer: &str, event_id: Uuid) -> Result<Receipt, Error>
where
    C: InboxConnection + ?Sized,
{
    Ok(if conn.inbox_insert(consumer, event_id).await? {
        Receipt::New
    } else {
        Receipt::Duplicate
    })
}

/// Moves `consumer`'s position for the aggregate to `position` if it is higher than the one
/// recorded, inside `conn`'s transaction, and says whether the event is newer or stale. The
/// row stays locked until the transaction ends (PostgreSQL), so concurrent consumers of one
/// aggregate queue. See "Ordering help" in the [module documentation](self) for when skipping
/// a stale event is safe.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, id: uuid::Uuid, seq: i64) -> Result<(), outbox::Error> {
/// use outbox::inbox::{self, Freshness, Receipt};
///
/// let mut tx = pool.begin().await?;
/// if inbox::receive(&mut *tx, "shipping-service", id).await? == Receipt::New {
///     match inbox::advance(&mut *tx, "shipping-service", "Order", "42", seq).await? {
///         Freshness::Newer => { /* apply the event */ }
///         Freshness::Stale { latest } => { /* skip: seq {latest} was applied already */ }
///     }
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn advance<C>(
    conn: &mut C,
    consumer: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    position: i64,
) -> Result<Freshness, Error>
where
    C: InboxConnection + ?Sized,
{
    let key = PositionKey {
        consumer,
        aggregate_type,
        aggregate_id,
    };
    conn.inbox_advance(key, position).await
}

/// Creates the inbox tables alone (what migration 6 creates), for a consumer's database that
/// holds no outbox table. Idempotent; records no migration, so a later [`crate::migrate()`] on
/// the same database still runs (its migration 6 finds the tables there).
pub async fn create_tables<C>(conn: &mut C) -> Result<(), Error>
where
    C: InboxConnection + ?Sized,
{
    conn.inbox_create_tables().await
}

/// The statements of one database; the same `InboxConnection` code runs them.
macro_rules! inbox_connection {
    ($conn:ty, $sql:ident, $encode_id:expr) => {
        impl InboxConnection for $conn {
            fn inbox_insert<'a>(
                &'a mut self,
                consumer: &'a str,
                id: Uuid,
            ) -> BoxFuture<'a, Result<bool, Error>> {
                Box::pin(async move {
                    let done = sqlx::query($sql::INSERT)
                        .bind(($encode_id)(id))
                        .bind(consumer)
                        .execute(&mut *self)
                        .await
                        .map_err(Error::from_inbox)?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn inbox_advance<'a>(
                &'a mut self,
                key: PositionKey<'a>,
                position: i64,
            ) -> BoxFuture<'a, Result<Freshness, Error>> {
                Box::pin(async move {
                    let moved: Option<i64> = sqlx::query_scalar($sql::ADVANCE)
                        .bind(key.consumer)
                        .bind(key.aggregate_type)
                        .bind(key.aggregate_id)
                        .bind(position)
                        .fetch_optional(&mut *self)
                        .await
                        .map_err(Error::from_inbox)?;
                    if moved.is_some() {
                        return Ok(Freshness::Newer);
                    }
                    let latest: i64 = sqlx::query_scalar($sql::LATEST)
                        .bind(key.consumer)
                        .bind(key.aggregate_type)
                        .bind(key.aggregate_id)
                        .fetch_one(&mut *self)
                        .await?;
                    Ok(Freshness::Stale { latest })
                })
            }

            fn inbox_create_tables(&mut self) -> BoxFuture<'_, Result<(), Error>> {
                Box::pin(async move {
                    // One transaction: the tables and their indexes, or nothing.
                    let mut tx = sqlx::Connection::begin(&mut *self).await?;
                    sqlx::Executor::execute(&mut *tx, $sql::CREATE).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }
        }
    };
}

#[cfg(feature = "postgres")]
mod postgres {
    /// Migration 6, quiet about tables that exist already.
    pub(super) const CREATE: &str = concat!(
        "SET LOCAL client_min_messages = warning;\n",
        include_str!("../migrations/postgres/0006_inbox.sql")
    );
    pub(super) const INSERT: &str =
        "INSERT INTO outbox_inbox (id, consumer) VALUES ($1, $2) ON CONFLICT DO NOTHING";
    // ON CONFLICT DO UPDATE locks the row even when its WHERE is false: concurrent consumers of
    // one aggregate queue, and LATEST reads a position that cannot move under it.
    pub(super) const ADVANCE: &str = "INSERT INTO outbox_inbox_position \
         (consumer, aggregate_type, aggregate_id, last_position) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (consumer, aggregate_type, aggregate_id) DO UPDATE \
         SET last_position = excluded.last_position, updated_at = now() \
         WHERE outbox_inbox_position.last_position < excluded.last_position \
         RETURNING last_position";
    pub(super) const LATEST: &str = "SELECT last_position FROM outbox_inbox_position \
         WHERE consumer = $1 AND aggregate_type = $2 AND aggregate_id = $3";
}

#[cfg(feature = "postgres")]
inbox_connection!(sqlx::PgConnection, postgres, |id: Uuid| id);

#[cfg(feature = "sqlite")]
mod sqlite {
    /// Migration 6.
    pub(super) const CREATE: &str = include_str!("../migrations/sqlite/0006_inbox.sql");
    pub(super) const INSERT: &str =
        "INSERT INTO outbox_inbox (id, consumer) VALUES (?1, ?2) ON CONFLICT DO NOTHING";
    pub(super) const ADVANCE: &str = "INSERT INTO outbox_inbox_position \
         (consumer, aggregate_type, aggregate_id, last_position) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (consumer, aggregate_type, aggregate_id) DO UPDATE \
         SET last_position = excluded.last_position, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
         WHERE outbox_inbox_position.last_position < excluded.last_position \
         RETURNING last_position";
    pub(super) const LATEST: &str = "SELECT last_position FROM outbox_inbox_position \
         WHERE consumer = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3";
}

// Ids as hyphenated text, as in the outbox table.
#[cfg(feature = "sqlite")]
inbox_connection!(sqlx::SqliteConnection, sqlite, |id: Uuid| id
    .hyphenated()
    .to_string());
