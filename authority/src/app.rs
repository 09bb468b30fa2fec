//! The application state every API handler shares through an `Arc<App>`.
//!
//! `App` ties the token core to the store: the signing keys in the store become the
//! [`KeyRing`] (one active minter per algorithm, older keys verifying until retired), the
//! revocations in the store feed the [`RevocationSet`] the verify path reads without locks, and
//! the operator clients and profiles of the TOML file are reconciled into the store at open.
//!
//! **Writes go through [`App::submit`]** (or [`App::write`] off the event loop): it forwards to
//! `Store::submit` and, on the writer thread right after the commit and before the caller's
//! reply runs, applies revocations to the `RevocationSet`. So a revocation is visible to every
//! event loop before its request is answered.
//!
//! **Key life cycle.** `Published` → `Active` → `Retiring` → `Retired`. A rotation first
//! publishes the new key (JWKS, `/token_keys`) without signing with it, for
//! [`AppSettings::key_prepublication`]; the published key sets are served with
//! `Cache-Control: max-age` of at most that ([`AppSettings::jwks_max_age`]), so a consumer that
//! caches them as told has the new `kid` before the first token it signs. Then the maintenance
//! thread activates it: it signs, and the previous key becomes `Retiring`, which only
//! verifies. A retiring key leaves the published sets once the tokens others verify (access
//! and operator tokens) have expired ([`AppSettings::unpublish_after`]), and the ring once
//! everything it signed has ([`AppSettings::retire_after`], boarding tokens included): then it
//! is `Retired`. `rotate_key_now` (emergencies, `keys rotate --now`) activates at once.
//!
//! **Time.** `now()` is Unix seconds from the system clock; everything below takes `now` as a
//! parameter so tests can move time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use latchkey_core::claims::{Audience, Claims, TokenType, Validation};
use latchkey_core::jti::JtiGenerator;
use latchkey_core::keyring::KeyRing;
use latchkey_core::replay::{ReplayCache, ReplayConfig};
use latchkey_core::revocation::{RevocationSet, RevocationUpdate};
use latchkey_core::{Algorithm, RejectedError, VerifiedToken};

use crate::api::auth::{Permission, Permissions};
use crate::api::validate;
use crate::error::{ApiError, Error};
use crate::http::Metrics;
use crate::replay_log::{ReplayLog, ReplayLogConfig, StartContext};
use crate::store::{
    KeyFileOptions, KeyState, NewSigningKey, OperatorClientRecord, ProfileRecord, RevocationKind,
    RevocationRecord, Secret, SecretHash, SigningKeyRecord, Store, StoreError, StoreOptions,
    TenantRecord, WriteOp, WriteOutcome,
};
use crate::tls::TrustStore;

/// File name (in the data directory) of the first operator client's credentials.
pub const ADMIN_CLIENT_FILE: &str = "admin-client.json";
/// The built-in profile with every permission.
pub const ADMINISTRATOR: &str = "Administrator";
/// The built-in profile with read permissions only.
pub const READ_ONLY: &str = "ReadOnly";
/// Actor name for changes the authority makes on its own (first run, maintenance, config).
pub const SYSTEM: &str = "system";
/// Algorithms generated on first run. RS256 first: it signs operator and agent access tokens
/// by default, because the MindSphere SDKs verify with libraries that cannot check EdDSA.
pub const FIRST_RUN_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Everything the API needs to know that is not in the store. Built from the `[tokens]`,
/// `[keys]`, `[[tenants]]`, `[[profiles]]` and `[[clients]]` sections of the TOML file
/// ([`AppConfig`]) or by tests directly.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// `iss` of every token; default: the public URL.
    pub issuer: Option<String>,
    /// The URL clients reach this server at (`baseUrl` of boarding configurations, RFC 8414
    /// metadata); default: `https://<listen address>` once the server is bound.
    pub public_url: Option<String>,
    /// Tenant of the first operator client and of clients that name none.
    pub default_tenant: String,
    /// Lifetime of operator access tokens (seconds).
    pub operator_token_lifetime: u64,
    /// Lifetime of agent access tokens (seconds).
    pub access_token_lifetime: u64,
    /// Lifetime of initial access tokens / boarding configurations (seconds).
    pub boarding_token_lifetime: u64,
    /// Lifetime of agents' shared secrets (`client_secret_expires_at`, seconds).
    pub client_secret_lifetime: u64,
    /// Clock skew tolerated on every time claim (seconds).
    pub leeway: u64,
    /// Algorithm of operator access tokens.
    pub operator_alg: Algorithm,
    /// Rotate every active key after this long (`None`: only on request).
    pub key_rotation_interval: Option<u64>,
    /// How long a new key is published before it signs (seconds; `[keys] pre-publication`).
    pub key_prepublication: u64,
    /// `Cache-Control: max-age` of the published key sets (seconds; `[keys] jwks-max-age`),
    /// never more than `key_prepublication` (see [`AppSettings::jwks_max_age`]).
    pub jwks_max_age: u64,
    /// How often the maintenance thread runs (key retirement, scheduled rotation, forgetting
    /// expired revocations).
    pub maintenance_interval: Duration,
    /// Tenants declared in the configuration.
    pub tenants: Vec<TenantDecl>,
    /// Profiles declared in the configuration (besides the built-ins).
    pub profiles: Vec<ProfileDecl>,
    /// Operator clients declared in the configuration.
    pub clients: Vec<ClientDecl>,
    /// Client assertions older than this (`now - iat`, beyond the leeway) are refused, and
    /// the replay cache remembers a `jti` at most this long. This, not the assertion's `exp`
    /// (MCL signs 24-hour assertions), bounds the cache: both SDKs sign a fresh assertion for
    /// every token request.
    pub assertion_max_age: u64,
    /// How to unlock the master key file (its passphrase). Never from the TOML file: set by
    /// `serve` from `--passphrase-file` or `LATCHKEY_PASSPHRASE`.
    pub master_key: KeyFileOptions,
    /// Replay cache sizing for client assertions. Size `capacity` for at least
    /// 1.5 × peak token rate × (`assertion_max_age` + leeway).
    pub replay: ReplayConfig,
    /// How long after a rotation the replaced RAT, secret and keys stay usable if the agent
    /// has not used its new ones yet (seconds; 0: they die at once). Lets an agent whose
    /// rotation answer was lost repeat the rotation and get the same answer.
    pub rotation_grace: u64,
    /// Largest stored `dataSourceConfiguration` (bytes of JSON).
    pub datasource_config_max_bytes: usize,
    /// The on-disk log of accepted assertions that keeps restarts replay-safe.
    pub replay_log: ReplayLogConfig,
    /// Backoff after failed client authentication, per client id (set by `serve` from its
    /// flags).
    pub client_throttle: crate::api::throttle::ThrottleConfig,
    /// The same per source address (IPv6: per /64).
    pub source_throttle: crate::api::throttle::ThrottleConfig,
    /// Refusal tallies and audit retention (set by `serve` from its flags).
    pub audit: crate::refusal_audit::AuditPolicy,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            issuer: None,
            public_url: None,
            default_tenant: "main".into(),
            operator_token_lifetime: 3600,
            access_token_lifetime: 3600,
            boarding_token_lifetime: 7 * 24 * 3600,
            client_secret_lifetime: 7 * 24 * 3600,
            leeway: 60,
            operator_alg: Algorithm::RS256,
            key_rotation_interval: None,
            key_prepublication: 3600,
            jwks_max_age: 900,
            maintenance_interval: Duration::from_secs(60),
            tenants: Vec::new(),
            profiles: Vec::new(),
            clients: Vec::new(),
            assertion_max_age: 120,
            master_key: KeyFileOptions::default(),
            replay: ReplayConfig {
                max_lifetime: 25 * 3600,
                // 8 bytes a slot, allocated as the load needs them: at most 32 MiB, enough
                // for ~11k assertions/s sustained at the default age limit and leeway.
                capacity: 1 << 22,
                // Half the cache: one agent at ~11k assertions/s sustained (30k/s for over a
                // minute) at the default age limit, and never more than half for one agent.
                max_per_issuer: 1 << 21,
                // `assertion_max_age` plus the leeway on both ends, as `resolve` sets it.
                share_window: 120 + 2 * 60,
                ..ReplayConfig::default()
            },
            rotation_grace: 6 * 3600,
            datasource_config_max_bytes: 64 * 1024,
            replay_log: ReplayLogConfig::default(),
            client_throttle: crate::api::throttle::ThrottleConfig::CLIENT_DEFAULT,
            source_throttle: crate::api::throttle::ThrottleConfig::SOURCE_DEFAULT,
            audit: crate::refusal_audit::AuditPolicy::DEFAULT,
        }
    }
}

