//! Operator clients and profiles under `/api/latchkey/v1`: list, create, delete, suspend,
//! resume clients and rotate their secrets; list, put and delete profiles. Every call needs an operator bearer token with
//! `clients:read` or `clients:admin`.
//!
//! Tenants: a client sees and manages only its own tenant's clients; profiles are global, so
//! changing them is reserved to clients of the authority's own tenant — to anyone else they
//! do not exist (404). Nobody grants what it does not hold: a new client's profile, an edited
//! profile and a deleted client are all bounded by the caller's own permissions.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{self, Permission, Permissions, Principal};
use super::operator::{PREFIX, authority, not_found};
use super::{Route, json_body, validate, write};
use crate::app::{self, App};
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response, Router};
use crate::store::{OperatorClientRecord, ProfileRecord, SecretHash, SecretRotation, WriteOp};

pub fn routes(router: &mut Router, app: &Arc<App>) {
    let table: [(&str, &str, Route<App>); 9] = [
        ("GET", "/clients", list_clients),
        ("POST", "/clients", create_client),
        ("DELETE", "/clients/{id}", delete_client),
        ("POST", "/clients/{id}/suspend", |a, r, c| {
            suspension(a, r, c, true)
        }),
        ("POST", "/clients/{id}/resume", |a, r, c| {
            suspension(a, r, c, false)
        }),
        ("POST", "/clients/{id}/rotate-secret", rotate_secret),
        ("GET", "/profiles", list_profiles),
        ("PUT", "/profiles/{name}", put_profile),
        ("DELETE", "/profiles/{name}", delete_profile),
    ];
    super::register(router, app, PREFIX, &table);
}

/// An operator client as the API shows it (never the secret or its hash).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientView {
    pub client_id: String,
    pub tenant: String,
    pub display_name: String,
    pub profile: String,
    pub hash_scheme: String,
    pub created_at: u64,
    /// Suspended clients get no token and their tokens are refused.
    #[serde(default)]
    pub suspended: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_at: Option<u64>,
    /// Until when the secret a rotation replaced still works (absent when none is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<u64>,
}

impl From<&OperatorClientRecord> for ClientView {
    fn from(c: &OperatorClientRecord) -> Self {
        ClientView {
            client_id: c.id.clone(),
            tenant: c.tenant.clone(),
            display_name: c.display_name.clone(),
            profile: c.profile.clone(),
            hash_scheme: c.secret_hash.scheme().to_owned(),
            created_at: c.created_at,
            suspended: c.suspended_at.is_some(),
            suspended_at: c.suspended_at,
            previous_valid_until: c
                .previous_secret_hash
                .as_ref()
                .map(|_| c.previous_valid_until),
        }
    }
}

fn list_clients(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::ClientsRead)?;
    let all = p.is_authority(app);
    let job = Arc::clone(app);
    super::offload::run(app, ctx, move || {
        let clients: Vec<ClientView> = job
            .store
            .read()?
            .operator_clients()?
            .iter()
            .filter(|c| all || c.tenant == p.tenant)
            .map(ClientView::from)
            .collect();
        Ok(Response::json(200, &json!({ "clients": clients })))
    })
}

/// `POST /clients` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    pub client_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    /// A hash made with `latchkey hash-secret`; without one a secret is generated and returned
    /// once.
    #[serde(default)]
    pub hashed_secret: Option<String>,
}

impl NewClient {
    /// Every field that reaches the store or the audit log has its documented shape.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate::CLIENT_ID.check(&self.client_id)?;
        validate::DISPLAY_NAME.check_opt(self.display_name.as_deref())?;
        validate::PROFILE.check_opt(self.profile.as_deref())?;
        validate::TENANT.check_opt(self.tenant.as_deref())?;
        Ok(())
    }
}

