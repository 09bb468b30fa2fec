//! The load generator's one error type. Errors during the timed phase are not `Error`s: they
//! are counted by kind in the results (see `stats::ErrorKind`); these are the failures that
//! stop a run (bad flags, an unreachable target, a failed preparation step).

use std::io;

/// Why the load generator could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag or the target URL does not make sense.
    #[error("{0}")]
    Usage(String),
    /// The target is not on this machine and `--allow-remote` was not given.
    #[error(
        "refusing to load {0}: not a loopback address (127.0.0.0/8, ::1, localhost); pass --allow-remote if you own it"
    )]
    NotLoopback(String),
    /// A file could not be read or written, or a socket failed during preparation.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// TLS configuration (CA file, server name).
    #[error("TLS: {0}")]
    Tls(String),
    /// The server answered a preparation request unexpectedly.
    #[error("{step}: HTTP {status}: {body}")]
    Http {
        step: String,
        status: u16,
        body: String,
    },
    /// A response that is not what the protocol says.
    #[error("{0}")]
    Protocol(String),
    /// Key generation or signing failed.
    #[error("crypto: {0}")]
    Crypto(#[from] latchkey_core::Error),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
