//! The page frame (header, navigation, the database shown without secrets) and formatting
//! helpers shared by the pages.

use axum::response::Html;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::Console;

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Events,
    DeadLetters,
    None,
}

/// A whole page.
pub fn page(c: &Console, title: &str, nav: Nav, body: Markup) -> Html<String> {
    let item = |target: Nav, href: &str, label: &str| {
        html! {
            a href=(href) aria-current=[(nav == target).then_some("page")] { (label) }
        }
    };
    let relay = match &c.relay {
        Some(r) => format!("relay ({}) · sink {}", r.source, r.sink),
        None => "console only (the relay runs elsewhere)".to_string(),
    };
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · outbox" }
                    link rel="stylesheet" href="/assets/console.css";
                    script src="/assets/console.js" defer {}
                }
                body {
                    header {
                        a.brand href="/" { "outbox" }
                        nav {
                            (item(Nav::Overview, "/", "Overview"))
                            (item(Nav::Events, "/events", "Find an event"))
                            (item(Nav::DeadLetters, "/dead-letters", "Dead letters"))
                        }
                        span.where { code { (c.database_shown) } " · " (relay) }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

/// A time as UTC text, with a `<time>` element browsers understand.
pub fn time(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// A duration in seconds, in two units at most: `850ms`, `42s`, `3m 20s`, `5h 2m`, `2d 7h`.
pub fn age(secs: f64) -> String {
    if secs < 1.0 {
        return format!("{:.0}ms", secs.max(0.0) * 1000.0);
    }
    let s = secs as u64;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// A byte count for people.
pub fn bytes(n: Option<i64>) -> String {
    n.map_or_else(
        || "?".into(),
        |b| bytesize::ByteSize::b(b.max(0) as u64).to_string(),
    )
}

/// JSON pretty-printed for a `<pre>` (escaped by the template like any text).
pub fn json(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A query string from pairs, empty values left out.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        q.append_pair(k, v);
    }
    q.finish()
}
