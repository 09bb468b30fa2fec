//! The operator-side OAuth surface: the token endpoint for operator clients
//! (`client_credentials` with `client_secret_basic` or `client_secret_post`), the public keys
//! in the UAA shape the MindSphere SDK reads (`/token_keys`, `/token_key`) and as a JWKS,
//! RFC 8414 metadata, RFC 7662 introspection and RFC 7009 revocation.
//!
//! Writes (audit entries, revocations) never block the event loop: the handler defers its
//! answer and completes it from the store's reply, after the commit. A token is handed out
//! only once its issuance is in the audit log.

use std::sync::Arc;

use latchkey_core::claims::{Claims, TokenType};
use latchkey_core::jwk::Jwk;
use latchkey_core::{Algorithm, UnverifiedToken, VerifyingKey};
use serde_json::{Map, Value, json};

use super::auth::{self, Permission, Permissions, Principal, PrincipalKind};
use super::{Form, Route};
use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response, Router};
use crate::store::outcome::Audited;
use crate::store::{AuditOutcome, RevocationKind, RevocationRecord, WriteOp};

/// Longest client id written to the audit log for a refused request (ids are attacker input).
const MAX_AUDIT_ID: usize = 128;

pub fn routes(router: &mut Router, app: &Arc<App>) {
    let table: [(&str, &str, Route<App>); 8] = [
        ("POST", "/oauth/token", token),
        ("GET", "/token_keys", |a, req, _| {
            let max_age = a.key_cache_max_age(None, a.now());
            Ok(key_set_response(req, &token_keys(a), max_age).into())
        }),
        ("GET", "/token_key", |a, req, _| {
            let key =
                active_key(a).ok_or_else(|| ApiError::NotFound("no active signing key".into()))?;
            let max_age = a.key_cache_max_age(Some(a.settings.operator_alg), a.now());
            Ok(key_set_response(req, &uaa_key(&key)?, max_age).into())
        }),
        ("GET", "/.well-known/jwks.json", |a, req, _| {
            let max_age = a.key_cache_max_age(None, a.now());
            Ok(key_set_response(req, &jwks(a, a.now()), max_age).into())
        }),
        (
            "GET",
            "/.well-known/oauth-authorization-server",
            |a, _, _| Ok(Response::json(200, &metadata(a)).into()),
        ),
        ("GET", "/.well-known/openid-configuration", |a, _, _| {
            Ok(Response::json(200, &metadata(a)).into())
        }),
        ("POST", "/oauth/introspect", |a, req, ctx| {
            with_client_challenge(introspect(a, req, ctx))
        }),
        ("POST", "/oauth/revoke", |a, req, ctx| {
            with_client_challenge(revoke(a, req, ctx))
        }),
    ];
    super::register(router, app, "", &table);
}

