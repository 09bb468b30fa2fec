//! Refusals of unauthenticated requests, audited as counts instead of one row each.
//!
//! A request that never proved who it is (a wrong operator secret, a throttled guess) costs
//! the sender nothing, so one durable row per refusal would let anyone grow the database at
//! wire speed. Such refusals are counted here, in memory, per (event, claimed client id,
//! source address, OAuth error code), and written by the maintenance thread as one aggregated
//! audit row per key and interval: `actor` is the claimed id, `subject` says
//! `ID count=N source=ADDR interval=FROM..TO error=CODE` (the claimed id first, as a single
//! refusal's subject was), the outcome carries the first refusal's message. The metrics are
//! updated at each flush.
//!
//! The table holds at most `max_keys` keys per interval; refusals for further keys go to one
//! `*other*` row (its count, the keys it absorbed), counted in
//! `latchkey_audit_refusals_overflow_total`, with a rate-limited warning. Memory is therefore
//! bounded by `max_keys` × (id + message), whatever the traffic.
//!
//! Refusals of *authenticated* callers (a valid client asking for a scope it does not hold)
//! keep one row each, written at once: they are bounded by authentication and the rate limits,
//! and each says something about a known client.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::app::App;
use crate::error::Error;
use crate::http::admission::LogLimiter;
use crate::store::{AuditOutcome, PruneAudit, Store, WriteOp, WriteOutcome};

/// The actor of the row that counts refusals beyond the key limit.
pub const OTHER_ACTOR: &str = "*other*";
/// Longest claimed client id kept (ids are attacker input).
const MAX_ID: usize = 128;
/// Longest refusal message kept per key.
const MAX_REASON: usize = 256;

/// How refusals are tallied and how long the audit log is kept. Set by `serve` from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPolicy {
    /// How often tallied refusals are written (`audit-flush-interval`).
    pub flush_interval: Duration,
    /// Distinct keys tallied per interval (`audit-refusal-keys`).
    pub max_keys: usize,
    /// Audit rows older than this many days are pruned (`audit-retention-days`; 0: kept).
    pub retention_days: u64,
    /// Most audit rows kept; the oldest go first (`audit-max-rows`; 0: no limit).
    pub max_rows: u64,
    /// Most rows one prune op removes, so a large backlog never makes one long transaction.
    pub prune_batch: u64,
}

impl AuditPolicy {
    pub const DEFAULT: AuditPolicy = AuditPolicy {
        flush_interval: Duration::from_secs(60),
        max_keys: 10_000,
        retention_days: 90,
        max_rows: 1_000_000,
        prune_batch: 10_000,
    };
}

impl Default for AuditPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    event: &'static str,
    actor: String,
    source: String,
    code: &'static str,
}

#[derive(Debug)]
struct Count {
    n: u64,
    reason: String,
}

#[derive(Debug, Default)]
struct Window {
    /// Unix second the window opened (the first refusal after the last flush).
    from: Option<u64>,
    rows: HashMap<Key, Count>,
    other: u64,
    other_keys: u64,
}

/// Refusal counts since the last flush, bounded.
#[derive(Debug)]
pub struct RefusalTally {
    max_keys: usize,
    window: Mutex<Window>,
    /// Refusals that found the table full, since start.
    overflowed: AtomicU64,
    /// Refusals tallied, since start.
    counted: AtomicU64,
    /// Audit rows the retention policy removed, since start (for `/metrics`).
    pruned: AtomicU64,
    log: LogLimiter,
    /// The INFO line per refusal ([`log_auth_failure`]).
    auth_log: LogLimiter,
}

impl RefusalTally {
    pub fn new(max_keys: usize) -> Self {
        Self {
            max_keys: max_keys.max(1),
            window: Mutex::new(Window::default()),
            overflowed: AtomicU64::new(0),
            counted: AtomicU64::new(0),
            pruned: AtomicU64::new(0),
            log: LogLimiter::new(Duration::from_secs(10)),
            auth_log: LogLimiter::new(AUTH_LOG_EVERY),
        }
    }

    /// Counts one refusal of an unauthenticated request. `claimed` is the client id the
    /// request named (bounded and sanitised here; never a secret), `code` its OAuth error.
    pub fn record(
        &self,
        event: &'static str,
        claimed: &str,
        source: IpAddr,
        code: &'static str,
        reason: &str,
        now: u64,
    ) {
        self.counted.fetch_add(1, Ordering::Relaxed);
        log_auth_failure(&self.auth_log, event, claimed, source, reason);
        let key = Key {
            event,
            actor: sanitise(claimed, MAX_ID),
            source: source_text(source),
            code,
        };
        // A poisoned lock only means a panic elsewhere mid-update; counts stay usable.
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.from.get_or_insert(now);
        if let Some(c) = w.rows.get_mut(&key) {
            c.n += 1;
            return;
        }
        if w.rows.len() >= self.max_keys {
            w.other += 1;
            w.other_keys += 1;
            drop(w);
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = self.log.allow(Instant::now()) {
                tracing::warn!(
                    max_keys = self.max_keys,
                    held_back,
                    "refusal tally full; further refusals are counted in one row"
                );
            }
            return;
        }
        let reason = sanitise(reason, MAX_REASON);
        w.rows.insert(key, Count { n: 1, reason });
    }

