//! Helpers shared by the store tests.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use latchkey_authority::store::*;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

pub const TENANT: &str = "tenant-a";

/// Shared switchboard of a [`FaultyBackend`]: after `countdown` more writes/syncs succeed,
/// the next one fails and every later one too (a dead disk), until `heal`.
#[derive(Debug, Default)]
pub struct Faults {
    countdown: AtomicI64,
    tripped: AtomicBool,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        let f = Faults::default();
        f.countdown.store(-1, Ordering::SeqCst);
        Arc::new(f)
    }

    pub fn arm(&self, after: i64) {
        self.countdown.store(after, Ordering::SeqCst);
    }

    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::SeqCst)
    }

    pub fn heal(&self) {
        self.countdown.store(-1, Ordering::SeqCst);
        self.tripped.store(false, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), std::io::Error> {
        if self.tripped() {
            return Err(std::io::Error::other("injected: disk is gone"));
        }
        let left = self.countdown.load(Ordering::SeqCst);
        if left == 0 {
            self.tripped.store(true, Ordering::SeqCst);
            return Err(std::io::Error::other("injected I/O fault"));
        }
        if left > 0 {
            self.countdown.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// redb's file backend with writes, length changes and syncs that fail on command.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    pub fn open(path: &Path, faults: Arc<Faults>) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        FaultyBackend {
            inner: FileBackend::new(file).unwrap(),
            faults,
        }
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.faults.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.faults.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.faults.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

pub fn tenant_op() -> WriteOp {
    WriteOp::PutTenant {
        record: TenantRecord {
            id: TENANT.into(),
            display_name: "Tenant A".into(),
            token_alg: "RS256".into(),
            created_at: 1,
        },
        now: 1,
    }
}

pub fn create_op(id: &str, name: &str, jti: &str) -> WriteOp {
    WriteOp::CreateAgent(NewAgent {
        tenant: TENANT.into(),
        id: id.into(),
        name: name.into(),
        security_profile: SecurityProfile::SharedSecret,
        iat: Some(NewIat {
            jti: jti.into(),
            expires_at: u64::MAX,
        }),
        by: "test".into(),
        now: 100,
    })
}

pub fn register_op(id: &str, jti: &str, secret: &str, rat: &str) -> WriteOp {
    WriteOp::Register(Registration {
        iat_jti: jti.into(),
        tenant: TENANT.into(),
        client_id: id.into(),
        auth_method: AuthMethod::ClientSecretJwt,
        secret: Some(Secret::from(secret)),
        jwks: vec![],
        secret_expires_at: 10_000,
        rat: Secret::from(rat),
        now: 100,
    })
}

pub fn rotate_op(id: &str, presented: &str, new_rat: &str, new_secret: &str) -> WriteOp {
    WriteOp::RotateRegistration(Rotation {
        client_id: id.into(),
        presented_rat: Secret::from(presented),
        new_rat: Secret::from(new_rat),
        new_secret: Some(Secret::from(new_secret)),
        new_jwks: None,
        secret_expires_at: 20_000,
        grace_until: 0,
        now: 100,
    })
}

pub fn revoke_op(jti: &str) -> WriteOp {
    WriteOp::Revoke {
        kind: RevocationKind::Token,
        id: jti.into(),
        by: "test".into(),
        reason: "test".into(),
        now: 100,
        forget_after: 1_000_000,
    }
}
