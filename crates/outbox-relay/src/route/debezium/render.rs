//! Applying the EventRouter's options to a row: [`EventRouterOptions::bind`] finds the columns
//! they name in a table ([`BoundColumns`]), [`EventRouterOptions::route`] turns one inserted
//! row into what Debezium would have written to Kafka ([`Routed`]). Column values are rendered
//! as Debezium's Connect types for them in JSON ([`json_value`]): numbers and booleans as
//! such, `timestamp` as epoch microseconds, `date` as epoch days, `timestamptz` as an ISO-8601
//! UTC string, everything else as a string; headers carry strings as they are.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::options::{AdditionalField, Converter, EventRouterOptions, Placement};

/// PostgreSQL type OIDs the router renders by type.
mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const NUMERIC: u32 = 1700;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
}

impl EventRouterOptions {
    /// Finds the columns the options name in a table's columns (`(name, type OID)`, in tuple
    /// order). Fails naming the missing ones.
    pub fn bind(&self, columns: &[(&str, u32)]) -> Result<BoundColumns, String> {
        let find = |name: &str| columns.iter().position(|(c, _)| *c == name);
        let mut missing = Vec::new();
        let mut need = |option: &str, name: &str| -> usize {
            find(name).unwrap_or_else(|| {
                missing.push(format!("{name} ({option})"));
                0
            })
        };
        let id = need("table.field.event.id", &self.event_id);
        let key = need("table.field.event.key", &self.event_key);
        let payload = need("table.field.event.payload", &self.payload);
        let route_by = need("route.by.field", &self.route_by);
        if let Some(ts) = &self.event_timestamp {
            need("table.field.event.timestamp", ts);
        }
        let additional: Vec<usize> = self
            .additional
            .iter()
            .map(|a| need("table.fields.additional.placement", &a.column))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the table has no column {}",
                missing.join(", no column ")
            ));
        }
        Ok(BoundColumns {
            id,
            key,
            payload_id: find(&self.payload_id),
            payload,
            route_by,
            event_type: find(&self.event_type),
            additional,
            types: columns.iter().map(|(_, t)| *t).collect(),
        })
    }

    /// Applies the router to one inserted row (`values` in the order of the columns given to
    /// [`EventRouterOptions::bind`]; `None` is NULL, text values as PostgreSQL prints them with
    /// `DateStyle=ISO` and `TimeZone=UTC`). An error means the row cannot be routed.
    pub fn route(&self, b: &BoundColumns, values: &[Option<&str>]) -> Result<Routed, String> {
        let get = |i: usize| values.get(i).copied().flatten();
        let ty = |i: usize| b.types.get(i).copied().unwrap_or(0);
        let id =
            get(b.id).ok_or_else(|| format!("the event id column {} is NULL", self.event_id))?;
        let routed = get(b.route_by)
            .ok_or_else(|| format!("the route.by.field column {} is NULL", self.route_by))?;
        let (key_index, key_text) = match get(b.key) {
            Some(k) => (b.key, Some(k)),
            None => match b.payload_id.and_then(|i| get(i).map(|k| (i, k))) {
                Some((i, k)) => (i, Some(k)),
                None => (b.key, None),
            },
        };
        let key = key_text.map(|k| match self.key_converter {
            Converter::String => k.to_string(),
            Converter::Json => json_value(ty(key_index), k),
        });

        let payload_text = get(b.payload);
        let payload_json = payload_text.map(|p| {
            let t = ty(b.payload);
            if self.expand_json_payload
                && is_stringish(t)
                && (p.starts_with('{') || p.starts_with('['))
            {
                if let Some(min) = minify_json(p) {
                    return min;
                }
            }
            json_value(t, p)
        });
        let is_empty = match payload_text {
            None => true,
            Some(p) => is_stringish(ty(b.payload)) && p.trim().is_empty(),
        };
        let envelope: Vec<(&AdditionalField, usize)> = self
            .additional
            .iter()
            .zip(&b.additional)
            .filter(|(a, _)| a.placement == Placement::Envelope)
            .map(|(a, i)| (a, *i))
            .collect();
        let value = if is_empty && self.tombstone_on_empty_payload {
            None
        } else if envelope.is_empty() {
            match (self.value_converter, payload_text) {
                (_, None) => None,
                (Converter::String, Some(p)) => Some(p.as_bytes().to_vec()),
                (Converter::Json, Some(_)) => payload_json.map(String::into_bytes),
            }
        } else {
            let mut v = String::with_capacity(payload_text.map_or(8, str::len) + 64);
            v.push_str("{\"payload\":");
            v.push_str(payload_json.as_deref().unwrap_or("null"));
            for (a, i) in envelope {
                v.push(',');
                v.push_str(&json_string(&a.alias));
                v.push(':');
                match get(i) {
                    Some(t) => v.push_str(&json_value(ty(i), t)),
                    None => v.push_str("null"),
                }
            }
            v.push('}');
            Some(v.into_bytes())
        };
        let mut headers = Vec::with_capacity(1 + self.additional.len());
        headers.push(("id".to_string(), id.to_string()));
        for (a, i) in self.additional.iter().zip(&b.additional) {
            if a.placement == Placement::Header {
                if let Some(t) = get(*i) {
                    headers.push((a.alias.clone(), header_value(ty(*i), t)));
                }
            }
        }
        Ok(Routed {
            id: id.to_string(),
            topic: self.topic(routed),
            key,
            value,
            headers,
            routed_by: routed.to_string(),
            event_type: b.event_type.and_then(get).map(str::to_string),
            raw_key: key_text.map(str::to_string),
        })
    }
}

