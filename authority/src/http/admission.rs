//! What a connection may take of the resources every loop shares: a handshake slot, a share
//! of its source address's connections, a share of the buffered-body budget, file
//! descriptors; and log lines about refusals that an attack cannot turn into a flood.
//!
//! Each admission is a guard that gives its share back when dropped, so a connection that
//! closes for any reason (timeout, eviction, error, shutdown) cannot leak a slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// File descriptors kept for everything that is not a client connection: the store, the
/// listening socket, each loop's poll and waker, signal pipes, logs, backups, the CLI's own.
const FD_RESERVE: u64 = 64;

/// Everything admission shares across loops.
#[derive(Debug)]
pub(crate) struct Admission {
    pub connections: Slots,
    pub handshakes: Slots,
    pub sources: Arc<SourceCounts>,
    pub bodies: Arc<BodyBudget>,
    pub logs: Logs,
}

impl Admission {
    pub fn new(limits: &super::Limits) -> Self {
        Self {
            connections: Slots::new(limits.max_connections),
            handshakes: Slots::new(limits.max_tls_handshakes),
            sources: SourceCounts::new(limits.max_connections_per_source),
            bodies: BodyBudget::new(limits.max_body_buffer),
            logs: Logs::default(),
        }
    }
}

/// One limiter per kind of refusal, so one attack does not silence the others' lines.
#[derive(Debug)]
pub(crate) struct Logs {
    pub connection_limit: LogLimiter,
    pub source_limit: LogLimiter,
    pub handshake_limit: LogLimiter,
    pub body_budget: LogLimiter,
    pub body_timeout: LogLimiter,
    pub hello_timeout: LogLimiter,
    pub evicted: LogLimiter,
    pub accept_error: LogLimiter,
}

impl Default for Logs {
    fn default() -> Self {
        let l = || LogLimiter::new(LOG_EVERY);
        Self {
            connection_limit: l(),
            source_limit: l(),
            handshake_limit: l(),
            body_budget: l(),
            body_timeout: l(),
            hello_timeout: l(),
            evicted: l(),
            accept_error: l(),
        }
    }
}

/// At most one line per kind of refusal in this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A bounded number of shared slots (handshakes in progress, open connections).
#[derive(Debug)]
pub(crate) struct Slots {
    used: Arc<AtomicUsize>,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or `None` if all are taken.
    pub fn try_take(&self) -> Option<SlotGuard> {
        if self.used.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.used.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(SlotGuard(self.used.clone()))
    }
}

/// One taken slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct SlotGuard(Arc<AtomicUsize>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The key connections are counted under: the IPv4 address, or the /64 of an IPv6 address
/// (one host usually owns a whole /64, so counting single v6 addresses would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    Self::V6Prefix([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// Open connections per source, across all loops. Consulted once per accept, never per
/// request, so a mutex costs nothing that matters.
#[derive(Debug)]
pub(crate) struct SourceCounts {
    open: Mutex<HashMap<SourceKey, usize>>,
    max: usize,
}

impl SourceCounts {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            max,
        })
    }

    /// Counts a new connection from `ip`, or `None` if the source is at its limit.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceGuard> {
        let key = SourceKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            counts: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&SourceKey::of(ip)).copied().unwrap_or(0)
    }
}

/// One counted connection; dropping it uncounts it (and forgets an empty source, so the map
/// holds only sources with open connections).
#[derive(Debug)]
pub(crate) struct SourceGuard {
    counts: Arc<SourceCounts>,
    key: SourceKey,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The server-wide budget of request-body bytes held while bodies are still arriving.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    used: AtomicUsize,
    max: usize,
}

impl BodyBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// An empty reservation that `BodyReservation::grow_to` extends.
    pub fn reservation(self: &Arc<Self>) -> BodyReservation {
        BodyReservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_add(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(n).filter(|&v| v <= self.max) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }
}

