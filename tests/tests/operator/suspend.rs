//! Suspending and resuming operator clients, and rotating their secrets with a grace period:
//! a suspended client gets no token and its tokens stop working for good, while its record
//! stays; a rotated secret keeps the previous one working until the grace ends.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    Authority, V1, admin_secret, assert_error, basic, cli, config, introspect, stderr, token_for,
    whoami,
};
use crate::util::server::Response;

fn grant(auth: &Authority, id: &str, secret: &str) -> Response {
    auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &basic(id, secret))],
    )
}

fn create(auth: &Authority, op: &str, id: &str, profile: &str) -> String {
    let r = auth.json(
        "POST",
        &format!("{V1}/clients"),
        Some(op),
        Some(&json!({"client_id": id, "profile": profile})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_owned()
}

fn post(auth: &Authority, op: &str, path: &str, body: Option<&Value>) -> Response {
    auth.json("POST", &format!("{V1}/clients/{path}"), Some(op), body)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn listed(auth: &Authority, op: &str, id: &str) -> Value {
    let r = auth.json("GET", &format!("{V1}/clients"), Some(op), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["client_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} listed"))
}

#[test]
fn suspended_client_gets_no_token_and_its_tokens_stop_until_resumed() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let op = token_for(&auth, "admin", &admin_secret(&auth));
    let admin_basic = basic("admin", &admin_secret(&auth));
    let secret = create(&auth, &op, "ci-bot", "ReadOnly");
    let earlier = token_for(&auth, "ci-bot", &secret);
    assert_eq!(whoami(&auth, &earlier), 200);

    let r = post(&auth, &op, "ci-bot/suspend", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["suspended"], true);

    let r = grant(&auth, "ci-bot", &secret);
    assert_error(&r, 401, "invalid_client");
    assert!(r.text().contains("suspended"), "{}", r.text());
    assert_eq!(whoami(&auth, &earlier), 401, "its token is refused");
    let r = introspect(&auth, &admin_basic, &earlier);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], false);
    // Nor does its secret authenticate it at introspection.
    let r = introspect(&auth, &basic("ci-bot", &secret), &earlier);
    assert_error(&r, 401, "invalid_client");
    // Kept, and shown as suspended.
    assert_eq!(listed(&auth, &op, "ci-bot")["suspended"], true);
    // Another client is unaffected.
    assert_eq!(grant(&auth, "Job", "secret").status, 200);

    let r = post(&auth, &op, "ci-bot/resume", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["suspended"], false);
    let fresh = token_for(&auth, "ci-bot", &secret);
    assert_eq!(whoami(&auth, &fresh), 200);
    assert_eq!(
        whoami(&auth, &earlier),
        401,
        "tokens from before the suspension stay dead"
    );

    // Audited.
    let r = auth.json(
        "GET",
        "/api/latchkey/v1/audit?client=ci-bot&event=client",
        Some(&op),
        None,
    );
    let text = r.text();
    for want in ["client.suspend", "client.resume"] {
        assert!(text.contains(want), "{want} in {text}");
    }
}

