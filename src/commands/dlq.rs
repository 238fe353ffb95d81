//! `outbox dlq`: list, show, replay and purge dead letters.

use outbox_relay::Store;

use crate::cli::DlqCommand;
use crate::error::CliError;

/// Parses event or dead-letter ids given on the command line.
fn parse_ids(ids: &[String]) -> Result<Vec<uuid::Uuid>, CliError> {
    ids.iter()
        .map(|s| {
            uuid::Uuid::parse_str(s).map_err(|_| {
                CliError::usage(format!("{s:?} is not an id (a UUID such as 0190a6b2-…)"))
            })
        })
        .collect()
}

pub async fn run(store: &Store, cmd: &DlqCommand) -> Result<(), CliError> {
    match cmd {
        DlqCommand::List { limit, json } => {
            let rows = store.dead_letters(*limit).await?;
            if *json {
                for r in &rows {
                    println!(
                        "{}",
                        serde_json::to_string(r).map_err(|e| CliError::runtime(e.to_string()))?
                    );
                }
            } else if rows.is_empty() {
                println!("no dead letters");
            } else {
                println!(
                    "{:<36}  {:<36}  {:<24}  {:<20}  ERROR",
                    "ID", "EVENT ID", "AGGREGATE", "TYPE"
                );
                for r in &rows {
                    let agg = format!("{}/{}", r.aggregate_type, r.aggregate_id);
                    let err: String = r.error.chars().take(60).collect();
                    println!(
                        "{:<36}  {:<36}  {:<24}  {:<20}  {}",
                        r.id, r.original_id, agg, r.event_type, err
                    );
                }
            }
        }
        DlqCommand::Show { id } => {
            let id = parse_ids(std::slice::from_ref(id))?[0];
            match store.dead_letter(id).await? {
                Some(r) => println!(
                    "{}",
                    serde_json::to_string_pretty(&r)
                        .map_err(|e| CliError::runtime(e.to_string()))?
                ),
                None => return Err(CliError::runtime(format!("no dead letter with id {id}"))),
            }
        }
        DlqCommand::Replay { ids } => {
            let parsed = parse_ids(ids)?;
            let filter = (!parsed.is_empty()).then_some(parsed.as_slice());
            let replayed = store.replay(filter).await?;
            println!("replayed {} event(s)", replayed.len());
            if !parsed.is_empty() && replayed.len() < parsed.len() {
                return Err(CliError::runtime(format!(
                    "{} of the given ids matched no dead letter",
                    parsed.len() - replayed.len()
                )));
            }
        }
        DlqCommand::Purge { ids, all } => {
            let parsed = parse_ids(ids)?;
            if parsed.is_empty() && !*all && !confirm_purge_all(store).await? {
                return Ok(());
            }
            let filter = (!parsed.is_empty()).then_some(parsed.as_slice());
            let n = store.purge(filter).await?;
            println!("purged {n} dead letter(s)");
        }
    }
    Ok(())
}

/// `dlq purge` without ids: asks on a terminal. Elsewhere (scripts, as before) it goes ahead
/// and says so on stderr. True when the purge may go ahead.
async fn confirm_purge_all(store: &Store) -> Result<bool, CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    let n = store.status().await?.dead_letters;
    if n == 0 {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        eprintln!("purging all {n} dead letters (no ids given)");
        return Ok(true);
    }
    print!("delete all {n} dead letters for good? [y/N] ");
    std::io::stdout()
        .flush()
        .map_err(|e| CliError::runtime(e.to_string()))?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::runtime(e.to_string()))?;
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        println!("nothing purged");
    }
    Ok(yes)
}
