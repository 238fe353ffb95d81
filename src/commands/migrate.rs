//! `outbox migrate`: creates or upgrades the schema, idempotently.

use outbox_relay::Store;

use crate::error::CliError;

pub async fn run(store: &Store) -> Result<(), CliError> {
    let report = store.migrate().await?;
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
