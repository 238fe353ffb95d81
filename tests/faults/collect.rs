//! The broker's side: what arrived, in the order it arrived, and the verdict on it.
//!
//! A JetStream reader follows the lane's stream from its first message throughout the
//! scenario (it resumes after the last sequence it saw when NATS goes away); a local webhook
//! receiver records what it accepted. Both parse the reference envelope every relay sends
//! (`{"id", "aggregate_id", …, "n"}`) into [`Deliveries`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One message as the broker (or the webhook receiver) got it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event id.
    pub id: String,
    /// Its aggregate.
    pub aggregate: String,
    /// Its place in the aggregate (the writer's `n`).
    pub n: i64,
}

#[derive(Default)]
struct Log {
    deliveries: Vec<Delivery>,
    distinct: HashSet<String>,
}

/// Everything received by one lane's broker side, in arrival order.
#[derive(Clone)]
pub struct Deliveries {
    log: Arc<Mutex<Log>>,
    garbled: Arc<AtomicUsize>,
    count: Arc<watch::Sender<usize>>,
}

impl Deliveries {
    pub fn new() -> Deliveries {
        Deliveries {
            log: Arc::default(),
            garbled: Arc::default(),
            count: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a message body (a reference envelope); counts it as garbled when it is not one.
    pub fn push(&self, body: &[u8]) {
        let parsed = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                Some(Delivery {
                    id: v["id"].as_str()?.to_string(),
                    aggregate: v["aggregate_id"].as_str()?.to_string(),
                    n: v["n"].as_i64()?,
                })
            });
        let Some(d) = parsed else {
            self.garbled.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let distinct = {
            let mut log = self.lock();
            log.distinct.insert(d.id.clone());
            log.deliveries.push(d);
            log.distinct.len()
        };
        self.count.send_replace(distinct);
    }

    /// Distinct events received so far.
    pub fn distinct(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits (at most `limit`) until `n` distinct events arrived; false when they did not.
    pub async fn wait_distinct(&self, n: usize, limit: Duration) -> bool {
        let mut rx = self.count.subscribe();
        let reached = tokio::time::timeout(limit, rx.wait_for(|&c| c >= n)).await;
        reached.is_ok()
    }

    /// Waits (at most `limit`) until every id of `expected` arrived; false when some did not.
    pub async fn wait_all(&self, expected: &HashSet<String>, limit: Duration) -> bool {
        let mut rx = self.count.subscribe();
        let covered = |log: &Log| expected.iter().all(|id| log.distinct.contains(id));
        let wait = async {
            loop {
                // Cheap test first: the count must reach the expected size.
                if *rx.borrow_and_update() >= expected.len() && covered(&self.lock()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    fn snapshot(&self) -> (Vec<Delivery>, usize) {
        (
            self.lock().deliveries.clone(),
            self.garbled.load(Ordering::Relaxed),
        )
    }
}

/// Reads the stream `stream` at `url` from its first message into `into` until `stop`.
pub fn follow_stream(
    url: String,
    stream: String,
    into: Deliveries,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&url)
            .await
            .expect("connect the stream reader");
        let js = async_nats::jetstream::new(client);
        let mut next = 1u64;
        while !stop.is_cancelled() {
            if let Err(e) = read_from(&js, &stream, &mut next, &into, &stop).await {
                note(&format!("stream reader: {e}; resuming at {next}"));
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    })
}

/// Notes for the test's output, only with `OUTBOX_FAULTS_VERBOSE` set.
pub fn note(text: &str) {
    if std::env::var_os("OUTBOX_FAULTS_VERBOSE").is_some() {
        eprintln!("faults: {text}");
    }
}

/// One consumer's life: from sequence `next` until an error or `stop`.
async fn read_from(
    js: &async_nats::jetstream::Context,
    stream: &str,
    next: &mut u64,
    into: &Deliveries,
    stop: &CancellationToken,
) -> Result<(), String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let consumer = s
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: *next,
            },
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let m = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let m = match m {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the consumer ended".into()),
        };
        let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
        if seq < *next {
            continue;
        }
        *next = seq + 1;
        into.push(&m.payload);
    }
}

/// A local webhook endpoint: records every POSTed envelope it accepts (200), and answers 401
/// (credentials refused) while told to.
pub struct Receiver {
    /// Its URL, `http://127.0.0.1:<port>/hook`.
    pub url: String,
    refuse_until: Arc<Mutex<Option<tokio::time::Instant>>>,
    refused: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Receiver {
    pub async fn start(into: Deliveries) -> Receiver {
        use axum::extract::State;
        use axum::http::StatusCode;
        type Shared = (
            Deliveries,
            Arc<Mutex<Option<tokio::time::Instant>>>,
            Arc<AtomicUsize>,
        );
        async fn hook(
            State((into, until, refused)): State<Shared>,
            body: axum::body::Bytes,
        ) -> StatusCode {
            let refusing = until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| tokio::time::Instant::now() < t);
            if refusing {
                refused.fetch_add(1, Ordering::Relaxed);
                return StatusCode::UNAUTHORIZED;
            }
            into.push(&body);
            StatusCode::OK
        }
        let refuse_until = Arc::new(Mutex::new(None));
        let refused = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state((into, refuse_until.clone(), refused.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            refuse_until,
            refused,
            task,
        }
    }

    /// Answers 401 to everything for `period` from now.
    pub fn refuse_for(&self, period: Duration) {
        *self.refuse_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now() + period);
    }

    /// 401 answers so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The verdict on one lane.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Events written (rows of the outbox table and of the dead-letter table).
    pub events: usize,
    /// Written events never received.
    pub lost: usize,
    /// First deliveries that came after a later event of their aggregate.
    pub violations: usize,
    /// Deliveries of an event already received.
    pub duplicates: usize,
    /// Received events nobody wrote, and bodies that are not an envelope.
    pub unexpected: usize,
    /// A few examples of what went wrong, for the failure message.
    pub examples: Vec<String>,
}

/// Checks what arrived against what was written (`(id, aggregate, n)` per event).
pub fn check(written: &[(String, String, i64)], received: &Deliveries) -> Verdict {
    let (log, garbled) = received.snapshot();
    let expected: HashSet<&str> = written.iter().map(|(id, _, _)| id.as_str()).collect();
    let mut v = Verdict {
        events: written.len(),
        unexpected: garbled,
        ..Verdict::default()
    };
    let mut seen: HashSet<&str> = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for d in &log {
        if !expected.contains(d.id.as_str()) {
            v.unexpected += 1;
            continue;
        }
        if !seen.insert(&d.id) {
            v.duplicates += 1;
            continue;
        }
        let prev = last.entry(&d.aggregate).or_insert(i64::MIN);
        if d.n < *prev {
            v.violations += 1;
            if v.examples.len() < 5 {
                v.examples.push(format!(
                    "aggregate {}: n={} first delivered after n={}",
                    d.aggregate, d.n, prev
                ));
            }
        }
        *prev = (*prev).max(d.n);
    }
    for (id, aggregate, n) in written {
        if !seen.contains(id.as_str()) {
            v.lost += 1;
            if v.examples.len() < 10 {
                v.examples
                    .push(format!("lost: {id} (aggregate {aggregate}, n={n})"));
            }
        }
    }
    v
}
