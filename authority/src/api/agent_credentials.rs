//! `GET /api/latchkey/v1/agents/{id}/credentials`: what an operator needs to see when an agent
//! cannot get a token. It shows how the agent authenticates, the thumbprints of its registered
//! keys, when its secret expires, whether a rotation is still in its grace window, and when
//! the agent was last seen. It never returns a secret or a registration access token, so
//! `agents:read` is enough.
//!
//! The MindSphere `Agent` shape has no room for these fields, and the SDKs read that shape, so
//! they get a route of their own rather than extra members on `GET /agents/{id}`. For the
//! same reason suspension lives here: `POST /api/latchkey/v1/agents/{id}/suspend` and
//! `/resume` (`agents:write`), and `suspended` in the credentials view.

use std::sync::Arc;

use latchkey_core::Jwk;
use serde_json::{Value, json};

use super::auth::{self, Permission};
use super::mindsphere::{AgentId, rfc3339_millis};
use super::onboarding::AgentState;
use super::{Route, register, validate, write};
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response, Router};
use crate::store::{AgentRecord, BoardingState, RegistrationRecord, WriteOp};

pub fn routes(router: &mut Router, state: &Arc<AgentState>) {
    let table: [(&str, &str, Route<AgentState>); 3] = [
        ("GET", "/{id}/credentials", |s, req, _| credentials(s, req)),
        ("POST", "/{id}/suspend", |s, req, ctx| {
            suspension(s, req, ctx, true)
        }),
        ("POST", "/{id}/resume", |s, req, ctx| {
            suspension(s, req, ctx, false)
        }),
    ];
    register(router, state, "/api/latchkey/v1/agents", &table);
}

fn credentials(state: &Arc<AgentState>, req: &Request<'_>) -> Result<Outcome, Error> {
    let app = &state.app;
    let p = auth::operator(app, req, Permission::AgentsRead)?;
    let id = AgentId::parse_as(
        validate::ENTITY_ID.named("id"),
        req.param("id").unwrap_or(""),
    )?;
    let snap = app.store.read()?;
    let agent = snap
        .agent(&p.tenant, id.as_str())?
        .ok_or_else(|| ApiError::NotFound(format!("agent {:?} not found", id.as_str())))?;
    // Only an onboarded agent's registration is current; after offboarding none is shown.
    let registration = match agent.state {
        BoardingState::Onboarded => snap.registration(&agent.id)?,
        _ => None,
    };
    let rotation = match &registration {
        Some(r) => snap
            .rotation(&r.client_id)?
            .filter(|rot| rot.generation == r.generation),
        None => None,
    };
    let now = app.now();
    let last_seen = state.last_token_at(&agent.id);
    let online = state.is_online(&agent, now);
    let body = json!({
        "id": agent.id,
        "boardingStatus": agent.state.as_str(),
        "registration": registration.as_ref().map(|r| view(r, rotation.map(|x| x.grace_until))),
        "lastSeen": last_seen.map(rfc3339_millis),
        "online": online,
        "suspended": agent.suspended_at.is_some(),
        "suspendedAt": agent.suspended_at.map(rfc3339_millis),
    });
    Ok(Response::json(200, &body).into())
}

/// Suspends or resumes an agent. Suspended, it is refused tokens (every auth method),
/// registration and rotation, and the tokens it holds are revoked from the answer on; its
/// records, registration, keys and boarding state stay, so a resume needs no new boarding.
/// Tokens issued before the suspension stay revoked after it.
fn suspension(
    state: &Arc<AgentState>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
    suspend: bool,
) -> Result<Outcome, Error> {
    let app = &state.app;
    let p = auth::operator(app, req, Permission::AgentsWrite)?;
    let id = AgentId::parse_as(
        validate::ENTITY_ID.named("id"),
        req.param("id").unwrap_or(""),
    )?;
    let now = app.now();
    let op = WriteOp::SuspendAgent {
        tenant: p.tenant,
        id: id.as_str().to_owned(),
        suspend,
        by: p.client_id,
        now,
        forget_after: state.revocation_lifetime(now),
    };
    Ok(write::submit(app, ctx, op, |agent: AgentRecord| {
        Ok(Response::json(
            200,
            &json!({
                "id": agent.id,
                "suspended": agent.suspended_at.is_some(),
                "suspendedAt": agent.suspended_at.map(rfc3339_millis),
            }),
        ))
    }))
}

/// A registration without its secrets: method, generation, expiry and key thumbprints.
fn view(r: &RegistrationRecord, rotation_grace_until: Option<u64>) -> Value {
    let keys: Vec<Value> = r
        .jwks
        .iter()
        .map(|text| match Jwk::from_json(text.as_bytes()) {
            Ok(jwk) => json!({
                "kid": jwk.kid,
                "kty": jwk.kty,
                "thumbprint": jwk.thumbprint().ok(),
            }),
            // Registered keys were validated on the way in; one that no longer parses is
            // shown as such rather than failing the whole answer.
            Err(_) => json!({ "error": "unreadable key" }),
        })
        .collect();
    json!({
        "authMethod": r.auth_method.as_str(),
        "generation": r.generation,
        "registeredAt": rfc3339_millis(r.created_at),
        "updatedAt": rfc3339_millis(r.updated_at),
        // `client_secret_expires_at` of the registration: it bounds key-based credentials too.
        "secretExpiresAt": (r.secret_expires_at != 0).then(|| rfc3339_millis(r.secret_expires_at)),
        "keys": keys,
        "previousCredentialsValidUntil": rotation_grace_until.map(rfc3339_millis),
    })
}
