//! `outbox migrate`: creates or upgrades the schema, idempotently. An `outbox` table created
//! by other code is adopted when it can be (the reference SQLAlchemy model's); Debezium's
//! outbox table is left unchanged, with the dead-letter table the CDC source needs created
//! beside it and a note on what to do; any other table is refused with the reason (exit 2).

use outbox::adopt::ForeignTable;
use outbox_relay::Store;

use crate::error::CliError;

pub async fn run(store: &Store) -> Result<(), CliError> {
    let report = match store.migrate().await {
        Err(outbox_relay::Error::Schema(outbox::Error::ForeignTable(ForeignTable::Debezium))) => {
            store.create_dead_letter_table().await?;
            println!("{}", ForeignTable::Debezium);
            println!("created the dead-letter table outbox_dead_letter; table outbox is unchanged");
            return Ok(());
        }
        other => other?,
    };
    if report.applied.is_empty() {
        println!("schema is up to date (version {})", report.version);
    } else {
        for (v, name) in &report.applied {
            println!("applied migration {v}: {name}");
        }
        println!("schema is at version {}", report.version);
    }
    Ok(())
}
