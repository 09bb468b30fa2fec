//! The operator surface end to end: operator clients and profiles (Usercube-style, hashes
//! included), the token endpoint's RFC 6749 rules, key publication, permission and tenant
//! boundaries, key import (PEM, .pfx) and rotation with tokens in flight, introspection,
//! revocation, the audit trail, and the CLI against a running server and a stopped one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use latchkey_core::{Algorithm, SigningKey};
use serde_json::{Value, json};

use crate::util::https::{Authority, form_encode};
use crate::util::latchkey_bin;
use crate::util::server::Response;

const USERCUBE_SAMPLE: &str = "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=";
const V1: &str = "/api/latchkey/v1";
const AGENTS: &str = "/api/agentmanagement/v3/agents";

/// Settings with a Usercube-style read-only client `Job` (secret "secret") in the default
/// tenant and an administrator `acme-admin` (secret "acme-secret") in tenant `acme`.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let acme = hash("acme-secret", "usercube");
    let text = format!(
        r#"
{extra}
[[tenants]]
id = "acme"
token-alg = "ES256"

[[clients]]
identifier = "Job"
hashed_secret = "{USERCUBE_SAMPLE}"
display_name = "Permissions for jobs"
profile = "ReadOnly"

[[clients]]
identifier = "acme-admin"
hashed_secret = "{acme}"
profile = "Administrator"
tenant = "acme"
"#
    );
    let path = dir.join("latchkey.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn hash(secret: &str, format: &str) -> String {
    let out = cli(&["hash-secret", "--client-secret", secret, "--format", format]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn cli(args: &[&str]) -> Output {
    Command::new(latchkey_bin())
        .args(args)
        .output()
        .expect("run latchkey")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--server` and `--credentials` for the admin client created on first run.
fn remote(auth: &Authority) -> Vec<String> {
    vec![
        "--server".into(),
        auth.base_url(),
        "--credentials".into(),
        auth.data_dir
            .join("admin-client.json")
            .display()
            .to_string(),
    ]
}

fn cli_json(auth: &Authority, args: &[&str]) -> Value {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(remote(auth));
    all.push("--json".into());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = cli(&refs);
    assert!(out.status.success(), "latchkey {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("CLI JSON")
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

fn token_for(auth: &Authority, id: &str, secret: &str) -> String {
    let r = auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &basic(id, secret))],
    );
    assert_eq!(r.status, 200, "token for {id}: {}", r.text());
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

fn header(token: &str) -> Value {
    let h = token.split('.').next().expect("header");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .expect("b64"),
    )
    .expect("json")
}

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], code, "{}", r.text());
}

fn admin_secret(auth: &Authority) -> String {
    crate::util::admin_secret(&auth.data_dir)
}

fn introspect(auth: &Authority, caller: &str, token: &str) -> Response {
    auth.form(
        "/oauth/introspect",
        &format!("token={}", form_encode(token)),
        &[("Authorization", caller)],
    )
}

fn whoami(auth: &Authority, token: &str) -> u16 {
    auth.json("GET", &format!("{V1}/whoami"), Some(token), None)
        .status
}

#[test]
fn token_endpoint_follows_rfc_6749_and_publishes_keys_in_the_uaa_shape() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, None);
    assert!(
        auth.wait_stderr("admin-client.json"),
        "first run names the credentials file"
    );
    let secret = admin_secret(&auth);
    assert!(
        !auth.stderr().contains(&secret),
        "the secret itself is never printed"
    );

    // client_secret_basic
    let r = auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &basic("admin", &secret))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(
        body["scope"]
            .as_str()
            .expect("scope")
            .contains("agents:write")
    );
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        header(&token)["alg"],
        "RS256",
        "operator tokens default to RS256 for the SDKs"
    );

    // client_secret_post
    let r = auth.form(
        "/oauth/token",
        &format!(
            "grant_type=client_credentials&client_id=admin&client_secret={}",
            form_encode(&secret)
        ),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Both at once, wrong secret, unknown client, missing or unsupported grant, bad scope.
    let r = auth.form(
        "/oauth/token",
        &format!(
            "grant_type=client_credentials&client_id=admin&client_secret={}",
            form_encode(&secret)
        ),
        &[("Authorization", &basic("admin", &secret))],
    );
    assert_error(&r, 400, "invalid_request");
    for who in [basic("admin", "wrong"), basic("nobody", &secret)] {
        let r = auth.form(
            "/oauth/token",
            "grant_type=client_credentials",
            &[("Authorization", &who)],
        );
        assert_error(&r, 401, "invalid_client");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Basic")),
            "{:?}",
            r.headers
        );
    }
    let r = auth.form(
        "/oauth/token",
        "",
        &[("Authorization", &basic("admin", &secret))],
    );
    assert_error(&r, 400, "invalid_request");
    let r = auth.form(
        "/oauth/token",
        "grant_type=password",
        &[("Authorization", &basic("admin", &secret))],
    );
    assert_error(&r, 400, "unsupported_grant_type");
    let r = auth.form(
        "/oauth/token",
        "grant_type=client_credentials&scope=agents:fly",
        &[("Authorization", &basic("admin", &secret))],
    );
    assert_error(&r, 400, "invalid_scope");
    let r = auth.request(
        "POST",
        "/oauth/token",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &basic("admin", &secret)),
        ],
        b"{}",
    );
    assert_error(&r, 400, "invalid_request");
    // A narrower scope is granted as asked.
    let r = auth.form(
        "/oauth/token",
        "grant_type=client_credentials&scope=agents:read",
        &[("Authorization", &basic("admin", &secret))],
    );
    assert_eq!(r.json()["scope"], "agents:read");

    // /token_keys: UAA shape, the signing key first (the SDK only looks at the first entry).
    let keys = auth.json("GET", "/token_keys", None, None).json();
    let first = &keys["keys"][0];
    assert_eq!(first["kid"], header(&token)["kid"]);
    for member in ["kty", "alg", "use", "n", "e"] {
        assert!(first[member].is_string(), "{member}: {first}");
    }
    assert!(
        first["value"]
            .as_str()
            .expect("value")
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    let one = auth.json("GET", "/token_key", None, None).json();
    assert_eq!(one["kid"], first["kid"]);
    let jwks = auth
        .json("GET", "/.well-known/jwks.json", None, None)
        .json();
    assert!(
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .any(|k| k["kid"] == first["kid"])
    );
    assert!(
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .all(|k| k.get("d").is_none() && k.get("value").is_none())
    );
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let meta = auth.json("GET", path, None, None).json();
        assert_eq!(meta["issuer"], auth.base_url());
        assert_eq!(
            meta["token_endpoint"],
            format!("{}/oauth/token", auth.base_url())
        );
        assert_eq!(
            meta["token_endpoint_auth_methods_supported"],
            json!(["client_secret_basic", "client_secret_post"])
        );
    }

    // Restart: no second admin, the same keys.
    auth.stop();
    let auth = Authority::start(&data, None);
    assert!(
        !auth.stderr().contains("created operator client"),
        "{}",
        auth.stderr()
    );
    // (The issuer defaults to the listening URL, which a test's port 0 changes; set
    // `[tokens] issuer` or `public-url` for tokens that outlive a move.)
    assert_eq!(whoami(&auth, &auth.operator_token()), 200);
    assert_eq!(
        auth.json("GET", "/token_keys", None, None).json()["keys"][0]["kid"],
        first["kid"]
    );
}

#[test]
fn usercube_hashes_profiles_and_tenant_boundaries() {
    assert_eq!(hash("secret", "usercube"), USERCUBE_SAMPLE);
    let own = hash("secret", "latchkey");
    assert!(own.starts_with("lk1$blake3$"), "{own}");
    assert_ne!(own, hash("secret", "latchkey"), "salted");

    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let admin = auth.operator_token();

    // The Usercube sample hash authenticates with "secret" and grants the ReadOnly profile.
    let job = token_for(&auth, "Job", "secret");
    let r = auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &basic("Job", "Secret"))],
    );
    assert_error(&r, 401, "invalid_client");
    let me = auth
        .json("GET", &format!("{V1}/whoami"), Some(&job), None)
        .json();
    assert_eq!(me["tenant"], "main");
    assert!(
        !me["permissions"]
            .as_array()
            .expect("perms")
            .iter()
            .any(|p| p == "agents:write"),
        "{me}"
    );

    // Read-only: reads work, every write is 403.
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&admin),
        Some(&json!({"entityId": "e-main", "name": "Main", "securityProfile": "SHARED_SECRET"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(auth.json("GET", AGENTS, Some(&job), None).status, 200);
    assert_eq!(
        auth.json("GET", &format!("{AGENTS}/e-main"), Some(&job), None)
            .status,
        200
    );
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&job),
        Some(&json!({"entityId": "e2", "name": "x", "securityProfile": "SHARED_SECRET"})),
    );
    assert_error(&r, 403, "insufficient_scope");
    assert_eq!(
        auth.json(
            "POST",
            &format!("{AGENTS}/e-main/boarding/offboard"),
            Some(&job),
            None
        )
        .status,
        403
    );
    assert_eq!(
        auth.json_with(
            "DELETE",
            &format!("{AGENTS}/e-main"),
            Some(&job),
            None,
            &[("If-Match", "\"2\"")]
        )
        .status,
        403
    );
    assert_eq!(
        auth.json(
            "POST",
            &format!("{V1}/clients"),
            Some(&job),
            Some(&json!({"client_id": "x"}))
        )
        .status,
        403
    );
    assert_eq!(
        auth.json("POST", &format!("{V1}/keys/rotate"), Some(&job), None)
            .status,
        403
    );
    assert_eq!(
        auth.json(
            "POST",
            &format!("{V1}/revocations"),
            Some(&job),
            Some(&json!({"kind": "agent", "id": "e-main"}))
        )
        .status,
        403
    );
    assert_eq!(
        auth.json("GET", &format!("{V1}/keys"), Some(&job), None)
            .status,
        200
    );
    // No token, or a garbage one: 401.
    assert_error(&auth.json("GET", AGENTS, None, None), 401, "invalid_token");
    assert_error(
        &auth.json("GET", AGENTS, Some("x.y.z"), None),
        401,
        "invalid_token",
    );

    // Another tenant sees nothing of this one: 404, never 403.
    let acme = token_for(&auth, "acme-admin", "acme-secret");
    assert_eq!(
        header(&acme)["alg"],
        "RS256",
        "operator tokens do not follow the tenant's agent alg"
    );
    assert_error(
        &auth.json("GET", &format!("{AGENTS}/e-main"), Some(&acme), None),
        404,
        "not_found",
    );
    assert_eq!(
        auth.json(
            "POST",
            &format!("{AGENTS}/e-main/boarding/offboard"),
            Some(&acme),
            None
        )
        .status,
        404
    );
    assert_eq!(
        auth.json(
            "GET",
            &format!("{AGENTS}/e-main/boarding/configuration"),
            Some(&acme),
            None
        )
        .status,
        404
    );
    let list = auth.json("GET", AGENTS, Some(&acme), None).json();
    assert!(!list.to_string().contains("e-main"), "{list}");
    let clients = auth
        .json("GET", &format!("{V1}/clients"), Some(&acme), None)
        .json();
    let ids: Vec<&str> = clients["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    assert_eq!(ids, ["acme-admin"]);
    assert_eq!(
        auth.json("DELETE", &format!("{V1}/clients/Job"), Some(&acme), None)
            .status,
        404
    );
    assert_eq!(
        auth.json("GET", &format!("{V1}/keys"), Some(&acme), None)
            .status,
        404
    );
    assert_eq!(
        auth.json("GET", &format!("{V1}/audit"), Some(&acme), None)
            .status,
        404
    );
    assert_eq!(
        auth.json(
            "POST",
            &format!("{V1}/revocations"),
            Some(&acme),
            Some(&json!({"kind": "agent", "id": "e-main"}))
        )
        .status,
        404
    );
    // Agent names are unique per tenant only, and acme's agents are invisible to main.
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&acme),
        Some(&json!({"entityId": "e-acme", "name": "Main", "securityProfile": "SHARED_SECRET"})),
    );
    assert_eq!(
        r.status,
        201,
        "names are unique per tenant only: {}",
        r.text()
    );
    assert_error(
        &auth.json("GET", &format!("{AGENTS}/e-acme"), Some(&admin), None),
        404,
        "not_found",
    );

    // Clients created through the API: a generated secret shown once, never more than the
    // creator holds.
    let r = auth.json(
        "POST",
        &format!("{V1}/clients"),
        Some(&admin),
        Some(&json!({"client_id": "auditor", "profile": "ReadOnly"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let secret = created["client_secret"]
        .as_str()
        .expect("generated secret")
        .to_owned();
    assert!(secret.len() >= 43);
    let t = token_for(&auth, "auditor", &secret);
    assert_eq!(whoami(&auth, &t), 200);
    let r = auth.json(
        "DELETE",
        &format!("{V1}/clients/auditor"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        whoami(&auth, &t),
        401,
        "a deleted client's tokens stop at once"
    );
}

#[test]
fn introspection_and_revocation_rules() {
    let dir = tempfile::tempdir().expect("dir");
    // A fixed issuer: tokens stay valid across a restart on another port.
    let cfg = config(dir.path(), "[tokens]\nissuer = \"https://latchkey.test\"\n");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let admin_basic = basic("admin", &admin_secret(&auth));
    let job_basic = basic("Job", "secret");
    let admin = auth.operator_token();
    let job = token_for(&auth, "Job", "secret");
    let acme = token_for(&auth, "acme-admin", "acme-secret");

    // Authenticated callers only.
    let r = auth.form("/oauth/introspect", &format!("token={admin}"), &[]);
    assert_error(&r, 401, "invalid_client");
    assert_eq!(introspect(&auth, &basic("Job", "nope"), &admin).status, 401);
    // Active: full claims.
    let r = introspect(&auth, &job_basic, &admin);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], "admin");
    assert_eq!(v["sub"], "admin");
    assert_eq!(v["iss"], "https://latchkey.test");
    assert_eq!(v["ten"], "main");
    assert!(
        v["exp"].as_u64().is_some() && v["iat"].as_u64().is_some() && v["jti"].is_string(),
        "{v}"
    );
    assert!(
        v["scope"]
            .as_str()
            .expect("scope")
            .contains("tokens:revoke")
    );
    // A bearer operator token works as the caller too.
    let r = auth.form(
        "/oauth/introspect",
        &format!("token={job}"),
        &[("Authorization", &format!("Bearer {admin}"))],
    );
    assert_eq!(r.json()["active"], true);
    // Malformed, foreign (another tenant), forged, tampered: inactive.
    for t in ["garbage", "a.b.c", acme.as_str()] {
        assert_eq!(
            introspect(&auth, &admin_basic, t).json(),
            json!({"active": false}),
            "{t}"
        );
    }
    let mut tampered = admin.clone();
    tampered.pop();
    tampered.push(if admin.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        introspect(&auth, &admin_basic, &tampered).json()["active"],
        false
    );

    // Revocation: unknown tokens are fine (200).
    let r = auth.form(
        "/oauth/revoke",
        "token=unknown-token",
        &[("Authorization", &job_basic)],
    );
    assert_eq!(r.status, 200);
    let r = auth.form("/oauth/revoke", "token=x", &[]);
    assert_error(&r, 401, "invalid_client");
    // Without tokens:revoke a client may revoke only its own tokens.
    let r = auth.form(
        "/oauth/revoke",
        &format!("token={admin}"),
        &[("Authorization", &job_basic)],
    );
    assert_error(&r, 403, "insufficient_scope");
    assert_eq!(whoami(&auth, &admin), 200);
    // Another tenant's operator cannot touch (or detect) this tenant's tokens.
    let r = auth.form(
        "/oauth/revoke",
        &format!("token={job}"),
        &[("Authorization", &format!("Bearer {acme}"))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(whoami(&auth, &job), 200);
    // Own token: revoked, and refused on the very next request.
    let job2 = token_for(&auth, "Job", "secret");
    let r = auth.form(
        "/oauth/revoke",
        &format!("token={job2}&token_type_hint=access_token"),
        &[("Authorization", &job_basic)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(whoami(&auth, &job2), 401);
    assert_eq!(
        introspect(&auth, &admin_basic, &job2).json()["active"],
        false
    );
    assert_eq!(whoami(&auth, &job), 200, "only that token");
    // An operator with tokens:revoke revokes anyone's token of its tenant.
    let r = auth.form(
        "/oauth/revoke",
        &format!("token={job}"),
        &[("Authorization", &admin_basic)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(whoami(&auth, &job), 401);
    // Revoking twice is fine.
    assert_eq!(
        auth.form(
            "/oauth/revoke",
            &format!("token={job}"),
            &[("Authorization", &admin_basic)]
        )
        .status,
        200
    );

    // A key: every token it signed is refused, new tokens come from a fresh key.
    let before = token_for(&auth, "Job", "secret");
    let kid = header(&before)["kid"].as_str().expect("kid").to_owned();
    let v = cli_json(&auth, &["revoke", "--key", &kid, "--reason", "test"]);
    assert_eq!(
        (v["kind"].as_str(), v["id"].as_str()),
        (Some("key"), Some(kid.as_str()))
    );
    assert_eq!(whoami(&auth, &before), 401);
    assert_eq!(
        whoami(&auth, &admin),
        401,
        "the admin token was signed by the same key"
    );
    let after = token_for(&auth, "Job", "secret");
    assert_ne!(header(&after)["kid"], kid.as_str());
    assert_eq!(whoami(&auth, &after), 200);
    let keys = auth.json("GET", "/token_keys", None, None).json();
    assert!(
        !keys.to_string().contains(&kid),
        "a revoked key leaves the published set"
    );
    // Revocations survive a restart.
    auth.stop();
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    assert_eq!(whoami(&auth, &job2), 401);
    assert_eq!(whoami(&auth, &after), 200);
}

#[test]
fn key_import_from_pem_and_pfx() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    // PEM (PKCS#8), an RSA key for operator tokens.
    let rsa = SigningKey::generate(Algorithm::RS256).expect("rsa");
    let pem_path = dir.path().join("key.pem");
    std::fs::write(&pem_path, rsa.to_pkcs8_pem().expect("pem").as_bytes()).expect("write");
    let v = cli_json(
        &auth,
        &[
            "keys",
            "import",
            "--file",
            pem_path.to_str().expect("path"),
            "--kid",
            "imported-rsa",
        ],
    );
    assert_eq!(
        (v["kid"].as_str(), v["alg"].as_str(), v["state"].as_str()),
        (Some("imported-rsa"), Some("RS256"), Some("active"))
    );
    let token = auth.operator_token();
    assert_eq!(header(&token)["kid"], "imported-rsa");
    assert_eq!(whoami(&auth, &token), 200);

    // PKCS#12 (.pfx) with a password, generated the way a Usercube server's certificate is.
    let es = SigningKey::generate(Algorithm::ES256).expect("es");
    let pfx = pkcs12(&es, "pfx-password");
    let pfx_path = dir.path().join("server.pfx");
    std::fs::write(&pfx_path, &pfx).expect("write");
    let mut args: Vec<String> = [
        "keys",
        "import",
        "--file",
        pfx_path.to_str().expect("p"),
        "--password",
        "wrong",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(remote(&auth));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&refs);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));
    let v = cli_json(
        &auth,
        &[
            "keys",
            "import",
            "--file",
            pfx_path.to_str().expect("p"),
            "--password",
            "pfx-password",
        ],
    );
    assert_eq!(
        (v["kid"].as_str(), v["alg"].as_str()),
        (Some(es.kid()), Some("ES256"))
    );
    let list = cli_json(&auth, &["keys", "list"]);
    let states: Vec<(String, String)> = list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap_or("").to_owned(),
                k["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(es.kid().to_owned(), "active".into())),
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|(_, s)| s == "retiring").count(),
        2,
        "the replaced RS256 and ES256 keys: {states:?}"
    );
    // A file that is no key at all.
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let mut args: Vec<String> = ["keys", "import", "--file", junk.to_str().expect("p")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(remote(&auth));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&refs);
    assert!(
        !out.status.success() && stderr(&out).contains("not a usable private key"),
        "{}",
        stderr(&out)
    );
}

/// A PKCS#12 file holding `key`, made with p12-keystore (what `openssl pkcs12 -export` makes).
fn pkcs12(key: &SigningKey, password: &str) -> Vec<u8> {
    let der = key.to_pkcs8_der().expect("der");
    let pk = p12_keystore::PrivateKey::from_der(&der).expect("pkcs8");
    let chain = p12_keystore::PrivateKeyChain::new(
        b"1".to_vec(),
        pk,
        Vec::<p12_keystore::Certificate>::new(),
    );
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        "identitymanager",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(chain),
    );
    store.writer(password).write().expect("pfx")
}

#[test]
fn rotation_with_tokens_in_flight_then_retirement() {
    let dir = tempfile::tempdir().expect("dir");
    // Short lifetimes so the overlap ends within the test.
    let cfg = config(
        dir.path(),
        "[tokens]\noperator-lifetime = \"8s\"\naccess-lifetime = \"8s\"\nboarding-lifetime = \"8s\"\nleeway = \"1s\"\n[keys]\nmaintenance-interval = \"200ms\"\n",
    );
    let auth = Arc::new(Authority::start(&dir.path().join("data"), Some(&cfg)));
    let old = auth.operator_token();
    let old_kid = header(&old)["kid"].as_str().expect("kid").to_owned();
    let first = cli_json(&auth, &["keys", "rotate", "--now"])["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    // The token from before the rotation still verifies; its key is still published, after
    // the new one.
    assert_eq!(whoami(&auth, &old), 200);
    let published = auth.json("GET", "/token_keys", None, None).json();
    assert_eq!(published["keys"][0]["kid"], first.as_str());
    assert!(published.to_string().contains(&old_kid));

    // Clients keep getting tokens and using them while keys rotate.
    let stop = Arc::new(AtomicBool::new(false));
    let used = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (auth, stop, used, failures) =
                (auth.clone(), stop.clone(), used.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let t = auth.operator_token();
                    for _ in 0..3 {
                        let status = whoami(&auth, &t);
                        if status != 200 {
                            failures
                                .lock()
                                .expect("lock")
                                .push((header(&t)["kid"].clone(), status));
                        }
                        used.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut rotated = Vec::new();
    for _ in 0..2 {
        let v = cli_json(&auth, &["keys", "rotate", "--now"]);
        rotated.push(v["kid"].as_str().expect("kid").to_owned());
    }
    stop.store(true, Ordering::Release);
    for w in workers {
        w.join().expect("worker");
    }
    assert!(used.load(Ordering::Relaxed) > 10, "the workers ran");
    assert_eq!(
        *failures.lock().expect("lock"),
        Vec::<(Value, u16)>::new(),
        "no token failed during rotation"
    );
    let published = auth.json("GET", "/token_keys", None, None).json();
    assert_eq!(
        published["keys"][0]["kid"],
        rotated[1].as_str(),
        "the new key leads"
    );
    assert!(published.to_string().contains(&old_kid));

    // After the overlap (max lifetime + leeway), the old keys retire and leave the JWKS.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = cli_json(&auth, &["keys", "list"]);
        let retired = keys["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .any(|k| k["kid"] == old_kid.as_str() && k["state"] == "retired");
        if retired {
            break;
        }
        assert!(Instant::now() < deadline, "old key never retired: {keys}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let published = auth
        .json("GET", "/.well-known/jwks.json", None, None)
        .json();
    assert!(!published.to_string().contains(&old_kid), "{published}");
    let fresh = auth.operator_token();
    assert_eq!(header(&fresh)["kid"], rotated[1].as_str());
    assert_eq!(whoami(&auth, &fresh), 200);
}

#[test]
fn audit_trail_and_cli_on_a_stopped_server() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "");
    // Refused logins are audited at each flush; a short interval keeps the test short.
    let auth = Authority::start_with(&data, Some(&cfg), &["--audit-flush-interval", "300ms"]);
    let secret = admin_secret(&auth);
    let _ = token_for(&auth, "Job", "secret");
    let r = auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &basic("Job", "not-the-secret"))],
    );
    assert_eq!(r.status, 401);
    let created = cli_json(&auth, &["client", "create", "ops", "--profile", "ReadOnly"]);
    let ops_secret = created["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let _ = cli_json(&auth, &["keys", "rotate", "--alg", "ES256", "--now"]);
    let agent = auth.json(
        "POST",
        AGENTS,
        Some(&auth.operator_token()),
        Some(&json!({"entityId": "a1", "name": "a1", "securityProfile": "SHARED_SECRET"})),
    );
    assert_eq!(agent.status, 201, "{}", agent.text());
    let _ = cli_json(&auth, &["revoke", "--agent", "a1"]);
    let _ = cli_json(&auth, &["client", "delete", "ops"]);
    let end = Instant::now() + Duration::from_secs(30);
    while cli_json(&auth, &["audit", "--event", "token.refuse"])["entries"] == json!([]) {
        assert!(Instant::now() < end, "the refused login was never audited");
        std::thread::sleep(Duration::from_millis(200));
    }

    let all = cli_json(&auth, &["audit", "--limit", "1000"]);
    let entries = all["entries"].as_array().expect("entries").clone();
    let has = |event: &str, actor: &str, subject: &str, ok: bool| {
        entries.iter().any(|e| {
            e["event"] == event
                && e["actor"] == actor
                && e["subject"].as_str().is_some_and(|s| s.contains(subject))
                && (e["outcome"] == "success") == ok
        })
    };
    assert!(has("token.issue", "Job", "jti:", true), "{all}");
    assert!(has("token.refuse", "Job", "Job", false), "{all}");
    assert!(has("client.create", "admin", "ops", true), "{all}");
    assert!(has("client.delete", "admin", "ops", true), "{all}");
    assert!(has("key.add", "admin", "", true), "{all}");
    assert!(has("key.retiring", "admin", "", true), "{all}");
    assert!(has("revoke", "admin", "agent:a1", true), "{all}");
    let text = all.to_string();
    for s in [secret.as_str(), ops_secret.as_str(), "not-the-secret"] {
        assert!(!text.contains(s), "a secret leaked into the audit log");
    }
    // Filters.
    let by_event = cli_json(&auth, &["audit", "--event", "token"]);
    assert!(
        by_event["entries"]
            .as_array()
            .expect("e")
            .iter()
            .all(|e| e["event"].as_str().is_some_and(|s| s.starts_with("token.")))
    );
    let by_agent = cli_json(&auth, &["audit", "--agent", "a1"]);
    assert!(!by_agent["entries"].as_array().expect("e").is_empty());
    assert!(
        by_agent["entries"]
            .as_array()
            .expect("e")
            .iter()
            .all(|e| e.to_string().contains("a1"))
    );
    let future = cli_json(&auth, &["audit", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(future["entries"], json!([]));
    let by_client = cli_json(&auth, &["audit", "--client", "Job"]);
    assert!(
        by_client["entries"]
            .as_array()
            .expect("e")
            .iter()
            .all(|e| e.to_string().contains("Job"))
    );

    // Human output by default; clear failures with non-zero exit codes.
    let out = cli(&[
        "client",
        "list",
        "--server",
        &auth.base_url(),
        "--client-id",
        "Job",
        "--client-secret",
        "wrong",
        "--ca",
        auth.ca_path().to_str().expect("p"),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("could not log in"),
        "{}",
        stderr(&out)
    );
    let out = cli(&["client", "list"]);
    assert!(
        !out.status.success() && stderr(&out).contains("--server"),
        "{}",
        stderr(&out)
    );
    let out = cli(&["client", "list", "--data-dir", data.to_str().expect("p")]);
    assert!(
        !out.status.success() && stderr(&out).contains("running server"),
        "{}",
        stderr(&out)
    );

    // On the stopped server's data directory.
    auth.stop();
    let d = data.to_str().expect("p");
    let out = cli(&["client", "list", "--data-dir", d]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("Job") && listing.contains("admin") && !listing.contains("ops"),
        "{listing}"
    );
    let out = cli(&["keys", "rotate", "--now", "--data-dir", d, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new_kid = serde_json::from_slice::<Value>(&out.stdout).expect("json")["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    let out = cli(&["audit", "--data-dir", d, "--event", "key.add", "--json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&new_kid));
    let auth = Authority::start(&data, Some(&cfg));
    assert_eq!(
        auth.json("GET", "/token_keys", None, None).json()["keys"][0]["kid"],
        new_kid.as_str()
    );
    assert_eq!(
        header(&token_for(&auth, "admin", &secret))["kid"],
        new_kid.as_str()
    );
}

/// The published Node.js SDK's operator side (`tests/interop/operator.js`, installed by
/// `scripts/test.sh`): `CredentialAuth` gets an operator token with Basic auth, fetches
/// `/token_keys` and verifies it; `AgentManagementClient` creates an agent and reads its
/// boarding configuration.
#[test]
fn node_sdk_credential_client_manages_agents() {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is required for the Node SDK interop test (install Node.js 18+): {node:?}"
    );
    let sdk = interop.join("node_modules/@mindconnect/mindconnect-nodejs");
    assert!(
        sdk.is_dir(),
        "{} is missing: run `npm ci --prefix tests/interop` (scripts/test.sh does)",
        sdk.display()
    );

    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let secret = admin_secret(&auth);
    let out = Command::new("node")
        .arg(interop.join("operator.js"))
        .args([
            auth.base_url().as_str(),
            "main",
            "admin",
            secret.as_str(),
            "node-op-1",
        ])
        .env("NODE_EXTRA_CA_CERTS", auth.ca_path())
        .current_dir(&interop)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed\nstdout:\n{stdout}\nstderr:\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        auth.stderr()
    );
    let report: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON report");
    assert_eq!(report["validated"], true, "{report}");
    assert_eq!(report["created"]["id"], "node-op-1", "{report}");
    assert_eq!(report["read"]["name"], "Node node-op-1", "{report}");
    let content = &report["boarding"]["content"];
    assert_eq!(content["clientId"], "node-op-1", "{report}");
    assert_eq!(content["tenant"], "main", "{report}");
    assert_eq!(content["baseUrl"], auth.base_url(), "{report}");
    assert!(
        content["iat"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "{report}"
    );
    assert_eq!(report["status"], "ONBOARDING", "{report}");
    assert_eq!(report["listed"], json!(["node-op-1"]), "{report}");
    // The token the SDK got is a live operator token of `admin`.
    let token = report["token"].as_str().expect("token");
    let r = introspect(&auth, &basic("admin", &secret), token);
    assert_eq!(
        (r.json()["active"].as_bool(), r.json()["client_id"].as_str()),
        (Some(true), Some("admin"))
    );
    // And the audit log saw the SDK's token request.
    let audit = cli_json(
        &auth,
        &["audit", "--event", "token.issue", "--client", "admin"],
    );
    assert!(!audit["entries"].as_array().expect("entries").is_empty());
}

/// Regression: `latchkey agent list` showed only the first page (100 agents) and an empty
/// state column, because the MindSphere `Agent` shape carries no boarding state.
#[test]
fn cli_agent_list_pages_through_everything_with_boarding_status() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let token = auth.operator_token();
    for i in 0..103 {
        let body = json!({"entityId": format!("cli-{i:03}"), "name": format!("CLI agent {i}"),
                          "securityProfile": "SHARED_SECRET"});
        let r = auth.json("POST", AGENTS, Some(&token), Some(&body));
        assert_eq!(r.status, 201, "{}", r.text());
    }

    let listed = cli_json(&auth, &["agent", "list"]);
    let agents = listed["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 103);
    assert!(
        agents.iter().all(|a| a["boardingStatus"] == "ONBOARDING"),
        "{listed}"
    );

    let mut args = vec!["agent".to_owned(), "list".to_owned()];
    args.extend(remote(&auth));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&refs);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("cli-102"))
        .expect("last agent listed");
    assert!(row.trim_end().ends_with("ONBOARDING"), "{row}");
}

/// Creates profile `name` with `permissions` as `token`'s client; returns the answer.
fn put_profile(auth: &Authority, token: &str, name: &str, permissions: &[&str]) -> Response {
    auth.json(
        "PUT",
        &format!("{V1}/profiles/{name}"),
        Some(token),
        Some(&json!({ "permissions": permissions })),
    )
}

/// Creates operator client `id` with `profile` as `token`'s client; returns its secret.
fn create_client(auth: &Authority, token: &str, id: &str, profile: &str) -> String {
    let r = auth.json(
        "POST",
        &format!("{V1}/clients"),
        Some(token),
        Some(&json!({"client_id": id, "profile": profile})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned()
}

fn permissions(auth: &Authority, token: &str) -> Vec<String> {
    let me = auth.json("GET", &format!("{V1}/whoami"), Some(token), None);
    assert_eq!(me.status, 200, "{}", me.text());
    me.json()["permissions"]
        .as_array()
        .expect("permissions")
        .iter()
        .map(|p| p.as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn profile_edits_cannot_grant_more_than_the_caller_holds() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let admin = auth.operator_token();
    let r = put_profile(
        &auth,
        &admin,
        "Delegate",
        &["clients:admin", "clients:read"],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = put_profile(&auth, &admin, "Strong", &["agents:write", "clients:read"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let secret = create_client(&auth, &admin, "delegate", "Delegate");
    let delegate = token_for(&auth, "delegate", &secret);
    let all = [
        "agents:read",
        "agents:write",
        "clients:read",
        "clients:admin",
        "keys:read",
        "keys:admin",
        "tokens:introspect",
        "tokens:revoke",
        "audit:read",
        "metrics:read",
    ];

    // Its own profile: neither widened, nor narrowed, nor deleted.
    assert_error(
        &put_profile(&auth, &delegate, "Delegate", &all),
        403,
        "insufficient_scope",
    );
    assert_error(
        &put_profile(&auth, &delegate, "Delegate", &["clients:read"]),
        403,
        "insufficient_scope",
    );
    let r = auth.json(
        "DELETE",
        &format!("{V1}/profiles/Delegate"),
        Some(&delegate),
        None,
    );
    assert_error(&r, 403, "insufficient_scope");
    // Another profile with more than it holds, new or existing.
    assert_error(
        &put_profile(&auth, &delegate, "Wide", &["agents:write"]),
        403,
        "insufficient_scope",
    );
    assert_error(
        &put_profile(&auth, &delegate, "Wide", &all),
        403,
        "insufficient_scope",
    );
    // A profile granting more than it holds cannot be reshaped or deleted either.
    assert_error(
        &put_profile(&auth, &delegate, "Strong", &["clients:read"]),
        403,
        "insufficient_scope",
    );
    let r = auth.json(
        "DELETE",
        &format!("{V1}/profiles/Strong"),
        Some(&delegate),
        None,
    );
    assert_error(&r, 403, "insufficient_scope");
    // Nor can it remove a client holding more than it does (the administrator).
    let r = auth.json(
        "DELETE",
        &format!("{V1}/clients/admin"),
        Some(&delegate),
        None,
    );
    assert_error(&r, 403, "insufficient_scope");
    assert_eq!(whoami(&auth, &admin), 200);
    // Nor assigned to a client it creates.
    let r = auth.json(
        "POST",
        &format!("{V1}/clients"),
        Some(&delegate),
        Some(&json!({"client_id": "puppet", "profile": "Strong"})),
    );
    assert_error(&r, 403, "insufficient_scope");
    // Within what it holds, it may.
    let r = put_profile(&auth, &delegate, "Reader", &["clients:read"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let reader = create_client(&auth, &delegate, "reader", "Reader");
    assert_eq!(
        permissions(&auth, &token_for(&auth, "reader", &reader)),
        ["clients:read"]
    );
    let r = auth.json(
        "DELETE",
        &format!("{V1}/clients/reader"),
        Some(&delegate),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    // Nothing it tried reached its next token, or the profiles.
    assert_eq!(
        permissions(&auth, &token_for(&auth, "delegate", &secret)),
        ["clients:read", "clients:admin"]
    );
    let profiles = auth
        .json("GET", &format!("{V1}/profiles"), Some(&admin), None)
        .json();
    let by_name = |n: &str| {
        profiles["profiles"]
            .as_array()
            .expect("profiles")
            .iter()
            .find(|p| p["name"] == n)
            .map(|p| p["permissions"].clone())
    };
    assert_eq!(
        by_name("Strong"),
        Some(json!(["agents:write", "clients:read"]))
    );
    assert_eq!(by_name("Wide"), None);
    // An administrator (holding everything) still edits other profiles freely.
    let r = put_profile(&auth, &admin, "Delegate", &["clients:read"]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        permissions(&auth, &delegate),
        ["clients:read"],
        "narrowing a profile narrows tokens already issued"
    );
}

#[test]
fn operator_tokens_die_with_their_client_generation() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let settings = |secret: &str, profile: &str, ops: &str| {
        let text = format!(
            r#"
[tokens]
issuer = "https://latchkey.test"

[[profiles]]
name = "Ops"
permissions = {ops}

[[clients]]
identifier = "cfg"
hashed_secret = "{}"
profile = "{profile}"
"#,
            hash(secret, "latchkey")
        );
        let path = dir.path().join("latchkey.toml");
        std::fs::write(&path, text).expect("settings");
        path
    };
    let cfg = settings(
        "first",
        "Administrator",
        r#"["agents:read", "agents:write"]"#,
    );
    let auth = Authority::start(&data, Some(&cfg));
    let admin = auth.operator_token();

    // Deleted and re-created under the same id, with a weaker profile: the old token is dead.
    create_client(&auth, &admin, "temp", "Administrator");
    let secret = {
        let r = auth.json("DELETE", &format!("{V1}/clients/temp"), Some(&admin), None);
        assert_eq!(r.status, 204, "{}", r.text());
        create_client(&auth, &admin, "temp", "Administrator")
    };
    let old = token_for(&auth, "temp", &secret);
    assert_eq!(whoami(&auth, &old), 200);
    let r = auth.json("DELETE", &format!("{V1}/clients/temp"), Some(&admin), None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        whoami(&auth, &old),
        401,
        "deleting a client ends its tokens"
    );
    let secret = create_client(&auth, &admin, "temp", "ReadOnly");
    assert_eq!(
        whoami(&auth, &old),
        401,
        "and re-creating it does not revive them"
    );
    assert_eq!(
        introspect(&auth, &format!("Bearer {admin}"), &old).json()["active"],
        false
    );
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&old),
        Some(&json!({"entityId": "e1", "name": "e1", "securityProfile": "SHARED_SECRET"})),
    );
    assert_error(&r, 401, "invalid_token");
    let new = token_for(&auth, "temp", &secret);
    assert!(!permissions(&auth, &new).contains(&"agents:write".to_owned()));

    // A configured client: its token works across a restart with unchanged settings...
    let token = token_for(&auth, "cfg", "first");
    let ops_secret = create_client(&auth, &admin, "ops", "Ops");
    let ops = token_for(&auth, "ops", &ops_secret);
    auth.stop();
    let auth = Authority::start(&data, Some(&cfg));
    assert_eq!(whoami(&auth, &token), 200);
    // ...but a narrowed profile narrows the tokens already out (scopes ∩ profile)...
    auth.stop();
    let cfg = settings("first", "Administrator", r#"["agents:read"]"#);
    let auth = Authority::start(&data, Some(&cfg));
    assert_eq!(permissions(&auth, &ops), ["agents:read"]);
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&ops),
        Some(&json!({"entityId": "e2", "name": "e2", "securityProfile": "SHARED_SECRET"})),
    );
    assert_error(&r, 403, "insufficient_scope");
    // ...and a new secret (and weaker profile) ends them.
    auth.stop();
    let cfg = settings("second", "ReadOnly", r#"["agents:read"]"#);
    let auth = Authority::start(&data, Some(&cfg));
    assert_eq!(whoami(&auth, &token), 401);
    let r = auth.json(
        "POST",
        &format!("{V1}/clients"),
        Some(&token),
        Some(&json!({"client_id": "x", "profile": "Administrator"})),
    );
    assert_error(&r, 401, "invalid_token");
    let fresh = token_for(&auth, "cfg", "second");
    assert!(!permissions(&auth, &fresh).contains(&"clients:admin".to_owned()));
}

#[test]
fn read_only_operators_cannot_obtain_initial_access_tokens() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let admin = auth.operator_token();
    let job = token_for(&auth, "Job", "secret");
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&admin),
        Some(&json!({"entityId": "e-ro", "name": "ro", "securityProfile": "SHARED_SECRET"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let config_path = format!("{AGENTS}/e-ro/boarding/configuration");
    let status_path = format!("{AGENTS}/e-ro/boarding/status");
    let status = |t: &str| {
        let r = auth.json("GET", &status_path, Some(t), None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["status"].as_str().expect("status").to_owned()
    };

    // agents:read sees the boarding status, never the IAT.
    assert_error(
        &auth.json("GET", &config_path, Some(&job), None),
        403,
        "insufficient_scope",
    );
    assert_eq!(status(&job), "ONBOARDING");
    let r = auth.json("GET", &config_path, Some(&admin), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["content"]["iat"].is_string());

    // After an offboard, asking would mint a new IAT: a write, refused to agents:read.
    let r = auth.json(
        "POST",
        &format!("{AGENTS}/e-ro/boarding/offboard"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(status(&job), "NOT_ONBOARDED");
    // `agent show` as the read-only client shows the agent and its status, and no IAT.
    let ca = auth.ca_path().display().to_string();
    let server = auth.base_url();
    let shown = cli_stdin(
        &[
            "agent",
            "show",
            "e-ro",
            "--json",
            "--server",
            &server,
            "--ca",
            &ca,
            "--client-id",
            "Job",
            "--client-secret-file",
            "-",
        ],
        "secret\n",
    );
    assert!(shown.status.success(), "{}", stderr(&shown));
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("CLI JSON");
    assert_eq!(shown["boarding_status"]["status"], "NOT_ONBOARDED");
    assert!(!shown.to_string().contains("\"iat\""), "{shown}");
    assert_eq!(status(&job), "NOT_ONBOARDED", "showing issued nothing");
    let r = auth.json("GET", &config_path, Some(&job), None);
    assert_error(&r, 403, "insufficient_scope");
    assert!(!r.text().contains("iat"), "{}", r.text());
    assert_eq!(status(&job), "NOT_ONBOARDED", "nothing was issued");
    let r = auth.json("GET", &config_path, Some(&admin), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["content"]["iat"].is_string());
    assert_eq!(status(&job), "ONBOARDING");
}

#[test]
fn taken_ids_get_the_same_answer_in_every_tenant() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let admin = auth.operator_token();
    let acme = token_for(&auth, "acme-admin", "acme-secret");
    let agent = json!({"entityId": "e-taken", "name": "Taken", "securityProfile": "SHARED_SECRET"});
    let r = auth.json("POST", AGENTS, Some(&admin), Some(&agent));
    assert_eq!(r.status, 201, "{}", r.text());

    // Taken in the caller's own tenant, or in another: the same status and body.
    let other = json!({"entityId": "e-taken", "name": "Other", "securityProfile": "SHARED_SECRET"});
    let own = auth.json("POST", AGENTS, Some(&admin), Some(&other));
    let foreign = auth.json("POST", AGENTS, Some(&acme), Some(&other));
    assert_error(&own, 409, "conflict");
    assert_eq!(
        (foreign.status, foreign.json()),
        (own.status, own.json()),
        "an id taken in another tenant answers exactly like one taken in this tenant"
    );
    for tenant in ["main", "acme"] {
        assert!(!own.text().contains(tenant), "{}", own.text());
    }

    // Operator client ids likewise (`Job` lives in `main`, `acme-admin` in `acme`).
    let create = |token: &str, id: &str| {
        auth.json(
            "POST",
            &format!("{V1}/clients"),
            Some(token),
            Some(&json!({"client_id": id, "profile": "ReadOnly"})),
        )
    };
    let own = create(&acme, "acme-admin");
    let foreign = create(&acme, "Job");
    assert_error(&own, 409, "conflict");
    let norm = |r: &Response| r.text().replace("acme-admin", "ID").replace("Job", "ID");
    assert_eq!(
        (foreign.status, norm(&foreign)),
        (own.status, norm(&own)),
        "only the id itself differs"
    );
    assert!(!foreign.text().contains("main"), "{}", foreign.text());
}

/// The address the server's separate metrics listener bound (from its stderr).
fn metrics_addr(auth: &Authority) -> std::net::SocketAddr {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let err = auth.stderr();
        if let Some(rest) = err.split("latchkey: metrics listening on https://").nth(1) {
            let addr = rest.lines().next().expect("line").trim();
            return addr.parse().expect("metrics address");
        }
        assert!(Instant::now() < end, "no metrics listener; stderr:\n{err}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_are_public_by_default_or_behind_operators_or_on_their_own_listener() {
    let get = |auth: &Authority, token: Option<&str>| auth.json("GET", "/metrics", token, None);
    let is_metrics = |r: &Response| {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("latchkey_"), "{}", r.text());
    };

    // Default: public on the (loopback by default) listener, as before.
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    is_metrics(&get(&auth, None));
    auth.stop();

    // metrics-access = "operator": an operator token of the authority's tenant with
    // metrics:read; no token is 401, without the permission 403, another tenant 404.
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "metrics-access = \"operator\"");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let admin = auth.operator_token();
    assert_error(&get(&auth, None), 401, "invalid_token");
    assert_error(&get(&auth, Some("x.y.z")), 401, "invalid_token");
    is_metrics(&get(&auth, Some(&admin)));
    is_metrics(&get(&auth, Some(&token_for(&auth, "Job", "secret"))));
    let r = put_profile(&auth, &admin, "AgentsOnly", &["agents:read"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let secret = create_client(&auth, &admin, "agents-only", "AgentsOnly");
    let limited = token_for(&auth, "agents-only", &secret);
    assert_error(&get(&auth, Some(&limited)), 403, "insufficient_scope");
    let acme = token_for(&auth, "acme-admin", "acme-secret");
    assert_error(&get(&auth, Some(&acme)), 404, "not_found");
    auth.stop();

    // metrics-listen: /metrics moves to its own listener and leaves the main one.
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "metrics-listen = \"127.0.0.1:0\"");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let addr = metrics_addr(&auth);
    assert_ne!(addr, auth.addr);
    assert_error(&get(&auth, None), 404, "not_found");
    assert_error(&get(&auth, Some(&auth.operator_token())), 404, "not_found");
    let r = auth.request_to(addr, "GET", "/metrics", &[], b"");
    is_metrics(&r);
    assert!(
        r.text().contains("/oauth/token"),
        "the page counts the main listener's routes"
    );
    let r = auth.request_to(addr, "GET", "/oauth/token_keys", &[], b"");
    assert_eq!(r.status, 404, "the metrics listener serves nothing else");
    auth.stop();

    // Both: its own listener, behind operators.
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(
        dir.path(),
        "metrics-listen = \"127.0.0.1:0\"\nmetrics-access = \"operator\"",
    );
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let addr = metrics_addr(&auth);
    let r = auth.request_to(addr, "GET", "/metrics", &[], b"");
    assert_error(&r, 401, "invalid_token");
    let bearer = format!("Bearer {}", auth.operator_token());
    is_metrics(&auth.request_to(addr, "GET", "/metrics", &[("Authorization", &bearer)], b""));
    auth.stop();
}

/// The description of a 400 `invalid_request`, which must name `field`.
fn refused_naming(r: &Response, field: &str) {
    assert_error(r, 400, "invalid_request");
    let description = r.json()["error_description"]
        .as_str()
        .expect("description")
        .to_owned();
    assert!(
        description.starts_with(&format!("{field}: ")),
        "{field}: {description}"
    );
    assert!(
        description.len() < 300,
        "the value is echoed: {description}"
    );
}

/// Creates agent `id` with `token`, fetches its boarding configuration and registers it.
fn board(auth: &Authority, token: &str, id: &str) {
    let r = auth.json(
        "POST",
        AGENTS,
        Some(token),
        Some(&json!({"entityId": id, "name": format!("Agent {id}"), "securityProfile": "SHARED_SECRET"})),
    );
    assert_eq!(r.status, 201, "create {id}: {}", r.text());
    let r = auth.json(
        "GET",
        &format!("{AGENTS}/{id}/boarding/configuration"),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let iat = r.json()["content"]["iat"].as_str().expect("iat").to_owned();
    let r = auth.json(
        "POST",
        "/api/agentmanagement/v3/register",
        Some(&iat),
        Some(&json!({})),
    );
    assert_eq!(r.status, 201, "register {id}: {}", r.text());
}

/// Regression: any tenant's `clients:admin` operator could stop every database write until a
/// restart: a ~300 KB `client_id` was refused, but its audit entry could not be stored, which
/// failed the whole commit and left the store unusable (logins, agent creation, registration
/// and revocation all answered 500). Now the id is refused at the API naming the field, the
/// store refuses such data per op (see the store's hostile-op tests), and writes go on.
#[test]
fn oversize_fields_are_refused_by_name_and_writes_keep_working() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let acme = token_for(&auth, "acme-admin", "acme-secret");
    let huge = "x".repeat(300 * 1024);

    let clients = format!("{V1}/clients");
    let r = auth.json(
        "POST",
        &clients,
        Some(&acme),
        Some(&json!({ "client_id": huge })),
    );
    refused_naming(&r, "client_id");
    let r = auth.json(
        "POST",
        &clients,
        Some(&acme),
        Some(&json!({ "client_id": "ok-1", "display_name": huge })),
    );
    refused_naming(&r, "display_name");
    let r = auth.json(
        "POST",
        &clients,
        Some(&acme),
        Some(&json!({ "client_id": "ok-1", "profile": "Read Only" })),
    );
    refused_naming(&r, "profile");
    let admin = auth.operator_token();
    let revocations = format!("{V1}/revocations");
    let r = auth.json(
        "POST",
        &revocations,
        Some(&admin),
        Some(&json!({ "kind": "token", "id": "j-1", "reason": huge })),
    );
    refused_naming(&r, "reason");
    let r = auth.json(
        "POST",
        &revocations,
        Some(&admin),
        Some(&json!({ "kind": "token", "id": huge })),
    );
    refused_naming(&r, "id");
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&acme),
        Some(&json!({"entityId": "big", "name": huge, "securityProfile": "SHARED_SECRET"})),
    );
    refused_naming(&r, "name");
    let r = auth.json(
        "POST",
        &format!("{V1}/keys/import"),
        Some(&admin),
        Some(&json!({ "pem": "-", "kid": huge })),
    );
    refused_naming(&r, "kid");

    // Every write path still works: operator logins (each audited), agent creation and
    // registration, client creation, revocation.
    let acme = token_for(&auth, "acme-admin", "acme-secret");
    board(&auth, &acme, "after-1");
    board(&auth, &admin, "after-2");
    let r = auth.json(
        "POST",
        &clients,
        Some(&acme),
        Some(&json!({ "client_id": "ok-1" })),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = auth.json(
        "POST",
        &revocations,
        Some(&admin),
        Some(&json!({ "kind": "token", "id": "j-1", "reason": "a reason" })),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !auth.stderr().contains("store commit failed"),
        "{}",
        auth.stderr()
    );
}

/// Regression: ids could hold any character and paths were not percent-decoded, so a client
/// called `evil/x` could be created but never deleted. Ids now have an alphabet (refused at
/// creation naming the field), and a percent-encoded path names a valid id.
#[test]
fn odd_ids_are_refused_and_percent_encoded_paths_name_valid_ones() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let admin = auth.operator_token();
    let clients = format!("{V1}/clients");
    for id in ["evil/x", "a b", "..", "a%2Fb", "é", ""] {
        let r = auth.json(
            "POST",
            &clients,
            Some(&admin),
            Some(&json!({ "client_id": id })),
        );
        refused_naming(&r, "client_id");
    }
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&admin),
        Some(&json!({"entityId": "evil/x", "name": "n", "securityProfile": "SHARED_SECRET"})),
    );
    refused_naming(&r, "entityId");
    let r = auth.json(
        "PUT",
        &format!("{V1}/profiles/bad%20name"),
        Some(&admin),
        Some(&json!({ "permissions": ["agents:read"] })),
    );
    refused_naming(&r, "profile");

    // A valid id with reserved characters, named percent-encoded.
    let r = auth.json(
        "POST",
        &clients,
        Some(&admin),
        Some(&json!({ "client_id": "ops@corp:1" })),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = auth.json(
        "DELETE",
        &format!("{clients}/ops%40corp%3a1"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let listed = auth.json("GET", &clients, Some(&admin), None).json();
    assert!(
        !listed["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .any(|c| c["client_id"] == "ops@corp:1"),
        "{listed}"
    );
    // The CLI encodes path segments itself.
    cli_json(&auth, &["client", "create", "cli@corp"]);
    cli_json(&auth, &["client", "delete", "cli@corp"]);

    board(&auth, &admin, "ss-1");
    let r = auth.json("GET", &format!("{AGENTS}/ss%2D1"), Some(&admin), None);
    assert_eq!((r.status, r.json()["id"].as_str()), (200, Some("ss-1")));
    // Malformed escapes are 400, before any handler.
    for path in [
        format!("{clients}/%zz"),
        format!("{AGENTS}/ss%2"),
        format!("{AGENTS}/%FF"),
    ] {
        let r = auth.json("DELETE", &path, Some(&admin), None);
        assert_error(&r, 400, "invalid_request");
    }
}

/// `latchkey` with `stdin` on its standard input.
fn cli_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(latchkey_bin())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn latchkey");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// Every secret the CLI takes has a way in that is not its command line (a file, `-` for
/// standard input, or an environment variable), and `--help` says so.
#[test]
fn secrets_reach_the_cli_through_files_stdin_or_the_environment() {
    for (args, needles) in [
        (&["revoke", "--help"][..], &["--token-file", "ps"][..]),
        (
            &["hash-secret", "--help"],
            &["--client-secret-file", "LATCHKEY_CLIENT_SECRET"],
        ),
        (
            &["client", "list", "--help"],
            &["--client-secret-file", "LATCHKEY_CLIENT_SECRET"],
        ),
        (
            &["cert", "trust", "--help"],
            &["--password-file", "LATCHKEY_P12_PASSWORD"],
        ),
        (
            &["cert", "pkcs12", "--help"],
            &["--password-file", "LATCHKEY_P12_PASSWORD"],
        ),
        (
            &["cert", "issue", "--help"],
            &["--p12-password-file", "LATCHKEY_P12_PASSWORD"],
        ),
        (
            &["check", "--help"],
            &["--passphrase-file", "LATCHKEY_PASSPHRASE"],
        ),
    ] {
        let out = cli(args);
        let help = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(help.contains(n), "{args:?}: {n:?} not in\n{help}");
        }
    }

    // hash-secret from standard input and from the environment.
    let hashed = cli_stdin(
        &[
            "hash-secret",
            "--client-secret-file",
            "-",
            "--format",
            "usercube",
        ],
        "secret\n",
    );
    assert!(hashed.status.success(), "{}", stderr(&hashed));
    assert_eq!(
        String::from_utf8_lossy(&hashed.stdout).trim(),
        USERCUBE_SAMPLE
    );
    let env = Command::new(latchkey_bin())
        .args(["hash-secret", "--format", "usercube"])
        .env("LATCHKEY_CLIENT_SECRET", "secret")
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&env.stdout).trim(), USERCUBE_SAMPLE);
    assert!(
        !cli(&["hash-secret"]).status.success(),
        "a secret is required"
    );

    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let server = auth.base_url();
    let ca = auth.ca_path().display().to_string();
    // An operator credential from a file.
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{}\n", admin_secret(&auth))).expect("write");
    let listed = cli(&[
        "client",
        "list",
        "--server",
        &server,
        "--ca",
        &ca,
        "--client-id",
        "admin",
        "--client-secret-file",
        secret_file.to_str().expect("utf-8"),
    ]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("admin"));

    // A token to revoke, from standard input: it stops working.
    let token = auth.operator_token();
    assert_eq!(whoami(&auth, &token), 200);
    let creds = auth
        .data_dir
        .join("admin-client.json")
        .display()
        .to_string();
    let revoked = cli_stdin(
        &[
            "revoke",
            "--token-file",
            "-",
            "--server",
            &server,
            "--ca",
            &ca,
            "--credentials",
            &creds,
        ],
        &format!("{token}\n"),
    );
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert_eq!(whoami(&auth, &token), 401);
}

/// `max-age` of a `Cache-Control: public, max-age=N` answer.
fn max_age(r: &Response) -> u64 {
    let cc = r.header("cache-control").expect("Cache-Control");
    assert!(cc.starts_with("public"), "{cc}");
    cc.split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no max-age in {cc:?}"))
}

/// The kids of a JWKS answer.
fn kids(r: &Response) -> Vec<String> {
    r.json()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// A relying party that caches the JWKS exactly as long as the server says, across two
/// scheduled-style rotations (`keys rotate`, pre-publication shortened to 3 s so the test
/// sees activations): every token it receives names a kid its cache already has.
#[test]
fn a_jwks_cache_that_obeys_max_age_never_misses_a_kid_across_rotations() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(
        dir.path(),
        "[keys]\npre-publication = \"3s\"\nmaintenance-interval = \"200ms\"\n",
    );
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let start_kid = header(&auth.operator_token())["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    let mut cache: Option<(Vec<String>, Instant, u64)> = None;
    let mut misses = Vec::new();
    let mut seen = vec![start_kid.clone()];
    let mut rotated = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rotated.len() < 2 || seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "rotations never activated: {seen:?}"
        );
        if seen.len() == rotated.len() + 1 && rotated.len() < 2 {
            // The previous rotation is live (or none ran yet): rotate again.
            let v = cli_json(&auth, &["keys", "rotate"]);
            assert_eq!(v["state"], "published", "{v}");
            rotated.push(v["kid"].as_str().expect("kid").to_owned());
        }
        let token = auth.operator_token();
        let kid = header(&token)["kid"].as_str().expect("kid").to_owned();
        if !seen.contains(&kid) {
            seen.push(kid.clone());
        }
        let fresh = cache
            .as_ref()
            .is_some_and(|(_, at, age)| at.elapsed() < Duration::from_secs(*age));
        if !fresh {
            let r = auth.json("GET", "/.well-known/jwks.json", None, None);
            assert_eq!(r.status, 200);
            let age = max_age(&r);
            assert!(
                (1..3).contains(&age),
                "max-age {age} not below the pre-publication"
            );
            cache = Some((kids(&r), Instant::now(), age));
        }
        let (cached, ..) = cache.as_ref().expect("cache");
        if !cached.contains(&kid) {
            misses.push(kid);
        }
        assert_eq!(whoami(&auth, &token), 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        misses,
        Vec::<String>::new(),
        "kids missing from a valid cache"
    );
    assert_eq!(
        seen[1..],
        rotated[..],
        "each published key signed, in order"
    );
}

/// Default settings: `keys rotate` publishes a key that does not sign yet; the key sets say
/// how long to cache them (never beyond the pre-publication), with an ETag that revalidates;
/// `token_key` may be cached no longer than until the next key activates.
#[test]
fn default_rotation_publishes_first_and_key_sets_are_cacheable() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let before = header(&auth.operator_token())["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    let jwks = auth.json("GET", "/.well-known/jwks.json", None, None);
    assert_eq!(max_age(&jwks), 900, "default jwks-max-age");
    let v = cli_json(&auth, &["keys", "rotate"]);
    assert_eq!(v["state"], "published", "{v}");
    let new = v["kid"].as_str().expect("kid").to_owned();
    let activates = v["activates_at"].as_u64().expect("activates_at");
    assert!(activates >= v["state_changed_at"].as_u64().expect("t") + 3600);
    // Published, not signing.
    let jwks = auth.json("GET", "/.well-known/jwks.json", None, None);
    assert!(kids(&jwks).contains(&new) && kids(&jwks).contains(&before));
    assert!(max_age(&jwks) < 3600);
    assert_eq!(header(&auth.operator_token())["kid"], before.as_str());
    let uaa = auth.json("GET", "/token_keys", None, None);
    assert!(kids(&uaa).contains(&new));
    assert_eq!(kids(&uaa)[0], before, "the signing key leads");
    // Revalidation: the same set answers 304 for its ETag, a changed set does not.
    let etag = jwks.header("etag").expect("ETag").to_owned();
    let r = auth.request(
        "GET",
        "/.well-known/jwks.json",
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = auth.request(
        "GET",
        "/.well-known/jwks.json",
        &[("If-None-Match", "\"stale\"")],
        b"",
    );
    assert_eq!(r.status, 200);
    // The agents' token_key: RS256 rotated too? Only the operator algorithm was (RS256 by
    // default), so its max-age runs out at the activation at the latest.
    let tk = auth.json("GET", "/api/agentmanagement/v3/oauth/token_key", None, None);
    assert_eq!(tk.status, 200);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(max_age(&tk) < activates.saturating_sub(now));
    // --now: signs at once (the published key is the one activated).
    let v = cli_json(&auth, &["keys", "rotate", "--now"]);
    assert_eq!(
        (v["kid"].as_str(), v["state"].as_str()),
        (Some(new.as_str()), Some("active"))
    );
    assert_eq!(header(&auth.operator_token())["kid"], new.as_str());
}

mod audit;
mod audit_abuse;
mod audit_trail;
mod import;
mod listing;
mod signing_cert;
mod suspend;
mod throttle;

#[test]
fn token_latency_is_labelled_by_route_and_a_wrong_secret_is_logged_without_it() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    auth.operator_token();
    let metrics = auth.json("GET", "/metrics", None, None).text();
    assert!(
        metrics.contains(
            "latchkey_http_request_duration_seconds_count{method=\"POST\",route=\"/oauth/token\"} 1\n"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "latchkey_http_request_duration_seconds_bucket{method=\"POST\",route=\"/oauth/token\",le=\"+Inf\"} 1\n"
        ),
        "{metrics}"
    );
    // The raw path of a request no route serves never becomes a label.
    auth.json("GET", "/no/such/path-3f9c", None, None);
    let metrics = auth.json("GET", "/metrics", None, None).text();
    assert!(!metrics.contains("path-3f9c"), "{metrics}");
    assert!(metrics.contains("route=\"unmatched\""), "{metrics}");

    let wrong = "wrong-secret-7d1e5a";
    let r = auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &basic("admin", wrong))],
    );
    assert_error(&r, 401, "invalid_client");
    assert!(
        auth.wait_stderr("authentication failed"),
        "no log line; stderr:\n{}",
        auth.stderr()
    );
    let err = auth.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("authentication failed"))
        .expect("the line");
    assert!(line.contains("client_id=admin"), "{line}");
    assert!(line.contains("peer=127.0.0.1"), "{line}");
    assert!(!err.contains(wrong), "the secret is logged:\n{err}");
    auth.stop();
}

#[test]
fn metrics_show_agents_by_state_the_process_and_the_store_writer() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let admin = auth.operator_token();
    for id in ["e-m1", "e-m2"] {
        let agent = json!({"entityId": id, "name": id, "securityProfile": "SHARED_SECRET"});
        let r = auth.json("POST", AGENTS, Some(&admin), Some(&agent));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let metrics = auth.json("GET", "/metrics", None, None).text();
    for line in [
        // A created agent has its boarding configuration: onboarding until it registers.
        "latchkey_agents{state=\"NOT_ONBOARDED\"} 0\n",
        "latchkey_agents{state=\"ONBOARDING\"} 2\n",
        "latchkey_agents{state=\"ONBOARDED\"} 0\n",
        "latchkey_store_writer_queue_depth ",
        "latchkey_store_commit_duration_seconds_count ",
        "latchkey_replay_cache_capacity ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "latchkey_build_info{version=\"",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    // The agents' creations were committed: the commit latency histogram saw them.
    let commits: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("latchkey_store_commit_duration_seconds_count "))
        .and_then(|v| v.parse().ok())
        .expect("count");
    assert!(commits >= 2.0, "{metrics}");
    auth.stop();
}
