//! Revocations (a durable "no" the verify path checks in memory) and `Forget`, which drops
//! what has expired anyway so the tables stay bounded.

use std::sync::Arc;

use redb::ReadableTable;

use super::audit::audit_text;
use super::registration::unsealed_client;
use super::{
    DbResult, HotChange, Mutation, Plan, StoreError, StrTable, Tables, WriteOutcome, check_id, get,
};
use crate::store::codec;
use crate::store::hot::Revocation;
use crate::store::records::*;
use crate::store::seal::MasterKey;

/// Records a revocation (idempotent: re-revoking keeps the earliest `revoked_at` and the
/// latest `forget_after`), audited as `revoke` with the subject `<kind>:<id>`.
pub(super) fn revoke_op(
    t: &Tables<'_>,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
    a: RevokeArgs<'_>,
) -> Result<WriteOutcome, StoreError> {
    // Bounded before the prefix is added: `id` may be anything a caller sent.
    let subject = format!("{}:{}", a.kind.as_str(), audit_text(a.id));
    p.audit(a.by, "revoke", &subject, a.now);
    check_id("revoked id", a.id)?;
    let rec = revoke(t, p, hot, a)?;
    Ok(WriteOutcome::Revocation(rec))
}

pub(super) struct RevokeArgs<'a> {
    pub kind: RevocationKind,
    pub id: &'a str,
    pub by: &'a str,
    pub reason: &'a str,
    pub now: u64,
    pub forget_after: u64,
}

/// Plans a revocation row (shared by `Revoke`, offboarding and deletion).
pub(super) fn revoke(
    t: &Tables<'_>,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
    a: RevokeArgs<'_>,
) -> Result<RevocationRecord, StoreError> {
    let existing = match t.revocations.get((a.kind.as_str(), a.id)).db("read")? {
        Some(v) => Some(codec::decode::<RevocationRecord>(v.value())?),
        None => None,
    };
    let rec = match existing {
        Some(mut old) => {
            // An agent revocation moves forward: offboarding again must cut tokens issued since.
            if a.kind == RevocationKind::Agent {
                old.revoked_at = old.revoked_at.max(a.now);
            }
            old.forget_after = old.forget_after.max(a.forget_after);
            old
        }
        None => RevocationRecord {
            kind: a.kind,
            id: a.id.to_string(),
            revoked_at: a.now,
            forget_after: a.forget_after,
            by: a.by.to_string(),
            reason: a.reason.to_string(),
        },
    };
    p.push(Mutation::PutRevocation(
        a.kind.as_str(),
        a.id.to_string(),
        codec::encode(&rec)?,
    ));
    hot.push(HotChange::Revocation(
        a.kind,
        a.id.to_string(),
        Some(Revocation::from(&rec)),
    ));
    Ok(rec)
}

/// Drops revocations whose `forget_after` has passed, spent or expired boarding rows, and
/// rotation grace windows that ended unused.
/// Most rows one `Forget` removes, so that one op stays one small transaction (an etcd
/// transaction takes 128 operations by default); the maintenance pass repeats it while it
/// comes back full.
pub const FORGET_BATCH: u64 = 100;

pub(super) fn forget(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    hot: &mut Vec<HotChange>,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    let (mut revocations, mut boarding, mut rotations) = (0, 0, 0);
    let full = |r: u64, b: u64, o: u64| r + b + o >= FORGET_BATCH;
    for entry in t.revocations.iter().db("read")? {
        if full(revocations, boarding, rotations) {
            break;
        }
        let (k, v) = entry.db("read")?;
        let rec: RevocationRecord = codec::decode(v.value())?;
        if rec.forget_after <= now {
            let (kind, id) = k.value();
            p.push(Mutation::DelRevocation(kind.to_string(), id.to_string()));
            hot.push(HotChange::Revocation(rec.kind, id.to_string(), None));
            revocations += 1;
        }
    }
    for entry in t.boarding.iter().db("read")? {
        if full(revocations, boarding, rotations) {
            break;
        }
        let (k, v) = entry.db("read")?;
        let rec: BoardingRecord = codec::decode(v.value())?;
        if rec.used_at.is_some() || rec.expires_at <= now {
            p.del(StrTable::Boarding, k.value());
            boarding += 1;
        }
    }
    for entry in t.rotations.iter().db("read")? {
        if full(revocations, boarding, rotations) {
            break;
        }
        let (k, v) = entry.db("read")?;
        let row: RotationRecord = codec::decode(v.value())?;
        if row.grace_until <= now {
            p.del(StrTable::Rotations, k.value());
            rotations += 1;
            if let Some(rec) = get::<RegistrationRecord>(&t.registrations, k.value())? {
                hot.push(HotChange::Client(
                    rec.client_id.clone(),
                    Some(Arc::new(unsealed_client(key, &rec, None)?)),
                ));
            }
        }
    }
    // Audited when it drops anything; a pass with nothing expired changes nothing.
    if revocations + boarding > 0 {
        let what = format!("{revocations} revocations, {boarding} boarding tokens");
        p.audit(super::SYSTEM_ACTOR, "forget", &what, now);
    }
    Ok(WriteOutcome::Forgotten {
        revocations,
        boarding,
    })
}
