//! Server settings: a TOML file, every key overridable by the flag of the same name.
//!
//! One struct, [`Settings`], is both the clap argument group and the TOML schema (kebab-case
//! keys, all optional), so a setting cannot exist in one and not the other. [`Settings::merge`]
//! lays flags over the file; [`Settings::resolve`] fills defaults and checks ranges, producing
//! the typed [`ServeSettings`] the server runs with.
//!
//! The operator sections (`[tokens]`, `[keys]`, `[agents]`, `[[tenants]]`, `[[profiles]]`,
//! `[[clients]]`) are not flags: [`AppConfig`] reads them and [`AppConfig::resolve`] checks
//! them into the [`AppSettings`] the application state is built with. `serve` reads the file
//! once ([`SettingsFile`]) for both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;
use crate::http::Limits;
use crate::tls::ClientAuthMode;

mod app;
pub use app::*;
mod etcd_tls;
pub use etcd_tls::{EtcdTls, EtcdTlsArgs};

/// Top-level TOML sections that belong to [`AppConfig`] (tokens, keys, agents, tenants,
/// profiles, operator clients), not to the server settings.
pub const APP_SECTIONS: [&str; 6] = ["tokens", "keys", "agents", "tenants", "profiles", "clients"];

/// Default listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// A duration written like `10s`, `500ms`, `2m` (humantime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One `--listen` value: `ADDR[,client-auth=MODE]`. Without a mode the listener follows
/// `--client-auth`; with one, it overrides it for that listener only, so agents without
/// certificates and certificate-only operators can have ports of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    pub client_auth: Option<ClientAuthMode>,
}

impl FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let addr = parts.next().unwrap_or("").trim();
        let addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an ADDRESS:PORT"))?;
        let mut client_auth = None;
        for opt in parts {
            match opt.trim().split_once('=') {
                Some(("client-auth", mode)) if client_auth.is_none() => {
                    let mode = <ClientAuthMode as clap::ValueEnum>::from_str(mode, true)
                        .map_err(|_| format!("client-auth={mode}: off, optional or required"))?;
                    client_auth = Some(mode);
                }
                _ => {
                    return Err(format!(
                        "{opt:?}: the only listener option is client-auth=MODE"
                    ));
                }
            }
        }
        Ok(ListenSpec { addr, client_auth })
    }
}

/// `listen = "ADDR"` or `listen = ["ADDR", "ADDR,client-auth=required"]`.
fn listen_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<ListenSpec>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match <OneOrMany as serde::Deserialize>::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    list.iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// Anyone who reaches the listener serving it.
    #[default]
    Public,
    /// Only an operator bearer token of the authority's own tenant with `metrics:read`.
    Operator,
}

