//! Mutual TLS on the API side: the operator's trust-store endpoints under
//! `/api/latchkey/v1/certificates`, and RFC 8705 client authentication for agents.
//!
//! **Trust store.** List, import (trust) under a unique alias, issue from a CSR with the
//! authority's CA (`usage`: client, server, encryption), renew, rename, revoke by alias or
//! fingerprint, fetch the CA certificate agents must trust, and the CA's CRL (public). An
//! import takes PEM text (`pem`) or a file's bytes in base64 (`file`: PEM, DER or PKCS#12 with
//! `password`, told by content); `ca: true` makes it an anchor rather than a pin. Each change is one store op; `App::submit` rebuilds the TLS trust before the
//! answer leaves, so the next handshake already sees it. The same `plan_*` functions serve the
//! CLI on a stopped data directory.
//!
//! **RFC 8705.** A registration may say `token_endpoint_auth_method: tls_client_auth` with
//! exactly one of `tls_client_auth_subject_dn`, `_san_dns`, `_san_uri`, `_san_ip`,
//! `_san_email`; or `self_signed_tls_client_auth` with a JWKS whose keys carry `x5c` (matched by
//! `x5t#S256` of `x5c[0]`). The store keeps the rule as one JSON object per entry in the
//! registration's `jwks` list (`{"tls_client_auth_subject_dn": ..}` or `{"x5t#S256": ..}`), so
//! the record format is unchanged. A token request then needs no secret: `grant_type`,
//! `client_id`, and the TLS client certificate. The certificate chain is re-verified on every
//! such request (a keep-alive connection outlives its handshake, and a revocation must bite at
//! the next request). Tokens issued to a connection with a client certificate carry
//! `cnf: {"x5t#S256": ..}`; a resource server compares it with the SHA-256 of the certificate
//! its own TLS layer saw (`base64url(sha256(DER))`, no padding).

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
    AuthMethod, CertificateKind, CertificateRecord, CertificateState, ClientAuth, NewCertificate,
    RevocationKind, RevocationRecord, WriteOp, WriteOutcome,
};

/// Default validity of issued agent certificates.
pub const DEFAULT_DAYS: u32 = 365;
/// Most matching rules or `x5c` keys one registration may hold.
const MAX_MTLS_ENTRIES: usize = 4;

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

