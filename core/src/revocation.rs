//! The revocation set that token verification consults without locks.
//!
//! **Design: copy-on-write snapshots behind an [`ArcSwap`].** Readers (every verification)
//! do one `load` — a few atomic operations, no lock, no allocation — and look the `jti` and
//! `kid` up in an immutable [`HashMap`]. Writers serialise on a mutex, copy the current
//! snapshot, apply a whole batch (one per store commit) and publish the copy with one atomic
//! store; a reader sees either all of a batch or none of it.
//!
//! *Trade-off against crossbeam-epoch or a concurrent map:* a batch costs O(set size) to copy.
//! Revocations are rare administrative events applied in batches, and [`RevocationSet::purge`]
//! keeps the set down to revocations whose tokens could still be accepted, so the set stays
//! small (thousands of entries copy in well under a millisecond) while reads — the hot path —
//! are as cheap as a plain `HashMap` lookup. If the set ever held millions of live entries,
//! shard the snapshot so a batch only copies the shards it touches.
//!
//! **Time.** Every entry carries `forget_after`: the last instant (Unix seconds) at which a
//! token it covers could still be accepted, i.e. the covered tokens' `exp` **plus the
//! verifier's leeway** (`u64::MAX` for "forever", e.g. a compromised key). `is_revoked` honours
//! it directly, so the answer never depends on when `purge` last ran.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

/// One change to the revocation set, as recorded by the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevocationUpdate {
    /// Reject tokens with this `jti` until `forget_after` has passed.
    Jti {
        /// The revoked token's `jti`.
        jti: String,
        /// Last instant (Unix seconds) at which the token could still be accepted.
        forget_after: u64,
    },
    /// Reject every token signed under this `kid` until `forget_after` has passed.
    Kid {
        /// The revoked key's `kid`.
        kid: String,
        /// Last instant at which a token signed by the key could still be accepted.
        forget_after: u64,
    },
}

/// Revoked `jti`s and `kid`s; lock-free for readers.
pub struct RevocationSet {
    current: ArcSwap<Snapshot>,
    /// Serialises writers so no batch is lost between a copy and its publication.
    writer: Mutex<()>,
}

#[derive(Clone, Default)]
struct Snapshot {
    jtis: HashMap<Box<str>, u64>,
    kids: HashMap<Box<str>, u64>,
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
        }
    }

    /// Whether a token with this `jti`, signed under `kid`, is revoked at `now`. Lock-free.
    pub fn is_revoked(&self, jti: &str, kid: Option<&str>, now: u64) -> bool {
        let snap = self.current.load();
        // Cheap negative pre-check: the common case is an empty set, so skip hashing.
        if !snap.jtis.is_empty() && snap.jtis.get(jti).is_some_and(|&until| now <= until) {
            return true;
        }
        match kid {
            Some(kid) if !snap.kids.is_empty() => {
                snap.kids.get(kid).is_some_and(|&until| now <= until)
            }
            _ => false,
        }
    }

    /// Revokes one token `jti` until `forget_after`.
    pub fn revoke_jti(&self, jti: &str, forget_after: u64) {
        self.apply(&[RevocationUpdate::Jti {
            jti: jti.to_owned(),
            forget_after,
        }]);
    }

    /// Revokes every token signed under `kid` until `forget_after`.
    pub fn revoke_kid(&self, kid: &str, forget_after: u64) {
        self.apply(&[RevocationUpdate::Kid {
            kid: kid.to_owned(),
            forget_after,
        }]);
    }

    /// Applies a batch of updates atomically: readers see all of them or none. Revoking an
    /// entry twice keeps the later `forget_after`.
    pub fn apply(&self, updates: &[RevocationUpdate]) {
        if updates.is_empty() {
            return;
        }
        self.rewrite(|snap| {
            for update in updates {
                let (map, name, until) = match update {
                    RevocationUpdate::Jti { jti, forget_after } => {
                        (&mut snap.jtis, jti, *forget_after)
                    }
                    RevocationUpdate::Kid { kid, forget_after } => {
                        (&mut snap.kids, kid, *forget_after)
                    }
                };
                let entry = map.entry(name.as_str().into()).or_insert(until);
                *entry = (*entry).max(until);
            }
            true
        });
    }

    /// Drops entries whose `forget_after` is before `now`; they no longer change any answer.
    pub fn purge(&self, now: u64) {
        self.rewrite(|snap| {
            let before = snap.jtis.len() + snap.kids.len();
            snap.jtis.retain(|_, until| *until >= now);
            snap.kids.retain(|_, until| *until >= now);
            snap.jtis.len() + snap.kids.len() != before
        });
    }

    /// Number of entries (`jti`s + `kid`s) currently held, expired or not.
    pub fn len(&self) -> usize {
        let snap = self.current.load();
        snap.jtis.len() + snap.kids.len()
    }

    /// Whether the set holds no entry at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the snapshot, lets `edit` change it, and publishes the copy if `edit` says it
    /// changed anything.
    fn rewrite(&self, edit: impl FnOnce(&mut Snapshot) -> bool) {
        // A poisoned lock only means another writer panicked before publishing; the published
        // snapshot is still consistent, so carry on.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Snapshot::clone(&self.current.load());
        if edit(&mut next) {
            self.current.store(Arc::new(next));
        }
    }
}

