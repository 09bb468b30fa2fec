//! The replay log: accepted client-assertion fingerprints on disk, so a restarted process
//! refuses replays without refusing fresh assertions for a `leeway` after every start.
//!
//! **What is written.** For every assertion the token endpoint accepts, one 30-byte record:
//! the keyed BLAKE3 fingerprint of `(issuer, jti)` (see [`latchkey_core::replay`]) and the last
//! second it must be remembered. The record is written (`write(2)`) to the current segment
//! (opened with `O_APPEND`) *before* the token is answered, but never fsynced on the request path: a
//! written record lives in the page cache, which survives the process (SIGTERM, `kill -9`,
//! panic). A background thread appends a checkpoint (its clock) and fsyncs every
//! `sync_interval`; that is what survives a machine crash.
//!
//! **Recovery at start.** Every segment is read until its first record that does not check
//! out (a torn tail), and the entries still live are put back into the replay cache (hash key
//! sealed with the master key in every segment header, so fingerprints mean the same in the
//! new process). Then, whether anything was lost:
//! - the last segment ends with a `Close` record (graceful stop, everything fsynced), or the
//!   last process ran on this boot (`/proc/sys/kernel/random/boot_id`: the page cache held
//!   every record) and no segment was damaged: nothing lost, no floor;
//! - otherwise (a machine crash, or an unknown boot id): only records written after the last
//!   checkpoint that made it to disk can be lost. An assertion is accepted only while the last
//!   completed fsync is at most [`ReplayLogConfig::max_sync_lag`] old, so every lost record
//!   was accepted at most `last checkpoint + max_sync_lag`, and its `iat` was at most that plus
//!   the leeway. The floor is `min(start, last checkpoint + max_sync_lag) + leeway + 1`:
//!   assertions issued before it are refused (503 while the floor is ahead of the clock).
//! - no log at all on a store that has registered agents (a store from a release without the
//!   log, or the log deleted), a segment whose header does not open, or damage on this boot (a
//!   failed write): the floor is `start + leeway + 1`, the rule without a log.
//!
//! A floor in force is written into each `Open` record, so a crash during the floor's window
//! does not forget it.
//!
//! **Bounded.** A segment is rotated once it is older than the longest an entry lives (or a
//! quarter of `max_bytes`), and deleted once every entry in it has expired and no writer holds
//! it: the log holds about two windows of accepted assertions. If it reaches `max_bytes`
//! anyway, assertions are refused (503) rather than logged nowhere.
//!
//! **File format** (`replay-log/<seq, 16 hex digits>.log`): a header `"LKRL" | version 1 |
//! u16 sealed-key length | sealed key | u32 check`, then records `u8 payload length | u8 kind |
//! payload | u32 check`, where a check is the first four bytes of BLAKE3 over everything
//! before it in the header or record, and integers are little-endian. Kinds: `1` entry
//! (fingerprint 16, remember-until u64), `2` open (boot id 16, time u64, floor u64), `3`
//! checkpoint (time u64), `4` close (time u64).
//!
//! Files by job: this one opens the log and appends on the request path; `format.rs` holds
//! the byte format, `recover.rs` reads what earlier processes left and decides the floor,
//! `sync.rs` is the sync thread's fsync, rotation and deletion, and the graceful close.

mod format;
mod recover;
mod sync;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use latchkey_core::replay::Fingerprint;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::http::Metrics;
use crate::store::{SealContext, Store};

pub use format::ENTRY_BYTES;
use format::{OPEN, entry_record, header, open_payload, record};
use recover::Scan;

/// Directory of the log inside the data directory.
pub const DIR: &str = "replay-log";
/// Where the hash key is sealed (the AEAD's associated data).
const SEAL: SealContext<'static> = SealContext {
    table: "replay-log",
    key: "fingerprint-key",
};

/// `[tokens]` settings of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLogConfig {
    /// How often the log is fsynced (`replay-log-sync-interval`, 1 s).
    pub sync_interval: Duration,
    /// Most bytes the segments may hold together (`replay-log-max-size`, 256 MiB: about
    /// 8.9 million accepted assertions within two windows of `assertion-max-age` + leeway).
    pub max_bytes: u64,
}