/// Every server setting. In TOML the key is the flag name without `--`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Address and port to listen on [default: 127.0.0.1:8443; port 0 picks a free port].
    /// Repeatable; `ADDR,client-auth=MODE` gives that listener its own mutual-TLS mode, e.g.
    /// `--listen 0.0.0.0:8443 --listen 0.0.0.0:9443,client-auth=required`.
    #[arg(long, value_name = "ADDR[,client-auth=MODE]")]
    #[serde(deserialize_with = "listen_list")]
    pub listen: Option<Vec<ListenSpec>>,
    /// Storage engine: `redb` (the data directory's database file) or
    /// `etcd://HOST:PORT[,HOST:PORT...]`, authorities sharing one etcd cluster (needs a build
    /// with the cargo feature `etcd`) [default: redb].
    #[arg(long, value_name = "redb|etcd://HOST:PORT[,...]")]
    pub store: Option<crate::store::StoreEngine>,
    /// Cluster nodes (`--store etcd://…`) serve the token path only while they have proven
    /// within this bound that their copy of the store is current; otherwise they answer 503,
    /// so a revocation reaches every serving node within it. 250ms..=60s [default: 2s].
    #[arg(long, value_name = "DURATION")]
    pub cluster_freshness: Option<HumanDuration>,
    /// Most operations a cluster node puts in one etcd transaction: etcd's own
    /// `--max-txn-ops`, which must be raised first to raise this (bigger groups, faster bulk
    /// writes). 16..=65536 [default: 128, etcd's default].
    #[arg(long, value_name = "N")]
    pub cluster_max_txn_ops: Option<usize>,
    /// With `--store etcd://`: PEM CA certificate(s) etcd's server certificate chains to;
    /// every connection to etcd then uses TLS [default: plain gRPC].
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// With `--etcd-ca`: PEM client certificate for etcd's `--client-cert-auth` (with
    /// `--etcd-key`).
    #[arg(long, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// With `--etcd-cert`: its PEM private key.
    #[arg(long, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// Event loop threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Serve plain HTTP instead of HTTPS. Only for benchmarks and loopback tests: tokens and
    /// secrets cross the network in clear.
    #[arg(long, alias = "plain", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub insecure_plain_http: Option<bool>,
    /// Extra DNS names or IP addresses for the generated server certificate (repeatable)
    /// [default: localhost, 127.0.0.1, ::1 only]. Applied when the certificate is generated;
    /// names an existing certificate lacks are logged as a warning.
    #[arg(
        long = "server-name",
        visible_alias = "server-names",
        value_name = "NAME"
    )]
    #[serde(alias = "server-name")]
    pub server_names: Option<Vec<String>>,
    /// Server certificate chain (PEM, with --tls-key) or a PKCS#12 file (.pfx/.p12, key
    /// included; its password in --tls-password-file or LATCHKEY_TLS_PASSWORD) instead of the
    /// data directory's generated one. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for a PEM --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// File whose first line is the password of a PKCS#12 --tls-cert [default:
    /// LATCHKEY_TLS_PASSWORD, else none].
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        conflicts_with = "tls_key"
    )]
    pub tls_password_file: Option<PathBuf>,
    /// Ask clients for certificates (mutual TLS) [default: off].
    #[arg(long, value_enum, value_name = "MODE")]
    pub client_auth: Option<ClientAuthMode>,
    /// Extra trusted CA or client certificates (PEM) for mutual TLS, besides the data
    /// directory's CA (repeatable).
    #[arg(long = "client-ca", visible_alias = "client-cas", value_name = "FILE")]
    #[serde(alias = "client-ca")]
    pub client_cas: Option<Vec<PathBuf>>,
    /// Log format [default: text]. With json, every line on stderr is a JSON object and the
    /// ready line on stdout is `{"event":"listening","scheme","addr","url"}`.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `latchkey_authority=debug` [default: RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM: new connections
    /// stop, every request already received is answered (the last with `Connection: close`),
    /// idle connections close [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<HumanDuration>,
    /// Longest request line in bytes; longer gets 414 [default: 8192].
    #[arg(long, value_name = "BYTES")]
    pub max_request_line: Option<usize>,
    /// Largest request head in bytes; larger gets 431 [default: 16384].
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most header fields (at most 128); more gets 431 [default: 64].
    #[arg(long, value_name = "N")]
    pub max_headers: Option<usize>,
    /// Largest request body in bytes; larger gets 413 [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_body: Option<usize>,
    /// Time allowed from a request's first byte to the end of its head; then 408
    /// [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub request_head_timeout: Option<HumanDuration>,
    /// Slowest accepted body upload in bytes/s after the head timeout's grace period; slower
    /// gets 408 [default: 1024].
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub min_body_rate: Option<u64>,
    /// Longest time from the end of a request head to the end of its body, however fast it
    /// started; then 408 [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub body_timeout: Option<HumanDuration>,
    /// Bytes of request bodies all connections together may hold while the bodies are still
    /// arriving (a body that comes with its head does not count); beyond it 503 with
    /// Retry-After. At least --max-body [default: 33554432 (32 MiB)].
    #[arg(long, value_name = "BYTES")]
    pub max_body_buffer: Option<usize>,
    /// Longest wait for a client to read our answer before the connection is closed
    /// [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub write_timeout: Option<HumanDuration>,
    /// Longest pause between requests on a keep-alive connection [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<HumanDuration>,
    /// Longest TLS handshake, from the ClientHello [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub handshake_timeout: Option<HumanDuration>,
    /// Longest a new connection may stay silent (no ClientHello, or no first request);
    /// silent and idle connections are also the first closed when room is needed
    /// [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub hello_timeout: Option<HumanDuration>,
    /// Requests per connection before it is closed [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_requests_per_connection: Option<u64>,
    /// Open connections; when full, a new connection closes the oldest idle one, or is
    /// closed if none is idle. Lowered at start to fit the file-descriptor limit (raised to
    /// its hard limit first) [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Open connections from one source address (IPv6: one /64); more are closed at accept
    /// [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections_per_source: Option<usize>,
    /// Concurrent TLS handshakes; a connection takes a slot when its ClientHello arrives, and
    /// one that finds none is closed [default: 256].
    #[arg(long, value_name = "N")]
    pub max_tls_handshakes: Option<usize>,
    /// Requests parsed ahead of their answers on one connection [default: 32].
    #[arg(long, value_name = "N")]
    pub max_pipelined: Option<usize>,
    /// Who may read `/metrics`: `public`, or `operator` (a bearer token of the authority's
    /// own tenant with `metrics:read`) [default: public, as the default --listen is loopback].
    /// An internet-facing deployment should set this or --metrics-listen.
    #[arg(long, value_enum, value_name = "ACCESS")]
    pub metrics_access: Option<MetricsAccess>,
    /// Serve `/metrics` on this address (same TLS as --listen, one thread) instead of on
    /// --listen, e.g. on a private interface [default: on --listen].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Consecutive failed authentications of one client id (operator secret, agent
    /// assertion) after which its requests get 429 with Retry-After, unchecked, for 1 s
    /// doubling with each further failure up to --auth-backoff-max; a success resets it
    /// [default: 5].
    #[arg(long, value_name = "N")]
    pub auth_failure_limit: Option<u32>,
    /// The same per source address (IPv6: per /64), counting distinct client ids (and
    /// initial access tokens) that failed from it, so one client retrying behind a NAT does
    /// not lock out the others: failed client secrets, agent assertions for unknown clients or
    /// with bad signatures, refused initial access tokens; a success does not reset it
    /// [default: 30].
    #[arg(long, value_name = "N")]
    pub auth_source_failure_limit: Option<u32>,
    /// Longest backoff after failed authentications; failures are also forgotten this long
    /// after the last one (or after its backoff ends) [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub auth_backoff_max: Option<HumanDuration>,
    /// Client ids (and, separately, source addresses) whose failures are tracked (at least
    /// 16); when full, the one with the oldest failure is forgotten [default: 65536].
    #[arg(long, value_name = "N")]
    pub auth_failure_table: Option<usize>,
    /// How often refusals of unauthenticated requests (wrong client secrets, throttled
    /// guesses), counted in memory, are written to the audit log as one row per claimed client
    /// id, source address and error; also written at shutdown [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub audit_flush_interval: Option<HumanDuration>,
    /// Distinct (client id, source, error) keys counted per flush interval; refusals for
    /// further keys are audited together in one `*other*` row [default: 10000].
    #[arg(long, value_name = "N")]
    pub audit_refusal_keys: Option<usize>,
    /// Audit rows older than this many days are removed by the maintenance thread, oldest
    /// first; 0 keeps them [default: 90].
    #[arg(long, value_name = "DAYS")]
    pub audit_retention_days: Option<u64>,
    /// Most audit rows kept; beyond it the oldest are removed; 0: no limit [default: 1000000].
    #[arg(long, value_name = "N")]
    pub audit_max_rows: Option<u64>,
    /// Threads that serve heavy reads (listings, the CRL) and key work off the event loops
    /// [default: 2].
    #[arg(long, value_name = "N")]
    pub offload_threads: Option<usize>,
    /// Heavy requests that may wait for one of those threads; more are answered 503 with
    /// `Retry-After` [default: 64].
    #[arg(long, value_name = "N")]
    pub offload_queue: Option<usize>,
    /// With `--store etcd://`: the URL other nodes reach this one at, for the client-assertion
    /// checks they forward to it (`https://HOST:PORT`; its certificate must name HOST) [default:
    /// the listen address, unless that is a wildcard].
    #[arg(long, value_name = "URL")]
    pub cluster_advertise: Option<String>,
    /// With `--store etcd://`: threads forwarding client-assertion checks to their owner nodes
    /// [default: 4].
    #[arg(long, value_name = "N")]
    pub cluster_forward_threads: Option<usize>,
    /// With `--store etcd://`: checks that may wait for those threads; more are answered 503
    /// with `Retry-After` [default: 4096].
    #[arg(long, value_name = "N")]
    pub cluster_forward_queue: Option<usize>,
    /// With `--store etcd://`: deadline of one forwarded batch (connect, send, answer); an
    /// owner that misses it gets its checks answered 503 [default: 2s].
    #[arg(long, value_name = "DURATION")]
    pub cluster_forward_timeout: Option<HumanDuration>,
    /// With `--store etcd://`: TTL of this node's etcd lease: how long a node that stopped
    /// answering keeps its clients before they move [default: 5s, 2s to 60s].
    #[arg(long, value_name = "DURATION")]
    pub cluster_lease_ttl: Option<HumanDuration>,
}

