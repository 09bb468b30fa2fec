//! Routing around etcd members that cannot serve. etcd-client spreads requests over every
//! endpoint with tonic's power-of-two-choices balancer, which counts a member it cannot connect
//! to as ready: with one member of three down, requests keep failing with "tcp connect error"
//! although a quorum serves, and a node flaps between serving and 503. So one thread per
//! process checks every endpoint (etcd's Status RPC, sent to that member alone, every
//! [`CHECK_INTERVAL`]) and takes a member that fails the check, or knows no leader, out of
//! every managed client's balancer, putting it back once it passes. When no member passes (an
//! election, or etcd down), every member stays in: requests then fail or wait as they would
//! anyway, and the balancer is never left empty.
//!
//! Clients are registered with [`manage`]; one whose runtime is gone (its balancer no longer
//! takes changes) is dropped from the list.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::config::EtcdTls;

/// How often every endpoint is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a member has to answer its check, connection included.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Failed checks in a row before a member is avoided: taking a member out drops its
/// connection and whatever was in flight on it, so one slow answer is not enough.
const FAILURES_TO_AVOID: u32 = 2;

/// How long a balancer change may wait to be queued (its channel holds 64).
const CHANGE_TIMEOUT: Duration = Duration::from_millis(500);

/// A client whose balancer this module steers.
struct Managed {
    client: Client,
    urls: Vec<String>,
    /// Endpoints taken out of this client's balancer.
    out: BTreeSet<String>,
}

/// One endpoint's check: the client that sends it (one member only), and the last outcome.
struct Check {
    options: ConnectOptions,
    client: Option<Client>,
    /// Failed checks in a row.
    failures: u32,
}

impl Check {
    fn passes(&self) -> bool {
        self.failures < FAILURES_TO_AVOID
    }
}

#[derive(Default)]
struct Shared {
    clients: Vec<Managed>,
    checks: BTreeMap<String, Check>,
}

struct Monitor {
    shared: Mutex<Shared>,
}

static MONITOR: OnceLock<Monitor> = OnceLock::new();

/// Endpoints serving and avoided, for metrics (both 0 until a client is managed).
static SERVING: AtomicUsize = AtomicUsize::new(0);
static AVOIDED: AtomicUsize = AtomicUsize::new(0);

/// Starts steering `client`'s balancer over `urls` (as given to `Client::connect`). A client
/// of one endpoint has nothing to route around and is left alone.
pub fn manage(client: &Client, urls: &[String], tls: &EtcdTls) {
    if urls.len() < 2 {
        return;
    }
    let monitor = MONITOR.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("latchkey-etcd-health".into())
            .spawn(run);
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the etcd endpoint checks");
        }
        Monitor {
            shared: Mutex::new(Shared::default()),
        }
    });
    let mut shared = lock(monitor);
    for url in urls {
        shared.checks.entry(url.clone()).or_insert_with(|| Check {
            options: tls.apply(
                ConnectOptions::new()
                    .with_connect_timeout(CHECK_TIMEOUT)
                    .with_timeout(CHECK_TIMEOUT),
            ),
            client: None,
            failures: 0,
        });
    }
    shared.clients.push(Managed {
        client: client.clone(),
        urls: urls.to_vec(),
        out: BTreeSet::new(),
    });
}

/// `(serving, avoided)` endpoints, once a client is managed.
pub fn endpoint_counts() -> Option<(usize, usize)> {
    MONITOR.get()?;
    Some((
        SERVING.load(Ordering::Relaxed),
        AVOIDED.load(Ordering::Relaxed),
    ))
}

fn lock(monitor: &Monitor) -> std::sync::MutexGuard<'_, Shared> {
    monitor
        .shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn run() {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the etcd endpoint checks");
            return;
        }
    };
    loop {
        std::thread::sleep(CHECK_INTERVAL);
        let Some(monitor) = MONITOR.get() else {
            continue;
        };
        runtime.block_on(round(monitor));
    }
}

/// One round: check every endpoint, then bring every client's balancer in line.
async fn round(monitor: &Monitor) {
    // The checks run without the lock (registration must not wait for a slow member).
    let pending: Vec<(String, ConnectOptions, Option<Client>)> = lock(monitor)
        .checks
        .iter_mut()
        .map(|(url, c)| (url.clone(), c.options.clone(), c.client.take()))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (url, options, client) in pending {
        set.spawn(async move {
            let (passed, client) = check(&url, options, client).await;
            (url, passed, client)
        });
    }
    let mut outcomes = BTreeMap::new();
    while let Some(done) = set.join_next().await {
        if let Ok((url, passed, client)) = done {
            outcomes.insert(url, (passed, client));
        }
    }

    let (passing, mut clients) = record(monitor, outcomes);

    let mut avoided = BTreeSet::new();
    let mut kept = Vec::with_capacity(clients.len());
    for mut m in clients.drain(..) {
        let want_out = to_avoid(&m.urls, &passing);
        if steer(&mut m, &want_out).await {
            avoided.extend(m.out.iter().cloned());
            kept.push(m);
        }
    }
    let mut shared = lock(monitor);
    // Clients registered during the round come after the ones kept.
    kept.append(&mut shared.clients);
    shared.clients = kept;
    let total: BTreeSet<&String> = shared.clients.iter().flat_map(|m| &m.urls).collect();
    AVOIDED.store(avoided.len(), Ordering::Relaxed);
    SERVING.store(total.len().saturating_sub(avoided.len()), Ordering::Relaxed);
}

