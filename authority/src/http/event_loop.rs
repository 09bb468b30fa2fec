//! The event loops: one thread and one `mio::Poll` per loop, each accepting its share of
//! connections from a clone of the same listening socket.
//!
//! Shaped like mio's `examples/tcp_server.rs`: `LISTENER` and `WAKER` tokens, a slab of
//! connections, accept until `WouldBlock`, retry on `Interrupted`. Deadlines live in a per-loop
//! ordered set that sets the `poll` timeout, so there is no timer thread.
//!
//! Admission sheds the attacker before the client: silent and idle connections sit in a
//! second ordered set, oldest first, and are the ones closed when a new connection needs room
//! (connection limit, or the process out of file descriptors); a busy connection is never
//! closed to admit another.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use super::Limits;
use super::admission::Admission;
use super::conn::{Admitted, Connection, Env, Status};
use super::date::DateCache;
use super::handler::{Completed, LoopHandle};
use super::metrics::{CloseReason, Metrics};
use super::router::Router;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection `i` of the slab is `Token(i + FIRST_CONN)`.
const FIRST_CONN: usize = 2;
/// How long accepting pauses after the process runs out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Idle connections one failed `accept` may close to free a descriptor before it pauses
/// instead (another thread may take each freed descriptor first; never spin).
const EVICT_PER_ACCEPT_ERROR: usize = 4;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Event loops (threads). Default: one per core.
    pub threads: usize,
    pub limits: Limits,
    /// `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Longest time in-flight requests may take to finish after shutdown is requested.
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            limits: Limits::default(),
            tls: None,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    listener: std::net::TcpListener,
    config: ServerConfig,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
}

/// State every loop shares.
struct Shared {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    drain_timeout: Duration,
    shutdown: Arc<AtomicBool>,
    admission: Arc<Admission>,
}

impl Server {
    /// Binds the listening socket. `router` gets its route labels registered in `metrics`.
    pub fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        router: Router,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        Self::from_listener(std::net::TcpListener::bind(addr)?, config, router, metrics)
    }

    /// Like [`Server::bind`], on a socket the caller bound (before doing anything it would
    /// have to undo if the address is taken).
    pub fn from_listener(
        listener: std::net::TcpListener,
        config: ServerConfig,
        router: Router,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        metrics.init_routes(router.labels());
        Ok(Self {
            listener,
            config,
            router: Arc::new(router),
            metrics,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts the event loop threads.
    pub fn start(self) -> io::Result<RunningServer> {
        let shutdown = Arc::new(AtomicBool::new(false));
        let admission = Arc::new(Admission::new(&self.config.limits));
        self.metrics.watch_body_buffer(admission.bodies.clone());
        let shared = Arc::new(Shared {
            router: self.router,
            metrics: self.metrics,
            admission,
            limits: self.config.limits,
            tls: self.config.tls,
            drain_timeout: self.config.drain_timeout,
            shutdown: shutdown.clone(),
        });
        let mut loops = Vec::new();
        for _ in 0..self.config.threads.max(1) {
            let listener = mio::net::TcpListener::from_std(self.listener.try_clone()?);
            loops.push(EventLoop::new(listener, shared.clone())?);
        }
        let wakers: Arc<[Arc<Waker>]> = loops.iter().map(|l| l.env.handle.waker.clone()).collect();
        let mut threads = Vec::new();
        for (i, mut l) in loops.into_iter().enumerate() {
            threads.push(
                std::thread::Builder::new()
                    .name(format!("latchkey-loop-{i}"))
                    .spawn(move || {
                        if let Err(e) = l.run() {
                            tracing::error!(error = %e, "event loop failed");
                        }
                    })?,
            );
        }
        Ok(RunningServer {
            shutdown: ShutdownHandle {
                flag: shutdown,
                wakers,
            },
            threads,
        })
    }
}

/// The running loops.
#[derive(Debug)]
pub struct RunningServer {
    shutdown: ShutdownHandle,
    threads: Vec<JoinHandle<()>>,
}

impl RunningServer {
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits until every loop has exited (after `ShutdownHandle::shutdown` and draining).
    pub fn wait(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("an event loop thread panicked");
            }
        }
    }
}

