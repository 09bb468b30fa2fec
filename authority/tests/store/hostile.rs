//! Hostile operations in one commit group with good ones: oversize ids and audit fields,
//! records over the size limit, control characters, duplicates. Each hostile op is refused on
//! its own (or, for the audit log, kept with bounded fields); the good ones of the same group
//! commit and read back; and the store takes writes afterwards.
//!
//! Every case runs in one group for sure: a first write's reply blocks the writer thread until
//! the whole case is queued, and a commit observer checks the group size.

use std::sync::{Arc, Mutex, mpsc};

use latchkey_authority::store::*;
use proptest::prelude::*;

use crate::util::*;

/// Larger than a record may be, so anything that copies it into a record cannot be stored.
const HUGE: usize = MAX_RECORD_BYTES + 44 * 1024;
const PROFILE: &str = "ops";

#[derive(Debug, Clone)]
enum Kind {
    /// A new operator client `c{n}`.
    GoodClient,
    /// A token revocation `t{n}`.
    GoodRevoke,
    /// A new agent `a{n}` with a boarding token `j{n}`.
    GoodAgent,
    /// An audit entry the store does not see itself.
    GoodAudit,
    /// Operator client `dup`: only the first of the group may win.
    DupClient,
    /// An operator client whose id is `len` bytes of `fill`.
    ClientId { len: usize, fill: char },
    /// A good client id with a display name over the record limit.
    ClientHugeName,
    /// Deleting a client that does not exist, under a huge id (refused, audited).
    DeleteHugeId,
    /// A revocation with a huge id, or a good id and a huge reason.
    RevokeHuge { huge_id: bool },
    /// An agent with a huge id or name.
    AgentHuge { huge_id: bool },
    /// A registration with an unknown IAT, claiming a huge client id (refused, audited).
    RegisterHuge,
    /// An explicit audit entry with huge fields: kept, with bounded fields.
    AuditHuge,
    /// A profile whose permissions are over the record limit.
    ProfileHuge,
    /// A certificate whose DER is over the record limit.
    CertHuge,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::GoodClient),
        2 => Just(Kind::GoodRevoke),
        2 => Just(Kind::GoodAgent),
        1 => Just(Kind::GoodAudit),
        1 => Just(Kind::DupClient),
        2 => (prop_oneof![Just(0usize), Just(MAX_ID_BYTES + 1), Just(300 * 1024)],
              prop_oneof![Just('x'), Just('\n'), Just('é')])
            .prop_map(|(len, fill)| Kind::ClientId { len, fill }),
        1 => Just(Kind::ClientHugeName),
        1 => Just(Kind::DeleteHugeId),
        1 => any::<bool>().prop_map(|huge_id| Kind::RevokeHuge { huge_id }),
        1 => any::<bool>().prop_map(|huge_id| Kind::AgentHuge { huge_id }),
        1 => Just(Kind::RegisterHuge),
        1 => Just(Kind::AuditHuge),
        1 => Just(Kind::ProfileHuge),
        1 => Just(Kind::CertHuge),
    ]
}

fn huge(c: char) -> String {
    std::iter::repeat_n(c, HUGE / c.len_utf8()).collect()
}

fn client(id: String, display_name: String) -> WriteOp {
    WriteOp::CreateOperatorClient {
        record: OperatorClientRecord {
            id,
            tenant: TENANT.into(),
            secret_hash: SecretHash::blake3(b"secret").unwrap(),
            display_name,
            profile: PROFILE.into(),
            created_at: 100,
            generation: 0,
            suspended_at: None,
            previous_secret_hash: None,
            previous_valid_until: 0,
        },
        by: huge('b'),
    }
}

