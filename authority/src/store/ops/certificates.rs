//! The certificate trust store: adding a certificate (its private key sealed), changing its
//! state, and renaming it.

use redb::ReadableTable;

use super::audit::audit_text;
use super::{
    DbResult, Mutation, Plan, StoreError, StrTable, Tables, WriteOutcome, check_id, get, not_found,
};
use crate::store::records::*;
use crate::store::seal::{MasterKey, SealContext, Secret};

#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub alias: String,
    pub fingerprint: String,
    pub subject: String,
    pub kind: CertificateKind,
    pub not_after: u64,
    pub der: Vec<u8>,
    pub private_key: Option<Secret>,
    pub by: String,
    pub now: u64,
}

pub(super) fn add(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    c: NewCertificate,
) -> Result<WriteOutcome, StoreError> {
    p.audit(&c.by, "cert.add", &c.alias, c.now);
    check_id("alias", &c.alias)?;
    check_id("fingerprint", &c.fingerprint)?;
    if t.certificates.get(c.alias.as_str()).db("read")?.is_some() {
        return Err(StoreError::Conflict(format!("alias {:?} exists", c.alias)));
    }
    if let Some(other) = t.cert_fingerprints.get(c.fingerprint.as_str()).db("read")? {
        return Err(StoreError::Conflict(format!(
            "certificate already present as {:?}",
            other.value()
        )));
    }
    let ctx = SealContext {
        table: "certificates",
        key: &c.alias,
    };
    let sealed = match &c.private_key {
        Some(pk) => Some(key.seal(ctx, pk.expose())?),
        None => None,
    };
    let rec = CertificateRecord {
        alias: c.alias.clone(),
        fingerprint: c.fingerprint.clone(),
        subject: c.subject,
        kind: c.kind,
        state: CertificateState::Valid,
        not_after: c.not_after,
        der: c.der,
        sealed_private_key: sealed,
        created_at: c.now,
    };
    p.put(StrTable::Certificates, &c.alias, &rec)?;
    p.push(Mutation::PutFingerprint(c.fingerprint, c.alias));
    Ok(WriteOutcome::Certificate(rec))
}

pub(super) fn set_state(
    t: &Tables<'_>,
    p: &mut Plan,
    alias: &str,
    state: CertificateState,
    by: &str,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    p.audit(by, "cert.state", alias, now);
    let mut rec = get::<CertificateRecord>(&t.certificates, alias)?
        .ok_or_else(|| not_found("certificate", alias))?;
    rec.state = state;
    p.put(StrTable::Certificates, alias, &rec)?;
    Ok(WriteOutcome::Certificate(rec))
}

/// Gives a certificate a new alias (`keytool -changealias`): fingerprint, kind, state and key
/// unchanged; a sealed private key is re-sealed for its new row.
pub(super) fn rename(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    alias: String,
    new_alias: String,
    by: &str,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    // Each alias bounded before they are joined.
    let subject = format!("{} -> {}", audit_text(&alias), audit_text(&new_alias));
    p.audit(by, "cert.rename", &subject, now);
    check_id("alias", &new_alias)?;
    let mut rec = get::<CertificateRecord>(&t.certificates, &alias)?
        .ok_or_else(|| not_found("certificate", &alias))?;
    if t.certificates.get(new_alias.as_str()).db("read")?.is_some() {
        return Err(StoreError::Conflict(format!("alias {new_alias:?} exists")));
    }
    if let Some(sealed) = &rec.sealed_private_key {
        let ctx = |k| SealContext {
            table: "certificates",
            key: k,
        };
        let private = key.unseal(ctx(&alias), sealed)?;
        rec.sealed_private_key = Some(key.seal(ctx(&new_alias), private.expose())?);
    }
    rec.alias = new_alias.clone();
    p.push(Mutation::Del(StrTable::Certificates, alias));
    p.put(StrTable::Certificates, &new_alias, &rec)?;
    p.push(Mutation::PutFingerprint(rec.fingerprint.clone(), new_alias));
    Ok(WriteOutcome::Certificate(rec))
}

#[cfg(test)]
mod tests {
    use super::super::WriteOp;
    use super::*;

    /// A rename moves the record, the fingerprint index and the sealed key (re-sealed for the
    /// new row, so it still opens), and refuses a taken alias without writing.
    #[test]
    fn renaming_a_certificate_moves_its_row_index_and_sealed_key() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open_or_create(dir.path(), crate::store::StoreOptions::default())
                .unwrap();
        let add = |alias: &str, fp: &str| {
            WriteOp::AddCertificate(NewCertificate {
                alias: alias.into(),
                fingerprint: fp.into(),
                subject: "CN=x".into(),
                kind: CertificateKind::Agent,
                not_after: u64::MAX,
                der: vec![0x30, 0],
                private_key: Some(Secret::new(b"key bytes".to_vec())),
                by: "op".into(),
                now: 1,
            })
        };
        let rename = |alias: &str, new_alias: &str| WriteOp::RenameCertificate {
            alias: alias.into(),
            new_alias: new_alias.into(),
            by: "op".into(),
            now: 2,
        };
        let (fa, fb) = ("a".repeat(64), "b".repeat(64));
        store.write(add("old", &fa)).unwrap();
        store.write(add("other", &fb)).unwrap();
        store.write(rename("old", "new")).unwrap();
        let snap = store.read().unwrap();
        assert!(snap.certificate("old").unwrap().is_none());
        let rec = snap.certificate("new").unwrap().unwrap();
        assert_eq!(rec.alias, "new");
        assert_eq!(rec.fingerprint, fa);
        assert_eq!(
            snap.certificate_by_fingerprint(&fa).unwrap().unwrap().alias,
            "new"
        );
        let ctx = |k| SealContext {
            table: "certificates",
            key: k,
        };
        let sealed = rec.sealed_private_key.unwrap();
        let opened = store.master_key().unseal(ctx("new"), &sealed).unwrap();
        assert_eq!(opened.expose(), b"key bytes");
        assert!(store.master_key().unseal(ctx("old"), &sealed).is_err());
        let audit = snap.audit(0, 100).unwrap();
        let last = audit.last().unwrap();
        assert_eq!(
            (last.event.as_str(), last.subject.as_str()),
            ("cert.rename", "old -> new")
        );
        drop(snap);

        assert!(matches!(
            store.write(rename("new", "other")),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.write(rename("missing", "x")),
            Err(StoreError::NotFound { .. })
        ));
        let snap = store.read().unwrap();
        assert!(snap.certificate("new").unwrap().is_some());
        assert_eq!(snap.certificate("other").unwrap().unwrap().fingerprint, fb);
    }
}
