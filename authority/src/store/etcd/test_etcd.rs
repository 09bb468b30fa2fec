//! A one-member etcd on loopback for the engine's unit tests (the end-to-end tests use the
//! 3-member cluster of `tests/tests/util/etcd.rs`). Without an etcd binary a test skips,
//! saying why, unless `LATCHKEY_REQUIRE_ETCD=1`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Cluster;

/// A running member, killed on drop.
#[derive(Debug)]
pub(crate) struct Etcd {
    child: Child,
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts a member and waits until it answers; `None` (after saying why) without etcd.
    pub(crate) fn start(test: &str) -> Option<Etcd> {
        let bin = std::env::var_os("LATCHKEY_ETCD_BIN")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|d| d.join("etcd"))
                    .find(|p| p.is_file())
            });
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("LATCHKEY_REQUIRE_ETCD").is_none_or(|v| v != "1"),
                "{test}: LATCHKEY_REQUIRE_ETCD=1 but no etcd binary"
            );
            eprintln!("{test}: skipped: no etcd binary on the PATH");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let holds: Vec<_> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = holds
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(holds);
        let endpoint = format!("127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new(bin)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(format!("http://{endpoint}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://{endpoint}"))
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("t={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let etcd = Etcd {
            child,
            endpoint,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while etcd.connect().and_then(|c| c.status()).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not answer: {}",
                std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(etcd)
    }

    pub(crate) fn connect(&self) -> Result<Cluster, super::super::StoreError> {
        Cluster::connect(
            std::slice::from_ref(&self.endpoint),
            Duration::from_secs(5),
            &crate::config::EtcdTls::default(),
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
