//! The one duration syntax of the relay: `500ms`, `5s`, `2m`, `12h`, `7d` (humantime), for
//! flags, configuration files and URL parameters alike.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `500ms`, `5s`, `2m`, `1h`, `7d`; the error says what is expected.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(outbox_relay::duration::parse("250ms"), Ok(Duration::from_millis(250)));
/// assert!(outbox_relay::duration::parse("soon").unwrap_err().contains("not a duration"));
/// ```
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 5s, 2m or 7d: {e}"))
}

/// Serde `deserialize_with`: a duration string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// Serde `deserialize_with`: an optional duration string.
pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse(&s).map_err(serde::de::Error::custom))
        .transpose()
}
