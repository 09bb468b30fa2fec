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
    let v: Value = serde_json::from_slice(
        &std::fs::read(auth.data_dir.join("admin-client.json")).expect("creds"),
    )
    .expect("json");
    v["client_secret"].as_str().expect("secret").to_owned()
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
        auth.stderr().contains("admin-client.json"),
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
    let auth = Authority::start(&data, Some(&cfg));
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
