//! Schema initialisation, backups and integrity checks (`latchkey backup`, `latchkey check`).
//!
//! Backups read one MVCC snapshot and copy it table by table into a fresh redb file. The
//! server opens its database in redb's `SingleWriter` mode, so `latchkey backup` can open the
//! same file read-only from another process while the server runs and still get a consistent
//! snapshot (redb keeps the snapshot's pages alive while the reader holds it).

use std::path::Path;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use super::codec::{self, Record};
use super::error::{DbResult, StoreError};
use super::records::*;
use super::schema::*;
use super::seal::{KeyFileOptions, MasterKey, SealContext, hex};
use super::{DataDir, builder, file_backend, open_error};

/// Creates the tables and the meta rows of a new database; checks them on an existing one.
pub(crate) fn init_schema(db: &Database, key: &MasterKey) -> Result<(), StoreError> {
    let rtx = db.begin_read().db("begin read")?;
    let existing = match rtx.open_table(META) {
        Ok(meta) => meta
            .get(META_SCHEMA_VERSION)
            .db("read meta")?
            .map(|v| v.value().to_vec()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(StoreError::db("open meta")(e.into())),
    };
    drop(rtx);
    match existing {
        Some(v) => {
            check_version(&v)?;
            check_key_id(db, key)?;
            create_added_tables(db)
        }
        None => {
            let mut txn = db.begin_write().db("begin write")?;
            txn.set_two_phase_commit(true);
            {
                let mut meta = txn.open_table(META).db("create tables")?;
                meta.insert(
                    META_SCHEMA_VERSION,
                    &codec::encode_u64(SCHEMA_VERSION.into())[..],
                )
                .db("write meta")?;
                meta.insert(META_CREATED_AT, &codec::encode_u64(now())[..])
                    .db("write meta")?;
                meta.insert(META_KEY_ID, &key.id()[..]).db("write meta")?;
                // Creating every table now lets read transactions open them unconditionally.
                txn.open_table(TENANTS).db("create tables")?;
                txn.open_table(AGENTS).db("create tables")?;
                txn.open_table(AGENT_NAMES).db("create tables")?;
                txn.open_table(TENANT_AGENTS).db("create tables")?;
                txn.open_table(BOARDING).db("create tables")?;
                txn.open_table(REGISTRATIONS).db("create tables")?;
                txn.open_table(OPERATOR_CLIENTS).db("create tables")?;
                txn.open_table(PROFILES).db("create tables")?;
                txn.open_table(SIGNING_KEYS).db("create tables")?;
                txn.open_table(CERTIFICATES).db("create tables")?;
                txn.open_table(CERT_FINGERPRINTS).db("create tables")?;
                txn.open_table(REVOCATIONS).db("create tables")?;
                txn.open_table(ROTATIONS).db("create tables")?;
                txn.open_table(DATASOURCE_CONFIGS).db("create tables")?;
                txn.open_table(AUDIT).db("create tables")?;
            }
            txn.commit().db("commit schema")
        }
    }
}

/// Tables added after the first release of schema 1: a database written before them lacks
/// them, which means "empty". They are created at open so reads can open them unconditionally.
fn create_added_tables(db: &Database) -> Result<(), StoreError> {
    let rtx = db.begin_read().db("begin read")?;
    let missing = [ROTATIONS, DATASOURCE_CONFIGS].into_iter().any(|def| {
        matches!(
            rtx.open_table(def),
            Err(redb::TableError::TableDoesNotExist(_))
        )
    });
    drop(rtx);
    if !missing {
        return Ok(());
    }
    let mut txn = db.begin_write().db("begin write")?;
    txn.set_two_phase_commit(true);
    txn.open_table(ROTATIONS).db("create tables")?;
    txn.open_table(DATASOURCE_CONFIGS).db("create tables")?;
    txn.commit().db("commit schema")
}

fn check_version(v: &[u8]) -> Result<u64, StoreError> {
    let version = codec::decode_u64(META_SCHEMA_VERSION, v)?;
    if version != u64::from(SCHEMA_VERSION) {
        return Err(StoreError::Corrupt {
            table: "meta",
            reason: format!(
                "schema version {version}, this release reads version {SCHEMA_VERSION}; \
                 was the data directory written by a newer latchkey?"
            ),
        });
    }
    Ok(version)
}

fn check_key_id(db: &impl ReadableDatabase, key: &MasterKey) -> Result<(), StoreError> {
    let rtx = db.begin_read().db("begin read")?;
    let meta = rtx.open_table(META).db("open meta")?;
    let stored = meta
        .get(META_KEY_ID)
        .db("read meta")?
        .map(|v| v.value().to_vec());
    if stored.as_deref() != Some(&key.id()[..]) {
        return Err(StoreError::BadKeyFile {
            path: "master.key".into(),
            reason: "this key file does not belong to this database".into(),
        });
    }
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub rows: u64,
    pub bytes: u64,
}

/// Copies the snapshot `txn` into a new database file at `out`.
pub(crate) fn copy_snapshot(txn: &ReadTransaction, out: &Path) -> Result<BackupReport, StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // `create_new`: never overwrite an existing file (it may be the live database). 0600: the
    // copy holds what the database holds.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(StoreError::io("create backup file"))?;
    let result = (|| {
        let backend = redb::backends::FileBackend::new(file).db("open backup file")?;
        let dst = Database::builder()
            .create_with_backend(backend)
            .db("create backup")?;
        let mut w = dst.begin_write().db("begin backup")?;
        w.set_two_phase_commit(true);
        let mut rows = 0;
        rows += copy(txn, &w, META)?;
        rows += copy(txn, &w, TENANTS)?;
        rows += copy(txn, &w, AGENTS)?;
        rows += copy(txn, &w, AGENT_NAMES)?;
        rows += copy(txn, &w, TENANT_AGENTS)?;
        rows += copy(txn, &w, BOARDING)?;
        rows += copy(txn, &w, REGISTRATIONS)?;
        rows += copy(txn, &w, OPERATOR_CLIENTS)?;
        rows += copy(txn, &w, PROFILES)?;
        rows += copy(txn, &w, SIGNING_KEYS)?;
        rows += copy(txn, &w, CERTIFICATES)?;
        rows += copy(txn, &w, CERT_FINGERPRINTS)?;
        rows += copy(txn, &w, REVOCATIONS)?;
        rows += copy(txn, &w, ROTATIONS)?;
        rows += copy(txn, &w, DATASOURCE_CONFIGS)?;
        rows += copy(txn, &w, AUDIT)?;
        w.commit().db("commit backup")?;
        dst.close().db("close backup")?;
        let bytes = std::fs::metadata(out)
            .map_err(StoreError::io("stat backup"))?
            .len();
        Ok(BackupReport { rows, bytes })
    })();
    if result.is_err() {
        // A half-written backup must not look like a backup.
        let _ = std::fs::remove_file(out);
    }
    result
}

fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    dst: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let from = match src.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(StoreError::db("backup: open table")(e.into())),
    };
    let mut to = dst.open_table(def).db("backup: create table")?;
    let mut n = 0;
    for entry in from.iter().db("backup: read")? {
        let (k, v) = entry.db("backup: read")?;
        to.insert(k.value(), v.value()).db("backup: write")?;
        n += 1;
    }
    Ok(n)
}

/// `latchkey backup`: a consistent copy of the data directory's database, also while a server
/// is running on it. The master key is not copied.
pub fn backup_data_dir(dir: &Path, out: &Path) -> Result<BackupReport, StoreError> {
    let paths = DataDir::new(dir);
    if !paths.db.is_file() {
        return Err(StoreError::MissingDataDir(dir.to_path_buf()));
    }
    // Read-only first: works beside a running server (SingleWriter mode).
    let file = std::fs::File::open(&paths.db).map_err(StoreError::io("open database file"))?;
    let backend = redb::backends::FileBackend::new(file).db("open database file")?;
    match builder(64 << 20).open_read_only_with_backend(backend) {
        Ok(db) => {
            let txn = db.begin_read().db("begin read")?;
            return copy_snapshot(&txn, out);
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Locked(paths.db)),
        Err(e) => tracing::info!(error = %e, "read-only open failed; trying a recovering open"),
    }
    // No server, but the file needs recovery (e.g. after a crash): a writer open repairs it.
    let db = builder(64 << 20)
        .create_with_backend(file_backend(&paths.db, false)?)
        .map_err(|e| open_error(e, &paths.db))?;
    let txn = db.begin_read().db("begin read")?;
    copy_snapshot(&txn, out)
}

