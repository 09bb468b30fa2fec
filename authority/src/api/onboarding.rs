//! The agent side of MindSphere onboarding: register with the initial access token (RFC 7591),
//! read and rotate the registration with the registration access token (RFC 7592), exchange a
//! JWT client assertion for an access token (RFC 7523), and fetch the key that signs it.
//!
//! # Design decisions
//!
//! **Credentials.** A shared secret is 256 random bits in base64url (43 characters). Agents
//! use the *string* as the HMAC key (that is what `jsonwebtoken.sign(claims, secret)` and MCL
//! do), so the store keeps the string's bytes. A registration access token is opaque: 256
//! random bits in base64url; only its salted hash is stored, and the store checks it inside the
//! write transaction, so two rotations presenting the same RAT cannot both win. The initial
//! access token is a JWT of our own `typ` whose `jti` the store consumes exactly once.
//!
//! **Lost rotation answers.** If a rotation's answer never reaches the agent, the agent still
//! holds the old RAT and secret. For `[agents] rotation-grace` (6 h by default) the store keeps
//! the replaced credentials: a repeated `PUT` with the old RAT gets the same answer again (the
//! Node SDK retries and then replays its saved registrations), and the old secret or key still
//! gets tokens. The first use of any new credential (secret, a key the rotation introduced, or
//! the new RAT) is the cut-over: one write, answered after it commits, after which the old RAT
//! and secret are dead and the token path is as cheap as before. A key the rotation kept (the
//! Node SDK re-sends its key) proves nothing about the answer and does not cut over.
//!
//! **Cheap refusals first.** Before a register or rotate request is queued for the writer, it
//! is checked against a snapshot (IAT used or superseded, RAT not current): a flood of stale
//! credentials costs reads, not commits. The store repeats every check inside the transaction.
//!
//! **The key decides the algorithm.** A SHARED_SECRET agent's assertion must be HS256/384/512
//! under its secret; an RSA_3072 agent's RS256/384/512 under one of its registered keys (MCL
//! signs RS256, the Node SDK RS384). Parsed RSA keys are cached per registration (the cache
//! entry is tied to the hot index's `Arc`, so a rotation or re-registration replaces it).
//!
//! **Replay across restarts without an fsync per token.** Accepted assertion `jti`s live in
//! the in-memory [`latchkey_core::replay::ReplayCache`], and each is also appended (a
//! `write(2)`, no fsync) to the replay log ([`crate::replay_log`]) before the token is
//! answered. A restarted process, after SIGTERM or `kill -9`, puts the logged entries back
//! into its cache, so an assertion accepted before the restart is refused as replayed and a
//! fresh one is accepted at once. Only when the log may have lost entries (a machine crash
//! since its last background fsync, no log on a store with agents, damage) does a *replay
//! floor* apply: assertions must carry `iat` at or after it. Where nothing bounds what was
//! lost, the floor is [`replay_floor`]`(start, leeway)` = `start + leeway + 1`: the previous
//! process accepted assertions with `iat` up to `its clock + leeway` (clients' clocks run
//! fast), so one accepted just before stopping can carry an `iat` up to `leeway` seconds after
//! our start, and `+ 1` because both clocks are read in whole seconds. After a machine crash
//! the floor starts from the log's last fsync plus the lag it tolerates instead of `start`.
//! While the floor is ahead of the clock, fresh assertions are refused with 503
//! `temporarily_unavailable` and `Retry-After`. This assumes the system clock does not move
//! backwards across a restart by more than the downtime.
//!
//! **Offboarding.** The store deletes the registration (secret, keys, RAT hash) and records an
//! agent revocation; `App::verify` refuses every access token of the agent issued at or before
//! it. A token request in that same second would mint a token that is dead on arrival, so it is
//! answered 503 with `Retry-After: 1` instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use latchkey_core::claims::{Audience, Claims, TokenType, Validation};
use latchkey_core::jwk::MAX_JWKS_KEYS;
use latchkey_core::{
    Algorithm, AlgorithmSet, Jwk, JwkSet, KeyPolicy, RejectedError, RsaPolicy, UnverifiedToken,
    VerifiedToken, VerifyingKey,
};
use zeroize::Zeroizing;

use super::mindsphere::{
    API_BASE, AgentId, MINDSPHERE_SCHEMA, RegisterRequest, RegistrationResponse,
    SOUTHGATE_AUDIENCE, TokenKey, TokenRequest, TokenResponse,
};
use super::{Form, Route, register, validate};
use crate::app::{App, generate_secret};
use crate::error::{ApiError, Error, WireError};
use crate::http::{Outcome, Request, RequestContext, Response, Router};
use crate::replay_log::{LogRefusal, ReplayLogConfig};
use crate::store::{
    AgentRecord, AuthMethod, BoardingRecord, ClientAuth, MAX_JWKS, Registration,
    RegistrationRecord, Rotation, Secret, SecurityProfile, WriteOp, WriteOutcome,
};

/// Scopes of every agent access token.
pub const AGENT_SCOPES: [&str; 1] = ["mdsp:core:agent"];
/// Most keys one RSA_3072 registration may hold: MindSphere agents send one; a few allow a
/// rollover. Bounded so a token request tries at most this many RSA verifications.
pub const MAX_AGENT_KEYS: usize = if MAX_JWKS < 4 { MAX_JWKS } else { 4 };
/// The algorithms an RSA_3072 agent may sign assertions with.
pub const AGENT_RSA_ALGS: AlgorithmSet = AlgorithmSet::RSA_PKCS1;
/// The `scope` of initial access tokens (as MindSphere writes it).
const IAT_SCOPE: &str = "IAT";

const _: () = assert!(MAX_AGENT_KEYS <= MAX_JWKS_KEYS);

/// State the agent-management and onboarding handlers share.
#[derive(Debug)]
pub struct AgentState {
    pub app: Arc<App>,
    /// Assertions with `iat` before this are refused (see the module docs).
    replay_floor: u64,
    /// Parsed RSA keys per client, tied to the hot index entry they were parsed from.
    /// Per-agent maps are hash maps: they grow with the fleet and are read on every token
    /// request (see `store::hot`).
    rsa_keys: papaya::HashMap<String, Arc<CachedKeys>>,
    /// When each agent last got an access token (for `GET /agents/{id}/status`).
    activity: papaya::HashMap<String, AtomicU64>,
    /// The client-assertion rules, built on first use: they name the token endpoint, whose
    /// URL is only known once the server has bound its address (`App::set_listen_addr`).
    assertion_validation: OnceLock<Validation>,
}

#[derive(Debug)]
struct CachedKeys {
    client: Weak<ClientAuth>,
    keys: Vec<VerifyingKey>,
    /// Per key in `keys`: whether the last rotation introduced it. Using a key the rotation
    /// kept (the Node SDK sends the same key again) proves nothing about the rotation answer.
    fresh: Vec<bool>,
    /// The rotation's replaced keys that are not among `keys`.
    previous: Vec<VerifyingKey>,
}

/// Which of a client's credentials authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Used {
    /// One that the last rotation did not change (or there is no live rotation).
    Unchanged,
    /// One that the last rotation introduced: its first use is the cut-over.
    New,
    /// One that the last rotation replaced, within its grace window.
    Previous,
}

/// The replay floor for a process started at `start` whose validation tolerates `leeway`
/// seconds of clock skew, where nothing tells what the previous process accepted (see the
/// module docs for why the skew is added). `+ 1`: clocks are read in whole seconds, so the
/// previous process may have accepted an assertion with `iat = start + leeway` in the very
/// second this one started.
pub fn replay_floor(start: u64, leeway: u64) -> u64 {
    start.saturating_add(leeway).saturating_add(1)
}

/// Why a token request was refused: an error, or "come back in a moment".
#[derive(Debug)]
pub enum TokenRefusal {
    Error(Error),
    /// 503 `temporarily_unavailable` with `Retry-After`.
    Later {
        seconds: u64,
        reason: String,
    },
}

impl<E: Into<Error>> From<E> for TokenRefusal {
    fn from(e: E) -> Self {
        TokenRefusal::Error(e.into())
    }
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