impl AppSettings {
    /// How long a signing key keeps verifying after it stopped signing: the longest lifetime
    /// of anything it may have signed, plus leeway.
    pub fn retire_after(&self) -> u64 {
        [
            self.operator_token_lifetime,
            self.access_token_lifetime,
            self.boarding_token_lifetime,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
        .saturating_add(self.leeway)
    }

    /// How long a retiring key stays in the published key sets: the longest lifetime of a
    /// token someone else verifies (access and operator tokens), plus leeway. Boarding tokens
    /// only Latchkey verifies, so they do not keep the key published.
    pub fn unpublish_after(&self) -> u64 {
        self.operator_token_lifetime
            .max(self.access_token_lifetime)
            .saturating_add(self.leeway)
    }

    /// Seconds a consumer may cache the published key sets: a key published for
    /// `key_prepublication` is then in every cache before it signs. One second less than the
    /// pre-publication: clocks are read in whole seconds, and a cache counts from when the
    /// answer arrived, not when it was made.
    pub fn jwks_max_age(&self) -> u64 {
        self.jwks_max_age
            .min(self.key_prepublication.saturating_sub(1))
    }

    /// When a key published at `published_at` (its `state_changed_at`) signs: the
    /// pre-publication after it, plus the second `published_at` was truncated to.
    pub fn activates_at(&self, published_at: u64) -> u64 {
        published_at
            .saturating_add(self.key_prepublication)
            .saturating_add(1)
    }
}

/// `[[tenants]]`: a tenant and the algorithm of its agents' access tokens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TenantDecl {
    pub id: String,
    #[serde(default, alias = "display_name")]
    pub display_name: Option<String>,
    #[serde(default, alias = "token_alg")]
    pub token_alg: Option<String>,
}

/// `[[profiles]]`: a named permission set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDecl {
    pub name: String,
    pub permissions: Vec<String>,
}

/// `[[clients]]`: an operator client, Usercube `OpenIdClient` style.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientDecl {
    #[serde(alias = "Identifier", alias = "id")]
    pub identifier: String,
    /// `lk1$blake3$...` or a Usercube base64 SHA-256 (`latchkey hash-secret`).
    #[serde(alias = "hashed_secret", alias = "HashedSecret")]
    pub hashed_secret: String,
    #[serde(default, alias = "display_name", alias = "DisplayName_L1")]
    pub display_name: Option<String>,
    #[serde(default, alias = "Profile")]
    pub profile: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
}

/// The operator-surface sections of the TOML settings file. Unknown top-level keys belong to
/// the server settings (`config::Settings`) and are ignored here.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppConfig {
    #[serde(default)]
    pub tokens: TokensConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub agents: AgentsConfig,
    #[serde(default)]
    pub tenants: Vec<TenantDecl>,
    #[serde(default)]
    pub profiles: Vec<ProfileDecl>,
    #[serde(default)]
    pub clients: Vec<ClientDecl>,
}

/// `[tokens]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokensConfig {
    pub issuer: Option<String>,
    pub public_url: Option<String>,
    pub default_tenant: Option<String>,
    pub operator_lifetime: Option<crate::config::HumanDuration>,
    pub access_lifetime: Option<crate::config::HumanDuration>,
    pub boarding_lifetime: Option<crate::config::HumanDuration>,
    pub secret_lifetime: Option<crate::config::HumanDuration>,
    pub leeway: Option<crate::config::HumanDuration>,
    pub operator_alg: Option<String>,
    pub assertion_max_age: Option<crate::config::HumanDuration>,
    /// Slots in the client-assertion replay cache (8 bytes each).
    pub replay_capacity: Option<usize>,
    /// Most recent assertions one agent may hold in the replay cache.
    pub replay_max_per_issuer: Option<usize>,
    /// How often the replay log is fsynced.
    pub replay_log_sync_interval: Option<crate::config::HumanDuration>,
    /// Most bytes the replay log may hold (30 per accepted assertion).
    pub replay_log_max_size: Option<u64>,
}

/// `[keys]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeysConfig {
    pub rotation_interval: Option<crate::config::HumanDuration>,
    /// How long a new key is in the JWKS before it signs (1 h; 0 activates at once).
    pub pre_publication: Option<crate::config::HumanDuration>,
    /// `Cache-Control: max-age` of the published key sets (15 min; capped below
    /// `pre-publication`).
    pub jwks_max_age: Option<crate::config::HumanDuration>,
    pub maintenance_interval: Option<crate::config::HumanDuration>,
}

/// `[agents]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentsConfig {
    /// Grace window of a rotation's replaced credentials ("0s" turns it off).
    pub rotation_grace: Option<crate::config::HumanDuration>,
    /// Largest `dataSourceConfiguration` in bytes.
    pub datasource_config_max_bytes: Option<usize>,
}

/// Upper bound of `datasource-config-max-bytes`: the record holding it must stay below the
/// store's record limit.
pub const MAX_DATASOURCE_CONFIG_BYTES: usize = 192 * 1024;

impl AppConfig {
    /// Reads the operator sections of a TOML settings file.
    pub fn from_file(path: &Path) -> Result<AppConfig, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        AppConfig::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn from_toml(text: &str) -> Result<AppConfig, Error> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    /// Settings with defaults filled in and values checked.
    pub fn resolve(self) -> Result<AppSettings, Error> {
        let d = AppSettings::default();
        let secs = |v: Option<crate::config::HumanDuration>, default: u64, name: &str| {
            let s = v.map_or(default, |h| h.0.as_secs());
            if s == 0 {
                return Err(Error::Config(format!("tokens.{name} must be at least 1s")));
            }
            Ok(s)
        };
        let t = self.tokens;
        let operator_alg = match t.operator_alg.as_deref() {
            None => d.operator_alg,
            Some(name) => parse_token_alg(name)?,
        };
        let secret_lifetime = secs(
            t.secret_lifetime,
            d.client_secret_lifetime,
            "secret-lifetime",
        )?;
        let leeway = t.leeway.map_or(d.leeway, |h| h.0.as_secs());
        let datasource_config_max_bytes = self
            .agents
            .datasource_config_max_bytes
            .unwrap_or(d.datasource_config_max_bytes);
        if !(2..=MAX_DATASOURCE_CONFIG_BYTES).contains(&datasource_config_max_bytes) {
            return Err(Error::Config(format!(
                "agents.datasource-config-max-bytes must be 2..={MAX_DATASOURCE_CONFIG_BYTES}"
            )));
        }
        let assertion_max_age = secs(
            t.assertion_max_age,
            d.assertion_max_age,
            "assertion-max-age",
        )?;
        let settings = AppSettings {
            issuer: t.issuer,
            public_url: t.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            default_tenant: t.default_tenant.unwrap_or(d.default_tenant),
            operator_token_lifetime: secs(
                t.operator_lifetime,
                d.operator_token_lifetime,
                "operator-lifetime",
            )?,
            access_token_lifetime: secs(
                t.access_lifetime,
                d.access_token_lifetime,
                "access-lifetime",
            )?,
            boarding_token_lifetime: secs(
                t.boarding_lifetime,
                d.boarding_token_lifetime,
                "boarding-lifetime",
            )?,
            client_secret_lifetime: secret_lifetime,
            leeway,
            operator_alg,
            key_rotation_interval: self.keys.rotation_interval.map(|h| h.0.as_secs().max(1)),
            key_prepublication: self
                .keys
                .pre_publication
                .map_or(d.key_prepublication, |h| h.0.as_secs()),
            jwks_max_age: self
                .keys
                .jwks_max_age
                .map_or(d.jwks_max_age, |h| h.0.as_secs()),
            maintenance_interval: self
                .keys
                .maintenance_interval
                .map_or(d.maintenance_interval, |h| {
                    h.0.max(Duration::from_millis(100))
                }),
            tenants: self.tenants,
            profiles: self.profiles,
            clients: self.clients,
            assertion_max_age,
            master_key: KeyFileOptions::default(),
            replay: ReplayConfig {
                capacity: t.replay_capacity.unwrap_or(d.replay.capacity),
                max_per_issuer: t.replay_max_per_issuer.unwrap_or(d.replay.max_per_issuer),
                // How long an accepted assertion is remembered at most (see the token
                // endpoint): its age limit and the leeway on both ends.
                share_window: assertion_max_age.saturating_add(leeway.saturating_mul(2)),
                ..d.replay
            },
            rotation_grace: self
                .agents
                .rotation_grace
                .map_or(d.rotation_grace, |h| h.0.as_secs()),
            datasource_config_max_bytes,
            replay_log: ReplayLogConfig {
                sync_interval: t
                    .replay_log_sync_interval
                    .map_or(d.replay_log.sync_interval, |h| {
                        h.0.clamp(Duration::from_millis(10), Duration::from_secs(60))
                    }),
                max_bytes: t
                    .replay_log_max_size
                    .map_or(d.replay_log.max_bytes, |b| b.max(1 << 20)),
            },
            client_throttle: d.client_throttle,
            source_throttle: d.source_throttle,
            audit: d.audit,
        };
        for tenant in &settings.tenants {
            if let Some(alg) = &tenant.token_alg {
                parse_token_alg(alg)?;
            }
        }
        Ok(settings)
    }
}

/// A token-signing algorithm name from configuration (asymmetric only: HMAC keys cannot be
/// published for verification).
pub fn parse_token_alg(name: &str) -> Result<Algorithm, Error> {
    match Algorithm::from_name(name) {
        Ok(alg) if !alg.is_hmac() => Ok(alg),
        _ => Err(Error::Config(format!(
            "unsupported token algorithm {name:?} (use RS256, RS384, RS512, ES256 or EdDSA)"
        ))),
    }
}

