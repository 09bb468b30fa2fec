//! `latchkey serve`: open (or create) the data directory and run the HTTPS server until
//! SIGINT/SIGTERM.
//!
//! Order matters: settings and logging first, then the listening sockets (so a taken address
//! creates nothing), then the data directory (store, certificates), then the router, then
//! signal handlers, and only then the one
//! ready line on stdout (`latchkey listening on https://ADDR`; with `--log-format json` the
//! object `{"event":"listening","scheme","addr","url"}`), which tests and scripts wait for. On a signal the loops stop accepting, drain in-flight requests (bounded by
//! `--drain-timeout`), and the store is flushed and closed before exit.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::app::{App, AppSettings, Parts};
use crate::config::{LogFormat, ServeSettings, Settings, SettingsFile, TlsFiles};
use crate::error::Error;
use crate::http::{Metrics, Router, Server, ServerConfig};
use crate::pki::{TrustConfig, TrustState};
use crate::store::{MasterKey, Store, StoreOptions};
use crate::tls::{self, ClientAuthMode, Created, TrustStore};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// `latchkey serve` arguments. Every setting can also be set in the TOML file (same names).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Data directory: database, master key, certificates. Created on first run.
    #[arg(long, value_name = "DIR", default_value = "latchkey-data")]
    pub data_dir: PathBuf,
    /// TOML settings file [default: DIR/latchkey.toml in --data-dir, if it exists]. Besides
    /// the server settings below it holds `[tokens]`, `[keys]`, `[[tenants]]`, `[[profiles]]`,
    /// `[[clients]]` and `[agents]`: `rotation-grace` (how long a rotation's replaced RAT,
    /// secret and keys stay usable until the agent first uses its new ones, so a lost answer
    /// can be fetched again; default 6h, "0s" off) and `datasource-config-max-bytes` (largest
    /// dataSourceConfiguration; default 65536).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The URL clients reach the authority at (`[tokens] public-url`, which this overrides):
    /// the `baseUrl` of boarding configurations, the metadata, the tokens' audience. Every
    /// node of a cluster behind one load balancer takes the same [default: the listen
    /// address].
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub passphrase: super::passphrase::PassphraseArgs,
    #[command(flatten)]
    pub settings: Settings,
}

/// Everything the request handlers share: the application state (store, keys, revocations,
/// settings, mutual-TLS trust).
pub type State = App;

