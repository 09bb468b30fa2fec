//! The key life cycle, and the only code that changes the key ring.
//!
//! `Published` → `Active` → `Retiring` → `Retired`. A rotation first publishes the new key
//! (JWKS, `/token_keys`) without signing with it, for [`AppSettings::key_prepublication`]; the
//! published key sets are served with `Cache-Control: max-age` of at most that
//! ([`AppSettings::jwks_max_age`]), so a consumer that caches them as told has the new `kid`
//! before the first token it signs. Then the maintenance thread activates it: it signs, and the
//! previous key becomes `Retiring`, which only verifies. A retiring key leaves the published
//! sets once the tokens others verify (access and operator tokens) have expired
//! ([`AppSettings::unpublish_after`]), and the ring once everything it signed has
//! ([`AppSettings::retire_after`], boarding tokens included): then it is `Retired`.
//! [`App::rotate_key_now`] (emergencies, `keys rotate --now`) activates at once.
//!
//! Activation is a compare-and-swap decided by the store ([`Takeover`]): the write names the
//! active keys it replaces and is refused if they changed since they were read, so a stale
//! decision (the maintenance thread's, taken before seconds of key generation) never retires a
//! key activated meanwhile. Operators' actions re-read and retry; scheduled ones give up until
//! the next maintenance pass, and are refused while an imported (pinned) key is active.
//!
//! Every change to the [`KeyRing`](latchkey_core::keyring::KeyRing) (a key added, made to
//! sign, retired) is made here, each after or before the store write it mirrors so that no
//! token is ever signed by a key the ring cannot verify, nor by one the store does not hold.
//!
//! [`AppSettings::key_prepublication`]: crate::config::AppSettings::key_prepublication
//! [`AppSettings::jwks_max_age`]: crate::config::AppSettings::jwks_max_age
//! [`AppSettings::unpublish_after`]: crate::config::AppSettings::unpublish_after
//! [`AppSettings::retire_after`]: crate::config::AppSettings::retire_after

use std::collections::HashMap;
use std::sync::Arc;

use latchkey_core::Algorithm;

use super::{App, FIRST_RUN_ALGORITHMS, SYSTEM};
use crate::error::{ApiError, Error};
use crate::store::{
    KeyState, NewSigningKey, RevocationKind, RevocationRecord, Secret, SigningKeyRecord,
    StoreError, StoredSigningKey, Takeover, WriteOp,
};

/// How often an operator's activation is retried when the active keys change under it.
const ACTIVATION_ATTEMPTS: usize = 4;

/// A maintenance decision: activate `key`, replacing the active keys seen when deciding.
#[derive(Debug)]
pub(super) struct DueActivation {
    pub key: Arc<StoredSigningKey>,
    pub takeover: Takeover,
}

impl App {
    /// Rotates the key of `alg` the way consumers can follow: a new key is published now and
    /// activated by the maintenance thread after the pre-publication
    /// ([`crate::config::AppSettings::key_prepublication`]). If one is already published for
    /// `alg`, that one is returned. Blocking (RSA key generation, store writes): call it off
    /// the event loop.
    pub fn rotate_key(&self, alg: Algorithm, by: &str) -> Result<SigningKeyRecord, Error> {
        self.publish_key(alg, by, self.now(), false)
    }

