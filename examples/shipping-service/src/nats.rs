//! NATS JetStream: a durable pull consumer with explicit acknowledgements. A message is acked
//! (and the ack confirmed by the server) only after its transaction committed; one left
//! unacknowledged (a crash, a shutdown mid-way) is redelivered after `ack_wait`.
//!
//! The consumer allows one unacknowledged message (`max_ack_pending = 1`): JetStream hands out
//! the next only after the ack, so a message left unacknowledged by a crash comes again
//! *before* anything published after it, and events of an order keep their order. (With more
//! in flight, a new instance would go on with later messages while the dead one's wait out
//! `ack_wait`.)

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::consume::{handle, pause, Verdict};
use crate::crash::Crash;
use crate::event::Delivery;
use crate::shipments::Shipments;
use crate::Error;

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct NatsSource {
    /// `nats://host:4222` (credentials in the URL are honoured, never logged).
    pub url: String,
    /// The subject to consume (the relay's topic, e.g. `order-events`).
    pub subject: String,
    /// The stream; `None`: the one whose subjects capture `subject`.
    pub stream: Option<String>,
    /// The durable consumer's name.
    pub durable: String,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
}

impl NatsSource {
    /// Consumes until `shutdown`; every handled message is acknowledged after its commit.
    pub async fn run(
        &self,
        shipments: &Shipments,
        crash: &Crash,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let client = async_nats::ConnectOptions::new()
            .name("shipping-service")
            .connect(self.url.as_str())
            .await
            .map_err(|e| Error::Broker(format!("cannot connect to NATS: {e}")))?;
        let js = jetstream::new(client);
        let Some(stream) = self.find_stream(&js, shutdown).await? else {
            return Ok(());
        };
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(self.durable.clone()),
                filter_subject: self.subject.clone(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.ack_wait,
                deliver_policy: DeliverPolicy::All,
                max_ack_pending: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Broker(format!("cannot create the durable consumer: {e}")))?;
        tracing::info!(stream = %stream.cached_info().config.name, durable = %self.durable, subject = %self.subject, "consuming from NATS JetStream");
        while !shutdown.is_cancelled() {
            let mut messages = match consumer.stream().max_messages_per_batch(1).messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull from the consumer; retrying");
                    pause(Duration::from_secs(1), shutdown).await;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    next = messages.next() => next,
                };
                let message = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "pulling messages");
                        continue;
                    }
                    None => break,
                };
                let delivery = delivery(&message);
                if handle(shipments, crash, &delivery, shutdown).await == Verdict::Leave {
                    return Ok(());
                }
                if let Err(e) = message.double_ack().await {
                    // Redelivered after ack_wait: the inbox knows it.
                    tracing::warn!(origin = %delivery.origin, error = %e, "ack not confirmed; the message will come again as a duplicate");
                }
            }
        }
        Ok(())
    }

    /// The configured stream, or the one capturing the subject (waiting until the relay made
    /// it); `None` on shutdown.
    async fn find_stream(
        &self,
        js: &jetstream::Context,
        shutdown: &CancellationToken,
    ) -> Result<Option<jetstream::stream::Stream>, Error> {
        let mut warned = false;
        loop {
            let name = match &self.stream {
                Some(name) => Ok(name.clone()),
                None => js
                    .stream_by_subject(self.subject.as_str())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match name {
                Ok(name) => match js.get_stream(&name).await {
                    Ok(stream) => return Ok(Some(stream)),
                    Err(e) if !warned => {
                        tracing::warn!(stream = %name, error = %e, "no such stream yet; waiting");
                        warned = true;
                    }
                    Err(_) => {}
                },
                Err(e) if !warned => {
                    tracing::warn!(subject = %self.subject, error = %e, "no stream captures the subject yet (the relay creates it with its first event); waiting");
                    warned = true;
                }
                Err(_) => {}
            }
            if pause(Duration::from_secs(1), shutdown).await {
                return Ok(None);
            }
        }
    }
}

fn delivery(m: &jetstream::Message) -> Delivery {
    let headers = m
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
        .collect();
    let origin = match m.info() {
        Ok(info) => format!(
            "{} #{} (delivery {})",
            m.subject, info.stream_sequence, info.delivered
        ),
        Err(_) => m.subject.to_string(),
    };
    Delivery {
        headers,
        key: None,
        value: m.payload.to_vec(),
        origin,
    }
}
