//! What a run measured: latencies in an HDR histogram, errors by kind, a per-second series
//! for the plot, and the summary printed at the end (text or JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Latencies are recorded in microseconds, from 1 µs to an hour.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Longest series kept (seconds); later seconds fold into the last bucket.
const MAX_SERIES: usize = 24 * 3600;

/// Why a request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// A response with a non-2xx status.
    Status(u16),
    /// A 2xx response without what the scenario expects (`access_token`, `"active":true`…).
    UnexpectedBody,
    /// Connecting failed.
    Connect,
    /// The server closed or reset the connection before answering.
    Closed,
    /// No response within `--timeout`.
    Timeout,
    /// The TLS layer failed.
    Tls,
    /// The response was not valid HTTP (or too large).
    Malformed,
    /// Anything else at the socket level.
    Io,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Status(s) => write!(f, "HTTP {s}"),
            ErrorKind::UnexpectedBody => f.write_str("unexpected body"),
            ErrorKind::Connect => f.write_str("transport: connect failed"),
            ErrorKind::Closed => f.write_str("transport: connection closed"),
            ErrorKind::Timeout => f.write_str("transport: timeout"),
            ErrorKind::Tls => f.write_str("transport: TLS error"),
            ErrorKind::Malformed => f.write_str("transport: malformed response"),
            ErrorKind::Io => f.write_str("transport: I/O error"),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone)]
pub struct Second {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

impl Second {
    fn new() -> Second {
        Second {
            ok: 0,
            errors: 0,
            latency: latency_histogram(2),
        }
    }
}

/// A thread's (or the merged) measurements.
#[derive(Debug, Clone)]
pub struct Stats {
    pub ok: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Latency of every request that got an HTTP response, whatever its status.
    pub latency: Histogram<u64>,
    pub series: Vec<Second>,
}

fn latency_histogram(sigfig: u8) -> Histogram<u64> {
    // Bounds and precision are constants within hdrhistogram's documented ranges.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ok: 0,
            errors: BTreeMap::new(),
            latency: latency_histogram(3),
            series: Vec::new(),
        }
    }
}

