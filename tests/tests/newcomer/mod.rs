//! What a new user meets first: the CLI's environment variables, its errors when pointed at the
//! wrong thing, and the README's quick start.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use std::process::{Command, Output};

use crate::util::https::Authority;
use crate::util::latchkey_bin;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `latchkey ARGS` with the operator variables the user may have exported cleared, then `env`.
fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(latchkey_bin());
    for v in [
        "LATCHKEY_SERVER",
        "LATCHKEY_CA",
        "LATCHKEY_CREDENTIALS",
        "LATCHKEY_CLIENT_ID",
        "LATCHKEY_CLIENT_SECRET",
        "LATCHKEY_DATA_DIR",
    ] {
        cmd.env_remove(v);
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run latchkey")
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn client_secret_in_the_environment_works_with_credentials_and_with_client_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, None);
    let secret = crate::util::admin_secret(&data);
    let server = auth.base_url();
    let creds = path(&data.join("admin-client.json"));
    let ca = path(&auth.ca_path());

    // The secret exported for other commands does not stand in the way of a credentials file.
    let out = cli_env(
        &[
            "agent",
            "list",
            "--server",
            &server,
            "--credentials",
            &creds,
        ],
        &[("LATCHKEY_CLIENT_SECRET", &secret)],
    );
    assert!(out.status.success(), "with --credentials: {}", stderr(&out));

    // The documented pairing: --client-id with the secret from the environment.
    let out = cli_env(
        &[
            "agent",
            "list",
            "--server",
            &server,
            "--ca",
            &ca,
            "--client-id",
            "admin",
        ],
        &[("LATCHKEY_CLIENT_SECRET", &secret)],
    );
    assert!(out.status.success(), "with --client-id: {}", stderr(&out));

    // Both from the environment.
    let out = cli_env(
        &["agent", "list", "--server", &server, "--ca", &ca],
        &[
            ("LATCHKEY_CLIENT_ID", "admin"),
            ("LATCHKEY_CLIENT_SECRET", &secret),
        ],
    );
    assert!(
        out.status.success(),
        "both in the environment: {}",
        stderr(&out)
    );

    // A secret file wins over a secret exported for something else.
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{secret}\n")).expect("write secret file");
    let out = cli_env(
        &[
            "agent",
            "list",
            "--server",
            &server,
            "--ca",
            &ca,
            "--client-id",
            "admin",
            "--client-secret-file",
            &path(&file),
        ],
        &[("LATCHKEY_CLIENT_SECRET", "not-the-secret")],
    );
    assert!(
        out.status.success(),
        "with --client-secret-file: {}",
        stderr(&out)
    );

    // A secret alone names no client: a clear error, not a silent guess.
    let out = cli_env(
        &["agent", "list", "--server", &server, "--ca", &ca],
        &[("LATCHKEY_CLIENT_SECRET", &secret)],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("needs --client-id"),
        "{}",
        stderr(&out)
    );
    auth.stop();
}

#[test]
fn http_against_the_tls_port_says_to_use_https() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, None);
    let creds = path(&data.join("admin-client.json"));
    let plain = format!("http://{}", auth.addr);
    let out = cli_env(
        &["agent", "list", "--server", &plain, "--credentials", &creds],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the server speaks HTTPS") && err.contains(&format!("https://{}", auth.addr)),
        "{err}"
    );
    auth.stop();
}

/// `latchkey serve` on a taken address fails before creating anything, naming the address.
#[test]
fn serve_on_a_busy_port_creates_nothing_and_names_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = busy.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    for (what, args) in [
        ("--listen", vec!["--listen", taken.as_str()]),
        (
            "--metrics-listen",
            vec![
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                taken.as_str(),
            ],
        ),
    ] {
        let data = dir.path().join("data");
        let mut all = vec!["serve", "--data-dir"];
        let data_arg = path(&data);
        all.push(&data_arg);
        all.extend(args);
        let out = cli_env(&all, &[]);
        assert!(
            !out.status.success(),
            "{what}: serve started on a taken port"
        );
        let err = stderr(&out);
        assert!(err.contains(&taken), "{what}: {err}");
        assert!(!data.exists(), "{what}: {} was created", data.display());
    }
}

