//! Store benchmarks (a plain harness: these measure throughput under concurrency and scale,
//! which criterion's per-iteration model does not fit).
//!
//! - Registrations per second with 1, 16 and 64 concurrent writers, group commit (the default
//!   `max_batch`) against one transaction per write (`max_batch = 1`). Every registration is a
//!   durable two-phase commit before it is acknowledged.
//! - Disk bytes and memory per agent, and the time to open, at the sizes in `LK_BENCH_SCALE`
//!   (comma-separated agent counts, default `100000`).
//!
//! Run: `cargo bench -p latchkey-bench --bench store` (env `LK_BENCH_SECS` = seconds per
//! throughput point, default 3; `LK_BENCH_ONLY` = `throughput` or `scale`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use latchkey_authority::store::*;

const TENANT: &str = "bench";

fn main() {
    let secs: u64 = std::env::var("LK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let only = std::env::var("LK_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "throughput" {
        throughput(Duration::from_secs(secs));
    }
    if only.is_empty() || only == "scale" {
        let sizes = std::env::var("LK_BENCH_SCALE").unwrap_or_else(|_| "100000".into());
        for n in sizes
            .split(',')
            .filter_map(|s| s.trim().parse::<u64>().ok())
        {
            scale(n);
        }
    }
}

fn options(max_batch: usize) -> StoreOptions {
    StoreOptions {
        max_batch,
        ..StoreOptions::default()
    }
}

fn put_tenant(store: &Store) {
    store
        .write(WriteOp::PutTenant {
            record: TenantRecord {
                id: TENANT.into(),
                display_name: "bench".into(),
                token_alg: "RS256".into(),
                created_at: 0,
            },
            now: 1,
        })
        .expect("tenant");
}

fn create(id: &str) -> WriteOp {
    WriteOp::CreateAgent(NewAgent {
        tenant: TENANT.into(),
        id: id.into(),
        name: id.into(),
        security_profile: SecurityProfile::SharedSecret,
        iat: Some(NewIat {
            jti: format!("iat-{id}"),
            expires_at: u64::MAX,
        }),
        by: "test".into(),
        now: 1,
    })
}

fn register(id: &str) -> WriteOp {
    WriteOp::Register(Registration {
        iat_jti: format!("iat-{id}"),
        tenant: TENANT.into(),
        client_id: id.into(),
        auth_method: AuthMethod::ClientSecretJwt,
        secret: Some(Secret::new(vec![7u8; 32])),
        jwks: vec![],
        secret_expires_at: 10_000_000,
        rat: Secret::new(format!("rat-{id}-0123456789abcdef0123456789abcdef").into_bytes()),
        now: 2,
    })
}

/// Submits `ops` asynchronously (the queue keeps the writer's groups full) and waits for all.
fn pump(store: &Store, ops: impl Iterator<Item = WriteOp>) -> u64 {
    let (tx, rx) = crossbeam::channel::unbounded();
    let mut n = 0;
    for op in ops {
        let tx = tx.clone();
        store.submit(op, move |r| {
            let _ = tx.send(r.is_ok());
        });
        n += 1;
    }
    drop(tx);
    rx.iter().take(n as usize).filter(|ok| *ok).count() as u64
}

fn throughput(duration: Duration) {
    println!("## Registrations per second (each durably committed before its answer)\n");
    println!("| writers | group commit (reg/s) | one txn per write (reg/s) | ratio |");
    println!("| ---: | ---: | ---: | ---: |");
    for writers in [1usize, 16, 64] {
        let group = registrations_per_sec(writers, 512, duration);
        let single = registrations_per_sec(writers, 1, duration);
        println!(
            "| {writers} | {group:.0} | {single:.0} | {:.1}× |",
            group / single
        );
    }
    println!();
}

fn registrations_per_sec(writers: usize, max_batch: usize, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_or_create(dir.path(), options(512)).expect("open");
    put_tenant(&store);
    // Enough boarded agents that no writer runs out during the measurement.
    let per_writer = 20_000 / writers.max(1) + 200;
    let ids: Vec<Vec<String>> = (0..writers)
        .map(|w| (0..per_writer).map(|i| format!("w{w}-a{i}")).collect())
        .collect();
    pump(&store, ids.iter().flatten().map(|id| create(id)));
    drop(store);
    let store = Store::open(dir.path(), options(max_batch)).expect("reopen");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = ids
        .into_iter()
        .map(|mine| {
            let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                for id in mine {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    store.write(register(&id)).expect("register");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in threads {
        t.join().expect("writer thread");
    }
    n as f64 / elapsed.as_secs_f64()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn scale(n: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    {
        let store = Store::open_or_create(dir.path(), options(4096)).expect("open");
        put_tenant(&store);
        const CHUNK: u64 = 50_000;
        let mut i = 0;
        while i < n {
            let end = (i + CHUNK).min(n);
            let ids: Vec<String> = (i..end).map(|k| format!("agent-{k:08}")).collect();
            let c = pump(&store, ids.iter().map(|id| create(id)));
            let r = pump(&store, ids.iter().map(|id| register(id)));
            assert_eq!((c, r), (end - i, end - i), "bulk load refused some ops");
            i = end;
        }
    }
    let load = started.elapsed();
    let bytes = std::fs::metadata(dir.path().join(DB_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let rss_before = rss_bytes();
    let t = Instant::now();
    // A small redb cache so the figure is mostly the hot index (all clients, secrets unsealed).
    let store = Store::open(
        dir.path(),
        StoreOptions {
            cache_bytes: 16 << 20,
            ..StoreOptions::default()
        },
    )
    .expect("reopen");
    let open = t.elapsed();
    let rss_after = rss_bytes();
    assert_eq!(store.hot().client_count() as u64, n);
    let lookups = Instant::now();
    let mut found = 0u64;
    for k in (0..n).step_by(((n / 100_000).max(1)) as usize) {
        if store.hot().client(&format!("agent-{k:08}")).is_some() {
            found += 1;
        }
    }
    let per_lookup = lookups.elapsed().as_nanos() as f64 / found.max(1) as f64;
    println!("## {n} onboarded agents (shared secret)\n");
    println!(
        "- bulk load (create + register, group commit): {:.1} s ({:.0} ops/s)",
        load.as_secs_f64(),
        2.0 * n as f64 / load.as_secs_f64()
    );
    println!(
        "- database file: {} bytes = {:.0} bytes/agent",
        bytes,
        bytes as f64 / n as f64
    );
    println!(
        "- memory after open (RSS delta, 16 MiB redb cache): {:.1} MiB = {:.0} bytes/agent",
        (rss_after.saturating_sub(rss_before)) as f64 / (1 << 20) as f64,
        rss_after.saturating_sub(rss_before) as f64 / n as f64
    );
    println!(
        "- open (recovery check + load hot index, unseal every secret): {:.2} s",
        open.as_secs_f64()
    );
    println!("- hot index lookup: {per_lookup:.0} ns ({found} lookups, including id formatting)\n");
}
