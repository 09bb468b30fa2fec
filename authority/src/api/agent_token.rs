//! The agent token endpoint `POST /api/agentmanagement/v3/oauth/token`: a JWT client
//! assertion (RFC 7523) or the TLS client certificate (RFC 8705, `mtls_client_auth.rs`) for an
//! access token; and `GET /oauth/token_key`, the key that signs it.
//!
//! # Design decisions
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
//! `temporarily_unavailable` and `Retry-After`; so are assertions issued before it for a
//! leeway after it (one signed by a client whose clock runs slow, or just before the floor,
//! is still fresh), and only then does an assertion from before the floor get 401. This assumes the system clock does not move
//! backwards across a restart by more than the downtime.
//!
//! **Offboarding.** The store deletes the registration (secret, keys, RAT hash) and records an
//! agent revocation; `App::verify` refuses every access token of the agent issued at or before
//! it. A token request in that same second would mint a token that is dead on arrival, so it is
//! answered 503 with `Retry-After: 1` instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use latchkey_core::claims::{Audience, Claims, TokenType, Validation};
use latchkey_core::{Algorithm, Jwk, RejectedError, UnverifiedToken, VerifiedToken, VerifyingKey};

use super::Form;
use super::mindsphere::{
    MINDSPHERE_SCHEMA, SOUTHGATE_AUDIENCE, TokenKey, TokenRequest, TokenResponse,
};
use super::onboarding::{AGENT_RSA_ALGS, AgentState, agent_key_policy, stored_key_error};
use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response};
use crate::replay_log::{LogRefusal, ReplayLogConfig};
use crate::store::{AuthMethod, ClientAuth, WriteOp};

/// Scopes of every agent access token.
pub const AGENT_SCOPES: [&str; 1] = ["mdsp:core:agent"];

#[derive(Debug)]
pub(super) struct CachedKeys {
    client: Weak<ClientAuth>,
    keys: Vec<VerifyingKey>,
    /// Per key in `keys`: whether the last rotation introduced it. Using a key the rotation
    /// kept (the Node SDK sends the same key again) proves nothing about the rotation answer.
    fresh: Vec<bool>,
    /// The rotation's replaced keys that are not among `keys`.
    previous: Vec<VerifyingKey>,
}

/// What [`AgentState::issue_checked`] decided.
// Every token is an `Issued` returned by value, as the tuple it replaces was; boxing it would
// cost an allocation per token to shrink the rare cluster variant.
#[allow(clippy::large_enum_variant)]
enum Checked {
    /// A token, and the cut-over to commit before answering with it.
    Issued(TokenResponse, Option<WriteOp>),
    /// The client's owner is another node: the check goes there first.
    #[cfg(feature = "etcd")]
    Forward(Box<Forward>),
}

/// An authenticated assertion whose `jti` another node checks (the owner, or the previous
/// owners of a client that moved here).
#[cfg(feature = "etcd")]
struct Forward {
    /// The owner, or the previous owners when this node is the owner.
    to: Vec<crate::cluster::replay::Node>,
    check: crate::cluster::replay::Check,
    client: Arc<ClientAuth>,
    x5t: Option<String>,
    used: Used,
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

impl AgentState {
    // -----------------------------------------------------------------------------------------
    // Token endpoint

