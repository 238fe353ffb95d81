//! How to reach PostgreSQL: a `postgres://` URL's libpq parameters, resolved once with libpq's
//! meaning for both kinds of connection — the pool (sqlx) and the CDC source's replication
//! connection — and connection failures explained in one line that names the cause.
//!
//! * `sslmode`: `disable`, `allow`, `prefer` (the default), `require`, `verify-ca`,
//!   `verify-full`. `prefer` tries TLS and connects without it when the server has no TLS,
//!   the TLS handshake fails or the server refuses the TLS connection (its `pg_hba.conf`);
//!   `allow` does the reverse. TLS is never used over a Unix socket (as libpq).
//! * `sslrootcert`: the CA file that verifies the server (`verify-ca`, `verify-full`), or
//!   `system` for the system's store (then `verify-full` is the default and weaker modes are
//!   refused). Default `~/.postgresql/root.crt`; verification without one is refused. When
//!   the file exists, `require` verifies the chain like `verify-ca`.
//! * `sslcert`, `sslkey`: a client certificate and its key (defaults
//!   `~/.postgresql/postgresql.crt` and `.key`, used when the certificate file exists).
//! * The password: from the URL (user info or `password=`), else `PGPASSWORD`, else the
//!   password file (`PGPASSFILE`, default `~/.pgpass`, ignored unless private to its owner).
//!   The environment's `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` are the defaults
//!   of the parameters, as in libpq.
//!
//! The password is kept out of `Debug`, of every message and of every log line.

use std::fmt;
use std::path::{Path, PathBuf};

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::error::Error;
use crate::urls::{percent_decode, redact_url};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Without TLS first; with TLS (unverified) if the server refuses that.
    Allow,
    /// TLS (unverified) when the server offers it; without TLS otherwise.
    Prefer,
    /// TLS, the server's certificate not verified.
    Require,
    /// TLS, the server's certificate verified against `sslrootcert` (not its name).
    VerifyCa,
    /// TLS, the certificate verified and its name matched against the URL's host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s.to_ascii_lowercase().as_str() {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain is verified.
    pub fn verifies_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    fn sqlx(self) -> PgSslMode {
        match self {
            // `allow` starts without TLS; [`PgTarget::fallback`] moves it to TLS.
            SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// The CAs that verify the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The certificates of a PEM file.
    File(PathBuf),
    /// The system's store (`sslrootcert=system`).
    System,
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::File(p) => write!(f, "sslrootcert={}", p.display()),
            RootCerts::System => f.write_str("sslrootcert=system"),
        }
    }
}

/// Where and how to connect, resolved from a `postgres://` URL (see the module documentation).
#[derive(Clone)]
pub struct PgTarget {
    /// Host name or address (unused with `socket`).
    pub host: String,
    /// TCP port (or the socket file's number).
    pub port: u16,
    /// The Unix socket directory, when the URL names one.
    pub socket: Option<PathBuf>,
    /// User name.
    pub user: String,
    /// Database name.
    pub database: String,
    password: Option<String>,
    /// The effective `sslmode` (a Unix socket makes it `disable`).
    pub mode: SslMode,
    /// The CAs that verify the server, when it is verified.
    pub roots: Option<RootCerts>,
    /// Client certificate and key files, when one is presented.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The URL with its secrets masked, for messages.
    pub redacted: String,
    sqlx: PgConnectOptions,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.redacted)
            .field("mode", &self.mode)
            .field("roots", &self.roots)
            .field("client_cert", &self.client_cert)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// sqlx's options from the URL's host, port, user, database and the parameters not resolved
