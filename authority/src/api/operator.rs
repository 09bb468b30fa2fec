//! The operator API under `/api/latchkey/v1`: signing keys (list, rotate, import) and
//! revocations (token, agent, key); operator clients and profiles are in `clients.rs`, the
//! audit log in `audit.rs`. Every call needs an operator bearer token with the matching permission; the
//! command-line tool drives it.
//!
//! Tenants: signing keys and the audit log are global, so changing them (and reading the
//! audit log) is reserved to clients of the authority's own tenant — to anyone else they do
//! not exist (404).
//!
//! Slow work (RSA key generation, PKCS#12 decryption) runs on a short-lived thread and answers
//! through the request's `Completion`; store writes answer from the writer's reply. Nothing
//! here blocks an event loop.

use std::sync::Arc;

use base64::Engine as _;
use latchkey_core::{Algorithm, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{self, Permission, Principal};
use super::mindsphere::AgentId;
use super::{Route, json_body, validate, write};
use crate::app::{self, App};
use crate::error::{ApiError, Error};
use crate::http::{Outcome, Request, RequestContext, Response, Router};
use crate::store::{KeyState, RevocationKind, RevocationRecord, SigningKeyRecord, WriteOp};

/// Prefix of every route here.
pub const PREFIX: &str = "/api/latchkey/v1";
/// Largest key file accepted for import (PEM or PKCS#12).
pub const MAX_KEY_FILE: usize = 64 * 1024;

pub fn routes(router: &mut Router, app: &Arc<App>) {
    let table: [(&str, &str, Route<App>); 6] = [
        ("GET", "/keys", list_keys),
        ("POST", "/keys/rotate", rotate_key),
        ("POST", "/keys/import", import_key),
        ("GET", "/keys/{kid}/export", export_key),
        ("POST", "/revocations", revoke),
        ("GET", "/whoami", whoami),
    ];
    super::register(router, app, PREFIX, &table);
}

pub(super) fn not_found(what: &str) -> Error {
    ApiError::NotFound(format!("{what} not found")).into()
}

/// Global things are managed only by the authority's own tenant; others get 404.
pub(super) fn authority(app: &App, p: &Principal, what: &str) -> Result<(), Error> {
    if p.is_authority(app) {
        Ok(())
    } else {
        Err(not_found(what))
    }
}

// ---------------------------------------------------------------------------------------------
// Who am I

fn whoami(app: &Arc<App>, req: &Request<'_>, _: &RequestContext<'_>) -> Result<Outcome, Error> {
    let token = super::bearer(req)
        .ok_or_else(|| ApiError::InvalidToken("a bearer token is required".into()))?;
    let p = auth::operator_token(app, token, app.now())?;
    Ok(Response::json(
        200,
        &json!({
            "client_id": p.client_id,
            "tenant": p.tenant,
            "permissions": p.permissions.iter().map(Permission::as_str).collect::<Vec<_>>(),
        }),
    )
    .into())
}

// ---------------------------------------------------------------------------------------------
// Signing keys

/// A signing key as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyView {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created_at: u64,
    pub state_changed_at: u64,
    /// When a retiring key stops verifying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<u64>,
    /// When a published key starts signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activates_at: Option<u64>,
    /// Imported: scheduled rotation leaves it alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// Certificates kept with the key (the JWK's `x5c`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub certificates: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl KeyView {
    pub fn new(app: &App, k: &SigningKeyRecord) -> KeyView {
        KeyView {
            kid: k.kid.clone(),
            alg: k.alg.clone(),
            state: k.state.as_str().to_owned(),
            created_at: k.created_at,
            state_changed_at: k.state_changed_at,
            retires_at: (k.state == KeyState::Retiring).then(|| {
                k.state_changed_at
                    .saturating_add(app.settings.retire_after())
            }),
            activates_at: (k.state == KeyState::Published)
                .then(|| app.settings.activates_at(k.state_changed_at)),
            pinned: k.pinned,
            certificates: k.certificate_chain.len(),
        }
    }
}