    pub(super) fn token(
        self: &Arc<Self>,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        self.app.check_serving()?;
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
        let result = Form::from_request(req).and_then(|form| {
            // RFC 8705: no assertion, no secret, the TLS client certificate instead.
            if super::mtls_client_auth::is_mtls_token_request(&form)
                && ctx.client_certificates().is_some()
            {
                let (client, x5t) = super::mtls_client_auth::authenticate(&self.app, &form, ctx)?;
                return Ok(Checked::Issued(
                    self.issue_to(&client, now, Some(x5t))?,
                    None,
                ));
            }
            let request = TokenRequest::parse(&form)?;
            // A JWT-authenticated client on a mutual-TLS connection gets a bound token too.
            let x5t = super::mtls_client_auth::client_certificate(&self.app, ctx)?
                .map(|c| c.thumbprint());
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
            if let Err(e) = &result {
                // Unauthenticated: logged (rate-limited) and audited as one row per claimed
                // id, source and interval, never one row per request.
                self.app.refusals.record(
                    "agent.token.refuse",
                    &who,
                    ctx.peer().ip(),
                    crate::error::WireError::from(e).error,
                    &e.to_string(),
                    now,
                );
            }
        }
        match result {
            Ok(Checked::Issued(answer, cut_over)) => Ok(self.answer_after(
                cut_over,
                ctx,
                Response::json(200, &answer).header("Pragma", "no-cache"),
            )),
            #[cfg(feature = "etcd")]
            Ok(Checked::Forward(f)) => Ok(self.forward(*f, now, ctx)),
            Err(e) => Err(e),
        }
    }

    /// Authenticates the client assertion and mints an access token (everything but HTTP).
    pub fn issue(&self, request: &TokenRequest, now: u64) -> Result<TokenResponse, Error> {
        self.issue_bound(request, now, None)
    }

    /// [`AgentState::issue`], binding the token to a client certificate (`cnf.x5t#S256`). A
    /// cut-over this request causes is submitted without waiting for it.
    pub fn issue_bound(
        &self,
        request: &TokenRequest,
        now: u64,
        x5t: Option<String>,
    ) -> Result<TokenResponse, Error> {
        let forged = std::cell::Cell::new(false);
        match self.issue_checked(request, now, x5t, &forged)? {
            Checked::Issued(answer, cut_over) => {
                if let Some(op) = cut_over {
                    self.app.submit(op, |_| {});
                }
                Ok(answer)
            }
            // The owner answers later, on another thread: only the HTTP path can wait for it.
            #[cfg(feature = "etcd")]
            Checked::Forward(_) => Err(Error::from(ApiError::Unavailable {
                retry_after: 1,
                description: "another node checks this agent's assertions".into(),
            })),
        }
    }

    /// Authenticates and mints; also returns the cut-over to commit when this is the first use
    /// of a rotation's new credentials (the HTTP answer waits for it). In a cluster, a client
    /// another node owns comes back as the check to forward, before anything is minted.
    fn issue_checked(
        &self,
        request: &TokenRequest,
        now: u64,
        x5t: Option<String>,
        forged: &std::cell::Cell<bool>,
    ) -> Result<Checked, Error> {
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
        self.process_floor(iat, now)?;
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
            return Err(invalid_assertion(
                &RejectedError::MissingClaim("jti").into(),
            ));
        };
        // Remember the jti only as long as the age check above would let it through again:
        // after that a replay is refused as too old, so memory is bounded by rate × max age.
        let remember_until = exp.min(iat.saturating_add(max_age));
        #[cfg(feature = "etcd")]
        if let Some(owners) = self.app.replay_owners.get() {
            use crate::cluster::replay::{Check, MAX_JTI_BYTES, Route};
            if jti.len() > MAX_JTI_BYTES {
                return Err(ApiError::InvalidClient(format!(
                    "client assertion jti longer than {MAX_JTI_BYTES} bytes"
                ))
                .into());
            }
            let check = Check {
                client_id: client.client_id.clone(),
                jti: jti.to_owned(),
                iat,
                until: remember_until,
                handoff: false,
            };
            match owners.route(&client.client_id)? {
                Route::Local => {
                    let plan = owners.owner_plan(&client.client_id)?;
                    self.check_moved(&check, plan.floor, now)?;
                    self.record(&client.client_id, jti, iat, remember_until, now)?;
                    // Moved here from a live node: it checks and records the jti too.
                    if !plan.previous.is_empty() {
                        return Ok(Checked::Forward(Box::new(Forward {
                            to: plan.previous,
                            check: Check {
                                handoff: true,
                                ..check
                            },
                            client,
                            x5t,
                            used,
                        })));
                    }
                    let (answer, cut_over) = self.finish_issue(&client, now, x5t, used)?;
                    return Ok(Checked::Issued(answer, cut_over));
                }
                Route::Forward(owner) => {
                    return Ok(Checked::Forward(Box::new(Forward {
                        to: vec![owner],
                        check,
                        client,
                        x5t,
                        used,
                    })));
                }
            }
        }
        self.record(&client.client_id, jti, iat, remember_until, now)?;
        let (answer, cut_over) = self.finish_issue(&client, now, x5t, used)?;
        Ok(Checked::Issued(answer, cut_over))
    }

    /// Mints once the assertion's `jti` is recorded; and the cut-over to commit first when
    /// the assertion used a rotation's new credentials.
    fn finish_issue(
        &self,
        client: &ClientAuth,
        now: u64,
        x5t: Option<String>,
        used: Used,
    ) -> Result<(TokenResponse, Option<WriteOp>), Error> {
        let answer = self.issue_to(client, now, x5t)?;
        let cut_over = match used {
            Used::New => self.cut_over(client, now),
            Used::Unchanged | Used::Previous => None,
        };
        Ok((answer, cut_over))
    }

