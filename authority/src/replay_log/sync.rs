//! The sync thread's job: checkpoint and fsync the log every `sync_interval`, rotate the
//! current segment and delete expired ones; and the graceful close that tells the next start
//! nothing was lost.

use std::fs;
use std::io::{self, Write as _};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::format::{CHECKPOINT, CLOSE, record};
use super::{ReplayLog, new_segment, poisoned, sync_dir};
use crate::error::Error;

impl ReplayLog {
    /// Starts the thread that fsyncs, rotates and deletes. It holds a weak reference and ends
    /// at [`ReplayLog::close`] or when the log is dropped.
    pub fn start_sync(self: &Arc<Self>, clock: fn() -> u64) -> io::Result<()> {
        let weak: Weak<ReplayLog> = Arc::downgrade(self);
        let interval = self.config.sync_interval;
        let handle = std::thread::Builder::new()
            .name("latchkey-replay-log".into())
            .spawn(move || {
                loop {
                    std::thread::park_timeout(interval);
                    let Some(log) = weak.upgrade() else { return };
                    if log.closed.load(Ordering::Acquire) {
                        return;
                    }
                    if let Err(e) = log.sync(clock()) {
                        tracing::error!(error = %e, "replay log sync failed");
                    }
                }
            })?;
        if let Ok(mut slot) = self.sync_thread.lock() {
            *slot = Some(handle);
        }
        Ok(())
    }

    /// One round of the sync thread: checkpoint and fsync, then rotate and delete.
    pub fn sync(&self, now: u64) -> Result<(), Error> {
        let current = self.current.load_full();
        let older = self.older.lock().map_err(|_| poisoned())?.clone();
        let mut dirty = current.dirty.swap(false, Ordering::AcqRel);
        for s in &older {
            if s.dirty.swap(false, Ordering::AcqRel) {
                dirty = true;
                s.file.sync_data()?;
            }
        }
        // Idle: nothing to make durable. A checkpoint is still due well before the lag runs
        // out, since appends are refused once the last one on disk is older than that.
        let half_lag = self.config.max_sync_lag() / 2;
        if dirty
            || now
                >= self
                    .durable_at
                    .load(Ordering::Acquire)
                    .saturating_add(half_lag)
        {
            let checkpoint = record(CHECKPOINT, &now.to_le_bytes());
            (&current.file).write_all(&checkpoint)?;
            current
                .bytes
                .fetch_add(checkpoint.len() as u64, Ordering::Relaxed);
            self.total_bytes
                .fetch_add(checkpoint.len() as u64, Ordering::Relaxed);
            current.file.sync_data()?;
            self.durable_at.fetch_max(now, Ordering::AcqRel);
        }

        let size_limit = self.config.max_bytes / 4;
        if self.failed.load(Ordering::Acquire)
            || now >= current.opened_at.saturating_add(self.window)
            || current.bytes.load(Ordering::Relaxed) >= size_limit
        {
            let next = new_segment(
                &self.dir,
                current.seq + 1,
                &self.sealed_key,
                self.boot_id,
                now,
                self.floor,
            )?;
            sync_dir(&self.dir)?;
            self.total_bytes
                .fetch_add(next.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
            self.current.store(Arc::new(next));
            self.older.lock().map_err(|_| poisoned())?.push(current);
            self.failed.store(false, Ordering::Release);
            self.durable_at.fetch_max(now, Ordering::AcqRel);
        } else {
            drop(current);
        }

        let mut older = self.older.lock().map_err(|_| poisoned())?;
        let mut removed = false;
        older.retain(|s| {
            // Only the list holds it (no writer can reach it any more) and all of it expired.
            let dead = Arc::strong_count(s) == 1
                && s.max_expiry.load(Ordering::SeqCst) < now
                && !s.dirty.load(Ordering::Acquire);
            if dead && fs::remove_file(&s.path).is_ok() {
                self.total_bytes
                    .fetch_sub(s.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
                removed = true;
                return false;
            }
            true
        });
        drop(older);
        if removed {
            sync_dir(&self.dir)?;
        }
        self.metrics
            .set_replay_log_bytes(self.total_bytes.load(Ordering::Relaxed));
        Ok(())
    }

    /// Graceful stop: refuses further appends, writes `Close` and fsyncs every segment, so the
    /// next start knows nothing was lost even after a machine crash. Call after the event
    /// loops have stopped; idempotent.
    pub fn close(&self, now: u64) -> Result<(), Error> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(handle) = self.sync_thread.lock().ok().and_then(|mut h| h.take()) {
            handle.thread().unpark();
            // The thread may hold the last strong reference and be dropping the log itself.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        for s in self.older.lock().map_err(|_| poisoned())?.iter() {
            s.file.sync_data()?;
        }
        let current = self.current.load_full();
        if self.failed.load(Ordering::Acquire) {
            // A partial record may precede it: no Close, recovery applies the floor.
            current.file.sync_data()?;
            return Ok(());
        }
        (&current.file).write_all(&record(CLOSE, &now.to_le_bytes()))?;
        current.file.sync_data()?;
        Ok(())
    }
}
