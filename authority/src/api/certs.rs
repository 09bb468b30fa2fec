//! The operator's trust-store endpoints under `/api/latchkey/v1/certificates` (RFC 8705
//! client authentication of agents by these certificates is in `mtls_client_auth.rs`).
//!
//! List, import (trust) under a unique alias, issue from a CSR with the
//! authority's CA (`usage`: client, server, encryption), renew, rename, revoke by alias or
//! fingerprint, fetch the CA certificate agents must trust, and the CA's CRL (public). An
//! import takes PEM text (`pem`) or a file's bytes in base64 (`file`: PEM, DER or PKCS#12 with
//! `password`, told by content); `ca: true` makes it an anchor rather than a pin. Each change
//! is one store op; `App::submit` rebuilds the TLS trust before the answer leaves, so the next
//! handshake already sees it. The same `plan_*` functions serve the CLI on a stopped data
//! directory.

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::{self, Permission};
use super::operator::PREFIX;
use super::{Route, json_body, validate, write};
use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response, Router};
use crate::pki::{self, CaSigner, CertInfo, IssueRequest};
use crate::store::outcome::FromOutcome;
use crate::store::{
    CertificateKind, CertificateRecord, CertificateState, NewCertificate, RevocationKind,
    RevocationRecord, WriteOp, WriteOutcome,
};

/// Default validity of issued agent certificates.
pub const DEFAULT_DAYS: u32 = 365;

pub fn routes(router: &mut Router, app: &Arc<App>) {
    let table: [(&str, &str, Route<App>); 8] = [
        ("GET", "/certificates", list),
        ("POST", "/certificates", import),
        ("GET", "/certificates/ca", ca),
        ("GET", "/certificates/crl", crl),
        ("POST", "/certificates/issue", issue),
        ("POST", "/certificates/{alias}/renew", renew),
        ("POST", "/certificates/{alias}/revoke", revoke),
        ("POST", "/certificates/{alias}/rename", rename),
    ];
    super::register(router, app, PREFIX, &table);
}

fn bad(msg: impl Into<String>) -> Error {
    ApiError::InvalidRequest(msg.into()).into()
}

/// Global trust is the authority tenant's business; others see nothing (404).
fn admin(app: &App, req: &Request<'_>, need: Permission) -> Result<String, Error> {
    let p = auth::operator(app, req, need)?;
    if !p.is_authority(app) {
        return Err(ApiError::NotFound("certificates not found".into()).into());
    }
    Ok(p.client_id)
}

/// What a trust-store op answers with: the certificate it changed, or the revocation of a
/// fingerprint the store holds no certificate for.
enum Changed {
    Certificate(CertificateRecord),
    Revocation(RevocationRecord),
}

impl FromOutcome for Changed {
    const EXPECTED: &'static str = "certificate or revocation";
    fn take(outcome: WriteOutcome) -> Option<Self> {
        match outcome {
            WriteOutcome::Certificate(rec) => Some(Changed::Certificate(rec)),
            WriteOutcome::Revocation(r) => Some(Changed::Revocation(r)),
            _ => None,
        }
    }
}

/// Renders what a trust-store op changed, with `extra` fields added.
fn changed_view(
    app: &Arc<App>,
    extra: Value,
) -> impl FnOnce(Changed) -> Result<Response, Error> + Send + 'static {
    let app = Arc::clone(app);
    move |changed| {
        let mut v = match changed {
            Changed::Certificate(rec) => {
                serde_json::to_value(CertView::new(&app, &rec, false)).unwrap_or_default()
            }
            Changed::Revocation(r) => json!({
                "fingerprint": r.id, "state": "revoked", "revoked_at": r.revoked_at,
            }),
        };
        if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
            m.extend(e);
        }
        Ok(Response::json(200, &v))
    }
}

fn list(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    admin(app, req, Permission::KeysRead)?;
    let job = Arc::clone(app);
    super::offload::run(app, ctx, move || {
        Ok(Response::json(
            200,
            &json!({ "certificates": views(&job)? }),
        ))
    })
}

