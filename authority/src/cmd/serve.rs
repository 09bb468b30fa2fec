//! `latchkey serve`: open (or create) the data directory and run the HTTPS server until
//! SIGINT/SIGTERM.
//!
//! Order matters: settings and logging first, then the data directory (store, certificates),
//! then the router, then the listening socket, then signal handlers, and only then the one
//! ready line on stdout (`latchkey listening on https://ADDR`), which tests and scripts wait
//! for. On a signal the loops stop accepting, drain in-flight requests (bounded by
//! `--drain-timeout`), and the store is flushed and closed before exit.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::app::{App, AppConfig};
use crate::config::{LogFormat, ServeSettings, Settings};
use crate::error::Error;
use crate::http::{Metrics, Router, Server, ServerConfig};
use crate::store::KeyFileOptions;
use crate::tls::{self, ClientAuthMode, Created, TrustStore};

/// `latchkey serve` arguments. Every setting can also be set in the TOML file (same names).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Data directory: database, master key, certificates. Created on first run.
    #[arg(long, value_name = "DIR", default_value = "latchkey-data")]
    pub data_dir: PathBuf,
    /// TOML settings file [default: DIR/latchkey.toml in --data-dir, if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub passphrase: super::passphrase::PassphraseArgs,
    #[command(flatten)]
    pub settings: Settings,
}

/// Everything the request handlers share: the application state (store, keys, revocations,
/// settings, mutual-TLS trust).
pub type State = App;

pub fn run(args: ServeArgs) -> Result<(), Error> {
    let config_path = args.config.clone().or_else(|| {
        let default = args.data_dir.join("latchkey.toml");
        default.is_file().then_some(default)
    });
    let file = match &config_path {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let settings = args.settings.merge(file).resolve()?;
    init_logging(&settings)?;

    let metrics = Arc::new(Metrics::new());
    let key = args.passphrase.key_options()?;
    let mut app = open_state(&args.data_dir, config_path.as_deref(), key, metrics.clone())?;
    let (tls, trust) = if settings.plain_http {
        tracing::warn!(
            "serving plain HTTP: credentials cross the network unencrypted (use only on loopback)"
        );
        (None, None)
    } else {
        let (config, trust) = tls_config(&args.data_dir, &settings)?;
        (Some(config), trust)
    };
    app.trust = trust;
    if app.trust.is_some() {
        // Issue 7: the store's trust store (imports, revocations) on top of the files.
        let files = crate::pki::TrustState::file_anchors(&args.data_dir, &settings.client_cas)?;
        app.mtls.set_base(files);
        app.mtls.refresh(&app)?;
    }
    let state = Arc::new(app);
    let router = router(&state);

    let mut limits = settings.limits.clone();
    limits.max_connections =
        crate::http::admission::fit_connections_to_fd_limit(limits.max_connections);
    let config = ServerConfig {
        threads: settings.threads,
        limits,
        tls,
        drain_timeout: settings.drain_timeout,
    };
    let server = Server::bind(settings.listen, config, router, metrics)?;
    let addr = server.local_addr()?;
    state.set_listen_addr(if settings.plain_http { "http" } else { "https" }, addr);
    let maintenance = state.start_maintenance()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let running = server.start()?;
    let shutdown = running.shutdown_handle();
    let signal_thread = std::thread::Builder::new()
        .name("latchkey-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "shutting down: finishing in-flight requests");
                shutdown.shutdown();
            }
        })?;

    let scheme = if settings.plain_http { "http" } else { "https" };
    tracing::info!(%addr, threads = settings.threads, scheme, "listening");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "latchkey listening on {scheme}://{addr}")?;
    stdout.flush()?;
    drop(stdout);

    running.wait();
    drop(signal_thread);
    state.stop_maintenance();
    maintenance.thread().unpark();
    let _ = maintenance.join();
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

/// Opens the application state in the data directory (creating it on first run: signing keys,
/// profiles, the `admin` operator client). The first client's credentials go to a file whose
/// path, never the secret, is printed.
fn open_state(
    data_dir: &Path,
    config: Option<&Path>,
    key: KeyFileOptions,
    metrics: Arc<Metrics>,
) -> Result<App, Error> {
    let app_config = match config {
        Some(path) => AppConfig::from_file(path)?,
        None => AppConfig::default(),
    };
    let mut settings = app_config.resolve()?;
    settings.master_key = key;
    let (app, first_run) = App::open(data_dir, settings, metrics)?;
    if let Some(path) = &first_run.admin_credentials {
        eprintln!(
            "latchkey: created operator client `admin`; its credentials are in {}",
            path.display()
        );
    }
    if !first_run.generated_keys.is_empty() {
        tracing::info!(kids = ?first_run.generated_keys, "generated signing keys");
    }
    Ok(app)
}

/// The routes: built-ins, then every API.
fn router(state: &Arc<State>) -> Router {
    let mut router = Router::new();
    router.builtin_routes(state.metrics.clone());
    crate::api::routes(&mut router, state);
    router
}

fn tls_config(
    data_dir: &Path,
    s: &ServeSettings,
) -> Result<(Arc<rustls::ServerConfig>, Option<Arc<TrustStore>>), Error> {
    let (chain, key) = match &s.tls_files {
        Some((cert, key)) => (tls::load_certs(cert)?, tls::load_key(key)?),
        None => {
            let (files, created) = tls::ensure_certificates(data_dir, &s.server_names)?;
            if created != Created::Nothing {
                tracing::info!(ca = %files.ca_cert.display(), "created server certificate");
            }
            // Printed on every start so operators know what clients must trust.
            eprintln!(
                "latchkey: clients must trust the CA certificate at {}",
                files.ca_cert.display()
            );
            (
                tls::load_certs(&files.server_cert)?,
                tls::load_key(&files.server_key)?,
            )
        }
    };
    let trust = match s.client_auth {
        ClientAuthMode::Off => None,
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
    let config = tls::server_config(chain, key, trust.as_ref())?;
    Ok((config, trust))
}

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
