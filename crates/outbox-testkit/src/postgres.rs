//! A private PostgreSQL server for TLS and authentication tests: `initdb` into a temporary
//! directory, TLS on with a certificate for `localhost` and `127.0.0.1` signed by a test CA,
//! `wal_level = logical`, and a `pg_hba.conf` that accepts only TLS connections over TCP
//! (SCRAM-SHA-256; one md5 user; one user authenticated by client certificate) and rejects
//! every connection without TLS. Stopped (fast shutdown) and removed when dropped; a test can
//! also stop it (`pg_ctl stop -m fast`) and start it again on the same port and data directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TlsFiles;

/// The SCRAM-SHA-256 user (LOGIN REPLICATION, owner of the databases [`PgServer::create_db`]
/// makes). Its password needs percent-encoding in a URL.
pub const APP_USER: &str = "app";
/// [`APP_USER`]'s password.
pub const APP_PASSWORD: &str = "s3cret:p/w@x%";
/// A user whose password is stored as md5 and authenticated with `md5` (member of `app`).
pub const MD5_USER: &str = "md5user";
/// [`MD5_USER`]'s password.
pub const MD5_PASSWORD: &str = "md5-S3cret";
/// A user authenticated by its client certificate (`cert`; member of `app`).
pub const CERT_USER: &str = "certuser";

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A private PostgreSQL server (see the module documentation).
pub struct PgServer {
    /// Its TCP port. It listens on 127.0.0.1 and 127.0.0.2 (an address its certificate does
    /// not name: for host name checks).
    pub port: u16,
    /// The test CA and the server's certificate.
    pub tls: TlsFiles,
    /// The directory holding the data directory, the Unix socket and `server.log`.
    pub dir: PathBuf,
    /// The postmaster's arguments (for starting it again).
    args: Vec<String>,
    /// The postmaster, while it runs.
    child: Option<Child>,
}