/// RFC 6749 §5.2: a 401 for client authentication carries a `WWW-Authenticate` challenge.
fn with_client_challenge(result: Result<Outcome, Error>) -> Result<Outcome, Error> {
    match result {
        Err(e @ Error::Api(ApiError::InvalidClient(_))) => Ok(Response::from_error(&e)
            .header("WWW-Authenticate", "Basic realm=\"latchkey\"")
            .into()),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

fn token(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    app.check_serving()?;
    let form = Form::from_request(req)?;
    let now = app.now();
    let (client, _) = match auth::client_credentials(app, req, ctx, &form) {
        Ok(c) => c,
        Err(e) => {
            // Unauthenticated: counted, audited as one row per key and interval.
            let code = crate::error::WireError::from(&e).error;
            let claimed = claimed_client(req, &form);
            app.refusals.record(
                "token.refuse",
                &claimed,
                ctx.peer().ip(),
                code,
                &e.to_string(),
                now,
            );
            return with_client_challenge(Err(e));
        }
    };
    let issued = grant(app, &form, &client, now);
    let (body, jti) = match issued {
        Ok(v) => v,
        Err(e) => {
            audit_async(
                app,
                &client.id,
                "token.refuse",
                &client.id,
                AuditOutcome::Refused(e.to_string()),
                now,
            );
            return Err(e);
        }
    };
    let op = WriteOp::Audit {
        actor: client.id.clone(),
        event: "token.issue".into(),
        subject: format!("jti:{jti}"),
        outcome: AuditOutcome::Success,
        now,
    };
    Ok(super::write::submit(app, ctx, op, move |_: Audited| {
        Ok(Response::json(200, &body))
    }))
}

/// The checks after client authentication, and the token.
fn grant(
    app: &App,
    form: &Form<'_>,
    client: &crate::store::OperatorClientRecord,
    now: u64,
) -> Result<(Value, String), Error> {
    match form.get("grant_type") {
        None => {
            return Err(ApiError::InvalidRequest("missing parameter \"grant_type\"".into()).into());
        }
        Some("client_credentials") => {}
        Some(other) => {
            return Err(ApiError::UnsupportedGrantType(format!(
                "grant type {other:?} is not supported; operator clients use client_credentials"
            ))
            .into());
        }
    }
    let granted = auth::profile_permissions(app, &client.profile)?;
    let permissions = match form.get("scope") {
        None => granted,
        Some(scope) => {
            let names: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
            let asked = Permissions::parse(&names).map_err(ApiError::InvalidScope)?;
            if !asked.is_subset(granted) {
                return Err(
                    ApiError::InvalidScope("scope exceeds the client's profile".into()).into(),
                );
            }
            asked
        }
    };
    let claims = auth::operator_claims(app, client, permissions, now);
    let jti = claims.jti.clone().unwrap_or_default();
    let token = app.mint(
        app.settings.operator_alg,
        TokenType::OperatorAccessToken,
        &claims,
    )?;
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": app.settings.operator_token_lifetime,
        "scope": permissions.scope(),
        "jti": jti,
    });
    Ok((body, jti))
}

/// The client id a refused request claimed, for the audit log (bounded, never the secret).
fn claimed_client(req: &Request<'_>, form: &Form<'_>) -> String {
    let id = match super::basic(req) {
        Ok(Some((id, _))) => id,
        _ => form.get("client_id").unwrap_or("").to_owned(),
    };
    let mut id: String = id
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_AUDIT_ID)
        .collect();
    if id.is_empty() {
        id.push('-');
    }
    id
}

