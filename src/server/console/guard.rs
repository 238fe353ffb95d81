//! What an action (replay, purge) must show before it runs: a request from the console's own
//! pages (no cross-site `Origin` or `Sec-Fetch-Site`, and the form's CSRF token, random per
//! process), and the console token the operator started it with (`--console-token` /
//! `OUTBOX_CONSOLE_TOKEN`). Without a configured token every action is refused. Read-only
//! pages need nothing.

use axum::http::{header, HeaderMap};

/// What a page says when actions are disabled.
pub const TOKEN_HELP: &str = "Actions (replay, purge) are disabled: start the console or the \
     relay with --console-token TOKEN (or OUTBOX_CONSOLE_TOKEN=TOKEN) and enter that token \
     when you confirm an action.";

/// The console's secrets: the operator's token and the per-process CSRF token.
pub struct Guard {
    token: Option<String>,
    csrf: String,
}

/// Why an action was refused (shown on the page; never echoes a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request came from another site.
    CrossSite,
    /// The form's CSRF token is missing or not this process's.
    Csrf,
    /// No console token was configured.
    Disabled,
    /// The token given is not the console's.
    WrongToken,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::CrossSite => "refused: the request came from another site",
            Refusal::Csrf => {
                "refused: the form is stale or forged (CSRF token missing or wrong); reload the \
                 page and try again"
            }
            Refusal::Disabled => TOKEN_HELP,
            Refusal::WrongToken => "refused: wrong or missing console token",
        })
    }
}

impl Guard {
    /// A guard for `token` (empty counts as none), with a fresh random CSRF token.
    pub fn new(token: Option<String>) -> Guard {
        Guard {
            token: token.filter(|t| !t.trim().is_empty()),
            csrf: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Whether actions can run at all.
    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// The CSRF token the console's forms carry.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Checks the origin and the CSRF token of a form (confirmation pages and actions).
    pub fn check_form(&self, headers: &HeaderMap, csrf: &str) -> Result<(), Refusal> {
        if cross_site(headers) {
            return Err(Refusal::CrossSite);
        }
        if !same(csrf.as_bytes(), self.csrf.as_bytes()) {
            return Err(Refusal::Csrf);
        }
        Ok(())
    }

    /// Checks a form that runs an action: [`Guard::check_form`] and the console token.
    pub fn check_action(
        &self,
        headers: &HeaderMap,
        csrf: &str,
        token: &str,
    ) -> Result<(), Refusal> {
        self.check_form(headers, csrf)?;
        match &self.token {
            None => Err(Refusal::Disabled),
            Some(t) if same(token.trim().as_bytes(), t.as_bytes()) => Ok(()),
            Some(_) => Err(Refusal::WrongToken),
        }
    }
}

/// True when the browser says the request comes from another site, or its `Origin` names a
/// host other than the one it asked.
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if text(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return true;
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => {
            let origin_host = origin.split("://").nth(1).unwrap_or(origin);
            !origin_host.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

/// Compares two secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn actions_need_the_csrf_token_and_the_console_token() {
        let g = Guard::new(Some("s3cret".into()));
        let csrf = g.csrf().to_string();
        let local = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(g.check_action(&local, &csrf, "s3cret"), Ok(()));
        assert_eq!(
            g.check_action(&local, &csrf, "nope"),
            Err(Refusal::WrongToken)
        );
        assert_eq!(g.check_action(&local, &csrf, ""), Err(Refusal::WrongToken));
        assert_eq!(
            g.check_action(&local, "forged", "s3cret"),
            Err(Refusal::Csrf)
        );
        let evil = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            g.check_action(&evil, &csrf, "s3cret"),
            Err(Refusal::CrossSite)
        );
        let fetch = headers(&[("sec-fetch-site", "cross-site")]);
        assert_eq!(
            g.check_action(&fetch, &csrf, "s3cret"),
            Err(Refusal::CrossSite)
        );
        assert!(!Refusal::WrongToken.to_string().contains("s3cret"));
    }

    #[test]
    fn without_a_token_actions_are_disabled() {
        for token in [None, Some(String::new()), Some("  ".into())] {
            let g = Guard::new(token);
            assert!(!g.enabled());
            let csrf = g.csrf().to_string();
            assert_eq!(
                g.check_action(&HeaderMap::new(), &csrf, ""),
                Err(Refusal::Disabled)
            );
        }
    }
}
