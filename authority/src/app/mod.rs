//! The application state every API handler shares through an `Arc<App>`.
//!
//! `App` ties the token core to the store: the signing keys in the store become the
//! [`KeyRing`] (one active minter per algorithm, older keys verifying until retired), the
//! revocations in the store feed the [`RevocationSet`] the verify path reads without locks, and
//! the operator clients and profiles of the settings file are reconciled into the store at
//! open. It is built complete ([`App::build`] from [`Parts`]) and never patched afterwards.
//!
//! **Writes go through [`App::submit`]** (or [`App::write`] off the event loop): it forwards to
//! `Store::submit` and, on the writer thread right after the commit and before the caller's
//! reply runs, applies revocations to the `RevocationSet`. So a revocation is visible to every
//! event loop before its request is answered. A write that changes mutual-TLS trust is
//! answered after the trust is rebuilt, which happens on a thread of its own ([`trust`]), not
//! the writer's.
//!
//! The other jobs live beside it: [`keys`] (the key life cycle, the only code that changes the
//! key ring), [`bootstrap`] (first run and open-time reconciliation), [`maintenance`] (the
//! maintenance thread) and [`trust`].
//!
//! **Time.** `now()` is Unix seconds from the system clock ([`crate::clock`]); everything below
//! takes `now` as a parameter so tests can move time.

pub mod bootstrap;
pub mod keys;
mod lookup;
pub mod maintenance;
pub mod trust;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use latchkey_core::claims::{Audience, Claims, TokenType, Validation};
use latchkey_core::jti::JtiGenerator;
use latchkey_core::keyring::KeyRing;
use latchkey_core::replay::ReplayCache;
use latchkey_core::revocation::{RevocationSet, RevocationUpdate};
use latchkey_core::{Algorithm, RejectedError, VerifiedToken};

pub use self::bootstrap::{
    ADMIN_CLIENT_FILE, ADMINISTRATOR, FIRST_RUN_ALGORITHMS, FirstRun, READ_ONLY, SYSTEM,
    generate_secret,
};
pub use self::keys::KeyOrigin;
pub use self::trust::Trust;
/// The settings live in [`crate::config`]; these names stay importable from here.
pub use crate::config::{
    AppConfig, AppSettings, ClientDecl, MAX_DATASOURCE_CONFIG_BYTES, ProfileDecl, TenantDecl,
    parse_token_alg,
};
use crate::error::Error;
use crate::http::Metrics;
use crate::pki::TrustState;
use crate::replay_log::ReplayLog;
use crate::store::{
    RevocationKind, RevocationRecord, Store, StoreError, StoreOptions, WriteOp, WriteOutcome,
};

/// Everything an [`App`] is made of that its caller decides.
#[derive(Debug)]
pub struct Parts {
    /// The open data directory.
    pub store: Store,
    /// Checked settings ([`crate::config::SettingsFile::app_settings`]).
    pub settings: AppSettings,
    pub metrics: Arc<Metrics>,
    /// Mutual-TLS trust: the TLS layer's client trust store when a listener asks for
    /// certificates, the file anchors, the server certificate file (`TrustState::default()`:
    /// none of them).
    pub trust: TrustState,
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
    /// Mutual-TLS trust: rebuilt after commits that change certificates or certificate
    /// revocations, before they are answered.
    pub mtls: Trust,
    /// The bounded pool for heavy reads and blocking work, off the event loops.
    pub offload: crate::api::offload::Offload,
    /// Cluster mode: the owner node of each client's assertion `jti`s, set once before the
    /// routes are built (`crate::cluster`). Unset, the token path is the single node's.
    #[cfg(feature = "etcd")]
    pub replay_owners: OnceLock<Arc<crate::cluster::replay::ReplayOwners>>,
    urls: OnceLock<lookup::Urls>,
    /// Token algorithm per tenant (from the tenants table), read without locks.
    tenant_algs: ArcSwap<HashMap<String, Algorithm>>,
    stopping: Arc<AtomicBool>,
    /// Held from an activation's store write until its key signs (`app/keys`).
    activations: std::sync::Mutex<()>,
}

impl App {
    /// Opens (or creates) the data directory and builds the state without mutual TLS
    /// (tests, tools); `serve` opens the store itself and calls [`App::build`].
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

