//! MindSphere agent onboarding end to end, over HTTPS against the real binary: agent
//! management, boarding configuration, registration (SHARED_SECRET and RSA_3072), rotation,
//! the token endpoint with every rejection, offboarding, replay across a restart, and the
//! published Node.js SDK.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use latchkey_core::{Algorithm, Jwk, SigningKey, VerifyingKey};
use serde_json::{Value, json};

use crate::util::https::{Authority, form_encode};
use crate::util::server::Response;

mod credentials;
mod datasource;
mod refusal_audit;
mod replay_share;
mod rotation;
mod suspend;
mod throttle;

pub(crate) const API: &str = "/api/agentmanagement/v3";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

// ---------------------------------------------------------------------------------------------
// Helpers

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A server with default settings on `dir/data` (kept across restarts).
fn start(dir: &Path) -> Authority {
    Authority::start(&dir.join("data"), None)
}

/// PKCS#8 DER of RSA keys generated once per test binary (RSA generation is slow).
fn rsa_der(bits: usize, n: usize) -> &'static [u8] {
    static KEYS: OnceLock<Vec<(usize, Vec<u8>)>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::rsa::{KeyPair, KeySize};
        [
            (3072, KeySize::Rsa3072),
            (3072, KeySize::Rsa3072),
            (3072, KeySize::Rsa3072),
            (2048, KeySize::Rsa2048),
            (4096, KeySize::Rsa4096),
        ]
        .into_iter()
        .map(|(bits, size)| {
            (
                bits,
                KeyPair::generate(size)
                    .expect("RSA keygen")
                    .as_der()
                    .expect("der")
                    .as_ref()
                    .to_vec(),
            )
        })
        .collect()
    });
    keys.iter()
        .filter(|(b, _)| *b == bits)
        .nth(n)
        .map(|(_, d)| d.as_slice())
        .expect("fixture key")
}

fn rsa(bits: usize, n: usize, alg: Algorithm) -> SigningKey {
    SigningKey::from_pkcs8_der(alg, rsa_der(bits, n)).expect("RSA key")
}

fn public_jwk(key: &SigningKey, kid: &str) -> Value {
    let mut jwk = Jwk::from_public_key(&key.verifying_key()).expect("jwk");
    jwk.kid = Some(kid.to_owned());
    jwk.alg = None;
    jwk.use_ = None;
    serde_json::to_value(jwk).expect("jwk json")
}

/// A compact JWS with header `{"alg","typ":"JWT"[,"kid"]}`, signed by an agent's key.
pub(crate) fn sign(key: &SigningKey, kid: Option<&str>, claims: &Value) -> String {
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
    key.sign_into(t.as_bytes(), &mut sig).expect("sign");
    t.push('.');
    t.push_str(&sig);
    t
}

/// Claims the Node SDK writes (`aud` an array, one hour).
pub(crate) fn node_claims(id: &str, tenant: &str) -> Value {
    let now = now();
    json!({
        "iss": id, "sub": id, "aud": ["southgate"], "iat": now, "nbf": now, "exp": now + 3600,
        "jti": uuid(), "schemas": ["urn:siemens:mindsphere:v1"], "ten": tenant
    })
}

/// Claims MCL writes (`aud` a string, 24 hours).
fn mcl_claims(id: &str, tenant: &str) -> Value {
    let mut c = node_claims(id, tenant);
    c["aud"] = "southgate".into();
    c["exp"] = (now() + 86_400).into();
    c
}

pub(crate) fn uuid() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn token_form(assertion: &str) -> String {
    format!(
        "grant_type=client_credentials&client_assertion_type={}&client_assertion={assertion}",
        form_encode(JWT_BEARER)
    )
}

/// `POST /oauth/token` as an agent does: a fresh assertion per try, retrying on 503 after
/// `Retry-After` (a start's replay floor, or a re-registration within the second of an
/// offboarding).
pub(crate) fn token(auth: &Authority, assertion: impl Fn() -> String) -> Response {
    for _ in 0..5 {
        let r = auth.form(
            &format!("{API}/oauth/token"),
            &token_form(&assertion()),
            &[],
        );
        if r.status != 503 {
            return r;
        }
        let wait: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After on 503");
        assert!(wait <= 5, "{wait}");
        std::thread::sleep(Duration::from_millis(wait * 1000 + 100));
    }
    panic!("token endpoint kept answering 503");
}

