//! Model-based test: random sequences of store operations, with injected I/O faults and
//! reopens, checked against a `BTreeMap` model after every step.
//!
//! A write that fails with a storage error was not acknowledged, so the model keeps two
//! candidates (with and without it) and the state found after the reopen must equal one of
//! them: all or nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use latchkey_authority::store::*;
use proptest::prelude::*;

use crate::util::*;

const AGENTS: u8 = 4;

#[derive(Debug, Clone)]
enum Step {
    Create {
        agent: u8,
        name: u8,
    },
    Register {
        agent: u8,
    },
    Rotate {
        agent: u8,
        with_current: bool,
    },
    Offboard {
        agent: u8,
    },
    Reissue {
        agent: u8,
    },
    Revoke {
        jti: u8,
    },
    /// Fail the storage after this many more writes/syncs (0 = the next one).
    Fault {
        after: u8,
    },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..AGENTS, 0..3u8).prop_map(|(agent, name)| Step::Create { agent, name }),
        3 => (0..AGENTS).prop_map(|agent| Step::Register { agent }),
        4 => (0..AGENTS, any::<bool>()).prop_map(|(agent, with_current)| Step::Rotate { agent, with_current }),
        1 => (0..AGENTS).prop_map(|agent| Step::Offboard { agent }),
        1 => (0..AGENTS).prop_map(|agent| Step::Reissue { agent }),
        2 => (0..6u8).prop_map(|jti| Step::Revoke { jti }),
        1 => (0..12u8).prop_map(|after| Step::Fault { after }),
        1 => Just(Step::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MAgent {
    name: String,
    state: BoardingState,
    iat: Option<String>,
    /// (current RAT, current secret, all RATs ever issued)
    reg: Option<(String, String)>,
    old_rats: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    agents: BTreeMap<String, MAgent>,
    names: BTreeSet<String>,
    revoked: BTreeSet<String>,
}

/// What the model predicts for a step: `Ok(new model)` or a refusal.
fn predict(m: &Model, op_step: &Step, n: u64) -> Result<Model, &'static str> {
    let mut m = m.clone();
    let id = |a: u8| format!("e{a}");
    match *op_step {
        Step::Create { agent, name } => {
            let name = format!("n{name}");
            if m.agents.contains_key(&id(agent)) || m.names.contains(&name) {
                return Err("conflict");
            }
            m.names.insert(name.clone());
            m.agents.insert(
                id(agent),
                MAgent {
                    name,
                    state: BoardingState::Onboarding,
                    iat: Some(format!("j{n}")),
                    reg: None,
                    old_rats: vec![],
                },
            );
        }
        Step::Register { agent } => {
            let a = m.agents.get_mut(&id(agent)).ok_or("invalid iat")?;
            if a.state != BoardingState::Onboarding {
                return Err("invalid iat");
            }
            a.iat = None;
            a.state = BoardingState::Onboarded;
            a.reg = Some((format!("rat{n}"), format!("sec{n}")));
        }
        Step::Rotate {
            agent,
            with_current,
        } => {
            let a = m.agents.get_mut(&id(agent)).ok_or("not found")?;
            let (rat, _) = a.reg.clone().ok_or("not found")?;
            if !with_current {
                return Err("stale rat");
            }
            a.old_rats.push(rat);
            a.reg = Some((format!("rat{n}"), format!("sec{n}")));
        }
        Step::Offboard { agent } => {
            let a = m.agents.get_mut(&id(agent)).ok_or("not found")?;
            if let Some((rat, _)) = a.reg.take() {
                a.old_rats.push(rat);
            }
            a.iat = None;
            a.state = BoardingState::NotOnboarded;
        }
        Step::Reissue { agent } => {
            let a = m.agents.get_mut(&id(agent)).ok_or("not found")?;
            if a.state == BoardingState::Onboarded {
                return Err("invalid state");
            }
            a.iat = Some(format!("j{n}"));
            a.state = BoardingState::Onboarding;
        }
        Step::Revoke { jti } => {
            m.revoked.insert(format!("t{jti}"));
        }
        Step::Fault { .. } | Step::Reopen => {}
    }
    Ok(m)
}

/// The op for a step; `n` makes fresh RATs, secrets and jtis.
fn op_for(m: &Model, s: &Step, n: u64) -> Option<WriteOp> {
    let id = |a: u8| format!("e{a}");
    Some(match *s {
        Step::Create { agent, name } => {
            create_op(&id(agent), &format!("n{name}"), &format!("j{n}"))
        }
        Step::Register { agent } => {
            // Use the agent's current IAT if it has one, else a made-up (invalid) one.
            let jti = m
                .agents
                .get(&id(agent))
                .and_then(|a| a.iat.clone())
                .unwrap_or_else(|| "nope".into());
            register_op(&id(agent), &jti, &format!("sec{n}"), &format!("rat{n}"))
        }
        Step::Rotate {
            agent,
            with_current,
        } => {
            let a = m.agents.get(&id(agent));
            let presented = match (a.and_then(|a| a.reg.clone()), with_current) {
                (Some((rat, _)), true) => rat,
                // A rotated-away RAT if there is one: it must never work again.
                _ => a
                    .and_then(|a| a.old_rats.last().cloned())
                    .unwrap_or_else(|| "never-issued".into()),
            };
            rotate_op(
                &id(agent),
                &presented,
                &format!("rat{n}"),
                &format!("sec{n}"),
            )
        }
        Step::Offboard { agent } => WriteOp::Offboard {
            tenant: TENANT.into(),
            agent_id: id(agent),
            by: "op".into(),
            now: 100,
            forget_after: 1_000_000,
        },
        Step::Reissue { agent } => WriteOp::IssueBoardingToken {
            tenant: TENANT.into(),
            agent_id: id(agent),
            iat: NewIat {
                jti: format!("j{n}"),
                expires_at: u64::MAX,
            },
            by: "test".into(),
            now: 100,
        },
        Step::Revoke { jti } => revoke_op(&format!("t{jti}")),
        Step::Fault { .. } | Step::Reopen => return None,
    })
}