    /// Refusals that found the table full since start.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Refusals counted since start.
    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    /// Empties the table into audit ops, one per key (and one for the overflow), for the
    /// window ending `now`.
    pub fn take(&self, now: u64) -> Vec<WriteOp> {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let Some(from) = w.from else {
            return Vec::new();
        };
        let mut ops: Vec<WriteOp> = w
            .rows
            .into_iter()
            .map(|(k, c)| WriteOp::Audit {
                event: k.event.into(),
                subject: format!(
                    "{} count={} source={} interval={from}..{now} error={}",
                    k.actor, c.n, k.source, k.code
                ),
                actor: k.actor,
                outcome: AuditOutcome::Refused(c.reason),
                now,
            })
            .collect();
        if w.other > 0 {
            ops.push(WriteOp::Audit {
                actor: OTHER_ACTOR.into(),
                event: "refusals.other".into(),
                subject: format!("count={} interval={from}..{now}", w.other),
                outcome: AuditOutcome::Refused(format!(
                    "{} refusals beyond the tally's {}-key limit",
                    w.other_keys, self.max_keys
                )),
                now,
            });
        }
        ops
    }

    /// Writes what was tallied up to `now` and waits for the commit. Rows go through the
    /// writer together (group commit), not one fsync each. Never call on an event loop.
    pub fn flush(&self, store: &Store, now: u64) -> Result<usize, crate::error::Error> {
        let ops = self.take(now);
        let n = ops.len();
        if n == 0 {
            return Ok(0);
        }
        let (tx, rx) = crossbeam::channel::bounded(n);
        for op in ops {
            let tx = tx.clone();
            store.submit(op, move |r| {
                let _ = tx.send(r);
            });
        }
        drop(tx);
        let mut first_error = None;
        for r in rx.iter() {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(n),
        }
    }

    /// The metrics section: refusals tallied and those beyond the key limit.
    pub fn metrics(&self) -> String {
        format!(
            "# HELP latchkey_audit_refusals_total Refusals of unauthenticated requests, audited as counts.\n\
             # TYPE latchkey_audit_refusals_total counter\n\
             latchkey_audit_refusals_total {}\n\
             # HELP latchkey_audit_refusals_overflow_total Tallied refusals that found the key table full (audited in one row).\n\
             # TYPE latchkey_audit_refusals_overflow_total counter\n\
             latchkey_audit_refusals_overflow_total {}\n",
            self.counted(),
            self.overflowed()
        )
    }
}

/// Most prune batches one maintenance pass runs; a larger backlog goes on at the next pass.
const MAX_PRUNE_BATCHES: usize = 100;

/// The maintenance thread's audit work: write the tallied refusals, then apply the retention
/// policy.
pub fn maintain(app: &App, now: u64) -> Result<(), Error> {
    let flushed = app.refusals.flush(&app.store, now);
    app.metrics
        .set_section("audit_refusals", app.refusals.metrics());
    flushed?;
    let pruned = prune(&app.store, &app.settings.audit, now)?;
    if pruned > 0 {
        let total = app.refusals.pruned.fetch_add(pruned, Ordering::Relaxed) + pruned;
        app.metrics.set_section(
            "audit_pruned",
            format!(
                "# HELP latchkey_audit_pruned_total Audit rows removed by the retention policy.\n\
                 # TYPE latchkey_audit_pruned_total counter\n\
                 latchkey_audit_pruned_total {total}\n"
            ),
        );
    }
    Ok(())
}

/// Removes the oldest audit rows `policy` no longer keeps, in batches of `prune_batch`, each
/// its own transaction through the writer (other writes go on between them). Returns how many
/// rows went.
pub fn prune(store: &Store, policy: &AuditPolicy, now: u64) -> Result<u64, Error> {
    if policy.retention_days == 0 && policy.max_rows == 0 {
        return Ok(0);
    }
    let before_time = (policy.retention_days > 0)
        .then(|| now.saturating_sub(policy.retention_days.saturating_mul(86_400)));
    let mut total = 0;
    for _ in 0..MAX_PRUNE_BATCHES {
        let op = WriteOp::PruneAudit(PruneAudit {
            before_time,
            max_rows: (policy.max_rows > 0).then_some(policy.max_rows),
            batch: policy.prune_batch.max(1),
            by: crate::app::SYSTEM.into(),
            now,
        });
        let removed = match store.write(op)? {
            WriteOutcome::AuditPruned { removed } => removed,
            _ => 0,
        };
        total += removed;
        if removed < policy.prune_batch.max(1) {
            break;
        }
    }
    if total > 0 {
        tracing::info!(rows = total, "pruned audit rows past the retention policy");
    }
    Ok(total)
}

