//! The service: every write stores the order and its outbox event in one transaction.

use sqlx::{Database, MySqlPool, PgPool, SqlitePool, Transaction};
use uuid::Uuid;

use crate::{Item, Order, OrderConnection, OrderError};

/// The database behind an [`OrderService`].
#[derive(Debug, Clone)]
pub enum OrderPool {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
    /// MySQL 8.0+ or MariaDB 10.6+.
    Mysql(MySqlPool),
}

impl From<MySqlPool> for OrderPool {
    fn from(pool: MySqlPool) -> Self {
        OrderPool::Mysql(pool)
    }
}

impl From<PgPool> for OrderPool {
    fn from(pool: PgPool) -> Self {
        OrderPool::Postgres(pool)
    }
}

impl From<SqlitePool> for OrderPool {
    fn from(pool: SqlitePool) -> Self {
        OrderPool::Sqlite(pool)
    }
}

/// The reference order service. Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct OrderService {
    pool: OrderPool,
}

/// Runs `$body` (a future using `$tx`) in a write transaction on either database and commits.
///
/// SQLite starts with `BEGIN IMMEDIATE`: the write lock is taken before the first read, so a
/// read-then-write (cancel) waits for other writers instead of failing to upgrade its lock.
macro_rules! in_write_transaction {
    ($pool:expr, |$tx:ident| $body:expr) => {
        match $pool {
            OrderPool::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let out = $body.await?;
                $tx.commit().await?;
                Ok(out)
            }
            OrderPool::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out = $body.await?;
                $tx.commit().await?;
                Ok(out)
            }
            OrderPool::Mysql(pool) => {
                let mut $tx = pool.begin().await?;
                let out = $body.await?;
                $tx.commit().await?;
                Ok(out)
            }
        }
    };
}

impl OrderService {
    /// A service on `pool` (a `PgPool`, a `MySqlPool`, a `SqlitePool` or an [`OrderPool`]).
    pub fn new(pool: impl Into<OrderPool>) -> Self {
        OrderService { pool: pool.into() }
    }

    /// The database this service writes to.
    pub fn pool(&self) -> &OrderPool {
        &self.pool
    }

    /// Creates the outbox schema ([`outbox::migrate`]) and the `orders` table, idempotently.
    pub async fn migrate(&self) -> Result<(), OrderError> {
        match &self.pool {
            OrderPool::Postgres(pool) => migrate_on(&mut *pool.acquire().await?).await,
            OrderPool::Sqlite(pool) => migrate_on(&mut *pool.acquire().await?).await,
            OrderPool::Mysql(pool) => migrate_on(&mut *pool.acquire().await?).await,
        }
    }

    /// Creates a pending order and its `OrderCreated` event, atomically.
    pub async fn create_order(
        &self,
        customer_id: &str,
        items: Vec<Item>,
        total: f64,
    ) -> Result<Order, OrderError> {
        in_write_transaction!(&self.pool, |tx| create_order_in(
            &mut tx,
            customer_id,
            items,
            total
        ))
    }

    /// Cancels an order and writes its `OrderCancelled` event, atomically.
    ///
    /// Fails with [`OrderError::NotFound`] or [`OrderError::AlreadyCancelled`], writing nothing.
    pub async fn cancel_order(&self, order_id: Uuid, reason: &str) -> Result<Order, OrderError> {
        in_write_transaction!(&self.pool, |tx| cancel_order_in(&mut tx, order_id, reason))
    }

    /// The order with this id, if any.
    pub async fn get_order(&self, order_id: Uuid) -> Result<Option<Order>, OrderError> {
        Ok(match &self.pool {
            OrderPool::Postgres(pool) => pool.acquire().await?.fetch_order(order_id, false).await?,
            OrderPool::Sqlite(pool) => pool.acquire().await?.fetch_order(order_id, false).await?,
            OrderPool::Mysql(pool) => pool.acquire().await?.fetch_order(order_id, false).await?,
        })
    }
}

async fn migrate_on<C: OrderConnection>(conn: &mut C) -> Result<(), OrderError> {
    outbox::migrate(conn).await?;
    conn.create_orders_table().await?;
    Ok(())
}

/// Inserts a pending order and enqueues its `OrderCreated` event inside `tx`; nothing is
/// visible to others until you commit `tx`, and a rollback discards both rows.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), order_service::OrderError> {
/// let mut tx = pool.begin().await?;
/// let order = order_service::create_order_in(&mut tx, "customer-1", vec![], 0.0).await?;
/// order_service::cancel_order_in(&mut tx, order.id, "changed my mind").await?;
/// tx.commit().await?; // the order and both events, or nothing
/// # Ok(()) }
/// ```
pub async fn create_order_in<DB>(
    tx: &mut Transaction<'_, DB>,
    customer_id: &str,
    items: Vec<Item>,
    total: f64,
) -> Result<Order, OrderError>
where
    DB: Database,
    DB::Connection: OrderConnection,
{
    let order = Order::new(customer_id, items, total);
    let conn: &mut DB::Connection = tx;
    conn.insert_order(&order).await?;
    outbox::enqueue(conn, &order.created_event()).await?;
    Ok(order)
}

/// Cancels an order and enqueues its `OrderCancelled` event inside `tx`.
///
/// On PostgreSQL and MySQL the order row is locked (`SELECT … FOR UPDATE`) until `tx` ends. On SQLite,
/// start `tx` with `pool.begin_with("BEGIN IMMEDIATE")` so that concurrent cancels queue for
/// the write lock instead of failing with `SQLITE_BUSY` when the read turns into a write.
pub async fn cancel_order_in<DB>(
    tx: &mut Transaction<'_, DB>,
    order_id: Uuid,
    reason: &str,
) -> Result<Order, OrderError>
where
    DB: Database,
    DB::Connection: OrderConnection,
{
    let conn: &mut DB::Connection = tx;
    let mut order = conn
        .fetch_order(order_id, true)
        .await?
        .ok_or(OrderError::NotFound(order_id))?;
    if order.is_cancelled() {
        return Err(OrderError::AlreadyCancelled(order_id));
    }
    order.cancel(reason);
    conn.save_cancellation(&order).await?;
    outbox::enqueue(conn, &order.cancelled_event()).await?;
    Ok(order)
}
