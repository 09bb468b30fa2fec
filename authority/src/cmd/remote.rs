//! What the administrative subcommands share: where they act (a running server through its API,
//! or a stopped server's data directory), the operator credential, a small blocking HTTPS
//! client, and output (human by default, `--json` for scripts).
//!
//! The HTTP client is a few dozen lines over rustls rather than a dependency: one request per
//! connection (`Connection: close`), bodies of a few kilobytes, the server's CA pinned from
//! `--ca`. That is all the CLI needs, and it keeps the binary's TLS stack the one the server
//! uses.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::app::{ADMIN_CLIENT_FILE, App};
use crate::config::{AppConfig, AppSettings};
use crate::error::Error;
use crate::http::Metrics;
use crate::store::{KeyFileOptions, Store, StoreOptions};

/// Largest response the CLI reads.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Connect, read and write timeout.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where a subcommand acts, and as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// URL of a running server, e.g. https://127.0.0.1:8443.
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_SERVER",
        value_name = "URL",
        conflicts_with = "data_dir"
    )]
    pub server: Option<String>,
    /// CA certificate (PEM) the server's certificate chains to [default: ca.pem next to
    /// --credentials, if there].
    #[arg(long, global = true, env = "LATCHKEY_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A credentials file: `{"client_id", "client_secret"}`, or the first run's
    /// `DATA_DIR/admin-client.json`, whose sealed secret opens with the `master.key` beside it.
    #[arg(long, global = true, env = "LATCHKEY_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Operator client id (instead of --credentials), with LATCHKEY_CLIENT_SECRET or
    /// --client-secret-file.
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_CLIENT_ID",
        allow_hyphen_values = true
    )]
    pub client_id: Option<String>,
    /// Operator client secret. Prefer LATCHKEY_CLIENT_SECRET or --client-secret-file: flags
    /// show in `ps`. Used with --client-id only.
    // Not `requires = "client_id"`: on a global argument clap applies that to the environment
    // variable too, so an exported secret would break every command given --credentials. The
    // combination is checked in `Target::credential` instead.
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_CLIENT_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub client_secret: Option<String>,
    /// File whose first line is the operator client secret (`-`: standard input); wins over
    /// LATCHKEY_CLIENT_SECRET.
    // Not `conflicts_with = "client_secret"`: that too counts the environment variable.
    #[arg(long, global = true, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to a server that asks for one
    /// (`--client-auth required` or `optional`).
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// File whose first line is the master key's passphrase (`-`: standard input), for
    /// --data-dir and sealed credentials [default: LATCHKEY_PASSPHRASE].
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Act directly on a stopped server's data directory instead of a running server.
    #[arg(long, global = true, env = "LATCHKEY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML settings file for --data-dir [default: DATA_DIR/latchkey.toml if it exists].
    #[arg(long, global = true, value_name = "FILE", requires = "data_dir")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A resolved target.
#[derive(Debug)]
pub enum Place {
    Remote(Remote),
    Local(Box<App>),
}

impl Target {
    /// Connects (and authenticates) or opens the data directory.
    pub fn open(&self) -> Result<Place, Error> {
        if let Some(dir) = &self.data_dir {
            return Ok(Place::Local(Box::new(open_local(
                dir,
                self.config.as_deref(),
                self.key_options()?,
            )?)));
        }
        let server = self.server.clone().ok_or_else(|| {
            usage("say where to act: --server URL (with --credentials or --client-id/--client-secret) or --data-dir DIR")
        })?;
        let (id, secret, default_ca) = self.credential()?;
        let ca = self.ca.clone().or(default_ca);
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let mut remote = Remote::new(&server, ca.as_deref(), identity.as_ref())?;
        remote.login(&id, &secret)?;
        Ok(Place::Remote(remote))
    }

    /// Like [`Target::open`], for commands that work only against a running server.
    pub fn remote(&self, what: &str) -> Result<Remote, Error> {
        if self.data_dir.is_some() {
            return Err(usage(&format!(
                "{what} needs a running server (--server), not --data-dir"
            )));
        }
        match self.open()? {
            Place::Remote(r) => Ok(r),
            Place::Local(_) => Err(usage(&format!("{what} needs a running server"))),
        }
    }