pub(crate) fn assert_error(r: &Response, status: u16, code: &str, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], code, "{body}");
    let desc = body["error_description"]
        .as_str()
        .expect("error_description");
    assert!(desc.contains(needle), "{needle:?} not in {desc:?}");
}

pub(crate) fn create(auth: &Authority, op: &str, id: &str, name: &str, profile: &str) -> Response {
    auth.json(
        "POST",
        &format!("{API}/agents"),
        Some(op),
        Some(&json!({"entityId": id, "name": name, "securityProfile": profile})),
    )
}

pub(crate) fn configuration(auth: &Authority, op: &str, id: &str) -> Value {
    let r = auth.json(
        "GET",
        &format!("{API}/agents/{id}/boarding/configuration"),
        Some(op),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

pub(crate) fn register(auth: &Authority, iat: &str, body: &Value) -> Response {
    auth.json("POST", &format!("{API}/register"), Some(iat), Some(body))
}

pub(crate) fn status(auth: &Authority, op: &str, id: &str) -> String {
    let r = auth.json(
        "GET",
        &format!("{API}/agents/{id}/boarding/status"),
        Some(op),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["status"].as_str().expect("status").to_owned()
}

pub(crate) fn introspect(auth: &Authority, op: &str, token: &str) -> bool {
    let r = auth.form(
        "/oauth/introspect",
        &format!("token={}", form_encode(token)),
        &[("Authorization", &format!("Bearer {op}"))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["active"].as_bool().expect("active")
}

/// Creates an agent and registers it; returns the registration response.
pub(crate) fn board(auth: &Authority, op: &str, id: &str, profile: &str, body: &Value) -> Value {
    let r = create(auth, op, id, &format!("agent {id}"), profile);
    assert_eq!(r.status, 201, "{}", r.text());
    let config = configuration(auth, op, id);
    let r = register(auth, config["content"]["iat"].as_str().expect("iat"), body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn path_of(uri: &str, auth: &Authority) -> String {
    uri.strip_prefix(&auth.base_url())
        .expect("registration_client_uri on this server")
        .to_owned()
}

/// The access token verifies with the key `token_key` publishes (as the Node SDK checks it).
fn check_access_token(auth: &Authority, token: &str, id: &str) {
    let r = auth.json("GET", &format!("{API}/oauth/token_key"), None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let key = r.json();
    let pem = key["value"].as_str().expect("value");
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----MII") && !pem.contains('\n'),
        "one-line PEM: {pem}"
    );
    assert_eq!(key["kty"], "RSA");
    let vk = VerifyingKey::from_pem(
        pem,
        latchkey_core::AlgorithmSet::RSA_PKCS1,
        &latchkey_core::RsaPolicy::DEFAULT,
    )
    .expect("PEM parses")
    .with_kid(key["kid"].as_str().expect("kid"));
    let v = latchkey_core::Validation {
        audiences: vec!["southgate".into()],
        ..latchkey_core::Validation::new(latchkey_core::TokenType::AccessToken)
    };
    let verified = latchkey_core::jws::verify(token, &vk, &v, now())
        .expect("access token verifies with token_key");
    assert_eq!(verified.header().alg(), Algorithm::RS256);
    let c = verified.claims();
    assert_eq!(c.sub.as_deref(), Some(id));
    assert_eq!(c.extra_str("ten"), Some("main"));
    assert_eq!(c.extra_str("client_id"), Some(id));
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn shared_secret_agent_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();

    // Agent management.
    let r = create(&auth, &op, "ss-1", "Nanobox Agent", "SHARED_SECRET");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"id": "ss-1", "eTag": "2", "entityId": "ss-1", "name": "Nanobox Agent", "securityProfile": "SHARED_SECRET"})
    );
    assert_error(
        &create(&auth, &op, "ss-1", "Other", "SHARED_SECRET"),
        409,
        "conflict",
        "ss-1",
    );
    assert_error(
        &create(&auth, &op, "ss-2", "Nanobox Agent", "SHARED_SECRET"),
        409,
        "conflict",
        "Nanobox Agent",
    );
    assert_error(
        &create(&auth, &op, "ss-2", "x", "RSA_2048"),
        400,
        "invalid_request",
        "securityProfile",
    );
    assert_error(
        &create(&auth, &op, "bad/id", "x", "RSA_3072"),
        400,
        "invalid_request",
        "agent ids",
    );
    let r = auth.json(
        "POST",
        &format!("{API}/agents"),
        None,
        Some(&json!({"entityId": "x", "name": "x", "securityProfile": "RSA_3072"})),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = auth.json(
        "GET",
        &format!("{API}/agents?page=0&size=5&sort=name,desc"),
        Some(&op),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(
        (
            page["totalElements"].as_u64(),
            page["size"].as_u64(),
            page["first"].as_bool()
        ),
        (Some(1), Some(5), Some(true))
    );
    assert_eq!(page["content"][0]["id"], "ss-1");
    assert_eq!(status(&auth, &op, "ss-1"), "ONBOARDING");
    assert_error(
        &auth.json("GET", &format!("{API}/agents/nope"), Some(&op), None),
        404,
        "not_found",
        "nope",
    );

    // Boarding configuration.
    let config = configuration(&auth, &op, "ss-1");
    let content = &config["content"];
    assert_eq!(content["baseUrl"], auth.base_url());
    assert_eq!(content["clientId"], "ss-1");
    assert_eq!(content["tenant"], "main");
    assert_eq!(content["clientCredentialProfile"], json!(["SHARED_SECRET"]));
    let expiration = config["expiration"].as_str().expect("expiration");
    assert!(
        expiration.len() == 24 && expiration.ends_with('Z') && expiration.as_bytes()[19] == b'.',
        "{expiration}"
    );
    let iat = content["iat"].as_str().expect("iat").to_owned();
    assert_eq!(
        configuration(&auth, &op, "ss-1")["content"]["iat"],
        iat.as_str(),
        "same IAT until used"
    );

    // Register: wrong IAT, wrong body, then the real thing; the IAT works once.
    assert_error(
        &register(&auth, "not.a.jwt", &json!({})),
        401,
        "invalid_token",
        "initial access token",
    );
    assert_error(
        &register(&auth, &op, &json!({})),
        401,
        "invalid_token",
        "initial access token",
    );
    let key = rsa(3072, 0, Algorithm::RS256);
    assert_error(
        &register(
            &auth,
            &iat,
            &json!({"jwks": {"keys": [public_jwk(&key, "k")]}}),
        ),
        400,
        "invalid_request",
        "without jwks",
    );
    let r = register(&auth, &iat, &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let reg = r.json();
    assert_eq!(reg["client_id"], "ss-1");
    assert_eq!(reg["token_endpoint_auth_method"], "client_secret_jwt");
    assert_eq!(reg["grant_types"], json!(["client_credentials"]));
    assert_eq!(
        reg["registration_client_uri"],
        format!("{}{API}/register/ss-1", auth.base_url())
    );
    let secret = reg["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_owned();
    assert_eq!(secret.len(), 43, "256 bits of base64url");
    let expires = reg["client_secret_expires_at"]
        .as_u64()
        .expect("expires_at");
    assert!(
        expires >= now() + 7 * 86_400 - 60 && expires <= now() + 7 * 86_400 + 60,
        "{expires}"
    );
    let rat = reg["registration_access_token"]
        .as_str()
        .expect("rat")
        .to_owned();
    assert_error(
        &register(&auth, &iat, &json!({})),
        400,
        "invalid_grant",
        "already used",
    );
    assert_eq!(status(&auth, &op, "ss-1"), "ONBOARDED");
    assert!(
        configuration(&auth, &op, "ss-1")["content"]
            .get("iat")
            .is_none()
    );

    // Tokens.
    let hs = |s: &str| SigningKey::hmac(Algorithm::HS256, s.as_bytes()).expect("hmac");
    let r = token(&auth, || {
        sign(&hs(&secret), None, &node_claims("ss-1", "main"))
    });
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(
        (t["token_type"].as_str(), t["expires_in"].as_u64()),
        (Some("Bearer"), Some(3600))
    );
    assert!(t["scope"].is_array() && t["jti"].is_string(), "{t}");
    let access = t["access_token"].as_str().expect("access_token").to_owned();
    check_access_token(&auth, &access, "ss-1");
    assert!(introspect(&auth, &op, &access));
    let mcl = token(&auth, || {
        sign(
            &SigningKey::hmac(Algorithm::HS512, secret.as_bytes()).expect("hmac"),
            None,
            &mcl_claims("ss-1", "main"),
        )
    });
    assert_eq!(mcl.status, 200, "{}", mcl.text());

    // Rejections at the token endpoint.
    let replayed = sign(&hs(&secret), None, &node_claims("ss-1", "main"));
    assert_eq!(token(&auth, || replayed.clone()).status, 200);
    assert_error(
        &token(&auth, || replayed.clone()),
        401,
        "invalid_client",
        "replayed",
    );
    let mut c = node_claims("ss-1", "main");
    c["aud"] = json!(["https://somewhere.else"]);
    assert_error(
        &token(&auth, || sign(&hs(&secret), None, &c)),
        401,
        "invalid_client",
        "audience",
    );
    let mut c = node_claims("ss-1", "main");
    c["exp"] = (now() - 600).into();
    c["iat"] = (now() - 4200).into();
    assert_error(
        &token(&auth, || sign(&hs(&secret), None, &c)),
        401,
        "invalid_client",
        "",
    );
    let mut c = node_claims("ss-1", "main");
    c["exp"] = (now() + 30 * 3600).into();
    assert_error(
        &token(&auth, || sign(&hs(&secret), None, &c)),
        401,
        "invalid_client",
        "lifetime",
    );
    let rs = rsa(3072, 0, Algorithm::RS256);
    assert_error(
        &token(&auth, || sign(&rs, None, &node_claims("ss-1", "main"))),
        401,
        "invalid_client",
        "alg",
    );
    assert_error(
        &token(&auth, || {
            sign(&hs(&"x".repeat(43)), None, &node_claims("ss-1", "main"))
        }),
        401,
        "invalid_client",
        "signature",
    );
    let r = auth.form(&format!("{API}/oauth/token"), "grant_type=password", &[]);
    assert_error(&r, 400, "unsupported_grant_type", "client_credentials");

    // RFC 7592 read, then rotation: new secret, new RAT, the old ones dead at once.
    let uri = path_of(reg["registration_client_uri"].as_str().expect("uri"), &auth);
    let r = auth.json("GET", &uri, Some(&rat), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["client_id"], "ss-1");
    assert!(r.json().get("client_secret").is_none());
    let r = auth.json("PUT", &uri, Some(&rat), Some(&json!({"client_id": "ss-1"})));
    assert_eq!(r.status, 200, "{}", r.text());
    let rotated = r.json();
    assert_eq!(rotated["client_id"], "ss-1");
    let secret2 = rotated["client_secret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    let rat2 = rotated["registration_access_token"]
        .as_str()
        .expect("new rat")
        .to_owned();
    assert!(secret2 != secret && rat2 != rat);
    // The old RAT and secret die with the first use of a new credential (until then a lost
    // answer could be fetched again; see `rotation.rs`).
    assert_eq!(
        token(&auth, || sign(
            &hs(&secret2),
            None,
            &node_claims("ss-1", "main")
        ))
        .status,
        200
    );
    assert_error(
        &auth.json("PUT", &uri, Some(&rat), Some(&json!({"client_id": "ss-1"}))),
        401,
        "invalid_token",
        "not current",
    );
    assert_error(
        &auth.json("GET", &uri, Some(&rat), None),
        401,
        "invalid_token",
        "not current",
    );
    assert_error(
        &token(&auth, || {
            sign(&hs(&secret), None, &node_claims("ss-1", "main"))
        }),
        401,
        "invalid_client",
        "signature",
    );
    assert_eq!(
        token(&auth, || sign(
            &hs(&secret2),
            None,
            &node_claims("ss-1", "main")
        ))
        .status,
        200
    );
    assert_error(
        &auth.json(
            "PUT",
            &uri,
            Some(&rat2),
            Some(&json!({"client_id": "other"})),
        ),
        400,
        "invalid_request",
        "client_id",
    );

    // Another client's RAT does not work here.
    let other = board(&auth, &op, "ss-other", "SHARED_SECRET", &json!({}));
    let other_rat = other["registration_access_token"].as_str().expect("rat");
    assert_error(
        &auth.json(
            "PUT",
            &uri,
            Some(other_rat),
            Some(&json!({"client_id": "ss-1"})),
        ),
        401,
        "invalid_token",
        "not current",
    );

    // Offboarding revokes everything; boarding again works.
    let r = auth.json(
        "POST",
        &format!("{API}/agents/ss-1/boarding/offboard"),
        Some(&op),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "NOT_ONBOARDED");
    assert!(
        !introspect(&auth, &op, &access),
        "access tokens issued before offboarding are revoked"
    );
    assert_error(
        &token(&auth, || {
            sign(&hs(&secret2), None, &node_claims("ss-1", "main"))
        }),
        401,
        "invalid_client",
        "unknown client",
    );
    assert_error(
        &auth.json(
            "PUT",
            &uri,
            Some(&rat2),
            Some(&json!({"client_id": "ss-1"})),
        ),
        401,
        "invalid_token",
        "not current",
    );
    assert_error(&register(&auth, &iat, &json!({})), 400, "invalid_grant", "");
    let config = configuration(&auth, &op, "ss-1");
    let iat2 = config["content"]["iat"].as_str().expect("a fresh IAT");
    assert_ne!(iat2, iat);
    assert_eq!(status(&auth, &op, "ss-1"), "ONBOARDING");
    let r = register(&auth, iat2, &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let secret3 = r.json()["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let r = token(&auth, || {
        sign(&hs(&secret3), None, &node_claims("ss-1", "main"))
    });
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(introspect(
        &auth,
        &op,
        r.json()["access_token"].as_str().expect("token")
    ));
    let r = auth.json("GET", &format!("{API}/agents/ss-1/status"), Some(&op), None);
    assert_eq!(r.json()["status"], "ONLINE", "{}", r.text());

    // eTags: a stale one is refused with 412, the current one works.
    let r = auth.json("GET", &format!("{API}/agents/ss-1"), Some(&op), None);
    let etag = r.json()["eTag"].as_str().expect("eTag").to_owned();
    let stale = (etag.parse::<u64>().expect("number") - 1).to_string();
    let update = json!({"name": "Renamed", "securityProfile": "SHARED_SECRET"});
    let put = |m: &str| {
        auth.json_with(
            "PUT",
            &format!("{API}/agents/ss-1"),
            Some(&op),
            Some(&update),
            &[("If-Match", m)],
        )
    };
    assert_error(&put(&stale), 412, "precondition_failed", "eTag");
    assert_error(
        &auth.json(
            "PUT",
            &format!("{API}/agents/ss-1"),
            Some(&op),
            Some(&update),
        ),
        400,
        "invalid_request",
        "If-Match",
    );
    let r = put(&etag);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "Renamed");
    let etag = r.json()["eTag"].as_str().expect("eTag").to_owned();
    let del = |m: &str| {
        auth.json_with(
            "DELETE",
            &format!("{API}/agents/ss-1"),
            Some(&op),
            None,
            &[("If-Match", m)],
        )
    };
    assert_error(&del(&stale), 412, "precondition_failed", "eTag");
    assert_eq!(del(&etag).status, 204);
    assert_eq!(
        auth.json("GET", &format!("{API}/agents/ss-1"), Some(&op), None)
            .status,
        404
    );
    auth.stop();
}

#[test]
fn rsa_3072_agent_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let r = create(&auth, &op, "rsa-1", "RSA agent", "RSA_3072");
    assert_eq!(r.status, 201, "{}", r.text());
    let config = configuration(&auth, &op, "rsa-1");
    assert_eq!(
        config["content"]["clientCredentialProfile"],
        json!(["RSA_3072"])
    );
    let iat = config["content"]["iat"].as_str().expect("iat").to_owned();

    // Only exactly 3072-bit keys with e = 65537; a refused body does not spend the IAT.
    let jwks = |key: &SigningKey, kid: &str| json!({"jwks": {"keys": [public_jwk(key, kid)]}});
    assert_error(
        &register(&auth, &iat, &json!({})),
        400,
        "invalid_request",
        "jwks",
    );
    assert_error(
        &register(&auth, &iat, &jwks(&rsa(2048, 0, Algorithm::RS256), "k")),
        400,
        "invalid_request",
        "2048 bits",
    );
    assert_error(
        &register(&auth, &iat, &jwks(&rsa(4096, 0, Algorithm::RS256), "k")),
        400,
        "invalid_request",
        "3072",
    );
    let node_key = rsa(3072, 0, Algorithm::RS384);
    let r = register(&auth, &iat, &jwks(&node_key, "mindconnect-key-1"));
    assert_eq!(r.status, 201, "{}", r.text());
    let reg = r.json();
    assert_eq!(reg["token_endpoint_auth_method"], "private_key_jwt");
    assert!(reg.get("client_secret").is_none());
    assert!(reg["client_secret_expires_at"].as_u64().expect("expires") > now() + 6 * 86_400);

    // The Node SDK signs RS384 with kid, MCL RS256 (24-hour assertions).
    let r = token(&auth, || {
        sign(
            &node_key,
            Some("mindconnect-key-1"),
            &node_claims("rsa-1", "main"),
        )
    });
    assert_eq!(r.status, 200, "{}", r.text());
    check_access_token(
        &auth,
        r.json()["access_token"].as_str().expect("token"),
        "rsa-1",
    );
    let mcl_key = rsa(3072, 0, Algorithm::RS256);
    assert_eq!(
        token(&auth, || sign(&mcl_key, None, &mcl_claims("rsa-1", "main"))).status,
        200
    );
    // Algorithm and key mismatches.
    let hs = SigningKey::hmac(Algorithm::HS256, &[9; 32]).expect("hmac");
    assert_error(
        &token(&auth, || {
            sign(
                &hs,
                Some("mindconnect-key-1"),
                &node_claims("rsa-1", "main"),
            )
        }),
        401,
        "invalid_client",
        "alg",
    );
    let stranger = rsa(3072, 1, Algorithm::RS256);
    assert_error(
        &token(&auth, || {
            sign(
                &stranger,
                Some("mindconnect-key-1"),
                &node_claims("rsa-1", "main"),
            )
        }),
        401,
        "invalid_client",
        "signature",
    );
    assert_error(
        &token(&auth, || {
            sign(
                &stranger,
                Some("unknown-kid"),
                &node_claims("rsa-1", "main"),
            )
        }),
        401,
        "invalid_client",
        "kid",
    );

    // Rotation: the Node SDK sends the same key and kid again; MCL a new key with a new kid.
    let uri = path_of(reg["registration_client_uri"].as_str().expect("uri"), &auth);
    let rat = reg["registration_access_token"]
        .as_str()
        .expect("rat")
        .to_owned();
    let mut body = jwks(&node_key, "mindconnect-key-1");
    body["client_id"] = "rsa-1".into();
    let r = auth.json("PUT", &uri, Some(&rat), Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let rat2 = r.json()["registration_access_token"]
        .as_str()
        .expect("rat")
        .to_owned();
    assert_eq!(
        token(&auth, || sign(
            &node_key,
            Some("mindconnect-key-1"),
            &node_claims("rsa-1", "main")
        ))
        .status,
        200
    );
    let new_key = rsa(3072, 2, Algorithm::RS256);
    let kid = uuid();
    let mut body = jwks(&new_key, &kid);
    body["client_id"] = "rsa-1".into();
    assert_error(
        &auth.json(
            "PUT",
            &uri,
            Some(&rat2),
            Some(&jwks(&rsa(2048, 0, Algorithm::RS256), "k")),
        ),
        400,
        "invalid_request",
        "2048",
    );
    let r = auth.json("PUT", &uri, Some(&rat2), Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_error(
        &auth.json("PUT", &uri, Some(&rat), Some(&body)),
        401,
        "invalid_token",
        "not current",
    );
    assert_eq!(
        token(&auth, || sign(
            &new_key,
            Some(&kid),
            &mcl_claims("rsa-1", "main")
        ))
        .status,
        200
    );
    assert_error(
        &token(&auth, || {
            sign(
                &node_key,
                Some("mindconnect-key-1"),
                &node_claims("rsa-1", "main"),
            )
        }),
        401,
        "invalid_client",
        "kid",
    );
    let r = auth.json(
        "GET",
        &uri,
        Some(r.json()["registration_access_token"].as_str().expect("rat")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["jwks"]["keys"][0]["kid"], kid.as_str());
    auth.stop();
}

/// One `POST /oauth/token`, no retry: what an SDK that does not retry on 503 sees.
fn token_once(auth: &Authority, assertion: &str) -> Response {
    auth.form(&format!("{API}/oauth/token"), &token_form(assertion), &[])
}

/// How the server goes down between two starts on the same data.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// SIGTERM: in-flight requests finish, the replay log is closed.
    Graceful,
    /// SIGKILL: the process ends wherever it is.
    Kill,
}

/// Across a restart, with default settings: an assertion accepted before is refused after
/// (the replay log brought its jti back), and a fresh one is accepted at once, no 503.
fn restart_and_continue(how: Restart) {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let reg = board(&auth, &op, "restart-1", "SHARED_SECRET", &json!({}));
    let secret = reg["client_secret"].as_str().expect("secret").to_owned();
    let key = SigningKey::hmac(Algorithm::HS256, secret.as_bytes()).expect("hmac");
    let fresh = || sign(&key, None, &node_claims("restart-1", "main"));
    // A first start accepts assertions at once.
    let used = fresh();
    let r = token_once(&auth, &used);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_error(&token_once(&auth, &used), 401, "invalid_client", "replayed");
    // Signed before the restart, never presented: still fresh after it.
    let unused = fresh();
    match how {
        Restart::Graceful => auth.stop(),
        Restart::Kill => auth.kill(),
    }

    let auth = start(dir.path());
    assert_error(&token_once(&auth, &used), 401, "invalid_client", "replayed");
    let r = token_once(&auth, &fresh());
    assert_eq!(r.status, 200, "{how:?}: {}", r.text());
    let r = token_once(&auth, &unused);
    assert_eq!(r.status, 200, "{how:?}: {}", r.text());
    assert_error(
        &token_once(&auth, &unused),
        401,
        "invalid_client",
        "replayed",
    );
    // The log's size is a metric (header, open record and the entries so far).
    let metrics = auth.request("GET", "/metrics", &[], b"").text();
    let bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("latchkey_replay_log_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("latchkey_replay_log_bytes");
    assert!(bytes > 2 * 30, "{bytes}");
    auth.stop();
}

#[test]
fn graceful_restart_accepts_fresh_assertions_at_once_and_refuses_replays() {
    restart_and_continue(Restart::Graceful);
}

#[test]
fn kill_9_restart_accepts_fresh_assertions_at_once_and_refuses_replays() {
    restart_and_continue(Restart::Kill);
}

/// A data directory without a replay log but with registered agents (a store from a release
/// before the log, or the log removed): the previous process's assertions are unknown, so the
/// start floor applies, `start + leeway + 1`, answered 503 with `Retry-After` while ahead.
#[test]
fn without_a_replay_log_the_start_floor_refuses_old_assertions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let reg = board(&auth, &op, "nolog-1", "SHARED_SECRET", &json!({}));
    let secret = reg["client_secret"].as_str().expect("secret").to_owned();
    let key = SigningKey::hmac(Algorithm::HS256, secret.as_bytes()).expect("hmac");
    let used = sign(&key, None, &node_claims("nolog-1", "main"));
    assert_eq!(token_once(&auth, &used).status, 200);
    auth.stop();
    std::fs::remove_dir_all(dir.path().join("data/replay-log")).expect("remove log");

    let auth = start(dir.path());
    let r = token_once(&auth, &used);
    assert_eq!(r.status, 503, "{}", r.text());
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=61).contains(&wait), "{wait}");
    // A fresh assertion too: the floor is ahead of every fresh iat for a leeway.
    let r = token_once(&auth, &sign(&key, None, &node_claims("nolog-1", "main")));
    assert_eq!(r.status, 503, "{}", r.text());
    auth.stop();
}

/// Runs `tests/interop/onboarding.js` on a boarding configuration file and SDK state
/// directory; returns its JSON report (panics with both sides' output if it fails).
fn run_node_sdk(auth: &Authority, config_file: &Path, state_dir: &Path) -> Value {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    let sdk = interop.join("node_modules/@mindconnect/mindconnect-nodejs");
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is required for the Node SDK interop test (install Node.js 18+): {node:?}"
    );
    assert!(
        sdk.is_dir(),
        "{} is missing: run `npm ci --prefix tests/interop` (scripts/test.sh does)",
        sdk.display()
    );
    let out = std::process::Command::new("node")
        .arg(interop.join("onboarding.js"))
        .arg(config_file)
        .arg(state_dir)
        .env("NODE_EXTRA_CA_CERTS", auth.ca_path())
        .current_dir(&interop)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver:\n{}",
        auth.stderr()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON report on the last line")
}

/// The Node SDK, which does not retry a 503 from the token endpoint, keeps working right
/// after `kill -9` and a restart on default settings: its state from before (onboarded,
/// rotated secret) still gets and validates tokens at once.
#[test]
fn node_sdk_continues_right_after_a_kill_9_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    assert_eq!(
        create(&auth, &op, "node-2", "Node SDK agent", "SHARED_SECRET").status,
        201
    );
    let config = configuration(&auth, &op, "node-2");
    let config_file = dir.path().join("boarding.json");
    std::fs::write(&config_file, config.to_string()).expect("write config");
    let state = dir.path().join("sdk-state");
    let first = run_node_sdk(&auth, &config_file, &state);
    assert_eq!(first["onboarded"], "ONBOARDED", "{first}");
    // Same address: the SDK keeps the boarding configuration's baseUrl.
    let addr = auth.addr.to_string();
    auth.kill();

    let auth = Authority::start_at(&dir.path().join("data"), None, &addr);
    let again = run_node_sdk(&auth, &config_file, &state);
    assert_eq!(again["onboarded"], "ALREADY", "{again}");
    assert_eq!(again["validated"], true, "{again}");
    for token in again["tokens"].as_array().expect("tokens") {
        check_access_token(&auth, token.as_str().expect("token"), "node-2");
    }
    auth.stop();
}

/// The published Node.js SDK (`tests/interop`, installed by `scripts/test.sh`) onboards a
/// SHARED_SECRET agent from a boarding configuration made here, gets and validates a token
/// (fetching `token_key`), and rotates its secret.
#[test]
fn node_sdk_onboards_gets_tokens_and_rotates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    assert_eq!(
        create(&auth, &op, "node-1", "Node SDK agent", "SHARED_SECRET").status,
        201
    );
    let config = configuration(&auth, &op, "node-1");
    let config_file = dir.path().join("boarding.json");
    std::fs::write(&config_file, config.to_string()).expect("write config");
    let report = run_node_sdk(&auth, &config_file, &dir.path().join("sdk-state"));
    assert_eq!(report["onboarded"], "ONBOARDED", "{report}");
    assert_eq!(report["validated"], true, "{report}");
    assert_eq!(report["rotated"], true, "{report}");
    assert_ne!(report["secretBefore"], report["secretAfter"], "{report}");
    // The server agrees: onboarded, online, and the SDK's first RAT is dead.
    assert_eq!(status(&auth, &op, "node-1"), "ONBOARDED");
    let old_rat = report["ratBefore"].as_str().expect("ratBefore");
    let uri = format!("{API}/register/node-1");
    assert_error(
        &auth.json("GET", &uri, Some(old_rat), None),
        401,
        "invalid_token",
        "not current",
    );
    let new_rat = report["ratAfter"].as_str().expect("ratAfter");
    assert_eq!(auth.json("GET", &uri, Some(new_rat), None).status, 200);
    for token in report["tokens"].as_array().expect("tokens") {
        check_access_token(&auth, token.as_str().expect("token"), "node-1");
    }
    auth.stop();
}
