//! Operator-side agent management under `/api/agentmanagement/v3/agents`, in the shapes the
//! MindSphere `AgentManagementClient` sends and reads (see `mindsphere`).
//!
//! Every call needs an operator bearer token: `agents:read` to look, `agents:write` to change
//! and to obtain a boarding configuration (its initial access token boards the agent).
//! Every lookup is scoped by the caller's tenant; another tenant's agent answers 404. Writes
//! (create, update, delete, boarding, offboarding) defer their answer until the store has
//! committed, and `PUT`/`DELETE` carry the agent's `eTag` in `If-Match` (412 when stale).
//!
//! Creating an agent also issues its first initial access token in the same transaction
//! (`NOT_ONBOARDED` → `ONBOARDING`, as MindSphere does automatically). The boarding
//! configuration mints the IAT JWT from the stored boarding record each time it is asked for,
//! and issues a fresh record when the last one expired or the agent was offboarded. Every
//! answer that carries an IAT is audited (`agent.boarding.disclose`, the operator as actor)
//! and sent only once that entry has committed: whoever read a credential is on record.

use std::sync::Arc;

use base64::Engine as _;

use super::auth::{self, Permission, Principal};
use super::mindsphere::{
    API_BASE, Agent, AgentCreate, AgentField, AgentId, AgentQuery, AgentUpdate,
    BoardingConfiguration, BoardingContent, Compare, Condition, IfMatch, OnboardingStatus,
    OnlineStatus, rfc3339_millis,
};
use super::onboarding::AgentState;
use super::{Route, register, validate, write};
use crate::error::{ApiError, Error};
use crate::http::{Completion, Outcome, Request, RequestContext, Response, Router};
use crate::store::outcome::FromOutcome;
use crate::store::{
    AgentRecord, AuditOutcome, BoardingRecord, BoardingState, ListRequest, NewAgent, NewIat, Order,
    SortKey, SortRange, SortValue, Start, WriteOp,
};

/// Most agents one list request looks at while checking conditions the index does not
/// order (`contains`, `endsWith`, a condition on another field than the sort, the online
/// status). A page cut short by it carries a `Latchkey-Next-Cursor` to continue from and
/// `last: false`, and its `totalElements` is a lower bound.
pub const MAX_LIST_SCAN: usize = 10_000;
/// The response header carrying the cursor of the next page.
pub const NEXT_CURSOR: &str = "Latchkey-Next-Cursor";
/// Reissue the IAT when less than this is left of it, so an agent never gets one that expires
/// before it can use it.
const IAT_MIN_REMAINING: u64 = 60;

/// Registers the operator-side routes.
pub fn routes(router: &mut Router, state: &Arc<AgentState>) {
    let table: [(&str, &str, Route<AgentState>); 9] = [
        ("POST", "", |s, req, ctx| s.create(req, ctx)),
        ("GET", "", |s, req, _| s.list(req)),
        ("GET", "/{id}", |s, req, _| s.show(req)),
        ("PUT", "/{id}", |s, req, ctx| s.update(req, ctx)),
        ("DELETE", "/{id}", |s, req, ctx| s.delete(req, ctx)),
        ("GET", "/{id}/status", |s, req, _| s.online_status(req)),
        ("GET", "/{id}/boarding/configuration", |s, req, ctx| {
            s.boarding_configuration(req, ctx)
        }),
        ("GET", "/{id}/boarding/status", |s, req, _| {
            s.boarding_status(req)
        }),
        ("POST", "/{id}/boarding/offboard", |s, req, ctx| {
            s.offboard(req, ctx)
        }),
    ];
    register(router, state, &format!("{API_BASE}/agents"), &table);
}

impl AgentState {
    fn caller(&self, req: &Request<'_>, need: Permission) -> Result<Principal, Error> {
        auth::operator(&self.app, req, need)
    }

