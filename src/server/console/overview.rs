//! The overview: pending events, the oldest pending age, the delivery rate over the last
//! minutes, retrying events, dead letters, counts per routed topic, the sink and its state,
//! and for CDC the slots with their lag and retained WAL. The page is rendered with the values
//! of the moment; `console.js` then polls `/api/overview` every 2 s and puts the new texts in
//! place (no reload). The numbers come from [`Store::status`], as `outbox status` prints them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use maud::{html, Markup};
use outbox_relay::health::CdcPhase;
use outbox_relay::route::Template;
use outbox_relay::store::{Status, Store, TypeCount};
use serde::Serialize;

use super::layout::{self, Nav};
use super::Console;

/// What the overview shows, as display texts (the page and the JSON use the same).
#[derive(Serialize)]
pub struct Overview {
    /// `data-k` key → text.
    fields: BTreeMap<&'static str, String>,
    /// `data-s` key → state (`ok`, `warn`, `down`, `unknown`), for colours.
    states: BTreeMap<&'static str, &'static str>,
    /// Topic, the aggregate and event types routed there, pending, retrying, dead letters.
    by_topic: Vec<[String; 5]>,
    /// Slot, active, lag, retained WAL, WAL status.
    slots: Vec<[String; 5]>,
    /// `(unix ms, events per second)`.
    rate: Vec<(i64, f64)>,
}

async fn gather(c: &Console, store: &Store) -> Result<Overview, outbox_relay::Error> {
    let status = store.status().await?;
    let by_type = store.counts_by_type().await?;
    Ok(build(c, &status, &by_type))
}

/// Counts per topic: each (aggregate type, event type) pair's counts added to the topic the
/// template names for it. Without a template (Debezium's EventRouter routes by row) or with one
/// that names `{aggregate_id}` (a topic per aggregate), the pairs are listed as they are.
fn per_topic(topic: Option<&Template>, counts: &[TypeCount]) -> Vec<[String; 5]> {
    /// Aggregate type → its event types routed to one topic.
    type Routed<'a> = BTreeMap<&'a str, Vec<&'a str>>;
    let mut topics: BTreeMap<String, (Routed, [i64; 3])> = BTreeMap::new();
    for c in counts {
        let name = match topic.and_then(|t| t.render_type(&c.aggregate_type, &c.event_type)) {
            Some(name) => name,
            None => format!("({} / {})", c.aggregate_type, c.event_type),
        };
        let (types, n) = topics.entry(name).or_default();
        types
            .entry(c.aggregate_type.as_str())
            .or_default()
            .push(c.event_type.as_str());
        n[0] += c.pending;
        n[1] += c.retrying;
        n[2] += c.dead_letters;
    }
    topics
        .into_iter()
        .map(|(name, (types, n))| {
            let types = types
                .iter()
                .map(|(agg, events)| format!("{agg}: {}", events.join(", ")))
                .collect::<Vec<_>>()
                .join("; ");
            [
                name,
                types,
                n[0].to_string(),
                n[1].to_string(),
                n[2].to_string(),
            ]
        })
        .collect()
}

fn build(c: &Console, st: &Status, by_type: &[TypeCount]) -> Overview {
    let mut fields = BTreeMap::new();
    let mut states = BTreeMap::new();
    fields.insert("pending", st.pending.to_string());
    fields.insert(
        "oldest",
        st.oldest_pending_age_seconds
            .map_or_else(|| "none pending".into(), layout::age),
    );
    let next = st.next_retry_at.map(|t| {
        let secs = (t - Utc::now()).num_milliseconds().max(0) as f64 / 1000.0;
        format!("next retry in {}", layout::age(secs))
    });
    fields.insert("retrying", st.retrying.to_string());
    fields.insert("next_retry", next.unwrap_or_default());
    fields.insert("dead_letters", st.dead_letters.to_string());
    states.insert(
        "dead_letters",
        if st.dead_letters > 0 { "warn" } else { "ok" },
    );
    let rate = c.rate_points();
    fields.insert(
        "rate",
        rate.last()
            .map_or_else(|| "measuring…".into(), |(_, r)| format!("{r:.1}/s")),
    );
    let (sink, sink_state) = sink_text(c);
    fields.insert("sink", sink);
    states.insert("sink", sink_state);
    if let Some(relay) = &c.relay {
        if let Some(phase) = relay.stats.health().cdc() {
            let slot = relay.slot.as_deref().unwrap_or("?");
            let (text, state) = match phase {
                CdcPhase::Streaming => (format!("active: streaming from slot {slot}"), "ok"),
                CdcPhase::Standby => (format!("standby: another reader holds slot {slot}"), "warn"),
                CdcPhase::Connecting => (format!("connecting to slot {slot}"), "warn"),
            };
            fields.insert("cdc", text);
            states.insert("cdc", state);
        }
    }
    Overview {
        fields,
        states,
        by_topic: per_topic(c.topic.as_ref(), by_type),
        slots: st
            .replication_slots
            .iter()
            .map(|s| {
                [
                    s.slot.clone(),
                    if s.active { "active" } else { "inactive" }.to_string(),
                    layout::bytes(s.lag_bytes),
                    layout::bytes(s.retained_wal_bytes),
                    s.wal_status.clone().unwrap_or_default(),
                ]
            })
            .collect(),
        rate,
    }
}

