//! The EventRouter's options by their Debezium names, with Debezium's defaults
//! ([`EventRouterOptions`]), and their parsing: [`EventRouterOptions::from_options`] takes
//! the options without their `transforms.<name>.` prefix, refuses unknown names and values the
//! relay cannot honour, and returns notes about options it accepts but does not act on.
//! `route.topic.replacement` is parsed here too, and applied by [`EventRouterOptions::topic`].

/// The EventRouter's class name, as given in `transforms.<name>.type`.
pub const EVENT_ROUTER: &str = "io.debezium.transforms.outbox.EventRouter";

const DEFAULT_TOPIC_REGEX: &str = "(?<routedByValue>.*)";

/// How Kafka Connect serialised a key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converter {
    /// `org.apache.kafka.connect.json.JsonConverter` with `schemas.enable=false`: a string
    /// becomes a JSON string, a struct a JSON object.
    Json,
    /// `org.apache.kafka.connect.storage.StringConverter` (also `ByteArrayConverter` and
    /// Debezium's `BinaryDataConverter` for text columns): the text as is.
    String,
}

impl Converter {
    fn parse(class: &str, which: &str) -> Result<Converter, String> {
        match class.trim() {
            "org.apache.kafka.connect.json.JsonConverter" => Ok(Converter::Json),
            "org.apache.kafka.connect.storage.StringConverter"
            | "org.apache.kafka.connect.converters.ByteArrayConverter"
            | "io.debezium.converters.BinaryDataConverter" => Ok(Converter::String),
            other => Err(format!(
                "{which}.converter = {other:?} is not supported: use \
                 org.apache.kafka.connect.json.JsonConverter or \
                 org.apache.kafka.connect.storage.StringConverter"
            )),
        }
    }
}

/// Where `table.fields.additional.placement` puts a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A message header.
    Header,
    /// A field of the value, beside `payload`.
    Envelope,
    /// The Kafka partition: accepted, but no sink of the relay takes a partition (ignored).
    Partition,
}

/// One `column:placement[:alias]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdditionalField {
    /// The outbox table column.
    pub column: String,
    /// Where it goes.
    pub placement: Placement,
    /// Header or field name (the column name when no alias is given).
    pub alias: String,
}

/// What to do with an UPDATE of an outbox row (`table.op.invalid.behavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidOperation {
    /// Log a warning and skip it (Debezium's default).
    Warn,
    /// Log an error and skip it.
    Error,
    /// Stop the relay.
    Fatal,
}

/// The EventRouter's options, with Debezium's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRouterOptions {
    /// `table.field.event.id` (default `id`): the column whose value is the `id` header.
    pub event_id: String,
    /// `table.field.event.key` (default `aggregateid`): the message key column.
    pub event_key: String,
    /// `table.field.event.payload.id` (deprecated; default `aggregateid`): key used when the key
    /// column is NULL (only if the column exists).
    pub payload_id: String,
    /// `table.field.event.type` (default `type`): the event type column. Debezium emits it
    /// nowhere by itself; the relay stores it with dead letters.
    pub event_type: String,
    /// `table.field.event.timestamp`: the Kafka record timestamp column. Accepted and checked,
    /// but not carried: the relay's sinks set no record timestamp.
    pub event_timestamp: Option<String>,
    /// `table.field.event.payload` (default `payload`): the payload column.
    pub payload: String,
    /// `table.fields.additional.placement`.
    pub additional: Vec<AdditionalField>,
    /// `route.by.field` (default `aggregatetype`): the column whose value names the topic.
    pub route_by: String,
    /// `route.topic.replacement` (default `outbox.event.${routedByValue}`).
    pub topic_replacement: String,
    /// `route.tombstone.on.empty.payload` (default false).
    pub tombstone_on_empty_payload: bool,
    /// `table.expand.json.payload` (default false).
    pub expand_json_payload: bool,
    /// `table.op.invalid.behavior` (default `warn`).
    pub invalid_operation: InvalidOperation,
    /// `key.converter` (default JsonConverter, schemas disabled).
    pub key_converter: Converter,
    /// `value.converter` (default JsonConverter, schemas disabled).
    pub value_converter: Converter,
    topic: Vec<TopicPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicPart {
    Literal(String),
    Routed,
}

impl Default for EventRouterOptions {
    fn default() -> Self {
        let replacement = "outbox.event.${routedByValue}".to_string();
        EventRouterOptions {
            event_id: "id".into(),
            event_key: "aggregateid".into(),
            payload_id: "aggregateid".into(),
            event_type: "type".into(),
            event_timestamp: None,
            payload: "payload".into(),
            additional: Vec::new(),
            route_by: "aggregatetype".into(),
            topic: parse_replacement(&replacement).unwrap_or_default(),
            topic_replacement: replacement,
            tombstone_on_empty_payload: false,
            expand_json_payload: false,
            invalid_operation: InvalidOperation::Warn,
            key_converter: Converter::Json,
            value_converter: Converter::Json,
        }
    }
}

