//! Envelopes: how an outbox row becomes a message value and headers.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Timelike, Utc};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::Record;

/// Message headers, in order: (name, value).
pub type Headers = Vec<(String, String)>;

/// The message format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// The reference format (the contract's default): value
    /// `{"id", "type", "aggregate_id", "timestamp", ...payload fields}`; headers `id`,
    /// `event_type`, `aggregate_type`, `seq` and the row's own headers.
    Reference,
    /// As Debezium's outbox EventRouter emits: the payload as-is, header `id`.
    Debezium,
    /// A CloudEvents 1.0 structured-mode JSON event.
    CloudEvents {
        /// The `source` attribute.
        source: String,
    },
    /// CloudEvents 1.0 binary mode (the Kafka and AMQP protocol bindings): the value is the
    /// payload, the attributes travel as `ce_*` headers, `content-type: application/json`.
    CloudEventsBinary {
        /// The `source` attribute.
        source: String,
    },
}

impl Envelope {
    /// Parses an envelope name: `default` (or `reference`), `debezium`, `cloudevents`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "default" | "reference" => Ok(Envelope::Reference),
            "debezium" => Ok(Envelope::Debezium),
            "cloudevents" => Ok(Envelope::CloudEvents {
                source: "outbox".into(),
            }),
            "cloudevents-binary" => Ok(Envelope::CloudEventsBinary {
                source: "outbox".into(),
            }),
            other => Err(format!(
                "unknown envelope {other:?}; use default, debezium, cloudevents or cloudevents-binary"
            )),
        }
    }

    /// The topic template used when none is configured.
    pub fn default_topic(&self) -> &'static str {
        match self {
            Envelope::Debezium => "outbox.event.{aggregate_type}",
            _ => "{aggregate_type:lower}-events",
        }
    }

    /// The message value for `record`.
    pub fn value(&self, record: &Record) -> Result<Vec<u8>, String> {
        self.value_with_id(record, &record.id.hyphenated().to_string())
    }

    /// The value and the headers for `record` (the event id formatted once for both).
    pub fn value_and_headers(&self, record: &Record) -> Result<(Vec<u8>, Headers), String> {
        let id = record.id.hyphenated().to_string();
        let value = self.value_with_id(record, &id)?;
        Ok((value, self.headers_with_id(record, id)?))
    }

    fn value_with_id(&self, record: &Record, id: &str) -> Result<Vec<u8>, String> {
        match self {
            Envelope::Reference => reference_value(record, id),
            Envelope::Debezium => Ok(record.payload.as_bytes().to_vec()),
            Envelope::CloudEvents { source } => Ok(cloudevent_value(record, source, id)),
            Envelope::CloudEventsBinary { .. } => Ok(record.payload.trim().as_bytes().to_vec()),
        }
    }

    /// Sets the CloudEvents `source` attribute (no effect on other envelopes).
    pub fn with_source(mut self, new: &str) -> Self {
        if let Envelope::CloudEvents { source } | Envelope::CloudEventsBinary { source } = &mut self
        {
            *source = new.to_string();
        }
        self
    }

    /// The message headers for `record`: the envelope's own, then the row's `headers`.
    pub fn headers(&self, record: &Record) -> Result<Vec<(String, String)>, String> {
        self.headers_with_id(record, record.id.hyphenated().to_string())
    }

    fn headers_with_id(&self, record: &Record, id: String) -> Result<Headers, String> {
        let mut headers = Vec::with_capacity(12);
        if let Envelope::CloudEventsBinary { source } = self {
            headers.push(("ce_specversion".to_string(), "1.0".to_string()));
            headers.push(("ce_id".to_string(), id.clone()));
            headers.push(("ce_source".to_string(), source.clone()));
            headers.push(("ce_type".to_string(), record.event_type.clone()));
            headers.push(("ce_subject".to_string(), record.aggregate_id.clone()));
            headers.push((
                "ce_time".to_string(),
                record
                    .created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ));
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        headers.push(("id".to_string(), id));
        if !matches!(self, Envelope::Debezium) {
            headers.push(("event_type".to_string(), record.event_type.clone()));
            headers.push(("aggregate_type".to_string(), record.aggregate_type.clone()));
            // Delivery order: a consumer can tell a late, older event of an aggregate
            // (`outbox::inbox::advance`).
            headers.push(("seq".to_string(), record.seq.to_string()));
        }
        if let Some(raw) = record.headers.as_deref() {
            let map: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(raw) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(serde_json::Value::Null) => serde_json::Map::new(),
                _ => {
                    return Err(format!(
                        "the headers column must hold a JSON object, got {raw:.80}"
                    ))
                }
            };
            for (k, v) in map {
                if let Some(why) = reserved_header(&k, &headers) {
                    return Err(format!(
                        "the row's header {k:?} would shadow {why}; rename it (e.g. \"x-{k}\")"
                    ));
                }
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                headers.push((k, v));
            }
        }
        Ok(headers)
    }
}

