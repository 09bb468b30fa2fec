//! Requests in, answers out: dispatching whole requests to the router and serialising the
//! answers strictly in request order.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use super::phase::{Phase, Step};
use super::{Connection, Env, Socket};
use crate::http::HttpError;
use crate::http::handler::{Outcome, RequestContext, Slot};
use crate::http::metrics::CloseReason;
use crate::http::request::{Head, Request};
use crate::http::response::Response;
use crate::http::router::{Dispatch, RouteId};

/// An answer waiting its turn.
pub(super) struct Answer {
    pub seq: u64,
    /// `None` while a deferred handler works.
    pub response: Option<Response>,
    pub head_only: bool,
    pub close: bool,
    pub route: RouteId,
    /// When the request's first byte was read.
    pub received: Instant,
    /// When the answer was ready (the handler returned, or its completion arrived).
    pub answered: Instant,
}

impl<S: Socket> Connection<S> {
    /// Parses and dispatches complete requests while the pipelining bounds allow.
    pub(super) fn process(&mut self, env: &mut Env, now: Instant) -> bool {
        let mut progress = false;
        while !self.backpressured(&env.limits) {
            let phase = std::mem::replace(
                &mut self.phase,
                Phase::Closing {
                    reason: CloseReason::Io,
                },
            );
            let first_byte = self.first_byte(now);
            let buffered = self.read_buf.len();
            let step = phase.step(
                &mut self.read_buf,
                &env.limits,
                &env.admission.bodies,
                now,
                first_byte,
            );
            self.consumed(buffered - self.read_buf.len());
            match step {
                Step::Wait(phase) => {
                    self.phase = phase;
                    self.maybe_continue();
                    break;
                }
                Step::Request(phase, head, body, started) => {
                    self.phase = phase;
                    self.dispatch(env, &head, &body, started);
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
    pub(super) fn maybe_continue(&mut self) {
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
    pub(super) fn refuse(
        &mut self,
        env: &mut Env,
        e: HttpError,
        reason: CloseReason,
        now: Instant,
    ) {
        tracing::debug!(peer = %self.peer, error = %e, "request refused");
        let response = env.router.refuse(&e);
        let received = self.first_byte(now);
        self.queue.push_back(Answer {
            seq: self.next_seq,
            response: Some(response),
            head_only: false,
            close: true,
            route: env.router.unmatched(),
            received,
            answered: (env.clock)(),
        });
        self.next_seq += 1;
        self.phase = Phase::Closing { reason };
        // Nothing more is parsed: what was buffered goes back to the allocator now, not when
        // the connection finally closes (a refused flood holds no memory while it lingers).
        self.read_buf = Vec::new();
        self.arrivals.clear();
    }

    /// Runs the handler for a whole request whose first byte was read at `received`.
    pub(super) fn dispatch(&mut self, env: &mut Env, head: &Head, body: &[u8], received: Instant) {
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
                    metrics: &env.metrics,
                    received,
                    slot: Slot {
                        handle: &env.handle,
                        token: self.token,
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
            received,
            answered: (env.clock)(),
        });
        if let Some(reason) = close {
            self.phase = Phase::Closing { reason };
        }
    }

    /// Serialises finished answers at the front of the queue, in order.
    pub(super) fn move_answers(&mut self, env: &mut Env, now: Instant) {
        while let Some(front) = self.queue.front_mut() {
            let Some(response) = front.response.take() else {
                break;
            };
            let date = env.date.now();
            response.write_to(&mut self.out, date, front.head_only, front.close);
            env.metrics.record_request(
                front.route.0,
                response.status,
                front.answered.saturating_duration_since(front.received),
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
}
