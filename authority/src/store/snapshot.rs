//! The redb engine's reads: a [`RedbSnapshot`] is one MVCC read transaction, consistent across
//! tables, that never waits for the writer (the [`ReadView`] behind `Snapshot`). Also the
//! loader of the hot indexes at open.

use std::sync::Arc;

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
};

use super::codec::{self, Record};
use super::error::{DbResult, StoreError};
use super::hot::{HotChange, HotIndex, Revocation};
use super::ops::{hot_key, unsealed_client};
use super::records::*;
use super::schema::*;
use super::seal::{MasterKey, SealContext};
use super::view::ReadView;

/// Most agents one page may hold.
pub const MAX_PAGE: usize = 1000;

/// One page of a tenant's agents, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPage {
    pub agents: Vec<AgentRecord>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// One redb read transaction.
pub(crate) struct RedbSnapshot {
    txn: ReadTransaction,
}

impl RedbSnapshot {
    pub(crate) fn new(txn: ReadTransaction) -> Self {
        RedbSnapshot { txn }
    }
}

fn lookup<R: Record>(
    txn: &ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<R>, StoreError> {
    let table = txn.open_table(def).db("open table")?;
    match table.get(key).db("read")? {
        Some(v) => Ok(Some(codec::decode(v.value())?)),
        None => Ok(None),
    }
}

fn all<R: Record>(
    txn: &ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
) -> Result<Vec<R>, StoreError> {
    let table = txn.open_table(def).db("open table")?;
    let mut out = Vec::new();
    for entry in table.iter().db("read")? {
        let (_, v) = entry.db("read")?;
        out.push(codec::decode(v.value())?);
    }
    Ok(out)
}

impl ReadView for RedbSnapshot {
    fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError> {
        lookup(&self.txn, TENANTS, id)
    }

    fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        all(&self.txn, TENANTS)
    }

    /// The agent `id` if it belongs to `tenant` (another tenant's agent is invisible).
    fn agent(&self, tenant: &str, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(lookup::<AgentRecord>(&self.txn, AGENTS, id)?.filter(|a| a.tenant == tenant))
    }

    fn agent_by_name(&self, tenant: &str, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let names = self.txn.open_table(AGENT_NAMES).db("open table")?;
        let id = match names.get((tenant, name)).db("read")? {
            Some(v) => v.value().to_string(),
            None => return Ok(None),
        };
        self.agent(tenant, &id)
    }

    /// A page of `tenant`'s agents with ids after `after`, at most `limit` (≤ [`MAX_PAGE`]).
    fn agents(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AgentPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let idx = self.txn.open_table(TENANT_AGENTS).db("open table")?;
        let agents_t = self.txn.open_table(AGENTS).db("open table")?;
        let start = (tenant, after.unwrap_or(""));
        let mut agents = Vec::new();
        let mut next = None;
        for entry in idx.range(start..).db("read")? {
            let (k, _) = entry.db("read")?;
            let (t, id) = k.value();
            if t != tenant {
                break;
            }
            if Some(id) == after {
                continue;
            }
            if agents.len() == limit {
                next = agents.last().map(|a: &AgentRecord| a.id.clone());
                break;
            }
            let v = agents_t
                .get(id)
                .db("read")?
                .ok_or_else(|| StoreError::Corrupt {
                    table: "tenant_agents",
                    reason: format!("index names missing agent {id:?}"),
                })?;
            agents.push(codec::decode(v.value())?);
        }
        Ok(AgentPage { agents, next })
    }

    /// Number of agents of `tenant` (walks the index).
    fn agent_count(&self, tenant: &str) -> Result<u64, StoreError> {
        let idx = self.txn.open_table(TENANT_AGENTS).db("open table")?;
        let mut n = 0;
        for entry in idx.range((tenant, "")..).db("read")? {
            let (k, _) = entry.db("read")?;
            if k.value().0 != tenant {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    fn boarding(&self, jti: &str) -> Result<Option<BoardingRecord>, StoreError> {
        lookup(&self.txn, BOARDING, jti)
    }

    /// The grace-window row of `client_id`'s last rotation, if one is kept.
    fn rotation(&self, client_id: &str) -> Result<Option<RotationRecord>, StoreError> {
        lookup(&self.txn, ROTATIONS, client_id)
    }

    /// The data source configuration of agent `id` if it belongs to `tenant`.
    fn datasource_config(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<DataSourceConfigRecord>, StoreError> {
        Ok(
            lookup::<DataSourceConfigRecord>(&self.txn, DATASOURCE_CONFIGS, id)?
                .filter(|c| c.tenant == tenant),
        )
    }

    fn registration(&self, client_id: &str) -> Result<Option<RegistrationRecord>, StoreError> {
        lookup(&self.txn, REGISTRATIONS, client_id)
    }

    fn operator_client(&self, id: &str) -> Result<Option<OperatorClientRecord>, StoreError> {
        lookup(&self.txn, OPERATOR_CLIENTS, id)
    }

    fn operator_clients(&self) -> Result<Vec<OperatorClientRecord>, StoreError> {
        all(&self.txn, OPERATOR_CLIENTS)
    }

    fn profile(&self, name: &str) -> Result<Option<ProfileRecord>, StoreError> {
        lookup(&self.txn, PROFILES, name)
    }

    fn profiles(&self) -> Result<Vec<ProfileRecord>, StoreError> {
        all(&self.txn, PROFILES)
    }

    /// Signing keys as stored (private halves sealed).
    fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        all(&self.txn, SIGNING_KEYS)
    }

    fn certificate(&self, alias: &str) -> Result<Option<CertificateRecord>, StoreError> {
        lookup(&self.txn, CERTIFICATES, alias)
    }

    fn certificate_by_fingerprint(
        &self,
        fp: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let t = self.txn.open_table(CERT_FINGERPRINTS).db("open table")?;
        let alias = match t.get(fp).db("read")? {
            Some(v) => v.value().to_string(),
            None => return Ok(None),
        };
        self.certificate(&alias)
    }

    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        all(&self.txn, CERTIFICATES)
    }

    fn revocation(
        &self,
        kind: RevocationKind,
        id: &str,
    ) -> Result<Option<RevocationRecord>, StoreError> {
        let t = self.txn.open_table(REVOCATIONS).db("open table")?;
        match t.get((kind.as_str(), id)).db("read")? {
            Some(v) => Ok(Some(codec::decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        let t = self.txn.open_table(REVOCATIONS).db("open table")?;
        let mut out = Vec::new();
        for entry in t.iter().db("read")? {
            let (_, v) = entry.db("read")?;
            out.push(codec::decode(v.value())?);
        }
        Ok(out)
    }

    /// Audit entries with `seq > after`, oldest first, at most `limit` (≤ [`MAX_PAGE`]).
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let t: ReadOnlyTable<u64, &[u8]> = self.txn.open_table(AUDIT).db("open table")?;
        let mut out = Vec::new();
        for entry in t.range(after.saturating_add(1)..).db("read")? {
            if out.len() == limit.clamp(1, MAX_PAGE) {
                break;
            }
            let (_, v) = entry.db("read")?;
            out.push(codec::decode(v.value())?);
        }
        Ok(out)
    }

    /// Audit entries with `seq < before` (all with `None`), newest first, at most `limit`
    /// (≤ [`MAX_PAGE`]).
    fn audit_before(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let t: ReadOnlyTable<u64, &[u8]> = self.txn.open_table(AUDIT).db("open table")?;
        let mut out = Vec::new();
        let range = match before {
            Some(b) => t.range(..b),
            None => t.range(0..),
        };
        for entry in range.db("read")?.rev() {
            if out.len() == limit.clamp(1, MAX_PAGE) {
                break;
            }
            let (_, v) = entry.db("read")?;
            out.push(codec::decode(v.value())?);
        }
        Ok(out)
    }
}

/// Fills the hot indexes from the database (at open).
pub(crate) fn load_hot(db: &Database, key: &MasterKey, hot: &HotIndex) -> Result<(), StoreError> {
    let txn = db.begin_read().db("begin read")?;
    let t = txn.open_table(REGISTRATIONS).db("open table")?;
    let rotations = txn.open_table(ROTATIONS).db("open table")?;
    for entry in t.iter().db("load registrations")? {
        let (_, v) = entry.db("load registrations")?;
        let rec: RegistrationRecord = codec::decode(v.value())?;
        let rotation = match rotations.get(rec.client_id.as_str()).db("load rotations")? {
            Some(v) => Some(codec::decode::<RotationRecord>(v.value())?),
            None => None,
        };
        hot.apply(HotChange::Client(
            rec.client_id.clone(),
            Some(Arc::new(unsealed_client(key, &rec, rotation.as_ref())?)),
        ));
    }
    for rec in all::<AgentRecord>(&txn, AGENTS)? {
        if let Some(at) = rec.suspended_at {
            hot.apply(HotChange::AgentSuspension(rec.id.clone(), Some(at)));
        }
        hot.apply(HotChange::Agent(rec.id.clone(), Some(Arc::new(rec))));
    }
    for rec in all::<OperatorClientRecord>(&txn, OPERATOR_CLIENTS)? {
        hot.apply(HotChange::OperatorClient(
            rec.id.clone(),
            Some(Arc::new(rec)),
        ));
    }
    for rec in all::<SigningKeyRecord>(&txn, SIGNING_KEYS)? {
        let private = key.unseal(
            SealContext {
                table: "signing_keys",
                key: &rec.kid,
            },
            &rec.sealed_private_key,
        )?;
        hot.apply(HotChange::Key(
            rec.kid.clone(),
            Some(Arc::new(hot_key(&rec, private))),
        ));
    }
    let t = txn.open_table(REVOCATIONS).db("open table")?;
    for entry in t.iter().db("load revocations")? {
        let (_, v) = entry.db("load revocations")?;
        let rec: RevocationRecord = codec::decode(v.value())?;
        hot.apply(HotChange::Revocation(
            rec.kind,
            rec.id.clone(),
            Some(Revocation::from(&rec)),
        ));
    }
    Ok(())
}
