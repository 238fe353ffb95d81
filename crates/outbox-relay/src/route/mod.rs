//! Routing: from an outbox [`Record`] to a broker [`Message`] (topic, key, value, headers).

pub mod envelope;
pub mod template;

use bytes::Bytes;

pub use envelope::Envelope;
pub use template::Template;

use crate::{Message, Record};

/// Turns records into messages: a topic template plus an envelope.
#[derive(Debug, Clone)]
pub struct Router {
    topic: Template,
    envelope: Envelope,
}

impl Router {
    /// A router with an explicit topic template.
    pub fn new(topic: Template, envelope: Envelope) -> Self {
        Router { topic, envelope }
    }

    /// A router using the envelope's default topic template.
    pub fn with_default_topic(envelope: Envelope) -> Self {
        let topic =
            Template::parse(envelope.default_topic()).expect("built-in topic templates parse");
        Router { topic, envelope }
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
        Ok(Message {
            id: record.id,
            topic: self.topic.render(record),
            key: record.aggregate_id.clone(),
            value: Bytes::from(self.envelope.value(record)?),
            headers: self.envelope.headers(record)?,
        })
    }
}

impl Default for Router {
    fn default() -> Self {
        Router::with_default_topic(Envelope::Reference)
    }
}
