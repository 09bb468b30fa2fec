//! Crash test: a child process (this test binary, re-executed) performs concurrent
//! registrations, rotations (including racing rotations with the same RAT) and revocations,
//! printing each acknowledged write; the parent SIGKILLs it at a random point, reopens the
//! store and checks that every acknowledged write is there, every unacknowledged one is all or
//! nothing, and no rotated-away registration access token works. Many rounds, bounded in time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use latchkey_authority::store::*;

use crate::util::*;

const CHILD_ENV: &str = "LATCHKEY_CRASH_CHILD_DIR";
const ROUND_ENV: &str = "LATCHKEY_CRASH_ROUND";
const TEST_NAME: &str = "crash::acknowledged_writes_survive_kill_9";
const WORKERS: usize = 4;
const ROUNDS_MAX: u32 = 40;
const TIME_BUDGET: Duration = Duration::from_secs(15);

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round: u32 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
        child(Path::new(&dir), round);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
    let started = Instant::now();
    let mut log = Vec::new();
    let mut rounds = 0;
    let mut acked_total = 0;
    while rounds < ROUNDS_MAX && (rounds < 5 || started.elapsed() < TIME_BUDGET) {
        let lines = run_child(
            dir.path(),
            rounds,
            Duration::from_millis(20 + rng.next() % 200),
        );
        acked_total += lines.iter().filter(|l| l.starts_with("ACK")).count();
        log.extend(lines);
        verify(dir.path(), &log, rounds);
        rounds += 1;
    }
    println!(
        "crash test: {rounds} rounds, {acked_total} acknowledged writes, {:?}",
        started.elapsed()
    );
    assert!(
        acked_total > 50,
        "the child acknowledged only {acked_total} writes in {rounds} rounds"
    );
    // The surviving file is also clean by redb's own integrity check.
    let report = check_data_dir(dir.path(), &KeyFileOptions::default()).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// Runs one child round: waits for it to be ready, lets it work for `work`, SIGKILLs it.
fn run_child(dir: &Path, round: u32, work: Duration) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // A line cut short by the kill has no END marker and is ignored.
                // The harness may print "test ... " without a newline before our first line.
                let body = line.find("LK ").map(|i| &line[i + 3..]);
                let Some(body) = body.and_then(|l| l.strip_suffix(" END")) else {
                    continue;
                };
                if body == "READY" {
                    let _ = ready_tx.send(());
                }
                lines.lock().unwrap().push(body.to_string());
            }
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("child never became ready");
    std::thread::sleep(work);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    Arc::try_unwrap(lines).unwrap().into_inner().unwrap()
}

/// The child: concurrent workers until killed. Never returns.
fn child(dir: &Path, round: u32) -> ! {
    let store = Store::open_or_create(dir, StoreOptions::default()).unwrap();
    store.write(tenant_op()).unwrap();
    say("READY");
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || worker(&store, round, w))
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    std::process::exit(0)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "LK {line} END");
    let _ = out.flush();
}

fn worker(store: &Store, round: u32, w: usize) {
    for i in 0.. {
        let id = format!("r{round}-w{w}-a{i}");
        let jti = format!("iat-{id}");
        say(&format!("INTENT create {id}"));
        if store
            .write(create_op(&id, &format!("name-{id}"), &jti))
            .is_err()
        {
            return;
        }
        say(&format!("ACK create {id}"));
        let rat0 = format!("{id}-rat0");
        say(&format!("INTENT register {id} {rat0}"));
        if store.write(register_op(&id, &jti, "s0", &rat0)).is_err() {
            return;
        }
        say(&format!("ACK register {id} {rat0}"));
        let mut current = rat0;
        for k in 1..4 {
            // Two rotations race with the same RAT; exactly one may win.
            let (a, b) = (format!("{id}-rat{k}a"), format!("{id}-rat{k}b"));
            say(&format!("INTENT rotate {id} {current} {a}"));
            say(&format!("INTENT rotate {id} {current} {b}"));
            let (tx, rx) = crossbeam::channel::bounded(2);
            for new in [a.clone(), b.clone()] {
                let tx = tx.clone();
                let op = rotate_op(&id, &current, &new, &format!("s-{new}"));
                store.submit(op, move |r| {
                    let _ = tx.send((new, r));
                });
            }
            let mut winner = None;
            for _ in 0..2 {
                let Ok((new, r)) = rx.recv() else { return };
                match r {
                    Ok(_) => {
                        say(&format!("ACK rotate {id} {current} {new}"));
                        winner = Some(new);
                    }
                    Err(StoreError::StaleRat) => {}
                    Err(_) => return,
                }
            }
            let Some(new) = winner else { return };
            current = new;
        }
        let revoked = format!("tok-{id}");
        say(&format!("INTENT revoke {revoked}"));
        if store.write(revoke_op(&revoked)).is_err() {
            return;
        }
        say(&format!("ACK revoke {revoked}"));
    }
}

