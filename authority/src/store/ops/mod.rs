//! Write operations and how the writer applies them inside a write transaction.
//!
//! One file per domain (`agents`, `registration`, `keys`, `certificates`, `revocations`,
//! `clients`, `audit`); each op's function there plans its writes and names its own audit
//! entry, and [`apply`] is the one path from a [`WriteOp`] to the tables.
//!
//! Each op follows one discipline: **read and validate everything first, then write**. A
//! refusal (`StoreError` that is not a storage failure) is therefore returned before the first
//! insert, and the op leaves nothing behind, while the other ops of the same group commit go
//! on. Conditional ops (IAT consumption, RAT rotation, eTags) are checked here, inside the write
//! transaction, against data that includes the earlier ops of the same batch, so two concurrent
//! rotations presenting the same RAT cannot both win.

mod agents;
mod audit;
mod certificates;
mod clients;
mod dispatch;
mod keys;
mod prune;
mod registration;
mod revocations;

use redb::{ReadableTable, Table, WriteTransaction};

use super::codec::{self, Record};
use super::error::{DbResult, StoreError};
use super::hot::HotChange;
use super::records::*;
use super::schema::*;
use super::seal::{MasterKey, Secret};

pub use agents::{NewAgent, NewDataSourceConfig, NewIat};
pub use audit::MAX_AUDIT_FIELD_BYTES;
pub use certificates::NewCertificate;
pub use clients::SecretRotation;
pub(crate) use keys::hot_key;
pub use keys::{NewSigningKey, Takeover};
pub use prune::PruneAudit;
pub(crate) use registration::unsealed_client;
pub use registration::{Registration, Rotation};
pub use revocations::FORGET_BATCH;

use audit::AuditInfo;

/// The actor of the audit entries of what the process does by itself (configuration applied at
/// start-up, maintenance).
pub const SYSTEM_ACTOR: &str = "system";

/// Longest id, name, alias or jti the store accepts (bytes).
pub const MAX_ID_BYTES: usize = 256;
/// Most JWKs one registration may hold.
pub const MAX_JWKS: usize = 8;

/// A request to change the store. Answered by [`WriteOutcome`] or a [`StoreError`].
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Creates or replaces a tenant (from the configuration, at start-up).
    PutTenant {
        record: TenantRecord,
        now: u64,
    },
    /// Creates an agent (`NOT_ONBOARDED`); with `iat`, also issues its first initial access token
    /// in the same transaction (→ `ONBOARDING`).
    CreateAgent(NewAgent),
    /// Renames an agent or changes its profile (profile only while not onboarded).
    UpdateAgent {
        tenant: String,
        id: String,
        if_match: Option<u64>,
        name: Option<String>,
        security_profile: Option<SecurityProfile>,
        by: String,
        now: u64,
    },
    /// Deletes an agent, its registration and boarding state, and revokes its tokens.
    DeleteAgent {
        tenant: String,
        id: String,
        if_match: Option<u64>,
        by: String,
        now: u64,
        forget_after: u64,
    },
    /// Issues (or reissues) an initial access token; the previous one stops working.
    IssueBoardingToken {
        tenant: String,
        agent_id: String,
        iat: NewIat,
        by: String,
        now: u64,
    },
    /// Registers an agent, consuming its initial access token exactly once.
    Register(Registration),
    /// Rotates a registration with the current RAT. Within the grace window, the previous RAT
    /// gets the same answer again (a replay) instead of a refusal.
    RotateRegistration(Rotation),
    /// The agent used a new credential for the first time: the previous ones die (no-op when
    /// the rotation it names is gone already).
    CutOver {
        client_id: String,
        /// The registration generation whose previous credentials end.
        generation: u64,
        now: u64,
    },
    /// Creates or replaces an agent's data source configuration, guarded by its eTag.
    PutDataSourceConfig(NewDataSourceConfig),
    /// Revokes an agent's registration, secrets, RAT and outstanding tokens; it can board again.
    Offboard {
        tenant: String,
        agent_id: String,
        by: String,
        now: u64,
        forget_after: u64,
    },
    /// Suspends an agent (`suspend`) or resumes it: a suspended agent gets no token and may
    /// not register or rotate; its tokens are revoked; its records stay.
    SuspendAgent {
        tenant: String,
        id: String,
        suspend: bool,
        by: String,
        now: u64,
        forget_after: u64,
    },
    CreateOperatorClient {
        record: OperatorClientRecord,
        by: String,
    },
    /// Suspends an operator client (`suspend`; its tokens end for good) or resumes it.
    SuspendOperatorClient {
        id: String,
        suspend: bool,
        by: String,
        now: u64,
    },
    /// A new secret for an operator client, the previous one accepted for a grace period.
    RotateOperatorClientSecret(SecretRotation),
    DeleteOperatorClient {
        id: String,
        by: String,
        now: u64,
    },
    PutProfile {
        record: ProfileRecord,
        by: String,
        now: u64,
    },
    DeleteProfile {
        name: String,
        by: String,
        now: u64,
    },
    AddSigningKey(NewSigningKey),
    /// Moves a signing key to `state`. Making it `Active` needs a [`Takeover`]: a
    /// compare-and-swap on the active keys of its algorithm, which retire in the same write.
    SetSigningKeyState {
        kid: String,
        state: KeyState,
        takeover: Option<Takeover>,
        by: String,
        now: u64,
    },
    AddCertificate(NewCertificate),
    SetCertificateState {
        alias: String,
        state: CertificateState,
        by: String,
        now: u64,
    },
    /// Gives a certificate a new alias (`keytool -changealias`): fingerprint, kind, state and
    /// key unchanged; a sealed private key is re-sealed for its new row.
    RenameCertificate {
        alias: String,
        new_alias: String,
        by: String,
        now: u64,
    },
    /// Records a revocation (idempotent: re-revoking keeps the earliest `revoked_at` and the
    /// latest `forget_after`).
    Revoke {
        kind: RevocationKind,
        id: String,
        by: String,
        reason: String,
        now: u64,
        forget_after: u64,
    },
    /// Drops revocations whose `forget_after` has passed and spent or expired boarding tokens.
    Forget {
        now: u64,
    },
    /// Removes the oldest audit rows (retention), in one bounded batch.
    PruneAudit(PruneAudit),
    /// Appends an audit entry for an event the store does not see itself.
    Audit {
        actor: String,
        event: String,
        subject: String,
        outcome: AuditOutcome,
        now: u64,
    },
}

