//! A small bounded pool for work an event loop must not do itself: reads that grow with the
//! fleet (certificate and client listings, the CRL) and blocking work (key generation,
//! PKCS#12). A handler hands the work over with [`run`] and returns `Outcome::Deferred`; a
//! pool thread does it and answers through the request's `Completion`, which wakes the loop,
//! exactly as the store's writer answers a write.
//!
//! The pool is bounded twice: `offload-threads` threads, and at most `offload-queue` jobs
//! waiting for one. A job that finds no room is refused before the request is deferred, with
//! 503 and `Retry-After` ([`ApiError::Unavailable`]), so a burst of heavy reads cannot queue without
//! limit nor hold answers that the tokens path is waiting behind.
//!
//! Metrics (the `offload` section): `latchkey_offload_queued` (jobs waiting or running) and
//! `latchkey_offload_rejected_total`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use crate::app::App;
use crate::error::{ApiError, Error};
use crate::http::{Metrics, Outcome, RequestContext, Response};

/// Seconds a refused client is told to wait.
const RETRY_AFTER: u64 = 1;

/// Sizes of the pool (`offload-threads`, `offload-queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadConfig {
    /// Threads doing the work.
    pub threads: usize,
    /// Jobs that may wait for a thread; more are refused.
    pub queue: usize,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            threads: 2,
            queue: 64,
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The pool. Its threads end when it is dropped.
pub struct Offload {
    tx: Mutex<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Jobs admitted and not finished (waiting or running).
    queued: AtomicUsize,
    rejected: AtomicU64,
    capacity: usize,
    metrics: Option<Arc<Metrics>>,
}

impl Shared {
    fn publish(&self) {
        if let Some(m) = &self.metrics {
            let lines = format!(
                "# HELP latchkey_offload_queued Jobs waiting for or running on the off-loop pool.\n\
                 # TYPE latchkey_offload_queued gauge\nlatchkey_offload_queued {}\n\
                 # HELP latchkey_offload_rejected_total Jobs refused because the off-loop pool was full.\n\
                 # TYPE latchkey_offload_rejected_total counter\nlatchkey_offload_rejected_total {}\n",
                self.queued.load(Ordering::Relaxed),
                self.rejected.load(Ordering::Relaxed),
            );
            m.set_section("offload", lines);
        }
    }
}

/// The pool had no room for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload")
            .field("queued", &self.queued())
            .field("capacity", &self.shared.capacity)
            .field("rejected", &self.rejected())
            .finish()
    }
}

impl Offload {
    /// Starts `config.threads` threads (at least one); `metrics` gets the pool's section.
    pub fn new(config: OffloadConfig, metrics: Option<Arc<Metrics>>) -> std::io::Result<Offload> {
        let threads = config.threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            capacity: threads.saturating_add(config.queue),
            metrics,
        });
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("latchkey-offload-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take one job; a poisoned lock means a
                        // thread panicked while taking one, and the receiver is still sound.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        let Ok(job) = job else { return };
                        job();
                        shared.queued.fetch_sub(1, Ordering::AcqRel);
                        shared.publish();
                    }
                })?;
        }
        shared.publish();
        Ok(Offload {
            tx: Mutex::new(tx),
            shared,
        })
    }

    /// Queues `job` if there is room, else refuses it (counted).
    pub fn try_run(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Full> {
        self.admit()?;
        self.send(Box::new(job));
        Ok(())
    }

    /// Takes a place for one job.
    fn admit(&self) -> Result<(), Full> {
        let s = &self.shared;
        let taken = s
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < s.capacity).then_some(n + 1)
            });
        if taken.is_err() {
            s.rejected.fetch_add(1, Ordering::Relaxed);
            s.publish();
            return Err(Full);
        }
        s.publish();
        Ok(())
    }

    /// Sends an admitted job. The threads live as long as the pool, so the send cannot fail
    /// while `self` exists; if it ever did, the job (and a `Completion` in it) is dropped,
    /// which answers 500 rather than hanging.
    fn send(&self, job: Job) {
        let sent = match self.tx.lock() {
            Ok(tx) => tx.send(job),
            Err(poisoned) => poisoned.into_inner().send(job),
        };
        if sent.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Jobs waiting or running.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Jobs refused so far.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }
}

/// Runs `work` on the app's pool and answers the request with its result; the event loop
/// moves on at once. When the pool is full the request is answered 503 with `Retry-After`
/// and `work` never runs.
pub fn run(
    app: &Arc<App>,
    ctx: &RequestContext<'_>,
    work: impl FnOnce() -> Result<Response, Error> + Send + 'static,
) -> Result<Outcome, Error> {
    // A place first, so a refusal is answered as an error rather than by a dropped
    // `Completion`.
    app.offload.admit().map_err(|Full| busy())?;
    let done = ctx.defer();
    app.offload.send(Box::new(move || done.complete(work())));
    Ok(Outcome::Deferred)
}

fn busy() -> Error {
    ApiError::Unavailable {
        retry_after: RETRY_AFTER,
        description: "the server is busy with other heavy requests; retry shortly".into(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use super::*;

    /// With N threads and a queue of Q, N + Q jobs are taken and the next is refused; every
    /// job taken runs and delivers its result, and room returns once they finish.
    #[test]
    fn the_pool_is_bounded_and_delivers_results() {
        let config = OffloadConfig {
            threads: 2,
            queue: 3,
        };
        let pool = Offload::new(config, None).unwrap();
        // The first jobs block until released, so the pool stays full while we look.
        let (release_tx, release_rx) = channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (result_tx, result_rx) = channel::<usize>();
        for i in 0..5 {
            let release = Arc::clone(&release_rx);
            let results = result_tx.clone();
            pool.try_run(move || {
                let _ = release.lock().unwrap().recv();
                results.send(i).unwrap();
            })
            .unwrap_or_else(|Full| panic!("job {i} refused"));
        }
        assert_eq!(pool.queued(), 5);
        assert_eq!(pool.try_run(|| ()), Err(Full), "the sixth job is refused");
        assert_eq!(pool.rejected(), 1);
        for _ in 0..5 {
            release_tx.send(()).unwrap();
        }
        let mut got: Vec<usize> = (0..5).map(|_| result_rx.recv().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        // The count drops after each job returns; once it has, there is room again.
        let (tx, rx) = channel();
        loop {
            let tx = tx.clone();
            if pool.try_run(move || tx.send(7).unwrap()).is_ok() {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(rx.recv().unwrap(), 7);
    }

    #[test]
    fn a_full_pool_answers_503_with_retry_after() {
        let w = crate::error::WireError::from(&busy());
        assert_eq!(
            (w.status, w.error, w.retry_after),
            (503, "temporarily_unavailable", Some(1))
        );
    }
}
