//! Agents whose assertions fail the signature check are backed off like operator clients:
//! after the default five failures their token requests get 429 `slow_down` with Retry-After,
//! unchecked, while other agents are served; the right secret works once Retry-After passed.

use std::time::Duration;

use latchkey_core::{Algorithm, SigningKey};
use serde_json::json;

use super::{API, board, node_claims, sign, start, token, token_form};
use crate::util::https::Authority;
use crate::util::server::Response;

fn with_secret(auth: &Authority, id: &str, secret: &str) -> Response {
    let key = SigningKey::hmac(Algorithm::HS256, secret.as_bytes()).expect("hmac");
    auth.form(
        &format!("{API}/oauth/token"),
        &token_form(&sign(&key, None, &node_claims(id, "main"))),
        &[],
    )
}

#[test]
fn forged_assertions_back_off_that_agent_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let secret_of = |id: &str| {
        board(&auth, &op, id, "SHARED_SECRET", &json!({}))["client_secret"]
            .as_str()
            .expect("client_secret")
            .to_owned()
    };
    let (one, two) = (secret_of("throttled-1"), secret_of("throttled-2"));
    let ok = |id: &str, secret: &str| {
        let s = secret.to_owned();
        token(&auth, || {
            let key = SigningKey::hmac(Algorithm::HS256, s.as_bytes()).expect("hmac");
            sign(&key, None, &node_claims(id, "main"))
        })
    };
    assert_eq!(ok("throttled-1", &one).status, 200);
    for _ in 0..5 {
        let r = with_secret(&auth, "throttled-1", "not-the-secret-at-all-0123456789");
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"], "invalid_client");
    }
    let r = with_secret(&auth, "throttled-1", &one);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "slow_down");
    let wait: u64 = r
        .header("Retry-After")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert_eq!(wait, 1, "the first backoff is one second");
    assert_eq!(
        ok("throttled-2", &two).status,
        200,
        "another agent is served"
    );

    std::thread::sleep(Duration::from_secs(wait) + Duration::from_millis(200));
    let r = ok("throttled-1", &one);
    assert_eq!(r.status, 200, "{}", r.text());
    auth.stop();
}
