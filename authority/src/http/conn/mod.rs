//! One connection: bytes in, whole requests to the router, answers out in request order.
//!
//! The protocol state is a `Phase` that moves by value (`Phase::step`), as rustls' handshake
//! states do; the connection around it owns the socket, the optional rustls session, the read
//! buffer, and the queue of answers (some still waiting for a deferred [`Completion`]). The
//! event loop calls `Connection::drive` on readiness, on completions and on timer expiry;
//! `drive` reports whether the connection is done.
//!
//! Sans-IO in the sense that matters for tests: the socket is any `Socket` and the time is
//! an argument, so every transition is tested with bytes in memory and a made-up clock.
//! `phase` holds the request-level state, `exchange` requests and answers, `tls` the
//! handshake's bookkeeping.
//!
//! [`Completion`]: super::handler::Completion

mod exchange;
mod phase;
mod tls;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use self::exchange::Answer;
use self::phase::Phase;
use self::tls::client_hello_ready;
use super::admission::{Admission, SlotGuard, Slots, SourceGuard};
use super::date::DateCache;
use super::drain::DrainTracker;
use super::handler::{LoopHandle, TlsInfo};
use super::metrics::{CloseReason, Metrics};
use super::response::Response;
use super::router::Router;
use super::{HttpError, Limits};

/// Stop reading while this much unparsed input is buffered.
const READ_CAP: usize = 64 * 1024;
/// The same while a body arrives: its bytes move to the body buffer (which the body budget
/// accounts for) after every read, so a bigger read buffer would only hold memory per
/// connection that no budget sees.
const BODY_READ_CAP: usize = 16 * 1024;
/// Stop parsing new requests while this much output waits for the client.
const OUT_HIGH: usize = 64 * 1024;
/// Read-parse-write rounds per `drive` before yielding to other connections.
const MAX_ROUNDS: usize = 16;
/// Reads remembered for latency (see `Connection::arrivals`).
const MAX_ARRIVALS: usize = 16;
/// After our last answer, how long we keep reading (and discarding) so the kernel does not
/// reset the connection and destroy that answer in the client's receive buffer.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes discarded while lingering before giving up.
const LINGER_BYTES: usize = 1024 * 1024;
/// When shutdown begins, how long a silent or idle connection may still send a request
/// before it is closed. A busy keep-alive client sends its next request within moments of
/// the last answer, which went out without `Connection: close`; closing its connection at
/// once would fail that request. This grace answers it (with `Connection: close`) instead.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Buffers larger than this are freed when a connection goes idle, so memory a large or
/// hostile request needed returns to the allocator instead of staying with the connection.
const IDLE_BUF_KEEP: usize = 4 * 1024;

/// What every connection of a loop shares. Built once per loop (the loop owns it); a
/// connection borrows it for each call.
pub(crate) struct Env {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub admission: Arc<Admission>,
    pub handle: LoopHandle,
    pub date: DateCache,
    /// Reads the time where a request's latency is measured (the loop's `now` is one
    /// reading per poll iteration; handlers run in between).
    pub clock: fn() -> Instant,
}