/// The smallest `max-body` a node of a cluster accepts: its peers' batches of forwarded
/// checks stay under it.
pub const MIN_CLUSTER_MAX_BODY: usize = 64 * 1024;

/// Cluster-mode settings of one node (used with `--store etcd://` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub advertise: Option<String>,
    pub forward_threads: usize,
    pub forward_queue: usize,
    pub forward_timeout: Duration,
    pub lease_ttl: Duration,
}

/// A server certificate given as files instead of the data directory's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFiles {
    /// PEM chain and PEM private key.
    Pem { cert: PathBuf, key: PathBuf },
    /// PKCS#12 with its key; the password from `password_file`, else `LATCHKEY_TLS_PASSWORD`.
    Pkcs12 {
        file: PathBuf,
        password_file: Option<PathBuf>,
    },
}

/// A public URL as given (`--public-url`, `[tokens] public-url`): `http://` or `https://`,
/// a host, no query or fragment, at most 2048 bytes; a trailing `/` is dropped.
pub fn public_url(url: &str) -> Result<String, Error> {
    let bad = |why: &str| Err(Error::Config(format!("public-url {url:?}: {why}")));
    if url.len() > 2048 {
        return bad("longer than 2048 bytes");
    }
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return bad("must start with https:// or http://");
    };
    if rest.is_empty() || rest.starts_with('/') {
        return bad("has no host");
    }
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_control() || c == ' ') {
        return bad("must not hold a query, a fragment, spaces or control characters");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Settings after defaults and checks.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The first listener (its address is the one printed and used in metadata).
    pub listen: SocketAddr,
    pub store: crate::store::StoreEngine,
    /// The freshness bound of a cluster node.
    pub cluster_freshness: Duration,
    /// Most operations per etcd transaction.
    pub cluster_max_txn_ops: usize,
    /// How every etcd connection of the node is made.
    pub etcd_tls: EtcdTls,
    pub threads: usize,
    pub plain_http: bool,
    pub server_names: Vec<String>,
    pub tls_files: Option<TlsFiles>,
    /// The first listener's client-auth mode.
    pub client_auth: ClientAuthMode,
    /// Further listeners, each with its mode resolved.
    pub more_listeners: Vec<(SocketAddr, ClientAuthMode)>,
    pub client_cas: Vec<PathBuf>,
    pub log_format: LogFormat,
    /// Explicit log filter; `None` falls back to RUST_LOG, then `info`.
    pub log_level: Option<String>,
    pub drain_timeout: Duration,
    pub limits: Limits,
    pub metrics_access: MetricsAccess,
    /// A separate listener for `/metrics`; `None` serves it on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Backoff after failed authentications per client id.
    pub client_throttle: crate::api::throttle::ThrottleConfig,
    /// Backoff after failed authentications per source address.
    pub source_throttle: crate::api::throttle::ThrottleConfig,
    /// Refusal tallies and audit retention.
    pub audit: crate::refusal_audit::AuditPolicy,
    /// The off-loop pool for heavy reads.
    pub offload: crate::api::offload::OffloadConfig,
    pub cluster: ClusterSettings,
}