/// One table's line in a check report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub name: &'static str,
    pub rows: u64,
    /// Rows that failed to decode or unseal.
    pub bad: u64,
}

/// What `latchkey check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// redb's page-checksum and allocator check: `true` if clean, `false` if it had to repair.
    pub integrity_clean: bool,
    pub schema_version: u64,
    pub key_id: String,
    pub tables: Vec<TableReport>,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// `latchkey check`: redb's integrity check, then every record decoded and every sealed value
/// opened, plus index consistency. Needs exclusive access (the server must be stopped).
pub fn check_data_dir(dir: &Path, key_options: &KeyFileOptions) -> Result<CheckReport, StoreError> {
    let paths = DataDir::new(dir);
    if !paths.db.is_file() {
        return Err(StoreError::MissingDataDir(dir.to_path_buf()));
    }
    let key = MasterKey::load(&paths.key, key_options)?;
    let mut db = builder(64 << 20)
        .create_with_backend(file_backend(&paths.db, false)?)
        .map_err(|e| open_error(e, &paths.db))?;
    let integrity_clean = match db.check_integrity() {
        Ok(clean) => clean,
        Err(e) => return Err(StoreError::db("integrity check")(e.into())),
    };
    let txn = db.begin_read().db("begin read")?;
    let meta = txn.open_table(META).db("open meta")?;
    let version_bytes = meta
        .get(META_SCHEMA_VERSION)
        .db("read meta")?
        .ok_or_else(|| StoreError::Corrupt {
            table: "meta",
            reason: "no schema version".into(),
        })?
        .value()
        .to_vec();
    let schema_version = check_version(&version_bytes)?;
    let mut problems = Vec::new();
    if let Err(e) = check_key_id(&db, &key) {
        problems.push(e.to_string());
    }
    if !integrity_clean {
        problems.push("redb integrity check found damage and repaired it".into());
    }
    let mut tables = vec![TableReport {
        name: "meta",
        rows: meta.len().db("count")?,
        bad: 0,
    }];
    let mut c = Checker {
        txn: &txn,
        key: &key,
        problems: &mut problems,
    };
    tables.push(c.records::<TenantRecord>(TENANTS, None)?);
    tables.push(c.records::<AgentRecord>(AGENTS, None)?);
    tables.push(c.index(AGENT_NAMES, "agent_names")?);
    tables.push(c.index(TENANT_AGENTS, "tenant_agents")?);
    tables.push(c.records::<BoardingRecord>(BOARDING, None)?);
    tables.push(c.records::<RegistrationRecord>(
        REGISTRATIONS,
        Some(|r: &RegistrationRecord| r.sealed_secret.clone()),
    )?);
    for (def, name) in [
        (ROTATIONS, "rotations"),
        (DATASOURCE_CONFIGS, "datasource_configs"),
    ] {
        if matches!(
            txn.open_table(def),
            Err(redb::TableError::TableDoesNotExist(_))
        ) {
            tables.push(TableReport {
                name,
                rows: 0,
                bad: 0,
            });
        } else if name == "rotations" {
            tables.push(c.records::<RotationRecord>(
                ROTATIONS,
                Some(|r: &RotationRecord| Some(r.sealed.clone())),
            )?);
        } else {
            tables.push(c.records::<DataSourceConfigRecord>(DATASOURCE_CONFIGS, None)?);
        }
    }
    tables.push(c.records::<OperatorClientRecord>(OPERATOR_CLIENTS, None)?);
    tables.push(c.records::<ProfileRecord>(PROFILES, None)?);
    tables.push(c.records::<SigningKeyRecord>(
        SIGNING_KEYS,
        Some(|r: &SigningKeyRecord| Some(r.sealed_private_key.clone())),
    )?);
    tables.push(c.records::<CertificateRecord>(
        CERTIFICATES,
        Some(|r: &CertificateRecord| r.sealed_private_key.clone()),
    )?);
    let fps = txn.open_table(CERT_FINGERPRINTS).db("open table")?;
    tables.push(TableReport {
        name: "cert_fingerprints",
        rows: fps.len().db("count")?,
        bad: 0,
    });
    let revs = txn.open_table(REVOCATIONS).db("open table")?;
    let mut bad = 0;
    for entry in revs.iter().db("read")? {
        let (_, v) = entry.db("read")?;
        if let Err(e) = codec::decode::<RevocationRecord>(v.value()) {
            bad += 1;
            c.problems.push(e.to_string());
        }
    }
    tables.push(TableReport {
        name: "revocations",
        rows: revs.len().db("count")?,
        bad,
    });
    let audit = txn.open_table(AUDIT).db("open table")?;
    let mut bad = 0;
    for entry in audit.iter().db("read")? {
        let (_, v) = entry.db("read")?;
        if let Err(e) = codec::decode::<AuditRecord>(v.value()) {
            bad += 1;
            c.problems.push(e.to_string());
        }
    }
    tables.push(TableReport {
        name: "audit",
        rows: audit.len().db("count")?,
        bad,
    });
    Ok(CheckReport {
        integrity_clean,
        schema_version,
        key_id: hex(&key.id()),
        tables,
        problems,
    })
}

