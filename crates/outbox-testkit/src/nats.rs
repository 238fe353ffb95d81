//! A private NATS server with JetStream: `nats-server -a 127.0.0.1 -p <port> -js -sd <dir>`,
//! for tests that stop the broker. It can be stopped and started again on the same port with
//! the same store, so streams (file storage) and their messages survive. Killed and removed
//! when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the server binary is (`OUTBOX_TEST_NATS_SERVER`, else Debian's location).
fn program() -> PathBuf {
    std::env::var_os("OUTBOX_TEST_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// A private NATS server (see the module documentation).
pub struct NatsServer {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The directory holding the JetStream store and `server.log`.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port; `None` (reported through [`crate::unavailable`]) when it
    /// cannot (no `nats-server` binary, it never listened).
    pub async fn start() -> Option<NatsServer> {
        let dir =
            std::env::temp_dir().join(format!("outbox-nats-{}", uuid::Uuid::new_v4().simple()));
        if let Err(e) = std::fs::create_dir_all(dir.join("store")) {
            crate::unavailable("a temporary directory", &e.to_string());
            return None;
        }
        let mut server = NatsServer {
            port: crate::free_port(),
            dir,
            child: None,
        };
        match server.start_again().await {
            Ok(()) => Some(server),
            Err(why) => {
                crate::unavailable("a private nats-server", &why);
                None
            }
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Starts the server (again) on its port with its store, and waits (at most 20 s) until it
    /// accepts connections. Does nothing while it runs.
    pub async fn start_again(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| format!("server.log: {e}"))?;
        let store = self.dir.join("store");
        let child = Command::new(program())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program().display()))?;
        let child = self.child.insert(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("nats-server exited ({status}): {}", self.log()));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "nats-server did not listen on port {} within 20s",
                    self.port
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server gracefully (SIGTERM: it flushes its store and closes every
    /// connection), SIGKILL after 10 s. The port and the store stay for [`Self::start_again`].
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .output();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
