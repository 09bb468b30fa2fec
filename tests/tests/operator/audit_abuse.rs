//! Audit without amplification: refused unauthenticated token requests are audited as counts,
//! not one row each, and the audit log is pruned from its oldest end.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Authority, basic, cli, cli_json, config, stderr};

fn refuse(auth: &Authority, id: &str) -> u16 {
    auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &basic(id, "wrong-secret"))],
    )
    .status
}

/// The audit log of a stopped server's data directory.
fn offline_audit(auth_data: &std::path::Path, event: Option<&str>) -> Vec<Value> {
    let d = auth_data.to_str().expect("path");
    let mut args = vec!["audit", "--data-dir", d, "--limit", "1000", "--json"];
    if let Some(e) = event {
        args.extend(["--event", e]);
    }
    let out = cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["entries"].as_array().expect("entries").clone()
}

/// `count=N` from an aggregated row's subject.
fn count(row: &Value) -> u64 {
    let subject = row["subject"].as_str().expect("subject");
    subject
        .split(' ')
        .find_map(|w| w.strip_prefix("count="))
        .unwrap_or_else(|| panic!("no count in {subject:?}"))
        .parse()
        .expect("count")
}

/// With the default settings, 300 refused logins (wrong secret, then throttled) write a
/// handful of rows whose counts add up to 300, not 300 rows; the tally is written at shutdown.
#[test]
fn refused_logins_are_audited_as_counts_not_rows() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "");
    let auth = Authority::start(&data, Some(&cfg));
    let before = offline_rows_while_running(&auth);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..300 {
        *statuses.entry(refuse(&auth, "Job")).or_insert(0) += 1;
    }
    // Wrong secrets, and the backoff answering without checking.
    assert!(statuses.get(&401).is_some_and(|n| *n >= 5), "{statuses:?}");
    assert!(statuses.get(&429).is_some_and(|n| *n > 0), "{statuses:?}");
    assert_eq!(statuses.values().sum::<u32>(), 300, "{statuses:?}");
    auth.stop();

    let rows = offline_audit(&data, Some("token.refuse"));
    assert!(
        !rows.is_empty() && rows.len() <= 4,
        "one row per (client, source, error) and interval: {rows:#?}"
    );
    for row in &rows {
        assert_eq!(row["actor"], "Job");
        let subject = row["subject"].as_str().expect("subject");
        assert!(
            subject.starts_with("Job count=") && subject.contains(" source=127.0.0.1 "),
            "{subject}"
        );
        assert!(!row.to_string().contains("wrong-secret"), "{row}");
    }
    assert_eq!(rows.iter().map(count).sum::<u64>(), 300, "{rows:#?}");
    let total = offline_audit(&data, None).len();
    assert!(total < before + 20, "{before} rows before, {total} after");
}

/// The audit rows of a fresh server (first-run keys, clients) through its API.
fn offline_rows_while_running(auth: &Authority) -> usize {
    let all = cli_json(auth, &["audit", "--limit", "1000"]);
    all["entries"].as_array().expect("entries").len()
}

/// Distinct claimed ids beyond `audit-refusal-keys` share one `*other*` row, so the tally's
/// memory and the rows per interval stay bounded whatever ids an attacker sends.
#[test]
fn claimed_ids_beyond_the_key_limit_share_one_row() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "");
    let auth = Authority::start_with(&data, Some(&cfg), &["--audit-refusal-keys", "3"]);
    for i in 0..12 {
        assert_eq!(refuse(&auth, &format!("guess-{i}")), 401);
    }
    auth.stop();
    let rows = offline_audit(&data, Some("token.refuse"));
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let other = offline_audit(&data, Some("refusals.other"));
    assert_eq!(other.len(), 1, "{other:#?}");
    assert_eq!(other[0]["actor"], "*other*");
    assert_eq!(count(&other[0]), 9);
}

/// `audit-max-rows`: the maintenance thread removes the oldest rows, audits that as one
/// `audit.prune` row, and the kept rows stay dense.
#[test]
fn retention_prunes_the_oldest_rows() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "[keys]\nmaintenance-interval = \"200ms\"\n");
    let auth = Authority::start_with(&data, Some(&cfg), &["--audit-max-rows", "5"]);
    // Each login is one `token.issue` row.
    for _ in 0..20 {
        let _ = auth.operator_token();
    }
    let end = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let all = cli_json(&auth, &["audit", "--limit", "1000"]);
        let rows = all["entries"].as_array().expect("entries").clone();
        if rows.iter().any(|r| r["event"] == "audit.prune") && rows.len() <= 7 {
            break rows;
        }
        assert!(Instant::now() < end, "not pruned: {rows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // `latchkey audit` prints newest first.
    let mut seqs: Vec<u64> = rows
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    seqs.sort_unstable();
    assert!(seqs[0] > 20, "the oldest rows went: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "dense: {seqs:?}");
    let prune = rows
        .iter()
        .find(|r| r["event"] == "audit.prune")
        .expect("prune row");
    assert_eq!(prune["actor"], "system");
    assert!(
        prune["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("removed=")),
        "{prune}"
    );
    auth.stop();
}
