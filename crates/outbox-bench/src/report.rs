//! What a run found: one [`Measurement`] per measured configuration, the [`Report`] that
//! gathers them with the machine and PostgreSQL settings, printed as a table or JSON, and the
//! progress line on stderr.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use serde::Serialize;
use serde_json::Value;

use crate::args::Scenario;
use crate::targets::Target;

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub scenario: Scenario,
    /// What was measured, how: events, sink, source, batch size…
    pub setup: BTreeMap<&'static str, Value>,
    /// The figures.
    pub results: BTreeMap<&'static str, f64>,
}

impl Measurement {
    /// A measurement of `scenario` set up as `setup` (a JSON object), with no figures yet.
    pub fn new(scenario: Scenario, setup: Value) -> Self {
        let setup = match setup {
            Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| (&*Box::leak(k.into_boxed_str()), v))
                .collect(),
            _ => BTreeMap::new(),
        };
        Measurement {
            scenario,
            setup,
            results: BTreeMap::new(),
        }
    }

    /// Adds a figure.
    pub fn with(mut self, name: &'static str, value: f64) -> Self {
        self.results.insert(name, value);
        self
    }

    /// A figure, when measured.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.results.get(name).copied()
    }

    /// True when the setup has `key` = `value`.
    pub fn is(&self, key: &str, value: &str) -> bool {
        self.setup.get(key).and_then(Value::as_str) == Some(value)
    }
}

/// The whole run: what ran where, the measurements, the targets.
#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub postgres: BTreeMap<String, String>,
    pub measurements: Vec<Measurement>,
    pub targets: Vec<Target>,
}

/// The machine the run measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    cpus: usize,
    cpu_model: String,
    memory_gib: f64,
    load_average_at_start: String,
}

/// This machine, from `/proc`.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<f64>().ok())
                })
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        memory_gib: (memory_gib * 10.0).round() / 10.0,
        load_average_at_start: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Prints the report as a table.
pub fn print_report(r: &Report) {
    println!("outbox-bench, {}", r.date);
    println!("command: {}", r.command);
    println!(
        "machine: {} CPUs ({}), {:.1} GiB, load average at start {}",
        r.machine.cpus, r.machine.cpu_model, r.machine.memory_gib, r.machine.load_average_at_start
    );
    println!(
        "postgres: {}",
        r.postgres
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for m in &r.measurements {
        let setup = m
            .setup
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        let results = m
            .results
            .iter()
            .map(|(k, v)| {
                if v.fract() == 0.0 || v.abs() >= 100.0 {
                    format!("{k}={v:.0}")
                } else {
                    format!("{k}={v:.3}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        println!();
        println!("{:?}: {setup}", m.scenario);
        println!("  {results}");
    }
    println!();
    println!("targets");
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        println!("  {:<62} {:<22} {:<20} {met}", t.what, t.target, t.measured);
    }
}

/// Shows `msg` as the progress line (rewritten in place on a terminal).
pub fn progress(msg: &str) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{msg}");
    } else if !msg.is_empty() {
        let _ = writeln!(err, "{msg}");
    }
}
