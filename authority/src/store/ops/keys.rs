//! Signing keys: adding one (its private half sealed) and moving it through its states.

use std::sync::Arc;

use redb::ReadableTable;

use super::{
    DbResult, HotChange, Plan, StoreError, StrTable, Tables, WriteOutcome, check_id, get, not_found,
};
use crate::store::hot::StoredSigningKey;
use crate::store::records::*;
use crate::store::seal::{MasterKey, SealContext, Secret};

#[derive(Debug)]
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
    pub by: String,
    pub now: u64,
}

/// The fields of [`super::WriteOp::SetSigningKeyState`].
pub(super) struct StateChange {
    pub kid: String,
    pub state: KeyState,
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
    let ctx = SealContext {
        table: "signing_keys",
        key: &kid,
    };
    let private = key.unseal(ctx, &rec.sealed_private_key)?;
    rec.state = state;
    rec.state_changed_at = now;
    p.put(StrTable::SigningKeys, &kid, &rec)?;
    hot.push(HotChange::Key(kid, Some(Arc::new(hot_key(&rec, private)))));
    Ok(WriteOutcome::SigningKey(rec))
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
