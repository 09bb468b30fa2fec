//! Suspending an agent: its token requests, registration and rotation are refused and the
//! tokens it holds stop verifying; its records, registration and keys stay, so a resume lets
//! it get tokens again without boarding again.

use latchkey_core::{Algorithm, SigningKey};
use serde_json::{Value, json};

use super::{
    API, assert_error, board, introspect, node_claims, path_of, public_jwk, rsa, sign, start,
    status, token,
};
use crate::util::https::Authority;
use crate::util::latchkey_bin;

const V1: &str = "/api/latchkey/v1/agents";

fn hs(secret: &str) -> SigningKey {
    SigningKey::hmac(Algorithm::HS256, secret.as_bytes()).expect("hmac")
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} in {v}"))
        .to_owned()
}

fn post(auth: &Authority, op: &str, id: &str, verb: &str) -> Value {
    let r = auth.json("POST", &format!("{V1}/{id}/{verb}"), Some(op), None);
    assert_eq!(r.status, 200, "{verb}: {}", r.text());
    r.json()
}

fn credentials(auth: &Authority, op: &str, id: &str) -> Value {
    let r = auth.json("GET", &format!("{V1}/{id}/credentials"), Some(op), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn suspended_agent_is_refused_and_resumes_without_boarding_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let reg = board(&auth, &op, "sus-ss", "SHARED_SECRET", &json!({}));
    let (secret, rat) = (
        s(&reg, "client_secret"),
        s(&reg, "registration_access_token"),
    );
    let uri = path_of(&s(&reg, "registration_client_uri"), &auth);
    let r = token(&auth, || {
        sign(&hs(&secret), None, &node_claims("sus-ss", "main"))
    });
    assert_eq!(r.status, 200, "{}", r.text());
    let earlier = s(&r.json(), "access_token");
    assert!(introspect(&auth, &op, &earlier));
    // A neighbour, to show the suspension touches one agent only.
    let other = board(&auth, &op, "sus-other", "SHARED_SECRET", &json!({}));
    let other_secret = s(&other, "client_secret");

    let v = post(&auth, &op, "sus-ss", "suspend");
    assert_eq!(v["suspended"], true, "{v}");
    assert!(v["suspendedAt"].is_string(), "{v}");

    // From the answer on: no token, the earlier token is inactive, no rotation.
    let r = token(&auth, || {
        sign(&hs(&secret), None, &node_claims("sus-ss", "main"))
    });
    assert_error(&r, 401, "invalid_client", "suspended");
    assert!(
        !introspect(&auth, &op, &earlier),
        "a token issued before the suspension is inactive"
    );
    let r = auth.json(
        "PUT",
        &uri,
        Some(&rat),
        Some(&json!({"client_id": "sus-ss"})),
    );
    assert_error(&r, 409, "conflict", "suspended");
    // The agent's own token no longer reads its data source configuration.
    let r = auth.json(
        "GET",
        &format!("{API}/agents/sus-ss/dataSourceConfiguration"),
        Some(&earlier),
        None,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = token(&auth, || {
        sign(&hs(&other_secret), None, &node_claims("sus-other", "main"))
    });
    assert_eq!(r.status, 200, "another agent is unaffected: {}", r.text());

    // Records kept: the agent, its boarding state and registration are all still there.
    assert_eq!(status(&auth, &op, "sus-ss"), "ONBOARDED");
    let r = auth.json("GET", &format!("{API}/agents/sus-ss"), Some(&op), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let c = credentials(&auth, &op, "sus-ss");
    assert_eq!(c["suspended"], true, "{c}");
    assert_eq!(c["registration"]["authMethod"], "client_secret_jwt", "{c}");
    // Suspending again changes nothing.
    assert_eq!(post(&auth, &op, "sus-ss", "suspend")["suspended"], true);

    let v = post(&auth, &op, "sus-ss", "resume");
    assert_eq!(v["suspended"], false, "{v}");
    assert!(v["suspendedAt"].is_null(), "{v}");
    // The same secret, no new boarding: a fresh assertion gets a token again.
    let r = token(&auth, || {
        sign(&hs(&secret), None, &node_claims("sus-ss", "main"))
    });
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(credentials(&auth, &op, "sus-ss")["suspended"], false);
    assert!(
        !introspect(&auth, &op, &earlier),
        "tokens from before the suspension stay revoked"
    );
    // Rotation works again with the RAT the agent kept.
    let r = auth.json(
        "PUT",
        &uri,
        Some(&rat),
        Some(&json!({"client_id": "sus-ss"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Audited, by whom and what.
    let r = auth.json(
        "GET",
        "/api/latchkey/v1/audit?agent=sus-ss&event=agent",
        Some(&op),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let events: Vec<String> = r.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_owned())
        .collect();
    for want in ["agent.suspend", "agent.resume"] {
        assert!(events.iter().any(|e| e == want), "{want} in {events:?}");
    }
}

#[test]
fn suspension_covers_key_based_agents_and_unknown_agents_get_404() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let key = rsa(3072, 0, Algorithm::RS256);
    board(
        &auth,
        &op,
        "sus-rsa",
        "RSA_3072",
        &json!({"jwks": {"keys": [public_jwk(&key, "k1")]}}),
    );
    let assertion = || sign(&key, Some("k1"), &node_claims("sus-rsa", "main"));
    assert_eq!(token(&auth, assertion).status, 200);
    post(&auth, &op, "sus-rsa", "suspend");
    assert_error(&token(&auth, assertion), 401, "invalid_client", "suspended");
    // Unknown agents answer 404; the agent API needs agents:write.
    let r = auth.json("POST", &format!("{V1}/nobody/suspend"), Some(&op), None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = auth.json("POST", &format!("{V1}/sus-rsa/resume"), None, None);
    assert_eq!(r.status, 401, "{}", r.text());
    post(&auth, &op, "sus-rsa", "resume");
    assert_eq!(token(&auth, assertion).status, 200);
}

#[test]
fn agent_suspend_and_resume_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let reg = board(&auth, &op, "sus-cli", "SHARED_SECRET", &json!({}));
    let secret = s(&reg, "client_secret");
    let creds = auth.data_dir.join("admin-client.json");
    let cli = |verb: &str| {
        let out = std::process::Command::new(latchkey_bin())
            .args(["agent", verb, "sus-cli", "--server", &auth.base_url()])
            .arg("--credentials")
            .arg(&creds)
            .arg("--json")
            .output()
            .expect("run latchkey");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("json")
    };
    assert_eq!(cli("suspend")["suspended"], true);
    let r = token(&auth, || {
        sign(&hs(&secret), None, &node_claims("sus-cli", "main"))
    });
    assert_error(&r, 401, "invalid_client", "suspended");
    // `agent show` says so.
    let out = std::process::Command::new(latchkey_bin())
        .args(["agent", "show", "sus-cli", "--server", &auth.base_url()])
        .arg("--credentials")
        .arg(&creds)
        .output()
        .expect("run latchkey");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUSPENDED"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(cli("resume")["suspended"], false);
    let r = token(&auth, || {
        sign(&hs(&secret), None, &node_claims("sus-cli", "main"))
    });
    assert_eq!(r.status, 200, "{}", r.text());
}
