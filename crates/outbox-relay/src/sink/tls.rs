//! TLS client settings shared by sinks that speak TLS through rustls (MQTT, RabbitMQ, Redis).
//!
//! The crypto provider is *ring*, named explicitly: the build never needs aws-lc (and cmake),
//! and a second provider enabled elsewhere in a dependency tree cannot make the choice
//! ambiguous.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The PEM text of a CA file, checked to hold at least one certificate. Errors name the file
/// and say what is wrong with it.
pub(crate) fn ca_pem(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let certs = certificates(&text, path)?;
    if certs.is_empty() {
        return Err(format!(
            "the CA file {} holds no certificate",
            path.display()
        ));
    }
    Ok(text)
}

fn certificates(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA file {} is not PEM: {e}", path.display()))
}

/// A client configuration trusting the system's root certificates, plus those in `ca_file`
/// (PEM) when given.
#[cfg(feature = "mqtt")]
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system stores are not fatal: a private CA may be all that is needed.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in certificates(&ca_pem(path)?, path)? {
            roots
                .add(cert)
                .map_err(|e| format!("a certificate in {} is invalid: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no trusted root certificates: the system has none; give a CA file".into());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named() {
        let missing = Path::new("/nonexistent/ca.pem");
        let e = ca_pem(missing).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("outbox-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = ca_pem(&empty).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
