//! Write operations and how the writer applies them inside a write transaction.
//!
//! Each `apply_*` function follows one discipline: **read and validate everything first, then
//! write**. A refusal (`StoreError` that is not a storage failure) is therefore returned before
//! the first insert, and the op leaves nothing behind, while the other ops of the same group
//! commit go on. Conditional ops (IAT consumption, RAT rotation, eTags) are checked here, inside
//! the write transaction, against data that includes the earlier ops of the same batch, so two
//! concurrent rotations presenting the same RAT cannot both win.

use std::sync::Arc;

use redb::{ReadableTable, Table, WriteTransaction};

use super::codec::{self, Record};
use super::error::{DbResult, StoreError};
use super::hot::{ClientAuth, HotChange, PreviousCredentials, Revocation, SigningKey};
use super::records::*;
use super::schema::*;
use super::seal::{MasterKey, SealContext, Secret, SecretHash};

/// Longest id, name, alias or jti the store accepts (bytes).
pub const MAX_ID_BYTES: usize = 256;
/// Most JWKs one registration may hold.
pub const MAX_JWKS: usize = 8;
/// Longest text kept in one audit field (actor, event, subject, refusal message), in bytes.
pub const MAX_AUDIT_FIELD_BYTES: usize = 1024;

/// A request to change the store. Answered by [`WriteOutcome`] or a [`StoreError`].
#[non_exhaustive]
#[derive(Debug)]
pub enum WriteOp {
    /// Creates or replaces a tenant.
    PutTenant(TenantRecord),
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
    CreateOperatorClient {
        record: OperatorClientRecord,
        by: String,
    },
    DeleteOperatorClient {
        id: String,
        by: String,
        now: u64,
    },
    PutProfile(ProfileRecord),
    DeleteProfile {
        name: String,
    },
    AddSigningKey(NewSigningKey),
    SetSigningKeyState {
        kid: String,
        state: KeyState,
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
    PruneAudit(super::audit_prune::PruneAudit),
    /// Appends an audit entry for an event the store does not see itself.
    Audit {
        actor: String,
        event: String,
        subject: String,
        outcome: AuditOutcome,
        now: u64,
    },
}

#[derive(Debug, Clone)]
pub struct NewAgent {
    pub tenant: String,
    pub id: String,
    pub name: String,
    pub security_profile: SecurityProfile,
    pub iat: Option<NewIat>,
    pub now: u64,
}

/// An initial access token to record: its `jti` and expiry.
#[derive(Debug, Clone)]
pub struct NewIat {
    pub jti: String,
    pub expires_at: u64,
}

/// A registration request, already authenticated by the IAT's signature upstream.
#[derive(Debug)]
pub struct Registration {
    /// The IAT's `jti`; consumed by this registration.
    pub iat_jti: String,
    pub tenant: String,
    /// = the IAT's `sub` = the agent id.
    pub client_id: String,
    pub auth_method: AuthMethod,
    pub secret: Option<Secret>,
    pub jwks: Vec<String>,
    pub secret_expires_at: u64,
    /// The new registration access token (only its hash is stored).
    pub rat: Secret,
    pub now: u64,
}

/// A rotation request (RFC 7592 PUT).
#[derive(Debug)]
pub struct Rotation {
    pub client_id: String,
    /// The RAT the client presented; must be the current one.
    pub presented_rat: Secret,
    pub new_rat: Secret,
    /// New shared secret (`None` keeps the current one).
    pub new_secret: Option<Secret>,
    /// New key set (`None` keeps the current one).
    pub new_jwks: Option<Vec<String>>,
    pub secret_expires_at: u64,
    /// Until when the replaced credentials stay usable (see [`RotationRecord`]); at or
    /// before `now`, the rotation keeps no grace and the old RAT dies at once.
    pub grace_until: u64,
    pub now: u64,
}

/// A data source configuration write.
#[derive(Debug)]
pub struct NewDataSourceConfig {
    pub tenant: String,
    pub agent_id: String,
    /// The eTag the writer last saw; 0 when it saw none. `None` writes unconditionally.
    pub if_match: Option<u64>,
    /// Used only at the first write.
    pub new_id: String,
    /// The validated JSON object.
    pub json: String,
    pub by: String,
    pub now: u64,
}

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

#[derive(Debug)]
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
    pub(super) audits: Vec<AuditRecord>,
}

impl Plan {
    fn put<R: Record>(&mut self, table: StrTable, key: &str, r: &R) -> Result<(), StoreError> {
        self.muts
            .push(Mutation::Put(table, key.to_string(), codec::encode(r)?));
        Ok(())
    }

    fn del(&mut self, table: StrTable, key: &str) {
        self.muts.push(Mutation::Del(table, key.to_string()));
    }