/// `s` without control characters, at most `max` characters, never empty.
fn sanitise(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// How often each kind of failed authentication may write a log line.
pub const AUTH_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a failed authentication at INFO, at most once per `limiter` interval (with a count of
/// the lines held back), so an operator sees who is failing from where without a flood of
/// lines. `claimed` is the client id the request named (bounded and sanitised here); callers
/// never pass a secret or token, and `reason` is the refusal's message, which names neither.
pub fn log_auth_failure(
    limiter: &LogLimiter,
    event: &'static str,
    claimed: &str,
    peer: IpAddr,
    reason: &str,
) {
    if let Some(held_back) = limiter.allow(Instant::now()) {
        tracing::info!(
            event,
            client_id = %sanitise(claimed, MAX_ID),
            peer = %peer,
            reason = %sanitise(reason, MAX_REASON),
            held_back,
            "authentication failed"
        );
    }
}

/// The source as it is aggregated: an IPv4 address, or an IPv6 address's /64.
fn source_text(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let net = std::net::Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX));
            format!("{net}/64")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(op: &WriteOp) -> (&str, &str, &str) {
        match op {
            WriteOp::Audit {
                actor,
                event,
                subject,
                ..
            } => (actor, event, subject),
            other => panic!("not an audit op: {other:?}"),
        }
    }

    const V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn refusals_of_one_key_become_one_row_with_the_count() {
        let t = RefusalTally::new(16);
        for _ in 0..1000 {
            t.record(
                "token.refuse",
                "admin",
                V4,
                "invalid_client",
                "bad secret",
                100,
            );
        }
        t.record(
            "token.refuse",
            "other",
            V4,
            "invalid_client",
            "bad secret",
            105,
        );
        let ops = t.take(160);
        assert_eq!(ops.len(), 2);
        let admin = ops.iter().find(|o| subject(o).0 == "admin").unwrap();
        assert_eq!(
            subject(admin),
            (
                "admin",
                "token.refuse",
                "admin count=1000 source=192.0.2.7 interval=100..160 error=invalid_client"
            )
        );
        assert!(t.take(200).is_empty(), "the table is emptied by a flush");
        assert_eq!(t.counted(), 1001);
    }

    #[test]
    fn a_full_table_counts_new_keys_in_one_other_row() {
        let t = RefusalTally::new(3);
        for i in 0..10 {
            t.record(
                "token.refuse",
                &format!("c{i}"),
                V4,
                "invalid_client",
                "x",
                1,
            );
        }
        t.record("token.refuse", "c0", V4, "invalid_client", "x", 1);
        assert_eq!(t.overflowed(), 7);
        let ops = t.take(2);
        assert_eq!(ops.len(), 4);
        let other = ops.iter().find(|o| subject(o).0 == OTHER_ACTOR).unwrap();
        assert_eq!(subject(other).2, "count=7 interval=1..2");
        let c0 = ops.iter().find(|o| subject(o).0 == "c0").unwrap();
        assert!(
            subject(c0).2.starts_with("c0 count=2 "),
            "{:?}",
            subject(c0)
        );
    }

    #[test]
    fn claimed_ids_are_bounded_and_sources_aggregate_by_64() {
        let t = RefusalTally::new(16);
        let long = "x".repeat(10_000) + "\n";
        t.record("token.refuse", &long, V4, "invalid_client", "r", 1);
        t.record("token.refuse", "", V4, "invalid_client", "r", 1);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        t.record("token.refuse", "v6", a, "invalid_client", "r", 1);
        t.record("token.refuse", "v6", b, "invalid_client", "r", 1);
        let ops = t.take(2);
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().any(|o| subject(o).0 == "x".repeat(MAX_ID)));
        assert!(ops.iter().any(|o| subject(o).0 == "-"));
        let v6 = ops.iter().find(|o| subject(o).0 == "v6").unwrap();
        assert!(
            subject(v6)
                .2
                .contains("v6 count=2 source=2001:db8:1:2::/64"),
            "{:?}",
            subject(v6)
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let d = AuditPolicy::default();
        assert_eq!(d.flush_interval, Duration::from_secs(60));
        assert_eq!(d.max_keys, 10_000);
        assert_eq!(d.retention_days, 90);
        assert_eq!(d.max_rows, 1_000_000);
        const DOC: &str = include_str!("../../docs/configuration.md");
        for row in [
            "| `audit-flush-interval` | `--audit-flush-interval` | `60s` |",
            "| `audit-refusal-keys` | `--audit-refusal-keys` | `10000` |",
            "| `audit-retention-days` | `--audit-retention-days` | `90` |",
            "| `audit-max-rows` | `--audit-max-rows` | `1000000` |",
        ] {
            assert!(DOC.contains(row), "docs/configuration.md lacks {row}");
        }
        assert!(DOC.contains("batches of 10000 rows"));
        assert_eq!(d.prune_batch, 10_000);
    }

    #[test]
    fn metrics_name_the_counts() {
        let t = RefusalTally::new(1);
        t.record("token.refuse", "a", V4, "invalid_client", "x", 1);
        t.record("token.refuse", "b", V4, "invalid_client", "x", 1);
        let m = t.metrics();
        assert!(m.contains("latchkey_audit_refusals_total 2\n"), "{m}");
        assert!(
            m.contains("latchkey_audit_refusals_overflow_total 1\n"),
            "{m}"
        );
    }
}
