//! Backoff after failed client authentication, so online guessing of a client secret (and,
//! for the Usercube format, its unsalted SHA-256) is slow enough not to matter.
//!
//! Only failures count: a key with no recorded failure costs one relaxed atomic load on the
//! success path, so valid clients at any rate are never throttled. After `failures`
//! consecutive failures a key is refused for a backoff of 1 s that doubles with every further
//! failure, up to `max_backoff`; while refused, its secret is not checked at all. A success
//! forgets the key. A key whose last failure (or backoff) ended more than `max_backoff` ago
//! starts again from zero.
//!
//! The table is sharded (a mutex per shard, picked by hash) and holds at most `entries` keys;
//! a new key in a full shard evicts the shard's entry whose last failure is oldest (a scan of
//! one shard, done only when recording a failure for a key not yet tracked).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{ApiError, Error};

/// Shards of the table; a power of two.
const SHARDS: usize = 16;
/// The first backoff; each further failure doubles it.
const BASE_BACKOFF: Duration = Duration::from_secs(1);
/// Seconds between two log lines of one kind.
const LOG_WINDOW_SECS: u64 = 10;

/// Sizing of one throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Consecutive failures before a key is refused.
    pub failures: u32,
    /// Longest backoff, and how long a key's failures are remembered after its last one.
    pub max_backoff: Duration,
    /// Most keys tracked (at least `SHARDS`, 16).
    pub entries: usize,
}

impl ThrottleConfig {
    /// Per client id.
    pub const CLIENT_DEFAULT: ThrottleConfig = ThrottleConfig {
        failures: 5,
        max_backoff: Duration::from_secs(300),
        entries: 65536,
    };
    /// Per source address: higher, as one address may front many clients (NAT).
    pub const SOURCE_DEFAULT: ThrottleConfig = ThrottleConfig {
        failures: 30,
        ..Self::CLIENT_DEFAULT
    };
}

/// The source-address key: an IPv4 address, or an IPv6 address's /64 (one host's usual
/// allocation, so walking its addresses does not help).
pub fn source_key(ip: std::net::IpAddr) -> u128 {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => u128::from(v4.to_bits()),
        std::net::IpAddr::V6(v6) => v6.to_bits() & !u128::from(u64::MAX),
    }
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    /// With distinct counting: hashes of the identities that already failed here.
    seen: Vec<u64>,
    /// The last failure, or the end of the backoff it started.
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Failed-authentication backoff keyed by `K` (a client id, a source address).
#[derive(Debug)]
pub struct FailureThrottle<K> {
    config: ThrottleConfig,
    shards: Box<[Mutex<HashMap<K, Entry>>]>,
    per_shard: usize,
    hasher: RandomState,
    /// Count a failure only for an identity not seen failing under this key before.
    distinct: bool,
    /// Keys tracked in all shards; 0 lets the success path skip the lock.
    tracked: AtomicUsize,
    /// Requests refused while in backoff.
    throttled: AtomicU64,
    /// Rate limit of the log line: the window's start (seconds since `epoch`) and the
    /// refusals held back since the last line.
    log_window: AtomicU64,
    held_back: AtomicU64,
    epoch: Instant,
}

