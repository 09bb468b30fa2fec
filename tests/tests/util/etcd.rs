//! A throwaway 3-member etcd cluster on loopback for the cluster tests: free ports, a temp
//! dir per member, healthy before it is handed out, every member killed on drop.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary: `LATCHKEY_ETCD_BIN`, else `etcd` on the PATH (Debian's `etcd-server`).
pub fn etcd_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LATCHKEY_ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

/// The etcd binary, or `None` after printing why the calling test is skipped. With
/// `LATCHKEY_REQUIRE_ETCD=1` (set by `scripts/test.sh`, which installs etcd) a missing binary
/// fails the test instead, so the cluster tests cannot pass by skipping where they should run.
pub fn etcd_or_skip(test: &str) -> Option<PathBuf> {
    let bin = etcd_bin();
    if bin.is_none() {
        assert!(
            std::env::var_os("LATCHKEY_REQUIRE_ETCD").is_none_or(|v| v != "1"),
            "{test}: LATCHKEY_REQUIRE_ETCD=1 but no etcd binary (install etcd-server)"
        );
        eprintln!("{test}: skipped: no etcd binary on the PATH (apt-get install etcd-server)");
    }
    bin
}

/// One member of a running [`EtcdCluster`].
#[derive(Debug)]
pub struct Member {
    pub name: String,
    /// `127.0.0.1:PORT` of its client URL.
    pub client: String,
    child: Option<Child>,
    log: PathBuf,
    /// How it was started: a restart runs the same command on the same data directory.
    bin: PathBuf,
    args: Vec<String>,
}

impl Member {
    /// Starts (or restarts) the member; its output is appended to its log.
    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("member log");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }
}

/// Settings of an [`EtcdCluster`] beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `--quota-backend-bytes`: past it etcd raises its NOSPACE alarm and refuses writes.
    pub quota_backend_bytes: Option<u64>,
}

/// Three etcd members on loopback, killed (and their data removed) on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
}

/// How long a cluster may take to elect a leader and answer `/health` on every member.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

impl EtcdCluster {
    /// Starts three members with the etcd at `bin` and waits until every member reports
    /// healthy (which needs an elected leader). Panics with the members' logs otherwise.
    pub fn start(bin: &Path) -> EtcdCluster {
        EtcdCluster::start_with(bin, &EtcdOptions::default())
    }

