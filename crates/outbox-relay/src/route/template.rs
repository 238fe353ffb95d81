//! Topic templates: `{aggregate_type:lower}-events`, `outbox.event.{aggregate_type}`, …

use crate::Record;

/// A compiled topic (subject, routing key, stream) template.
///
/// Placeholders: `{aggregate_type}`, `{aggregate_id}`, `{event_type}`, each optionally followed
/// by a filter: `{aggregate_type:lower}`, `{event_type:upper}`. `{{` and `}}` are literal braces.
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
                            None => {
                                return Err(format!("topic template {source:?}: unclosed '{{'"))
                            }
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(parse_placeholder(source, &name)?);
                }
                '}' => return Err(format!("topic template {source:?}: unmatched '}}'")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if parts.is_empty() {
            return Err("topic template is empty".into());
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
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(field, filter) => {
                    let value = match field {
                        Field::AggregateType => &record.aggregate_type,
                        Field::AggregateId => &record.aggregate_id,
                        Field::EventType => &record.event_type,
                    };
                    match filter {
                        Filter::None => out.push_str(value),
                        Filter::Lower => out.extend(value.chars().flat_map(char::to_lowercase)),
                        Filter::Upper => out.extend(value.chars().flat_map(char::to_uppercase)),
                    }
                }
            }
        }
        out
    }
}

fn parse_placeholder(source: &str, inner: &str) -> Result<Part, String> {
    let (name, filter) = match inner.split_once(':') {
        Some((n, f)) => (n.trim(), Some(f.trim())),
        None => (inner.trim(), None),
    };
    let field = match name {
        "aggregate_type" => Field::AggregateType,
        "aggregate_id" => Field::AggregateId,
        "event_type" => Field::EventType,
        other => {
            return Err(format!(
                "topic template {source:?}: unknown placeholder {{{other}}}; \
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
                "topic template {source:?}: unknown filter :{other}; use :lower or :upper"
            ))
        }
    };
    Ok(Part::Field(field, filter))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
