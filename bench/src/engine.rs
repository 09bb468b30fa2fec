//! The timed phase: one mio event loop per worker thread, shaped like mio's `tcp_server`
//! example turned around (a token per connection slot, read and write until `WouldBlock`).
//!
//! **Scheduling.** Closed loop: every idle connection sends its next request at once, and
//! latency runs from that moment. Open loop (`--rate`): request *i* of the run is due at
//! `start + i / rate` (threads interleave their shares); an idle connection takes the next
//! due request, and latency runs from the *scheduled* time, so a server that stalls is
//! charged for the requests queued behind the stall (no coordinated omission).
//!
//! **Connections.** Keep-alive connections are opened (and their TLS handshakes finished)
//! before the clock starts. With one connection per request, a slot opens a new connection
//! for each request and the latency includes connect and handshake. One request per
//! connection at a time; no pipelining.
//!
//! **A server that goes away.** A slot whose connection cannot be made waits before its next
//! attempt, [`BACKOFF_FIRST`] doubling up to [`BACKOFF_CAP`], so a dead server costs a few
//! attempts per slot per second, not a tight loop of refusals; once no connection has
//! succeeded (and no response arrived) for `give_up`, the worker ends the run with an error.

use std::io::{self, Read as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use latchkey_authority::http::drain::DrainTracker;

use crate::error::Error;
use crate::http::{self, Connection, Response};
use crate::scenario::{Pause, Tag, Workload};
use crate::stats::{ErrorKind, Stats};
use crate::target::Target;

/// How long keep-alive connections may take to open before the run starts.
const WARM_UP: Duration = Duration::from_secs(10);
/// Longest sleep in the loop (timeouts and the deadline are checked this often).
const TICK: Duration = Duration::from_millis(10);
/// A slot's wait after its first failed connection attempt; doubles with each further one.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// Longest wait between two connection attempts of one slot.
pub const BACKOFF_CAP: Duration = Duration::from_secs(1);

/// How one worker runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub target: Arc<Target>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connection slots of this worker.
    pub connections: usize,
    pub connection: Connection,
    /// Requests this worker sends (`None`: until the deadline).
    pub budget: Option<u64>,
    pub duration: Option<Duration>,
    pub rate: Option<Rate>,
    pub timeout: Duration,
    /// End the run with an error after this long without a successful connection or response
    /// while connections fail.
    pub give_up: Duration,
}

/// This worker's share of an open-loop schedule.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Requests per second over all workers.
    pub per_second: f64,
    /// This worker's index and the number of workers: it takes requests `index`,
    /// `index + of`, `index + 2 × of`, … of the global schedule.
    pub index: usize,
    pub of: usize,
}

impl Rate {
    /// When this worker's `n`-th request is due, after the start.
    pub fn due(&self, n: u64) -> Duration {
        let global = n as f64 * self.of as f64 + self.index as f64;
        Duration::from_secs_f64(global / self.per_second)
    }
}

/// Counters the progress bar reads while the run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
    /// Connections opened (or attempted), warm-up included.
    pub connects: AtomicU64,
}

/// What one worker measured.
#[derive(Debug)]
pub struct WorkerResult {
    pub stats: Stats,
    pub workload: Workload,
    /// From the start to the last response.
    pub elapsed: Duration,
    /// Open loop: requests that were due before the end but never sent (the server fell
    /// that far behind).
    pub unsent: u64,
    pub pool_exhausted: bool,
}

/// One connection slot.
struct Conn {
    sock: Option<TcpStream>,
    tls: Option<rustls::ClientConnection>,
    connected: bool,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    inflight: Option<InFlight>,
    /// Connection attempts that failed in a row (the backoff's exponent).
    failures: u32,
}

#[derive(Clone, Copy)]
struct InFlight {
    tag: Tag,
    intended: Instant,
    deadline: Instant,
}

