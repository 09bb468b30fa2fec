//! A `latchkey serve` child process on a free loopback port, plus small HTTP/1.1 and TLS
//! client helpers. The child is killed when the [`Server`] drops.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject as _;

use super::latchkey_bin;

/// How long a test client waits for any single read before failing.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for starting a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve HTTPS (the default of the binary) instead of `--insecure-plain-http`.
    pub tls: bool,
    /// Extra `latchkey serve` flags.
    pub args: Vec<String>,
    /// Start under `ulimit -n` with this many file descriptors (soft and hard limit).
    pub fd_limit: Option<u32>,
    /// Start with only the soft file-descriptor limit lowered (`ulimit -Sn`); the hard limit
    /// stays, so the server may raise the soft one.
    pub fd_soft_limit: Option<u32>,
}

impl Options {
    pub fn plain(args: &[&str]) -> Self {
        Self {
            tls: false,
            args: args.iter().map(|s| s.to_string()).collect(),
            fd_limit: None,
            fd_soft_limit: None,
        }
    }

    pub fn tls(args: &[&str]) -> Self {
        Self {
            tls: true,
            ..Self::plain(args)
        }
    }
}

/// A `latchkey serve` child that has printed its ready line.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the child wrote to stderr so far (a thread keeps collecting it).
    pub stderr: Arc<Mutex<Vec<u8>>>,
    pub ready_line: String,
    /// What the child wrote to stdout after the ready line (a thread keeps collecting it).
    pub stdout: Arc<Mutex<Vec<u8>>>,
}

/// Collects what `pipe` yields into a shared buffer, on its own thread, until EOF.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("pipe lock").extend_from_slice(&buf[..n]);
        }
    });
    out
}

/// Spawns `cmd` (a `latchkey serve …` command line), collects its stderr on a thread, and
/// waits for the ready line `latchkey listening on SCHEME://ADDR` (or its JSON form); panics with the child's
/// stderr if it never comes.
pub fn spawn_serve(mut cmd: Command, scheme: &str) -> Spawned {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn latchkey");
    let stderr = collect(child.stderr.take().expect("stderr piped"));
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    // `latchkey listening on URL`, or with `--log-format json` an object whose `url` is it.
    let url = match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(v) if v["event"] == "listening" => v["url"].as_str().map(str::to_owned),
        _ => line
            .trim()
            .strip_prefix("latchkey listening on ")
            .map(str::to_owned),
    };
    let Some(addr) = url
        .as_deref()
        .and_then(|u| u.strip_prefix(&format!("{scheme}://")))
    else {
        let _ = child.kill();
        let _ = child.wait();
        let err = String::from_utf8_lossy(&stderr.lock().expect("stderr lock")).into_owned();
        panic!("no ready line (got {line:?}); stderr:\n{err}");
    };
    let addr = addr.parse().expect("address in the ready line");
    // Anything after the ready line is kept (and the pipe stays open for the child).
    let stdout = collect(stdout);
    Spawned {
        child,
        addr,
        stderr,
        ready_line: line,
        stdout,
    }
}

