//! `outbox status [--json]`: pending, oldest pending age, retrying, dead letters, and the
//! database's replication slots with their lag.

use outbox_relay::Store;

use crate::error::CliError;

pub async fn run(store: &Store, json: bool) -> Result<(), CliError> {
    let status = store.status().await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(|e| CliError::runtime(e.to_string()))?
        );
        return Ok(());
    }
    println!("pending       {}", status.pending);
    if let (Some(at), Some(age)) = (status.oldest_pending_at, status.oldest_pending_age_seconds) {
        println!("  oldest      {} ago ({})", human_age(age), at.to_rfc3339());
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
    #[cfg(feature = "cdc")]
    for slot in &status.replication_slots {
        println!(
            "slot {:<16} {:<8} lag {} (confirmed {})",
            slot.slot,
            if slot.active { "active" } else { "inactive" },
            slot.lag_bytes
                .map_or_else(|| "?".into(), |b| format!("{b} bytes")),
            slot.confirmed_flush_lsn.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
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
