//! The `orders` table on PostgreSQL, MySQL / MariaDB and SQLite.
//!
//! The statements are shared by PostgreSQL and SQLite (sqlx binds `$n` on both); MySQL binds
//! `?` in order and has its own. The table definition, the row lock and how ids and timestamps
//! are encoded differ per backend.

use std::future::Future;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::types::Json;
use sqlx::{MySqlConnection, PgConnection, SqliteConnection};
use uuid::Uuid;

use crate::{Item, Order};

const INSERT: &str = "INSERT INTO orders (id, customer_id, items, total, status, created_at) \
                      VALUES ($1, $2, $3, $4, $5, $6)";
const SELECT: &str = "SELECT customer_id, items, total, status, created_at, cancelled_at, \
                      cancellation_reason FROM orders WHERE id = $1";
const CANCEL: &str = "UPDATE orders SET status = $2, cancelled_at = $3, cancellation_reason = $4 \
                      WHERE id = $1";

const PG_TABLE: &str = "CREATE TABLE IF NOT EXISTS orders (
    id                  uuid             PRIMARY KEY,
    customer_id         text             NOT NULL,
    items               jsonb            NOT NULL,
    total               double precision NOT NULL,
    status              text             NOT NULL,
    created_at          timestamptz      NOT NULL,
    cancelled_at        timestamptz,
    cancellation_reason text
)";

// Ids as hyphenated text, JSON as text, timestamps as RFC 3339 UTC text (they sort as time).
const SQLITE_TABLE: &str = "CREATE TABLE IF NOT EXISTS orders (
    id                  TEXT PRIMARY KEY,
    customer_id         TEXT NOT NULL,
    items               TEXT NOT NULL CHECK (json_valid(items)),
    total               REAL NOT NULL,
    status              TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    cancelled_at        TEXT,
    cancellation_reason TEXT
)";

