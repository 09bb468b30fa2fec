//! The request-level protocol state: which bytes a connection waits for, and until when.
//! Pure: bytes, limits and the time in, the next phase (or a whole request, or a refusal) out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::LINGER;
use crate::http::admission::{BodyBudget, BodyReservation};
use crate::http::body::BodyDecoder;
use crate::http::metrics::CloseReason;
use crate::http::request::{Head, Parsed, parse_head};
use crate::http::{HttpError, Limits};

/// Where a connection is in its protocol.
pub(super) enum Phase {
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
        /// When the head's first byte was read.
        started: Instant,
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
pub(super) enum Step {
    /// Need more bytes.
    Wait(Phase),
    /// A complete request, read since the given instant (its first byte); the connection
    /// continues in the given phase.
    Request(Phase, Box<Head>, Vec<u8>, Instant),
    /// The input is refused: answer with the error and close.
    Fail(HttpError),
}

impl Phase {
    /// Consumes what it can from `buf`; `first_byte` is when `buf[0]` was read.
    pub(super) fn step(
        self,
        buf: &mut Vec<u8>,
        limits: &Limits,
        budget: &Arc<BodyBudget>,
        now: Instant,
        first_byte: Instant,
    ) -> Step {
        match self {
            Phase::Idle if !buf.is_empty() => Phase::Head {
                since: first_byte,
                scanned: 0,
            }
            .step(buf, limits, budget, now, first_byte),
            Phase::Head { since, scanned } => match parse_head(buf, scanned, limits) {
                Ok(Parsed::Partial { scanned }) => Step::Wait(Phase::Head { since, scanned }),
                Ok(Parsed::Complete { head, len }) => {
                    buf.drain(..len);
                    match BodyDecoder::new(head.framing) {
                        None => Step::Request(Phase::Idle, Box::new(head), Vec::new(), since),
                        Some(decoder) => Phase::Body {
                            head: Box::new(head),
                            started: since,
                            decoder,
                            body: Vec::new(),
                            since: now,
                            received: 0,
                            continued: false,
                            reservation: None,
                        }
                        .step(buf, limits, budget, now, first_byte),
                    }
                }
                Err(e) => Step::Fail(e),
            },
            Phase::Body {
                head,
                started,
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
                        return Step::Request(Phase::Idle, head, body, started);
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
                        started,
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
    pub(super) fn deadline(&self, limits: &Limits) -> Option<(Instant, CloseReason)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(len: usize) -> Vec<u8> {
        format!("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").into_bytes()
    }

    /// Steps a fresh connection's phase over `input`.
    fn step(input: &[u8], limits: &Limits, budget: &Arc<BodyBudget>, now: Instant) -> Step {
        let mut buf = input.to_vec();
        Phase::Idle.step(&mut buf, limits, budget, now, now)
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
        let Step::Request(_, _, body, _) = waiting.step(&mut rest, &limits, &budget, now, now)
        else {
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
}
