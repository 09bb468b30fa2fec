//! The server certificate from a PKCS#12 file (password from a file or the environment), and
//! replaced without a restart: SIGHUP makes new handshakes use the new certificate while a
//! connection already open keeps working.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::latchkey_bin;
use crate::util::server::{Server, read_response, spawn_serve};

/// SHA-256 fingerprint (openssl's `AA:BB:..` form) of the certificate a fresh `openssl
/// s_client` handshake with `addr` is shown.
fn served_fingerprint(addr: SocketAddr) -> String {
    let shown = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    fingerprint_of_pem(&shown.stdout)
}

fn fingerprint_of_pem(pem: &[u8]) -> String {
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    x509.stdin
        .take()
        .expect("stdin")
        .write_all(pem)
        .expect("write");
    let out = x509.wait_with_output().expect("x509");
    assert!(
        out.status.success(),
        "no certificate in {}",
        String::from_utf8_lossy(pem)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn fingerprint_of_file(path: &Path) -> String {
    fingerprint_of_pem(&std::fs::read(path).expect("read certificate"))
}

/// Waits until a fresh handshake shows `want` (the reload happens on the signal thread).
fn wait_served(addr: SocketAddr, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = served_fingerprint(addr);
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still serving {now}, want {want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn health(c: &mut (impl std::io::Read + std::io::Write)) -> u16 {
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    read_response(c, &mut Vec::new(), false)
        .expect("response")
        .status
}

#[test]
fn sighup_serves_the_replaced_data_directory_certificate_and_keeps_live_connections() {
    let s = Server::tls(&[]);
    let data = s.data_dir();
    let old = fingerprint_of_file(&data.join("server.pem"));
    assert_eq!(served_fingerprint(s.addr), old);
    let mut live = s.connect();
    assert_eq!(health(&mut live), 200);

    let out = Command::new(latchkey_bin())
        .args(["cert", "init", "--replace", "--data-dir"])
        .arg(&data)
        .output()
        .expect("cert init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = fingerprint_of_file(&data.join("server.pem"));
    assert_ne!(new, old);
    // Not before the signal: nothing polls the files.
    assert_eq!(served_fingerprint(s.addr), old);

    s.signal("HUP");
    wait_served(s.addr, &new);
    assert!(
        s.wait_stderr("server certificate reloaded"),
        "{}",
        s.stderr()
    );
    // The connection opened before keeps being served, and the server is still up.
    assert_eq!(health(&mut live), 200);
    assert_eq!(s.get("/healthz").status, 200);
}

/// A self-signed `localhost` certificate and key in PKCS#12, as operators export them.
fn make_pfx(dir: &Path, name: &str, password: &str) -> (std::path::PathBuf, String) {
    let (key, cert, pfx) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.pfx")),
    );
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |p: &Path| p.to_str().expect("utf-8").to_owned();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p(&key),
        "-out",
        &p(&cert),
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]);
    run(&[
        "pkcs12",
        "-export",
        "-inkey",
        &p(&key),
        "-in",
        &p(&cert),
        "-out",
        &p(&pfx),
        "-passout",
        &format!("pass:{password}"),
    ]);
    (pfx, fingerprint_of_file(&cert))
}

#[test]
fn a_pkcs12_server_certificate_opens_with_its_password_and_reloads() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let (pfx, first) = make_pfx(d, "first", "tls-pass");
    let pfx_arg = pfx.to_str().expect("utf-8");
    let serve = |extra: &[&str]| {
        let mut cmd = Command::new(latchkey_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(d.join("data"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
                "--tls-cert",
                pfx_arg,
            ])
            .args(extra)
            .env_remove("LATCHKEY_TLS_PASSWORD");
        cmd
    };

    // A wrong password stops the start with a clear error.
    let mut wrong = serve(&[]);
    wrong.env("LATCHKEY_TLS_PASSWORD", "nope");
    let out = wrong.output().expect("serve");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong password"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // From a password file.
    let pw = d.join("tls-password");
    std::fs::write(&pw, "tls-pass\n").expect("write");
    let mut by_file = spawn_serve(
        serve(&["--tls-password-file", pw.to_str().expect("p")]),
        "https",
    );
    assert_eq!(served_fingerprint(by_file.addr), first);
    by_file.child.kill().expect("kill");
    by_file.child.wait().expect("wait");

    // From the environment; then the file changes and SIGHUP picks it up.
    let mut by_env = serve(&[]);
    by_env.env("LATCHKEY_TLS_PASSWORD", "tls-pass");
    let mut running = spawn_serve(by_env, "https");
    assert_eq!(served_fingerprint(running.addr), first);
    let (next_pfx, second) = make_pfx(d, "second", "tls-pass");
    std::fs::rename(&next_pfx, &pfx).expect("replace the pfx");
    let ok = Command::new("kill")
        .arg("-HUP")
        .arg(running.child.id().to_string())
        .status()
        .expect("kill");
    assert!(ok.success());
    wait_served(running.addr, &second);
    running.child.kill().expect("kill");
    running.child.wait().expect("wait");
}
