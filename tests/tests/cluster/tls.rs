//! A node reaching etcd over TLS with a client certificate (`--etcd-ca`, `--etcd-cert`,
//! `--etcd-key`): one etcd member that serves only TLS and requires client certificates.

use std::process::{Command, Stdio};

use super::{serve_in, serve_refusal};
use crate::util::etcd::{TlsFiles, TlsMember, etcd_or_skip};
use crate::util::https::Authority;
use crate::util::latchkey_bin;

#[test]
fn a_node_reaches_etcd_over_tls_with_its_client_certificate_and_only_so() {
    let Some(bin) = etcd_or_skip("a_node_reaches_etcd_over_tls_with_its_client_certificate") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let files = TlsFiles::make(dir.path());
    let etcd = TlsMember::start(&bin, &files);
    let store = format!("etcd://{}", etcd.client);
    let (ca, cert, key) = (
        files.ca.to_str().expect("path"),
        files.client_cert.to_str().expect("path"),
        files.client_key.to_str().expect("path"),
    );

    // Plain gRPC to a TLS port: refused, naming the cluster; nothing created.
    let (ok, stderr, created) = serve_refusal(&["--store", &store]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(&format!("etcd cluster {}", etcd.client)),
        "{stderr}"
    );
    assert!(!created);

    // TLS without a client certificate: etcd refuses it, and so the node refuses to start.
    let (ok, stderr, created) = serve_refusal(&["--store", &store, "--etcd-ca", ca]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(&format!("etcd cluster {}", etcd.client)),
        "{stderr}"
    );
    assert!(!created);

    // A key that is not the certificate's is refused before any connection, by name.
    let wrong = files.server_key.to_str().expect("path");
    let (ok, stderr, _) = serve_refusal(&[
        "--store",
        &store,
        "--etcd-ca",
        ca,
        "--etcd-cert",
        cert,
        "--etcd-key",
        wrong,
    ]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(wrong) && stderr.contains("does not match"),
        "{stderr}"
    );

    // A CA that did not sign etcd's certificate: the node does not talk to an etcd it cannot
    // authenticate (a client certificate of that CA, which etcd would refuse anyway, is not
    // what stops it: the handshake fails on the node's side first).
    let other_dir = dir.path().join("other-ca");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let other = TlsFiles::make(&other_dir);
    let (ok, stderr, created) = serve_refusal(&[
        "--store",
        &store,
        "--etcd-ca",
        other.ca.to_str().expect("path"),
        "--etcd-cert",
        cert,
        "--etcd-key",
        key,
    ]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(&format!("etcd cluster {}", etcd.client))
            && stderr.contains("invalid peer certificate"),
        "{stderr}"
    );
    assert!(!created);

    // With the CA and the client certificate: the node initialises the cluster, is fresh and
    // serves tokens.
    let data = dir.path().join("node");
    let args = [
        "--store",
        &store,
        "--etcd-ca",
        ca,
        "--etcd-cert",
        cert,
        "--etcd-key",
        key,
    ];
    let node = Authority::start_with(&data, None, &args);
    assert!(
        node.wait_stderr("initialised the empty etcd cluster's meta"),
        "{}",
        node.stderr()
    );
    let token = node.operator_token();
    assert!(!token.is_empty());
    let metrics = node.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.lines().any(|l| l == "latchkey_cluster_fresh 1"),
        "{metrics}"
    );
    // The key never shows in the log.
    let key_pem = std::fs::read_to_string(&files.client_key).expect("key");
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!node.stderr().contains(&body[..32]));
    node.stop();

    // A restart on the same data directory joins the cluster it made, again over TLS.
    let (ok, stderr) = serve_in(&data, &["--store", &store, "--etcd-ca", ca]);
    assert!(!ok, "without its client certificate: {stderr}");
    let again = Authority::start_with(&data, None, &args);
    assert!(
        again.wait_stderr("master key id is this node's"),
        "{}",
        again.stderr()
    );
    again.stop();

    // `backup --store` takes the same flags; without them it cannot reach this etcd.
    let backup = |out: &std::path::Path, tls: &[&str]| {
        Command::new(latchkey_bin())
            .args(["backup", "--store", &store, "--out"])
            .arg(out)
            .args(tls)
            .env_remove("LATCHKEY_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run latchkey backup")
    };
    let refused = dir.path().join("refused.redb");
    let out = backup(&refused, &["--etcd-ca", ca]);
    assert!(!out.status.success(), "{out:?}");
    assert!(!refused.exists());
    let file = dir.path().join("backup.redb");
    let out = backup(
        &file,
        &["--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        etcd.log()
    );
    assert!(file.exists());
}
