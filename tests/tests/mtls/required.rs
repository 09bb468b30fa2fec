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
