//! Recovery: reading what earlier processes left in the segments, and the floor a start
//! must apply when something may have been lost (see the module docs of `replay_log`).

use std::path::PathBuf;

use latchkey_core::replay::Fingerprint;
use zeroize::Zeroizing;

use super::format::{CHECKPOINT, CLOSE, ENTRY, OPEN, parse_header, parse_record, u64_at};
use super::{SEAL, StartContext};
use crate::store::Store;

/// What reading the segments found.
#[derive(Default)]
pub(super) struct Scan {
    pub(super) key: Option<(Zeroizing<[u8; 32]>, Vec<u8>)>,
    pub(super) entries: Vec<(Fingerprint, u64)>,
    pub(super) segments: Vec<ScannedSegment>,
    /// Latest checkpoint time (open, checkpoint and close records all are).
    pub(super) last_sync: Option<u64>,
    /// Boot id of the last `Open` in the last segment.
    pub(super) last_boot: Option<[u8; 16]>,
    /// The last segment ended with `Close`.
    pub(super) clean: bool,
    /// Some segment had bytes that did not check out, or a header that did not open.
    pub(super) damaged: bool,
    /// A segment's header did not open (unknown key): its entries are lost.
    pub(super) unreadable: bool,
    pub(super) floors: Vec<u64>,
}

pub(super) struct ScannedSegment {
    pub(super) seq: u64,
    pub(super) path: PathBuf,
    pub(super) len: u64,
    /// Bytes up to the first record that did not check out.
    pub(super) valid_len: u64,
    pub(super) max_expiry: u64,
    pub(super) damaged_key: bool,
}

impl Scan {
    pub(super) fn segment(&mut self, seq: u64, path: PathBuf, bytes: &[u8], store: &Store) {
        let mut seg = ScannedSegment {
            seq,
            path,
            len: bytes.len() as u64,
            valid_len: bytes.len() as u64,
            max_expiry: 0,
            damaged_key: false,
        };
        self.clean = false;
        self.last_boot = None;
        let Some((sealed, mut rest)) = parse_header(bytes) else {
            // Not even a header: a segment created just before a machine crash, or damage.
            self.damaged = true;
            if bytes.len() > 4 + 1 + 2 {
                self.unreadable = true;
            }
            seg.damaged_key = true;
            self.segments.push(seg);
            return;
        };
        let key = match store.unseal(SEAL, sealed) {
            Ok(k) if k.expose().len() == 32 => {
                let mut key = Zeroizing::new([0u8; 32]);
                key.copy_from_slice(k.expose());
                key
            }
            _ => {
                self.damaged = true;
                self.unreadable = true;
                seg.damaged_key = true;
                self.segments.push(seg);
                return;
            }
        };
        match &self.key {
            Some((k, _)) if **k != *key => {
                // Sealed by this master key but another hash key: not from this log.
                self.damaged = true;
                self.unreadable = true;
                seg.damaged_key = true;
                self.segments.push(seg);
                return;
            }
            Some(_) => {}
            None => self.key = Some((key, sealed.to_vec())),
        }
        while !rest.is_empty() {
            let Some((kind, payload, tail)) = parse_record(rest) else {
                self.damaged = true;
                seg.valid_len = (bytes.len() - rest.len()) as u64;
                break;
            };
            rest = tail;
            self.clean = false;
            match (kind, payload.len()) {
                (ENTRY, 24) => {
                    let mut fp = [0u8; 16];
                    fp.copy_from_slice(&payload[..16]);
                    let until = u64_at(payload, 16);
                    seg.max_expiry = seg.max_expiry.max(until);
                    self.entries.push((Fingerprint(fp), until));
                }
                (OPEN, 32) => {
                    let mut boot = [0u8; 16];
                    boot.copy_from_slice(&payload[..16]);
                    self.last_boot = Some(boot);
                    self.synced(u64_at(payload, 16));
                    let floor = u64_at(payload, 24);
                    if floor > 0 {
                        self.floors.push(floor);
                    }
                }
                (CHECKPOINT, 8) => self.synced(u64_at(payload, 0)),
                (CLOSE, 8) => {
                    self.synced(u64_at(payload, 0));
                    self.clean = true;
                }
                _ => {
                    // A well-framed record of a kind this release does not know: from a newer
                    // release. Its meaning is unknown, so nothing after it is trusted.
                    self.damaged = true;
                    seg.valid_len = (bytes.len() - rest.len() - payload.len() - 6) as u64;
                    break;
                }
            }
        }
        self.segments.push(seg);
    }

    fn synced(&mut self, at: u64) {
        self.last_sync = Some(self.last_sync.map_or(at, |s| s.max(at)));
    }

    /// The floor a start must apply and why (see the module docs).
    pub(super) fn floor(
        &self,
        start: &StartContext,
        max_sync_lag: u64,
    ) -> (Option<u64>, &'static str) {
        let old_rule = Some(crate::api::onboarding::replay_floor(
            start.now,
            start.leeway,
        ));
        if self.segments.is_empty() {
            return if start.has_clients {
                (old_rule, "no replay log on a store with registered agents")
            } else {
                (None, "new replay log")
            };
        }
        if self.unreadable || self.key.is_none() {
            return (old_rule, "a replay log segment could not be read");
        }
        if self.clean && !self.damaged {
            return (None, "the previous process stopped cleanly");
        }
        let same_boot = start.boot_id != [0; 16] && self.last_boot == Some(start.boot_id);
        if same_boot {
            return if self.damaged {
                (old_rule, "the replay log was damaged on this boot")
            } else {
                (None, "the previous process ended on this boot")
            };
        }
        let last = self
            .last_sync
            .map_or(start.now, |s| s.saturating_add(max_sync_lag))
            .min(start.now);
        (
            Some(crate::api::onboarding::replay_floor(last, start.leeway)),
            "the machine restarted since the last sync",
        )
    }
}
