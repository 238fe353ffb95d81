//! From decoded rows to relay events: the contract's columns (routed later by the [`Router`])
//! or Debezium's EventRouter (routed here, carried to the sink as a pre-routed record).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::pgoutput::{Datum, Relation};
use crate::record::Record;
use crate::route::debezium::{BoundColumns, EventRouterOptions, Routed};
use crate::route::{Envelope, Router, Template};
use crate::store::replication::TableName;
use crate::store::FailedAttempt;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How rows become messages.
#[derive(Debug, Clone)]
pub enum CdcRouting {
    /// The outbox contract's columns, routed by a [`Router`] (topic template, envelope)
    /// as the polling source does.
    Router(Router),
    /// Debezium's outbox EventRouter options.
    EventRouter(EventRouterOptions),
}

/// One event on its way through the CDC relay.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The stream transaction it belongs to (the reader's numbering).
    pub txn: u64,
    /// What [`crate::delivery::deliver`] routes: the row itself (contract routing) or the
    /// pre-routed message (EventRouter: `aggregate_type` = topic, `aggregate_id` = key,
    /// `payload` = value, `headers` = headers besides `id`).
    pub record: Record,
    /// With the EventRouter, the row as the dead-letter table stores it.
    pub origin: Option<Box<Record>>,
    /// Set when the row cannot be routed: it is dead-lettered with this reason.
    pub invalid: Option<String>,
    /// Failed attempts so far (in memory).
    pub attempts: u32,
    /// The latest failures, for the dead-letter table's error history.
    pub history: Vec<FailedAttempt>,
    /// Memory the event holds, counted against the session's byte budget from the moment
    /// it is made until it is done.
    pub bytes: u64,
}

impl Event {
    /// The row as the dead-letter table stores it.
    pub fn origin(&self) -> &Record {
        self.origin.as_deref().unwrap_or(&self.record)
    }

    /// An event with its memory counted.
    pub fn new(txn: u64, record: Record, origin: Option<Record>, invalid: Option<String>) -> Self {
        let bytes = std::mem::size_of::<Event>()
            + record.size_bytes()
            + origin.as_ref().map_or(0, Record::size_bytes)
            + invalid.as_ref().map_or(0, String::len);
        Event {
            txn,
            record,
            origin: origin.map(Box::new),
            invalid,
            attempts: 0,
            history: Vec::new(),
            bytes: bytes as u64,
        }
    }

    /// The aggregate dead letters block: (aggregate_type, aggregate_id) of the row.
    pub fn origin_key(&self) -> (String, String) {
        let o = self.origin();
        (o.aggregate_type.clone(), o.aggregate_id.clone())
    }
}

/// The commit a row belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Commit {
    pub txn: u64,
    /// LSN of the commit record (the sequence for tables without a `seq` column).
    pub lsn: u64,
    /// Commit time, microseconds since 2000-01-01.
    pub time: i64,
}

impl Commit {
    fn time(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(PG_EPOCH_MICROS.saturating_add(self.time))
            .unwrap_or_default()
    }
}

/// The contract's columns in a relation.
#[derive(Debug, Clone, Default)]
pub(super) struct Contract {
    id: Option<usize>,
    seq: Option<usize>,
    aggregate_type: Option<usize>,
    aggregate_id: Option<usize>,
    event_type: Option<usize>,
    payload: Option<usize>,
    headers: Option<usize>,
    created_at: Option<usize>,
}

impl Contract {
    fn find(columns: &[(&str, u32)], names: [&str; 5]) -> Contract {
        let find = |n: &str| columns.iter().position(|(c, _)| *c == n);
        Contract {
            id: find(names[0]),
            seq: find("seq"),
            aggregate_type: find(names[1]),
            aggregate_id: find(names[2]),
            event_type: find(names[3]),
            payload: find(names[4]),
            headers: find("headers"),
            created_at: find("created_at"),
        }
    }

    fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        for (name, i) in [
            ("id", self.id),
            ("aggregate_type", self.aggregate_type),
            ("aggregate_id", self.aggregate_id),
            ("event_type", self.event_type),
            ("payload", self.payload),
        ] {
            if i.is_none() {
                m.push(name);
            }
        }
        m
    }

    /// A record from the row, with what is wrong with it (the record is then the best that
    /// could be made).
    fn record(&self, v: &[Option<&str>], commit: &Commit) -> (Record, Option<String>) {
        let get = |i: Option<usize>| i.and_then(|i| v.get(i).copied().flatten());
        let mut problems = Vec::new();
        let id_text = get(self.id);
        let id = match id_text.map(Uuid::parse_str) {
            Some(Ok(id)) => id,
            Some(Err(_)) => {
                problems.push(format!(
                    "event id {:?} is not a UUID",
                    id_text.unwrap_or_default()
                ));
                Uuid::new_v4()
            }
            None => {
                problems.push("event id is NULL".into());
                Uuid::new_v4()
            }
        };
        let seq = match get(self.seq).map(str::parse::<i64>) {
            Some(Ok(s)) => s,
            Some(Err(_)) => {
                problems.push("seq is not an integer".into());
                commit.lsn as i64
            }
            None => commit.lsn as i64,
        };
        let mut text = |i: Option<usize>, what: &str| match get(i) {
            Some(s) => s.to_string(),
            None => {
                problems.push(format!("{what} is NULL"));
                String::new()
            }
        };
        let aggregate_type = text(self.aggregate_type, "aggregate_type");
        let aggregate_id = text(self.aggregate_id, "aggregate_id");
        let event_type = text(self.event_type, "event_type");
        let payload = match get(self.payload) {
            Some(p) => p.to_string(),
            None => {
                problems.push("payload is NULL".into());
                "null".into()
            }
        };
        let created_at = get(self.created_at)
            .and_then(parse_timestamptz)
            .unwrap_or_else(|| commit.time());
        let record = Record {
            seq,
            id,
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
            headers: get(self.headers).map(str::to_string),
            created_at,
            retry_count: 0,
        };
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        (record, problem)
    }
}

/// `2024-05-01 12:00:00.123456+00` (DateStyle ISO) as a UTC time.
/// RFC 3339 (`2024-05-01T12:00:00Z`, as a message may carry it) is read too.
pub(crate) fn parse_timestamptz(s: &str) -> Option<DateTime<Utc>> {
    iso_timestamptz(s.as_bytes()).or_else(|| parse_timestamptz_slow(s))
}

/// The general parse (chrono's format parser: about a twentieth of the CDC relay's CPU when
/// every row took this path).
fn parse_timestamptz_slow(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The shape PostgreSQL writes a `timestamptz` in, DateStyle ISO, read by hand:
/// `YYYY-MM-DD HH:MM:SS[.f{1,6}]±HH[:MM[:SS]]`. `None` for anything else (the caller falls back to
/// the general parse).
fn iso_timestamptz(b: &[u8]) -> Option<DateTime<Utc>> {
    fn num(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }
    if b.len() < 22 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(num(&b[0..4])?).ok()?,
        num(&b[5..7])?,
        num(&b[8..10])?,
    )?;
    let (h, m, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let mut rest = &b[19..];
    let mut micros = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 6 {
            return None;
        }
        micros = num(&frac[..digits])? * 10u32.pow(6 - digits as u32);
        rest = &frac[digits..];
    }
    let sign: i64 = match rest.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let zone = &rest[1..];
    let offset = match zone.len() {
        2 => num(zone)? * 3600,
        5 if zone[2] == b':' => num(&zone[..2])? * 3600 + num(&zone[3..])? * 60,
        8 if zone[2] == b':' && zone[5] == b':' => {
            num(&zone[..2])? * 3600 + num(&zone[3..5])? * 60 + num(&zone[6..])?
        }
        _ => return None,
    };
    let local = date.and_hms_micro_opt(h, m, sec, micros)?;
    let utc = local - chrono::Duration::seconds(sign * i64::from(offset));
    Some(utc.and_utc())
}

#[derive(Debug, Clone)]
pub(super) enum Mapping {
    Contract(Contract),
    EventRouter {
        bound: BoundColumns,
        /// Where the dead-letter row's columns come from.
        origin: Contract,
    },
}

#[derive(Debug, Clone)]
struct RelationMap {
    name: TableName,
    /// `Err`: why rows of this table cannot be turned into events.
    mapping: Result<Mapping, String>,
}