/// The op for case `n`, and whether it must succeed.
fn op(kind: &Kind, n: usize, dup_seen: &mut bool) -> (WriteOp, bool) {
    match kind {
        Kind::GoodClient => (client(format!("c{n}"), "Good".into()), true),
        Kind::GoodRevoke => (revoke_op(&format!("t{n}")), true),
        Kind::GoodAgent => (
            create_op(&format!("a{n}"), &format!("name {n}"), &format!("j{n}")),
            true,
        ),
        Kind::GoodAudit => (
            WriteOp::Audit {
                actor: "op".into(),
                event: "test.good".into(),
                subject: format!("s{n}"),
                outcome: AuditOutcome::Success,
                now: 100,
            },
            true,
        ),
        Kind::DupClient => {
            let first = !*dup_seen;
            *dup_seen = true;
            (client("dup".into(), "Dup".into()), first)
        }
        Kind::ClientId { len, fill } => {
            let id: String = std::iter::repeat_n(*fill, len.div_ceil(fill.len_utf8())).collect();
            (client(id, "Bad".into()), false)
        }
        Kind::ClientHugeName => (client(format!("c{n}"), huge('n')), false),
        Kind::DeleteHugeId => (
            WriteOp::DeleteOperatorClient {
                id: huge('d'),
                by: huge('b'),
                now: 100,
            },
            false,
        ),
        Kind::RevokeHuge { huge_id } => {
            let (id, reason) = if *huge_id {
                (huge('t'), "r".into())
            } else {
                (format!("t{n}"), huge('r'))
            };
            let op = WriteOp::Revoke {
                kind: RevocationKind::Token,
                id,
                by: huge('b'),
                reason,
                now: 100,
                forget_after: 1_000_000,
            };
            (op, false)
        }
        Kind::AgentHuge { huge_id } => {
            let op = if *huge_id {
                create_op(&huge('a'), &format!("name {n}"), &format!("j{n}"))
            } else {
                create_op(&format!("a{n}"), &huge('n'), &format!("j{n}"))
            };
            (op, false)
        }
        Kind::RegisterHuge => (register_op(&huge('a'), "nope", "s", "r"), false),
        Kind::AuditHuge => (
            WriteOp::Audit {
                actor: huge('a'),
                event: huge('e'),
                subject: huge('s'),
                outcome: AuditOutcome::Refused(huge('m')),
                now: 100,
            },
            true,
        ),
        Kind::ProfileHuge => (
            WriteOp::PutProfile {
                record: ProfileRecord {
                    name: format!("p{n}"),
                    permissions: vec!["x".repeat(64 * 1024); 5],
                },
                by: "test".into(),
                now: 1,
            },
            false,
        ),
        Kind::CertHuge => (
            WriteOp::AddCertificate(NewCertificate {
                alias: format!("cert{n}"),
                fingerprint: format!("{n:064x}"),
                subject: "CN=x".into(),
                kind: CertificateKind::Trusted,
                not_after: u64::MAX,
                der: vec![0x30; HUGE],
                private_key: None,
                by: "op".into(),
                now: 100,
            }),
            false,
        ),
    }
}

/// Group sizes, as the writer reports them.
#[derive(Default)]
struct Groups(Mutex<Vec<usize>>);

impl CommitObserver for Groups {
    fn committed(&self, ops: usize) {
        self.0.lock().unwrap().push(ops);
    }
}

/// Submits `ops` so that the writer takes them as one group; returns each op's answer.
fn submit_group(store: &Store, ops: Vec<WriteOp>) -> Vec<Result<WriteOutcome, StoreError>> {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    // The writer runs this reply after the blocker's commit and takes nothing else meanwhile.
    store.submit(revoke_op("blocker"), move |r| {
        r.expect("blocker");
        held_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    held_rx.recv().unwrap();
    let (tx, rx) = mpsc::channel();
    for (i, op) in ops.into_iter().enumerate() {
        let tx = tx.clone();
        store.submit(op, move |r| tx.send((i, r)).unwrap());
    }
    drop(tx);
    release_tx.send(()).unwrap();
    let mut answers: Vec<_> = rx.iter().collect();
    answers.sort_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, r)| r).collect()
}

fn setup(dir: &std::path::Path) -> (Store, Arc<Groups>) {
    let store = Store::open_or_create(dir, StoreOptions::default()).unwrap();
    let groups = Arc::new(Groups::default());
    store.set_commit_observer(groups.clone());
    store.write(tenant_op()).unwrap();
    store
        .write(WriteOp::PutProfile {
            record: ProfileRecord {
                name: PROFILE.into(),
                permissions: vec!["agents:read".into()],
            },
            by: "test".into(),
            now: 1,
        })
        .unwrap();
    (store, groups)
}

/// What a committed good op must have left behind.
fn readable(store: &Store, kind: &Kind, n: usize) -> Result<(), String> {
    let snap = store.read().map_err(|e| e.to_string())?;
    let found = match kind {
        Kind::GoodClient => {
            let id = format!("c{n}");
            snap.operator_client(&id).unwrap().is_some()
                && store.hot().operator_client(&id).is_some()
        }
        Kind::DupClient => snap.operator_client("dup").unwrap().is_some(),
        Kind::GoodRevoke => {
            let id = format!("t{n}");
            snap.revocation(RevocationKind::Token, &id)
                .unwrap()
                .is_some()
                && store.hot().revocation(RevocationKind::Token, &id).is_some()
        }
        Kind::GoodAgent => {
            let id = format!("a{n}");
            snap.agent(TENANT, &id).unwrap().is_some()
                && snap.boarding(&format!("j{n}")).unwrap().is_some()
        }
        _ => true,
    };
    if found {
        Ok(())
    } else {
        Err(format!("case {n} ({kind:?}) committed but is not readable"))
    }
}