    /// [`EtcdCluster::start`] with `options`.
    pub fn start_with(bin: &Path, options: &EtcdOptions) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(6);
        let names = ["m1", "m2", "m3"];
        let initial_cluster = names
            .iter()
            .zip(&ports[3..])
            .map(|(n, p)| format!("{n}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let client = format!("127.0.0.1:{}", ports[i]);
                let peer = format!("http://127.0.0.1:{}", ports[3 + i]);
                let log = dir.path().join(format!("{name}.log"));
                let mut args: Vec<String> = [
                    "--name",
                    name,
                    "--data-dir",
                    &dir.path().join(name).display().to_string(),
                    "--listen-client-urls",
                    &format!("http://{client}"),
                    "--advertise-client-urls",
                    &format!("http://{client}"),
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &format!("lk-test-{}", ports[0]),
                    // Loopback: short heartbeats elect a leader quickly.
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ]
                .iter()
                .map(|a| (*a).to_owned())
                .collect();
                if let Some(q) = options.quota_backend_bytes {
                    args.extend(["--quota-backend-bytes".to_owned(), q.to_string()]);
                }
                let mut m = Member {
                    name: (*name).to_owned(),
                    client,
                    child: None,
                    log,
                    bin: bin.to_path_buf(),
                    args,
                };
                m.spawn();
                m
            })
            .collect();
        let mut cluster = EtcdCluster { members, _dir: dir };
        cluster.wait_healthy();
        cluster
    }

    /// `HOST:PORT,HOST:PORT,HOST:PORT`: what `--store etcd://` takes.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every member's log, for a failure message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} ---\n{}", m.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            for m in &mut self.members {
                if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    let logs = self.logs();
                    panic!("etcd member exited during start ({status}):\n{logs}");
                }
            }
            if self
                .members
                .iter()
                .filter(|m| m.child.is_some())
                .all(|m| healthy(&m.client))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy within {HEALTHY_WITHIN:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A linearizable read of `key` through the member at `index`, over etcd's JSON gateway:
    /// the value, or `None` when absent.
    pub fn get(&self, index: usize, key: &str) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({ "key": b64.encode(key) }).to_string();
        let answer = http_post(&self.members[index].client, "/v3/kv/range", &body)
            .unwrap_or_else(|e| panic!("range on {}: {e}", self.members[index].name));
        let v: serde_json::Value = serde_json::from_str(&answer).expect("range answer is JSON");
        v["kvs"][0]["value"]
            .as_str()
            .map(|s| b64.decode(s).expect("base64 value"))
    }

    /// Puts `key` = `value` through the member at `index`, over etcd's JSON gateway.
    pub fn put(&self, index: usize, key: &str, value: &[u8]) {
        self.try_put(index, key, value)
            .unwrap_or_else(|e| panic!("put on {}: {e}", self.members[index].name));
    }

    /// [`EtcdCluster::put`], with etcd's refusal (e.g. its space quota) as the error.
    pub fn try_put(&self, index: usize, key: &str, value: &[u8]) -> Result<(), String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body =
            serde_json::json!({ "key": b64.encode(key), "value": b64.encode(value) }).to_string();
        let answer = http_post(&self.members[index].client, "/v3/kv/put", &body)?;
        // The gateway answers 200 with an error object when the server refused.
        match serde_json::from_str::<serde_json::Value>(&answer) {
            Ok(v) if v.get("error").is_some() || v.get("code").is_some() => Err(answer),
            _ => Ok(()),
        }
    }

    /// `(member_id, leader)` as the member at `index` reports them
    /// (`POST /v3/maintenance/status`); `None` when it does not answer.
    pub fn status(&self, index: usize) -> Option<(String, String)> {
        let answer = http_post(&self.members[index].client, "/v3/maintenance/status", "{}").ok()?;
        let v: serde_json::Value = serde_json::from_str(&answer).ok()?;
        // uint64 fields are JSON strings in the gateway's answers.
        let id = v["header"]["member_id"].as_str()?.to_owned();
        let leader = v["leader"].as_str()?.to_owned();
        Some((id, leader))
    }

    /// The index of the current leader, waiting up to [`HEALTHY_WITHIN`] for one that every
    /// running member agrees on.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let statuses: Vec<Option<(String, String)>> = (0..self.members.len())
                .map(|i| self.running(i).then(|| self.status(i)).flatten())
                .collect();
            let leaders: Vec<&String> = statuses.iter().flatten().map(|(_, l)| l).collect();
            if let Some(first) = leaders.first()
                && first.as_str() != "0"
                && leaders.iter().all(|l| l == first)
                && let Some(i) = statuses
                    .iter()
                    .position(|s| s.as_ref().is_some_and(|(id, _)| id == *first))
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed etcd leader within {HEALTHY_WITHIN:?}: {statuses:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the member at `index` has a running process.
    pub fn running(&self, index: usize) -> bool {
        self.members[index].child.is_some()
    }

    /// SIGKILL to the member at `index` (its data directory stays for a restart).
    pub fn kill9(&mut self, index: usize) {
        if let Some(mut c) = self.members[index].child.take() {
            c.kill().expect("kill -9 etcd member");
            c.wait().expect("wait etcd member");
        }
    }

    /// Starts the member at `index` again on its data directory and waits until every
    /// running member reports healthy.
    pub fn restart(&mut self, index: usize) {
        assert!(
            !self.running(index),
            "{} is running",
            self.members[index].name
        );
        self.members[index].spawn();
        self.wait_healthy();
    }

    /// The cluster's current revision, read through the member at `index`.
    pub fn revision(&self, index: usize) -> i64 {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({ "key": b64.encode("/"), "count_only": true }).to_string();
        let answer = http_post(&self.members[index].client, "/v3/kv/range", &body)
            .unwrap_or_else(|e| panic!("range on {}: {e}", self.members[index].name));
        let v: serde_json::Value = serde_json::from_str(&answer).expect("range answer is JSON");
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("header.revision")
    }

    /// Compacts the cluster's history up to `revision` (physically: older revisions are
    /// gone, and a watch from before it is cancelled as compacted).
    pub fn compact(&self, index: usize, revision: i64) {
        self.try_compact(index, revision)
            .unwrap_or_else(|e| panic!("compaction on {}: {e}", self.members[index].name));
    }

    /// [`EtcdCluster::compact`], with etcd's refusal as the error.
    pub fn try_compact(&self, index: usize, revision: i64) -> Result<(), String> {
        let body = serde_json::json!({ "revision": revision, "physical": true }).to_string();
        http_post(&self.members[index].client, "/v3/kv/compaction", &body).map(drop)
    }

    /// The alarms the cluster has raised (`NOSPACE`, `CORRUPT`), as etcd names them.
    pub fn alarms(&self, index: usize) -> Vec<String> {
        let body = serde_json::json!({ "action": "GET" }).to_string();
        let Ok(answer) = http_post(&self.members[index].client, "/v3/maintenance/alarm", &body)
        else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        v["alarms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["alarm"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `GET /health` answers `{"health":"true"}` once the member has a leader.
pub fn healthy(client: &str) -> bool {
    http("GET", client, "/health", "").is_ok_and(|b| b.contains(r#""health":"true""#))
}

fn http_post(client: &str, path: &str, body: &str) -> Result<String, String> {
    http("POST", client, path, body)
}

/// One HTTP/1.1 exchange with `Connection: close`; the body of a 200 answer.
fn http(method: &str, client: &str, path: &str, body: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(client).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {client}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{head}\n{body}"));
    }
    Ok(body.to_owned())
}

/// `n` distinct free loopback ports: all held at once so none repeats, released just before
/// etcd binds them.
fn free_ports(n: usize) -> Vec<u16> {
    let holds: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    holds
        .iter()
        .map(|l| l.local_addr().expect("port").port())
        .collect()
}

/// PEM files for etcd over TLS, made with `openssl`: a CA, etcd's server certificate (for IP
/// 127.0.0.1) and a node's client certificate, each with its key.
#[derive(Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes the files in `dir`; panics with openssl's output if it fails.
    pub fn make(dir: &Path) -> TlsFiles {
        let run = |args: &[&str]| {
            super::openssl_in(Some(dir), args);
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=etcd test CA",
        ]);
        run(&ca);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("server.ext");
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
        for name in ["server", "client"] {
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=etcd test"]);
            run(&req);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// One etcd member serving clients only over TLS and only to client certificates of
/// `files.ca` (`--client-cert-auth`); killed (and its data removed) on drop.
#[derive(Debug)]
pub struct TlsMember {
    /// `127.0.0.1:PORT` of its (https) client URL.
    pub client: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsMember {
    /// Starts the member and waits until it reports healthy on its plain-HTTP metrics URL
    /// (the client URL needs a client certificate).
    pub fn start(bin: &Path, files: &TlsFiles) -> TlsMember {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(3);
        let client = format!("127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let metrics = format!("127.0.0.1:{}", ports[2]);
        let log = dir.path().join("etcd.log");
        let out = std::fs::File::create(&log).expect("member log");
        let child = Command::new(bin)
            .args(["--name", "t1", "--data-dir"])
            .arg(dir.path().join("t1"))
            .args(["--listen-client-urls", &format!("https://{client}")])
            .args(["--advertise-client-urls", &format!("https://{client}")])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t1={peer}")])
            .args(["--listen-metrics-urls", &format!("http://{metrics}")])
            .arg("--cert-file")
            .arg(&files.server_cert)
            .arg("--key-file")
            .arg(&files.server_key)
            .arg("--trusted-ca-file")
            .arg(&files.ca)
            .arg("--client-cert-auth")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn etcd");
        let mut member = TlsMember {
            client,
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + HEALTHY_WITHIN;
        while !healthy(&metrics) {
            if let Ok(Some(status)) = member.child.try_wait() {
                panic!("etcd exited during start ({status}):\n{}", member.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {HEALTHY_WITHIN:?}:\n{}",
                member.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        member
    }

    /// Its log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
