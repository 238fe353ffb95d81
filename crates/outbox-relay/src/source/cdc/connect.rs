//! The replication connection: its settings from the database URL (the same [`PgTarget`] as
//! the pool: host, user, password, `sslmode`, `sslrootcert`, `sslcert`, `sslkey`), its TLS,
//! libpq's second attempt for `prefer` / `allow`, and how its errors are classified.
//!
//! **TLS.** `pgwire-replication` is used without its own TLS (its `tls-rustls` feature brings
//! rustls's aws-lc provider, which this build avoids). The relay does TLS itself, with rustls
//! and the ring provider, as libpq does: it opens the TCP connection, sends `SSLRequest`,
//! verifies the server's certificate per `sslmode` (chain against `sslrootcert` for
//! `verify-ca`; chain and host name for `verify-full`; nothing for `prefer` / `require`),
//! presents the client certificate when there is one, and then gives the replication client
//! a Unix socket in a private directory (mode 0700) whose one connection it pipes through the
//! TLS stream. The server sees one TLS connection from the relay; the hop is in-process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, PgWireError, ReplicationConfig, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::CdcOptions;
use crate::error::Error;
use crate::store::connection::{PgTarget, RootCerts, SslMode};

/// The PID in "replication slot … is active for PID n" (SQLSTATE 55006).
pub(super) fn busy_pid(e: &PgWireError) -> Option<String> {
    let PgWireError::Server(msg) = e else {
        return None;
    };
    if !msg.contains("55006") {
        return None;
    }
    Some(
        msg.split("PID")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?")
            .to_string(),
    )
}

/// Classifies a replication connection error: TLS, authentication and privilege problems are
/// configuration errors (exit status 2), the rest is retried. The message names the cause
/// ([`PgTarget::explain`]) and never holds the password.
pub(super) fn wire_error(e: PgWireError, target: &PgTarget) -> Error {
    let text = e.to_string();
    let config = match &e {
        PgWireError::Auth(_) | PgWireError::Tls(_) => true,
        PgWireError::Server(m) => ["28000", "28P01", "42501", "3D000"]
            .iter()
            .any(|code| m.contains(&format!("SQLSTATE {code}"))),
        _ => false,
    };
    if config {
        failure(target, &text)
    } else {
        let reason = format!("replication connection: {}", target.explain(&text));
        Error::Io(std::io::Error::other(format!(
            "{reason} ({})",
            target.redacted
        )))
    }
}

/// A failure to connect that the configuration must fix (exit status 2), its cause named.
fn failure(target: &PgTarget, raw: &str) -> Error {
    Error::Connect {
        url: target.redacted.clone(),
        reason: format!("replication connection: {}", target.explain(raw)),
    }
}

/// The replication connection's settings: to the target directly, or to a TLS bridge.
/// Replication messages the client queues ahead of the reader. Each is a whole row, not yet
/// counted in the session's byte budget, so this adds at most this many rows to memory while
/// the budget holds the reader (the client then stops reading the socket).
const STREAM_QUEUE: usize = 64;

pub(super) fn replication_config(
    target: &PgTarget,
    bridge: Option<&Bridge>,
    o: &CdcOptions,
    start: u64,
) -> ReplicationConfig {
    let password = target.password().unwrap_or_default().to_string();
    let (user, database) = (target.user.clone(), target.database.clone());
    let (slot, publication) = (o.slot.clone(), o.publication.clone());
    let cfg = match (bridge, &target.socket) {
        (Some(b), _) => ReplicationConfig::unix(
            b.dir.display().to_string(),
            b.port,
            user,
            password,
            database,
            slot,
            publication,
        ),
        (None, Some(dir)) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            target.port,
            user,
            password,
            database,
            slot,
            publication,
        ),
        (None, None) => {
            ReplicationConfig::new(&target.host, user, password, database, slot, publication)
                .with_port(target.port)
        }
    };
    cfg.with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn(start))
        .with_status_interval(o.status_interval)
        .with_wakeup_interval(Duration::from_secs(10))
        .with_buffer_size(STREAM_QUEUE)
        .with_application_name("outbox-relay-cdc")
        // Render values the way the decoder reads them (timestamps in ISO, UTC).
        .with_options("-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres")
}