fn create_client(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::ClientsAdmin)?;
    let new: NewClient = json_body(req)?;
    new.validate()?;
    let tenant = new.tenant.unwrap_or_else(|| p.tenant.clone());
    if tenant != p.tenant && !p.is_authority(app) {
        return Err(not_found("tenant"));
    }
    if !app.tenant_exists(&tenant) {
        return Err(ApiError::InvalidRequest(format!("tenant {tenant:?} does not exist")).into());
    }
    let profile = new.profile.unwrap_or_else(|| app::READ_ONLY.to_owned());
    // A client cannot hand out more than it holds.
    let granted = auth::profile_permissions(app, &profile)
        .map_err(|_| ApiError::InvalidRequest(format!("profile {profile:?} does not exist")))?;
    if !granted.is_subset(p.permissions) {
        return Err(ApiError::Forbidden(format!(
            "profile {profile:?} grants more than this token holds"
        ))
        .into());
    }
    let (hash, secret) = match new.hashed_secret {
        Some(h) => (SecretHash::parse(&h)?, None),
        None => {
            let s = app::generate_secret()?;
            (SecretHash::blake3(s.as_bytes())?, Some(s))
        }
    };
    let record = OperatorClientRecord {
        id: new.client_id.clone(),
        tenant,
        secret_hash: hash,
        display_name: new.display_name.unwrap_or_else(|| new.client_id.clone()),
        profile,
        created_at: app.now(),
        generation: 0, // drawn by the store
        suspended_at: None,
        previous_secret_hash: None,
        previous_valid_until: 0,
    };
    let op = WriteOp::CreateOperatorClient {
        record,
        by: p.client_id,
    };
    Ok(write::submit(
        app,
        ctx,
        op,
        move |c: OperatorClientRecord| {
            Ok(Response::json(
                201,
                &view_with_secret(&c, secret.as_ref().map(|s| s.as_str())),
            ))
        },
    ))
}

/// A client as the API shows it, with its new secret when one was just made (shown once).
fn view_with_secret(c: &OperatorClientRecord, secret: Option<&str>) -> serde_json::Value {
    let mut body = serde_json::to_value(ClientView::from(c)).unwrap_or_default();
    if let (Some(s), serde_json::Value::Object(m)) = (secret, &mut body) {
        m.insert(
            "client_secret".into(),
            serde_json::Value::String(s.to_owned()),
        );
    }
    body
}

fn delete_client(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::ClientsAdmin)?;
    let id = validate::CLIENT_ID.lookup(req.param("id").unwrap_or(""))?;
    within_reach(app, &p, id, "delete")?;
    let op = WriteOp::DeleteOperatorClient {
        id: id.to_owned(),
        by: p.client_id,
        now: app.now(),
    };
    Ok(write::submit(app, ctx, op, |_: OperatorClientRecord| {
        Ok(Response::new(204))
    }))
}

/// The client `id` if `p` may change it: visible to it (its tenant, or any for the authority)
/// and holding no more than it does (like profiles: a stronger client is out of its reach).
fn within_reach(
    app: &App,
    p: &Principal,
    id: &str,
    verb: &str,
) -> Result<Arc<OperatorClientRecord>, Error> {
    let client = match app.store.hot().operator_client(id) {
        Some(c) if c.tenant == p.tenant || p.is_authority(app) => c,
        _ => return Err(not_found("client")),
    };
    let held = auth::profile_permissions(app, &client.profile).unwrap_or(Permissions::EMPTY);
    if !held.is_subset(p.permissions) {
        return Err(ApiError::Forbidden(format!(
            "client {id:?} holds more than this token; only a client holding as much may {verb} it"
        ))
        .into());
    }
    Ok(client)
}

/// `POST /clients/{id}/suspend` and `/resume`. A suspension ends the client's tokens for
/// good (a new generation) and refuses its token requests; its record, secret and profile
/// stay, so a resume lets it ask for tokens again. No client suspends itself: it could not
/// resume itself either.
fn suspension(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
    suspend: bool,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::ClientsAdmin)?;
    let id = validate::CLIENT_ID.lookup(req.param("id").unwrap_or(""))?;
    let verb = if suspend { "suspend" } else { "resume" };
    within_reach(app, &p, id, verb)?;
    if suspend && id == p.client_id {
        return Err(ApiError::Forbidden(
            "a client cannot suspend itself; another administrator must".into(),
        )
        .into());
    }
    let op = WriteOp::SuspendOperatorClient {
        id: id.to_owned(),
        suspend,
        by: p.client_id,
        now: app.now(),
    };
    Ok(write::submit(app, ctx, op, |c: OperatorClientRecord| {
        Ok(Response::json(200, &ClientView::from(&c)))
    }))
}

/// `POST /clients/{id}/rotate-secret` body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRotationBody {
    /// Seconds the replaced secret keeps working [default: `[tokens] client-secret-grace`];
    /// 0 ends it at once.
    #[serde(default)]
    pub grace: Option<u64>,
}