fn ca(app: &Arc<App>, req: &Request<'_>, _: &RequestContext<'_>) -> Result<Outcome, Error> {
    admin(app, req, Permission::KeysRead)?;
    let path = crate::tls::CertFiles::in_dir(&app.store.paths().dir).ca_cert;
    let pem = std::fs::read_to_string(&path)
        .map_err(|_| ApiError::NotFound("this server has no CA of its own".into()))?;
    Ok(Response::json(200, &json!({ "pem": pem })).into())
}

/// The CA's CRL (DER, `application/pkix-crl`). No authentication: a CRL is signed, public
/// information (it lists serial numbers and dates only), and relays checking offline fetch it
/// without operator credentials, as they would from any CA's distribution point.
fn crl(app: &Arc<App>, _: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    let job = Arc::clone(app);
    super::offload::run(app, ctx, move || {
        let der = job.mtls.crl(&job)?;
        Ok(Response::new(200)
            .header("Content-Type", "application/pkix-crl")
            .body(der.to_vec()))
    })
}

fn import(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    let by = admin(app, req, Permission::KeysAdmin)?;
    let body: ImportBody = json_body(req)?;
    let op = plan_import(app, &body, &by)?;
    Ok(write::submit(app, ctx, op, changed_view(app, json!({}))))
}

fn issue(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    let by = admin(app, req, Permission::KeysAdmin)?;
    let body: IssueBody = json_body(req)?;
    let (op, pem) = plan_issue(app, &body, &by)?;
    Ok(write::submit(
        app,
        ctx,
        op,
        changed_view(app, json!({ "pem": pem })),
    ))
}

fn renew(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    let by = admin(app, req, Permission::KeysAdmin)?;
    let alias = req.param("alias").unwrap_or("");
    let body: RenewBody = json_body(req)?;
    let (op, pem) = plan_renew(app, alias, &body, &by)?;
    Ok(write::submit(
        app,
        ctx,
        op,
        changed_view(app, json!({ "pem": pem })),
    ))
}

fn revoke(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    let by = admin(app, req, Permission::KeysAdmin)?;
    let op = plan_revoke(app, req.param("alias").unwrap_or(""), &by)?;
    Ok(write::submit(app, ctx, op, changed_view(app, json!({}))))
}

fn rename(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    let by = admin(app, req, Permission::KeysAdmin)?;
    let body: RenameBody = json_body(req)?;
    let op = plan_rename(app, req.param("alias").unwrap_or(""), &body, &by)?;
    Ok(write::submit(app, ctx, op, changed_view(app, json!({}))))
}

// ---------------------------------------------------------------------------------------------
// Plans shared by the API and the CLI

/// A certificate as `cert list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertView {
    pub alias: String,
    pub kind: String,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub fingerprint: String,
    pub not_after: u64,
    /// `valid`, `revoked` or `expired`.
    pub state: String,
    pub created_at: u64,
}

impl CertView {
    pub fn new(app: &App, r: &CertificateRecord, revoked: bool) -> CertView {
        let parsed = CertInfo::parse(r.der.clone().into()).ok();
        let state = if revoked || r.state == CertificateState::Revoked {
            "revoked"
        } else if app.now() > r.not_after {
            "expired"
        } else {
            "valid"
        };
        CertView {
            alias: r.alias.clone(),
            kind: kind_name(r.kind).to_owned(),
            subject: r.subject.clone(),
            issuer: parsed
                .as_ref()
                .map(|p| p.issuer.clone())
                .unwrap_or_default(),
            sans: parsed.map(|p| p.sans).unwrap_or_default(),
            fingerprint: r.fingerprint.clone(),
            not_after: r.not_after,
            state: state.to_owned(),
            created_at: r.created_at,
        }
    }
}

fn kind_name(k: CertificateKind) -> &'static str {
    match k {
        CertificateKind::Authority => "authority",
        CertificateKind::Server => "server",
        CertificateKind::Agent => "agent",
        CertificateKind::Trusted => "trusted",
        CertificateKind::TrustedCa => "trusted-ca",
    }
}

/// Every certificate in the trust store.
pub fn views(app: &App) -> Result<Vec<CertView>, Error> {
    let snap = app.store.read()?;
    let revoked: std::collections::HashSet<String> = snap
        .revocations()?
        .into_iter()
        .filter(|r| r.kind == RevocationKind::Certificate)
        .map(|r| r.id)
        .collect();
    Ok(snap
        .certificates()?
        .iter()
        .map(|r| CertView::new(app, r, revoked.contains(&r.fingerprint)))
        .collect())
}