/// Every signing key, active first, then retiring, then retired; newest first within each.
pub fn key_views(app: &App) -> Result<Vec<KeyView>, Error> {
    let mut keys = app.store.read()?.signing_keys()?;
    let rank = |s: KeyState| match s {
        KeyState::Published => 0,
        KeyState::Active => 1,
        KeyState::Retiring => 2,
        KeyState::Retired => 3,
    };
    keys.sort_by_key(|k| {
        (
            rank(k.state),
            std::cmp::Reverse(k.created_at),
            k.kid.clone(),
        )
    });
    Ok(keys.iter().map(|k| KeyView::new(app, k)).collect())
}

fn list_keys(app: &Arc<App>, req: &Request<'_>, _: &RequestContext<'_>) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::KeysRead)?;
    authority(app, &p, "keys")?;
    Ok(Response::json(200, &json!({ "keys": key_views(app)? })).into())
}

/// `GET /keys/{kid}/export`: the key's certificate chain (or public key) as PEM, for
/// verifiers configured with a certificate file instead of the key set.
fn export_key(app: &Arc<App>, req: &Request<'_>, _: &RequestContext<'_>) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::KeysRead)?;
    authority(app, &p, "keys")?;
    let kid = validate::KID.lookup(req.param("kid").unwrap_or(""))?;
    let key = app
        .store
        .hot()
        .signing_key(kid)
        .ok_or_else(|| not_found("signing key"))?;
    let pem = key_export_pem(&key.certificate_chain, &key.public_key);
    Ok(Response::json(200, &json!({ "kid": key.kid, "pem": pem })).into())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    alg: Option<String>,
    /// Activate at once (emergencies) instead of after the pre-publication time.
    #[serde(default)]
    now: bool,
}

fn rotate_key(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::KeysAdmin)?;
    authority(app, &p, "keys")?;
    let body: RotateBody = if req.body().is_empty() {
        RotateBody::default()
    } else {
        json_body(req)?
    };
    let alg = match body.alg.as_deref() {
        None => app.settings.operator_alg,
        Some(name) => {
            app::parse_token_alg(name).map_err(|e| ApiError::InvalidRequest(e.to_string()))?
        }
    };
    let app = Arc::clone(app);
    super::offload::run(&app.clone(), ctx, move || {
        let rec = if body.now {
            app.rotate_key_now(alg, &p.client_id)?
        } else {
            app.rotate_key(alg, &p.client_id)?
        };
        Ok(Response::json(201, &KeyView::new(&app, &rec)))
    })
}

/// Where an imported key comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// JWS algorithm; inferred from the key when absent (RSA keys default to RS256).
    #[serde(default)]
    pub alg: Option<String>,
    /// A PEM private key (`PRIVATE KEY` or `RSA PRIVATE KEY`).
    #[serde(default)]
    pub pem: Option<String>,
    /// A PKCS#12 (.pfx) file, base64.
    #[serde(default)]
    pub pkcs12: Option<String>,
    /// The PKCS#12 password.
    #[serde(default)]
    pub password: Option<String>,
    /// Key id; default: the RFC 7638 thumbprint.
    #[serde(default)]
    pub kid: Option<String>,
    /// Key id = the certificate's SHA-1 thumbprint, upper-case hex (what IdentityServer and
    /// .NET's `X509SecurityKey` use), so verifiers keyed on the thumbprint find it. Needs a
    /// PKCS#12 file with a certificate; excludes `kid`.
    #[serde(default)]
    pub kid_from_thumbprint: bool,
}

impl std::fmt::Display for ImportBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the password.
        write!(f, "key import (alg {:?})", self.alg)
    }
}

fn import_key(
    app: &Arc<App>,
    req: &Request<'_>,
    ctx: &RequestContext<'_>,
) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::KeysAdmin)?;
    authority(app, &p, "keys")?;
    let body: ImportBody = json_body(req)?;
    validate::KID.check_opt(body.kid.as_deref())?;
    let app = Arc::clone(app);
    super::offload::run(&app.clone(), ctx, move || {
        let (key, certificate_chain) = body.signing_key()?;
        let origin = app::KeyOrigin::Imported { certificate_chain };
        let rec = app.install_key(key, origin, &p.client_id)?;
        Ok(Response::json(201, &KeyView::new(&app, &rec)))
    })
}