/// What a connection needs from its socket: bytes both ways, a look at unread bytes (a
/// ClientHello must be whole before it takes a handshake slot) and a half-close. The event
/// loop's sockets are mio's; the unit tests' are in memory.
pub(crate) trait Socket: Read + Write {
    fn peek(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Socket for TcpStream {
    fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::peek(self, buf)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// What a connection holds from admission for its whole life (given back on drop).
pub(crate) struct Admitted {
    pub _connection: SlotGuard,
    pub _source: SourceGuard,
}

/// What `drive` tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Keep the connection; `more` if it stopped early with work left (drive again soon).
    Open { more: bool },
    /// Close and forget the connection.
    Done(CloseReason),
}

pub(crate) struct Connection<S = TcpStream> {
    pub socket: S,
    /// This connection's index in its loop (where deferred answers are sent).
    token: usize,
    pub peer: SocketAddr,
    pub generation: u64,
    /// The timer entry the loop holds for this connection.
    pub scheduled: Option<Instant>,
    /// The entry the loop's idle set holds for this connection.
    pub idle_key: Option<Instant>,
    tls: Option<Box<rustls::ServerConnection>>,
    tls_info: Option<TlsInfo>,
    /// Held from the complete ClientHello to the end of the handshake (counts toward
    /// `max_tls_handshakes`).
    handshake_slot: Option<SlotGuard>,
    _admitted: Admitted,
    phase: Phase,
    read_buf: Vec<u8>,
    /// `(bytes still in read_buf, when they were read)` per read, oldest first: when a
    /// request's first byte was read is the front's time.
    arrivals: VecDeque<(usize, Instant)>,
    out: Vec<u8>,
    out_pos: usize,
    queue: VecDeque<Answer>,
    next_seq: u64,
    requests: u64,
    /// The socket may have unread bytes (mio is edge-triggered: true until a read shows it
    /// drained, see [`DrainTracker`]).
    readable: bool,
    /// The last event said the peer half-closed: read until EOF, whatever read sizes say.
    read_closed: bool,
    peer_eof: bool,
    draining: bool,
    /// Since when output has been waiting for the client.
    write_since: Option<Instant>,
    /// Since when the connection has had nothing to do (for the idle timeout).
    idle_since: Instant,
}

impl<S: Socket> Connection<S> {
    pub fn new(
        socket: S,
        peer: SocketAddr,
        token: usize,
        generation: u64,
        tls: Option<rustls::ServerConnection>,
        admitted: Admitted,
        now: Instant,
    ) -> Self {
        let (tls, phase) = match tls {
            Some(session) => (Some(Box::new(session)), Phase::Hello { since: now }),
            None => (None, Phase::Idle),
        };
        Self {
            socket,
            token,
            peer,
            generation,
            scheduled: None,
            idle_key: None,
            tls,
            tls_info: None,
            handshake_slot: None,
            _admitted: admitted,
            phase,
            read_buf: Vec::new(),
            arrivals: VecDeque::new(),
            out: Vec::new(),
            out_pos: 0,
            queue: VecDeque::new(),
            next_seq: 0,
            requests: 0,
            readable: true,
            read_closed: false,
            peer_eof: false,
            draining: false,
            write_since: None,
            idle_since: now,
        }
    }

    /// Called on readiness events: remembers that the socket may be readable again, and
    /// whether the peer has closed its side (then the EOF is already queued behind the data).
    pub fn on_event(&mut self, readable: bool, read_closed: bool) {
        self.readable |= readable;
        self.read_closed |= read_closed;
    }

    /// Does all the work that can be done now without blocking.
    pub fn drive(&mut self, env: &mut Env, now: Instant) -> Status {
        for _ in 0..MAX_ROUNDS {
            let mut progress = false;
            if let Phase::Lingering { .. } = self.phase {
                return self.linger(now);
            }
            if self.may_read(&env.limits) {
                match self.fill(&env.admission.handshakes, env.clock) {
                    Ok(0) => {}
                    Ok(_) => progress = true,
                    Err(Fatal::Eof) => {
                        self.peer_eof = true;
                        if !matches!(self.phase, Phase::Closing { .. }) {
                            self.phase = Phase::Closing {
                                reason: CloseReason::Client,
                            };
                        }
                    }
                    Err(Fatal::Tls) => {
                        // Let rustls' alert go out before closing; ignore errors, we are done.
                        let _ = self.flush();
                        return Status::Done(self.tls_failure(&env.metrics));
                    }
                    Err(Fatal::Io) => return Status::Done(CloseReason::Io),
                    Err(Fatal::HandshakeLimit) => {
                        if let Some(held_back) = env.admission.logs.handshake_limit.allow(now) {
                            tracing::warn!(
                                peer = %self.peer,
                                held_back,
                                "TLS handshake limit reached; closing connections whose ClientHello finds no slot"
                            );
                        }
                        return Status::Done(CloseReason::HandshakeLimit);
                    }
                }
            }
            if let Phase::Hello { .. } = self.phase
                && self.handshake_slot.is_some()
            {
                self.phase = Phase::Handshake { since: now };
            }
            if self.handshake_slot.is_some()
                && self.tls.as_ref().is_some_and(|t| !t.is_handshaking())
            {
                self.finish_handshake(&env.metrics, now);
                progress = true;
            }
            let was_blocked = self.backpressured(&env.limits);
            progress |= self.process(env, now);
            self.move_answers(env, now);
            if self.flush().is_err() {
                return Status::Done(CloseReason::Io);
            }
            // Answers or output drained below the bounds: buffered requests can go on (no new
            // readiness event will come for bytes we already hold).
            progress |= was_blocked && !self.backpressured(&env.limits);
            if self.output_pending() {
                self.write_since.get_or_insert(now);
            } else {
                self.write_since = None;
            }
            // Shutting down: a connection that holds no request once its socket is read dry,
            // and has been quiet for the grace, has nothing to finish. (`readable` stays set
            // until a read shows the socket empty, so a request that arrived is answered.)
            if self.draining
                && !self.readable
                && self.idle_since().is_some_and(|t| now >= t + DRAIN_GRACE)
            {
                self.phase = Phase::Closing {
                    reason: CloseReason::Shutdown,
                };
            }
            if let Phase::Closing { reason } = self.phase
                && self.queue.is_empty()
                && !self.output_pending()
            {
                return self.start_linger(reason, now);
            }
            if !progress {
                self.release_idle_buffers();
                return Status::Open { more: false };
            }
        }
        Status::Open { more: true }
    }

    /// When the connection may be closed to make room: since when it has been silent (no
    /// ClientHello) or idle between requests. `None` while it has work in progress.
    pub fn idle_since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Hello { since } => Some(since),
            _ if self.is_idle() => Some(self.idle_since),
            _ => None,
        }
    }

