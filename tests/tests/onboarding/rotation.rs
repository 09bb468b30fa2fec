//! Lost rotation answers: a repeated rotation with the previous RAT gets the same answer
//! within the grace window, the previous secret or key keeps working until the agent first
//! uses a new credential, and from then on (or once the window ends) the old ones are dead.

use std::time::Duration;

use latchkey_core::{Algorithm, SigningKey};
use serde_json::{Value, json};

use super::{API, assert_error, board, node_claims, path_of, public_jwk, rsa, sign, start, token};
use crate::util::https::Authority;
use crate::util::server::Response;

fn hs(secret: &str) -> SigningKey {
    SigningKey::hmac(Algorithm::HS256, secret.as_bytes()).expect("hmac")
}

fn rotate(auth: &Authority, uri: &str, rat: &str, body: &Value) -> Response {
    auth.json("PUT", uri, Some(rat), Some(body))
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} in {v}"))
        .to_owned()
}

fn secret_token(auth: &Authority, id: &str, secret: &str) -> u16 {
    token(auth, || sign(&hs(secret), None, &node_claims(id, "main"))).status
}

fn audit(auth: &Authority, op: &str, id: &str) -> String {
    let r = auth.json(
        "GET",
        &format!("/api/latchkey/v1/audit?agent={id}"),
        Some(op),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[test]
fn lost_rotation_answer_is_replayed_and_the_first_new_secret_cuts_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let reg = board(&auth, &op, "lost-1", "SHARED_SECRET", &json!({}));
    let (secret, rat) = (
        s(&reg, "client_secret"),
        s(&reg, "registration_access_token"),
    );
    let uri = path_of(&s(&reg, "registration_client_uri"), &auth);
    let body = json!({"client_id": "lost-1"});

    // The answer to this rotation is "lost"; the agent repeats it with the RAT it still has.
    let first = rotate(&auth, &uri, &rat, &body);
    assert_eq!(first.status, 200, "{}", first.text());
    let lost = first.json();
    let again = rotate(&auth, &uri, &rat, &body);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.json(),
        lost,
        "the replay carries the same credentials"
    );
    assert_ne!(s(&lost, "client_secret"), secret);
    assert_ne!(s(&lost, "registration_access_token"), rat);
    // A replay is no read access: GET with the previous RAT stays refused.
    assert_error(
        &auth.json("GET", &uri, Some(&rat), None),
        401,
        "invalid_token",
        "not current",
    );
    // Until the new secret is used, the old one still gets tokens.
    assert_eq!(secret_token(&auth, "lost-1", &secret), 200);
    assert_eq!(
        secret_token(&auth, "lost-1", &s(&lost, "client_secret")),
        200
    );

    // The new secret was used: the old RAT and the old secret are dead.
    assert_error(
        &rotate(&auth, &uri, &rat, &body),
        401,
        "invalid_token",
        "not current",
    );
    assert_error(
        &token(&auth, || {
            sign(&hs(&secret), None, &node_claims("lost-1", "main"))
        }),
        401,
        "invalid_client",
        "signature",
    );
    let new_rat = s(&lost, "registration_access_token");
    assert_eq!(auth.json("GET", &uri, Some(&new_rat), None).status, 200);
    let events = audit(&auth, &op, "lost-1");
    assert!(events.contains("agent.rotate.replay"), "{events}");
    assert!(events.contains("agent.rotate.cutover"), "{events}");

    // The cut-over is durable: after a restart the old secret stays refused.
    auth.stop();
    let auth = start(dir.path());
    assert_error(
        &token(&auth, || {
            sign(&hs(&secret), None, &node_claims("lost-1", "main"))
        }),
        401,
        "invalid_client",
        "signature",
    );
    assert_eq!(
        secret_token(&auth, "lost-1", &s(&lost, "client_secret")),
        200
    );
    auth.stop();
}