/// What `App::open` did that the operator must know about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FirstRun {
    /// The first operator client was created; its credentials are in this file (mode 0600).
    pub admin_credentials: Option<PathBuf>,
    /// Signing keys were generated (kids).
    pub generated_keys: Vec<String>,
}

/// URLs known once the server is bound.
#[derive(Debug)]
struct Urls {
    base: String,
    issuer: String,
}

/// The shared application state.
#[derive(Debug)]
pub struct App {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub revocations: Arc<RevocationSet>,
    pub replay: ReplayCache,
    /// Accepted assertions on disk (`None` for the CLI on a stopped server, which issues none).
    pub replay_log: Option<Arc<ReplayLog>>,
    /// Assertions issued before this are refused (`None`: nothing a previous process accepted
    /// was lost; see `replay_log`).
    pub replay_floor: Option<u64>,
    pub jti: JtiGenerator,
    pub metrics: Arc<Metrics>,
    pub settings: AppSettings,
    /// Failed client authentications by client id (operator secrets, agent credentials).
    pub client_throttle: crate::api::throttle::FailureThrottle<String>,
    /// Failed authentications by source address (token, introspection, registration).
    pub source_throttle: crate::api::throttle::FailureThrottle<u128>,
    /// Refusals of unauthenticated requests, counted until the maintenance thread audits them.
    pub refusals: crate::refusal_audit::RefusalTally,
    /// Client assertions refused for lack of room in the replay cache (for `/metrics`).
    pub replay_refused: crate::api::replay_refusal::ReplayRefusals,
    /// Mutual-TLS trust, if client authentication is on (set by `serve` before sharing).
    pub trust: Option<Arc<TrustStore>>,
    /// The store's side of mutual-TLS trust: rebuilt into `trust` after commits
    /// that change certificates or certificate revocations.
    pub mtls: crate::pki::TrustState,
    urls: OnceLock<Urls>,
    /// Token algorithm per tenant (from the tenants table), read without locks.
    tenant_algs: ArcSwap<HashMap<String, Algorithm>>,
    stopping: Arc<AtomicBool>,
}