    /// Gives large buffers back to the allocator once nothing is in them.
    fn release_idle_buffers(&mut self) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > IDLE_BUF_KEEP {
            self.read_buf = Vec::new();
        }
        if self.out.is_empty() && self.out.capacity() > IDLE_BUF_KEEP {
            self.out = Vec::new();
        }
    }

    /// The next deadline of this connection.
    pub fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let mut d = self.phase.deadline(limits).map(|(t, _)| t);
        if let Some(since) = self.write_since {
            d = min_opt(d, Some(since + limits.write_timeout));
        }
        if self.is_idle() {
            d = min_opt(d, Some(self.idle_since + self.idle_limit(limits)));
        }
        if self.draining {
            d = min_opt(d, self.idle_since().map(|t| t + DRAIN_GRACE));
        }
        d
    }

    /// Handles an expired deadline; `Done` if the connection must go now.
    pub fn on_timeout(&mut self, env: &mut Env, now: Instant) -> Status {
        if let Some(since) = self.write_since
            && now >= since + env.limits.write_timeout
        {
            return Status::Done(CloseReason::WriteTimeout);
        }
        if self.is_idle() && now >= self.idle_since + self.idle_limit(&env.limits) {
            // Silent from the start: the hello timeout, whatever the transport.
            if self.requests == 0 && self.idle_limit(&env.limits) == env.limits.hello_timeout {
                if let Some(held_back) = env.admission.logs.hello_timeout.allow(now) {
                    tracing::info!(peer = %self.peer, held_back, "closing connections that sent no request in time");
                }
                return Status::Done(CloseReason::HelloTimeout);
            }
            return Status::Done(CloseReason::IdleTimeout);
        }
        if self.draining && self.idle_since().is_some_and(|t| now >= t + DRAIN_GRACE) {
            // `drive` reads what may have come, answers it, or closes.
            self.readable = true;
            return self.drive(env, now);
        }
        match self.phase.deadline(&env.limits) {
            Some((t, reason)) if now >= t => match reason {
                CloseReason::HandshakeTimeout => {
                    env.metrics.tls_handshake_failed();
                    Status::Done(reason)
                }
                CloseReason::HeadTimeout | CloseReason::BodyTimeout => {
                    if reason == CloseReason::BodyTimeout
                        && let Some(held_back) = env.admission.logs.body_timeout.allow(now)
                    {
                        tracing::info!(peer = %self.peer, held_back, "request body not received in time; answering 408");
                    }
                    self.refuse(env, HttpError::Timeout, reason, now);
                    self.drive(env, now)
                }
                CloseReason::HelloTimeout => {
                    if let Some(held_back) = env.admission.logs.hello_timeout.allow(now) {
                        tracing::info!(peer = %self.peer, held_back, "closing connections that sent no ClientHello in time");
                    }
                    Status::Done(reason)
                }
                other => Status::Done(other),
            },
            _ => Status::Open { more: false },
        }
    }

    /// A deferred answer arrived.
    pub fn complete(
        &mut self,
        seq: u64,
        response: Response,
        env: &mut Env,
        now: Instant,
    ) -> Status {
        if let Some(a) = self
            .queue
            .iter_mut()
            .find(|a| a.seq == seq && a.response.is_none())
        {
            a.response = Some(response);
            a.answered = (env.clock)();
        }
        self.drive(env, now)
    }

    /// Graceful shutdown: answer every request received (the last answer says
    /// `Connection: close`), then close. Handshakes under way finish, since their client has
    /// already sent something; silent and idle connections close once a read shows their
    /// socket holds nothing and `DRAIN_GRACE` has passed.
    pub fn begin_drain(&mut self) {
        self.draining = true;
        // Bytes may have arrived since the last event was handled: look before closing.
        self.readable = true;
    }

    /// A connection that has not sent its first request gets only the hello timeout: holding
    /// sockets open without a word is the cheapest slowloris.
    fn idle_limit(&self, limits: &Limits) -> Duration {
        if self.requests == 0 {
            limits
                .idle_timeout
                .min(limits.request_head_timeout)
                .min(limits.hello_timeout)
        } else {
            limits.idle_timeout
        }
    }

    fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle)
            && self.read_buf.is_empty()
            && self.queue.is_empty()
            && !self.output_pending()
    }

    /// Too many answers pending or too much output queued to take more requests.
    fn backpressured(&self, limits: &Limits) -> bool {
        self.queue.len() >= limits.max_pipelined || self.out.len() - self.out_pos >= OUT_HIGH
    }

    fn may_read(&self, limits: &Limits) -> bool {
        self.readable
            && !self.peer_eof
            && !matches!(self.phase, Phase::Closing { .. })
            && self.read_buf.len() < READ_CAP
            && !self.backpressured(limits)
    }

    /// Reads plaintext into `read_buf` until the socket would block or the buffer is full.
    /// Returns the bytes added.
    fn fill(&mut self, handshakes: &Slots, clock: fn() -> Instant) -> Result<usize, Fatal> {
        let mut chunk = [0u8; 16 * 1024];
        let mut total = 0;
        let cap = match self.phase {
            Phase::Body { .. } => BODY_READ_CAP,
            _ => READ_CAP,
        };
        while self.read_buf.len() < cap {
            let room = (cap - self.read_buf.len()).min(chunk.len());
            match self.read_plain(&mut chunk[..room], handshakes) {
                Ok(0) => {
                    return if total > 0 {
                        Ok(total)
                    } else {
                        Err(Fatal::Eof)
                    };
                }
                Ok(n) => {
                    self.read_buf.extend_from_slice(&chunk[..n]);
                    self.arrived(n, clock());
                    total += n;
                }
                Err(ReadErr::WouldBlock) => break,
                Err(ReadErr::Fatal(f)) => {
                    return if total > 0 && f == Fatal::Eof {
                        Ok(total)
                    } else {
                        Err(f)
                    };
                }
            }
        }
        Ok(total)
    }

    /// Notes that `n` bytes were just read at `at`. A bounded record: past `MAX_ARRIVALS`
    /// reads, later bytes count as read with the newest entry (a request that dribbles in
    /// reads as started earlier, never later).
    fn arrived(&mut self, n: usize, at: Instant) {
        let full = self.arrivals.len() >= MAX_ARRIVALS;
        match self.arrivals.back_mut() {
            Some(last) if full => last.0 += n,
            _ => self.arrivals.push_back((n, at)),
        }
    }

    /// Forgets the record of `n` bytes taken from the front of `read_buf`.
    pub(super) fn consumed(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.arrivals.front_mut() else {
                return;
            };
            if front.0 > n {
                front.0 -= n;
                return;
            }
            n -= front.0;
            self.arrivals.pop_front();
        }
    }

    /// When `read_buf[0]` was read (`now` if nothing is buffered).
    pub(super) fn first_byte(&self, now: Instant) -> Instant {
        self.arrivals.front().map_or(now, |a| a.1)
    }

    /// One read of plaintext: straight from the socket, or through rustls (which also drives
    /// the handshake).
    fn read_plain(&mut self, buf: &mut [u8], handshakes: &Slots) -> Result<usize, ReadErr> {
        let Some(tls) = self.tls.as_mut() else {
            if !self.readable {
                return Err(ReadErr::WouldBlock);
            }
            loop {
                let mut socket = DrainTracker::new(&mut self.socket, self.read_closed);
                let result = socket.read(buf);
                self.readable &= !socket.drained();
                return match result {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.readable = false;
                        Err(ReadErr::WouldBlock)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => Err(ReadErr::Fatal(Fatal::Io)),
                };
            }
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(_) => return Err(ReadErr::Fatal(Fatal::Io)),
            }
            if !self.readable {
                return Err(ReadErr::WouldBlock);
            }
            if self.handshake_slot.is_none() && tls.is_handshaking() {
                // Take a handshake slot only for a whole ClientHello record: that is when
                // rustls starts spending CPU. Until then the bytes stay in the socket.
                match client_hello_ready(&self.socket) {
                    Ok(true) => match handshakes.try_take() {
                        Some(slot) => self.handshake_slot = Some(slot),
                        None => return Err(ReadErr::Fatal(Fatal::HandshakeLimit)),
                    },
                    Ok(false) => {
                        // Partial record: the rest raises a new event when it arrives.
                        self.readable = false;
                        return Err(ReadErr::WouldBlock);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.readable = false;
                        return Err(ReadErr::WouldBlock);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Err(ReadErr::Fatal(Fatal::Io)),
                }
            }
            let mut socket = DrainTracker::new(&mut self.socket, self.read_closed);
            let result = tls.read_tls(&mut socket);
            self.readable &= !socket.drained();
            match result {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        crate::tls::log_refused_handshake(self.peer, &e);
                        return Err(ReadErr::Fatal(Fatal::Tls));
                    }
                    // Handshake messages may need answering before any plaintext appears.
                    if tls.is_handshaking() && tls.wants_write() {
                        let _ = tls.write_tls(&mut self.socket);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Err(ReadErr::WouldBlock);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ReadErr::Fatal(Fatal::Io)),
            }
        }
    }

    /// Writes as much queued output as the socket takes.
    fn flush(&mut self) -> io::Result<()> {
        loop {
            match self.tls.as_mut() {
                None => {
                    if self.out_pos == self.out.len() {
                        break;
                    }
                    match self.socket.write(&self.out[self.out_pos..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => self.out_pos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(tls) => {
                    if self.out_pos < self.out.len() && !tls.is_handshaking() {
                        self.out_pos += tls.writer().write(&self.out[self.out_pos..])?;
                    }
                    if !tls.wants_write() {
                        break;
                    }
                    match tls.write_tls(&mut self.socket) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }

    fn output_pending(&self) -> bool {
        self.out_pos < self.out.len() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    fn start_linger(&mut self, reason: CloseReason, now: Instant) -> Status {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.socket);
        }
        if self.peer_eof || self.socket.shutdown_write().is_err() {
            return Status::Done(reason);
        }
        // Lingering only discards raw bytes: the TLS session and the buffers are done with.
        self.tls = None;
        self.read_buf = Vec::new();
        self.out = Vec::new();
        self.out_pos = 0;
        self.phase = Phase::Lingering {
            since: now,
            reason,
            discarded: 0,
        };
        self.linger(now)
    }

    /// Discards input until EOF; the timer ends it after `LINGER`.
    fn linger(&mut self, now: Instant) -> Status {
        let Phase::Lingering {
            since,
            reason,
            discarded,
        } = &mut self.phase
        else {
            return Status::Open { more: false };
        };
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.socket.read(&mut chunk) {
                Ok(0) => return Status::Done(*reason),
                Ok(n) => {
                    *discarded += n;
                    if *discarded > LINGER_BYTES || now >= *since + LINGER {
                        return Status::Done(*reason);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Status::Open { more: false };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Status::Done(*reason),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fatal {
    Eof,
    Tls,
    Io,
    /// A ClientHello arrived and every handshake slot is taken.
    HandshakeLimit,
}

enum ReadErr {
    WouldBlock,
    Fatal(Fatal),
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    use super::*;
    use crate::http::handler::{Completed, Completion, Outcome, RequestContext};
    use crate::http::{Request, testing};

    /// A socket in memory: what the client sent and has not been read, what the server wrote.
    #[derive(Default)]
    struct Mem {
        input: VecDeque<u8>,
        eof: bool,
        output: Vec<u8>,
        write_shut: std::cell::Cell<bool>,
    }

    impl Read for Mem {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.input.len());
            for (b, byte) in buf.iter_mut().zip(self.input.drain(..n)) {
                *b = byte;
            }
            Ok(n)
        }
    }

    impl Write for Mem {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            assert!(!self.write_shut.get(), "write after shutdown");
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Socket for Mem {
        fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.input.len());
            for (b, byte) in buf.iter_mut().zip(self.input.iter()) {
                *b = *byte;
            }
            Ok(n)
        }

        fn shutdown_write(&self) -> io::Result<()> {
            self.write_shut.set(true);
            Ok(())
        }
    }

    thread_local! {
        /// Completions the `/later` handler parked, for the test to answer.
        static PARKED: RefCell<Vec<Completion>> = const { RefCell::new(Vec::new()) };
        /// The connection's clock (`Env::clock`): the fixture's `now`, which `/slow` moves.
        static CLOCK: Cell<Option<Instant>> = const { Cell::new(None) };
    }

    fn test_clock() -> Instant {
        CLOCK.with(|c| c.get()).expect("the fixture sets the clock")
    }

    /// A handler that takes 300 ms of the test clock.
    fn slow(_: &Request<'_>, _: &RequestContext<'_>) -> Outcome {
        CLOCK.with(|c| c.set(c.get().map(|t| t + Duration::from_millis(300))));
        Response::text(200, "text/plain", "slow").into()
    }

    fn hi(_: &Request<'_>, _: &RequestContext<'_>) -> Outcome {
        Response::text(200, "text/plain", "hi").into()
    }

    fn echo(req: &Request<'_>, _: &RequestContext<'_>) -> Outcome {
        Response::text(200, "text/plain", req.body().to_vec()).into()
    }

    fn later(_: &Request<'_>, ctx: &RequestContext<'_>) -> Outcome {
        PARKED.with(|p| p.borrow_mut().push(ctx.defer()));
        Outcome::Deferred
    }

    /// One plain connection over `Mem`, with the loop environment around it and a clock the
    /// test moves.
    struct Fixture {
        conn: Connection<Mem>,
        env: Env,
        completions: crossbeam::channel::Receiver<Completed>,
        now: Instant,
        _poll: mio::Poll,
    }

    impl Fixture {
        fn new(limits: Limits) -> Self {
            let mut router = Router::new(testing::refusal);
            router
                .get("/hi", hi)
                .post("/echo", echo)
                .get("/later", later)
                .get("/slow", slow);
            let metrics = Arc::new(Metrics::new());
            metrics.init_routes(router.labels());
            let poll = mio::Poll::new().expect("poll");
            let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
            let (tx, completions) = crossbeam::channel::unbounded();
            let admission = Arc::new(Admission::new(&limits));
            let peer: SocketAddr = "192.0.2.1:4000".parse().expect("address");
            let admitted = Admitted {
                _connection: admission.connections.try_take().expect("slot"),
                _source: admission.sources.try_admit(peer.ip()).expect("source"),
            };
            let now = Instant::now();
            let env = Env {
                handle: LoopHandle {
                    tx,
                    waker,
                    refuse: router.refusals(),
                },
                router: Arc::new(router),
                metrics,
                limits,
                admission,
                date: DateCache::default(),
                clock: test_clock,
            };
            CLOCK.with(|c| c.set(Some(now)));
            let conn = Connection::new(Mem::default(), peer, 0, 1, None, admitted, now);
            Self {
                conn,
                env,
                completions,
                now,
                _poll: poll,
            }
        }

        /// The client sends `bytes`; the loop sees a readable event and drives.
        fn send(&mut self, bytes: &[u8]) -> Status {
            self.sync_clock();
            self.conn.socket.input.extend(bytes);
            self.conn.on_event(true, false);
            self.conn.drive(&mut self.env, self.now)
        }

        /// The client half-closes.
        fn close(&mut self) -> Status {
            self.sync_clock();
            self.conn.socket.eof = true;
            self.conn.on_event(true, true);
            self.conn.drive(&mut self.env, self.now)
        }

        /// The connection's clock reads the fixture's `now` (unless a handler moves it).
        fn sync_clock(&self) {
            CLOCK.with(|c| c.set(Some(self.now)));
        }

        /// The latency histogram lines of `GET route`, e.g. `le="0.5"} 1`.
        fn latency(&self, route: &str) -> Vec<String> {
            let prefix = format!(
                "latchkey_http_request_duration_seconds_bucket{{method=\"GET\",route=\"{route}\","
            );
            self.env
                .metrics
                .render()
                .lines()
                .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
                .collect()
        }

        /// What the server wrote since the last call.
        fn written(&mut self) -> String {
            String::from_utf8(std::mem::take(&mut self.conn.socket.output)).expect("ASCII")
        }

        /// Delivers every finished deferred answer, as the loop does.
        fn deliver(&mut self) -> Status {
            self.sync_clock();
            let mut status = Status::Open { more: false };
            while let Ok(done) = self.completions.try_recv() {
                status = self
                    .conn
                    .complete(done.seq, done.response, &mut self.env, self.now);
            }
            status
        }

        /// Moves the clock to the connection's next deadline and fires it.
        fn expire(&mut self) -> Status {
            self.now = self.conn.deadline(&self.env.limits).expect("a deadline");
            self.sync_clock();
            self.conn.on_timeout(&mut self.env, self.now)
        }
    }

    const GET_HI: &[u8] = b"GET /hi HTTP/1.1\r\nHost: t\r\n\r\n";

    /// Status lines of the answers in `out`, in order.
    fn statuses(out: &str) -> Vec<&str> {
        out.match_indices("HTTP/1.1 ")
            .map(|(i, _)| &out[i + 9..i + 12])
            .collect()
    }

    #[test]
    fn keep_alive_answers_one_request_after_another() {
        let mut f = Fixture::new(Limits::default());
        assert_eq!(f.send(GET_HI), Status::Open { more: false });
        let out = f.written();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("Content-Length: 2\r\n\r\nhi"), "{out}");
        assert!(!out.contains("Connection: close"), "{out}");
        assert_eq!(f.send(GET_HI), Status::Open { more: false });
        assert_eq!(statuses(&f.written()), ["200"]);
        // Idle between requests: the keep-alive timer closes it.
        f.now += Duration::from_millis(1);
        assert_eq!(f.expire(), Status::Done(CloseReason::IdleTimeout));
    }

    #[test]
    fn pipelined_answers_leave_in_request_order() {
        let mut f = Fixture::new(Limits::default());
        let mut burst = b"GET /later HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
        burst.extend_from_slice(GET_HI);
        burst.extend_from_slice(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nping");
        f.send(&burst);
        // The first answer is not ready, so nothing may leave yet.
        assert_eq!(f.written(), "");
        let parked = PARKED.with(|p| p.borrow_mut().pop()).expect("deferred");
        parked.complete(Response::text(202, "text/plain", "later"));
        f.deliver();
        let out = f.written();
        assert_eq!(statuses(&out), ["202", "200", "200"], "{out}");
        let (later, rest) = out.split_once("later").expect("first body");
        assert!(later.starts_with("HTTP/1.1 202"));
        assert!(rest.ends_with("\r\n\r\nping"), "{rest}");
    }

    #[test]
    fn an_abandoned_deferred_request_is_answered_500() {
        let mut f = Fixture::new(Limits::default());
        f.send(b"GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
        drop(PARKED.with(|p| p.borrow_mut().pop()).expect("deferred"));
        f.deliver();
        let out = f.written();
        assert_eq!(statuses(&out), ["500"], "{out}");
        assert!(out.contains("server_error"), "{out}");
    }

    #[test]
    fn a_body_over_the_limit_is_refused_and_the_connection_closes() {
        let mut f = Fixture::new(Limits {
            max_body: 8,
            ..Limits::default()
        });
        let status = f.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n");
        let out = f.written();
        assert_eq!(statuses(&out), ["413"], "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        // The answer is out and the write side shut: the connection lingers until EOF.
        assert_eq!(status, Status::Open { more: false });
        assert!(f.conn.socket.write_shut.get());
        assert_eq!(f.close(), Status::Done(CloseReason::BadRequest));
    }

    #[test]
    fn a_head_that_stops_arriving_is_answered_408() {
        let limits = Limits::default();
        let mut f = Fixture::new(limits.clone());
        let start = f.now;
        f.send(b"GET /hi HTTP/1.1\r\nHo");
        assert_eq!(f.written(), "");
        assert_eq!(
            f.conn.deadline(&f.env.limits),
            Some(start + limits.request_head_timeout)
        );
        f.expire();
        let out = f.written();
        assert_eq!(statuses(&out), ["408"], "{out}");
        assert!(out.contains("Connection: close"), "{out}");
    }

    #[test]
    fn connection_close_and_head_are_honoured() {
        let mut f = Fixture::new(Limits::default());
        f.send(
            b"HEAD /hi HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /hi HTTP/1.1\r\n\r\n",
        );
        let out = f.written();
        // HEAD: the length of the body it would have had, no body; nothing after the close.
        assert_eq!(statuses(&out), ["200"], "{out}");
        assert!(
            out.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n"),
            "{out}"
        );
        assert_eq!(f.close(), Status::Done(CloseReason::Client));
    }

    #[test]
    fn a_silent_connection_gets_only_the_hello_timeout() {
        let limits = Limits::default();
        let mut f = Fixture::new(limits.clone());
        let start = f.now;
        assert_eq!(
            f.conn.deadline(&f.env.limits),
            Some(start + limits.hello_timeout)
        );
        assert_eq!(f.expire(), Status::Done(CloseReason::HelloTimeout));
    }

    #[test]
    fn the_request_limit_closes_after_the_last_answer() {
        let mut f = Fixture::new(Limits {
            max_requests_per_connection: 2,
            ..Limits::default()
        });
        let mut two = GET_HI.to_vec();
        two.extend_from_slice(GET_HI);
        f.send(&two);
        let out = f.written();
        assert_eq!(statuses(&out), ["200", "200"], "{out}");
        assert_eq!(out.matches("Connection: close").count(), 1, "{out}");
        assert!(out.ends_with("Connection: close\r\n\r\nhi"), "{out}");
    }

    /// The lowest bucket and the 0.5 s bucket of a route's latency histogram.
    fn lowest_and_half_second(lines: &[String]) -> (&str, &str) {
        let lowest = lines.first().expect("a histogram");
        let half = lines
            .iter()
            .find(|l| l.starts_with("le=\"0.5\"}"))
            .expect("a 0.5 s bucket");
        (lowest, half)
    }

    #[test]
    fn a_slow_handler_lands_in_a_slow_latency_bucket() {
        let mut f = Fixture::new(Limits::default());
        f.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(statuses(&f.written()), ["200"]);
        let lines = f.latency("/slow");
        let (lowest, half) = lowest_and_half_second(&lines);
        assert_eq!(lowest, "le=\"0.0001\"} 0", "{lines:?}");
        assert_eq!(half, "le=\"0.5\"} 1", "{lines:?}");
        assert!(
            lines.contains(&"le=\"0.25\"} 0".to_owned()),
            "300 ms is over 0.25 s: {lines:?}"
        );
    }

    #[test]
    fn a_deferred_answer_is_timed_from_the_first_byte_to_its_completion() {
        let mut f = Fixture::new(Limits::default());
        // The head's first bytes arrive 200 ms before the rest of it.
        f.send(b"GET /later HTTP/1.1\r\n");
        f.now += Duration::from_millis(200);
        f.send(b"Host: t\r\n\r\n");
        let parked = PARKED.with(|p| p.borrow_mut().pop()).expect("deferred");
        f.now += Duration::from_millis(100);
        parked.complete(Response::text(200, "text/plain", "later"));
        f.deliver();
        assert_eq!(statuses(&f.written()), ["200"]);
        let lines = f.latency("/later");
        let (lowest, half) = lowest_and_half_second(&lines);
        assert_eq!(lowest, "le=\"0.0001\"} 0", "{lines:?}");
        assert!(lines.contains(&"le=\"0.25\"} 0".to_owned()), "{lines:?}");
        assert_eq!(half, "le=\"0.5\"} 1", "{lines:?}");
    }

    #[test]
    fn a_pipelined_request_is_timed_from_its_own_first_byte() {
        let mut f = Fixture::new(Limits::default());
        // Behind a deferred answer, a second request's head arrives in two reads 200 ms
        // apart, the first of them with the end of the first request.
        let mut burst = b"GET /later HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
        burst.extend_from_slice(b"GET /hi HTTP/1.1\r\n");
        f.send(&burst);
        f.now += Duration::from_millis(200);
        f.send(b"Host: t\r\n\r\n");
        f.now += Duration::from_millis(200);
        let parked = PARKED.with(|p| p.borrow_mut().pop()).expect("deferred");
        parked.complete(Response::text(200, "text/plain", "later"));
        f.deliver();
        assert_eq!(statuses(&f.written()), ["200", "200"]);
        // `/hi`: from its first byte (t0) to its answer (t0 + 200 ms), not from the read
        // that completed it, nor from when its answer could leave (t0 + 400 ms).
        let hi = f.latency("/hi");
        let (lowest, half) = lowest_and_half_second(&hi);
        assert_eq!(lowest, "le=\"0.0001\"} 0", "{hi:?}");
        assert!(hi.contains(&"le=\"0.25\"} 1".to_owned()), "{hi:?}");
        assert_eq!(half, "le=\"0.5\"} 1", "{hi:?}");
        // `/later`: t0 to its completion at t0 + 400 ms.
        let later = f.latency("/later");
        assert!(later.contains(&"le=\"0.25\"} 0".to_owned()), "{later:?}");
        assert!(later.contains(&"le=\"0.5\"} 1".to_owned()), "{later:?}");
    }

    #[test]
    fn a_request_held_back_by_the_pipeline_bound_is_timed_from_its_arrival() {
        let mut f = Fixture::new(Limits {
            max_pipelined: 1,
            ..Limits::default()
        });
        // Both arrive at once; `/hi` waits, unparsed, until `/later` is answered 400 ms on.
        let mut burst = b"GET /later HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
        burst.extend_from_slice(GET_HI);
        f.send(&burst);
        f.now += Duration::from_millis(400);
        let parked = PARKED.with(|p| p.borrow_mut().pop()).expect("deferred");
        parked.complete(Response::text(200, "text/plain", "later"));
        f.deliver();
        assert_eq!(statuses(&f.written()), ["200", "200"]);
        let hi = f.latency("/hi");
        assert!(hi.contains(&"le=\"0.25\"} 0".to_owned()), "{hi:?}");
        assert!(hi.contains(&"le=\"0.5\"} 1".to_owned()), "{hi:?}");
    }
}
