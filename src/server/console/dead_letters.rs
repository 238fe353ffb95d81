//! Dead letters: a filtered, paged list (aggregate type, error text, failure time range), the
//! detail of one (payload, headers, error), and three actions (replay selected, replay all
//! matching, purge selected), each through a confirmation page that asks for the console
//! token. See [`super::guard`] for what an action must carry.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup};
use outbox_relay::store::{DeadLetterFilter, Store};
use serde::Deserialize;
use uuid::Uuid;

use super::guard::TOKEN_HELP;
use super::layout::{self, Nav};
use super::Console;

/// Rows per page.
const PAGE: i64 = 50;

/// The list's filter and page, as the query string carries them.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    aggregate_type: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    page: Option<i64>,
}

impl ListQuery {
    /// The store's filter, or what is wrong with a time.
    fn filter(&self) -> Result<DeadLetterFilter, String> {
        let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(DeadLetterFilter {
            aggregate_type: text(&self.aggregate_type),
            error: text(&self.error),
            failed_from: parse_time(&self.from)?,
            failed_to: parse_time(&self.to)?,
        })
    }

    fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("aggregate_type", &self.aggregate_type),
            ("error", &self.error),
            ("from", &self.from),
            ("to", &self.to),
        ]
    }

    fn hidden(&self) -> Markup {
        html! { @for (k, v) in self.pairs() { input type="hidden" name=(k) value=(v); } }
    }
}

/// A time from a `datetime-local` input (taken as UTC) or RFC 3339; empty is none.
fn parse_time(text: &str) -> Result<Option<DateTime<Utc>>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(Some(d.with_timezone(&Utc)));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
        .map(|n| Some(n.and_utc()))
        .ok_or_else(|| format!("{t:?} is not a time: use 2024-05-01T12:00 (UTC)"))
}

