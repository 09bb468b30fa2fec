//! The load generator (`latchkey-loadgen`, crate `latchkey-bench`) against the real server:
//! short bounded runs whose summaries must report every request and no error.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::util::server::{Options, Server};

/// Path of the `latchkey-loadgen` binary (`LATCHKEY_LOADGEN_BIN` overrides).
fn loadgen_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LATCHKEY_LOADGEN_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join("latchkey-loadgen");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p latchkey-bench --bin latchkey-loadgen` first",
        bin.display()
    );
    bin
}

/// A server with default settings: a first start accepts assertions at once.
fn server(tls: bool) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = if tls {
        Options::tls(&[])
    } else {
        Options::plain(&[])
    };
    (Server::start(opts), dir)
}

fn loadgen(server: &Server, args: &[&str]) -> Output {
    let data = server.data_dir();
    let mut cmd = Command::new(loadgen_bin());
    let scheme = if server.tls { "https" } else { "http" };
    cmd.arg("--target")
        .arg(format!("{scheme}://{}", server.addr))
        .arg("--credentials")
        .arg(data.join("admin-client.json"))
        .arg("--json");
    if server.tls {
        cmd.arg("--ca").arg(server.ca_path());
    } else {
        cmd.arg("--insecure-plain");
    }
    cmd.args(args).output().expect("run latchkey-loadgen")
}

/// Runs the load generator and returns its JSON summary, failing with its stderr.
fn summary(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = loadgen(server, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen failed: {stderr}\nserver stderr:\n{}",
        server.stderr()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary is not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_clean(s: &serde_json::Value, requests: u64) {
    assert_eq!(s["requests"], requests, "{s:#}");
    assert_eq!(s["ok"], requests, "{s:#}");
    assert_eq!(s["errors"], 0, "{s:#}");
    assert!(
        s["errors_by_kind"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{s:#}"
    );
    assert!(
        s["throughput_rps"].as_f64().is_some_and(|r| r > 0.0),
        "{s:#}"
    );
    let lat = &s["latency_us"];
    let p50 = lat["p50"].as_u64().expect("p50");
    let p99 = lat["p99"].as_u64().expect("p99");
    let max = lat["max"].as_u64().expect("max");
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{lat:#}");
}

#[test]
fn loadgen_token_secret_jwt_over_tls_reports_every_request() {
    let (server, _config) = server(true);
    let s = summary(
        &server,
        &[
            "--scenario",
            "token-secret-jwt",
            "--agents",
            "12",
            "--requests",
            "300",
            "--connections",
            "4",
        ],
    );
    assert_clean(&s, 300);
    assert_eq!(s["agents"], 12);
    assert_eq!(s["scenario"], "token-secret-jwt");
    // The server saw the agents it was told to create: a second run reusing none of them
    // but with a per-request connection still succeeds (fresh TLS handshakes).
    let s = summary(
        &server,
        &[
            "--agents",
            "3",
            "--requests",
            "60",
            "--connections",
            "2",
            "--new-connection-per-request",
        ],
    );
    assert_clean(&s, 60);
    assert!(
        s["mode"]
            .as_str()
            .is_some_and(|m| m.contains("new connection per request")),
        "{s:#}"
    );
}

#[test]
fn loadgen_mix_open_loop_covers_every_request_kind() {
    let (server, dir) = server(false);
    let agents_file = dir.path().join("agents.jsonl");
    let agents_file = agents_file.display().to_string();
    let s = summary(
        &server,
        &[
            "--scenario",
            "mix",
            "--agents",
            "16",
            "--rsa-agents",
            "2",
            "--rsa-keys",
            "1",
            "--agents-file",
            &agents_file,
            "--requests",
            "200",
            "--rate",
            "400",
            "--connections",
            "4",
            "--threads",
            "2",
        ],
    );
    assert_clean(&s, 200);
    assert_eq!(s["rsa_agents"], 2);
    // The rotations' new credentials were saved: rotating again from the file works.
    let s = summary(
        &server,
        &[
            "--scenario",
            "register-rotate",
            "--agents",
            "16",
            "--agents-file",
            &agents_file,
            "--requests",
            "40",
        ],
    );
    assert_clean(&s, 40);
}

#[test]
fn loadgen_refuses_targets_off_this_machine() {
    let out = Command::new(loadgen_bin())
        .args(["--target", "https://192.0.2.1:8443", "--ca", "/nonexistent"])
        .output()
        .expect("run latchkey-loadgen");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

/// How many agents the server holds, as an operator lists them.
fn agent_count(server: &Server) -> usize {
    let data = server.data_dir();
    let out = Command::new(crate::util::latchkey_bin())
        .args(["agent", "list", "--json", "--server"])
        .arg(format!("https://{}", server.addr))
        .arg("--credentials")
        .arg(data.join("admin-client.json"))
        .arg("--ca")
        .arg(server.ca_path())
        .output()
        .expect("run latchkey agent list");
    assert!(
        out.status.success(),
        "agent list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("agent list JSON");
    v["agents"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_else(|| panic!("no agents in {v:#}"))
}

/// By default a run deletes the agents it created when it ends, so two runs leave the server
/// as they found it; `--keep-agents` keeps them.
#[test]
fn loadgen_runs_do_not_accumulate_agents() {
    let (server, _config) = server(true);
    let before = agent_count(&server);
    for _ in 0..2 {
        let s = summary(
            &server,
            &["--agents", "5", "--requests", "40", "--connections", "2"],
        );
        assert_clean(&s, 40);
        assert_eq!(s["agents"], 5);
        assert_eq!(agent_count(&server), before, "agents left behind");
    }
    let s = summary(
        &server,
        &[
            "--agents",
            "5",
            "--requests",
            "40",
            "--connections",
            "2",
            "--keep-agents",
        ],
    );
    assert_clean(&s, 40);
    assert_eq!(agent_count(&server), before + 5);
}

/// Without a terminal there is no progress bar: progress lines go to stderr instead, while
/// agents are prepared and during the timed phase.
#[test]
fn loadgen_prints_progress_lines_without_a_terminal() {
    let (server, _config) = server(false);
    let out = loadgen(
        &server,
        &[
            "--agents",
            "20",
            "--duration",
            "2s",
            "--connections",
            "2",
            "--progress-every",
            "1ms",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let preparing = stderr
        .lines()
        .filter(|l| l.starts_with("progress: preparing agents: "))
        .count();
    assert!(preparing >= 1, "preparation progress expected:\n{stderr}");
    let timed = stderr
        .lines()
        .filter(|l| l.starts_with("progress: ") && l.contains(" req/s"))
        .count();
    assert!(timed >= 2, "progress lines expected:\n{stderr}");
}

/// A server killed mid-run: the load generator retries with a capped backoff (not a tight
/// loop of refused connections), then gives up with an error that says why. Also shows the
/// default progress interval at work (the kill waits for the first line).
#[test]
fn loadgen_gives_up_on_a_dead_server_after_bounded_attempts() {
    use std::io::{BufRead as _, BufReader};
    let (server, _config) = server(false);
    let connections = 4;
    let mut child = Command::new(loadgen_bin())
        .arg("--target")
        .arg(format!("http://{}", server.addr))
        .arg("--insecure-plain")
        .arg("--credentials")
        .arg(server.data_dir().join("admin-client.json"))
        .args(["--agents", "2", "--duration", "10m", "--connections"])
        .arg(connections.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn latchkey-loadgen");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("stderr line");
        let progress = line.starts_with("progress: ");
        seen.push(line);
        if progress {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.starts_with("progress: ")),
        "no progress line before the end:\n{}",
        seen.join("\n")
    );
    server.signal("KILL");
    seen.extend(lines.map(|l| l.expect("stderr line")));
    let status = child.wait().expect("wait");
    let stderr = seen.join("\n");
    assert!(!status.success(), "{stderr}");
    let giving_up = seen
        .iter()
        .find(|l| l.contains("giving up"))
        .unwrap_or_else(|| panic!("no give-up error:\n{stderr}"));
    assert!(giving_up.contains("is the server running"), "{giving_up}");
    let attempts: u64 = giving_up
        .split(" connection attempts")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no attempt count in {giving_up}"));
    // Per slot: the warm-up connection, one reconnect, at most 7 backoff steps from 10 ms to
    // the 1 s cap and then one attempt a second until the 10 s without success are over.
    // Retrying without a backoff made ~100 000 attempts in that time.
    let bound = connections * (1 + 1 + 7 + 10 + 1);
    assert!(
        attempts >= connections && attempts <= bound,
        "{attempts} connection attempts (bound {bound}):\n{stderr}"
    );
}

/// The dashboard scenario: pollers fetch the agent list beside the token requests, and the
/// summary reports their pages apart from the tokens.
#[test]
fn loadgen_dashboard_pollers_report_page_latency_apart() {
    let (server, _dir) = server(false);
    let s = summary(
        &server,
        &[
            "--agents",
            "5",
            "--duration",
            "2s",
            "--connections",
            "2",
            "--pollers",
            "2",
            "--poll-interval",
            "100ms",
        ],
    );
    assert_eq!(s["errors"], 0, "{s:#}");
    let pages = &s["pages"];
    assert_eq!(pages["pollers"], 2, "{s:#}");
    assert_eq!(pages["errors"], 0, "{s:#}");
    assert!(pages["ok"].as_u64().is_some_and(|n| n > 0), "{s:#}");
    assert!(
        pages["latency_us"]["p50"].as_u64().is_some_and(|v| v > 0),
        "{s:#}"
    );
    // Without pollers there is no page report.
    let s = summary(&server, &["--agents", "5", "--requests", "50"]);
    assert!(s["pages"].is_null(), "{s:#}");
}
