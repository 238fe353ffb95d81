//! A private Prometheus for one test: its own configuration and storage in a temporary
//! directory, its own port, scraping the given targets every second; killed when dropped.
//! Also `promtool check metrics`. Both come from Debian's `prometheus` package, which
//! `.ci/services` installs; when missing, the test fails naming it (OUTBOX_REQUIRE_SERVICES)
//! or skips loudly.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use outbox_testkit::{free_port, unavailable, write_file, ChildServer};
use tokio::io::AsyncWriteExt;

/// A Prometheus server started by the test.
pub struct Prometheus {
    _server: ChildServer,
    port: u16,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`) every second. `None` (reported) when
    /// it cannot run.
    pub fn start(targets: &[String]) -> Option<Prometheus> {
        let dir =
            std::env::temp_dir().join(format!("outbox-prom-{}", uuid::Uuid::new_v4().simple()));
        if let Err(e) = std::fs::create_dir_all(dir.join("data")) {
            unavailable(
                "a private Prometheus",
                &format!("cannot create {}: {e}", dir.display()),
            );
            return None;
        }
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = write_file(
            &dir,
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: outbox\n    static_configs:\n      - targets: [{list}]\n"
            ),
        );
        let port = free_port();
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = ChildServer::start("prometheus", &args, port)?;
        Some(Prometheus {
            _server: server,
            port,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
        })
    }

    /// The value of an instant query's first series; `None` while there is none (or while
    /// Prometheus is starting).
    pub async fn query(&self, query: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let response = self
            .http
            .get(url)
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
        assert_eq!(body["status"], "success", "query {query}: {body}");
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits (bounded) until `query` has a value for which `ok` holds; returns it.
    pub async fn wait_for(&self, query: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = None;
        loop {
            if let Some(v) = self.query(query).await {
                if ok(v) {
                    return v;
                }
                last = Some(v);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus: {query} never reached the expected value within {limit:?} (last: {last:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `promtool check metrics` on `text`: `Some((passed, its output))`, `None` (reported) when
/// promtool cannot run.
pub async fn promtool_check_metrics(text: &str) -> Option<(bool, String)> {
    let child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            unavailable("promtool (Debian package prometheus)", &e.to_string());
            return None;
        }
    };
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    stdin
        .write_all(text.as_bytes())
        .await
        .expect("write to promtool");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("promtool finished within 30s")
        .expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}
