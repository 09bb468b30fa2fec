//! `latchkey audit` as an operator uses it: newest first, `--before`/`--after` cursors,
//! filters (actor, event, agent, time), JSON-lines export, through a running server and on a
//! stopped one's data directory, and `--follow` printing entries as they are written.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::{AGENTS, Authority, V1, assert_error, cli, create_client, remote, stderr};
use crate::util::latchkey_bin;

/// `latchkey audit ARGS --format jsonl`, each line parsed on its own.
fn jsonl(args: &[String]) -> Vec<Value> {
    let mut all = vec!["audit".to_owned()];
    all.extend(args.iter().cloned());
    all.extend(["--format".to_owned(), "jsonl".to_owned()]);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = cli(&refs);
    assert!(out.status.success(), "audit {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn with(target: &[String], extra: &[&str]) -> Vec<String> {
    extra
        .iter()
        .map(|s| (*s).to_owned())
        .chain(target.iter().cloned())
        .collect()
}

fn subjects(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["subject"].as_str().expect("subject"))
        .collect()
}

fn seqs(entries: &[Value]) -> Vec<u64> {
    entries
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

#[test]
fn audit_newest_first_with_cursors_filters_and_jsonl_export() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, None);
    let token = auth.operator_token();
    for i in 0..5 {
        create_client(&auth, &token, &format!("c-{i}"), "ReadOnly");
    }
    let agent =
        serde_json::json!({"entityId": "a1", "name": "A1", "securityProfile": "SHARED_SECRET"});
    let r = auth.json("POST", AGENTS, Some(&token), Some(&agent));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = auth.json(
        "POST",
        &format!("{V1}/revocations"),
        Some(&token),
        Some(&serde_json::json!({"kind": "agent", "id": "a1"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let target = remote(&auth);

    // Everything, newest first, one JSON object per line.
    let all = jsonl(&with(&target, &["--limit", "0"]));
    let s = seqs(&all);
    assert!(s.windows(2).all(|w| w[0] > w[1]), "newest first: {s:?}");
    assert!(all.len() >= 7, "{all:?}");

    // A page, then the next one with its cursor.
    let created = ["--event", "client.create"];
    let first = jsonl(&with(&target, &[&created[..], &["--limit", "2"]].concat()));
    assert_eq!(subjects(&first), ["c-4", "c-3"]);
    let before = seqs(&first)[1].to_string();
    let rest = jsonl(&with(
        &target,
        &[&created[..], &["--before", &before]].concat(),
    ));
    // The first run's `admin` client is the oldest.
    assert_eq!(subjects(&rest), ["c-2", "c-1", "c-0", "admin"]);
    let after = seqs(&rest)[1].to_string();
    let newer = jsonl(&with(
        &target,
        &[&created[..], &["--after", &after]].concat(),
    ));
    assert_eq!(
        subjects(&newer),
        ["c-2", "c-3", "c-4"],
        "oldest first after a cursor"
    );
    // `--action` is `--event`; a prefix matches whole dotted parts only.
    let by_action = jsonl(&with(&target, &["--action", "client"]));
    assert_eq!(by_action.len(), 6);
    assert!(jsonl(&with(&target, &["--action", "client.cre"])).is_empty());

    // Actor, agent and time filters.
    let by_actor = jsonl(&with(&target, &["--actor", "admin", "--limit", "0"]));
    assert!(!by_actor.is_empty() && by_actor.iter().all(|e| e["actor"] == "admin"));
    assert!(jsonl(&with(&target, &["--actor", "adm"])).is_empty());
    let by_agent = jsonl(&with(&target, &["--agent", "a1"]));
    // Its revocation, then (older) its creation and the boarding token that came with it.
    assert_eq!(subjects(&by_agent), ["agent:a1", "a1", "a1"]);
    let at = by_agent[0]["at"].as_u64().expect("at");
    let window = jsonl(&with(
        &target,
        &[
            "--agent",
            "a1",
            "--since",
            "2001-01-01T00:00:00Z",
            "--until",
            &at.to_string(),
        ],
    ));
    assert_eq!(window.len(), by_agent.len());
    assert!(jsonl(&with(&target, &["--since", &(at + 3600).to_string()])).is_empty());
    assert!(jsonl(&with(&target, &["--until", "2001-01-01T00:00:00Z"])).is_empty());

    // The API refuses contradictory cursors and unknown orders.
    let audit = |q: &str| auth.json("GET", &format!("{V1}/audit?{q}"), Some(&token), None);
    assert_error(&audit("before=5&after=1"), 400, "invalid_request");
    assert_error(&audit("order=sideways"), 400, "invalid_request");
    assert_error(&audit("since=yesterday"), 400, "invalid_request");
    // Newest first through the API: `next` is the `before` of the following page.
    let page = audit("order=newest&limit=1").json();
    let top = page["entries"][0]["seq"].as_u64().expect("seq");
    assert!(top >= all[0]["seq"].as_u64().expect("seq"));
    assert_eq!(page["next"], top);
    let below = audit(&format!("before={top}&limit=1")).json();
    assert_eq!(below["entries"][0]["seq"], top - 1);
    let above = audit(&format!("after={}&limit=1", top - 1)).json();
    assert_eq!(above["entries"][0]["seq"], top);

    // Offline on the stopped server's data directory: the same answers.
    auth.stop();
    let offline = vec!["--data-dir".to_owned(), data.display().to_string()];
    let off = jsonl(&with(&offline, &created));
    assert_eq!(subjects(&off), ["c-4", "c-3", "c-2", "c-1", "c-0", "admin"]);
    let off = jsonl(&with(
        &offline,
        &[&created[..], &["--before", &before]].concat(),
    ));
    assert_eq!(subjects(&off), ["c-2", "c-1", "c-0", "admin"]);
    let out = cli(&with(&offline, &["audit", "--follow"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--follow"), "{}", stderr(&out));
}

/// `--follow` prints the current page, then each new matching entry as it is written.
#[test]
fn audit_follow_prints_new_entries() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let token = auth.operator_token();
    create_client(&auth, &token, "before-follow", "ReadOnly");
    let mut child = Command::new(latchkey_bin())
        .args([
            "audit",
            "--follow",
            "--interval",
            "200ms",
            "--format",
            "jsonl",
            "--event",
            "client.create",
        ])
        .args(remote(&auth))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn audit --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line for {what}"));
        serde_json::from_str(&line).expect("a JSON line")
    };
    // The current page, newest first: this client, then the first run's `admin`.
    assert_eq!(next("the current page")["subject"], "before-follow");
    assert_eq!(next("the current page")["subject"], "admin");
    create_client(&auth, &token, "during-follow", "ReadOnly");
    let e = next("the new entry");
    assert_eq!(
        (e["event"].as_str(), e["subject"].as_str()),
        (Some("client.create"), Some("during-follow"))
    );
    let _ = child.kill();
    let _ = child.wait();
}
