//! Every mutating operator call, and every read that discloses an initial access token, leaves
//! one audit entry naming the operator, the event and the subject.

use serde_json::{Value, json};

use super::{AGENTS, V1, admin_secret, put_profile};
use crate::util::https::Authority;

/// The entries after `seq`, oldest first.
fn audit_after(auth: &Authority, token: &str, seq: u64) -> Vec<Value> {
    let r = auth.json(
        "GET",
        &format!("{V1}/audit?after={seq}&limit=1000"),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entries"].as_array().expect("entries").clone()
}

fn last_seq(auth: &Authority, token: &str) -> u64 {
    audit_after(auth, token, 0)
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0)
}

#[test]
fn every_operator_change_and_iat_disclosure_is_audited_once() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let op = auth.operator_token();
    let admin = "admin";
    let seq = std::cell::Cell::new(last_seq(&auth, &op));
    // Checks a call's status and that it added exactly `events` (event, subject), by `admin`.
    let check = |what: &str,
                 status: u16,
                 r: crate::util::server::Response,
                 events: &[(&str, &str)]| {
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let new = audit_after(&auth, &op, seq.get());
        // Reading the audit log with an operator token is not itself audited beyond the
        // token issuance the token endpoint records; only this call's entries are counted.
        let own: Vec<&Value> = new
            .iter()
            .filter(|e| !e["event"].as_str().is_some_and(|s| s.starts_with("token.")))
            .collect();
        let got: Vec<(String, String, String)> = own
            .iter()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap_or("").to_owned(),
                    e["event"].as_str().unwrap_or("").to_owned(),
                    e["subject"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String, String)> = events
            .iter()
            .map(|(event, subject)| (admin.to_owned(), (*event).to_owned(), (*subject).to_owned()))
            .collect();
        assert_eq!(got, want, "{what}");
        assert!(
            own.iter().all(|e| e["outcome"] == "success"),
            "{what}: {own:?}"
        );
        if let Some(last) = new.last().and_then(|e| e["seq"].as_u64()) {
            seq.set(last);
        }
    };

    let r = auth.json(
        "POST",
        AGENTS,
        Some(&op),
        Some(&json!({"entityId": "au1", "name": "Audited", "securityProfile": "SHARED_SECRET"})),
    );
    check(
        "create",
        201,
        r,
        &[("agent.boarding.issue", "au1"), ("agent.create", "au1")],
    );

    let r = auth.json("GET", &format!("{AGENTS}/au1"), Some(&op), None);
    let etag = r.json()["eTag"].as_str().expect("eTag").to_owned();
    let r = auth.json_with(
        "PUT",
        &format!("{AGENTS}/au1"),
        Some(&op),
        Some(&json!({"name": "Audited 2", "securityProfile": "SHARED_SECRET"})),
        &[("If-Match", &etag)],
    );
    check("update", 200, r, &[("agent.update", "au1")]);

    let r = auth.json(
        "GET",
        &format!("{AGENTS}/au1/boarding/configuration"),
        Some(&op),
        None,
    );
    assert!(r.json()["content"]["iat"].is_string(), "{}", r.text());
    check(
        "boarding configuration",
        200,
        r,
        &[("agent.boarding.disclose", "au1")],
    );

    let config = json!({"configurationId": "cfg-1", "dataSources": [{"name": "PLC", "dataPoints": [
        {"id": "dp1", "name": "Voltage", "type": "DOUBLE", "unit": "V"}]}]});
    let r = auth.json_with(
        "PUT",
        &format!("{AGENTS}/au1/dataSourceConfiguration"),
        Some(&op),
        Some(&config),
        &[("If-Match", "0")],
    );
    check(
        "data source configuration",
        200,
        r,
        &[("agent.datasource.put", "au1")],
    );

    let r = auth.json(
        "POST",
        &format!("{AGENTS}/au1/boarding/offboard"),
        Some(&op),
        None,
    );
    check("offboard", 200, r, &[("agent.offboard", "au1")]);

    // After offboarding the configuration issues a fresh IAT: issued, then disclosed.
    let r = auth.json(
        "GET",
        &format!("{AGENTS}/au1/boarding/configuration"),
        Some(&op),
        None,
    );
    check(
        "boarding configuration with a new IAT",
        200,
        r,
        &[
            ("agent.boarding.issue", "au1"),
            ("agent.boarding.disclose", "au1"),
        ],
    );

    let r = auth.json("GET", &format!("{AGENTS}/au1"), Some(&op), None);
    let etag = r.json()["eTag"].as_str().expect("eTag").to_owned();
    let r = auth.json_with(
        "DELETE",
        &format!("{AGENTS}/au1"),
        Some(&op),
        None,
        &[("If-Match", &etag)],
    );
    check("delete", 204, r, &[("agent.delete", "au1")]);

    let r = auth.json(
        "POST",
        &format!("{V1}/agents/import"),
        Some(&op),
        Some(&json!({"agents": [{"entityId": "au2", "name": "Imported", "securityProfile": "SHARED_SECRET"}]})),
    );
    check(
        "import",
        200,
        r,
        &[("agent.boarding.issue", "au2"), ("agent.create", "au2")],
    );

    let r = put_profile(&auth, &op, "Viewers", &["agents:read"]);
    check("profile put", 200, r, &[("profile.put", "Viewers")]);

    let r = auth.json(
        "POST",
        &format!("{V1}/clients"),
        Some(&op),
        Some(&json!({"client_id": "viewer", "profile": "Viewers"})),
    );
    check("client create", 201, r, &[("client.create", "viewer")]);

    let r = auth.json("DELETE", &format!("{V1}/clients/viewer"), Some(&op), None);
    check("client delete", 204, r, &[("client.delete", "viewer")]);

    let r = auth.json("DELETE", &format!("{V1}/profiles/Viewers"), Some(&op), None);
    check("profile delete", 204, r, &[("profile.delete", "Viewers")]);

    let r = auth.json(
        "POST",
        &format!("{V1}/revocations"),
        Some(&op),
        Some(&json!({"kind": "agent", "id": "au2"})),
    );
    check("revoke", 200, r, &[("revoke", "agent:au2")]);

    let r = auth.json(
        "POST",
        &format!("{V1}/keys/rotate"),
        Some(&op),
        Some(&json!({"alg": "ES256"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let kid = r.json()["kid"].as_str().expect("kid").to_owned();
    let new = audit_after(&auth, &op, seq.get());
    assert!(
        new.iter().any(|e| e["event"] == "key.add"
            && e["subject"] == kid.as_str()
            && e["actor"] == admin),
        "{new:?}"
    );

    let all = audit_after(&auth, &op, 0)
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    assert!(
        !all.contains(&admin_secret(&auth)),
        "a secret leaked into the audit log"
    );
}