#[test]
fn first_use_of_the_new_rat_cuts_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let reg = board(&auth, &op, "lost-2", "SHARED_SECRET", &json!({}));
    let (secret, rat) = (
        s(&reg, "client_secret"),
        s(&reg, "registration_access_token"),
    );
    let uri = path_of(&s(&reg, "registration_client_uri"), &auth);
    let body = json!({"client_id": "lost-2"});
    let rotated = rotate(&auth, &uri, &rat, &body).json();
    let new_rat = s(&rotated, "registration_access_token");
    // The previous RAT still replays until the new RAT is used...
    assert_eq!(rotate(&auth, &uri, &rat, &body).json(), rotated);
    assert_eq!(auth.json("GET", &uri, Some(&new_rat), None).status, 200);
    // ...and not after.
    assert_error(
        &rotate(&auth, &uri, &rat, &body),
        401,
        "invalid_token",
        "not current",
    );
    assert_eq!(secret_token(&auth, "lost-2", &secret), 401);
    // Rotating again with the new RAT works and keeps its own grace window.
    let third = rotate(&auth, &uri, &new_rat, &body);
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(rotate(&auth, &uri, &new_rat, &body).json(), third.json());
    auth.stop();
}

#[test]
fn previous_credentials_end_with_the_grace_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("latchkey.toml");
    std::fs::write(
        &config,
        "[tokens]\nleeway = \"1s\"\n[agents]\nrotation-grace = \"2s\"\n",
    )
    .expect("config");
    let auth = Authority::start(&dir.path().join("data"), Some(&config));
    let op = auth.operator_token();
    let reg = board(&auth, &op, "lost-3", "SHARED_SECRET", &json!({}));
    let (secret, rat) = (
        s(&reg, "client_secret"),
        s(&reg, "registration_access_token"),
    );
    let uri = path_of(&s(&reg, "registration_client_uri"), &auth);
    let body = json!({"client_id": "lost-3"});
    let rotated = rotate(&auth, &uri, &rat, &body).json();
    std::thread::sleep(Duration::from_secs(3));
    assert_error(
        &rotate(&auth, &uri, &rat, &body),
        401,
        "invalid_token",
        "not current",
    );
    assert_eq!(secret_token(&auth, "lost-3", &secret), 401);
    assert_eq!(
        secret_token(&auth, "lost-3", &s(&rotated, "client_secret")),
        200
    );
    auth.stop();
}

#[test]
fn rsa_3072_previous_key_works_until_the_new_key_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let (old, new) = (
        rsa(3072, 0, Algorithm::RS256),
        rsa(3072, 1, Algorithm::RS256),
    );
    let jwks = |k: &SigningKey, kid: &str| json!({"jwks": {"keys": [public_jwk(k, kid)]}});
    let reg = board(&auth, &op, "lost-rsa", "RSA_3072", &jwks(&old, "k1"));
    let rat = s(&reg, "registration_access_token");
    let uri = path_of(&s(&reg, "registration_client_uri"), &auth);
    let rsa_token = |k: &SigningKey, kid: &str| {
        token(&auth, || {
            sign(k, Some(kid), &node_claims("lost-rsa", "main"))
        })
        .status
    };
    // MCL style: a new key under a new kid; the answer is lost and the rotation repeated.
    let first = rotate(&auth, &uri, &rat, &jwks(&new, "k2"));
    assert_eq!(first.status, 200, "{}", first.text());
    let again = rotate(&auth, &uri, &rat, &jwks(&new, "k2"));
    assert_eq!(again.json(), first.json());
    assert_eq!(rsa_token(&old, "k1"), 200, "the previous key still works");
    assert_eq!(rsa_token(&new, "k2"), 200);
    assert_eq!(
        rsa_token(&old, "k1"),
        401,
        "dead after the new key's first use"
    );
    assert_error(
        &rotate(&auth, &uri, &rat, &jwks(&new, "k2")),
        401,
        "invalid_token",
        "not current",
    );

    // Node SDK style: the same key again. Using it proves nothing about the answer, so the
    // previous RAT keeps replaying.
    let rat2 = s(&first.json(), "registration_access_token");
    let same = rotate(&auth, &uri, &rat2, &jwks(&new, "k2"));
    assert_eq!(same.status, 200, "{}", same.text());
    assert_eq!(rsa_token(&new, "k2"), 200);
    assert_eq!(
        rotate(&auth, &uri, &rat2, &jwks(&new, "k2")).json(),
        same.json()
    );
    auth.stop();
}