impl ImportBody {
    /// Decodes the key this body carries, with its certificate chain (DER, leaf first; empty
    /// for a PEM key or a PKCS#12 file without certificates).
    pub fn signing_key(&self) -> Result<(SigningKey, Vec<Vec<u8>>), Error> {
        let alg = match self.alg.as_deref() {
            Some(name) => Some(
                app::parse_token_alg(name).map_err(|e| ApiError::InvalidRequest(e.to_string()))?,
            ),
            None => None,
        };
        let (key, chain) = match (&self.pem, &self.pkcs12) {
            (Some(pem), None) => (key_from_pem(alg, pem)?, Vec::new()),
            (None, Some(p12)) => {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(p12.trim())
                    .map_err(|_| ApiError::InvalidRequest("pkcs12 must be base64".into()))?;
                key_from_pkcs12(alg, &der, self.password.as_deref().unwrap_or(""))?
            }
            _ => {
                return Err(
                    ApiError::InvalidRequest("give exactly one of pem or pkcs12".into()).into(),
                );
            }
        };
        let key = match (&self.kid, self.kid_from_thumbprint) {
            (Some(_), true) => {
                return Err(ApiError::InvalidRequest(
                    "give kid or kid_from_thumbprint, not both".into(),
                )
                .into());
            }
            (Some(kid), false) => key.with_kid(validate::KID.check(kid)?.to_owned()),
            (None, true) => {
                let leaf = chain.first().ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "kid_from_thumbprint needs a PKCS#12 file with a certificate".into(),
                    )
                })?;
                key.with_kid(sha1_thumbprint(leaf))
            }
            (None, false) => key,
        };
        Ok((key, chain))
    }
}

/// A certificate's SHA-1 thumbprint as .NET prints it (`X509Certificate2.Thumbprint`):
/// upper-case hex. An identifier only, never a security check.
pub fn sha1_thumbprint(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect()
}

/// The key's certificate chain as PEM, or its public key as PEM when it has none.
pub fn key_export_pem(chain: &[Vec<u8>], spki: &[u8]) -> String {
    let block = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    };
    if chain.is_empty() {
        block("PUBLIC KEY", spki)
    } else {
        chain.iter().map(|c| block("CERTIFICATE", c)).collect()
    }
}

/// Candidate algorithms for a key of unknown type, most likely first.
const IMPORT_GUESSES: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// A private key from PEM (PKCS#8, or PKCS#1 for RSA).
pub fn key_from_pem(alg: Option<Algorithm>, pem: &str) -> Result<SigningKey, Error> {
    if pem.len() > MAX_KEY_FILE {
        return Err(ApiError::InvalidRequest("key file too large".into()).into());
    }
    let guesses: Vec<Algorithm> = alg.map_or_else(|| IMPORT_GUESSES.to_vec(), |a| vec![a]);
    let mut last = None;
    for a in guesses {
        match SigningKey::from_pem(a, pem) {
            Ok(k) => return Ok(k),
            Err(e) => last = Some(e),
        }
    }
    Err(ApiError::InvalidRequest(format!(
        "not a usable private key: {}",
        last.map_or_else(|| "no algorithm fits".to_owned(), |e| e.to_string())
    ))
    .into())
}

/// Most certificates kept with an imported key (a leaf and its issuers).
pub const MAX_KEY_CHAIN: usize = 8;

/// The private key of a PKCS#12 file (the first key entry) and its certificate chain, leaf
/// first. The leaf must certify that key: a chain published as `x5c` for another key would
/// make verifiers that trust the certificate refuse every token.
pub fn key_from_pkcs12(
    alg: Option<Algorithm>,
    der: &[u8],
    password: &str,
) -> Result<(SigningKey, Vec<Vec<u8>>), Error> {
    if der.len() > MAX_KEY_FILE {
        return Err(ApiError::InvalidRequest("key file too large".into()).into());
    }
    let store = p12_keystore::KeyStore::from_pkcs12(
        der,
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .map_err(|e| {
        ApiError::InvalidRequest(format!(
            "cannot open the PKCS#12 file: wrong password, or not a PKCS#12 file ({e})"
        ))
    })?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| ApiError::InvalidRequest("the PKCS#12 file holds no private key".into()))?;
    let pkcs8 = zeroize::Zeroizing::new(chain.key().as_der().to_vec());
    let certs: Vec<Vec<u8>> = chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
    if certs.len() > MAX_KEY_CHAIN {
        return Err(ApiError::InvalidRequest(format!(
            "the PKCS#12 chain has {} certificates, more than {MAX_KEY_CHAIN}",
            certs.len()
        ))
        .into());
    }
    let guesses: Vec<Algorithm> = alg.map_or_else(|| IMPORT_GUESSES.to_vec(), |a| vec![a]);
    let key = guesses
        .into_iter()
        .find_map(|a| SigningKey::from_pkcs8_der(a, &pkcs8).ok())
        .ok_or_else(|| {
            ApiError::InvalidRequest(
                "the PKCS#12 private key is not RSA, P-256 or Ed25519 (or does not fit alg)".into(),
            )
        })?;
    if let Some(leaf) = certs.first() {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
            ApiError::InvalidRequest(format!("the PKCS#12 certificate does not parse: {e}"))
        })?;
        if cert.public_key().raw != key.verifying_key().to_spki_der()?.as_slice() {
            return Err(ApiError::InvalidRequest(
                "the PKCS#12 certificate is not the private key's (its public key differs)".into(),
            )
            .into());
        }
    }
    Ok((key, certs))
}