    /// How to unlock a master key: `--passphrase-file`, else `LATCHKEY_PASSPHRASE`.
    pub fn key_options(&self) -> Result<KeyFileOptions, Error> {
        super::passphrase::key_options(self.passphrase_file.as_deref())
    }

    /// The operator credential: id and secret, and the CA next to a credentials file.
    pub fn credential(&self) -> Result<(String, Zeroizing<String>, Option<PathBuf>), Error> {
        if let Some(id) = &self.client_id {
            // The file is always given explicitly; the value may be a leftover export.
            let value = match self.client_secret_file {
                Some(_) => None,
                None => self.client_secret.as_deref(),
            };
            let secret = super::passphrase::value_or_file(
                value,
                self.client_secret_file.as_deref(),
                "client secret file",
            )?
            .ok_or_else(|| {
                usage("--client-id needs LATCHKEY_CLIENT_SECRET, --client-secret-file or --client-secret")
            })?;
            return Ok((id.clone(), secret, None));
        }
        if self.client_secret_file.is_some() {
            return Err(usage("--client-secret-file needs --client-id"));
        }
        // A secret without an id (LATCHKEY_CLIENT_SECRET left in the environment, say) is
        // unused when a credentials file names the client; alone it names no one.
        if self.client_secret.is_some() && self.credentials.is_none() {
            return Err(usage(
                "a client secret (--client-secret or LATCHKEY_CLIENT_SECRET) needs --client-id",
            ));
        }
        let path = self.credentials.as_ref().ok_or_else(|| {
            usage(&format!("an operator credential is needed: --credentials <{ADMIN_CLIENT_FILE}> or --client-id with LATCHKEY_CLIENT_SECRET"))
        })?;
        let c = crate::credentials::read(path, &self.key_options()?)?;
        let ca = path
            .parent()
            .map(|d| d.join("ca.pem"))
            .filter(|p| p.is_file());
        Ok((c.client_id, c.client_secret, ca))
    }
}

/// Opens a stopped server's data directory with the same settings file the server reads, but
/// without first-run work: nothing is generated or reconciled.
pub fn open_local(dir: &Path, config: Option<&Path>, key: KeyFileOptions) -> Result<App, Error> {
    let settings = settings_for(dir, config)?;
    let options = StoreOptions {
        key,
        ..StoreOptions::default()
    };
    let store = Store::open(dir, options).map_err(|e| match e {
        crate::store::StoreError::Locked(p) => usage(&format!(
            "{} is in use by a running server; act through it with --server instead",
            p.display()
        )),
        e => e.into(),
    })?;
    App::offline(store, settings, Arc::new(Metrics::new()))
}

fn settings_for(dir: &Path, config: Option<&Path>) -> Result<AppSettings, Error> {
    let path = config.map(Path::to_path_buf).or_else(|| {
        let p = dir.join("latchkey.toml");
        p.is_file().then_some(p)
    });
    match path {
        Some(p) => AppConfig::from_file(&p)?.resolve(),
        None => Ok(AppSettings::default()),
    }
}

/// A usage or environment problem, reported as the CLI's error.
pub fn usage(msg: &str) -> Error {
    Error::Cli(msg.to_owned())
}

/// A blocking client for a running server's API.
#[derive(Debug)]
pub struct Remote {
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Set when the server asked for a client certificate (see [`ClientCertSlot`]).
    asked_for_cert: Arc<AtomicBool>,
    has_identity: bool,
    host: String,
    port: u16,
    token: Option<Zeroizing<String>>,
}

/// A response: status and parsed JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body if the status is 2xx, else an error with the server's description.
    pub fn ok(self) -> Result<Value, Error> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let desc = self
            .body
            .get("error_description")
            .and_then(Value::as_str)
            .or_else(|| self.body.get("message").and_then(Value::as_str))
            .unwrap_or("");
        let code = self
            .body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error");
        Err(Error::Cli(format!(
            "server refused ({} {code}): {desc}",
            self.status
        )))
    }
}