    fn publish_key(
        &self,
        alg: Algorithm,
        by: &str,
        now: u64,
        scheduled: bool,
    ) -> Result<SigningKeyRecord, Error> {
        if self.settings.key_prepublication == 0 {
            return self.rotate_now(alg, by, scheduled);
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
            None,
            by,
            now,
        )?));
        match written.and_then(|o| Ok(o.into_record::<SigningKeyRecord>()?)) {
            Ok(rec) => Ok(rec),
            Err(e) => {
                let _ = self.keys.retire(key.kid());
                Err(e)
            }
        }
    }

    /// Emergency rotation: the new key signs at once (a key already published for `alg` is the
    /// one activated, since consumers may have it). Consumers that cached the key set without
    /// it miss its `kid` until their cache expires.
    pub fn rotate_key_now(&self, alg: Algorithm, by: &str) -> Result<SigningKeyRecord, Error> {
        self.rotate_now(alg, by, false)
    }

    fn rotate_now(
        &self,
        alg: Algorithm,
        by: &str,
        scheduled: bool,
    ) -> Result<SigningKeyRecord, Error> {
        if let Some(pending) = self.published_key(alg) {
            return self.activate_key(&pending, by, self.now(), scheduled);
        }
        let key = latchkey_core::SigningKey::generate(alg)?;
        self.install(key, KeyOrigin::Generated, by, scheduled)
    }

    /// The published (not yet active) key of `alg`, if any.
    pub(super) fn published_key(&self, alg: Algorithm) -> Option<Arc<StoredSigningKey>> {
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
        k: &StoredSigningKey,
        by: &str,
        now: u64,
        scheduled: bool,
    ) -> Result<SigningKeyRecord, Error> {
        let alg = Algorithm::from_name(&k.alg)?;
        self.with_takeover(alg, scheduled, |takeover| {
            self.activate(k, takeover, by, now)
        })
    }

    /// One activation write of published key `k`, a compare-and-swap on `takeover`; on
    /// success the key signs.
    pub(super) fn activate(
        &self,
        k: &StoredSigningKey,
        takeover: Takeover,
        by: &str,
        now: u64,
    ) -> Result<SigningKeyRecord, Error> {
        let alg = Algorithm::from_name(&k.alg)?;
        let key = latchkey_core::SigningKey::from_pkcs8_der(alg, k.private_key.expose())?
            .with_kid(k.kid.clone());
        let _one = self.one_activation();
        let rec = self
            .write(WriteOp::SetSigningKeyState {
                kid: k.kid.clone(),
                state: KeyState::Active,
                takeover: Some(takeover),
                by: by.to_owned(),
                now,
            })?
            .into_record::<SigningKeyRecord>()?;
        self.take_over(key)?;
        Ok(rec)
    }

    /// Runs an activation write against the active keys of `alg` as they are now. An
    /// operator's action replaces whatever is active, so when they change under it, it reads
    /// them again (a bounded number of times); a scheduled one returns the conflict.
    fn with_takeover(
        &self,
        alg: Algorithm,
        scheduled: bool,
        mut write: impl FnMut(Takeover) -> Result<SigningKeyRecord, Error>,
    ) -> Result<SigningKeyRecord, Error> {
        let mut attempt = 1;
        loop {
            let takeover = Takeover {
                replaces: self.active_kids(alg),
                scheduled,
            };
            match write(takeover) {
                Err(e) if !scheduled && is_conflict(&e) && attempt < ACTIVATION_ATTEMPTS => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Taken from an activation's write until its key signs, so that two activations reach
    /// the ring in the order the store committed them (the store decides which wins; this
    /// only keeps the ring from signing with the loser).
    fn one_activation(&self) -> std::sync::MutexGuard<'_, ()> {
        // Guards no data: a panic while it was held leaves nothing inconsistent.
        self.activations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `key` (already recorded active, and the keys it replaced retiring, in the same write)
    /// signs. The replaced keys stay in the ring, verifying, until they retire.
    fn take_over(&self, key: latchkey_core::SigningKey) -> Result<(), Error> {
        self.keys.rotate(key)?;
        // On a cluster another node's activation may have been applied (and followed) while
        // this one's answer was on its way: the ring converges on what the store says.
        self.sync_key_ring()
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

    /// Activates published keys whose pre-publication has passed. Returns their kids. An
    /// activation the store refuses because the ring changed since the decision is left for
    /// the next pass to re-evaluate.
    pub fn activate_due_keys(&self, now: u64) -> Result<Vec<String>, Error> {
        let mut activated = Vec::new();
        for due in self.due_activations(now) {
            match self.activate(&due.key, due.takeover, SYSTEM, now) {
                Ok(rec) => activated.push(rec.kid),
                Err(e) if is_conflict(&e) => {
                    tracing::info!(kid = %due.key.kid, error = %e, "activation deferred");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(activated)
    }

    /// The maintenance decision: the published keys due at `now`, each with the active keys
    /// it would replace as they are now.
    pub(super) fn due_activations(&self, now: u64) -> Vec<DueActivation> {
        let keys = self.store.hot().signing_keys();
        let active = |alg: &str| -> Vec<&Arc<StoredSigningKey>> {
            keys.iter()
                .filter(|a| a.alg == alg && a.state == KeyState::Active)
                .collect()
        };
        keys.iter()
            // A key published by a scheduled rotation before an import does not take over
            // from the imported (pinned) key; it waits for an explicit `keys rotate`. The
            // store checks this again inside the write.
            .filter(|k| {
                k.state == KeyState::Published
                    && now >= self.settings.activates_at(k.state_changed_at)
                    && !active(&k.alg).iter().any(|a| a.pinned)
            })
            .map(|k| DueActivation {
                key: Arc::clone(k),
                takeover: Takeover {
                    replaces: active(&k.alg).iter().map(|a| a.kid.clone()).collect(),
                    scheduled: true,
                },
            })
            .collect()
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

    /// `max-age` for a published key set: [`crate::config::AppSettings::jwks_max_age`], and
    /// for the single
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
        self.install(key, origin, by, false)
    }

    fn install(
        &self,
        key: latchkey_core::SigningKey,
        origin: KeyOrigin,
        by: &str,
        scheduled: bool,
    ) -> Result<SigningKeyRecord, Error> {
        let now = self.now();
        let alg = key.algorithm();
        if alg.is_hmac() {
            return Err(
                ApiError::InvalidRequest("HMAC keys cannot sign published tokens".into()).into(),
            );
        }
        if let Some(bound) = self.store.hot().freshness().map(|f| f.bound())
            && !self.active_kids(alg).is_empty()
        {
            return self.publish_then_activate(key, origin, by, scheduled, bound);
        }
        let _one = self.one_activation();
        let rec = self.with_takeover(alg, scheduled, |takeover| {
            let op = new_key_op(
                &key,
                KeyState::Active,
                origin.clone(),
                Some(takeover),
                by,
                now,
            )?;
            Ok(self
                .write(WriteOp::AddSigningKey(op))?
                .into_record::<SigningKeyRecord>()?)
        })?;
        self.take_over(key)?;
        Ok(rec)
    }

    /// A cluster's way to replace an active key at once: the key is published, every serving
    /// node has it within the freshness `bound` (or stops serving), and only then does it
    /// sign, so no node refuses a token another node signed with it.
    fn publish_then_activate(
        &self,
        key: latchkey_core::SigningKey,
        origin: KeyOrigin,
        by: &str,
        scheduled: bool,
        bound: std::time::Duration,
    ) -> Result<SigningKeyRecord, Error> {
        self.keys.add_verifying_key(key.verifying_key())?;
        let op = new_key_op(&key, KeyState::Published, origin, None, by, self.now())?;
        if let Err(e) = self.write(WriteOp::AddSigningKey(op)) {
            let _ = self.keys.retire(key.kid());
            return Err(e);
        }
        std::thread::sleep(bound);
        let stored = self
            .store
            .hot()
            .signing_key(key.kid())
            .ok_or_else(|| ApiError::NotFound(format!("signing key {:?}", key.kid())))?;
        self.activate_key(&stored, by, self.now(), scheduled)
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
                    takeover: None,
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
                match self.publish_key(alg, SYSTEM, now, true) {
                    Ok(rec) => rotated.push(rec.kid),
                    // Without pre-publication the successor activates at once, and the ring
                    // changed since this pass read it: the next pass decides again.
                    Err(e) if is_conflict(&e) => {
                        tracing::info!(alg = %k.alg, error = %e, "scheduled rotation deferred");
                    }
                    Err(e) => return Err(e),
                }
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
        let rec = self
            .write(WriteOp::Revoke {
                kind: RevocationKind::Key,
                id: kid.to_owned(),
                by: by.to_owned(),
                reason: reason.to_owned(),
                now,
                forget_after: now.saturating_add(self.settings.retire_after()),
            })?
            .into_record::<RevocationRecord>()?;
        if key.state != KeyState::Retired {
            self.write(WriteOp::SetSigningKeyState {
                kid: kid.to_owned(),
                state: KeyState::Retired,
                takeover: None,
                by: by.to_owned(),
                now,
            })?;
        }
        self.keys.retire(kid)?;
        Ok(rec)
    }

    /// Generates the first-run keys for every algorithm that has no active key.
    pub(super) fn ensure_keys(&self, now: u64) -> Result<Vec<String>, Error> {
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
            let takeover = Takeover {
                replaces: Vec::new(),
                scheduled: true,
            };
            self.write(WriteOp::AddSigningKey(new_key_op(
                &key,
                KeyState::Active,
                KeyOrigin::Generated,
                Some(takeover),
                SYSTEM,
                now,
            )?))?;
            generated.push(key.kid().to_owned());
        }
        Ok(generated)
    }

    /// Loads every non-retired key into the ring: the newest active key per algorithm signs,
    /// everything else only verifies.
    /// Brings the key ring in line with the hot index after another node changed the keys
    /// (cluster): adds what is published or retiring, signs with what is active, drops what
    /// is retired or gone. Idempotent, and a no-op when the ring already agrees, so it may
    /// also follow this node's own writes.
    pub fn sync_key_ring(&self) -> Result<(), Error> {
        let mut hot = self.store.hot().signing_keys();
        // Active keys first: a key that stops signing must be replaced before it can retire.
        hot.sort_by_key(|k| k.state != KeyState::Active);
        for k in &hot {
            let ring = self.keys.snapshot();
            let alg = Algorithm::from_name(&k.alg)?;
            let key = || -> Result<latchkey_core::SigningKey, Error> {
                Ok(
                    latchkey_core::SigningKey::from_pkcs8_der(alg, k.private_key.expose())?
                        .with_kid(k.kid.clone()),
                )
            };
            match k.state {
                KeyState::Active if ring.minter(alg).is_none_or(|m| m.key().kid() != k.kid) => {
                    self.keys.rotate(key()?)?;
                }
                KeyState::Published | KeyState::Retiring if ring.key(&k.kid).is_none() => {
                    self.keys.add_verifying_key(key()?.verifying_key())?;
                }
                KeyState::Retired if ring.key(&k.kid).is_some() => {
                    self.keys.retire(&k.kid)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn load_keys(&self) -> Result<(), Error> {
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

fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Store(StoreError::Conflict(_)))
}

fn new_key_op(
    key: &latchkey_core::SigningKey,
    state: KeyState,
    origin: KeyOrigin,
    takeover: Option<Takeover>,
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
        takeover,
        kid: key.kid().to_owned(),
        alg: key.algorithm().as_str().to_owned(),
        state,
        private_key: Secret::new(key.to_pkcs8_der()?.to_vec()),
        public_key: key.verifying_key().to_spki_der()?,
        by: by.to_owned(),
        now,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::AppSettings;
    use crate::store::AuditOutcome;

    fn open(dir: &Path) -> App {
        let metrics = Arc::new(crate::http::Metrics::new());
        App::open(dir, AppSettings::default(), metrics).unwrap().0
    }

    fn minter(app: &App, alg: Algorithm) -> String {
        let snap = app.keys.snapshot();
        snap.minter(alg).unwrap().key().kid().to_owned()
    }

    /// Regression: the maintenance thread decided to activate a published key, an operator
    /// imported a key meanwhile, and the stale activation then took over, retiring the
    /// imported (pinned) key. The store now refuses the stale write.
    #[test]
    fn a_stale_scheduled_activation_does_not_retire_a_key_imported_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let app = open(dir.path());
        let published = app.rotate_key(Algorithm::RS256, "op").unwrap();
        let later = app.now() + 10 * 86_400;
        let decided = app.due_activations(later);
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].key.kid, published.kid);
        assert_eq!(decided[0].takeover.replaces.len(), 1);

        let imported = latchkey_core::SigningKey::generate(Algorithm::RS256)
            .unwrap()
            .with_kid("imported".to_owned());
        let origin = KeyOrigin::Imported {
            certificate_chain: vec![vec![0x30, 0]],
        };
        app.install_key(imported, origin, "op").unwrap();

        let DueActivation { key, takeover } = decided.into_iter().next().unwrap();
        let stale = app.activate(&key, takeover, SYSTEM, later);
        assert!(is_conflict(&stale.unwrap_err()));
        let hot = app.store.hot();
        assert_eq!(hot.signing_key("imported").unwrap().state, KeyState::Active);
        assert_eq!(
            hot.signing_key(&published.kid).unwrap().state,
            KeyState::Published
        );
        assert_eq!(minter(&app, Algorithm::RS256), "imported");
        let audit = app.store.read().unwrap().audit(0, 1000).unwrap();
        let refused = audit
            .iter()
            .filter(|a| a.event == "key.activate" && a.subject == published.kid)
            .map(|a| &a.outcome)
            .collect::<Vec<_>>();
        assert!(
            matches!(refused[..], [AuditOutcome::Refused(_)]),
            "{refused:?}"
        );
        // The maintenance pass itself defers rather than fails, and a scheduled activation
        // that names the pinned key is refused too.
        assert!(app.activate_due_keys(later).unwrap().is_empty());
        let current = Takeover {
            replaces: vec!["imported".into()],
            scheduled: true,
        };
        assert!(is_conflict(
            &app.activate(&key, current, SYSTEM, later).unwrap_err()
        ));
        assert_eq!(minter(&app, Algorithm::RS256), "imported");
    }

    /// An activation naming keys that are not the active ones is refused; an operator's
    /// rotation reads them afresh, and the keys it replaces start retiring in the same write,
    /// audited under the operator.
    #[test]
    fn activation_is_a_compare_and_swap_and_retires_what_it_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let app = open(dir.path());
        let first = minter(&app, Algorithm::ES256);
        let published = app.rotate_key(Algorithm::ES256, "op").unwrap();
        // Stale view for an operator action: it re-reads and wins.
        let stale = Takeover {
            replaces: vec!["gone".into()],
            scheduled: false,
        };
        let key = app.store.hot().signing_key(&published.kid).unwrap();
        assert!(is_conflict(
            &app.activate(&key, stale, "op", app.now()).unwrap_err()
        ));
        let rec = app.rotate_key_now(Algorithm::ES256, "op").unwrap();
        assert_eq!(rec.kid, published.kid);
        assert_eq!(minter(&app, Algorithm::ES256), published.kid);
        let hot = app.store.hot();
        assert_eq!(hot.signing_key(&first).unwrap().state, KeyState::Retiring);
        let audit = app.store.read().unwrap().audit(0, 1000).unwrap();
        assert!(
            audit
                .iter()
                .any(|a| a.event == "key.retiring" && a.subject == first && a.actor == "op")
        );
    }
}
