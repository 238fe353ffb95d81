//! The reader task of a replication session: takes the `pgwire-replication` stream, decodes
//! `pgoutput`, assembles transactions, maps their rows (contract columns or Debezium's
//! EventRouter) and hands [`Item`]s to the engine in commit order, through a bounded channel;
//! confirmed LSNs come back and go to the server as standby status updates. Also the
//! replication connection's settings and how its errors are classified.

use std::str::FromStr;
use std::time::Duration;

use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::CdcOptions;
use super::engine::Item;
use super::pgoutput::{self, PgOutput};
use super::rows::{self, Commit, RowMapper, Target};
use crate::error::Error;
use crate::route::debezium::InvalidOperation;
use crate::urls::{percent_decode, redact_url};

/// The PID in "replication slot … is active for PID n" (SQLSTATE 55006).
pub(super) fn busy_pid(e: &PgWireError) -> Option<String> {
    let PgWireError::Server(msg) = e else {
        return None;
    };
    if !msg.contains("55006") {
        return None;
    }
    Some(
        msg.split("PID")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?")
            .to_string(),
    )
}

/// Classifies a replication connection error: authentication and privilege problems are
/// configuration errors (exit status 2), the rest is retried.
pub(super) fn wire_error(e: PgWireError, url: &str) -> Error {
    let text = e.to_string();
    let config = match &e {
        PgWireError::Auth(_) | PgWireError::Tls(_) => true,
        PgWireError::Server(m) => ["28000", "28P01", "42501", "3D000"]
            .iter()
            .any(|code| m.contains(&format!("SQLSTATE {code}"))),
        _ => false,
    };
    let msg = format!("replication connection to {}: {text}", redact_url(url));
    if config {
        Error::Config(msg)
    } else {
        Error::Io(std::io::Error::other(msg))
    }
}

/// The replication connection's settings from the database URL.
pub(super) fn replication_config(
    url: &str,
    o: &CdcOptions,
    start: u64,
) -> Result<ReplicationConfig, Error> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    let redacted = redact_url(url);
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| Error::Config(format!("invalid database URL {redacted}: {e}")))?;
    if matches!(
        opts.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    ) {
        return Err(Error::Config(format!(
            "{redacted}: sslmode={:?} is not available for the CDC replication connection in \
             this build (pgwire-replication without TLS); use sslmode=disable/prefer on a \
             trusted network or --source poll",
            opts.get_ssl_mode()
        )));
    }
    let password = match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(p) => percent_decode(&p).ok_or_else(|| {
            Error::Config(format!(
                "{redacted}: the password is not valid percent-encoding (write % as %25)"
            ))
        })?,
        None => std::env::var("PGPASSWORD").unwrap_or_default(),
    };
    let user = opts.get_username().to_string();
    let database = opts.get_database().unwrap_or(&user).to_string();
    let cfg = match opts.get_socket() {
        Some(dir) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            opts.get_port(),
            user,
            password,
            database,
            o.slot.clone(),
            o.publication.clone(),
        ),
        None => ReplicationConfig::new(
            opts.get_host(),
            user,
            password,
            database,
            o.slot.clone(),
            o.publication.clone(),
        )
        .with_port(opts.get_port()),
    };
    Ok(cfg
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn(start))
        .with_status_interval(o.status_interval)
        .with_wakeup_interval(Duration::from_secs(10))
        .with_buffer_size(16_384)
        .with_application_name("outbox-relay-cdc")
        // Render values the way the decoder reads them (timestamps in ISO, UTC).
        .with_options("-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres"))
}