/// Runs `tests/interop/recovery.js` for one phase; its JSON report.
fn node_phase(
    auth: &Authority,
    config: &std::path::Path,
    state: &std::path::Path,
    phase: &str,
) -> Value {
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    assert!(
        interop
            .join("node_modules/@mindconnect/mindconnect-nodejs")
            .is_dir(),
        "run `npm ci --prefix tests/interop` (scripts/test.sh does)"
    );
    let out = std::process::Command::new("node")
        .arg(interop.join("recovery.js"))
        .arg(config)
        .arg(state)
        .arg(phase)
        .env("NODE_EXTRA_CA_CERTS", auth.ca_path())
        .current_dir(&interop)
        .output()
        .expect("run node (Node.js 18+ is required)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node {phase} failed\nstdout:\n{stdout}\nstderr:\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        auth.stderr()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON report")
}

/// The published Node.js SDK's own rotation path recovers a lost rotation answer with no
/// operator action, then round-trips its data source configuration.
#[test]
fn node_sdk_recovers_from_a_lost_rotation_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let r = super::create(&auth, &op, "node-lost", "Node SDK agent", "SHARED_SECRET");
    assert_eq!(r.status, 201, "{}", r.text());
    let config = super::configuration(&auth, &op, "node-lost");
    let config_file = dir.path().join("boarding.json");
    std::fs::write(&config_file, config.to_string()).expect("write config");
    let state = dir.path().join("sdk-state");
    let boarded = node_phase(&auth, &config_file, &state, "board");

    // The SDK's registration is rotated, and the answer never reaches it.
    let rat = s(&boarded, "rat");
    let lost = rotate(
        &auth,
        &format!("{API}/register/node-lost"),
        &rat,
        &json!({"client_id": "node-lost"}),
    );
    assert_eq!(lost.status, 200, "{}", lost.text());
    let lost = lost.json();

    let report = node_phase(&auth, &config_file, &state, "recover");
    assert_eq!(report["secretBefore"], boarded["secret"], "{report}");
    assert_eq!(report["secretAfter"], lost["client_secret"], "{report}");
    assert_eq!(
        report["ratAfter"], lost["registration_access_token"],
        "{report}"
    );
    for t in report["tokens"].as_array().expect("tokens") {
        super::check_access_token(&auth, t.as_str().expect("token"), "node-lost");
    }
    // The agent used its new secret: the old RAT is dead, the new one works.
    let uri = format!("{API}/register/node-lost");
    assert_error(
        &rotate(&auth, &uri, &rat, &json!({"client_id": "node-lost"})),
        401,
        "invalid_token",
        "not current",
    );
    assert_eq!(
        auth.json(
            "GET",
            &uri,
            Some(&s(&lost, "registration_access_token")),
            None
        )
        .status,
        200
    );
    let events = audit(&auth, &op, "node-lost");
    assert!(
        events.contains("agent.rotate.replay") && events.contains("agent.rotate.cutover"),
        "{events}"
    );

    // dataSourceConfiguration through the SDK: stored, read back as stored, updated by eTag.
    assert_eq!(report["stored"]["eTag"], "1", "{report}");
    assert_eq!(report["read"], report["stored"], "{report}");
    assert_eq!(report["updated"]["eTag"], "2", "{report}");
    assert_eq!(report["updated"]["configurationId"], "recovery-config-2");
    assert_eq!(
        report["stored"]["dataSources"][0]["dataPoints"][1]["customData"]["source"],
        "DB1"
    );
    let r = auth.json(
        "GET",
        &format!("{API}/agents/node-lost/dataSourceConfiguration"),
        Some(&op),
        None,
    );
    assert_eq!(r.json(), report["updated"]);
    auth.stop();
}