/// The answer to a successful [`WriteOp`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    Tenant(TenantRecord),
    Agent(AgentRecord),
    /// The agent and the boarding token just issued for it.
    Boarding(AgentRecord, BoardingRecord),
    Registration(RegistrationRecord),
    /// A repeated rotation with the previous RAT, answered with what the first one answered:
    /// the new RAT and the current shared secret, unsealed.
    RotationReplayed {
        registration: RegistrationRecord,
        rat: Secret,
        secret: Option<Secret>,
    },
    DataSourceConfig(DataSourceConfigRecord),
    OperatorClient(OperatorClientRecord),
    Profile(ProfileRecord),
    SigningKey(SigningKeyRecord),
    Certificate(CertificateRecord),
    Revocation(RevocationRecord),
    Forgotten {
        revocations: u64,
        boarding: u64,
    },
    Audit {
        seq: u64,
    },
    AuditPruned {
        removed: u64,
    },
}

type Bytes = &'static [u8];

/// All tables, open in one write transaction.
pub(crate) struct Tables<'t> {
    pub tenants: Table<'t, &'static str, Bytes>,
    pub agents: Table<'t, &'static str, Bytes>,
    pub agent_names: Table<'t, (&'static str, &'static str), &'static str>,
    pub tenant_agents: Table<'t, (&'static str, &'static str), ()>,
    pub boarding: Table<'t, &'static str, Bytes>,
    pub registrations: Table<'t, &'static str, Bytes>,
    pub operator_clients: Table<'t, &'static str, Bytes>,
    pub profiles: Table<'t, &'static str, Bytes>,
    pub signing_keys: Table<'t, &'static str, Bytes>,
    pub certificates: Table<'t, &'static str, Bytes>,
    pub cert_fingerprints: Table<'t, &'static str, &'static str>,
    pub revocations: Table<'t, (&'static str, &'static str), Bytes>,
    pub rotations: Table<'t, &'static str, Bytes>,
    pub datasource_configs: Table<'t, &'static str, Bytes>,
    pub audit: Table<'t, u64, Bytes>,
    next_audit: u64,
}

