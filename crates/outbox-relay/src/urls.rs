//! The URLs the relay is given (database, sinks): secrets masked for logs and errors,
//! credentials percent-decoded, and a sink URL's query parameters read one way everywhere.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

/// Replaces the password of a URL, the token of a NATS URL (`nats://TOKEN@host`: a user name
/// without a password is a token there), and the values of query parameters whose names say
/// `password`, `secret` or `token`, with `***`, for logs and error messages. A string that is
/// not a URL keeps nothing after an `@`, nor the value of a `password=` setting (a libpq
/// `key=value` connection string).
///
/// ```
/// assert_eq!(
///     outbox_relay::redact_url("nats://s3cret@127.0.0.1:4222"),
///     "nats://***@127.0.0.1:4222"
/// );
/// assert_eq!(
///     outbox_relay::redact_url("host=db user=app password=s3cret dbname=shop"),
///     "host=db user=app password=*** dbname=shop"
/// );
/// assert_eq!(
///     outbox_relay::redact_url("postgres://app:s3cret@db:5432/shop"),
///     "postgres://app:***@db:5432/shop"
/// );
/// assert_eq!(
///     outbox_relay::redact_url("kafka://k:9093?sasl.username=app&sasl.password=s3cret"),
///     "kafka://k:9093?sasl.username=app&sasl.password=***"
/// );
/// assert_eq!(outbox_relay::redact_url("sqlite:demo.db"), "sqlite:demo.db");
/// ```
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            // Secrets passed as parameters (`sasl.password=…`, `token=…`) are masked too.
            let secret = |k: &str| {
                let k = k.to_ascii_lowercase();
                ["password", "secret", "token"]
                    .iter()
                    .any(|s| k.contains(s))
            };
            let secret_query = u.query_pairs().any(|(k, _)| secret(&k));
            let token = u.password().is_none()
                && !u.username().is_empty()
                && matches!(u.scheme(), "nats" | "tls");
            if u.password().is_none() && !secret_query && !token {
                return raw.to_string();
            }
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if token {
                let _ = u.set_username("***");
            }
            if secret_query {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // A libpq `key=value` connection string: mask the password's value.
        Err(_) if raw.to_ascii_lowercase().contains("password") => mask_password_setting(raw),
        // Not a URL we can parse: never echo something that may hold a secret after '@'.
        Err(_) => match raw.rfind('@') {
            Some(at) => match raw[..at].find("://") {
                Some(scheme) => format!("{}://***@{}", &raw[..scheme], &raw[at + 1..]),
                None => format!("***@{}", &raw[at + 1..]),
            },
            None => raw.to_string(),
        },
    }
}

/// Masks the value of every `password = value` setting of a libpq `key=value` string (spaces
/// around `=` allowed, the value bare or single-quoted with `\'` escapes).
fn mask_password_setting(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find("password") {
        let key_end = i + found + "password".len();
        out.push_str(&raw[i..key_end]);
        let rest = &raw[key_end..];
        let after_eq = rest.trim_start();
        let Some(value) = after_eq.strip_prefix('=') else {
            i = key_end;
            continue;
        };
        let value_start = key_end + (rest.len() - after_eq.len()) + 1;
        let value = value.trim_start();
        let skipped = raw.len() - value_start - value.len();
        out.push_str(&raw[key_end..value_start + skipped]);
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            let close = quoted.char_indices().find(|&(_, c)| {
                let end = c == '\'' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            });
            close.map_or(value.len(), |(at, _)| at + 2)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str("***");
        i = value_start + skipped + len;
    }
    out.push_str(&raw[i..]);
    out
}

/// Decodes the `%XX` escapes of a URL part (a user name, a password, a vhost) with the
/// `percent-encoding` crate. `None` for a malformed escape (`%` not followed by two hex digits:
/// in credentials that is a typo, refused rather than guessed) or bytes that are not UTF-8.
#[cfg_attr(
    not(any(feature = "nats", feature = "amqp", feature = "mqtt", feature = "cdc")),
    allow(dead_code)
)]
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let hex = |i: usize| b.get(i).is_some_and(u8::is_ascii_hexdigit);
    let malformed = b
        .iter()
        .enumerate()
        .any(|(i, &c)| c == b'%' && !(hex(i + 1) && hex(i + 2)));
    if malformed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// Parses a boolean parameter: `true`/`1`/`yes` or `false`/`0`/`no`.
fn boolean(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(format!("{name}={other:?} is not true or false")),
    }
}

/// One query parameter of a sink URL, with typed readers whose errors name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Param<'a> {
    /// The parameter's name.
    pub name: &'a str,
    /// Its (decoded) value.
    pub value: &'a str,
}

// Each sink reads a different subset: without some sink features, some readers are unused.
#[allow(dead_code)]
impl Param<'_> {
    /// The value as it is.
    pub fn text(&self) -> String {
        self.value.to_string()
    }

    /// A duration (`500ms`, `5s`).
    pub fn duration(&self) -> Result<Duration, String> {
        crate::duration::parse(self.value).map_err(|e| format!("{}: {e}", self.name))
    }

    /// `true`/`1`/`yes` or `false`/`0`/`no`.
    pub fn boolean(&self) -> Result<bool, String> {
        boolean(self.name, self.value)
    }

    /// A number (or anything `FromStr`); `what` says what was expected ("a whole number").
    pub fn number<T: FromStr>(&self, what: &str) -> Result<T, String> {
        self.value
            .parse()
            .map_err(|_| format!("{}={:?} is not {what}", self.name, self.value))
    }
}

/// Reads a sink URL's query parameters, in order, with `apply`, which returns `Ok(false)` for a
/// name it does not know. A bad value or an unknown name is a configuration error made by
/// `bad` (which says which URL); an unknown name's error lists the `known` ones.
#[cfg_attr(
    not(any(
        feature = "nats",
        feature = "kafka",
        feature = "amqp",
        feature = "redis",
        feature = "mqtt"
    )),
    allow(dead_code)
)]
pub(crate) fn apply_params<K: AsRef<str>, V: AsRef<str>>(
    pairs: impl IntoIterator<Item = (K, V)>,
    known: &str,
    bad: impl Fn(String) -> crate::Error,
    mut apply: impl FnMut(Param<'_>) -> Result<bool, String>,
) -> Result<(), crate::Error> {
    for (k, v) in pairs {
        let param = Param {
            name: k.as_ref(),
            value: v.as_ref(),
        };
        if !apply(param).map_err(&bad)? {
            return Err(bad(format!(
                "unknown parameter {:?} (known: {known})",
                param.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_escapes() {
        assert_eq!(
            mask_password_setting("host=db password = 'a b\\'c' user=u"),
            "host=db password = *** user=u"
        );
        assert_eq!(
            mask_password_setting("PASSWORD=x sslmode=require"),
            "PASSWORD=*** sslmode=require"
        );
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact_url("redis://app@h:6379"), "redis://app@h:6379");
        assert_eq!(boolean("x", "yes"), Ok(true));
        let p = Param {
            name: "n",
            value: "7s",
        };
        assert_eq!(p.duration(), Ok(Duration::from_secs(7)));
        assert_eq!(
            p.number::<u32>("a whole number"),
            Err(r#"n="7s" is not a whole number"#.to_string())
        );
        let e = apply_params([("n", "1"), ("m", "2")], "n", crate::Error::Config, |p| {
            Ok(p.name == "n")
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(r#"unknown parameter "m" (known: n)"#),
            "{e}"
        );
        assert_eq!(boolean("x", "0"), Ok(false));
        assert!(boolean("x", "maybe").is_err());
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