impl Default for ReplayLogConfig {
    fn default() -> Self {
        ReplayLogConfig {
            sync_interval: Duration::from_secs(1),
            max_bytes: 256 << 20,
        }
    }
}

impl ReplayLogConfig {
    /// Assertions are refused while the last completed fsync is older than this (10 × the
    /// sync interval, at least 5 s): it bounds what a machine crash can lose, and so the floor
    /// after one.
    pub fn max_sync_lag(&self) -> u64 {
        (self.sync_interval.as_secs_f64() * 10.0).ceil().max(5.0) as u64
    }
}

/// What a start knows besides the log.
#[derive(Debug, Clone, Copy)]
pub struct StartContext {
    /// Unix seconds now.
    pub now: u64,
    /// This boot's id (all zero: unknown, never "the same boot").
    pub boot_id: [u8; 16],
    /// The clock skew tolerated on assertion `iat`.
    pub leeway: u64,
    /// The longest an accepted entry is remembered past its acceptance (segment rotation age).
    pub window: u64,
    /// Whether the store has registered agents: without a log, their earlier assertions are
    /// unknown.
    pub has_clients: bool,
}

/// What the previous processes left: the hash key, the entries to restore and the floor.
pub struct Recovery {
    pub key: Zeroizing<[u8; 32]>,
    pub entries: Vec<(Fingerprint, u64)>,
    /// Assertions with `iat` before this are refused; `None`: nothing was lost.
    pub floor: Option<u64>,
    /// Why the floor is what it is (for the start-up log line).
    pub reason: &'static str,
}

impl std::fmt::Debug for Recovery {
    // Never print the hash key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("entries", &self.entries.len())
            .field("floor", &self.floor)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Why an accepted assertion could not be logged (the token request answers 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRefusal {
    /// The log reached `max_bytes`.
    Full,
    /// No fsync completed within `max_sync_lag`, or a write failed; the sync thread repairs it.
    Unavailable,
    /// The server is stopping.
    Closed,
}

/// The open log. Appends are lock-free (one atomic load and a `write(2)`); the sync thread
/// owns rotation and deletion.
pub struct ReplayLog {
    dir: PathBuf,
    sealed_key: Vec<u8>,
    boot_id: [u8; 16],
    floor: u64,
    config: ReplayLogConfig,
    window: u64,
    current: ArcSwap<Segment>,
    /// Segments no longer current but still holding live entries (sync thread and close).
    older: Mutex<Vec<Arc<Segment>>>,
    durable_at: AtomicU64,
    failed: AtomicBool,
    closed: AtomicBool,
    total_bytes: AtomicU64,
    metrics: Arc<Metrics>,
    sync_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
    opened_at: u64,
    bytes: AtomicU64,
    max_expiry: AtomicU64,
    dirty: AtomicBool,
}

impl std::fmt::Debug for ReplayLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayLog")
            .field("dir", &self.dir)
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}

impl ReplayLog {
    /// Reads what earlier processes logged in `data_dir`, starts a new segment and returns
    /// the log with what to restore. The sync thread is not running yet
    /// ([`ReplayLog::start_sync`]).
    pub fn open(
        data_dir: &Path,
        store: &Store,
        config: ReplayLogConfig,
        start: StartContext,
        metrics: Arc<Metrics>,
    ) -> Result<(ReplayLog, Recovery), Error> {
        let dir = data_dir.join(DIR);
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        let found = list_segments(&dir)?;
        let mut scan = Scan::default();
        for (seq, path) in &found {
            let bytes = fs::read(path)?;
            scan.segment(*seq, path.clone(), &bytes, store);
        }
        let (floor, reason) = scan.floor(&start, config.max_sync_lag());
        let (key, sealed_key) = match scan.key.take() {
            Some(k) => k,
            None => {
                let mut key = Zeroizing::new([0u8; 32]);
                aws_lc_rs::rand::fill(&mut key[..])
                    .map_err(|_| Error::Config("system random source failed".into()))?;
                let sealed = store.seal(SEAL, &key[..])?;
                (key, sealed)
            }
        };
        // The floor still matters while an assertion issued before it could pass the age check.
        let floor = floor.max(
            scan.floors
                .into_iter()
                .filter(|f| f.saturating_add(start.window) > start.now)
                .max(),
        );
        let entries: Vec<(Fingerprint, u64)> = scan
            .entries
            .into_iter()
            .filter(|(_, until)| *until >= start.now)
            .collect();

        // The new segment, with the floor, is on disk before anything old is cut or deleted:
        // a crash in between must not lose what the old segments said.
        let next = found.last().map_or(1, |(seq, _)| seq + 1);
        let first = new_segment(
            &dir,
            next,
            &sealed_key,
            start.boot_id,
            start.now,
            floor.unwrap_or(0),
        )?;
        sync_dir(&dir)?;
        // Segments kept must survive a machine crash from now on (a process crash left them
        // in the page cache only).
        let mut older = Vec::new();
        let mut total = first.bytes.load(Ordering::Relaxed);
        for s in scan.segments {
            if s.max_expiry < start.now || s.damaged_key {
                let _ = fs::remove_file(&s.path);
                continue;
            }
            let file = OpenOptions::new().append(true).open(&s.path)?;
            // A torn tail has been accounted for (the floor); cut it so the next start does
            // not count it as damage again.
            if s.valid_len < s.len {
                file.set_len(s.valid_len)?;
            }
            file.sync_data()?;
            total += s.valid_len;
            older.push(Arc::new(Segment {
                seq: s.seq,
                path: s.path,
                file,
                opened_at: 0,
                bytes: AtomicU64::new(s.valid_len),
                max_expiry: AtomicU64::new(s.max_expiry),
                dirty: AtomicBool::new(false),
            }));
        }
        metrics.set_replay_log_bytes(total);
        let log = ReplayLog {
            dir: dir.clone(),
            sealed_key,
            boot_id: start.boot_id,
            floor: floor.unwrap_or(0),
            config,
            window: start.window,
            current: ArcSwap::from_pointee(first),
            older: Mutex::new(older),
            durable_at: AtomicU64::new(start.now),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            total_bytes: AtomicU64::new(total),
            metrics,
            sync_thread: Mutex::new(None),
        };
        sync_dir(&dir)?;
        Ok((
            log,
            Recovery {
                key,
                entries,
                floor,
                reason,
            },
        ))
    }