/// A client certificate and its key, PEM files.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Presents the configured certificate (if any) and records that the server asked for one,
/// so a handshake the server closes for lack of a certificate is reported as that rather
/// than as a broken pipe.
#[derive(Debug)]
struct ClientCertSlot {
    key: Option<Arc<rustls::sign::CertifiedKey>>,
    asked: Arc<AtomicBool>,
}

impl rustls::client::ResolvesClientCert for ClientCertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// What to say when the exchange with a server that asked for a certificate we do not have
/// failed at the TLS level.
const CERT_REQUIRED: &str = "the server requires a client certificate: --client-cert/--client-key";

impl Remote {
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        identity: Option<&ClientIdentity>,
    ) -> Result<Remote, Error> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(usage(&format!(
                "{url}: the server URL must start with https:// (or http://)"
            )));
        };
        let authority = rest.split('/').next().unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse().map_err(|_| usage(&format!("{url}: bad port")))?,
            ),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let asked_for_cert = Arc::new(AtomicBool::new(false));
        let tls = if tls {
            let ca =
                ca.ok_or_else(|| usage("--ca FILE is needed to trust the server's certificate"))?;
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let key = match identity {
                Some(id) => {
                    let chain = crate::tls::load_certs(&id.cert)?;
                    let der = crate::tls::load_key(&id.key)?;
                    let signing = provider.key_provider.load_private_key(der).map_err(|e| {
                        usage(&format!(
                            "{}: not a usable private key: {e}",
                            id.key.display()
                        ))
                    })?;
                    let certified = rustls::sign::CertifiedKey::new(chain, signing);
                    certified.keys_match().map_err(|e| {
                        usage(&format!(
                            "{} is not the key of {}: {e}",
                            id.key.display(),
                            id.cert.display()
                        ))
                    })?;
                    Some(Arc::new(certified))
                }
                None => None,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in crate::tls::load_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| usage(&format!("{}: {e}", ca.display())))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| usage(&format!("TLS setup: {e}")))?
                .with_root_certificates(roots)
                .with_client_cert_resolver(Arc::new(ClientCertSlot {
                    key,
                    asked: Arc::clone(&asked_for_cert),
                }));
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Remote {
            tls,
            asked_for_cert,
            has_identity: identity.is_some(),
            host,
            port,
            token: None,
        })
    }

    /// Gets an operator token with the client's secret (`client_secret_basic`).
    pub fn login(&mut self, id: &str, secret: &str) -> Result<(), Error> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        let auth = Zeroizing::new(format!("Basic {basic}"));
        let answer = self.send(
            "POST",
            "/oauth/token",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            b"grant_type=client_credentials",
        )?;
        let body = answer
            .ok()
            .map_err(|e| Error::Cli(format!("could not log in as {id:?}: {e}")))?;
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| usage("the token endpoint answered without an access_token"))?;
        self.token = Some(Zeroizing::new(token.to_owned()));
        Ok(())
    }

    /// A request with the operator token.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Result<Answer, Error> {
        let bearer = Zeroizing::new(format!(
            "Bearer {}",
            self.token.as_deref().map_or("", |t| t.as_str())
        ));
        let mut headers = vec![("Authorization", bearer.as_str())];
        headers.extend_from_slice(extra);
        let bytes = match body {
            Some(v) => {
                headers.push(("Content-Type", "application/json"));
                serde_json::to_vec(v).map_err(|e| Error::Io(std::io::Error::other(e)))?
            }
            None => Vec::new(),
        };
        self.send(method, path, &headers, &bytes)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, Error> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).map_err(|e| {
            usage(&format!(
                "cannot connect to {}:{}: {e}",
                self.host, self.port
            ))
        })?;
        tcp.set_read_timeout(Some(TIMEOUT))?;
        tcp.set_write_timeout(Some(TIMEOUT))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.host_header()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut raw = Vec::new();
        match &self.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| usage(&format!("server name {:?}: {e}", self.host)))?;
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| usage(&format!("TLS: {e}")))?;
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                self.asked_for_cert.store(false, Ordering::Relaxed);
                let exchanged = (|| {
                    stream.write_all(req.as_bytes())?;
                    stream.write_all(body)?;
                    stream.flush()?;
                    read_all(&mut stream, &mut raw)
                })();
                if let Err(e) = exchanged {
                    // In TLS 1.3 the client finishes its side before the server has checked
                    // the (missing) certificate; the refusal then shows as an alert, a reset
                    // or a broken pipe on the next write.
                    if !self.has_identity
                        && self.asked_for_cert.load(Ordering::Relaxed)
                        && raw.is_empty()
                    {
                        return Err(usage(CERT_REQUIRED));
                    }
                    return Err(e);
                }
            }
            None => {
                let mut stream = tcp;
                stream.write_all(req.as_bytes())?;
                stream.write_all(body)?;
                let read = read_all(&mut stream, &mut raw);
                // A TLS server answers plain text with an alert or handshake record (content
                // type 0x15/0x16), then may reset the connection.
                if matches!(raw.first(), Some(0x15 | 0x16)) {
                    return Err(usage(&format!(
                        "the server speaks HTTPS: use https://{} (with --ca)",
                        self.host_header()
                    )));
                }
                read?;
            }
        }
        parse_response(&raw)
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn read_all(stream: &mut impl std::io::Read, out: &mut Vec<u8>) -> Result<(), Error> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_RESPONSE {
                    return Err(usage("response too large"));
                }
            }
            // The server closes after `Connection: close`; some TLS stacks skip close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn parse_response(raw: &[u8]) -> Result<Answer, Error> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| usage("malformed HTTP response from the server"))?;
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| usage("malformed HTTP response head"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| usage("malformed HTTP status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = &raw[end + 4..];
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        body,
        headers,
    })
}

