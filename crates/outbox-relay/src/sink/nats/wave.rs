//! A wave of messages (different aggregates) on one acknowledgement inbox: every message is
//! published with a reply subject `INBOX.i` on one subscription to `INBOX.*`, so a wave costs
//! one subscription and one deadline rather than a request (inbox, oneshot, timer) per message.

use std::collections::HashMap;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use futures::StreamExt;

use super::{headers, publish_kind, validate_subject, NatsSink};
use crate::sink::{ErrorKind, Message, Sink, SinkError};

impl NatsSink {
    /// Publishes a wave and reads its acknowledgements (see the module's documentation).
    pub(super) async fn publish_wave(
        &self,
        messages: &[Message],
        max_in_flight: usize,
    ) -> Vec<Result<(), SinkError>> {
        if messages.len() < 2 {
            let mut out = Vec::with_capacity(1);
            for m in messages {
                out.push(self.publish(m).await);
            }
            return out;
        }
        let mut results: Vec<Option<Result<(), SinkError>>> = vec![None; messages.len()];
        let client = self.js.client();
        if client.connection_state() == async_nats::connection::State::Disconnected {
            let down = SinkError::unavailable(format!("NATS {}: not connected", self.url));
            return vec![Err(down); messages.len()];
        }
        // What can be sent: a valid subject (checked once per topic) and headers NATS carries.
        let mut subjects: HashMap<&str, Result<async_nats::Subject, SinkError>> = HashMap::new();
        let mut ready: Vec<(usize, async_nats::Subject, HeaderMap)> =
            Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let subject = subjects
                .entry(m.topic.as_str())
                .or_insert_with(|| validate_subject(&m.topic).map(|()| m.topic.clone().into()))
                .clone();
            match subject.and_then(|s| Ok((s, headers(m)?))) {
                Ok((subject, headers)) => ready.push((i, subject, headers)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let inbox = client.new_inbox();
        let mut acks = match client.subscribe(format!("{inbox}.*")).await {
            Ok(sub) => Some(sub),
            Err(e) => {
                let e = SinkError::unavailable(format!("NATS {}: subscribing: {e}", self.url));
                for (i, _, _) in &ready {
                    results[*i] = Some(Err(e.clone()));
                }
                None
            }
        };
        let mut no_stream = Vec::new();
        if let Some(sub) = acks.as_mut() {
            let limit = max_in_flight.max(1);
            let (mut ready, mut outstanding) = (ready.into_iter(), 0usize);
            loop {
                while outstanding < limit {
                    let Some((i, subject, headers)) = ready.next() else {
                        break;
                    };
                    let payload = messages[i].value.clone();
                    let reply = format!("{inbox}.{i}");
                    match client
                        .publish_with_reply_and_headers(subject, reply, headers, payload)
                        .await
                    {
                        Ok(()) => outstanding += 1,
                        Err(e) => {
                            use async_nats::client::PublishErrorKind as Client;
                            let topic = &messages[i].topic;
                            results[i] = Some(Err(match e.kind() {
                                Client::MaxPayloadExceeded | Client::InvalidSubject => {
                                    SinkError::permanent(format!("NATS rejected the message: {e}"))
                                }
                                Client::Send => SinkError::unavailable(format!(
                                    "NATS publish to {topic} failed: {e}"
                                )),
                            }))
                        }
                    }
                }
                if outstanding == 0 {
                    break;
                }
                // Progress, not a per-message clock: the wave gives up when no acknowledgement
                // at all came within `ack_timeout`.
                let ack = match tokio::time::timeout(self.options.ack_timeout, sub.next()).await {
                    Ok(Some(ack)) => ack,
                    Ok(None) | Err(_) => break,
                };
                let index = ack
                    .subject
                    .rsplit_once('.')
                    .and_then(|(_, i)| i.parse::<usize>().ok())
                    .filter(|i| *i < messages.len());
                let Some(i) = index.filter(|i| results[*i].is_none()) else {
                    continue;
                };
                outstanding -= 1;
                match self.judge_ack(&ack, &messages[i].topic) {
                    Acked::Yes => results[i] = Some(Ok(())),
                    Acked::NoStream => {
                        results[i] = Some(Ok(()));
                        no_stream.push(i);
                    }
                    Acked::No(e) => results[i] = Some(Err(e)),
                }
            }
            let _ = sub.unsubscribe().await;
        }
        // No stream captures these subjects yet: create or extend it, one message at a time.
        for i in no_stream {
            results[i] = Some(self.publish(&messages[i]).await);
        }
        results
            .into_iter()
            .zip(messages)
            .map(|(r, m)| {
                r.unwrap_or_else(|| {
                    Err(SinkError::unavailable(format!(
                        "NATS: no acknowledgement within {:?} on {} (server unreachable?)",
                        self.options.ack_timeout, m.topic
                    )))
                })
            })
            .collect()
    }

    /// Reads the stream's answer to one message of a wave, as [`NatsSink::classify`] would
    /// judge the same answer to a single publish.
    fn judge_ack(&self, ack: &async_nats::Message, subject: &str) -> Acked {
        if ack.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            self.forget(subject);
            return Acked::NoStream;
        }
        match serde_json::from_slice::<PubAck>(&ack.payload) {
            Ok(PubAck { error: None }) => Acked::Yes,
            Ok(PubAck { error: Some(e) }) => {
                let kind = publish_kind(PublishErrorKind::Other, Some(e.error_code().0));
                Acked::No(SinkError {
                    kind,
                    message: if kind == ErrorKind::Permanent {
                        format!("NATS rejected the message: {e}")
                    } else {
                        format!("NATS publish to {subject} failed: {e}")
                    },
                    retry_after: None,
                })
            }
            Err(e) => Acked::No(SinkError::unavailable(format!(
                "NATS publish to {subject}: unreadable acknowledgement ({e})"
            ))),
        }
    }
}

/// What a stream's answer to one publish of a wave says.
enum Acked {
    Yes,
    /// No stream captures the subject ("no responders").
    NoStream,
    No(SinkError),
}

/// The part of a JetStream `PubAck` the sink reads: its error, when there is one.
#[derive(serde::Deserialize)]
struct PubAck {
    #[serde(default)]
    error: Option<jetstream::Error>,
}