impl<'t> Tables<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        let op = "open tables";
        let audit = txn.open_table(AUDIT).db(op)?;
        let next_audit = audit
            .last()
            .db(op)?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(1);
        Ok(Tables {
            tenants: txn.open_table(TENANTS).db(op)?,
            agents: txn.open_table(AGENTS).db(op)?,
            agent_names: txn.open_table(AGENT_NAMES).db(op)?,
            tenant_agents: txn.open_table(TENANT_AGENTS).db(op)?,
            boarding: txn.open_table(BOARDING).db(op)?,
            registrations: txn.open_table(REGISTRATIONS).db(op)?,
            operator_clients: txn.open_table(OPERATOR_CLIENTS).db(op)?,
            profiles: txn.open_table(PROFILES).db(op)?,
            signing_keys: txn.open_table(SIGNING_KEYS).db(op)?,
            certificates: txn.open_table(CERTIFICATES).db(op)?,
            cert_fingerprints: txn.open_table(CERT_FINGERPRINTS).db(op)?,
            revocations: txn.open_table(REVOCATIONS).db(op)?,
            rotations: txn.open_table(ROTATIONS).db(op)?,
            datasource_configs: txn.open_table(DATASOURCE_CONFIGS).db(op)?,
            audit,
            next_audit,
        })
    }

    fn str_table(&mut self, t: StrTable) -> &mut Table<'t, &'static str, Bytes> {
        match t {
            StrTable::Tenants => &mut self.tenants,
            StrTable::Agents => &mut self.agents,
            StrTable::Boarding => &mut self.boarding,
            StrTable::Registrations => &mut self.registrations,
            StrTable::OperatorClients => &mut self.operator_clients,
            StrTable::Profiles => &mut self.profiles,
            StrTable::SigningKeys => &mut self.signing_keys,
            StrTable::Certificates => &mut self.certificates,
            StrTable::Rotations => &mut self.rotations,
            StrTable::DataSourceConfigs => &mut self.datasource_configs,
        }
    }

    /// Appends an audit entry already encoded for sequence number `next_audit`.
    fn append_audit(&mut self, entry: &[u8]) -> Result<u64, StoreError> {
        let seq = self.next_audit;
        self.audit.insert(seq, entry).db("append audit")?;
        self.next_audit += 1;
        Ok(seq)
    }
}

fn get<R: Record>(t: &Table<'_, &'static str, Bytes>, key: &str) -> Result<Option<R>, StoreError> {
    match t.get(key).db("read")? {
        Some(v) => Ok(Some(codec::decode(v.value())?)),
        None => Ok(None),
    }
}

/// A string-keyed record table, named for a [`Mutation`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum StrTable {
    Tenants,
    Agents,
    Boarding,
    Registrations,
    OperatorClients,
    Profiles,
    SigningKeys,
    Certificates,
    Rotations,
    DataSourceConfigs,
}

/// One planned change. Ops only read while they validate and *plan*; the writes happen
/// afterwards in [`execute`], which can fail only with a storage error (fatal to the batch).
/// So a refused op leaves no partial writes, by construction.
#[derive(Debug)]
pub(crate) enum Mutation {
    Put(StrTable, String, Vec<u8>),
    Del(StrTable, String),
    PutName(String, String, String),
    DelName(String, String),
    PutTenantAgent(String, String),
    DelTenantAgent(String, String),
    PutRevocation(&'static str, String, Vec<u8>),
    DelRevocation(String, String),
    PutFingerprint(String, String),
    /// Audit rows `first..=last`.
    DelAudit(u64, u64),
}

/// The writes an op will make, encoded up front.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    muts: Vec<Mutation>,
    /// Audit entries besides the op's own (e.g. the cut-over a rotation implies), appended
    /// before it; their fields are ids, bounded like every key.
    audits: Vec<AuditRecord>,
    /// The op's own audit entry, named before it plans anything so that a refusal is audited
    /// too; `None` for ops that are not audited.
    entry: Option<AuditInfo>,
}

