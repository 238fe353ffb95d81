//! `outbox status [--json] [--check]`: pending, oldest pending age, retrying, dead letters,
//! and the database's replication slots with their lag and retained WAL. `--check` turns it
//! into a probe for cron jobs and exec checks: one line, exit 1 when something is wrong.
//!
//! When CDC reads the outbox table (a slot streams it), unpublished rows are not a backlog:
//! CDC never marks rows published. They are shown as "unmarked rows", labelled so, and the
//! CDC slots' state (active, lag, retained WAL) is what `--check` judges instead of their age.

use outbox_relay::store::Status;
use outbox_relay::Store;

use crate::cli::StatusArgs;
use crate::error::CliError;

pub async fn run(store: &Store, args: &StatusArgs, max_retained_wal: u64) -> Result<(), CliError> {
    let status = store.status().await?;
    if args.check {
        return check(&status, args, max_retained_wal);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(|e| CliError::runtime(e.to_string()))?
        );
        return Ok(());
    }
    let oldest = status
        .oldest_pending_at
        .zip(status.oldest_pending_age_seconds);
    if let Some(cdc) = &status.cdc {
        println!("read by CDC   table {}: {}", cdc.table, cdc.readers());
        print!("unmarked rows {}", status.pending);
        if let Some((_, age)) = oldest {
            print!(" (oldest {} old)", human_age(age));
        }
        println!();
        println!(
            "  not a backlog: CDC never marks rows published; what is left to deliver is the \
             slot's lag below"
        );
    } else {
        println!("pending       {}", status.pending);
        if let Some((at, age)) = oldest {
            println!("  oldest      {} ago ({})", human_age(age), at.to_rfc3339());
        }
    }
    print!("retrying      {}", status.retrying);
    if let Some(next) = status.next_retry_at {
        let secs = (next - chrono::Utc::now()).num_milliseconds().max(0) as f64 / 1000.0;
        print!("  (next retry in {})", human_age(secs));
    }
    println!();
    println!("dead letters  {}", status.dead_letters);
    if status.dead_letters > 0 {
        println!("  see `outbox dlq list`; `outbox dlq replay` re-delivers them");
    }
    for slot in &status.replication_slots {
        println!(
            "slot {:<16} {:<8} lag {} (confirmed {}), retains {} of WAL",
            slot.slot,
            if slot.active { "active" } else { "inactive" },
            slot.lag_bytes
                .map_or_else(|| "?".into(), |b| format!("{b} bytes")),
            slot.confirmed_flush_lsn.as_deref().unwrap_or("-"),
            slot.retained_wal_bytes.map_or_else(
                || "?".into(),
                |b| bytesize::ByteSize::b(b.max(0) as u64).to_string()
            ),
        );
        let retained = slot.retained_wal_bytes.unwrap_or(0).max(0) as u64;
        if retained > max_retained_wal {
            println!(
                "  warning: retains more than {} of WAL ([cdc] max_retained_wal): is its relay \
                 running? A slot nobody reads keeps WAL until the disk is full; drop it with \
                 SELECT pg_drop_replication_slot('{}') if it is abandoned",
                bytesize::ByteSize::b(max_retained_wal),
                slot.slot
            );
        }
        if slot.wal_status.as_deref() == Some("lost") {
            println!(
                "  warning: the server removed WAL this slot still needed (wal_status = lost)"
            );
        }
    }
    if status.max_slot_wal_keep_size_bytes == Some(-1) {
        println!(
            "warning: max_slot_wal_keep_size is unlimited: a stalled slot keeps WAL until the disk \
             is full (see README, \"CDC slot safety\")"
        );
    }
    Ok(())
}

/// `--check`: one line; an error (exit 1) naming what is wrong. Under CDC the slots are
/// judged (a reader, WAL kept, WAL lost) instead of the age of rows CDC never marks.
fn check(status: &Status, args: &StatusArgs, max_retained_wal: u64) -> Result<(), CliError> {
    let age = status.oldest_pending_age_seconds.unwrap_or(0.0);
    let mut problems = Vec::new();
    if let Some(cdc) = &status.cdc {
        let slots = status
            .replication_slots
            .iter()
            .filter(|s| cdc.slots.contains(&s.slot));
        let mut lines = Vec::new();
        for slot in slots {
            let retained = slot.retained_wal_bytes.unwrap_or(0).max(0) as u64;
            if !slot.active {
                problems.push(format!(
                    "CDC slot {} has no reader (is the CDC relay running?)",
                    slot.slot
                ));
            }
            if slot.wal_status.as_deref() == Some("lost") {
                problems.push(format!(
                    "CDC slot {} lost WAL it still needed (wal_status = lost)",
                    slot.slot
                ));
            }
            if retained > max_retained_wal {
                problems.push(format!(
                    "CDC slot {} retains {} of WAL ([cdc] max_retained_wal {})",
                    slot.slot,
                    bytesize::ByteSize::b(retained),
                    bytesize::ByteSize::b(max_retained_wal)
                ));
            }
            lines.push(format!(
                "CDC slot {} {}, lag {}",
                slot.slot,
                if slot.active { "active" } else { "inactive" },
                slot.lag_bytes
                    .map_or_else(|| "?".into(), |b| format!("{b} bytes"))
            ));
        }
        dead_letter_problem(status, args, &mut problems);
        return if problems.is_empty() {
            println!(
                "ok: {}, {} dead letters",
                lines.join(", "),
                status.dead_letters
            );
            Ok(())
        } else {
            Err(CliError::runtime(problems.join("; ")))
        };
    }
    if age > args.max_age.as_secs_f64() {
        problems.push(format!(
            "the oldest pending event is {} old (--max-age {})",
            human_age(age),
            human_age(args.max_age.as_secs_f64())
        ));
    }
    dead_letter_problem(status, args, &mut problems);
    if problems.is_empty() {
        println!(
            "ok: {} pending (oldest {}), {} dead letters",
            status.pending,
            human_age(age),
            status.dead_letters
        );
        Ok(())
    } else {
        Err(CliError::runtime(problems.join("; ")))
    }
}

fn dead_letter_problem(status: &Status, args: &StatusArgs, problems: &mut Vec<String>) {
    if status.dead_letters > 0 && !args.allow_dead_letters {
        problems.push(format!(
            "{} dead letter{} (see `outbox dlq list`; --allow-dead-letters to accept them)",
            status.dead_letters,
            if status.dead_letters == 1 { "" } else { "s" }
        ));
    }
}

pub fn human_age(secs: f64) -> String {
    match secs {
        s if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.1}s"),
        s if s < 7200.0 => format!("{:.1}m", s / 60.0),
        s if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        s => format!("{:.1}d", s / 86400.0),
    }
}
