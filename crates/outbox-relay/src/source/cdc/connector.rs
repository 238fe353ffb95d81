//! Kafka Connect registrations of Debezium's PostgreSQL connector: [`Connector::parse`] reads
//! the JSON body POSTed to Kafka Connect (or the bare config object) and keeps what the CDC
//! source uses: the database (`database.*`), the replication slot and publication, the captured
//! tables, the heartbeat interval, and the options of the outbox EventRouter transform
//! (`transforms.<name>.*`, read by [`EventRouterOptions::from_options`]). Anything the relay
//! cannot honour is refused; options it reads but does not act on come back as notes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::route::debezium::{EventRouterOptions, EVENT_ROUTER};

/// Debezium's PostgreSQL connector class.
pub const POSTGRES_CONNECTOR: &str = "io.debezium.connector.postgresql.PostgresConnector";
/// Debezium's default replication slot name (`slot.name`).
pub const DEFAULT_SLOT: &str = "debezium";
/// Debezium's default publication name (`publication.name`).
pub const DEFAULT_PUBLICATION: &str = "dbz_publication";

/// What a Kafka Connect registration of Debezium's PostgreSQL connector says that the relay
/// uses. Built by [`Connector::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Connector {
    /// The connector's `name`, when the file has one.
    pub name: Option<String>,
    /// A `postgres://` URL from `database.hostname`, `database.port`, `database.user`,
    /// `database.password`, `database.dbname` and `database.sslmode`, `database.sslrootcert`,
    /// `database.sslcert`, `database.sslkey` (libpq's parameters); `None` without a host or
    /// database name.
    pub database_url: Option<String>,
    /// `slot.name` (Debezium's default `debezium`).
    pub slot: String,
    /// `publication.name` (Debezium's default `dbz_publication`).
    pub publication: String,
    /// False when `publication.autocreate.mode = disabled`.
    pub create_publication: bool,
    /// `table.include.list` (or the older `table.whitelist`): `schema.table` names.
    pub tables: Vec<String>,
    /// `heartbeat.interval.ms`, when set and positive.
    pub heartbeat: Option<Duration>,
    /// The outbox EventRouter's options.
    pub router: EventRouterOptions,
    /// Options that were read but have no effect in the relay (worth a warning).
    pub notes: Vec<String>,
}

fn config_text(key: &str, v: &serde_json::Value) -> Result<String, String> {
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        serde_json::Value::Null => Ok(String::new()),
        _ => Err(format!("config option {key:?} must be a string")),
    }
}

fn table_names(key: &str, v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if t.contains([
            '*', '+', '?', '[', ']', '(', ')', '|', '^', '$', '\\', '{', '}',
        ]) {
            return Err(format!(
                "{key}: {t:?} is a pattern; the relay needs plain schema.table names"
            ));
        }
        if t.split('.').count() != 2 {
            return Err(format!(
                "{key}: {t:?} is not a schema.table name (e.g. public.outbox)"
            ));
        }
        out.push(t.to_string());
    }
    Ok(out)
}