/// here, as sqlx's own URL parser reads them, minus its password file lookup (which logs a
/// malformed line whole, password included): the password is resolved by [`PgTarget::parse`].
fn sqlx_base(u: &url::Url, params: &[(String, String)]) -> Result<PgConnectOptions, String> {
    let decode = |what: &str, s: &str| {
        percent_decode(s).ok_or_else(|| format!("the {what} is not valid percent-encoding"))
    };
    let mut o = PgConnectOptions::new_without_pgpass();
    if let Some(host) = u.host_str() {
        let decoded = decode("host", host)?;
        o = if decoded.starts_with('/') {
            o.socket(decoded)
        } else {
            o.host(host)
        };
    }
    if let Some(port) = u.port() {
        o = o.port(port);
    }
    if !u.username().is_empty() {
        o = o.username(&decode("user name", u.username())?);
    }
    let path = u.path().trim_start_matches('/');
    if !path.is_empty() {
        o = o.database(&decode("database name", path)?);
    }
    for (k, v) in params {
        o = match k.as_str() {
            "host" if v.starts_with('/') => o.socket(v),
            "host" => o.host(v),
            "hostaddr" => {
                v.parse::<std::net::IpAddr>()
                    .map_err(|e| format!("hostaddr={v:?}: {e}"))?;
                o.host(v)
            }
            "port" => o.port(v.parse().map_err(|_| format!("port={v:?}: not a port"))?),
            "dbname" => o.database(v),
            "user" => o.username(v),
            "application_name" => o.application_name(v),
            "statement-cache-capacity" => o.statement_cache_capacity(
                v.parse()
                    .map_err(|_| format!("statement-cache-capacity={v:?}: not a number"))?,
            ),
            // libpq's command-line options: `-c name=value` (or `--name=value`), repeated.
            "options" => {
                let mut pairs = Vec::new();
                let mut words = v.split_whitespace();
                while let Some(w) = words.next() {
                    let setting = match w {
                        "-c" => words.next(),
                        w => w.strip_prefix("-c").or_else(|| w.strip_prefix("--")),
                    };
                    match setting.and_then(|s| s.split_once('=')) {
                        Some((name, value)) => {
                            pairs.push((name.replace('-', "_"), value.to_string()))
                        }
                        None => return Err(format!("options={v:?}: use -c name=value")),
                    }
                }
                o.options(pairs)
            }
            k if k.starts_with("options[") && k.ends_with(']') => {
                o.options([(&k[8..k.len() - 1], v.as_str())])
            }
            // Named, never with its value (a parameter may hold a secret).
            other => {
                tracing::warn!(parameter = other, "database URL parameter ignored");
                o
            }
        };
    }
    Ok(o)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(name))
}

