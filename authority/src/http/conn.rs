//! One connection: bytes in, whole requests to the router, answers out in request order.
//!
//! The protocol state is a `Phase` that moves by value (`Phase::step`), as rustls' handshake
//! states do; the connection around it owns the socket, the optional rustls session, the read
//! buffer, and the queue of answers (some still waiting for a deferred [`Completion`]). The
//! event loop calls `Connection::drive` on readiness, on completions and on timer expiry;
//! `drive` reports whether the connection is done.
//!
//! [`Completion`]: super::handler::Completion

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::body::BodyDecoder;
use super::date::DateCache;
use super::drain::DrainTracker;
use super::handler::{LoopHandle, Outcome, RequestContext, Slot, TlsInfo};
use super::metrics::{CloseReason, Metrics};
use super::request::{Head, Parsed, Request, parse_head};
use super::response::Response;
use super::router::{Dispatch, RouteId, Router};
use super::{HttpError, Limits};
use crate::error::Error;

/// Stop reading while this much unparsed input is buffered.
const READ_CAP: usize = 64 * 1024;
/// Stop parsing new requests while this much output waits for the client.
const OUT_HIGH: usize = 64 * 1024;
/// Read-parse-write rounds per `drive` before yielding to other connections.
const MAX_ROUNDS: usize = 16;
/// After our last answer, how long we keep reading (and discarding) so the kernel does not
/// reset the connection and destroy that answer in the client's receive buffer.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes discarded while lingering before giving up.
const LINGER_BYTES: usize = 1024 * 1024;

/// What every connection of a loop shares.
pub(crate) struct Env<'a> {
    pub router: &'a Router,
    pub metrics: &'a Arc<Metrics>,
    pub limits: &'a Limits,
    pub handle: &'a LoopHandle,
    pub date: &'a mut DateCache,
    pub token: usize,
}

/// Where a connection is in its protocol.
enum Phase {
    /// TLS handshake in progress.
    Handshake { since: Instant },
    /// Between requests.
    Idle,
    /// Part of a request head has arrived (at `since`); `scanned` bytes are checked.
    Head { since: Instant, scanned: usize },
    /// The head is parsed; the body is arriving.
    Body {
        head: Box<Head>,
        decoder: BodyDecoder,
        body: Vec<u8>,
        since: Instant,
        received: u64,
        continued: bool,
    },
    /// No more requests: answer what is queued, then close.
    Closing { reason: CloseReason },
    /// Answers are out and our write side is shut; discarding input until EOF or `LINGER`.
    Lingering {
        since: Instant,
        reason: CloseReason,
        discarded: usize,
    },
}

/// The result of one `Phase::step`.
enum Step {
    /// Need more bytes.
    Wait(Phase),
    /// A complete request; the connection continues in the given phase.
    Request(Phase, Box<Head>, Vec<u8>),
    /// The input is refused: answer with the error and close.
    Fail(HttpError),
}

impl Phase {
    /// Consumes what it can from `buf`.
    fn step(self, buf: &mut Vec<u8>, limits: &Limits, now: Instant) -> Step {
        match self {
            Phase::Idle if !buf.is_empty() => Phase::Head {
                since: now,
                scanned: 0,
            }
            .step(buf, limits, now),
            Phase::Head { since, scanned } => match parse_head(buf, scanned, limits) {
                Ok(Parsed::Partial { scanned }) => Step::Wait(Phase::Head { since, scanned }),
                Ok(Parsed::Complete { head, len }) => {
                    buf.drain(..len);
                    match BodyDecoder::new(head.framing) {
                        None => Step::Request(Phase::Idle, Box::new(head), Vec::new()),
                        Some(decoder) => Phase::Body {
                            head: Box::new(head),
                            decoder,
                            body: Vec::new(),
                            since: now,
                            received: 0,
                            continued: false,
                        }
                        .step(buf, limits, now),
                    }
                }
                Err(e) => Step::Fail(e),
            },
            Phase::Body {
                head,
                mut decoder,
                mut body,
                since,
                received,
                continued,
            } => match decoder.decode(buf, &mut body, limits) {
                Ok(p) => {
                    buf.drain(..p.consumed);
                    let received = received + p.consumed as u64;
                    if p.done {
                        Step::Request(Phase::Idle, head, body)
                    } else {
                        Step::Wait(Phase::Body {
                            head,
                            decoder,
                            body,
                            since,
                            received,
                            continued,
                        })
                    }
                }
                Err(e) => Step::Fail(e),
            },
            other => Step::Wait(other),
        }
    }