/// `GET /dead-letters`: the filter form, a page of dead letters, the action buttons.
pub async fn list(State(c): State<Arc<Console>>, Query(q): Query<ListQuery>) -> Response {
    let store = match c.store().await {
        Ok(s) => s,
        Err(e) => return super::unavailable(&c, &e),
    };
    let filter = q.filter();
    let page_no = q.page.unwrap_or(1).max(1);
    let page = match &filter {
        Ok(f) => match store.dead_letter_page(f, (page_no - 1) * PAGE, PAGE).await {
            Ok(p) => p,
            Err(e) => return super::unavailable(&c, &e),
        },
        Err(_) => Default::default(),
    };
    let pages = ((page.total + PAGE - 1) / PAGE).max(1);
    let link = |n: i64| {
        let n = n.to_string();
        let mut pairs = q.pairs().to_vec();
        pairs.push(("page", &n));
        format!("/dead-letters?{}", layout::query(&pairs))
    };
    let body = html! {
        h1 { "Dead letters" }
        form.filters method="get" action="/dead-letters" {
            label { "Aggregate type " input name="aggregate_type" value=(q.aggregate_type); }
            label { "Error contains " input name="error" value=(q.error); }
            label { "Failed from (UTC) " input type="datetime-local" name="from" value=(q.from); }
            label { "to " input type="datetime-local" name="to" value=(q.to); }
            button type="submit" { "Filter" }
            a href="/dead-letters" { "clear" }
        }
        @if let Err(m) = &filter { p.error { (m) } }
        @if !c.guard.enabled() { p.note #actions-disabled { (TOKEN_HELP) } }
        p #dl-total { (page.total) " matching · page " (page_no) " of " (pages) }
        form method="post" action="/dead-letters/confirm" {
            input type="hidden" name="csrf" value=(c.guard.csrf());
            (q.hidden())
            div.actions {
                button type="submit" name="action" value="replay" { "Replay selected" }
                button type="submit" name="action" value="replay_matching" {
                    "Replay all " (page.total) " matching" }
                button.danger type="submit" name="action" value="purge" { "Purge selected" }
            }
            table #dead-letters {
                thead { tr { th { input type="checkbox" #select-all aria-label="select all"; }
                             th { "event" } th { "aggregate" } th { "type" } th { "attempts" }
                             th { "failed" } th { "error" } } }
                tbody { @for d in &page.rows {
                    tr {
                        td { input type="checkbox" name="id" value=(d.id)
                                   aria-label={"select " (d.original_id)}; }
                        td { a href={"/dead-letters/" (d.id)} { code { (d.original_id) } } }
                        td { (d.aggregate_type) " / " (d.aggregate_id) }
                        td { (d.event_type) }
                        td { (d.retry_count) }
                        td { (layout::time(d.failed_at)) }
                        td.error-text { (d.error.chars().take(160).collect::<String>()) }
                    }
                } }
            }
        }
        nav.pages {
            @if page_no > 1 { a rel="prev" href=(link(page_no - 1)) { "← previous" } }
            @if page_no < pages { a rel="next" href=(link(page_no + 1)) { "next →" } }
        }
    };
    layout::page(&c, "Dead letters", Nav::DeadLetters, body).into_response()
}

/// `GET /dead-letters/{id}`: one dead letter (by its id or the event's) in full.
pub async fn detail(State(c): State<Arc<Console>>, Path(id): Path<String>) -> Response {
    let store = match c.store().await {
        Ok(s) => s,
        Err(e) => return super::unavailable(&c, &e),
    };
    let found = match Uuid::parse_str(&id) {
        Ok(id) => match store.dead_letter(id).await {
            Ok(d) => d,
            Err(e) => return super::unavailable(&c, &e),
        },
        Err(_) => None,
    };
    let Some(d) = found else {
        let body = html! { h1 { "Not found" } p.error { "no dead letter " code { (id) } } };
        let page = layout::page(&c, "Not found", Nav::DeadLetters, body);
        return (StatusCode::NOT_FOUND, page).into_response();
    };
    let body = html! {
        h1 { "Dead letter " code { (d.original_id) } }
        dl #dead-letter {
            dt { "aggregate" } dd { a href={"/events?" (layout::query(&[("aggregate_type",
                &d.aggregate_type), ("aggregate_id", &d.aggregate_id)]))} {
                code { (d.aggregate_type) " / " (d.aggregate_id) } } }
            dt { "event type" } dd { (d.event_type) }
            dt { "seq" } dd { (d.seq) }
            dt { "created" } dd { (layout::time(d.created_at)) }
            dt { "dead-lettered" } dd { (layout::time(d.failed_at)) }
            dt { "error" } dd {
                p { (d.retry_count) " attempt(s); the error that gave it up:" }
                pre.error-text { (d.error) }
            }
            dt { "error history" } dd {
                @if d.error_history.is_empty() {
                    p.note { "None recorded (dead-lettered before schema version 5)." }
                } @else {
                    table #error-history {
                        thead { tr { th { "when" } th { "counted" } th { "error" } } }
                        tbody { @for f in &d.error_history {
                            tr {
                                td { (layout::time(f.at)) }
                                td { @if f.counted { "attempt" } @else { "outage (not counted)" } }
                                td { pre.error-text { (f.error) } }
                            }
                        } }
                    }
                    p.note { "The last " (d.error_history.len()) " failure(s), oldest first \
                              (up to " (outbox_relay::store::ERROR_HISTORY_LEN) " are kept)." }
                }
            }
            dt { "payload" } dd { pre.payload #payload { (layout::json(&d.payload)) } }
            dt { "headers" } dd { pre { (d.headers.as_ref().map(layout::json).unwrap_or_default()) } }
            dt { "dead-letter id" } dd { code { (d.id) } }
        }
        form.actions method="post" action="/dead-letters/confirm" {
            input type="hidden" name="csrf" value=(c.guard.csrf());
            input type="hidden" name="id" value=(d.id);
            button type="submit" name="action" value="replay" { "Replay" }
            button.danger type="submit" name="action" value="purge" { "Purge" }
        }
        @if !c.guard.enabled() { p.note { (TOKEN_HELP) } }
    };
    layout::page(&c, "Dead letter", Nav::DeadLetters, body).into_response()
}

/// What an action form posts.
#[derive(Debug, Default)]
pub struct ActionForm {
    action: String,
    ids: Vec<Uuid>,
    filter: ListQuery,
    csrf: String,
    token: String,
}

impl ActionForm {
    fn parse(body: &[u8]) -> ActionForm {
        let mut f = ActionForm::default();
        for (k, v) in url::form_urlencoded::parse(body) {
            let v = v.into_owned();
            match &*k {
                "action" => f.action = v,
                "id" => f.ids.extend(Uuid::parse_str(&v).ok()),
                "aggregate_type" => f.filter.aggregate_type = v,
                "error" => f.filter.error = v,
                "from" => f.filter.from = v,
                "to" => f.filter.to = v,
                "csrf" => f.csrf = v,
                "token" => f.token = v,
                _ => {}
            }
        }
        f
    }