    /// Records an accepted assertion. Call before answering it; `remember_until` is what the
    /// replay cache returned.
    pub fn append(
        &self,
        fingerprint: Fingerprint,
        remember_until: u64,
        now: u64,
    ) -> Result<(), LogRefusal> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogRefusal::Closed);
        }
        if self.failed.load(Ordering::Acquire)
            || now
                > self
                    .durable_at
                    .load(Ordering::Acquire)
                    .saturating_add(self.config.max_sync_lag())
        {
            self.metrics.replay_log_refused();
            return Err(LogRefusal::Unavailable);
        }
        if self.total_bytes.load(Ordering::Relaxed) + ENTRY_BYTES > self.config.max_bytes {
            self.metrics.replay_log_refused();
            return Err(LogRefusal::Full);
        }
        let record = entry_record(fingerprint, remember_until);
        // A clone, not a guard: the sync thread deletes a segment only once nobody holds it.
        let segment = self.current.load_full();
        if segment.max_expiry.load(Ordering::SeqCst) < remember_until {
            segment
                .max_expiry
                .fetch_max(remember_until, Ordering::SeqCst);
        }
        segment.dirty.store(true, Ordering::Release);
        if let Err(e) = (&segment.file).write_all(&record) {
            // A partial record may be on disk: later records in this segment are not trusted at
            // recovery, so stop using it until the sync thread rotates.
            self.failed.store(true, Ordering::Release);
            self.metrics.replay_log_refused();
            tracing::error!(error = %e, "replay log write failed");
            return Err(LogRefusal::Unavailable);
        }
        segment.bytes.fetch_add(ENTRY_BYTES, Ordering::Relaxed);
        self.total_bytes.fetch_add(ENTRY_BYTES, Ordering::Relaxed);
        Ok(())
    }

    /// The floor recovery set (0: none).
    pub fn floor(&self) -> u64 {
        self.floor
    }
}

impl Drop for ReplayLog {
    fn drop(&mut self) {
        if let Err(e) = self.close(crate::clock::unix_now()) {
            tracing::error!(error = %e, "closing the replay log failed");
        }
    }
}

