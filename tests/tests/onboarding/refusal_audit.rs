//! Agent-side refusals of unauthenticated requests (forged or unknown client assertions, spent
//! or forged initial access tokens) are audited as counts per claimed id, source and interval,
//! not one row per request.

use latchkey_core::{Algorithm, SigningKey};
use serde_json::{Value, json};

use super::{API, node_claims, register, sign, start, token_form};
use crate::util::latchkey_bin;

/// The audit rows of `event` in a stopped server's data directory.
fn offline_audit(data: &std::path::Path, event: &str) -> Vec<Value> {
    let out = std::process::Command::new(latchkey_bin())
        .args([
            "audit",
            "--limit",
            "1000",
            "--json",
            "--event",
            event,
            "--data-dir",
        ])
        .arg(data)
        .output()
        .expect("run latchkey");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["entries"].as_array().expect("entries").clone()
}

fn count(row: &Value) -> u64 {
    let subject = row["subject"].as_str().expect("subject");
    subject
        .split(' ')
        .find_map(|w| w.strip_prefix("count="))
        .unwrap_or_else(|| panic!("no count in {subject:?}"))
        .parse()
        .expect("count")
}

#[test]
fn forged_agent_assertions_and_bad_iats_are_audited_as_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let key = SigningKey::hmac(
        Algorithm::HS256,
        b"not-the-agents-secret-but-long-enough-for-hs256",
    )
    .expect("hmac");
    let mut refused = 0;
    for _ in 0..40 {
        let assertion = sign(&key, None, &node_claims("ghost-agent", "main"));
        let r = auth.form(&format!("{API}/oauth/token"), &token_form(&assertion), &[]);
        assert_eq!(r.status / 100, 4, "{}", r.text());
        refused += 1;
    }
    for _ in 0..10 {
        let forged_iat = sign(&key, None, &node_claims("ghost-agent", "main"));
        let r = register(&auth, &forged_iat, &json!({}));
        assert_eq!(r.status / 100, 4, "{}", r.text());
    }
    // The tally is written at shutdown at the latest.
    let data = auth.data_dir.clone();
    auth.stop();

    let rows = offline_audit(&data, "agent.token.refuse");
    assert!(
        !rows.is_empty() && rows.len() <= 2,
        "aggregated, not one row per request: {rows:#?}"
    );
    assert_eq!(rows.iter().map(count).sum::<u64>(), refused);
    assert!(
        rows.iter().all(|r| r["actor"] == "ghost-agent"),
        "{rows:#?}"
    );
    let regs = offline_audit(&data, "registration.refuse");
    assert_eq!(regs.iter().map(count).sum::<u64>(), 10, "{regs:#?}");
    assert!(regs.len() <= 2, "{regs:#?}");
}
