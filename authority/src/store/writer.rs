//! The writer thread: the only owner of write transactions.
//!
//! Group commit: it blocks for one request, drains whatever else is queued (up to
//! `max_batch`), applies each op in one transaction (each validated on its own, see `ops`),
//! commits once with two-phase commit, publishes the hot-index changes, and only then answers
//! every request with its own outcome. One fsync pair is shared by the whole group, which is
//! where the throughput under concurrency comes from.
//!
//! Only a storage error fails the group. An op's own problems (a refusal, a value too large to
//! encode, an oversize key or audit field) are found while it plans, before it writes anything
//! (see `ops::apply`), and answer that op alone. A storage error (redb I/O) answers the whole
//! group with the error and poisons the store: redb refuses further writes after an I/O error,
//! and an unacknowledged group may or may not be on disk, which the next open settles. Nothing
//! is acknowledged that was not committed.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{Receiver, Sender};
use redb::Database;

use super::commit::{Committer, Reply};
use super::error::{DbResult, StoreError};
use super::hot::{HotChange, HotIndex};
use super::ops::{self, Tables};
use super::seal::MasterKey;
use super::{ObserverSlot, WriteOp, WriteOutcome};

/// One queued op and where its answer goes.
struct Request {
    op: WriteOp,
    reply: Reply,
}

/// The redb engine's [`Committer`]: a bounded queue in front of the writer thread. Dropping it
/// closes the queue; the thread answers what is queued, then ends.
pub(crate) struct Writer {
    tx: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn spawn(
        db: Arc<Database>,
        key: Arc<MasterKey>,
        hot: Arc<HotIndex>,
        observer: Arc<ObserverSlot>,
        queue_capacity: usize,
        max_batch: usize,
    ) -> Result<Writer, StoreError> {
        let (tx, rx) = crossbeam::channel::bounded(queue_capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("latchkey-store-writer".into())
            .spawn(move || run(&db, &key, &hot, &observer, &rx, max_batch.max(1)))
            .map_err(StoreError::io("spawn store writer"))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Committer for Writer {
    fn submit(&self, op: WriteOp, reply: Reply) {
        let req = Request { op, reply };
        let Some(tx) = &self.tx else {
            (req.reply)(Err(StoreError::Closed));
            return;
        };
        if let Err(crossbeam::channel::SendError(req)) = tx.send(req) {
            (req.reply)(Err(StoreError::Closed));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.thread.take() {
            // A reply closure may hold the last handle and drop it on the writer thread itself;
            // joining there would wait forever. The thread ends on its own once the queue closes.
            if w.thread().id() != std::thread::current().id() {
                let _ = w.join();
            }
        }
    }
}

fn run(
    db: &Database,
    key: &MasterKey,
    hot: &HotIndex,
    observer: &ObserverSlot,
    rx: &Receiver<Request>,
    max_batch: usize,
) {
    let mut poisoned = false;
    let mut batch = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let taken = std::time::Instant::now();
        if let Some(o) = observer.get() {
            o.queue_depth(rx.len());
        }
        if poisoned {
            for r in batch.drain(..) {
                (r.reply)(Err(StoreError::Poisoned));
            }
            continue;
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut ops = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            replies.push(r.reply);
            ops.push(r.op);
        }
        let size = ops.len();
        match commit_group(db, key, ops) {
            Ok(results) => {
                if let Some(o) = observer.get() {
                    o.committed(size);
                    o.commit_took(taken.elapsed());
                }
                let mut answers = Vec::with_capacity(results.len());
                for applied in results {
                    for change in applied.hot {
                        hot.apply(change);
                    }
                    answers.push(applied.result);
                }
                hot.bump();
                for (reply, answer) in replies.into_iter().zip(answers) {
                    reply(answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; the store must be reopened");
                poisoned = true;
                let msg = e.to_string();
                let mut first = Some(e);
                for reply in replies {
                    // Everyone gets a storage error; the first gets the original one.
                    reply(Err(first.take().unwrap_or_else(|| StoreError::Db {
                        op: "commit",
                        source: redb::Error::Io(std::io::Error::other(msg.clone())),
                    })));
                }
            }
        }
    }
}

/// The per-op results of one committed transaction.
struct Committed {
    result: Result<WriteOutcome, StoreError>,
    hot: Vec<HotChange>,
}

fn commit_group(
    db: &Database,
    key: &MasterKey,
    ops: Vec<WriteOp>,
) -> Result<Vec<Committed>, StoreError> {
    let mut txn = db.begin_write().db("begin write")?;
    // Attacker-influenced data: redb's design notes recommend two-phase commit (it is implied
    // by the SingleWriter mode too; set it explicitly so the choice is visible). Quick repair
    // keeps reopening after a crash fast on large stores.
    txn.set_two_phase_commit(true);
    txn.set_quick_repair(true);
    let mut results = Vec::with_capacity(ops.len());
    {
        let mut tables = Tables::open(&txn)?;
        for op in ops {
            let applied = ops::apply(&mut tables, key, op)?;
            results.push(Committed {
                result: applied.result,
                hot: applied.hot,
            });
        }
    }
    txn.commit().db("commit")?;
    Ok(results)
}
