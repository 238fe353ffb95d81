//! The log filter: what the user asked for (`--log-level`, `[log] level`, `RUST_LOG`), with the
//! broker clients' noise kept down at the default levels and their secret-bearing output kept
//! out at every level.
//!
//! - **Noise** ([`NOISY`]): at `info` or quieter, the clients' own connection chatter is held
//!   back: it repeats at every reconnect attempt and the sinks say the same once, with the
//!   address (async-nats' "client error: IO error" every few seconds, lapin's connection errors
//!   and its dumps of returned messages as byte arrays, rumqttc's and redis' chatter). Asking
//!   for `debug` or `trace`, or naming the target, shows it again.
//! - **Secrets** ([`SECRET`]): a target that prints credentials at some level is capped below
//!   it whatever the filter says (lapin's frame dump at TRACE shows the AMQP `PLAIN` login,
//!   password included, as bytes).

/// Targets muted below `debug`: `(target, the most they may say at the default levels)`.
const NOISY: [(&str, &str); 5] = [
    ("async_nats", "off"),
    ("lapin", "off"),
    ("rumqttc", "warn"),
    ("redis", "warn"),
    ("rdkafka", "warn"),
];

/// Targets capped at every level: `(target, the most they may ever say)`.
const SECRET: [(&str, &str); 1] = [("lapin", "debug")];

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A level's verbosity, 0 (`off`) to 5 (`trace`), for a level word or digit.
fn verbosity(level: &str) -> Option<usize> {
    let level = level.trim().to_ascii_lowercase();
    LEVELS
        .iter()
        .position(|l| *l == level)
        .or(match level.as_str() {
            "0" => Some(0),
            "1" => Some(1),
            "2" => Some(2),
            "3" => Some(3),
            "4" => Some(4),
            "5" => Some(5),
            _ => None,
        })
}

/// One comma-separated directive: `target[span{field}]=level`, `target` or `level`.
struct Directive<'a> {
    text: &'a str,
    /// The target (before any `[`), empty for a global level or a span-only directive.
    target: &'a str,
    /// Its verbosity (a bare target means `trace`).
    level: Option<usize>,
}

fn parse(directive: &str) -> Directive<'_> {
    let text = directive.trim();
    let (selector, level) = match text.rsplit_once('=') {
        Some((selector, level)) if verbosity(level).is_some() => (selector, verbosity(level)),
        _ if verbosity(text).is_some() => ("", verbosity(text)),
        _ => (text, Some(5)),
    };
    let target = selector.split('[').next().unwrap_or("").trim();
    Directive {
        text,
        target,
        level,
    }
}

/// True when `target` is `under` or one of its modules.
fn within(target: &str, under: &str) -> bool {
    target == under
        || target
            .strip_prefix(under)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// The filter to install for the user's `level` (a level or a list of directives).
pub fn directives(level: &str) -> String {
    let parsed: Vec<Directive> = level
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(parse)
        .collect();
    // The level of everything not named (without one, EnvFilter shows nothing else).
    let global = parsed
        .iter()
        .rev()
        .find(|d| d.target.is_empty() && !d.text.contains('['))
        .and_then(|d| d.level)
        .unwrap_or(0);
    let mut out: Vec<String> = Vec::with_capacity(parsed.len() + NOISY.len() + SECRET.len());
    for d in &parsed {
        let cap = SECRET
            .iter()
            .find(|(t, _)| within(d.target, t))
            .and_then(|(_, most)| verbosity(most));
        match (cap, d.level) {
            // Above its cap: replaced by the cap below.
            (Some(cap), Some(level)) if level > cap => {}
            _ => out.push(d.text.to_string()),
        }
    }
    // At the default levels, and unless the user named them, the noisy targets say less.
    if global <= 3 {
        for (target, most) in NOISY {
            let named = parsed.iter().any(|d| {
                !d.target.is_empty() && (within(d.target, target) || within(target, d.target))
            });
            let most = verbosity(most).unwrap_or(0);
            if !named && most < global {
                out.push(format!("{target}={}", LEVELS[most]));
            }
        }
    }
    // Secret caps: never above what the user asked for that target, never above the cap.
    for (target, most) in SECRET {
        let asked = parsed
            .iter()
            .filter(|d| {
                !d.target.is_empty() && (within(target, d.target) || within(d.target, target))
            })
            .filter_map(|d| d.level)
            .max()
            .unwrap_or(global);
        let most = verbosity(most).unwrap_or(0);
        if asked > most {
            out.push(format!("{target}={}", LEVELS[most]));
        }
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_levels_quiet_the_clients() {
        let f = directives("info");
        assert!(f.starts_with("info,"), "{f}");
        for d in ["async_nats=off", "lapin=off", "rumqttc=warn", "redis=warn"] {
            assert!(f.split(',').any(|x| x == d), "{d} in {f}");
        }
        // Quieter than the cap: nothing to add (a cap never raises a level).
        assert_eq!(directives("error"), "error,async_nats=off,lapin=off");
        assert_eq!(directives("off"), "off");
    }

    #[test]
    fn asking_for_debug_or_naming_a_target_shows_it() {
        let f = directives("debug");
        assert!(!f.contains("async_nats"), "{f}");
        assert!(!f.contains("rumqttc"), "{f}");
        let f = directives("info,async_nats=debug");
        assert!(f.contains("async_nats=debug"), "{f}");
        assert!(!f.contains("async_nats=off"), "{f}");
        // A filter for one target only: the others stay off, nothing is enabled.
        assert_eq!(directives("outbox_relay=debug"), "outbox_relay=debug");
    }

    #[test]
    fn secret_bearing_targets_are_capped_at_every_level() {
        let f = directives("trace");
        assert!(f.ends_with(",lapin=debug"), "{f}");
        let f = directives("info,lapin::io_loop=trace");
        assert!(!f.contains("lapin::io_loop=trace"), "{f}");
        assert!(f.ends_with(",lapin=debug"), "{f}");
        let f = directives("lapin=trace");
        assert_eq!(f, "lapin=debug");
        // Quieter than the cap: left alone.
        assert_eq!(directives("lapin=warn"), "lapin=warn");
    }

    #[test]
    fn every_result_is_a_valid_filter() {
        for level in [
            "info",
            "trace",
            "debug",
            "warn",
            "outbox=debug,info",
            "lapin::io_loop[conn]=trace,info",
            "TRACE",
        ] {
            let f = directives(level);
            assert!(
                tracing_subscriber::EnvFilter::try_new(&f).is_ok(),
                "{level} -> {f}"
            );
        }
    }
}