    // -----------------------------------------------------------------------------------------
    // Initial access tokens

    /// The initial access token for a boarding record: a JWT of type `latchkey-iat+jwt` whose
    /// `jti` the store consumes on registration. Minting again from the same record gives a
    /// token with the same `jti` and expiry, so it stays single-use.
    pub fn mint_iat(&self, agent: &AgentRecord, rec: &BoardingRecord) -> Result<String, Error> {
        let mut claims = Claims {
            iss: Some(self.app.issuer().to_owned()),
            sub: Some(agent.id.clone()),
            aud: Some(Audience::Many(vec![self.iat_audience()])),
            exp: Some(rec.expires_at),
            nbf: None,
            iat: Some(rec.issued_at),
            jti: Some(rec.jti.clone()),
            extra: Default::default(),
        };
        let profile = agent.security_profile.as_str();
        claims
            .extra
            .insert("ten".into(), agent.tenant.clone().into());
        claims.extra.insert("scope".into(), vec![IAT_SCOPE].into());
        claims
            .extra
            .insert("client_credentials_profile".into(), vec![profile].into());
        claims
            .extra
            .insert("schemas".into(), vec![MINDSPHERE_SCHEMA].into());
        let alg = self.app.tenant_alg(&agent.tenant);
        self.app.mint(alg, TokenType::InitialAccessToken, &claims)
    }

    /// Checks an initial access token's signature, type, issuer, audience and time; the store
    /// decides whether it is still unused.
    fn verify_iat(&self, token: &str, now: u64) -> Result<VerifiedToken, Error> {
        let v = Validation {
            audiences: vec![self.iat_audience()],
            ..self.app.validation(TokenType::InitialAccessToken)
        };
        // Not `App::verify`: an agent revocation (offboarding) must not refuse the IAT issued
        // to board again within the same second; the store's boarding table is what says an
        // IAT is still current.
        verify_minted(&self.app, token, &v, now).map_err(|e| {
            ApiError::InvalidToken(format!("initial access token refused: {e}")).into()
        })
    }

    // -----------------------------------------------------------------------------------------
    // Register

    fn register(
        self: &Arc<Self>,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let token = super::bearer(req).ok_or_else(|| {
            ApiError::InvalidToken("an initial access token (Bearer) is required".into())
        })?;
        let now = self.app.now();
        let clock = std::time::Instant::now();
        let source = super::throttle::source_key(ctx.peer().ip());
        if let Some(wait) = self.app.source_throttle.check(&source, clock) {
            let ip = ctx.peer().ip().to_string();
            let throttle = &self.app.source_throttle;
            return Err(super::throttle::refuse(
                &self.app, throttle, "source", &ip, wait,
            ));
        }
        // A spent or stale IAT sent again counts once: only new tokens look like guessing.
        let iat = self.verify_iat(token, now).inspect_err(|_| {
            self.app.source_throttle.failure_of(&source, token, clock);
        })?;
        let claims = iat.claims();
        let (Some(client_id), Some(jti), Some(tenant)) = (
            claims.sub.clone(),
            claims.jti.clone(),
            claims.extra_str("ten").map(str::to_owned),
        ) else {
            return Err(ApiError::InvalidToken(
                "initial access token lacks sub, jti or ten".into(),
            )
            .into());
        };
        let snap = self.app.store.read()?;
        let agent = snap.agent(&tenant, &client_id)?.ok_or_else(|| {
            ApiError::InvalidGrant("the agent of this initial access token no longer exists".into())
        })?;
        match snap.boarding(&jti)? {
            Some(b)
                if b.used_at.is_none() && agent.current_iat.as_deref() == Some(jti.as_str()) => {}
            Some(b) if b.used_at.is_some() => {
                return Err(
                    ApiError::InvalidGrant("initial access token already used".into()).into(),
                );
            }
            _ => {
                return Err(ApiError::InvalidGrant(
                    "initial access token superseded; fetch the boarding configuration again"
                        .into(),
                )
                .into());
            }
        }
        drop(snap);
        let body = RegisterRequest::parse(req.body())?;
        if let Some(id) = &body.client_id
            && *id != client_id
        {
            return Err(ApiError::InvalidRequest(
                "client_id does not match the initial access token".into(),
            )
            .into());
        }
        // RFC 8705: a TLS method replaces the profile's JWT credentials.
        let credentials = match super::certs::MtlsRegistration::parse(req.body())? {
            Some(m) => Credentials {
                method: m.method,
                secret: None,
                jwks: Some(m.entries),
            },
            None => Credentials::new(agent.security_profile, body.jwks.as_ref(), true)?,
        };
        let rat = generate_secret()?;
        let expires_at = now.saturating_add(self.app.settings.client_secret_lifetime);
        let op = WriteOp::Register(Registration {
            iat_jti: jti,
            tenant,
            client_id: client_id.clone(),
            auth_method: credentials.method,
            secret: credentials
                .secret
                .as_ref()
                .map(|s| Secret::from(s.as_str())),
            jwks: credentials.jwks.clone().unwrap_or_default(),
            secret_expires_at: expires_at,
            rat: Secret::from(rat.as_str()),
            now,
        });
        let done = ctx.defer();
        let state = Arc::clone(self);
        self.app.submit(op, move |result| {
            done.complete(
                result
                    .map_err(Error::from)
                    .and_then(|outcome| match outcome {
                        WriteOutcome::Registration(rec) => {
                            state.forget(&rec.client_id);
                            Ok(registration_response(
                                201,
                                state.answer(&rec, credentials.secret, &rat),
                            ))
                        }
                        other => Err(unexpected(&other)),
                    }),
            );
        });
        Ok(Outcome::Deferred)
    }

    fn answer(
        &self,
        rec: &RegistrationRecord,
        secret: Option<Zeroizing<String>>,
        rat: &str,
    ) -> RegistrationResponse {
        RegistrationResponse {
            client_id: rec.client_id.clone(),
            token_endpoint_auth_method: rec.auth_method.as_str(),
            grant_types: ["client_credentials"],
            client_secret: secret.map(|s| s.as_str().to_owned()),
            client_secret_expires_at: rec.secret_expires_at,
            registration_access_token: rat.to_owned(),
            registration_client_uri: self.registration_uri(&rec.client_id),
            jwks: None,
        }
    }

    // -----------------------------------------------------------------------------------------
    // RFC 7592: read and rotate

    /// The registration `client_id` names, if `rat` is its current registration access token
    /// or, with `previous_ok`, the one its last rotation replaced while the grace window is
    /// open (the store decides again inside the transaction). Unknown client and wrong RAT
    /// answer alike (401), so neither can be probed.
    fn authorize_rat(
        &self,
        client_id: &str,
        rat: &str,
        previous_ok: bool,
    ) -> Result<RegistrationRecord, Error> {
        let refused = || {
            ApiError::InvalidToken(
                "registration access token is not current for this client".into(),
            )
        };
        let snap = self.app.store.read()?;
        let rec = snap.registration(client_id)?.ok_or_else(refused)?;
        if rec.rat_hash.verify(rat.as_bytes()) {
            return Ok(rec);
        }
        let now = self.app.now();
        match snap.rotation(client_id)? {
            Some(g)
                if previous_ok
                    && g.generation == rec.generation
                    && now < g.grace_until
                    && g.previous_rat_hash.verify(rat.as_bytes()) =>
            {
                Ok(rec)
            }
            _ => Err(refused().into()),
        }
    }

    /// The cut-over op when `client`'s previous credentials are still live and this request
    /// is the first to use a new one; the request answers once it has committed.
    fn cut_over(&self, client: &ClientAuth, now: u64) -> Option<WriteOp> {
        (client.previous_at(now).is_some() && client.begin_cut_over()).then(|| WriteOp::CutOver {
            client_id: client.client_id.clone(),
            generation: client.generation,
            now,
        })
    }

    /// Answers `response` after `op` (a cut-over) has committed, or at once without one.
    fn answer_after(
        &self,
        op: Option<WriteOp>,
        ctx: &RequestContext<'_>,
        response: Response,
    ) -> Outcome {
        let Some(op) = op else {
            return response.into();
        };
        let done = ctx.defer();
        self.app.submit(op, move |result| {
            done.complete(result.map_err(Error::from).map(|_| response));
        });
        Outcome::Deferred
    }

