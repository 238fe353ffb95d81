//! One AMQP channel in confirm mode with many publishes awaiting their confirms.
//!
//! A task of its own owns the channel: it publishes the requests it is sent one after the
//! other (so its own sequence numbers are the channel's delivery tags), keeps each
//! [`PublisherConfirm`] in a [`Window`], and answers each request once the window has
//! decided it. Each confirm is polled with a waker of its own that queues its sequence number,
//! so the task looks at every completed confirm (and the return it may carry) before asking
//! the window for decisions, which is what lets the window match returns to their messages.
//!
//! When the channel fails (the server closed it, the connection broke, a confirm took longer
//! than `confirm_timeout`, a publish could not be sent), the task answers every message
//! waiting on it, hands the requests it has not sent back to their callers (sent elsewhere,
//! nothing is lost or doubled), closes the channel and ends; the sink opens another.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::task::{ArcWake, AtomicWaker};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::confirms::{Answer, Returned, Verdict, Window};
use super::{publish_error, ErrorKind, SinkError};

/// One message to publish.
pub(super) struct Job {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub body: Bytes,
    pub properties: BasicProperties,
    /// The `message_id` (the event id), which names a returned message's owner.
    pub id: String,
}

/// What became of a [`Job`].
pub(super) enum Reply {
    /// Confirmed by the broker and not returned: delivered.
    Confirmed,
    /// Failed, for the reason given.
    Failed(SinkError),
    /// Never sent: the channel failed first. The job comes back to be sent on another.
    NotSent(Box<Job>),
}

/// How the task publishes.
#[derive(Clone, Copy)]
pub(super) struct Settings {
    pub mandatory: bool,
    pub confirm_timeout: Duration,
    /// Publishes awaiting their confirms on the channel at most.
    pub max_unconfirmed: usize,
}

struct Request {
    job: Job,
    reply: oneshot::Sender<Reply>,
    permit: OwnedSemaphorePermit,
}

/// A channel and the task that publishes on it.
pub(super) struct Pipe {
    channel: Channel,
    requests: mpsc::UnboundedSender<Request>,
    window: Arc<Semaphore>,
}

impl Pipe {
    /// Opens a channel in confirm mode on `connection` and starts its task.
    pub async fn open(connection: &Connection, settings: Settings) -> Result<Pipe, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(channel.clone(), receiver, settings));
        Ok(Pipe {
            channel,
            requests,
            window: Arc::new(Semaphore::new(settings.max_unconfirmed.max(1))),
        })
    }

    /// Whether the channel still takes publishes.
    pub fn is_open(&self) -> bool {
        !self.requests.is_closed() && self.channel.status().connected()
    }

    /// Publishes `job` and waits for its verdict.
    pub async fn publish(&self, job: Job) -> Reply {
        let Ok(permit) = self.window.clone().acquire_owned().await else {
            return Reply::NotSent(Box::new(job));
        };
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = self.requests.send(Request { job, reply, permit }) {
            return Reply::NotSent(Box::new(refused.0.job));
        }
        answer.await.unwrap_or_else(|_| {
            Reply::Failed(SinkError::unavailable(
                "RabbitMQ: the channel's publisher stopped without an answer",
            ))
        })
    }
}

/// A message sent and waiting for its verdict.
struct InFlight {
    confirm: PublisherConfirm,
    waker: Waker,
    reply: oneshot::Sender<Reply>,
    _permit: OwnedSemaphorePermit,
    deadline: Instant,
    exchange: ShortString,
    routing_key: ShortString,
    len: usize,
}

/// Sequence numbers whose confirms were woken, and the task to wake.
#[derive(Default)]
struct Woken {
    seqs: Mutex<Vec<u64>>,
    task: AtomicWaker,
}

impl Woken {
    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.seqs.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The waker of one confirm.
struct ConfirmWaker {
    seq: u64,
    woken: Arc<Woken>,
}

impl ArcWake for ConfirmWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self
            .woken
            .seqs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(arc_self.seq);
        arc_self.woken.task.wake();
    }
}

