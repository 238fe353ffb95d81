//! Topic templates: `{aggregate_type:lower}-events`, `outbox.event.{aggregate_type}`, …
//!
//! The same syntax names things a sink derives from a routed [`Message`] (e.g. an AMQP exchange
//! and routing key): those templates are parsed with [`Template::parse_for_message`], which also
//! accepts `{topic}`, and rendered with [`Template::render_message`].

use crate::message::Message;
use crate::record::Record;

/// A compiled topic (subject, routing key, stream) template.
///
/// Placeholders: `{aggregate_type}`, `{aggregate_id}`, `{event_type}`, each optionally followed
/// by a filter: `{aggregate_type:lower}`, `{event_type:upper}`. `{{` and `}}` are literal braces.
/// Templates for a sink's own names ([`Template::parse_for_message`]) may also use `{topic}`, the
/// message's rendered topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field, Filter),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    AggregateType,
    AggregateId,
    EventType,
    /// The message's topic: only in templates parsed with [`Template::parse_for_message`].
    Topic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    None,
    Lower,
    Upper,
}

impl Template {
    /// Parses a template, refusing unknown placeholders and filters.
    pub fn parse(source: &str) -> Result<Self, String> {
        Self::parse_inner(source, false)
    }

    /// Parses a template a sink renders from a routed message ([`Template::render_message`]):
    /// the placeholders of [`Template::parse`] plus `{topic}`, the message's topic.
    pub fn parse_for_message(source: &str) -> Result<Self, String> {
        Self::parse_inner(source, true)
    }

    fn parse_inner(source: &str, with_topic: bool) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("template {source:?}: unclosed '{{'")),
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(parse_placeholder(source, &name, with_topic)?);
                }
                '}' => return Err(format!("template {source:?}: unmatched '}}'")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if parts.is_empty() {
            return Err("the template is empty".into());
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The topic for one event.
    pub fn render(&self, record: &Record) -> String {
        self.render_with(|field| match field {
            Field::AggregateType => &record.aggregate_type,
            Field::AggregateId => &record.aggregate_id,
            Field::EventType => &record.event_type,
            // Refused by `parse`: a topic template cannot refer to the topic.
            Field::Topic => "",
        })
    }

    /// Renders the template for events of one aggregate type and event type, without an
    /// aggregate id: `None` when the template uses `{aggregate_id}` (then the topic is per
    /// aggregate, not per type). What the web console groups its counts by.
    pub fn render_type(&self, aggregate_type: &str, event_type: &str) -> Option<String> {
        let per_aggregate = self
            .parts
            .iter()
            .any(|p| matches!(p, Part::Field(Field::AggregateId, _)));
        (!per_aggregate).then(|| {
            self.render_with(|field| match field {
                Field::AggregateType => aggregate_type,
                Field::EventType => event_type,
                Field::AggregateId | Field::Topic => "",
            })
        })
    }

    /// Renders a template for a routed message: `{topic}` is its topic, `{aggregate_id}` its key,
    /// `{aggregate_type}` and `{event_type}` the headers of those names (empty when the envelope
    /// does not send them, as with Debezium).
    pub fn render_message(&self, message: &Message) -> String {
        let header = |name: &str| {
            message
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        self.render_with(|field| match field {
            Field::AggregateType => header("aggregate_type"),
            Field::AggregateId => &message.key,
            Field::EventType => header("event_type"),
            Field::Topic => &message.topic,
        })
    }

    fn render_with<'a>(&self, value_of: impl Fn(Field) -> &'a str) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(field, filter) => {
                    let value = value_of(*field);
                    match filter {
                        Filter::None => out.push_str(value),
                        Filter::Lower if value.is_ascii() => {
                            let start = out.len();
                            out.push_str(value);
                            out[start..].make_ascii_lowercase();
                        }
                        Filter::Upper if value.is_ascii() => {
                            let start = out.len();
                            out.push_str(value);
                            out[start..].make_ascii_uppercase();
                        }
                        Filter::Lower => out.extend(value.chars().flat_map(char::to_lowercase)),
                        Filter::Upper => out.extend(value.chars().flat_map(char::to_uppercase)),
                    }
                }
            }
        }
        out
    }
}

