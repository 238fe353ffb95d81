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
        openssl(&steps)?;
        // Servers that drop root privileges must still read the key.
        for f in std::fs::read_dir(&files.dir).ok()?.flatten() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644));
        }
        Some(files)
    }
}

impl TlsFiles {
    /// A client certificate for `common_name` (PostgreSQL's `cert` authentication maps it to
    /// the user of that name), signed by this CA: `(certificate, key)`. `None` (reported) when
    /// `openssl` fails.
    pub fn client_cert(&self, common_name: &str) -> Option<(PathBuf, PathBuf)> {
        let d = self.dir.display().to_string();
        let p = |name: &str| format!("{d}/{name}");
        let ext = write_file(
            &self.dir,
            "client-ext.cnf",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        let (cert, key, csr) = (
            format!("client-{common_name}.pem"),
            format!("client-{common_name}.key"),
            format!("client-{common_name}.csr"),
        );
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let steps = [
            format!(
                "req {ec} -keyout {} -out {} -subj /CN={common_name}",
                p(&key),
                p(&csr)
            ),
            format!(
                "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -out {} -days 2 -extfile {}",
                p(&csr),
                p("ca.pem"),
                p("ca.key"),
                p(&cert),
                ext.display()
            ),
        ];
        openssl(&steps)?;
        Some((self.dir.join(cert), self.dir.join(key)))
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS-terminating proxy on 127.0.0.1 in front of a plain TCP server, presenting the
/// certificate of a [`TlsFiles`]: a real server behind TLS, for servers too heavy to start
/// privately with TLS of their own. Stops when dropped.
pub struct TlsProxy {
    /// The port clients connect to with TLS.
    pub port: u16,
    upstream: std::sync::Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Starts forwarding TLS connections on a free port to `upstream` (`host:port`).
    pub async fn start(upstream: &str, files: &TlsFiles) -> std::io::Result<TlsProxy> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(&files.cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(std::io::Error::other)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(std::io::Error::other)?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(std::io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let upstream = std::sync::Arc::new(std::sync::Mutex::new(upstream.to_string()));
        let target = upstream.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let upstream = target.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        Ok(TlsProxy {
            port,
            upstream,
            task,
        })
    }

    /// Sends new connections to `upstream` from now on (for a server that must know the
    /// proxy's port before it starts, such as a Kafka broker advertising it).
    pub fn set_upstream(&self, upstream: &str) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream.to_string();
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
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
        match ChildServer::spawn(program, args, port) {
            Ok(server) => Some(server),
            Err(why) => {
                crate::unavailable(&format!("a private {program}"), &why);
                None
            }
        }
    }

    /// [`ChildServer::start`] without the report: the error says why (the program could not
    /// run, exited — e.g. it lost the port to another process — or never listened).
    pub fn spawn(program: &str, args: &[&str], port: u16) -> Result<ChildServer, String> {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let mut server = ChildServer { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("{program} exited: {status}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{program} did not listen on port {port} within 10s"
        ))
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

/// Runs `openssl` once per step (arguments split on spaces: the temporary directory's path has
/// none). `None`, reported, at the first failure.
fn openssl(steps: &[String]) -> Option<()> {
    for step in steps {
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
    Some(())
}
