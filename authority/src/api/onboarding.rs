//! The agent side of MindSphere onboarding, under `/api/agentmanagement/v3`: the state the
//! agent handlers share ([`AgentState`]) and the routes. Registration (RFC 7591 register with
//! the initial access token, RFC 7592 read and rotate with the registration access token) is
//! in `registration.rs`; the token endpoint (RFC 7523 client assertions, RFC 8705 TLS client
//! authentication) and the key that signs its tokens are in `agent_token.rs`.
//!
//! A rotation keeps the replaced credentials for a grace window; the first use of a new one
//! (reading the registration with the new RAT, an assertion under the new secret or key) is
//! the cut-over: one write, answered after it commits (`AgentState::cut_over`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use latchkey_core::claims::Validation;
use latchkey_core::jwk::MAX_JWKS_KEYS;
use latchkey_core::{AlgorithmSet, KeyPolicy, RsaPolicy};

use super::agent_token::{CachedKeys, assertion_leeway};
use super::mindsphere::API_BASE;
use super::{Route, register, write};
use crate::app::App;
use crate::error::Error;
use crate::http::{Outcome, RequestContext, Response, Router};
use crate::store::{ClientAuth, MAX_JWKS, WriteOp};

pub use super::agent_token::replay_floor;

/// Most keys one RSA_3072 registration may hold: MindSphere agents send one; a few allow a
/// rollover. Bounded so a token request tries at most this many RSA verifications.
pub const MAX_AGENT_KEYS: usize = if MAX_JWKS < 4 { MAX_JWKS } else { 4 };
/// The algorithms an RSA_3072 agent may sign assertions with.
pub const AGENT_RSA_ALGS: AlgorithmSet = AlgorithmSet::RSA_PKCS1;

const _: () = assert!(MAX_AGENT_KEYS <= MAX_JWKS_KEYS);

/// State the agent-management and onboarding handlers share.
#[derive(Debug)]
pub struct AgentState {
    pub app: Arc<App>,
    /// Assertions with `iat` before this are refused (see `agent_token.rs`).
    pub(super) replay_floor: u64,
    /// Parsed RSA keys per client, tied to the hot index entry they were parsed from.
    /// Per-agent maps are hash maps: they grow with the fleet and are read on every token
    /// request (see `store::hot`).
    pub(super) rsa_keys: papaya::HashMap<String, Arc<CachedKeys>>,
    /// When each agent last got an access token (for `GET /agents/{id}/status`).
    pub(super) activity: papaya::HashMap<String, AtomicU64>,
    /// The client-assertion rules, built on first use: they name the token endpoint, whose
    /// URL is only known once the server has bound its address (`App::set_listen_addr`).
    pub(super) assertion_validation: OnceLock<Validation>,
}

impl AgentState {
    /// State for a process that starts serving now.
    pub fn new(app: Arc<App>) -> AgentState {
        let floor = match &app.replay_log {
            Some(_) => app.replay_floor.unwrap_or(0),
            // No log (never the case when serving): the rule without one.
            None => replay_floor(app.now(), assertion_leeway(&app)),
        };
        AgentState::with_floor(app, floor)
    }

    /// State with an explicit replay floor (tests).
    pub fn with_floor(app: Arc<App>, replay_floor: u64) -> AgentState {
        AgentState {
            app,
            replay_floor,
            rsa_keys: papaya::HashMap::new(),
            activity: papaya::HashMap::new(),
            assertion_validation: OnceLock::new(),
        }
    }

    pub fn replay_floor(&self) -> u64 {
        self.replay_floor
    }

    /// `{baseUrl}/api/agentmanagement/v3/register/{client_id}`.
    pub fn registration_uri(&self, client_id: &str) -> String {
        format!("{}{API_BASE}/register/{client_id}", self.app.base_url())
    }

    /// The token endpoint URL, one of the audiences an assertion may name.
    pub fn token_endpoint(&self) -> String {
        format!("{}{API_BASE}/oauth/token", self.app.base_url())
    }

    /// The audience of initial access tokens: the registration endpoint.
    pub fn iat_audience(&self) -> String {
        format!("{}{API_BASE}/register", self.app.base_url())
    }

    /// When `client_id` last got an access token, if this process issued it one.
    pub fn last_token_at(&self, client_id: &str) -> Option<u64> {
        self.activity
            .pin()
            .get(client_id)
            .map(|at| at.load(Ordering::Relaxed))
    }

    /// Drops what this process remembers about an agent (after offboarding or deletion).
    pub fn forget(&self, client_id: &str) {
        self.rsa_keys.pin().remove(client_id);
        self.activity.pin().remove(client_id);
    }

    /// The cut-over op when `client`'s previous credentials are still live and this request
    /// is the first to use a new one; the request answers once it has committed.
    pub(super) fn cut_over(&self, client: &ClientAuth, now: u64) -> Option<WriteOp> {
        (client.previous_at(now).is_some() && client.begin_cut_over()).then(|| WriteOp::CutOver {
            client_id: client.client_id.clone(),
            generation: client.generation,
            now,
        })
    }

    /// Answers `response` after `op` (a cut-over) has committed, or at once without one.
    pub(super) fn answer_after(
        &self,
        op: Option<WriteOp>,
        ctx: &RequestContext<'_>,
        response: Response,
    ) -> Outcome {
        let Some(op) = op else {
            return response.into();
        };
        write::submit(&self.app, ctx, op, move |()| Ok(response))
    }
}

/// Registers the agent-side routes under `/api/agentmanagement/v3`.
pub fn routes(router: &mut Router, state: &Arc<AgentState>) {
    let table: [(&str, &str, Route<AgentState>); 6] = [
        ("POST", "/register", |s, req, ctx| s.register(req, ctx)),
        ("PUT", "/register/{client_id}", |s, req, ctx| {
            s.rotate(req, ctx)
        }),
        ("GET", "/register/{client_id}", |s, req, ctx| {
            s.read_registration(req, ctx)
        }),
        ("POST", "/oauth/token", |s, req, ctx| s.token(req, ctx)),
        ("GET", "/oauth/token_key", |s, req, _| s.token_key(req)),
        ("GET", "/oauth/jwks", |s, _, _| {
            let mut set = s.app.keys.snapshot().public_jwks();
            super::oauth::with_certificates(&s.app, &mut set);
            Ok(Response::json(200, &set).into())
        }),
    ];
    register(router, state, API_BASE, &table);
}

/// The key policy of the RSA_3072 profile: exactly 3072 bits, e = 65537.
pub fn agent_key_policy() -> KeyPolicy {
    KeyPolicy {
        rsa: RsaPolicy::RSA_3072,
    }
}

/// Stored credentials that do not parse are our fault: 500, details in the log only.
pub(super) fn stored_key_error(client_id: &str, e: &dyn std::fmt::Display) -> Error {
    tracing::error!(client_id, error = %e, "stored agent credentials unreadable");
    Error::Io(std::io::Error::other("stored agent credentials unreadable"))
}