/// Why a channel is given up.
enum Ending {
    /// The sink let go of the channel.
    Dropped,
    /// The server or the connection failed it (the error each confirm was rejected with).
    Failed(lapin::Error),
    /// A publish could not be sent.
    NotSent(SinkError),
    /// The oldest message had no confirm within the timeout.
    TimedOut(Duration),
}

type Confirms = Window<InFlight, lapin::Error>;

async fn run(channel: Channel, mut requests: mpsc::UnboundedReceiver<Request>, settings: Settings) {
    let woken = Arc::new(Woken::default());
    let mut window = Confirms::default();
    let ending = loop {
        let deadline = window.front().map(|f| f.deadline);
        tokio::select! {
            biased;
            () = wake_up(&woken) => {}
            request = requests.recv() => match request {
                Some(request) => {
                    if let Err(ending) = send(&channel, request, &mut window, &woken, settings).await {
                        break ending;
                    }
                }
                None => break Ending::Dropped,
            },
            () = sleep_until(deadline) => break Ending::TimedOut(settings.confirm_timeout),
        }
        if let Err(ending) = settle(&mut window, &woken) {
            break ending;
        }
    };
    requests.close();
    while let Ok(request) = requests.try_recv() {
        let _ = request.reply.send(Reply::NotSent(Box::new(request.job)));
    }
    for waiting in window.drain() {
        let error = failure(&ending, &waiting);
        let _ = waiting.reply.send(Reply::Failed(error));
    }
    if channel.status().connected() {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            channel.close(200, ShortString::from("outbox: channel given up")),
        )
        .await;
    }
}