/// `POST /certificates`: trust an external certificate (agent, relay, relay CA).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    pub alias: String,
    /// PEM text; the first certificate is the one trusted.
    #[serde(default)]
    pub pem: Option<String>,
    /// Or the bytes of a certificate file, base64: PEM, DER or PKCS#12, told by content.
    #[serde(default)]
    pub file: Option<String>,
    /// Password of a PKCS#12 `file`.
    #[serde(default)]
    pub password: Option<String>,
    /// Trust it as a CA: it anchors the chains of the certificates it signs. Off, a
    /// certificate authenticates only itself (pinned by its SHA-256 fingerprint), whatever its
    /// CA flag says.
    #[serde(default)]
    pub ca: bool,
}

pub fn plan_import(app: &App, body: &ImportBody, by: &str) -> Result<WriteOp, Error> {
    check_alias(&body.alias)?;
    let chain = match (&body.pem, &body.file) {
        (Some(pem), None) => pki::pem_chain(pem)?,
        (None, Some(file)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(file.trim())
                .map_err(|_| bad("file: not base64"))?;
            pki::read_certificates(&bytes, body.password.as_deref(), "F")?
        }
        _ => return Err(bad("give exactly one of pem and file")),
    };
    let cert = chain
        .into_iter()
        .next()
        .ok_or_else(|| bad("no certificate"))?;
    let now = app.now();
    cert.check_current(now)?;
    if body.ca && !cert.is_ca {
        return Err(bad(format!(
            "{:?} is not a CA certificate (basic constraints CA:FALSE); trust it without \
             --as-ca to pin it",
            cert.subject
        )));
    }
    if !body.ca && !cert.self_signed() {
        let hint = if cert.is_ca {
            "pass --as-ca (\"ca\": true) to trust this CA's certificates"
        } else {
            "trust that CA instead, with --as-ca"
        };
        return Err(bad(format!(
            "{:?} is issued by {:?}: {hint} (a certificate trusted by alias must be \
             self-signed)",
            cert.subject, cert.issuer
        )));
    }
    let kind = if body.ca {
        CertificateKind::TrustedCa
    } else {
        CertificateKind::Trusted
    };
    Ok(new_cert_op(&body.alias, cert, kind, by, now))
}

fn new_cert_op(alias: &str, c: CertInfo, kind: CertificateKind, by: &str, now: u64) -> WriteOp {
    WriteOp::AddCertificate(NewCertificate {
        alias: alias.to_owned(),
        fingerprint: c.fingerprint,
        subject: c.subject,
        kind,
        not_after: c.not_after,
        der: c.der.to_vec(),
        private_key: None,
        by: by.to_owned(),
        now,
    })
}

fn check_alias(alias: &str) -> Result<(), Error> {
    validate::ALIAS.check(alias)?;
    Ok(())
}

/// `POST /certificates/issue`: sign a CSR with the authority's CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    pub alias: String,
    pub csr: String,
    #[serde(default)]
    pub common_name: Option<String>,
    #[serde(default)]
    pub sans: Vec<String>,
    #[serde(default)]
    pub days: Option<u32>,
    /// `client` (the default), `server`, `encryption`; several combine.
    #[serde(default)]
    pub usage: Vec<pki::Usage>,
}

/// The op recording the certificate, and the PEM chain (leaf, CA) for the agent.
pub fn plan_issue(app: &App, body: &IssueBody, by: &str) -> Result<(WriteOp, String), Error> {
    check_alias(&body.alias)?;
    validate::COMMON_NAME.check_opt(body.common_name.as_deref())?;
    if body.sans.len() > validate::MAX_SANS {
        return Err(bad(format!(
            "sans: at most {} names per certificate",
            validate::MAX_SANS
        )));
    }
    for san in &body.sans {
        validate::SAN.check(san)?;
    }
    let signer = CaSigner::load(&app.store.paths().dir, app.store.master_key())?;
    let req = IssueRequest {
        common_name: body.common_name.clone(),
        sans: body.sans.clone(),
        days: body.days.unwrap_or(DEFAULT_DAYS),
        usages: body.usage.clone(),
    };
    let cert = signer.sign_csr(&body.csr, &req)?;
    let pem = format!("{}{}", cert.pem(), signer.cert_pem());
    Ok((
        new_cert_op(&body.alias, cert, CertificateKind::Agent, by, app.now()),
        pem,
    ))
}