impl PgTarget {
    /// Resolves `url`. Errors (exit status 2) name the parameter to fix; none holds the
    /// password.
    pub fn parse(url: &str) -> Result<PgTarget, Error> {
        let redacted = redact_url(url);
        let invalid = |why: String| Error::Config(format!("database URL {redacted}: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let mut password = match parsed.password() {
            Some(p) => Some(percent_decode(p).ok_or_else(|| {
                invalid("the password is not valid percent-encoding (write % as %25)".into())
            })?),
            None => None,
        };
        let (mut mode, mut root, mut cert, mut key) = (
            env("PGSSLMODE"),
            env("PGSSLROOTCERT"),
            env("PGSSLCERT"),
            env("PGSSLKEY"),
        );
        let mut rest: Vec<(String, String)> = Vec::new();
        for (k, v) in parsed.query_pairs() {
            let v = v.into_owned();
            match &*k {
                "sslmode" | "ssl-mode" => mode = Some(v),
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => root = Some(v),
                "sslcert" | "ssl-cert" => cert = Some(v),
                "sslkey" | "ssl-key" => key = Some(v),
                "password" => password = Some(v),
                _ => rest.push((k.into_owned(), v)),
            }
        }
        let base = sqlx_base(&parsed, &rest).map_err(invalid)?;
        let explicit = match mode {
            Some(m) => Some(SslMode::parse(&m).ok_or_else(|| {
                invalid(format!(
                    "sslmode={m:?}: use disable, allow, prefer, require, verify-ca or verify-full"
                ))
            })?),
            None => None,
        };
        let (mut mode, roots) = match root.as_deref() {
            Some("system") => {
                let mode = explicit.unwrap_or(SslMode::VerifyFull);
                if mode != SslMode::VerifyFull {
                    return Err(invalid(format!(
                        "sslmode={} may not be used with sslrootcert=system (use verify-full, \
                         as libpq)",
                        mode.as_str()
                    )));
                }
                (mode, Some(RootCerts::System))
            }
            given => {
                let mode = explicit.unwrap_or(SslMode::Prefer);
                let path = given
                    .map(PathBuf::from)
                    .or_else(|| home_file(".postgresql/root.crt"));
                let exists = path.as_deref().is_some_and(Path::is_file);
                if mode.verifies_chain() && !exists {
                    return Err(invalid(match given {
                        Some(p) => format!(
                            "sslrootcert={p}: no such file (sslmode={} verifies the server's \
                             certificate against it)",
                            mode.as_str()
                        ),
                        None => format!(
                            "sslmode={} needs the CA that signed the server's certificate: set \
                             sslrootcert=/path/to/ca.pem, or sslrootcert=system for the system's \
                             CAs (the default ~/.postgresql/root.crt does not exist)",
                            mode.as_str()
                        ),
                    }));
                }
                match path {
                    Some(p) if exists && mode != SslMode::Disable => {
                        // libpq: with a root certificate at hand, `require` verifies the chain.
                        let mode = if mode == SslMode::Require {
                            SslMode::VerifyCa
                        } else {
                            mode
                        };
                        (mode, Some(RootCerts::File(p)))
                    }
                    _ => (mode, None),
                }
            }
        };
        let cert = cert
            .map(PathBuf::from)
            .or_else(|| home_file(".postgresql/postgresql.crt"))
            .filter(|p| p.is_file());
        let client_cert = match (cert, mode) {
            (Some(_), SslMode::Disable) | (None, _) => None,
            (Some(cert), _) => {
                let key_path = key
                    .map(PathBuf::from)
                    .or_else(|| home_file(".postgresql/postgresql.key"));
                match key_path.filter(|p| p.is_file()) {
                    Some(k) => Some((cert, k)),
                    None => {
                        return Err(invalid(format!(
                            "sslcert={} has no private key: set sslkey=/path/to/key (the \
                             default is ~/.postgresql/postgresql.key)",
                            cert.display()
                        )))
                    }
                }
            }
        };
        let socket = base.get_socket().cloned();
        if socket.is_some() {
            // libpq never uses TLS on a Unix socket.
            mode = SslMode::Disable;
        }
        let host = base.get_host().to_string();
        let port = base.get_port();
        let user = base.get_username().to_string();
        let database = base.get_database().unwrap_or(&user).to_string();
        let password = password.or_else(|| env("PGPASSWORD")).or_else(|| {
            let host = if socket.is_some() { "localhost" } else { &host };
            password_file(host, port, &database, &user)
        });
        let mut sqlx = base.ssl_mode(mode.sqlx());
        match &roots {
            Some(RootCerts::File(p)) => sqlx = sqlx.ssl_root_cert(p),
            // No file: the system's store only.
            Some(RootCerts::System) => sqlx = sqlx.ssl_root_cert_from_pem(Vec::new()),
            None => {}
        }
        if let Some((c, k)) = &client_cert {
            sqlx = sqlx.ssl_client_cert(c).ssl_client_key(k);
        }
        if let Some(p) = &password {
            sqlx = sqlx.password(p);
        }
        Ok(PgTarget {
            host,
            port,
            socket,
            user,
            database,
            password,
            mode,
            roots,
            client_cert,
            redacted,
            sqlx,
        })
    }

    /// The password, when one was found.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// sqlx's options for this target.
    pub fn sqlx_options(&self) -> PgConnectOptions {
        self.sqlx.clone()
    }

    /// The target with another `sslmode` (the second attempt of `prefer` or `allow`).
    fn with_mode(&self, mode: SslMode) -> PgTarget {
        let mut t = self.clone();
        t.mode = mode;
        t.sqlx = t.sqlx.ssl_mode(mode.sqlx());
        t
    }

    /// libpq's second attempt: `prefer` connects without TLS after a failed TLS handshake or a
    /// refusal of the TLS connection; `allow` with TLS after the server refused a connection
    /// without it. `raw` is the first attempt's error.
    pub fn fallback(&self, raw: &str) -> Option<PgTarget> {
        let lower = raw.to_ascii_lowercase();
        match self.mode {
            SslMode::Prefer if is_tls_failure(&lower) || lower.contains("ssl encryption") => {
                Some(self.with_mode(SslMode::Disable))
            }
            SslMode::Allow if lower.contains("no encryption") => {
                Some(self.with_mode(SslMode::Require))
            }
            _ => None,
        }
    }

    /// A connection failure as the error to report at start (exit status 2).
    pub fn connect_error(&self, raw: &str) -> Error {
        Error::Connect {
            url: self.redacted.clone(),
            reason: self.explain(raw),
        }
    }

    /// One line naming the cause of a connection failure whose text is `raw` (from sqlx or
    /// the replication client), with what to change.
    pub fn explain(&self, raw: &str) -> String {
        let mut text = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        for prefix in [
            "error returned from database: ",
            "error communicating with database: ",
            "server error: ",
            "tls error: ",
            "authentication error: ",
            "io error: ",
            "TLS handshake failed: ",
        ] {
            if let Some(rest) = text.strip_prefix(prefix) {
                text = rest.to_string();
            }
        }
        // The redacted URL is the message's context; a password never reaches here, but a
        // server could echo a parameter: mask it in any case.
        if let Some(p) = self.password.as_deref().filter(|p| p.len() >= 3) {
            text = text.replace(p, "***");
        }
        // The replication client appends the SQLSTATE; the pool's messages have none.
        let coded = text.clone();
        if let Some(i) = text.find(" (SQLSTATE ") {
            text.truncate(i);
        }
        let lower = text.to_ascii_lowercase();
        let roots = self
            .roots
            .as_ref()
            .map_or("the trusted CAs".to_string(), ToString::to_string);
        if [
            "unknownissuer",
            "unknown issuer",
            "badsignature",
            "unknown ca",
        ]
        .iter()
        .any(|s| lower.contains(s))
        {
            return format!(
                "certificate not trusted: the server's certificate was not issued by a CA of \
                 {roots} ({text})"
            );
        }
        if lower.contains("not valid for name") || lower.contains("notvalidforname") {
            let names = text
                .split("only valid for ")
                .nth(1)
                .map(|n| {
                    n.replace("DnsName(\"", "")
                        .replace("IpAddress(", "")
                        .replace(['"', ')'], "")
                })
                .unwrap_or_default();
            let also = if self.mode == SslMode::VerifyCa {
                "; note: this build's pool checks the name under sslmode=verify-ca too (sqlx \
                 0.8 with rustls 0.23.24 or later): connect with a name the certificate holds"
            } else {
                ""
            };
            return format!(
                "host name mismatch: the server's certificate is not valid for {:?} (it names \
                 {}); sslmode={} checks the host of the URL against the certificate{also}",
                self.host,
                if names.is_empty() {
                    "other hosts"
                } else {
                    &names
                },
                self.mode.as_str()
            );
        }
        if lower.contains("expired") || lower.contains("notvalidyet") {
            return format!("server certificate not valid now: {text}");
        }
        if lower.contains("no encryption") {
            return format!(
                "server requires TLS ({text}); use sslmode=require or stronger (sslmode={})",
                self.mode.as_str()
            );
        }
        if lower.contains("ssl encryption") && !lower.contains("no encryption") {
            return format!(
                "server refuses TLS for this connection ({text}); use sslmode=prefer or disable"
            );
        }
        if lower.contains("does not support tls") || lower.contains("sslrequest rejected") {
            return format!(
                "server does not support TLS (ssl = off) and sslmode={} requires it",
                self.mode.as_str()
            );
        }
        if lower.contains("password authentication failed") {
            let hint = if self.password.is_none() {
                " (no password given: put it in the URL or PGPASSWORD)"
            } else {
                ""
            };
            return format!("{text}{hint}");
        }
        if lower.contains("requires a valid client certificate") {
            return format!("client certificate required ({text}): set sslcert and sslkey");
        }
        coded
    }
}

/// A TLS handshake failure (from either client), as opposed to a refusal by the server.
fn is_tls_failure(lower: &str) -> bool {
    [
        "handshake",
        "invalid peer certificate",
        "tls error",
        "received fatal alert",
    ]
    .iter()
    .any(|s| lower.contains(s))
}

/// The password file's entry for this connection (libpq's `.pgpass` rules: `host:port:
/// database:user:password`, `*` matches anything, `\` escapes `:` and `\`; a file others can
/// read is ignored with a warning).
fn password_file(host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let path = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| home_file(".pgpass"))?;
    let meta = std::fs::metadata(&path).ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "password file ignored: others can read it (chmod 0600)"
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = pgpass_fields(line)?;
            let wanted = [host, port.as_str(), database, user];
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(f, w)| f == "*" || f == w)
                .then(|| fields[4].clone())
        })
}