    /// When this phase times out, and why.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, CloseReason)> {
        match self {
            Phase::Handshake { since } => Some((
                *since + limits.handshake_timeout,
                CloseReason::HandshakeTimeout,
            )),
            Phase::Head { since, .. } => Some((
                *since + limits.request_head_timeout,
                CloseReason::HeadTimeout,
            )),
            Phase::Body {
                since, received, ..
            } => {
                // The body may arrive as slowly as `min_body_rate` after a grace period; a
                // client that keeps up keeps pushing its deadline out.
                let rate = limits.min_body_rate.max(1);
                let allowance = Duration::from_millis(received.saturating_mul(1000) / rate);
                Some((
                    *since + limits.request_head_timeout + allowance,
                    CloseReason::BodyTimeout,
                ))
            }
            Phase::Lingering { since, reason, .. } => Some((*since + LINGER, *reason)),
            Phase::Idle | Phase::Closing { .. } => None,
        }
    }
}

/// An answer waiting its turn.
struct Answer {
    seq: u64,
    /// `None` while a deferred handler works.
    response: Option<Response>,
    head_only: bool,
    close: bool,
    route: RouteId,
    received: Instant,
}

/// Decrements a shared counter when dropped: open connections, handshakes in progress.
pub(crate) struct CountGuard(pub Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `drive` tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Keep the connection; `more` if it stopped early with work left (drive again soon).
    Open { more: bool },
    /// Close and forget the connection.
    Done(CloseReason),
}

