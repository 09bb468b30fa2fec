//! Mutual-TLS trust as the application holds it: [`TrustState`] (pure certificate logic over
//! the store) and the thread that rebuilds it after commits.
//!
//! **Off the writer thread, before the answer.** A commit that changes certificates or
//! certificate revocations needs the TLS trust store and the revoked set rebuilt (a store read
//! and certificate parsing), and the promise is that the next handshake after the write is
//! acknowledged sees the change. So the writer does not rebuild: it hands the write's reply to
//! the trust thread, which rebuilds from a store snapshot taken after the commit and only then
//! runs the reply. Replies that queue up during a rebuild share the next one: each of their
//! commits came before it.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};

use super::App;
use crate::error::Error;
use crate::pki::TrustState;

/// A write's reply, run once the trust reflects the write.
pub type Reply = Box<dyn FnOnce() + Send>;

/// A reply waiting for a rebuild, with the state to rebuild.
struct Job {
    app: Arc<App>,
    reply: Reply,
}

/// The application's mutual-TLS trust (see the module docs).
pub struct Trust {
    state: TrustState,
    /// The trust thread's queue, started by the first write that needs it (`None`: it could
    /// not be started, and rebuilds run where the write was committed).
    worker: OnceLock<Option<Sender<Job>>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Trust {
    pub fn new(state: TrustState) -> Trust {
        Trust {
            state,
            worker: OnceLock::new(),
        }
    }

    /// Whether the certificate a token is bound to (`cnf.x5t#S256`) is revoked.
    pub fn binding_revoked(&self, x5t_s256: &str) -> bool {
        self.state.binding_revoked(x5t_s256)
    }

    /// The authority CA's CRL (DER); see [`TrustState::crl`].
    pub fn crl(&self, app: &App) -> Result<Arc<[u8]>, Error> {
        self.state.crl(&app.store, app.now())
    }

    /// Re-verifies a client chain against the current trust at the app's time; see
    /// [`TrustState::verify_chain`].
    pub fn verify_chain(&self, app: &App, chain: &[CertificateDer<'static>]) -> Result<(), Error> {
        let now = UnixTime::since_unix_epoch(Duration::from_secs(app.now()));
        self.state.verify_chain(chain, now)
    }

    /// Rebuilds the trust from the store and publishes the certificate expiry gauges.
    pub fn refresh(&self, app: &App) -> Result<(), Error> {
        self.state.refresh(&app.store, app.now(), &app.metrics)
    }

    /// [`Trust::refresh`] after a commit: a failure is logged, the write stands.
    pub(super) fn refresh_logged(&self, app: &App) {
        if let Err(e) = self.refresh(app) {
            tracing::error!(error = %e, "could not rebuild the TLS trust store");
        }
    }

    /// Runs `reply` once the trust is rebuilt, on the trust thread.
    pub(super) fn rebuild_then(&self, app: Arc<App>, reply: Reply) {
        let worker = self.worker.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            match std::thread::Builder::new()
                .name("latchkey-trust".into())
                .spawn(move || run(rx))
            {
                Ok(_) => Some(tx),
                Err(e) => {
                    let msg = "could not start the trust thread; rebuilding inline";
                    tracing::error!(error = %e, "{msg}");
                    None
                }
            }
        });
        let job = Job { app, reply };
        let job = match worker {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        job.app.mtls.refresh_logged(&job.app);
        (job.reply)();
    }
}

/// The trust thread: ends when the last `App` (the only sender) is dropped.
fn run(jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter());
        // Every job in the batch was queued after its commit, so one snapshot taken now
        // covers them all.
        let app = &batch[0].app;
        app.mtls.refresh_logged(app);
        for job in batch {
            (job.reply)();
        }
    }
}
