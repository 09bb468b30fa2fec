//! Several `latchkey serve --store etcd://…` nodes over one [`EtcdCluster`]: node 1 starts
//! first against the empty cluster (it bootstraps keys, CA and the admin client), the others
//! get a copy of its `master.key` before their first start. Every node listens on a fixed
//! loopback port picked at start, so a restart keeps its address; all of it stops on drop.
//!
//! Faults: kill -9 and restart of a node or of an etcd member (the leader found through
//! etcd's JSON gateway), compaction, a small space quota, and a partition of one node from
//! etcd: that node reaches etcd only through an [`EtcdProxy`] of the test, which can black-hole
//! every byte (no reset, no close: what a cut cable looks like) and heal.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::etcd::{EtcdCluster, EtcdOptions, etcd_or_skip};
use super::https::Authority;
use super::server::Response;

/// What every node is told its public URL is (clients reach any node under one name, so
/// tokens carry one issuer whichever node minted them).
pub const PUBLIC_URL: &str = "https://latchkey.cluster.test";

/// How a [`Cluster`] is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub etcd: EtcdOptions,
    /// Extra `latchkey serve` flags for every node.
    pub args: Vec<String>,
    /// Nodes (0-based) that reach etcd only through an [`EtcdProxy`] (see [`Cluster::cut`]).
    pub proxied: Vec<usize>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 2,
            etcd: EtcdOptions::default(),
            args: Vec::new(),
            proxied: Vec::new(),
        }
    }
}

/// One authority node: its data directory and address stay across restarts.
#[derive(Debug)]
struct Node {
    dir: PathBuf,
    listen: String,
    store: String,
    proxy: Option<EtcdProxy>,
    running: Option<Authority>,
}