/// Picks a record's sealed blob, if it has one.
type SealedOf<R> = fn(&R) -> Option<Vec<u8>>;

struct Checker<'a> {
    txn: &'a ReadTransaction,
    key: &'a MasterKey,
    problems: &'a mut Vec<String>,
}

impl Checker<'_> {
    fn records<R: Record>(
        &mut self,
        def: TableDefinition<&str, &[u8]>,
        sealed: Option<SealedOf<R>>,
    ) -> Result<TableReport, StoreError> {
        let t = self.txn.open_table(def).db("open table")?;
        let (mut rows, mut bad) = (0, 0);
        for entry in t.iter().db("read")? {
            let (k, v) = entry.db("read")?;
            rows += 1;
            let rec = match codec::decode::<R>(v.value()) {
                Ok(r) => r,
                Err(e) => {
                    bad += 1;
                    self.problems
                        .push(format!("{}[{:?}]: {e}", R::NAME, k.value()));
                    continue;
                }
            };
            if let Some(blob) = sealed.and_then(|f| f(&rec))
                && let Err(e) = self.key.unseal(
                    SealContext {
                        table: R::NAME,
                        key: k.value(),
                    },
                    &blob,
                )
            {
                bad += 1;
                self.problems.push(e.to_string());
            }
        }
        Ok(TableReport {
            name: R::NAME,
            rows,
            bad,
        })
    }

    /// Checks that every index entry names an existing agent.
    fn index<V: redb::Value + 'static>(
        &mut self,
        def: TableDefinition<(&str, &str), V>,
        name: &'static str,
    ) -> Result<TableReport, StoreError> {
        let t = self.txn.open_table(def).db("open table")?;
        let agents = self.txn.open_table(AGENTS).db("open table")?;
        let (mut rows, mut bad) = (0, 0);
        for entry in t.iter().db("read")? {
            let (k, _) = entry.db("read")?;
            rows += 1;
            let (tenant, second) = k.value();
            let found = if name == "agent_names" {
                let names = self.txn.open_table(AGENT_NAMES).db("open table")?;
                let id = names
                    .get((tenant, second))
                    .db("read")?
                    .map(|v| v.value().to_string());
                id.map(|id| agents.get(id.as_str()).map(|v| v.is_some()))
                    .transpose()
                    .db("read")?
            } else {
                Some(agents.get(second).db("read")?.is_some())
            };
            if found != Some(true) {
                bad += 1;
                self.problems
                    .push(format!("{name}[({tenant:?}, {second:?})] names no agent"));
            }
        }
        Ok(TableReport { name, rows, bad })
    }
}