/// Body bytes one request holds of the budget; dropping it gives them back.
#[derive(Debug)]
pub(crate) struct BodyReservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyReservation {
    /// Makes the reservation at least `bytes`; false (and unchanged) if the budget cannot
    /// cover it.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        if !self.budget.try_add(bytes - self.bytes) {
            return false;
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Lets a log line through at most once per `every`, counting what it held back, so an
/// attack that trips a limit thousands of times a second writes one line per interval.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    /// Milliseconds since `epoch()` of the last line let through, plus one (0: never).
    last: AtomicU64,
    held_back: AtomicU64,
}

impl LogLimiter {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be written now, `n` being the lines held back since the last
    /// one; `None` if this line is to be held back.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let at = now.saturating_duration_since(epoch()).as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || at >= last + self.every.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Raises the soft file-descriptor limit to the hard limit and returns how many connections
/// the process can then hold: `wanted`, or fewer if the limit is lower (logged, so an
/// operator learns why connections stop at a number they did not set).
pub fn fit_connections_to_fd_limit(wanted: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the file-descriptor limit");
            match rlimit::getrlimit(rlimit::Resource::NOFILE) {
                Ok((soft, _)) => soft,
                Err(_) => return wanted,
            }
        }
    };
    let possible = usize::try_from(soft.saturating_sub(FD_RESERVE))
        .unwrap_or(usize::MAX)
        .max(1);
    if possible < wanted {
        tracing::warn!(
            fd_limit = soft,
            max_connections = possible,
            configured = wanted,
            "max-connections lowered to fit the file-descriptor limit (raise it with `ulimit -n` or LimitNOFILE=)"
        );
        possible
    } else {
        tracing::info!(
            fd_limit = soft,
            max_connections = wanted,
            "file-descriptor limit"
        );
        wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back_on_drop() {
        let s = Slots::new(2);
        let a = s.try_take().unwrap();
        let _b = s.try_take().unwrap();
        assert!(s.try_take().is_none());
        drop(a);
        assert!(s.try_take().is_some());
    }

    #[test]
    fn sources_are_capped_and_forgotten_when_empty() {
        let c = SourceCounts::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = c.try_admit(ip).unwrap();
        let b = c.try_admit(ip).unwrap();
        assert!(c.try_admit(ip).is_none(), "third from one source");
        assert!(
            c.try_admit(other).is_some(),
            "another source is not affected"
        );
        drop(a);
        let _a = c.try_admit(ip).expect("a freed place is usable again");
        drop(b);
        drop(_a);
        assert_eq!(c.open(ip), 0);
        assert!(
            c.open.lock().unwrap().is_empty(),
            "empty sources are forgotten"
        );
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
        let c = SourceCounts::new(1);
        let _a = c.try_admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            c.try_admit("2001:db8:1:2::ffff".parse().unwrap()).is_none(),
            "same /64"
        );
        assert!(c.try_admit("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _v4 = c.try_admit("198.51.100.7".parse().unwrap()).unwrap();
        assert!(
            c.try_admit("::ffff:198.51.100.7".parse().unwrap())
                .is_none(),
            "a v4-mapped address is that v4 source"
        );
    }

    #[test]
    fn body_budget_refuses_past_its_limit_and_refills_on_drop() {
        let b = BodyBudget::new(100);
        let mut r1 = b.reservation();
        assert!(r1.grow_to(60));
        assert!(r1.grow_to(40), "shrinking requests are no-ops");
        let mut r2 = b.reservation();
        assert!(!r2.grow_to(41), "over the budget");
        assert!(r2.grow_to(40));
        assert_eq!(b.used(), 100);
        drop(r1);
        assert_eq!(b.used(), 40);
        drop(r2);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn log_limiter_lets_one_line_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t = epoch() + Duration::from_secs(1);
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t), None);
        assert_eq!(l.allow(t + Duration::from_secs(5)), None);
        assert_eq!(l.allow(t + Duration::from_secs(10)), Some(2));
        assert_eq!(l.allow(t + Duration::from_secs(11)), None);
    }
}
