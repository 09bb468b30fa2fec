//! Opening the data directory: first run (signing keys, the `admin` operator client and its
//! credentials file), the configured profiles, tenants and operator clients reconciled into
//! the store, the replay log recovered, and the in-memory state loaded from the store.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use latchkey_core::Algorithm;
use latchkey_core::replay::ReplayCache;
use latchkey_core::revocation::RevocationUpdate;

use super::{App, revocation_update};
use crate::api::validate;
use crate::config::parse_token_alg;
use crate::error::Error;
use crate::permissions::{Permission, Permissions};
use crate::replay_log::{ReplayLog, StartContext};
use crate::store::{
    OperatorClientRecord, ProfileRecord, Secret, SecretHash, TenantRecord, WriteOp,
};

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

/// What opening the data directory did that the operator must know about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FirstRun {
    /// The first operator client was created; its credentials are in this file (mode 0600).
    pub admin_credentials: Option<PathBuf>,
    /// Signing keys were generated (kids).
    pub generated_keys: Vec<String>,
}

impl App {
    /// The open-time work, in order: replay log, profiles, tenants, signing keys (generated,
    /// loaded, activated or retired as due), operator clients (and on first run the `admin`
    /// client), revocations.
    pub(super) fn bootstrap(&mut self) -> Result<FirstRun, Error> {
        let mut first = FirstRun::default();
        let now = self.now();
        self.open_replay_log(now)?;
        self.reconcile_profiles()?;
        self.reconcile_tenants(now)?;
        first.generated_keys = self.ensure_keys(now)?;
        self.load_keys()?;
        self.activate_due_keys(now)?;
        self.retire_expired_keys(now)?;
        // First run is a store without operator clients, whatever the configuration declares.
        let fresh = self.store.read()?.operator_clients()?.is_empty();
        self.reconcile_clients(now)?;
        if fresh {
            first.admin_credentials = Some(self.create_admin(now)?);
        }
        self.load_revocations()?;
        Ok(first)
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
        log.start_sync(crate::clock::unix_now)?;
        self.replay_log = Some(log);
        self.replay_floor = floor;
        Ok(())
    }

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
                self.write(WriteOp::PutProfile {
                    record: p,
                    by: SYSTEM.into(),
                    now: self.now(),
                })?;
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
        let mut seen = HashSet::new();
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
                self.write(WriteOp::PutTenant { record: rec, now })?;
            }
        }
        let snap = self.store.read()?;
        for t in snap.tenants()? {
            self.cache_tenant(&t);
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
            let mut rec = OperatorClientRecord {
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
                suspended_at: None,
                previous_secret_hash: None,
                previous_valid_until: 0,
            };
            if let Some(existing) = self.store.hot().operator_client(&rec.id) {
                // A suspension outlives restarts and settings changes: only an operator
                // resumes a client.
                rec.suspended_at = existing.suspended_at;
                // Any change (a new secret above all) re-creates the client: a new
                // generation, so tokens issued under the old settings stop working.
                let same = OperatorClientRecord {
                    created_at: existing.created_at,
                    generation: existing.generation,
                    previous_secret_hash: existing.previous_secret_hash.clone(),
                    previous_valid_until: existing.previous_valid_until,
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
            suspended_at: None,
            previous_secret_hash: None,
            previous_valid_until: 0,
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

    pub(super) fn load_revocations(&self) -> Result<(), Error> {
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

fn names(p: Permissions) -> Vec<String> {
    p.iter()
        .map(|p: Permission| p.as_str().to_owned())
        .collect()
}

/// A settings-file value held to the API's rule for its field (`api::validate`): what an
/// operator configures is stored and audited like what a request sends.
fn settings_field(field: validate::Field, what: &str, value: &str) -> Result<(), Error> {
    field
        .check(value)
        .map(|_| ())
        .map_err(|e| Error::Config(format!("{what}: {e}")))
}

/// A fresh client secret: 256 random bits, base64url without padding (43 characters).
pub fn generate_secret() -> Result<zeroize::Zeroizing<String>, Error> {
    use base64::Engine as _;
    let bytes = Secret::random(32)?;
    Ok(zeroize::Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.expose()),
    ))
}
