//! The one HTTP/1.1 request a node makes to another: `POST` a body, read the answer, over
//! rustls (verified against the cluster's CA) or, for a node serving plain HTTP on loopback,
//! plain TCP. Each forwarding thread keeps one open connection per peer and reuses it
//! (keep-alive), so a batch costs a round trip, not a handshake; a connection the peer closed
//! while idle is replaced once, before anything was read from it. Every step is bounded by a
//! deadline and the answer by [`super::peer_auth::MAX_BODY`]. Runs on the forwarding threads,
//! never an event loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::peer_auth::{AUTH_HEADER, MAX_BODY};

/// A peer's base URL, parsed: `https://HOST:PORT` or `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUrl {
    pub tls: bool,
    /// Host as written (brackets removed from an IPv6 literal).
    pub host: String,
    pub port: u16,
}

impl PeerUrl {
    pub fn parse(url: &str) -> Result<PeerUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{url:?}: expected https://HOST:PORT"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (h, p) = v6
                    .split_once("]:")
                    .ok_or_else(|| format!("{url:?}: expected [IPV6]:PORT"))?;
                (h, p)
            }
            None => rest
                .rsplit_once(':')
                .ok_or_else(|| format!("{url:?}: expected HOST:PORT"))?,
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{url:?}: bad port"))?;
        if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!("{url:?}: bad host"));
        }
        Ok(PeerUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for PeerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A peer's answer: status, its authentication header, its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub auth: Option<String>,
    pub body: Vec<u8>,
}

/// An open connection to a peer.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn exchange(&mut self, request: &[u8], deadline: Instant) -> std::io::Result<Exchanged> {
        match self {
            Conn::Plain(s) => exchange(s, request, deadline),
            Conn::Tls(s) => exchange(s.as_mut(), request, deadline),
        }
    }
}

thread_local! {
    /// This thread's open connections, by peer URL.
    static CONNS: std::cell::RefCell<std::collections::HashMap<String, Conn>> =
        std::cell::RefCell::default();
}

/// Posts `body` to `path` at `url` with the authentication header `auth`, all within
/// `timeout`. `tls` must be given for an `https` URL.
pub fn post(
    url: &PeerUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    path: &str,
    auth: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, String> {
    let deadline = Instant::now() + timeout;
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{AUTH_HEADER}: {auth}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let key = url.to_string();
    let io = |e: std::io::Error| format!("{url}: {e}");
    let cached = CONNS.with(|c| c.borrow_mut().remove(&key));
    let (mut conn, reused) = match cached {
        Some(c) => (c, true),
        None => (connect(url, tls, deadline)?, false),
    };
    let mut result = conn.exchange(&request, deadline);
    if reused && matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted) {
        // The peer closed the idle connection before reading the request: a new one.
        conn = connect(url, tls, deadline)?;
        result = conn.exchange(&request, deadline);
    }
    let done = result.map_err(io)?;
    if done.keep_alive {
        CONNS.with(|c| c.borrow_mut().insert(key, conn));
    }
    Ok(done.answer)
}

fn connect(
    url: &PeerUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    deadline: Instant,
) -> Result<Conn, String> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {url}: {e}"))?
        .collect();
    let mut last = format!("{url} has no address");
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left(deadline)?) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {url}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    if !url.tls {
        return Ok(Conn::Plain(tcp));
    }
    let config = tls.ok_or_else(|| format!("{url}: no TLS trust configured for peers"))?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| format!("{url}: bad server name: {e}"))?;
    let conn = rustls::ClientConnection::new(Arc::clone(config), name)
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

/// An answer, and whether the connection may carry the next request.
struct Exchanged {
    answer: Answer,
    keep_alive: bool,
}

/// Time left before `deadline`, or the timeout as an error.
fn left(deadline: Instant) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "timed out".to_owned())
}