/// A TLS connection to the server, offered to the replication client on a private Unix
/// socket. Dropping it closes both and removes the directory.
pub(super) struct Bridge {
    dir: PathBuf,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long the TCP connection and the TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens the TLS connection the target asks for: `None` when the replication client should
/// connect by itself without TLS (`disable`, the first attempt of `allow`, a Unix socket, or
/// `prefer` with a server that has no TLS or whose handshake failed).
pub(super) async fn open(target: &PgTarget) -> Result<Option<Bridge>, Error> {
    if matches!(target.mode, SslMode::Disable | SslMode::Allow) || target.socket.is_some() {
        return Ok(None);
    }
    let prefer = target.mode == SslMode::Prefer;
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(target)).await {
        Ok(Ok(Some(tls))) => tls,
        Ok(Ok(None)) if prefer => return Ok(None),
        Ok(Ok(None)) => return Err(failure(target, "server does not support TLS")),
        Ok(Err(Handshake::Io(e))) => {
            // Not reachable, or the connection broke: retried with the session's backoff.
            return Err(Error::Io(std::io::Error::other(format!(
                "replication connection to {}: {e}",
                target.redacted
            ))));
        }
        Ok(Err(Handshake::Tls(e))) if prefer => {
            tracing::info!(error = %e, "TLS handshake failed; sslmode=prefer connects without TLS");
            return Ok(None);
        }
        Ok(Err(Handshake::Tls(e))) => {
            return Err(failure(target, &format!("TLS handshake failed: {e}")))
        }
        Ok(Err(Handshake::Config(e))) => return Err(Error::Config(e)),
        Err(_) => {
            return Err(Error::Io(std::io::Error::other(format!(
                "replication connection to {}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}",
                target.redacted
            ))))
        }
    };
    // Short: a Unix socket's path has at most 107 bytes.
    let dir = std::env::temp_dir().join(format!(
        "outbox-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    ));
    let listener = (|| {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        tokio::net::UnixListener::bind(dir.join(format!(".s.PGSQL.{}", target.port)))
    })()
    .map_err(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        // The environment's to fix (TMPDIR unwritable, or too long a path): stop at start.
        Error::Config(format!(
            "replication connection over TLS: cannot make a private socket in {} ({e}); set \
             TMPDIR to a short, writable directory",
            dir.display()
        ))
    })?;
    let socket_dir = dir.clone();
    let task = tokio::spawn(async move {
        let mut tls = tls;
        let accepted = tokio::time::timeout(Duration::from_secs(60), listener.accept()).await;
        // One connection only: the socket goes at once (the accepted connection stays), so
        // even a relay killed with SIGKILL leaves nothing behind after this point.
        drop(listener);
        let _ = std::fs::remove_dir_all(&socket_dir);
        if let Ok(Ok((mut local, _))) = accepted {
            let _ = tokio::io::copy_bidirectional(&mut local, &mut tls).await;
            let _ = tls.shutdown().await;
        }
    });
    Ok(Some(Bridge {
        dir,
        port: target.port,
        task,
    }))
}

enum Handshake {
    Io(std::io::Error),
    Tls(std::io::Error),
    Config(String),
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// TCP, `SSLRequest`, and the TLS handshake; `None` when the server answers that it has no TLS.
async fn handshake(target: &PgTarget) -> Result<Option<TlsStream>, Handshake> {
    let config = client_config(target).map_err(Handshake::Config)?;
    let name = match ServerName::try_from(target.host.clone()) {
        Ok(n) => n,
        Err(_) if target.mode != SslMode::VerifyFull => {
            // No name to check or send: an address stands in (rustls sends no SNI for one).
            ServerName::from(std::net::IpAddr::from([0, 0, 0, 0]))
        }
        Err(_) => {
            return Err(Handshake::Config(format!(
                "database URL {}: {:?} is not a host name TLS can check (sslmode=verify-full)",
                target.redacted, target.host
            )))
        }
    };
    let mut tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(Handshake::Io)?;
    let _ = tcp.set_nodelay(true);
    // SSLRequest: length 8, code 80877103.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .map_err(Handshake::Io)?;
    let answer = tcp.read_u8().await.map_err(Handshake::Io)?;
    if answer != b'S' {
        return Ok(None);
    }
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map(Some)
        .map_err(|e| {
            // rustls's own errors (certificates, protocol) come as InvalidData; a reset or a
            // closed connection is the network's, retried like any other.
            if e.kind() == std::io::ErrorKind::InvalidData {
                Handshake::Tls(e)
            } else {
                Handshake::Io(e)
            }
        })
}

/// rustls settings for the target's `sslmode`, roots and client certificate.
fn client_config(target: &PgTarget) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        match (target.mode.verifies_chain(), &target.roots) {
            (true, Some(roots)) => {
                let store = root_store(roots)?;
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(store),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("{roots}: {e}"))?;
                if target.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(verify::ChainOnly(webpki))
                }
            }
            _ => Arc::new(verify::Nothing(provider)),
        };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &target.client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslcert={}: {e}", cert.display()))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("sslkey={}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("sslcert={} / sslkey={}: {e}", cert.display(), key.display()))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The CAs of `sslrootcert`: a PEM file, or the system's store.
fn root_store(roots: &RootCerts) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{roots}: {e}"))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("{roots}: the file holds no CA certificate"));
            }
        }
        RootCerts::System => {
            let native = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(native.certs);
            if store.is_empty() {
                return Err(
                    "sslrootcert=system: the system's certificate store is empty or unreadable"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

/// The two verifiers rustls does not provide: `verify-ca` (the chain, not the name) and
/// `prefer` / `require` (nothing; the handshake's signatures are still checked).
mod verify {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    pub(super) struct ChainOnly(pub(super) Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                // The chain is valid; only the name differs, which verify-ca does not check.
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    #[derive(Debug)]
    pub(super) struct Nothing(pub(super) Arc<CryptoProvider>);

    impl ServerCertVerifier for Nothing {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_settings_from_urls() {
        let o = CdcOptions::default();
        let t =
            PgTarget::parse("postgres://app:p%40ss@db.example:6543/shop?sslmode=disable").unwrap();
        let c = replication_config(&t, None, &o, 7);
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "app");
        assert_eq!(c.password, "p@ss");
        assert_eq!(c.database, "shop");
        assert_eq!(c.start_lsn, Lsn(7));
    }

    #[test]
    fn busy_and_config_errors() {
        let busy = PgWireError::Server(
            "replication slot \"s\" is active for PID 4242 (SQLSTATE 55006)".into(),
        );
        assert_eq!(busy_pid(&busy).as_deref(), Some("4242"));
        assert!(busy_pid(&PgWireError::Server("x (SQLSTATE 42704)".into())).is_none());
        let t = PgTarget::parse("postgres://u:pw@h/d").unwrap();
        let e = wire_error(
            PgWireError::Server("must be superuser or replication role (SQLSTATE 42501)".into()),
            &t,
        );
        assert!(e.is_config() && !e.to_string().contains("pw@"), "{e}");
        assert!(!wire_error(PgWireError::Protocol("x".into()), &t).is_config());
    }
}