/// `backup --out` onto an existing file refuses in plain words and leaves the file alone.
#[test]
fn backup_onto_an_existing_file_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    Authority::start(&data, None).stop();
    let out = dir.path().join("backup.redb");
    std::fs::write(&out, b"keep me").expect("write");
    let run = cli_env(
        &["backup", "--data-dir", &path(&data), "--out", &path(&out)],
        &[],
    );
    assert_eq!(run.status.code(), Some(2));
    let err = stderr(&run);
    assert!(
        err.contains(&format!(
            "{} exists; remove it or choose another --out",
            out.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).expect("read"), b"keep me");
    // A new name works.
    let fresh = dir.path().join("fresh.redb");
    let run = cli_env(
        &["backup", "--data-dir", &path(&data), "--out", &path(&fresh)],
        &[],
    );
    assert!(run.status.success(), "{}", stderr(&run));
}

/// With `--log-format json` every line on stderr is a JSON object, first run included, and the
/// ready line on stdout is a JSON event with the address.
#[test]
fn json_logs_are_json_on_every_line() {
    use crate::util::server::Server;
    let mut server = Server::tls(&["--log-format", "json", "--metrics-listen", "127.0.0.1:0"]);
    let ready: serde_json::Value = serde_json::from_str(&server.ready_line).expect("JSON ready");
    assert_eq!(ready["event"], "listening");
    assert_eq!(ready["url"], format!("https://{}", server.addr));
    assert_eq!(ready["addr"], server.addr.to_string());
    server.assert_serving();
    // A refused login: its log line is JSON too, and names the client, not the secret.
    let mut c = server.connect();
    let wrong = "wrong-secret-41c7";
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{wrong}"));
    let body = "grant_type=client_credentials";
    c.write_all(
        format!(
            "POST /oauth/token HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {basic}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let r = crate::util::server::read_response(&mut c, &mut Vec::new(), false).expect("answer");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        server.wait_stderr(r#""message":"authentication failed""#),
        "{}",
        server.stderr()
    );
    server.signal("TERM");
    assert!(
        server
            .wait_exit(std::time::Duration::from_secs(20))
            .is_some()
    );
    // The reader thread may still be draining the pipe.
    assert!(
        server.wait_stderr(r#""message":"stopped""#),
        "{}",
        server.stderr()
    );
    let err = server.stderr();
    // First-run lines, the CA to trust and the metrics listener are among them.
    for needle in [
        "created operator client",
        "clients must trust",
        "metrics listening",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    for line in err.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{err}"));
        assert!(v.is_object(), "{line}");
        if v["fields"]["message"] == "authentication failed" {
            assert_eq!(v["fields"]["client_id"], "admin", "{line}");
        }
    }
    assert!(!err.contains(wrong), "the secret is logged:\n{err}");
    // Whatever follows the ready line on stdout, up to shutdown, is JSON too.
    let out = server.stdout();
    for line in out.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON on stdout ({e}): {line:?}"));
    }

    // A failure to start is a JSON line too.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = busy.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = path(&dir.path().join("data"));
    let out = cli_env(
        &[
            "serve",
            "--data-dir",
            &data,
            "--listen",
            &taken,
            "--log-format",
            "json",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&taken), "{err}");
    for line in err.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{err}"));
    }
}

/// The repository's root, where `latchkey serve` run from a checkout puts `latchkey-data`.
fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `latchkey serve` in a checkout creates `./latchkey-data` (master key included): git must
/// never offer to commit it.
#[test]
fn the_default_data_directory_is_git_ignored() {
    let root = repo_root();
    let inside = Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .current_dir(&root)
        .output();
    match inside {
        Ok(o) if o.status.success() && o.stdout.starts_with(b"true") => {}
        _ => {
            eprintln!("not in a git work tree: the ignore rule cannot be checked here");
            return;
        }
    }
    for file in [
        "latchkey-data/master.key",
        "latchkey-data/admin-client.json",
        "latchkey-data/latchkey.redb",
    ] {
        let out = Command::new("git")
            .args(["check-ignore", "--no-index", "-v", file])
            .current_dir(&root)
            .output()
            .expect("run git check-ignore");
        assert!(
            out.status.success(),
            "{file} is not git-ignored: {}",
            stderr(&out)
        );
        // By the repository's own rule, not a global exclude of this machine.
        let rule = String::from_utf8_lossy(&out.stdout);
        assert!(rule.starts_with(".gitignore:"), "{file}: {rule}");
    }
}

