//! Find an event: by its id (or its dead letter's id), or by aggregate (type + id). Shows where
//! the event is (pending; retrying with the next attempt and the last error; published when;
//! dead-lettered with why) and the aggregate's recent events in order.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use outbox_relay::store::{EventState, EventView};
use serde::Deserialize;

use super::layout::{self, Nav};
use super::Console;

/// How many of an aggregate's latest events are shown.
const RECENT: i64 = 20;

/// The search form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct Search {
    #[serde(default)]
    id: String,
    #[serde(default)]
    aggregate_type: String,
    #[serde(default)]
    aggregate_id: String,
}

/// `GET /events`: the search form and, when asked, what it found.
pub async fn page(State(c): State<Arc<Console>>, Query(q): Query<Search>) -> Response {
    let store = match c.store().await {
        Ok(s) => s,
        Err(e) => return super::unavailable(&c, &e),
    };
    let id_text = q.id.trim();
    let mut message = None;
    let mut found = None;
    let mut aggregate = (
        q.aggregate_type.trim().to_string(),
        q.aggregate_id.trim().to_string(),
    );
    if !id_text.is_empty() {
        match uuid::Uuid::parse_str(id_text) {
            Err(_) => message = Some(format!("{id_text:?} is not an event id (a UUID)")),
            Ok(id) => match store.find_event(id).await {
                Err(e) => return super::unavailable(&c, &e),
                Ok(None) => {
                    message = Some(format!(
                        "no event {id}: never written, or published and then deleted (on_publish \
                         = delete, or outbox cleanup)"
                    ))
                }
                Ok(Some(ev)) => {
                    aggregate = (ev.aggregate_type.clone(), ev.aggregate_id.clone());
                    found = Some(ev);
                }
            },
        }
    }
    let recent = if aggregate.0.is_empty() || aggregate.1.is_empty() {
        None
    } else {
        match store
            .aggregate_events(&aggregate.0, &aggregate.1, RECENT)
            .await
        {
            Ok(v) => Some(v),
            Err(e) => return super::unavailable(&c, &e),
        }
    };
    let body = html! {
        h1 { "Find an event" }
        form.search method="get" action="/events" {
            label { "Event id " input name="id" value=(q.id) placeholder="0190a6b2-…" size="38"; }
            button type="submit" { "Find" }
        }
        form.search method="get" action="/events" {
            label { "Aggregate type " input name="aggregate_type" value=(aggregate.0); }
            label { "Aggregate id " input name="aggregate_id" value=(aggregate.1); }
            button type="submit" { "Show its events" }
        }
        @if let Some(m) = &message { p.error #search-message { (m) } }
        @if let Some(ev) = &found { (event_card(ev)) }
        @if let Some(list) = &recent {
            h2 { "Latest events of " code { (aggregate.0) " / " (aggregate.1) } }
            @if list.is_empty() {
                p #search-message { "no events of this aggregate in the outbox or the dead letters" }
            } @else {
                table #aggregate-events {
                    thead { tr { th { "seq" } th { "event id" } th { "type" } th { "created" }
                                 th { "where" } } }
                    tbody { @for ev in list {
                        tr {
                            td { (ev.seq) }
                            td { a href={"/events?" (layout::query(&[("id", &ev.id.to_string())]))} {
                                code { (ev.id) } } }
                            td { (ev.event_type) }
                            td { (layout::time(ev.created_at)) }
                            td { (state_line(&ev.state)) }
                        }
                    } }
                }
            }
        }
    };
    layout::page(&c, "Find an event", Nav::Events, body).into_response()
}

/// One line on where an event is.
fn state_line(state: &EventState) -> Markup {
    match state {
        EventState::Pending => html! { span.badge data-state="pending" { "pending" } },
        EventState::Retrying {
            next_attempt_at, ..
        } => html! {
            span.badge data-state="warn" { "retrying" }
            @if let Some(t) = next_attempt_at { " next attempt " (layout::time(*t)) }
        },
        EventState::Published { at } => html! {
            span.badge data-state="ok" { "published" } " " (layout::time(*at))
        },
        EventState::DeadLettered { dead_letter_id, .. } => html! {
            a.badge data-state="down" href={"/dead-letters/" (dead_letter_id)} { "dead letter" }
        },
    }
}

/// The event found, in full.
fn event_card(ev: &EventView) -> Markup {
    html! {
        section.event #event data-state=(match ev.state {
            EventState::Pending => "pending",
            EventState::Retrying { .. } => "retrying",
            EventState::Published { .. } => "published",
            EventState::DeadLettered { .. } => "dead_lettered",
        }) {
            h2 { "Event " code { (ev.id) } }
            dl {
                dt { "where" } dd { (state_line(&ev.state)) }
                @match &ev.state {
                    EventState::Retrying { last_error, .. } => {
                        dt { "last error" } dd { pre { (last_error.as_deref().unwrap_or("")) } }
                    }
                    EventState::DeadLettered { error, failed_at, .. } => {
                        dt { "why" } dd { pre { (error) } }
                        dt { "dead-lettered" } dd { (layout::time(*failed_at)) }
                    }
                    _ => {}
                }
                dt { "failed attempts" } dd { (ev.retry_count) }
                dt { "aggregate" } dd { code { (ev.aggregate_type) " / " (ev.aggregate_id) } }
                dt { "event type" } dd { (ev.event_type) }
                dt { "seq" } dd { (ev.seq) }
                dt { "created" } dd { (layout::time(ev.created_at)) }
                dt { "payload" } dd { pre.payload { (layout::json(&ev.payload)) } }
                @if let Some(h) = &ev.headers {
                    dt { "headers" } dd { pre { (layout::json(h)) } }
                }
            }
        }
    }
}
