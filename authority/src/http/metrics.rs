//! Prometheus metrics: plain atomics, no locks on the request path.
//!
//! Route labels are fixed when the server starts (`Metrics::init_routes`); the request path
//! only indexes arrays. Other modules feed the token and store series through the methods
//! below (`tokens_minted`, `tokens_verified`, `observe_commit_batch`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Statuses counted individually; others are counted by class (`2xx`, `4xx`, ...).
const STATUSES: [u16; 24] = [
    200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 412, 413, 414, 415, 417, 429, 431, 500, 501,
    503, 505, 202, 304, 100,
];
const STATUS_SLOTS: usize = STATUSES.len() + 5;

/// Latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Commit batch-size buckets, requests per commit.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Why the server closed a connection (or refused to keep it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, or asked to with `Connection: close`.
    Client,
    IdleTimeout,
    HeadTimeout,
    BodyTimeout,
    WriteTimeout,
    HandshakeTimeout,
    HandshakeFailed,
    /// No ClientHello (or no first request) within `Limits::hello_timeout`.
    HelloTimeout,
    /// Refused at accept: `Limits::max_connections` with no idle connection to close instead.
    ConnectionLimit,
    /// Refused at accept: `Limits::max_connections_per_source`.
    SourceLimit,
    /// Closed while idle to make room for a new connection (connection or descriptor limit).
    Evicted,
    /// A ClientHello found every `Limits::max_tls_handshakes` slot taken.
    HandshakeLimit,
    /// A request the parser refused.
    BadRequest,
    /// A request body that `Limits::max_body_buffer` had no room for (answered 503).
    BodyBudget,
    MaxRequests,
    Shutdown,
    Io,
}

impl CloseReason {
    const ALL: [CloseReason; 17] = [
        Self::Client,
        Self::IdleTimeout,
        Self::HeadTimeout,
        Self::BodyTimeout,
        Self::WriteTimeout,
        Self::HandshakeTimeout,
        Self::HandshakeFailed,
        Self::HelloTimeout,
        Self::ConnectionLimit,
        Self::SourceLimit,
        Self::Evicted,
        Self::HandshakeLimit,
        Self::BadRequest,
        Self::BodyBudget,
        Self::MaxRequests,
        Self::Shutdown,
        Self::Io,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::IdleTimeout => "idle_timeout",
            Self::HeadTimeout => "head_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::WriteTimeout => "write_timeout",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HandshakeFailed => "handshake_failed",
            Self::HelloTimeout => "hello_timeout",
            Self::ConnectionLimit => "connection_limit",
            Self::SourceLimit => "source_limit",
            Self::Evicted => "evicted",
            Self::HandshakeLimit => "handshake_limit",
            Self::BadRequest => "bad_request",
            Self::BodyBudget => "body_budget",
            Self::MaxRequests => "max_requests",
            Self::Shutdown => "shutdown",
            Self::Io => "io_error",
        }
    }
}

/// Writes exposition lines (each ending in a newline) read fresh at every scrape.
pub type Collector = Box<dyn Fn(&mut String) + Send + Sync>;

struct Collecting(Collector);

impl std::fmt::Debug for Collecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Collector")
    }
}

/// All counters of one process. Share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    routes: OnceLock<Box<[RouteStats]>>,
    tokens_minted: AtomicU64,
    tokens_verified: AtomicU64,
    open_connections: AtomicI64,
    accepted: AtomicU64,
    accept_errors: AtomicU64,
    tls_handshake_failures: AtomicU64,
    tls_full_handshakes: AtomicU64,
    tls_resumed_handshakes: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    commit_batch: Histogram<{ BATCH_BUCKETS.len() + 1 }>,
    commit_latency: Histogram<{ LATENCY_BUCKETS.len() + 1 }>,
    writer_queue_depth: AtomicU64,
    /// When this process started serving (Unix seconds).
    started: f64,
    /// Gauges the application reads at each scrape ([`Metrics::set_collector`]).
    collector: OnceLock<Collecting>,
    replay_log_bytes: AtomicU64,
    replay_log_refused: AtomicU64,
    body_buffer: OnceLock<Arc<super::admission::BodyBudget>>,
    /// Lines the application adds, by section name ([`Metrics::set_section`]).
    sections: arc_swap::ArcSwap<std::collections::BTreeMap<&'static str, String>>,
}

#[derive(Debug)]
struct RouteStats {
    method: String,
    pattern: String,
    counts: [AtomicU64; STATUS_SLOTS],
    /// From the request's first byte to its answer being queued.
    latency: Histogram<{ LATENCY_BUCKETS.len() + 1 }>,
}

