//! Where the CPU went: this process, the PostgreSQL server and a broker on this machine, read
//! from `/proc`.

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds (user + system) used so far by every live process whose command name is `comm`
/// (all of a PostgreSQL server's backends are named `postgres`); `None` when none runs here.
fn cpu_seconds_named(comm: &str) -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim_end() == comm {
            if let Some(cpu) = cpu_seconds(pid) {
                *total.get_or_insert(0.0) += cpu;
            }
        }
    }
    total
}

/// Where the CPU went during a measurement: this process (the relay, or the sink alone), the
/// PostgreSQL server and the broker, when they run on this machine. Processes that exit in
/// between (a short-lived autovacuum worker) are not counted.
pub struct CpuMeter {
    broker: Option<&'static str>,
    /// The database server's process name and the figure it is reported as.
    database: (&'static str, &'static str),
    before: [Option<f64>; 3],
}

impl CpuMeter {
    /// Starts measuring, with the broker behind `sink_url` when it runs on this machine.
    pub fn start(sink_url: &str) -> Self {
        Self::start_with(sink_url, ("postgres", "postgres_cpu_seconds_per_100k"))
    }

    /// Like [`CpuMeter::start`], with another database server: its process name (`mariadbd`)
    /// and the name of its figure.
    pub fn start_with(sink_url: &str, database: (&'static str, &'static str)) -> Self {
        let local = url::Url::parse(sink_url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| h == "127.0.0.1" || h == "localhost" || h == "[::1]")
            })
            .unwrap_or(false);
        let broker = match sink_url.split(':').next() {
            Some("nats") if local => Some("nats-server"),
            Some("kafka") if local => Some("tansu"),
            Some("amqp") if local => Some("beam.smp"),
            Some("redis") if local => Some("redis-server"),
            Some("mqtt") if local => Some("mosquitto"),
            _ => None,
        };
        let mut meter = CpuMeter {
            broker,
            database,
            before: [None; 3],
        };
        meter.before = meter.read();
        meter
    }

    fn read(&self) -> [Option<f64>; 3] {
        [
            cpu_seconds(std::process::id()),
            cpu_seconds_named(self.database.0),
            self.broker.and_then(cpu_seconds_named),
        ]
    }

    /// `<who>_cpu_seconds_per_100k` figures for `events` events, `this_process` naming the
    /// figure of this process.
    pub fn per_100k(&self, events: usize, this_process: &'static str) -> Vec<(&'static str, f64)> {
        let names = [this_process, self.database.1, "broker_cpu_seconds_per_100k"];
        names
            .into_iter()
            .zip(self.read())
            .zip(self.before)
            .filter_map(|((name, after), before)| {
                Some((name, (after? - before?) / events.max(1) as f64 * 100_000.0))
            })
            .collect()
    }
}