/// The README's quick start is `scripts/quickstart.sh`, verbatim.
#[test]
fn the_readme_quick_start_is_the_script() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let script = std::fs::read_to_string(root.join("scripts/quickstart.sh")).expect("script");
    let block = readme
        .split_once("<!-- scripts/quickstart.sh -->\n```sh\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .map(|(block, _)| block)
        .expect("README.md has the quick start block after its marker");
    assert_eq!(
        block, script,
        "README.md's quick start differs from scripts/quickstart.sh"
    );
}

/// The quick start, as a newcomer runs it (minus the install: the binary under test is first
/// on PATH), on a temporary data directory and an ephemeral port: it ends with openssl's
/// "Verified OK" for the agent's access token.
#[test]
fn the_quick_start_runs_to_a_verified_agent_token() {
    let root = repo_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let bin_dir = latchkey_bin()
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let mut cmd = Command::new("sh");
    for v in [
        "LATCHKEY_SERVER",
        "LATCHKEY_CA",
        "LATCHKEY_CREDENTIALS",
        "LATCHKEY_CLIENT_ID",
        "LATCHKEY_CLIENT_SECRET",
        "LATCHKEY_DATA_DIR",
        "LATCHKEY_PASSPHRASE",
    ] {
        cmd.env_remove(v);
    }
    let out = cmd
        .arg(root.join("scripts/quickstart.sh"))
        .current_dir(dir.path())
        .env("PATH", path)
        .env("DATA_DIR", dir.path().join("data"))
        .env("LISTEN", "127.0.0.1:0")
        .env("AGENT", "quick-1")
        .env("SKIP_INSTALL", "1")
        .env("STOP", "1")
        .output()
        .expect("run scripts/quickstart.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quick start failed\nstdout:\n{stdout}\nstderr:\n{}",
        stderr(&out)
    );
    assert!(stdout.contains("Verified OK"), "{stdout}");
    let claims = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("the token's claims");
    let claims: serde_json::Value = serde_json::from_str(claims).expect("claims JSON");
    assert_eq!(claims["sub"], "quick-1", "{claims}");
    assert_eq!(claims["client_id"], "quick-1", "{claims}");
}

/// Starts `serve` on `data` with `args`, stops it with SIGTERM, returns its stderr.
fn serve_once(data: &Path, args: &[&str]) -> String {
    use crate::util::server::{Spawned, spawn_serve};
    let mut cmd = Command::new(latchkey_bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--threads", "1"])
        .args(args);
    let Spawned {
        mut child, stderr, ..
    } = spawn_serve(cmd, "https");
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(ok.success());
    assert!(child.wait().expect("wait").success());
    // The reader thread sees end of file once the child is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
        if text.contains("stopped") || std::time::Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `--server-name` after the first run: the existing certificate is kept, and the names it
/// lacks are warned about; removing the certificate reissues it with them.
#[test]
fn server_names_the_existing_certificate_lacks_are_warned_about() {
    const WARNING: &str = "not in the existing server certificate";
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let first = serve_once(&data, &[]);
    assert!(!first.contains(WARNING), "{first}");

    let later = serve_once(
        &data,
        &[
            "--server-name",
            "lk.example.test",
            "--server-name",
            "localhost",
        ],
    );
    let line = later
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_else(|| panic!("no warning:\n{later}"));
    assert!(line.contains("lk.example.test"), "{line}");
    assert!(!line.contains("\"localhost\""), "{line}");

    // Names the certificate has: no warning.
    let covered = serve_once(&data, &["--server-name", "127.0.0.1"]);
    assert!(!covered.contains(WARNING), "{covered}");

    // The remedy the warning gives.
    std::fs::remove_file(data.join("server.pem")).expect("remove server.pem");
    std::fs::remove_file(data.join("server.key.sealed")).expect("remove server.key.sealed");
    serve_once(&data, &["--server-name", "lk.example.test"]);
    let reissued = serve_once(&data, &["--server-name", "lk.example.test"]);
    assert!(!reissued.contains(WARNING), "{reissued}");
}