/// Appends an audit entry without waiting for it (refusals: the answer does not depend on it).
fn audit_async(
    app: &Arc<App>,
    actor: &str,
    event: &str,
    subject: &str,
    outcome: AuditOutcome,
    now: u64,
) {
    app.submit(
        WriteOp::Audit {
            actor: actor.into(),
            event: event.into(),
            subject: subject.into(),
            outcome,
            now,
        },
        |r| {
            if let Err(e) = r {
                tracing::error!(error = %e, "audit write failed");
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Keys and metadata

/// The key operator tokens are signed with now.
fn active_key(app: &App) -> Option<Arc<VerifyingKey>> {
    let snap = app.keys.snapshot();
    let kid = snap
        .minter(app.settings.operator_alg)?
        .key()
        .kid()
        .to_owned();
    snap.key(&kid).cloned()
}

/// The JWKS: every published key (see [`App::is_published`]), sorted by kid.
pub fn jwks(app: &App, now: u64) -> latchkey_core::JwkSet {
    let mut set = app.keys.snapshot().public_jwks();
    set.keys.retain(|k| {
        k.kid
            .as_deref()
            .is_none_or(|kid| app.is_published(kid, now))
    });
    with_certificates(app, &mut set);
    set
}

/// Adds `x5c` and `x5t#S256` to the keys that have a certificate (imported PKCS#12), so
/// verifiers that pin or validate the certificate find it in the key set.
pub fn with_certificates(app: &App, set: &mut latchkey_core::JwkSet) {
    use base64::Engine as _;
    let hot = app.store.hot();
    for jwk in &mut set.keys {
        let Some(key) = jwk.kid.as_deref().and_then(|kid| hot.signing_key(kid)) else {
            continue;
        };
        let Some(leaf) = key.certificate_chain.first() else {
            continue;
        };
        let std = base64::engine::general_purpose::STANDARD;
        jwk.x5c = Some(
            key.certificate_chain
                .iter()
                .map(|c| std.encode(c))
                .collect(),
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf);
        jwk.x5t_s256 = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest));
    }
}

/// A published key set (JWKS, `/token_keys`, `token_key`) with caching headers that follow
/// the key life cycle: `public, max-age` ([`App::key_cache_max_age`]) and an `ETag`, so a
/// consumer revalidates with `If-None-Match` for a 304 instead of the body.
pub fn key_set_response(
    req: &Request<'_>,
    value: &impl serde::Serialize,
    max_age: u64,
) -> Response {
    let body = match serde_json::to_vec(value) {
        Ok(b) => b,
        Err(e) => return Response::from_error(&Error::Io(std::io::Error::other(e))),
    };
    let hash = blake3::hash(&body);
    let tag: String = hash.as_bytes()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let etag = format!("\"{tag}\"");
    let matches = req.header("if-none-match").is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*")
    });
    let response = if matches {
        Response::new(304)
    } else {
        Response::new(200)
            .header("Content-Type", "application/json")
            .body(body)
    };
    response
        .header("Cache-Control", format!("public, max-age={max_age}"))
        .header("ETag", etag)
}

/// `GET /token_keys`: every published key in the UAA shape, the active operator key
/// first — the MindSphere SDK looks only at the first entry before refetching.
pub fn token_keys(app: &App) -> Value {
    let snap = app.keys.snapshot();
    let first = snap
        .minter(app.settings.operator_alg)
        .map(|m| m.key().kid().to_owned());
    let now = app.now();
    let mut keys: Vec<&Arc<VerifyingKey>> = snap
        .keys()
        .filter(|k| !k.is_secret() && k.kid().is_none_or(|kid| app.is_published(kid, now)))
        .collect();
    keys.sort_by_key(|k| (k.kid() != first.as_deref(), k.kid().map(str::to_owned)));
    let keys: Vec<Value> = keys.into_iter().filter_map(|k| uaa_key(k).ok()).collect();
    json!({ "keys": keys })
}

/// One key as UAA publishes it: the JWK members plus `value`, the PEM public key.
pub fn uaa_key(key: &VerifyingKey) -> Result<Value, Error> {
    let jwk = Jwk::from_public_key(key)?;
    let mut v = serde_json::to_value(&jwk).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    if let Value::Object(m) = &mut v {
        m.insert("value".into(), Value::String(key.to_pem()?));
    }
    Ok(v)
}

