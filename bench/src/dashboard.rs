//! `--pollers N`, the dashboard scenario: N operator pollers beside the measured agent token
//! requests, each fetching one agent list page (`--poll-path`) every `--poll-interval`, as an
//! operator's dashboard does. The run reports the token latency (the measured workload) and
//! the page latency separately, so what a polling dashboard costs the token path shows.
//!
//! Each poller is a thread with one blocking keep-alive connection and its own operator
//! token. It keeps a fixed schedule (a page every interval, staggered across pollers) and
//! never sends a second page before the first is answered, like a browser's `setInterval`
//! with a fetch guard.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Client;
use crate::error::Error;
use crate::http::Request;
use crate::prepare::Operator;
use crate::stats::{MAX_LATENCY_US, Percentiles, us};
use crate::target::Target;

/// What the pollers saw.
#[derive(Debug, Clone)]
pub struct PageStats {
    pub pollers: usize,
    pub interval: Duration,
    pub path: String,
    pub ok: u64,
    pub errors: u64,
    /// Latency of every page answered, whatever its status.
    pub latency: Histogram<u64>,
}

impl PageStats {
    pub fn to_json(&self) -> serde_json::Value {
        let p = Percentiles::of(&self.latency);
        serde_json::json!({
            "pollers": self.pollers,
            "interval_ms": self.interval.as_millis() as u64,
            "path": self.path,
            "ok": self.ok,
            "errors": self.errors,
            "latency_us": {"p50": p.p50, "p90": p.p90, "p99": p.p99, "max": p.max, "mean": p.mean},
        })
    }

    pub fn line(&self) -> String {
        let p = Percentiles::of(&self.latency);
        format!(
            "{} poller(s) every {:?} on {}: {} ok, {} errors; page latency p50 {}  p90 {}  p99 {}  max {}",
            self.pollers,
            self.interval,
            self.path,
            self.ok,
            self.errors,
            us(p.p50),
            us(p.p90),
            us(p.p99),
            us(p.max)
        )
    }
}

pub struct DashboardConfig {
    pub target: Arc<Target>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub operator: Operator,
    pub pollers: usize,
    pub interval: Duration,
    pub path: String,
}

/// Running pollers; [`Running::stop`] ends them and collects what they saw.
pub struct Running {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<PageStats>>,
}

fn histogram() -> Histogram<u64> {
    // Bounds and precision are constants within hdrhistogram's documented ranges.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Starts the pollers: each logs in first, so a bad credential fails here, before the run.
pub fn start(cfg: DashboardConfig) -> Result<Running, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(PageStats {
        pollers: cfg.pollers,
        interval: cfg.interval,
        path: cfg.path.clone(),
        ok: 0,
        errors: 0,
        latency: histogram(),
    }));
    let mut handles = Vec::with_capacity(cfg.pollers);
    for i in 0..cfg.pollers {
        let mut client = Client::new(Arc::clone(&cfg.target), cfg.tls.clone());
        let token = cfg.operator.login(&mut client)?;
        let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
        let (operator, path, interval) = (cfg.operator.clone(), cfg.path.clone(), cfg.interval);
        let offset = interval.mul_f64(i as f64 / cfg.pollers as f64);
        let h = std::thread::Builder::new()
            .name(format!("loadgen-poller-{i}"))
            .spawn(move || {
                poll(
                    client, token, &operator, &path, interval, offset, &stop, &stats,
                )
            })
            .map_err(|e| Error::io("starting a poller thread", e))?;
        handles.push(h);
    }
    Ok(Running {
        stop,
        handles,
        stats,
    })
}

#[allow(clippy::too_many_arguments)]
fn poll(
    mut client: Client,
    mut token: String,
    operator: &Operator,
    path: &str,
    interval: Duration,
    offset: Duration,
    stop: &AtomicBool,
    stats: &Mutex<PageStats>,
) {
    let mut next = Instant::now() + offset;
    let mut local = histogram();
    let (mut ok, mut errors) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            // Short sleeps, so that stopping is prompt.
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next += interval;
        let auth = format!("Authorization: Bearer {token}");
        let t0 = Instant::now();
        let r = client.request(&Request {
            method: "GET",
            path,
            headers: &[&auth],
            content_type: None,
            body: b"",
        });
        let took = t0.elapsed().as_micros() as u64;
        match r {
            Ok(resp) => {
                let _ = local.record(took.clamp(1, MAX_LATENCY_US));
                if resp.status == 200 {
                    ok += 1;
                } else {
                    errors += 1;
                    if resp.status == 401
                        && let Ok(t) = operator.login(&mut client)
                    {
                        token = t;
                    }
                }
            }
            Err(_) => errors += 1,
        }
        if next < Instant::now() {
            // Behind schedule: the next page goes out now, not in a burst of missed ones.
            next = Instant::now();
        }
    }
    if let Ok(mut s) = stats.lock() {
        let _ = s.latency.add(&local);
        s.ok += ok;
        s.errors += errors;
    }
}

impl Running {
    pub fn stop(self) -> PageStats {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        match Arc::try_unwrap(self.stats) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(a) => a
                .lock()
                .map(|s| s.clone())
                .unwrap_or_else(|e| e.into_inner().clone()),
        }
    }
}
