//! The authority's one error type and the one place that maps it to the wire.
//!
//! Every layer keeps its own family enum (`store::StoreError`, `http::HttpError`,
//! `latchkey_core::Error`, [`ApiError`]) and folds into [`Error`]. [`WireError::from`] is the
//! only code that decides an HTTP status and OAuth `error` code: handlers return `Error`, the
//! transport knows nothing of either: the API layer renders `Error` into an `http::Response`
//! here ([`Response::from_error`], [`refusal`] for what the transport refuses itself). Keep it
//! that way so a status can be audited in one screen.

use std::fmt;

use crate::http::{HttpError, Outcome, Response};

/// Everything that can go wrong in the authority.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request was understood but refused by an API rule.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A command-line tool failure, already worded for the operator (never on the wire).
    #[error("{0}")]
    Cli(String),
    /// The configuration (TOML file or flags) is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Local I/O outside the store (files, sockets).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The transport refused a request before any handler saw it.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The store refused or failed an operation.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The token core refused a token or key (malformed, rejected, unusable key, fail-closed).
    #[error(transparent)]
    Token(#[from] latchkey_core::Error),
}

impl From<latchkey_core::RejectedError> for Error {
    fn from(e: latchkey_core::RejectedError) -> Self {
        Error::Token(e.into())
    }
}

impl From<latchkey_core::MalformedError> for Error {
    fn from(e: latchkey_core::MalformedError) -> Self {
        Error::Token(e.into())
    }
}

impl From<latchkey_core::KeyError> for Error {
    fn from(e: latchkey_core::KeyError) -> Self {
        Error::Token(e.into())
    }
}

/// API-level refusals: the request parsed, but the rules say no.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidClient(String),
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    UnsupportedGrantType(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    InvalidToken(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A body within the transport's limit but over a resource's own size bound.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Too many failed authentications: refused without checking credentials until
    /// `retry_after` seconds have passed.
    #[error("{description}")]
    Throttled {
        retry_after: u64,
        description: String,
    },
    /// The server cannot decide the request yet (it restarted moments ago, or cannot record
    /// it): the client may send it again in `retry_after` seconds.
    #[error("{description}")]
    Unavailable {
        retry_after: u64,
        description: String,
    },
}

/// What goes on the wire for an error: status, OAuth `error` code, human description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl WireError {
    pub fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }

    /// The OAuth-style JSON body: `{"error": .., "error_description": ..}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "error": self.error, "error_description": self.description })
            .to_string()
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.error, self.description)
    }
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        match e {
            Error::Api(a) => api_wire(a),
            Error::Http(h) => http_wire(h),
            Error::Store(s) => store_wire(s),
            Error::Token(t) => token_wire(t),
            // Internal failures never leak their details to the client; they are logged.
            Error::Config(_) | Error::Io(_) | Error::Cli(_) => {
                WireError::new(500, "server_error", "internal error; see the server log")
            }
        }
    }
}

fn api_wire(e: &ApiError) -> WireError {
    let (status, code) = match e {
        // RFC 6749 has no code for this. 429 with Retry-After is RFC 6585's answer; the
        // OAuth code is RFC 8628's `slow_down` (registered for the token endpoint), as the
        // client's own failures, not the server's state, caused it; `temporarily_unavailable`
        // would tell well-behaved clients the whole server is down.
        ApiError::Throttled { retry_after, .. } => {
            let mut w = WireError::new(429, "slow_down", e.to_string());
            w.retry_after = Some(*retry_after);
            return w;
        }
        ApiError::Unavailable { retry_after, .. } => {
            let mut w = WireError::new(503, "temporarily_unavailable", e.to_string());
            w.retry_after = Some((*retry_after).max(1));
            return w;
        }
        ApiError::InvalidRequest(_) => (400, "invalid_request"),
        ApiError::InvalidClient(_) => (401, "invalid_client"),
        ApiError::InvalidGrant(_) => (400, "invalid_grant"),
        ApiError::UnsupportedGrantType(_) => (400, "unsupported_grant_type"),
        ApiError::InvalidScope(_) => (400, "invalid_scope"),
        ApiError::InvalidToken(_) => (401, "invalid_token"),
        ApiError::Forbidden(_) => (403, "insufficient_scope"),
        ApiError::NotFound(_) => (404, "not_found"),
        ApiError::MethodNotAllowed(_) => (405, "method_not_allowed"),
        ApiError::Conflict(_) => (409, "conflict"),
        ApiError::PreconditionFailed(_) => (412, "precondition_failed"),
        ApiError::UnsupportedMediaType(_) => (415, "invalid_request"),
        ApiError::PayloadTooLarge(_) => (413, "invalid_request"),
    };
    WireError::new(status, code, e.to_string())
}