#[derive(Debug)]
struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
    count: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records `value` (in the bucket unit) with `sum_add` (sum unit) into the first bucket
    /// whose bound is ≥ value.
    fn observe(&self, bounds: &[f64], value: f64, sum_add: u64) {
        let i = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(sum_add, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// `labels` is empty or `k="v",...` without braces.
    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64], sum_scale: f64) {
        let sep = if labels.is_empty() { "" } else { "," };
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let mut cumulative = 0;
        for (i, b) in bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.buckets[bounds.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{braced} {}",
            self.sum.load(Relaxed) as f64 * sum_scale
        );
        let _ = writeln!(out, "{name}_count{braced} {}", self.count.load(Relaxed));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            routes: OnceLock::new(),
            tokens_minted: AtomicU64::new(0),
            tokens_verified: AtomicU64::new(0),
            open_connections: AtomicI64::new(0),
            accepted: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            tls_full_handshakes: AtomicU64::new(0),
            tls_resumed_handshakes: AtomicU64::new(0),
            closed: std::array::from_fn(|_| AtomicU64::new(0)),
            commit_batch: Histogram::new(),
            commit_latency: Histogram::new(),
            writer_queue_depth: AtomicU64::new(0),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            collector: OnceLock::new(),
            replay_log_bytes: AtomicU64::new(0),
            replay_log_refused: AtomicU64::new(0),
            body_buffer: OnceLock::new(),
            sections: arc_swap::ArcSwap::from_pointee(std::collections::BTreeMap::new()),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fixes the route labels, `(method, pattern)` by route index. The server calls this once
    /// at start with the router's routes; later calls are ignored.
    pub fn init_routes(&self, routes: Vec<(String, String)>) {
        let stats = routes
            .into_iter()
            .map(|(method, pattern)| RouteStats {
                method,
                pattern,
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
                latency: Histogram::new(),
            })
            .collect();
        let _ = self.routes.set(stats);
    }

    /// One answered request: route index (as given to `init_routes`), status, and the time
    /// from the request's first byte to its answer being queued.
    pub fn record_request(&self, route: usize, status: u16, latency: Duration) {
        if let Some(r) = self.routes.get().and_then(|routes| routes.get(route)) {
            r.counts[status_slot(status)].fetch_add(1, Relaxed);
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            r.latency
                .observe(&LATENCY_BUCKETS, latency.as_secs_f64(), micros);
        }
    }

    /// Access tokens minted (the token endpoints call this).
    pub fn tokens_minted(&self, n: u64) {
        self.tokens_minted.fetch_add(n, Relaxed);
    }

    /// Tokens verified (introspection and bearer checks call this).
    pub fn tokens_verified(&self, n: u64) {
        self.tokens_verified.fetch_add(n, Relaxed);
    }

    /// Bytes the replay log's segments hold now.
    pub fn set_replay_log_bytes(&self, bytes: u64) {
        self.replay_log_bytes.store(bytes, Relaxed);
    }

    /// A token request refused because its assertion could not be logged.
    pub fn replay_log_refused(&self) {
        self.replay_log_refused.fetch_add(1, Relaxed);
    }

    /// Requests made durable by one store commit (the store writer calls this per commit).
    pub fn observe_commit_batch(&self, size: usize) {
        self.commit_batch
            .observe(&BATCH_BUCKETS, size as f64, size as u64);
    }

    /// One store commit: from the writer taking the group off its queue to durable.
    pub fn observe_commit_latency(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.commit_latency
            .observe(&LATENCY_BUCKETS, took.as_secs_f64(), micros);
    }

    /// Requests waiting in the store writer's queue (the writer reports it per group).
    pub fn set_writer_queue_depth(&self, waiting: usize) {
        self.writer_queue_depth.store(waiting as u64, Relaxed);
    }

    /// Sets the gauges the application computes at each scrape (they must be cheap: no store
    /// reads). Only the first call counts.
    pub fn set_collector(&self, collector: Collector) {
        let _ = self.collector.set(Collecting(collector));
    }

    pub fn connection_opened(&self) {
        self.accepted.fetch_add(1, Relaxed);
        self.open_connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self, reason: CloseReason) {
        self.open_connections.fetch_sub(1, Relaxed);
        self.connection_refused(reason);
    }

    /// A connection closed at accept, never counted as open.
    pub fn connection_refused(&self, reason: CloseReason) {
        if let Some(i) = CloseReason::ALL.iter().position(|&r| r == reason) {
            self.closed[i].fetch_add(1, Relaxed);
        }
    }

    /// Reports the buffered-body budget's use as a gauge (the server calls this at start).
    pub(crate) fn watch_body_buffer(&self, budget: Arc<super::admission::BodyBudget>) {
        let _ = self.body_buffer.set(budget);
    }

    pub fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Relaxed);
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    /// A completed TLS handshake: full, or resumed from a ticket or the session cache.
    pub fn tls_handshake_done(&self, kind: Option<rustls::HandshakeKind>) {
        match kind {
            Some(rustls::HandshakeKind::Resumed) => &self.tls_resumed_handshakes,
            _ => &self.tls_full_handshakes,
        }
        .fetch_add(1, Relaxed);
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> i64 {
        self.open_connections.load(Relaxed)
    }

    /// Sets the lines (exposition format, each ending in a newline) the application renders
    /// under `name`, after the transport's own; the transport does not know what they measure.
    pub fn set_section(&self, name: &'static str, lines: String) {
        self.sections.rcu(|m| {
            let mut m = std::collections::BTreeMap::clone(m);
            m.insert(name, lines.clone());
            m
        });
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP latchkey_http_requests_total HTTP requests answered, by route and status.\n# TYPE latchkey_http_requests_total counter\n");
        for r in self.routes.get().map(|r| &r[..]).unwrap_or(&[]) {
            for (slot, count) in r.counts.iter().enumerate() {
                let n = count.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "latchkey_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{}\"}} {n}",
                        r.method,
                        r.pattern,
                        slot_label(slot)
                    );
                }
            }
        }
        out.push_str("# HELP latchkey_http_request_duration_seconds Time from a request's first byte to its answer being queued, by route.\n# TYPE latchkey_http_request_duration_seconds histogram\n");
        for r in self.routes.get().map(|r| &r[..]).unwrap_or(&[]) {
            if r.latency.count.load(Relaxed) > 0 {
                let labels = format!("method=\"{}\",route=\"{}\"", r.method, r.pattern);
                r.latency.render(
                    &mut out,
                    "latchkey_http_request_duration_seconds",
                    &labels,
                    &LATENCY_BUCKETS,
                    1e-6,
                );
            }
        }
        let counters = [
            (
                "latchkey_tokens_minted_total",
                "Access tokens minted.",
                &self.tokens_minted,
            ),
            (
                "latchkey_tokens_verified_total",
                "Tokens verified.",
                &self.tokens_verified,
            ),
            (
                "latchkey_connections_accepted_total",
                "Connections accepted.",
                &self.accepted,
            ),
            (
                "latchkey_accept_errors_total",
                "Failed accept calls (e.g. out of file descriptors).",
                &self.accept_errors,
            ),
            (
                "latchkey_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                &self.tls_handshake_failures,
            ),
            (
                "latchkey_replay_log_refused_total",
                "Token requests refused because the replay log was full, unsynced or failing.",
                &self.replay_log_refused,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP latchkey_tls_handshakes_total Completed TLS handshakes, full or resumed.\n# TYPE latchkey_tls_handshakes_total counter\nlatchkey_tls_handshakes_total{{kind=\"full\"}} {}\nlatchkey_tls_handshakes_total{{kind=\"resumed\"}} {}",
            self.tls_full_handshakes.load(Relaxed),
            self.tls_resumed_handshakes.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP latchkey_replay_log_bytes Bytes in the replay log's segments.\n# TYPE latchkey_replay_log_bytes gauge\nlatchkey_replay_log_bytes {}",
            self.replay_log_bytes.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP latchkey_open_connections Connections open now.\n# TYPE latchkey_open_connections gauge\nlatchkey_open_connections {}",
            self.open_connections.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP latchkey_body_buffer_bytes Request body bytes reserved by bodies still arriving (bounded by max-body-buffer).\n# TYPE latchkey_body_buffer_bytes gauge\nlatchkey_body_buffer_bytes {}",
            self.body_buffer.get().map_or(0, |b| b.used())
        );
        out.push_str("# HELP latchkey_connections_closed_total Connections closed or refused, by reason.\n# TYPE latchkey_connections_closed_total counter\n");
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "latchkey_connections_closed_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.closed[i].load(Relaxed)
            );
        }
        out.push_str("# HELP latchkey_store_commit_batch_size Requests made durable per store commit.\n# TYPE latchkey_store_commit_batch_size histogram\n");
        self.commit_batch.render(
            &mut out,
            "latchkey_store_commit_batch_size",
            "",
            &BATCH_BUCKETS,
            1.0,
        );
        out.push_str("# HELP latchkey_store_commit_duration_seconds Time from the store writer taking a group off its queue to its durable commit.\n# TYPE latchkey_store_commit_duration_seconds histogram\n");
        self.commit_latency.render(
            &mut out,
            "latchkey_store_commit_duration_seconds",
            "",
            &LATENCY_BUCKETS,
            1e-6,
        );
        let _ = writeln!(
            out,
            "# HELP latchkey_store_writer_queue_depth Write requests waiting in the store writer's queue when it last took a group.\n# TYPE latchkey_store_writer_queue_depth gauge\nlatchkey_store_writer_queue_depth {}",
            self.writer_queue_depth.load(Relaxed)
        );
        self.render_process(&mut out);
        if let Some(Collecting(collect)) = self.collector.get() {
            collect(&mut out);
        }
        for lines in self.sections.load().values() {
            out.push_str(lines);
        }
        out
    }

    /// The standard process series, the build and the uptime.
    fn render_process(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP latchkey_build_info The running build.\n# TYPE latchkey_build_info gauge\nlatchkey_build_info{{version=\"{}\",profile=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds When the process started serving, Unix seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}",
            self.started
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(
            out,
            "# HELP latchkey_uptime_seconds Seconds since the process started serving.\n# TYPE latchkey_uptime_seconds gauge\nlatchkey_uptime_seconds {:.3}",
            (now - self.started).max(0.0)
        );
        // Linux's /proc; elsewhere these series are left out rather than reported wrong.
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            let open = fds.count().saturating_sub(1);
            let _ = writeln!(
                out,
                "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {open}"
            );
        }
    }
}