/// Asks all loops to stop accepting, finish in-flight requests and exit.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    wakers: Arc<[Arc<Waker>]>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        for w in self.wakers.iter() {
            if let Err(e) = w.wake() {
                tracing::error!(error = %e, "could not wake event loop for shutdown");
            }
        }
    }
}

struct EventLoop {
    poll: Poll,
    listener: Option<mio::net::TcpListener>,
    /// What its connections share: built once, here.
    env: Env,
    completions: crossbeam::channel::Receiver<Completed>,
    conns: Vec<Option<Connection>>,
    free: Vec<usize>,
    /// (deadline, slab index, generation), earliest first.
    timers: BTreeSet<(Instant, usize, u64)>,
    /// (idle since, slab index, generation) of silent and idle connections, oldest first:
    /// the ones closed when room is needed.
    idle: BTreeSet<(Instant, usize, u64)>,
    /// Connections that stopped early with work left.
    again: Vec<usize>,
    shared: Arc<Shared>,
    next_generation: u64,
    accept_paused_until: Option<Instant>,
    accept_failing: bool,
    drain_deadline: Option<Instant>,
}

impl EventLoop {
    fn new(mut listener: mio::net::TcpListener, shared: Arc<Shared>) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, completions) = crossbeam::channel::unbounded();
        Ok(Self {
            poll,
            listener: Some(listener),
            env: Env {
                router: Arc::clone(&shared.router),
                metrics: Arc::clone(&shared.metrics),
                limits: shared.limits.clone(),
                admission: Arc::clone(&shared.admission),
                handle: LoopHandle {
                    tx,
                    waker,
                    refuse: shared.router.refusals(),
                },
                date: DateCache::default(),
                clock: Instant::now,
            },
            completions,
            conns: Vec::new(),
            free: Vec::new(),
            timers: BTreeSet::new(),
            idle: BTreeSet::new(),
            again: Vec::new(),
            shared,
            next_generation: 0,
            accept_paused_until: None,
            accept_failing: false,
            drain_deadline: None,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => {
                        if self.accept_paused_until.is_none() {
                            self.accept(now);
                        }
                    }
                    WAKER => self.take_completions(now),
                    Token(t) => {
                        let idx = t - FIRST_CONN;
                        let closed = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || closed;
                        if let Some(Some(conn)) = self.conns.get_mut(idx) {
                            conn.on_event(readable, closed);
                        }
                        self.drive(idx, now);
                    }
                }
            }
            for idx in std::mem::take(&mut self.again) {
                self.drive(idx, now);
            }
            self.fire_timers(now);
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                self.accept(now);
            }
            if self.shared.shutdown.load(Ordering::SeqCst) && self.drain_deadline.is_none() {
                self.begin_drain(now);
            }
            if let Some(deadline) = self.drain_deadline
                && (self.conns.iter().all(Option::is_none) || now >= deadline)
            {
                let left = self.conns.iter().filter(|c| c.is_some()).count();
                if left > 0 {
                    tracing::warn!(
                        connections = left,
                        "drain timeout: closing remaining connections"
                    );
                }
                for idx in 0..self.conns.len() {
                    self.close(idx, CloseReason::Shutdown);
                }
                return Ok(());
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = [
            self.timers.first().map(|t| t.0),
            self.accept_paused_until,
            self.drain_deadline,
        ]
        .into_iter()
        .flatten()
        .min()?;
        // Round up so the loop wakes after the deadline, not a hair before it.
        Some(next.saturating_duration_since(now) + Duration::from_millis(1))
    }

    fn accept(&mut self, now: Instant) {
        let mut evictions_left = EVICT_PER_ACCEPT_ERROR;
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the backlog.
                    // An idle connection gives its descriptor to the waiting one; with none
                    // idle, keep serving what we have and try again shortly (never spin).
                    self.shared.metrics.accept_error();
                    if !self.accept_failing {
                        if let Some(held_back) = self.shared.admission.logs.accept_error.allow(now)
                        {
                            tracing::warn!(error = %e, held_back, "accept failed (out of file descriptors?); closing idle connections or pausing accepts");
                        }
                        self.accept_failing = true;
                    }
                    if evictions_left > 0 && self.evict_oldest_idle(now) {
                        evictions_left -= 1;
                        continue;
                    }
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            };
            if self.accept_failing {
                tracing::info!("accepting connections again");
                self.accept_failing = false;
            }
            let admission = &self.shared.admission;
            let Some(source) = admission.sources.try_admit(peer.ip()) else {
                self.shared
                    .metrics
                    .connection_refused(CloseReason::SourceLimit);
                if let Some(held_back) = admission.logs.source_limit.allow(now) {
                    tracing::warn!(%peer, held_back, limit = self.shared.limits.max_connections_per_source, "connections per source address reached; closing new connections from it");
                }
                continue;
            };
            let connection = match admission.connections.try_take() {
                Some(slot) => slot,
                None => {
                    // Full: the oldest idle connection of this loop makes room.
                    let slot = if self.evict_oldest_idle(now) {
                        self.shared.admission.connections.try_take()
                    } else {
                        None
                    };
                    let admission = &self.shared.admission;
                    match slot {
                        Some(slot) => slot,
                        None => {
                            self.shared
                                .metrics
                                .connection_refused(CloseReason::ConnectionLimit);
                            if let Some(held_back) = admission.logs.connection_limit.allow(now) {
                                tracing::warn!(%peer, held_back, limit = self.shared.limits.max_connections, "connection limit reached with no idle connection to close; closing new connections");
                            }
                            continue;
                        }
                    }
                }
            };
            let admitted = Admitted {
                _connection: connection,
                _source: source,
            };
            let tls = match &self.shared.tls {
                None => None,
                Some(config) => match rustls::ServerConnection::new(config.clone()) {
                    Ok(session) => Some(session),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot create TLS session");
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let idx = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            let token = Token(idx + FIRST_CONN);
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::error!(error = %e, "cannot register connection");
                self.free.push(idx);
                continue;
            }
            self.next_generation += 1;
            let conn = Connection::new(stream, peer, idx, self.next_generation, tls, admitted, now);
            self.shared.metrics.connection_opened();
            tracing::trace!(%peer, "accepted");
            self.conns[idx] = Some(conn);
            self.reschedule(idx);
        }
    }

    /// Closes this loop's connection that has been silent or idle the longest; false if none
    /// is.
    fn evict_oldest_idle(&mut self, now: Instant) -> bool {
        let Some(&(_, idx, _)) = self.idle.first() else {
            return false;
        };
        if let Some(held_back) = self.shared.admission.logs.evicted.allow(now) {
            tracing::info!(
                held_back,
                "closing the oldest idle connections to make room for new ones"
            );
        }
        self.close(idx, CloseReason::Evicted);
        true
    }

    fn take_completions(&mut self, now: Instant) {
        while let Ok(done) = self.completions.try_recv() {
            let idx = done.token;
            let status = match self.conns.get_mut(idx) {
                Some(Some(conn)) if conn.generation == done.generation => {
                    conn.complete(done.seq, done.response, &mut self.env, now)
                }
                // The connection went away (client closed, timeout): nobody to answer.
                _ => continue,
            };
            self.after(idx, status);
        }
    }

    fn drive(&mut self, idx: usize, now: Instant) {
        let Some(Some(conn)) = self.conns.get_mut(idx) else {
            return;
        };
        let status = conn.drive(&mut self.env, now);
        self.after(idx, status);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, idx, generation)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let status = match self.conns.get_mut(idx) {
                Some(Some(conn)) if conn.generation == generation && conn.scheduled == Some(at) => {
                    conn.scheduled = None;
                    conn.on_timeout(&mut self.env, now)
                }
                _ => continue,
            };
            self.after(idx, status);
        }
    }

    /// Applies what a connection reported: close it, or re-arm its timer.
    fn after(&mut self, idx: usize, status: Status) {
        match status {
            Status::Done(reason) => self.close(idx, reason),
            Status::Open { more } => {
                if more && !self.again.contains(&idx) {
                    self.again.push(idx);
                }
                self.reschedule(idx);
            }
        }
    }

    fn reschedule(&mut self, idx: usize) {
        let Some(Some(conn)) = self.conns.get_mut(idx) else {
            return;
        };
        let next = conn.deadline(&self.shared.limits);
        if next != conn.scheduled {
            if let Some(old) = conn.scheduled {
                self.timers.remove(&(old, idx, conn.generation));
            }
            if let Some(t) = next {
                self.timers.insert((t, idx, conn.generation));
            }
            conn.scheduled = next;
        }
        let idle = conn.idle_since();
        if idle != conn.idle_key {
            if let Some(old) = conn.idle_key {
                self.idle.remove(&(old, idx, conn.generation));
            }
            if let Some(t) = idle {
                self.idle.insert((t, idx, conn.generation));
            }
            conn.idle_key = idle;
        }
    }

    fn close(&mut self, idx: usize, reason: CloseReason) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(Option::take) else {
            return;
        };
        if let Some(t) = conn.scheduled {
            self.timers.remove(&(t, idx, conn.generation));
        }
        if let Some(t) = conn.idle_key {
            self.idle.remove(&(t, idx, conn.generation));
        }
        let _ = self.poll.registry().deregister(&mut conn.socket);
        self.shared.metrics.connection_closed(reason);
        tracing::debug!(peer = %conn.peer, reason = reason.label(), "connection closed");
        self.free.push(idx);
    }

    fn begin_drain(&mut self, now: Instant) {
        // Clients whose connections wait in the backlog connected before the signal: take
        // them in and serve what they sent, rather than let closing the listener reset them.
        self.accept(now);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.drain_deadline = Some(now + self.shared.drain_timeout);
        for idx in 0..self.conns.len() {
            if let Some(Some(conn)) = self.conns.get_mut(idx) {
                conn.begin_drain();
                self.drive(idx, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::http::{Outcome, Request, RequestContext, Response};

    /// Answers after `ms` milliseconds from another thread, like the store writer does.
    fn slow(req: &Request<'_>, ctx: &RequestContext<'_>) -> Outcome {
        let ms: u64 = req.param("ms").and_then(|m| m.parse().ok()).unwrap_or(0);
        let completion = ctx.defer();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            completion.complete(Response::text(200, "text/plain", format!("slow {ms}")));
        });
        Outcome::Deferred
    }

    fn fast(_: &Request<'_>, _: &RequestContext<'_>) -> Outcome {
        Response::text(200, "text/plain", "fast").into()
    }

    /// Parks the request until the test releases it.
    static GATE: std::sync::Mutex<Vec<crate::http::Completion>> = std::sync::Mutex::new(Vec::new());

    fn gated(_: &Request<'_>, ctx: &RequestContext<'_>) -> Outcome {
        GATE.lock().unwrap().push(ctx.defer());
        Outcome::Deferred
    }

    fn abandoned(_: &Request<'_>, ctx: &RequestContext<'_>) -> Outcome {
        let completion = ctx.defer();
        std::thread::spawn(move || drop(completion));
        Outcome::Deferred
    }

    fn start() -> (SocketAddr, RunningServer) {
        start_with(Limits::default())
    }

    fn start_with(limits: Limits) -> (SocketAddr, RunningServer) {
        let mut router = Router::new(crate::http::testing::refusal);
        router
            .get("/slow/{ms}", slow)
            .get("/fast", fast)
            .get("/abandoned", abandoned)
            .get("/gated", gated);
        let config = ServerConfig {
            threads: 1,
            limits,
            ..ServerConfig::default()
        };
        let server = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            config,
            router,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        (addr, server.start().unwrap())
    }

    /// Reads until `n` complete answers (bodies are short, Content-Length framed) have arrived.
    fn bodies(stream: &mut TcpStream, n: usize) -> Vec<String> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while out.len() < n {
            let mut chunk = [0u8; 4096];
            let got = stream.read(&mut chunk).unwrap();
            assert!(got > 0, "closed early");
            buf.extend_from_slice(&chunk[..got]);
            loop {
                let text = String::from_utf8_lossy(&buf).into_owned();
                let Some(end) = text.find("\r\n\r\n") else {
                    break;
                };
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if buf.len() < end + 4 + len {
                    break;
                }
                let status = &text[9..12];
                out.push(format!("{status} {}", &text[end + 4..end + 4 + len]));
                buf.drain(..end + 4 + len);
            }
        }
        out
    }

    #[test]
    fn deferred_answers_keep_pipelined_order() {
        let (addr, running) = start();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(
            b"GET /slow/300 HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /slow/10 HTTP/1.1\r\nHost: t\r\n\r\nGET /abandoned HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /fast HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
        let got = bodies(&mut c, 5);
        assert_eq!(got[..3], ["200 slow 300", "200 fast", "200 slow 10"]);
        assert!(got[3].starts_with("500 "), "{}", got[3]);
        assert_eq!(got[4], "200 fast");

        // While one connection waits on a deferred answer, the loop serves others.
        let mut waiting = TcpStream::connect(addr).unwrap();
        waiting
            .write_all(b"GET /gated HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut other = TcpStream::connect(addr).unwrap();
        other
            .write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(bodies(&mut other, 1), ["200 fast"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let parked = loop {
            if let Some(c) = GATE.lock().unwrap().pop() {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "gated request never reached its handler"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        parked.complete(Ok(Response::text(200, "text/plain", "released")));
        assert_eq!(bodies(&mut waiting, 1), ["200 released"]);

        running.shutdown_handle().shutdown();
        running.wait();
    }

    #[test]
    fn a_half_closed_client_gets_its_answer_and_the_close_at_once() {
        // Guards `http::drain`: the request and the client's FIN arrive together, so the read
        // that takes the request is short. Taking that as "drained" would leave the queued EOF
        // unread until the idle timeout (a minute here), with no new event to announce it.
        let minute = Duration::from_secs(60);
        let (addr, running) = start_with(Limits {
            idle_timeout: minute,
            request_head_timeout: minute,
            ..Limits::default()
        });
        for _ in 0..20 {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut all = Vec::new();
            c.read_to_end(&mut all)
                .expect("the server closes after answering a half-closed client");
            let text = String::from_utf8_lossy(&all);
            assert!(
                text.starts_with("HTTP/1.1 200") && text.ends_with("fast"),
                "{text}"
            );
        }
        running.shutdown_handle().shutdown();
        running.wait();
    }

    #[test]
    fn a_full_pipeline_resumes_when_deferred_answers_arrive() {
        // Regression: with the pipeline full of parked requests, buffered requests must be
        // parsed once answers drain, without a new readiness event.
        let (addr, running) = start_with(Limits {
            max_pipelined: 2,
            ..Limits::default()
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let mut all = Vec::new();
        for path in ["/slow/50", "/slow/20", "/fast", "/slow/5", "/fast", "/fast"] {
            all.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
        c.write_all(&all).unwrap();
        let got = bodies(&mut c, 6);
        assert_eq!(
            got,
            [
                "200 slow 50",
                "200 slow 20",
                "200 fast",
                "200 slow 5",
                "200 fast",
                "200 fast"
            ]
        );
        running.shutdown_handle().shutdown();
        running.wait();
    }
}