    /// The caller's agent named by the path, or 404.
    fn agent(&self, p: &Principal, req: &Request<'_>) -> Result<AgentRecord, Error> {
        let id = path_id(req)?;
        self.app
            .store
            .read()?
            .agent(&p.tenant, id.as_str())?
            .ok_or_else(|| ApiError::NotFound(format!("agent {:?} not found", id.as_str())).into())
    }

    fn new_iat(&self, now: u64) -> NewIat {
        new_iat(&self.app, now)
    }

    /// How long the store keeps an agent revocation: every access token issued before it has
    /// expired by then.
    pub(super) fn revocation_lifetime(&self, now: u64) -> u64 {
        now.saturating_add(self.app.settings.access_token_lifetime)
            .saturating_add(self.app.settings.leeway)
    }

    fn create(
        self: &Arc<Self>,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let p = self.caller(req, Permission::AgentsWrite)?;
        let new = AgentCreate::parse(req.body())?;
        let now = self.app.now();
        let op = WriteOp::CreateAgent(NewAgent {
            tenant: p.tenant,
            id: new.id.as_str().to_owned(),
            name: new.name.as_str().to_owned(),
            security_profile: new.security_profile,
            iat: Some(self.new_iat(now)),
            by: p.client_id,
            now,
        });
        Ok(write::submit(&self.app, ctx, op, |agent: AgentRecord| {
            Ok(agent_response(201, &agent))
        }))
    }

    /// One page from the list index: O(page) when the filter is on the boarding status and
    /// the sort field (`eq`, `startsWith`); other conditions and the online status are checked
    /// on a walk bounded by [`MAX_LIST_SCAN`]. Nothing here reads the store.
    fn list(&self, req: &Request<'_>) -> Result<Outcome, Error> {
        let p = self.caller(req, Permission::AgentsRead)?;
        let query = AgentQuery::parse(&super::Form::query(req)?)?;
        let mut order = order_of(query.sort);
        let mut conditions: Vec<&Condition> = query.filter.iter().collect();
        // Ids and names are unique within a tenant: an equality on either is at most one
        // agent, found through its own order whatever the sort.
        let unique = conditions.iter().position(|c| {
            c.compare == Compare::Eq
                && matches!(
                    c.field,
                    AgentField::Id | AgentField::EntityId | AgentField::Name
                )
        });
        let pick = unique.or_else(|| {
            conditions.iter().position(|c| {
                matches!(c.compare, Compare::Eq | Compare::StartsWith)
                    && order_of(c.field) == order
                    && matches!(order, Order::Id | Order::Name)
            })
        });
        let range = pick.map(|i| {
            let c = conditions.remove(i);
            order = order_of(c.field);
            match c.compare {
                Compare::Eq => SortRange::Eq(c.value.clone()),
                _ => SortRange::Prefix(c.value.clone()),
            }
        });
        let mut state = query.boarding;
        if query.online == Some(true) {
            // Only onboarded agents are ever online.
            match state {
                None | Some(BoardingState::Onboarded) => state = Some(BoardingState::Onboarded),
                Some(_) => {
                    return Ok(Response::json(200, &query.answer(Vec::new(), 0, true)).into());
                }
            }
        }
        let start = match &query.after {
            Some(c) => Start::After(decode_cursor(c, order)?),
            None => Start::Offset(
                usize::try_from(u64::from(query.page) * u64::from(query.size))
                    .unwrap_or(usize::MAX),
            ),
        };
        let list = ListRequest {
            tenant: &p.tenant,
            state,
            order,
            descending: query.descending,
            range,
            start,
            limit: query.size as usize,
            max_scan: MAX_LIST_SCAN,
        };
        let now = self.app.now();
        let online = |a: &AgentRecord| self.is_online(a, now);
        let keep = |a: &AgentRecord| {
            conditions.iter().all(|c| c.matches(a)) && query.online.is_none_or(|o| online(a) == o)
        };
        let residual = !conditions.is_empty() || query.online.is_some();
        let keep: Option<&dyn Fn(&AgentRecord) -> bool> = if residual { Some(&keep) } else { None };
        let page = self.app.store.hot().agents().list(&list, keep);
        let content: Vec<Agent> = page.agents.iter().map(|a| Agent::from(&**a)).collect();
        let mut total = page.total;
        if matches!(list.start, Start::Offset(_)) && !page.exact {
            // A lower bound: what was skipped and what this page holds.
            total = total.max(list_offset(&list) + content.len() as u64);
        }
        let body = query.answer(content, total, page.next.is_none());
        let mut response = Response::json(200, &body);
        if let Some(next) = &page.next {
            response = response.header(NEXT_CURSOR, encode_cursor(order, next));
        }
        Ok(response.into())
    }