/// A database connection that holds the `orders` table: `PgConnection`, `MySqlConnection` or
/// `SqliteConnection`.
///
/// Implemented by this crate only. It lets [`create_order_in`](crate::create_order_in) and
/// [`cancel_order_in`](crate::cancel_order_in) work inside a transaction on either database.
pub trait OrderConnection: outbox::OutboxConnection + private::Sealed {
    #[doc(hidden)]
    fn create_orders_table(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    #[doc(hidden)]
    fn insert_order(
        &mut self,
        order: &Order,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    #[doc(hidden)]
    fn fetch_order(
        &mut self,
        id: Uuid,
        for_update: bool,
    ) -> impl Future<Output = Result<Option<Order>, sqlx::Error>> + Send;
    #[doc(hidden)]
    fn save_cancellation(
        &mut self,
        order: &Order,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

mod private {
    pub trait Sealed {}
    impl Sealed for sqlx::PgConnection {}
    impl Sealed for sqlx::SqliteConnection {}
    impl Sealed for sqlx::MySqlConnection {}
}

/// The columns of [`SELECT`]; the id is known to the caller.
#[derive(sqlx::FromRow)]
struct OrderRow {
    customer_id: String,
    items: Json<Vec<Item>>,
    total: f64,
    status: String,
    created_at: DateTime<Utc>,
    cancelled_at: Option<DateTime<Utc>>,
    cancellation_reason: Option<String>,
}

impl OrderRow {
    fn into_order(self, id: Uuid) -> Order {
        Order {
            id,
            customer_id: self.customer_id,
            items: self.items.0,
            total: self.total,
            status: self.status,
            created_at: self.created_at,
            cancelled_at: self.cancelled_at,
            cancellation_reason: self.cancellation_reason,
        }
    }
}

impl OrderConnection for PgConnection {
    async fn create_orders_table(&mut self) -> Result<(), sqlx::Error> {
        sqlx::Executor::execute(self, PG_TABLE).await.map(drop)
    }

    async fn insert_order(&mut self, o: &Order) -> Result<(), sqlx::Error> {
        let query = sqlx::query(INSERT).bind(o.id).bind(&o.customer_id);
        let query = query.bind(Json(&o.items)).bind(o.total).bind(&o.status);
        query.bind(o.created_at).execute(self).await.map(drop)
    }

    async fn fetch_order(
        &mut self,
        id: Uuid,
        for_update: bool,
    ) -> Result<Option<Order>, sqlx::Error> {
        let sql = if for_update {
            format!("{SELECT} FOR UPDATE")
        } else {
            SELECT.to_string()
        };
        let row: Option<OrderRow> = sqlx::query_as(&sql).bind(id).fetch_optional(self).await?;
        Ok(row.map(|r| r.into_order(id)))
    }

    async fn save_cancellation(&mut self, o: &Order) -> Result<(), sqlx::Error> {
        let query = sqlx::query(CANCEL).bind(o.id).bind(&o.status);
        query
            .bind(o.cancelled_at)
            .bind(&o.cancellation_reason)
            .execute(self)
            .await
            .map(drop)
    }
}

/// SQLite has no row locks: callers take the write lock up front with `BEGIN IMMEDIATE`.
impl OrderConnection for SqliteConnection {
    async fn create_orders_table(&mut self) -> Result<(), sqlx::Error> {
        sqlx::Executor::execute(self, SQLITE_TABLE).await.map(drop)
    }

    async fn insert_order(&mut self, o: &Order) -> Result<(), sqlx::Error> {
        let query = sqlx::query(INSERT).bind(text_id(o.id)).bind(&o.customer_id);
        let query = query.bind(Json(&o.items)).bind(o.total).bind(&o.status);
        query
            .bind(text_time(o.created_at))
            .execute(self)
            .await
            .map(drop)
    }

    async fn fetch_order(
        &mut self,
        id: Uuid,
        _for_update: bool,
    ) -> Result<Option<Order>, sqlx::Error> {
        let row: Option<OrderRow> = sqlx::query_as(SELECT)
            .bind(text_id(id))
            .fetch_optional(self)
            .await?;
        Ok(row.map(|r| r.into_order(id)))
    }

    async fn save_cancellation(&mut self, o: &Order) -> Result<(), sqlx::Error> {
        let query = sqlx::query(CANCEL).bind(text_id(o.id)).bind(&o.status);
        let cancelled_at = o.cancelled_at.map(text_time);
        query
            .bind(cancelled_at)
            .bind(&o.cancellation_reason)
            .execute(self)
            .await
            .map(drop)
    }
}

// Ids as CHAR(36) text, timestamps as DATETIME(6) in UTC (sqlx's sessions run at +00:00).
const MYSQL_TABLE: &str = "CREATE TABLE IF NOT EXISTS orders (
    id                  CHAR(36)     CHARACTER SET ascii PRIMARY KEY,
    customer_id         VARCHAR(255) NOT NULL,
    items               JSON         NOT NULL,
    total               DOUBLE       NOT NULL,
    status              VARCHAR(32)  NOT NULL,
    created_at          DATETIME(6)  NOT NULL,
    cancelled_at        DATETIME(6),
    cancellation_reason TEXT
) ENGINE = InnoDB";

/// MySQL binds `?` in order: the statements with the id where MySQL expects it.
const MYSQL_INSERT: &str =
    "INSERT INTO orders (id, customer_id, items, total, status, created_at) \
                            VALUES (?, ?, ?, ?, ?, ?)";
const MYSQL_SELECT: &str = "SELECT customer_id, items, total, status, created_at, cancelled_at, \
                            cancellation_reason FROM orders WHERE id = ?";
const MYSQL_CANCEL: &str = "UPDATE orders SET status = ?, cancelled_at = ?, \
                            cancellation_reason = ? WHERE id = ?";

/// MySQL / MariaDB: `SELECT … FOR UPDATE` locks the order row, as on PostgreSQL.
impl OrderConnection for MySqlConnection {
    async fn create_orders_table(&mut self) -> Result<(), sqlx::Error> {
        sqlx::Executor::execute(self, MYSQL_TABLE).await.map(drop)
    }

    async fn insert_order(&mut self, o: &Order) -> Result<(), sqlx::Error> {
        let query = sqlx::query(MYSQL_INSERT).bind(text_id(o.id));
        let query = query.bind(&o.customer_id).bind(Json(&o.items));
        let query = query.bind(o.total).bind(&o.status).bind(o.created_at);
        query.execute(self).await.map(drop)
    }

    async fn fetch_order(
        &mut self,
        id: Uuid,
        for_update: bool,
    ) -> Result<Option<Order>, sqlx::Error> {
        let sql = if for_update {
            format!("{MYSQL_SELECT} FOR UPDATE")
        } else {
            MYSQL_SELECT.to_string()
        };
        let row: Option<OrderRow> = sqlx::query_as(&sql)
            .bind(text_id(id))
            .fetch_optional(self)
            .await?;
        Ok(row.map(|r| r.into_order(id)))
    }

    async fn save_cancellation(&mut self, o: &Order) -> Result<(), sqlx::Error> {
        let query = sqlx::query(MYSQL_CANCEL)
            .bind(&o.status)
            .bind(o.cancelled_at);
        query
            .bind(&o.cancellation_reason)
            .bind(text_id(o.id))
            .execute(self)
            .await
            .map(drop)
    }
}

fn text_id(id: Uuid) -> String {
    id.hyphenated().to_string()
}

fn text_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}