/// Compares the store (snapshot and hot index) with a model.
fn matches(store: &Store, m: &Model) -> Result<(), String> {
    let snap = store.read().map_err(|e| e.to_string())?;
    for a in 0..AGENTS {
        let id = format!("e{a}");
        let got = snap.agent(TENANT, &id).map_err(|e| e.to_string())?;
        let want = m.agents.get(&id);
        match (got, want) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                if (g.name.as_str(), g.state, g.current_iat.as_ref())
                    != (w.name.as_str(), w.state, w.iat.as_ref())
                {
                    return Err(format!("{id}: store {g:?} model {w:?}"));
                }
                let reg = snap.registration(&id).map_err(|e| e.to_string())?;
                let hot = store.hot().client(&id);
                match (&w.reg, reg, hot) {
                    (None, None, None) => {}
                    (Some((rat, secret)), Some(reg), Some(hot)) => {
                        if !reg.rat_hash.verify(rat.as_bytes()) {
                            return Err(format!("{id}: current RAT does not verify"));
                        }
                        if hot.secret.as_ref().map(|s| s.expose()) != Some(secret.as_bytes()) {
                            return Err(format!("{id}: hot secret differs"));
                        }
                    }
                    (w, r, h) => {
                        return Err(format!(
                            "{id}: model reg {w:?}, store {:?}, hot {:?}",
                            r.is_some(),
                            h.is_some()
                        ));
                    }
                }
                if let Some(reg) = snap.registration(&id).map_err(|e| e.to_string())? {
                    for old in &w.old_rats {
                        if reg.rat_hash.verify(old.as_bytes()) {
                            return Err(format!("{id}: rotated-away RAT {old} still verifies"));
                        }
                    }
                }
            }
            (g, w) => return Err(format!("{id}: store {g:?} model {w:?}")),
        }
    }
    let revoked: BTreeSet<String> = snap
        .revocations()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| r.kind == RevocationKind::Token)
        .map(|r| r.id)
        .collect();
    if revoked != m.revoked {
        return Err(format!(
            "revocations: store {revoked:?} model {:?}",
            m.revoked
        ));
    }
    for r in &m.revoked {
        if store.hot().revocation(RevocationKind::Token, r).is_none() {
            return Err(format!("hot index misses revocation {r}"));
        }
    }
    Ok(())
}

fn open(dir: &Path, faults: &std::sync::Arc<Faults>) -> Store {
    faults.heal();
    let backend = FaultyBackend::open(&dir.join(DB_FILE), faults.clone());
    Store::open_with_backend(dir, StoreOptions::default(), backend).expect("reopen after fault")
}

fn category(e: &StoreError) -> &'static str {
    match e {
        StoreError::Conflict(_) => "conflict",
        StoreError::InvalidIat(_) => "invalid iat",
        StoreError::NotFound { .. } => "not found",
        StoreError::StaleRat => "stale rat",
        StoreError::InvalidState(_) => "invalid state",
        _ => "storage",
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let mut store = open(dir.path(), &faults);
    store.write(tenant_op()).unwrap();
    let mut model = Model::default();
    for (n, s) in steps.iter().enumerate() {
        let n = n as u64;
        match s {
            Step::Fault { after } => {
                faults.arm(i64::from(*after));
                continue;
            }
            Step::Reopen => {
                drop(store);
                store = open(dir.path(), &faults);
                prop_assert_eq!(matches(&store, &model), Ok(()));
                continue;
            }
            _ => {}
        }
        let Some(op) = op_for(&model, s, n) else {
            continue;
        };
        let predicted = predict(&model, s, n);
        match (store.write(op), predicted) {
            (Ok(_), Ok(next)) => model = next,
            (Err(e), Err(want)) if category(&e) == want => {}
            (Err(e), predicted) if category(&e) == "storage" => {
                // Not acknowledged: after a reopen the op is entirely there or entirely not.
                prop_assert!(faults.tripped(), "storage error without a fault: {e}");
                drop(store);
                store = open(dir.path(), &faults);
                let without = matches(&store, &model);
                match predicted {
                    Ok(next) if without.is_err() => {
                        prop_assert_eq!(
                            matches(&store, &next),
                            Ok(()),
                            "neither with nor without: {:?}",
                            without
                        );
                        model = next;
                    }
                    _ => prop_assert_eq!(without, Ok(())),
                }
            }
            (got, want) => {
                return Err(TestCaseError::fail(format!(
                    "step {s:?}: store {got:?}, model {want:?}"
                )));
            }
        }
        if !faults.tripped() {
            prop_assert_eq!(matches(&store, &model), Ok(()), "after {:?}", s);
        }
    }
    drop(store);
    let store = open(dir.path(), &faults);
    prop_assert_eq!(matches(&store, &model), Ok(()), "after final reopen");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_under_faults(steps in proptest::collection::vec(step(), 1..40)) {
        run(steps)?;
    }
}