/// The binaries' directory (`OUTBOX_TEST_PG_BIN`, else PostgreSQL 15's Debian location).
fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("OUTBOX_TEST_PG_BIN").unwrap_or_else(|_| PG_BIN.into());
    Path::new(&dir).join(name)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args` as the `postgres` OS user when this process is root (PostgreSQL refuses to
/// run as root); `setpriv` execs, so the child's PID is the program's.
fn as_postgres(program: &Path, args: &[&str]) -> Command {
    if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program)
        .args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

/// Percent-encodes everything but ASCII letters and digits (for URL user info).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const PG_HBA: &str = "\
# Unix socket: the test's own set-up (the directory is private to the test).
local     all  all                   trust
hostssl   all  certuser  127.0.0.0/8 cert
hostssl   all  md5user   127.0.0.0/8 md5
hostssl   all  all       127.0.0.0/8 scram-sha-256
hostnossl all  all       0.0.0.0/0   reject
hostnossl all  all       ::/0        reject
";

/// The postmaster's settings besides its port, data directory and socket directory.
const SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1,127.0.0.2",
    "ssl=on",
    "ssl_cert_file=server.crt",
    "ssl_key_file=server.key",
    "ssl_ca_file=ca.crt",
    "wal_level=logical",
    "max_wal_senders=10",
    "max_replication_slots=10",
    "password_encryption=scram-sha-256",
    "fsync=off",
    "synchronous_commit=off",
    "shared_buffers=16MB",
];

impl PgServer {
    /// Starts a server; `None` (reported through [`crate::unavailable`]) when it cannot
    /// (no PostgreSQL binaries, no `openssl`, no `postgres` OS user when running as root).
    pub async fn start() -> Option<PgServer> {
        match PgServer::try_start().await {
            Ok(s) => Some(s),
            Err(why) => {
                crate::unavailable("a private PostgreSQL server", &why);
                None
            }
        }
    }

    async fn try_start() -> Result<PgServer, String> {
        if !bin("initdb").exists() {
            return Err(format!(
                "{} not found (set OUTBOX_TEST_PG_BIN)",
                bin("initdb").display()
            ));
        }
        let tls = TlsFiles::generate().ok_or("cannot make TLS material")?;
        let dir = std::env::temp_dir().join(format!("outbox-pg-{}", uuid::Uuid::new_v4().simple()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cleanup = |why: String| {
            let _ = std::fs::remove_dir_all(&dir);
            why
        };
        if running_as_root() {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .output()
                .map_err(|e| cleanup(format!("chown: {e}")))?;
            if !out.status.success() {
                return Err(cleanup(format!(
                    "chown to the postgres user: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let data_s = data.display().to_string();
        let out = as_postgres(
            &bin("initdb"),
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )
        .stdin(Stdio::null())
        .output()
        .map_err(|e| cleanup(format!("initdb: {e}")))?;
        if !out.status.success() {
            return Err(cleanup(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // The server's key must be private to the server's user.
        for (from, to) in [
            (&tls.cert, "server.crt"),
            (&tls.key, "server.key"),
            (&tls.ca, "ca.crt"),
        ] {
            let dest = data.join(to);
            std::fs::copy(from, &dest).map_err(|e| cleanup(format!("copy {to}: {e}")))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600));
        }
        std::fs::write(data.join("pg_hba.conf"), PG_HBA)
            .map_err(|e| cleanup(format!("pg_hba.conf: {e}")))?;
        if running_as_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .output();
        }
        let port = crate::free_port();
        let args = [
            "-D".to_string(),
            data_s,
            "-p".to_string(),
            port.to_string(),
            "-c".to_string(),
            format!("unix_socket_directories={}", dir.display()),
        ]
        .into_iter()
        .chain(
            SETTINGS
                .iter()
                .flat_map(|s| ["-c".to_string(), s.to_string()]),
        )
        .collect();
        let mut server = PgServer {
            port,
            tls,
            dir,
            args,
            child: None,
        };
        // Dropping the server from here on stops it and removes its directory.
        server.spawn()?;
        server.wait_ready().await?;
        server.set_up().await?;
        Ok(server)
    }

    /// Starts the postmaster (its output goes to `server.log`, appended).
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| format!("server.log: {e}"))?;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let child = as_postgres(&bin("postgres"), &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server as `pg_ctl stop -m fast` does (it runs it, and waits): sessions are
    /// ended, a shutdown checkpoint is written, nothing committed is lost.
    pub async fn stop_fast(&mut self) -> Result<(), String> {
        let data = self.dir.join("data").display().to_string();
        let out = tokio::process::Command::from(as_postgres(
            &bin("pg_ctl"),
            &["stop", "-D", &data, "-m", "fast", "-w", "-t", "60"],
        ))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("pg_ctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl stop -m fast failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // pg_ctl waited for the postmaster to exit: reap it.
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port and data directory, and waits (at most
    /// 30 s) until it accepts connections.
    pub async fn start_again(&mut self) -> Result<(), String> {
        if self.child.is_none() {
            self.spawn()?;
        }
        self.wait_ready().await
    }

    /// `pg_ctl restart -m fast`: [`PgServer::stop_fast`], then [`PgServer::start_again`].
    pub async fn restart_fast(&mut self) -> Result<(), String> {
        self.stop_fast().await?;
        self.start_again().await
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("postgres exited ({status}): {}", self.log()));
            }
            let url = self.admin_url("postgres");
            if let Ok(c) = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await {
                let _ = sqlx::Connection::close(c).await;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("postgres did not start within 30s: {}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn set_up(&self) -> Result<(), String> {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin_url("postgres"))
            .await
            .map_err(|e| e.to_string())?;
        let q = |s: &str| s.replace('\'', "''");
        for sql in [
            format!(
                "CREATE ROLE {APP_USER} LOGIN REPLICATION PASSWORD '{}'",
                q(APP_PASSWORD)
            ),
            "SET password_encryption = 'md5'".to_string(),
            format!(
                "CREATE ROLE {MD5_USER} LOGIN REPLICATION PASSWORD '{}' IN ROLE {APP_USER}",
                q(MD5_PASSWORD)
            ),
            format!("CREATE ROLE {CERT_USER} LOGIN REPLICATION IN ROLE {APP_USER}"),
        ] {
            sqlx::Executor::execute(&mut c, sql.as_str())
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
        }
        Ok(())
    }

    /// A URL for the superuser `postgres` over the private Unix socket (no TLS, trust).
    pub fn admin_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}&port={}&sslmode=disable",
            self.dir.display(),
            self.port
        )
    }

    /// Creates a fresh database owned by [`APP_USER`] and returns its name.
    pub async fn create_db(&self) -> String {
        let name = format!(
            "outbox_tls_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin_url("postgres"))
            .await
            .expect("connect to the private server");
        sqlx::Executor::execute(
            &mut c,
            format!("CREATE DATABASE {name} OWNER {APP_USER}").as_str(),
        )
        .await
        .expect("CREATE DATABASE");
        name
    }

    /// `postgres://user[:password]@host:port/database?params` (the password percent-encoded;
    /// `params` without the `?`, may be empty).
    pub fn url(
        &self,
        user: &str,
        password: Option<&str>,
        host: &str,
        database: &str,
        params: &str,
    ) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{}", url_encode(p)),
            None => user.to_string(),
        };
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!("postgres://{auth}@{host}:{}/{database}{query}", self.port)
    }

    /// The test CA's path, for `sslrootcert`.
    pub fn ca(&self) -> String {
        self.tls.ca.display().to_string()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: fast shutdown (backends end, shared memory released), then SIGKILL if
            // slow.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .output();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
