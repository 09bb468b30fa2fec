//! Who is calling: operator clients (Usercube-style OpenID clients with a profile) and agents.
//!
//! Operators authenticate at `POST /oauth/token` with their client secret and then call the
//! APIs with the bearer token they got; its `scope` is their profile's permissions at issue
//! time, and what it may do is that scope intersected with the profile as it is now.
//! [`operator`] turns a bearer token into a [`Principal`] or refuses: 401 when the token is
//! missing or does not verify (or its client was deleted or re-created since: the token's
//! `gen` must match the client record's generation), 403 when it lacks the permission.
//! Tenant isolation is the handlers' job: every lookup is scoped by
//! `Principal::tenant`, and another tenant's object answers 404, never 403, so its existence
//! does not leak.

use latchkey_core::claims::{Audience, Claims, TokenType};
use latchkey_core::jws::VerifiedToken;

use super::{Form, basic, bearer, form_unescape};
use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::{Request, RequestContext};
use crate::store::{OperatorClientRecord, SecretHash};

/// The permission vocabulary lives below the API (settings and first run use it too).
pub use crate::permissions::{Permission, Permissions};

/// What kind of caller a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Operator,
    Agent,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub client_id: String,
    pub tenant: String,
    pub permissions: Permissions,
    pub kind: PrincipalKind,
}

impl Principal {
    /// Refuses with 403 unless the principal holds `p`.
    pub fn require(&self, p: Permission) -> Result<(), Error> {
        if self.permissions.contains(p) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this token lacks the {p} permission")).into())
        }
    }

    /// Whether the principal belongs to the authority's own (default) tenant, which alone may
    /// manage global things: signing keys, the audit log, clients of other tenants.
    pub fn is_authority(&self, app: &App) -> bool {
        self.kind == PrincipalKind::Operator && self.tenant == app.settings.default_tenant
    }
}

/// The operator bearer token of `req`, checked for `need`: 401 when missing or invalid, 403
/// when the permission is missing.
pub fn operator(app: &App, req: &Request<'_>, need: Permission) -> Result<Principal, Error> {
    let token = bearer(req).ok_or_else(|| invalid_token("a bearer token is required"))?;
    let principal = operator_token(app, token, app.now())?;
    principal.require(need)?;
    Ok(principal)
}

/// Verifies an operator access token and checks that its client still exists.
pub fn operator_token(app: &App, token: &str, now: u64) -> Result<Principal, Error> {
    let verified = verify_operator_token(app, token, now)
        .map_err(|e| invalid_token(&format!("operator token refused: {e}")))?;
    principal_of(app, &verified)
        .ok_or_else(|| invalid_token("operator token refused: unknown client"))
}

/// Signature, type, issuer, audience, lifetime and revocation of an operator token.
pub fn verify_operator_token(app: &App, token: &str, now: u64) -> Result<VerifiedToken, Error> {
    let mut v = app.validation(TokenType::OperatorAccessToken);
    v.audiences = vec![app.issuer().to_owned()];
    app.verify(token, &v, now)
}

/// The principal a verified operator token names, if its client still exists in the same
/// tenant and generation: deleting a client, re-creating it under the same id or changing its
/// secret ends its tokens at once. Its permissions are the token's scopes that the client's
/// profile still grants, so narrowing a profile (or moving the client to a weaker one) narrows
/// tokens already out.
pub fn principal_of(app: &App, verified: &VerifiedToken) -> Option<Principal> {
    let claims = verified.claims();
    let sub = claims.sub.as_deref()?;
    let tenant = claims.extra_str("ten")?;
    let generation = claims.extra.get(GENERATION_CLAIM)?.as_u64()?;
    let client = app.store.hot().operator_client(sub)?;
    if client.tenant != tenant || client.generation != generation || client.suspended_at.is_some() {
        return None;
    }
    // A used profile cannot be deleted; should it be missing anyway, the token grants nothing.
    let profile = profile_permissions(app, &client.profile).unwrap_or(Permissions::EMPTY);
    Some(Principal {
        client_id: sub.to_owned(),
        tenant: tenant.to_owned(),
        permissions: scopes(claims).intersect(profile),
        kind: PrincipalKind::Operator,
    })
}

/// The operator token claim holding the client's generation ([`OperatorClientRecord`]).
pub const GENERATION_CLAIM: &str = "gen";

/// The permissions in a token's `scope` claim (array or space-separated string).
pub fn scopes(claims: &Claims) -> Permissions {
    match claims.extra.get("scope") {
        Some(serde_json::Value::Array(items)) => {
            let names: Vec<&str> = items.iter().filter_map(|v| v.as_str()).collect();
            Permissions::lenient(&names)
        }
        Some(serde_json::Value::String(s)) => {
            let names: Vec<&str> = s.split(' ').collect();
            Permissions::lenient(&names)
        }
        _ => Permissions::EMPTY,
    }
}