/// Writes the request and reads one answer (its head, then `Content-Length` bytes), each I/O
/// bounded by what is left of the deadline, the answer by `MAX_BODY` plus room for its head.
/// A connection that ends before any byte of the answer is `ConnectionAborted`.
fn exchange<S: Read + Write + Socketed>(
    stream: &mut S,
    request: &[u8],
    deadline: Instant,
) -> std::io::Result<Exchanged> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let bound = |s: &mut S| -> std::io::Result<()> {
        let d = left(deadline).map_err(|_| timed_out())?;
        s.socket().set_read_timeout(Some(d))?;
        s.socket().set_write_timeout(Some(d))
    };
    let aborted = || std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "closed");
    bound(stream)?;
    match stream.write_all(request).and_then(|()| stream.flush()) {
        Err(e) if is_closed(&e) => return Err(aborted()),
        r => r?,
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(done) = complete(&raw).map_err(std::io::Error::other)? {
            return Ok(done);
        }
        bound(stream)?;
        match stream.read(&mut buf) {
            Ok(0) if raw.is_empty() => return Err(aborted()),
            Ok(0) => return Err(std::io::Error::other("answer cut short")),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_BODY + 16 * 1024 {
                    return Err(std::io::Error::other("answer too large"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if raw.is_empty() && is_closed(&e) => return Err(aborted()),
            Err(e) => return Err(e),
        }
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof | K::ConnectionAborted
    )
}

/// The answer once `raw` holds all of it.
fn complete(raw: &[u8]) -> Result<Option<Exchanged>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let head = match res.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad answer: {e}")),
    };
    let length = res
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or("answer without Content-Length")?;
    if length > MAX_BODY {
        return Err("answer too large".into());
    }
    if raw.len() < head + length {
        return Ok(None);
    }
    let close = res.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection")
            && std::str::from_utf8(h.value).is_ok_and(|v| v.trim().eq_ignore_ascii_case("close"))
    });
    let answer = parse_answer(&raw[..head + length])?;
    Ok(Some(Exchanged {
        answer,
        keep_alive: !close && raw.len() == head + length,
    }))
}

/// The TCP socket under a stream, for its timeouts.
trait Socketed {
    fn socket(&self) -> &TcpStream;
}

impl Socketed for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Socketed for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

fn parse_answer(raw: &[u8]) -> Result<Answer, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let head = match res.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("answer ended inside its head".into()),
        Err(e) => return Err(format!("bad answer: {e}")),
    };
    let status = res.code.ok_or("answer without a status")?;
    let mut length = None;
    let mut auth = None;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case(AUTH_HEADER) {
            auth = std::str::from_utf8(h.value).ok().map(str::to_owned);
        }
    }
    let body = &raw[head..];
    let length = length.ok_or("answer without Content-Length")?;
    if body.len() < length {
        return Err("answer shorter than its Content-Length".into());
    }
    Ok(Answer {
        status,
        auth,
        body: body[..length].to_vec(),
    })
}

/// The client configuration for peers: TLS 1.3/1.2, trusting only `roots` (the cluster's CA).
pub fn tls_config(
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store
            .add(cert)
            .map_err(|e| format!("cluster CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_parse_strictly() {
        let u = PeerUrl::parse("https://10.0.0.7:8443").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "10.0.0.7", 8443));
        assert_eq!(u.to_string(), "https://10.0.0.7:8443");
        let u = PeerUrl::parse("http://[::1]:80/").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "::1", 80));
        assert_eq!(u.to_string(), "http://[::1]:80");
        for bad in [
            "ftp://a:1",
            "https://a",
            "https://a:0",
            "https://:1",
            "https://a:1/x",
            "https://u@a:1",
        ] {
            assert!(PeerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_parse_with_their_auth_header_and_length() {
        let a = parse_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Latchkey-Peer-Auth: v1 ab\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!(
            (a.status, a.auth.as_deref(), &a.body[..]),
            (200, Some("v1 ab"), &b"{}"[..])
        );
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n{}").is_err());
        assert!(parse_answer(b"HTTP/1.1 200").is_err());
    }
}