/// The endpoints of `urls` to take out of a balancer: those not passing, unless none passes
/// (a balancer is never left empty, and with no member passing none is better than another).
fn to_avoid(urls: &[String], passing: &BTreeSet<String>) -> BTreeSet<String> {
    if !urls.iter().any(|u| passing.contains(u)) {
        return BTreeSet::new();
    }
    urls.iter()
        .filter(|u| !passing.contains(*u))
        .cloned()
        .collect()
}

/// Records the outcomes of a round's checks; the endpoints that pass, and the clients to
/// steer (taken out of the list while they are).
fn record(
    monitor: &Monitor,
    outcomes: BTreeMap<String, (bool, Option<Client>)>,
) -> (BTreeSet<String>, Vec<Managed>) {
    let mut shared = lock(monitor);
    for (url, (passed, client)) in outcomes {
        if let Some(c) = shared.checks.get_mut(&url) {
            let before = c.passes();
            c.failures = if passed {
                0
            } else {
                c.failures.saturating_add(1)
            };
            c.client = client;
            match (before, c.passes()) {
                (false, true) => {
                    tracing::info!(endpoint = %url, "etcd member passes its check again; requests use it");
                }
                (true, false) => {
                    tracing::warn!(endpoint = %url, "etcd member fails its checks (unreachable, or without a leader); requests avoid it");
                }
                _ => {}
            }
        }
    }
    let passing: BTreeSet<String> = shared
        .checks
        .iter()
        .filter(|(_, c)| c.passes())
        .map(|(url, _)| url.clone())
        .collect();
    let clients = std::mem::take(&mut shared.clients);
    (passing, clients)
}

/// Whether the member at `url` answers Status and knows a leader. The client is kept for the
/// next round while it works, and made anew after a failure.
async fn check(
    url: &str,
    options: ConnectOptions,
    client: Option<Client>,
) -> (bool, Option<Client>) {
    let mut client = match client {
        Some(c) => c,
        None => match Client::connect([url], Some(options)).await {
            Ok(c) => c,
            Err(_) => return (false, None),
        },
    };
    match tokio::time::timeout(CHECK_TIMEOUT, client.status()).await {
        Ok(Ok(status)) => (status.leader() != 0, Some(client)),
        _ => (false, None),
    }
}

/// Takes `want_out` out of the client's balancer and puts the rest back. False when the
/// balancer no longer takes changes (its client and runtime are gone).
async fn steer(m: &mut Managed, want_out: &BTreeSet<String>) -> bool {
    for url in want_out.difference(&m.out.clone()) {
        match tokio::time::timeout(CHANGE_TIMEOUT, m.client.remove_endpoint(url)).await {
            Ok(Ok(())) => {
                m.out.insert(url.clone());
            }
            Ok(Err(_)) => return false,
            Err(_) => {}
        }
    }
    for url in m.out.clone().difference(want_out) {
        match tokio::time::timeout(CHANGE_TIMEOUT, m.client.add_endpoint(url)).await {
            Ok(Ok(())) => {
                m.out.remove(url);
            }
            Ok(Err(_)) => return false,
            Err(_) => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn failing_members_are_avoided_unless_none_passes() {
        let urls: Vec<String> = ["http://a:1", "http://b:1", "http://c:1"]
            .map(str::to_owned)
            .to_vec();
        assert!(to_avoid(&urls, &set(&["http://a:1", "http://b:1", "http://c:1"])).is_empty());
        assert_eq!(
            to_avoid(&urls, &set(&["http://a:1", "http://c:1"])),
            set(&["http://b:1"])
        );
        assert_eq!(
            to_avoid(&urls, &set(&["http://c:1"])),
            set(&["http://a:1", "http://b:1"])
        );
        // Nothing passes (an election, etcd down): every member stays.
        assert!(to_avoid(&urls, &set(&[])).is_empty());
        // Members of another client's list do not count.
        assert!(to_avoid(&urls, &set(&["http://d:1"])).is_empty());
    }

    #[test]
    fn one_failed_check_is_not_enough_to_avoid_a_member() {
        let mut c = Check {
            options: ConnectOptions::new(),
            client: None,
            failures: 0,
        };
        assert!(c.passes());
        c.failures = 1;
        assert!(c.passes());
        c.failures = FAILURES_TO_AVOID;
        assert!(!c.passes());
    }
}