/// What reading a connection produced.
enum Read {
    Nothing,
    Response(Response),
    /// The peer closed with no request in flight (an idle keep-alive connection expired).
    IdleClose,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            sock: None,
            tls: None,
            connected: false,
            out: Vec::with_capacity(2048),
            out_pos: 0,
            inbuf: Vec::with_capacity(4096),
            inflight: None,
            failures: 0,
        }
    }

    fn open(&mut self, token: Token, poll: &Poll, cfg: &EngineConfig) -> Result<(), ErrorKind> {
        self.close(poll);
        let mut sock = TcpStream::connect(cfg.target.addr).map_err(|_| ErrorKind::Connect)?;
        poll.registry()
            .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
            .map_err(|_| ErrorKind::Io)?;
        if let Some(config) = &cfg.tls {
            let name = crate::tls::server_name(&cfg.target.host).map_err(|_| ErrorKind::Tls)?;
            let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                .map_err(|_| ErrorKind::Tls)?;
            self.tls = Some(conn);
        }
        self.sock = Some(sock);
        Ok(())
    }

    fn close(&mut self, poll: &Poll) {
        if let Some(mut sock) = self.sock.take() {
            let _ = poll.registry().deregister(&mut sock);
        }
        self.tls = None;
        self.connected = false;
        self.out.clear();
        self.out_pos = 0;
        self.inbuf.clear();
    }

    fn is_open(&self) -> bool {
        self.sock.is_some()
    }

    /// Connected, and for TLS done with the handshake.
    fn is_ready(&self) -> bool {
        self.connected && self.tls.as_ref().is_none_or(|t| !t.is_handshaking())
    }

    /// Queues a request and writes what the socket takes.
    fn send(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        match &mut self.tls {
            // rustls buffers plaintext written before the handshake ends.
            Some(tls) => tls.writer().write_all(bytes).map_err(|_| ErrorKind::Tls)?,
            None => {
                if self.out_pos == self.out.len() {
                    self.out.clear();
                    self.out_pos = 0;
                }
                self.out.extend_from_slice(bytes);
            }
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        if !self.connected {
            return Ok(());
        }
        let Some(sock) = self.sock.as_mut() else {
            return Ok(());
        };
        match &mut self.tls {
            Some(tls) => {
                while tls.wants_write() {
                    match tls.write_tls(sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_kind(&e)),
                    }
                }
            }
            None => {
                while self.out_pos < self.out.len() {
                    match sock.write(&self.out[self.out_pos..]) {
                        Ok(0) => return Err(ErrorKind::Closed),
                        Ok(n) => self.out_pos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_kind(&e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles readiness: finishes a connect, writes, reads until the socket is drained
    /// (`read_closed`: the event said the peer closed, so read to EOF).
    fn ready(&mut self, read_closed: bool) -> Result<Read, ErrorKind> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(Read::Nothing);
        };
        if !self.connected {
            // mio: after a writable event, `take_error` then `peer_addr` tell whether the
            // non-blocking connect finished; `NotConnected` means a spurious wake-up.
            if let Ok(Some(_)) | Err(_) = sock.take_error() {
                return Err(ErrorKind::Connect);
            }
            match sock.peer_addr() {
                Ok(_) => {
                    let _ = sock.set_nodelay(true);
                    self.connected = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(Read::Nothing),
                Err(_) => return Err(ErrorKind::Connect),
            }
        }
        self.flush()?;
        let eof = self.read_available(read_closed)?;
        // A TLS handshake step may have produced records to send.
        self.flush()?;
        if self.inflight.is_none() {
            return if eof || !self.inbuf.is_empty() {
                Ok(Read::IdleClose)
            } else {
                Ok(Read::Nothing)
            };
        }
        match http::parse_response(&self.inbuf, eof, false) {
            Ok(Some((resp, used))) => {
                self.inbuf.drain(..used);
                Ok(Read::Response(resp))
            }
            Ok(None) if eof => Err(ErrorKind::Closed),
            Ok(None) => Ok(Read::Nothing),
            Err(_) => Err(ErrorKind::Malformed),
        }
    }

    /// Reads everything the socket has; `true` at end of stream. A short read ends it without
    /// the read that only says `WouldBlock` (see `latchkey_authority::http::drain`): the client
    /// must not spend the CPU it shares with the server on system calls it can skip.
    fn read_available(&mut self, read_closed: bool) -> Result<bool, ErrorKind> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(true);
        };
        let mut sock = DrainTracker::new(sock, read_closed);
        let mut chunk = [0u8; 16 * 1024];
        match &mut self.tls {
            None => loop {
                match sock.read(&mut chunk) {
                    Ok(0) => return Ok(true),
                    Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_kind(&e)),
                }
                if self.inbuf.len() > http::MAX_HEAD + http::MAX_BODY {
                    return Err(ErrorKind::Malformed);
                }
                if sock.drained() {
                    return Ok(false);
                }
            },
            Some(tls) => loop {
                let eof = match tls.read_tls(&mut sock) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_kind(&e)),
                };
                let state = tls.process_new_packets().map_err(|_| ErrorKind::Tls)?;
                let mut plain = state.plaintext_bytes_to_read();
                while plain > 0 {
                    let n = tls
                        .reader()
                        .read(&mut chunk[..plain.min(16 * 1024)])
                        .map_err(|_| ErrorKind::Tls)?;
                    if n == 0 {
                        break;
                    }
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    plain -= n;
                }
                if self.inbuf.len() > http::MAX_HEAD + http::MAX_BODY {
                    return Err(ErrorKind::Malformed);
                }
                if eof || state.peer_has_closed() {
                    return Ok(true);
                }
                if sock.drained() {
                    return Ok(false);
                }
            },
        }
    }
}

