//! Whether this node may serve the token path: in a cluster, only while it can prove that its
//! copy of the store is current. The single-node engine has no gate (its store is the truth).
//!
//! The etcd engine proves freshness every few hundred milliseconds: a linearizable read of the
//! key every write rewrites, answered by a quorum, and the local mirror having applied that
//! write. [`Freshness::prove`] records when such a read was *sent*; the node is fresh while the
//! last proof is younger than the bound. A silent watch therefore never looks healthy: without
//! a quorum's answer no proof arrives, and the gate closes once the bound has passed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The freshness gate of a cluster node.
#[derive(Debug)]
pub struct Freshness {
    bound: Duration,
    base: Instant,
    /// Milliseconds after `base` at which the last proving read was sent, plus one (0: never).
    proven: AtomicU64,
    /// Refusals because the node was not fresh (metric).
    refused: AtomicU64,
    /// The etcd revision the mirror has applied (metric).
    applied: AtomicI64,
}

/// The node could not prove it is current within the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// How old the last proof is (`None`: there never was one).
    pub age: Option<Duration>,
    pub bound: Duration,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.age {
            Some(age) => write!(
                f,
                "this node has not been able to confirm it is current with the cluster for \
                 {} ms (bound {} ms); another node can serve",
                age.as_millis(),
                self.bound.as_millis()
            ),
            None => write!(
                f,
                "this node has not yet confirmed it is current with the cluster; another \
                 node can serve"
            ),
        }
    }
}

impl Freshness {
    pub fn new(bound: Duration) -> Self {
        Freshness {
            bound,
            base: Instant::now(),
            proven: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            applied: AtomicI64::new(0),
        }
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Records a proof: a read sent at `sent` showed the cluster's last write, and the mirror
    /// has applied it. Older proofs than the one recorded are ignored.
    pub fn prove(&self, sent: Instant) {
        let ms = sent.saturating_duration_since(self.base).as_millis() as u64 + 1;
        self.proven.fetch_max(ms, Ordering::AcqRel);
    }

    /// Whether a proof was sent at or after `since`.
    pub fn proven_since(&self, since: Instant) -> bool {
        let ms = since.saturating_duration_since(self.base).as_millis() as u64 + 1;
        self.proven.load(Ordering::Acquire) >= ms
    }

    /// The age of the last proof at `now`.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        match self.proven.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                now.saturating_duration_since(self.base)
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }

    /// `Ok` while the last proof is younger than the bound.
    pub fn check(&self, now: Instant) -> Result<(), Stale> {
        match self.age(now) {
            Some(age) if age < self.bound => Ok(()),
            age => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(Stale {
                    age,
                    bound: self.bound,
                })
            }
        }
    }

    /// Records the revision the mirror has applied.
    pub fn set_applied_revision(&self, revision: i64) {
        self.applied.store(revision, Ordering::Relaxed);
    }

    pub fn applied_revision(&self) -> i64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// How many requests [`Freshness::check`] refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_until_proven_and_again_once_the_proof_is_older_than_the_bound() {
        let f = Freshness::new(Duration::from_secs(2));
        let t0 = Instant::now();
        assert_eq!(f.check(t0).unwrap_err().age, None);
        f.prove(t0);
        assert!(f.check(t0 + Duration::from_millis(1999)).is_ok());
        let stale = f.check(t0 + Duration::from_millis(2001)).unwrap_err();
        assert!(stale.age.unwrap() >= Duration::from_secs(2));
        // An older proof arriving late does not move the gate back.
        f.prove(t0 + Duration::from_secs(3));
        f.prove(t0 + Duration::from_secs(1));
        assert!(f.check(t0 + Duration::from_millis(4500)).is_ok());
        assert!(f.check(t0 + Duration::from_millis(5001)).is_err());
        assert_eq!(f.refused(), 3);
    }
}