impl App {
    /// Opens (or creates) the data directory and brings the store in line with the settings:
    /// built-in and configured profiles, tenants, signing keys, configured clients and, on
    /// first run, the `admin` client.
    pub fn open(
        data_dir: &Path,
        settings: AppSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(App, FirstRun), Error> {
        let options = StoreOptions {
            key: settings.master_key.clone(),
            ..StoreOptions::default()
        };
        let store = Store::open_or_create(data_dir, options)?;
        App::with_store(store, settings, metrics)
    }

    /// Like [`App::open`] for an already open store (CLI on a stopped server, tests).
    pub fn with_store(
        store: Store,
        settings: AppSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(App, FirstRun), Error> {
        let mut app = App::bare(store, settings, metrics)?;
        let mut first = FirstRun::default();
        let now = app.now();
        app.open_replay_log(now)?;
        app.reconcile_profiles()?;
        app.reconcile_tenants(now)?;
        first.generated_keys = app.ensure_keys(now)?;
        app.load_keys()?;
        app.activate_due_keys(now)?;
        app.retire_expired_keys(now)?;
        // First run is a store without operator clients, whatever the configuration declares.
        let fresh = app.store.read()?.operator_clients()?.is_empty();
        app.reconcile_clients(now)?;
        if fresh {
            first.admin_credentials = Some(app.create_admin(now)?);
        }
        app.load_revocations()?;
        Ok((app, first))
    }

    /// The state of an existing store without any first-run or configuration work (the CLI on
    /// a stopped server's data directory): keys, tenants and revocations loaded as they are.
    pub fn offline(
        store: Store,
        settings: AppSettings,
        metrics: Arc<Metrics>,
    ) -> Result<App, Error> {
        let app = App::bare(store, settings, metrics)?;
        for t in app.store.read()?.tenants()? {
            app.cache_tenant(&t);
        }
        app.load_keys()?;
        app.load_revocations()?;
        Ok(app)
    }

    fn bare(store: Store, settings: AppSettings, metrics: Arc<Metrics>) -> Result<App, Error> {
        store.set_commit_observer(metrics.clone());
        let replay = ReplayCache::with_random_key(settings.replay)
            .map_err(|_| Error::Config("system random source failed".into()))?;
        let jti = JtiGenerator::random()
            .map_err(|_| Error::Config("system random source failed".into()))?;
        let app = App {
            store,
            keys: Arc::new(KeyRing::new()),
            revocations: Arc::new(RevocationSet::new()),
            replay,
            replay_log: None,
            replay_floor: None,
            jti,
            metrics,
            client_throttle: crate::api::throttle::FailureThrottle::new(settings.client_throttle),
            source_throttle: crate::api::throttle::FailureThrottle::new_distinct(
                settings.source_throttle,
            ),
            refusals: crate::refusal_audit::RefusalTally::new(settings.audit.max_keys),
            replay_refused: Default::default(),
            settings,
            trust: None,
            mtls: crate::pki::TrustState::default(),
            urls: OnceLock::new(),
            tenant_algs: ArcSwap::from_pointee(HashMap::new()),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        Ok(app)
    }

    /// Recovers what earlier processes logged into the replay cache (keyed as they keyed it),
    /// sets the replay floor and starts the log's sync thread.
    fn open_replay_log(&mut self, now: u64) -> Result<(), Error> {
        let leeway = self.assertion_leeway();
        let start = StartContext {
            now,
            boot_id: crate::replay_log::boot_id(),
            leeway,
            // The longest an entry is remembered past its acceptance: `iat` up to `leeway`
            // ahead, remembered until `iat + max age`, plus the cache's leeway.
            window: self
                .settings
                .assertion_max_age
                .saturating_add(leeway.saturating_mul(2))
                .saturating_add(1),
            has_clients: self.store.hot().client_count() > 0,
        };
        let (log, recovery) = ReplayLog::open(
            &self.store.paths().dir,
            &self.store,
            self.settings.replay_log,
            start,
            self.metrics.clone(),
        )?;
        self.replay = ReplayCache::new(self.settings.replay, *recovery.key);
        let mut floor = recovery.floor;
        for (fingerprint, until) in &recovery.entries {
            if let Err(e) = self.replay.restore(*fingerprint, *until, now) {
                // Too many to hold: what was not restored could be replayed, so refuse
                // everything older than this start instead.
                tracing::warn!(error = %e, "replay log entries do not fit the replay cache");
                floor = floor.max(Some(crate::api::onboarding::replay_floor(now, leeway)));
                break;
            }
        }
        tracing::info!(
            restored = recovery.entries.len(),
            floor,
            reason = recovery.reason,
            "replay log recovered"
        );
        let log = Arc::new(log);
        log.start_sync(unix_now)?;
        self.replay_log = Some(log);
        self.replay_floor = floor;
        Ok(())
    }

    /// The skew tolerated on client assertions: the configured leeway, but never longer than
    /// the replay cache remembers a `jti` past its `exp` (else an assertion could be accepted
    /// again after the cache forgot it).
    pub fn assertion_leeway(&self) -> u64 {
        self.settings.leeway.min(self.settings.replay.leeway)
    }

    /// Unix seconds.
    pub fn now(&self) -> u64 {
        unix_now()
    }

    /// Records the address the server listens on; the public URL and issuer default to it.
    /// Call once, after binding and before serving. Later calls are ignored.
    pub fn set_listen_addr(&self, scheme: &str, addr: std::net::SocketAddr) {
        let _ = self
            .urls
            .set(self.make_urls(Some(format!("{scheme}://{addr}"))));
    }

    /// The URL clients reach this server at, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.urls().base
    }

    /// `iss` of every token this authority mints.
    pub fn issuer(&self) -> &str {
        &self.urls().issuer
    }

    fn urls(&self) -> &Urls {
        self.urls.get_or_init(|| self.make_urls(None))
    }

    fn make_urls(&self, bound: Option<String>) -> Urls {
        let base = self
            .settings
            .public_url
            .clone()
            .or(bound)
            .unwrap_or_else(|| "https://localhost".to_owned());
        let issuer = self.settings.issuer.clone().unwrap_or_else(|| base.clone());
        Urls { base, issuer }
    }

    /// The token algorithm of `tenant`'s agent access tokens (RS256 if unknown).
    pub fn tenant_alg(&self, tenant: &str) -> Algorithm {
        self.tenant_algs
            .load()
            .get(tenant)
            .copied()
            .unwrap_or(Algorithm::RS256)
    }

    /// Whether `tenant` exists.
    pub fn tenant_exists(&self, tenant: &str) -> bool {
        self.tenant_algs.load().contains_key(tenant)
    }

    /// Submits a write without blocking; `reply` runs on the store's writer thread after the
    /// commit. Revocations it recorded are already visible to verification when `reply` runs.
    pub fn submit(
        self: &Arc<Self>,
        op: WriteOp,
        reply: impl FnOnce(Result<WriteOutcome, StoreError>) + Send + 'static,
    ) {
        let app = Arc::clone(self);
        self.store.submit(op, move |result| {
            if let Ok(outcome) = &result {
                app.after_commit(outcome);
            }
            reply(result);
        });
    }

    /// Submits a write and waits for it. Never call this on an event loop thread.
    pub fn write(&self, op: WriteOp) -> Result<WriteOutcome, Error> {
        let outcome = self.store.write(op)?;
        self.after_commit(&outcome);
        Ok(outcome)
    }

    fn after_commit(&self, outcome: &WriteOutcome) {
        match outcome {
            WriteOutcome::Revocation(rec) => {
                if let Some(update) = revocation_update(rec) {
                    self.revocations.apply(&[update]);
                }
            }
            WriteOutcome::Tenant(t) => self.cache_tenant(t),
            _ => {}
        }
        let trust_changed = match outcome {
            WriteOutcome::Certificate(_) => true,
            WriteOutcome::Revocation(rec) => rec.kind == RevocationKind::Certificate,
            _ => false,
        };
        if trust_changed && let Err(e) = self.mtls.refresh(self) {
            tracing::error!(error = %e, "could not rebuild the TLS trust store");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Tokens

    /// Claims Latchkey mints for `sub`: `iss`, `sub`, `aud`, `iat`, `exp`, a fresh `jti`.
    pub fn base_claims(&self, sub: &str, aud: Audience, lifetime: u64, now: u64) -> Claims {
        Claims {
            iss: Some(self.issuer().to_owned()),
            sub: Some(sub.to_owned()),
            aud: Some(aud),
            exp: Some(now.saturating_add(lifetime)),
            nbf: None,
            iat: Some(now),
            jti: Some(self.jti.next_uuid()),
            extra: Default::default(),
        }
    }

    /// Mints a token of `token_type` with the active key for `alg`.
    pub fn mint(
        &self,
        alg: Algorithm,
        token_type: TokenType,
        claims: &Claims,
    ) -> Result<String, Error> {
        let token = self.keys.mint(alg, token_type, claims)?;
        self.metrics.tokens_minted(1);
        Ok(token)
    }

    /// The validation rules for a token type Latchkey minted (issuer checked, audience left to
    /// the caller).
    pub fn validation(&self, token_type: TokenType) -> Validation {
        Validation {
            leeway: self.settings.leeway,
            issuers: vec![self.issuer().to_owned()],
            ..Validation::new(token_type)
        }
    }

    /// Verifies a token Latchkey minted: signature with the key its `kid` names, the claims
    /// under `validation`, then revocation by `jti`, by key, and — for agent tokens — by agent
    /// (every token of an offboarded or deleted agent issued at or before the revocation).
    /// Lock-free: key ring and revocation set are atomic snapshots, the agent index a
    /// lock-free skip list.
    pub fn verify(
        &self,
        token: &str,
        validation: &Validation,
        now: u64,
    ) -> Result<VerifiedToken, Error> {
        let parsed = latchkey_core::UnverifiedToken::parse(token)?;
        let snapshot = self.keys.snapshot();
        let kid = parsed.header().kid().ok_or(RejectedError::UnknownKey)?;
        let key = Arc::clone(snapshot.key(kid).ok_or(RejectedError::UnknownKey)?);
        drop(snapshot);
        let verified = parsed.verify(&key, validation, now)?;
        self.metrics.tokens_verified(1);
        let claims = verified.claims();
        let jti = claims.jti.as_deref().unwrap_or("");
        if self
            .revocations
            .is_revoked(jti, verified.header().kid(), now)
        {
            return Err(RejectedError::Revoked.into());
        }
        if validation.token_type != TokenType::OperatorAccessToken
            && let Some(sub) = claims.sub.as_deref()
            && self.agent_revoked(sub, claims.iat.unwrap_or(0))
        {
            return Err(RejectedError::Revoked.into());
        }
        // A token bound to a certificate ends with the certificate.
        if let Some(x5t) = claims
            .extra
            .get("cnf")
            .and_then(|c| c.get("x5t#S256"))
            .and_then(serde_json::Value::as_str)
            && self.mtls.binding_revoked(x5t)
        {
            return Err(RejectedError::Revoked.into());
        }
        Ok(verified)
    }

    /// Whether every token of agent `sub` issued at `iat` is revoked (offboarded or deleted at
    /// or after `iat`).
    pub fn agent_revoked(&self, sub: &str, iat: u64) -> bool {
        self.store
            .hot()
            .revocation(RevocationKind::Agent, sub)
            .is_some_and(|r| iat <= r.revoked_at)
    }

    // -----------------------------------------------------------------------------------------
    // Keys

    /// Rotates the key of `alg` the way consumers can follow: a new key is published now and
    /// activated by the maintenance thread after [`AppSettings::key_prepublication`]. If one is
    /// already published for `alg`, that one is returned. Blocking (RSA key generation, store
    /// writes): call it off the event loop.
    pub fn rotate_key(&self, alg: Algorithm, by: &str) -> Result<SigningKeyRecord, Error> {
        self.publish_key(alg, by, self.now())
    }

    fn publish_key(&self, alg: Algorithm, by: &str, now: u64) -> Result<SigningKeyRecord, Error> {
        if self.settings.key_prepublication == 0 {
            return self.rotate_key_now(alg, by);
        }
        if let Some(pending) = self.published_key(alg) {
            return self
                .store
                .read()?
                .signing_keys()?
                .into_iter()
                .find(|r| r.kid == pending.kid)
                .ok_or_else(|| {
                    ApiError::NotFound(format!("signing key {:?}", pending.kid)).into()
                });
        }
        if alg.is_hmac() {
            return Err(
                ApiError::InvalidRequest("HMAC keys cannot sign published tokens".into()).into(),
            );
        }
        let key = latchkey_core::SigningKey::generate(alg)?;
        // In the ring (and so the JWKS) before its publication time is read and recorded, so
        // the pre-publication counts from when consumers could first see it.
        self.keys.add_verifying_key(key.verifying_key())?;
        let now = now.max(self.now());
        let written = self.write(WriteOp::AddSigningKey(new_key_op(
            &key,
            KeyState::Published,
            KeyOrigin::Generated,
            by,
            now,
        )?));
        match written {
            Ok(WriteOutcome::SigningKey(rec)) => Ok(rec),
            other => {
                let _ = self.keys.retire(key.kid());
                match other {
                    Ok(o) => Err(unexpected(&o)),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Emergency rotation: the new key signs at once (a key already published for `alg` is the
    /// one activated, since consumers may have it). Consumers that cached the key set without
    /// it miss its `kid` until their cache expires.
    pub fn rotate_key_now(&self, alg: Algorithm, by: &str) -> Result<SigningKeyRecord, Error> {
        if let Some(pending) = self.published_key(alg) {
            return self.activate_key(&pending, by, self.now());
        }
        let key = latchkey_core::SigningKey::generate(alg)?;
        self.install_key(key, KeyOrigin::Generated, by)
    }

    /// The published (not yet active) key of `alg`, if any.
    fn published_key(&self, alg: Algorithm) -> Option<Arc<crate::store::SigningKey>> {
        self.store
            .hot()
            .signing_keys()
            .into_iter()
            .filter(|k| k.state == KeyState::Published && k.alg == alg.as_str())
            .max_by_key(|k| (k.created_at, k.kid.clone()))
    }

    /// Makes a published key the active key of its algorithm; the previous active key retires.
    fn activate_key(
        &self,
        k: &crate::store::SigningKey,
        by: &str,
        now: u64,
    ) -> Result<SigningKeyRecord, Error> {
        let alg = Algorithm::from_name(&k.alg)?;
        let key = latchkey_core::SigningKey::from_pkcs8_der(alg, k.private_key.expose())?
            .with_kid(k.kid.clone());
        let previous = self.active_kids(alg);
        let rec = match self.write(WriteOp::SetSigningKeyState {
            kid: k.kid.clone(),
            state: KeyState::Active,
            by: by.to_owned(),
            now,
        })? {
            WriteOutcome::SigningKey(rec) => rec,
            other => return Err(unexpected(&other)),
        };
        self.take_over(key, previous, by, now)?;
        Ok(rec)
    }

    /// `key` (already recorded active) joins the ring and signs; the keys it replaces start
    /// retiring, after it verifies, so no token is ever signed by a key the ring lacks.
    fn take_over(
        &self,
        key: latchkey_core::SigningKey,
        previous: Vec<String>,
        by: &str,
        now: u64,
    ) -> Result<(), Error> {
        self.keys.rotate(key)?;
        for kid in previous {
            self.write(WriteOp::SetSigningKeyState {
                kid,
                state: KeyState::Retiring,
                by: by.to_owned(),
                now,
            })?;
        }
        Ok(())
    }

    fn active_kids(&self, alg: Algorithm) -> Vec<String> {
        self.store
            .hot()
            .signing_keys()
            .into_iter()
            .filter(|k| k.state == KeyState::Active && k.alg == alg.as_str())
            .map(|k| k.kid.clone())
            .collect()
    }

    /// Activates published keys whose pre-publication has passed. Returns their kids.
    pub fn activate_due_keys(&self, now: u64) -> Result<Vec<String>, Error> {
        let mut activated = Vec::new();
        let keys = self.store.hot().signing_keys();
        // A key published by a scheduled rotation before an import must not take over from
        // the imported (pinned) key; it waits for an explicit `keys rotate`.
        let pinned_active = |alg: &str| {
            keys.iter()
                .any(|a| a.alg == alg && a.state == KeyState::Active && a.pinned)
        };
        for k in &keys {
            if k.state == KeyState::Published
                && now >= self.settings.activates_at(k.state_changed_at)
                && !pinned_active(&k.alg)
            {
                self.activate_key(k, SYSTEM, now)?;
                activated.push(k.kid.clone());
            }
        }
        Ok(activated)
    }

    /// When the next published key is due to sign (Unix seconds), if any.
    pub fn next_activation(&self, alg: Option<Algorithm>) -> Option<u64> {
        self.store
            .hot()
            .signing_keys()
            .iter()
            .filter(|k| k.state == KeyState::Published && alg.is_none_or(|a| k.alg == a.as_str()))
            .map(|k| self.settings.activates_at(k.state_changed_at))
            .min()
    }

    /// Whether `kid` belongs in the published key sets at `now`: every key in the ring except
    /// retiring keys whose externally verified tokens have all expired.
    pub fn is_published(&self, kid: &str, now: u64) -> bool {
        self.store.hot().signing_key(kid).is_none_or(|k| {
            k.state != KeyState::Retiring
                || now
                    < k.state_changed_at
                        .saturating_add(self.settings.unpublish_after())
        })
    }

    /// `max-age` for a published key set: [`AppSettings::jwks_max_age`], and for the single
    /// active key of `alg` (`token_key`) no later than that algorithm's next activation.
    pub fn key_cache_max_age(&self, single: Option<Algorithm>, now: u64) -> u64 {
        let max_age = self.settings.jwks_max_age();
        match single.and_then(|alg| self.next_activation(Some(alg))) {
            // A second early: `now` is truncated and the cache counts from the answer's arrival.
            Some(at) => max_age.min(at.saturating_sub(now).saturating_sub(1)),
            None => max_age,
        }
    }

    /// Makes `key` (generated or imported) the active key of its algorithm; the previous one
    /// keeps verifying until it retires.
    pub fn install_key(
        &self,
        key: latchkey_core::SigningKey,
        origin: KeyOrigin,
        by: &str,
    ) -> Result<SigningKeyRecord, Error> {
        let now = self.now();
        let alg = key.algorithm();
        if alg.is_hmac() {
            return Err(
                ApiError::InvalidRequest("HMAC keys cannot sign published tokens".into()).into(),
            );
        }
        let previous = self.active_kids(alg);
        let rec = match self.write(WriteOp::AddSigningKey(new_key_op(
            &key,
            KeyState::Active,
            origin,
            by,
            now,
        )?))? {
            WriteOutcome::SigningKey(rec) => rec,
            other => return Err(unexpected(&other)),
        };
        // The new key verifies (and signs) before the old one stops signing.
        self.take_over(key, previous, by, now)?;
        Ok(rec)
    }

    /// Retires keys whose overlap has passed and, when scheduled rotation is on, rotates
    /// active keys older than the interval. Returns the kids retired.
    pub fn retire_expired_keys(&self, now: u64) -> Result<Vec<String>, Error> {
        let mut retired = Vec::new();
        for k in self.store.hot().signing_keys() {
            if k.state == KeyState::Retiring
                && now
                    >= k.state_changed_at
                        .saturating_add(self.settings.retire_after())
            {
                self.write(WriteOp::SetSigningKeyState {
                    kid: k.kid.clone(),
                    state: KeyState::Retired,
                    by: SYSTEM.into(),
                    now,
                })?;
                self.keys.retire(&k.kid)?;
                retired.push(k.kid.clone());
            }
        }
        Ok(retired)
    }

    /// Publishes the successor of every active key that is due for rotation within the
    /// pre-publication time, so it activates when the interval is over. Returns the kids
    /// published.
    pub fn scheduled_rotation(&self, now: u64) -> Result<Vec<String>, Error> {
        let Some(interval) = self.settings.key_rotation_interval else {
            return Ok(Vec::new());
        };
        let lead = interval.min(self.settings.key_prepublication);
        let mut rotated = Vec::new();
        for k in self.store.hot().signing_keys() {
            // An imported key stays until an operator rotates or revokes it: verifiers may
            // be configured with its certificate rather than the key set.
            if k.state == KeyState::Active
                && !k.pinned
                && now >= k.state_changed_at.saturating_add(interval - lead)
            {
                let alg = Algorithm::from_name(&k.alg)?;
                if self.published_key(alg).is_some() {
                    continue;
                }
                let rec = self.publish_key(alg, SYSTEM, now)?;
                rotated.push(rec.kid);
            }
        }
        Ok(rotated)
    }

    /// Revokes a signing key: it stops signing at once (a fresh key of its algorithm takes
    /// over if it was active) and every token it signed is refused.
    pub fn revoke_key(&self, kid: &str, by: &str, reason: &str) -> Result<RevocationRecord, Error> {
        let key = self
            .store
            .hot()
            .signing_key(kid)
            .ok_or_else(|| ApiError::NotFound(format!("signing key {kid:?} not found")))?;
        if key.state == KeyState::Active {
            self.rotate_key_now(Algorithm::from_name(&key.alg)?, by)?;
        }
        let now = self.now();
        let rec = match self.write(WriteOp::Revoke {
            kind: RevocationKind::Key,
            id: kid.to_owned(),
            by: by.to_owned(),
            reason: reason.to_owned(),
            now,
            forget_after: now.saturating_add(self.settings.retire_after()),
        })? {
            WriteOutcome::Revocation(rec) => rec,
            other => return Err(unexpected(&other)),
        };
        if key.state != KeyState::Retired {
            self.write(WriteOp::SetSigningKeyState {
                kid: kid.to_owned(),
                state: KeyState::Retired,
                by: by.to_owned(),
                now,
            })?;
        }
        self.keys.retire(kid)?;
        Ok(rec)
    }

    /// Starts the maintenance thread: key retirement, scheduled rotation, forgetting expired
    /// revocations. It holds only a weak reference and ends when the app is dropped or
    /// [`App::stop_maintenance`] is called.
    pub fn start_maintenance(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak: Weak<App> = Arc::downgrade(self);
        // Tallied refusals are written at least this often too.
        let interval = self
            .settings
            .maintenance_interval
            .min(self.settings.audit.flush_interval);
        let stopping = Arc::clone(&self.stopping);
        std::thread::Builder::new()
            .name("latchkey-maintenance".into())
            .spawn(move || {
                let mut wait = interval;
                loop {
                    std::thread::park_timeout(wait);
                    if stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let Some(app) = weak.upgrade() else { return };
                    let now = app.now();
                    if let Err(e) = app.maintain(now) {
                        tracing::error!(error = %e, "maintenance failed");
                    }
                    // Wake when the next published key is due, not up to an interval late.
                    wait = app.next_activation(None).map_or(interval, |at| {
                        interval.min(Duration::from_secs(at.saturating_sub(now).max(1)))
                    });
                }
            })
    }

    /// Asks the maintenance thread to end at its next wake-up.
    pub fn stop_maintenance(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// One maintenance pass.
    pub fn maintain(&self, now: u64) -> Result<(), Error> {
        for kid in self.activate_due_keys(now)? {
            tracing::info!(kid, "published signing key activated");
        }
        for kid in self.retire_expired_keys(now)? {
            tracing::info!(kid, "signing key retired");
        }
        for kid in self.scheduled_rotation(now)? {
            tracing::info!(kid, "signing key published for scheduled rotation");
        }
        if let WriteOutcome::Forgotten { revocations, .. } = self.write(WriteOp::Forget { now })?
            && revocations > 0
        {
            self.revocations.purge(now);
        }
        crate::refusal_audit::maintain(self, now)
    }

    // -----------------------------------------------------------------------------------------
    // Open-time reconciliation

    fn reconcile_profiles(&self) -> Result<(), Error> {
        let snap = self.store.read()?;
        let mut wanted = vec![
            ProfileRecord {
                name: ADMINISTRATOR.into(),
                permissions: names(Permissions::ALL),
            },
            ProfileRecord {
                name: READ_ONLY.into(),
                permissions: names(Permissions::READ_ONLY),
            },
        ];
        for p in &self.settings.profiles {
            settings_field(validate::PROFILE, "profile", &p.name)?;
            if p.name == ADMINISTRATOR || p.name == READ_ONLY {
                return Err(Error::Config(format!(
                    "profile {:?} is built in and cannot be redefined",
                    p.name
                )));
            }
            let perms = Permissions::parse(&p.permissions)
                .map_err(|e| Error::Config(format!("profile {:?}: {e}", p.name)))?;
            wanted.push(ProfileRecord {
                name: p.name.clone(),
                permissions: names(perms),
            });
        }
        for p in wanted {
            if snap.profile(&p.name)?.as_ref() != Some(&p) {
                self.write(WriteOp::PutProfile(p))?;
            }
        }
        Ok(())
    }

    fn reconcile_tenants(&self, now: u64) -> Result<(), Error> {
        let snap = self.store.read()?;
        let mut wanted: Vec<(String, Option<String>, Option<String>)> = Vec::new();
        for t in &self.settings.tenants {
            wanted.push((t.id.clone(), t.display_name.clone(), t.token_alg.clone()));
        }
        // After the explicit declarations, so a `[[tenants]]` entry for the default tenant
        // (e.g. to pick its token algorithm) is the one that counts.
        wanted.push((self.settings.default_tenant.clone(), None, None));
        for c in &self.settings.clients {
            if let Some(t) = &c.tenant {
                wanted.push((t.clone(), None, None));
            }
        }
        // The first declaration of a tenant wins (explicit `[[tenants]]` come before tenants
        // that clients merely name).
        let mut seen = std::collections::HashSet::new();
        wanted.retain(|(id, _, _)| seen.insert(id.clone()));
        for (id, display, alg) in wanted {
            settings_field(validate::TENANT, "tenant", &id)?;
            if let Some(d) = &display {
                settings_field(validate::DISPLAY_NAME, &format!("tenant {id}"), d)?;
            }
            let existing = snap.tenant(&id)?;
            let alg = match alg {
                Some(a) => parse_token_alg(&a)?.as_str().to_owned(),
                None => existing
                    .as_ref()
                    .map_or_else(|| "RS256".to_owned(), |t| t.token_alg.clone()),
            };
            let rec = TenantRecord {
                display_name: display
                    .or_else(|| existing.as_ref().map(|t| t.display_name.clone()))
                    .unwrap_or_else(|| id.clone()),
                created_at: existing.as_ref().map_or(now, |t| t.created_at),
                id,
                token_alg: alg,
            };
            if existing.as_ref() != Some(&rec) {
                self.write(WriteOp::PutTenant(rec))?;
            }
        }
        let snap = self.store.read()?;
        for t in snap.tenants()? {
            self.cache_tenant(&t);
        }
        Ok(())
    }

    fn cache_tenant(&self, t: &TenantRecord) {
        let alg = parse_token_alg(&t.token_alg).unwrap_or(Algorithm::RS256);
        self.tenant_algs.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(t.id.clone(), alg);
            m
        });
    }

    /// Generates the first-run keys for every algorithm that has no active key.
    fn ensure_keys(&self, now: u64) -> Result<Vec<String>, Error> {
        let keys = self.store.hot().signing_keys();
        let mut generated = Vec::new();
        for alg in FIRST_RUN_ALGORITHMS {
            if keys
                .iter()
                .any(|k| k.state == KeyState::Active && k.alg == alg.as_str())
            {
                continue;
            }
            let key = latchkey_core::SigningKey::generate(alg)?;
            self.write(WriteOp::AddSigningKey(new_key_op(
                &key,
                KeyState::Active,
                KeyOrigin::Generated,
                SYSTEM,
                now,
            )?))?;
            generated.push(key.kid().to_owned());
        }
        Ok(generated)
    }

    /// Loads every non-retired key into the ring: the newest active key per algorithm signs,
    /// everything else only verifies.
    fn load_keys(&self) -> Result<(), Error> {
        let mut keys = self.store.hot().signing_keys();
        keys.sort_by_key(|k| (k.created_at, k.kid.clone()));
        let mut active: HashMap<Algorithm, latchkey_core::SigningKey> = HashMap::new();
        for k in keys.iter().filter(|k| k.state != KeyState::Retired) {
            let alg = Algorithm::from_name(&k.alg)?;
            let key = latchkey_core::SigningKey::from_pkcs8_der(alg, k.private_key.expose())?
                .with_kid(k.kid.clone());
            if k.state == KeyState::Active {
                if let Some(older) = active.insert(alg, key) {
                    self.keys.add_verifying_key(older.verifying_key())?;
                }
            } else {
                self.keys.add_verifying_key(key.verifying_key())?;
            }
        }
        for (_, key) in active {
            self.keys.rotate(key)?;
        }
        Ok(())
    }

    fn reconcile_clients(&self, now: u64) -> Result<(), Error> {
        for c in &self.settings.clients {
            settings_field(validate::CLIENT_ID, "client", &c.identifier)?;
            let what = format!("client {}", c.identifier);
            if let Some(d) = &c.display_name {
                settings_field(validate::DISPLAY_NAME, &what, d)?;
            }
            if let Some(p) = &c.profile {
                settings_field(validate::PROFILE, &what, p)?;
            }
            let hash = SecretHash::parse(&c.hashed_secret)
                .map_err(|e| Error::Config(format!("client {:?}: {e}", c.identifier)))?;
            let rec = OperatorClientRecord {
                id: c.identifier.clone(),
                tenant: c
                    .tenant
                    .clone()
                    .unwrap_or_else(|| self.settings.default_tenant.clone()),
                secret_hash: hash,
                display_name: c
                    .display_name
                    .clone()
                    .unwrap_or_else(|| c.identifier.clone()),
                profile: c
                    .profile
                    .clone()
                    .unwrap_or_else(|| ADMINISTRATOR.to_owned()),
                created_at: now,
                generation: 0, // drawn by the store
            };
            if let Some(existing) = self.store.hot().operator_client(&rec.id) {
                // Any change (a new secret above all) re-creates the client: a new
                // generation, so tokens issued under the old settings stop working.
                let same = OperatorClientRecord {
                    created_at: existing.created_at,
                    generation: existing.generation,
                    ..rec.clone()
                };
                if *existing == same {
                    continue;
                }
                self.write(WriteOp::DeleteOperatorClient {
                    id: rec.id.clone(),
                    by: "config".into(),
                    now,
                })?;
            }
            self.write(WriteOp::CreateOperatorClient {
                record: rec,
                by: "config".into(),
            })
            .map_err(|e| Error::Config(format!("client {:?}: {e}", c.identifier)))?;
        }
        Ok(())
    }

    /// Creates the `admin` client (first run) and writes its credentials to
    /// `admin-client.json` (mode 0600), the secret sealed under the master key
    /// ([`crate::credentials`]). The store keeps only its hash.
    fn create_admin(&self, now: u64) -> Result<PathBuf, Error> {
        let secret = generate_secret()?;
        let rec = OperatorClientRecord {
            id: "admin".into(),
            tenant: self.settings.default_tenant.clone(),
            secret_hash: SecretHash::blake3(secret.as_bytes())?,
            display_name: "Administrator (created on first run)".into(),
            profile: ADMINISTRATOR.into(),
            created_at: now,
            generation: 0, // drawn by the store
        };
        let path = self.store.paths().dir.join(ADMIN_CLIENT_FILE);
        // Written before the client exists: a crash in between leaves a file for a client that
        // was never created (first run repeats), never a client nobody has the secret of.
        let _ = std::fs::remove_file(&path);
        crate::credentials::write_sealed(
            &path,
            self.store.master_key(),
            &rec.id,
            &secret,
            &rec.tenant,
        )?;
        self.write(WriteOp::CreateOperatorClient {
            record: rec,
            by: SYSTEM.into(),
        })?;
        Ok(path)
    }

    fn load_revocations(&self) -> Result<(), Error> {
        let updates: Vec<RevocationUpdate> = self
            .store
            .read()?
            .revocations()?
            .iter()
            .filter_map(revocation_update)
            .collect();
        self.revocations.apply(&updates);
        Ok(())
    }
}

/// Token and key revocations as the verify path's set holds them; agent and certificate
/// revocations are checked elsewhere (hot index, TLS trust store).
fn revocation_update(rec: &RevocationRecord) -> Option<RevocationUpdate> {
    match rec.kind {
        RevocationKind::Token => Some(RevocationUpdate::Jti {
            jti: rec.id.clone(),
            forget_after: rec.forget_after,
        }),
        RevocationKind::Key => Some(RevocationUpdate::Kid {
            kid: rec.id.clone(),
            forget_after: rec.forget_after,
        }),
        RevocationKind::Agent | RevocationKind::Certificate => None,
    }
}

/// Where an installed signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Generated by the authority: scheduled rotation replaces it.
    Generated,
    /// Imported by an operator, with its certificate chain (DER, leaf first; may be empty):
    /// pinned, so only an explicit rotation or revocation replaces it.
    Imported { certificate_chain: Vec<Vec<u8>> },
}

fn new_key_op(
    key: &latchkey_core::SigningKey,
    state: KeyState,
    origin: KeyOrigin,
    by: &str,
    now: u64,
) -> Result<NewSigningKey, Error> {
    let (certificate_chain, pinned) = match origin {
        KeyOrigin::Generated => (Vec::new(), false),
        KeyOrigin::Imported { certificate_chain } => (certificate_chain, true),
    };
    Ok(NewSigningKey {
        certificate_chain,
        pinned,
        kid: key.kid().to_owned(),
        alg: key.algorithm().as_str().to_owned(),
        state,
        private_key: Secret::new(key.to_pkcs8_der()?.to_vec()),
        public_key: key.verifying_key().to_spki_der()?,
        by: by.to_owned(),
        now,
    })
}

fn names(p: Permissions) -> Vec<String> {
    p.iter()
        .map(|p: Permission| p.as_str().to_owned())
        .collect()
}

fn unexpected(outcome: &WriteOutcome) -> Error {
    Error::Io(std::io::Error::other(format!(
        "unexpected store outcome {outcome:?}"
    )))
}

/// A fresh client secret: 256 random bits, base64url without padding (43 characters).
/// A settings-file value held to the API's rule for its field (`api::validate`): what an
/// operator configures is stored and audited like what a request sends.
fn settings_field(field: validate::Field, what: &str, value: &str) -> Result<(), Error> {
    field
        .check(value)
        .map(|_| ())
        .map_err(|e| Error::Config(format!("{what}: {e}")))
}

pub fn generate_secret() -> Result<zeroize::Zeroizing<String>, Error> {
    use base64::Engine as _;
    let bytes = Secret::random(32)?;
    Ok(zeroize::Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.expose()),
    ))
}

/// Unix seconds from the system clock (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `/metrics` shows how many requests each store commit made durable.
impl crate::store::CommitObserver for Metrics {
    fn committed(&self, ops: usize) {
        self.observe_commit_batch(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, settings: AppSettings) -> (App, FirstRun) {
        App::open(dir, settings, Arc::new(Metrics::new())).unwrap()
    }

    /// Regression: the implicit default-tenant declaration used to win over an explicit
    /// `[[tenants]]` entry for the same tenant, so its token algorithm could not be chosen.
    #[test]
    fn explicit_declaration_of_the_default_tenant_sets_its_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AppSettings {
            tenants: vec![TenantDecl {
                id: "main".into(),
                display_name: None,
                token_alg: Some("ES256".into()),
            }],
            ..AppSettings::default()
        };
        let (app, _) = open(dir.path(), settings);
        assert_eq!(app.settings.default_tenant, "main");
        assert_eq!(app.tenant_alg("main"), Algorithm::ES256);
    }

    #[test]
    fn first_run_creates_keys_profiles_and_admin_once() {
        let dir = tempfile::tempdir().unwrap();
        let (app, first) = open(dir.path(), AppSettings::default());
        assert_eq!(first.generated_keys.len(), 3);
        let path = first.admin_credentials.clone().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The secret is sealed in the file and opens with the master key beside it.
        let creds = crate::credentials::read(&path, &KeyFileOptions::default()).unwrap();
        let secret = creds.client_secret.as_str();
        assert!(secret.len() >= 43);
        assert!(!std::fs::read_to_string(&path).unwrap().contains(secret));
        let admin = app.store.hot().operator_client("admin").unwrap();
        assert!(admin.secret_hash.verify(secret.as_bytes()));
        assert_eq!(admin.profile, ADMINISTRATOR);
        for alg in FIRST_RUN_ALGORITHMS {
            assert!(app.keys.snapshot().minter(alg).is_some(), "{alg}");
        }
        assert_eq!(app.tenant_alg("main"), Algorithm::RS256);
        drop(app);
        let (app, again) = open(dir.path(), AppSettings::default());
        assert_eq!(again, FirstRun::default());
        assert!(app.keys.snapshot().minter(Algorithm::RS256).is_some());
    }

    #[test]
    fn configured_clients_profiles_and_tenants_are_reconciled() {
        let dir = tempfile::tempdir().unwrap();
        let config = AppConfig::from_toml(
            r#"
            listen = "127.0.0.1:0"
            [tokens]
            operator-lifetime = "10m"
            [[tenants]]
            id = "acme"
            token-alg = "ES256"
            [[profiles]]
            name = "Auditor"
            permissions = ["audit:read"]
            [[clients]]
            identifier = "Job"
            hashed_secret = "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="
            display_name = "Permissions for jobs"
            profile = "Auditor"
            tenant = "acme"
            "#,
        )
        .unwrap();
        let settings = config.resolve().unwrap();
        assert_eq!(settings.operator_token_lifetime, 600);
        let (app, first) = open(dir.path(), settings.clone());
        // First run: the configured clients and the admin.
        assert!(first.admin_credentials.is_some());
        assert!(app.store.hot().operator_client("admin").is_some());
        let job = app.store.hot().operator_client("Job").unwrap();
        assert!(job.secret_hash.verify(b"secret"));
        assert_eq!(
            (job.tenant.as_str(), job.profile.as_str()),
            ("acme", "Auditor")
        );
        assert_eq!(app.tenant_alg("acme"), Algorithm::ES256);
        drop(app);
        // Changing the declared hash replaces the client.
        let mut changed = settings;
        changed.clients[0].hashed_secret = SecretHash::usercube(b"other").to_text();
        let (app, _) = open(dir.path(), changed);
        let job = app.store.hot().operator_client("Job").unwrap();
        assert!(job.secret_hash.verify(b"other") && !job.secret_hash.verify(b"secret"));
    }

    /// Configured ids are stored and audited like requested ones, so they follow the same
    /// rules (`api::validate`), refused at start naming what is wrong.
    #[test]
    fn configured_ids_follow_the_api_rules() {
        let check = |toml: &str, needle: &str| {
            let dir = tempfile::tempdir().unwrap();
            let settings = AppConfig::from_toml(toml).unwrap().resolve().unwrap();
            let err = App::open(dir.path(), settings, Arc::new(Metrics::new())).expect_err(toml);
            assert!(
                matches!(&err, Error::Config(m) if m.contains(needle)),
                "{toml}: {err}"
            );
        };
        let hash = "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=";
        check(
            &format!("[[clients]]\nidentifier = \"evil/x\"\nhashed_secret = \"{hash}\""),
            "client: client_id: ",
        );
        check(
            &format!(
                "[[clients]]\nidentifier = \"ok\"\nhashed_secret = \"{hash}\"\nprofile = \"a b\""
            ),
            "client ok: profile: ",
        );
        check("[[tenants]]\nid = \"t/1\"", "tenant: tenant: ");
        check(
            "[[profiles]]\nname = \"x y\"\npermissions = []",
            "profile: profile: ",
        );
    }

    #[test]
    fn replay_log_and_key_publication_settings() {
        let settings = AppConfig::from_toml(
            "[tokens]\nreplay-log-sync-interval = \"250ms\"\nreplay-log-max-size = 1000\n\
             [keys]\npre-publication = \"10m\"\njwks-max-age = \"1h\"\n",
        )
        .and_then(AppConfig::resolve)
        .unwrap();
        assert_eq!(
            settings.replay_log.sync_interval,
            Duration::from_millis(250)
        );
        assert_eq!(
            settings.replay_log.max_bytes,
            1 << 20,
            "raised to the minimum"
        );
        assert_eq!(settings.key_prepublication, 600);
        assert_eq!(
            settings.jwks_max_age(),
            599,
            "capped below the pre-publication"
        );
        let d = AppConfig::default().resolve().unwrap();
        assert_eq!(
            (d.replay_log, d.key_prepublication, d.jwks_max_age()),
            (ReplayLogConfig::default(), 3600, 900)
        );
    }

    #[test]
    fn bad_configuration_is_refused_clearly() {
        let check = |toml: &str, needle: &str| {
            let err = AppConfig::from_toml(toml)
                .and_then(AppConfig::resolve)
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        };
        check(
            "[tokens]\noperator-alg = \"HS256\"",
            "unsupported token algorithm",
        );
        check("[tokens]\nnope = 1", "unknown field");
        check(
            "[[tenants]]\nid = \"a\"\ntoken-alg = \"none\"",
            "unsupported token algorithm",
        );
        let dir = tempfile::tempdir().unwrap();
        let settings = AppSettings {
            profiles: vec![ProfileDecl {
                name: "P".into(),
                permissions: vec!["agents:fly".into()],
            }],
            ..AppSettings::default()
        };
        let err = App::open(dir.path(), settings, Arc::new(Metrics::new())).unwrap_err();
        assert!(err.to_string().contains("agents:fly"), "{err}");
    }

    #[test]
    fn rotation_keeps_old_tokens_verifying_until_retirement() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = open(dir.path(), AppSettings::default());
        let now = app.now();
        let claims = app.base_claims("c", Audience::One("x".into()), 3600, now);
        let old = app
            .mint(Algorithm::ES256, TokenType::OperatorAccessToken, &claims)
            .unwrap();
        let old_kid = app
            .keys
            .snapshot()
            .minter(Algorithm::ES256)
            .unwrap()
            .key()
            .kid()
            .to_owned();
        let v = app.validation(TokenType::OperatorAccessToken);
        let new = app.rotate_key_now(Algorithm::ES256, "test").unwrap();
        assert_ne!(new.kid, old_kid);
        assert!(app.verify(&old, &v, now).is_ok());
        assert_eq!(
            app.store.hot().signing_key(&old_kid).unwrap().state,
            KeyState::Retiring
        );
        // Not yet: the overlap has not passed.
        assert!(app.retire_expired_keys(now + 10).unwrap().is_empty());
        let later = now + app.settings.retire_after();
        assert_eq!(
            app.retire_expired_keys(later).unwrap(),
            vec![old_kid.clone()]
        );
        assert!(app.verify(&old, &v, now).is_err());
        drop(app);
        // A reopened app does not load the retired key.
        let (app, _) = open(dir.path(), AppSettings::default());
        assert!(app.keys.snapshot().key(&old_kid).is_none());
        assert_eq!(
            app.keys
                .snapshot()
                .minter(Algorithm::ES256)
                .unwrap()
                .key()
                .kid(),
            new.kid
        );
    }

    /// Scheduled rotation and `rotate_key` publish first: the new key verifies and is
    /// published for the pre-publication time before it signs; then the old key retires, and
    /// leaves the published set once the tokens others verify have expired.
    #[test]
    fn rotation_publishes_before_signing_and_unpublishes_after_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AppSettings {
            key_rotation_interval: Some(30 * 86_400),
            ..AppSettings::default()
        };
        let (app, _) = open(dir.path(), settings);
        let now = app.now();
        let signer = |app: &App| {
            app.keys
                .snapshot()
                .minter(Algorithm::RS256)
                .unwrap()
                .key()
                .kid()
                .to_owned()
        };
        let old = signer(&app);
        // Not due yet.
        assert!(app.scheduled_rotation(now).unwrap().is_empty());
        let prepub = app.settings.key_prepublication;
        let due = now + 30 * 86_400 - prepub;
        let published = app.scheduled_rotation(due).unwrap();
        assert_eq!(published.len(), 3, "one per algorithm");
        let new = app.published_key(Algorithm::RS256).unwrap().kid.clone();
        assert!(published.contains(&new));
        // Published: in the key ring (verifies, JWKS) but the old key still signs.
        assert!(app.keys.snapshot().key(&new).is_some());
        assert!(app.is_published(&new, due));
        assert_eq!(signer(&app), old);
        let at = due + prepub + 1;
        assert_eq!(app.next_activation(Some(Algorithm::RS256)), Some(at));
        // A second request does not publish another key.
        assert_eq!(app.rotate_key(Algorithm::RS256, "t").unwrap().kid, new);
        assert!(app.scheduled_rotation(due + 1).unwrap().is_empty());
        // token_key may be cached only until the activation; the JWKS for the configured
        // max-age, which never exceeds the pre-publication.
        assert_eq!(app.key_cache_max_age(Some(Algorithm::RS256), at - 5), 4);
        assert_eq!(
            app.key_cache_max_age(None, due),
            app.settings.jwks_max_age()
        );
        assert!(app.settings.jwks_max_age() < prepub);
        // Due: activated; the old key retires but stays published while its tokens live.
        assert!(app.activate_due_keys(at - 1).unwrap().is_empty());
        assert_eq!(app.activate_due_keys(at).unwrap().len(), 3);
        assert_eq!(signer(&app), new);
        assert_eq!(
            app.store.hot().signing_key(&old).unwrap().state,
            KeyState::Retiring
        );
        let unpublish = at + app.settings.unpublish_after();
        assert!(app.is_published(&old, unpublish - 1));
        assert!(!app.is_published(&old, unpublish));
        // Still verifies (boarding tokens) until retirement.
        assert!(app.keys.snapshot().key(&old).is_some());
        assert!(app.settings.retire_after() > app.settings.unpublish_after());
    }

    /// An imported key is pinned: scheduled rotation skips it however old it is, while the
    /// generated keys of other algorithms still rotate; an explicit rotation replaces it.
    #[test]
    fn scheduled_rotation_leaves_imported_keys_alone() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AppSettings {
            key_rotation_interval: Some(86_400),
            ..AppSettings::default()
        };
        let (app, _) = open(dir.path(), settings);
        let imported = latchkey_core::SigningKey::generate(Algorithm::RS256)
            .unwrap()
            .with_kid("imported".to_owned());
        let origin = KeyOrigin::Imported {
            certificate_chain: vec![vec![0x30, 0]],
        };
        let rec = app.install_key(imported, origin, "t").unwrap();
        assert!(rec.pinned);
        let long_after = app.now() + 10 * 86_400;
        let published = app.scheduled_rotation(long_after).unwrap();
        assert_eq!(published.len(), 2, "ES256 and EdDSA rotate, RS256 does not");
        assert!(app.published_key(Algorithm::RS256).is_none());
        assert!(app.activate_due_keys(long_after + 86_400).unwrap().len() == 2);
        let minter = |app: &App| {
            app.keys
                .snapshot()
                .minter(Algorithm::RS256)
                .unwrap()
                .key()
                .kid()
                .to_owned()
        };
        assert_eq!(minter(&app), "imported");
        let fresh = app.rotate_key_now(Algorithm::RS256, "t").unwrap();
        assert!(!fresh.pinned && fresh.certificate_chain.is_empty());
        assert_eq!(minter(&app), fresh.kid);
        assert_eq!(
            app.store.hot().signing_key("imported").unwrap().state,
            KeyState::Retiring
        );
    }

    /// A key a scheduled rotation published just before an import does not take over from
    /// the imported key when its activation time comes.
    #[test]
    fn a_key_published_before_an_import_does_not_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = open(dir.path(), AppSettings::default());
        let published = app.rotate_key(Algorithm::RS256, "t").unwrap();
        assert_eq!(published.state, KeyState::Published);
        let imported = latchkey_core::SigningKey::generate(Algorithm::RS256)
            .unwrap()
            .with_kid("imported".to_owned());
        let origin = KeyOrigin::Imported {
            certificate_chain: vec![vec![0x30, 0]],
        };
        app.install_key(imported, origin, "t").unwrap();
        let later = app.now() + 10 * 86_400;
        assert!(app.activate_due_keys(later).unwrap().is_empty());
        let hot = app.store.hot();
        assert_eq!(hot.signing_key("imported").unwrap().state, KeyState::Active);
        assert_eq!(
            hot.signing_key(&published.kid).unwrap().state,
            KeyState::Published
        );
    }

    /// `rotate_key_now` activates at once, preferring a key already published.
    #[test]
    fn emergency_rotation_activates_the_published_key_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = open(dir.path(), AppSettings::default());
        let published = app.rotate_key(Algorithm::ES256, "t").unwrap();
        assert_eq!(published.state, KeyState::Published);
        let now = app.rotate_key_now(Algorithm::ES256, "t").unwrap();
        assert_eq!(
            (now.kid.as_str(), now.state),
            (published.kid.as_str(), KeyState::Active)
        );
        let fresh = app.rotate_key_now(Algorithm::ES256, "t").unwrap();
        assert_ne!(fresh.kid, published.kid);
        assert_eq!(
            app.keys
                .snapshot()
                .minter(Algorithm::ES256)
                .unwrap()
                .key()
                .kid(),
            fresh.kid
        );
        // A reopened app loads a published key as verifying only.
        let p = app.rotate_key(Algorithm::EdDSA, "t").unwrap();
        drop(app);
        let (app, _) = open(dir.path(), AppSettings::default());
        assert!(app.keys.snapshot().key(&p.kid).is_some());
        assert_ne!(
            app.keys
                .snapshot()
                .minter(Algorithm::EdDSA)
                .unwrap()
                .key()
                .kid(),
            p.kid
        );
    }