/// Header names the sinks set themselves, beside the envelope's: the message key (NATS, AMQP,
/// MQTT, Redis), the value (Redis), JetStream's dedupe id, the webhook's topic and key, and the
/// Standard Webhooks headers.
const SINK_HEADERS: [&str; 8] = [
    "key",
    "value",
    "nats-msg-id",
    "outbox-topic",
    "outbox-key",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Why a row header named `name` may not travel: it would shadow a header the envelope sets
/// (`id`, the key consumers dedupe by, first of all) or one a sink sets. Compared without case,
/// as HTTP, NATS and AMQP consumers often do.
fn reserved_header(name: &str, envelope: &[(String, String)]) -> Option<&'static str> {
    if envelope.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
        Some("a header the relay sets")
    } else if SINK_HEADERS.iter().any(|k| k.eq_ignore_ascii_case(name)) {
        Some("a header a sink sets")
    } else {
        None
    }
}

/// Python's `datetime.isoformat()` for an aware UTC time, as the reference code emits:
/// `2024-05-01T12:00:00.123456+00:00`, fraction left out when zero.
pub fn isoformat(t: &DateTime<Utc>) -> String {
    use chrono::Datelike;
    // Hand-formatted, digit by digit: chrono's strftime parser, then `write!`, showed up in
    // relay profiles.
    fn digits(out: &mut [u8], mut n: u32) {
        for d in out.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
    }
    let mut b = *b"0000-00-00T00:00:00.000000+00:00";
    digits(&mut b[0..4], year as u32);
    digits(&mut b[5..7], t.month());
    digits(&mut b[8..10], t.day());
    digits(&mut b[11..13], t.hour());
    digits(&mut b[14..16], t.minute());
    digits(&mut b[17..19], t.second().min(59));
    let micros = t.nanosecond() / 1000 % 1_000_000;
    let text = if micros != 0 {
        digits(&mut b[20..26], micros);
        &b[..]
    } else {
        b.copy_within(26.., 19);
        &b[..b.len() - 7]
    };
    // Only ASCII digits and punctuation were written.
    String::from_utf8_lossy(text).into_owned()
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

const FIXED: [&str; 4] = ["id", "type", "aggregate_id", "timestamp"];

/// `{"id": …, "type": …, "aggregate_id": …, "timestamp": …, **payload}` with Python's merge
/// rules: a payload field of the same name replaces the fixed one in place. A payload that is not
/// an object is kept whole under `"payload"`.
fn reference_value(r: &Record, id: &str) -> Result<Vec<u8>, String> {
    let fields = match serde_json::from_str::<TopLevel>(&r.payload) {
        Ok(TopLevel(fields)) => Some(fields),
        Err(_) => {
            // Not an object (or not JSON at all): validate before embedding.
            serde_json::from_str::<&RawValue>(&r.payload)
                .map_err(|e| format!("payload is not valid JSON: {e}"))?;
            None
        }
    };
    let mut out = Vec::with_capacity(r.payload.len() + 160);
    let ts = isoformat(&r.created_at);
    let fixed_values = [id, &r.event_type, &r.aggregate_id, &ts];
    out.push(b'{');
    for (i, (name, value)) in FIXED.iter().zip(fixed_values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, name);
        out.push(b':');
        match fields
            .as_ref()
            .and_then(|f| f.iter().find(|(k, _)| k == name))
        {
            Some((_, v)) => out.extend_from_slice(v.get().as_bytes()),
            None => push_json_str(&mut out, value),
        }
    }
    match fields {
        Some(fields) => {
            for (k, v) in fields.iter().filter(|(k, _)| !FIXED.contains(&k.as_ref())) {
                out.push(b',');
                push_json_str(&mut out, k);
                out.push(b':');
                out.extend_from_slice(v.get().as_bytes());
            }
        }
        None => {
            out.extend_from_slice(b",\"payload\":");
            out.extend_from_slice(r.payload.trim().as_bytes());
        }
    }
    out.push(b'}');
    Ok(out)
}

fn cloudevent_value(r: &Record, source: &str, id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(r.payload.len() + 256);
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    push_json_str(&mut out, id);
    out.extend_from_slice(b",\"source\":");
    push_json_str(&mut out, source);
    out.extend_from_slice(b",\"type\":");
    push_json_str(&mut out, &r.event_type);
    out.extend_from_slice(b",\"subject\":");
    push_json_str(&mut out, &r.aggregate_id);
    out.extend_from_slice(b",\"time\":");
    push_json_str(
        &mut out,
        &r.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"data\":");
    out.extend_from_slice(r.payload.trim().as_bytes());
    out.push(b'}');
    out
}

