//! The reader task of a replication session: takes the `pgwire-replication` stream, decodes
//! `pgoutput`, assembles transactions, maps their rows and `outbox` messages (contract columns
//! or Debezium's EventRouter; [`messages`]) and hands [`Item`]s to the engine in commit order, through a bounded channel;
//! confirmed LSNs come back and go to the server as standby status updates.
//!
//! Every event it makes is counted in the session's byte [`Budget`]: while the budget is full
//! the reader takes nothing more from the stream (the replication client's small queue fills,
//! then it stops reading the socket and keeps sending standby status updates, so the server
//! keeps the connection), and it warns once when that lasts.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::engine::Item;
use super::messages;
use super::pgoutput::{self, PgOutput};
use super::pressure::Budget;
use super::rows::{self, Commit, RowMapper, Target};
use crate::error::Error;
use crate::route::debezium::InvalidOperation;

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
    /// Non-transactional `outbox` messages, ignored (warned about, rate-limited).
    untransactional: Throttle,
    budget: Arc<Budget>,
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
                                self.budget.take(e.bytes);
                                buf.push(e);
                                // A full budget stops the reading: what is read goes on.
                                if buf.len() >= CHUNK || self.budget.is_full() {
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
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } if prefix == messages::PREFIX => match &mut self.open {
                Some((commit, buf)) if transactional => {
                    let e = self.mapper.message(&content, lsn.0, commit);
                    self.budget.take(e.bytes);
                    buf.push(e);
                    if buf.len() >= CHUNK || self.budget.is_full() {
                        self.flush(out);
                    }
                }
                _ => {
                    if let Some(suppressed) = self.untransactional.hit() {
                        tracing::warn!(
                            suppressed,
                            "an `outbox` logical decoding message emitted outside a transaction \
                             was ignored: emit events with pg_logical_emit_message(true, …) \
                             (transactional), so they exist only if their transaction commits"
                        );
                    }
                }
            },
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            #[allow(unreachable_patterns)]
            _ => {}
        }
        Ok(())
    }
}

/// How long the budget may hold the reader before that is worth a warning (a drain into a
/// slower sink fills it for moments; a sink that is down fills it for good).
const HELD_WARNING: Duration = Duration::from_secs(5);

/// The reader's ends: the engine's channel, confirmed LSNs, the stop signal, the budget.
pub(super) struct ReaderLinks {
    pub items: mpsc::Sender<Item>,
    pub confirm: watch::Receiver<u64>,
    pub stop: CancellationToken,
    pub status_interval: Duration,
    pub budget: Arc<Budget>,
}

/// The reader task: replication events → items, confirmed LSNs → standby status updates.
pub(super) async fn read(
    mut client: ReplicationClient,
    mapper: RowMapper,
    invalid_op: InvalidOperation,
    links: ReaderLinks,
) -> Result<(), Error> {
    let ReaderLinks {
        items,
        mut confirm,
        stop,
        status_interval,
        budget,
    } = links;
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
        untransactional: Throttle {
            last: None,
            suppressed: 0,
        },
        budget: budget.clone(),
    };
    // Since when the full budget holds the reader back, and whether that was logged.
    let mut held: Option<tokio::time::Instant> = None;
    let mut warned = false;
    let mut pending: std::collections::VecDeque<Item> = std::collections::VecDeque::new();
    let mut out: Vec<Item> = Vec::new();
    let result = loop {
        let full = !budget.may_read(held.is_some());
        match (full, held) {
            (true, None) => held = Some(tokio::time::Instant::now()),
            (false, Some(since)) => {
                held = None;
                if std::mem::take(&mut warned) {
                    tracing::info!(
                        held_for = ?since.elapsed(),
                        buffered_bytes = budget.used(),
                        "CDC buffer has room again; reading from the replication slot"
                    );
                }
            }
            _ => {}
        }
        let warn_at = held.map(|t| t + HELD_WARNING);
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
            _ = budget.room(), if full => {}
            _ = async { if let Some(t) = warn_at { tokio::time::sleep_until(t).await } }, if full && !warned => {
                warned = true;
                tracing::warn!(
                    buffered_bytes = budget.used(),
                    max_buffer_bytes = budget.limit(),
                    "CDC buffer is full (is the sink down or slow?): reading no further from the \
                     replication slot until events are delivered; the slot's lag and retained WAL \
                     grow meanwhile"
                );
            }
            ev = client.recv(), if pending.len() < 8 && !full => match ev {
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