/// Turns decoded rows of the captured tables into [`Event`]s. Holds the relations announced
/// in the current replication session.
pub(crate) struct RowMapper {
    pub(super) routing: Arc<CdcRouting>,
    tables: Vec<TableName>,
    relations: HashMap<u32, RelationMap>,
}

/// What to make of a change to a relation.
pub(crate) enum Target<'a> {
    /// Not a captured table.
    Other,
    /// A captured table.
    Captured(&'a TableName),
}

impl RowMapper {
    pub fn new(routing: Arc<CdcRouting>, tables: Vec<TableName>) -> Self {
        RowMapper {
            routing,
            tables,
            relations: HashMap::new(),
        }
    }

    /// Checks a table's columns against the routing: `Err` says what is missing.
    pub fn check_columns(routing: &CdcRouting, columns: &[(&str, u32)]) -> Result<(), String> {
        Self::mapping(routing, columns).map(|_| ())
    }

    pub(super) fn mapping(routing: &CdcRouting, cols: &[(&str, u32)]) -> Result<Mapping, String> {
        match routing {
            CdcRouting::Router(_) => {
                let c = Contract::find(
                    cols,
                    [
                        "id",
                        "aggregate_type",
                        "aggregate_id",
                        "event_type",
                        "payload",
                    ],
                );
                let missing = c.missing();
                if missing.is_empty() {
                    Ok(Mapping::Contract(c))
                } else {
                    Err(format!(
                        "the table has no column {} (the outbox contract's columns are needed \
                         without EventRouter options)",
                        missing.join(", ")
                    ))
                }
            }
            CdcRouting::EventRouter(o) => Ok(Mapping::EventRouter {
                bound: o.bind(cols)?,
                origin: Contract::find(
                    cols,
                    [
                        &o.event_id,
                        &o.route_by,
                        &o.event_key,
                        &o.event_type,
                        &o.payload,
                    ],
                ),
            }),
        }
    }

    /// Records a Relation message.
    pub fn relation(&mut self, r: &Relation) {
        let name = TableName {
            schema: r.namespace.clone(),
            name: r.name.clone(),
        };
        if !self.tables.contains(&name) {
            self.relations.remove(&r.id);
            return;
        }
        let cols: Vec<(&str, u32)> = r
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_oid))
            .collect();
        let mapping = Self::mapping(&self.routing, &cols);
        if let Err(e) = &mapping {
            tracing::error!(table = %name, error = %e, "rows of this table cannot be routed; they go to the dead-letter table");
        }
        self.relations.insert(r.id, RelationMap { name, mapping });
    }

    /// Whether a relation is one of the captured tables.
    pub fn target(&self, relation: u32) -> Target<'_> {
        match self.relations.get(&relation) {
            Some(m) => Target::Captured(&m.name),
            None => Target::Other,
        }
    }

    /// The event for an inserted row of a captured table (`None` for other tables).
    pub fn insert(&self, relation: u32, tuple: &[Datum], commit: &Commit) -> Option<Event> {
        let map = self.relations.get(&relation)?;
        let mut bad_utf8 = false;
        let values: Vec<Option<&str>> = tuple
            .iter()
            .map(|d| match d {
                Datum::Text(_) => {
                    let s = d.as_str();
                    bad_utf8 |= s.is_none();
                    s
                }
                _ => None,
            })
            .collect();
        let utf8_problem = bad_utf8.then(|| "a column value is not valid UTF-8".to_string());
        let mapping = map
            .mapping
            .as_ref()
            .map_err(|why| format!("table {}: {why}", map.name));
        Some(self.event(mapping, &values, commit, utf8_problem))
    }

    /// The event for the values of one row (or message) in the columns `mapping` found;
    /// `Err`: why such rows cannot be routed (the event is then dead-lettered with it).
    pub(super) fn event(
        &self,
        mapping: Result<&Mapping, String>,
        values: &[Option<&str>],
        commit: &Commit,
        problem: Option<String>,
    ) -> Event {
        let event = |record: Record, origin: Option<Record>, invalid: Option<String>| {
            Event::new(commit.txn, record, origin, invalid)
        };
        let mapping = match mapping {
            Ok(m) => m,
            Err(why) => {
                let (rec, _) = Contract::find(&[], ["", "", "", "", ""]).record(values, commit);
                return event(rec, None, Some(why));
            }
        };
        match mapping {
            Mapping::Contract(c) => {
                let (r, bad) = c.record(values, commit);
                event(r, None, bad.or(problem))
            }
            Mapping::EventRouter { bound, origin } => {
                let (origin_rec, _) = origin.record(values, commit);
                let CdcRouting::EventRouter(opts) = &*self.routing else {
                    let why = "EventRouter columns without EventRouter options".to_string();
                    return event(origin_rec, None, Some(why));
                };
                match opts
                    .route(bound, values)
                    .and_then(|r| prerouted(r, &origin_rec))
                {
                    Ok(rec) => event(rec, Some(origin_rec), problem),
                    Err(why) => event(origin_rec.clone(), Some(origin_rec), Some(why)),
                }
            }
        }
    }
}

