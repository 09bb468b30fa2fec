//! Backoff after failed client authentication: wrong secrets for one client id get 429
//! `slow_down` with Retry-After, unchecked, while other clients are served; the right secret
//! works again once Retry-After has passed; successes never count.

use std::time::Duration;

use super::{Authority, admin_secret, assert_error, basic, config};
use crate::util::server::Response;

fn token(auth: &Authority, id: &str, secret: &str) -> Response {
    auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &basic(id, secret))],
    )
}

fn retry_after(r: &Response) -> u64 {
    r.header("Retry-After")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After seconds")
}

fn throttled_total(auth: &Authority) -> String {
    let m = auth.json("GET", "/metrics", None, None).text();
    m.lines()
        .find(|l| l.starts_with("latchkey_auth_throttled_total{by=\"client\"}"))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn wrong_secrets_throttle_that_client_only_until_retry_after() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "");
    let auth = Authority::start_with(
        &dir.path().join("data"),
        Some(&cfg),
        &["--auth-failure-limit", "2"],
    );
    let admin = admin_secret(&auth);
    for _ in 0..2 {
        assert_error(&token(&auth, "Job", "wrong"), 401, "invalid_client");
    }
    // In backoff the right secret is refused too, without being checked.
    let r = token(&auth, "Job", "secret");
    assert_error(&r, 429, "slow_down");
    let wait = retry_after(&r);
    assert!((1..=300).contains(&wait), "{wait}");
    // Every endpoint that authenticates the client is covered.
    let r = auth.form(
        "/oauth/introspect",
        "token=x",
        &[("Authorization", &basic("Job", "secret"))],
    );
    assert_error(&r, 429, "slow_down");
    assert!(r.header("Retry-After").is_some());
    // Another client is unaffected.
    assert_eq!(token(&auth, "admin", &admin).status, 200);
    assert_eq!(
        throttled_total(&auth),
        "latchkey_auth_throttled_total{by=\"client\"} 2"
    );

    std::thread::sleep(Duration::from_secs(wait) + Duration::from_millis(200));
    // One line for the two refusals (the second is held back).
    let log = auth.stderr();
    assert_eq!(
        log.matches("authentication refused after repeated failures")
            .count(),
        1,
        "{log}"
    );
    let r = token(&auth, "Job", "secret");
    assert_eq!(r.status, 200, "{}", r.text());
    // The success reset the count: one more failure is an ordinary 401.
    assert_error(&token(&auth, "Job", "wrong"), 401, "invalid_client");
    assert_eq!(token(&auth, "Job", "secret").status, 200);
    auth.stop();
}

#[test]
fn the_default_limit_bites_after_five_failures() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let admin = admin_secret(&auth);
    for _ in 0..5 {
        assert_error(&token(&auth, "admin", "wrong"), 401, "invalid_client");
    }
    let r = token(&auth, "admin", &admin);
    assert_error(&r, 429, "slow_down");
    assert_eq!(retry_after(&r), 1, "the first backoff is one second");
    auth.stop();
}

#[test]
fn successes_never_count() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start_with(
        &dir.path().join("data"),
        None,
        &["--auth-failure-limit", "2"],
    );
    let admin = admin_secret(&auth);
    for i in 0..300 {
        let r = token(&auth, "admin", &admin);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        // A failure between successes never adds up to the limit.
        if i % 50 == 0 {
            assert_error(&token(&auth, "admin", "wrong"), 401, "invalid_client");
        }
    }
    assert_eq!(throttled_total(&auth), "");
    auth.stop();
}

fn source_throttled_total(auth: &Authority) -> String {
    let m = auth.json("GET", "/metrics", None, None).text();
    m.lines()
        .find(|l| l.starts_with("latchkey_auth_throttled_total{by=\"source\"}"))
        .unwrap_or("")
        .to_owned()
}

/// One address trying many client ids (none failing twice) is refused by address, valid
/// credentials included, on every endpoint that authenticates.
fn one_address_many_ids(auth: &Authority, failures: usize) {
    let admin = admin_secret(auth);
    for i in 0..failures {
        let id = format!("guess-{i}");
        assert_error(&token(auth, &id, "wrong"), 401, "invalid_client");
    }
    let r = token(auth, "admin", &admin);
    assert_error(&r, 429, "slow_down");
    assert!(retry_after(&r) >= 1);
    let r = auth.form(
        "/oauth/introspect",
        "token=x",
        &[("Authorization", &basic("admin", &admin))],
    );
    assert_error(&r, 429, "slow_down");
    let r = auth.json(
        "POST",
        "/api/agentmanagement/v3/register",
        Some("x.y.z"),
        Some(&serde_json::json!({})),
    );
    assert_error(&r, 429, "slow_down");
    assert_eq!(
        source_throttled_total(auth),
        "latchkey_auth_throttled_total{by=\"source\"} 3"
    );
}

#[test]
fn one_address_guessing_many_client_ids_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start_with(
        &dir.path().join("data"),
        None,
        &["--auth-source-failure-limit", "3"],
    );
    one_address_many_ids(&auth, 3);
    auth.stop();
}

/// One misconfigured client behind a shared address (a NAT), retrying with its wrong secret
/// far past the source limit, is backed off itself but never locks out the others there.
#[test]
fn one_client_retrying_its_wrong_secret_does_not_lock_out_its_address() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start_with(
        &dir.path().join("data"),
        None,
        &["--auth-source-failure-limit", "3"],
    );
    let admin = admin_secret(&auth);
    for _ in 0..20 {
        let r = token(&auth, "broken-device", "wrong");
        assert!(r.status == 401 || r.status == 429, "{}", r.text());
    }
    let r = token(&auth, "admin", &admin);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        source_throttled_total(&auth),
        "latchkey_auth_throttled_total{by=\"source\"} 0"
    );
    auth.stop();
}

#[test]
fn the_default_source_limit_bites_after_thirty_failures() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    one_address_many_ids(&auth, 30);
    auth.stop();
}