fn poisoned() -> Error {
    Error::Io(io::Error::other("replay log lock poisoned"))
}

/// This machine's boot id, or all zeros where there is none (then every start counts as
/// after a machine crash unless the log was closed).
pub fn boot_id() -> [u8; 16] {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|s| parse_boot_id(&s))
        .unwrap_or([0; 16])
}

fn parse_boot_id(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.trim().bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    (out != [0; 16]).then_some(out)
}

/// Creates segment `seq` with its header and `Open` record, fsynced (the caller fsyncs the
/// directory).
fn new_segment(
    dir: &Path,
    seq: u64,
    sealed_key: &[u8],
    boot_id: [u8; 16],
    now: u64,
    floor: u64,
) -> Result<Segment, Error> {
    let path = dir.join(format!("{seq:016x}.log"));
    let mut bytes = header(sealed_key);
    bytes.extend_from_slice(&record(OPEN, &open_payload(boot_id, now, floor)));
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    Ok(Segment {
        seq,
        path,
        file,
        opened_at: now,
        bytes: AtomicU64::new(bytes.len() as u64),
        max_expiry: AtomicU64::new(0),
        dirty: AtomicBool::new(false),
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if stem.len() == 16
            && let Ok(seq) = u64::from_str_radix(stem, 16)
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    const T0: u64 = 1_800_000_000;
    const BOOT: [u8; 16] = [1; 16];
    const OTHER_BOOT: [u8; 16] = [2; 16];
    const LEEWAY: u64 = 60;

    struct Fixture {
        dir: tempfile::TempDir,
        store: Store,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path(), StoreOptions::default()).unwrap();
        Fixture { dir, store }
    }

    fn start(now: u64, boot_id: [u8; 16]) -> StartContext {
        StartContext {
            now,
            boot_id,
            leeway: LEEWAY,
            window: 241,
            has_clients: false,
        }
    }

    impl Fixture {
        fn open_with(&self, config: ReplayLogConfig, at: StartContext) -> (ReplayLog, Recovery) {
            ReplayLog::open(
                self.dir.path(),
                &self.store,
                config,
                at,
                Arc::new(Metrics::new()),
            )
            .unwrap()
        }

        fn open(&self, now: u64, boot_id: [u8; 16]) -> (ReplayLog, Recovery) {
            self.open_with(ReplayLogConfig::default(), start(now, boot_id))
        }

        fn segments(&self) -> Vec<(u64, PathBuf)> {
            list_segments(&self.dir.path().join(DIR)).unwrap()
        }
    }

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 16])
    }

    /// A process that dies without closing (kill -9): nothing runs after the last append.
    fn crash(log: ReplayLog) {
        std::mem::forget(log);
    }

    #[test]
    fn fresh_store_has_no_floor_but_a_store_with_agents_and_no_log_does() {
        let f = fixture();
        let (_log, r) = f.open(T0, BOOT);
        assert_eq!(r.floor, None, "{}", r.reason);
        assert!(r.entries.is_empty());

        let f = fixture();
        let (log, r) = f.open_with(
            ReplayLogConfig::default(),
            StartContext {
                has_clients: true,
                ..start(T0, BOOT)
            },
        );
        assert_eq!(r.floor, Some(T0 + LEEWAY + 1), "{}", r.reason);
        // Kept by the next start while it is ahead, even after a crash on the same boot.
        crash(log);
        let (_, r) = f.open(T0 + 10, BOOT);
        assert_eq!(r.floor, Some(T0 + LEEWAY + 1), "{}", r.reason);
    }

    /// kill -9 on the same boot: every appended entry comes back, with the same hash key, and
    /// no floor.
    #[test]
    fn process_crash_recovers_every_entry_without_a_floor() {
        let f = fixture();
        let (log, first) = f.open(T0, BOOT);
        log.append(fp(1), T0 + 100, T0).unwrap();
        log.append(fp(2), T0 + 5, T0).unwrap();
        crash(log);
        let (_log, r) = f.open(T0 + 10, BOOT);
        assert_eq!(r.floor, None, "{}", r.reason);
        assert_eq!(*r.key, *first.key, "the fingerprint key survives");
        assert_eq!(r.entries, vec![(fp(1), T0 + 100)], "expired entry dropped");
    }

    /// A machine crash (new boot id): entries read back, and a floor that covers only what
    /// the last unsynced interval could have lost, never later than the rule without a log.
    #[test]
    fn machine_crash_floors_at_the_last_sync_plus_the_lag() {
        let f = fixture();
        let config = ReplayLogConfig::default();
        let (log, _) = f.open(T0, BOOT);
        log.append(fp(1), T0 + 300, T0).unwrap();
        log.sync(T0 + 1).unwrap();
        log.append(fp(2), T0 + 300, T0 + 1).unwrap();
        crash(log);
        let later = T0 + 1000;
        let (log, r) = f.open(later, OTHER_BOOT);
        let floor = T0 + 1 + config.max_sync_lag() + LEEWAY + 1;
        assert_eq!(r.floor, Some(floor), "{}", r.reason);
        assert_eq!(r.entries.len(), 0, "both expired by now");
        // Rebooted again soon: start + leeway is the cap.
        crash(log);
        let f2 = fixture();
        let (log, _) = f2.open(T0, BOOT);
        log.sync(T0 + 1).unwrap();
        crash(log);
        let (_, r) = f2.open(T0 + 3, OTHER_BOOT);
        assert_eq!(r.floor, Some(T0 + 3 + LEEWAY + 1), "{}", r.reason);
    }

    /// A floor in force is remembered by the next start, even a crash on the same boot.
    #[test]
    fn a_floor_survives_a_crash_during_its_window() {
        let f = fixture();
        let (log, _) = f.open(T0, BOOT);
        crash(log);
        let (log, r) = f.open(T0 + 2, OTHER_BOOT);
        let floor = r.floor.unwrap();
        assert!(floor > T0 + 2);
        assert_eq!(log.floor(), floor);
        crash(log);
        let (_, r) = f.open(T0 + 3, OTHER_BOOT);
        assert_eq!(r.floor, Some(floor), "{}", r.reason);
    }

    /// A graceful stop writes Close after an fsync: nothing lost even across a reboot.
    #[test]
    fn clean_close_needs_no_floor_after_a_reboot() {
        let f = fixture();
        let (log, _) = f.open(T0, BOOT);
        log.append(fp(1), T0 + 100, T0).unwrap();
        log.close(T0 + 1).unwrap();
        assert_eq!(log.append(fp(2), T0 + 100, T0 + 1), Err(LogRefusal::Closed));
        drop(log);
        let (_log, r) = f.open(T0 + 2, OTHER_BOOT);
        assert_eq!(r.floor, None, "{}", r.reason);
        assert_eq!(r.entries, vec![(fp(1), T0 + 100)]);
    }

    /// A torn record at the tail is ignored, the records before it are kept, the damage is cut
    /// off, and the start falls back to the rule without a log.
    #[test]
    fn torn_tail_is_ignored_and_cut() {
        let f = fixture();
        let (log, _) = f.open(T0, BOOT);
        log.append(fp(1), T0 + 100, T0).unwrap();
        log.append(fp(2), T0 + 100, T0).unwrap();
        crash(log);
        let (_, path) = f.segments().pop().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // Tear the last record (keep 10 of its 30 bytes).
        std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
        let (log, r) = f.open(T0 + 1, BOOT);
        assert_eq!(r.entries, vec![(fp(1), T0 + 100)]);
        assert_eq!(r.floor, Some(T0 + 1 + LEEWAY + 1), "{}", r.reason);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            bytes.len() as u64 - 30,
            "torn tail cut"
        );
        // A flipped bit is a torn record too.
        log.append(fp(3), T0 + 100, T0 + 1).unwrap();
        crash(log);
        let (_, path) = f.segments().pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (_, r) = f.open(T0 + 2, BOOT);
        assert!(!r.entries.contains(&(fp(3), T0 + 100)));
        assert!(r.entries.contains(&(fp(1), T0 + 100)));
    }

    /// Segments rotate once older than the window and are deleted once all their entries
    /// expired: the log's size follows the rate, not the uptime.
    #[test]
    fn rotation_and_compaction_bound_the_log() {
        let f = fixture();
        let (log, _) = f.open(T0, BOOT);
        let window = 241;
        let mut t = T0;
        for round in 0..10u8 {
            for i in 0..50u8 {
                log.append(fp(i ^ round), t + 200, t).unwrap();
            }
            t += window;
            log.sync(t).unwrap();
        }
        // Live: the current segment and the one whose entries expire after `t`.
        let segments = f.segments();
        assert!(segments.len() <= 3, "{segments:?}");
        let bytes: u64 = segments
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(bytes < 3 * 50 * ENTRY_BYTES + 1000, "{bytes}");
        assert_eq!(log.total_bytes.load(Ordering::Relaxed), bytes);
        crash(log);
        let (_, r) = f.open(t + 1, BOOT);
        assert_eq!(r.floor, None, "{}", r.reason);
        assert!(r.entries.is_empty(), "all expired");
    }

    /// An idle log is not fsynced every interval, only often enough to keep appends allowed.
    #[test]
    fn idle_log_checkpoints_only_within_half_the_lag() {
        let f = fixture();
        let (log, _) = f.open(T0, BOOT);
        let size = |log: &ReplayLog| log.current.load().bytes.load(Ordering::Relaxed);
        let before = size(&log);
        log.sync(T0 + 1).unwrap();
        assert_eq!(size(&log), before, "nothing appended: no checkpoint");
        let half = ReplayLogConfig::default().max_sync_lag() / 2;
        log.sync(T0 + half).unwrap();
        let after = size(&log);
        assert!(after > before, "checkpoint due");
        log.append(fp(1), T0 + 100, T0 + half).unwrap();
        log.sync(T0 + half + 1).unwrap();
        assert_eq!(
            size(&log),
            after + ENTRY_BYTES + 14,
            "entry and its checkpoint"
        );
        assert_eq!(log.durable_at.load(Ordering::Relaxed), T0 + half + 1);
    }

    #[test]
    fn full_and_unsynced_logs_refuse() {
        let f = fixture();
        let config = ReplayLogConfig {
            max_bytes: 1000,
            ..ReplayLogConfig::default()
        };
        let (log, _) = f.open_with(config, start(T0, BOOT));
        let mut accepted = 0;
        while log.append(fp(accepted), T0 + 10, T0).is_ok() {
            accepted += 1;
        }
        assert_eq!(
            log.append(fp(0), T0 + 10, T0),
            Err(LogRefusal::Full),
            "after {accepted}"
        );
        assert!(accepted > 10);
        let (log, _) = f.open(T0, BOOT);
        let lag = ReplayLogConfig::default().max_sync_lag();
        log.append(fp(1), T0 + 10, T0 + lag).unwrap();
        assert_eq!(
            log.append(fp(2), T0 + 10, T0 + lag + 1),
            Err(LogRefusal::Unavailable)
        );
        log.sync(T0 + lag + 1).unwrap();
        log.append(fp(2), T0 + 10, T0 + lag + 1).unwrap();
    }

    /// A log sealed by another master key cannot be read: the floor without a log.
    #[test]
    fn unreadable_segment_falls_back_to_the_start_floor() {
        let a = fixture();
        let (log, _) = a.open(T0, BOOT);
        log.append(fp(1), T0 + 100, T0).unwrap();
        crash(log);
        let b = fixture();
        std::fs::create_dir_all(b.dir.path().join(DIR)).unwrap();
        for (_, p) in a.segments() {
            std::fs::copy(&p, b.dir.path().join(DIR).join(p.file_name().unwrap())).unwrap();
        }
        let (_, r) = b.open(T0 + 1, BOOT);
        assert_eq!(r.floor, Some(T0 + 1 + LEEWAY + 1), "{}", r.reason);
        assert!(r.entries.is_empty());
    }

    #[test]
    fn boot_ids() {
        assert_eq!(
            parse_boot_id("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n"),
            Some([
                0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2,
                0xe1, 0xf0
            ])
        );
        assert_eq!(parse_boot_id("nope"), None);
        assert_eq!(parse_boot_id("00000000-0000-0000-0000-000000000000"), None);
        // Unknown boot ids never count as the same boot.
        let f = fixture();
        let (log, _) = f.open(T0, [0; 16]);
        crash(log);
        let (_, r) = f.open(T0 + 1, [0; 16]);
        assert!(r.floor.is_some(), "{}", r.reason);
    }
}
