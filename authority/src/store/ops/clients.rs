//! Operator clients (hashed secrets, a tenant and a profile) and profiles (named permission
//! sets).

use std::sync::Arc;

use redb::ReadableTable;

use super::{
    DbResult, HotChange, Plan, StoreError, StrTable, Tables, WriteOutcome, check_id, get, not_found,
};
use crate::store::codec;
use crate::store::records::*;

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
