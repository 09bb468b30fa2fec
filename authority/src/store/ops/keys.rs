//! Signing keys: adding one (its private half sealed) and moving it through its states.
//!
//! Making a key active is a compare-and-swap decided here, inside the write: the op carries
//! the active keys its caller saw ([`Takeover`]), and it is refused with
//! [`StoreError::Conflict`] unless those are still exactly the active keys of the algorithm.
//! The keys it replaces start retiring in the same write. So a decision taken on an older
//! view of the ring (the maintenance thread's, made before seconds of RSA key generation)
//! can never retire a key activated since, such as an operator's imported one.

use std::sync::Arc;

use redb::ReadableTable;

use super::{
    DbResult, HotChange, Plan, StoreError, StrTable, Tables, WriteOutcome, check_id, get, not_found,
};
use crate::store::codec;
use crate::store::hot::StoredSigningKey;
use crate::store::records::*;
use crate::store::seal::{MasterKey, SealContext, Secret};

#[derive(Debug, Clone)]
pub struct NewSigningKey {
    pub kid: String,
    pub alg: String,
    pub state: KeyState,
    pub private_key: Secret,
    pub public_key: Vec<u8>,
    /// DER certificate chain, leaf first; empty when the key has none.
    pub certificate_chain: Vec<Vec<u8>>,
    /// Scheduled rotation leaves it alone (imported keys).
    pub pinned: bool,
    /// Required when `state` is `Active` (and refused otherwise): what the key replaces.
    pub takeover: Option<Takeover>,
    pub by: String,
    pub now: u64,
}

/// What an activation expects to replace, checked against the store inside the write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Takeover {
    /// The active kids of the key's algorithm when the caller decided. The activation is
    /// refused unless they are exactly the active keys at write time; they start retiring in
    /// the same write.
    pub replaces: Vec<String>,
    /// A scheduled (system) action rather than an operator's: refused as well while a pinned
    /// (imported) key is active, which only an explicit rotation replaces.
    pub scheduled: bool,
}

/// The fields of [`super::WriteOp::SetSigningKeyState`].
pub(super) struct StateChange {
    pub kid: String,
    pub state: KeyState,
    pub takeover: Option<Takeover>,
    pub by: String,
    pub now: u64,
}

pub(super) fn add(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    hot: &mut Vec<HotChange>,
    k: NewSigningKey,
) -> Result<WriteOutcome, StoreError> {
    p.audit(&k.by, "key.add", &k.kid, k.now);
    check_id("kid", &k.kid)?;
    check_id("alg", &k.alg)?;
    if t.signing_keys.get(k.kid.as_str()).db("read")?.is_some() {
        return Err(StoreError::Conflict(format!(
            "signing key {:?} exists",
            k.kid
        )));
    }
    let replaced = check_takeover(t, &k.kid, &k.alg, k.state, k.takeover.as_ref())?;
    let ctx = SealContext {
        table: "signing_keys",
        key: &k.kid,
    };
    let rec = SigningKeyRecord {
        kid: k.kid.clone(),
        alg: k.alg.clone(),
        state: k.state,
        sealed_private_key: key.seal(ctx, k.private_key.expose())?,
        public_key: k.public_key.clone(),
        created_at: k.now,
        state_changed_at: k.now,
        certificate_chain: k.certificate_chain.clone(),
        pinned: k.pinned,
    };
    p.put(StrTable::SigningKeys, &k.kid, &rec)?;
    retire_replaced(p, key, hot, replaced, &k.by, k.now)?;
    hot.push(HotChange::Key(
        k.kid.clone(),
        Some(Arc::new(hot_key(&rec, k.private_key))),
    ));
    Ok(WriteOutcome::SigningKey(rec))
}