fn read_closed(ev: &mio::event::Event) -> bool {
    ev.is_read_closed() || ev.is_error()
}

fn io_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
        io::ErrorKind::ConnectionRefused => ErrorKind::Connect,
        io::ErrorKind::InvalidData => ErrorKind::Tls,
        _ => ErrorKind::Io,
    }
}

/// One worker: its connections, its workload, its measurements.
struct Worker<'a> {
    cfg: &'a EngineConfig,
    poll: Poll,
    conns: Vec<Conn>,
    idle: Vec<usize>,
    workload: Workload,
    stats: Stats,
    progress: &'a Progress,
    start: Instant,
    last_done: Instant,
    inflight: usize,
    /// Slots waiting out a backoff, and when each may try again.
    backoff: Vec<(Instant, usize)>,
    /// Since when connections have failed without a connection or response succeeding.
    failing_since: Option<Instant>,
}

/// Runs one worker: warm-up, then waits on `barrier` with the other workers, then the timed
/// phase.
pub fn run(
    cfg: &EngineConfig,
    workload: Workload,
    progress: &Progress,
    barrier: &Barrier,
) -> Result<WorkerResult, Error> {
    let poll = Poll::new().map_err(|e| Error::io("creating the event loop", e))?;
    let mut w = Worker {
        cfg,
        poll,
        conns: (0..cfg.connections).map(|_| Conn::new()).collect(),
        idle: Vec::with_capacity(cfg.connections),
        workload,
        stats: Stats::default(),
        progress,
        start: Instant::now(),
        last_done: Instant::now(),
        inflight: 0,
        backoff: Vec::new(),
        failing_since: None,
    };
    let warm = if cfg.connection == Connection::KeepAlive {
        w.warm_up()
    } else {
        Ok(())
    };
    // Every worker reaches the barrier, even one whose warm-up failed, so none waits forever.
    barrier.wait();
    warm?;
    w.start = Instant::now();
    w.last_done = w.start;
    w.idle = (0..cfg.connections).rev().collect();
    w.timed()
}