fn http_wire(e: &HttpError) -> WireError {
    use HttpError as H;
    let status = match e {
        H::Malformed(_) => 400,
        H::Timeout => 408,
        H::BodyTooLarge => 413,
        H::UriTooLong => 414,
        H::ExpectationFailed => 417,
        H::HeadersTooLarge | H::TooManyHeaders => 431,
        H::UnsupportedTransferCoding => 501,
        H::VersionNotSupported => 505,
        H::BadPathParameter(_) => 400,
        H::NotFound => return WireError::new(404, "not_found", e.to_string()),
        H::MethodNotAllowed(_) => return WireError::new(405, "method_not_allowed", e.to_string()),
        H::Overloaded => {
            let mut w = WireError::new(503, "temporarily_unavailable", e.to_string());
            w.retry_after = Some(1);
            return w;
        }
        H::Internal(_) => {
            return WireError::new(500, "server_error", "internal error; see the server log");
        }
    };
    WireError::new(status, "invalid_request", e.to_string())
}

/// How the API renders errors into responses: through [`WireError::from`], nowhere else.
impl Response {
    /// The OAuth-style error body and status [`WireError`] decides for `e`. Internal errors
    /// are logged here, once, since their details never reach the client.
    pub fn from_error(e: &Error) -> Self {
        let wire = WireError::from(e);
        if wire.status >= 500 {
            tracing::error!(error = %e, "request failed");
        }
        Self::from_wire(&wire)
    }

    pub fn from_wire(wire: &WireError) -> Self {
        let r = Self::raw_json(wire.status, wire.to_json().into_bytes());
        match wire.retry_after {
            Some(secs) => r.header("Retry-After", secs.to_string()),
            None => r,
        }
    }

    /// A JSON body.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        // Serialising a value built by our own code into a Vec cannot fail on I/O; a failing
        // `Serialize` impl (non-string map keys) is a bug, answered with 500 rather than a panic.
        match serde_json::to_vec(value) {
            Ok(body) => Self::raw_json(status, body),
            Err(e) => Self::from_error(&Error::Io(std::io::Error::other(e))),
        }
    }
}

/// A handler's or a deferred request's result, rendered.
impl From<Result<Response, Error>> for Response {
    fn from(result: Result<Response, Error>) -> Self {
        result.unwrap_or_else(|e| Response::from_error(&e))
    }
}

/// A route handler's result, rendered.
impl From<Result<Outcome, Error>> for Outcome {
    fn from(result: Result<Outcome, Error>) -> Self {
        result.unwrap_or_else(|e| Outcome::Ready(Response::from_error(&e)))
    }
}

/// The transport's own refusals ([`crate::http::Refusals`]), rendered like every other error.
pub fn refusal(e: &HttpError) -> Response {
    Response::from_error(&Error::Http(e.clone()))
}

/// Token-core errors where a handler did not choose a more specific OAuth code: unreadable
/// input is a bad request, a refused credential an invalid token, an unusable key a bad
/// request (keys reach the core only from requests and imports), fail-closed 503.
fn token_wire(e: &latchkey_core::Error) -> WireError {
    use latchkey_core::Error as T;
    match e {
        T::Malformed(_) => WireError::new(400, "invalid_request", e.to_string()),
        T::Rejected(_) => WireError::new(401, "invalid_token", e.to_string()),
        T::Key(_) => WireError::new(400, "invalid_request", e.to_string()),
        T::Unavailable(_) => WireError::new(503, "temporarily_unavailable", e.to_string()),
        _ => WireError::new(500, "server_error", "internal error; see the server log"),
    }
}

