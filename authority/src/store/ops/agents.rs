//! Tenants and agents: creation, updates, deletion, boarding (the initial access token),
//! data source configuration and offboarding.

use redb::ReadableTable;

use super::revocations::{self, RevokeArgs};
use super::{
    DbResult, HotChange, Mutation, Plan, StoreError, StrTable, Tables, WriteOutcome, agent_of,
    check_id, get, not_found,
};
use crate::store::records::*;

#[derive(Debug, Clone)]
pub struct NewAgent {
    pub tenant: String,
    pub id: String,
    pub name: String,
    pub security_profile: SecurityProfile,
    pub iat: Option<NewIat>,
    /// Who creates it: an operator client id, or the process for bulk imports.
    pub by: String,
    pub now: u64,
}

/// An initial access token to record: its `jti` and expiry.
#[derive(Debug, Clone)]
pub struct NewIat {
    pub jti: String,
    pub expires_at: u64,
}

/// A data source configuration write.
#[derive(Debug, Clone)]
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

/// The fields of [`super::WriteOp::UpdateAgent`].
pub(super) struct AgentUpdate {
    pub tenant: String,
    pub id: String,
    pub if_match: Option<u64>,
    pub name: Option<String>,
    pub security_profile: Option<SecurityProfile>,
    pub by: String,
    pub now: u64,
}

/// Who removes an agent's credentials and until when its revocation is kept (deletion and
/// offboarding).
pub(super) struct Removal {
    pub tenant: String,
    pub id: String,
    pub by: String,
    pub now: u64,
    pub forget_after: u64,
}

pub(super) fn put_tenant(
    p: &mut Plan,
    rec: TenantRecord,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    // Tenants come only from the configuration, applied by the process at start-up.
    p.audit(super::SYSTEM_ACTOR, "tenant.put", &rec.id, now);
    check_id("tenant id", &rec.id)?;
    p.put(StrTable::Tenants, &rec.id, &rec)?;
    Ok(WriteOutcome::Tenant(rec))
}

pub(super) fn create(
    t: &Tables<'_>,
    p: &mut Plan,
    new: NewAgent,
) -> Result<WriteOutcome, StoreError> {
    p.audit(&new.by, "agent.create", &new.id, new.now);
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
        suspended_at: None,
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
            p.extra_audit(&new.by, "agent.boarding.issue", &new.id, new.now);
            let (agent, rec) = issue_iat(t, p, agent, iat, new.now)?;
            Ok(WriteOutcome::Boarding(agent, rec))
        }
    }
}

pub(super) fn update(
    t: &Tables<'_>,
    p: &mut Plan,
    u: AgentUpdate,
) -> Result<WriteOutcome, StoreError> {
    let AgentUpdate {
        tenant,
        id,
        if_match,
        name,
        security_profile,
        by,
        now,
    } = u;
    p.audit(&by, "agent.update", &id, now);
    let mut agent = agent_of(t, &tenant, &id)?;
    check_etag(&agent, if_match)?;
    if let Some(prof) = security_profile
        && prof != agent.security_profile
        && agent.state == BoardingState::Onboarded
    {
        return Err(StoreError::InvalidState(
            "cannot change the security profile of an onboarded agent; offboard it first".into(),
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

/// Deletes an agent, its registration and boarding state, and revokes its tokens.
pub(super) fn delete(
    t: &Tables<'_>,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
    r: Removal,
    if_match: Option<u64>,
) -> Result<WriteOutcome, StoreError> {
    p.audit(&r.by, "agent.delete", &r.id, r.now);
    let Removal {
        tenant,
        id,
        by,
        now,
        forget_after,
    } = r;
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
    if agent.suspended_at.is_some() {
        hot.push(HotChange::AgentSuspension(id.clone(), None));
    }
    let rev = RevokeArgs {
        kind: RevocationKind::Agent,
        id: &id,
        by: &by,
        reason: "agent deleted",
        now,
        forget_after,
    };
    revocations::revoke(t, p, hot, rev)?;
    Ok(WriteOutcome::Agent(agent))
}

pub(super) fn issue_boarding_token(
    t: &Tables<'_>,
    p: &mut Plan,
    tenant: &str,
    agent_id: &str,
    iat: NewIat,
    by: &str,
    now: u64,
) -> Result<WriteOutcome, StoreError> {
    p.audit(by, "agent.boarding.issue", agent_id, now);
    let agent = agent_of(t, tenant, agent_id)?;
    let (agent, rec) = issue_iat(t, p, agent, iat, now)?;
    Ok(WriteOutcome::Boarding(agent, rec))
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

pub(super) fn put_datasource_config(
    t: &Tables<'_>,
    p: &mut Plan,
    c: NewDataSourceConfig,
) -> Result<WriteOutcome, StoreError> {
    p.audit(&c.by, "agent.datasource.put", &c.agent_id, c.now);
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

/// Revokes an agent's registration, secrets, RAT and outstanding tokens; it can board again.
pub(super) fn offboard(
    t: &Tables<'_>,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
    r: Removal,
) -> Result<WriteOutcome, StoreError> {
    p.audit(&r.by, "agent.offboard", &r.id, r.now);
    let Removal {
        tenant,
        id: agent_id,
        by,
        now,
        forget_after,
    } = r;
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
    revocations::revoke(t, p, hot, rev)?;
    agent.state = BoardingState::NotOnboarded;
    agent.etag += 1;
    agent.updated_at = now;
    p.put(StrTable::Agents, &agent_id, &agent)?;
    Ok(WriteOutcome::Agent(agent))
}

/// Suspends (`suspend`) or resumes an agent. Suspending revokes every token it holds (an
/// agent revocation at `now`, so they stay dead after a resume) and marks it in the hot index,
/// which the token endpoint reads; nothing else changes, so a resume needs no new boarding.
/// Suspending a suspended agent, or resuming an active one, changes nothing. The MindSphere
/// representation has no such state, so the eTag does not move.
pub(super) fn set_suspended(
    t: &Tables<'_>,
    p: &mut Plan,
    hot: &mut Vec<HotChange>,
    r: Removal,
    suspend: bool,
) -> Result<WriteOutcome, StoreError> {
    let event = if suspend {
        "agent.suspend"
    } else {
        "agent.resume"
    };
    p.audit(&r.by, event, &r.id, r.now);
    let mut agent = agent_of(t, &r.tenant, &r.id)?;
    if agent.suspended_at.is_some() == suspend {
        return Ok(WriteOutcome::Agent(agent));
    }
    if suspend {
        let rev = RevokeArgs {
            kind: RevocationKind::Agent,
            id: &r.id,
            by: &r.by,
            reason: "suspended",
            now: r.now,
            forget_after: r.forget_after,
        };
        revocations::revoke(t, p, hot, rev)?;
        agent.suspended_at = Some(r.now);
    } else {
        agent.suspended_at = None;
    }
    agent.updated_at = r.now;
    p.put(StrTable::Agents, &r.id, &agent)?;
    hot.push(HotChange::AgentSuspension(r.id, agent.suspended_at));
    Ok(WriteOutcome::Agent(agent))
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
