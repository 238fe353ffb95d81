//! Routing: from an outbox [`Record`] to a broker [`Message`] (topic, key, value, headers).

pub mod debezium;
pub mod envelope;

use bytes::Bytes;

pub use crate::template::Template;
pub use envelope::Envelope;

use crate::message::Message;
use crate::record::Record;

/// Turns records into messages: a topic template, a key template, an envelope.
#[derive(Debug, Clone)]
pub struct Router {
    topic: Template,
    key: Option<Template>,
    envelope: Envelope,
}

impl Router {
    /// A router with an explicit topic template; the key is the aggregate id.
    pub fn new(topic: Template, envelope: Envelope) -> Self {
        Router {
            topic,
            key: None,
            envelope,
        }
    }

    /// A router using the envelope's default topic template.
    pub fn with_default_topic(envelope: Envelope) -> Self {
        let topic =
            Template::parse(envelope.default_topic()).expect("built-in topic templates parse");
        Router::new(topic, envelope)
    }

    /// Uses a key template instead of the aggregate id. Order is still kept per aggregate; a
    /// key that groups several aggregates keeps them in one partition, not in one order.
    pub fn with_key(mut self, key: Template) -> Self {
        self.key = Some(key);
        self
    }

    /// The topic template.
    pub fn topic(&self) -> &Template {
        &self.topic
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Builds the message for one record; an error means the record can never be delivered
    /// as it stands (it goes to the dead-letter table with this reason).
    pub fn route(&self, record: &Record) -> Result<Message, String> {
        let (value, headers) = self.envelope.value_and_headers(record)?;
        Ok(Message {
            id: record.id,
            topic: self.topic.render(record),
            key: match &self.key {
                Some(t) => t.render(record),
                None => record.aggregate_id.clone(),
            },
            value: Bytes::from(value),
            headers,
        })
    }
}

impl Default for Router {
    fn default() -> Self {
        Router::with_default_topic(Envelope::Reference)
    }
}