    /// Like [`App::open`] for an already open store.
    pub fn with_store(
        store: Store,
        settings: AppSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(App, FirstRun), Error> {
        App::build(Parts {
            store,
            settings,
            metrics,
            trust: TrustState::default(),
        })
    }

    /// Builds the state and brings the store in line with the settings: built-in and
    /// configured profiles, tenants, signing keys, configured clients and, on first run, the
    /// `admin` client. Then the trust is built from the store: tokens bound to a revoked
    /// certificate stay refused, with or without mutual TLS.
    pub fn build(parts: Parts) -> Result<(App, FirstRun), Error> {
        let mut app = App::bare(parts)?;
        let first = app.bootstrap()?;
        app.mtls.refresh(&app)?;
        Ok((app, first))
    }

    /// The state of an existing store without any first-run or configuration work (the CLI on
    /// a stopped server's data directory): keys, tenants and revocations loaded as they are.
    pub fn offline(
        store: Store,
        settings: AppSettings,
        metrics: Arc<Metrics>,
    ) -> Result<App, Error> {
        let app = App::bare(Parts {
            store,
            settings,
            metrics,
            trust: TrustState::default(),
        })?;
        for t in app.store.read()?.tenants()? {
            app.cache_tenant(&t);
        }
        app.load_keys()?;
        app.load_revocations()?;
        Ok(app)
    }

    fn bare(parts: Parts) -> Result<App, Error> {
        let Parts {
            store,
            settings,
            metrics,
            trust,
        } = parts;
        store.set_commit_observer(metrics.clone());
        let replay = ReplayCache::with_random_key(settings.replay)
            .map_err(|_| Error::Config("system random source failed".into()))?;
        let jti = JtiGenerator::random()
            .map_err(|_| Error::Config("system random source failed".into()))?;
        let offload = crate::api::offload::Offload::new(settings.offload, Some(metrics.clone()))
            .map_err(Error::Io)?;
        Ok(App {
            offload,
            #[cfg(feature = "etcd")]
            replay_owners: OnceLock::new(),
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
            mtls: Trust::new(trust),
            urls: OnceLock::new(),
            tenant_algs: ArcSwap::from_pointee(HashMap::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            activations: std::sync::Mutex::new(()),
        })
    }

    /// The skew tolerated on client assertions: the configured leeway, but never longer than
    /// the replay cache remembers a `jti` past its `exp` (else an assertion could be accepted
    /// again after the cache forgot it).
    pub fn assertion_leeway(&self) -> u64 {
        self.settings.leeway.min(self.settings.replay.leeway)
    }

    /// Refuses the token path (minting, introspection, operator bearer tokens) while this
    /// node, in a cluster, cannot prove its copy of the store is current: a revocation made
    /// on another node must not be missed here. Always `Ok` on a single node.
    pub fn check_serving(&self) -> Result<(), Error> {
        self.store.hot().serving().map_err(|stale| {
            crate::error::ApiError::Unavailable {
                retry_after: 1,
                description: stale.to_string(),
            }
            .into()
        })
    }

    /// Follows writes of other cluster nodes beyond the hot index: the key ring (`keys`) and
    /// the mutual-TLS trust (`trust`). Failures are logged; the next change retries.
    pub fn follow_cluster_change(
        &self,
        keys: bool,
        trust: bool,
        revoked: &[crate::store::RevocationRecord],
    ) {
        let updates: Vec<_> = revoked.iter().filter_map(revocation_update).collect();
        if !updates.is_empty() {
            self.revocations.apply(&updates);
        }
        if keys && let Err(e) = self.sync_key_ring() {
            tracing::error!(error = %e, "could not follow the cluster's signing keys");
        }
        if trust {
            self.mtls.refresh_logged(self);
        }
    }

    /// Loads every token and key revocation of the store into the verify path's set again
    /// (idempotent).
    pub fn reload_revocations(&self) -> Result<(), Error> {
        self.load_revocations()
    }

    /// Unix seconds.
    pub fn now(&self) -> u64 {
        crate::clock::unix_now()
    }

    /// Submits a write without blocking; `reply` runs after the commit, on the store's writer
    /// thread (or, for a write that changes mutual-TLS trust, on the trust thread once the
    /// trust is rebuilt). Revocations it recorded are already visible to verification, and
    /// certificate changes to the next handshake, when `reply` runs.
    pub fn submit(
        self: &Arc<Self>,
        op: WriteOp,
        reply: impl FnOnce(Result<WriteOutcome, StoreError>) + Send + 'static,
    ) {
        let app = Arc::clone(self);
        self.store.submit(op, move |result| {
            if let Ok(outcome) = &result {
                app.after_commit(outcome);
                if trust_changed(outcome) {
                    let trust = Arc::clone(&app);
                    app.mtls
                        .rebuild_then(trust, Box::new(move || reply(result)));
                    return;
                }
            }
            reply(result);
        });
    }

    /// Submits a write and waits for it, the trust rebuilt on this thread if the write
    /// changed it. Never call this on an event loop thread.
    pub fn write(&self, op: WriteOp) -> Result<WriteOutcome, Error> {
        let outcome = self.store.write(op)?;
        self.after_commit(&outcome);
        if trust_changed(&outcome) {
            self.mtls.refresh_logged(self);
        }
        Ok(outcome)
    }

    /// What every commit changes in memory, cheap enough for the writer thread.
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
    }

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
        // An offboarding ends the agent's tokens, not the IAT issued to board it again in the
        // same second: the store's boarding table says whether an IAT is current.
        if !matches!(
            validation.token_type,
            TokenType::OperatorAccessToken | TokenType::InitialAccessToken
        ) && let Some(sub) = claims.sub.as_deref()
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
}

/// Whether a commit changes mutual-TLS trust (certificates, certificate revocations).
fn trust_changed(outcome: &WriteOutcome) -> bool {
    match outcome {
        WriteOutcome::Certificate(_) => true,
        WriteOutcome::Revocation(rec) => rec.kind == RevocationKind::Certificate,
        _ => false,
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

/// `/metrics` shows how many requests each store commit made durable.
impl crate::store::CommitObserver for Metrics {
    fn committed(&self, ops: usize) {
        self.observe_commit_batch(ops);
    }
    fn commit_took(&self, elapsed: std::time::Duration) {
        self.observe_commit_latency(elapsed);
    }
    fn queue_depth(&self, waiting: usize) {
        self.set_writer_queue_depth(waiting);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::replay_log::ReplayLogConfig;
    use crate::store::{KeyFileOptions, KeyState, SecretHash};

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
        let (app, _) = open(dir.path(), changed.clone());
        let job = app.store.hot().operator_client("Job").unwrap();
        assert!(job.secret_hash.verify(b"other") && !job.secret_hash.verify(b"secret"));
        // A suspension outlives a restart with the same settings and a changed secret.
        app.write(WriteOp::SuspendOperatorClient {
            id: "Job".into(),
            suspend: true,
            by: "test".into(),
            now: app.now(),
        })
        .unwrap();
        let suspended = app.store.hot().operator_client("Job").unwrap();
        let settings = changed;
        drop(app);
        let (app, _) = open(dir.path(), settings.clone());
        assert_eq!(
            *app.store.hot().operator_client("Job").unwrap(),
            *suspended,
            "unchanged settings leave the suspended client as it is"
        );
        drop(app);
        let mut again = settings;
        again.clients[0].hashed_secret = SecretHash::usercube(b"third").to_text();
        let (app, _) = open(dir.path(), again);
        let job = app.store.hot().operator_client("Job").unwrap();
        assert!(job.secret_hash.verify(b"third"));
        assert_eq!(job.suspended_at, suspended.suspended_at, "still suspended");
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

    /// The trust is rebuilt off the writer thread, and the write is answered only after the
    /// rebuild: a certificate revoked is refused as soon as its revocation is acknowledged.
    #[test]
    fn certificate_writes_are_answered_after_a_trust_rebuild_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = open(dir.path(), AppSettings::default());
        let app = Arc::new(app);
        let x5t = crate::pki::x5t_s256(b"certificate");
        assert!(!app.mtls.binding_revoked(&x5t));
        let now = app.now();
        let (tx, rx) = std::sync::mpsc::channel();
        let seen = Arc::clone(&app);
        let check = x5t.clone();
        app.submit(
            WriteOp::Revoke {
                kind: RevocationKind::Certificate,
                id: crate::pki::fingerprint_hex(b"certificate"),
                by: "test".into(),
                reason: "compromised".into(),
                now,
                forget_after: now + 3600,
            },
            move |result| {
                let thread = std::thread::current().name().map(str::to_owned);
                tx.send((result.is_ok(), thread, seen.mtls.binding_revoked(&check)))
                    .unwrap();
            },
        );
        let (ok, thread, revoked) = rx.recv().unwrap();
        assert!(ok);
        assert!(revoked, "the reply runs after the rebuild");
        assert_ne!(thread.as_deref(), Some("latchkey-store-writer"));
        assert!(app.mtls.binding_revoked(&x5t));
    }
}