    /// Online: onboarded, and holding an access token this process issued that is still
    /// valid (seen within one access-token lifetime), as `GET /agents/{id}/status` says.
    pub(super) fn is_online(&self, a: &AgentRecord, now: u64) -> bool {
        a.state == BoardingState::Onboarded
            && self
                .last_token_at(&a.id)
                .is_some_and(|at| now < at.saturating_add(self.app.settings.access_token_lifetime))
    }

    fn show(&self, req: &Request<'_>) -> Result<Outcome, Error> {
        let p = self.caller(req, Permission::AgentsRead)?;
        Ok(agent_response(200, &self.agent(&p, req)?).into())
    }

    fn update(
        self: &Arc<Self>,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let p = self.caller(req, Permission::AgentsWrite)?;
        let id = path_id(req)?;
        let if_match = if_match(req)?;
        let change = AgentUpdate::parse(req.body())?;
        let op = WriteOp::UpdateAgent {
            tenant: p.tenant,
            id: id.as_str().to_owned(),
            if_match: if_match.expected(),
            name: Some(change.name.as_str().to_owned()),
            security_profile: Some(change.security_profile),
            by: p.client_id,
            now: self.app.now(),
        };
        Ok(write::submit(&self.app, ctx, op, |agent: AgentRecord| {
            Ok(agent_response(200, &agent))
        }))
    }

    fn delete(
        self: &Arc<Self>,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let p = self.caller(req, Permission::AgentsWrite)?;
        let id = path_id(req)?;
        let if_match = if_match(req)?;
        let now = self.app.now();
        let op = WriteOp::DeleteAgent {
            tenant: p.tenant,
            id: id.as_str().to_owned(),
            if_match: if_match.expected(),
            by: p.client_id,
            now,
            forget_after: self.revocation_lifetime(now),
        };
        let state = Arc::clone(self);
        Ok(write::submit(
            &self.app,
            ctx,
            op,
            move |agent: AgentRecord| {
                state.forget(&agent.id);
                Ok(Response::new(204))
            },
        ))
    }

    /// `ONLINE` while the last access token this process issued to the agent is valid.
    fn online_status(&self, req: &Request<'_>) -> Result<Outcome, Error> {
        let p = self.caller(req, Permission::AgentsRead)?;
        let agent = self.agent(&p, req)?;
        let now = self.app.now();
        let lifetime = self.app.settings.access_token_lifetime;
        let status = match self.last_token_at(&agent.id) {
            Some(at) if self.is_online(&agent, now) => OnlineStatus {
                status: "ONLINE",
                since: rfc3339_millis(at),
            },
            Some(at) => OnlineStatus {
                status: "OFFLINE",
                since: rfc3339_millis(at.saturating_add(lifetime).max(agent.updated_at).min(now)),
            },
            None => OnlineStatus {
                status: "OFFLINE",
                since: rfc3339_millis(agent.updated_at),
            },
        };
        Ok(Response::json(200, &status).into())
    }

    fn boarding_status(&self, req: &Request<'_>) -> Result<Outcome, Error> {
        let p = self.caller(req, Permission::AgentsRead)?;
        let agent = self.agent(&p, req)?;
        Ok(Response::json(
            200,
            &OnboardingStatus {
                status: agent.state.as_str(),
            },
        )
        .into())
    }