/// Claims of an operator access token for `client` with `permissions`.
pub fn operator_claims(
    app: &App,
    client: &OperatorClientRecord,
    permissions: Permissions,
    now: u64,
) -> Claims {
    let mut claims = app.base_claims(
        &client.id,
        Audience::One(app.issuer().to_owned()),
        app.settings.operator_token_lifetime,
        now,
    );
    let scope: Vec<serde_json::Value> = permissions
        .iter()
        .map(|p| serde_json::Value::from(p.as_str()))
        .collect();
    claims
        .extra
        .insert("client_id".into(), client.id.clone().into());
    claims
        .extra
        .insert("ten".into(), client.tenant.clone().into());
    claims
        .extra
        .insert(GENERATION_CLAIM.into(), client.generation.into());
    claims
        .extra
        .insert("scope".into(), serde_json::Value::Array(scope));
    claims
}

/// How a client authenticated at an OAuth endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// `Authorization: Basic` (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// Authenticates an operator client by its secret, from `Authorization: Basic` or the form
/// (`client_secret_post`). Using both is refused (RFC 6749 §2.3). Unknown clients and wrong
/// secrets are indistinguishable to the caller: 401 `invalid_client`.
pub fn client_credentials(
    app: &App,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
    form: &Form<'_>,
) -> Result<(std::sync::Arc<OperatorClientRecord>, ClientAuthMethod), Error> {
    let from_basic = basic(req)?;
    let posted = form.get("client_secret");
    let (id, secret, method) = match (from_basic, posted) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest(
                "use one client authentication method, not two".into(),
            )
            .into());
        }
        (Some((id, secret)), None) => (id, secret, ClientAuthMethod::Basic),
        (None, Some(secret)) => {
            let id = form
                .get("client_id")
                .ok_or_else(|| invalid_client("client_id is required with client_secret"))?;
            (
                id.to_owned(),
                zeroize::Zeroizing::new(secret.to_owned()),
                ClientAuthMethod::Post,
            )
        }
        (None, None) => return Err(invalid_client("client authentication is required")),
    };
    if let Some(form_id) = form.get("client_id")
        && method == ClientAuthMethod::Basic
        && form_id != id
    {
        return Err(ApiError::InvalidRequest(
            "client_id does not match the authenticated client".into(),
        )
        .into());
    }
    // Ids longer than any stored one cannot match a client: not worth a table entry.
    let tracked = id.len() <= crate::store::MAX_ID_BYTES;
    let now = std::time::Instant::now();
    let source = super::throttle::source_key(ctx.peer().ip());
    if let Some(wait) = app.source_throttle.check(&source, now) {
        let ip = ctx.peer().ip().to_string();
        return Err(super::throttle::refuse(
            app,
            &app.source_throttle,
            "source",
            &ip,
            wait,
        ));
    }
    if tracked && let Some(wait) = app.client_throttle.check(&id, now) {
        return Err(super::throttle::refuse(
            app,
            &app.client_throttle,
            "client",
            &id,
            wait,
        ));
    }
    match authenticate(app, &id, &secret, method) {
        // Said only to a caller that proved the secret.
        Some(c) if c.suspended_at.is_some() => {
            app.client_throttle.success(&id);
            Err(invalid_client(
                "this client is suspended; an operator must resume it",
            ))
        }
        Some(c) => {
            app.client_throttle.success(&id);
            Ok((c, method))
        }
        None => {
            app.source_throttle.failure_of(&source, &id, now);
            if tracked {
                app.client_throttle.failure(&id, now);
            }
            Err(invalid_client("unknown client or wrong secret"))
        }
    }
}

/// Checks a client secret. Basic credentials are tried as sent and, if that fails and they
/// contain escapes, form-decoded (RFC 6749 §2.3.1 asks clients to encode; most do not).
fn authenticate(
    app: &App,
    id: &str,
    secret: &str,
    method: ClientAuthMethod,
) -> Option<std::sync::Arc<OperatorClientRecord>> {
    let lookup = |id: &str| app.store.hot().operator_client(id);
    let check = |client: Option<std::sync::Arc<OperatorClientRecord>>, secret: &str| match client {
        Some(c) if c.secret_matches(secret.as_bytes(), app.now()) => Some(c),
        Some(_) => None,
        None => {
            // Same work for unknown clients, so timing does not reveal which ids exist.
            let _ = dummy_hash().verify(secret.as_bytes());
            None
        }
    };
    if let Some(c) = check(lookup(id), secret) {
        return Some(c);
    }
    if method == ClientAuthMethod::Basic && (id.contains(['%', '+']) || secret.contains(['%', '+']))
    {
        let id = form_unescape(id)?;
        let secret = zeroize::Zeroizing::new(form_unescape(secret)?);
        return check(lookup(&id), &secret);
    }
    None
}

fn dummy_hash() -> &'static SecretHash {
    static DUMMY: std::sync::OnceLock<SecretHash> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| SecretHash::usercube(b"latchkey dummy secret"))
}