/// Options the relay accepts but does not act on, with why.
fn ignored_option(name: &str) -> Option<&'static str> {
    match name {
        "table.field.event.schema.version" | "table.field.schema.version" => {
            Some("schema versions have no meaning without Kafka Connect schemas")
        }
        "table.json.payload.null.behavior" => Some("JSON nulls are kept as null"),
        "table.fields.additional.error.on.missing" => {
            Some("a missing additional column is always an error at start")
        }
        "predicate" | "negate" => Some("the relay captures only the outbox table anyway"),
        n if n.starts_with("tracing.") => Some("tracing is not supported"),
        _ => None,
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{name} = {other:?}: expected true or false")),
    }
}

fn column_name(name: &str, v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() {
        Err(format!("{name} must name a column"))
    } else {
        Ok(v.to_string())
    }
}

/// Parses `route.topic.replacement` as Java's `Matcher.replaceFirst` reads it, for the default
/// regex `(?<routedByValue>.*)`: `${routedByValue}`, `$1` and `$0` stand for the routed value,
/// `\x` for a literal `x`.
fn parse_replacement(s: &str) -> Result<Vec<TopicPart>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => lit.push(n),
                None => return Err(format!("route.topic.replacement {s:?}: ends with '\\'")),
            },
            '$' => {
                let group = match chars.next() {
                    Some('{') => {
                        let mut name = String::new();
                        loop {
                            match chars.next() {
                                Some('}') => break,
                                Some(c) => name.push(c),
                                None => {
                                    return Err(format!(
                                        "route.topic.replacement {s:?}: unclosed ${{"
                                    ))
                                }
                            }
                        }
                        name
                    }
                    Some(d) if d.is_ascii_digit() => d.to_string(),
                    _ => {
                        return Err(format!(
                            "route.topic.replacement {s:?}: '$' must be followed by \
                             {{routedByValue}} (write \\$ for a dollar sign)"
                        ))
                    }
                };
                if !matches!(group.as_str(), "routedByValue" | "0" | "1") {
                    return Err(format!(
                        "route.topic.replacement {s:?}: unknown group ${group}; \
                         use ${{routedByValue}}"
                    ));
                }
                if !lit.is_empty() {
                    parts.push(TopicPart::Literal(std::mem::take(&mut lit)));
                }
                parts.push(TopicPart::Routed);
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(TopicPart::Literal(lit));
    }
    if parts.is_empty() {
        return Err("route.topic.replacement is empty".into());
    }
    Ok(parts)
}

fn parse_additional(v: &str) -> Result<Vec<AdditionalField>, String> {
    let mut out = Vec::new();
    for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split(':').map(str::trim).collect();
        if parts.len() != 2 && parts.len() != 3 {
            return Err(format!(
                "table.fields.additional.placement: {entry:?} is not column:placement[:alias]"
            ));
        }
        let placement = match parts[1].to_ascii_lowercase().as_str() {
            "header" => Placement::Header,
            "envelope" => Placement::Envelope,
            "partition" => Placement::Partition,
            other => {
                return Err(format!(
                    "table.fields.additional.placement: {entry:?}: placement {other:?} is not \
                     header, envelope or partition"
                ))
            }
        };
        if parts[0].is_empty() {
            return Err(format!(
                "table.fields.additional.placement: {entry:?} names no column"
            ));
        }
        out.push(AdditionalField {
            column: parts[0].to_string(),
            placement,
            alias: parts.get(2).unwrap_or(&parts[0]).to_string(),
        });
    }
    Ok(out)
}

