//! The commit side of the store: where a [`WriteOp`] goes to become durable.
//!
//! [`Store::submit`](super::Store::submit) hands every op to the store's one [`Committer`];
//! the committer applies it with `ops::apply` (plan, then execute) and answers it once it is
//! durable, refused or failed. The redb engine's committer is the writer thread (`writer.rs`:
//! one thread, group commit). Another engine plugs in here, behind a cargo feature, without
//! touching a handler: handlers only submit ops and read the hot index and snapshots.

use super::{StoreError, WriteOp, WriteOutcome};

/// Where an op's answer goes. Runs on the committer's thread: it must be quick and must not
/// block (queue the answer and wake the event loop).
pub(crate) type Reply = Box<dyn FnOnce(Result<WriteOutcome, StoreError>) + Send + 'static>;

/// Turns ops into durable changes, one op at a time in submission order.
///
/// What every implementation guarantees (the handlers and tests rely on it):
/// - `reply` is called exactly once: with the op's outcome only after it is durable, with its
///   refusal (an op that fails alone, having written nothing but its audit entry), or with a
///   storage error; never before the hot index shows the op's changes.
/// - Ops apply in submission order, each seeing the ones before it, so conditional ops (IAT
///   consumption, RAT rotation, eTags) have exactly one winner.
/// - `submit` never waits for the disk; it may wait while the queue in front of the committer
///   is full. After a storage error, or once closed, every op is answered with an error.
pub(crate) trait Committer: Send + Sync + 'static {
    /// Queues `op`; `reply` gets its answer.
    fn submit(&self, op: WriteOp, reply: Reply);
}
