//! The authority's one error type and the one place that maps it to the wire.
//!
//! Every layer keeps its own family enum (`store::StoreError`, `http::HttpError`,
//! `latchkey_core::Error`, [`ApiError`]) and folds into [`Error`]. [`WireError::from`] is the
//! only code that decides an HTTP status and OAuth `error` code: handlers return `Error`, the
//! transport renders `WireError`. Keep it that way so a status can be audited in one screen.

use std::fmt;

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
    Http(#[from] crate::http::HttpError),
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
    /// No room for this request now (a bounded pool is full): 503 with `Retry-After`.
    #[error("{description}")]
    Busy {
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
        ApiError::Busy { retry_after, .. } => {
            let mut w = WireError::new(503, "temporarily_unavailable", e.to_string());
            w.retry_after = Some(*retry_after);
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

fn http_wire(e: &crate::http::HttpError) -> WireError {
    use crate::http::HttpError as H;
    let status = match e {
        H::Malformed(_) => 400,
        H::Timeout => 408,
        H::BodyTooLarge => 413,
        H::UriTooLong => 414,
        H::ExpectationFailed => 417,
        H::HeadersTooLarge | H::TooManyHeaders => 431,
        H::UnsupportedTransferCoding => 501,
        H::VersionNotSupported => 505,
        H::Overloaded => {
            return WireError::new(503, "temporarily_unavailable", e.to_string());
        }
    };
    WireError::new(status, "invalid_request", e.to_string())
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
}