async fn wake_up(woken: &Woken) {
    std::future::poll_fn(|cx| {
        woken.task.register(cx.waker());
        if woken
            .seqs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Publishes one request and puts it in the window.
async fn send(
    channel: &Channel,
    request: Request,
    window: &mut Confirms,
    woken: &Arc<Woken>,
    settings: Settings,
) -> Result<(), Ending> {
    let Request { job, reply, permit } = request;
    if reply.is_closed() {
        return Ok(()); // the caller gave up
    }
    let options = BasicPublishOptions {
        mandatory: settings.mandatory,
        immediate: false,
    };
    let (exchange, routing_key) = (job.exchange.clone(), job.routing_key.clone());
    let sent = tokio::time::timeout(
        settings.confirm_timeout,
        channel.basic_publish(
            job.exchange,
            job.routing_key,
            options,
            &job.body,
            job.properties,
        ),
    )
    .await;
    let confirm = match sent {
        Ok(Ok(confirm)) => confirm,
        Ok(Err(e)) => {
            let error = publish_error(exchange.as_str(), routing_key.as_str(), &e);
            let _ = reply.send(Reply::Failed(error.clone()));
            return Err(Ending::NotSent(error));
        }
        Err(_) => {
            let error = SinkError::unavailable(format!(
                "RabbitMQ: a publish could not be sent within {:?}",
                settings.confirm_timeout
            ));
            let _ = reply.send(Reply::Failed(error.clone()));
            return Err(Ending::NotSent(error));
        }
    };
    let seq = window.push(
        job.id,
        InFlight {
            confirm,
            waker: futures::task::noop_waker(),
            reply,
            _permit: permit,
            deadline: Instant::now() + settings.confirm_timeout,
            exchange,
            routing_key,
            len: job.body.len(),
        },
    );
    if let Some(waiting) = window.waiting_mut(seq) {
        waiting.waker = futures::task::waker(Arc::new(ConfirmWaker {
            seq,
            woken: woken.clone(),
        }));
    }
    poll_confirm(window, seq);
    Ok(())
}

/// Polls the confirm of `seq` (with its own waker) and records it when it has come.
fn poll_confirm(window: &mut Confirms, seq: u64) {
    let Some(waiting) = window.waiting_mut(seq) else {
        return;
    };
    let waker = waiting.waker.clone();
    let mut cx = Context::from_waker(&waker);
    let Poll::Ready(result) = Pin::new(&mut waiting.confirm).poll(&mut cx) else {
        return;
    };
    let (answer, returned) = match result {
        Ok(Confirmation::Ack(r)) => (Answer::Ack, r),
        Ok(Confirmation::Nack(r)) => (Answer::Nack, r),
        Ok(Confirmation::NotRequested) => (Answer::NotRequested, None),
        Err(e) => (Answer::Failed(e), None),
    };
    let returned = returned.map(|r| Returned {
        id: r
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default(),
        code: r.reply_code,
        text: r.reply_text.to_string(),
    });
    window.answer(seq, answer, returned);
}

/// Looks at every woken confirm, then answers the messages the window has decided.
fn settle(window: &mut Confirms, woken: &Woken) -> Result<(), Ending> {
    loop {
        let seqs = woken.take();
        if seqs.is_empty() {
            break;
        }
        for seq in seqs {
            poll_confirm(window, seq);
        }
    }
    while let Some((done, verdict)) = window.next_decided() {
        let where_to = || {
            format!(
                "exchange {:?}, routing key {:?}",
                done.exchange.as_str(),
                done.routing_key.as_str()
            )
        };
        let reply = match verdict {
            Verdict::Delivered => Reply::Confirmed,
            Verdict::Returned(r) => Reply::Failed(SinkError::retryable(format!(
                "RabbitMQ returned the message as unroutable ({} {}): no queue is bound for \
                 it ({}); bind one, or fix the amqp.exchange / amqp.routing_key templates",
                r.code,
                r.text,
                where_to()
            ))),
            Verdict::Nacked => Reply::Failed(SinkError::retryable(format!(
                "RabbitMQ refused the message (basic.nack; {}): a queue could not take it",
                where_to()
            ))),
            Verdict::NotRequested => Reply::Failed(SinkError::unavailable(
                "RabbitMQ: the channel is not in confirm mode",
            )),
            Verdict::Failed(e) => {
                let ending = Ending::Failed(e);
                let error = failure(&ending, &done);
                let _ = done.reply.send(Reply::Failed(error));
                return Err(ending);
            }
        };
        let _ = done.reply.send(reply);
    }
    Ok(())
}

/// Why a message waiting on a channel given up for `ending` failed.
fn failure(ending: &Ending, waiting: &InFlight) -> SinkError {
    let (exchange, routing_key) = (waiting.exchange.as_str(), waiting.routing_key.as_str());
    match ending {
        Ending::Dropped => SinkError::unavailable("RabbitMQ sink is shutting down"),
        Ending::TimedOut(after) => SinkError::unavailable(format!(
            "RabbitMQ: no publisher confirm within {after:?} (exchange {exchange:?}, routing key \
             {routing_key:?})"
        )),
        Ending::NotSent(e) => SinkError::unavailable(format!(
            "RabbitMQ: the channel failed before this message's confirm: {}",
            e.message
        )),
        Ending::Failed(e) => {
            let error = publish_error(exchange, routing_key, e);
            if error.kind != ErrorKind::Permanent {
                return error;
            }
            // The server closed the channel over one message (too large): that message is
            // refused for good, the others on the channel go again.
            match refused_size(&e.to_string()) {
                Some(size) if size == waiting.len => error,
                Some(_) => SinkError::unavailable(format!(
                    "RabbitMQ closed the channel over another message ({}); this one goes again",
                    error.message
                )),
                // Whose it was is unknown: each counts an attempt, so the culprit still ends
                // in the dead letters.
                None => SinkError::retryable(error.message),
            }
        }
    }
}

/// The body size in RabbitMQ's "message size N is larger than configured max size M".
pub(super) fn refused_size(text: &str) -> Option<usize> {
    let rest = &text[text.find("message size ")? + "message size ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_refused_size() {
        let text =
            "PRECONDITION_FAILED - message size 2048 is larger than configured max size 1024";
        assert_eq!(super::refused_size(text), Some(2048));
        assert_eq!(super::refused_size("PRECONDITION_FAILED - other"), None);
    }
}