impl Connector {
    /// Parses a connector registration: the JSON body POSTed to Kafka Connect
    /// (`{"name": …, "config": {…}}`) or the bare config object (`PUT …/config`).
    ///
    /// Refused: another connector class, a logical decoding plugin other than `pgoutput`, no
    /// EventRouter transform, or EventRouter options the relay cannot honour.
    pub fn parse(json: &str) -> Result<Connector, String> {
        let doc: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
        let top = doc
            .as_object()
            .ok_or("expected a JSON object {\"name\": …, \"config\": {…}}")?;
        let (name, config) = match top.get("config") {
            Some(serde_json::Value::Object(c)) => (
                top.get("name").and_then(|n| n.as_str()).map(str::to_string),
                c,
            ),
            Some(_) => return Err("\"config\" must be an object".into()),
            None => (None, top),
        };
        let mut cfg: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in config {
            cfg.insert(k.clone(), config_text(k, v)?);
        }
        let get = |k: &str| cfg.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let mut notes = Vec::new();

        if let Some(class) = get("connector.class") {
            if class != POSTGRES_CONNECTOR && class != "PostgresConnector" {
                return Err(format!(
                    "connector.class = {class:?}: only Debezium's PostgreSQL connector \
                     ({POSTGRES_CONNECTOR}) can be replaced by the relay"
                ));
            }
        }
        if let Some(plugin) = get("plugin.name") {
            if plugin != "pgoutput" {
                return Err(format!(
                    "plugin.name = {plugin:?}: the relay decodes pgoutput only"
                ));
            }
        }

        // The outbox transform.
        let transforms: Vec<&str> = get("transforms")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let mut router_name = None;
        for t in &transforms {
            match get(&format!("transforms.{t}.type")) {
                Some(EVENT_ROUTER) if router_name.is_none() => router_name = Some(*t),
                Some(EVENT_ROUTER) => {
                    return Err(format!(
                        "transforms: more than one EventRouter ({} and {t})",
                        router_name.unwrap_or_default()
                    ))
                }
                Some(other) => notes.push(format!(
                    "transform {t} ({other}) is not applied: the relay applies the outbox \
                     EventRouter only"
                )),
                None => return Err(format!("transforms.{t}.type is missing")),
            }
        }
        let router_name = router_name.ok_or_else(|| {
            format!(
                "no outbox EventRouter in \"transforms\": expected transforms.<name>.type = \
                 {EVENT_ROUTER}"
            )
        })?;
        let prefix = format!("transforms.{router_name}.");
        let mut router_opts: Vec<(&str, &str)> = cfg
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|n| (n, v.as_str())))
            .collect();
        for k in [
            "key.converter",
            "value.converter",
            "key.converter.schemas.enable",
            "value.converter.schemas.enable",
        ] {
            if let Some(v) = cfg.get(k) {
                router_opts.push((k, v.as_str()));
            }
        }
        let (router, router_notes) = EventRouterOptions::from_options(router_opts)
            .map_err(|e| format!("transforms.{router_name}: {e}"))?;
        notes.extend(router_notes);

        // The database.
        let database_url = match (get("database.hostname"), get("database.dbname")) {
            (Some(host), Some(db)) => Some(database_url(
                host,
                get("database.port"),
                get("database.user"),
                cfg.get("database.password").map(String::as_str),
                db,
                &["sslmode", "sslrootcert", "sslcert", "sslkey"]
                    .iter()
                    .filter_map(|p| Some((*p, get(&format!("database.{p}"))?)))
                    .collect::<Vec<_>>(),
            )?),
            _ => None,
        };

        let tables = match get("table.include.list").or(get("table.whitelist")) {
            Some(v) => table_names("table.include.list", v)?,
            None => Vec::new(),
        };
        for ignored in ["schema.include.list", "schema.whitelist"] {
            if get(ignored).is_some() {
                notes.push(format!(
                    "{ignored} is ignored: table.include.list names the captured tables"
                ));
            }
        }
        let create_publication = match get("publication.autocreate.mode") {
            None | Some("all_tables") | Some("filtered") | Some("no_tables") => true,
            Some("disabled") => false,
            Some(other) => {
                return Err(format!(
                    "publication.autocreate.mode = {other:?}: expected all_tables, filtered, \
                     no_tables or disabled"
                ))
            }
        };
        if let Some(mode) = get("snapshot.mode") {
            if !matches!(mode, "never" | "no_data") {
                notes.push(format!(
                    "snapshot.mode = {mode}: the relay takes no snapshot; it streams rows \
                     inserted after the slot was created (or from where an existing slot \
                     stands)"
                ));
            }
        }
        if get("slot.drop.on.stop") == Some("true") {
            notes.push("slot.drop.on.stop is ignored: the relay keeps its slot".into());
        }
        let heartbeat = match get("heartbeat.interval.ms") {
            Some(ms) => {
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| format!("heartbeat.interval.ms = {ms:?}: expected a number"))?;
                (ms > 0).then(|| Duration::from_millis(ms))
            }
            None => None,
        };
        Ok(Connector {
            name,
            database_url,
            slot: get("slot.name").unwrap_or(DEFAULT_SLOT).to_string(),
            publication: get("publication.name")
                .unwrap_or(DEFAULT_PUBLICATION)
                .to_string(),
            create_publication,
            tables,
            heartbeat,
            router,
            notes,
        })
    }
}

