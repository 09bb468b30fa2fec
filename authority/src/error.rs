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
    /// The configuration (TOML file or flags) is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Local I/O outside the store (files, sockets).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
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
}

/// What goes on the wire for an error: status, OAuth `error` code, human description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl WireError {
    pub fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self { status, error, description: description.into() }
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
            // Internal failures never leak their details to the client; they are logged.
            Error::Config(_) | Error::Io(_) => {
                WireError::new(500, "server_error", "internal error; see the server log")
            }
        }
    }
}

fn api_wire(e: &ApiError) -> WireError {
    let (status, code) = match e {
        ApiError::InvalidRequest(_) => (400, "invalid_request"),
        ApiError::InvalidClient(_) => (401, "invalid_client"),
        ApiError::InvalidGrant(_) => (400, "invalid_grant"),
        ApiError::UnsupportedGrantType(_) => (400, "unsupported_grant_type"),
        ApiError::InvalidToken(_) => (401, "invalid_token"),
        ApiError::Forbidden(_) => (403, "insufficient_scope"),
        ApiError::NotFound(_) => (404, "not_found"),
        ApiError::MethodNotAllowed(_) => (405, "method_not_allowed"),
        ApiError::Conflict(_) => (409, "conflict"),
        ApiError::PreconditionFailed(_) => (412, "precondition_failed"),
        ApiError::UnsupportedMediaType(_) => (415, "invalid_request"),
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
    fn api_errors_keep_their_description() {
        let w = WireError::from(&Error::Api(ApiError::Conflict("name taken".into())));
        assert_eq!((w.status, w.error), (409, "conflict"));
        let body: serde_json::Value = serde_json::from_str(&w.to_json()).unwrap();
        assert_eq!(body["error_description"], "name taken");
    }
}
