//! Format fixtures: a data directory and encoded records per fixture generation, committed
//! under `authority/tests/fixtures/v<N>/`. `v4` is this release's (agents and operator clients
//! can be suspended, operator clients keep a rotated-away secret for a grace period); `v3`
//! (signing keys carry a certificate chain and a pinned flag), `v2` (operator clients gained a
//! generation) and `v1` were written before, and must keep reading.
//!
//! Regenerate this release's (only when adding a new fixture generation, never to "fix" a
//! failing read): `LATCHKEY_WRITE_FIXTURES=1 cargo test -p latchkey-authority --test store fixtures`.

use std::path::{Path, PathBuf};

use latchkey_authority::store::*;

use crate::util::*;

/// This release's fixture generation.
const CURRENT: u32 = 4;

fn fixture_dir() -> PathBuf {
    fixture_dir_of(CURRENT)
}

fn fixture_dir_of(generation: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{generation}"))
}

/// One value of every record type, as the fixtures hold them.
fn records() -> Vec<(&'static str, Vec<u8>)> {
    let hash = SecretHash::parse("K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=").unwrap();
    vec![
        ("tenant", encode_record(&tenant()).unwrap()),
        ("agent", encode_record(&agent()).unwrap()),
        (
            "boarding",
            encode_record(&BoardingRecord {
                jti: "iat-1".into(),
                agent_id: "e1".into(),
                tenant: TENANT.into(),
                issued_at: 10,
                expires_at: 20,
                used_at: Some(15),
            })
            .unwrap(),
        ),
        (
            "registration",
            encode_record(&RegistrationRecord {
                client_id: "e1".into(),
                tenant: TENANT.into(),
                auth_method: AuthMethod::PrivateKeyJwt,
                sealed_secret: None,
                jwks: vec![r#"{"kty":"RSA","e":"AQAB","n":"xyz","kid":"k"}"#.into()],
                secret_expires_at: 99,
                rat_hash: hash.clone(),
                generation: 3,
                created_at: 1,
                updated_at: 2,
            })
            .unwrap(),
        ),
        (
            "rotation",
            encode_record(&RotationRecord {
                client_id: "e1".into(),
                generation: 4,
                previous_rat_hash: hash.clone(),
                previous_jwks: vec![r#"{"kty":"RSA","e":"AQAB","n":"abc","kid":"k0"}"#.into()],
                previous_secret_expires_at: 98,
                sealed: vec![1, 12, 7],
                rotated_at: 14,
                grace_until: 15,
            })
            .unwrap(),
        ),
        (
            "datasource_config",
            encode_record(&DataSourceConfigRecord {
                agent_id: "e1".into(),
                tenant: TENANT.into(),
                id: "cfg-id".into(),
                etag: 2,
                json: r#"{"configurationId":"c1","dataSources":[]}"#.into(),
                updated_at: 16,
                updated_by: "e1".into(),
            })
            .unwrap(),
        ),
        (
            "operator_client",
            encode_record(&operator_client()).unwrap(),
        ),
        (
            "profile",
            encode_record(&ProfileRecord {
                name: "ro".into(),
                permissions: vec!["agents:read".into()],
            })
            .unwrap(),
        ),
        (
            "signing_key",
            encode_record(&SigningKeyRecord {
                kid: "k1".into(),
                alg: "ES256".into(),
                state: KeyState::Retiring,
                sealed_private_key: vec![1, 2, 3],
                public_key: vec![4, 5],
                created_at: 7,
                state_changed_at: 8,
                certificate_chain: vec![vec![0x30, 3, 1, 2, 3], vec![0x30, 1, 9]],
                pinned: true,
            })
            .unwrap(),
        ),
        (
            "certificate",
            encode_record(&CertificateRecord {
                alias: "relay".into(),
                fingerprint: "ab".repeat(32),
                subject: "CN=relay".into(),
                kind: CertificateKind::Trusted,
                state: CertificateState::Revoked,
                not_after: 1_900_000_000,
                der: vec![0x30, 0x00],
                sealed_private_key: None,
                created_at: 9,
            })
            .unwrap(),
        ),
        (
            "revocation",
            encode_record(&RevocationRecord {
                kind: RevocationKind::Agent,
                id: "e1".into(),
                revoked_at: 11,
                forget_after: 12,
                by: "op".into(),
                reason: "offboarded".into(),
            })
            .unwrap(),
        ),
        (
            "audit",
            encode_record(&AuditRecord {
                seq: 4,
                at: 13,
                actor: "e1".into(),
                event: "agent.rotate".into(),
                subject: "e1".into(),
                outcome: AuditOutcome::Refused("registration access token is not current".into()),
            })
            .unwrap(),
        ),
    ]
}

/// The generation of the fixture operator client (version 1 records read as 0).
const OPERATOR_CLIENT_GENERATION: u64 = 0x5eed_0001;

fn tenant() -> TenantRecord {
    TenantRecord {
        id: TENANT.into(),
        display_name: "Tenant A".into(),
        token_alg: "RS256".into(),
        created_at: 1,
    }
}

/// The fixture operator client: suspended, with a previous secret in its grace.
fn operator_client() -> OperatorClientRecord {
    OperatorClientRecord {
        suspended_at: Some(9),
        previous_secret_hash: Some(SecretHash::usercube(b"previous")),
        previous_valid_until: 90,
        ..operator_client_before_version_4()
    }
}

/// The fixture operator client as a version 2 record holds it (version 1: generation 0).
fn operator_client_before_version_4() -> OperatorClientRecord {
    OperatorClientRecord {
        id: "admin".into(),
        tenant: TENANT.into(),
        secret_hash: SecretHash::parse("K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=").unwrap(),
        display_name: "Admin".into(),
        profile: "administrator".into(),
        created_at: 5,
        generation: OPERATOR_CLIENT_GENERATION,
        suspended_at: None,
        previous_secret_hash: None,
        previous_valid_until: 0,
    }
}

/// The fixture agent: suspended.
fn agent() -> AgentRecord {
    AgentRecord {
        suspended_at: Some(8),
        ..agent_before_version_4()
    }
}

/// The fixture agent as a version 1 record holds it: never suspended.
fn agent_before_version_4() -> AgentRecord {
    AgentRecord {
        id: "e1".into(),
        tenant: TENANT.into(),
        name: "Nanobox Agent".into(),
        security_profile: SecurityProfile::Rsa3072,
        state: BoardingState::Onboarding,
        etag: 2,
        current_iat: Some("iat-1".into()),
        created_at: 3,
        updated_at: 4,
        suspended_at: None,
    }
}

/// Builds the fixture data directory (generation mode only).
fn write_store(dir: &Path) {
    let store = Store::open_or_create(dir, StoreOptions::default()).unwrap();
    store.write(tenant_op()).unwrap();
    store
        .write(create_op("shared", "Shared Agent", "iat-shared"))
        .unwrap();
    store
        .write(register_op(
            "shared",
            "iat-shared",
            "fixture-secret",
            "fixture-rat-1",
        ))
        .unwrap();
    store
        .write(rotate_op(
            "shared",
            "fixture-rat-1",
            "fixture-rat-2",
            "fixture-secret-2",
        ))
        .unwrap();
    store
        .write(create_op("waiting", "Waiting Agent", "iat-waiting"))
        .unwrap();
    store
        .write(WriteOp::PutProfile {
            record: ProfileRecord {
                name: "administrator".into(),
                permissions: vec!["agents:write".into()],
            },
            by: "test".into(),
            now: 1,
        })
        .unwrap();
    store
        .write(WriteOp::CreateOperatorClient {
            record: OperatorClientRecord {
                id: "admin".into(),
                tenant: TENANT.into(),
                secret_hash: SecretHash::usercube(b"secret"),
                display_name: "Admin".into(),
                profile: "administrator".into(),
                created_at: 5,
                generation: 0,
                suspended_at: None,
                previous_secret_hash: None,
                previous_valid_until: 0,
            },
            by: "fixture".into(),
        })
        .unwrap();
    store
        .write(WriteOp::AddSigningKey(NewSigningKey {
            kid: "k1".into(),
            alg: "EdDSA".into(),
            state: KeyState::Active,
            private_key: Secret::new(vec![42u8; 32]),
            public_key: vec![1; 32],
            certificate_chain: vec![vec![0x30, 1, 7]],
            pinned: true,
            takeover: Some(Default::default()),
            by: "fixture".into(),
            now: 6,
        }))
        .unwrap();
    store
        .write(WriteOp::AddCertificate(NewCertificate {
            alias: "relay".into(),
            fingerprint: "cd".repeat(32),
            subject: "CN=relay".into(),
            kind: CertificateKind::Trusted,
            not_after: 1_900_000_000,
            der: vec![0x30, 0x00],
            private_key: None,
            by: "fixture".into(),
            now: 7,
        }))
        .unwrap();
    store.write(revoke_op("tok-1")).unwrap();
    // Since generation 4: a suspended agent, a suspended client with a previous secret.
    store
        .write(WriteOp::SuspendAgent {
            tenant: TENANT.into(),
            id: "shared".into(),
            suspend: true,
            by: "fixture".into(),
            now: 8,
            forget_after: 1_900_000_000,
        })
        .unwrap();
    store
        .write(WriteOp::CreateOperatorClient {
            record: OperatorClientRecord {
                id: "ops".into(),
                display_name: "Ops".into(),
                ..operator_client_before_version_4()
            },
            by: "fixture".into(),
        })
        .unwrap();
    store
        .write(WriteOp::RotateOperatorClientSecret(SecretRotation {
            id: "ops".into(),
            secret_hash: SecretHash::usercube(b"ops-new"),
            grace_until: 1_900_000_000,
            by: "fixture".into(),
            now: 9,
        }))
        .unwrap();
    store
        .write(WriteOp::SuspendOperatorClient {
            id: "ops".into(),
            suspend: true,
            by: "fixture".into(),
            now: 10,
        })
        .unwrap();
}

/// What generation 4 added to the fixture store reads back.
fn check_version_4_store(store: &Store) {
    assert!(store.hot().agent_suspended("shared"));
    assert!(!store.hot().agent_suspended("waiting"));
    let snap = store.read().unwrap();
    assert_eq!(
        snap.agent(TENANT, "shared").unwrap().unwrap().suspended_at,
        Some(8)
    );
    let ops = store.hot().operator_client("ops").unwrap();
    assert_eq!(ops.suspended_at, Some(10));
    assert!(ops.secret_matches(b"ops-new", 100) && ops.secret_matches(b"secret", 100));
    assert!(!ops.secret_matches(b"secret", 1_900_000_000));
}

fn copy_dir(from: &Path, to: &Path) {
    for f in [DB_FILE, KEY_FILE] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn fixtures_of_this_release_stay_readable() {
    let fixtures = fixture_dir();
    if std::env::var_os("LATCHKEY_WRITE_FIXTURES").is_some() {
        let _ = std::fs::remove_dir_all(&fixtures);
        std::fs::create_dir_all(fixtures.join("records")).unwrap();
        for (name, bytes) in records() {
            std::fs::write(fixtures.join("records").join(format!("{name}.bin")), bytes).unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        write_store(tmp.path());
        copy_dir(tmp.path(), &fixtures);
    }
    // Encoded records: the committed bytes decode to the same values this release encodes.
    for (name, bytes) in records() {
        let stored = std::fs::read(fixtures.join("records").join(format!("{name}.bin"))).unwrap();
        assert_eq!(
            stored, bytes,
            "record {name} encodes differently from its fixture"
        );
    }
    let stored = std::fs::read(fixtures.join("records/agent.bin")).unwrap();
    assert_eq!(decode_record::<AgentRecord>(&stored).unwrap(), agent());
    let stored = std::fs::read(fixtures.join("records/tenant.bin")).unwrap();
    assert_eq!(decode_record::<TenantRecord>(&stored).unwrap(), tenant());
    let stored = std::fs::read(fixtures.join("records/operator_client.bin")).unwrap();
    assert_eq!(
        decode_record::<OperatorClientRecord>(&stored).unwrap(),
        operator_client()
    );
    let (_dir, store) = check_fixture_store(&fixtures);
    check_version_4_store(&store);
    assert_ne!(
        store.hot().operator_client("admin").unwrap().generation,
        0,
        "the store draws a non-zero generation"
    );
    let k1 = store.hot().signing_key("k1").unwrap();
    assert_eq!(
        (k1.certificate_chain.clone(), k1.pinned),
        (vec![vec![0x30, 1, 7]], true)
    );
}

/// Record types added after the version 1 fixtures were written.
const NEW_SINCE_VERSION_1: [&str; 2] = ["rotation", "datasource_config"];

/// The signing key of the `records()` fixture as a version 1 or 2 record holds it: no
/// certificate chain, not pinned.
fn signing_key_before_version_3() -> SigningKeyRecord {
    SigningKeyRecord {
        kid: "k1".into(),
        alg: "ES256".into(),
        state: KeyState::Retiring,
        sealed_private_key: vec![1, 2, 3],
        public_key: vec![4, 5],
        created_at: 7,
        state_changed_at: 8,
        certificate_chain: Vec::new(),
        pinned: false,
    }
}

/// A signing key record of the first format reads with no chain and unpinned; cut or padded,
/// it is corrupt, never misread.
fn check_signing_key_version_1(stored: &[u8]) {
    assert_eq!(stored[0], 1);
    assert_eq!(
        decode_record::<SigningKeyRecord>(stored).unwrap(),
        signing_key_before_version_3()
    );
    assert!(matches!(
        decode_record::<SigningKeyRecord>(&stored[..stored.len() - 1]),
        Err(StoreError::Corrupt { .. })
    ));
    let mut long = stored.to_vec();
    long.push(0);
    assert!(matches!(
        decode_record::<SigningKeyRecord>(&long),
        Err(StoreError::Corrupt { .. })
    ));
}

/// Agents and operator clients of the formats before generation 4 (agent version 1, operator
/// client version 2) read as never suspended, with no previous secret; cut or padded, they are
/// corrupt, never misread.
fn check_agent_and_client_before_version_4(fixtures: &Path) {
    let stored = std::fs::read(fixtures.join("records/agent.bin")).unwrap();
    assert_eq!(stored[0], 1);
    assert_eq!(
        decode_record::<AgentRecord>(&stored).unwrap(),
        agent_before_version_4()
    );
    assert!(matches!(
        decode_record::<AgentRecord>(&stored[..stored.len() - 1]),
        Err(StoreError::Corrupt { .. })
    ));
    let stored = std::fs::read(fixtures.join("records/operator_client.bin")).unwrap();
    let client = decode_record::<OperatorClientRecord>(&stored).unwrap();
    let expected = match stored[0] {
        1 => OperatorClientRecord {
            generation: 0,
            ..operator_client_before_version_4()
        },
        _ => operator_client_before_version_4(),
    };
    assert_eq!(client, expected);
    let mut long = stored.clone();
    long.push(0);
    assert!(matches!(
        decode_record::<OperatorClientRecord>(&long),
        Err(StoreError::Corrupt { .. })
    ));
}

/// Records whose format changed in generation 4.
const CHANGED_IN_VERSION_4: [&str; 2] = ["agent", "operator_client"];

#[test]
fn fixtures_of_version_3_stay_readable() {
    let fixtures = fixture_dir_of(3);
    for (name, bytes) in records() {
        if CHANGED_IN_VERSION_4.contains(&name) {
            continue;
        }
        let stored = std::fs::read(fixtures.join("records").join(format!("{name}.bin"))).unwrap();
        assert_eq!(stored, bytes, "record {name} changed format");
    }
    check_agent_and_client_before_version_4(&fixtures);
    let (_dir, store) = check_fixture_store(&fixtures);
    assert!(!store.hot().agent_suspended("shared"));
    let admin = store.hot().operator_client("admin").unwrap();
    assert!(admin.suspended_at.is_none() && admin.previous_secret_hash.is_none());
}

#[test]
fn fixtures_of_version_2_stay_readable() {
    let fixtures = fixture_dir_of(2);
    // Only signing keys, agents and operator clients changed format since: every other
    // record has this release's bytes.
    for (name, bytes) in records() {
        let stored = std::fs::read(fixtures.join("records").join(format!("{name}.bin"))).unwrap();
        if name == "signing_key" {
            check_signing_key_version_1(&stored);
        } else if !CHANGED_IN_VERSION_4.contains(&name) {
            assert_eq!(stored, bytes, "record {name} changed format");
        }
    }
    check_agent_and_client_before_version_4(&fixtures);
    let stored = std::fs::read(fixtures.join("records/signing_key_published.bin")).unwrap();
    let published = decode_record::<SigningKeyRecord>(&stored).unwrap();
    assert_eq!(
        (published.state, published.pinned),
        (KeyState::Published, false)
    );
    let (_dir, store) = check_fixture_store(&fixtures);
    let k1 = store.hot().signing_key("k1").unwrap();
    assert!(k1.certificate_chain.is_empty() && !k1.pinned);
}

#[test]
fn fixtures_of_version_1_stay_readable() {
    let fixtures = fixture_dir_of(1);
    // Every record but the operator client and the signing key kept its format: same bytes
    // as this release's. Records that version 1 did not have are new tables, created on open.
    for (name, bytes) in records() {
        if NEW_SINCE_VERSION_1.contains(&name) {
            continue;
        }
        let stored = std::fs::read(fixtures.join("records").join(format!("{name}.bin"))).unwrap();
        if name == "signing_key" {
            check_signing_key_version_1(&stored);
            continue;
        }
        if name == "agent" {
            continue;
        }
        if name != "operator_client" {
            assert_eq!(stored, bytes, "record {name} changed format");
            continue;
        }
        assert_eq!(stored[0], 1);
        let client = decode_record::<OperatorClientRecord>(&stored).unwrap();
        assert_eq!(
            client,
            OperatorClientRecord {
                generation: 0,
                ..operator_client_before_version_4()
            },
            "a version 1 operator client reads as generation 0"
        );
        // Truncated or padded version 1 payloads are corrupt, never misread.
        assert!(matches!(
            decode_record::<OperatorClientRecord>(&stored[..stored.len() - 1]),
            Err(StoreError::Corrupt { .. })
        ));
        let mut long = stored.clone();
        long.push(0);
        assert!(matches!(
            decode_record::<OperatorClientRecord>(&long),
            Err(StoreError::Corrupt { .. })
        ));
    }
    check_agent_and_client_before_version_4(&fixtures);
    let (_dir, store) = check_fixture_store(&fixtures);
    assert_eq!(store.hot().operator_client("admin").unwrap().generation, 0);
}

/// Opens a copy of a fixture data directory (opening may write), checks what it holds, and
/// runs the offline check on it; returns the store, open again, with its directory.
fn check_fixture_store(fixtures: &Path) -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(fixtures, tmp.path());
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    let snap = store.read().unwrap();
    assert_eq!(snap.tenant(TENANT).unwrap().unwrap().token_alg, "RS256");
    let shared = snap.agent(TENANT, "shared").unwrap().unwrap();
    assert_eq!(
        (shared.name.as_str(), shared.state),
        ("Shared Agent", BoardingState::Onboarded)
    );
    let reg = snap.registration("shared").unwrap().unwrap();
    assert_eq!(reg.generation, 2);
    assert!(reg.rat_hash.verify(b"fixture-rat-2") && !reg.rat_hash.verify(b"fixture-rat-1"));
    let client = store.hot().client("shared").unwrap();
    assert_eq!(
        client.secret.as_ref().unwrap().expose(),
        b"fixture-secret-2"
    );
    assert_eq!(
        snap.agent(TENANT, "waiting").unwrap().unwrap().state,
        BoardingState::Onboarding
    );
    assert!(
        snap.boarding("iat-waiting")
            .unwrap()
            .unwrap()
            .used_at
            .is_none()
    );
    assert!(
        store
            .hot()
            .operator_client("admin")
            .unwrap()
            .secret_hash
            .verify(b"secret")
    );
    assert_eq!(
        store.hot().signing_key("k1").unwrap().private_key.expose(),
        &[42u8; 32]
    );
    assert_eq!(
        snap.certificate_by_fingerprint(&"cd".repeat(32))
            .unwrap()
            .unwrap()
            .alias,
        "relay"
    );
    assert!(
        store
            .hot()
            .revocation(RevocationKind::Token, "tok-1")
            .is_some()
    );
    assert!(snap.audit(0, 100).unwrap().len() >= 4);
    drop(snap);
    drop(store);
    let report = check_data_dir(tmp.path(), &KeyFileOptions::default()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    (tmp, store)
}

#[test]
fn unknown_record_versions_are_refused_clearly() {
    for (name, mut bytes) in records() {
        bytes[0] = 200;
        let err = match name {
            "agent" => {
                let err = decode_record::<AgentRecord>(&bytes).unwrap_err();
                assert!(
                    matches!(
                        err,
                        StoreError::UnknownRecordVersion {
                            found: 200,
                            supported: 2,
                            ..
                        }
                    ),
                    "{err:?}"
                );
                continue;
            }
            "tenant" => decode_record::<TenantRecord>(&bytes).unwrap_err(),
            "registration" => decode_record::<RegistrationRecord>(&bytes).unwrap_err(),
            "revocation" => decode_record::<RevocationRecord>(&bytes).unwrap_err(),
            "rotation" => decode_record::<RotationRecord>(&bytes).unwrap_err(),
            "datasource_config" => decode_record::<DataSourceConfigRecord>(&bytes).unwrap_err(),
            "signing_key" => {
                let err = decode_record::<SigningKeyRecord>(&bytes).unwrap_err();
                assert!(
                    matches!(
                        err,
                        StoreError::UnknownRecordVersion {
                            found: 200,
                            supported: 2,
                            ..
                        }
                    ),
                    "{err:?}"
                );
                continue;
            }
            _ => continue,
        };
        assert!(
            matches!(
                err,
                StoreError::UnknownRecordVersion {
                    found: 200,
                    supported: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("version 200"), "{err}");
    }
    let (_, mut bytes) = records()
        .into_iter()
        .find(|(name, _)| *name == "operator_client")
        .unwrap();
    bytes[0] = 200;
    assert!(matches!(
        decode_record::<OperatorClientRecord>(&bytes),
        Err(StoreError::UnknownRecordVersion {
            found: 200,
            supported: 3,
            ..
        })
    ));
    // In a database: a registration from a "future release" makes open fail with that error,
    // not a panic and not a silently skipped client.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), tmp.path());
    {
        let db = redb::Database::builder()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open(tmp.path().join(DB_FILE))
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            use redb::ReadableTable;
            let def: redb::TableDefinition<&str, &[u8]> =
                redb::TableDefinition::new("registrations");
            let mut t = txn.open_table(def).unwrap();
            let mut v = t.get("shared").unwrap().unwrap().value().to_vec();
            v[0] = 2;
            t.insert("shared", v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(tmp.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnknownRecordVersion {
                record: "registrations",
                found: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let report = check_data_dir(tmp.path(), &KeyFileOptions::default()).unwrap();
    assert!(!report.is_ok());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("format version 2")),
        "{:?}",
        report.problems
    );
}

/// When the replay-log fixture was written (its entry lives until `REPLAY_T + 100`).
const REPLAY_T: u64 = 1_800_000_000;

/// Writes `replay-log/` next to the fixture store: one entry, then a graceful close.
fn write_replay_log(fixtures: &Path) {
    use latchkey_authority::replay_log::{ReplayLog, ReplayLogConfig, StartContext};
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(fixtures, tmp.path());
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    let (log, _) = ReplayLog::open(
        tmp.path(),
        &store,
        ReplayLogConfig::default(),
        StartContext {
            now: REPLAY_T,
            boot_id: [7; 16],
            leeway: 60,
            window: 241,
            has_clients: false,
        },
        std::sync::Arc::new(latchkey_authority::http::Metrics::new()),
    )
    .unwrap();
    log.append(
        latchkey_core::replay::Fingerprint([9; 16]),
        REPLAY_T + 100,
        REPLAY_T,
    )
    .unwrap();
    log.close(REPLAY_T + 1).unwrap();
    drop(log);
    let out = fixtures.join(latchkey_authority::replay_log::DIR);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for f in std::fs::read_dir(tmp.path().join(latchkey_authority::replay_log::DIR)).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), out.join(f.file_name())).unwrap();
    }
    // A published signing key, the state added after the first fixture generation.
    std::fs::write(
        fixtures.join("records/signing_key_published.bin"),
        published_key_record(),
    )
    .unwrap();
}

fn published_key_record() -> Vec<u8> {
    encode_record(&SigningKeyRecord {
        kid: "k3".into(),
        alg: "RS256".into(),
        state: KeyState::Published,
        sealed_private_key: vec![1, 2, 3],
        public_key: vec![4, 5],
        created_at: 8,
        state_changed_at: 8,
        certificate_chain: Vec::new(),
        pinned: false,
    })
    .unwrap()
}

/// The replay log written by this release (sealed with the fixture master key) opens in the
/// next: its entry comes back and its `Close` record means nothing was lost. And a published
/// key's record decodes. Regenerate with `LATCHKEY_WRITE_REPLAY_LOG_FIXTURE=1` (only when
/// adding a generation).
#[test]
fn replay_log_and_published_key_fixtures_stay_readable() {
    use latchkey_authority::replay_log::{ReplayLog, ReplayLogConfig, StartContext};
    let fixtures = fixture_dir();
    if std::env::var_os("LATCHKEY_WRITE_REPLAY_LOG_FIXTURE").is_some() {
        write_replay_log(&fixtures);
    }
    let stored = std::fs::read(fixtures.join("records/signing_key_published.bin")).unwrap();
    assert_eq!(stored, published_key_record());
    assert_eq!(
        decode_record::<SigningKeyRecord>(&stored).unwrap().state,
        KeyState::Published
    );

    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures, tmp.path());
    let log_dir = tmp.path().join(latchkey_authority::replay_log::DIR);
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut segments = 0;
    for f in std::fs::read_dir(fixtures.join(latchkey_authority::replay_log::DIR)).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), log_dir.join(f.file_name())).unwrap();
        segments += 1;
    }
    assert_eq!(segments, 1);
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    let (_log, recovery) = ReplayLog::open(
        tmp.path(),
        &store,
        ReplayLogConfig::default(),
        StartContext {
            now: REPLAY_T + 50,
            // Another boot: only the Close record says nothing was lost.
            boot_id: [8; 16],
            leeway: 60,
            window: 241,
            has_clients: true,
        },
        std::sync::Arc::new(latchkey_authority::http::Metrics::new()),
    )
    .unwrap();
    assert_eq!(recovery.floor, None, "{}", recovery.reason);
    assert_eq!(
        recovery.entries,
        vec![(latchkey_core::replay::Fingerprint([9; 16]), REPLAY_T + 100)]
    );
}
