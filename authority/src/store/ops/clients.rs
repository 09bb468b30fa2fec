//! Operator clients (hashed secrets, a tenant and a profile) and profiles (named permission
//! sets).

use std::sync::Arc;

use redb::ReadableTable;

use super::{
    DbResult, HotChange, Plan, StoreError, StrTable, Tables, WriteOutcome, check_id, get, not_found,
};
use crate::store::codec;
use crate::store::records::*;
use crate::store::seal::SecretHash;

pub(super) fn create_client(
    t: &Tables<'_>,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
    mut record: OperatorClientRecord,
    by: &str,
) -> Result<WriteOutcome, StoreError> {
    p.audit(by, "client.create", &record.id, record.created_at);
    check_id("client id", &record.id)?;
    record.generation = new_generation()?;
    if t.operator_clients
        .get(record.id.as_str())
        .db("read")?
        .is_some()
    {
        // Global like agent ids: the same answer whichever tenant holds it.
        return Err(StoreError::Conflict(format!(
            "client id {:?} is not available; client ids are unique across all tenants",
            record.id
        )));
    }
    if get::<ProfileRecord>(&t.profiles, &record.profile)?.is_none() {
        return Err(not_found("profile", &record.profile));
    }
    p.put(StrTable::OperatorClients, &record.id, &record)?;
    hot.push(HotChange::OperatorClient(
        record.id.clone(),
        Some(Arc::new(record.clone())),
    ));
    Ok(WriteOutcome::OperatorClient(record))
}

pub(super) fn delete_client(
    t: &Tables<'_>,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
    id: String,
    by: &str,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    p.audit(by, "client.delete", &id, now);
    let rec = get::<OperatorClientRecord>(&t.operator_clients, &id)?
        .ok_or_else(|| not_found("client", &id))?;
    p.del(StrTable::OperatorClients, &id);
    hot.push(HotChange::OperatorClient(id, None));
    Ok(WriteOutcome::OperatorClient(rec))
}

/// Suspends (`suspend`) or resumes an operator client. A suspension draws a new generation,
/// which ends every token the client holds, for good; the client, its secret and its profile
/// stay. Suspending a suspended client, or resuming an active one, changes nothing.
pub(super) fn set_suspended(
    t: &Tables<'_>,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
    id: String,
    suspend: bool,
    by: &str,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    let event = if suspend {
        "client.suspend"
    } else {
        "client.resume"
    };
    p.audit(by, event, &id, now);
    let mut rec = get::<OperatorClientRecord>(&t.operator_clients, &id)?
        .ok_or_else(|| not_found("client", &id))?;
    if rec.suspended_at.is_some() == suspend {
        return Ok(WriteOutcome::OperatorClient(rec));
    }
    if suspend {
        rec.suspended_at = Some(now);
        rec.generation = new_generation()?;
    } else {
        rec.suspended_at = None;
    }
    p.put(StrTable::OperatorClients, &id, &rec)?;
    hot.push(HotChange::OperatorClient(id, Some(Arc::new(rec.clone()))));
    Ok(WriteOutcome::OperatorClient(rec))
}

/// Gives an operator client a new secret (its hash). The one it replaces keeps working until
/// `grace_until` (not at all when that is not after `now`); tokens already issued keep theirs,
/// since the generation does not change.
pub(super) fn rotate_secret(
    t: &Tables<'_>,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
    r: SecretRotation,
) -> Result<WriteOutcome, StoreError> {
    p.audit(&r.by, "client.rotate-secret", &r.id, r.now);
    let mut rec = get::<OperatorClientRecord>(&t.operator_clients, &r.id)?
        .ok_or_else(|| not_found("client", &r.id))?;
    let previous = std::mem::replace(&mut rec.secret_hash, r.secret_hash);
    if r.grace_until > r.now {
        rec.previous_secret_hash = Some(previous);
        rec.previous_valid_until = r.grace_until;
    } else {
        rec.previous_secret_hash = None;
        rec.previous_valid_until = 0;
    }
    p.put(StrTable::OperatorClients, &r.id, &rec)?;
    hot.push(HotChange::OperatorClient(
        r.id.clone(),
        Some(Arc::new(rec.clone())),
    ));
    Ok(WriteOutcome::OperatorClient(rec))
}

/// The fields of [`super::WriteOp::RotateOperatorClientSecret`].
#[derive(Debug, Clone)]
pub struct SecretRotation {
    pub id: String,
    /// The new secret's hash.
    pub secret_hash: SecretHash,
    /// Until when the replaced secret still works.
    pub grace_until: u64,
    pub by: String,
    pub now: u64,
}

pub(super) fn put_profile(
    p: &mut Plan,
    prof: ProfileRecord,
    by: &str,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    p.audit(by, "profile.put", &prof.name, now);
    check_id("profile name", &prof.name)?;
    p.put(StrTable::Profiles, &prof.name, &prof)?;
    Ok(WriteOutcome::Profile(prof))
}

pub(super) fn delete_profile(
    t: &Tables<'_>,
    p: &mut Plan,
    name: &str,
    by: &str,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    p.audit(by, "profile.delete", name, now);
    let prof =
        get::<ProfileRecord>(&t.profiles, name)?.ok_or_else(|| not_found("profile", name))?;
    for entry in t.operator_clients.iter().db("read")? {
        let (_, v) = entry.db("read")?;
        let c: OperatorClientRecord = codec::decode(v.value())?;
        if c.profile == name {
            return Err(StoreError::Conflict(format!(
                "profile {name:?} is used by client {:?}",
                c.id
            )));
        }
    }
    p.del(StrTable::Profiles, name);
    Ok(WriteOutcome::Profile(prof))
}

/// A fresh operator client generation: random, so a client re-created under the same id
/// (whose old record, and generation, are gone) does not land on its old value; never 0, the
/// generation version 1 records read as.
fn new_generation() -> Result<u64, StoreError> {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| StoreError::Invalid("system RNG failed".into()))?;
    Ok(u64::from_le_bytes(b).max(1))
}