impl Worker<'_> {
    fn warm_up(&mut self) -> Result<(), Error> {
        for i in 0..self.conns.len() {
            self.progress.connects.fetch_add(1, Ordering::Relaxed);
            self.conns[i]
                .open(Token(i), &self.poll, self.cfg)
                .map_err(|k| Error::Protocol(format!("opening connection {i}: {k}")))?;
        }
        let end = Instant::now() + WARM_UP;
        let mut events = Events::with_capacity(1024);
        while !self.conns.iter().all(Conn::is_ready) {
            if Instant::now() > end {
                return Err(Error::Protocol(format!(
                    "connections to {} not ready within {WARM_UP:?}",
                    self.cfg.target.addr
                )));
            }
            self.poll
                .poll(&mut events, Some(TICK))
                .map_err(|e| Error::io("polling", e))?;
            for ev in events.iter() {
                let i = ev.token().0;
                if let Some(c) = self.conns.get_mut(i)
                    && let Err(k) = c.ready(read_closed(ev))
                {
                    return Err(Error::Protocol(format!("connection {i}: {k}")));
                }
            }
        }
        Ok(())
    }

    fn timed(mut self) -> Result<WorkerResult, Error> {
        let cfg = self.cfg;
        let deadline = cfg.duration.map(|d| self.start + d);
        let mut events = Events::with_capacity(1024);
        let mut sent: u64 = 0;
        let mut issuing = true;
        let mut pool_exhausted = false;
        let mut out = Vec::with_capacity(4096);
        let mut next_timeout_scan = self.start;
        loop {
            let now = Instant::now();
            if let Some(since) = self.failing_since
                && now.duration_since(since) >= cfg.give_up
            {
                return Err(Error::Protocol(format!(
                    "giving up: no connection to {} succeeded for {:?} ({} connection attempts in this run); is the server running?",
                    cfg.target.addr,
                    cfg.give_up,
                    self.progress.connects.load(Ordering::Relaxed)
                )));
            }
            // Slots whose backoff is over may connect again.
            let mut i = 0;
            while i < self.backoff.len() {
                if self.backoff[i].0 <= now {
                    let (_, slot) = self.backoff.swap_remove(i);
                    self.idle.push(slot);
                } else {
                    i += 1;
                }
            }
            // Dispatch.
            while issuing && let Some(&slot) = self.idle.last() {
                if cfg.budget.is_some_and(|b| sent >= b) || deadline.is_some_and(|d| now >= d) {
                    issuing = false;
                    break;
                }
                let intended = match cfg.rate {
                    None => now,
                    Some(rate) => {
                        let due = self.start + rate.due(sent);
                        if due > now {
                            break;
                        }
                        due
                    }
                };
                out.clear();
                let tag = match self.workload.next(&mut out)? {
                    Ok(tag) => tag,
                    Err(Pause::Busy) => break,
                    Err(Pause::PoolExhausted) => {
                        pool_exhausted = true;
                        issuing = false;
                        break;
                    }
                };
                self.idle.pop();
                sent += 1;
                self.inflight += 1;
                let conn = &mut self.conns[slot];
                let opened = if conn.is_open() {
                    Ok(())
                } else {
                    self.progress.connects.fetch_add(1, Ordering::Relaxed);
                    conn.open(Token(slot), &self.poll, cfg)
                };
                conn.inflight = Some(InFlight {
                    tag,
                    intended,
                    deadline: now + cfg.timeout,
                });
                if let Err(kind) = opened.and_then(|()| conn.send(&out)) {
                    self.fail(slot, kind);
                }
            }
            if !issuing && self.inflight == 0 {
                break;
            }
            // Sleep until the next due request, the deadline, the end of a backoff, or a tick.
            let mut wait = TICK;
            if let Some(&(at, _)) = self.backoff.iter().min_by_key(|(at, _)| *at) {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if issuing {
                if let (Some(rate), false) = (cfg.rate, self.idle.is_empty()) {
                    let due = self.start + rate.due(sent);
                    wait = wait.min(due.saturating_duration_since(now));
                }
                if let Some(d) = deadline {
                    wait = wait.min(d.saturating_duration_since(now));
                }
            }
            self.poll
                .poll(&mut events, Some(wait))
                .map_err(|e| Error::io("polling", e))?;
            for ev in events.iter() {
                self.on_ready(ev.token().0, read_closed(ev));
            }
            let now = Instant::now();
            if now >= next_timeout_scan {
                next_timeout_scan = now + TICK;
                for slot in 0..self.conns.len() {
                    if self.conns[slot].inflight.is_some_and(|f| now >= f.deadline) {
                        self.fail(slot, ErrorKind::Timeout);
                    }
                }
            }
        }
        let unsent = match (cfg.rate, deadline) {
            (Some(rate), Some(d)) if !pool_exhausted => {
                let span = d.saturating_duration_since(self.start).as_secs_f64();
                let due = (span * rate.per_second / rate.of as f64).floor() as u64;
                due.saturating_sub(sent)
            }
            _ => 0,
        };
        for slot in 0..self.conns.len() {
            self.conns[slot].close(&self.poll);
        }
        Ok(WorkerResult {
            elapsed: self.last_done.saturating_duration_since(self.start),
            stats: self.stats,
            workload: self.workload,
            unsent,
            pool_exhausted,
        })
    }

    fn on_ready(&mut self, slot: usize, read_closed: bool) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let result = conn.ready(read_closed);
        if result.is_ok() && conn.connected {
            conn.failures = 0;
            self.failing_since = None;
        }
        match result {
            Ok(Read::Nothing) => {}
            Ok(Read::IdleClose) => conn.close(&self.poll),
            Ok(Read::Response(resp)) => {
                let Some(f) = conn.inflight.take() else {
                    return;
                };
                if resp.closes || self.cfg.connection == Connection::Close {
                    conn.close(&self.poll);
                }
                self.failing_since = None;
                let verdict = self.workload.complete(f.tag, Some(&resp));
                self.finish(slot, f, true, verdict);
            }
            Err(kind) => self.fail(slot, kind),
        }
    }

    /// The connection in `slot` failed: its request (if any) is an error of `kind`. A slot
    /// that could not connect waits out a backoff before it is used again.
    fn fail(&mut self, slot: usize, kind: ErrorKind) {
        let conn = &mut self.conns[slot];
        conn.close(&self.poll);
        let retry_at = (kind == ErrorKind::Connect).then(|| {
            conn.failures = conn.failures.saturating_add(1);
            let now = Instant::now();
            self.failing_since.get_or_insert(now);
            now + backoff(conn.failures)
        });
        if let Some(f) = conn.inflight.take() {
            let _ = self.workload.complete(f.tag, None);
            self.finish(slot, f, false, Some(kind));
            if let Some(at) = retry_at {
                // `finish` made the slot idle: it waits instead.
                if let Some(pos) = self.idle.iter().rposition(|&s| s == slot) {
                    self.idle.remove(pos);
                }
                self.backoff.push((at, slot));
            }
        }
    }

    fn finish(&mut self, slot: usize, f: InFlight, responded: bool, error: Option<ErrorKind>) {
        let now = Instant::now();
        if error.is_some() {
            self.progress.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.progress.done.fetch_add(1, Ordering::Relaxed);
        self.stats.record(
            now.saturating_duration_since(self.start),
            now.saturating_duration_since(f.intended),
            responded,
            error,
        );
        self.last_done = now;
        self.inflight -= 1;
        self.idle.push(slot);
    }
}

/// The wait before a slot's next connection attempt after `failures` failed ones in a row.
fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), BACKOFF_FIRST);
        assert_eq!(backoff(2), BACKOFF_FIRST * 2);
        assert_eq!(backoff(4), BACKOFF_FIRST * 8);
        assert_eq!(backoff(8), BACKOFF_CAP);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn open_loop_schedules_interleave_across_workers() {
        let r = |index| Rate {
            per_second: 1000.0,
            index,
            of: 2,
        };
        // Worker 0 takes global requests 0, 2, 4…; worker 1 takes 1, 3, 5…: 1 ms apart.
        assert_eq!(r(0).due(0), Duration::ZERO);
        assert_eq!(r(1).due(0), Duration::from_millis(1));
        assert_eq!(r(0).due(1), Duration::from_millis(2));
        assert_eq!(r(1).due(5), Duration::from_millis(11));
    }
}