/// The top-level fields of a JSON object, in order, values left unparsed.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> de::Deserialize<'de> for TopLevel<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = TopLevel<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    fields.push((k, v));
                }
                Ok(TopLevel(fields))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{json, Value};

    fn record(payload: &str) -> Record {
        Record {
            seq: 7,
            id: uuid::Uuid::parse_str("0190a6b2-1111-7000-8000-000000000001").unwrap(),
            aggregate_type: "Order".into(),
            aggregate_id: "o-1".into(),
            event_type: "OrderCreated".into(),
            payload: payload.into(),
            headers: Some(r#"{"traceparent":"00-1","n":3}"#.into()),
            created_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
                + chrono::Duration::microseconds(123456),
            retry_count: 0,
        }
    }

    #[test]
    fn reference_value_matches_the_python_publisher() {
        let v = Envelope::Reference
            .value(&record(
                r#"{"order_id":"o-1","total":9.5,"items":[{"sku":"a"}]}"#,
            ))
            .unwrap();
        let text = String::from_utf8(v).unwrap();
        assert_eq!(
            text,
            r#"{"id":"0190a6b2-1111-7000-8000-000000000001","type":"OrderCreated","aggregate_id":"o-1","timestamp":"2024-05-01T12:00:00.123456+00:00","order_id":"o-1","total":9.5,"items":[{"sku":"a"}]}"#
        );
    }

    #[test]
    fn payload_fields_override_in_place_like_dict_merge() {
        let v = Envelope::Reference
            .value(&record(r#"{"type":"custom","x":1}"#))
            .unwrap();
        let parsed: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(parsed["type"], json!("custom"));
        assert_eq!(parsed["x"], json!(1));
        assert!(String::from_utf8(v)
            .unwrap()
            .starts_with(r#"{"id":"0190a6b2"#));
    }

    #[test]
    fn non_object_payload_is_nested_and_invalid_json_refused() {
        let v = Envelope::Reference.value(&record("[1,2]")).unwrap();
        let parsed: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(parsed["payload"], json!([1, 2]));
        assert!(Envelope::Reference.value(&record("{nope")).is_err());
    }

    #[test]
    fn escaped_keys_survive() {
        let v = Envelope::Reference.value(&record(r#"{"a\"b":1}"#)).unwrap();
        let parsed: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(parsed["a\"b"], json!(1));
    }

    #[test]
    fn headers_per_envelope() {
        let r = record("{}");
        let h = Envelope::Reference.headers(&r).unwrap();
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "event_type",
                "aggregate_type",
                "seq",
                "n",
                "traceparent"
            ]
        );
        assert_eq!(h[3].1, r.seq.to_string());
        assert_eq!(h[4].1, "3");
        let h = Envelope::Debezium.headers(&r).unwrap();
        assert_eq!(
            h[0],
            ("id".into(), "0190a6b2-1111-7000-8000-000000000001".into())
        );
        let mut bad = r.clone();
        bad.headers = Some("[1]".into());
        assert!(Envelope::Reference.headers(&bad).is_err());
        // A row header may not shadow the relay's own, whatever its case.
        for (name, envelope) in [
            ("id", Envelope::Reference),
            ("ID", Envelope::Debezium),
            ("Nats-Msg-Id", Envelope::Reference),
            ("key", Envelope::Debezium),
            ("Event_Type", Envelope::Reference),
            ("Seq", Envelope::Reference),
        ] {
            let mut forged = r.clone();
            forged.headers = Some(format!(r#"{{"{name}": "forged"}}"#));
            let e = envelope.headers(&forged).unwrap_err();
            assert!(
                e.contains("would shadow") && e.contains(name),
                "{name}: {e}"
            );
        }
        // Debezium's envelope sets no event_type header, so a row may.
        let mut own = r.clone();
        own.headers = Some(r#"{"event_type": "mine"}"#.into());
        assert!(Envelope::Debezium.headers(&own).is_ok());
    }

    #[test]
    fn debezium_and_cloudevents_values() {
        let r = record(r#"{"order_id":"o-1"}"#);
        assert_eq!(
            Envelope::Debezium.value(&r).unwrap(),
            br#"{"order_id":"o-1"}"#
        );
        let ce: Value =
            serde_json::from_slice(&Envelope::parse("cloudevents").unwrap().value(&r).unwrap())
                .unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "OrderCreated");
        assert_eq!(ce["subject"], "o-1");
        assert_eq!(ce["data"], json!({"order_id": "o-1"}));
    }

    #[test]
    fn cloudevents_binary_puts_attributes_in_headers() {
        let r = record(r#"{"order_id":"o-1"}"#);
        let e = Envelope::parse("cloudevents-binary")
            .unwrap()
            .with_source("shop");
        assert_eq!(e.value(&r).unwrap(), br#"{"order_id":"o-1"}"#);
        let h = e.headers(&r).unwrap();
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ce_specversion"), Some("1.0"));
        assert_eq!(get("ce_source"), Some("shop"));
        assert_eq!(get("ce_type"), Some("OrderCreated"));
        assert_eq!(get("ce_id"), get("id"));
        assert_eq!(get("content-type"), Some("application/json"));
    }

    #[test]
    fn isoformat_drops_zero_fraction() {
        let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(isoformat(&t), "2024-01-02T03:04:05+00:00");
        let t = t + chrono::Duration::microseconds(7);
        assert_eq!(isoformat(&t), "2024-01-02T03:04:05.000007+00:00");
        for t in [
            Utc::now(),
            Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap(),
        ] {
            let chrono_way = if t.nanosecond() / 1000 == 0 {
                t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
            } else {
                t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
            };
            assert_eq!(isoformat(&t), chrono_way);
        }
    }
}