    fn read_registration(
        &self,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let client_id = path_client_id(req)?;
        let client_id = client_id.as_str();
        let rat = super::bearer(req).ok_or_else(|| {
            ApiError::InvalidToken("a registration access token (Bearer) is required".into())
        })?;
        let rec = self.authorize_rat(client_id, rat, false)?;
        let mut answer = self.answer(&rec, None, rat);
        if rec.auth_method == AuthMethod::PrivateKeyJwt {
            let keys = rec
                .jwks
                .iter()
                .map(|j| Jwk::from_json(j.as_bytes()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| stored_key_error(&rec.client_id, &e))?;
            answer.jwks = Some(JwkSet { keys });
        }
        // Reading with the new RAT is a first use of it: the previous credentials end.
        let cut_over = self
            .app
            .store
            .hot()
            .client(client_id)
            .filter(|c| c.generation == rec.generation)
            .and_then(|c| self.cut_over(&c, self.app.now()));
        Ok(self.answer_after(cut_over, ctx, registration_response(200, answer)))
    }

    fn rotate(
        self: &Arc<Self>,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let client_id = path_client_id(req)?.as_str().to_owned();
        let rat = super::bearer(req).ok_or_else(|| {
            ApiError::InvalidToken("a registration access token (Bearer) is required".into())
        })?;
        let rec = self.authorize_rat(&client_id, rat, true)?;
        let body = RegisterRequest::parse(req.body())?;
        if let Some(id) = &body.client_id
            && *id != client_id
        {
            return Err(ApiError::InvalidRequest(
                "client_id does not match the registration".into(),
            )
            .into());
        }
        let profile = match rec.auth_method {
            AuthMethod::ClientSecretJwt => SecurityProfile::SharedSecret,
            AuthMethod::PrivateKeyJwt => SecurityProfile::Rsa3072,
            _ => {
                return Err(ApiError::InvalidRequest(
                    "this registration is not rotated through this endpoint".into(),
                )
                .into());
            }
        };
        // An RSA agent may keep its keys (no `jwks`) or replace them; MCL sends a new key with
        // a new kid every time, the Node SDK the same key under `mindconnect-key-1`.
        let credentials = Credentials::new(profile, body.jwks.as_ref(), false)?;
        let new_rat = generate_secret()?;
        let now = self.app.now();
        let grace = self.app.settings.rotation_grace;
        let op = WriteOp::RotateRegistration(Rotation {
            client_id,
            presented_rat: Secret::from(rat),
            new_rat: Secret::from(new_rat.as_str()),
            new_secret: credentials
                .secret
                .as_ref()
                .map(|s| Secret::from(s.as_str())),
            new_jwks: credentials.jwks.clone(),
            secret_expires_at: now.saturating_add(self.app.settings.client_secret_lifetime),
            grace_until: if grace == 0 {
                0
            } else {
                now.saturating_add(grace)
            },
            now,
        });
        let done = ctx.defer();
        let state = Arc::clone(self);
        self.app.submit(op, move |result| {
            done.complete(
                result
                    .map_err(Error::from)
                    .and_then(|outcome| match outcome {
                        WriteOutcome::Registration(rec) => Ok(registration_response(
                            200,
                            state.answer(&rec, credentials.secret, &new_rat),
                        )),
                        // The answer of the rotation this one repeats, word for word.
                        WriteOutcome::RotationReplayed {
                            registration,
                            rat,
                            secret,
                        } => {
                            let secret = secret.map(|s| secret_text(&s)).transpose()?;
                            Ok(registration_response(
                                200,
                                state.answer(&registration, secret, &secret_text(&rat)?),
                            ))
                        }
                        other => Err(unexpected(&other)),
                    }),
            );
        });
        Ok(Outcome::Deferred)
    }

    // -----------------------------------------------------------------------------------------
    // Token endpoint

    fn token(&self, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
        let now = self.app.now();
        let clock = std::time::Instant::now();
        let source = super::throttle::source_key(ctx.peer().ip());
        if let Some(wait) = self.app.source_throttle.check(&source, clock) {
            let ip = ctx.peer().ip().to_string();
            let throttle = &self.app.source_throttle;
            return Err(super::throttle::refuse(
                &self.app, throttle, "source", &ip, wait,
            ));
        }
        let forged = std::cell::Cell::new(false);
        let result = Form::from_request(req)
            .map_err(TokenRefusal::from)
            .and_then(|form| {
                // RFC 8705: no assertion, no secret, the TLS client certificate instead.
                if super::certs::is_mtls_token_request(&form) && ctx.client_certificates().is_some()
                {
                    let (client, x5t) = super::certs::authenticate(&self.app, &form, ctx)?;
                    return Ok((self.issue_to(&client, now, Some(x5t))?, None));
                }
                let request = TokenRequest::parse(&form)?;
                // A JWT-authenticated client on a mutual-TLS connection gets a bound token too.
                let x5t = super::certs::client_certificate(&self.app, ctx)?.map(|c| c.thumbprint());
                self.issue_checked(&request, now, x5t, &forged)
            });
        if forged.get() {
            // Counted per claimed client id (read again only on this failure path), so one
            // agent with a wrong key behind a shared address does not lock out the others.
            let who = Form::from_request(req)
                .ok()
                .and_then(|f| {
                    let parsed = UnverifiedToken::parse(f.get("client_assertion")?).ok()?;
                    latchkey_core::dangerous::insecure_issuer(&parsed)
                        .ok()
                        .flatten()
                        .map(|s| s.to_owned())
                })
                .unwrap_or_default();
            self.app.source_throttle.failure_of(&source, &who, clock);
        }
        match result {
            Ok((answer, cut_over)) => Ok(self.answer_after(
                cut_over,
                ctx,
                Response::json(200, &answer).header("Pragma", "no-cache"),
            )),
            Err(TokenRefusal::Error(e)) => Err(e),
            Err(TokenRefusal::Later { seconds, reason }) => {
                let wire = WireError::new(503, "temporarily_unavailable", reason);
                Ok(Response::from_wire(&wire)
                    .header("Retry-After", seconds.max(1).to_string())
                    .into())
            }
        }
    }

    /// Authenticates the client assertion and mints an access token (everything but HTTP).
    pub fn issue(&self, request: &TokenRequest, now: u64) -> Result<TokenResponse, TokenRefusal> {
        self.issue_bound(request, now, None)
    }

    /// [`AgentState::issue`], binding the token to a client certificate (`cnf.x5t#S256`). A
    /// cut-over this request causes is submitted without waiting for it.
    pub fn issue_bound(
        &self,
        request: &TokenRequest,
        now: u64,
        x5t: Option<String>,
    ) -> Result<TokenResponse, TokenRefusal> {
        let forged = std::cell::Cell::new(false);
        let (answer, cut_over) = self.issue_checked(request, now, x5t, &forged)?;
        if let Some(op) = cut_over {
            self.app.submit(op, |_| {});
        }
        Ok(answer)
    }

    /// Authenticates and mints; also returns the cut-over to commit when this is the first use
    /// of a rotation's new credentials (the HTTP answer waits for it).
    fn issue_checked(
        &self,
        request: &TokenRequest,
        now: u64,
        x5t: Option<String>,
        forged: &std::cell::Cell<bool>,
    ) -> Result<(TokenResponse, Option<WriteOp>), TokenRefusal> {
        let (client, claims, used) = self.authenticate(&request.client_assertion, now, forged)?;
        if let Some(id) = &request.client_id
            && *id != client.client_id
        {
            return Err(ApiError::InvalidClient(
                "client_id does not match the assertion's issuer".into(),
            )
            .into());
        }
        if now >= client.secret_expires_at {
            // MCL answers a 400 from this endpoint by rotating its credentials, which is
            // exactly what it must do.
            return Err(ApiError::InvalidGrant(format!(
                "the agent's credentials expired at {}; rotate the registration (PUT {} with the \
                 registration access token) and sign a new assertion",
                client.secret_expires_at,
                self.registration_uri(&client.client_id)
            ))
            .into());
        }
        let iat = claims
            .iat
            .ok_or(RejectedError::MissingClaim("iat"))
            .map_err(|e| invalid_assertion(&e.into()))?;
        if iat < self.replay_floor {
            if now < self.replay_floor {
                return Err(TokenRefusal::Later {
                    seconds: self.replay_floor - now,
                    reason: "the authority restarted moments ago and cannot yet tell fresh \
                             assertions from replayed ones; sign a new assertion and retry"
                        .into(),
                });
            }
            return Err(ApiError::InvalidClient(
                "client assertion issued before the authority restarted; sign a new one".into(),
            )
            .into());
        }
        let max_age = self.app.settings.assertion_max_age;
        if now
            > iat
                .saturating_add(max_age)
                .saturating_add(assertion_leeway(&self.app))
        {
            return Err(ApiError::InvalidClient(format!(
                "client assertion was issued more than {max_age} s ago; sign a new one"
            ))
            .into());
        }
        let (Some(jti), Some(exp)) = (claims.jti.as_deref(), claims.exp) else {
            return Err(invalid_assertion(&RejectedError::MissingClaim("jti").into()).into());
        };
        // Remember the jti only as long as the age check above would let it through again:
        // after that a replay is refused as too old, so memory is bounded by rate × max age.
        let remember_until = exp.min(iat.saturating_add(max_age));
        let fingerprint = self.app.replay.fingerprint(&client.client_id, jti);
        match self.app.replay.check_and_insert_for(
            &client.client_id,
            fingerprint,
            Some(iat),
            remember_until,
            now,
        ) {
            // Logged before the token is minted: a process that dies after answering has the
            // entry in the page cache for the next one.
            Ok(until) => {
                if let Some(log) = &self.app.replay_log {
                    log.append(fingerprint, until, now)
                        .map_err(|e| log_refusal(e, self.app.settings.replay_log))?;
                }
            }
            Err(e) => {
                return Err(
                    super::replay_refusal::room_refusal(&self.app, &client.client_id, e)
                        .unwrap_or_else(|| invalid_assertion(&e.into()).into()),
                );
            }
        }
        let answer = self.issue_to(&client, now, x5t)?;
        let cut_over = match used {
            Used::New => self.cut_over(&client, now),
            Used::Unchanged | Used::Previous => None,
        };
        Ok((answer, cut_over))
    }

    /// Mints for an authenticated client (after the method-specific checks).
    fn issue_to(
        &self,
        client: &ClientAuth,
        now: u64,
        x5t: Option<String>,
    ) -> Result<TokenResponse, TokenRefusal> {
        if self.app.agent_revoked(&client.client_id, now) {
            // Re-registered within the second of an offboarding: a token minted now would be
            // refused as revoked. Nothing was issued; the jti is spent, so sign a new one.
            return Err(TokenRefusal::Later {
                seconds: 1,
                reason: "the agent was offboarded this second; retry with a new assertion".into(),
            });
        }
        let answer = self.mint_access_token(client, now, x5t)?;
        // Look up before inserting: the insert path clones the id, and all but an agent's
        // first token find the entry.
        let activity = self.activity.pin();
        match activity.get(client.client_id.as_str()) {
            Some(at) => at.store(now, Ordering::Relaxed),
            None => activity
                .get_or_insert_with(client.client_id.clone(), || AtomicU64::new(0))
                .store(now, Ordering::Relaxed),
        }
        Ok(answer)
    }

    /// Finds the client the assertion names (unverified `iss`), verifies the assertion with
    /// that client's credentials and RFC 7523 rules. Every failure is 401 `invalid_client`.
    /// `forged` is set when the assertion names an unknown client or its signature does not
    /// verify: the failures that say the caller is guessing.
    fn authenticate(
        &self,
        assertion: &str,
        now: u64,
        forged: &std::cell::Cell<bool>,
    ) -> Result<(Arc<ClientAuth>, Claims, Used), Error> {
        let parsed = UnverifiedToken::parse(assertion).map_err(|e| invalid_assertion(&e))?;
        let issuer = latchkey_core::dangerous::insecure_issuer(&parsed)
            .map_err(|e| invalid_assertion(&e))?
            .ok_or_else(|| invalid_assertion(&RejectedError::MissingClaim("iss").into()))?;
        let Some(client) = self.app.store.hot().client(&issuer) else {
            forged.set(true);
            self.rsa_keys.pin().remove(&issuer);
            return Err(ApiError::InvalidClient(
                "unknown client (not registered, or offboarded)".into(),
            )
            .into());
        };
        // A client id in backoff after failed assertions is refused before any check.
        let clock = std::time::Instant::now();
        if let Some(wait) = self.app.client_throttle.check(&client.client_id, clock) {
            return Err(super::throttle::refuse(
                &self.app,
                &self.app.client_throttle,
                "client",
                &client.client_id,
                wait,
            ));
        }
        let checked = self.verify_assertion(&client, parsed, assertion, now, forged);
        let (verified, used) = match checked {
            Ok(v) => {
                self.app.client_throttle.success(&client.client_id);
                v
            }
            Err(e) => {
                if forged.get() {
                    self.app.client_throttle.failure(&client.client_id, clock);
                }
                return Err(e);
            }
        };
        self.app.metrics.tokens_verified(1);
        let claims = verified.into_claims();
        if let Some(ten) = claims.extra_str("ten")
            && ten != client.tenant
        {
            return Err(ApiError::InvalidClient("assertion names another tenant".into()).into());
        }
        Ok((client, claims, used))
    }

    /// Checks the assertion's signature (and claims) with the client's secret or keys, the
    /// ones a rotation replaced included while its grace lasts.
    fn verify_assertion(
        &self,
        client: &Arc<ClientAuth>,
        parsed: UnverifiedToken<'_>,
        assertion: &str,
        now: u64,
        forged: &std::cell::Cell<bool>,
    ) -> Result<(VerifiedToken, Used), Error> {
        // Only a signature that does not verify says the caller lacks the secret or key; a
        // signed assertion with a bad claim is the agent's own mistake.
        let refuse = |e: &latchkey_core::Error| {
            if matches!(
                e,
                latchkey_core::Error::Rejected(
                    RejectedError::BadSignature
                        | RejectedError::UnknownKey
                        | RejectedError::AlgorithmMismatch
                )
            ) {
                forged.set(true);
            }
            invalid_assertion(e)
        };
        let validation = self.assertion_validation();
        let alg = parsed.header().alg();
        let previous = client.previous_at(now);
        Ok(match client.auth_method {
            AuthMethod::ClientSecretJwt => {
                if client.secret.is_none() {
                    return Err(stored_key_error(&client.client_id, &"no secret"));
                }
                if !alg.is_hmac() {
                    return Err(refuse(&RejectedError::AlgorithmMismatch.into()));
                }
                // Built from the secret once per entry and algorithm, not per request.
                let key = client
                    .hmac_key(alg)
                    .map_err(|e| stored_key_error(&client.client_id, &e))?;
                match (parsed.verify(key, validation, now), previous) {
                    (Ok(v), None) => (v, Used::Unchanged),
                    (Ok(v), Some(p)) if p.secret == client.secret => (v, Used::Unchanged),
                    (Ok(v), Some(_)) => (v, Used::New),
                    // Within a rotation's grace window the replaced secret still counts.
                    (Err(latchkey_core::Error::Rejected(RejectedError::BadSignature)), Some(p))
                        if p.secret.is_some() && now < p.secret_expires_at =>
                    {
                        let key = p
                            .hmac_key(alg)
                            .map_err(|e| stored_key_error(&client.client_id, &e))?;
                        let v = UnverifiedToken::parse(assertion)
                            .and_then(|t| t.verify(key, validation, now))
                            .map_err(|e| refuse(&e))?;
                        (v, Used::Previous)
                    }
                    (Err(e), _) => return Err(refuse(&e)),
                }
            }
            AuthMethod::PrivateKeyJwt => {
                let cached = self.rsa_keys_of(client)?;
                match verify_with_any(assertion, &cached.keys, validation, now) {
                    Ok((v, i)) if previous.is_some() && cached.fresh[i] => (v, Used::New),
                    Ok((v, _)) => (v, Used::Unchanged),
                    Err(
                        e @ latchkey_core::Error::Rejected(
                            RejectedError::BadSignature | RejectedError::UnknownKey,
                        ),
                    ) => match previous {
                        Some(p) if !cached.previous.is_empty() && now < p.secret_expires_at => {
                            let (v, _) =
                                verify_with_any(assertion, &cached.previous, validation, now)
                                    .map_err(|_| refuse(&e))?;
                            (v, Used::Previous)
                        }
                        _ => return Err(refuse(&e)),
                    },
                    Err(e) => return Err(refuse(&e)),
                }
            }
            AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth => {
                return Err(ApiError::InvalidClient(
                    "this client authenticates with its TLS certificate".into(),
                )
                .into());
            }
        })
    }

    /// RFC 7523 §3 rules for this authority: `iss` = `sub`, `exp` and `jti` required, lifetime
    /// at most the replay cache's bound (25 h: MCL signs 24-hour assertions), audience this
    /// token endpoint, our issuer or MindSphere's `southgate`. Built once: everything it
    /// depends on (settings, base URL, issuer) is fixed once the server serves.
    pub fn assertion_validation(&self) -> &Validation {
        self.assertion_validation.get_or_init(|| Validation {
            leeway: assertion_leeway(&self.app),
            audiences: vec![
                self.token_endpoint(),
                self.app.issuer().to_owned(),
                SOUTHGATE_AUDIENCE.to_owned(),
            ],
            max_lifetime: Some(self.app.settings.replay.max_lifetime),
            ..Validation::new(TokenType::ClientAssertion)
        })
    }

    fn rsa_keys_of(&self, client: &Arc<ClientAuth>) -> Result<Arc<CachedKeys>, Error> {
        if let Some(cached) = self.rsa_keys.pin().get(&client.client_id)
            && std::ptr::eq(cached.client.as_ptr(), Arc::as_ptr(client))
        {
            return Ok(Arc::clone(cached));
        }
        let parse = |jwks: &[String]| {
            jwks.iter()
                .map(|j| {
                    Jwk::from_json(j.as_bytes())
                        .and_then(|jwk| jwk.to_verifying_key(AGENT_RSA_ALGS, &agent_key_policy()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| stored_key_error(&client.client_id, &e))
        };
        let keys = parse(&client.jwks)?;
        let replaced = match &client.previous {
            Some(p) => parse(&p.jwks)?,
            None => Vec::new(),
        };
        let prints = |ks: &[VerifyingKey]| ks.iter().map(|k| k.thumbprint()).collect::<Vec<_>>();
        let (current, old) = (prints(&keys), prints(&replaced));
        let fresh = current
            .iter()
            .map(|t| client.previous.is_some() && !old.contains(t))
            .collect();
        let previous = replaced
            .into_iter()
            .zip(&old)
            .filter(|(_, t)| !current.contains(t))
            .map(|(k, _)| k)
            .collect();
        let cached = Arc::new(CachedKeys {
            client: Arc::downgrade(client),
            keys,
            fresh,
            previous,
        });
        self.rsa_keys
            .pin()
            .insert(client.client_id.clone(), Arc::clone(&cached));
        Ok(cached)
    }

    fn mint_access_token(
        &self,
        client: &ClientAuth,
        now: u64,
        x5t: Option<String>,
    ) -> Result<TokenResponse, Error> {
        let app = &self.app;
        let lifetime = app.settings.access_token_lifetime;
        let mut claims = app.base_claims(
            &client.client_id,
            Audience::Many(vec![SOUTHGATE_AUDIENCE.to_owned()]),
            lifetime,
            now,
        );
        let scope: Vec<String> = AGENT_SCOPES.iter().map(|s| (*s).to_owned()).collect();
        claims
            .extra
            .insert("ten".into(), client.tenant.clone().into());
        claims
            .extra
            .insert("client_id".into(), client.client_id.clone().into());
        claims.extra.insert("scope".into(), scope.clone().into());
        claims
            .extra
            .insert("schemas".into(), vec![MINDSPHERE_SCHEMA].into());
        if let Some(x5t) = x5t {
            // RFC 8705 §3.1: the token is bound to the client certificate.
            claims
                .extra
                .insert("cnf".into(), serde_json::json!({ "x5t#S256": x5t }));
        }
        let access_token = app.mint(
            app.tenant_alg(&client.tenant),
            TokenType::AccessToken,
            &claims,
        )?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: lifetime,
            scope,
            jti: claims.jti.unwrap_or_default(),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Keys

    /// `GET /oauth/token_key`: the key agents verify their access tokens with. Agents do not
    /// say who they are here, so this is the active key of the default tenant's algorithm
    /// (RS256 unless configured otherwise); `?alg=` picks another. Tenants whose agents use
    /// the Node SDK must keep RS* or ES256 (its verifier cannot check EdDSA).
    fn token_key(&self, req: &Request<'_>) -> Result<Outcome, Error> {
        let query = Form::query(req)?;
        let alg = match query.get("alg") {
            Some(name) => Algorithm::from_name(name)
                .ok()
                .filter(|a| !a.is_hmac())
                .ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "alg must be RS256, RS384, RS512, ES256 or EdDSA".into(),
                    )
                })?,
            None => self.app.tenant_alg(&self.app.settings.default_tenant),
        };
        let snap = self.app.keys.snapshot();
        let minter = snap
            .minter(alg)
            .ok_or_else(|| ApiError::NotFound(format!("no active {alg} signing key")))?;
        let key = minter.key().verifying_key();
        let answer = TokenKey {
            jwk: Jwk::from_public_key(&key)?,
            value: key.to_pem_one_line()?,
        };
        // Cacheable until the next key of this algorithm activates, no longer.
        let max_age = self.app.key_cache_max_age(Some(alg), self.app.now());
        Ok(super::oauth::key_set_response(req, &answer, max_age).into())
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

/// An agent's credentials for a register or rotate request, generated or validated.
struct Credentials {
    method: AuthMethod,
    secret: Option<Zeroizing<String>>,
    /// Canonical public JWKs; `None` keeps the registered keys (rotation only).
    jwks: Option<Vec<String>>,
}

impl Credentials {
    fn new(
        profile: SecurityProfile,
        jwks: Option<&JwkSet>,
        first: bool,
    ) -> Result<Credentials, Error> {
        match profile {
            SecurityProfile::SharedSecret => {
                if jwks.is_some() {
                    return Err(ApiError::InvalidRequest(
                        "a SHARED_SECRET agent registers without jwks".into(),
                    )
                    .into());
                }
                Ok(Credentials {
                    method: AuthMethod::ClientSecretJwt,
                    secret: Some(generate_secret()?),
                    jwks: None,
                })
            }
            SecurityProfile::Rsa3072 => {
                let jwks = match jwks {
                    Some(set) => Some(validate_agent_jwks(set)?),
                    None if first => {
                        return Err(ApiError::InvalidRequest(
                            "an RSA_3072 agent registers its public key in jwks".into(),
                        )
                        .into());
                    }
                    None => None,
                };
                Ok(Credentials {
                    method: AuthMethod::PrivateKeyJwt,
                    secret: None,
                    jwks,
                })
            }
        }
    }
}

/// The key policy of the RSA_3072 profile: exactly 3072 bits, e = 65537.
pub fn agent_key_policy() -> KeyPolicy {
    KeyPolicy {
        rsa: RsaPolicy::RSA_3072,
    }
}

/// Validates an RSA_3072 agent's JWK Set: 1..=[`MAX_AGENT_KEYS`] public RSA keys of exactly
/// 3072 bits with e = 65537, no private members, unique kids (a key without a kid gets its
/// RFC 7638 thumbprint). Returns each key's canonical public JWK as stored.
pub fn validate_agent_jwks(set: &JwkSet) -> Result<Vec<String>, ApiError> {
    if set.keys.is_empty() || set.keys.len() > MAX_AGENT_KEYS {
        return Err(ApiError::InvalidRequest(format!(
            "jwks must hold 1 to {MAX_AGENT_KEYS} keys"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(set.keys.len());
    let mut kids: Vec<String> = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let bad = |why: String| ApiError::InvalidRequest(format!("jwks key {i}: {why}"));
        if jwk.kty != "RSA" {
            return Err(bad("the RSA_3072 profile needs kty RSA".into()));
        }
        let key = jwk
            .to_verifying_key(AGENT_RSA_ALGS, &agent_key_policy())
            .map_err(|e| match e {
                // Refused on length alone, before any decoding.
                latchkey_core::Error::Key(latchkey_core::KeyError::RsaSize { bits: 0, .. }) => {
                    bad("RSA modulus longer than the 3072 bits of the RSA_3072 profile".into())
                }
                e => bad(e.to_string()),
            })?;
        let kid = match &jwk.kid {
            Some(k) => validate::AGENT_KID
                .check(k)
                .map_err(|e| bad(e.to_string()))?
                .to_owned(),
            None => key.thumbprint(),
        };
        if kids.contains(&kid) {
            return Err(bad("duplicate kid".into()));
        }
        let public =
            Jwk::from_public_key(&key.with_kid(kid.clone())).map_err(|e| bad(e.to_string()))?;
        out.push(serde_json::to_string(&public).map_err(|e| bad(e.to_string()))?);
        kids.push(kid);
    }
    Ok(out)
}

/// The client id a registration path names (`{client_id}`): an agent id.
fn path_client_id(req: &Request<'_>) -> Result<AgentId, ApiError> {
    AgentId::parse_as(
        validate::ENTITY_ID.named("client_id"),
        req.param("client_id").unwrap_or(""),
    )
}

/// Verifies an assertion with the key its `kid` names or, without a kid, with each key in
/// turn (at most [`MAX_AGENT_KEYS`] RSA verifications).
fn verify_with_any(
    token: &str,
    keys: &[VerifyingKey],
    v: &Validation,
    now: u64,
) -> Result<(VerifiedToken, usize), latchkey_core::Error> {
    let parsed = UnverifiedToken::parse(token)?;
    if let Some(kid) = parsed.header().kid() {
        let i = keys
            .iter()
            .position(|k| k.kid() == Some(kid))
            .ok_or(RejectedError::UnknownKey)?;
        return parsed.verify(&keys[i], v, now).map(|t| (t, i));
    }
    // Verification consumes the parsed token; parsing again is cheap next to an RSA check.
    let mut last = latchkey_core::Error::from(RejectedError::BadSignature);
    for (i, key) in keys.iter().enumerate() {
        match UnverifiedToken::parse(token)?.verify(key, v, now) {
            Ok(verified) => return Ok((verified, i)),
            Err(
                e @ latchkey_core::Error::Rejected(
                    RejectedError::BadSignature | RejectedError::AlgorithmMismatch,
                ),
            ) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Verification of a token Latchkey minted without the agent-revocation check.
fn verify_minted(
    app: &App,
    token: &str,
    v: &Validation,
    now: u64,
) -> Result<VerifiedToken, latchkey_core::Error> {
    let parsed = UnverifiedToken::parse(token)?;
    let snap = app.keys.snapshot();
    let kid = parsed
        .header()
        .kid()
        .ok_or(RejectedError::UnknownKey)?
        .to_owned();
    let key = snap.key(&kid).ok_or(RejectedError::UnknownKey)?;
    let verified = parsed.verify(key, v, now)?;
    app.metrics.tokens_verified(1);
    let jti = verified.claims().jti.as_deref().unwrap_or("");
    if app.revocations.is_revoked(jti, Some(&kid), now) {
        return Err(RejectedError::Revoked.into());
    }
    Ok(verified)
}

/// The skew tolerated on assertions: the configured leeway, but never longer than the replay
/// cache remembers a `jti` past its `exp` (else an assertion could be accepted again after the
/// cache forgot it).
fn assertion_leeway(app: &App) -> u64 {
    app.assertion_leeway()
}

/// A token request whose assertion could not be logged: come back shortly (the jti is
/// spent; clients sign a new assertion per try).
fn log_refusal(e: LogRefusal, config: ReplayLogConfig) -> TokenRefusal {
    let seconds = config.sync_interval.as_secs().max(1);
    TokenRefusal::Later {
        seconds,
        reason: match e {
            LogRefusal::Full => "too many recent client assertions to record; retry later",
            LogRefusal::Unavailable => "the replay log is not being written; retry later",
            LogRefusal::Closed => "the authority is stopping; retry later",
        }
        .into(),
    }
}

fn invalid_assertion(e: &latchkey_core::Error) -> Error {
    match e {
        latchkey_core::Error::Unavailable(_) => Error::Token(e.clone()),
        _ => ApiError::InvalidClient(format!("client assertion refused: {e}")).into(),
    }
}

/// Stored credentials that do not parse are our fault: 500, details in the log only.
fn stored_key_error(client_id: &str, e: &dyn std::fmt::Display) -> Error {
    tracing::error!(client_id, error = %e, "stored agent credentials unreadable");
    Error::Io(std::io::Error::other("stored agent credentials unreadable"))
}

/// A generated credential (base64url text) back from its stored bytes.
fn secret_text(s: &Secret) -> Result<Zeroizing<String>, Error> {
    std::str::from_utf8(s.expose())
        .map(|t| Zeroizing::new(t.to_owned()))
        .map_err(|_| Error::Io(std::io::Error::other("stored credential is not text")))
}

fn registration_response(status: u16, answer: RegistrationResponse) -> Response {
    Response::json(status, &answer).header("Pragma", "no-cache")
}

fn unexpected(outcome: &WriteOutcome) -> Error {
    Error::Io(std::io::Error::other(format!(
        "unexpected store outcome {outcome:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{AppSettings, TenantDecl};
    use crate::http::Metrics;
    use crate::store::{NewAgent, NewIat};
    use latchkey_core::SigningKey;
    use serde_json::json;

    const SECRET: &str = "ly7zmXbz0Izla6B82xlAYRVBcKDcCFatwmnHQmR8Ycw";

    struct Fixture {
        _dir: tempfile::TempDir,
        state: Arc<AgentState>,
        now: u64,
    }

    fn fixture_with(settings: AppSettings, floor_offset: i64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = App::open(dir.path(), settings, Arc::new(Metrics::new())).unwrap();
        let app = Arc::new(app);
        let now = app.now();
        let floor = now.saturating_add_signed(floor_offset);
        Fixture {
            _dir: dir,
            state: Arc::new(AgentState::with_floor(app, floor)),
            now,
        }
    }

    fn fixture() -> Fixture {
        fixture_with(AppSettings::default(), -600)
    }

    impl Fixture {
        fn app(&self) -> &Arc<App> {
            &self.state.app
        }

        /// Creates and registers an agent straight through the store.
        fn agent(
            &self,
            tenant: &str,
            id: &str,
            profile: SecurityProfile,
            expires_at: u64,
            jwks: Vec<String>,
        ) {
            let jti = format!("iat-{id}");
            self.app()
                .write(WriteOp::CreateAgent(NewAgent {
                    tenant: tenant.into(),
                    id: id.into(),
                    name: format!("name {id}"),
                    security_profile: profile,
                    iat: Some(NewIat {
                        jti: jti.clone(),
                        expires_at: self.now + 3600,
                    }),
                    now: self.now,
                }))
                .unwrap();
            let (method, secret) = match profile {
                SecurityProfile::SharedSecret => {
                    (AuthMethod::ClientSecretJwt, Some(Secret::from(SECRET)))
                }
                SecurityProfile::Rsa3072 => (AuthMethod::PrivateKeyJwt, None),
            };
            self.app()
                .write(WriteOp::Register(Registration {
                    iat_jti: jti,
                    tenant: tenant.into(),
                    client_id: id.into(),
                    auth_method: method,
                    secret,
                    jwks,
                    secret_expires_at: expires_at,
                    rat: Secret::from("rat"),
                    now: self.now,
                }))
                .unwrap();
        }

        fn issue(&self, assertion: &str) -> Result<TokenResponse, (u16, String)> {
            let req = TokenRequest {
                client_assertion: assertion.to_owned(),
                client_id: None,
            };
            self.state.issue(&req, self.now).map_err(|r| match r {
                TokenRefusal::Error(e) => {
                    let w = WireError::from(&e);
                    (w.status, format!("{} {}", w.error, w.description))
                }
                TokenRefusal::Later { reason, .. } => (503, reason),
            })
        }
    }

    /// A compact JWS over `claims` with header `{"alg", "typ":"JWT"[, "kid"]}`.
    fn sign(key: &SigningKey, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({ "alg": key.algorithm().as_str(), "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        let mut t = format!(
            "{}.{}",
            latchkey_core::b64::encode(header.to_string().as_bytes()),
            latchkey_core::b64::encode(claims.to_string().as_bytes())
        );
        let mut sig = String::new();
        key.sign_into(t.as_bytes(), &mut sig).unwrap();
        t.push('.');
        t.push_str(&sig);
        t
    }

    fn claims(client: &str, now: u64, jti: &str) -> Value {
        json!({
            "iss": client, "sub": client, "aud": ["southgate"], "iat": now, "nbf": now,
            "exp": now + 3600, "jti": jti, "schemas": ["urn:siemens:mindsphere:v1"], "ten": "main"
        })
    }

    use serde_json::Value;

    fn hs(alg: Algorithm) -> SigningKey {
        SigningKey::hmac(alg, SECRET.as_bytes()).unwrap()
    }

    fn rsa_key(bits: aws_lc_rs::rsa::KeySize, alg: Algorithm) -> SigningKey {
        let kp = aws_lc_rs::rsa::KeyPair::generate(bits).unwrap();
        use aws_lc_rs::encoding::AsDer as _;
        let der = kp.as_der().unwrap();
        SigningKey::from_pkcs8_der(alg, der.as_ref()).unwrap()
    }

    fn jwk_of(key: &SigningKey, kid: Option<&str>) -> Jwk {
        let mut jwk = Jwk::from_public_key(&key.verifying_key()).unwrap();
        jwk.kid = kid.map(str::to_owned);
        jwk.alg = None;
        jwk
    }

    #[test]
    fn shared_secret_assertions_get_one_token_each() {
        let f = fixture();
        f.agent(
            "main",
            "a1",
            SecurityProfile::SharedSecret,
            f.now + 7 * 86_400,
            vec![],
        );
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let jti = format!("j-{alg}");
            let a = sign(&hs(alg), None, &claims("a1", f.now, &jti));
            let t = f.issue(&a).expect("token");
            assert_eq!((t.token_type, t.expires_in), ("Bearer", 3600));
            assert_eq!(t.scope, AGENT_SCOPES);
            let v = f.app().validation(TokenType::AccessToken);
            let verified = f
                .app()
                .verify(&t.access_token, &v, f.now)
                .expect("access token verifies");
            let c = verified.claims();
            assert_eq!(c.sub.as_deref(), Some("a1"));
            assert_eq!(c.extra_str("ten"), Some("main"));
            assert_eq!(c.extra_str("client_id"), Some("a1"));
            assert_eq!(c.jti.as_deref(), Some(t.jti.as_str()));
            assert_eq!(
                verified.header().alg(),
                Algorithm::RS256,
                "RS256 by default"
            );
            let (status, why) = f.issue(&a).expect_err("replayed");
            assert_eq!(status, 401, "{why}");
            assert!(why.contains("replayed"), "{why}");
        }
        assert_eq!(f.state.last_token_at("a1"), Some(f.now));
    }

    /// The HMAC key cached in the hot index entry dies with the secret: after a rotation the
    /// old secret's assertions fail and the new secret's pass.
    #[test]
    fn cached_hmac_key_follows_secret_rotation() {
        let f = fixture();
        f.agent(
            "main",
            "a1",
            SecurityProfile::SharedSecret,
            f.now + 7 * 86_400,
            vec![],
        );
        let old = hs(Algorithm::HS256);
        f.issue(&sign(&old, None, &claims("a1", f.now, "before")))
            .expect("old secret, key now cached");
        let new_secret = "Zq1zmXbz0Izla6B82xlAYRVBcKDcCFatwmnHQmR8Yc0";
        f.app()
            .write(WriteOp::RotateRegistration(Rotation {
                client_id: "a1".into(),
                presented_rat: Secret::from("rat"),
                new_rat: Secret::from("rat2"),
                new_secret: Some(Secret::from(new_secret)),
                new_jwks: None,
                secret_expires_at: f.now + 7 * 86_400,
                grace_until: 0,
                now: f.now,
            }))
            .unwrap();
        let (s, why) = f
            .issue(&sign(&old, None, &claims("a1", f.now, "after-old")))
            .unwrap_err();
        assert!(s == 401 && why.contains("signature"), "{why}");
        let new = SigningKey::hmac(Algorithm::HS256, new_secret.as_bytes()).unwrap();
        f.issue(&sign(&new, None, &claims("a1", f.now, "after-new")))
            .expect("new secret");
    }

    /// Regression: the replay cache filled within seconds under load because it remembered
    /// each jti until the assertion's own `exp` (up to 25 h). Assertions must now be fresh,
    /// and the cache holds them only for the age limit.
    #[test]
    fn assertion_age_bounds_the_replay_window() {
        let f = fixture();
        f.agent(
            "main",
            "a1",
            SecurityProfile::SharedSecret,
            f.now + 7 * 86_400,
            vec![],
        );
        let max_age = f.app().settings.assertion_max_age;
        let leeway = assertion_leeway(f.app());
        let key = hs(Algorithm::HS256);

        // An MCL-style 24-hour assertion signed just now: accepted once, then a replay.
        let mut c = claims("a1", f.now, "mcl-fresh");
        c["exp"] = (f.now + 86_400).into();
        let fresh = sign(&key, None, &c);
        f.issue(&fresh).expect("fresh 24-hour assertion");
        let (status, why) = f.issue(&fresh).expect_err("replayed");
        assert_eq!(status, 401, "{why}");

        // Issued just inside the age limit: still accepted.
        let edge = f.now - max_age - leeway;
        let mut c = claims("a1", edge, "edge");
        c["exp"] = (f.now + 86_400).into();
        f.issue(&sign(&key, None, &c)).expect("at the age limit");

        // One second older: refused whatever its exp, with a message that says why.
        let mut c = claims("a1", edge - 1, "too-old");
        c["exp"] = (f.now + 86_400).into();
        let (status, why) = f.issue(&sign(&key, None, &c)).expect_err("too old");
        assert_eq!(status, 401, "{why}");
        assert!(why.contains(&format!("more than {max_age} s ago")), "{why}");
    }

    #[test]
    fn assertion_rules() {
        let f = fixture();
        f.agent(
            "main",
            "a1",
            SecurityProfile::SharedSecret,
            f.now + 7 * 86_400,
            vec![],
        );
        let key = hs(Algorithm::HS256);
        let n = f.now;
        let check = |c: Value, status: u16, needle: &str| {
            let (s, why) = f.issue(&sign(&key, None, &c)).expect_err(needle);
            assert_eq!(s, status, "{why}");
            assert!(why.contains(needle), "{needle}: {why}");
        };
        let with = |k: &str, v: Value, jti: &str| {
            let mut c = claims("a1", n, jti);
            c[k] = v;
            c
        };
        check(
            with("aud", json!("https://elsewhere"), "1"),
            401,
            "audience",
        );
        check(with("exp", json!(n - 3600), "2"), 401, "expired");
        check(with("exp", json!(n + 26 * 3600), "3"), 401, "lifetime");
        check(with("sub", json!("other"), "4"), 401, "type");
        check(with("ten", json!("other-tenant"), "5"), 401, "tenant");
        let mut no_jti = claims("a1", n, "6");
        no_jti.as_object_mut().unwrap().remove("jti");
        check(no_jti, 401, "jti");
        let mut no_iat = claims("a1", n, "7");
        no_iat.as_object_mut().unwrap().remove("iat");
        check(no_iat, 401, "iat");
        check(claims("nobody", n, "8"), 401, "unknown client");
        // Accepted audiences: MCL's single string, the token endpoint, the issuer; MCL's 24 h.
        f.issue(&sign(&key, None, &with("aud", json!("southgate"), "9")))
            .expect("string aud");
        let endpoint = f.state.token_endpoint();
        f.issue(&sign(&key, None, &with("aud", json!([endpoint]), "10")))
            .expect("endpoint aud");
        let issuer = f.app().issuer().to_owned();
        f.issue(&sign(&key, None, &with("aud", json!(issuer), "11")))
            .expect("issuer aud");
        f.issue(&sign(&key, None, &with("exp", json!(n + 86_400), "12")))
            .expect("24 h");
        // Another secret: bad signature. An RSA-signed assertion: algorithm mismatch.
        let other = SigningKey::hmac(Algorithm::HS256, &[7; 32]).unwrap();
        let (s, why) = f
            .issue(&sign(&other, None, &claims("a1", n, "13")))
            .unwrap_err();
        assert!(s == 401 && why.contains("signature"), "{why}");
        let rs = SigningKey::generate(Algorithm::RS256).unwrap();
        let (s, why) = f
            .issue(&sign(&rs, None, &claims("a1", n, "14")))
            .unwrap_err();
        assert!(s == 401 && why.contains("alg"), "{why}");
        // Our own token types are never assertions.
        let minted = f
            .app()
            .mint(
                Algorithm::RS256,
                TokenType::AccessToken,
                &Claims::from_json(claims("a1", n, "15").to_string().as_bytes()).unwrap(),
            )
            .unwrap();
        assert_eq!(f.issue(&minted).unwrap_err().0, 401);
        let req = TokenRequest {
            client_assertion: sign(&key, None, &claims("a1", n, "16")),
            client_id: Some("a2".into()),
        };
        assert!(matches!(
            f.state.issue(&req, n),
            Err(TokenRefusal::Error(_))
        ));
    }

    #[test]
    fn replay_floor_refuses_assertions_from_before_a_restart() {
        assert_eq!(replay_floor(1000, 60), 1061);
        // Just started: the floor is ahead of the clock.
        let f = fixture_with(AppSettings::default(), 30);
        f.agent(
            "main",
            "a1",
            SecurityProfile::SharedSecret,
            f.now + 7 * 86_400,
            vec![],
        );
        let key = hs(Algorithm::HS256);
        let (s, why) = f
            .issue(&sign(&key, None, &claims("a1", f.now, "x")))
            .unwrap_err();
        assert_eq!(s, 503, "{why}");
        // An assertion issued at or after the floor is fine (a client clock ahead of ours).
        f.issue(&sign(&key, None, &claims("a1", f.now + 30, "y")))
            .expect("after floor");
        // Floor passed: an old assertion is refused for good.
        let f = fixture_with(AppSettings::default(), -10);
        f.agent(
            "main",
            "a1",
            SecurityProfile::SharedSecret,
            f.now + 7 * 86_400,
            vec![],
        );
        let (s, why) = f
            .issue(&sign(&key, None, &claims("a1", f.now - 20, "z")))
            .unwrap_err();
        assert!(s == 401 && why.contains("restarted"), "{why}");
    }

    #[test]
    fn expired_credentials_answer_400_telling_the_agent_to_rotate() {
        let f = fixture();
        f.agent("main", "a1", SecurityProfile::SharedSecret, f.now, vec![]);
        let (s, why) = f
            .issue(&sign(
                &hs(Algorithm::HS256),
                None,
                &claims("a1", f.now, "j"),
            ))
            .unwrap_err();
        assert_eq!(s, 400, "{why}");
        assert!(
            why.contains("rotate") && why.contains("/register/a1"),
            "{why}"
        );
    }

    #[test]
    fn rsa_agents_sign_with_a_registered_key() {
        let f = fixture();
        let node = SigningKey::generate(Algorithm::RS384).unwrap();
        let jwks = JwkSet {
            keys: vec![jwk_of(&node, Some("mindconnect-key-1"))],
        };
        f.agent(
            "main",
            "r1",
            SecurityProfile::Rsa3072,
            f.now + 7 * 86_400,
            validate_agent_jwks(&jwks).unwrap(),
        );
        f.issue(&sign(
            &node,
            Some("mindconnect-key-1"),
            &claims("r1", f.now, "1"),
        ))
        .expect("Node SDK: RS384 + kid");
        f.issue(&sign(&node, None, &claims("r1", f.now, "2")))
            .expect("no kid: the signature decides");
        let stranger = SigningKey::generate(Algorithm::RS256).unwrap();
        let (s, why) = f
            .issue(&sign(
                &stranger,
                Some("mindconnect-key-1"),
                &claims("r1", f.now, "3"),
            ))
            .unwrap_err();
        assert!(s == 401 && why.contains("signature"), "{why}");
        let (s, why) = f
            .issue(&sign(&stranger, Some("other"), &claims("r1", f.now, "4")))
            .unwrap_err();
        assert!(s == 401 && why.contains("kid"), "{why}");
        let hmac = SigningKey::hmac(Algorithm::HS256, &[1; 32]).unwrap();
        let (s, why) = f
            .issue(&sign(&hmac, None, &claims("r1", f.now, "5")))
            .unwrap_err();
        assert!(s == 401 && why.contains("alg"), "{why}");
    }

    #[test]
    fn tenant_algorithm_signs_access_tokens() {
        let settings = AppSettings {
            tenants: vec![
                TenantDecl {
                    id: "es".into(),
                    display_name: None,
                    token_alg: Some("ES256".into()),
                },
                TenantDecl {
                    id: "ed".into(),
                    display_name: None,
                    token_alg: Some("EdDSA".into()),
                },
            ],
            ..AppSettings::default()
        };
        let f = fixture_with(settings, -600);
        for (tenant, alg) in [("es", Algorithm::ES256), ("ed", Algorithm::EdDSA)] {
            let id = format!("agent-{tenant}");
            f.agent(
                tenant,
                &id,
                SecurityProfile::SharedSecret,
                f.now + 86_400 * 7,
                vec![],
            );
            let mut c = claims(&id, f.now, "j");
            c["ten"] = tenant.into();
            let t = f
                .issue(&sign(&hs(Algorithm::HS256), None, &c))
                .expect("token");
            let parsed = UnverifiedToken::parse(&t.access_token).unwrap();
            assert_eq!(parsed.header().alg(), alg);
        }
    }

    #[test]
    fn agent_key_sets_are_held_to_the_rsa_3072_profile() {
        use aws_lc_rs::rsa::KeySize;
        let good = SigningKey::generate(Algorithm::RS256).unwrap();
        let ok = validate_agent_jwks(&JwkSet {
            keys: vec![jwk_of(&good, None)],
        })
        .unwrap();
        let stored: Jwk = serde_json::from_str(&ok[0]).unwrap();
        assert_eq!(
            stored.kid,
            Some(good.verifying_key().thumbprint()),
            "no kid: thumbprint"
        );
        let check = |keys: Vec<Jwk>, needle: &str| {
            let e = validate_agent_jwks(&JwkSet { keys }).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        };
        check(vec![], "1 to");
        check(vec![jwk_of(&good, Some("k")); MAX_AGENT_KEYS + 1], "1 to");
        check(
            vec![jwk_of(&good, Some("k")), jwk_of(&good, Some("k"))],
            "duplicate kid",
        );
        check(
            vec![jwk_of(
                &rsa_key(KeySize::Rsa2048, Algorithm::RS256),
                Some("k"),
            )],
            "2048 bits",
        );
        check(
            vec![jwk_of(
                &rsa_key(KeySize::Rsa4096, Algorithm::RS256),
                Some("k"),
            )],
            "longer than the 3072 bits",
        );
        let mut e3 = jwk_of(&good, Some("k"));
        e3.e = Some("Aw".into());
        check(vec![e3], "exponent");
        let mut private = jwk_of(&good, Some("k"));
        private.d = Some("AQAB".into());
        check(vec![private], "private");
        let ed = SigningKey::generate(Algorithm::EdDSA).unwrap();
        check(vec![jwk_of(&ed, Some("k"))], "kty RSA");
        check(
            vec![Jwk {
                kty: "oct".into(),
                k: Some("AAAA".into()),
                ..Jwk::default()
            }],
            "kty RSA",
        );
        check(vec![jwk_of(&good, Some(""))], "kid");
    }
}