/// The five fields of a password file line, unescaped; `None` for a short line.
fn pgpass_fields(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> PgTarget {
        PgTarget::parse(url).unwrap()
    }

    #[test]
    fn defaults_follow_libpq() {
        let t = target("postgres://app:p%40ss@db.example:6432/shop");
        assert_eq!(t.mode, SslMode::Prefer);
        assert_eq!((t.host.as_str(), t.port), ("db.example", 6432));
        assert_eq!(t.database, "shop");
        assert_eq!(t.password(), Some("p@ss"));
        assert!(!format!("{t:?}").contains("p@ss"));
        let t = target("postgres://app@db/shop?password=x%3Ay&sslmode=require");
        assert_eq!(t.password(), Some("x:y"));
        assert_eq!(t.mode, SslMode::Require);
        let t = target("postgres://a@h/d?options=-c%20search_path%3Dx%20--lock-timeout%3D5s&application_name=y");
        let o = t.sqlx_options();
        assert_eq!(o.get_options(), Some("-c search_path=x -c lock_timeout=5s"));
        assert_eq!(o.get_application_name(), Some("y"));
        // A Unix socket never uses TLS.
        let t = target("postgres://app@localhost/shop?host=/run/postgresql&sslmode=require");
        assert_eq!(t.mode, SslMode::Disable);
    }

    #[test]
    fn verification_needs_roots_and_system_needs_verify_full() {
        let e =
            PgTarget::parse("postgres://a:secretpw@h/d?sslmode=verify-full&sslrootcert=/no/ca.pem")
                .unwrap_err()
                .to_string();
        assert!(e.contains("sslrootcert=/no/ca.pem: no such file"), "{e}");
        assert!(!e.contains("secretpw"), "{e}");
        let t = target("postgres://a@h/d?sslrootcert=system");
        assert_eq!(
            (t.mode, t.roots),
            (SslMode::VerifyFull, Some(RootCerts::System))
        );
        let e = PgTarget::parse("postgres://a@h/d?sslrootcert=system&sslmode=require")
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not be used with sslrootcert=system"), "{e}");
        let e = PgTarget::parse("postgres://a@h/d?sslmode=bogus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use disable, allow, prefer"), "{e}");
    }

    #[test]
    fn require_with_a_root_file_verifies_the_chain() {
        let dir = std::env::temp_dir().join(format!("outbox-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let t = target(&format!(
            "postgres://a@h/d?sslmode=require&sslrootcert={}",
            ca.display()
        ));
        assert_eq!(t.mode, SslMode::VerifyCa);
        let t = target(&format!(
            "postgres://a@h/d?sslmode=disable&sslrootcert={}",
            ca.display()
        ));
        assert_eq!((t.mode, t.roots), (SslMode::Disable, None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failures_are_named() {
        let t =
            target("postgres://app:hunter22@127.0.0.2:5/d?sslmode=verify-full&sslrootcert=system");
        let e = t.explain("error communicating with database: invalid peer certificate: certificate not valid for name \"127.0.0.2\"; certificate is only valid for DnsName(\"localhost\") or IpAddress(127.0.0.1)");
        assert!(e.starts_with("host name mismatch"), "{e}");
        assert!(e.contains("localhost or 127.0.0.1"), "{e}");
        let e =
            t.explain("tls error: TLS handshake failed: invalid peer certificate: UnknownIssuer");
        assert!(e.starts_with("certificate not trusted"), "{e}");
        assert!(e.contains("sslrootcert=system"), "{e}");
        let e = t.explain(
            "server error: password authentication failed for user \"app\" (SQLSTATE 28P01)",
        );
        assert_eq!(e, "password authentication failed for user \"app\"");
        let e = t.explain("error returned from database: pg_hba.conf rejects connection for host \"127.0.0.1\", user \"app\", database \"d\", no encryption");
        assert!(
            e.starts_with("server requires TLS (pg_hba.conf rejects"),
            "{e}"
        );
        assert!(e.contains("use sslmode=require or stronger"), "{e}");
        assert!(!t.explain("echo hunter22").contains("hunter22"));
    }

    #[test]
    fn prefer_and_allow_fall_back_as_libpq() {
        let t = target("postgres://a@h/d");
        let next = t.fallback(
            "no pg_hba.conf entry for host \"h\", user \"a\", database \"d\", SSL encryption",
        );
        assert_eq!(next.map(|n| n.mode), Some(SslMode::Disable));
        assert!(t.fallback("password authentication failed").is_none());
        let t = target("postgres://a@h/d?sslmode=allow");
        let next = t.fallback("pg_hba.conf rejects connection for host \"h\", no encryption");
        assert_eq!(next.map(|n| n.mode), Some(SslMode::Require));
    }

    #[test]
    fn password_file_lines() {
        assert_eq!(
            pgpass_fields(r"db:5432:*:app:pa\:ss:word").unwrap(),
            ["db", "5432", "*", "app", "pa:ss:word"]
        );
        assert!(pgpass_fields("db:5432:x").is_none());
    }
}