    /// The boarding configuration. It needs `agents:write`, not `agents:read`: its IAT is the
    /// credential that registers the agent (whoever holds it can take the agent over), and
    /// it may have to issue a new one (first boarding after offboarding, or the last one
    /// expired), which is a write. A read-only caller gets 403 `insufficient_scope` rather
    /// than a configuration without `iat`, which MindSphere clients would retry forever; the
    /// boarding state stays readable at `GET …/boarding/status` with `agents:read`.
    fn boarding_configuration(
        self: &Arc<Self>,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let p = self.caller(req, Permission::AgentsWrite)?;
        let agent = self.agent(&p, req)?;
        let now = self.app.now();
        if agent.state == BoardingState::Onboarded {
            return Ok(Response::json(200, &self.configuration(&agent, None)?).into());
        }
        let current = match &agent.current_iat {
            Some(jti) => self.app.store.read()?.boarding(jti)?,
            None => None,
        };
        let done = ctx.defer();
        if let Some(rec) =
            current.filter(|r| r.used_at.is_none() && r.expires_at > now + IAT_MIN_REMAINING)
        {
            self.disclose(done, p.client_id, agent, rec);
            return Ok(Outcome::Deferred);
        }
        let op = WriteOp::IssueBoardingToken {
            tenant: p.tenant,
            agent_id: agent.id.clone(),
            iat: self.new_iat(now),
            by: p.client_id.clone(),
            now,
        };
        let state = Arc::clone(self);
        self.app.submit(op, move |result| {
            match result.and_then(<(AgentRecord, BoardingRecord)>::from_outcome) {
                Ok((agent, rec)) => state.disclose(done, p.client_id, agent, rec),
                Err(e) => done.complete(Err(e.into())),
            }
        });
        Ok(Outcome::Deferred)
    }

    /// Answers with the configuration carrying the IAT of `rec` once its disclosure to `by`
    /// is on record; a failed audit write answers as the error it is, without the IAT.
    fn disclose(
        self: &Arc<Self>,
        done: Completion,
        by: String,
        agent: AgentRecord,
        rec: BoardingRecord,
    ) {
        let op = WriteOp::Audit {
            actor: by,
            event: "agent.boarding.disclose".into(),
            subject: agent.id.clone(),
            outcome: AuditOutcome::Success,
            now: self.app.now(),
        };
        let state = Arc::clone(self);
        self.app.submit(op, move |result| {
            done.complete(result.map_err(Error::from).and_then(|_| {
                Ok(Response::json(
                    200,
                    &state.configuration(&agent, Some(&rec))?,
                ))
            }));
        });
    }

    /// The configuration for `agent`, with the IAT of `rec` (none once onboarded).
    fn configuration(
        &self,
        agent: &AgentRecord,
        rec: Option<&BoardingRecord>,
    ) -> Result<BoardingConfiguration, Error> {
        let (iat, expiration) = match rec {
            Some(rec) => (
                Some(self.mint_iat(agent, rec)?),
                Some(rfc3339_millis(rec.expires_at)),
            ),
            None => (None, None),
        };
        Ok(BoardingConfiguration {
            content: BoardingContent {
                base_url: self.app.base_url().to_owned(),
                iat,
                client_credential_profile: [agent.security_profile.as_str()],
                client_id: agent.id.clone(),
                tenant: agent.tenant.clone(),
            },
            expiration,
        })
    }