/// RFC 8414 authorization server metadata (also served as OpenID discovery).
pub fn metadata(app: &App) -> Value {
    let base = app.base_url();
    let algs: Vec<&str> = Algorithm::ALL
        .iter()
        .filter(|a| !a.is_hmac())
        .map(|a| a.as_str())
        .collect();
    let scopes: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
    json!({
        "issuer": app.issuer(),
        "token_endpoint": format!("{base}/oauth/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "bearer"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "bearer"],
        "scopes_supported": scopes,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
    })
}

// ---------------------------------------------------------------------------------------------
// Introspection (RFC 7662)

fn introspect(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    app.check_serving()?;
    let form = Form::from_request(req)?;
    let principal = auth::caller(app, req, ctx, &form)?;
    if principal.kind == PrincipalKind::Operator {
        principal.require(Permission::TokensIntrospect)?;
    }
    let token = form.require("token")?;
    let body = match inspect(app, token, app.now()) {
        Some(found) if visible(&principal, &found) => active_body(found.claims),
        _ => json!({ "active": false }),
    };
    Ok(Response::json(200, &body).into())
}

/// A token that verified (signature, claims, revocation), with who it belongs to.
#[derive(Debug)]
pub struct Inspected {
    pub claims: Claims,
    pub tenant: String,
    /// The client the token was issued to.
    pub owner: String,
    pub operator: bool,
}

/// Verifies any access token Latchkey mints (operator or agent). `None` for malformed,
/// expired, revoked, unknown-key or other-type tokens, and for operator tokens whose client
/// was deleted.
pub fn inspect(app: &App, token: &str, now: u64) -> Option<Inspected> {
    let parsed = UnverifiedToken::parse(token).ok()?;
    let operator = TokenType::OperatorAccessToken.accepts_header(parsed.header().typ());
    let (verified, effective) = if operator {
        let v = auth::verify_operator_token(app, token, now).ok()?;
        let p = auth::principal_of(app, &v)?;
        (v, Some(p.permissions))
    } else {
        let v = app
            .verify(token, &app.validation(TokenType::AccessToken), now)
            .ok()?;
        (v, None)
    };
    let mut claims = verified.into_claims();
    // An operator token can do only what its client's profile still grants: say that.
    if let Some(perms) = effective {
        let scope = perms.iter().map(|p| Value::from(p.as_str())).collect();
        claims.extra.insert("scope".into(), Value::Array(scope));
    }
    let tenant = claims.extra_str("ten")?.to_owned();
    let owner = claims
        .extra_str("client_id")
        .or(claims.sub.as_deref())?
        .to_owned();
    Some(Inspected {
        claims,
        tenant,
        owner,
        operator,
    })
}

/// Operators see their own tenant's tokens; agents only their own.
fn visible(p: &Principal, t: &Inspected) -> bool {
    match p.kind {
        PrincipalKind::Operator => p.tenant == t.tenant,
        PrincipalKind::Agent => owns(p, t),
    }
}

/// Whether `t` was issued to `p` itself. Agent ids and operator client ids are separate
/// namespaces, so the kind must match as well as the id and tenant.
fn owns(p: &Principal, t: &Inspected) -> bool {
    let operator_token = p.kind == PrincipalKind::Operator;
    t.operator == operator_token && p.client_id == t.owner && p.tenant == t.tenant
}

fn active_body(claims: Claims) -> Value {
    let mut m = match serde_json::to_value(&claims) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if let Some(Value::Array(items)) = m.get("scope") {
        let scope: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
        let scope = scope.join(" ");
        m.insert("scope".into(), Value::String(scope));
    }
    if !m.contains_key("client_id")
        && let Some(sub) = claims.sub
    {
        m.insert("client_id".into(), Value::String(sub));
    }
    m.insert("active".into(), Value::Bool(true));
    m.insert("token_type".into(), Value::String("Bearer".into()));
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Revocation (RFC 7009)

fn revoke(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    let form = Form::from_request(req)?;
    let principal = auth::caller(app, req, ctx, &form)?;
    let token = form.require("token")?;
    let now = app.now();
    // Unknown, malformed, expired or already revoked: nothing to do, and 200 (RFC 7009 §2.2).
    let Some(found) = inspect(app, token, now) else {
        return Ok(Response::new(200).into());
    };
    let own = owns(&principal, &found);
    if !own {
        if principal.kind == PrincipalKind::Agent || principal.tenant != found.tenant {
            // Another tenant's token is not revealed to exist.
            return Ok(Response::new(200).into());
        }
        if !principal.permissions.contains(Permission::TokensRevoke) {
            return Err(ApiError::Forbidden(
                "a client may revoke only its own tokens without the tokens:revoke permission"
                    .into(),
            )
            .into());
        }
    }
    let Some(jti) = found.claims.jti.clone() else {
        return Ok(Response::new(200).into());
    };
    let forget_after = found
        .claims
        .exp
        .unwrap_or(now)
        .saturating_add(app.settings.leeway);
    let op = WriteOp::Revoke {
        kind: RevocationKind::Token,
        id: jti,
        by: principal.client_id,
        reason: "revoked through the revocation endpoint".into(),
        now,
        forget_after,
    };
    Ok(super::write::submit(app, ctx, op, |_: RevocationRecord| {
        Ok(Response::new(200))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::AppSettings;
    use crate::http::Metrics;
    use crate::store::OperatorClientRecord;

    fn app() -> (tempfile::TempDir, Arc<App>) {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) =
            App::open(dir.path(), AppSettings::default(), Arc::new(Metrics::new())).unwrap();
        (dir, Arc::new(app))
    }

    #[test]
    fn token_keys_put_the_operator_key_first_and_carry_pem() {
        let (_dir, app) = app();
        let keys = token_keys(&app);
        let list = keys["keys"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        let active = app
            .keys
            .snapshot()
            .minter(Algorithm::RS256)
            .unwrap()
            .key()
            .kid()
            .to_owned();
        assert_eq!(list[0]["kid"], active.as_str());
        assert_eq!(list[0]["kty"], "RSA");
        assert_eq!(list[0]["alg"], "RS256");
        assert!(
            list[0]["value"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----\n")
        );
        assert!(list[0]["n"].is_string() && list[0]["e"] == "AQAB");
        // A published key is listed, but the key that signs still leads.
        let new = app.rotate_key(Algorithm::RS256, "t").unwrap();
        let list = token_keys(&app)["keys"].as_array().unwrap().clone();
        assert_eq!(list[0]["kid"], active.as_str());
        assert!(list.iter().any(|k| k["kid"] == new.kid.as_str()));
        // Once it signs, it leads and the old one is still listed.
        let new = app.rotate_key_now(Algorithm::RS256, "t").unwrap();
        let list = token_keys(&app)["keys"].as_array().unwrap().clone();
        assert_eq!(list[0]["kid"], new.kid.as_str());
        assert!(list.iter().any(|k| k["kid"] == active.as_str()));
    }

    #[test]
    fn operator_tokens_introspect_with_their_claims() {
        let (_dir, app) = app();
        let client = app.store.hot().operator_client("admin").unwrap();
        let now = app.now();
        let claims = auth::operator_claims(&app, &client, Permissions::READ_ONLY, now);
        let token = app
            .mint(Algorithm::RS256, TokenType::OperatorAccessToken, &claims)
            .unwrap();
        let found = inspect(&app, &token, now).unwrap();
        assert!(found.operator);
        assert_eq!(
            (found.owner.as_str(), found.tenant.as_str()),
            ("admin", "main")
        );
        let body = active_body(found.claims);
        assert_eq!(body["active"], true);
        assert_eq!(body["scope"], Permissions::READ_ONLY.scope());
        assert_eq!(body["client_id"], "admin");
        assert!(inspect(&app, "not.a.token", now).is_none());
        assert!(inspect(&app, &token, now + 7200).is_none(), "expired");
    }

    fn create_client(app: &App, id: &str, profile: &str) -> Arc<OperatorClientRecord> {
        app.write(WriteOp::CreateOperatorClient {
            record: OperatorClientRecord {
                id: id.into(),
                tenant: "main".into(),
                secret_hash: crate::store::SecretHash::usercube(b"secret"),
                display_name: id.into(),
                profile: profile.into(),
                created_at: 1,
                generation: 0,
                suspended_at: None,
                previous_secret_hash: None,
                previous_valid_until: 0,
            },
            by: "test".into(),
        })
        .unwrap();
        app.store.hot().operator_client(id).unwrap()
    }

    fn token_of(app: &App, client: &OperatorClientRecord, perms: Permissions) -> String {
        let claims = auth::operator_claims(app, client, perms, app.now());
        app.mint(Algorithm::RS256, TokenType::OperatorAccessToken, &claims)
            .unwrap()
    }

    #[test]
    fn operator_tokens_end_with_their_client_generation() {
        let (_dir, app) = app();
        let first = create_client(&app, "ops", crate::app::ADMINISTRATOR);
        assert_ne!(first.generation, 0);
        let token = token_of(&app, &first, Permissions::ALL);
        let now = app.now();
        assert!(inspect(&app, &token, now).is_some());
        // Deleted, then re-created under the same id (even with a weaker profile).
        app.write(WriteOp::DeleteOperatorClient {
            id: "ops".into(),
            by: "test".into(),
            now,
        })
        .unwrap();
        assert!(inspect(&app, &token, now).is_none());
        let second = create_client(&app, "ops", crate::app::READ_ONLY);
        assert_ne!(second.generation, first.generation);
        assert!(inspect(&app, &token, now).is_none(), "old generation");
        assert!(auth::operator_token(&app, &token, now).is_err());
        assert!(inspect(&app, &token_of(&app, &second, Permissions::READ_ONLY), now).is_some());
        // A token without the claim (minted before generations existed) binds to nothing.
        let mut claims = auth::operator_claims(&app, &second, Permissions::READ_ONLY, now);
        claims.extra.remove(auth::GENERATION_CLAIM);
        let bare = app
            .mint(Algorithm::RS256, TokenType::OperatorAccessToken, &claims)
            .unwrap();
        assert!(inspect(&app, &bare, now).is_none());
    }

    #[test]
    fn operator_token_scopes_shrink_with_the_client_profile() {
        let (_dir, app) = app();
        let both = Permissions::parse(&["agents:read", "agents:write"]).unwrap();
        let put = |perms: &[&str]| {
            app.write(WriteOp::PutProfile {
                record: crate::store::ProfileRecord {
                    name: "Ops".into(),
                    permissions: perms.iter().map(|p| p.to_string()).collect(),
                },
                by: "test".into(),
                now: 1,
            })
            .unwrap();
        };
        put(&["agents:read", "agents:write"]);
        let client = create_client(&app, "ops", "Ops");
        let token = token_of(&app, &client, both);
        let now = app.now();
        assert_eq!(
            auth::operator_token(&app, &token, now).unwrap().permissions,
            both
        );
        put(&["agents:read"]);
        let p = auth::operator_token(&app, &token, now).unwrap();
        assert_eq!(p.permissions.scope(), "agents:read");
        assert!(p.require(Permission::AgentsWrite).is_err());
        let body = active_body(inspect(&app, &token, now).unwrap().claims);
        assert_eq!(
            body["scope"], "agents:read",
            "introspection shows what it can do"
        );
        // Scopes never grow past the token's, whatever the profile grants later.
        put(&["agents:read", "agents:write", "keys:admin"]);
        assert_eq!(
            auth::operator_token(&app, &token, now).unwrap().permissions,
            both
        );
    }

    #[test]
    fn own_tokens_are_matched_by_kind_as_well_as_id() {
        let token = |operator| Inspected {
            claims: Claims::default(),
            tenant: "main".into(),
            owner: "x".into(),
            operator,
        };
        let principal = |kind| Principal {
            client_id: "x".into(),
            tenant: "main".into(),
            permissions: Permissions::EMPTY,
            kind,
        };
        let agent = principal(PrincipalKind::Agent);
        let operator = principal(PrincipalKind::Operator);
        assert!(owns(&agent, &token(false)) && owns(&operator, &token(true)));
        assert!(
            !owns(&agent, &token(true)),
            "an agent named like an operator client"
        );
        assert!(
            !owns(&operator, &token(false)),
            "an operator client named like an agent"
        );
        assert!(!visible(&agent, &token(true)));
        assert!(
            visible(&operator, &token(false)),
            "operators see their tenant's tokens"
        );
    }
}