    pub(super) fn push(&mut self, m: Mutation) {
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

fn check_etag(agent: &AgentRecord, if_match: Option<u64>) -> Result<(), StoreError> {
    match if_match {
        Some(expected) if expected != agent.etag => Err(StoreError::PreconditionFailed {
            expected,
            current: agent.etag,
        }),
        _ => Ok(()),
    }
}

/// What applying one op produced: its answer and the hot-index changes to publish after the
/// commit. Its audit entry (if any) is already in the transaction, refusals included.
pub(crate) struct Applied {
    pub result: Result<WriteOutcome, StoreError>,
    pub hot: Vec<HotChange>,
}

/// Audit facts of an op, taken (bounded) before it is consumed.
struct AuditInfo {
    actor: String,
    event: String,
    subject: String,
    at: u64,
    /// The outcome an explicit [`WriteOp::Audit`] records; other ops record their own result.
    outcome: Option<AuditOutcome>,
}

impl AuditInfo {
    /// The entry for sequence number `seq`, encoded. Every field is bounded first, so the
    /// entry fits a record whatever the op carried.
    fn encode(
        self,
        seq: u64,
        result: &Result<WriteOutcome, StoreError>,
    ) -> Result<Vec<u8>, StoreError> {
        let outcome = match (self.outcome, result) {
            (Some(AuditOutcome::Refused(m)), _) => AuditOutcome::Refused(audit_text(&m)),
            (Some(AuditOutcome::Success), _) | (None, Ok(_)) => AuditOutcome::Success,
            (None, Err(e)) => AuditOutcome::Refused(audit_text(&e.to_string())),
        };
        codec::encode(&AuditRecord {
            seq,
            at: self.at,
            actor: self.actor,
            event: self.event,
            subject: self.subject,
            outcome,
        })
    }
}

/// `s` as one audit field: at most [`MAX_AUDIT_FIELD_BYTES`] (cut at a character boundary and
/// marked with `…`), control characters replaced, so an entry always fits a record and prints
/// on one line. The audit log keeps what was attempted even when the attempt was oversized.
fn audit_text(s: &str) -> String {
    const MARK: char = '…';
    let mut out = String::new();
    // Reads only what can be kept (plus one character to know whether anything was cut).
    for c in s.chars() {
        out.push(if c.is_control() {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        });
        if out.len() > MAX_AUDIT_FIELD_BYTES {
            break;
        }
    }
    if out.len() > MAX_AUDIT_FIELD_BYTES {
        let mut end = MAX_AUDIT_FIELD_BYTES - MARK.len_utf8();
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push(MARK);
    }
    out
}

fn audit_info(op: &WriteOp) -> Option<AuditInfo> {
    let a = |actor: &str, event: &str, subject: &str, at| {
        Some(AuditInfo {
            actor: audit_text(actor),
            event: audit_text(event),
            subject: audit_text(subject),
            at,
            outcome: None,
        })
    };
    match op {
        WriteOp::DeleteAgent { id, by, now, .. } => a(by, "agent.delete", id, *now),
        WriteOp::Register(r) => a(&r.client_id, "agent.register", &r.client_id, r.now),
        WriteOp::RotateRegistration(r) => a(&r.client_id, "agent.rotate", &r.client_id, r.now),
        WriteOp::Offboard {
            agent_id, by, now, ..
        } => a(by, "agent.offboard", agent_id, *now),
        WriteOp::CreateOperatorClient { record, by } => {
            a(by, "client.create", &record.id, record.created_at)
        }
        WriteOp::DeleteOperatorClient { id, by, now } => a(by, "client.delete", id, *now),
        WriteOp::AddSigningKey(k) => a(&k.by, "key.add", &k.kid, k.now),
        WriteOp::SetSigningKeyState {
            kid,
            state,
            by,
            now,
        } => {
            let event = match state {
                KeyState::Active => "key.activate",
                KeyState::Retiring => "key.retiring",
                KeyState::Retired => "key.retire",
                KeyState::Published => "key.publish",
            };
            a(by, event, kid, *now)
        }
        WriteOp::AddCertificate(c) => a(&c.by, "cert.add", &c.alias, c.now),
        WriteOp::SetCertificateState { alias, by, now, .. } => a(by, "cert.state", alias, *now),
        WriteOp::RenameCertificate {
            alias,
            new_alias,
            by,
            now,
        } => {
            // Each alias bounded before they are joined.
            let subject = format!("{} -> {}", audit_text(alias), audit_text(new_alias));
            a(by, "cert.rename", &subject, *now)
        }
        WriteOp::Revoke {
            kind, id, by, now, ..
        } => {
            // Bounded before the prefix is added: `id` may be anything a caller sent.
            let subject = format!("{}:{}", kind.as_str(), audit_text(id));
            a(by, "revoke", &subject, *now)
        }
        WriteOp::Audit {
            actor,
            event,
            subject,
            outcome,
            now,
        } => a(actor, event, subject, *now).map(|info| AuditInfo {
            outcome: Some(outcome.clone()),
            ..info
        }),
        _ => None,
    }
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
    let audit = audit_info(&op);
    let mut hot = Vec::new();
    let mut plan = Plan::default();
    let mut result = match plan_op(t, key, op, &mut plan, &mut hot) {
        Err(e) if is_fatal(&e) => return Err(e),
        Ok(outcome) => plan.check_keys().map(|()| outcome),
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
    let entry = match audit.map(|mut info| {
        if let Ok(WriteOutcome::RotationReplayed { .. }) = &result {
            info.event = "agent.rotate.replay".into();
        }
        info.encode(own_seq, &result)
    }) {
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
        Ok(_) => execute(t, plan)?,
        Err(_) => hot.clear(),
    }
    for bytes in &extra {
        t.append_audit(bytes)?;
    }
    if let Some(bytes) = entry {
        t.append_audit(&bytes)?;
    }
    Ok(Applied { result, hot })
}

/// Errors that mean the transaction itself is unusable.
pub(crate) fn is_fatal(e: &StoreError) -> bool {
    matches!(e, StoreError::Db { .. } | StoreError::Io { .. })
}

fn plan_op(
    t: &mut Tables<'_>,
    key: &MasterKey,
    op: WriteOp,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::PutTenant(rec) => {
            check_id("tenant id", &rec.id)?;
            p.put(StrTable::Tenants, &rec.id, &rec)?;
            Ok(WriteOutcome::Tenant(rec))
        }
        WriteOp::CreateAgent(new) => create_agent(t, p, new),
        WriteOp::UpdateAgent {
            tenant,
            id,
            if_match,
            name,
            security_profile,
            now,
        } => {
            let mut agent = agent_of(t, &tenant, &id)?;
            check_etag(&agent, if_match)?;
            if let Some(prof) = security_profile
                && prof != agent.security_profile
                && agent.state == BoardingState::Onboarded
            {
                return Err(StoreError::InvalidState(
                    "cannot change the security profile of an onboarded agent; offboard it first"
                        .into(),
                ));
            }
            if let Some(n) = name.filter(|n| *n != agent.name) {
                check_id("agent name", &n)?;
                if t.agent_names
                    .get((tenant.as_str(), n.as_str()))
                    .db("read")?
                    .is_some()
                {
                    return Err(StoreError::Conflict(format!("an agent named {n:?} exists")));
                }
                p.push(Mutation::DelName(tenant.clone(), agent.name.clone()));
                p.push(Mutation::PutName(tenant.clone(), n.clone(), id.clone()));
                agent.name = n;
            }
            if let Some(prof) = security_profile {
                agent.security_profile = prof;
            }
            agent.etag += 1;
            agent.updated_at = now;
            p.put(StrTable::Agents, &id, &agent)?;
            Ok(WriteOutcome::Agent(agent))
        }
        WriteOp::DeleteAgent {
            tenant,
            id,
            if_match,
            by,
            now,
            forget_after,
        } => {
            let agent = agent_of(t, &tenant, &id)?;
            check_etag(&agent, if_match)?;
            p.del(StrTable::Agents, &id);
            p.push(Mutation::DelName(tenant.clone(), agent.name.clone()));
            p.push(Mutation::DelTenantAgent(tenant.clone(), id.clone()));
            if let Some(jti) = &agent.current_iat {
                p.del(StrTable::Boarding, jti);
            }
            if t.registrations.get(id.as_str()).db("read")?.is_some() {
                p.del(StrTable::Registrations, &id);
                hot.push(HotChange::Client(id.clone(), None));
            }
            p.del(StrTable::Rotations, &id);
            p.del(StrTable::DataSourceConfigs, &id);
            let rev = RevokeArgs {
                kind: RevocationKind::Agent,
                id: &id,
                by: &by,
                reason: "agent deleted",
                now,
                forget_after,
            };
            revoke(t, p, hot, rev)?;
            Ok(WriteOutcome::Agent(agent))
        }
        WriteOp::IssueBoardingToken {
            tenant,
            agent_id,
            iat,
            now,
        } => {
            let agent = agent_of(t, &tenant, &agent_id)?;
            let (agent, rec) = issue_iat(t, p, agent, iat, now)?;
            Ok(WriteOutcome::Boarding(agent, rec))
        }
        WriteOp::Register(r) => register(t, p, key, r, hot),
        WriteOp::RotateRegistration(r) => rotate(t, p, key, r, hot),
        WriteOp::CutOver {
            client_id,
            generation,
            now,
        } => cut_over(t, p, key, &client_id, generation, now, hot),
        WriteOp::PutDataSourceConfig(c) => put_datasource_config(t, p, c),
        WriteOp::Offboard {
            tenant,
            agent_id,
            by,
            now,
            forget_after,
        } => {
            let mut agent = agent_of(t, &tenant, &agent_id)?;
            if let Some(jti) = agent.current_iat.take() {
                p.del(StrTable::Boarding, &jti);
            }
            if t.registrations.get(agent_id.as_str()).db("read")?.is_some() {
                p.del(StrTable::Registrations, &agent_id);
                hot.push(HotChange::Client(agent_id.clone(), None));
            }
            p.del(StrTable::Rotations, &agent_id);
            let rev = RevokeArgs {
                kind: RevocationKind::Agent,
                id: &agent_id,
                by: &by,
                reason: "offboarded",
                now,
                forget_after,
            };
            revoke(t, p, hot, rev)?;
            agent.state = BoardingState::NotOnboarded;
            agent.etag += 1;
            agent.updated_at = now;
            p.put(StrTable::Agents, &agent_id, &agent)?;
            Ok(WriteOutcome::Agent(agent))
        }
        WriteOp::CreateOperatorClient { mut record, by: _ } => {
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
        WriteOp::DeleteOperatorClient { id, .. } => {
            let rec = get::<OperatorClientRecord>(&t.operator_clients, &id)?
                .ok_or_else(|| not_found("client", &id))?;
            p.del(StrTable::OperatorClients, &id);
            hot.push(HotChange::OperatorClient(id, None));
            Ok(WriteOutcome::OperatorClient(rec))
        }
        WriteOp::PutProfile(prof) => {
            check_id("profile name", &prof.name)?;
            p.put(StrTable::Profiles, &prof.name, &prof)?;
            Ok(WriteOutcome::Profile(prof))
        }
        WriteOp::DeleteProfile { name } => {
            let prof = get::<ProfileRecord>(&t.profiles, &name)?
                .ok_or_else(|| not_found("profile", &name))?;
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
            p.del(StrTable::Profiles, &name);
            Ok(WriteOutcome::Profile(prof))
        }
        WriteOp::AddSigningKey(k) => {
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
        WriteOp::SetSigningKeyState {
            kid, state, now, ..
        } => {
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
        WriteOp::AddCertificate(c) => {
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
        WriteOp::SetCertificateState { alias, state, .. } => {
            let mut rec = get::<CertificateRecord>(&t.certificates, &alias)?
                .ok_or_else(|| not_found("certificate", &alias))?;
            rec.state = state;
            p.put(StrTable::Certificates, &alias, &rec)?;
            Ok(WriteOutcome::Certificate(rec))
        }
        WriteOp::RenameCertificate {
            alias, new_alias, ..
        } => {
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
        WriteOp::Revoke {
            kind,
            id,
            by,
            reason,
            now,
            forget_after,
        } => {
            check_id("revoked id", &id)?;
            let rev = RevokeArgs {
                kind,
                id: &id,
                by: &by,
                reason: &reason,
                now,
                forget_after,
            };
            let rec = revoke(t, p, hot, rev)?;
            Ok(WriteOutcome::Revocation(rec))
        }
        WriteOp::Forget { now } => forget(t, p, key, hot, now),
        WriteOp::PruneAudit(req) => super::audit_prune::plan(t, p, &req),
        // Nothing to plan: `apply` appends the entry, as for every audited op, under the
        // sequence number it reads here (the next one; ops apply one at a time).
        WriteOp::Audit { .. } => Ok(WriteOutcome::Audit { seq: t.next_audit }),
    }
}

fn create_agent(t: &Tables<'_>, p: &mut Plan, new: NewAgent) -> Result<WriteOutcome, StoreError> {
    check_id("agent id", &new.id)?;
    check_id("agent name", &new.name)?;
    if t.tenants.get(new.tenant.as_str()).db("read")?.is_none() {
        return Err(not_found("tenant", &new.tenant));
    }
    if t.agents.get(new.id.as_str()).db("read")?.is_some() {
        // Agent ids are global (the token endpoint finds a client by id alone): the same
        // answer whichever tenant holds it, so it does not say where.
        return Err(StoreError::Conflict(format!(
            "entity id {:?} is not available; agent ids are unique across all tenants",
            new.id
        )));
    }
    if t.agent_names
        .get((new.tenant.as_str(), new.name.as_str()))
        .db("read")?
        .is_some()
    {
        return Err(StoreError::Conflict(format!(
            "an agent named {:?} exists",
            new.name
        )));
    }
    let agent = AgentRecord {
        id: new.id.clone(),
        tenant: new.tenant.clone(),
        name: new.name.clone(),
        security_profile: new.security_profile,
        state: BoardingState::NotOnboarded,
        etag: 1,
        current_iat: None,
        created_at: new.now,
        updated_at: new.now,
    };
    p.push(Mutation::PutName(
        new.tenant.clone(),
        new.name.clone(),
        new.id.clone(),
    ));
    p.push(Mutation::PutTenantAgent(new.tenant.clone(), new.id.clone()));
    match new.iat {
        None => {
            p.put(StrTable::Agents, &new.id, &agent)?;
            Ok(WriteOutcome::Agent(agent))
        }
        Some(iat) => {
            let (agent, rec) = issue_iat(t, p, agent, iat, new.now)?;
            Ok(WriteOutcome::Boarding(agent, rec))
        }
    }
}

fn issue_iat(
    t: &Tables<'_>,
    p: &mut Plan,
    mut agent: AgentRecord,
    iat: NewIat,
    now: u64,
) -> Result<(AgentRecord, BoardingRecord), StoreError> {
    check_id("jti", &iat.jti)?;
    if agent.state == BoardingState::Onboarded {
        return Err(StoreError::InvalidState(format!(
            "agent {:?} is onboarded; offboard it before boarding again",
            agent.id
        )));
    }
    if t.boarding.get(iat.jti.as_str()).db("read")?.is_some() {
        return Err(StoreError::Conflict(
            "initial access token id reused".into(),
        ));
    }
    if let Some(old) = agent.current_iat.take() {
        p.del(StrTable::Boarding, &old);
    }
    let rec = BoardingRecord {
        jti: iat.jti.clone(),
        agent_id: agent.id.clone(),
        tenant: agent.tenant.clone(),
        issued_at: now,
        expires_at: iat.expires_at,
        used_at: None,
    };
    p.put(StrTable::Boarding, &iat.jti, &rec)?;
    agent.current_iat = Some(iat.jti);
    agent.state = BoardingState::Onboarding;
    agent.etag += 1;
    agent.updated_at = now;
    p.put(StrTable::Agents, &agent.id, &agent)?;
    Ok((agent, rec))
}

fn check_credentials(
    profile: SecurityProfile,
    method: AuthMethod,
    secret: Option<&Secret>,
    jwks: &[String],
) -> Result<(), StoreError> {
    let ok = match (profile, method) {
        (SecurityProfile::SharedSecret, AuthMethod::ClientSecretJwt) => secret.is_some(),
        (SecurityProfile::Rsa3072, AuthMethod::PrivateKeyJwt) => !jwks.is_empty(),
        (_, AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth) => true,
        _ => false,
    };
    if !ok {
        return Err(StoreError::Invalid(format!(
            "{} credentials do not fit security profile {}",
            method.as_str(),
            profile.as_str()
        )));
    }
    check_jwks(jwks)
}

fn check_jwks(jwks: &[String]) -> Result<(), StoreError> {
    if jwks.len() > MAX_JWKS {
        return Err(StoreError::Invalid(format!(
            "at most {MAX_JWKS} keys per registration"
        )));
    }
    Ok(())
}

fn register(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    r: Registration,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    let mut iat: BoardingRecord =
        get(&t.boarding, &r.iat_jti)?.ok_or(StoreError::InvalidIat("unknown or superseded"))?;
    if iat.used_at.is_some() {
        return Err(StoreError::InvalidIat("already used"));
    }
    if iat.expires_at <= r.now {
        return Err(StoreError::InvalidIat("expired"));
    }
    if iat.agent_id != r.client_id || iat.tenant != r.tenant {
        return Err(StoreError::InvalidIat("issued for another agent"));
    }
    let mut agent = agent_of(t, &r.tenant, &r.client_id)
        .map_err(|_| StoreError::InvalidIat("its agent no longer exists"))?;
    if agent.state != BoardingState::Onboarding || agent.current_iat.as_deref() != Some(&r.iat_jti)
    {
        return Err(StoreError::InvalidIat("superseded"));
    }
    check_credentials(
        agent.security_profile,
        r.auth_method,
        r.secret.as_ref(),
        &r.jwks,
    )?;
    let ctx = SealContext {
        table: "registrations",
        key: &r.client_id,
    };
    let sealed = match &r.secret {
        Some(s) => Some(key.seal(ctx, s.expose())?),
        None => None,
    };
    let rec = RegistrationRecord {
        client_id: r.client_id.clone(),
        tenant: r.tenant.clone(),
        auth_method: r.auth_method,
        sealed_secret: sealed,
        jwks: r.jwks,
        secret_expires_at: r.secret_expires_at,
        rat_hash: SecretHash::blake3(r.rat.expose())?,
        generation: 1,
        created_at: r.now,
        updated_at: r.now,
    };
    iat.used_at = Some(r.now);
    p.put(StrTable::Boarding, &r.iat_jti, &iat)?;
    p.put(StrTable::Registrations, &r.client_id, &rec)?;
    p.del(StrTable::Rotations, &r.client_id);
    agent.state = BoardingState::Onboarded;
    agent.current_iat = None;
    agent.etag += 1;
    agent.updated_at = r.now;
    p.put(StrTable::Agents, &r.client_id, &agent)?;
    hot.push(HotChange::Client(
        r.client_id.clone(),
        Some(Arc::new(hot_client(&rec, r.secret, None))),
    ));
    Ok(WriteOutcome::Registration(rec))
}

fn rotate(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    r: Rotation,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    let mut rec: RegistrationRecord = get(&t.registrations, &r.client_id)?
        .ok_or_else(|| not_found("registration", &r.client_id))?;
    let grace = live_rotation(t, &rec, r.now)?;
    let ctx = SealContext {
        table: "registrations",
        key: &r.client_id,
    };
    if !rec.rat_hash.verify(r.presented_rat.expose()) {
        return match grace {
            Some(g) if g.previous_rat_hash.verify(r.presented_rat.expose()) => {
                replay(p, key, rec, g, r, hot)
            }
            _ => Err(StoreError::StaleRat),
        };
    }
    let current_secret = match &rec.sealed_secret {
        Some(sealed) => Some(key.unseal(ctx, sealed)?),
        None => None,
    };
    let secret = r.new_secret.clone().or_else(|| current_secret.clone());
    if let Some(jwks) = &r.new_jwks {
        check_jwks(jwks)?;
        if rec.auth_method == AuthMethod::PrivateKeyJwt && jwks.is_empty() {
            return Err(StoreError::Invalid(
                "a private_key_jwt client needs at least one key".into(),
            ));
        }
    }
    if rec.auth_method == AuthMethod::ClientSecretJwt && secret.is_none() {
        return Err(StoreError::Invalid(
            "a client_secret_jwt client needs a secret".into(),
        ));
    }
    if grace.is_some() {
        // The new RAT of the last rotation is in use: that rotation's old credentials end.
        p.audits.push(cut_over_audit(&r.client_id, r.now));
    }
    let previous = Rotated {
        rat_hash: rec.rat_hash.clone(),
        jwks: rec.jwks.clone(),
        secret: current_secret,
        expires_at: rec.secret_expires_at,
    };
    if let Some(s) = &r.new_secret {
        rec.sealed_secret = Some(key.seal(ctx, s.expose())?);
    }
    if let Some(jwks) = r.new_jwks {
        rec.jwks = jwks;
    }
    rec.rat_hash = SecretHash::blake3(r.new_rat.expose())?;
    rec.generation += 1;
    rec.secret_expires_at = r.secret_expires_at;
    rec.updated_at = r.now;
    p.put(StrTable::Registrations, &r.client_id, &rec)?;
    let previous = if r.grace_until > r.now {
        let secrets = RotationSecrets {
            new_rat: r.new_rat,
            previous_secret: previous.secret,
        };
        let row = RotationRecord {
            client_id: r.client_id.clone(),
            generation: rec.generation,
            previous_rat_hash: previous.rat_hash,
            previous_jwks: previous.jwks,
            previous_secret_expires_at: previous.expires_at,
            sealed: secrets.seal(key, &r.client_id)?,
            rotated_at: r.now,
            grace_until: r.grace_until,
        };
        p.put(StrTable::Rotations, &r.client_id, &row)?;
        Some(previous_credentials(&row, secrets))
    } else {
        p.del(StrTable::Rotations, &r.client_id);
        None
    };
    hot.push(HotChange::Client(
        r.client_id.clone(),
        Some(Arc::new(hot_client(&rec, secret, previous))),
    ));
    Ok(WriteOutcome::Registration(rec))
}

/// What a rotation replaces, taken before the record changes.
struct Rotated {
    rat_hash: SecretHash,
    jwks: Vec<String>,
    secret: Option<Secret>,
    expires_at: u64,
}

/// The rotation row of `rec` if its grace window is open at `now` (a row of another
/// generation is stale and ignored).
fn live_rotation(
    t: &Tables<'_>,
    rec: &RegistrationRecord,
    now: u64,
) -> Result<Option<RotationRecord>, StoreError> {
    Ok(get::<RotationRecord>(&t.rotations, &rec.client_id)?
        .filter(|g| g.generation == rec.generation && now < g.grace_until))
}

/// A repeated rotation with the previous RAT: the same new credentials again. An RSA agent
/// may present other keys than the lost request did (MCL makes a new key per attempt); the
/// keys of its last attempt are the ones it holds, so they replace the pending ones.
fn replay(
    p: &mut Plan,
    key: &MasterKey,
    mut rec: RegistrationRecord,
    grace: RotationRecord,
    r: Rotation,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    let secrets = RotationSecrets::unseal(key, &r.client_id, &grace.sealed)?;
    let secret = match &rec.sealed_secret {
        Some(sealed) => Some(key.unseal(
            SealContext {
                table: "registrations",
                key: &r.client_id,
            },
            sealed,
        )?),
        None => None,
    };
    if let Some(jwks) = r.new_jwks
        && jwks != rec.jwks
    {
        check_jwks(&jwks)?;
        if jwks.is_empty() {
            return Err(StoreError::Invalid(
                "a private_key_jwt client needs at least one key".into(),
            ));
        }
        rec.jwks = jwks;
        rec.updated_at = r.now;
        p.put(StrTable::Registrations, &r.client_id, &rec)?;
        let previous = previous_credentials(&grace, secrets.clone());
        hot.push(HotChange::Client(
            r.client_id.clone(),
            Some(Arc::new(hot_client(&rec, secret.clone(), Some(previous)))),
        ));
    }
    Ok(WriteOutcome::RotationReplayed {
        registration: rec,
        rat: secrets.new_rat,
        secret,
    })
}

fn cut_over(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    client_id: &str,
    generation: u64,
    now: u64,
    hot: &mut Vec<HotChange>,
) -> Result<WriteOutcome, StoreError> {
    let Some(rec) = get::<RegistrationRecord>(&t.registrations, client_id)? else {
        return Ok(WriteOutcome::Done);
    };
    let row = get::<RotationRecord>(&t.rotations, client_id)?;
    if rec.generation != generation || row.as_ref().map(|g| g.generation) != Some(generation) {
        // Rotated again, offboarded, or cut over already: nothing left to end.
        return Ok(WriteOutcome::Done);
    }
    p.del(StrTable::Rotations, client_id);
    p.audits.push(cut_over_audit(client_id, now));
    hot.push(HotChange::Client(
        client_id.to_owned(),
        Some(Arc::new(unsealed_client(key, &rec, None)?)),
    ));
    Ok(WriteOutcome::Done)
}

fn cut_over_audit(client_id: &str, now: u64) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: now,
        actor: client_id.to_owned(),
        event: "agent.rotate.cutover".into(),
        subject: client_id.to_owned(),
        outcome: AuditOutcome::Success,
    }
}

fn put_datasource_config(
    t: &Tables<'_>,
    p: &mut Plan,
    c: NewDataSourceConfig,
) -> Result<WriteOutcome, StoreError> {
    check_id("configuration id", &c.new_id)?;
    let agent = agent_of(t, &c.tenant, &c.agent_id)?;
    let existing = get::<DataSourceConfigRecord>(&t.datasource_configs, &agent.id)?;
    let current = existing.as_ref().map_or(0, |e| e.etag);
    if let Some(expected) = c.if_match
        && expected != current
    {
        return Err(StoreError::PreconditionFailed { expected, current });
    }
    let rec = DataSourceConfigRecord {
        agent_id: agent.id.clone(),
        tenant: agent.tenant,
        id: existing.map_or(c.new_id, |e| e.id),
        etag: current + 1,
        json: c.json,
        updated_at: c.now,
        updated_by: c.by,
    };
    p.put(StrTable::DataSourceConfigs, &agent.id, &rec)?;
    Ok(WriteOutcome::DataSourceConfig(rec))
}

/// The two secrets a [`RotationRecord`] seals as one blob: the new RAT the rotation answered
/// with and the shared secret it replaced. Plaintext: `rat length (u16 BE) | rat | secret`.
#[derive(Clone)]
pub(crate) struct RotationSecrets {
    pub new_rat: Secret,
    pub previous_secret: Option<Secret>,
}

impl RotationSecrets {
    fn seal(&self, key: &MasterKey, client_id: &str) -> Result<Vec<u8>, StoreError> {
        let rat = self.new_rat.expose();
        let len = u16::try_from(rat.len())
            .map_err(|_| StoreError::Invalid("registration access token too long".into()))?;
        let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(2 + rat.len() + 64));
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(rat);
        if let Some(s) = &self.previous_secret {
            plain.extend_from_slice(s.expose());
        }
        key.seal(rotation_ctx(client_id), &plain)
    }

    pub(crate) fn unseal(
        key: &MasterKey,
        client_id: &str,
        sealed: &[u8],
    ) -> Result<Self, StoreError> {
        let plain = key.unseal(rotation_ctx(client_id), sealed)?;
        let bytes = plain.expose();
        let corrupt = || StoreError::Corrupt {
            table: "rotations",
            reason: "sealed rotation secrets are malformed".into(),
        };
        let (len, rest) = bytes.split_first_chunk::<2>().ok_or_else(corrupt)?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            return Err(corrupt());
        }
        let (rat, secret) = rest.split_at(len);
        Ok(RotationSecrets {
            new_rat: Secret::new(rat),
            previous_secret: (!secret.is_empty()).then(|| Secret::new(secret)),
        })
    }
}

fn rotation_ctx(client_id: &str) -> SealContext<'_> {
    SealContext {
        table: "rotations",
        key: client_id,
    }
}

pub(crate) fn previous_credentials(
    row: &RotationRecord,
    secrets: RotationSecrets,
) -> PreviousCredentials {
    PreviousCredentials {
        secret: secrets.previous_secret,
        jwks: row.previous_jwks.clone(),
        until: row.grace_until,
        secret_expires_at: row.previous_secret_expires_at,
        hmac_keys: Default::default(),
    }
}

/// The hot entry of a registration: its secret unsealed, and the previous credentials of
/// `rotation` if that row belongs to this generation.
pub(crate) fn unsealed_client(
    key: &MasterKey,
    rec: &RegistrationRecord,
    rotation: Option<&RotationRecord>,
) -> Result<ClientAuth, StoreError> {
    let secret = match &rec.sealed_secret {
        Some(s) => Some(key.unseal(
            SealContext {
                table: "registrations",
                key: &rec.client_id,
            },
            s,
        )?),
        None => None,
    };
    let previous = match rotation.filter(|g| g.generation == rec.generation) {
        Some(row) => Some(previous_credentials(
            row,
            RotationSecrets::unseal(key, &rec.client_id, &row.sealed)?,
        )),
        None => None,
    };
    Ok(hot_client(rec, secret, previous))
}

struct RevokeArgs<'a> {
    kind: RevocationKind,
    id: &'a str,
    by: &'a str,
    reason: &'a str,
    now: u64,
    forget_after: u64,
}

fn revoke(
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

fn forget(
    t: &Tables<'_>,
    p: &mut Plan,
    key: &MasterKey,
    hot: &mut Vec<HotChange>,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    let (mut revocations, mut boarding) = (0, 0);
    for entry in t.revocations.iter().db("read")? {
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
        let (k, v) = entry.db("read")?;
        let rec: BoardingRecord = codec::decode(v.value())?;
        if rec.used_at.is_some() || rec.expires_at <= now {
            p.del(StrTable::Boarding, k.value());
            boarding += 1;
        }
    }
    for entry in t.rotations.iter().db("read")? {
        let (k, v) = entry.db("read")?;
        let row: RotationRecord = codec::decode(v.value())?;
        if row.grace_until <= now {
            p.del(StrTable::Rotations, k.value());
            if let Some(rec) = get::<RegistrationRecord>(&t.registrations, k.value())? {
                hot.push(HotChange::Client(
                    rec.client_id.clone(),
                    Some(Arc::new(unsealed_client(key, &rec, None)?)),
                ));
            }
        }
    }
    Ok(WriteOutcome::Forgotten {
        revocations,
        boarding,
    })
}

/// A fresh operator client generation: random, so a client re-created under the same id
/// (whose old record, and generation, are gone) does not land on its old value; never 0, the
/// generation version 1 records read as.
fn new_generation() -> Result<u64, StoreError> {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| StoreError::Invalid("system RNG failed".into()))?;
    Ok(u64::from_le_bytes(b).max(1))
}

pub(crate) fn hot_client(
    rec: &RegistrationRecord,
    secret: Option<Secret>,
    previous: Option<PreviousCredentials>,
) -> ClientAuth {
    ClientAuth {
        client_id: rec.client_id.clone(),
        tenant: rec.tenant.clone(),
        auth_method: rec.auth_method,
        secret,
        jwks: rec.jwks.clone(),
        secret_expires_at: rec.secret_expires_at,
        generation: rec.generation,
        hmac_keys: Default::default(),
        previous,
        cut_over: Default::default(),
    }
}

pub(crate) fn hot_key(rec: &SigningKeyRecord, private_key: Secret) -> SigningKey {
    SigningKey {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_text_is_bounded_single_line_and_marks_cuts() {
        let check = |input: &str, want: &str| assert_eq!(audit_text(input), want, "{input:?}");
        check("admin", "admin");
        check("a\nb\u{0}c", "a\u{FFFD}b\u{FFFD}c");
        let exact = "x".repeat(MAX_AUDIT_FIELD_BYTES);
        check(&exact, &exact);
        for input in [
            "x".repeat(300 * 1024),
            "é".repeat(MAX_AUDIT_FIELD_BYTES),
            "\n".repeat(MAX_AUDIT_FIELD_BYTES),
        ] {
            let got = audit_text(&input);
            assert!(got.len() <= MAX_AUDIT_FIELD_BYTES, "{} bytes", got.len());
            assert!(got.ends_with('…'));
            assert!(!got.chars().any(char::is_control));
        }
    }

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

    #[test]
    fn plans_with_oversize_keys_are_refused_before_writing() {
        let long = "k".repeat(MAX_ID_BYTES + 1);
        let ok = "k".repeat(MAX_ID_BYTES);
        let plan = |m: Mutation| Plan {
            muts: vec![m],
            audits: Vec::new(),
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
