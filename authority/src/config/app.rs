//! The operator sections of the settings file (`[tokens]`, `[keys]`, `[agents]`,
//! `[[tenants]]`, `[[profiles]]`, `[[clients]]`): [`AppConfig`] as read, and the checked
//! [`AppSettings`] the application state is built with.

use std::path::Path;
use std::time::Duration;

use latchkey_core::Algorithm;
use latchkey_core::replay::ReplayConfig;

use super::HumanDuration;
use crate::error::Error;
use crate::replay_log::ReplayLogConfig;
use crate::store::KeyFileOptions;

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
    /// How `App::open` unlocks the master key file (its passphrase). Never from the TOML
    /// file; `serve` opens the store itself with `--passphrase-file` or
    /// `LATCHKEY_PASSPHRASE`.
    pub master_key: KeyFileOptions,
    /// Replay cache sizing for client assertions. Size `capacity` for at least
    /// 1.5 × peak token rate × (`assertion_max_age` + leeway).
    pub replay: ReplayConfig,
    /// How long after a rotation the replaced RAT, secret and keys stay usable if the agent
    /// has not used its new ones yet (seconds; 0: they die at once). Lets an agent whose
    /// rotation answer was lost repeat the rotation and get the same answer.
    pub rotation_grace: u64,
    /// How long an operator client's replaced secret keeps working after a secret rotation
    /// that names no grace (seconds; `[tokens] client-secret-grace`).
    pub client_secret_grace: u64,
    /// The longest grace a secret rotation may ask for (seconds;
    /// `[tokens] client-secret-grace-max`).
    pub client_secret_grace_max: u64,
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
    /// The off-loop pool for heavy reads (set by `serve` from its flags).
    pub offload: crate::api::offload::OffloadConfig,
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
            client_secret_grace: 24 * 3600,
            client_secret_grace_max: 30 * 24 * 3600,
            datasource_config_max_bytes: 64 * 1024,
            replay_log: ReplayLogConfig::default(),
            client_throttle: crate::api::throttle::ThrottleConfig::CLIENT_DEFAULT,
            source_throttle: crate::api::throttle::ThrottleConfig::SOURCE_DEFAULT,
            audit: crate::refusal_audit::AuditPolicy::DEFAULT,
            offload: crate::api::offload::OffloadConfig::default(),
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
    pub operator_lifetime: Option<HumanDuration>,
    pub access_lifetime: Option<HumanDuration>,
    pub boarding_lifetime: Option<HumanDuration>,
    pub secret_lifetime: Option<HumanDuration>,
    pub leeway: Option<HumanDuration>,
    pub operator_alg: Option<String>,
    pub assertion_max_age: Option<HumanDuration>,
    /// Slots in the client-assertion replay cache (8 bytes each).
    pub replay_capacity: Option<usize>,
    /// Most recent assertions one agent may hold in the replay cache.
    pub replay_max_per_issuer: Option<usize>,
    /// How often the replay log is fsynced.
    pub replay_log_sync_interval: Option<HumanDuration>,
    /// Most bytes the replay log may hold (30 per accepted assertion).
    pub replay_log_max_size: Option<u64>,
    /// Default grace of an operator client's replaced secret.
    pub client_secret_grace: Option<HumanDuration>,
    /// Longest grace a secret rotation may ask for.
    pub client_secret_grace_max: Option<HumanDuration>,
}

/// `[keys]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeysConfig {
    pub rotation_interval: Option<HumanDuration>,
    /// How long a new key is in the JWKS before it signs (1 h; 0 activates at once).
    pub pre_publication: Option<HumanDuration>,
    /// `Cache-Control: max-age` of the published key sets (15 min; capped below
    /// `pre-publication`).
    pub jwks_max_age: Option<HumanDuration>,
    pub maintenance_interval: Option<HumanDuration>,
}

/// `[agents]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentsConfig {
    /// Grace window of a rotation's replaced credentials ("0s" turns it off).
    pub rotation_grace: Option<HumanDuration>,
    /// Largest `dataSourceConfiguration` in bytes.
    pub datasource_config_max_bytes: Option<usize>,
}

/// Upper bound of `datasource-config-max-bytes`: the record holding it must stay below the
/// store's record limit.
pub const MAX_DATASOURCE_CONFIG_BYTES: usize = 192 * 1024;

impl AppConfig {
    /// Reads the operator sections of a TOML settings file (the CLI on a stopped server).
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
        let secs = |v: Option<HumanDuration>, default: u64, name: &str| {
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
        let client_secret_grace_max = t
            .client_secret_grace_max
            .map_or(d.client_secret_grace_max, |h| h.0.as_secs());
        let client_secret_grace = t
            .client_secret_grace
            .map_or(d.client_secret_grace, |h| h.0.as_secs());
        if client_secret_grace > client_secret_grace_max {
            return Err(Error::Config(
                "tokens.client-secret-grace must not exceed tokens.client-secret-grace-max".into(),
            ));
        }
        let settings = AppSettings {
            issuer: t.issuer,
            public_url: t.public_url.as_deref().map(super::public_url).transpose()?,
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
            client_secret_grace,
            client_secret_grace_max,
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
            offload: d.offload,
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