/// `VmRSS` of /proc/self/status, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

fn status_slot(status: u16) -> usize {
    match STATUSES.iter().position(|&s| s == status) {
        Some(i) => i,
        None => STATUSES.len() + usize::from((status / 100).clamp(1, 5) - 1),
    }
}

fn slot_label(slot: usize) -> String {
    match STATUSES.get(slot) {
        Some(s) => s.to_string(),
        None => format!("{}xx", slot - STATUSES.len() + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_routes_statuses_and_histograms() {
        let m = Metrics::new();
        m.init_routes(vec![("GET".into(), "/healthz".into())]);
        m.record_request(0, 200, Duration::from_micros(300));
        m.record_request(0, 299, Duration::from_millis(2));
        m.observe_commit_batch(3);
        m.tokens_minted(2);
        let text = m.render();
        assert!(text.contains(
            "latchkey_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ));
        assert!(text.contains("status=\"2xx\"} 1"));
        assert!(text.contains(
            "latchkey_http_request_duration_seconds_bucket{method=\"GET\",route=\"/healthz\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "latchkey_http_request_duration_seconds_count{method=\"GET\",route=\"/healthz\"} 2"
        ));
        assert!(text.contains("latchkey_store_commit_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("latchkey_tokens_minted_total 2"));
    }

    #[test]
    fn admission_refusals_and_the_body_buffer_are_exposed() {
        let m = Metrics::new();
        let budget = super::super::admission::BodyBudget::new(100);
        let mut r = budget.reservation();
        assert!(r.grow_to(40));
        m.watch_body_buffer(budget.clone());
        m.connection_refused(CloseReason::SourceLimit);
        m.connection_closed(CloseReason::Evicted);
        let text = m.render();
        assert!(text.contains("latchkey_body_buffer_bytes 40"));
        assert!(text.contains("latchkey_connections_closed_total{reason=\"source_limit\"} 1"));
        assert!(text.contains("latchkey_connections_closed_total{reason=\"evicted\"} 1"));
        for reason in [
            "hello_timeout",
            "body_budget",
            "handshake_limit",
            "connection_limit",
        ] {
            assert!(
                text.contains(&format!(
                    "latchkey_connections_closed_total{{reason=\"{reason}\"}} 0"
                )),
                "{reason}"
            );
        }
    }

    #[test]
    fn process_store_and_collected_series_are_exposed() {
        let m = Metrics::new();
        m.observe_commit_latency(Duration::from_millis(30));
        m.set_writer_queue_depth(7);
        m.set_collector(Box::new(|out: &mut String| {
            out.push_str("collected_series 3\n")
        }));
        let text = m.render();
        assert!(text.contains("latchkey_store_commit_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("latchkey_store_commit_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("latchkey_store_writer_queue_depth 7\n"));
        assert!(text.contains("collected_series 3\n"));
        assert!(text.contains(&format!(
            "latchkey_build_info{{version=\"{}\",",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("process_start_time_seconds "));
        if cfg!(target_os = "linux") {
            let value = |name: &str| -> f64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name}: {text}"))
            };
            assert!(value("process_resident_memory_bytes") > 0.0);
            assert!(value("process_open_fds") >= 3.0);
        }
    }
}
