//! The transport: one hand-written mio event loop per core, rustls for TLS, httparse for the
//! request head.
//!
//! Shape (after mio's `examples/tcp_server.rs` and rustls' `tlsserver-mio.rs`): each loop owns a
//! `Poll`, a clone of the listening socket, a `Waker` and a slab of connections. A connection is
//! a small state machine ([`conn`]) that reads bytes, parses whole requests ([`request`],
//! [`body`]) before anything acts on them, hands each to the [`Router`], and writes the answers
//! back strictly in request order.
//!
//! The transport knows nothing above it: a handler answers with an [`Outcome`], and the
//! refusals the transport decides itself ([`HttpError`]) are worded by the renderer the
//! application gives the [`Router`], so the application's error mapping stays in one place.
//!
//! Handlers never block the loop. A handler that needs a durable write returns
//! [`Outcome::Deferred`] after taking a [`Completion`] from its [`RequestContext`]; whoever
//! finishes the work (the store's writer thread) calls [`Completion::complete`], which sends the
//! response to the owning loop and wakes it. Every limit an attacker controls lives in
//! [`Limits`]; every deadline is a per-loop timer, so there is no timer thread.

pub mod admission;
pub mod body;
pub mod conn;
pub mod date;
pub mod drain;
pub mod event_loop;
pub mod handler;
pub mod metrics;
pub mod request;
pub mod response;
pub mod router;

use std::time::Duration;

pub use event_loop::{RunningServer, Server, ServerConfig, ShutdownHandle};
pub use handler::{Completion, Handler, Outcome, RequestContext, TlsInfo};
pub use metrics::Metrics;
pub use request::Request;
pub use response::Response;
pub use router::{Refusals, RouteId, Router};

