//! Throwaway TLS material and private server processes for TLS tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM files
/// in a directory of their own (removed on drop).
pub struct TlsFiles {
    /// The directory holding the files.
    pub dir: PathBuf,
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes the files with the `openssl` command. `None` (reported through
    /// [`crate::unavailable`]) when it cannot.
    pub fn generate() -> Option<TlsFiles> {
        let dir =
            std::env::temp_dir().join(format!("outbox-tls-{}", uuid::Uuid::new_v4().simple()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            crate::unavailable("a temporary directory", &e.to_string());
            return None;
        }
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        };
        let d = files.dir.display().to_string();
        std::fs::write(
            files.dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .ok()?;
        let p = |name: &str| format!("{d}/{name}");
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let steps = [
            format!(
                "req -x509 {ec} -keyout {} -out {} -days 2 -subj /CN=outbox-test-CA",
                p("ca.key"),
                p("ca.pem")
            ),
            format!(
                "req {ec} -keyout {} -out {} -subj /CN=localhost",
                p("server.key"),
                p("server.csr")
            ),
            format!(
                "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -out {} -days 2 -extfile {}",
                p("server.csr"),
                p("ca.pem"),
                p("ca.key"),
                p("server.pem"),
                p("ext.cnf")
            ),
        ];
        for step in steps {
            // The temporary directory's path has no spaces.
            let out = Command::new("openssl")
                .args(step.split(' '))
                .stdin(Stdio::null())
                .output();
            let failure = match out {
                Ok(o) if o.status.success() => continue,
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            crate::unavailable("the openssl command", &failure);
            return None;
        }
        // Servers that drop root privileges must still read the key.
        for f in std::fs::read_dir(&files.dir).ok()?.flatten() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644));
        }
        Some(files)
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server process started by a test, killed when dropped.
pub struct ChildServer {
    child: Child,
}

impl ChildServer {
    /// Starts `program` with `args` and waits (at most 10 s) until `127.0.0.1:port` accepts
    /// connections. `None` (reported through [`crate::unavailable`]) when it cannot.
    pub fn start(program: &str, args: &[&str], port: u16) -> Option<ChildServer> {
        let child = match Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                crate::unavailable(&format!("the {program} command"), &e.to_string());
                return None;
            }
        };
        let mut server = ChildServer { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                crate::unavailable(
                    &format!("a private {program}"),
                    &format!("exited: {status}"),
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        crate::unavailable(
            &format!("a private {program}"),
            &format!("port {port} not open within 10s"),
        );
        None
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Writes `text` to `name` in `dir` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let _ = std::fs::write(&path, text);
    path
}