impl<K: Hash + Eq + Clone> FailureThrottle<K> {
    pub fn new(config: ThrottleConfig) -> Self {
        let per_shard = (config.entries / SHARDS).max(1);
        Self {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard,
            hasher: RandomState::new(),
            distinct: false,
            tracked: AtomicUsize::new(0),
            throttled: AtomicU64::new(0),
            log_window: AtomicU64::new(u64::MAX),
            held_back: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A throttle whose key (a source address) fronts many identities (client ids, tokens):
    /// it counts distinct identities that failed, not failures. One misconfigured agent behind
    /// a NAT, retrying with the same id, counts once and cannot lock out its neighbours; an
    /// address trying many ids is still refused.
    pub fn new_distinct(config: ThrottleConfig) -> Self {
        Self {
            distinct: true,
            ..Self::new(config)
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Entry>> {
        // The hash is random per process, so an attacker cannot aim at one shard.
        let i = self.hasher.hash_one(key) as usize & (SHARDS - 1);
        &self.shards[i]
    }

    /// `Some(wait)` while `key` is in backoff (its credentials must not be checked), counting
    /// the refusal; `None` when it may try.
    pub fn check(&self, key: &K, now: Instant) -> Option<Duration> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let wait = shard
            .get(key)?
            .blocked_until?
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())?;
        self.throttled.fetch_add(1, Ordering::Relaxed);
        Some(wait)
    }

    /// Records a failed authentication; `Some(backoff)` when `key` is now refused for that long.
    pub fn failure(&self, key: &K, now: Instant) -> Option<Duration> {
        self.failure_of(key, "", now)
    }

    /// Records a failed authentication of identity `who` under `key`; with distinct counting
    /// a `who` already seen failing here refreshes the entry but does not count again.
    pub fn failure_of(&self, key: &K, who: &str, now: Instant) -> Option<Duration> {
        let who = self.distinct.then(|| self.hasher.hash_one(who));
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if !shard.contains_key(key) {
            if shard.len() >= self.per_shard {
                let oldest = shard
                    .iter()
                    .min_by_key(|(_, e)| e.last)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    shard.remove(&k);
                    self.tracked.fetch_sub(1, Ordering::Relaxed);
                }
            }
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
        let entry = shard.entry(key.clone()).or_insert(Entry {
            failures: 0,
            seen: Vec::new(),
            last: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(entry.last) > self.config.max_backoff {
            entry.failures = 0;
            entry.seen.clear();
            entry.blocked_until = None;
        }
        if let Some(who) = who {
            if entry.seen.contains(&who) {
                if entry.blocked_until.is_none() {
                    entry.last = now;
                }
                return None;
            }
            // Bounded: past the threshold every new identity counts anyway.
            if entry.seen.len() < self.config.failures as usize + 1 {
                entry.seen.push(who);
            }
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        if entry.failures < self.config.failures {
            return None;
        }
        let doublings = (entry.failures - self.config.failures).min(20);
        let backoff = (BASE_BACKOFF * (1u32 << doublings)).min(self.config.max_backoff);
        let until = now + backoff;
        entry.blocked_until = Some(until);
        entry.last = until;
        Some(backoff)
    }

    /// Records a successful authentication: `key`'s failures are forgotten.
    pub fn success(&self, key: &K) {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if shard.remove(key).is_some() {
            self.tracked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Keys tracked.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Requests refused while in backoff, since start.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Whether a log line about a refusal may be written at `now` (at most one per
    /// `LOG_WINDOW_SECS`): `Some(n)` with the lines held back since the last one.
    pub fn log_admit(&self, now: Instant) -> Option<u64> {
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        let window = self.log_window.load(Ordering::Relaxed);
        let due = window == u64::MAX || secs >= window.saturating_add(LOG_WINDOW_SECS);
        if due
            && self
                .log_window
                .compare_exchange(window, secs, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The refusal for a key in backoff: counts it in `/metrics`, logs it (rate-limited per
/// throttle) and builds the 429. `by` names the throttle (`client`, `source`), `subject`
/// what it is keyed by.
pub fn refuse<K: Hash + Eq + Clone>(
    app: &crate::app::App,
    throttle: &FailureThrottle<K>,
    by: &'static str,
    subject: &str,
    wait: Duration,
) -> Error {
    publish(app);
    if let Some(held_back) = throttle.log_admit(Instant::now()) {
        let subject: String = subject.chars().take(128).collect();
        tracing::warn!(by, subject = %subject, retry_after = wait.as_secs(), held_back,
            "authentication refused after repeated failures");
    }
    let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::Throttled {
        retry_after,
        description: format!("too many failed authentications; retry after {retry_after} s"),
    }
    .into()
}

/// Writes `latchkey_auth_throttled_total` into the metrics.
fn publish(app: &crate::app::App) {
    let lines = format!(
        "# HELP latchkey_auth_throttled_total Requests refused 429 after repeated failed authentications.\n\
         # TYPE latchkey_auth_throttled_total counter\n\
         latchkey_auth_throttled_total{{by=\"client\"}} {}\n\
         latchkey_auth_throttled_total{{by=\"source\"}} {}\n",
        app.client_throttle.throttled(),
        app.source_throttle.throttled()
    );
    app.metrics.set_section("auth_throttle", lines);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(failures: u32, entries: usize) -> ThrottleConfig {
        ThrottleConfig {
            failures,
            max_backoff: Duration::from_secs(300),
            entries,
        }
    }

    #[test]
    fn backoff_starts_at_the_threshold_and_doubles_to_the_cap() {
        let t = FailureThrottle::new(config(3, 64));
        let now = Instant::now();
        let k = "c".to_owned();
        assert_eq!(t.failure(&k, now), None);
        assert_eq!(t.failure(&k, now), None);
        assert_eq!(t.check(&k, now), None);
        assert_eq!(t.failure(&k, now), Some(Duration::from_secs(1)));
        assert_eq!(t.check(&k, now), Some(Duration::from_secs(1)));
        let mut at = now + Duration::from_secs(1);
        assert_eq!(t.check(&k, at), None, "free again when the backoff ends");
        let mut seen = Vec::new();
        for _ in 0..12 {
            let b = t.failure(&k, at).expect("in backoff");
            seen.push(b.as_secs());
            at += b;
        }
        assert_eq!(
            seen,
            [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300],
            "doubling, capped"
        );
        assert_eq!(t.throttled(), 1);
    }

    /// A source counts identities, not failures: one id failing again and again never
    /// reaches the limit, a new id each time does.
    #[test]
    fn distinct_counting_needs_distinct_identities() {
        let t = FailureThrottle::<u128>::new_distinct(config(3, 64));
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(t.failure_of(&1, "agent-a", now), None);
        }
        assert_eq!(t.check(&1, now), None);
        assert_eq!(t.failure_of(&1, "agent-b", now), None);
        assert!(t.failure_of(&1, "agent-c", now).is_some());
        assert!(t.check(&1, now).is_some());
        // Plain counting (per client id) counts every failure.
        let plain = FailureThrottle::<u128>::new(config(3, 64));
        plain.failure_of(&1, "x", now);
        plain.failure_of(&1, "x", now);
        assert!(plain.failure_of(&1, "x", now).is_some());
    }

    #[test]
    fn success_forgets_and_other_keys_are_unaffected() {
        let t = FailureThrottle::new(config(2, 64));
        let now = Instant::now();
        let (a, b) = ("a".to_owned(), "b".to_owned());
        t.failure(&a, now);
        assert!(t.failure(&a, now).is_some());
        assert!(t.check(&a, now).is_some());
        assert_eq!(t.check(&b, now), None);
        t.success(&a);
        assert_eq!(t.tracked(), 0);
        assert_eq!(t.check(&a, now), None);
        assert_eq!(t.failure(&a, now), None, "counting starts over");
    }

    #[test]
    fn failures_are_forgotten_after_the_longest_backoff() {
        let t = FailureThrottle::new(config(2, 64));
        let now = Instant::now();
        let k = 1u32;
        t.failure(&k, now);
        assert_eq!(t.failure(&k, now + Duration::from_secs(301)), None);
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest() {
        let t = FailureThrottle::new(config(1, SHARDS * 2));
        let start = Instant::now();
        for i in 0..10_000u32 {
            t.failure(&i, start + Duration::from_millis(u64::from(i)));
        }
        assert!(t.tracked() <= SHARDS * 2, "{}", t.tracked());
        // The newest survive, the oldest are gone.
        let late = start + Duration::from_millis(10_000);
        assert!(t.check(&9_999, late).is_some());
        assert_eq!(t.check(&0, start), None);
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_64() {
        let a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let other: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(source_key(v4), source_key(mapped));
        assert_ne!(source_key(v4), source_key(other));
    }

    #[test]
    fn log_lines_are_rate_limited_with_a_count() {
        let t = FailureThrottle::<u8>::new(config(1, 64));
        let now = Instant::now();
        assert_eq!(t.log_admit(now), Some(0));
        assert_eq!(t.log_admit(now), None);
        assert_eq!(t.log_admit(now + Duration::from_secs(5)), None);
        assert_eq!(t.log_admit(now + Duration::from_secs(20)), Some(2));
    }
}