/// `POST /clients/{id}/rotate-secret`: a new generated secret, shown once; the replaced one
/// keeps working for the grace period. Tokens already issued stay valid until they expire
/// (the generation does not change). A client may rotate its own secret. Clients declared in
/// the settings file are refused: the file is their source and would undo the rotation.
fn rotate_secret(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::ClientsAdmin)?;
    let id = validate::CLIENT_ID.lookup(req.param("id").unwrap_or(""))?;
    let body: SecretRotationBody = if req.body().is_empty() {
        SecretRotationBody::default()
    } else {
        json_body(req)?
    };
    within_reach(app, &p, id, "rotate the secret of")?;
    if app.settings.clients.iter().any(|c| c.identifier == id) {
        return Err(ApiError::Conflict(format!(
            "client {id:?} is declared in the settings file; change its hashed-secret there"
        ))
        .into());
    }
    let max = app.settings.client_secret_grace_max;
    let grace = body.grace.unwrap_or(app.settings.client_secret_grace);
    if grace > max {
        return Err(ApiError::InvalidRequest(format!(
            "grace must be at most {max} seconds (tokens.client-secret-grace-max)"
        ))
        .into());
    }
    let secret = app::generate_secret()?;
    let now = app.now();
    let op = WriteOp::RotateOperatorClientSecret(SecretRotation {
        id: id.to_owned(),
        secret_hash: SecretHash::blake3(secret.as_bytes())?,
        grace_until: now.saturating_add(grace),
        by: p.client_id,
        now,
    });
    Ok(write::submit(
        app,
        ctx,
        op,
        move |c: OperatorClientRecord| {
            Ok(Response::json(
                200,
                &view_with_secret(&c, Some(secret.as_str())),
            ))
        },
    ))
}

fn list_profiles(
    app: &Arc<App>,
    req: &Request<'_>,
    _: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    auth::operator(app, req, Permission::ClientsRead)?;
    let profiles: Vec<serde_json::Value> = app
        .store
        .read()?
        .profiles()?
        .into_iter()
        .map(|p| json!({ "name": p.name, "permissions": p.permissions }))
        .collect();
    Ok(Response::json(200, &json!({ "profiles": profiles })).into())
}

/// Whether `p` may edit or delete profile `name`: not the one its own client uses (that would
/// change its own permissions), and not one that grants more than its token holds (it could
/// not have created it, so it may not reshape it either, e.g. to demote a stronger client).
fn may_change_profile(app: &App, p: &Principal, name: &str) -> Result<(), Error> {
    let own = app
        .store
        .hot()
        .operator_client(&p.client_id)
        .is_some_and(|c| c.profile == name);
    if own {
        return Err(ApiError::Forbidden(format!(
            "profile {name:?} is this client's own profile; another administrator must change it"
        ))
        .into());
    }
    if let Some(existing) = app.store.read()?.profile(name)?
        && !Permissions::lenient(&existing.permissions).is_subset(p.permissions)
    {
        return Err(ApiError::Forbidden(format!(
            "profile {name:?} grants more than this token holds"
        ))
        .into());
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    permissions: Vec<String>,
}

fn put_profile(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::ClientsAdmin)?;
    authority(app, &p, "profile")?;
    let name = validate::PROFILE
        .check(req.param("name").unwrap_or(""))?
        .to_owned();
    if name == app::ADMINISTRATOR || name == app::READ_ONLY {
        return Err(ApiError::Conflict(format!("profile {name:?} is built in")).into());
    }
    let body: ProfileBody = json_body(req)?;
    let perms = Permissions::parse(&body.permissions).map_err(ApiError::InvalidRequest)?;
    may_change_profile(app, &p, &name)?;
    if !perms.is_subset(p.permissions) {
        return Err(ApiError::Forbidden(format!(
            "profile {name:?} would grant more than this token holds"
        ))
        .into());
    }
    let permissions: Vec<String> = perms.iter().map(|p| p.as_str().to_owned()).collect();
    let op = WriteOp::PutProfile {
        record: ProfileRecord {
            name: name.clone(),
            permissions: permissions.clone(),
        },
        by: p.client_id,
        now: app.now(),
    };
    Ok(write::submit(app, ctx, op, move |_: ProfileRecord| {
        Ok(Response::json(
            200,
            &json!({ "name": name, "permissions": permissions }),
        ))
    }))
}

fn delete_profile(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::ClientsAdmin)?;
    authority(app, &p, "profile")?;
    let name = validate::PROFILE
        .lookup(req.param("name").unwrap_or(""))?
        .to_owned();
    if name == app::ADMINISTRATOR || name == app::READ_ONLY {
        return Err(ApiError::Conflict(format!("profile {name:?} is built in")).into());
    }
    may_change_profile(app, &p, &name)?;
    let op = WriteOp::DeleteProfile {
        name,
        by: p.client_id,
        now: app.now(),
    };
    Ok(write::submit(app, ctx, op, |_: ProfileRecord| {
        Ok(Response::new(204))
    }))
}