impl EventRouterOptions {
    /// Reads EventRouter options by their Debezium names (without the `transforms.<name>.`
    /// prefix), plus `key.converter`, `value.converter` and their `.schemas.enable`.
    /// Returns the options and notes about options accepted but not acted on. Unknown names
    /// are errors, so a typo never silently changes the routing.
    pub fn from_options<'a>(
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(EventRouterOptions, Vec<String>), String> {
        let mut o = EventRouterOptions::default();
        let mut notes = Vec::new();
        for (name, value) in options {
            match name {
                "type" => {
                    if value.trim() != EVENT_ROUTER {
                        return Err(format!("type = {value:?}: expected {EVENT_ROUTER}"));
                    }
                }
                "table.field.event.id" => o.event_id = column_name(name, value)?,
                "table.field.event.key" => o.event_key = column_name(name, value)?,
                "table.field.event.type" => o.event_type = column_name(name, value)?,
                "table.field.event.payload" | "table.field.payload" => {
                    o.payload = column_name(name, value)?
                }
                "table.field.event.payload.id" | "table.field.payload.id" => {
                    o.payload_id = column_name(name, value)?
                }
                "table.field.event.timestamp" => {
                    o.event_timestamp = Some(column_name(name, value)?);
                    notes.push(format!(
                        "{name}: the column is checked but the relay's sinks set no record \
                         timestamp"
                    ));
                }
                "table.fields.additional.placement" => o.additional = parse_additional(value)?,
                "table.expand.json.payload" => o.expand_json_payload = parse_bool(name, value)?,
                "route.by.field" => o.route_by = column_name(name, value)?,
                "route.topic.regex" => {
                    if value.trim() != DEFAULT_TOPIC_REGEX {
                        return Err(format!(
                            "route.topic.regex = {value:?}: only the default \
                             {DEFAULT_TOPIC_REGEX} is supported"
                        ));
                    }
                }
                "route.topic.replacement" => {
                    o.topic = parse_replacement(value)?;
                    o.topic_replacement = value.to_string();
                }
                "route.tombstone.on.empty.payload" => {
                    o.tombstone_on_empty_payload = parse_bool(name, value)?
                }
                "table.op.invalid.behavior" | "debezium.op.invalid.behavior" => {
                    o.invalid_operation = match value.trim().to_ascii_lowercase().as_str() {
                        "warn" => InvalidOperation::Warn,
                        "error" => InvalidOperation::Error,
                        "fatal" => InvalidOperation::Fatal,
                        other => {
                            return Err(format!(
                                "{name} = {other:?}: expected warn, error or fatal"
                            ))
                        }
                    }
                }
                "key.converter" => o.key_converter = Converter::parse(value, "key")?,
                "value.converter" => o.value_converter = Converter::parse(value, "value")?,
                "key.converter.schemas.enable" | "value.converter.schemas.enable" => {
                    if parse_bool(name, value)? {
                        return Err(format!(
                            "{name} = true is not supported: the relay writes JSON without \
                             Kafka Connect schemas (schemas.enable=false)"
                        ));
                    }
                }
                other => match ignored_option(other) {
                    Some(why) => notes.push(format!("{other} is ignored: {why}")),
                    None => return Err(format!("unknown EventRouter option {other:?}")),
                },
            }
        }
        if o.value_converter == Converter::String {
            if o.expand_json_payload {
                return Err(
                    "table.expand.json.payload needs value.converter = JsonConverter".into(),
                );
            }
            if o.additional
                .iter()
                .any(|a| a.placement == Placement::Envelope)
            {
                return Err(
                    "envelope placement in table.fields.additional.placement needs \
                     value.converter = JsonConverter"
                        .into(),
                );
            }
        }
        if o.additional
            .iter()
            .any(|a| a.placement == Placement::Partition)
        {
            notes.push(
                "table.fields.additional.placement: partition placement is ignored (no sink \
                 of the relay takes a partition)"
                    .into(),
            );
        }
        Ok((o, notes))
    }

    /// The topic for a `route.by.field` value.
    pub fn topic(&self, routed: &str) -> String {
        let mut out = String::with_capacity(self.topic_replacement.len() + routed.len());
        for p in &self.topic {
            match p {
                TopicPart::Literal(s) => out.push_str(s),
                TopicPart::Routed => out.push_str(routed),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_refused() {
        let err = |opts: &[(&str, &str)]| {
            EventRouterOptions::from_options(opts.iter().copied()).unwrap_err()
        };
        assert!(err(&[("route.topic.replacment", "x")]).contains("unknown EventRouter option"));
        assert!(err(&[("route.topic.regex", "(.*)")]).contains("only the default"));
        assert!(err(&[("route.topic.replacement", "a-$x")]).contains("'$'"));
        assert!(err(&[("route.topic.replacement", "${other}")]).contains("unknown group"));
        assert!(err(&[("table.fields.additional.placement", "a")]).contains("column:placement"));
        assert!(err(&[("table.fields.additional.placement", "a:body")]).contains("placement"));
        assert!(err(&[("table.expand.json.payload", "yes")]).contains("true or false"));
        assert!(err(&[("value.converter.schemas.enable", "true")]).contains("not supported"));
        assert!(
            err(&[("value.converter", "io.confluent.connect.avro.AvroConverter")])
                .contains("not supported")
        );
        let (o, notes) = EventRouterOptions::from_options([
            ("tracing.span.context.field", "x"),
            ("route.topic.replacement", r"\$${routedByValue}.$1"),
        ])
        .unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(o.topic("A"), "$A.A");
        let missing = o.bind(&[("id", 25)]).unwrap_err();
        assert!(
            missing.contains("aggregateid (table.field.event.key)"),
            "{missing}"
        );
        assert!(missing.contains("payload"), "{missing}");
    }
}
