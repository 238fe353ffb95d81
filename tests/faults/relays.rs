//! Relay processes under a supervisor: the real `outbox` binary, SIGKILLed at random by the
//! scenarios and started again, as a service manager would. A relay that exits on its own is
//! started again too (half a second later) and reported. The peak RSS of every process (`VmHWM`)
//! is sampled every 100 ms and right before it is killed or stopped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Path of the `outbox` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outbox"))
}

/// A peak resident set size, in kB, of the process `pid` (`None` once it is gone).
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Age of a relay process after which it surely handles SIGTERM.
const SETTLED: Duration = Duration::from_secs(3);

struct Slot {
    args: Vec<String>,
    database_url: String,
    log: PathBuf,
    child: Option<Child>,
    /// When the running process started.
    spawned_at: Instant,
    /// When to start it again (after a kill or an exit).
    restart_at: Option<Instant>,
    peak_kb: u64,
    /// Exits nobody asked for: "exit status 2", …
    exits: Vec<String>,
}

impl Slot {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the relay's log");
        let child = Command::new(bin())
            .arg("relay")
            .args(&self.args)
            .env("DATABASE_URL", &self.database_url)
            .env_remove("OUTBOX_SINK")
            .env_remove("OUTBOX_CONFIG")
            .env("OUTBOX_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn outbox relay");
        self.child = Some(child);
        self.spawned_at = Instant::now();
        self.restart_at = None;
    }

    fn sample(&mut self) {
        if let Some(kb) = self
            .child
            .as_ref()
            .and_then(Child::id)
            .and_then(peak_rss_kb)
        {
            self.peak_kb = self.peak_kb.max(kb);
        }
    }

    /// Samples, notices an exit of its own, starts it again when due.
    fn supervise(&mut self) {
        self.sample();
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                self.exits.push(status.to_string());
                self.child = None;
                self.restart_at = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        if self.restart_at.is_some_and(|at| at <= Instant::now()) {
            self.spawn();
        }
    }
}

/// The relays of one lane.
pub struct RelayPool {
    slots: Arc<Mutex<Vec<Slot>>>,
    stop: CancellationToken,
    monitor: Option<JoinHandle<()>>,
    kills: usize,
}

impl RelayPool {
    /// Starts `count` relays `outbox relay ARGS` against `database_url`, logging to
    /// `<log_dir>/<label>-<i>.log`.
    pub fn start(
        count: usize,
        args: &[String],
        database_url: &str,
        log_dir: &Path,
        label: &str,
    ) -> RelayPool {
        let mut slots: Vec<Slot> = (0..count)
            .map(|i| Slot {
                args: args.to_vec(),
                database_url: database_url.to_string(),
                log: log_dir.join(format!("{label}-{i}.log")),
                child: None,
                spawned_at: Instant::now(),
                restart_at: None,
                peak_kb: 0,
                exits: Vec::new(),
            })
            .collect();
        for s in &mut slots {
            s.spawn();
        }
        let slots = Arc::new(Mutex::new(slots));
        let stop = CancellationToken::new();
        let monitor = {
            let (slots, stop) = (slots.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    for s in slots.lock().await.iter_mut() {
                        s.supervise();
                    }
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            })
        };
        RelayPool {
            slots,
            stop,
            monitor: Some(monitor),
            kills: 0,
        }
    }

    /// SIGKILLs one running relay, chosen at random, and has it started again after
    /// `restart_after`. False when none was running.
    pub async fn kill_random(&mut self, restart_after: Duration) -> bool {
        let mut slots = self.slots.lock().await;
        let running: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].child.is_some())
            .collect();
        let Some(&victim) = running.get(fastrand::usize(..running.len().max(1))) else {
            return false;
        };
        let slot = &mut slots[victim];
        slot.sample();
        if let Some(mut child) = slot.child.take() {
            // Child::start_kill sends SIGKILL.
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        slot.restart_at = Some(Instant::now() + restart_after);
        self.kills += 1;
        true
    }

    /// SIGKILLs so far.
    pub fn kills(&self) -> usize {
        self.kills
    }

    /// Stops every relay with SIGTERM (SIGKILL after 30 s) and stops supervising. Returns the
    /// exits nobody asked for, including a stop that did not exit 0.
    pub async fn stop(&mut self) -> Vec<String> {
        self.stop.cancel();
        if let Some(m) = self.monitor.take() {
            let _ = m.await;
        }
        let mut slots = self.slots.lock().await;
        let mut exits = Vec::new();
        for s in slots.iter_mut() {
            // A process started a moment ago may not handle SIGTERM yet.
            tokio::time::sleep_until(s.spawned_at + SETTLED).await;
            s.sample();
            if let Some(mut child) = s.child.take() {
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on a child we spawned and have not reaped.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGTERM);
                    }
                }
                match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                    Ok(Ok(status)) if status.success() => {}
                    Ok(Ok(status)) => s.exits.push(format!("at SIGTERM: {status}")),
                    Ok(Err(e)) => s.exits.push(format!("at SIGTERM: {e}")),
                    Err(_) => {
                        let _ = child.kill().await;
                        s.exits.push("did not exit within 30s of SIGTERM".into());
                    }
                }
            }
            exits.extend(s.exits.iter().cloned());
        }
        exits
    }

    /// The highest peak RSS of any of its processes, in kB.
    pub async fn peak_rss_kb(&self) -> u64 {
        self.slots
            .lock()
            .await
            .iter()
            .map(|s| s.peak_kb)
            .max()
            .unwrap_or(0)
    }

    /// The last lines of every relay's log (for a failure message).
    pub async fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for s in self.slots.lock().await.iter() {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} (last {lines} lines)\n", s.log.display()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}