#[derive(Default, Debug)]
struct AgentLog {
    created: bool,
    registered: Option<String>,
    /// Acknowledged rotations in order: (presented, new).
    rotations: Vec<(String, String)>,
    /// Rotation intents: (presented, new).
    intents: Vec<(String, String)>,
    register_intent: Option<String>,
}

fn verify(dir: &Path, log: &[String], round: u32) {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    let snap = store.read().unwrap();
    let mut agents: BTreeMap<String, AgentLog> = BTreeMap::new();
    let mut revoked_acked = BTreeSet::new();
    for line in log {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["ACK", "create", id] => agents.entry(id.to_string()).or_default().created = true,
            ["INTENT", "register", id, rat] => {
                agents.entry(id.to_string()).or_default().register_intent = Some(rat.to_string())
            }
            ["ACK", "register", id, rat] => {
                agents.entry(id.to_string()).or_default().registered = Some(rat.to_string())
            }
            ["INTENT", "rotate", id, old, new] => agents
                .entry(id.to_string())
                .or_default()
                .intents
                .push((old.to_string(), new.to_string())),
            ["ACK", "rotate", id, old, new] => agents
                .entry(id.to_string())
                .or_default()
                .rotations
                .push((old.to_string(), new.to_string())),
            ["ACK", "revoke", jti] => {
                revoked_acked.insert(jti.to_string());
            }
            _ => {}
        }
    }
    let mut stale_attempts = Vec::new();
    for (id, a) in &agents {
        let agent = snap.agent(TENANT, id).unwrap();
        if a.created {
            assert!(
                agent.is_some(),
                "round {round}: acknowledged agent {id} lost"
            );
        }
        let reg = snap.registration(id).unwrap();
        let hot = store.hot().client(id);
        assert_eq!(
            reg.is_some(),
            hot.is_some(),
            "{id}: hot index disagrees with the table"
        );
        if let Some(agent) = &agent {
            // All or nothing: the agent is onboarded exactly when a registration exists.
            assert_eq!(
                agent.state == BoardingState::Onboarded,
                reg.is_some(),
                "{id}: {agent:?}"
            );
        }
        let Some(reg) = reg else {
            assert!(
                a.registered.is_none(),
                "round {round}: acknowledged registration of {id} lost"
            );
            continue;
        };
        assert!(
            a.register_intent.is_some(),
            "{id}: registered without an intent"
        );
        // No two acknowledged rotations presented the same RAT.
        let presented: BTreeSet<_> = a.rotations.iter().map(|(old, _)| old).collect();
        assert_eq!(
            presented.len(),
            a.rotations.len(),
            "{id}: two rotations won with one RAT"
        );
        // The chain of acknowledged RATs; the last one, or an unacknowledged successor of it.
        let mut chain = vec![
            a.registered
                .clone()
                .or_else(|| a.register_intent.clone())
                .unwrap(),
        ];
        for (old, new) in &a.rotations {
            assert_eq!(old, chain.last().unwrap(), "{id}: rotation chain broken");
            chain.push(new.clone());
        }
        let last = chain.last().unwrap().clone();
        let pending: Vec<&String> = a
            .intents
            .iter()
            .filter(|(old, _)| *old == last)
            .map(|(_, new)| new)
            .collect();
        let current: Vec<&String> = std::iter::once(&last)
            .chain(pending)
            .filter(|r| reg.rat_hash.verify(r.as_bytes()))
            .collect();
        assert_eq!(
            current.len(),
            1,
            "round {round}: {id}: current RAT is not exactly one of the candidates"
        );
        assert_eq!(
            reg.generation as usize,
            chain.len() + usize::from(*current[0] != last),
            "{id}"
        );
        for old in chain.iter().filter(|r| *r != current[0]) {
            assert!(
                !reg.rat_hash.verify(old.as_bytes()),
                "{id}: rotated-away RAT verifies"
            );
            stale_attempts.push((id.clone(), old.clone()));
        }
    }
    for jti in &revoked_acked {
        assert!(
            snap.revocation(RevocationKind::Token, jti)
                .unwrap()
                .is_some(),
            "revocation {jti} lost"
        );
        assert!(store.hot().revocation(RevocationKind::Token, jti).is_some());
    }
    // Through the real write path too: every rotated-away RAT is refused.
    let (tx, rx) = crossbeam::channel::unbounded();
    let n = stale_attempts.len().min(200);
    for (id, old) in stale_attempts.into_iter().take(n) {
        let tx = tx.clone();
        store.submit(rotate_op(&id, &old, "x", "y"), move |r| {
            let _ = tx.send((id, r));
        });
    }
    for _ in 0..n {
        let (id, r) = rx.recv().unwrap();
        assert!(
            matches!(r, Err(StoreError::StaleRat)),
            "{id}: old RAT was accepted: {r:?}"
        );
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