pub(crate) struct Connection {
    pub socket: TcpStream,
    pub peer: SocketAddr,
    pub generation: u64,
    /// The timer entry the loop holds for this connection.
    pub scheduled: Option<Instant>,
    tls: Option<Box<rustls::ServerConnection>>,
    tls_info: Option<TlsInfo>,
    /// Held while the TLS handshake is in progress (counts toward `max_tls_handshakes`).
    handshake_slot: Option<CountGuard>,
    _connection_slot: CountGuard,
    phase: Phase,
    read_buf: Vec<u8>,
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

impl Connection {
    pub fn new(
        socket: TcpStream,
        peer: SocketAddr,
        generation: u64,
        tls: Option<(rustls::ServerConnection, CountGuard)>,
        connection_slot: CountGuard,
        now: Instant,
    ) -> Self {
        let (tls, handshake_slot, phase) = match tls {
            Some((session, slot)) => (
                Some(Box::new(session)),
                Some(slot),
                Phase::Handshake { since: now },
            ),
            None => (None, None, Phase::Idle),
        };
        Self {
            socket,
            peer,
            generation,
            scheduled: None,
            tls,
            tls_info: None,
            handshake_slot,
            _connection_slot: connection_slot,
            phase,
            read_buf: Vec::new(),
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
    pub fn drive(&mut self, env: &mut Env<'_>, now: Instant) -> Status {
        for _ in 0..MAX_ROUNDS {
            let mut progress = false;
            if let Phase::Lingering { .. } = self.phase {
                return self.linger(now);
            }
            if self.may_read(env.limits) {
                match self.fill() {
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
                        return Status::Done(self.tls_failure(env.metrics));
                    }
                    Err(Fatal::Io) => return Status::Done(CloseReason::Io),
                }
            }
            if self.handshake_slot.is_some()
                && self.tls.as_ref().is_some_and(|t| !t.is_handshaking())
            {
                self.finish_handshake(env.metrics, now);
                progress = true;
            }
            let was_blocked = self.backpressured(env.limits);
            progress |= self.process(env, now);
            self.move_answers(env, now);
            if self.flush().is_err() {
                return Status::Done(CloseReason::Io);
            }
            // Answers or output drained below the bounds: buffered requests can go on (no new
            // readiness event will come for bytes we already hold).
            progress |= was_blocked && !self.backpressured(env.limits);
            if self.output_pending() {
                self.write_since.get_or_insert(now);
            } else {
                self.write_since = None;
            }
            if let Phase::Closing { reason } = self.phase
                && self.queue.is_empty()
                && !self.output_pending()
            {
                return self.start_linger(reason, now);
            }
            if !progress {
                return Status::Open { more: false };
            }
        }
        Status::Open { more: true }
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
        d
    }

    /// Handles an expired deadline; `Done` if the connection must go now.
    pub fn on_timeout(&mut self, env: &mut Env<'_>, now: Instant) -> Status {
        if let Some(since) = self.write_since
            && now >= since + env.limits.write_timeout
        {
            return Status::Done(CloseReason::WriteTimeout);
        }
        if self.is_idle() && now >= self.idle_since + self.idle_limit(env.limits) {
            return Status::Done(CloseReason::IdleTimeout);
        }
        match self.phase.deadline(env.limits) {
            Some((t, reason)) if now >= t => match reason {
                CloseReason::HandshakeTimeout => {
                    env.metrics.tls_handshake_failed();
                    Status::Done(reason)
                }
                CloseReason::HeadTimeout | CloseReason::BodyTimeout => {
                    self.refuse(env, HttpError::Timeout, reason, now);
                    self.drive(env, now)
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
        env: &mut Env<'_>,
        now: Instant,
    ) -> Status {
        if let Some(a) = self
            .queue
            .iter_mut()
            .find(|a| a.seq == seq && a.response.is_none())
        {
            a.response = Some(response);
        }
        self.drive(env, now)
    }

    /// Graceful shutdown: finish the request in progress, then close.
    pub fn begin_drain(&mut self) {
        self.draining = true;
        match self.phase {
            Phase::Handshake { .. } => {
                self.phase = Phase::Closing {
                    reason: CloseReason::Shutdown,
                }
            }
            Phase::Idle if self.read_buf.is_empty() => {
                self.phase = Phase::Closing {
                    reason: CloseReason::Shutdown,
                };
            }
            _ => {}
        }
    }

    /// A connection that has not sent its first request gets only the head timeout: holding
    /// sockets open without a word is the cheapest slowloris.
    fn idle_limit(&self, limits: &Limits) -> Duration {
        if self.requests == 0 {
            limits.idle_timeout.min(limits.request_head_timeout)
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
    fn fill(&mut self) -> Result<usize, Fatal> {
        let mut chunk = [0u8; 16 * 1024];
        let mut total = 0;
        while self.read_buf.len() < READ_CAP {
            let room = (READ_CAP - self.read_buf.len()).min(chunk.len());
            match self.read_plain(&mut chunk[..room]) {
                Ok(0) => {
                    return if total > 0 {
                        Ok(total)
                    } else {
                        Err(Fatal::Eof)
                    };
                }
                Ok(n) => {
                    self.read_buf.extend_from_slice(&chunk[..n]);
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

    /// One read of plaintext: straight from the socket, or through rustls (which also drives
    /// the handshake).
    fn read_plain(&mut self, buf: &mut [u8]) -> Result<usize, ReadErr> {
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

    fn finish_handshake(&mut self, metrics: &Metrics, now: Instant) {
        self.handshake_slot = None;
        if let Some(tls) = &self.tls {
            metrics.tls_handshake_done(tls.handshake_kind());
            self.tls_info = Some(TlsInfo {
                version: tls.protocol_version(),
                alpn: tls.alpn_protocol().map(<[u8]>::to_vec),
                client_certificates: tls.peer_certificates().map(<[_]>::to_vec),
            });
        }
        if let Phase::Handshake { .. } = self.phase {
            self.phase = Phase::Idle;
        }
        self.idle_since = now;
    }

    fn tls_failure(&self, metrics: &Metrics) -> CloseReason {
        if self.handshake_slot.is_some() {
            metrics.tls_handshake_failed();
            CloseReason::HandshakeFailed
        } else {
            CloseReason::Io
        }
    }

    /// Parses and dispatches complete requests while the pipelining bounds allow.
    fn process(&mut self, env: &mut Env<'_>, now: Instant) -> bool {
        let mut progress = false;
        while !self.backpressured(env.limits) {
            let phase = std::mem::replace(
                &mut self.phase,
                Phase::Closing {
                    reason: CloseReason::Io,
                },
            );
            match phase.step(&mut self.read_buf, env.limits, now) {
                Step::Wait(phase) => {
                    self.phase = phase;
                    self.maybe_continue();
                    break;
                }
                Step::Request(phase, head, body) => {
                    self.phase = phase;
                    self.dispatch(env, &head, &body, now);
                    progress = true;
                }
                Step::Fail(e) => {
                    self.refuse(env, e, CloseReason::BadRequest, now);
                    progress = true;
                    break;
                }
            }
        }
        progress
    }

    /// Sends `100 Continue` for a body the client is holding back, if no earlier answer is due.
    fn maybe_continue(&mut self) {
        if let Phase::Body {
            head,
            received: 0,
            continued,
            ..
        } = &mut self.phase
            && head.expect_continue
            && !*continued
            && self.queue.is_empty()
        {
            *continued = true;
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
    }

    /// Queues an error answer for input the transport refuses, and stops reading.
    fn refuse(&mut self, env: &mut Env<'_>, e: HttpError, reason: CloseReason, now: Instant) {
        tracing::debug!(peer = %self.peer, error = %e, "request refused");
        let response = Response::from_error(&Error::Http(e));
        self.queue.push_back(Answer {
            seq: self.next_seq,
            response: Some(response),
            head_only: false,
            close: true,
            route: env.router.unmatched(),
            received: now,
        });
        self.next_seq += 1;
        self.phase = Phase::Closing { reason };
    }

    fn dispatch(&mut self, env: &mut Env<'_>, head: &Head, body: &[u8], now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.requests += 1;
        let mut close = None;
        if !head.keep_alive {
            close = Some(CloseReason::Client);
        }
        if self.requests >= env.limits.max_requests_per_connection {
            close = Some(CloseReason::MaxRequests);
        }
        if self.draining {
            close = Some(CloseReason::Shutdown);
        }
        let (route, response) = match env.router.dispatch(head.method(), head.path()) {
            Dispatch::Refused { id, response } => (id, Some(response)),
            Dispatch::Found {
                id,
                handler,
                params,
            } => {
                let req = Request::new(head, body, params);
                let ctx = RequestContext {
                    peer: self.peer,
                    tls: self.tls_info.as_ref(),
                    metrics: env.metrics,
                    received: now,
                    slot: Slot {
                        handle: env.handle,
                        token: env.token,
                        generation: self.generation,
                        seq,
                    },
                    deferred: Default::default(),
                };
                // A panicking handler costs its request a 500, not the loop its connections.
                let result = catch_unwind(AssertUnwindSafe(|| handler.handle(&req, &ctx)));
                let response = match result {
                    Ok(Ok(Outcome::Ready(r))) => Some(r),
                    Ok(Ok(Outcome::Deferred)) if ctx.deferred.get() => None,
                    Ok(Ok(Outcome::Deferred)) => Some(Response::from_error(&Error::Io(
                        io::Error::other("handler deferred without taking a completion"),
                    ))),
                    Ok(Err(e)) => Some(Response::from_error(&e)),
                    Err(_) => Some(Response::from_error(&Error::Io(io::Error::other(
                        "handler panicked",
                    )))),
                };
                (id, response)
            }
        };
        self.queue.push_back(Answer {
            seq,
            response,
            head_only: head.method() == "HEAD",
            close: close.is_some(),
            route,
            received: now,
        });
        if let Some(reason) = close {
            self.phase = Phase::Closing { reason };
        }
    }

    /// Serialises finished answers at the front of the queue, in order.
    fn move_answers(&mut self, env: &mut Env<'_>, now: Instant) {
        while let Some(front) = self.queue.front_mut() {
            let Some(response) = front.response.take() else {
                break;
            };
            let date = env.date.now();
            response.write_to(&mut self.out, date, front.head_only, front.close);
            env.metrics.record_request(
                front.route.0,
                response.status,
                now.saturating_duration_since(front.received),
            );
            let close = front.close;
            self.queue.pop_front();
            self.idle_since = now;
            if close {
                // Nothing after a closing answer is sent.
                self.queue.clear();
                break;
            }
        }
    }

    fn start_linger(&mut self, reason: CloseReason, now: Instant) -> Status {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.socket);
        }
        if self.peer_eof || self.socket.shutdown(Shutdown::Write).is_err() {
            return Status::Done(reason);
        }
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
                // Shutting down: nothing is pending, so closing now cannot reset our answer.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.draining => {
                    return Status::Done(*reason);
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
