//! `GET /api/latchkey/v1/agents/{id}/credentials` and `latchkey agent show`: how an agent
//! authenticates, its key thumbprints, its secret expiry and when it was last seen, never a
//! secret.

use std::process::Command;

use latchkey_core::{Algorithm, Jwk};
use serde_json::{Value, json};

use super::{board, create, node_claims, public_jwk, rsa, sign, start, token};
use crate::util::https::Authority;
use crate::util::latchkey_bin;

fn credentials(auth: &Authority, op: &str, id: &str) -> Value {
    let r = auth.json(
        "GET",
        &format!("/api/latchkey/v1/agents/{id}/credentials"),
        Some(op),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn credentials_show_method_thumbprint_expiry_and_last_seen_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();

    // Not yet registered: no registration, never seen.
    let r = create(&auth, &op, "cred-new", "new agent", "SHARED_SECRET");
    assert_eq!(r.status, 201, "{}", r.text());
    let c = credentials(&auth, &op, "cred-new");
    assert_eq!(c["boardingStatus"], "ONBOARDING");
    assert!(c["registration"].is_null(), "{c}");
    assert!(c["lastSeen"].is_null(), "{c}");
    assert_eq!(c["online"], false);

    // A key-based agent: its key's RFC 7638 thumbprint, then seen once it gets a token.
    let key = rsa(3072, 0, Algorithm::RS256);
    let jwk = public_jwk(&key, "k1");
    board(
        &auth,
        &op,
        "cred-rsa",
        "RSA_3072",
        &json!({"jwks": {"keys": [jwk.clone()]}}),
    );
    let c = credentials(&auth, &op, "cred-rsa");
    let reg = &c["registration"];
    assert_eq!(reg["authMethod"], "private_key_jwt", "{c}");
    let want = Jwk::from_json(jwk.to_string().as_bytes())
        .expect("jwk")
        .thumbprint()
        .expect("thumbprint");
    assert_eq!(reg["keys"][0]["thumbprint"], want.as_str(), "{c}");
    assert_eq!(reg["keys"][0]["kid"], "k1");
    assert!(reg["secretExpiresAt"].is_string(), "{c}");
    assert!(c["lastSeen"].is_null(), "{c}");
    let r = token(&auth, || {
        sign(&key, Some("k1"), &node_claims("cred-rsa", "main"))
    });
    assert_eq!(r.status, 200, "{}", r.text());
    let c = credentials(&auth, &op, "cred-rsa");
    assert!(c["lastSeen"].is_string(), "{c}");
    assert_eq!(c["online"], true, "{c}");

    // A shared-secret agent: the method and expiry, and no secret anywhere in the answer.
    let reg = board(&auth, &op, "cred-ss", "SHARED_SECRET", &json!({}));
    let secret = reg["client_secret"].as_str().expect("secret").to_owned();
    let rat = reg["registration_access_token"]
        .as_str()
        .expect("rat")
        .to_owned();
    let c = credentials(&auth, &op, "cred-ss");
    assert_eq!(c["registration"]["authMethod"], "client_secret_jwt", "{c}");
    assert_eq!(c["registration"]["keys"], json!([]));
    let text = c.to_string();
    assert!(!text.contains(&secret) && !text.contains(&rat), "{text}");

    // An unknown agent: 404, like the MindSphere routes.
    let r = auth.json(
        "GET",
        "/api/latchkey/v1/agents/nope/credentials",
        Some(&op),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // `agent show` carries the same view.
    let out = Command::new(latchkey_bin())
        .args([
            "agent",
            "show",
            "cred-rsa",
            "--json",
            "--server",
            &auth.base_url(),
        ])
        .arg("--credentials")
        .arg(auth.data_dir.join("admin-client.json"))
        .output()
        .expect("run latchkey");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        shown["credentials"]["registration"]["keys"][0]["thumbprint"],
        want.as_str()
    );
    assert!(shown["credentials"]["lastSeen"].is_string(), "{shown}");
}