fn list(app: &Arc<App>, req: &Request<'_>, _: &RequestContext<'_>) -> Result<Outcome, Error> {
    admin(app, req, Permission::KeysRead)?;
    Ok(Response::json(200, &json!({ "certificates": views(app)? })).into())
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
fn crl(app: &Arc<App>, _: &Request<'_>, _: &RequestContext<'_>) -> Result<Outcome, Error> {
    let der = app.mtls.crl(app)?;
    Ok(Response::new(200)
        .header("Content-Type", "application/pkix-crl")
        .body(der.to_vec())
        .into())
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

// ---------------------------------------------------------------------------------------------
// RFC 8705 client authentication

/// The RFC 8705 part of a registration request, if it asks for a TLS method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsRegistration {
    pub method: AuthMethod,
    /// Matching rules as stored (see the module docs).
    pub entries: Vec<String>,
}

const SUBJECT_RULES: [&str; 5] = [
    "tls_client_auth_subject_dn",
    "tls_client_auth_san_dns",
    "tls_client_auth_san_uri",
    "tls_client_auth_san_ip",
    "tls_client_auth_san_email",
];

impl MtlsRegistration {
    /// Recognises `token_endpoint_auth_method` and its metadata in a registration body (JSON
    /// that already parsed as a registration). `None`: not a TLS method.
    pub fn parse(body: &[u8]) -> Result<Option<MtlsRegistration>, Error> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let v: Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("registration: {e}")))?;
        let method = match v.get("token_endpoint_auth_method").and_then(Value::as_str) {
            Some("tls_client_auth") => AuthMethod::TlsClientAuth,
            Some("self_signed_tls_client_auth") => AuthMethod::SelfSignedTlsClientAuth,
            _ => return Ok(None),
        };
        let entries = match method {
            AuthMethod::TlsClientAuth => {
                let rules: Vec<(&str, &str)> = SUBJECT_RULES
                    .iter()
                    .filter_map(|k| v.get(*k).map(|val| (*k, val)))
                    .map(|(k, val)| {
                        val.as_str()
                            .filter(|s| !s.is_empty() && s.len() <= 1024)
                            .map(|s| (k, s))
                            .ok_or_else(|| bad(format!("{k} must be a non-empty string")))
                    })
                    .collect::<Result<_, _>>()?;
                let [(k, val)] = rules[..] else {
                    return Err(bad(format!(
                        "tls_client_auth needs exactly one of {}",
                        SUBJECT_RULES.join(", ")
                    )));
                };
                if k == "tls_client_auth_subject_dn" {
                    // Refused now rather than never matching later.
                    pki::Dn::parse(val)?;
                }
                vec![json!({ k: val }).to_string()]
            }
            _ => {
                let keys = v
                    .get("jwks")
                    .and_then(|j| j.get("keys"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        bad("self_signed_tls_client_auth needs jwks with x5c certificates")
                    })?;
                if keys.is_empty() || keys.len() > MAX_MTLS_ENTRIES {
                    return Err(bad(format!("1 to {MAX_MTLS_ENTRIES} keys with x5c")));
                }
                keys.iter()
                    .map(|k| {
                        let b64 = k
                            .get("x5c")
                            .and_then(Value::as_array)
                            .and_then(|a| a.first())
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad("every key needs an x5c certificate"))?;
                        let der = base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .map_err(|_| bad("x5c is not base64"))?;
                        let cert = CertInfo::parse(der.into())?;
                        if !cert.self_signed() {
                            return Err(bad("x5c[0] must be a self-signed certificate"));
                        }
                        Ok(json!({ "x5t#S256": cert.thumbprint() }).to_string())
                    })
                    .collect::<Result<_, Error>>()?
            }
        };
        Ok(Some(MtlsRegistration { method, entries }))
    }
}

/// Whether `cert` satisfies a registration's matching rules.
pub fn cert_matches(client: &ClientAuth, cert: &CertInfo) -> bool {
    client.jwks.iter().any(|entry| {
        let Ok(Value::Object(m)) = serde_json::from_str::<Value>(entry) else {
            return false;
        };
        m.iter().any(|(k, v)| {
            let Some(want) = v.as_str() else { return false };
            match k.as_str() {
                "x5t#S256" => {
                    client.auth_method == AuthMethod::SelfSignedTlsClientAuth
                        && constant_eq(want, &cert.thumbprint())
                }
                _ if client.auth_method != AuthMethod::TlsClientAuth => false,
                "tls_client_auth_subject_dn" => subject_matches(want, cert),
                "tls_client_auth_san_dns" => has_san(cert, "dns", want),
                "tls_client_auth_san_uri" => has_san(cert, "uri", want),
                "tls_client_auth_san_ip" => has_san(cert, "ip", want),
                "tls_client_auth_san_email" => has_san(cert, "email", want),
                _ => false,
            }
        })
    })
}

fn constant_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn has_san(cert: &CertInfo, kind: &str, want: &str) -> bool {
    cert.sans.iter().any(|s| {
        s.split_once(':').is_some_and(|(k, v)| {
            k == kind && (v == want || (kind == "dns" && v.eq_ignore_ascii_case(want)))
        })
    })
}

/// Whether the certificate's subject is the configured RFC 4514 DN, compared as parsed RDNs
/// (see [`pki::Dn`]), never as text.
fn subject_matches(want: &str, cert: &CertInfo) -> bool {
    match (pki::Dn::parse(want), &cert.subject_dn) {
        (Ok(want), Some(have)) => want == *have,
        _ => false,
    }
}

/// The client certificate of this request, re-verified against the current trust store.
/// `None` when the client sent none.
pub fn client_certificate(app: &App, ctx: &RequestContext<'_>) -> Result<Option<CertInfo>, Error> {
    let Some(chain) = ctx.client_certificates().filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    app.mtls.verify_chain(app, chain)?;
    let ee = chain.first().ok_or_else(|| bad("no certificate"))?;
    Ok(Some(CertInfo::parse(ee.clone())?))
}