pub(super) fn set_state(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    hot: &mut Vec<HotChange>,
    c: StateChange,
) -> Result<WriteOutcome, StoreError> {
    let StateChange {
        kid,
        state,
        takeover,
        by,
        now,
    } = c;
    let event = match state {
        KeyState::Active => "key.activate",
        KeyState::Retiring => "key.retiring",
        KeyState::Retired => "key.retire",
        KeyState::Published => "key.publish",
    };
    p.audit(&by, event, &kid, now);
    let mut rec = get::<SigningKeyRecord>(&t.signing_keys, &kid)?
        .ok_or_else(|| not_found("signing key", &kid))?;
    // Only a published key becomes active: one revoked or retired since the caller looked
    // must not sign again.
    if state == KeyState::Active && rec.state != KeyState::Published {
        return Err(StoreError::Conflict(format!(
            "signing key {kid:?} is {:?}, not published",
            rec.state
        )));
    }
    let replaced = check_takeover(t, &kid, &rec.alg, state, takeover.as_ref())?;
    let ctx = SealContext {
        table: "signing_keys",
        key: &kid,
    };
    let private = key.unseal(ctx, &rec.sealed_private_key)?;
    rec.state = state;
    rec.state_changed_at = now;
    p.put(StrTable::SigningKeys, &kid, &rec)?;
    retire_replaced(p, key, hot, replaced, &by, now)?;
    hot.push(HotChange::Key(kid, Some(Arc::new(hot_key(&rec, private)))));
    Ok(WriteOutcome::SigningKey(rec))
}

/// The compare-and-swap of an activation: the records of the keys `kid` replaces, which must
/// be exactly the active keys of `alg` its caller saw. Reads only.
fn check_takeover(
    t: &Tables<'_>,
    kid: &str,
    alg: &str,
    state: KeyState,
    takeover: Option<&Takeover>,
) -> Result<Vec<SigningKeyRecord>, StoreError> {
    let takeover = match (state, takeover) {
        (KeyState::Active, Some(to)) => to,
        (KeyState::Active, None) => {
            return Err(StoreError::Invalid(
                "activating a signing key must name the keys it replaces".into(),
            ));
        }
        (_, None) => return Ok(Vec::new()),
        (_, Some(_)) => {
            return Err(StoreError::Invalid(
                "only an activation replaces signing keys".into(),
            ));
        }
    };
    let mut active = Vec::new();
    for entry in t.signing_keys.iter().db("read")? {
        let (k, v) = entry.db("read")?;
        let rec: SigningKeyRecord = codec::decode(v.value())?;
        if rec.alg == alg && rec.state == KeyState::Active && k.value() != kid {
            active.push(rec);
        }
    }
    let mut found: Vec<&str> = active.iter().map(|r| r.kid.as_str()).collect();
    let mut expected: Vec<&str> = takeover.replaces.iter().map(String::as_str).collect();
    found.sort_unstable();
    expected.sort_unstable();
    if found != expected {
        return Err(StoreError::Conflict(format!(
            "the active {alg} keys changed (expected {expected:?}, found {found:?})"
        )));
    }
    if takeover.scheduled && active.iter().any(|r| r.pinned) {
        return Err(StoreError::Conflict(format!(
            "an imported {alg} key is active; only an explicit rotation replaces it"
        )));
    }
    Ok(active)
}

/// Plans the keys an activation replaces as retiring (they keep verifying), each with its
/// own audit entry.
fn retire_replaced(
    p: &mut Plan,
    key: &MasterKey,
    hot: &mut Vec<HotChange>,
    replaced: Vec<SigningKeyRecord>,
    by: &str,
    now: u64,
) -> Result<(), StoreError> {
    for mut rec in replaced {
        let ctx = SealContext {
            table: "signing_keys",
            key: &rec.kid,
        };
        let private = key.unseal(ctx, &rec.sealed_private_key)?;
        rec.state = KeyState::Retiring;
        rec.state_changed_at = now;
        p.put(StrTable::SigningKeys, &rec.kid, &rec)?;
        p.extra_audit(by, "key.retiring", &rec.kid, now);
        let kid = rec.kid.clone();
        hot.push(HotChange::Key(kid, Some(Arc::new(hot_key(&rec, private)))));
    }
    Ok(())
}

pub(crate) fn hot_key(rec: &SigningKeyRecord, private_key: Secret) -> StoredSigningKey {
    StoredSigningKey {
        kid: rec.kid.clone(),
        alg: rec.alg.clone(),
        state: rec.state,
        private_key,
        public_key: rec.public_key.clone(),
        created_at: rec.created_at,
        state_changed_at: rec.state_changed_at,
        certificate_chain: rec.certificate_chain.clone(),
        pinned: rec.pinned,
    }
}
