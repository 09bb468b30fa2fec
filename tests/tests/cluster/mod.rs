//! Authorities on etcd (`serve --store etcd://…`). With the tests crate's feature `etcd` the
//! binary under test must be built with `--features etcd` (`scripts/test.sh` does both), and
//! the tests start a 3-member etcd cluster (`util::etcd`); without an etcd binary they print
//! why they skip. Without the feature, the default build's refusal is what is tested.

use std::process::{Command, Stdio};

use crate::util::latchkey_bin;

/// Runs `latchkey serve` with `args` in a fresh temp dir until it exits (it is expected to
/// refuse); the exit success, its stderr, and whether it created the data directory.
fn serve_refusal(args: &[&str]) -> (bool, String, bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let out = Command::new(latchkey_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--insecure-plain-http"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run latchkey serve");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        data.exists(),
    )
}

#[cfg(not(feature = "etcd"))]
#[test]
fn default_build_refuses_etcd_naming_the_feature_and_build_command() {
    let (ok, stderr, created) = serve_refusal(&["--store", "etcd://127.0.0.1:2379"]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("cargo feature `etcd`"), "{stderr}");
    assert!(stderr.contains("--features etcd"), "{stderr}");
    assert!(
        !created,
        "a refused start must not create the data directory"
    );
}

#[test]
fn malformed_store_is_refused_with_the_accepted_forms() {
    let (ok, stderr, created) = serve_refusal(&["--store", "etcd://host-without-port"]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("expected HOST:PORT"), "{stderr}");
    let (ok, stderr, _) = serve_refusal(&["--store", "postgres://db:5432"]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("`redb` or `etcd://"), "{stderr}");
    assert!(!created);
}

#[cfg(feature = "etcd")]
mod with_etcd {
    use super::serve_refusal;
    use crate::util::etcd::{EtcdCluster, etcd_or_skip};

    #[test]
    fn harness_cluster_replicates_between_members() {
        let Some(bin) = etcd_or_skip("harness_cluster_replicates_between_members") else {
            return;
        };
        let cluster = EtcdCluster::start(&bin);
        assert_eq!(cluster.get(2, "/lk-test/k"), None);
        cluster.put(0, "/lk-test/k", b"v1");
        // Range reads are linearizable by default: member 3 sees member 1's put.
        assert_eq!(cluster.get(2, "/lk-test/k").as_deref(), Some(&b"v1"[..]));
    }

    #[test]
    fn serve_reaches_the_cluster_before_refusing_to_serve() {
        let Some(bin) = etcd_or_skip("serve_reaches_the_cluster_before_refusing_to_serve") else {
            return;
        };
        let cluster = EtcdCluster::start(&bin);
        let store = format!("etcd://{}", cluster.endpoints());
        let (ok, stderr, created) = serve_refusal(&["--store", &store]);
        assert!(!ok, "{stderr}");
        assert!(stderr.contains("reached the etcd cluster"), "{stderr}");
        assert!(stderr.contains("members=3"), "{stderr}");
        assert!(
            stderr.contains("the etcd engine cannot serve yet"),
            "{stderr}"
        );
        assert!(
            !created,
            "a refused start must not create the data directory"
        );
    }

    #[test]
    fn unreachable_cluster_is_a_clear_error_naming_the_endpoints() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let store = format!("etcd://127.0.0.1:{port}");
        let (ok, stderr, created) = serve_refusal(&["--store", &store]);
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains(&format!("etcd cluster 127.0.0.1:{port}")),
            "{stderr}"
        );
        assert!(!stderr.contains("reached the etcd cluster"), "{stderr}");
        assert!(!created);
    }
}
