//! Authorities on etcd (`serve --store etcd://…`). With the tests crate's feature `etcd` the
//! binary under test must be built with `--features etcd` (`scripts/test.sh` does both), and
//! the tests start a 3-member etcd cluster (`util::etcd`); without an etcd binary they print
//! why they skip. Without the feature, the default build's refusal is what is tested.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::latchkey_bin;

#[cfg(feature = "etcd")]
mod across;
#[cfg(feature = "etcd")]
mod faults;
#[cfg(feature = "etcd")]
mod replay;
#[cfg(feature = "etcd")]
mod replay_across;
#[cfg(feature = "etcd")]
mod support;
#[cfg(feature = "etcd")]
mod tls;

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
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::{serve_in, serve_refusal};
    use crate::util::cluster::EtcdProxy;
    use crate::util::etcd::{EtcdCluster, EtcdOptions, etcd_or_skip, healthy};
    use crate::util::latchkey_bin;
    use crate::util::server::{Spawned, spawn_serve};

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
    fn harness_kills_the_leader_and_restarts_it_as_a_member() {
        let Some(bin) = etcd_or_skip("harness_kills_the_leader_and_restarts_it_as_a_member") else {
            return;
        };
        let mut cluster = EtcdCluster::start(&bin);
        let leader = cluster.leader();
        cluster.kill9(leader);
        assert!(!cluster.running(leader));
        let next = cluster.leader();
        assert_ne!(next, leader, "a dead member cannot lead");
        cluster.put(next, "/lk-test/k", b"after");
        cluster.restart(leader);
        // The restarted member rejoined with its data and caught up.
        assert_eq!(
            cluster.get(leader, "/lk-test/k").as_deref(),
            Some(&b"after"[..])
        );
    }

    #[test]
    fn harness_compacts_and_fills_the_space_quota() {
        let Some(bin) = etcd_or_skip("harness_compacts_and_fills_the_space_quota") else {
            return;
        };
        let quota = 4 << 20;
        let cluster = EtcdCluster::start_with(
            &bin,
            &EtcdOptions {
                quota_backend_bytes: Some(quota),
            },
        );
        cluster.put(0, "/lk-test/k", b"v1");
        let before = cluster.revision(1);
        cluster.put(0, "/lk-test/k", b"v2");
        cluster.compact(2, before + 1);
        assert!(
            cluster.try_compact(0, before).is_err(),
            "compacting below the compacted revision is refused"
        );
        assert!(cluster.alarms(0).is_empty());
        let chunk = vec![b'x'; 512 << 10];
        let mut n = 0;
        while cluster
            .try_put(0, &format!("/lk-test/fill/{n}"), &chunk)
            .is_ok()
        {
            n += 1;
            assert!(n < 64, "no NOSPACE after {n} puts");
        }
        // One alarm per member.
        let alarms = cluster.alarms(1);
        assert!(
            !alarms.is_empty() && alarms.iter().all(|a| a == "NOSPACE"),
            "{alarms:?}"
        );
        assert!(cluster.try_put(2, "/lk-test/small", b"x").is_err());
    }

    #[test]
    fn harness_proxy_black_holes_and_heals() {
        let Some(bin) = etcd_or_skip("harness_proxy_black_holes_and_heals") else {
            return;
        };
        let cluster = EtcdCluster::start(&bin);
        let proxy = EtcdProxy::start(&cluster);
        let via = proxy.endpoints();
        let via: Vec<&str> = via.split(',').collect();
        assert_eq!(via.len(), 3);
        assert!(via.iter().all(|a| healthy(a)));
        proxy.cut();
        // No answer (a read timeout), not a refused or reset connection.
        assert!(!healthy(via[0]));
        proxy.heal();
        assert!(via.iter().all(|a| healthy(a)));
    }

    /// A `latchkey serve --store …` that is serving (plain HTTP on loopback), killed on drop.
    struct Running(Spawned);

    impl Running {
        /// On `store` (`None`: a single node on its own redb file).
        fn start(data: &Path, store: Option<&str>) -> Running {
            let mut cmd = Command::new(latchkey_bin());
            cmd.arg("serve").arg("--data-dir").arg(data).args([
                "--listen",
                "127.0.0.1:0",
                "--insecure-plain-http",
            ]);
            if let Some(store) = store {
                cmd.args(["--store", store]);
            }
            Running(spawn_serve(cmd, "http"))
        }

        /// Its stderr once it contains `needle` (a reader thread collects it), or all of it
        /// after five seconds.
        fn stderr_with(&self, needle: &str) -> String {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let text =
                    String::from_utf8_lossy(&self.0.stderr.lock().expect("stderr")).into_owned();
                if text.contains(needle) || Instant::now() >= deadline {
                    return text;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.child.kill();
            let _ = self.0.child.wait();
        }
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
        let first = Running::start(&a, Some(&store));
        let stderr = first.stderr_with("caught up with the cluster");
        assert!(stderr.contains("caught up with the cluster"), "{stderr}");
        assert!(stderr.contains(&cluster.endpoints()), "{stderr}");
        assert!(
            stderr.contains("initialised the empty etcd cluster's meta"),
            "{stderr}"
        );
        drop(first);
        let id = cluster
            .get(2, "/lk/default/meta/master_key_id")
            .expect("meta.master_key_id in etcd");
        assert_eq!(id.len(), 8);
        assert_eq!(
            cluster.get(1, "/lk/default/meta/schema_version"),
            Some(1u64.to_be_bytes().to_vec())
        );

        // Again: the stored id is its own.
        let again = Running::start(&a, Some(&store));
        let stderr = again.stderr_with("master key id is this node's");
        assert!(stderr.contains("master key id is this node's"), "{stderr}");

        // A node without a master key is told to copy the first node's; it makes none.
        let b_key = b.join("master.key");
        let (ok, stderr) = serve_in(&b, &["--store", &store]);
        assert!(!ok, "{stderr}");
        assert!(stderr.contains("copy that node's master.key"), "{stderr}");
        assert!(
            !b_key.exists(),
            "a refused node made a master key of its own"
        );

        // A node with a master key of its own (here: a single node's) is refused, naming its
        // key file and both ids.
        drop(Running::start(&b, None));
        assert!(b_key.exists());
        let (ok, stderr) = serve_in(&b, &["--store", &store]);
        assert!(!ok, "{stderr}");
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
        assert_eq!(
            cluster.get(0, "/lk/default/meta/master_key_id"),
            Some(id.clone()),
            "a refused node must not change the cluster's meta"
        );

        // The same master.key in another data directory is the same cluster member key.
        std::fs::create_dir(&c).expect("mkdir");
        std::fs::copy(a.join("master.key"), c.join("master.key")).expect("copy key");
        let other = Running::start(&c, Some(&store));
        let stderr = other.stderr_with("master key id is this node's");
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