/// Prints `value` as JSON, or `human` as text.
pub fn print(json: bool, value: &Value, human: impl FnOnce(&Value) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        let text = human(value);
        if !text.is_empty() {
            println!("{}", text.trim_end());
        }
    }
}

/// A Unix time as RFC 3339 (UTC, seconds).
pub fn time(secs: u64) -> String {
    crate::clock::rfc3339(secs)
}

/// A JSON string member, or "".
pub fn s<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("")
}

/// `value` as one URL path segment: everything but unreserved characters percent-encoded, so
/// an id holding `/`, `%` or a space still names one resource (the server decodes it).
pub fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_and_errors_carry_the_description() {
        let raw = b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\r\n{\"error\":\"insufficient_scope\",\"error_description\":\"no\"}";
        let a = parse_response(raw).unwrap();
        assert_eq!(
            (a.status, a.header("content-type")),
            (403, Some("application/json"))
        );
        let err = a.ok().unwrap_err().to_string();
        assert!(
            err.contains("403 insufficient_scope") && err.contains("no"),
            "{err}"
        );
        assert!(parse_response(b"garbage").is_err());
        let ok = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(ok.ok().unwrap(), Value::Null);
    }

    #[test]
    fn urls_need_a_scheme_and_https_needs_a_ca() {
        assert!(
            Remote::new("127.0.0.1:8443", None, None)
                .unwrap_err()
                .to_string()
                .contains("https://")
        );
        assert!(
            Remote::new("https://127.0.0.1:8443", None, None)
                .unwrap_err()
                .to_string()
                .contains("--ca")
        );
        let r = Remote::new("http://[::1]:8080/x", None, None).unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 8080));
        let r = Remote::new("http://localhost", None, None).unwrap();
        assert_eq!((r.host.as_str(), r.port), ("localhost", 80));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("ss-1"), "ss-1");
        assert_eq!(segment("evil/x"), "evil%2Fx");
        assert_eq!(segment("a b%é"), "a%20b%25%C3%A9");
        assert_eq!(segment("ops@corp:1"), "ops%40corp%3A1");
    }
}
