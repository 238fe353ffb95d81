//! The performance issue's targets, marked met or not from this run's measurements.

use serde::Serialize;

use crate::args::{BenchArgs, Scenario};
use crate::report::Measurement;

/// One target: what, the goal, what this run measured, and whether it was met (`None`: not
/// measured in this run).
#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// The performance issue's targets, evaluated against this run.
pub fn targets(ms: &[Measurement], args: &BenchArgs) -> Vec<Target> {
    let mut t = Vec::new();
    let find = |scenario: Scenario, pairs: &[(&str, &str)]| {
        ms.iter()
            .find(|m| m.scenario == scenario && pairs.iter().all(|(k, v)| m.is(k, v)))
    };
    let rate = |m: Option<&Measurement>| m.and_then(|m| m.get("events_per_second"));
    let fmt_rate =
        |r: Option<f64>| r.map_or("not measured".to_string(), |r| format!("{r:.0} events/s"));
    let nats = args
        .sinks
        .iter()
        .find(|s| s.starts_with("nats"))
        .cloned()
        .unwrap_or_default();
    let kafka = args
        .sinks
        .iter()
        .find(|s| s.starts_with("kafka"))
        .cloned()
        .unwrap_or_default();
    for mode in ["mark", "delete"] {
        let drain = rate(find(
            Scenario::Drain,
            &[("source", "poll"), ("sink", &nats), ("on_publish", mode)],
        ));
        let ceiling = rate(find(
            Scenario::Ceiling,
            &[("source", "poll"), ("on_publish", mode)],
        ));
        if drain.is_none() && ceiling.is_none() {
            continue;
        }
        t.push(Target {
            what: format!("polling drain into NATS JetStream ({mode} mode)"),
            target: "≥ 50,000 events/s".into(),
            measured: fmt_rate(drain),
            met: drain.map(|r| r >= 50_000.0),
        });
        let share = drain.zip(ceiling).map(|(d, c)| d / c);
        t.push(Target {
            what: format!("polling drain into NATS / SQL ceiling ({mode} mode)"),
            target: "≥ 70%".into(),
            measured: share.map_or("not measured".into(), |s| format!("{:.0}%", s * 100.0)),
            met: share.map(|s| s >= 0.7),
        });
    }
    let cdc_nats = rate(find(Scenario::Drain, &[("source", "cdc"), ("sink", &nats)]));
    t.push(Target {
        what: "CDC drain into NATS JetStream".into(),
        target: "≥ 80,000 events/s".into(),
        measured: fmt_rate(cdc_nats),
        met: cdc_nats.map(|r| r >= 80_000.0),
    });
    for (source, mode) in [("poll", "mark"), ("poll", "delete"), ("cdc", "")] {
        let mut pairs = vec![("source", source), ("sink", kafka.as_str())];
        if !mode.is_empty() {
            pairs.push(("on_publish", mode));
        }
        let r = rate(find(Scenario::Drain, &pairs));
        if r.is_none() && source == "poll" && mode == "delete" {
            continue;
        }
        t.push(Target {
            what: format!(
                "Kafka drain, {source}{}",
                if mode.is_empty() {
                    String::new()
                } else {
                    format!(" ({mode} mode)")
                }
            ),
            target: "≥ 40,000 events/s".into(),
            measured: fmt_rate(r),
            met: r.map(|r| r >= 40_000.0),
        });
    }
    for source in ["poll", "cdc"] {
        let m = find(Scenario::Steady, &[("source", source)]);
        let p99 = m.and_then(|m| m.get("p99_ms"));
        let achieved = m.and_then(|m| m.get("achieved_rate")).unwrap_or(0.0);
        let kept_up = m.and_then(|m| m.get("kept_up")) == Some(1.0);
        t.push(Target {
            what: format!("steady {} events/s, {source}: p99 commit → ack", args.rate),
            target: "≤ 10 ms, at the offered rate".into(),
            measured: p99.map_or("not measured".into(), |v| {
                format!("{v:.1} ms at {achieved:.0}/s")
            }),
            met: p99.map(|v| v <= 10.0 && kept_up),
        });
    }
    let overhead = find(Scenario::WriteOverhead, &[]).and_then(|m| m.get("overhead_percent"));
    t.push(Target {
        what: "write overhead of the outbox row".into(),
        target: "≤ 20%".into(),
        measured: overhead.map_or("not measured".into(), |v| format!("{v:.1}%")),
        met: overhead.map(|v| v <= 20.0),
    });
    let emitted = find(Scenario::WriteOverhead, &[]).and_then(|m| m.get("emit_overhead_percent"));
    t.push(Target {
        what: "write overhead of the event as a logical decoding message (outbox::emit)".into(),
        target: "≤ 10%".into(),
        measured: emitted.map_or("not measured".into(), |v| format!("{v:.1}%")),
        met: emitted.map(|v| v <= 10.0),
    });
    let history = ms
        .iter()
        .filter(|m| m.scenario == Scenario::History)
        .find_map(|m| m.get("ratio"));
    t.push(Target {
        what: format!(
            "history: drain rate with {} published rows / without",
            args.history
        ),
        target: "within 10% (≥ 0.90)".into(),
        measured: history.map_or("not measured".into(), |v| format!("{v:.3}")),
        met: history.map(|v| v >= 0.9),
    });
    let rss = find(Scenario::Footprint, &[]).and_then(|m| m.get("peak_rss_mib"));
    t.push(Target {
        what: format!(
            "relay peak RSS during a {}-event drain",
            args.footprint_events
        ),
        target: "≤ 64 MB".into(),
        measured: rss.map_or("not measured".into(), |v| format!("{v:.1} MiB")),
        met: rss.map(|v| v <= 64.0),
    });
    t
}