/// Runs the server; a failure is reported on stderr in the log format (with `--log-format
/// json`, every line on stderr is a JSON object).
pub fn main(args: ServeArgs) -> ExitCode {
    let mut json = args.settings.log_format == Some(LogFormat::Json);
    match run(args, &mut json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json && tracing::dispatcher::has_been_set() => {
            tracing::error!(error = %e, "latchkey serve failed");
            ExitCode::FAILURE
        }
        Err(e) if json => {
            // Logging is not set up yet: the same shape as the subscriber's events.
            let line = serde_json::json!({
                "level": "ERROR",
                "fields": { "message": "latchkey serve failed", "error": e.to_string() },
                "target": "latchkey",
            });
            eprintln!("{line}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("latchkey: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--store etcd://…`: opens this node of the cluster (see `Store::open_cluster`: the
/// cluster's meta claimed with `DIR/master.key`, the mirror caught up); `None` for redb. A
/// build without the feature refused the setting when it was resolved.
fn open_cluster(
    settings: &ServeSettings,
    data_dir: &Path,
    passphrase: &super::passphrase::PassphraseArgs,
) -> Result<Option<ClusterNode>, Error> {
    let crate::store::StoreEngine::Etcd { endpoints } = &settings.store else {
        return Ok(None);
    };
    #[cfg(feature = "etcd")]
    {
        use crate::store::etcd::{EngineSettings, MetaClaim};
        let started = std::time::Instant::now();
        let (store, claim, cluster) = Store::open_cluster(
            data_dir,
            StoreOptions {
                key: passphrase.key_options()?,
                ..StoreOptions::default()
            },
            endpoints,
            EngineSettings {
                freshness: settings.cluster_freshness,
                max_txn_ops: settings.cluster_max_txn_ops,
                tls: settings.etcd_tls.clone(),
                ..EngineSettings::default()
            },
            CLUSTER_CATCH_UP,
        )?;
        match claim {
            MetaClaim::Initialised => tracing::info!("initialised the empty etcd cluster's meta"),
            MetaClaim::Joined => tracing::info!("the etcd cluster's master key id is this node's"),
        }
        tracing::info!(
            endpoints = %endpoints.join(","),
            ms = started.elapsed().as_millis() as u64,
            "caught up with the cluster"
        );
        let lock = cluster.bootstrap_lock(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(90),
        )?;
        // Whatever the node that held the lock before created is now visible here.
        store.wait_current(CLUSTER_CATCH_UP)?;
        Ok(Some(ClusterNode {
            store,
            lock: Some(lock),
        }))
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = (data_dir, passphrase);
        Err(Error::Config(format!(
            "store etcd://{}: this latchkey was built without the etcd engine",
            endpoints.join(",")
        )))
    }
}

/// A cluster node's store, and the bootstrap lock it holds until its first-run steps are done.
struct ClusterNode {
    store: Store,
    #[cfg(feature = "etcd")]
    lock: Option<crate::store::etcd::BootstrapLock>,
}

/// What a cluster node holds while it runs its first-run steps.
#[cfg(feature = "etcd")]
type BootstrapLock = crate::store::etcd::BootstrapLock;
#[cfg(not(feature = "etcd"))]
type BootstrapLock = std::convert::Infallible;

/// Lets another node run its first-run steps.
fn release(_lock: Option<BootstrapLock>) {}

impl ClusterNode {
    fn take_lock(&mut self) -> Option<BootstrapLock> {
        #[cfg(feature = "etcd")]
        return self.lock.take();
        #[cfg(not(feature = "etcd"))]
        None
    }
}

/// The data directory's CA, made the cluster's: under the bootstrap lock, so one node creates
/// it and every other node takes it (see `store::etcd::files`). Without a cluster, the data
/// directory's own.
fn own_certificates(
    data_dir: &Path,
    settings: &ServeSettings,
    key: &MasterKey,
    lock: Option<&BootstrapLock>,
) -> Result<OwnCa, Error> {
    let Some(lock) = lock else {
        return ensure_own_certificates(data_dir, settings, key);
    };
    #[cfg(feature = "etcd")]
    {
        use crate::store::etcd::files::{self, CaSync, Publish};
        let cluster = lock.cluster();
        let synced = files::sync_ca(cluster, data_dir)?;
        let ca = ensure_own_certificates(data_dir, settings, key)?;
        if synced != CaSync::Absent {
            return Ok(ca);
        }
        match files::publish_ca(cluster, data_dir)? {
            Publish::Published | Publish::Same => Ok(ca),
            Publish::Lost(winner) => {
                files::install_ca(data_dir, &winner)?;
                ensure_own_certificates(data_dir, settings, key)
            }
        }
    }
    #[cfg(not(feature = "etcd"))]
    match *lock {}
}

/// How long a cluster node may take to load or catch up its mirror before `serve` gives up.
#[cfg(feature = "etcd")]
const CLUSTER_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(120);

/// Has a cluster node's key ring and trust follow what other nodes write.
fn follow_cluster(state: &Arc<App>) {
    #[cfg(feature = "etcd")]
    {
        let weak = Arc::downgrade(state);
        state
            .store
            .set_change_listener(Arc::new(move |changed: crate::store::etcd::Changed| {
                if let Some(app) = weak.upgrade() {
                    app.follow_cluster_change(changed.keys, changed.trust, &changed.revoked);
                }
            }));
        // Changes applied before the listener was set.
        state.follow_cluster_change(true, true, &[]);
        if let Err(e) = state.reload_revocations() {
            tracing::error!(error = %e, "could not reload revocations");
        }
    }
    #[cfg(not(feature = "etcd"))]
    let _ = state;
}

/// `json` becomes true as soon as the settings (flags or file) ask for JSON logs.
fn run(args: ServeArgs, json: &mut bool) -> Result<(), Error> {
    let config_path = args.config.clone().or_else(|| {
        let default = args.data_dir.join("latchkey.toml");
        default.is_file().then_some(default)
    });
    let file = match &config_path {
        Some(path) => SettingsFile::read(path)?,
        None => SettingsFile::default(),
    };
    let settings = args.settings.merge(file.server.clone()).resolve()?;
    *json = settings.log_format == LogFormat::Json;
    let json = *json;
    init_logging(&settings)?;
    // Before anything is created: a taken address must not leave a fresh data directory behind.
    let listener = listen(settings.listen)?;
    let metrics_listener = settings.metrics_listen.map(listen).transpose()?;
    let more_listeners = settings
        .more_listeners
        .iter()
        .map(|(addr, _)| listen(*addr))
        .collect::<Result<Vec<_>, _>>()?;

    let mut cluster = open_cluster(&settings, &args.data_dir, &args.passphrase)?;
    let clustered = cluster.is_some();
    let bootstrap_lock = cluster.as_mut().and_then(ClusterNode::take_lock);

    let metrics = Arc::new(Metrics::new());
    let mut app_settings = AppSettings {
        client_throttle: settings.client_throttle,
        source_throttle: settings.source_throttle,
        audit: settings.audit,
        offload: settings.offload,
        ..file.app_settings()?
    };
    if let Some(url) = &args.public_url {
        app_settings.public_url = Some(crate::config::public_url(url)?);
    }
    // A rotation publishes the key first and activates it later: every node must have the
    // published key before any node signs with it, so the pre-publication covers the bound.
    if clustered
        && app_settings.key_prepublication != 0
        && u128::from(app_settings.key_prepublication) * 1000
            < settings.cluster_freshness.as_millis()
    {
        return Err(Error::Config(format!(
            "[keys] pre-publication ({} s) must be at least cluster-freshness ({} ms) on a \
             cluster",
            app_settings.key_prepublication,
            settings.cluster_freshness.as_millis()
        )));
    }
    let store = match cluster {
        Some(node) => node.store,
        None => Store::open_or_create(
            &args.data_dir,
            StoreOptions {
                key: args.passphrase.key_options()?,
                ..StoreOptions::default()
            },
        )?,
    };
    // Earlier releases kept the TLS private keys in clear; seal them whatever this start serves.
    let sealed = tls::CertFiles::in_dir(&args.data_dir).seal_plain_keys(store.master_key())?;
    if !sealed.is_empty() {
        tracing::info!(files = ?sealed, "sealed plain private keys under the master key and removed them");
    }
    let admin = args.data_dir.join(crate::app::ADMIN_CLIENT_FILE);
    if crate::credentials::seal_plain(&admin, store.master_key())? {
        tracing::info!(file = %admin.display(), "sealed the admin client secret under the master key");
    }
    let own_ca = match (&settings.tls_files, settings.plain_http) {
        (None, false) => Some(own_certificates(
            &args.data_dir,
            &settings,
            store.master_key(),
            bootstrap_lock.as_ref(),
        )?),
        _ => None,
    };
    let (tls, trust, more_tls, server_cert) = if settings.plain_http {
        tracing::warn!(
            "serving plain HTTP: credentials cross the network unencrypted (use only on loopback)"
        );
        (None, None, vec![None; settings.more_listeners.len()], None)
    } else {
        let (config, trust, more, cert) =
            tls_config(&args.data_dir, &settings, store.master_key())?;
        (
            Some(config),
            trust,
            more.into_iter().map(Some).collect(),
            Some(cert),
        )
    };
    // The store's trust store (imports, revocations) on top of the files.
    let file_anchors = match &trust {
        Some(_) => TrustState::file_anchors(&args.data_dir, &settings.client_cas)?,
        None => Vec::new(),
    };
    // The server certificate's expiry in /metrics is read from a PEM chain.
    let server_cert_file = match &settings.tls_files {
        Some(TlsFiles::Pem { cert, .. }) => Some(cert.clone()),
        None if !settings.plain_http => {
            Some(crate::tls::CertFiles::in_dir(&args.data_dir).server_cert)
        }
        _ => None,
    };
    let trust = TrustState::new(TrustConfig {
        tls: trust,
        file_anchors,
        server_cert: server_cert_file,
    });
    let app = open_state(store, app_settings, trust, metrics.clone(), json)?;
    if let Some(ca) = &own_ca {
        announce_ca(ca, &settings);
    }
    // The first-run steps are done: another node may run its own.
    release(bootstrap_lock);
    let state = Arc::new(app);
    if clustered {
        follow_cluster(&state);
    }
    // Cluster mode: this node's share of the client-assertion checks (before the routes, which
    // then include the peer endpoint).
    #[cfg(feature = "etcd")]
    let membership =
        crate::cluster::join(&state, &settings, &args.data_dir, listener.local_addr()?)?;
    let router = router_for(&state, &settings);

    let mut limits = settings.limits.clone();
    limits.max_connections =
        crate::http::admission::fit_connections_to_fd_limit(limits.max_connections);
    // `/metrics` on its own listener: same TLS, one thread, its own request counters (the
    // page it serves is the main server's).
    let metrics_server = match metrics_listener {
        Some(listener) => {
            let mut r = Router::new(crate::error::refusal);
            crate::api::metrics::route(&mut r, &state, settings.metrics_access);
            let config = ServerConfig {
                threads: 1,
                limits: settings.limits.clone(),
                tls: tls.clone(),
                drain_timeout: settings.drain_timeout,
            };
            Some(Server::from_listener(
                listener,
                config,
                r,
                Arc::new(Metrics::new()),
            )?)
        }
        None => None,
    };
    let config = ServerConfig {
        threads: settings.threads,
        limits: limits.clone(),
        tls,
        drain_timeout: settings.drain_timeout,
    };
    // Further listeners: same routes and state, each with its own client-auth mode.
    let mut more_servers = Vec::new();
    for (((_, mode), tls), listener) in settings
        .more_listeners
        .iter()
        .zip(more_tls)
        .zip(more_listeners)
    {
        let config = ServerConfig {
            threads: settings.threads,
            limits: limits.clone(),
            tls,
            drain_timeout: settings.drain_timeout,
        };
        let server = Server::from_listener(
            listener,
            config,
            router_for(&state, &settings),
            metrics.clone(),
        )?;
        more_servers.push((server, *mode));
    }
    let server = Server::from_listener(listener, config, router, metrics)?;
    let addr = server.local_addr()?;
    state.set_listen_addr(if settings.plain_http { "http" } else { "https" }, addr);
    let maintenance = state.start_maintenance()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    // SIGHUP re-reads the server certificate; weak, so the signal thread never keeps the
    // state alive past shutdown.
    let reload = {
        let state = Arc::downgrade(&state);
        let data_dir = args.data_dir.clone();
        let settings = settings.clone();
        move || {
            let (Some(cert), Some(state)) = (&server_cert, state.upgrade()) else {
                return;
            };
            match server_identity(&data_dir, &settings, state.store.master_key())
                .and_then(|(chain, key)| cert.replace(chain, key))
            {
                Ok(()) => tracing::info!("server certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "server certificate not reloaded; keeping the current one")
                }
            }
        }
    };
    let scheme = if settings.plain_http { "http" } else { "https" };
    let metrics_running = match metrics_server {
        Some(m) => {
            let maddr = m.local_addr()?;
            tracing::info!(addr = %maddr, "metrics listening");
            if !json {
                eprintln!("latchkey: metrics listening on {scheme}://{maddr}");
            }
            Some(m.start()?)
        }
        None => None,
    };
    let mut more_running = Vec::new();
    for (server, mode) in more_servers {
        let maddr = server.local_addr()?;
        tracing::info!(addr = %maddr, client_auth = ?mode, "listening");
        if !json {
            eprintln!(
                "latchkey: also listening on {scheme}://{maddr} (client-auth {})",
                format!("{mode:?}").to_lowercase()
            );
        }
        more_running.push(server.start()?);
    }
    let running = server.start()?;
    let shutdown = running.shutdown_handle();
    let more_shutdown: Vec<_> = more_running.iter().map(|r| r.shutdown_handle()).collect();
    let metrics_shutdown = metrics_running.as_ref().map(|m| m.shutdown_handle());
    let signal_thread = std::thread::Builder::new()
        .name("latchkey-signals".into())
        .spawn(move || {
            let mut incoming = signals.forever();
            let next = loop {
                match incoming.next() {
                    Some(signal_hook::consts::SIGHUP) => reload(),
                    other => break other,
                }
            };
            if let Some(sig) = next {
                tracing::info!(signal = sig, "shutting down: finishing in-flight requests");
                shutdown.shutdown();
                for m in &more_shutdown {
                    m.shutdown();
                }
                if let Some(m) = &metrics_shutdown {
                    m.shutdown();
                }
            }
        })?;

    tracing::info!(%addr, threads = settings.threads, scheme, "listening");
    let mut stdout = std::io::stdout().lock();
    if json {
        let ready = serde_json::json!({
            "event": "listening",
            "scheme": scheme,
            "addr": addr.to_string(),
            "url": format!("{scheme}://{addr}"),
        });
        writeln!(stdout, "{ready}")?;
    } else {
        writeln!(stdout, "latchkey listening on {scheme}://{addr}")?;
    }
    stdout.flush()?;
    drop(stdout);

    running.wait();
    for r in more_running {
        r.wait();
    }
    // Stops membership. The node's key is left to expire with its lease: a restart within the
    // TTL takes it over, and this node's clients never move.
    #[cfg(feature = "etcd")]
    drop(membership);
    if let Some(m) = metrics_running {
        m.wait();
    }
    // The event loops are done: no more assertions. Closing the replay log fsyncs it, so the
    // next start, even after a machine crash, knows nothing was lost.
    if let Some(log) = &state.replay_log
        && let Err(e) = log.close(state.now())
    {
        tracing::error!(error = %e, "closing the replay log failed");
    }
    drop(signal_thread);
    state.stop_maintenance();
    maintenance.thread().unpark();
    let _ = maintenance.join();
    // Refusals counted since the last pass are audited before the store closes.
    if let Err(e) = state.refusals.flush(&state.store, state.now()) {
        tracing::error!(error = %e, "writing the refusal tally failed");
    }
    // Flush: the last store handle closes the writer after its queue is empty.
    match Arc::try_unwrap(state) {
        Ok(state) => drop(state),
        Err(_) => {
            tracing::warn!("state still shared at exit; the store closes when the process ends")
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds a listening socket; the error names the address.
fn listen(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, Error> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| Error::Cli(format!("cannot listen on {addr}: {e}")))
}

/// Opens the application state in the data directory (creating it on first run: signing keys,
/// profiles, the `admin` operator client). The first client's credentials go to a file whose
/// path, never the secret, is printed.
fn open_state(
    store: Store,
    settings: AppSettings,
    trust: TrustState,
    metrics: Arc<Metrics>,
    json: bool,
) -> Result<App, Error> {
    let (app, first_run) = App::build(Parts {
        store,
        settings,
        metrics,
        trust,
    })?;
    if let Some(path) = &first_run.admin_credentials {
        if json {
            tracing::info!(file = %path.display(), "created operator client `admin`; its credentials are in the file");
        } else {
            eprintln!(
                "latchkey: created operator client `admin`; its credentials are in {}",
                path.display()
            );
        }
    }
    if !first_run.generated_keys.is_empty() {
        tracing::info!(kids = ?first_run.generated_keys, "generated signing keys");
    }
    Ok(app)
}

/// The routes: built-ins (`/metrics` unless it has a listener of its own), then every API.
fn router_for(state: &Arc<State>, settings: &ServeSettings) -> Router {
    let mut router = Router::new(crate::error::refusal);
    router.health_route();
    if settings.metrics_listen.is_none() {
        crate::api::metrics::route(&mut router, state, settings.metrics_access);
    }
    crate::api::routes(&mut router, state);
    router
}

/// The first listener's TLS configuration, the client trust store (when any listener asks
/// for certificates), and one configuration per further listener.
type TlsConfigs = (
    Arc<rustls::ServerConfig>,
    Option<Arc<TrustStore>>,
    Vec<Arc<rustls::ServerConfig>>,
    Arc<tls::ServerCert>,
);

/// The data directory's CA and server certificate, created on first run.
struct OwnCa {
    files: tls::CertFiles,
    created: bool,
}

/// Creates the data directory's CA and server certificate if missing (before the state is
/// built, since the trust is built with them).
fn ensure_own_certificates(
    data_dir: &Path,
    s: &ServeSettings,
    key: &MasterKey,
) -> Result<OwnCa, Error> {
    let (files, created) = tls::ensure_certificates(data_dir, key, &s.server_names)?;
    Ok(OwnCa {
        files,
        created: created != Created::Nothing,
    })
}

/// Tells the operator about the data directory's CA, after the first-run lines.
fn announce_ca(ca: &OwnCa, s: &ServeSettings) {
    let files = &ca.files;
    if ca.created {
        tracing::info!(ca = %files.ca_cert.display(), "created server certificate");
    } else {
        warn_unnamed(&files.server_cert, &s.server_names);
    }
    // Printed on every start so operators know what clients must trust.
    if s.log_format == LogFormat::Json {
        tracing::info!(ca = %files.ca_cert.display(), "clients must trust the CA certificate");
    } else {
        eprintln!(
            "latchkey: clients must trust the CA certificate at {}",
            files.ca_cert.display()
        );
    }
}

fn tls_config(data_dir: &Path, s: &ServeSettings, key: &MasterKey) -> Result<TlsConfigs, Error> {
    let (chain, key) = server_identity(data_dir, s, key)?;
    let cert = tls::ServerCert::new(chain, key)?;
    let any_client_auth = std::iter::once(s.client_auth)
        .chain(s.more_listeners.iter().map(|l| l.1))
        .any(|m| m != ClientAuthMode::Off);
    let trust = match s.client_auth {
        _ if !any_client_auth => None,
        mode => {
            let mut anchors = Vec::new();
            let own_ca = tls::CertFiles::in_dir(data_dir).ca_cert;
            if own_ca.exists() {
                anchors.extend(tls::load_certs(&own_ca)?);
            }
            for path in &s.client_cas {
                anchors.extend(tls::load_certs(path)?);
            }
            Some(TrustStore::new(anchors, [], mode)?)
        }
    };
    let verifier = |mode| trust.as_ref().and_then(|t| t.verifier_for(mode));
    let more = s
        .more_listeners
        .iter()
        .map(|(_, mode)| tls::server_config_with(&cert, verifier(*mode)))
        .collect::<Result<Vec<_>, _>>()?;
    let config = tls::server_config_with(&cert, verifier(s.client_auth))?;
    Ok((config, trust, more, cert))
}

/// The server certificate chain and key, from `--tls-cert` (PEM or PKCS#12) or the data
/// directory. Read at start and again on SIGHUP.
fn server_identity(
    data_dir: &Path,
    s: &ServeSettings,
    master: &MasterKey,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    Ok(match &s.tls_files {
        Some(TlsFiles::Pem { cert, key }) => (tls::load_certs(cert)?, tls::load_key(key)?),
        Some(TlsFiles::Pkcs12 {
            file,
            password_file,
        }) => {
            let password = match password_file {
                Some(path) => super::passphrase::read_secret_file(path, "TLS password file")?,
                None => Zeroizing::new(std::env::var(TLS_PASSWORD_ENV).unwrap_or_default()),
            };
            let der = std::fs::read(file)
                .map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
            let (certs, key) = crate::pki::from_pkcs12(&der, &password)
                .map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
            let key = key.ok_or_else(|| {
                Error::Config(format!(
                    "{}: the PKCS#12 file holds no private key",
                    file.display()
                ))
            })?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
            (certs.into_iter().map(|c| c.der).collect(), key)
        }
        None => {
            let files = tls::CertFiles::in_dir(data_dir);
            (
                tls::load_certs(&files.server_cert)?,
                files.server_key_der(master)?,
            )
        }
    })
}

/// Where a PKCS#12 `--tls-cert` finds its password when no `--tls-password-file` is given.
const TLS_PASSWORD_ENV: &str = "LATCHKEY_TLS_PASSWORD";

fn init_logging(s: &ServeSettings) -> Result<(), Error> {
    let filter = match &s.log_level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| Error::Config(format!("log level: {e}")))?,
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match s.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| Error::Config(format!("logging: {e}")))
}

/// `--server-name` shapes the certificate when it is generated; an existing one is kept, so
/// names it lacks are worth a warning rather than silence.
fn warn_unnamed(cert: &Path, names: &[String]) {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    if names.is_empty() {
        return;
    }
    let Some(der) = tls::load_certs(cert)
        .ok()
        .and_then(|c| c.into_iter().next())
    else {
        return;
    };
    let Ok((_, parsed)) = X509Certificate::from_der(&der) else {
        return;
    };
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(ext)) = parsed.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                    Ok(v4) => ips.push(std::net::IpAddr::from(v4)),
                    Err(_) => {
                        if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            ips.push(std::net::IpAddr::from(v6));
                        }
                    }
                },
                _ => {}
            }
        }
    }
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => !ips.contains(&ip),
            Err(_) => !dns.contains(&n.to_ascii_lowercase()),
        })
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            names = ?missing,
            certificate = %cert.display(),
            "server names not in the existing server certificate, which is kept: to reissue it \
             with them, remove it and server.key.sealed beside it while the server is stopped"
        );
    }
}