impl Stats {
    /// A request finished at `at` (since the start of the timed phase) after `latency`;
    /// `error` is `None` for a success. `responded` says an HTTP response arrived (so the
    /// latency means something).
    pub fn record(
        &mut self,
        at: Duration,
        latency: Duration,
        responded: bool,
        error: Option<ErrorKind>,
    ) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        let idx = usize::try_from(at.as_secs())
            .unwrap_or(usize::MAX)
            .min(MAX_SERIES - 1);
        if self.series.len() <= idx {
            self.series.resize_with(idx + 1, Second::new);
        }
        let second = &mut self.series[idx];
        if responded {
            // `us` is clamped into the histogram's range, so recording cannot fail.
            let _ = self.latency.record(us);
            let _ = second.latency.record(us);
        }
        match error {
            None => {
                self.ok += 1;
                second.ok += 1;
            }
            Some(kind) => {
                *self.errors.entry(kind).or_default() += 1;
                second.errors += 1;
            }
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        if self.series.len() < other.series.len() {
            self.series.resize_with(other.series.len(), Second::new);
        }
        for (mine, theirs) in self.series.iter_mut().zip(&other.series) {
            mine.ok += theirs.ok;
            mine.errors += theirs.errors;
            let _ = mine.latency.add(&theirs.latency);
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
                mean: 0.0,
            };
        }
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Everything the final report says.
#[derive(Debug, Clone)]
pub struct Summary {
    pub scenario: String,
    pub target: String,
    pub mode: String,
    pub connections: usize,
    pub threads: usize,
    pub agents: usize,
    pub rsa_agents: usize,
    /// Length of the timed phase.
    pub elapsed: Duration,
    pub stats: Stats,
    /// Lines about how the run was done (pre-minted pools, early ends…).
    pub notes: Vec<String>,
    /// What the dashboard pollers saw (`--pollers`).
    pub pages: Option<crate::dashboard::PageStats>,
}

impl Summary {
    pub fn requests(&self) -> u64 {
        self.stats.ok + self.stats.error_count()
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.stats.ok as f64 / secs
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        let p = Percentiles::of(&self.stats.latency);
        let errors: serde_json::Map<String, Value> = self
            .stats
            .errors
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let series: Vec<Value> = self
            .stats
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let sp = Percentiles::of(&s.latency);
                json!({"second": i, "ok": s.ok, "errors": s.errors,
                       "p50_us": sp.p50, "p99_us": sp.p99})
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "target": self.target,
            "mode": self.mode,
            "connections": self.connections,
            "threads": self.threads,
            "agents": self.agents,
            "rsa_agents": self.rsa_agents,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "requests": self.requests(),
            "ok": self.stats.ok,
            "errors": self.stats.error_count(),
            "errors_by_kind": errors,
            "throughput_rps": self.throughput(),
            "latency_us": {
                "p50": p.p50, "p90": p.p90, "p99": p.p99, "p99_9": p.p999,
                "max": p.max, "mean": p.mean,
            },
            "notes": self.notes,
            "pages": self.pages.as_ref().map(crate::dashboard::PageStats::to_json),
            "series": series,
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = Percentiles::of(&self.stats.latency);
        writeln!(f, "scenario     {} against {}", self.scenario, self.target)?;
        writeln!(
            f,
            "load         {}, {} connection(s), {} thread(s), {} agent(s) ({} RSA)",
            self.mode, self.connections, self.threads, self.agents, self.rsa_agents
        )?;
        writeln!(
            f,
            "requests     {} in {:.2} s: {} ok, {} errors",
            self.requests(),
            self.elapsed.as_secs_f64(),
            self.stats.ok,
            self.stats.error_count()
        )?;
        writeln!(f, "throughput   {:.0} ok/s", self.throughput())?;
        writeln!(
            f,
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
            us(p.p50),
            us(p.p90),
            us(p.p99),
            us(p.p999),
            us(p.max),
            us(p.mean as u64)
        )?;
        if !self.stats.errors.is_empty() {
            writeln!(f, "errors")?;
            for (k, v) in &self.stats.errors {
                writeln!(f, "  {v:>10}  {k}")?;
            }
        }
        if let Some(p) = &self.pages {
            writeln!(f, "pages        {}", p.line())?;
        }
        for n in &self.notes {
            writeln!(f, "note         {n}")?;
        }
        Ok(())
    }
}

/// Microseconds as a short human string.
pub fn us(v: u64) -> String {
    if v >= 10_000_000 {
        format!("{:.1}s", v as f64 / 1e6)
    } else if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1e3)
    } else if v >= 1_000 {
        format!("{:.2}ms", v as f64 / 1e3)
    } else {
        format!("{v}µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut s = Stats::default();
        for i in 1..=1000u64 {
            s.record(ms(i), Duration::from_micros(i * 10), true, None);
        }
        let p = Percentiles::of(&s.latency);
        // HDR with 3 significant digits: within 0.1 %.
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(near(p.p50, 5000), "{p:?}");
        assert!(near(p.p90, 9000), "{p:?}");
        assert!(near(p.p99, 9900), "{p:?}");
        assert!(near(p.p999, 9990), "{p:?}");
        assert!(near(p.max, 10_000), "{p:?}");
        assert_eq!(
            s.series.len(),
            2,
            "1..=999 ms in second 0, 1000 ms in second 1"
        );
        assert_eq!(s.series[0].ok + s.series[1].ok, 1000);
    }

    #[test]
    fn errors_are_counted_by_kind_and_merge() {
        let mut a = Stats::default();
        a.record(ms(0), ms(1), true, None);
        a.record(ms(10), ms(2), true, Some(ErrorKind::Status(503)));
        a.record(ms(2500), ms(0), false, Some(ErrorKind::Timeout));
        let mut b = Stats::default();
        b.record(ms(0), ms(3), true, Some(ErrorKind::Status(503)));
        b.record(ms(0), ms(3), true, Some(ErrorKind::Status(401)));
        a.merge(&b);
        assert_eq!(a.ok, 1);
        assert_eq!(a.error_count(), 4);
        assert_eq!(a.errors[&ErrorKind::Status(503)], 2);
        assert_eq!(a.errors[&ErrorKind::Timeout], 1);
        assert_eq!(a.latency.len(), 4, "the timeout has no latency");
        assert_eq!(a.series.len(), 3);
        assert_eq!((a.series[0].ok, a.series[0].errors), (1, 3));
        assert_eq!(a.series[2].errors, 1);
        assert_eq!(ErrorKind::Status(503).to_string(), "HTTP 503");
    }

    #[test]
    fn summary_reports_throughput_and_json() {
        let mut stats = Stats::default();
        for _ in 0..200 {
            stats.record(ms(1), ms(1), true, None);
        }
        stats.record(ms(1), ms(1), false, Some(ErrorKind::Closed));
        let s = Summary {
            scenario: "token-secret-jwt".into(),
            target: "http://127.0.0.1:1".into(),
            mode: "closed loop".into(),
            connections: 4,
            threads: 1,
            agents: 2,
            rsa_agents: 0,
            elapsed: Duration::from_secs(2),
            stats,
            notes: vec!["n".into()],
            pages: None,
        };
        assert_eq!(s.requests(), 201);
        assert!((s.throughput() - 100.0).abs() < 1e-9);
        let j = s.to_json();
        assert_eq!(j["ok"], 200);
        assert_eq!(j["errors"], 1);
        assert_eq!(j["errors_by_kind"]["transport: connection closed"], 1);
        assert_eq!(j["latency_us"]["p50"], 1000);
        let text = s.to_string();
        assert!(text.contains("throughput   100 ok/s"), "{text}");
        assert!(text.contains("transport: connection closed"), "{text}");
    }

    #[test]
    fn human_durations() {
        assert_eq!(us(999), "999µs");
        assert_eq!(us(1500), "1.50ms");
        assert_eq!(us(25_000), "25.0ms");
        assert_eq!(us(12_000_000), "12.0s");
    }
}
