//! `outbox cleanup --older-than 7d`: deletes published rows older than the cutoff, in small
//! batches of short transactions, with progress on a terminal. With `--inbox`, a consumer's
//! inbox instead: processed event ids and per-aggregate positions older than the cutoff.

use std::io::IsTerminal;
use std::time::Instant;

use chrono::{DateTime, Utc};
use outbox_relay::store::InboxRows;
use outbox_relay::Store;

use crate::cli::CleanupArgs;
use crate::error::CliError;

pub async fn run(store: &Store, args: &CleanupArgs) -> Result<(), CliError> {
    if args.batch_size < 1 {
        return Err(CliError::usage("--batch-size must be at least 1"));
    }
    let retention = chrono::Duration::from_std(args.older_than)
        .map_err(|_| CliError::usage("--older-than is too large"))?;
    let cutoff = chrono::Utc::now()
        .checked_sub_signed(retention)
        .ok_or_else(|| CliError::usage("--older-than is too large"))?;
    if args.inbox {
        return inbox(store, args, cutoff).await;
    }
    let total = store.count_cleanable(cutoff).await?;
    if args.dry_run {
        println!(
            "{total} published event(s) older than {} would be deleted (dry run)",
            cutoff.to_rfc3339()
        );
        return Ok(());
    }
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut deleted: u64 = 0;
    loop {
        let n = store.cleanup_batch(cutoff, args.batch_size).await?;
        deleted += n;
        if tty {
            eprint!("\rdeleted {deleted}/{total}");
        }
        if n < args.batch_size as u64 {
            break;
        }
        // Let writers and relays in between batches.
        tokio::task::yield_now().await;
    }
    if tty {
        eprintln!();
    }
    println!(
        "deleted {deleted} published event(s) older than {} in {:.1}s",
        cutoff.to_rfc3339(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--inbox`: the same loop over the inbox tables.
async fn inbox(store: &Store, args: &CleanupArgs, cutoff: DateTime<Utc>) -> Result<(), CliError> {
    let total = store.count_inbox_cleanable(cutoff).await?;
    if args.dry_run {
        println!(
            "{} inbox row(s) and {} aggregate position(s) older than {} would be deleted (dry run)",
            total.received,
            total.positions,
            cutoff.to_rfc3339()
        );
        return Ok(());
    }
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut deleted = InboxRows::default();
    loop {
        let n = store.cleanup_inbox_batch(cutoff, args.batch_size).await?;
        deleted.received += n.received;
        deleted.positions += n.positions;
        if tty {
            eprint!(
                "\rdeleted {}/{} inbox rows, {}/{} positions",
                deleted.received, total.received, deleted.positions, total.positions
            );
        }
        let full = args.batch_size as u64;
        if n.received < full && n.positions < full {
            break;
        }
        tokio::task::yield_now().await;
    }
    if tty {
        eprintln!();
    }
    println!(
        "deleted {} inbox row(s) and {} aggregate position(s) older than {} in {:.1}s",
        deleted.received,
        deleted.positions,
        cutoff.to_rfc3339(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
