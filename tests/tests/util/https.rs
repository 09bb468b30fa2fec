//! An authority on a data directory the test owns (so it can be stopped and started again on
//! the same data), and a small HTTPS JSON client for the APIs.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::ServerName;

use super::latchkey_bin;
use super::server::{CLIENT_TIMEOUT, Response, Spawned, read_response, spawn_serve, tls_client};

/// A `latchkey serve` over HTTPS on `127.0.0.1:0` with a data directory the caller keeps.
#[derive(Debug)]
pub struct Authority {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
    tls: Arc<rustls::ClientConfig>,
}

impl Authority {
    /// Starts the server on `data_dir` (created on first start) with an optional TOML file.
    pub fn start(data_dir: &Path, config: Option<&Path>) -> Authority {
        Authority::start_at(data_dir, config, "127.0.0.1:0")
    }

    /// [`Authority::start`] on a given address (a restart where clients stored the URL).
    pub fn start_at(data_dir: &Path, config: Option<&Path>, listen: &str) -> Authority {
        Authority::start_with(data_dir, config, &["--listen", listen])
    }

    /// [`Authority::start`] with extra `serve` arguments (e.g. a second `--listen`; the first
    /// listener is the one `addr` names).
    pub fn start_with(data_dir: &Path, config: Option<&Path>, args: &[&str]) -> Authority {
        let mut cmd = Command::new(latchkey_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--threads", "2"]);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let Spawned {
            child,
            addr,
            stderr,
            ..
        } = spawn_serve(cmd, "https");
        let tls = tls_client(&data_dir.join("ca.pem"), None, None);
        Authority {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            stderr,
            tls,
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(
                    status.success(),
                    "exit {status:?}; stderr:\n{}",
                    self.stderr()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not stop; stderr:\n{}", self.stderr());
    }

    /// SIGKILL: the process ends wherever it is, nothing of it runs after.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    /// Whether `needle` shows up on stderr within 5 s: stderr is read on its own thread, so a
    /// line written before the ready line may still be in the pipe when `start` returns.
    pub fn wait_stderr(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stderr().contains(needle) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// What the server calls itself: `content.baseUrl` of boarding configurations.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// One request on a fresh TLS connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.request_to(self.addr, method, path, headers, body)
    }

    /// One request on a fresh TLS connection to another listener of this server (same CA).
    pub fn request_to(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let name = ServerName::try_from("localhost").expect("name");
        let conn =
            rustls::ClientConnection::new(self.tls.clone(), name).expect("client connection");
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("timeout");
        let mut stream = rustls::StreamOwned::new(conn, sock);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(body).expect("write body");
        stream.flush().expect("flush");
        read_response(&mut stream, &mut Vec::new(), method == "HEAD").expect("response")
    }

    /// A JSON request with an optional bearer token.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Response {
        self.json_with(method, path, bearer, body, &[])
    }

    pub fn json_with(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&serde_json::Value>,
        extra: &[(&str, &str)],
    ) -> Response {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![("Accept", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        headers.extend_from_slice(extra);
        self.request(method, path, &headers, body.as_bytes())
    }

    /// An `application/x-www-form-urlencoded` POST.
    pub fn form(&self, path: &str, body: &str, extra: &[(&str, &str)]) -> Response {
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        headers.extend_from_slice(extra);
        self.request("POST", path, &headers, body.as_bytes())
    }

    /// An operator access token for the `admin` client created on first run.
    pub fn operator_token(&self) -> String {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("admin:{}", super::admin_secret(&self.data_dir)));
        let r = self.form(
            "/oauth/token",
            "grant_type=client_credentials",
            &[("Authorization", &format!("Basic {basic}"))],
        );
        assert_eq!(r.status, 200, "operator token: {}", r.text());
        r.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a form value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