    /// Revokes the registration, secret, keys, RAT and every access token issued so far; the
    /// agent returns to `NOT_ONBOARDED` and its next boarding configuration has a fresh IAT.
    fn offboard(
        self: &Arc<Self>,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let p = self.caller(req, Permission::AgentsWrite)?;
        let id = path_id(req)?;
        let now = self.app.now();
        let op = WriteOp::Offboard {
            tenant: p.tenant,
            agent_id: id.as_str().to_owned(),
            by: p.client_id,
            now,
            forget_after: self.revocation_lifetime(now),
        };
        let state = Arc::clone(self);
        Ok(write::submit(
            &self.app,
            ctx,
            op,
            move |agent: AgentRecord| {
                state.forget(&agent.id);
                Ok(Response::json(
                    200,
                    &OnboardingStatus {
                        status: agent.state.as_str(),
                    },
                ))
            },
        ))
    }
}

/// The agent id a path names (`{id}`).
/// A fresh initial access token record: a new `jti`, valid for the boarding token lifetime.
pub(super) fn new_iat(app: &crate::app::App, now: u64) -> NewIat {
    NewIat {
        jti: app.jti.next_uuid(),
        expires_at: now.saturating_add(app.settings.boarding_token_lifetime),
    }
}

fn path_id(req: &Request<'_>) -> Result<AgentId, ApiError> {
    AgentId::parse_as(
        validate::ENTITY_ID.named("id"),
        req.param("id").unwrap_or(""),
    )
}

/// The `If-Match` header, required on `PUT` and `DELETE` (the SDK always sends it): without
/// it, two operators editing the same agent could silently overwrite each other.
fn if_match(req: &Request<'_>) -> Result<IfMatch, Error> {
    let v = req.header("if-match").ok_or_else(|| {
        ApiError::InvalidRequest("If-Match with the agent's eTag is required".into())
    })?;
    Ok(IfMatch::parse(v)?)
}

fn agent_response(status: u16, agent: &AgentRecord) -> Response {
    Response::json(status, &Agent::from(agent)).header("ETag", format!("\"{}\"", agent.etag))
}

/// The index order of a sort field (`id` and `entityId` are the same value).
fn order_of(f: AgentField) -> Order {
    match f {
        AgentField::Id | AgentField::EntityId => Order::Id,
        AgentField::Name => Order::Name,
        AgentField::SecurityProfile => Order::SecurityProfile,
        AgentField::ETag => Order::ETag,
    }
}

fn order_tag(o: Order) -> &'static str {
    match o {
        Order::Id => "id",
        Order::Name => "name",
        Order::SecurityProfile => "securityProfile",
        Order::ETag => "eTag",
    }
}

fn list_offset(l: &ListRequest<'_>) -> u64 {
    match l.start {
        Start::Offset(n) => n as u64,
        Start::After(_) => 0,
    }
}

/// A cursor: base64url of the JSON `[order, sort value, id]` of the last agent of a page. It
/// names a position, not a row, so it stays valid when that agent changes or goes away.
fn encode_cursor(order: Order, k: &SortKey) -> String {
    let v = match &k.0 {
        SortValue::None => serde_json::Value::Null,
        SortValue::Number(n) => (*n).into(),
        SortValue::Text(t) => (**t).into(),
    };
    let json = serde_json::json!([order_tag(order), v, &*k.1]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(c: &str, order: Order) -> Result<SortKey, ApiError> {
    let bad = || ApiError::InvalidRequest("after is not a cursor of this list's sort".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| bad())?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let serde_json::Value::Array(a) = v else {
        return Err(bad());
    };
    let [tag, value, id] = <[serde_json::Value; 3]>::try_from(a).map_err(|_| bad())?;
    if tag.as_str() != Some(order_tag(order)) {
        return Err(bad());
    }
    let id = id.as_str().ok_or_else(bad)?;
    let value = match (order, value) {
        (Order::Id, serde_json::Value::Null) => SortValue::None,
        (Order::ETag | Order::SecurityProfile, serde_json::Value::Number(n)) => {
            SortValue::Number(n.as_u64().ok_or_else(bad)?)
        }
        (Order::Name, serde_json::Value::String(s)) => SortValue::Text(s.into()),
        _ => return Err(bad()),
    };
    Ok((value, id.into()))
}
