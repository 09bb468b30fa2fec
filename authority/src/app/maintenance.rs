//! The maintenance thread: activates published keys when due, retires keys whose tokens have
//! expired, publishes successors for scheduled rotation and forgets expired revocations. It
//! holds only a weak reference to the [`App`], so it never keeps the state alive.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::App;
use crate::error::Error;
use crate::store::{WriteOp, WriteOutcome};

/// Most `Forget` batches one maintenance pass writes.
const FORGET_ROUNDS: usize = 50;

impl App {
    /// Starts the maintenance thread: key retirement, scheduled rotation, forgetting expired
    /// revocations. It holds only a weak reference and ends when the app is dropped or
    /// [`App::stop_maintenance`] is called.
    pub fn start_maintenance(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak: Weak<App> = Arc::downgrade(self);
        // Tallied refusals are written at least this often too.
        let interval = self
            .settings
            .maintenance_interval
            .min(self.settings.audit.flush_interval);
        let stopping = Arc::clone(&self.stopping);
        std::thread::Builder::new()
            .name("latchkey-maintenance".into())
            .spawn(move || {
                let mut wait = interval;
                loop {
                    std::thread::park_timeout(wait);
                    if stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let Some(app) = weak.upgrade() else { return };
                    let now = app.now();
                    if let Err(e) = app.maintain(now) {
                        tracing::error!(error = %e, "maintenance failed");
                    }
                    // Wake when the next published key is due, not up to an interval late.
                    wait = app.next_activation(None).map_or(interval, |at| {
                        interval.min(Duration::from_secs(at.saturating_sub(now).max(1)))
                    });
                }
            })
    }

    /// Asks the maintenance thread to end at its next wake-up.
    pub fn stop_maintenance(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// One maintenance pass.
    ///
    /// Every node of a cluster runs it: each step is a write checked against the latest
    /// state (key activation is a compare-and-swap, forgetting re-reads what expired), so two
    /// nodes doing it at once cannot do it twice.
    pub fn maintain(&self, now: u64) -> Result<(), Error> {
        for kid in self.activate_due_keys(now)? {
            tracing::info!(kid, "published signing key activated");
        }
        for kid in self.retire_expired_keys(now)? {
            tracing::info!(kid, "signing key retired");
        }
        for kid in self.scheduled_rotation(now)? {
            tracing::info!(kid, "signing key published for scheduled rotation");
        }
        // Each `Forget` removes a bounded batch; a backlog takes a few (bounded) rounds.
        for _ in 0..FORGET_ROUNDS {
            let WriteOutcome::Forgotten {
                revocations,
                boarding,
            } = self.write(WriteOp::Forget { now })?
            else {
                break;
            };
            if revocations > 0 {
                self.revocations.purge(now);
            }
            if revocations + boarding < crate::store::FORGET_BATCH {
                break;
            }
        }
        crate::api::metrics::publish_replay_fill(self, now);
        crate::refusal_audit::maintain(self, now)
    }
}
