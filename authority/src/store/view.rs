//! The read side handlers see besides the hot index: a [`Snapshot`], one consistent view of the
//! durable state, whose reads are the [`ReadView`] trait.
//!
//! The token path never comes here: it reads the hot index (`Store::hot`) directly. A storage
//! engine provides a `ReadView`; [`Snapshot`] holds the engine's view and derefs to
//! `dyn ReadView`, so handlers call its reads without naming the engine or importing the
//! trait, and a second engine changes what `Snapshot` holds, not the handlers.

use super::records::*;
use super::snapshot::RedbSnapshot;
use super::{AgentPage, StoreError};

/// Point reads and listings over one consistent view of the store. Records come back as
/// stored: secrets sealed or hashed (the hot index holds what the token path needs unsealed).
pub trait ReadView {
    fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError>;
    fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;
    /// The agent `id` if it belongs to `tenant` (another tenant's agent is invisible).
    fn agent(&self, tenant: &str, id: &str) -> Result<Option<AgentRecord>, StoreError>;
    fn agent_by_name(&self, tenant: &str, name: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// A page of `tenant`'s agents with ids after `after`, at most `limit` (≤ `MAX_PAGE`).
    fn agents(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AgentPage, StoreError>;
    /// Number of agents of `tenant`.
    fn agent_count(&self, tenant: &str) -> Result<u64, StoreError>;
    fn boarding(&self, jti: &str) -> Result<Option<BoardingRecord>, StoreError>;
    /// The grace-window row of `client_id`'s last rotation, if one is kept.
    fn rotation(&self, client_id: &str) -> Result<Option<RotationRecord>, StoreError>;
    /// The data source configuration of agent `id` if it belongs to `tenant`.
    fn datasource_config(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<DataSourceConfigRecord>, StoreError>;
    /// The stored registration (secret still sealed; the hot index has it in clear).
    fn registration(&self, client_id: &str) -> Result<Option<RegistrationRecord>, StoreError>;
    fn operator_client(&self, id: &str) -> Result<Option<OperatorClientRecord>, StoreError>;
    fn operator_clients(&self) -> Result<Vec<OperatorClientRecord>, StoreError>;
    fn profile(&self, name: &str) -> Result<Option<ProfileRecord>, StoreError>;
    fn profiles(&self) -> Result<Vec<ProfileRecord>, StoreError>;
    /// Signing keys as stored (private halves sealed).
    fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    fn certificate(&self, alias: &str) -> Result<Option<CertificateRecord>, StoreError>;
    fn certificate_by_fingerprint(&self, fp: &str)
    -> Result<Option<CertificateRecord>, StoreError>;
    fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError>;
    fn revocation(
        &self,
        kind: RevocationKind,
        id: &str,
    ) -> Result<Option<RevocationRecord>, StoreError>;
    fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError>;
    /// Audit entries with `seq > after`, oldest first, at most `limit` (≤ `MAX_PAGE`).
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
    /// Audit entries with `seq < before` (all with `None`), newest first, at most `limit`
    /// (≤ `MAX_PAGE`).
    fn audit_before(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;
}

/// A consistent read view of the whole store (`Store::read`), never waiting for the writer.
/// Its reads are those of [`ReadView`], reached through `Deref`.
pub struct Snapshot {
    view: RedbSnapshot,
}

impl Snapshot {
    pub(crate) fn new(view: RedbSnapshot) -> Self {
        Snapshot { view }
    }
}

impl std::ops::Deref for Snapshot {
    type Target = dyn ReadView;

    fn deref(&self) -> &Self::Target {
        &self.view
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}