impl Plan {
    /// The agent list index's changes, read off the plan's own agent writes: every op that
    /// writes an agent record updates the index, with no list of such ops to keep.
    fn agent_changes(&self) -> Result<Vec<HotChange>, StoreError> {
        let mut out = Vec::new();
        for m in &self.muts {
            match m {
                Mutation::Put(StrTable::Agents, id, bytes) => out.push(HotChange::Agent(
                    id.clone(),
                    Some(std::sync::Arc::new(codec::decode::<AgentRecord>(bytes)?)),
                )),
                Mutation::Del(StrTable::Agents, id) => {
                    out.push(HotChange::Agent(id.clone(), None));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Names the op's own audit entry (fields bounded here). Called first thing by every
    /// audited op, before anything can refuse it.
    fn audit(&mut self, actor: &str, event: &str, subject: &str, at: u64) {
        self.entry = Some(AuditInfo::new(actor, event, subject, at));
    }

    /// Adds a successful audit entry besides the op's own (fields bounded here), appended
    /// only if the op succeeds.
    fn extra_audit(&mut self, actor: &str, event: &str, subject: &str, at: u64) {
        self.audits.push(AuditRecord {
            seq: 0,
            at,
            actor: audit::audit_text(actor),
            event: audit::audit_text(event),
            subject: audit::audit_text(subject),
            outcome: AuditOutcome::Success,
        });
    }

    /// Renames the event of the op's own entry.
    fn audit_event(&mut self, event: &str) {
        if let Some(entry) = &mut self.entry {
            entry.rename(event);
        }
    }

    fn put<R: Record>(&mut self, table: StrTable, key: &str, r: &R) -> Result<(), StoreError> {
        self.muts
            .push(Mutation::Put(table, key.to_string(), codec::encode(r)?));
        Ok(())
    }

    fn del(&mut self, table: StrTable, key: &str) {
        self.muts.push(Mutation::Del(table, key.to_string()));
    }

    fn push(&mut self, m: Mutation) {
        self.muts.push(m);
    }

    /// Refuses a plan with a key longer than [`MAX_ID_BYTES`]. The ops check their ids, but
    /// this one check on every key keeps `execute` free of anything but storage errors even
    /// if an op forgets (redb itself would take a 300 KB key, or fail the group on a huge one).
    fn check_keys(&self) -> Result<(), StoreError> {
        let keys = self.muts.iter().flat_map(|m| -> [&str; 2] {
            match m {
                Mutation::Put(_, k, _) | Mutation::Del(_, k) => [k, ""],
                Mutation::PutName(a, b, _)
                | Mutation::DelName(a, b)
                | Mutation::PutTenantAgent(a, b)
                | Mutation::DelTenantAgent(a, b)
                | Mutation::DelRevocation(a, b) => [a, b],
                Mutation::PutRevocation(_, k, _) | Mutation::PutFingerprint(k, _) => [k, ""],
                Mutation::DelAudit(..) => ["", ""],
            }
        });
        for k in keys {
            if k.len() > MAX_ID_BYTES {
                return Err(StoreError::Invalid(format!(
                    "a key of {} bytes is longer than the {MAX_ID_BYTES}-byte limit",
                    k.len()
                )));
            }
        }
        Ok(())
    }
}

fn execute(t: &mut Tables<'_>, plan: Plan) -> Result<(), StoreError> {
    let op = "write";
    for m in plan.muts {
        match m {
            Mutation::Put(table, k, v) => {
                t.str_table(table).insert(k.as_str(), v.as_slice()).db(op)?;
            }
            Mutation::Del(table, k) => {
                t.str_table(table).remove(k.as_str()).db(op)?;
            }
            Mutation::PutName(tenant, name, id) => {
                t.agent_names
                    .insert((tenant.as_str(), name.as_str()), id.as_str())
                    .db(op)?;
            }
            Mutation::DelName(tenant, name) => {
                t.agent_names
                    .remove((tenant.as_str(), name.as_str()))
                    .db(op)?;
            }
            Mutation::PutTenantAgent(tenant, id) => {
                t.tenant_agents
                    .insert((tenant.as_str(), id.as_str()), ())
                    .db(op)?;
            }
            Mutation::DelTenantAgent(tenant, id) => {
                t.tenant_agents
                    .remove((tenant.as_str(), id.as_str()))
                    .db(op)?;
            }
            Mutation::PutRevocation(kind, id, v) => {
                t.revocations
                    .insert((kind, id.as_str()), v.as_slice())
                    .db(op)?;
            }
            Mutation::DelRevocation(kind, id) => {
                t.revocations.remove((kind.as_str(), id.as_str())).db(op)?;
            }
            Mutation::PutFingerprint(fp, alias) => {
                t.cert_fingerprints
                    .insert(fp.as_str(), alias.as_str())
                    .db(op)?;
            }
            Mutation::DelAudit(first, last) => {
                for seq in first..=last {
                    t.audit.remove(seq).db(op)?;
                }
            }
        }
    }
    Ok(())
}

fn check_id(what: &str, v: &str) -> Result<(), StoreError> {
    if v.is_empty() || v.len() > MAX_ID_BYTES || v.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{what} must be 1..={MAX_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_string(),
    }
}

/// Finds an agent of `tenant`; another tenant's agent is reported as not found.
fn agent_of(t: &Tables<'_>, tenant: &str, id: &str) -> Result<AgentRecord, StoreError> {
    match get::<AgentRecord>(&t.agents, id)? {
        Some(a) if a.tenant == tenant => Ok(a),
        _ => Err(not_found("agent", id)),
    }
}

/// What applying one op produced: its answer and the hot-index changes to publish after the
/// commit. Its audit entry (if any) is already in the transaction, refusals included.
pub(crate) struct Applied {
    pub result: Result<WriteOutcome, StoreError>,
    pub hot: Vec<HotChange>,
}

/// Applies one op: plan (reads only), encode its audit entry, then execute the plan and append
/// the entry. Storage failures come back as `Err` and sink the whole batch; refusals come back
/// in `Applied::result` and have written nothing but their audit entry.
///
/// Everything that can fail for a reason other than storage happens before the first write:
/// validation, sealing, encoding every record (`Plan::put`), bounding every key
/// (`Plan::check_keys`) and encoding the audit entry. So an oversize or unencodable value
/// refuses its own op and nothing else; the writes that follow can only fail with a redb
/// storage error, which is rightly fatal to the group. redb savepoints cannot do this job: one
/// can be taken only while a transaction is not dirty (no table opened yet), so not between the
/// ops of a group; and a group per op would give up group commit.
pub(crate) fn apply(
    t: &mut Tables<'_>,
    key: &MasterKey,
    op: WriteOp,
) -> Result<Applied, StoreError> {
    apply_recording(t, key, op, None)
}

/// [`apply`], also recording each row the op writes, in order, into `rows` (the etcd engine
/// sends them to the cluster instead of committing the transaction).
pub(crate) fn apply_recording(
    t: &mut Tables<'_>,
    key: &MasterKey,
    op: WriteOp,
    #[allow(unused_mut)] mut rows: Option<&mut Vec<RowChange>>,
) -> Result<Applied, StoreError> {
    let mut hot = Vec::new();
    let mut plan = Plan::default();
    let mut result = match dispatch::dispatch(t, key, op, &mut plan, &mut hot) {
        Err(e) if is_fatal(&e) => return Err(e),
        Ok(outcome) => plan
            .check_keys()
            .and_then(|()| plan.agent_changes())
            .map(|changes| {
                hot.extend(changes);
                outcome
            }),
        Err(e) => Err(e),
    };
    // Extra entries take the sequence numbers first, the op's own entry the one after them.
    let mut extra = Vec::new();
    if result.is_ok() {
        for (rec, seq) in std::mem::take(&mut plan.audits)
            .into_iter()
            .zip(t.next_audit..)
        {
            match codec::encode(&AuditRecord { seq, ..rec }) {
                Ok(bytes) => extra.push(bytes),
                Err(e) => {
                    result = Err(e);
                    extra.clear();
                    break;
                }
            }
        }
    }
    let own_seq = t.next_audit + extra.len() as u64;
    let entry = match plan.entry.take().map(|info| info.encode(own_seq, &result)) {
        Some(Ok(bytes)) => Some(bytes),
        // Unreachable with bounded fields; if it ever happens, the op is refused unaudited
        // rather than done unaudited.
        Some(Err(e)) => {
            tracing::error!(error = %e, "audit entry cannot be encoded; op refused");
            result = Err(e);
            None
        }
        None => None,
    };
    match result {
        Ok(_) => {
            if let Some(rows) = rows.as_deref_mut() {
                rows.extend(plan.muts.iter().map(RowChange::of));
            }
            execute(t, plan)?
        }
        Err(_) => hot.clear(),
    }
    for bytes in extra.iter().chain(entry.as_ref()) {
        let seq = t.append_audit(bytes)?;
        if let Some(rows) = rows.as_deref_mut() {
            rows.push(RowChange::audit(seq, bytes));
        }
    }
    Ok(Applied { result, hot })
}

/// Without the etcd engine nothing records rows: `apply` passes `None`.
#[cfg(not(feature = "etcd"))]
pub(crate) struct RowChange;

#[cfg(not(feature = "etcd"))]
impl RowChange {
    fn of(_: &Mutation) -> Self {
        RowChange
    }

    fn audit(_: u64, _: &[u8]) -> Self {
        RowChange
    }
}

#[cfg(feature = "etcd")]
use super::etcd::layout::{RowChange, RowKey, Table as RowTable};

#[cfg(feature = "etcd")]
impl RowChange {
    fn audit(seq: u64, bytes: &[u8]) -> Self {
        RowChange::Put(RowTable::Audit, RowKey::Seq(seq), bytes.to_vec())
    }

    /// The row-level change a planned mutation makes.
    fn of(m: &Mutation) -> Self {
        let str_table = |t: &StrTable| match t {
            StrTable::Tenants => RowTable::Tenants,
            StrTable::Agents => RowTable::Agents,
            StrTable::Boarding => RowTable::Boarding,
            StrTable::Registrations => RowTable::Registrations,
            StrTable::OperatorClients => RowTable::OperatorClients,
            StrTable::Profiles => RowTable::Profiles,
            StrTable::SigningKeys => RowTable::SigningKeys,
            StrTable::Certificates => RowTable::Certificates,
            StrTable::Rotations => RowTable::Rotations,
            StrTable::DataSourceConfigs => RowTable::DataSourceConfigs,
        };
        let pair = |a: &String, b: &String| RowKey::Pair(a.clone(), b.clone());
        match m {
            Mutation::Put(t, k, v) => {
                RowChange::Put(str_table(t), RowKey::Str(k.clone()), v.clone())
            }
            Mutation::Del(t, k) => RowChange::Del(str_table(t), RowKey::Str(k.clone())),
            Mutation::PutName(a, b, id) => {
                RowChange::Put(RowTable::AgentNames, pair(a, b), id.as_bytes().to_vec())
            }
            Mutation::DelName(a, b) => RowChange::Del(RowTable::AgentNames, pair(a, b)),
            Mutation::PutTenantAgent(a, b) => {
                RowChange::Put(RowTable::TenantAgents, pair(a, b), Vec::new())
            }
            Mutation::DelTenantAgent(a, b) => RowChange::Del(RowTable::TenantAgents, pair(a, b)),
            Mutation::PutRevocation(kind, id, v) => RowChange::Put(
                RowTable::Revocations,
                RowKey::Pair((*kind).to_owned(), id.clone()),
                v.clone(),
            ),
            Mutation::DelRevocation(a, b) => RowChange::Del(RowTable::Revocations, pair(a, b)),
            Mutation::PutFingerprint(fp, alias) => RowChange::Put(
                RowTable::CertFingerprints,
                RowKey::Str(fp.clone()),
                alias.as_bytes().to_vec(),
            ),
            Mutation::DelAudit(first, last) => RowChange::DelAuditRange(*first, *last),
        }
    }
}

/// Errors that mean the transaction itself is unusable.
pub(crate) fn is_fatal(e: &StoreError) -> bool {
    matches!(e, StoreError::Db { .. } | StoreError::Io { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_with_oversize_keys_are_refused_before_writing() {
        let long = "k".repeat(MAX_ID_BYTES + 1);
        let ok = "k".repeat(MAX_ID_BYTES);
        let plan = |m: Mutation| Plan {
            muts: vec![m],
            ..Plan::default()
        };
        assert!(
            plan(Mutation::Del(StrTable::Agents, ok.clone()))
                .check_keys()
                .is_ok()
        );
        for m in [
            Mutation::Del(StrTable::Agents, long.clone()),
            Mutation::PutName("t".into(), long.clone(), "id".into()),
            Mutation::PutTenantAgent(long.clone(), "id".into()),
            Mutation::PutRevocation("jti", long.clone(), vec![]),
            Mutation::PutFingerprint(long.clone(), "alias".into()),
        ] {
            assert!(
                matches!(plan(m).check_keys(), Err(StoreError::Invalid(_))),
                "not refused"
            );
        }
    }
}
