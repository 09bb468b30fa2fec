//! `latchkey agent import`: factory provisioning from JSON lines or CSV, through a running
//! server and offline on a stopped one's data directory. Bad lines are reported by number
//! without stopping the rest; a re-run creates only what is missing; an agent that exists with
//! other attributes is reported, never overwritten; `agent update` changes one field.

use std::process::Output;

use serde_json::{Value, json};

use super::{AGENTS, cli, remote, stderr};
use crate::util::https::Authority;

fn import(auth: &Authority, file: &std::path::Path, json_out: bool) -> Output {
    let mut args = vec![
        "agent".to_owned(),
        "import".to_owned(),
        "--file".to_owned(),
        file.display().to_string(),
    ];
    args.extend(remote(auth));
    if json_out {
        args.push("--json".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&refs)
}

fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "import JSON: {e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

fn agent(auth: &Authority, token: &str, id: &str) -> Value {
    let r = auth.json("GET", &format!("{AGENTS}/{id}"), Some(token), None);
    assert_eq!(r.status, 200, "{id}: {}", r.text());
    r.json()
}

#[test]
fn import_over_the_api_reports_bad_lines_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let token = auth.operator_token();
    // One agent exists already under another name: the import must not overwrite it.
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&token),
        Some(&json!({"entityId": "dev-0007", "name": "kept", "securityProfile": "SHARED_SECRET"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // More agents than one request carries, so the CLI must batch, with bad lines between.
    let mut text = String::new();
    for i in 0..2100 {
        text.push_str(&json!({"entityId": format!("dev-{i:04}")}).to_string());
        text.push('\n');
        if i == 10 {
            text.push_str("{\"entityId\": \"bad id with spaces\"}\n"); // line 12
            text.push_str("{not json\n"); // line 13
            text.push_str("{\"entityId\": \"dev-x\", \"colour\": \"red\"}\n"); // line 14
        }
    }
    let file = dir.path().join("agents.jsonl");
    std::fs::write(&file, &text).expect("write");

    let out = import(&auth, &file, true);
    assert!(
        !out.status.success(),
        "failures make the exit status non-zero"
    );
    let s = summary(&out);
    assert_eq!(s["created"], 2099, "{s}");
    assert_eq!(s["exists"], 0, "{s}");
    assert_eq!(s["failed"], 4, "{s}");
    let lines: Vec<u64> = s["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["line"].as_u64().expect("line"))
        .collect();
    // dev-0007 is on line 8; the three bad lines follow line 11.
    assert_eq!(lines, [8, 12, 13, 14], "{s}");
    assert!(
        s["errors"][0]["error"]
            .as_str()
            .expect("text")
            .contains("already exists"),
        "{s}"
    );
    assert!(
        s["errors"][3]["error"]
            .as_str()
            .expect("text")
            .contains("colour"),
        "{s}"
    );
    assert_eq!(agent(&auth, &token, "dev-0007")["name"], "kept");
    let last = agent(&auth, &token, "dev-2099");
    assert_eq!(last["name"], "dev-2099");
    assert_eq!(last["securityProfile"], "SHARED_SECRET");
    // Imported agents can board at once: the boarding configuration carries an IAT.
    let r = auth.json(
        "GET",
        &format!("{AGENTS}/dev-2099/boarding/configuration"),
        Some(&token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["content"]["iat"].is_string(), "{}", r.text());

    // The human output names each failed line.
    let out = import(&auth, &file, false);
    let text_out = String::from_utf8_lossy(&out.stdout);
    assert!(text_out.contains("line 12:"), "{text_out}");
    assert!(
        text_out.contains("created 0, already present 2099, failed 4"),
        "{text_out}"
    );
}

#[test]
fn import_offline_from_csv_then_the_server_serves_the_agents() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, None);
    auth.stop();

    let file = dir.path().join("agents.csv");
    std::fs::write(
        &file,
        "entity_id,name,security_profile\nline-a,Line A,SHARED_SECRET\nline-b,,RSA_3072\nline-c,too,many,fields\n",
    )
    .expect("write");
    let d = data.to_str().expect("path");
    let f = file.to_str().expect("path");
    let run = || cli(&["agent", "import", "--file", f, "--data-dir", d, "--json"]);
    let out = run();
    let s = summary(&out);
    assert_eq!(
        (s["created"].as_u64(), s["failed"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(s["errors"][0]["line"], 4, "{s}");
    let again = summary(&run());
    assert_eq!(
        (again["created"].as_u64(), again["exists"].as_u64()),
        (Some(0), Some(2)),
        "{again}"
    );

    let auth = Authority::start(&data, None);
    let token = auth.operator_token();
    assert_eq!(agent(&auth, &token, "line-a")["name"], "Line A");
    let b = agent(&auth, &token, "line-b");
    assert_eq!(b["name"], "line-b");
    assert_eq!(b["securityProfile"], "RSA_3072");
}

#[test]
fn import_requests_are_bounded_and_need_agents_write() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let token = auth.operator_token();
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"entityId": format!("b{i}"), "name": format!("b{i}"), "securityProfile": "SHARED_SECRET"}))
        .collect();
    let r = auth.json(
        "POST",
        "/api/latchkey/v1/agents/import",
        Some(&token),
        Some(&json!({ "agents": many })),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error_description"].is_string());
    let r = auth.json(
        "POST",
        "/api/latchkey/v1/agents/import",
        None,
        Some(&json!({ "agents": [] })),
    );
    assert_eq!(r.status, 401, "{}", r.text());
}

#[test]
fn agent_update_changes_only_what_is_given() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let token = auth.operator_token();
    let r = auth.json(
        "POST",
        AGENTS,
        Some(&token),
        Some(&json!({"entityId": "upd-1", "name": "before", "securityProfile": "SHARED_SECRET"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let mut args = vec!["agent", "update", "upd-1", "--name", "after"]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    args.extend(remote(&auth));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&refs);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = agent(&auth, &token, "upd-1");
    assert_eq!(a["name"], "after");
    assert_eq!(a["securityProfile"], "SHARED_SECRET");
}