/// A caller of introspection or revocation: an operator client (secret or bearer token) or
/// an agent presenting its own access token. A certificate-bound bearer token (RFC 8705
/// `cnf`) counts only on a connection that presents that certificate.
pub fn caller(
    app: &App,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
    form: &Form<'_>,
) -> Result<Principal, Error> {
    if let Some(token) = bearer(req) {
        app.check_serving()?;
        let now = app.now();
        let refused = || invalid_token("bearer token refused");
        let (verified, principal) = match verify_operator_token(app, token, now) {
            Ok(v) => {
                let p = principal_of(app, &v).ok_or_else(refused)?;
                (v, p)
            }
            Err(_) => agent_token(app, token, now).ok_or_else(refused)?,
        };
        if !bound_to_connection(app, verified.claims(), ctx) {
            return Err(invalid_token(
                "this token is bound to a client certificate that this connection did not present",
            ));
        }
        return Ok(principal);
    }
    let (client, _) = client_credentials(app, req, ctx, form)?;
    let permissions = profile_permissions(app, &client.profile)?;
    Ok(Principal {
        client_id: client.id.clone(),
        tenant: client.tenant.clone(),
        permissions,
        kind: PrincipalKind::Operator,
    })
}

/// An agent's access token as a principal (no operator permissions).
fn agent_token(app: &App, token: &str, now: u64) -> Option<(VerifiedToken, Principal)> {
    let verified = app
        .verify(token, &app.validation(TokenType::AccessToken), now)
        .ok()?;
    let claims = verified.claims();
    let client_id = claims
        .extra_str("client_id")
        .or(claims.sub.as_deref())?
        .to_owned();
    let tenant = claims.extra_str("ten")?.to_owned();
    let principal = Principal {
        client_id,
        tenant,
        permissions: Permissions::EMPTY,
        kind: PrincipalKind::Agent,
    };
    Some((verified, principal))
}

/// RFC 8705 §3: a token with a `cnf` claim is usable only by the holder of the certificate
/// whose `x5t#S256` it names, i.e. on a connection that presented that certificate (still
/// trusted: re-checked like at the token endpoint). A token without `cnf` is a plain bearer
/// token; a `cnf` of any other shape is refused rather than ignored.
fn bound_to_connection(app: &App, claims: &Claims, ctx: &RequestContext<'_>) -> bool {
    use subtle::ConstantTimeEq as _;
    let Some(cnf) = claims.extra.get("cnf") else {
        return true;
    };
    let Some(want) = cnf.get("x5t#S256").and_then(serde_json::Value::as_str) else {
        return false;
    };
    match super::mtls_client_auth::client_certificate(app, ctx) {
        Ok(Some(cert)) => bool::from(cert.thumbprint().as_bytes().ct_eq(want.as_bytes())),
        _ => false,
    }
}

/// The permissions of a profile now (from a store snapshot).
pub fn profile_permissions(app: &App, profile: &str) -> Result<Permissions, Error> {
    let rec = app
        .store
        .read()?
        .profile(profile)?
        .ok_or_else(|| invalid_client("the client's profile no longer exists"))?;
    Ok(Permissions::lenient(&rec.permissions))
}

fn invalid_token(msg: &str) -> Error {
    ApiError::InvalidToken(msg.to_owned()).into()
}

fn invalid_client(msg: &str) -> Error {
    ApiError::InvalidClient(msg.to_owned()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names_round_trip_and_typos_are_refused() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert_eq!(
            Permissions::parse(&["agents:read", "audit:read"])
                .unwrap()
                .scope(),
            "agents:read audit:read"
        );
        assert!(
            Permissions::parse(&["agents:raed"])
                .unwrap_err()
                .contains("agents:raed")
        );
        assert_eq!(
            Permissions::lenient(&["agents:raed", "keys:admin"]).scope(),
            "keys:admin"
        );
    }

    #[test]
    fn read_only_holds_no_write_permission() {
        for p in [
            Permission::AgentsWrite,
            Permission::ClientsAdmin,
            Permission::KeysAdmin,
            Permission::TokensRevoke,
        ] {
            assert!(!Permissions::READ_ONLY.contains(p), "{p}");
            assert!(Permissions::ALL.contains(p), "{p}");
        }
        assert!(Permissions::READ_ONLY.is_subset(Permissions::ALL));
        assert!(!Permissions::ALL.is_subset(Permissions::READ_ONLY));
        assert_eq!(Permissions::ALL.iter().count(), Permission::ALL.len());
    }

    #[test]
    fn scopes_read_arrays_and_strings() {
        let mut c = Claims::default();
        c.extra
            .insert("scope".into(), serde_json::json!(["agents:read", "x"]));
        assert_eq!(scopes(&c).scope(), "agents:read");
        c.extra
            .insert("scope".into(), serde_json::json!("agents:write audit:read"));
        assert_eq!(scopes(&c).scope(), "agents:write audit:read");
        c.extra.insert("scope".into(), serde_json::json!(7));
        assert_eq!(scopes(&c), Permissions::EMPTY);
    }
}