/// An EventRouter result as a record the `{aggregate_type}` topic template and the Debezium
/// envelope turn back into exactly that message.
fn prerouted(r: Routed, origin: &Record) -> Result<Record, String> {
    let id = Uuid::parse_str(&r.id).map_err(|_| {
        format!(
            "event id {:?} is not a UUID (the relay needs UUID event ids)",
            r.id
        )
    })?;
    let headers = if r.headers.len() > 1 {
        let map: serde_json::Map<String, serde_json::Value> = r
            .headers
            .into_iter()
            .skip(1)
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        Some(serde_json::Value::Object(map).to_string())
    } else {
        None
    };
    let payload = match r.value {
        Some(v) => String::from_utf8(v).map_err(|_| "the value is not valid UTF-8".to_string())?,
        None => String::new(),
    };
    Ok(Record {
        seq: origin.seq,
        id,
        aggregate_type: r.topic,
        aggregate_id: r.key.unwrap_or_default(),
        event_type: r.event_type.unwrap_or_default(),
        payload,
        headers,
        created_at: origin.created_at,
        retry_count: 0,
    })
}

/// The router that turns pre-routed records back into their messages: topic = the record's
/// `aggregate_type`, key = `aggregate_id`, value = `payload` as is, header `id` + `headers`.
pub(crate) fn prerouted_router() -> Router {
    match Template::parse("{aggregate_type}") {
        Ok(t) => Router::new(t, Envelope::Debezium),
        // The template is a constant that parses; keep a router that behaves the same.
        Err(_) => Router::with_default_topic(Envelope::Debezium),
    }
}

#[cfg(test)]
mod tests {
    use super::super::pgoutput::{decode, encode, encode::Col, PgOutput};
    use super::*;
    use bytes::Bytes;