/// Store refusals become 4xx with their text; store failures are internal (500, no details).
pub fn store_wire(e: &crate::store::StoreError) -> WireError {
    use crate::store::StoreError as S;
    let (status, code) = match e {
        S::NotFound { .. } => (404, "not_found"),
        S::Conflict(_) | S::InvalidState(_) => (409, "conflict"),
        S::PreconditionFailed { .. } => (412, "precondition_failed"),
        S::InvalidIat(_) => (400, "invalid_grant"),
        S::StaleRat => (401, "invalid_token"),
        S::Invalid(_) => (400, "invalid_request"),
        S::ClusterUnavailable(_) => {
            let mut w = WireError::new(503, "temporarily_unavailable", e.to_string());
            w.retry_after = Some(1);
            return w;
        }
        _ => return WireError::new(500, "server_error", "internal error; see the server log"),
    };
    WireError::new(status, code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_details() {
        let e = Error::Config("secret path /etc/x".into());
        let w = WireError::from(&e);
        assert_eq!(w.status, 500);
        assert!(!w.description.contains("/etc/x"));
    }

    #[test]
    fn store_errors_map_to_statuses() {
        use crate::store::StoreError as S;
        let check = |e: S, status: u16, code: &str| {
            let w = WireError::from(&Error::Store(e));
            assert_eq!((w.status, w.error), (status, code), "{w}");
        };
        check(
            S::NotFound {
                kind: "agent",
                id: "a".into(),
            },
            404,
            "not_found",
        );
        check(S::Conflict("dup".into()), 409, "conflict");
        check(
            S::PreconditionFailed {
                expected: 1,
                current: 2,
            },
            412,
            "precondition_failed",
        );
        check(S::InvalidIat("already used"), 400, "invalid_grant");
        check(S::StaleRat, 401, "invalid_token");
        check(S::Poisoned, 500, "server_error");
        let w = store_wire(&S::Corrupt {
            table: "agents",
            reason: "secret detail".into(),
        });
        assert!(!w.description.contains("secret detail"));
    }

    #[test]
    fn token_errors_map_by_family() {
        use latchkey_core::{MalformedError, RejectedError, UnavailableError};
        let check = |e: latchkey_core::Error, status: u16, code: &str| {
            let w = WireError::from(&Error::Token(e));
            assert_eq!((w.status, w.error), (status, code), "{w}");
        };
        check(MalformedError::Segments.into(), 400, "invalid_request");
        check(RejectedError::Expired.into(), 401, "invalid_token");
        check(
            UnavailableError::ReplayCacheFull.into(),
            503,
            "temporarily_unavailable",
        );
        check(latchkey_core::Error::Crypto, 500, "server_error");
    }

    #[test]
    fn throttled_is_429_with_retry_after() {
        let w = WireError::from(&Error::Api(ApiError::Throttled {
            retry_after: 7,
            description: "too many failures".into(),
        }));
        assert_eq!(
            (w.status, w.error, w.retry_after),
            (429, "slow_down", Some(7))
        );
        let r = crate::http::Response::from_wire(&w);
        assert_eq!(r.header_value("Retry-After"), Some("7"));
    }

    #[test]
    fn api_errors_keep_their_description() {
        let w = WireError::from(&Error::Api(ApiError::Conflict("name taken".into())));
        assert_eq!((w.status, w.error), (409, "conflict"));
        let body: serde_json::Value = serde_json::from_str(&w.to_json()).unwrap();
        assert_eq!(body["error_description"], "name taken");
    }

    /// What the transport refuses is worded here too: router refusals keep their OAuth codes,
    /// a spent body budget and a token request that must wait both carry `Retry-After`.
    #[test]
    fn transport_refusals_and_retry_later_map_here() {
        let check = |e: HttpError, status: u16, code: &str, retry: Option<&str>| {
            let r = refusal(&e);
            let body = String::from_utf8_lossy(r.body_bytes()).into_owned();
            assert_eq!(r.status, status, "{e}");
            assert!(body.contains(code) && body.contains(&e.to_string()) || status == 500);
            assert_eq!(r.header_value("Retry-After"), retry, "{e}");
        };
        check(HttpError::NotFound, 404, "not_found", None);
        check(
            HttpError::MethodNotAllowed("PUT".into()),
            405,
            "method_not_allowed",
            None,
        );
        check(
            HttpError::BadPathParameter("id".into()),
            400,
            "invalid_request",
            None,
        );
        check(
            HttpError::Overloaded,
            503,
            "temporarily_unavailable",
            Some("1"),
        );
        check(
            HttpError::Internal("handler panicked"),
            500,
            "server_error",
            None,
        );
        let r = refusal(&HttpError::Internal("secret detail"));
        assert!(!String::from_utf8_lossy(r.body_bytes()).contains("secret detail"));
        for (after, header) in [(0, "1"), (30, "30")] {
            let e = Error::Api(ApiError::Unavailable {
                retry_after: after,
                description: "restarted moments ago".into(),
            });
            let r = Response::from_error(&e);
            assert_eq!(r.status, 503);
            assert_eq!(r.header_value("Retry-After"), Some(header));
            assert!(String::from_utf8_lossy(r.body_bytes()).contains("temporarily_unavailable"));
        }
    }
}