/// A running `latchkey serve`.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub tls: bool,
    dir: tempfile::TempDir,
    stderr: Arc<Mutex<Vec<u8>>>,
    pub ready_line: String,
    stdout: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    pub fn plain(args: &[&str]) -> Self {
        Self::start(Options::plain(args))
    }

    pub fn tls(args: &[&str]) -> Self {
        Self::start(Options::tls(args))
    }

    pub fn start(opts: Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        if !opts.args.iter().any(|a| a == "--threads") {
            args.extend(["--threads".into(), "2".into()]);
        }
        if !opts.tls {
            args.push("--insecure-plain-http".into());
        }
        args.extend(opts.args);
        let ulimit = match (opts.fd_limit, opts.fd_soft_limit) {
            (Some(n), _) => Some(format!("ulimit -n {n}")),
            (None, Some(n)) => Some(format!("ulimit -Sn {n}")),
            (None, None) => None,
        };
        let cmd = match ulimit {
            Some(ulimit) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{ulimit} && exec \"$0\" \"$@\""))
                    .arg(latchkey_bin())
                    .args(&args);
                c
            }
            None => {
                let mut c = Command::new(latchkey_bin());
                c.args(&args);
                c
            }
        };
        let scheme = if opts.tls { "https" } else { "http" };
        let Spawned {
            child,
            addr,
            stderr,
            ready_line,
            stdout,
        } = spawn_serve(cmd, scheme);
        Self {
            child,
            addr,
            tls: opts.tls,
            dir,
            stderr,
            ready_line,
            stdout,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the server wrote to stdout after its ready line.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("stdout lock")).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server logged so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    /// Waits up to five seconds for the server's stderr to contain `needle` (a reader thread
    /// collects it, so a line written before the ready line may still be on its way).
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

    /// Sends a signal with `kill(1)` (the test crate forbids `unsafe`, so no `libc::kill`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A raw TCP connection (no TLS even on a TLS server).
    pub fn tcp(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        s
    }

    /// A connection speaking the server's scheme.
    pub fn connect(&self) -> Conn {
        if self.tls {
            Conn::Tls(Box::new(self.tls_connect(tls_client(
                &self.ca_path(),
                None,
                None,
            ))))
        } else {
            Conn::Plain(self.tcp())
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join("ca.pem")
    }

    /// A TLS connection with the handshake completed.
    pub fn tls_connect(
        &self,
        config: Arc<rustls::ClientConfig>,
    ) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let name = ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(config, name).expect("client connection");
        let mut stream = rustls::StreamOwned::new(conn, self.tcp());
        complete_handshake(&mut stream.conn, &mut stream.sock).expect("TLS handshake");
        stream
    }

    /// `GET path` on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}; stderr:\n{}", self.stderr()))
    }

    /// `GET path` on a fresh connection; errors (refused, closed, TLS failure) are returned.
    pub fn try_get(&self, path: &str) -> io::Result<Response> {
        let mut c = if self.tls {
            let config = tls_client(&self.ca_path(), None, None);
            let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
            let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(conn, self.tcp());
            complete_handshake(&mut stream.conn, &mut stream.sock)?;
            Conn::Tls(Box::new(stream))
        } else {
            Conn::Plain(self.tcp())
        };
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
        read_response(&mut c, &mut Vec::new(), false)
    }

    /// Waits up to five seconds until a fresh client is served (the server needs a moment to
    /// notice closed connections and free their slots).
    pub fn served_soon(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.try_get("/healthz") {
                Ok(r) if r.status == 200 => return,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                other => panic!("not served again: {other:?}; stderr:\n{}", self.stderr()),
            }
        }
    }

    /// The value of one metrics line (exact name with labels), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        let body = self.get("/metrics").text();
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().expect("metric value"))
            .unwrap_or(0.0)
    }

    /// Waits up to five seconds for a metrics series to reach `min`.
    pub fn wait_metric(&self, series: &str, min: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(series);
            if v >= min {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {v}, expected at least {min}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts the server still answers `/healthz` on a new connection.
    pub fn assert_serving(&self) {
        let r = self.get("/healthz");
        assert_eq!(
            r.status,
            200,
            "server stopped serving; stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client TLS configuration trusting `ca`; `version` pins TLS 1.2 or 1.3; `alpn` overrides
/// the offered protocols (default `http/1.1`).
pub fn tls_client(
    ca: &Path,
    version: Option<&'static rustls::SupportedProtocolVersion>,
    alpn: Option<Vec<Vec<u8>>>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.unwrap_or_else(|| vec![b"http/1.1".to_vec()]);
    Arc::new(config)
}

/// A plain or TLS client connection.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads one response from `stream`, keeping bytes beyond it in `buf` (pipelining). `head`
/// says the request was HEAD (no body despite Content-Length). Err on EOF before a full head.
pub fn read_response(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    head: bool,
) -> io::Result<Response> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(n) = r
            .parse(buf)
            .map_err(|e| io::Error::other(format!("bad response: {e}")))?
        {
            let status = r.code.unwrap_or(0);
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().expect("content-length"))
                .unwrap_or(0);
            let len = if head || status < 200 || status == 204 || status == 304 {
                0
            } else {
                len
            };
            buf.drain(..n);
            while buf.len() < len {
                fill(stream, buf)?;
            }
            let body = buf.drain(..len).collect();
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
        fill(stream, buf)?;
    }
}

/// Drives a client handshake to its end. A socket read with a timeout fails with `Interrupted`
/// after the process was stopped and continued, even without a signal handler: retried.
pub fn complete_handshake(
    conn: &mut rustls::ClientConnection,
    sock: &mut TcpStream,
) -> io::Result<()> {
    while conn.is_handshaking() {
        match conn.complete_io(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `read`, retried on `Interrupted` (see `complete_handshake`).
pub fn read_some(stream: &mut impl Read, chunk: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn fill(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = read_some(stream, &mut chunk)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Reads until the server closes the connection (EOF or reset); returns what arrived.
/// Fails if the connection is still open after `CLIENT_TIMEOUT`.
pub fn read_until_closed(stream: &mut impl Read) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match read_some(stream, &mut chunk) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                return all;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("connection still open after {CLIENT_TIMEOUT:?}")
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}