    /// Refuses an assertion issued before this process's replay floor (module docs).
    fn process_floor(&self, iat: u64, now: u64) -> Result<(), Error> {
        below_floor(
            iat,
            self.replay_floor,
            now,
            assertion_leeway(&self.app),
            FloorCause::Restart,
        )
    }

    /// Checks the `jti` against the replay cache and records it there and in the replay log.
    fn record(
        &self,
        client_id: &str,
        jti: &str,
        iat: u64,
        remember_until: u64,
        now: u64,
    ) -> Result<(), Error> {
        let fingerprint = self.app.replay.fingerprint(client_id, jti);
        match self.app.replay.check_and_insert_for(
            client_id,
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
                Ok(())
            }
            Err(e) => Err(super::replay_refusal::room_refusal(&self.app, client_id, e)
                .unwrap_or_else(|| invalid_assertion(&e.into()))),
        }
    }

    /// Mints for an authenticated client (after the method-specific checks).
    fn issue_to(
        &self,
        client: &ClientAuth,
        now: u64,
        x5t: Option<String>,
    ) -> Result<TokenResponse, Error> {
        // After authentication, so only the agent itself learns it is suspended. 401, not
        // 400: MindConnect libraries answer a 400 here by rotating, which suspension refuses.
        if self.app.store.hot().agent_suspended(&client.client_id) {
            return Err(ApiError::InvalidClient(
                "the agent is suspended by its operator; it gets tokens again once resumed".into(),
            )
            .into());
        }
        if self.app.agent_revoked(&client.client_id, now) {
            // Re-registered within the second of an offboarding: a token minted now would be
            // refused as revoked. Nothing was issued; the jti is spent, so sign a new one.
            return Err(Error::from(ApiError::Unavailable {
                retry_after: 1,
                description:
                    "the agent was offboarded or suspended this second; retry with a new assertion"
                        .into(),
            }));
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
    pub(super) fn token_key(&self, req: &Request<'_>) -> Result<Outcome, Error> {
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

/// Cluster mode (`crate::cluster`): the owner's side of a check and forwarding to an owner.
#[cfg(feature = "etcd")]
impl AgentState {
    /// Refuses an assertion issued before `floor`, the floor of a client this node came to own
    /// when the cluster's nodes changed: its earlier owner may have accepted it.
    fn check_moved(
        &self,
        check: &crate::cluster::replay::Check,
        floor: u64,
        now: u64,
    ) -> Result<(), Error> {
        below_floor(
            check.iat,
            floor,
            now,
            assertion_leeway(&self.app),
            FloorCause::Moved,
        )
    }

    /// Everything the owner checks of an assertion another node authenticated: this
    /// process's floor, the client's floor, the replay cache and log.
    fn check_forwarded(
        &self,
        check: &crate::cluster::replay::Check,
        floor: u64,
        now: u64,
    ) -> Result<(), Error> {
        self.process_floor(check.iat, now)?;
        self.check_moved(check, floor, now)?;
        self.record(&check.client_id, &check.jti, check.iat, check.until, now)
    }

    /// Defers the request until the owner answered the check; then mints (and commits a
    /// cut-over first, as [`AgentState::answer_after`] does) on the forwarding thread.
    fn forward(self: &Arc<Self>, f: Forward, now: u64, ctx: &RequestContext<'_>) -> Outcome {
        let Some(owners) = self.app.replay_owners.get() else {
            // `Checked::Forward` comes only from a node with owners.
            return Response::from_error(&Error::Config("no cluster owners".into())).into();
        };
        let done = ctx.defer();
        let state = Arc::clone(self);
        let Forward {
            to,
            check,
            client,
            x5t,
            used,
        } = f;
        owners.forward_all(
            to,
            check,
            Box::new(move |checked| {
                let (answer, cut_over) =
                    match checked.and_then(|()| state.finish_issue(&client, now, x5t, used)) {
                        Ok(issued) => issued,
                        Err(e) => return done.complete(Response::from_error(&e)),
                    };
                let response = Response::json(200, &answer).header("Pragma", "no-cache");
                match cut_over {
                    None => done.complete(response),
                    Some(op) => state.app.submit(op, move |result| {
                        use crate::store::outcome::FromOutcome as _;
                        done.complete(
                            result
                                .and_then(<()>::from_outcome)
                                .map_err(Error::from)
                                .map(|()| response),
                        );
                    }),
                }
            }),
        );
        Outcome::Deferred
    }
}

/// `POST /internal/v1/replay`: the checks other nodes forward to this one (registered only
/// on a node of a cluster).
#[cfg(feature = "etcd")]
pub fn peer_routes(router: &mut crate::http::Router, state: &Arc<AgentState>) {
    use crate::cluster::peer_auth::AUTH_HEADER;
    use crate::cluster::replay::{PEER_PATH, Served};
    if state.app.replay_owners.get().is_none() {
        return;
    }
    let s = Arc::clone(state);
    router.route(
        "POST",
        PEER_PATH,
        move |req: &Request<'_>, ctx: &RequestContext<'_>| -> Outcome {
            let Some(owners) = s.app.replay_owners.get() else {
                return Response::from_error(&Error::Config("no cluster owners".into())).into();
            };
            let now = s.app.now();
            let served = owners.serve(req.header(AUTH_HEADER), req.body(), now, |check, floor| {
                s.check_forwarded(check, floor, now)
            });
            match served {
                Ok(Served::Ready(r)) => Outcome::Ready(r),
                Ok(Served::Handoff(h)) => {
                    let done = ctx.defer();
                    owners.finish(h, move |r| done.complete(r));
                    Outcome::Deferred
                }
                Err(e) => Outcome::Ready(Response::from_error(&e)),
            }
        },
    );
}

/// Verifies an assertion with the key its `kid` names or, without a kid, with each key in
/// turn (at most [`MAX_AGENT_KEYS`](super::onboarding::MAX_AGENT_KEYS) RSA verifications).
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

/// Why a replay floor applies: this process cannot know what an earlier one accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloorCause {
    /// The process started without a complete replay log.
    Restart,
    /// In a cluster, the client came to this node from one that is gone.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Moved,
}

/// Refuses an assertion issued before `floor`. Until a leeway past the floor such an
/// assertion may still be fresh (signed by an agent whose clock runs slow, or signed just
/// before the floor and arriving after it): 503 with `Retry-After`, as agents sign a new
/// assertion per try. Past that it can only be replayed or held back: 401.
fn below_floor(
    iat: u64,
    floor: u64,
    now: u64,
    leeway: u64,
    cause: FloorCause,
) -> Result<(), Error> {
    if iat >= floor {
        return Ok(());
    }
    if now < floor.saturating_add(leeway) {
        return Err(Error::from(ApiError::Unavailable {
            retry_after: floor.saturating_sub(now).max(1),
            description: match cause {
                FloorCause::Restart => {
                    "the authority restarted moments ago and cannot yet tell fresh assertions \
                     from replayed ones; sign a new assertion and retry"
                }
                FloorCause::Moved => {
                    "the cluster's nodes changed moments ago and this agent's assertions are \
                     now checked by another node; sign a new assertion and retry"
                }
            }
            .into(),
        }));
    }
    Err(ApiError::InvalidClient(
        match cause {
            FloorCause::Restart => {
                "client assertion issued before the authority restarted; sign a new one"
            }
            FloorCause::Moved => {
                "client assertion issued before the cluster's nodes changed; sign a new one"
            }
        }
        .into(),
    )
    .into())
}

/// The skew tolerated on assertions: the configured leeway, but never longer than the replay
/// cache remembers a `jti` past its `exp` (else an assertion could be accepted again after the
/// cache forgot it).
pub(super) fn assertion_leeway(app: &App) -> u64 {
    app.assertion_leeway()
}

/// A token request whose assertion could not be logged: come back shortly (the jti is
/// spent; clients sign a new assertion per try).
fn log_refusal(e: LogRefusal, config: ReplayLogConfig) -> Error {
    let seconds = config.sync_interval.as_secs().max(1);
    Error::from(ApiError::Unavailable {
        retry_after: seconds,
        description: match e {
            LogRefusal::Full => "too many recent client assertions to record; retry later",
            LogRefusal::Unavailable => "the replay log is not being written; retry later",
            LogRefusal::Closed => "the authority is stopping; retry later",
        }
        .into(),
    })
}

fn invalid_assertion(e: &latchkey_core::Error) -> Error {
    match e {
        latchkey_core::Error::Unavailable(_) => Error::Token(e.clone()),
        _ => ApiError::InvalidClient(format!("client assertion refused: {e}")).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registration::validate_agent_jwks;
    use crate::app::{AppSettings, TenantDecl};
    use crate::http::Metrics;
    use crate::store::{NewAgent, NewIat, Registration, Rotation, Secret, SecurityProfile};
    use latchkey_core::JwkSet;
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
                    by: "test".into(),
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
            self.state.issue(&req, self.now).map_err(|e| {
                let w = crate::error::WireError::from(&e);
                (w.status, format!("{} {}", w.error, w.description))
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

    /// A suspension is read from the hot index: the agent's next assertion is refused (401,
    /// saying why), its earlier token stops verifying, another agent is served, and a resume
    /// lets a fresh assertion through.
    #[test]
    fn suspended_agents_get_no_token_until_resumed() {
        let f = fixture();
        for id in ["a1", "a2"] {
            f.agent(
                "main",
                id,
                SecurityProfile::SharedSecret,
                f.now + 86_400,
                vec![],
            );
        }
        let key = hs(Algorithm::HS256);
        let earlier = f
            .issue(&sign(&key, None, &claims("a1", f.now, "j-1")))
            .expect("token");
        let suspend = |suspend: bool, now: u64| {
            f.app()
                .write(WriteOp::SuspendAgent {
                    tenant: "main".into(),
                    id: "a1".into(),
                    suspend,
                    by: "op".into(),
                    now,
                    forget_after: now + 7200,
                })
                .unwrap();
        };
        suspend(true, f.now);
        assert!(f.app().store.hot().agent_suspended("a1"));
        let (status, why) = f
            .issue(&sign(&key, None, &claims("a1", f.now, "j-2")))
            .expect_err("suspended");
        assert_eq!(status, 401, "{why}");
        assert!(
            why.contains("invalid_client") && why.contains("suspended"),
            "{why}"
        );
        let v = f.app().validation(TokenType::AccessToken);
        assert!(f.app().verify(&earlier.access_token, &v, f.now).is_err());
        f.issue(&sign(&key, None, &claims("a2", f.now, "j-3")))
            .expect("another agent is served");
        // Resumed a second later: a fresh assertion gets a token that verifies.
        suspend(false, f.now + 1);
        assert!(!f.app().store.hot().agent_suspended("a1"));
        let later = f.now + 1;
        let req = TokenRequest {
            client_assertion: sign(&key, None, &claims("a1", later, "j-4")),
            client_id: None,
        };
        let Ok(t) = f.state.issue(&req, later) else {
            panic!("no token after resume");
        };
        assert!(f.app().verify(&t.access_token, &v, later).is_ok());
        assert!(f.app().verify(&earlier.access_token, &v, later).is_err());
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
            Err(e) if !matches!(e, Error::Api(ApiError::Unavailable { .. }))
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
        // An assertion issued a second before a floor that passed `ago` seconds ago.
        let just_before = |ago: u64| {
            let f = fixture_with(AppSettings::default(), -(ago as i64));
            f.agent(
                "main",
                "a1",
                SecurityProfile::SharedSecret,
                f.now + 7 * 86_400,
                vec![],
            );
            f.issue(&sign(&key, None, &claims("a1", f.now - ago - 1, "z")))
                .unwrap_err()
        };
        // Floor passed moments ago: one issued before it may still be fresh (a client clock
        // behind ours, or signed just before the floor), so it is told to come back.
        let (s, why) = just_before(10);
        assert!(s == 503 && why.contains("restarted"), "{why}");
        // Floor passed by more than the leeway: an old assertion is refused for good.
        let (s, why) = just_before(61);
        assert!(s == 401 && why.contains("restarted"), "{why}");
    }

    #[test]
    fn below_the_floor_is_503_for_a_leeway_past_it_then_401() {
        let refusal = |iat, now| {
            below_floor(iat, 1000, now, 60, FloorCause::Moved)
                .map_err(|e| crate::error::WireError::from(&e))
        };
        assert!(refusal(1000, 990).is_ok());
        assert!(refusal(1005, 1002).is_ok());
        // Ahead of the floor: come back when it passed.
        let w = refusal(990, 990).unwrap_err();
        assert_eq!((w.status, w.retry_after), (503, Some(10)));
        assert!(w.description.contains("nodes changed"), "{}", w.description);
        // Signed in the second before the floor, arriving after it; or a slow client clock.
        let w = refusal(999, 1001).unwrap_err();
        assert_eq!((w.status, w.retry_after), (503, Some(1)));
        let w = refusal(960, 1059).unwrap_err();
        assert_eq!(w.status, 503);
        // A leeway past the floor, nothing fresh is issued before it.
        let w = refusal(999, 1060).unwrap_err();
        assert_eq!(w.status, 401);
        assert!(
            w.description.contains("sign a new one"),
            "{}",
            w.description
        );
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
}
