//! What request handlers implement and receive.
//!
//! A handler answers at once ([`Outcome::Ready`]) or parks the request
//! ([`Outcome::Deferred`]) after taking a [`Completion`] from the context; the connection then
//! waits, without blocking its event loop, until someone calls [`Completion::complete`] from any
//! thread. Answers on one connection still leave in request order.

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::CertificateDer;

use super::HttpError;
use super::metrics::Metrics;
use super::request::Request;
use super::response::Response;
use super::router::Refusals;

/// Answers requests. Implemented for `Fn(&Request, &RequestContext) -> Outcome`. A handler
/// renders its own refusals: the transport has no error type for it to return.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request<'_>, ctx: &RequestContext<'_>) -> Outcome;
}

impl<F> Handler for F
where
    F: Fn(&Request<'_>, &RequestContext<'_>) -> Outcome + Send + Sync + 'static,
{
    fn handle(&self, req: &Request<'_>, ctx: &RequestContext<'_>) -> Outcome {
        self(req, ctx)
    }
}

/// A handler's answer.
#[derive(Debug)]
pub enum Outcome {
    /// The response, now.
    Ready(Response),
    /// The handler called [`RequestContext::defer`] and moved the [`Completion`] somewhere that
    /// will complete it (e.g. the store writer's reply closure).
    Deferred,
}

impl From<Response> for Outcome {
    fn from(r: Response) -> Self {
        Self::Ready(r)
    }
}

/// Facts about the TLS session a request arrived on.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: Option<rustls::ProtocolVersion>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The client's certificate chain (end entity first), verified against the trust store
    /// during the handshake. `None` without mutual TLS.
    pub client_certificates: Option<Vec<CertificateDer<'static>>>,
}

/// Per-loop channel back to the event loop, shared by all its connections.
#[derive(Debug, Clone)]
pub(crate) struct LoopHandle {
    pub tx: crossbeam::channel::Sender<Completed>,
    pub waker: Arc<mio::Waker>,
    /// Words the 500 a dropped [`Completion`] sends.
    pub refuse: Refusals,
}

/// A finished deferred request on its way back to its loop.
#[derive(Debug)]
pub(crate) struct Completed {
    pub token: usize,
    pub generation: u64,
    pub seq: u64,
    pub response: Response,
}

/// Everything about a request that is not in the request itself.
pub struct RequestContext<'a> {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: Option<&'a TlsInfo>,
    pub(crate) metrics: &'a Arc<Metrics>,
    pub(crate) received: Instant,
    pub(crate) slot: Slot<'a>,
    pub(crate) deferred: Cell<bool>,
}

/// Where a deferred answer must go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot<'a> {
    pub handle: &'a LoopHandle,
    pub token: usize,
    pub generation: u64,
    pub seq: u64,
}

impl RequestContext<'_> {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the request came over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls
    }

    /// The verified client certificate chain (DER, end entity first) under mutual TLS.
    pub fn client_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.and_then(|t| t.client_certificates.as_deref())
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.metrics
    }

    /// When the request's first byte was read.
    pub fn received(&self) -> Instant {
        self.received
    }

    /// Parks this request: the handler must then return [`Outcome::Deferred`] and move the
    /// returned [`Completion`] to whoever finishes the work.
    pub fn defer(&self) -> Completion {
        self.deferred.set(true);
        Completion {
            inner: Some(CompletionInner {
                handle: self.slot.handle.clone(),
                token: self.slot.token,
                generation: self.slot.generation,
                seq: self.slot.seq,
            }),
        }
    }
}

impl fmt::Debug for RequestContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("peer", &self.peer)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The promise to answer a deferred request. `Send + 'static`: move it into the closure that
/// runs when the work is done. Dropping it unanswered sends a 500, so a lost completion cannot
/// hang a connection.
#[derive(Debug)]
#[must_use = "a dropped Completion answers its request with 500"]
pub struct Completion {
    inner: Option<CompletionInner>,
}

#[derive(Debug)]
struct CompletionInner {
    handle: LoopHandle,
    token: usize,
    generation: u64,
    seq: u64,
}

impl Completion {
    /// Sends the answer and wakes the loop. Anything that renders into a [`Response`] will
    /// do (the application renders its `Result`s through its error mapping).
    pub fn complete(mut self, answer: impl Into<Response>) {
        self.send(answer.into());
    }

    fn send(&mut self, response: Response) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let done = Completed {
            token: inner.token,
            generation: inner.generation,
            seq: inner.seq,
            response,
        };
        // Send fails only if the loop has exited (shutdown deadline passed): nobody to answer.
        if inner.handle.tx.send(done).is_ok()
            && let Err(e) = inner.handle.waker.wake()
        {
            tracing::error!(error = %e, "could not wake event loop");
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(refuse) = self.inner.as_ref().map(|i| i.handle.refuse) {
            tracing::error!("deferred request dropped without an answer");
            self.send(refuse(&HttpError::Internal("deferred request abandoned")));
        }
    }
}