    fn relation(cols: &[(&str, u32)]) -> Relation {
        match decode(&Bytes::from(encode::relation(1, "public", "outbox", cols))) {
            Ok(PgOutput::Relation(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_read_by_hand_as_chrono_reads_them() {
        for s in [
            "2024-05-01 12:00:00+00",
            "2024-05-01 12:00:00.123456+00",
            "2024-05-01 12:00:00.5+02",
            "2024-12-31 23:59:59.000001-05:30",
            "2024-02-29 00:00:00.12+05:45",
        ] {
            let fast = iso_timestamptz(s.as_bytes());
            assert!(fast.is_some(), "{s}");
            assert_eq!(fast, parse_timestamptz_slow(s), "{s}");
        }
        for s in [
            "2024-05-01T12:00:00Z",
            "2024-13-01 12:00:00+00",
            "2024-05-01 12:00:00.1234567+00",
            "2024-05-01 12:00:00",
            "12024-05-01 12:00:00+00",
            "2024-05-01 12:00:00+00 BC",
            "2024-05-01 1x:00:00+00",
        ] {
            assert_eq!(iso_timestamptz(s.as_bytes()), None, "{s}");
        }
        assert!(parse_timestamptz("2024-05-01T12:00:00Z").is_some());
        // A zone offset with seconds (historic local mean time).
        assert_eq!(
            iso_timestamptz(b"1999-01-01 00:00:00-00:00:21").map(|t| t.to_rfc3339()),
            Some("1999-01-01T00:00:21+00:00".to_string())
        );
    }

    fn tuple(cols: &[Col]) -> Vec<Datum> {
        match decode(&Bytes::from(encode::insert(1, cols))) {
            Ok(PgOutput::Insert { new, .. }) => new,
            other => panic!("{other:?}"),
        }
    }

    const CONTRACT: [(&str, u32); 8] = [
        ("id", 2950),
        ("seq", 20),
        ("aggregate_type", 25),
        ("aggregate_id", 25),
        ("event_type", 25),
        ("payload", 3802),
        ("headers", 3802),
        ("created_at", 1184),
    ];
    const ID: &str = "0190a6b2-1111-7000-8000-000000000001";
    const COMMIT: Commit = Commit {
        txn: 3,
        lsn: 1000,
        time: 0,
    };

    fn row(id: &'static str, payload: &'static str) -> Vec<Datum> {
        tuple(&[
            Col::Text(id),
            Col::Text("42"),
            Col::Text("Order"),
            Col::Text("o-1"),
            Col::Text("OrderCreated"),
            Col::Text(payload),
            Col::Null,
            Col::Text("2024-05-01 12:00:00.123456+00"),
        ])
    }

    fn table() -> Vec<TableName> {
        vec![TableName::parse("public.outbox").unwrap()]
    }

    #[test]
    fn contract_rows_become_records() {
        let mut m = RowMapper::new(Arc::new(CdcRouting::Router(Router::default())), table());
        m.relation(&relation(&CONTRACT));
        let e = m.insert(1, &row(ID, r#"{"a": 1}"#), &COMMIT).unwrap();
        assert!(e.invalid.is_none());
        assert_eq!(e.txn, 3);
        assert_eq!(e.record.seq, 42);
        assert_eq!(e.record.id.to_string(), ID);
        assert_eq!(e.record.aggregate(), ("Order", "o-1"));
        assert_eq!(e.record.payload, r#"{"a": 1}"#);
        assert_eq!(
            e.record.created_at.to_rfc3339(),
            "2024-05-01T12:00:00.123456+00:00"
        );
        // Other tables are not captured.
        assert!(m.insert(2, &row(ID, "{}"), &COMMIT).is_none());
        // A bad id is a dead letter with its reason.
        let e = m.insert(1, &row("nope", "{}"), &COMMIT).unwrap();
        assert!(e.invalid.unwrap().contains("not a UUID"));
        assert_eq!(e.record.aggregate_id, "o-1");
    }

    #[test]
    fn event_router_rows_are_prerouted() {
        let (opts, _) = EventRouterOptions::from_options([
            ("table.field.event.key", "aggregate_id"),
            ("table.field.event.type", "event_type"),
            ("route.by.field", "aggregate_type"),
            ("route.topic.replacement", "${routedByValue}-events"),
        ])
        .unwrap();
        let mut m = RowMapper::new(Arc::new(CdcRouting::EventRouter(opts)), table());
        m.relation(&relation(&CONTRACT));
        let e = m.insert(1, &row(ID, r#"{"a": 1}"#), &COMMIT).unwrap();
        assert!(e.invalid.is_none(), "{:?}", e.invalid);
        let msg = prerouted_router().route(&e.record).unwrap();
        assert_eq!(msg.topic, "Order-events");
        assert_eq!(msg.key, "\"o-1\"");
        assert_eq!(&msg.value[..], br#""{\"a\": 1}""#);
        assert_eq!(msg.headers, [("id".to_string(), ID.to_string())]);
        // The dead-letter row is the table's row.
        assert_eq!(e.origin().aggregate(), ("Order", "o-1"));
        assert_eq!(e.origin().payload, r#"{"a": 1}"#);
        assert_eq!(e.origin().seq, 42);
    }

    #[test]
    fn a_table_missing_columns_dead_letters_its_rows() {
        let mut m = RowMapper::new(Arc::new(CdcRouting::Router(Router::default())), table());
        m.relation(&relation(&[("id", 2950), ("payload", 3802)]));
        let e = m
            .insert(1, &tuple(&[Col::Text(ID), Col::Text("{}")]), &COMMIT)
            .unwrap();
        assert!(e.invalid.unwrap().contains("no column aggregate_type"));
        assert!(
            RowMapper::check_columns(&CdcRouting::Router(Router::default()), &[("id", 2950)])
                .is_err()
        );
    }
}