/// `POST /certificates/{alias}/renew`: a new certificate with the same subject and SANs for a
/// new key, under a new alias; the old one stays valid until it expires or is revoked, so the
/// agent switches without downtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    pub csr: String,
    #[serde(default)]
    pub new_alias: Option<String>,
    #[serde(default)]
    pub days: Option<u32>,
}

pub fn plan_renew(
    app: &App,
    alias: &str,
    body: &RenewBody,
    by: &str,
) -> Result<(WriteOp, String), Error> {
    validate::ALIAS.lookup(alias)?;
    validate::NEW_ALIAS.check_opt(body.new_alias.as_deref())?;
    let old = app
        .store
        .read()?
        .certificate(alias)?
        .ok_or_else(|| ApiError::NotFound(format!("no certificate {alias:?}")))?;
    if old.kind != CertificateKind::Agent {
        return Err(bad(format!(
            "{alias:?} was not issued by this authority; renew it where it was issued"
        )));
    }
    let info = CertInfo::parse(old.der.clone().into())?;
    let cn = info.common_name().map(str::to_owned);
    let new_alias = body
        .new_alias
        .clone()
        .unwrap_or_else(|| format!("{alias}.{}", app.now()));
    let issue = IssueBody {
        alias: new_alias,
        csr: body.csr.clone(),
        common_name: cn,
        sans: info.sans,
        days: body.days,
        usage: pki::Usage::of(&old.der),
    };
    plan_issue(app, &issue, by)
}

/// `POST /certificates/{alias}/rename`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    pub new_alias: String,
}

/// Renames a certificate (`keytool -changealias`): same certificate, same fingerprint, new
/// alias; audited as `cert.rename`.
pub fn plan_rename(app: &App, alias: &str, body: &RenameBody, by: &str) -> Result<WriteOp, Error> {
    validate::ALIAS.lookup(alias)?;
    check_alias(&body.new_alias)?;
    if app.store.read()?.certificate(alias)?.is_none() {
        return Err(ApiError::NotFound(format!("no certificate {alias:?}")).into());
    }
    Ok(WriteOp::RenameCertificate {
        alias: alias.to_owned(),
        new_alias: body.new_alias.clone(),
        by: by.to_owned(),
        now: app.now(),
    })
}

/// Revokes by alias, or by SHA-256 fingerprint (also certificates not in the store, such as an
/// agent certificate a trusted relay CA issued).
pub fn plan_revoke(app: &App, alias_or_fp: &str, by: &str) -> Result<WriteOp, Error> {
    validate::ALIAS.lookup(alias_or_fp)?;
    let snap = app.store.read()?;
    let now = app.now();
    let rec = match snap.certificate(alias_or_fp)? {
        Some(r) => Some(r),
        None => match pki::parse_fingerprint(alias_or_fp) {
            Some(fp) => snap.certificate_by_fingerprint(&fp)?,
            None => {
                return Err(ApiError::NotFound(format!(
                    "no certificate with alias {alias_or_fp:?} (give an alias or a SHA-256 \
                     fingerprint)"
                ))
                .into());
            }
        },
    };
    Ok(match rec {
        Some(r) => WriteOp::SetCertificateState {
            alias: r.alias,
            state: CertificateState::Revoked,
            by: by.to_owned(),
            now,
        },
        None => WriteOp::Revoke {
            kind: RevocationKind::Certificate,
            // Checked by `parse_fingerprint` above.
            id: pki::parse_fingerprint(alias_or_fp).unwrap_or_default(),
            by: by.to_owned(),
            reason: "certificate revoked by an operator".into(),
            now,
            // Issued certificates live at most MAX_DAYS; after that the fingerprint names
            // nothing that could still verify.
            forget_after: now.saturating_add(u64::from(pki::MAX_DAYS) * 86_400),
        },
    })
}