fn database_url(
    host: &str,
    port: Option<&str>,
    user: Option<&str>,
    password: Option<&str>,
    db: &str,
    tls: &[(&str, &str)],
) -> Result<String, String> {
    let mut u = url::Url::parse("postgres://localhost/")
        .map_err(|e| format!("cannot build the database URL: {e}"))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    u.set_host(Some(&host))
        .map_err(|e| format!("database.hostname = {host:?}: {e}"))?;
    if let Some(p) = port {
        let p: u16 = p
            .parse()
            .map_err(|_| format!("database.port = {p:?}: expected a port number"))?;
        u.set_port(Some(p))
            .map_err(|_| "database.port: cannot be set".to_string())?;
    }
    if let Some(user) = user {
        u.set_username(user)
            .map_err(|_| "database.user: cannot be set".to_string())?;
    }
    if let Some(pw) = password.filter(|p| !p.is_empty()) {
        u.set_password(Some(pw))
            .map_err(|_| "database.password: cannot be set".to_string())?;
    }
    u.set_path(&format!("/{db}"));
    if !tls.is_empty() {
        u.query_pairs_mut().extend_pairs(tls);
    }
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = r#"{"name": "outbox-connector", "config": {"connector.class": "io.debezium.connector.postgresql.PostgresConnector", "database.hostname": "postgres", "database.port": "5432", "database.user": "app", "database.password": "secret", "database.dbname": "myapp", "topic.prefix": "myapp", "table.include.list": "public.outbox", "transforms": "outbox", "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter", "transforms.outbox.table.field.event.id": "id", "transforms.outbox.table.field.event.key": "aggregate_id", "transforms.outbox.table.field.event.type": "event_type", "transforms.outbox.table.field.event.payload": "payload", "transforms.outbox.route.by.field": "aggregate_type", "transforms.outbox.route.topic.replacement": "${routedByValue}-events"}}"#;

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

    #[test]
    fn the_reference_registration() {
        let c = Connector::parse(REFERENCE).unwrap();
        assert_eq!(c.name.as_deref(), Some("outbox-connector"));
        assert_eq!(
            c.database_url.as_deref(),
            Some("postgres://app:secret@postgres:5432/myapp")
        );
        assert_eq!(c.slot, "debezium");
        assert_eq!(c.publication, "dbz_publication");
        assert_eq!(c.tables, ["public.outbox"]);
        assert_eq!(c.router.event_key, "aggregate_id");
        assert_eq!(c.router.route_by, "aggregate_type");
        assert_eq!(c.router.topic("Order"), "Order-events");
        assert!(c.notes.is_empty(), "{:?}", c.notes);

        let b = c.router.bind(&CONTRACT).unwrap();
        let row = [
            Some("0190a6b2-1111-7000-8000-000000000001"),
            Some("7"),
            Some("Order"),
            Some("o-1"),
            Some("OrderCreated"),
            Some(r#"{"total": 9.5, "order_id": "o-1"}"#),
            None,
            Some("2024-05-01 12:00:00.5+00"),
        ];
        let r = c.router.route(&b, &row).unwrap();
        assert_eq!(r.topic, "Order-events");
        assert_eq!(r.key.as_deref(), Some("\"o-1\""));
        assert_eq!(
            String::from_utf8(r.value.unwrap()).unwrap(),
            r#""{\"total\": 9.5, \"order_id\": \"o-1\"}""#
        );
        assert_eq!(
            r.headers,
            [(
                "id".to_string(),
                "0190a6b2-1111-7000-8000-000000000001".to_string()
            )]
        );
        assert_eq!(r.event_type.as_deref(), Some("OrderCreated"));
    }

    #[test]
    fn connector_files_are_checked() {
        let bad = |cfg: &str| Connector::parse(cfg).unwrap_err();
        assert!(bad("[1]").contains("JSON object"));
        assert!(bad("{nope").contains("not valid JSON"));
        assert!(
            bad(r#"{"connector.class": "io.debezium.connector.mysql.MySqlConnector"}"#)
                .contains("only Debezium's PostgreSQL connector")
        );
        assert!(bad(r#"{"transforms": "x", "transforms.x.type": "foo"}"#)
            .contains("no outbox EventRouter"));
        assert!(bad(r#"{"plugin.name": "decoderbufs"}"#).contains("pgoutput"));
        let c = Connector::parse(
            r#"{"connector.class": "io.debezium.connector.postgresql.PostgresConnector",
                "database.hostname": "db", "database.dbname": "orders", "database.user": "a b",
                "database.password": "p@ss/w:rd", "database.sslmode": "verify-full",
                "database.sslrootcert": "/etc/ca.pem",
                "slot.name": "s1", "publication.name": "p1", "publication.autocreate.mode": "disabled",
                "table.whitelist": "inventory.outboxevent", "heartbeat.interval.ms": 5000,
                "snapshot.mode": "initial",
                "transforms": "unwrap,outbox",
                "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
                "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter"}"#,
        )
        .unwrap();
        let url = c.database_url.unwrap();
        assert_eq!(
            url,
            "postgres://a%20b:p%40ss%2Fw%3Ard@db/orders?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
        );
        assert_eq!((c.slot.as_str(), c.publication.as_str()), ("s1", "p1"));
        assert!(!c.create_publication);
        assert_eq!(c.tables, ["inventory.outboxevent"]);
        assert_eq!(c.heartbeat, Some(Duration::from_secs(5)));
        assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
        assert!(bad(
            r#"{"table.include.list": "public.outbox.*", "transforms": "o",
                        "transforms.o.type": "io.debezium.transforms.outbox.EventRouter"}"#
        )
        .contains("pattern"));
    }
}
