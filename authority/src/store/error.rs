//! The store's one error family. redb's many error types are folded per operation into
//! [`StoreError::Db`], which keeps the operation's name so a log line says what failed.

use std::path::PathBuf;

/// Everything the store can refuse or fail with.
///
/// Refusals (`NotFound` .. `StaleRat`) are answers about the data and map to 4xx; the rest
/// are failures of the store itself and map to 500 (see `error::store_wire`).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist (or is not visible to the caller's tenant).
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// A uniqueness rule was broken: duplicate entity id, agent name, alias, fingerprint.
    #[error("{0}")]
    Conflict(String),
    /// An `If-Match` eTag did not match the current one.
    #[error("eTag mismatch: expected {expected}, current is {current}")]
    PreconditionFailed { expected: u64, current: u64 },
    /// The operation is not allowed in the current state (e.g. rotating an offboarded agent).
    #[error("{0}")]
    InvalidState(String),
    /// The initial access token is unknown, expired, already used, or for another agent.
    #[error("initial access token rejected: {0}")]
    InvalidIat(&'static str),
    /// The presented registration access token is not the current one of that client.
    #[error("registration access token is not current")]
    StaleRat,
    /// A stored record is unreadable: unknown format version, bad encoding, failed unsealing.
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// A record has a format version this release does not know (written by a newer release).
    #[error(
        "{record} record has format version {found}, this release reads only version {supported}; \
         was the data directory written by a newer latchkey?"
    )]
    UnknownRecordVersion {
        record: &'static str,
        found: u8,
        supported: u8,
    },
    /// The data directory does not exist or holds no database.
    #[error("no latchkey data directory at {}", .0.display())]
    MissingDataDir(PathBuf),
    /// Another process (a running server?) holds the database lock.
    #[error("database {} is locked by another process (is a latchkey server running?)", .0.display())]
    Locked(PathBuf),
    /// The database exists but its master key file does not: sealed secrets are unreadable.
    #[error(
        "master key file {} is missing but the database exists; restore the key file from backup \
         (a new key cannot read the sealed secrets)", .0.display()
    )]
    MissingKeyFile(PathBuf),
    /// The master key file is passphrase-wrapped and the passphrase is wrong (or absent).
    #[error("wrong or missing passphrase for the master key file")]
    WrongPassphrase,
    /// The master key file is malformed, or belongs to another database.
    #[error("master key file {}: {reason}", path.display())]
    BadKeyFile { path: PathBuf, reason: String },
    /// A file sealed under the master key (a TLS private key) is malformed or does not open.
    #[error("sealed file {}: {reason}", path.display())]
    BadSealedFile { path: PathBuf, reason: String },
    /// The etcd cluster of `--store etcd://…` is unreachable, refused a request, or holds
    /// something this node cannot use.
    #[error("etcd cluster {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
    /// The cluster did not take a write now (no quorum, a timeout, contention, its space
    /// quota): nothing was acknowledged; the client may retry. The text is safe to show.
    #[error("{0}")]
    ClusterUnavailable(String),
    /// The writer failed an earlier commit (an I/O error); the store must be reopened.
    #[error("the store failed an earlier write and must be reopened")]
    Poisoned,
    /// The writer thread is gone (store closed).
    #[error("the store is closed")]
    Closed,
    /// A redb failure during the named operation.
    #[error("database error during {op}: {source}")]
    Db {
        op: &'static str,
        source: redb::Error,
    },
    /// A file-system failure outside redb (key file, directories, backup file).
    #[error("I/O error during {op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    /// A value is out of the bounds the store accepts (sizes, counts).
    #[error("{0}")]
    Invalid(String),
    /// A write answered with another shape of outcome than its op yields (see `outcome.rs`).
    #[error("the store answered {got} where {expected} was expected")]
    UnexpectedOutcome {
        expected: &'static str,
        got: &'static str,
    },
}

impl StoreError {
    /// Folds any redb error into [`StoreError::Db`], naming the operation.
    pub(crate) fn db(op: &'static str) -> impl FnOnce(redb_err::AnyRedb) -> StoreError {
        move |e| StoreError::Db { op, source: e.0 }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        move |source| StoreError::Io { op, source }
    }

    /// Whether this error says the store itself is broken (as opposed to a refusal).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::UnknownRecordVersion { .. }
                | StoreError::Poisoned
                | StoreError::Closed
                | StoreError::Db { .. }
                | StoreError::Io { .. }
                | StoreError::MissingDataDir(_)
                | StoreError::Locked(_)
                | StoreError::MissingKeyFile(_)
                | StoreError::WrongPassphrase
                | StoreError::BadKeyFile { .. }
                | StoreError::BadSealedFile { .. }
                | StoreError::UnexpectedOutcome { .. }
        )
    }
}

/// Lets `map_err(StoreError::db("op"))` accept every redb error type.
pub(crate) mod redb_err {
    pub struct AnyRedb(pub redb::Error);

    macro_rules! from_redb {
        ($($t:ty),*) => {$(
            impl From<$t> for AnyRedb {
                fn from(e: $t) -> Self {
                    AnyRedb(e.into())
                }
            }
        )*};
    }
    from_redb!(
        redb::Error,
        redb::DatabaseError,
        redb::TransactionError,
        redb::TableError,
        redb::StorageError,
        redb::CommitError,
        redb::SavepointError,
        redb::CompactionError
    );
}

/// `result.db("op")?` — fold any redb error into [`StoreError::Db`].
pub(crate) trait DbResult<T> {
    fn db(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb_err::AnyRedb>> DbResult<T> for Result<T, E> {
    fn db(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::db(op)(e.into()))
    }
}