/// Nothing of a refused op is visible.
fn absent(store: &Store, kind: &Kind, n: usize) -> Result<(), String> {
    let snap = store.read().map_err(|e| e.to_string())?;
    let leaked = match kind {
        Kind::ClientHugeName => snap.operator_client(&format!("c{n}")).unwrap().is_some(),
        Kind::RevokeHuge { huge_id: false } => snap
            .revocation(RevocationKind::Token, &format!("t{n}"))
            .unwrap()
            .is_some(),
        Kind::AgentHuge { huge_id: false } => {
            snap.agent(TENANT, &format!("a{n}")).unwrap().is_some()
                || snap.boarding(&format!("j{n}")).unwrap().is_some()
        }
        Kind::ProfileHuge => snap.profile(&format!("p{n}")).unwrap().is_some(),
        Kind::CertHuge => snap.certificate(&format!("cert{n}")).unwrap().is_some(),
        _ => false,
    };
    if leaked {
        Err(format!("case {n} ({kind:?}) was refused but left writes"))
    } else {
        Ok(())
    }
}

fn run(kinds: Vec<Kind>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (store, groups) = setup(dir.path());
    let audit_before = store.read().unwrap().audit(0, 100_000).unwrap().len();
    let mut dup_seen = false;
    let (ops, expect): (Vec<_>, Vec<_>) = kinds
        .iter()
        .enumerate()
        .map(|(n, k)| op(k, n, &mut dup_seen))
        .unzip();
    let answers = submit_group(&store, ops);
    for (n, ((kind, want_ok), got)) in kinds.iter().zip(&expect).zip(&answers).enumerate() {
        match got {
            Ok(_) => {
                prop_assert!(*want_ok, "case {} ({:?}) was accepted", n, kind);
                prop_assert_eq!(readable(&store, kind, n), Ok(()));
            }
            Err(e) => {
                prop_assert!(!*want_ok, "case {} ({:?}) refused: {}", n, kind, e);
                prop_assert!(!e.is_internal(), "case {} ({:?}): {:?}", n, kind, e);
                prop_assert_eq!(absent(&store, kind, n), Ok(()));
            }
        }
    }
    prop_assert_eq!(
        groups.0.lock().unwrap().last().copied(),
        Some(kinds.len()),
        "the case was not one group"
    );
    // Every audit entry of the group is there, readable and bounded.
    let audit = store.read().unwrap().audit(0, 100_000).unwrap();
    for a in &audit[audit_before..] {
        let text = [&a.actor, &a.event, &a.subject];
        let message = match &a.outcome {
            AuditOutcome::Refused(m) => m.len(),
            AuditOutcome::Success => 0,
        };
        prop_assert!(
            text.iter().all(|s| s.len() <= MAX_AUDIT_FIELD_BYTES)
                && message <= MAX_AUDIT_FIELD_BYTES,
            "audit entry {} is not bounded",
            a.seq
        );
        prop_assert!(text.iter().all(|s| !s.chars().any(char::is_control)));
    }
    let seqs: Vec<u64> = audit.iter().map(|a| a.seq).collect();
    let dense: Vec<u64> = (1..=audit.len() as u64).collect();
    prop_assert_eq!(seqs, dense, "audit sequence numbers are dense");
    // Still writable, and everything acknowledged survives a reopen.
    prop_assert!(
        store.write(revoke_op("after")).is_ok(),
        "store refuses writes"
    );
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    for (n, (kind, got)) in kinds.iter().zip(&answers).enumerate() {
        if got.is_ok() {
            prop_assert_eq!(readable(&store, kind, n), Ok(()));
        }
    }
    Ok(())
}

/// The shape of the reported attack: an oversize client id between two good writes.
#[test]
fn an_oversize_client_id_refuses_only_its_own_op() {
    let kinds = vec![
        Kind::GoodClient,
        Kind::ClientId {
            len: 300 * 1024,
            fill: 'x',
        },
        Kind::GoodAgent,
        Kind::GoodRevoke,
    ];
    run(kinds).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 100, ..ProptestConfig::default() })]

    #[test]
    fn hostile_ops_never_fail_their_group(kinds in proptest::collection::vec(kind(), 1..24)) {
        run(kinds)?;
    }
}