impl Default for RevocationSet {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.current.load();
        f.debug_struct("RevocationSet")
            .field("jtis", &snap.jtis.len())
            .field("kids", &snap.kids.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn jti(name: &str, forget_after: u64) -> RevocationUpdate {
        RevocationUpdate::Jti {
            jti: name.into(),
            forget_after,
        }
    }

    #[test]
    fn empty_set_revokes_nothing() {
        let set = RevocationSet::new();
        assert!(!set.is_revoked("a", Some("k"), 0));
        assert!(set.is_empty());
    }

    #[test]
    fn jti_revoked_until_forget_after() {
        let set = RevocationSet::new();
        set.revoke_jti("a", 100);
        assert!(set.is_revoked("a", None, 100));
        assert!(set.is_revoked("a", Some("other"), 50));
        assert!(!set.is_revoked("a", None, 101));
        assert!(!set.is_revoked("b", None, 50));
    }

    #[test]
    fn kid_revokes_every_token_under_it() {
        let set = RevocationSet::new();
        set.revoke_kid("k1", u64::MAX);
        assert!(set.is_revoked("any", Some("k1"), u64::MAX));
        assert!(!set.is_revoked("any", Some("k2"), 0));
        assert!(!set.is_revoked("any", None, 0));
        // A kid name is not a jti name.
        assert!(!set.is_revoked("k1", None, 0));
    }

    #[test]
    fn later_forget_after_wins() {
        let set = RevocationSet::new();
        set.apply(&[jti("a", 200), jti("a", 100)]);
        assert!(set.is_revoked("a", None, 150));
        set.revoke_jti("a", 50);
        assert!(set.is_revoked("a", None, 150));
    }

    #[test]
    fn purge_drops_only_forgettable_entries() {
        let set = RevocationSet::new();
        set.apply(&[
            jti("old", 10),
            jti("new", 30),
            RevocationUpdate::Kid {
                kid: "k".into(),
                forget_after: 10,
            },
        ]);
        set.purge(10);
        assert_eq!(set.len(), 3, "entries are kept through forget_after");
        set.purge(11);
        assert_eq!(set.len(), 1);
        assert!(set.is_revoked("new", None, 30));
        assert!(!set.is_revoked("old", None, 0), "purged entries are gone");
    }

    #[test]
    fn debug_shows_sizes_not_names() {
        let set = RevocationSet::new();
        set.revoke_jti("secret-ish-jti", 1);
        let debug = format!("{set:?}");
        assert!(!debug.contains("secret-ish-jti"), "{debug}");
        assert!(debug.contains("jtis: 1"), "{debug}");
    }

    /// Readers running alongside a writer see every revocation once `apply` has returned,
    /// and never see one "un-revoked" afterwards.
    #[test]
    fn concurrent_readers_see_applied_batches() {
        const BATCHES: usize = 300;
        const PER_BATCH: usize = 4;
        let set = RevocationSet::new();
        let applied = AtomicUsize::new(0); // batches whose `apply` has returned
        let done = AtomicBool::new(false);
        let name = |b: usize, i: usize| format!("b{b}-{i}");
        let checks = std::thread::scope(|s| {
            let readers: Vec<_> = (0..3)
                .map(|r| {
                    let (set, applied, done) = (&set, &applied, &done);
                    s.spawn(move || {
                        let mut checks = 0usize;
                        let mut cursor = r;
                        while !done.load(Ordering::Acquire) {
                            let seen = applied.load(Ordering::Acquire);
                            for b in 0..seen {
                                let i = (cursor + b) % PER_BATCH;
                                assert!(
                                    set.is_revoked(&name(b, i), None, 5),
                                    "batch {b} applied but not visible"
                                );
                                checks += 1;
                            }
                            // Not yet applied ⇒ not revoked (writer is only at `seen`).
                            assert!(!set.is_revoked(&name(BATCHES, 0), None, 5));
                            cursor += 1;
                        }
                        checks
                    })
                })
                .collect();
            for b in 0..BATCHES {
                let batch: Vec<_> = (0..PER_BATCH).map(|i| jti(&name(b, i), 10)).collect();
                set.apply(&batch);
                applied.store(b + 1, Ordering::Release);
                if b % 50 == 0 {
                    set.purge(5); // a no-op purge must not lose anything
                }
            }
            done.store(true, Ordering::Release);
            readers
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum::<usize>()
        });
        assert!(checks > 0);
        assert_eq!(set.len(), BATCHES * PER_BATCH);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Jti(u8, u64),
        Kid(u8, u64),
        Purge(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..8, 0u64..20).prop_map(|(n, t)| Op::Jti(n, t)),
            (0u8..4, 0u64..20).prop_map(|(n, t)| Op::Kid(n, t)),
            (0u64..20).prop_map(Op::Purge),
        ]
    }

    proptest::proptest! {
        /// The set answers like a plain map of `name -> max(forget_after)`, purge or no purge.
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 0..40), now in 0u64..20) {
            let set = RevocationSet::new();
            let mut jtis = BTreeMap::new();
            let mut kids = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Jti(n, t) => {
                        set.revoke_jti(&format!("j{n}"), t);
                        let e = jtis.entry(n).or_insert(t);
                        *e = (*e).max(t);
                    }
                    Op::Kid(n, t) => {
                        set.revoke_kid(&format!("k{n}"), t);
                        let e = kids.entry(n).or_insert(t);
                        *e = (*e).max(t);
                    }
                    // Purging at or before `now` never changes an answer at `now`.
                    Op::Purge(t) => set.purge(t.min(now)),
                }
            }
            for j in 0..8u8 {
                for k in 0..4u8 {
                    let want = jtis.get(&j).is_some_and(|&t| now <= t)
                        || kids.get(&k).is_some_and(|&t| now <= t);
                    let kid = format!("k{k}");
                    proptest::prop_assert_eq!(
                        set.is_revoked(&format!("j{j}"), Some(&kid), now), want
                    );
                }
            }
        }
    }
}