#[test]
fn nobody_suspends_itself_a_stronger_client_or_another_tenants() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "");
    let auth = Authority::start(&dir.path().join("data"), Some(&cfg));
    let op = token_for(&auth, "admin", &admin_secret(&auth));
    let r = post(&auth, &op, "admin/suspend", None);
    assert_error(&r, 403, "insufficient_scope");
    // A client that may manage clients but holds less than the administrator.
    let r = auth.json(
        "PUT",
        &format!("{V1}/profiles/ClientManagers"),
        Some(&op),
        Some(&json!({"permissions": ["clients:read", "clients:admin"]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let secret = create(&auth, &op, "helper", "ClientManagers");
    let helper = token_for(&auth, "helper", &secret);
    for verb in ["suspend", "resume", "rotate-secret"] {
        let r = post(&auth, &helper, &format!("admin/{verb}"), None);
        assert_error(&r, 403, "insufficient_scope");
    }
    // A read-only client may not suspend anyone.
    let job = token_for(&auth, "Job", "secret");
    assert_error(
        &post(&auth, &job, "helper/suspend", None),
        403,
        "insufficient_scope",
    );
    // Another tenant's administrator does not see this tenant's clients.
    let acme = token_for(&auth, "acme-admin", "acme-secret");
    assert_error(
        &post(&auth, &acme, "helper/suspend", None),
        404,
        "not_found",
    );
    assert_eq!(grant(&auth, "admin", &admin_secret(&auth)).status, 200);
    assert_eq!(grant(&auth, "helper", &secret).status, 200);
}

#[test]
fn rotated_secret_keeps_the_previous_one_until_a_short_grace_ends() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, None);
    let op = token_for(&auth, "admin", &admin_secret(&auth));
    let old = create(&auth, &op, "rotator", "ReadOnly");
    let before = token_for(&auth, "rotator", &old);

    let r = post(
        &auth,
        &op,
        "rotator/rotate-secret",
        Some(&json!({"grace": 2})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let new = v["client_secret"].as_str().expect("new secret").to_owned();
    assert_ne!(new, old);
    let until = v["previous_valid_until"]
        .as_u64()
        .expect("previous_valid_until");
    // In the grace both work, and tokens issued before stay valid until they expire.
    assert_eq!(grant(&auth, "rotator", &old).status, 200);
    assert_eq!(grant(&auth, "rotator", &new).status, 200);
    assert_eq!(whoami(&auth, &before), 200);
    // The secret is shown once: the listing has only the grace's end.
    let l = listed(&auth, &op, "rotator");
    assert!(l.get("client_secret").is_none(), "{l}");
    assert_eq!(l["previous_valid_until"], until);

    while now() <= until {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_error(&grant(&auth, "rotator", &old), 401, "invalid_client");
    assert_eq!(grant(&auth, "rotator", &new).status, 200);

    // Grace 0: the replaced secret ends at once.
    let r = post(
        &auth,
        &op,
        "rotator/rotate-secret",
        Some(&json!({"grace": 0})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let newest = r.json()["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert!(
        r.json().get("previous_valid_until").is_none(),
        "{}",
        r.text()
    );
    assert_error(&grant(&auth, "rotator", &new), 401, "invalid_client");
    assert_eq!(grant(&auth, "rotator", &newest).status, 200);

    let r = auth.json(
        "GET",
        "/api/latchkey/v1/audit?client=rotator&event=client.rotate-secret",
        Some(&op),
        None,
    );
    assert_eq!(
        r.json()["entries"].as_array().map(Vec::len),
        Some(2),
        "{}",
        r.text()
    );
    assert!(!r.text().contains(&newest), "no secret in the audit log");
}

#[test]
fn default_secret_grace_is_a_day_and_longer_than_the_maximum_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), "");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, Some(&cfg));
    let op = token_for(&auth, "admin", &admin_secret(&auth));
    let old = create(&auth, &op, "daily", "ReadOnly");
    // Through the CLI, without --grace: the default.
    let creds = data.join("admin-client.json");
    let base = auth.base_url();
    let out = cli(&[
        "client",
        "rotate-secret",
        "daily",
        "--server",
        &base,
        "--credentials",
        creds.to_str().expect("path"),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let until = v["previous_valid_until"].as_u64().expect("until");
    let left = until.saturating_sub(now());
    assert!(
        (86_400 - 120..=86_400).contains(&left),
        "the default grace is 24 h: {left} s left"
    );
    let new = v["client_secret"].as_str().expect("secret");
    assert_eq!(grant(&auth, "daily", &old).status, 200);
    assert_eq!(grant(&auth, "daily", new).status, 200);

    // More than client-secret-grace-max (30 days) is refused.
    let r = post(
        &auth,
        &op,
        "daily/rotate-secret",
        Some(&json!({"grace": 31 * 86_400})),
    );
    assert_error(&r, 400, "invalid_request");
    assert_eq!(grant(&auth, "daily", new).status, 200, "nothing changed");
    // A client declared in the settings file keeps the secret the file gives it.
    assert_error(
        &post(&auth, &op, "Job/rotate-secret", None),
        409,
        "conflict",
    );
}

#[test]
fn clients_are_suspended_resumed_and_rotated_offline() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, None);
    let op = token_for(&auth, "admin", &admin_secret(&auth));
    let secret = create(&auth, &op, "offline", "ReadOnly");
    auth.stop();
    let d = data.to_str().expect("path");
    let run = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.extend(["--data-dir", d, "--json"]);
        let out = cli(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    };
    assert_eq!(run(&["client", "suspend", "offline"])["suspended"], true);
    let out = cli(&["client", "list", "--data-dir", d]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("offline ") && l.contains(" suspended ")),
        "{listing}"
    );
    let rotated = run(&["client", "rotate-secret", "offline", "--grace", "1h"]);
    let new = rotated["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let left = rotated["previous_valid_until"]
        .as_u64()
        .expect("until")
        .saturating_sub(now());
    assert!((3_600 - 120..=3_600).contains(&left), "{left}");

    // The suspension survives the restart.
    let auth = Authority::start(&data, None);
    assert_error(&grant(&auth, "offline", &new), 401, "invalid_client");
    auth.stop();
    assert_eq!(run(&["client", "resume", "offline"])["suspended"], false);
    let auth = Authority::start(&data, None);
    assert_eq!(grant(&auth, "offline", &new).status, 200);
    assert_eq!(grant(&auth, "offline", &secret).status, 200, "in its grace");
}