/// Column positions of the options in one table, from [`EventRouterOptions::bind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundColumns {
    id: usize,
    key: usize,
    payload_id: Option<usize>,
    payload: usize,
    route_by: usize,
    event_type: Option<usize>,
    additional: Vec<usize>,
    types: Vec<u32>,
}

/// One routed row: what Debezium would have written to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The event id as the table holds it (the `id` header).
    pub id: String,
    /// The topic.
    pub topic: String,
    /// The serialised key; `None` for a null key.
    pub key: Option<String>,
    /// The serialised value; `None` for a tombstone (null value).
    pub value: Option<Vec<u8>>,
    /// Headers, `id` first.
    pub headers: Vec<(String, String)>,
    /// The `route.by.field` value.
    pub routed_by: String,
    /// The event type column's value, when the column exists.
    pub event_type: Option<String>,
    /// The key column's value as text, before serialisation.
    pub raw_key: Option<String>,
}

/// Types Debezium maps to a Connect string (text, varchar, json, jsonb, uuid, …): everything
/// not rendered as a number, boolean or epoch-based time.
fn is_stringish(t: u32) -> bool {
    !matches!(
        t,
        oid::BOOL
            | oid::INT2
            | oid::INT4
            | oid::INT8
            | oid::OID
            | oid::FLOAT4
            | oid::FLOAT8
            | oid::NUMERIC
            | oid::DATE
            | oid::TIMESTAMP
    )
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn is_json_number(s: &str) -> bool {
    serde_json::from_str::<serde_json::Number>(s).is_ok()
}

/// A column value as Debezium's Connect type for it, in JSON: numbers and booleans as such,
/// `timestamp` as epoch microseconds, `date` as epoch days, `timestamptz` as an ISO-8601 UTC
/// string, everything else (text, json, jsonb, uuid, …) as a string.
pub fn json_value(type_oid: u32, text: &str) -> String {
    match type_oid {
        oid::BOOL => match text {
            "t" | "true" => "true".into(),
            "f" | "false" => "false".into(),
            other => json_string(other),
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC
            if is_json_number(text) =>
        {
            text.to_string()
        }
        oid::TIMESTAMP => match parse_timestamp(text) {
            Some(t) => t.and_utc().timestamp_micros().to_string(),
            None => json_string(text),
        },
        oid::DATE => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(d) => (d - NaiveDate::default()).num_days().to_string(),
            Err(_) => json_string(text),
        },
        oid::TIMESTAMPTZ => json_string(&zoned_timestamp(text).unwrap_or_else(|| text.into())),
        _ => json_string(text),
    }
}

/// A column value as a header value: strings as they are, other types as their JSON text.
fn header_value(type_oid: u32, text: &str) -> String {
    match type_oid {
        oid::BOOL | oid::TIMESTAMP | oid::DATE => json_value(type_oid, text),
        oid::TIMESTAMPTZ => zoned_timestamp(text).unwrap_or_else(|| text.into()),
        _ => text.to_string(),
    }
}

fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// `2024-05-01 12:00:00.1234+00` → `2024-05-01T12:00:00.1234Z` (Debezium's ZonedTimestamp:
/// ISO-8601, the fraction as short as it can be).
fn zoned_timestamp(text: &str) -> Option<String> {
    let t = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()?
        .with_timezone(&Utc);
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    Some(s)
}

/// Compact JSON text with the members in their original order (as Jackson re-serialises a
/// parsed document). `None` when `text` is not JSON.
pub fn minify_json(text: &str) -> Option<String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debezium_defaults_on_the_default_table() {
        let (o, notes) = EventRouterOptions::from_options([]).unwrap();
        assert!(notes.is_empty());
        let cols = [
            ("id", 2950),
            ("aggregatetype", 1043),
            ("aggregateid", 1043),
            ("type", 1043),
            ("payload", 3802),
        ];
        let b = o.bind(&cols).unwrap();
        let r = o
            .route(
                &b,
                &[
                    Some("4d47e190-0402-4048-bc2c-89dd54343cdc"),
                    Some("order"),
                    Some("1"),
                    Some("OrderCreated"),
                    Some(r#"{"id": 1}"#),
                ],
            )
            .unwrap();
        assert_eq!(r.topic, "outbox.event.order");
        assert_eq!(r.key.as_deref(), Some("\"1\""));
        assert_eq!(r.value.unwrap(), br#""{\"id\": 1}""#);
        // A NULL payload is a null value (a tombstone).
        let r = o
            .route(
                &b,
                &[Some("x"), Some("order"), Some("1"), Some("Deleted"), None],
            )
            .unwrap();
        assert_eq!(r.value, None);
    }

    #[test]
    fn expand_envelope_headers_and_converters() {
        let (o, _) = EventRouterOptions::from_options([
            ("table.expand.json.payload", "true"),
            (
                "table.fields.additional.placement",
                "type:header:eventType,version:envelope,at:envelope:when,type:envelope",
            ),
            (
                "key.converter",
                "org.apache.kafka.connect.storage.StringConverter",
            ),
        ])
        .unwrap();
        let cols = [
            ("id", 2950),
            ("aggregatetype", 25),
            ("aggregateid", 25),
            ("type", 25),
            ("payload", 3802),
            ("version", 23),
            ("at", 1184),
        ];
        let b = o.bind(&cols).unwrap();
        let r = o
            .route(
                &b,
                &[
                    Some("i"),
                    Some("customers"),
                    Some("c-1"),
                    Some("Created"),
                    Some(r#"{"a": [1, 2], "b": "x y"}"#),
                    Some("3"),
                    Some("2024-05-01 12:00:00.120+00"),
                ],
            )
            .unwrap();
        assert_eq!(r.key.as_deref(), Some("c-1"));
        assert_eq!(
            String::from_utf8(r.value.unwrap()).unwrap(),
            r#"{"payload":{"a":[1,2],"b":"x y"},"version":3,"when":"2024-05-01T12:00:00.12Z","type":"Created"}"#
        );
        assert_eq!(r.headers[1], ("eventType".into(), "Created".into()));
    }

    #[test]
    fn tombstones_and_failed_expansion() {
        let (o, _) = EventRouterOptions::from_options([
            ("route.tombstone.on.empty.payload", "true"),
            ("table.expand.json.payload", "true"),
            ("table.field.event.payload", "body"),
        ])
        .unwrap();
        let cols = [
            ("id", 25),
            ("aggregatetype", 25),
            ("aggregateid", 25),
            ("body", 25),
        ];
        let b = o.bind(&cols).unwrap();
        let row = |p: Option<&'static str>| [Some("1"), Some("t"), Some("k"), p];
        assert_eq!(o.route(&b, &row(Some("  "))).unwrap().value, None);
        assert_eq!(o.route(&b, &row(None)).unwrap().value, None);
        // Not JSON: kept as a string, as Debezium does.
        assert_eq!(
            o.route(&b, &row(Some("{oops"))).unwrap().value.unwrap(),
            br#""{oops""#
        );
    }

    #[test]
    fn null_key_falls_back_to_the_payload_id_column() {
        let (o, _) = EventRouterOptions::from_options([("table.field.event.key", "k")]).unwrap();
        let cols = [
            ("id", 25),
            ("aggregatetype", 25),
            ("aggregateid", 25),
            ("k", 25),
            ("payload", 25),
        ];
        let b = o.bind(&cols).unwrap();
        let r = o
            .route(&b, &[Some("1"), Some("t"), Some("agg"), None, Some("p")])
            .unwrap();
        assert_eq!(r.key.as_deref(), Some("\"agg\""));
    }

    #[test]
    fn typed_values() {
        assert_eq!(json_value(16, "t"), "true");
        assert_eq!(json_value(20, "12"), "12");
        assert_eq!(json_value(701, "NaN"), "\"NaN\"");
        assert_eq!(json_value(1114, "1970-01-01 00:00:01.5"), "1500000");
        assert_eq!(json_value(1082, "1970-01-11"), "10");
        assert_eq!(
            json_value(1184, "2024-05-01 14:00:00+02"),
            "\"2024-05-01T12:00:00Z\""
        );
        assert_eq!(json_value(3802, "{\"a\": 1}"), r#""{\"a\": 1}""#);
        assert_eq!(
            minify_json(r#"{ "a b" : [1, "x \" y"] }"#).unwrap(),
            r#"{"a b":[1,"x \" y"]}"#
        );
        assert_eq!(minify_json("{"), None);
    }
}