impl Settings {
    /// Reads the server settings of a TOML settings file (its top level).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        SettingsFile::read(path).map(|f| f.server)
    }

    /// `self` (flags) over `file`.
    pub fn merge(self, file: Settings) -> Settings {
        macro_rules! over {
            ($($f:ident),*) => { Settings { $($f: self.$f.or(file.$f)),* } };
        }
        over!(
            listen,
            store,
            cluster_freshness,
            cluster_max_txn_ops,
            etcd_ca,
            etcd_cert,
            etcd_key,
            threads,
            insecure_plain_http,
            server_names,
            tls_cert,
            tls_key,
            tls_password_file,
            client_auth,
            client_cas,
            log_format,
            log_level,
            drain_timeout,
            max_request_line,
            max_header_bytes,
            max_headers,
            max_body,
            request_head_timeout,
            min_body_rate,
            body_timeout,
            max_body_buffer,
            write_timeout,
            idle_timeout,
            handshake_timeout,
            hello_timeout,
            max_requests_per_connection,
            max_connections,
            max_connections_per_source,
            max_tls_handshakes,
            max_pipelined,
            metrics_access,
            metrics_listen,
            auth_failure_limit,
            auth_source_failure_limit,
            auth_backoff_max,
            auth_failure_table,
            audit_flush_interval,
            audit_refusal_keys,
            audit_retention_days,
            audit_max_rows,
            offload_threads,
            offload_queue,
            cluster_advertise,
            cluster_forward_threads,
            cluster_forward_queue,
            cluster_forward_timeout,
            cluster_lease_ttl
        )
    }

    /// Fills defaults and refuses values the server cannot run with.
    pub fn resolve(self) -> Result<ServeSettings, Error> {
        let d = Limits::default();
        let dur =
            |v: Option<HumanDuration>, default: Duration, name: &str| -> Result<Duration, Error> {
                let v = v.map_or(default, |h| h.0);
                if v.is_zero() {
                    return Err(Error::Config(format!("{name} must be greater than zero")));
                }
                Ok(v)
            };
        let positive = |v: Option<usize>, default: usize, name: &str| -> Result<usize, Error> {
            match v.unwrap_or(default) {
                0 => Err(Error::Config(format!("{name} must be greater than zero"))),
                n => Ok(n),
            }
        };
        let limits = Limits {
            max_request_line: positive(
                self.max_request_line,
                d.max_request_line,
                "max-request-line",
            )?,
            max_header_bytes: positive(
                self.max_header_bytes,
                d.max_header_bytes,
                "max-header-bytes",
            )?,
            max_headers: positive(self.max_headers, d.max_headers, "max-headers")?,
            max_body: self.max_body.unwrap_or(d.max_body),
            request_head_timeout: dur(
                self.request_head_timeout,
                d.request_head_timeout,
                "request-head-timeout",
            )?,
            min_body_rate: self.min_body_rate.unwrap_or(d.min_body_rate).max(1),
            body_timeout: dur(self.body_timeout, d.body_timeout, "body-timeout")?,
            max_body_buffer: positive(self.max_body_buffer, d.max_body_buffer, "max-body-buffer")?,
            write_timeout: dur(self.write_timeout, d.write_timeout, "write-timeout")?,
            idle_timeout: dur(self.idle_timeout, d.idle_timeout, "idle-timeout")?,
            handshake_timeout: dur(
                self.handshake_timeout,
                d.handshake_timeout,
                "handshake-timeout",
            )?,
            hello_timeout: dur(self.hello_timeout, d.hello_timeout, "hello-timeout")?,
            max_requests_per_connection: self
                .max_requests_per_connection
                .unwrap_or(d.max_requests_per_connection)
                .max(1),
            max_connections: positive(self.max_connections, d.max_connections, "max-connections")?,
            max_connections_per_source: positive(
                self.max_connections_per_source,
                d.max_connections_per_source,
                "max-connections-per-source",
            )?,
            max_tls_handshakes: positive(
                self.max_tls_handshakes,
                d.max_tls_handshakes,
                "max-tls-handshakes",
            )?,
            max_pipelined: positive(self.max_pipelined, d.max_pipelined, "max-pipelined")?,
        };
        if limits.max_headers > crate::http::request::MAX_HEADERS_CAP {
            return Err(Error::Config(format!(
                "max-headers must be at most {}",
                crate::http::request::MAX_HEADERS_CAP
            )));
        }
        if limits.max_body_buffer < limits.max_body {
            return Err(Error::Config(
                "max-body-buffer must be at least max-body".into(),
            ));
        }
        if limits.max_request_line > limits.max_header_bytes {
            return Err(Error::Config(
                "max-request-line must not exceed max-header-bytes".into(),
            ));
        }
        let td = crate::api::throttle::ThrottleConfig::CLIENT_DEFAULT;
        let client_throttle = crate::api::throttle::ThrottleConfig {
            failures: match self.auth_failure_limit.unwrap_or(td.failures) {
                0 => {
                    return Err(Error::Config(
                        "auth-failure-limit must be greater than zero".into(),
                    ));
                }
                n => n,
            },
            max_backoff: dur(self.auth_backoff_max, td.max_backoff, "auth-backoff-max")?
                .max(Duration::from_secs(1)),
            entries: match self.auth_failure_table.unwrap_or(td.entries) {
                n if n < 16 => {
                    return Err(Error::Config(
                        "auth-failure-table must be at least 16".into(),
                    ));
                }
                n => n,
            },
        };
        let source_throttle = crate::api::throttle::ThrottleConfig {
            failures: match self
                .auth_source_failure_limit
                .unwrap_or(crate::api::throttle::ThrottleConfig::SOURCE_DEFAULT.failures)
            {
                0 => {
                    return Err(Error::Config(
                        "auth-source-failure-limit must be greater than zero".into(),
                    ));
                }
                n => n,
            },
            ..client_throttle
        };
        let ad = crate::refusal_audit::AuditPolicy::DEFAULT;
        let audit = crate::refusal_audit::AuditPolicy {
            flush_interval: dur(
                self.audit_flush_interval,
                ad.flush_interval,
                "audit-flush-interval",
            )?,
            max_keys: positive(self.audit_refusal_keys, ad.max_keys, "audit-refusal-keys")?,
            retention_days: self.audit_retention_days.unwrap_or(ad.retention_days),
            max_rows: self.audit_max_rows.unwrap_or(ad.max_rows),
            prune_batch: ad.prune_batch,
        };
        let od = crate::api::offload::OffloadConfig::default();
        let offload = crate::api::offload::OffloadConfig {
            threads: self.offload_threads.unwrap_or(od.threads),
            queue: self.offload_queue.unwrap_or(od.queue),
        };
        if !(1..=256).contains(&offload.threads) || offload.queue > 1 << 20 {
            return Err(Error::Config(
                "offload-threads must be between 1 and 256, offload-queue at most 1048576".into(),
            ));
        }
        let cluster = ClusterSettings {
            advertise: self.cluster_advertise,
            forward_threads: self.cluster_forward_threads.unwrap_or(4),
            forward_queue: self.cluster_forward_queue.unwrap_or(4096),
            forward_timeout: dur(
                self.cluster_forward_timeout,
                Duration::from_secs(2),
                "cluster-forward-timeout",
            )?,
            lease_ttl: dur(
                self.cluster_lease_ttl,
                Duration::from_secs(5),
                "cluster-lease-ttl",
            )?,
        };
        if !(1..=256).contains(&cluster.forward_threads)
            || !(1..=1 << 20).contains(&cluster.forward_queue)
            || !(Duration::from_secs(2)..=Duration::from_secs(60)).contains(&cluster.lease_ttl)
            || cluster.forward_timeout.is_zero()
            || cluster.forward_timeout > Duration::from_secs(60)
        {
            return Err(Error::Config(
                "cluster-forward-threads must be between 1 and 256, cluster-forward-queue \
                 between 1 and 1048576, cluster-forward-timeout up to 60s and \
                 cluster-lease-ttl between 2s and 60s"
                    .into(),
            ));
        }
        let threads = match self.threads {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if !(1..=1024).contains(&threads) {
            return Err(Error::Config("threads must be between 1 and 1024".into()));
        }
        let default_listen: SocketAddr = DEFAULT_LISTEN
            .parse()
            .map_err(|_| Error::Config("default listen address".into()))?;
        let client_auth = self.client_auth.unwrap_or_default();
        let mut listeners = self
            .listen
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l.addr, l.client_auth.unwrap_or(client_auth)));
        let (listen, first_auth) = listeners.next().unwrap_or((default_listen, client_auth));
        let more_listeners: Vec<_> = listeners.collect();
        let store = self.store.unwrap_or_default();
        store.check_built().map_err(Error::Config)?;
        if matches!(store, crate::store::StoreEngine::Etcd { .. })
            && limits.max_body < MIN_CLUSTER_MAX_BODY
        {
            return Err(Error::Config(format!(
                "max-body must be at least {MIN_CLUSTER_MAX_BODY} on a cluster: nodes send each \
                 other batches of client-assertion checks up to that size"
            )));
        }
        let etcd_tls = EtcdTls::load(
            self.etcd_ca.as_deref(),
            self.etcd_cert.as_deref(),
            self.etcd_key.as_deref(),
        )
        .map_err(Error::Config)?;
        if etcd_tls.is_tls() && !matches!(store, crate::store::StoreEngine::Etcd { .. }) {
            return Err(Error::Config("etcd-ca needs --store etcd://".into()));
        }
        let cluster_freshness = dur(
            self.cluster_freshness,
            Duration::from_secs(2),
            "cluster-freshness",
        )?;
        if !(Duration::from_millis(250)..=Duration::from_secs(60)).contains(&cluster_freshness) {
            return Err(Error::Config(
                "cluster-freshness must be between 250ms and 60s".into(),
            ));
        }
        let cluster_max_txn_ops = self.cluster_max_txn_ops.unwrap_or(128);
        if !(16..=65536).contains(&cluster_max_txn_ops) {
            return Err(Error::Config(
                "cluster-max-txn-ops must be between 16 and 65536".into(),
            ));
        }
        Ok(ServeSettings {
            listen,
            store,
            cluster_freshness,
            cluster_max_txn_ops,
            etcd_tls,
            more_listeners,
            threads,
            plain_http: self.insecure_plain_http.unwrap_or(false),
            server_names: self.server_names.unwrap_or_default(),
            tls_files: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles::Pem { cert, key }),
                (Some(file), None) => Some(TlsFiles::Pkcs12 {
                    file,
                    password_file: self.tls_password_file,
                }),
                (None, Some(_)) => {
                    return Err(Error::Config("tls-key needs tls-cert".into()));
                }
                (None, None) => None,
            },
            client_auth: first_auth,
            client_cas: self.client_cas.unwrap_or_default(),
            log_format: self.log_format.unwrap_or_default(),
            log_level: self.log_level,
            drain_timeout: dur(self.drain_timeout, Duration::from_secs(10), "drain-timeout")?,
            limits,
            metrics_access: self.metrics_access.unwrap_or_default(),
            metrics_listen: self.metrics_listen,
            client_throttle,
            audit,
            source_throttle,
            offload,
            cluster,
        })
    }
}

