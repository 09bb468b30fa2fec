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
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::admission::{Admission, BodyBudget, BodyReservation, SlotGuard, Slots, SourceGuard};
use super::body::BodyDecoder;
use super::date::DateCache;
use super::drain::DrainTracker;
use super::handler::{LoopHandle, Outcome, RequestContext, Slot, TlsInfo};
use super::metrics::{CloseReason, Metrics};
use super::request::{Head, Parsed, Request, parse_head};
use super::response::Response;
use super::router::{Dispatch, RouteId, Router};
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
/// A TLS record header: content type, version, 16-bit length.
const TLS_RECORD_HEADER: usize = 5;
/// Content type of TLS handshake records.
const TLS_HANDSHAKE: u8 = 22;
/// Largest TLS plaintext record a ClientHello can arrive in (2^14 + header).
const TLS_MAX_RECORD: usize = TLS_RECORD_HEADER + 16 * 1024;

/// What every connection of a loop shares.
pub(crate) struct Env<'a> {
    pub router: &'a Router,
    pub metrics: &'a Arc<Metrics>,
    pub limits: &'a Limits,
    pub admission: &'a Admission,
    pub handle: &'a LoopHandle,
    pub date: &'a mut DateCache,
    pub token: usize,
}

/// Where a connection is in its protocol.
enum Phase {
    /// TLS, accepted at `since`; no complete ClientHello record yet. Holds no handshake slot:
    /// a socket that does nothing costs nothing but its descriptor.
    Hello { since: Instant },
    /// TLS handshake in progress since the ClientHello arrived; holds a handshake slot.
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
        /// This body's share of `Limits::max_body_buffer`, taken once it has to wait for
        /// more bytes (a body that arrives with its head never takes one).
        reservation: Option<BodyReservation>,
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
    fn step(
        self,
        buf: &mut Vec<u8>,
        limits: &Limits,
        budget: &Arc<BodyBudget>,
        now: Instant,
    ) -> Step {
        match self {
            Phase::Idle if !buf.is_empty() => Phase::Head {
                since: now,
                scanned: 0,
            }
            .step(buf, limits, budget, now),
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
                            reservation: None,
                        }
                        .step(buf, limits, budget, now),
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
                mut reservation,
            } => match decoder.decode(buf, &mut body, limits) {
                Ok(p) => {
                    buf.drain(..p.consumed);
                    let received = received + p.consumed as u64;
                    if p.done {
                        return Step::Request(Phase::Idle, head, body);
                    }
                    // The body must wait for more bytes: from here on it holds memory on the
                    // server's account. A declared length is reserved whole, up front, so a
                    // body admitted once can always finish; a chunked body pays as it grows.
                    let r = reservation.get_or_insert_with(|| budget.reservation());
                    let need = match &decoder {
                        BodyDecoder::Length { remaining } => body
                            .len()
                            .saturating_add(usize::try_from(*remaining).unwrap_or(usize::MAX)),
                        BodyDecoder::Chunked(_) => body.capacity(),
                    };
                    if !r.grow_to(need) {
                        return Step::Fail(HttpError::Overloaded);
                    }
                    if let BodyDecoder::Length { .. } = decoder {
                        // Exactly the declared size: growth by doubling would hold up to
                        // twice what was reserved.
                        body.reserve_exact(need - body.len());
                    }
                    Step::Wait(Phase::Body {
                        head,
                        decoder,
                        body,
                        since,
                        received,
                        continued,
                        reservation,
                    })
                }
                Err(e) => Step::Fail(e),
            },
            other => Step::Wait(other),
        }
    }

    /// When this phase times out, and why.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, CloseReason)> {
        match self {
            Phase::Hello { since } => {
                Some((*since + limits.hello_timeout, CloseReason::HelloTimeout))
            }
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
                // client that keeps up keeps pushing its deadline out, but never past
                // `body_timeout`: bytes sent early must not buy time to hold them.
                let rate = limits.min_body_rate.max(1);
                let allowance = Duration::from_millis(received.saturating_mul(1000) / rate);
                let by_rate = *since + limits.request_head_timeout + allowance;
                Some((
                    by_rate.min(*since + limits.body_timeout),
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

pub(crate) struct Connection {
    pub socket: TcpStream,
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
                match self.fill(&env.admission.handshakes) {
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
    pub fn on_timeout(&mut self, env: &mut Env<'_>, now: Instant) -> Status {
        if let Some(since) = self.write_since
            && now >= since + env.limits.write_timeout
        {
            return Status::Done(CloseReason::WriteTimeout);
        }
        if self.is_idle() && now >= self.idle_since + self.idle_limit(env.limits) {
            // Silent from the start: the hello timeout, whatever the transport.
            if self.requests == 0 && self.idle_limit(env.limits) == env.limits.hello_timeout {
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
        match self.phase.deadline(env.limits) {
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
    fn fill(&mut self, handshakes: &Slots) -> Result<usize, Fatal> {
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
            match phase.step(&mut self.read_buf, env.limits, &env.admission.bodies, now) {
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
                Step::Fail(HttpError::Overloaded) => {
                    if let Some(held_back) = env.admission.logs.body_budget.allow(now) {
                        tracing::warn!(
                            peer = %self.peer,
                            budget = env.limits.max_body_buffer,
                            held_back,
                            "request body budget spent; answering 503"
                        );
                    }
                    self.refuse(env, HttpError::Overloaded, CloseReason::BodyBudget, now);
                    progress = true;
                    break;
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
        let response = env.router.refuse(&e);
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
        // Nothing more is parsed: what was buffered goes back to the allocator now, not when
        // the connection finally closes (a refused flood holds no memory while it lingers).
        self.read_buf = Vec::new();
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
        // Shutting down: the last request already received gets `Connection: close`; any
        // received after it in the same burst is answered too.
        if self.draining && self.read_buf.is_empty() && !self.readable {
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
                    Ok(Outcome::Ready(r)) => Some(r),
                    Ok(Outcome::Deferred) if ctx.deferred.get() => None,
                    Ok(Outcome::Deferred) => Some(env.router.refuse(&HttpError::Internal(
                        "handler deferred without taking a completion",
                    ))),
                    Err(_) => Some(env.router.refuse(&HttpError::Internal("handler panicked"))),
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

/// Whether the socket holds a whole first TLS record (the ClientHello, which clients send in
/// one record), or EOF (true: the read that follows reports it). Peeks, so nothing is
/// consumed. Anything that is not a handshake record is let through for rustls to refuse.
fn client_hello_ready(socket: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; TLS_MAX_RECORD];
    let n = socket.peek(&mut buf)?;
    Ok(hello_record_complete(&buf[..n]))
}

/// `peeked` is all the socket holds: is the first record whole (or the socket at EOF)?
fn hello_record_complete(peeked: &[u8]) -> bool {
    if peeked.is_empty() {
        return true;
    }
    if peeked[0] != TLS_HANDSHAKE {
        return true;
    }
    let Some(header) = peeked.get(..TLS_RECORD_HEADER) else {
        return false;
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    // A length no record may have is refused by rustls at once; waiting for it would only
    // turn a malformed hello into a silent one.
    len > TLS_MAX_RECORD - TLS_RECORD_HEADER || peeked.len() >= TLS_RECORD_HEADER + len
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
    use super::*;

    fn head(len: usize) -> Vec<u8> {
        format!("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").into_bytes()
    }

    /// Steps a fresh connection's phase over `input`.
    fn step(input: &[u8], limits: &Limits, budget: &Arc<BodyBudget>, now: Instant) -> Step {
        let mut buf = input.to_vec();
        Phase::Idle.step(&mut buf, limits, budget, now)
    }

    #[test]
    fn a_front_loaded_body_gets_no_more_than_the_body_timeout() {
        let limits = Limits::default();
        let budget = BodyBudget::new(limits.max_body_buffer);
        let now = Instant::now();
        let len = limits.max_body;
        let mut input = head(len);
        input.resize(input.len() + len - 1, b'x');
        let Step::Wait(phase) = step(&input, &limits, &budget, now) else {
            panic!("the body is one byte short");
        };
        let (at, reason) = phase.deadline(&limits).expect("a body has a deadline");
        assert_eq!(reason, CloseReason::BodyTimeout);
        // At the minimum rate alone, a mebibyte sent at once would buy ~17 minutes.
        assert_eq!(at, now + limits.body_timeout);
    }

    #[test]
    fn a_slow_start_still_times_out_by_rate() {
        let limits = Limits::default();
        let budget = BodyBudget::new(limits.max_body_buffer);
        let now = Instant::now();
        let Step::Wait(phase) = step(&head(1000), &limits, &budget, now) else {
            panic!("no body yet");
        };
        let (at, _) = phase.deadline(&limits).unwrap();
        assert_eq!(at, now + limits.request_head_timeout);
    }

    #[test]
    fn bodies_that_must_wait_reserve_their_declared_length_and_give_it_back() {
        let limits = Limits {
            max_body_buffer: 1500,
            ..Limits::default()
        };
        let budget = BodyBudget::new(limits.max_body_buffer);
        let now = Instant::now();
        // Arrives whole with its head: never touches the budget.
        let mut whole = head(1000);
        whole.extend_from_slice(&[b'x'; 1000]);
        assert!(matches!(
            step(&whole, &limits, &budget, now),
            Step::Request(..)
        ));
        assert_eq!(budget.used(), 0);
        // Must wait: reserves all 1000 declared bytes, up front.
        let Step::Wait(waiting) = step(&head(1000), &limits, &budget, now) else {
            panic!("no body yet");
        };
        assert_eq!(budget.used(), 1000);
        // A second waiting body does not fit next to it: refused, not queued without bound.
        assert!(matches!(
            step(&head(1000), &limits, &budget, now),
            Step::Fail(HttpError::Overloaded)
        ));
        assert_eq!(budget.used(), 1000, "a refused body holds nothing");
        // The first finishes: its share returns.
        let mut rest = vec![b'x'; 1000];
        let Step::Request(_, _, body) = waiting.step(&mut rest, &limits, &budget, now) else {
            panic!("the body is complete");
        };
        assert_eq!(body.len(), 1000);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn chunked_bodies_pay_for_what_they_hold() {
        let limits = Limits {
            max_body_buffer: 4096,
            ..Limits::default()
        };
        let budget = BodyBudget::new(limits.max_body_buffer);
        let mut input =
            b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".to_vec();
        input.extend_from_slice(&[b'x'; 0x800]);
        input.extend_from_slice(b"\r\n");
        let Step::Wait(_held) = step(&input, &limits, &budget, Instant::now()) else {
            panic!("no last chunk yet");
        };
        assert!(budget.used() >= 0x800);
        let mut big =
            b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n".to_vec();
        big.extend_from_slice(&[b'x'; 0x1000]);
        assert!(matches!(
            step(&big, &limits, &budget, Instant::now()),
            Step::Fail(HttpError::Overloaded)
        ));
    }

    #[test]
    fn a_client_hello_counts_once_its_first_record_is_whole() {
        assert!(!hello_record_complete(&[22, 3, 1]), "partial header");
        assert!(
            !hello_record_complete(&[22, 3, 1, 0, 4, 1, 2, 3]),
            "partial record"
        );
        assert!(hello_record_complete(&[22, 3, 1, 0, 4, 1, 2, 3, 4]));
        assert!(
            hello_record_complete(&[22, 3, 1, 0, 1, 9, 22, 3]),
            "more behind it"
        );
        assert!(hello_record_complete(&[]), "EOF: let the read report it");
        assert!(
            hello_record_complete(b"GET / HTTP/1.1"),
            "not TLS: rustls refuses it"
        );
        // A length past the largest record is let through for rustls to refuse.
        assert!(hello_record_complete(&[22, 3, 1, 0xff, 0xff, 1, 2, 3]));
        assert!(
            !hello_record_complete(&[22, 3, 1, 0x40, 0x00, 1, 2, 3]),
            "2^14 is legal"
        );
    }
}