    #[test]
    fn revocations_apply_before_the_reply_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = open(dir.path(), AppSettings::default());
        let app = Arc::new(app);
        let now = app.now();
        let claims = app.base_claims("c", Audience::One("x".into()), 3600, now);
        let token = app
            .mint(Algorithm::EdDSA, TokenType::OperatorAccessToken, &claims)
            .unwrap();
        let v = app.validation(TokenType::OperatorAccessToken);
        assert!(app.verify(&token, &v, now).is_ok());
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = Arc::clone(&app);
        let t = token.clone();
        let v2 = v.clone();
        app.submit(
            WriteOp::Revoke {
                kind: RevocationKind::Token,
                id: claims.jti.clone().unwrap(),
                by: "t".into(),
                reason: "r".into(),
                now,
                forget_after: now + 4000,
            },
            move |r| {
                // Inside the reply: already refused.
                tx.send((r.is_ok(), probe.verify(&t, &v2, now).is_err()))
                    .unwrap();
            },
        );
        assert_eq!(rx.recv().unwrap(), (true, true));
        // The reply closure's handles drop on the writer thread just after it answered; wait
        // for them so this test's drop closes the store.
        while Arc::strong_count(&app) > 1 {
            std::thread::yield_now();
        }
        drop(app);
        let (app, _) = open(dir.path(), AppSettings::default());
        assert!(matches!(
            app.verify(&token, &v, now),
            Err(Error::Token(latchkey_core::Error::Rejected(
                RejectedError::Revoked
            )))
        ));
    }

    #[test]
    fn revoked_key_stops_signing_and_verifying() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = open(dir.path(), AppSettings::default());
        let now = app.now();
        let kid = app
            .keys
            .snapshot()
            .minter(Algorithm::EdDSA)
            .unwrap()
            .key()
            .kid()
            .to_owned();
        let claims = app.base_claims("c", Audience::One("x".into()), 3600, now);
        let token = app
            .mint(Algorithm::EdDSA, TokenType::OperatorAccessToken, &claims)
            .unwrap();
        app.revoke_key(&kid, "test", "compromised").unwrap();
        let v = app.validation(TokenType::OperatorAccessToken);
        assert!(app.verify(&token, &v, now).is_err());
        let fresh = app
            .mint(Algorithm::EdDSA, TokenType::OperatorAccessToken, &claims)
            .unwrap();
        assert!(app.verify(&fresh, &v, now).is_ok());
        assert_eq!(
            app.store.hot().signing_key(&kid).unwrap().state,
            KeyState::Retired
        );
    }
}
