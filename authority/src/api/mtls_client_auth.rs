//! RFC 8705 mutual-TLS client authentication of agents (`tls_client_auth`,
//! `self_signed_tls_client_auth`) and certificate-bound tokens (`cnf.x5t#S256`).
//!
//! A registration may say `token_endpoint_auth_method: tls_client_auth` with
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
use serde_json::{Value, json};

use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::RequestContext;
use crate::pki::{self, CertInfo};
use crate::store::{AuthMethod, ClientAuth};

/// Most matching rules or `x5c` keys one registration may hold.
const MAX_MTLS_ENTRIES: usize = 4;

fn bad(msg: impl Into<String>) -> Error {
    ApiError::InvalidRequest(msg.into()).into()
}

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
    use crate::pki::{CaSigner, IssueRequest};

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