/// Authorities sharing one etcd cluster. Fields drop in order: nodes before etcd.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    args: Vec<String>,
    pub etcd: EtcdCluster,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts etcd and `options.nodes` authorities, or `None` (after saying why) when there is
    /// no etcd binary.
    pub fn start(test: &str, options: ClusterOptions) -> Option<Cluster> {
        let bin = etcd_or_skip(test)?;
        let etcd = EtcdCluster::start_with(&bin, &options.etcd);
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("latchkey.toml");
        std::fs::write(
            &config,
            format!("[tokens]\npublic-url = \"{PUBLIC_URL}\"\n"),
        )
        .expect("config");
        let nodes = (0..options.nodes)
            .map(|i| {
                let proxy = options
                    .proxied
                    .contains(&i)
                    .then(|| EtcdProxy::start(&etcd));
                let store = match &proxy {
                    Some(p) => format!("etcd://{}", p.endpoints()),
                    None => format!("etcd://{}", etcd.endpoints()),
                };
                Node {
                    dir: dir.path().join(format!("node{}", i + 1)),
                    listen: free_addr(),
                    store,
                    proxy,
                    running: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            args: options.args,
            etcd,
            _dir: dir,
        };
        for i in 0..options.nodes {
            if i > 0 {
                let to = &cluster.nodes[i].dir;
                std::fs::create_dir_all(to).expect("node data dir");
                std::fs::copy(
                    cluster.nodes[0].dir.join("master.key"),
                    to.join("master.key"),
                )
                .expect("copy master.key");
            }
            cluster.start_node(i);
        }
        Some(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The running node `i` (0-based); panics if it is down.
    pub fn node(&self, i: usize) -> &Authority {
        self.nodes[i]
            .running
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", i + 1))
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }

    /// Starts node `i` on its data directory and address; returns once it listens.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].running.is_none(), "node {} runs", i + 1);
        let n = &self.nodes[i];
        let mut args: Vec<&str> = vec![
            "--listen",
            &n.listen,
            "--store",
            &n.store,
            "--public-url",
            PUBLIC_URL,
        ];
        args.extend(self.args.iter().map(String::as_str));
        let auth = Authority::start_with(&n.dir, None, &args);
        self.nodes[i].running = Some(auth);
    }

    /// SIGKILL to node `i`; its stderr so far is returned.
    pub fn kill9(&mut self, i: usize) -> String {
        let auth = self.nodes[i].running.take().expect("node runs");
        let log = auth.stderr();
        auth.kill();
        log
    }

    /// SIGTERM to node `i` and a clean exit.
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].running.take().expect("node runs").stop();
    }

    /// An operator access token minted by node `i` for the `admin` client node 1 created.
    pub fn operator_token(&self, i: usize) -> String {
        let secret = super::admin_secret(&self.nodes[0].dir);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{secret}"));
        let r = self.node(i).form(
            "/oauth/token",
            "grant_type=client_credentials",
            &[("Authorization", &format!("Basic {basic}"))],
        );
        assert_eq!(
            r.status,
            200,
            "operator token on node {}: {}",
            i + 1,
            r.text()
        );
        r.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Black-holes node `i`'s traffic to etcd (it must be a proxied node).
    pub fn cut(&self, i: usize) {
        self.nodes[i].proxy.as_ref().expect("a proxied node").cut();
    }

    /// Lets node `i`'s traffic to etcd through again.
    pub fn heal(&self, i: usize) {
        self.nodes[i].proxy.as_ref().expect("a proxied node").heal();
    }

    /// Every running node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                n.running
                    .as_ref()
                    .map(|a| format!("--- node {} ---\n{}", i + 1, a.stderr()))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// [`eventually`], with every node's log in the failure message.
    pub fn eventually<T>(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "not within {within:?}: {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A loopback address nobody listens on (bound, then released).
fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").to_string()
}

/// Calls `f` until it returns `Some`, at most `within`; panics naming `what` otherwise.
/// Tests use it for what must happen eventually (a change reaching another node), never to
/// assert how long it took.
pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A one-line summary of a response for failure messages.
pub fn show(r: &Response) -> String {
    format!("{} {}", r.status, r.text())
}

/// A TCP proxy in front of each etcd member for one node, which can black-hole everything.
#[derive(Debug)]
pub struct EtcdProxy {
    addrs: Vec<String>,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

/// How often proxy threads look at the cut and stop flags.
const PROXY_TICK: Duration = Duration::from_millis(20);

impl EtcdProxy {
    pub fn start(etcd: &EtcdCluster) -> EtcdProxy {
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let addrs = etcd
            .members
            .iter()
            .map(|m| {
                let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
                let addr = listener.local_addr().expect("addr").to_string();
                listener.set_nonblocking(true).expect("nonblocking");
                let (upstream, cut, stop) = (m.client.clone(), cut.clone(), stop.clone());
                std::thread::spawn(move || accept_loop(&listener, &upstream, &cut, &stop));
                addr
            })
            .collect();
        EtcdProxy { addrs, cut, stop }
    }

    /// `HOST:PORT,…` of the proxy's listeners, one per member, in member order.
    pub fn endpoints(&self) -> String {
        self.addrs.join(",")
    }

    /// From now on no byte passes in either direction and nothing is closed: connections
    /// open during the cut are closed when it heals (as their peers would have timed out).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for EtcdProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: &TcpListener,
    upstream: &str,
    cut: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((down, _)) => {
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = down.set_nonblocking(false);
                for (from, to) in [
                    (down.try_clone(), up.try_clone()),
                    (up.try_clone(), down.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let (cut, stop) = (cut.clone(), stop.clone());
                    std::thread::spawn(move || pipe(from, to, &cut, &stop));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(PROXY_TICK),
            Err(_) => std::thread::sleep(PROXY_TICK),
        }
    }
}

/// Copies `from` to `to` while not cut. During a cut nothing is read (bytes stay in the
/// kernel's buffers, unacknowledged past them); after it, the connection is closed both ways.
fn pipe(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(PROXY_TICK));
    let mut buf = [0u8; 16 * 1024];
    let mut was_cut = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if cut.load(Ordering::SeqCst) {
            was_cut = true;
            std::thread::sleep(PROXY_TICK);
            continue;
        }
        if was_cut {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
