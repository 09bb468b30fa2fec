//! Mandatory mutual TLS operated from the command line: `--client-cert`/`--client-key` (and
//! their environment variables) on every remote command, and a clear refusal without them.

use super::*;

fn cli_at(auth: &Authority, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(latchkey_bin());
    cmd.args(args)
        .arg("--server")
        .arg(auth.base_url())
        .arg("--credentials")
        .arg(auth.data_dir.join("admin-client.json"))
        .arg("--ca")
        .arg(auth.ca_path())
        .env_remove("LATCHKEY_CLIENT_CERT")
        .env_remove("LATCHKEY_CLIENT_KEY");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run latchkey")
}

#[test]
fn the_cli_presents_a_client_certificate_where_one_is_required() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    // Issue the operator's certificate while certificates are still optional.
    let auth = start(d);
    let (cert, key) = issue(&auth, d, "operator-cli", &[]);
    auth.stop();

    let config = d.join("required.toml");
    std::fs::write(&config, "client-auth = \"required\"\n").expect("config");
    let auth = Authority::start(&d.join("data"), Some(&config));

    // Without a certificate: said plainly, not "Broken pipe".
    let out = cli_at(&auth, &["keys", "list", "--json"], &[]);
    fails(
        &out,
        "the server requires a client certificate: --client-cert/--client-key",
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Broken pipe"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With one, by flags.
    let mut args = vec!["keys", "list", "--json", "--client-cert"];
    args.push(cert.to_str().expect("utf-8"));
    args.push("--client-key");
    args.push(key.to_str().expect("utf-8"));
    let listed: Value = serde_json::from_str(&ok(&cli_at(&auth, &args, &[]))).expect("json");
    assert!(!listed["keys"].as_array().expect("keys").is_empty());

    // And by environment, for a command that writes.
    let env = [
        ("LATCHKEY_CLIENT_CERT", cert.as_path()),
        ("LATCHKEY_CLIENT_KEY", key.as_path()),
    ];
    let rotated: Value = serde_json::from_str(&ok(&cli_at(
        &auth,
        &["keys", "rotate", "--alg", "ES256", "--json"],
        &env,
    )))
    .expect("json");
    assert_eq!(rotated["alg"], "ES256");

    // A certificate without its key is a usage error, before any connection.
    let out = cli_at(
        &auth,
        &[
            "keys",
            "list",
            "--client-cert",
            cert.to_str().expect("utf-8"),
        ],
        &[],
    );
    fails(&out, "--client-key");
}

/// The address of the further listener the server announced on stderr.
fn also_listening(auth: &Authority) -> std::net::SocketAddr {
    // Printed before the ready line, but read from the pipe by another thread.
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    while !auth.stderr().contains("also listening on https://") {
        assert!(std::time::Instant::now() < deadline, "{}", auth.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = auth.stderr();
    let rest = err
        .split("also listening on https://")
        .nth(1)
        .expect("announced");
    rest.split_whitespace()
        .next()
        .expect("address")
        .parse()
        .expect("socket address")
}

/// Agents without certificates on one port, certificate-only operators on another: each
/// `--listen` has its own client-auth mode over the same state and trust store.
#[test]
fn agents_and_certificate_only_operators_get_listeners_of_their_own() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let config = d.join("latchkey.toml");
    std::fs::write(&config, "client-auth = \"optional\"\n").expect("config");
    let auth = Authority::start_with(
        &d.join("data"),
        Some(&config),
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0,client-auth=required",
        ],
    );
    // The server prints the further listener once it is bound, before the ready line.
    let required = also_listening(&auth);
    assert!(
        auth.stderr().contains("(client-auth required)"),
        "{}",
        auth.stderr()
    );
    let (cert, key) = issue(&auth, d, "operator-cli", &[]);

    // An agent without a certificate boards on the optional listener.
    let op = auth.operator_token();
    let reg = board(
        &auth,
        &op,
        "agent-plain",
        &json!({"client_id": "agent-plain"}),
    );
    assert_eq!(reg["client_id"], "agent-plain");

    // On the required listener the same client without a certificate is refused at the
    // handshake, before any request is read.
    let plain = client(&auth, None);
    let attempt = (|| -> std::io::Result<Response> {
        let conn =
            rustls::ClientConnection::new(plain, ServerName::try_from("localhost").expect("name"))
                .map_err(std::io::Error::other)?;
        let sock = TcpStream::connect(required)?;
        sock.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        let mut s = rustls::StreamOwned::new(conn, sock);
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        s.flush()?;
        read_response(&mut s, &mut Vec::new(), false)
    })();
    assert!(
        attempt.is_err(),
        "served without a certificate: {:?}",
        attempt.map(|r| r.status)
    );

    // The CLI: with its certificate it works there; without, it says what is missing.
    let url = format!("https://{required}");
    let run = |extra: &[&str]| {
        Command::new(latchkey_bin())
            .args(["keys", "list", "--json", "--server", &url, "--credentials"])
            .arg(auth.data_dir.join("admin-client.json"))
            .arg("--ca")
            .arg(auth.ca_path())
            .args(extra)
            .env_remove("LATCHKEY_CLIENT_CERT")
            .env_remove("LATCHKEY_CLIENT_KEY")
            .output()
            .expect("run latchkey")
    };
    let listed: Value = serde_json::from_str(&ok(&run(&[
        "--client-cert",
        cert.to_str().expect("utf-8"),
        "--client-key",
        key.to_str().expect("utf-8"),
    ])))
    .expect("json");
    assert!(!listed["keys"].as_array().expect("keys").is_empty());
    fails(
        &run(&[]),
        "the server requires a client certificate: --client-cert/--client-key",
    );
    // And the optional listener still serves the CLI without one.
    let out = cli_at(&auth, &["keys", "list", "--json"], &[]);
    ok(&out);
}
