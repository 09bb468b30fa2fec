//! Authorities on etcd (`serve --store etcd://…`). With the tests crate's feature `etcd` the
//! binary under test must be built with `--features etcd` (`scripts/test.sh` does both), and
//! the tests start a 3-member etcd cluster (`util::etcd`); without an etcd binary they print
//! why they skip. Without the feature, the default build's refusal is what is tested.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::latchkey_bin;

#[cfg(feature = "etcd")]
mod replay;

/// Runs `latchkey serve --data-dir DATA` with `args` until it exits (it is expected to
/// refuse): the exit success and its stderr.
fn serve_in(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(latchkey_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--insecure-plain-http"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run latchkey serve");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`serve_in`] a fresh temp dir; also whether the data directory was created.
fn serve_refusal(args: &[&str]) -> (bool, String, bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (ok, stderr) = serve_in(&data, args);
    (ok, stderr, data.exists())
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

#[cfg(not(feature = "etcd"))]
#[test]
fn default_build_refuses_cluster_import_and_cluster_backup_naming_the_feature() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let out_file = dir.path().join("backup.redb");
    for args in [
        vec![
            "cluster",
            "import",
            "--from-data-dir",
            data.to_str().expect("path"),
            "--store",
            "etcd://127.0.0.1:2379",
        ],
        vec![
            "backup",
            "--store",
            "etcd://127.0.0.1:2379",
            "--out",
            out_file.to_str().expect("path"),
        ],
    ] {
        let out = Command::new(latchkey_bin())
            .args(&args)
            .env_remove("LATCHKEY_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run latchkey");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("cargo feature `etcd`"), "{stderr}");
        assert!(stderr.contains("--features etcd"), "{stderr}");
    }
    assert!(!data.exists());
    assert!(!out_file.exists());
}

#[cfg(feature = "etcd")]
mod migrate;

#[cfg(feature = "etcd")]
mod with_etcd {
    use super::{serve_in, serve_refusal};
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
    fn node_with_another_master_key_is_refused_naming_it() {
        let Some(bin) = etcd_or_skip("node_with_another_master_key_is_refused_naming_it") else {
            return;
        };
        let cluster = EtcdCluster::start(&bin);
        let store = format!("etcd://{}", cluster.endpoints());
        let dirs = tempfile::tempdir().expect("temp dir");
        let (a, b, c) = (
            dirs.path().join("a"),
            dirs.path().join("b"),
            dirs.path().join("c"),
        );

        // The first node reaches the cluster and claims its empty meta with its master key.
        let (ok, stderr) = serve_in(&a, &["--store", &store]);
        assert!(!ok, "{stderr}");
        assert!(stderr.contains("reached the etcd cluster"), "{stderr}");
        assert!(stderr.contains("members=3"), "{stderr}");
        assert!(
            stderr.contains("initialised the empty etcd cluster's meta"),
            "{stderr}"
        );
        assert!(
            stderr.contains("the etcd engine cannot serve yet"),
            "{stderr}"
        );
        let id = cluster
            .get(2, "/lk/default/meta/master_key_id")
            .expect("meta.master_key_id in etcd");
        assert_eq!(id.len(), 8);
        assert_eq!(
            cluster.get(1, "/lk/default/meta/schema_version"),
            Some(1u64.to_be_bytes().to_vec())
        );

        // Again: the stored id is its own.
        let (ok, stderr) = serve_in(&a, &["--store", &store]);
        assert!(!ok, "{stderr}");
        assert!(stderr.contains("master key id is this node's"), "{stderr}");

        // A node with a master key of its own is refused, naming its key file and both ids.
        let (ok, stderr) = serve_in(&b, &["--store", &store]);
        assert!(!ok, "{stderr}");
        let b_key = b.join("master.key");
        assert!(
            stderr.contains(&format!("master key file {}", b_key.display())),
            "{stderr}"
        );
        assert!(
            stderr.contains("every node of a cluster needs the same master.key"),
            "{stderr}"
        );
        let hex: String = id.iter().map(|x| format!("{x:02x}")).collect();
        assert!(
            stderr.contains(&hex),
            "the cluster's key id {hex}: {stderr}"
        );
        assert!(!stderr.contains("cannot serve yet"), "{stderr}");
        assert_eq!(
            cluster.get(0, "/lk/default/meta/master_key_id"),
            Some(id.clone()),
            "a refused node must not change the cluster's meta"
        );

        // The same master.key in another data directory is the same cluster member key.
        std::fs::create_dir(&c).expect("mkdir");
        std::fs::copy(a.join("master.key"), c.join("master.key")).expect("copy key");
        let (ok, stderr) = serve_in(&c, &["--store", &store]);
        assert!(!ok, "{stderr}");
        assert!(stderr.contains("master key id is this node's"), "{stderr}");
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
