//! `--attack`: hostile connections held open beside the measured workload, so a run reports
//! what a legitimate client gets (success rate, p99) while the server is under that abuse.
//!
//! One thread keeps `--attack-connections` sockets in the chosen hostile state and opens a new
//! one whenever the server closes one (that is what a real attacker does; how often it has to
//! is reported as the server's shedding). Blocking sockets and a 50 ms sweep are enough: the
//! attack needs no speed, only persistence, and must not take the CPU the server needs.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::target::{Scheme, Target};

/// What the hostile connections do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// `attack-idle`: connect and never send a byte (no ClientHello, no request).
    #[value(name = "idle")]
    Idle,
    /// `attack-slowbody`: a token request head declaring `--attack-body` bytes, all but the
    /// last byte sent at once, then nothing.
    #[value(name = "slow-body")]
    SlowBody,
    /// `attack-keepalive`: one `GET /healthz`, then hold the keep-alive connection idle
    /// (takes file descriptors, not CPU).
    #[value(name = "keep-alive")]
    KeepAlive,
    /// `attack-refused-auth`: operator token requests (`POST /oauth/token`) for
    /// `--attack-client-id` with a wrong secret, back to back on keep-alive connections (one
    /// thread each, at most 16): refusals nobody authenticated, as fast as they come back.
    #[value(name = "refused-auth")]
    RefusedAuth,
}

impl Attack {
    pub fn name(self) -> &'static str {
        match self {
            Attack::Idle => "attack-idle",
            Attack::SlowBody => "attack-slowbody",
            Attack::KeepAlive => "attack-keepalive",
            Attack::RefusedAuth => "attack-refused-auth",
        }
    }
}

/// How the attack runs.
#[derive(Debug, Clone)]
pub struct AttackConfig {
    pub attack: Attack,
    pub target: Arc<Target>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connections: usize,
    /// Declared body length for `SlowBody`.
    pub body: usize,
    pub token_path: String,
    /// The client id `RefusedAuth` claims.
    pub client_id: String,
}

/// What the attack achieved, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct AttackReport {
    /// Hostile connections opened in all.
    pub opened: u64,
    /// Of those, closed by the server while the attack ran.
    pub closed_by_server: u64,
    /// Connection attempts that failed (refused, reset, timed out).
    pub failed_connects: u64,
    /// Most hostile connections open at once.
    pub peak_open: usize,
    /// `RefusedAuth`: requests answered 401 or 429, and answered otherwise.
    pub refused: u64,
    pub other_answers: u64,
}

/// The running attack.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<AttackReport>,
}

impl Running {
    pub fn stop(self) -> AttackReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Opens at most this many new hostile connections per sweep, so reconnecting does not turn
/// into a connection flood that measures something else.
const OPENS_PER_SWEEP: usize = 200;
const SWEEP: Duration = Duration::from_millis(50);

pub fn start(config: AttackConfig) -> io::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("loadgen-attack".into())
        .spawn(move || run(&config, &flag))?;
    Ok(Running { stop, thread })
}

/// A held hostile connection.
enum Held {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Held {
    /// True if the server has closed (or reset) it. Never blocks.
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let result = match self {
            Held::Plain(s) => s.read(&mut buf),
            Held::Tls(s) => s.read(&mut buf),
        };
        match result {
            Ok(0) => true,
            // An answer (408, 503) means the server is closing it.
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }
}

fn run(config: &AttackConfig, stop: &AtomicBool) -> AttackReport {
    if config.attack == Attack::RefusedAuth {
        return refused_auth(config, stop);
    }
    let mut report = AttackReport::default();
    let mut held: Vec<Option<Held>> = (0..config.connections).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let sweep_end = Instant::now() + SWEEP;
        let mut opens = 0;
        for slot in held.iter_mut() {
            if let Some(h) = slot
                && h.closed()
            {
                report.closed_by_server += 1;
                *slot = None;
            }
            if slot.is_none() && opens < OPENS_PER_SWEEP && !stop.load(Ordering::Relaxed) {
                opens += 1;
                match open(config) {
                    Ok(h) => {
                        report.opened += 1;
                        *slot = Some(h);
                    }
                    Err(_) => report.failed_connects += 1,
                }
            }
        }
        report.peak_open = report
            .peak_open
            .max(held.iter().filter(|h| h.is_some()).count());
        std::thread::sleep(sweep_end.saturating_duration_since(Instant::now()));
    }
    report
}

/// Most threads `RefusedAuth` runs.
const MAX_REFUSED_AUTH_THREADS: usize = 16;

fn refused_auth(config: &AttackConfig, stop: &AtomicBool) -> AttackReport {
    use base64::Engine as _;
    let threads = config.connections.clamp(1, MAX_REFUSED_AUTH_THREADS);
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:wrong-secret-for-the-attack", config.client_id));
    let auth = format!("Authorization: Basic {credentials}");
    let headers = [auth.as_str()];
    let request = crate::http::Request {
        method: "POST",
        path: "/oauth/token",
        headers: &headers,
        content_type: Some("application/x-www-form-urlencoded"),
        body: b"grant_type=client_credentials",
    };
    let (refused, other, failed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut client =
                    crate::client::Client::new(Arc::clone(&config.target), config.tls.clone());
                while !stop.load(Ordering::Relaxed) {
                    let counter = match client.request(&request) {
                        Ok(r) if matches!(r.status, 401 | 429) => &refused,
                        Ok(_) => &other,
                        Err(_) => &failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    AttackReport {
        opened: threads as u64,
        peak_open: threads,
        failed_connects: failed.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        other_answers: other.load(Ordering::Relaxed),
        ..AttackReport::default()
    }
}

/// Opens one hostile connection and puts it in its state; the socket is left non-blocking.
fn open(config: &AttackConfig) -> io::Result<Held> {
    let sock = TcpStream::connect_timeout(&config.target.addr, Duration::from_secs(1))?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut held = match (config.attack, config.target.scheme, &config.tls) {
        (Attack::Idle, _, _) | (_, Scheme::Http, _) | (_, Scheme::Https, None) => Held::Plain(sock),
        (_, Scheme::Https, Some(tls)) => {
            let name = crate::tls::server_name(&config.target.host).map_err(io::Error::other)?;
            let conn =
                rustls::ClientConnection::new(tls.clone(), name).map_err(io::Error::other)?;
            let mut s = rustls::StreamOwned::new(conn, sock);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
            Held::Tls(Box::new(s))
        }
    };
    let host = config.target.host_header();
    match config.attack {
        Attack::Idle | Attack::RefusedAuth => {}
        Attack::SlowBody => {
            let mut req = format!(
                "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
                config.token_path, config.body
            )
            .into_bytes();
            req.resize(req.len() + config.body.saturating_sub(1), b'a');
            write_all(&mut held, &req)?;
        }
        Attack::KeepAlive => {
            write_all(
                &mut held,
                format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            )?;
            let mut buf = [0u8; 4096];
            let n = match &mut held {
                Held::Plain(s) => s.read(&mut buf)?,
                Held::Tls(s) => s.read(&mut buf)?,
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
    match &held {
        Held::Plain(s) => s.set_nonblocking(true)?,
        Held::Tls(s) => s.sock.set_nonblocking(true)?,
    }
    Ok(held)
}

fn write_all(held: &mut Held, bytes: &[u8]) -> io::Result<()> {
    match held {
        Held::Plain(s) => s.write_all(bytes),
        Held::Tls(s) => {
            s.write_all(bytes)?;
            s.flush()
        }
    }
}