/// A settings file read once: the server settings of its top level, and the operator
/// sections, checked by [`SettingsFile::app_settings`] when the server is ready to report a
/// mistake in its log format (with line and column, as TOML errors give them).
#[derive(Debug, Clone, Default)]
pub struct SettingsFile {
    pub server: Settings,
    text: String,
    path: PathBuf,
}

impl SettingsFile {
    /// Reads `path` and its server settings.
    pub fn read(path: &Path) -> Result<SettingsFile, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let err = |e: toml::de::Error| Error::Config(format!("{}: {e}", path.display()));
        let mut table: toml::Table = toml::from_str(&text).map_err(err)?;
        // The operator sections are the application's: `app_settings` reads them.
        for section in APP_SECTIONS {
            table.remove(section);
        }
        Ok(SettingsFile {
            server: table.try_into().map_err(err)?,
            text,
            path: path.to_owned(),
        })
    }

    /// The operator sections, checked, with defaults filled in.
    pub fn app_settings(&self) -> Result<AppSettings, Error> {
        AppConfig::from_toml(&self.text)
            .map_err(|e| Error::Config(format!("{}: {e}", self.path.display())))?
            .resolve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_settings_have_defaults_and_bounds() {
        let c = Settings::default().resolve().unwrap().cluster;
        assert_eq!(
            c,
            ClusterSettings {
                advertise: None,
                forward_threads: 4,
                forward_queue: 4096,
                forward_timeout: Duration::from_secs(2),
                lease_ttl: Duration::from_secs(5),
            }
        );
        let bad = |s: Settings| {
            let e = s.resolve().unwrap_err().to_string();
            assert!(e.contains("cluster-"), "{e}");
        };
        bad(Settings {
            cluster_lease_ttl: Some(HumanDuration(Duration::from_secs(1))),
            ..Settings::default()
        });
        bad(Settings {
            cluster_forward_queue: Some(0),
            ..Settings::default()
        });
        bad(Settings {
            cluster_forward_threads: Some(257),
            ..Settings::default()
        });
        bad(Settings {
            cluster_forward_timeout: Some(HumanDuration(Duration::from_secs(61))),
            ..Settings::default()
        });
        // Peers' batches must fit a cluster node's body limit.
        #[cfg(feature = "etcd")]
        {
            let etcd = Some(crate::store::StoreEngine::Etcd {
                endpoints: vec!["127.0.0.1:2379".into()],
            });
            let e = Settings {
                store: etcd.clone(),
                max_body: Some(MIN_CLUSTER_MAX_BODY - 1),
                ..Settings::default()
            }
            .resolve()
            .unwrap_err();
            assert!(e.to_string().contains("max-body must be at least"), "{e}");
            assert!(
                Settings {
                    store: etcd,
                    max_body: Some(MIN_CLUSTER_MAX_BODY),
                    ..Settings::default()
                }
                .resolve()
                .is_ok()
            );
        }
    }

    #[test]
    fn public_urls_are_checked_and_lose_a_trailing_slash() {
        assert_eq!(
            public_url("https://auth.example/").unwrap(),
            "https://auth.example"
        );
        assert_eq!(
            public_url("http://10.0.0.1:8443").unwrap(),
            "http://10.0.0.1:8443"
        );
        for bad in [
            "auth.example",
            "ftp://x",
            "https://",
            "https:///p",
            "https://a?x=1",
            "https://a#f",
            "https://a b",
        ] {
            assert!(public_url(bad).is_err(), "{bad}");
        }
    }

    /// List settings are plural in the file and singular as repeatable flags; each accepts
    /// the other spelling, so an operator's guess from either side works.
    #[test]
    fn list_settings_take_either_spelling() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            s: Settings,
        }
        for toml_text in [
            "server-names = [\"a.example\"]\nclient-cas = [\"ca.pem\"]",
            "server-name = [\"a.example\"]\nclient-ca = [\"ca.pem\"]",
        ] {
            let s: Settings = toml::from_str(toml_text).unwrap();
            assert_eq!(
                s.server_names,
                Some(vec!["a.example".to_owned()]),
                "{toml_text}"
            );
            assert_eq!(
                s.client_cas,
                Some(vec![PathBuf::from("ca.pem")]),
                "{toml_text}"
            );
        }
        for flags in [
            ["x", "--server-name", "a.example", "--client-ca", "ca.pem"],
            ["x", "--server-names", "a.example", "--client-cas", "ca.pem"],
        ] {
            let s = Cli::try_parse_from(flags).unwrap().s;
            assert_eq!(
                s.server_names,
                Some(vec!["a.example".to_owned()]),
                "{flags:?}"
            );
            assert_eq!(
                s.client_cas,
                Some(vec![PathBuf::from("ca.pem")]),
                "{flags:?}"
            );
        }
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: Settings = toml::from_str(
            "listen = \"0.0.0.0:9000\"\nidle-timeout = \"5s\"\nmax-body = 10\nclient-auth = \"optional\"\n",
        )
        .unwrap();
        let flags = Settings {
            idle_timeout: Some("2s".parse().unwrap()),
            ..Settings::default()
        };
        let s = flags.merge(file).resolve().unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(s.limits.idle_timeout, Duration::from_secs(2));
        assert_eq!(s.limits.max_body, 10);
        assert_eq!(s.client_auth, ClientAuthMode::Optional);
        assert_eq!(s.limits.max_headers, Limits::default().max_headers);
        assert!(!s.plain_http);
        assert_eq!(
            (s.metrics_access, s.metrics_listen),
            (MetricsAccess::Public, None)
        );
        let file: Settings =
            toml::from_str("metrics-access = \"operator\"\nmetrics-listen = \"127.0.0.1:9100\"\n")
                .unwrap();
        let s = Settings::default().merge(file).resolve().unwrap();
        assert_eq!(s.metrics_access, MetricsAccess::Operator);
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(toml::from_str::<Settings>("metrics-access = \"everyone\"").is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(toml::from_str::<Settings>("no-such-key = 1").is_err());
        assert!(toml::from_str::<Settings>("idle-timeout = \"soon\"").is_err());
        let zero = Settings {
            idle_timeout: Some("0s".parse().unwrap()),
            ..Settings::default()
        };
        assert!(zero.resolve().is_err());
        let many = Settings {
            max_headers: Some(1000),
            ..Settings::default()
        };
        assert!(many.resolve().is_err());
        let budget_below_one_body = Settings {
            max_body: Some(1000),
            max_body_buffer: Some(999),
            ..Settings::default()
        };
        assert!(budget_below_one_body.resolve().is_err());
    }

    #[test]
    fn abuse_limits_have_bounded_documented_defaults() {
        let s = Settings::default().resolve().unwrap();
        let l = &s.limits;
        assert_eq!(l.body_timeout, Duration::from_secs(30));
        assert_eq!(l.hello_timeout, Duration::from_secs(5));
        assert_eq!(l.max_body_buffer, 32 * 1024 * 1024);
        assert_eq!(l.max_connections_per_source, 1024);
        // The load generator and the benchmark scripts open at most 64 connections from one
        // address; the per-source default must never throttle them.
        assert!(l.max_connections_per_source >= 64);
        let file: Settings = toml::from_str(
            "body-timeout = \"2s\"\nhello-timeout = \"1s\"\nmax-body-buffer = 2000000\nmax-connections-per-source = 8\n",
        )
        .unwrap();
        let l = file.resolve().unwrap().limits;
        assert_eq!(
            (
                l.body_timeout,
                l.hello_timeout,
                l.max_body_buffer,
                l.max_connections_per_source
            ),
            (Duration::from_secs(2), Duration::from_secs(1), 2_000_000, 8)
        );
    }

    /// The names a `deny_unknown_fields` struct accepts, from serde's own "expected one of"
    /// list when `text` adds the unknown key `zz-unknown`.
    fn accepted<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> Vec<String> {
        let err = toml::from_str::<T>(text).unwrap_err().to_string();
        let (_, expected) = err.split_once("expected").expect(&err);
        let names: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert!(!names.is_empty(), "{err}");
        names
    }

    #[test]
    fn every_setting_is_documented() {
        use clap::Args as _;
        const DOC: &str = include_str!("../../../docs/configuration.md");
        // The doc's sections, by heading.
        let section = |heading: &str| -> &str {
            let start = DOC
                .find(&format!("## {heading}\n"))
                .unwrap_or_else(|| panic!("docs/configuration.md has no `## {heading}`"));
            let rest = &DOC[start + 3..];
            rest.find("\n## ").map_or(rest, |end| &rest[..end])
        };
        // The key in the first cell of each table row.
        let keys = |text: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix("| `"))
                .filter_map(|l| l.split('`').next())
                .map(str::to_owned)
                .collect()
        };
        let sections: [(&str, Vec<String>); 7] = [
            (
                "Server settings (top level)",
                accepted::<Settings>("zz-unknown = 1"),
            ),
            (
                "`[tokens]`",
                accepted::<AppConfig>("[tokens]\nzz-unknown = 1"),
            ),
            ("`[keys]`", accepted::<AppConfig>("[keys]\nzz-unknown = 1")),
            (
                "`[agents]`",
                accepted::<AppConfig>("[agents]\nzz-unknown = 1"),
            ),
            (
                "`[[tenants]]`",
                accepted::<AppConfig>("[[tenants]]\nid = \"a\"\nzz-unknown = 1"),
            ),
            (
                "`[[profiles]]`",
                accepted::<AppConfig>(
                    "[[profiles]]\nname = \"a\"\npermissions = []\nzz-unknown = 1",
                ),
            ),
            (
                "`[[clients]]`",
                accepted::<AppConfig>(
                    "[[clients]]\nidentifier = \"a\"\nhashed-secret = \"x\"\nzz-unknown = 1",
                ),
            ),
        ];
        for (heading, names) in &sections {
            let text = section(heading);
            for name in names {
                assert!(
                    text.contains(&format!("`{name}`")),
                    "{heading}: `{name}` is accepted but not documented"
                );
            }
            for key in keys(text) {
                assert!(
                    names.contains(&key),
                    "{heading}: `{key}` is documented but not accepted ({names:?})"
                );
            }
        }
        // Every section the file may hold is one of the documented ones.
        for name in APP_SECTIONS {
            assert!(
                DOC.contains(&format!("`[{name}]")) || DOC.contains(&format!("`[[{name}]]")),
                "section {name}"
            );
        }
        // Flags: every `serve` flag is documented, every documented flag exists.
        let cmd = crate::cmd::serve::ServeArgs::augment_args(clap::Command::new("serve"));
        let longs: Vec<String> = cmd
            .get_arguments()
            .flat_map(|a| {
                a.get_long()
                    .into_iter()
                    .chain(a.get_visible_aliases().into_iter().flatten())
            })
            .map(|l| format!("--{l}"))
            .collect();
        for long in &longs {
            assert!(
                DOC.contains(&format!("`{long}`")),
                "{long} is not documented"
            );
        }
        for piece in DOC.split("`--").skip(1) {
            let flag: String = piece
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            assert!(
                longs.contains(&format!("--{flag}")),
                "--{flag} is documented but `serve` has no such flag"
            );
        }
    }

    #[test]
    fn listeners_each_take_their_own_client_auth_mode() {
        let s: Settings = toml::from_str(
            "client-auth = \"optional\"\nlisten = [\"0.0.0.0:8443\", \"0.0.0.0:9443,client-auth=required\"]\n",
        )
        .unwrap();
        let s = s.resolve().unwrap();
        assert_eq!(
            (s.listen, s.client_auth),
            ("0.0.0.0:8443".parse().unwrap(), ClientAuthMode::Optional)
        );
        assert_eq!(
            s.more_listeners,
            vec![("0.0.0.0:9443".parse().unwrap(), ClientAuthMode::Required)]
        );
        // One address as before; the default still listens on loopback without mTLS.
        let one: Settings = toml::from_str("listen = \"127.0.0.1:1\"\n").unwrap();
        let one = one.resolve().unwrap();
        assert!(one.more_listeners.is_empty());
        let d = Settings::default().resolve().unwrap();
        assert_eq!(
            (d.listen.to_string().as_str(), d.client_auth),
            (DEFAULT_LISTEN, ClientAuthMode::Off)
        );
        for bad in [
            "0.0.0.0:1,client-auth=sometimes",
            "0.0.0.0:1,tls=off",
            "nowhere",
            "0.0.0.0:1,client-auth=off,client-auth=required",
        ] {
            assert!(bad.parse::<ListenSpec>().is_err(), "{bad}");
        }
    }
}