/// Whether a token request's form asks for RFC 8705 authentication (no assertion, no secret).
pub fn is_mtls_token_request(form: &super::Form<'_>) -> bool {
    form.get("client_assertion").is_none()
        && form.get("client_assertion_type").is_none()
        && form.get("client_secret").is_none()
}

/// Authenticates an RFC 8705 token request: the client `client_id` names must be registered
/// for a TLS method and the connection's certificate (still trusted) must match it. Every
/// failure is 401 `invalid_client`. Returns the client and the `x5t#S256` to bind.
pub fn authenticate(
    app: &App,
    form: &super::Form<'_>,
    ctx: &RequestContext<'_>,
) -> Result<(Arc<ClientAuth>, String), Error> {
    match form.get("grant_type") {
        Some("client_credentials") => {}
        Some(_) => {
            return Err(ApiError::UnsupportedGrantType(
                "only grant_type=client_credentials is supported here".into(),
            )
            .into());
        }
        None => return Err(bad("grant_type is missing")),
    }
    let refused = |why: &str| -> Error { ApiError::InvalidClient(why.to_owned()).into() };
    let client_id = form
        .get("client_id")
        .ok_or_else(|| refused("client_id is required with TLS client authentication"))?;
    let client = app
        .store
        .hot()
        .client(client_id)
        .ok_or_else(|| refused("unknown client (not registered, or offboarded)"))?;
    match client.auth_method {
        AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth => {}
        _ => {
            return Err(refused(
                "this client authenticates with a JWT client assertion, not its certificate",
            ));
        }
    };
    let cert = client_certificate(app, ctx)?
        .ok_or_else(|| refused("no TLS client certificate was presented"))?;
    if !cert_matches(&client, &cert) {
        return Err(refused(
            "the TLS client certificate does not match this client's registration",
        ));
    }
    let x5t = cert.thumbprint();
    Ok((client, x5t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(method: AuthMethod, entry: Value) -> ClientAuth {
        ClientAuth {
            client_id: "a".into(),
            tenant: "t".into(),
            auth_method: method,
            secret: None,
            jwks: vec![entry.to_string()],
            secret_expires_at: 0,
            generation: 1,
            hmac_keys: Default::default(),
            previous: None,
            cut_over: Default::default(),
        }
    }

    fn cert(cn: &str, sans: &[&str]) -> CertInfo {
        let (c, k) = pki::new_ca("CA", 1).unwrap();
        let signer = CaSigner::from_pem(&c, &k).unwrap();
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let (_key, csr) = pki::key_and_csr(cn, &sans).unwrap();
        signer
            .sign_csr(
                &csr,
                &IssueRequest {
                    common_name: None,
                    sans: vec![],
                    days: 1,
                    usages: vec![],
                },
            )
            .unwrap()
    }

    #[test]
    fn registration_metadata_is_recognised_with_clear_errors() {
        let check = |body: Value| MtlsRegistration::parse(body.to_string().as_bytes());
        assert_eq!(check(json!({})).unwrap(), None);
        assert_eq!(
            check(json!({"token_endpoint_auth_method": "private_key_jwt"})).unwrap(),
            None
        );
        let r = check(json!({"token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": "CN=agent-1"}))
        .unwrap()
        .unwrap();
        assert_eq!(r.method, AuthMethod::TlsClientAuth);
        assert_eq!(
            r.entries,
            vec![r#"{"tls_client_auth_subject_dn":"CN=agent-1"}"#.to_owned()]
        );
        let two = check(json!({"token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": "CN=a", "tls_client_auth_san_dns": "a"}));
        assert!(two.unwrap_err().to_string().contains("exactly one"));
        let none = check(json!({"token_endpoint_auth_method": "tls_client_auth"}));
        assert!(none.unwrap_err().to_string().contains("exactly one"));
        let no_x5c = check(
            json!({"token_endpoint_auth_method": "self_signed_tls_client_auth",
            "jwks": {"keys": [{"kty": "EC"}]}}),
        );
        assert!(no_x5c.unwrap_err().to_string().contains("x5c"));
    }

    #[test]
    fn certificates_match_subject_san_or_thumbprint_and_nothing_else() {
        let c = cert("agent-1", &["agent-1.example"]);
        let dn = |s: &str| {
            client(
                AuthMethod::TlsClientAuth,
                json!({"tls_client_auth_subject_dn": s}),
            )
        };
        assert!(cert_matches(&dn("CN=agent-1"), &c));
        assert!(cert_matches(&dn("cn = agent-1"), &c));
        assert!(!cert_matches(&dn("CN=agent-2"), &c));
        let san = client(
            AuthMethod::TlsClientAuth,
            json!({"tls_client_auth_san_dns": "AGENT-1.example"}),
        );
        assert!(cert_matches(&san, &c));
        let thumb = json!({"x5t#S256": c.thumbprint()});
        assert!(cert_matches(
            &client(AuthMethod::SelfSignedTlsClientAuth, thumb.clone()),
            &c
        ));
        // A rule of the other method never matches.
        assert!(!cert_matches(&client(AuthMethod::TlsClientAuth, thumb), &c));
        assert!(!cert_matches(
            &client(
                AuthMethod::SelfSignedTlsClientAuth,
                json!({"tls_client_auth_subject_dn": "CN=agent-1"})
            ),
            &c
        ));
        let other = cert("agent-1", &[]);
        assert!(!cert_matches(
            &client(
                AuthMethod::SelfSignedTlsClientAuth,
                json!({"x5t#S256": c.thumbprint()})
            ),
            &other
        ));
    }

    /// A certificate whose subject has one RDN per entry, in order.
    fn cert_with_subject(rdns: &[(rcgen::DnType, &str)]) -> CertInfo {
        let (c, k) = pki::new_ca("CA", 1).unwrap();
        let signer = CaSigner::from_pem(&c, &k).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, v) in rdns {
            params.distinguished_name.push(ty.clone(), *v);
        }
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let req = IssueRequest {
            common_name: None,
            sans: vec![],
            days: 1,
            usages: vec![],
        };
        signer.sign_csr(&csr, &req).unwrap()
    }

    /// Regression: the rule compared unescaped text, so a certificate whose single CN is
    /// `a, O=b` satisfied the registration `CN=a,O=b` of another agent.
    #[test]
    fn a_subject_dn_rule_compares_parsed_rdns_not_text() {
        use rcgen::DnType;
        let rule = |dn: &str| {
            client(
                AuthMethod::TlsClientAuth,
                json!({"tls_client_auth_subject_dn": dn}),
            )
        };
        let forged = cert_with_subject(&[(DnType::CommonName, "a, O=b")]);
        let real = cert_with_subject(&[(DnType::OrganizationName, "b"), (DnType::CommonName, "a")]);
        assert!(cert_matches(&rule("CN=a,O=b"), &real));
        assert!(cert_matches(&rule("cn=a, o=b"), &real));
        assert!(!cert_matches(&rule("CN=a,O=b"), &forged));
        assert!(!cert_matches(&rule("CN=a, O=b"), &forged));
        // The forged certificate's own name, escaped, names it and only it.
        assert_eq!(forged.subject, "CN=a\\, O\\=b");
        assert!(cert_matches(&rule(&forged.subject), &forged));
        assert!(cert_matches(&rule("CN=a\\2C O=b"), &forged));
        assert!(!cert_matches(&rule("CN=a\\, O=b"), &real));
        // RDN order is part of the name.
        assert!(!cert_matches(&rule("O=b,CN=a"), &real));
        // A rule that is not a DN is refused at registration, not silently never matched.
        let reg = MtlsRegistration::parse(
            json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=a;O=b"})
            .to_string()
            .as_bytes(),
        );
        assert!(reg.unwrap_err().to_string().contains("distinguished name"));
    }
}