/// A request the transport refuses before any handler sees it, or an answer it had to make up
/// itself. The transport does not word these: the [`Router`]'s refusal renderer (the
/// application's one error mapping) turns each into a [`Response`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Syntax or framing the server will not guess at (bare LF, obs-fold, CL + TE, ...).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request line is longer than `Limits::max_request_line`.
    #[error("request line too long")]
    UriTooLong,
    /// The head is larger than `Limits::max_header_bytes`.
    #[error("request header section too large")]
    HeadersTooLarge,
    /// More header fields than `Limits::max_headers`.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The body is larger than `Limits::max_body`.
    #[error("request body too large")]
    BodyTooLarge,
    /// The head did not arrive within `Limits::request_head_timeout`, or the body came slower
    /// than `Limits::min_body_rate`.
    #[error("request not received in time")]
    Timeout,
    /// A transfer coding other than `chunked`.
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// An `Expect` other than `100-continue`.
    #[error("unsupported expectation")]
    ExpectationFailed,
    /// HTTP/2 preface or another version httparse does not speak.
    #[error("unsupported HTTP version")]
    VersionNotSupported,
    /// The server-wide budget for buffered request bodies (`Limits::max_body_buffer`) is
    /// spent: 503 with `Retry-After`, the client may send again shortly.
    #[error("server busy: too many request bodies in progress; retry shortly")]
    Overloaded,
    /// No route has this path.
    #[error("no such resource")]
    NotFound,
    /// The path has routes, none for this method (the method is the field).
    #[error("method {0} not allowed")]
    MethodNotAllowed(String),
    /// A `{name}` path segment (the name is the field) is not validly percent-encoded.
    #[error(
        "path parameter {0}: malformed percent-encoding (a '%' needs two hex digits, and the \
         decoded value must be UTF-8)"
    )]
    BadPathParameter(String),
    /// No answer came from the handler: it panicked, or deferred and lost its completion.
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// Every size, count and time an HTTP client controls. Defaults are conservative for an
/// authority whose requests and responses are a few kilobytes of JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (method, target, version). Default 8 KiB; beyond it: 414.
    pub max_request_line: usize,
    /// Largest request head (request line + header fields). Default 16 KiB; beyond it: 431.
    pub max_header_bytes: usize,
    /// Most header fields. Default 64; beyond it: 431.
    pub max_headers: usize,
    /// Largest request body after de-chunking. Default 1 MiB; beyond it: 413.
    pub max_body: usize,
    /// Time from the first byte of a request to the end of its head (slowloris). Default 10 s;
    /// then 408 and close. Also the grace period before `min_body_rate` applies.
    pub request_head_timeout: Duration,
    /// Minimum average body rate in bytes per second after the grace period. Default 1024;
    /// slower: 408 and close.
    pub min_body_rate: u64,
    /// Longest time from the end of a request head to the end of its body, however fast the
    /// body started: a client that sends most of a body at once and then stalls holds its
    /// buffer no longer than this. Default 30 s; then 408 and close.
    pub body_timeout: Duration,
    /// Request body bytes all connections together may hold while their bodies are still
    /// arriving. A body that arrives with its head never counts. Default 32 MiB; a body that
    /// would exceed it gets 503 with `Retry-After` and the connection closes.
    pub max_body_buffer: usize,
    /// Longest time queued output may wait for a client that does not read. Default 10 s; then
    /// the connection is closed.
    pub write_timeout: Duration,
    /// Longest time a keep-alive connection may sit between requests. Default 60 s.
    pub idle_timeout: Duration,
    /// Longest TLS handshake, counted from the first ClientHello byte. Default 10 s.
    pub handshake_timeout: Duration,
    /// Longest time a new connection may stay silent: no ClientHello byte (TLS) or no request
    /// byte (plain HTTP, or after the handshake). Default 5 s. Such connections are also the
    /// first closed, oldest first, when the server needs room.
    pub hello_timeout: Duration,
    /// Requests served on one connection before it is closed (`Connection: close` on the last
    /// answer). Default 1000.
    pub max_requests_per_connection: u64,
    /// Open connections across all loops. When full, a new connection closes the oldest idle
    /// one (silent or keep-alive between requests) of its loop; if none is idle, the new one
    /// is closed at once. Default 10 000, lowered at start to what the file-descriptor limit
    /// allows.
    pub max_connections: usize,
    /// Open connections from one source address (IPv6: one /64). More are closed at accept.
    /// Default 1024: far above the 32–64 connections the load generator and benchmarks open
    /// from 127.0.0.1, far below `max_connections`.
    pub max_connections_per_source: usize,
    /// Concurrent TLS handshakes doing work across all loops. A connection takes a slot when
    /// its first ClientHello bytes arrive, not at accept, so silent sockets take none; a
    /// ClientHello beyond the limit closes its connection. Default 256: handshakes cost CPU.
    pub max_tls_handshakes: usize,
    /// Requests parsed but not yet answered on one connection (pipelining depth). Default 32;
    /// beyond it the connection stops reading until answers drain.
    pub max_pipelined: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_line: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body: 1024 * 1024,
            request_head_timeout: Duration::from_secs(10),
            min_body_rate: 1024,
            body_timeout: Duration::from_secs(30),
            max_body_buffer: 32 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(5),
            max_requests_per_connection: 1000,
            max_connections: 10_000,
            max_connections_per_source: 1024,
            max_tls_handshakes: 256,
            max_pipelined: 32,
        }
    }
}

/// A stand-in for the application's refusal renderer, so the transport's tests need nothing
/// above it: the statuses the application's mapping gives, an OAuth-shaped body.
#[cfg(test)]
pub(crate) mod testing {
    use super::{HttpError as H, Response};

    pub fn refusal(e: &H) -> Response {
        let (status, code) = match e {
            H::NotFound => (404, "not_found"),
            H::MethodNotAllowed(_) => (405, "method_not_allowed"),
            H::Timeout => (408, "invalid_request"),
            H::BodyTooLarge => (413, "invalid_request"),
            H::UriTooLong => (414, "invalid_request"),
            H::ExpectationFailed => (417, "invalid_request"),
            H::HeadersTooLarge | H::TooManyHeaders => (431, "invalid_request"),
            H::Internal(_) => (500, "server_error"),
            H::UnsupportedTransferCoding => (501, "invalid_request"),
            H::Overloaded => (503, "temporarily_unavailable"),
            H::VersionNotSupported => (505, "invalid_request"),
            _ => (400, "invalid_request"),
        };
        let body = serde_json::json!({ "error": code, "error_description": e.to_string() });
        let r = Response::raw_json(status, body.to_string().into_bytes());
        match e {
            H::Overloaded => r.header("Retry-After", "1"),
            _ => r,
        }
    }
}