fn parse_placeholder(source: &str, inner: &str, with_topic: bool) -> Result<Part, String> {
    let (name, filter) = match inner.split_once(':') {
        Some((n, f)) => (n.trim(), Some(f.trim())),
        None => (inner.trim(), None),
    };
    let field = match name {
        "aggregate_type" => Field::AggregateType,
        "aggregate_id" => Field::AggregateId,
        "event_type" => Field::EventType,
        "topic" if with_topic => Field::Topic,
        other if with_topic => {
            return Err(format!(
                "template {source:?}: unknown placeholder {{{other}}}; \
                 use {{topic}}, {{aggregate_type}}, {{aggregate_id}} or {{event_type}}"
            ))
        }
        other => {
            return Err(format!(
                "template {source:?}: unknown placeholder {{{other}}}; \
                 use {{aggregate_type}}, {{aggregate_id}} or {{event_type}}"
            ))
        }
    };
    let filter = match filter {
        None => Filter::None,
        Some("lower") => Filter::Lower,
        Some("upper") => Filter::Upper,
        Some(other) => {
            return Err(format!(
                "template {source:?}: unknown filter :{other}; use :lower or :upper"
            ))
        }
    };
    Ok(Part::Field(field, filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_per_type_unless_per_aggregate() {
        let t = Template::parse("{aggregate_type:lower}.{event_type}").unwrap();
        assert_eq!(
            t.render_type("Order", "OrderPlaced").as_deref(),
            Some("order.OrderPlaced")
        );
        let per_aggregate = Template::parse("orders.{aggregate_id}").unwrap();
        assert_eq!(per_aggregate.render_type("Order", "OrderPlaced"), None);
    }

    fn record() -> Record {
        Record {
            seq: 1,
            id: uuid::Uuid::nil(),
            aggregate_type: "Order".into(),
            aggregate_id: "A-1".into(),
            event_type: "OrderCreated".into(),
            payload: "{}".into(),
            headers: None,
            created_at: chrono::Utc::now(),
            retry_count: 0,
        }
    }

    #[test]
    fn renders_contract_defaults() {
        let t = Template::parse("{aggregate_type:lower}-events").unwrap();
        assert_eq!(t.render(&record()), "order-events");
        let t = Template::parse("outbox.event.{aggregate_type}").unwrap();
        assert_eq!(t.render(&record()), "outbox.event.Order");
    }

    #[test]
    fn filters_and_escapes() {
        let t = Template::parse("{{x}}.{event_type:upper}.{aggregate_id}").unwrap();
        assert_eq!(t.render(&record()), "{x}.ORDERCREATED.A-1");
    }

    #[test]
    fn refuses_bad_templates() {
        assert!(Template::parse("{nope}")
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(Template::parse("{aggregate_type:snake}")
            .unwrap_err()
            .contains("unknown filter"));
        assert!(Template::parse("{aggregate_type")
            .unwrap_err()
            .contains("unclosed"));
        assert!(Template::parse("a}").unwrap_err().contains("unmatched"));
        assert!(Template::parse("").is_err());
        // `{topic}` only names something in templates rendered from a message.
        assert!(Template::parse("{topic}")
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(Template::parse_for_message("{nope}")
            .unwrap_err()
            .contains("{topic}"));
    }

    #[test]
    fn renders_from_a_message() {
        let message = Message {
            id: uuid::Uuid::nil(),
            topic: "order-events".into(),
            key: "A-1".into(),
            value: bytes::Bytes::new(),
            headers: vec![
                ("id".into(), uuid::Uuid::nil().to_string()),
                ("event_type".into(), "OrderCreated".into()),
                ("aggregate_type".into(), "Order".into()),
            ],
        };
        let t = Template::parse_for_message("{topic}").unwrap();
        assert_eq!(t.render_message(&message), "order-events");
        let t = Template::parse_for_message("x.{aggregate_type:lower}.{event_type}.{aggregate_id}")
            .unwrap();
        assert_eq!(t.render_message(&message), "x.order.OrderCreated.A-1");
        let bare = Message {
            headers: Vec::new(),
            ..message
        };
        assert_eq!(t.render_message(&bare), "x...A-1");
        assert_eq!(
            Template::parse_for_message("outbox")
                .unwrap()
                .render_message(&bare),
            "outbox"
        );
    }
}
