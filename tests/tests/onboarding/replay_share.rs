//! One agent cannot fill the replay cache: past its share (`[tokens] replay-max-per-issuer`)
//! its token requests get 429 `slow_down` with Retry-After while other agents are served.

use latchkey_core::{Algorithm, SigningKey};
use serde_json::json;

use super::{API, board, node_claims, sign, token_form};
use crate::util::https::Authority;
use crate::util::server::Response;

fn token(auth: &Authority, id: &str, secret: &str) -> Response {
    let key = SigningKey::hmac(Algorithm::HS256, secret.as_bytes()).expect("hmac");
    auth.form(
        &format!("{API}/oauth/token"),
        &token_form(&sign(&key, None, &node_claims(id, "main"))),
        &[],
    )
}

#[test]
fn an_agent_past_its_replay_share_is_refused_while_others_get_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("latchkey.toml");
    std::fs::write(&cfg, "[tokens]\nreplay-max-per-issuer = 3\n").expect("config");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let op = auth.operator_token();
    let secret_of = |id: &str| {
        board(&auth, &op, id, "SHARED_SECRET", &json!({}))["client_secret"]
            .as_str()
            .expect("client_secret")
            .to_owned()
    };
    let (hog, other) = (secret_of("share-hog"), secret_of("share-other"));
    for _ in 0..3 {
        let r = token(&auth, "share-hog", &hog);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = token(&auth, "share-hog", &hog);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "slow_down");
    let wait: u64 = r
        .header("Retry-After")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=240).contains(&wait), "{wait}");
    // Another agent is served, up to its own share.
    for _ in 0..3 {
        let r = token(&auth, "share-other", &other);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let metrics = auth.json("GET", "/metrics", None, None).text();
    assert!(
        metrics.contains("latchkey_replay_refused_total{reason=\"issuer_share\"} 1\n"),
        "{metrics}"
    );
    assert!(auth.stderr().contains("no room in the replay cache"));
    auth.stop();
}

/// With the defaults, one agent gets many tokens in a row without meeting a share.
#[test]
fn the_default_share_leaves_one_busy_agent_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let op = auth.operator_token();
    let secret = board(&auth, &op, "busy", "SHARED_SECRET", &json!({}))["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_owned();
    for _ in 0..200 {
        let r = token(&auth, "busy", &secret);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    auth.stop();
}