// ---------------------------------------------------------------------------------------------
// Revocations

/// `POST /revocations` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// `token`, `agent` or `key`.
    pub kind: String,
    /// jti (token), agent id (agent) or kid (key).
    #[serde(default)]
    pub id: Option<String>,
    /// The token itself (kind `token`), instead of its jti.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

fn revoke(app: &Arc<App>, req: &Request<'_>, ctx: &RequestContext<'_>) -> Result<Outcome, Error> {
    let p = auth::operator(app, req, Permission::TokensRevoke)?;
    let body: RevokeBody = json_body(req)?;
    let reason = validate::REASON
        .check_opt(body.reason.as_deref())?
        .unwrap_or("revoked by an operator")
        .to_owned();
    let now = app.now();
    let view = |r: RevocationRecord| -> Result<Response, Error> {
        Ok(Response::json(
            200,
            &json!({
                "kind": r.kind.as_str(), "id": r.id, "revoked_at": r.revoked_at, "forget_after": r.forget_after,
            }),
        ))
    };
    match body.kind.as_str() {
        "token" => {
            let (jti, forget_after) = match (&body.token, &body.id) {
                (Some(token), None) => {
                    let found = super::oauth::inspect(app, token, now)
                        .filter(|f| f.tenant == p.tenant)
                        .ok_or_else(|| {
                            ApiError::InvalidRequest(
                                "token is not active (unknown, expired or already revoked)".into(),
                            )
                        })?;
                    let jti = found
                        .claims
                        .jti
                        .clone()
                        .ok_or_else(|| ApiError::InvalidRequest("token has no jti".into()))?;
                    (
                        jti,
                        found
                            .claims
                            .exp
                            .unwrap_or(now)
                            .saturating_add(app.settings.leeway),
                    )
                }
                // A bare jti names no tenant: only the authority's own operators may use it.
                (None, Some(jti)) => {
                    validate::JTI.check(jti)?;
                    authority(app, &p, "token")?;
                    (jti.clone(), now.saturating_add(app.settings.retire_after()))
                }
                _ => {
                    return Err(
                        ApiError::InvalidRequest("give exactly one of token or id".into()).into(),
                    );
                }
            };
            let op = WriteOp::Revoke {
                kind: RevocationKind::Token,
                id: jti,
                by: p.client_id,
                reason,
                now,
                forget_after,
            };
            Ok(write::submit(app, ctx, op, view))
        }
        "agent" => {
            let id = body
                .id
                .ok_or_else(|| ApiError::InvalidRequest("id (the agent id) is required".into()))?;
            AgentId::parse_as(validate::ENTITY_ID.named("id"), &id)?;
            if app.store.read()?.agent(&p.tenant, &id)?.is_none() {
                return Err(not_found("agent"));
            }
            let op = WriteOp::Revoke {
                kind: RevocationKind::Agent,
                id,
                by: p.client_id,
                reason,
                now,
                forget_after: now.saturating_add(app.settings.retire_after()),
            };
            Ok(write::submit(app, ctx, op, view))
        }
        "key" => {
            p.require(Permission::KeysAdmin)?;
            authority(app, &p, "key")?;
            let kid = body
                .id
                .ok_or_else(|| ApiError::InvalidRequest("id (the kid) is required".into()))?;
            validate::KID.named("id").lookup(&kid)?;
            if app.store.hot().signing_key(&kid).is_none() {
                return Err(not_found("signing key"));
            }
            let app = Arc::clone(app);
            super::offload::run(&app.clone(), ctx, move || {
                app.revoke_key(&kid, &p.client_id, &reason).and_then(view)
            })
        }
        other => Err(ApiError::InvalidRequest(format!(
            "unknown revocation kind {other:?} (token, agent or key)"
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_import_from_pem_and_pkcs12_with_clear_errors() {
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        let imported = key_from_pem(None, &pem).unwrap();
        assert_eq!(imported.algorithm(), Algorithm::ES256);
        assert_eq!(imported.kid(), key.kid());
        assert!(key_from_pem(Some(Algorithm::EdDSA), &pem).is_err());
        let err = key_from_pem(None, "-----BEGIN NOTHING-----\n-----END NOTHING-----").unwrap_err();
        assert!(
            err.to_string().contains("not a usable private key"),
            "{err}"
        );

        let ed = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let der = ed.to_pkcs8_der().unwrap();
        let mut store = p12_keystore::KeyStore::new();
        let pk = p12_keystore::PrivateKey::from_der(&der).unwrap();
        let chain = p12_keystore::PrivateKeyChain::new(
            b"id".to_vec(),
            pk,
            Vec::<p12_keystore::Certificate>::new(),
        );
        store.add_entry("k", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
        let pfx = store.writer("pfx-pass").write().unwrap();
        let (imported, chain) = key_from_pkcs12(None, &pfx, "pfx-pass").unwrap();
        assert!(chain.is_empty());
        assert_eq!(
            (imported.algorithm(), imported.kid()),
            (Algorithm::EdDSA, ed.kid())
        );
        let err = key_from_pkcs12(None, &pfx, "wrong").unwrap_err();
        assert!(err.to_string().contains("wrong password"), "{err}");
    }

    /// A PKCS#12 file built like a .NET/Usercube signing certificate: the chain comes back
    /// leaf first, the kid can be the SHA-1 thumbprint, and a certificate of another key is
    /// refused.
    #[test]
    fn pkcs12_import_keeps_the_certificate_chain() {
        use rustls_pki_types::pem::PemObject as _;
        let (ca_pem, ca_key) = crate::pki::new_ca("Test CA", 1).unwrap();
        let ca = crate::pki::CaSigner::from_pem(&ca_pem, &ca_key).unwrap();
        let (key, csr) = crate::pki::key_and_csr("signer", &[]).unwrap();
        let req = crate::pki::IssueRequest {
            common_name: None,
            sans: vec![],
            days: 1,
            usages: vec![],
        };
        let leaf = ca.sign_csr(&csr, &req).unwrap();
        let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let ders = [leaf.der.clone(), ca_der];
        let pfx = crate::pki::to_pkcs12("signer", &ders, &key, "pw").unwrap();
        let chain: Vec<Vec<u8>> = ders.iter().map(|c| c.to_vec()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&pfx);
        let body = |kid: Option<&str>, from_thumbprint: bool| ImportBody {
            alg: None,
            pem: None,
            pkcs12: Some(b64.clone()),
            password: Some("pw".into()),
            kid: kid.map(str::to_owned),
            kid_from_thumbprint: from_thumbprint,
        };
        let (imported, certs) = body(None, false).signing_key().unwrap();
        assert_eq!(certs, chain);
        assert_eq!(imported.kid(), imported.verifying_key().thumbprint());
        let (by_print, _) = body(None, true).signing_key().unwrap();
        let want = sha1_thumbprint(&chain[0]);
        assert_eq!(by_print.kid(), want);
        assert_eq!(want.len(), 40);
        assert!(
            want.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        assert!(body(Some("k"), true).signing_key().is_err());
        let pem = key_export_pem(&certs, &[]);
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);

        // The certificate of one key with the private key of another.
        let (other, _) = crate::pki::key_and_csr("other", &[]).unwrap();
        let mismatched = crate::pki::to_pkcs12("x", &ders, &other, "pw").unwrap();
        let err = key_from_pkcs12(None, &mismatched, "pw").unwrap_err();
        assert!(err.to_string().contains("not the private key's"), "{err}");
    }
}