    /// What the action will do, in words, or why it cannot be asked.
    async fn describe(&self, store: &Store) -> Result<String, String> {
        let n = self.ids.len();
        match self.action.as_str() {
            "replay" | "purge" if n == 0 => Err("select at least one dead letter".into()),
            "replay" => Ok(format!("Replay {n} selected dead letter(s)?")),
            "purge" => Ok(format!("Purge {n} selected dead letter(s) for good?")),
            "replay_matching" => {
                let filter = self.filter.filter()?;
                let total = store
                    .dead_letter_page(&filter, 0, 0)
                    .await
                    .map_err(|e| e.to_string())?
                    .total;
                Ok(format!(
                    "Replay all {total} dead letter(s) matching the filter?"
                ))
            }
            other => Err(format!("unknown action {other:?}")),
        }
    }
}

fn refused(c: &Console, status: StatusCode, why: &str) -> Response {
    let body = html! {
        h1 { "Refused" }
        p.error #refused { (why) }
        p { "Nothing was changed. " a href="/dead-letters" { "Back to the dead letters" } }
    };
    (status, layout::page(c, "Refused", Nav::DeadLetters, body)).into_response()
}

/// `POST /dead-letters/confirm`: says what the action will do and asks for the token.
pub async fn confirm(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = ActionForm::parse(&body);
    if let Err(r) = c.guard.check_form(&headers, &form.csrf) {
        return refused(&c, StatusCode::FORBIDDEN, &r.to_string());
    }
    let store = match c.store().await {
        Ok(s) => s,
        Err(e) => return super::unavailable(&c, &e),
    };
    let question = match form.describe(store).await {
        Ok(q) => q,
        Err(m) => return refused(&c, StatusCode::BAD_REQUEST, &m),
    };
    let body = html! {
        h1 { "Confirm" }
        p #question { (question) }
        @if !form.ids.is_empty() {
            ul { @for id in &form.ids { li { a href={"/dead-letters/" (id)} { code { (id) } } } } }
        }
        @if c.guard.enabled() {
            form.confirm method="post" action="/dead-letters/apply" {
                input type="hidden" name="csrf" value=(c.guard.csrf());
                input type="hidden" name="action" value=(form.action);
                @for id in &form.ids { input type="hidden" name="id" value=(id); }
                (form.filter.hidden())
                label { "Console token " input type="password" name="token" autocomplete="off"; }
                button.danger type="submit" { "Yes, do it" }
                " " a href="/dead-letters" { "Cancel" }
            }
        } @else {
            p.note #actions-disabled { (TOKEN_HELP) }
            a href="/dead-letters" { "Back" }
        }
    };
    layout::page(&c, "Confirm", Nav::DeadLetters, body).into_response()
}

/// `POST /dead-letters/apply`: runs a confirmed action, given the CSRF token and the token.
pub async fn apply(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = ActionForm::parse(&body);
    if let Err(r) = c.guard.check_action(&headers, &form.csrf, &form.token) {
        tracing::warn!(action = %form.action, reason = ?r, "web console: action refused");
        return refused(&c, StatusCode::FORBIDDEN, &r.to_string());
    }
    let store = match c.store().await {
        Ok(s) => s,
        Err(e) => return super::unavailable(&c, &e),
    };
    let done = match form.action.as_str() {
        "replay" | "replay_matching" => {
            let ids = if form.action == "replay" {
                form.ids.clone()
            } else {
                match form.filter.filter() {
                    Ok(f) => match store.dead_letter_ids(&f).await {
                        Ok(ids) => ids,
                        Err(e) => return super::unavailable(&c, &e),
                    },
                    Err(m) => return refused(&c, StatusCode::BAD_REQUEST, &m),
                }
            };
            // Never `None`: that would replay every dead letter.
            store
                .replay(Some(&ids))
                .await
                .map(|v| (format!("Replayed {} event(s)", v.len()), v))
        }
        "purge" => store
            .purge(Some(&form.ids))
            .await
            .map(|n| (format!("Purged {n} dead letter(s)"), Vec::new())),
        other => {
            return refused(
                &c,
                StatusCode::BAD_REQUEST,
                &format!("unknown action {other:?}"),
            )
        }
    };
    let (text, replayed) = match done {
        Ok(d) => d,
        Err(e) => return super::unavailable(&c, &e),
    };
    tracing::info!(action = %form.action, "web console: {text}");
    let body = html! {
        h1 { "Done" }
        p #done { (text) }
        @if !replayed.is_empty() {
            p { "They are pending again, ahead of the events that waited behind them:" }
            ul { @for id in &replayed {
                li { a href={"/events?" (layout::query(&[("id", &id.to_string())]))} { code { (id) } } }
            } }
        }
        a href="/dead-letters" { "Back to the dead letters" }
    };
    layout::page(&c, "Done", Nav::DeadLetters, body).into_response()
}