/// The sink's state in words, from the relay's health (unknown to `outbox console`).
fn sink_text(c: &Console) -> (String, &'static str) {
    let Some(relay) = &c.relay else {
        return (
            "not known here: the relay runs elsewhere (see its /readyz)".into(),
            "unknown",
        );
    };
    match relay.stats.health().sink_down_for() {
        Some(down) => {
            let since = Utc::now() - chrono::Duration::from_std(down).unwrap_or_default();
            (
                format!(
                    "unreachable since {} ({} ago)",
                    since.format("%H:%M:%S UTC"),
                    layout::age(down.as_secs_f64())
                ),
                "down",
            )
        }
        None => ("reachable".into(), "ok"),
    }
}

/// `GET /api/overview`: the overview's texts, for the page's live updates.
pub async fn json(State(c): State<Arc<Console>>) -> Response {
    let store = match c.store().await {
        Ok(s) => s,
        Err(e) => return super::unavailable(&c, &e),
    };
    match gather(&c, store).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => super::unavailable(&c, &e),
    }
}

/// `GET /`: the overview page.
pub async fn page(State(c): State<Arc<Console>>) -> Response {
    let store = match c.store().await {
        Ok(s) => s,
        Err(e) => return super::unavailable(&c, &e),
    };
    let o = match gather(&c, store).await {
        Ok(o) => o,
        Err(e) => return super::unavailable(&c, &e),
    };
    let cdc_note = c.relay.as_ref().is_some_and(|r| r.source == "cdc");
    let body = html! {
        h1 { "Overview" }
        section.cards #overview data-live="/api/overview" {
            (card(&o, "Pending", "pending", Some("oldest")))
            (card(&o, "Delivered", "rate", None))
            (card(&o, "Retrying", "retrying", Some("next_retry")))
            (card(&o, "Dead letters", "dead_letters", None))
        }
        @if cdc_note {
            p.note { "The CDC source reads the table's inserts from the slot and never marks \
                      rows: \"pending\" counts every row kept in the table." }
        }
        section {
            h2 { "Delivered per second, last minutes" }
            svg #rate-chart viewBox="0 0 300 60" preserveAspectRatio="none" role="img"
                aria-label="events delivered per second" {
                polyline points=(chart_points(&o.rate)) {}
            }
        }
        section {
            h2 { "Sink" }
            p { span.state data-s="sink" data-state=(state(&o, "sink")) data-k="sink" {
                (field(&o, "sink")) } }
            @if o.fields.contains_key("cdc") {
                h2 { "CDC" }
                p { span.state data-s="cdc" data-state=(state(&o, "cdc")) data-k="cdc" {
                    (field(&o, "cdc")) } }
            }
        }
        section #slots-section hidden[o.slots.is_empty()] {
            h2 { "Replication slots" }
            table {
                thead { tr { th { "slot" } th { "state" } th { "lag" } th { "retained WAL" }
                             th { "WAL status" } } }
                tbody #slots { @for row in &o.slots { (table_row(row)) } }
            }
        }
        section {
            h2 { "Per topic" }
            @match &c.topic {
                Some(t) => p.note { "Topics as the template " code { (t.as_str()) }
                    " names them (pending, retrying and dead-lettered events)." },
                None => p.note { "Routed by Debezium's EventRouter (per row): counts per \
                    aggregate type and event type." },
            }
            table {
                thead { tr { th { "topic" } th { "aggregate: event types" } th { "pending" }
                             th { "retrying" } th { "dead letters" } } }
                tbody #by-topic { @for row in &o.by_topic { (table_row(row)) } }
            }
        }
    };
    layout::page(&c, "Overview", Nav::Overview, body).into_response()
}

fn field<'a>(o: &'a Overview, key: &str) -> &'a str {
    o.fields.get(key).map_or("", String::as_str)
}

fn state(o: &Overview, key: &str) -> &'static str {
    o.states.get(key).copied().unwrap_or("unknown")
}

fn card(o: &Overview, title: &str, key: &str, detail: Option<&str>) -> Markup {
    html! {
        div.card data-s=(key) data-state=(state(o, key)) {
            h2 { (title) }
            span.value data-k=(key) { (field(o, key)) }
            @if let Some(d) = detail {
                span.detail data-k=(d) { (field(o, d)) }
            }
        }
    }
}

fn table_row(cells: &[String]) -> Markup {
    html! { tr { @for c in cells { td { (c) } } } }
}

/// The chart's polyline for a 300×60 box (the JavaScript draws the same from the JSON).
fn chart_points(rate: &[(i64, f64)]) -> String {
    let max = rate.iter().map(|p| p.1).fold(1.0_f64, f64::max);
    let n = rate.len().max(2) - 1;
    rate.iter()
        .enumerate()
        .map(|(i, (_, r))| {
            format!(
                "{:.1},{:.1}",
                i as f64 * 300.0 / n as f64,
                60.0 - r / max * 58.0
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}
