//! `enqueue`: writes an [`Event`] into the outbox table on the caller's connection or transaction
//! (PostgreSQL, MySQL / MariaDB or SQLite), so it commits or rolls back with the business rows.

use std::future::Future;
use std::pin::Pin;

use crate::{Error, Event};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database connection the outbox can write to: `PgConnection`, `MySqlConnection` or
/// `SqliteConnection`.
///
/// Pass `&mut *tx` for a `sqlx::Transaction`, so the event commits (or rolls back) with your
/// business rows. Implemented by this crate only; you do not implement it yourself.
pub trait OutboxConnection: Send {
    #[doc(hidden)]
    fn insert_events<'a>(&'a mut self, events: &'a [Event]) -> BoxFuture<'a, Result<(), Error>>;
    #[doc(hidden)]
    fn run_migrations(&mut self) -> BoxFuture<'_, Result<crate::migrate::Report, Error>>;
    #[doc(hidden)]
    fn schema_version(&mut self) -> BoxFuture<'_, Result<Option<i64>, Error>>;
    #[doc(hidden)]
    fn table_layout(&mut self) -> BoxFuture<'_, Result<crate::adopt::Layout, Error>>;
}

/// Writes `event` into the outbox table on `conn`, inside whatever transaction `conn` is in.
///
/// ```no_run
/// # async fn demo(pool: sqlx::SqlitePool) -> Result<(), outbox::Error> {
/// let mut tx = pool.begin().await?;
/// let event = outbox::Event::new("Order", "42", "OrderCreated", serde_json::json!({"total": 9.5}));
/// outbox::enqueue(&mut *tx, &event).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn enqueue<C>(conn: &mut C, event: &Event) -> Result<(), Error>
where
    C: OutboxConnection + ?Sized,
{
    conn.insert_events(std::slice::from_ref(event)).await
}

/// Writes several events in one statement where the database allows it; they get increasing
/// `seq` numbers in slice order, so events of one aggregate are delivered in that order.
pub async fn enqueue_all<C>(conn: &mut C, events: &[Event]) -> Result<(), Error>
where
    C: OutboxConnection + ?Sized,
{
    if events.is_empty() {
        return Ok(());
    }
    conn.insert_events(events).await
}

#[cfg(feature = "postgres")]
impl OutboxConnection for sqlx::PgConnection {
    fn run_migrations(&mut self) -> BoxFuture<'_, Result<crate::migrate::Report, Error>> {
        Box::pin(crate::migrate::postgres::run(self))
    }
    fn schema_version(&mut self) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        Box::pin(crate::migrate::postgres::version(self))
    }
    fn table_layout(&mut self) -> BoxFuture<'_, Result<crate::adopt::Layout, Error>> {
        Box::pin(crate::adopt::postgres::layout(self))
    }
    fn insert_events<'a>(&'a mut self, events: &'a [Event]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if let [event] = events {
                sqlx::query(
                    "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) \
                     VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
                )
                .bind(event.id())
                .bind(event.aggregate_type())
                .bind(event.aggregate_id())
                .bind(event.event_type())
                .bind(sqlx::types::Json(event.payload()))
                .bind(event.headers_json())
                .execute(&mut *self)
                .await
                .map_err(Error::from_query)?;
                return Ok(());
            }
            let mut ids = Vec::with_capacity(events.len());
            let mut types = Vec::with_capacity(events.len());
            let mut agg_ids = Vec::with_capacity(events.len());
            let mut event_types = Vec::with_capacity(events.len());
            let mut payloads = Vec::with_capacity(events.len());
            let mut headers = Vec::with_capacity(events.len());
            for e in events {
                ids.push(e.id());
                types.push(e.aggregate_type());
                agg_ids.push(e.aggregate_id());
                event_types.push(e.event_type());
                payloads.push(serde_json::to_string(e.payload())?);
                headers.push(e.headers_json());
            }
            // WITH ORDINALITY + ORDER BY keeps slice order, hence seq order.
            sqlx::query(
                "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) \
                 SELECT id, aggregate_type, aggregate_id, event_type, payload::jsonb, headers::jsonb \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
                   WITH ORDINALITY AS e(id, aggregate_type, aggregate_id, event_type, payload, headers, n) \
                 ORDER BY n",
            )
            .bind(&ids)
            .bind(&types)
            .bind(&agg_ids)
            .bind(&event_types)
            .bind(&payloads)
            .bind(&headers)
            .execute(&mut *self)
            .await
            .map_err(Error::from_query)?;
            Ok(())
        })
    }
}

#[cfg(feature = "sqlite")]
impl OutboxConnection for sqlx::SqliteConnection {
    fn run_migrations(&mut self) -> BoxFuture<'_, Result<crate::migrate::Report, Error>> {
        Box::pin(crate::migrate::sqlite::run(self))
    }
    fn schema_version(&mut self) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        Box::pin(crate::migrate::sqlite::version(self))
    }
    fn table_layout(&mut self) -> BoxFuture<'_, Result<crate::adopt::Layout, Error>> {
        Box::pin(crate::adopt::sqlite::layout(self))
    }
    fn insert_events<'a>(&'a mut self, events: &'a [Event]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // SQLite runs in-process: a cached prepared statement per row costs microseconds.
            for e in events {
                sqlx::query(
                    "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .bind(e.id().hyphenated().to_string())
                .bind(e.aggregate_type())
                .bind(e.aggregate_id())
                .bind(e.event_type())
                .bind(serde_json::to_string(e.payload())?)
                .bind(e.headers_json())
                .execute(&mut *self)
                .await
                .map_err(Error::from_query)?;
            }
            Ok(())
        })
    }
}