/// Rate-limits a repeated warning: the first at once, then one summary per interval.
struct Throttle {
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    fn hit(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(10) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Reader task state: the open transaction and the row mapper.
struct Assembler {
    mapper: RowMapper,
    invalid_op: InvalidOperation,
    next_id: u64,
    open: Option<(Commit, Vec<rows::Event>)>,
    last_pos: u64,
    updates: Throttle,
}

/// Events per chunk handed to the engine.
const CHUNK: usize = 1024;

impl Assembler {
    fn flush(&mut self, out: &mut Vec<Item>) {
        if let Some((_, buf)) = &mut self.open {
            if !buf.is_empty() {
                let mut chunk = std::mem::take(buf);
                // Rows of one transaction in `seq` order: a replay re-inserts dead letters in
                // one statement, whose order need not be theirs.
                chunk.sort_by_key(|e| e.origin().seq);
                out.push(Item::Events(chunk));
            }
        }
    }

    fn handle(&mut self, ev: ReplicationEvent, out: &mut Vec<Item>) -> Result<(), Error> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                self.flush(out);
                self.next_id += 1;
                self.open = Some((
                    Commit {
                        txn: self.next_id,
                        lsn: final_lsn.0,
                        time: commit_time_micros,
                    },
                    Vec::new(),
                ));
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.flush(out);
                if let Some((c, _)) = self.open.take() {
                    out.push(Item::Commit {
                        txn: c.txn,
                        end_lsn: end_lsn.0,
                    });
                }
                self.last_pos = self.last_pos.max(end_lsn.0);
            }
            ReplicationEvent::KeepAlive { wal_end, .. }
                if self.open.is_none() && wal_end.0 > self.last_pos =>
            {
                self.next_id += 1;
                out.push(Item::Position {
                    txn: self.next_id,
                    lsn: wal_end.0,
                });
                self.last_pos = wal_end.0;
            }
            ReplicationEvent::KeepAlive { .. } => {}
            ReplicationEvent::XLogData { data, .. } => {
                let msg = pgoutput::decode(&data)
                    .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
                match msg {
                    PgOutput::Relation(r) => self.mapper.relation(&r),
                    PgOutput::Insert { relation, new } => {
                        if let Some((commit, buf)) = &mut self.open {
                            if let Some(e) = self.mapper.insert(relation, &new, commit) {
                                buf.push(e);
                                if buf.len() >= CHUNK {
                                    self.flush(out);
                                }
                            }
                        }
                    }
                    PgOutput::Update { relation, new, .. } => {
                        if let Target::Captured(table) = self.mapper.target(relation) {
                            let what = format!(
                                "an UPDATE of an outbox row in {table} was ignored (only inserts \
                                 are events)"
                            );
                            match self.invalid_op {
                                InvalidOperation::Fatal => {
                                    return Err(Error::Config(format!(
                                        "{what}; table.op.invalid.behavior = fatal stops the relay"
                                    )))
                                }
                                op => {
                                    if let Some(suppressed) = self.updates.hit() {
                                        let first =
                                            new.first().and_then(|d| d.as_str()).unwrap_or("");
                                        if op == InvalidOperation::Error {
                                            tracing::error!(
                                                first_column = first,
                                                suppressed,
                                                "{what}"
                                            );
                                        } else {
                                            tracing::warn!(
                                                first_column = first,
                                                suppressed,
                                                "{what}"
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                    PgOutput::Delete { .. } => {}
                    PgOutput::Truncate { .. } => {
                        tracing::info!("a TRUNCATE of a captured table was ignored");
                    }
                    PgOutput::Begin { .. }
                    | PgOutput::Commit { .. }
                    | PgOutput::Origin { .. }
                    | PgOutput::Type { .. }
                    | PgOutput::Message { .. } => {}
                }
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            #[allow(unreachable_patterns)]
            _ => {}
        }
        Ok(())
    }
}

/// The reader task: replication events → items, confirmed LSNs → standby status updates.
pub(super) async fn read(
    mut client: ReplicationClient,
    mapper: RowMapper,
    invalid_op: InvalidOperation,
    items: mpsc::Sender<Item>,
    mut confirm: watch::Receiver<u64>,
    stop: CancellationToken,
    status_interval: Duration,
) -> Result<(), Error> {
    let metrics = client.metrics();
    let mut asm = Assembler {
        mapper,
        invalid_op,
        next_id: 0,
        open: None,
        last_pos: 0,
        updates: Throttle {
            last: None,
            suppressed: 0,
        },
    };
    let mut pending: std::collections::VecDeque<Item> = std::collections::VecDeque::new();
    let mut out: Vec<Item> = Vec::new();
    let result = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            changed = confirm.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                client.update_applied_lsn(Lsn(*confirm.borrow_and_update()));
            }
            permit = items.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(item) = pending.pop_front() {
                        permit.send(item);
                    }
                }
                Err(_) => break Ok(()),
            },
            ev = client.recv(), if pending.len() < 8 => match ev {
                Ok(Some(ev)) => {
                    if let Err(e) = asm.handle(ev, &mut out) {
                        break Err(e);
                    }
                    pending.extend(out.drain(..));
                }
                Ok(None) => break Err(Error::Io(std::io::Error::other("the replication stream ended"))),
                Err(e) => break Err(Error::Io(std::io::Error::other(format!("replication stream: {e}")))),
            },
        }
    };
    // Report the last confirmed position before leaving, so a restart redelivers as little
    // as possible.
    let last = *confirm.borrow();
    client.update_applied_lsn(Lsn(last));
    if result.is_ok() {
        let deadline = tokio::time::Instant::now() + status_interval + Duration::from_secs(2);
        while metrics.last_applied_lsn().0 < last && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.stop();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
    } else {
        client.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_settings_from_urls() {
        let o = CdcOptions::default();
        let c = replication_config("postgres://app:p%40ss@db.example:6543/shop", &o, 7).unwrap();
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "app");
        assert_eq!(c.password, "p@ss");
        assert_eq!(c.database, "shop");
        assert_eq!(c.start_lsn, Lsn(7));
        let e = replication_config("postgres://a:secret@h/db?sslmode=require", &o, 0).unwrap_err();
        assert!(e.is_config() && !e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn busy_and_config_errors() {
        let busy = PgWireError::Server(
            "replication slot \"s\" is active for PID 4242 (SQLSTATE 55006)".into(),
        );
        assert_eq!(busy_pid(&busy).as_deref(), Some("4242"));
        assert!(busy_pid(&PgWireError::Server("x (SQLSTATE 42704)".into())).is_none());
        let e = wire_error(
            PgWireError::Server("must be superuser or replication role (SQLSTATE 42501)".into()),
            "postgres://u:pw@h/d",
        );
        assert!(e.is_config() && !e.to_string().contains("pw@"), "{e}");
        assert!(!wire_error(PgWireError::Protocol("x".into()), "postgres://h/d").is_config());
    }
}
