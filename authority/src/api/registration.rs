//! Agent registration under `/api/agentmanagement/v3/register`: register with the initial
//! access token (RFC 7591), read and rotate with the registration access token (RFC 7592),
//! and the initial access tokens themselves.
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

use std::sync::Arc;

use latchkey_core::claims::{Audience, Claims, TokenType, Validation};
use latchkey_core::{Jwk, JwkSet, VerifiedToken};
use zeroize::Zeroizing;

use super::mindsphere::{AgentId, MINDSPHERE_SCHEMA, RegisterRequest, RegistrationResponse};
use super::onboarding::{
    AGENT_RSA_ALGS, AgentState, MAX_AGENT_KEYS, agent_key_policy, stored_key_error,
};
use super::{validate, write};
use crate::app::{App, generate_secret};
use crate::error::{ApiError, Error, WireError};
use crate::http::{Outcome, Request, RequestContext, Response};
use crate::store::outcome::Rotated;
use crate::store::{
    AgentRecord, AuthMethod, BoardingRecord, Registration, RegistrationRecord, Rotation, Secret,
    SecurityProfile, WriteOp,
};

/// The `scope` of initial access tokens (as MindSphere writes it).
const IAT_SCOPE: &str = "IAT";

impl AgentState {
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
        self.app.verify(token, &v, now).map_err(|e| {
            ApiError::InvalidToken(format!("initial access token refused: {e}")).into()
        })
    }

    // -----------------------------------------------------------------------------------------
    // Register

    pub(super) fn register(
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
        let iat = self.verify_iat(token, now).inspect_err(|e| {
            self.app.source_throttle.failure_of(&source, token, clock);
            // Unauthenticated: logged (rate-limited) and audited in aggregate.
            self.app.refusals.record(
                "registration.refuse",
                "-",
                ctx.peer().ip(),
                WireError::from(e).error,
                &e.to_string(),
                now,
            );
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
        let credentials = match super::mtls_client_auth::MtlsRegistration::parse(req.body())? {
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
        let state = Arc::clone(self);
        Ok(write::submit(
            &self.app,
            ctx,
            op,
            move |rec: RegistrationRecord| {
                state.forget(&rec.client_id);
                Ok(registration_response(
                    201,
                    state.answer(&rec, credentials.secret, &rat),
                ))
            },
        ))
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

    pub(super) fn read_registration(
        &self,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let client_id = path_client_id(req)?;
        let client_id = client_id.as_str();
        let rat = super::bearer(req).ok_or_else(|| {
            ApiError::InvalidToken("a registration access token (Bearer) is required".into())
        })?;
        let rec = self
            .authorize_rat(client_id, rat, false)
            .inspect_err(|e| log_rat_refusal(&self.app, client_id, ctx, e, self.app.now()))?;
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

    pub(super) fn rotate(
        self: &Arc<Self>,
        req: &Request<'_>,
        ctx: &RequestContext<'_>,
    ) -> Result<Outcome, Error> {
        let client_id = path_client_id(req)?.as_str().to_owned();
        let rat = super::bearer(req).ok_or_else(|| {
            ApiError::InvalidToken("a registration access token (Bearer) is required".into())
        })?;
        let rec = self
            .authorize_rat(&client_id, rat, true)
            .inspect_err(|e| log_rat_refusal(&self.app, &client_id, ctx, e, self.app.now()))?;
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
        let state = Arc::clone(self);
        Ok(write::submit(&self.app, ctx, op, move |rotated| {
            Ok(match rotated {
                Rotated::Fresh(rec) => {
                    registration_response(200, state.answer(&rec, credentials.secret, &new_rat))
                }
                // The answer of the rotation this one repeats, word for word.
                Rotated::Replayed {
                    registration,
                    rat,
                    secret,
                } => {
                    let secret = secret.map(|s| secret_text(&s)).transpose()?;
                    registration_response(
                        200,
                        state.answer(&registration, secret, &secret_text(&rat)?),
                    )
                }
            })
        }))
    }
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

/// A generated credential (base64url text) back from its stored bytes.
fn secret_text(s: &Secret) -> Result<Zeroizing<String>, Error> {
    std::str::from_utf8(s.expose())
        .map(|t| Zeroizing::new(t.to_owned()))
        .map_err(|_| Error::Io(std::io::Error::other("stored credential is not text")))
}

fn registration_response(status: u16, answer: RegistrationResponse) -> Response {
    Response::json(status, &answer).header("Pragma", "no-cache")
}

/// A registration access token that is not current for `client_id`: logged (rate-limited) and
/// audited in aggregate, as every unauthenticated refusal.
fn log_rat_refusal(app: &App, client_id: &str, ctx: &RequestContext<'_>, e: &Error, now: u64) {
    app.refusals.record(
        "registration.rat.refuse",
        client_id,
        ctx.peer().ip(),
        WireError::from(e).error,
        &e.to_string(),
        now,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_core::{Algorithm, SigningKey};

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

    /// Offboarding revokes every token of the agent issued in its second, but not the IAT
    /// issued right after it to board again: the boarding table decides about IATs.
    #[test]
    fn an_iat_issued_in_the_second_of_an_offboarding_verifies() {
        use crate::app::{App, AppSettings};
        use crate::http::Metrics;
        use crate::store::NewAgent;
        let dir = tempfile::tempdir().unwrap();
        let (app, _) =
            App::open(dir.path(), AppSettings::default(), Arc::new(Metrics::new())).unwrap();
        let state = AgentState::with_floor(Arc::new(app), 0);
        let app = &state.app;
        let now = app.now();
        let tenant = app.settings.default_tenant.clone();
        app.write(WriteOp::CreateAgent(NewAgent {
            tenant: tenant.clone(),
            id: "a1".into(),
            name: "a1".into(),
            security_profile: SecurityProfile::SharedSecret,
            iat: None,
            by: "test".into(),
            now,
        }))
        .unwrap();
        app.write(WriteOp::Offboard {
            tenant: tenant.clone(),
            agent_id: "a1".into(),
            by: "op".into(),
            now,
            forget_after: now + 3600,
        })
        .unwrap();
        let (agent, rec): (AgentRecord, BoardingRecord) = app
            .write(WriteOp::IssueBoardingToken {
                tenant,
                agent_id: "a1".into(),
                iat: crate::store::NewIat {
                    jti: "iat-2".into(),
                    expires_at: now + 3600,
                },
                by: "test".into(),
                now,
            })
            .unwrap()
            .into_record()
            .unwrap();
        let iat = state.mint_iat(&agent, &rec).unwrap();
        let verified = state.verify_iat(&iat, now).expect("the new IAT verifies");
        assert_eq!(verified.claims().jti.as_deref(), Some("iat-2"));
        // An access token of the agent from that second is revoked.
        assert!(app.agent_revoked("a1", now));
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
