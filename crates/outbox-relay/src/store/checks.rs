//! What commands check before they act, and how they explain a database that is not ready:
//! a schema that is missing, not yet adopted or cannot be adopted (Debezium's layout), and a
//! CDC reader of the outbox table, which a polling relay must not double.

use super::replication::{self, CdcReaders};
use super::Store;
use crate::error::Error;

impl Store {
    /// Who reads the outbox table through logical replication (PostgreSQL; `None` on SQLite
    /// or when nobody does).
    pub async fn cdc_readers(&self) -> Result<Option<CdcReaders>, Error> {
        let Store::Postgres(pool) = self else {
            return Ok(None);
        };
        let slots = replication::replication_slots(pool).await?;
        if slots.is_empty() {
            return Ok(None);
        }
        Ok(replication::outbox_publications(pool)
            .await?
            .and_then(|(table, publications)| CdcReaders::find(table, publications, &slots)))
    }

    /// Refuses a polling relay on a table that CDC reads ([`CdcReaders::refusal`]): CDC never
    /// marks rows published, so polling would deliver every CDC-delivered event again. With
    /// `allow` (`--allow-with-cdc`) it only warns. Best effort: when the slots cannot be read
    /// (a hot standby), nothing is refused.
    pub async fn check_poll_source(&self, allow: bool) -> Result<(), Error> {
        match self.cdc_readers().await {
            Ok(Some(cdc)) if !allow => Err(Error::Config(cdc.refusal())),
            Ok(Some(cdc)) => {
                tracing::warn!(table = %cdc.table, slots = %cdc.slots.join(","), "polling a table that CDC reads (--allow-with-cdc): events the CDC reader delivered are delivered again");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot tell whether CDC reads the outbox table");
                Ok(())
            }
        }
    }

    /// A failed statement of a command that needs the schema, explained when the schema is
    /// what is wrong (missing, never migrated, Debezium's layout, outdated).
    pub(super) async fn explained<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match result {
            Err(e) => match self.ensure_schema().await {
                Err(why @ Error::Schema(_)) => Err(why),
                _ => Err(e),
            },
            ok => ok,
        }
    }

    /// Creates the dead-letter table alone, beside an outbox table `outbox migrate` leaves
    /// unchanged (Debezium's): what the CDC source needs. PostgreSQL only; a no-op on SQLite.
    pub async fn create_dead_letter_table(&self) -> Result<(), Error> {
        if let Store::Postgres(pool) = self {
            outbox::migrate::create_dead_letter_table(&mut *pool.acquire().await?).await?;
        }
        Ok(())
    }
}
