//! The durable store: everything in one redb file, secrets sealed under a separate key file.
//! See `authority/src/store/DESIGN.md` for the on-disk format.
//!
//! - [`Store::open_or_create`] opens `<dir>/latchkey.redb` with `<dir>/master.key`.
//! - Every write goes through [`Store::submit`] ([`Store::write`] waits for it) to the store's
//!   committer, which applies it with `ops::apply`: redb's is one writer thread that
//!   group-commits whatever is queued, durably (two-phase commit), and answers each request on
//!   its own.
//! - Reads use [`Snapshot`]s ([`Store::read`], a [`ReadView`] that never waits for the writer),
//!   or the hot in-memory indexes ([`Store::hot`]) that the token path reads directly, without
//!   locks. `DESIGN.md` ("The engine seam") says what another storage engine provides.

mod agent_index;
mod codec;
mod commit;
mod engine;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod freshness;
mod hot;
mod maintenance;
mod ops;
pub mod outcome;
mod records;
mod schema;
mod seal;
mod snapshot;
mod view;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ConcurrencyMode, Database, ReadableDatabase, StorageBackend};

pub use agent_index::{
    AgentIndex, ListPage, ListRequest, Order, SortKey, SortRange, SortValue, Start,
};
pub use codec::{MAX_RECORD_BYTES, Record, decode as decode_record, encode as encode_record};
pub use engine::{ETCD_BUILD_COMMAND, MAX_ETCD_ENDPOINTS, StoreEngine};
pub use error::StoreError;
pub use freshness::{Freshness, Stale};
pub use hot::{ClientAuth, HmacKeys, HotIndex, PreviousCredentials, Revocation, StoredSigningKey};
pub use maintenance::{BackupReport, CheckReport, TableReport, backup_data_dir, check_data_dir};
pub use ops::{FORGET_BATCH, PruneAudit};
pub use ops::{
    MAX_AUDIT_FIELD_BYTES, MAX_ID_BYTES, MAX_JWKS, NewAgent, NewCertificate, NewDataSourceConfig,
    NewIat, NewSigningKey, Registration, Rotation, SecretRotation, Takeover, WriteOp, WriteOutcome,
};
pub use records::*;
pub use schema::SCHEMA_VERSION;
pub use seal::{
    BLAKE3_PREFIX, KeyFileOptions, MasterKey, PBKDF2_ITERATIONS, SealContext, Secret, SecretHash,
};
pub use snapshot::{AgentPage, MAX_PAGE};
pub use view::{ReadView, Snapshot};

use commit::Committer;
use error::DbResult;
use writer::Writer;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "latchkey.redb";
/// File name of the master key inside the data directory.
pub const KEY_FILE: &str = "master.key";

/// Told the size of every committed group, on the writer thread right after the commit
/// (metrics). It must not block.
pub trait CommitObserver: Send + Sync + 'static {
    fn committed(&self, ops: usize);
    /// How long a group took from the writer taking it off the queue to its durable commit.
    fn commit_took(&self, _elapsed: std::time::Duration) {}
    /// Requests left waiting in the writer's queue when it took a group.
    fn queue_depth(&self, _waiting: usize) {}
}

/// Where the writer finds the observer; set at most once, after open.
pub(crate) type ObserverSlot = std::sync::OnceLock<Arc<dyn CommitObserver>>;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Master key file handling (passphrase).
    pub key: KeyFileOptions,
    /// Most requests committed in one transaction. 1 disables group commit (benchmarks).
    pub max_batch: usize,
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
    /// Queue length in front of the writer; `submit` blocks the caller only when it is full
    /// (an event loop should treat a long queue as overload).
    pub queue_capacity: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            key: KeyFileOptions::default(),
            max_batch: 512,
            cache_bytes: 256 * 1024 * 1024,
            queue_capacity: 16 * 1024,
        }
    }
}

/// The paths of a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub dir: PathBuf,
    pub db: PathBuf,
    pub key: PathBuf,
}

impl DataDir {
    pub fn new(dir: &Path) -> Self {
        DataDir {
            dir: dir.to_path_buf(),
            db: dir.join(DB_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

/// A handle to the open store. Cheap to clone; the writer stops when the last clone drops.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every write goes through it (`Store::submit`); reads never do: the hot index and
    /// snapshots are read directly. First, so that dropping the store closes the queue and
    /// waits for the writer before anything else goes.
    committer: Box<dyn Committer>,
    db: Arc<Database>,
    hot: Arc<HotIndex>,
    observer: Arc<ObserverSlot>,
    paths: DataDir,
    key: Arc<MasterKey>,
    /// The cluster engine tells the application here what remote writes changed.
    #[cfg(feature = "etcd")]
    listener: Arc<etcd::committer::ListenerSlot>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.paths.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in `dir`, creating the directory, database and master key on first run.
    /// Refuses to invent a new key for an existing database ([`StoreError::MissingKeyFile`]).
    pub fn open_or_create(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let paths = DataDir::new(dir);
        create_private_dir(dir)?;
        let backend = file_backend(&paths.db, true)?;
        Self::open_inner(paths, options, backend, true)
    }

    /// Opens an existing store; a missing directory or database is an error.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let paths = DataDir::new(dir);
        if !paths.db.is_file() {
            return Err(StoreError::MissingDataDir(dir.to_path_buf()));
        }
        let backend = file_backend(&paths.db, false)?;
        Self::open_inner(paths, options, backend, false)
    }

    /// Opens (or creates) the store with a caller-supplied redb storage backend for the database
    /// file; the key file still lives in `dir`. For fault-injection tests.
    pub fn open_with_backend(
        dir: &Path,
        options: StoreOptions,
        backend: impl StorageBackend,
    ) -> Result<Store, StoreError> {
        create_private_dir(dir)?;
        Self::open_inner(DataDir::new(dir), options, backend, true)
    }

    fn open_inner(
        paths: DataDir,
        options: StoreOptions,
        backend: impl StorageBackend,
        create: bool,
    ) -> Result<Store, StoreError> {
        let db_exists = std::fs::metadata(&paths.db)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        let key = master_key(&paths, &options.key, create && !db_exists)?;
        let db = builder(options.cache_bytes)
            .create_with_backend(backend)
            .map_err(|e| open_error(e, &paths.db))?;
        let db = Arc::new(db);
        maintenance::init_schema(&db, &key)?;
        let hot = Arc::new(HotIndex::default());
        snapshot::load_hot(&db, &key, &hot)?;
        let key = Arc::new(key);
        let observer = Arc::new(ObserverSlot::new());
        let writer = Writer::spawn(
            db.clone(),
            key.clone(),
            hot.clone(),
            observer.clone(),
            options.queue_capacity,
            options.max_batch,
        )?;
        Ok(Store {
            inner: Arc::new(Inner {
                committer: Box::new(writer),
                db,
                hot,
                observer,
                paths,
                key,
                #[cfg(feature = "etcd")]
                listener: Arc::default(),
            }),
        })
    }

    /// Opens this node of a cluster on etcd (`--store etcd://…`): claims the cluster's meta
    /// with `<dir>/master.key` (created only for an empty cluster), opens the node's mirror
    /// (`<dir>/cluster-mirror.redb`), starts the engine, and returns once the mirror has
    /// caught up with the cluster, or fails after `catch_up`.
    #[cfg(feature = "etcd")]
    pub fn open_cluster(
        dir: &Path,
        options: StoreOptions,
        endpoints: &[String],
        settings: etcd::EngineSettings,
        catch_up: std::time::Duration,
    ) -> Result<(Store, etcd::MetaClaim, etcd::Cluster), StoreError> {
        let paths = DataDir {
            dir: dir.to_path_buf(),
            db: dir.join(etcd::MIRROR_FILE),
            key: dir.join(KEY_FILE),
        };
        // Nothing is created before the cluster answered: an unreachable cluster leaves no
        // empty data directory behind.
        let cluster = etcd::Cluster::connect(endpoints, settings.request_timeout, &settings.tls)?;
        etcd::migrate::check_no_import(&cluster)?;
        if !paths.key.exists() && cluster.meta_key_id()?.is_some() {
            return Err(StoreError::BadKeyFile {
                path: paths.key.clone(),
                reason: format!(
                    "it is missing, and the etcd cluster at {} was initialised by another \
                     node: copy that node's master.key here",
                    cluster.endpoints()
                ),
            });
        }
        create_private_dir(dir)?;
        let key = master_key(&paths, &options.key, true)?;
        let claim = cluster.claim_meta(&key, &paths.key, crate::clock::unix_now())?;
        // Exclusive, unlike the single-node database: the mirror is this process's alone, and
        // only then may its commits skip the fsync (see `etcd::mirror`).
        let mut b = Database::builder();
        b.set_cache_size(options.cache_bytes);
        let db = b
            .create_with_backend(file_backend(&paths.db, true)?)
            .map_err(|e| open_error(e, &paths.db))?;
        let db = Arc::new(db);
        maintenance::init_schema(&db, &key)?;
        let hot = Arc::new(HotIndex::default());
        snapshot::load_hot(&db, &key, &hot)?;
        let freshness = Arc::new(Freshness::new(settings.freshness));
        hot.set_gate(freshness.clone());
        let key = Arc::new(key);
        let observer = Arc::new(ObserverSlot::new());
        let listener = Arc::new(etcd::committer::ListenerSlot::new());
        let engine = etcd::committer::Engine::spawn(etcd::committer::Parts {
            endpoints: endpoints.to_vec(),
            db: db.clone(),
            key: key.clone(),
            hot: hot.clone(),
            observer: observer.clone(),
            listener: listener.clone(),
            freshness: freshness.clone(),
            settings,
        })?;
        let deadline = std::time::Instant::now() + catch_up;
        while freshness.age(std::time::Instant::now()).is_none() {
            if std::time::Instant::now() >= deadline {
                return Err(StoreError::Etcd {
                    endpoints: endpoints.join(","),
                    reason: format!(
                        "this node could not catch up with the cluster within {} s",
                        catch_up.as_secs()
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok((
            Store {
                inner: Arc::new(Inner {
                    committer: Box::new(engine),
                    db,
                    hot,
                    observer,
                    paths,
                    key,
                    listener,
                }),
            },
            claim,
            cluster,
        ))
    }

    /// Waits until this node has proven it is current as of a read sent after this call: what
    /// any node wrote before the call is then in the mirror and the hot index.
    #[cfg(feature = "etcd")]
    pub fn wait_current(&self, timeout: std::time::Duration) -> Result<(), StoreError> {
        let Some(f) = self.inner.hot.freshness() else {
            return Ok(());
        };
        let since = std::time::Instant::now();
        let deadline = since + timeout;
        while !f.proven_since(since) {
            if std::time::Instant::now() >= deadline {
                return Err(StoreError::ClusterUnavailable(format!(
                    "this node could not confirm it is current within {} s",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    }

    /// Has `listener` told what writes (this node's and others') changed beyond the hot
    /// index: signing keys, trust. Only the first call takes effect; single node: never called.
    #[cfg(feature = "etcd")]
    pub fn set_change_listener(&self, listener: etcd::ChangeListener) {
        let _ = self.inner.listener.set(listener);
    }

    /// Queues a write. `reply` runs on the writer thread once the write is durably committed
    /// (or refused, or failed); it must be quick and must not block (queue the answer and wake
    /// the event loop). Never blocks on disk; blocks only while the queue is full.
    pub fn submit(
        &self,
        op: WriteOp,
        reply: impl FnOnce(Result<WriteOutcome, StoreError>) + Send + 'static,
    ) {
        self.inner.committer.submit(op, Box::new(reply));
    }

    /// Submits a write and waits for its outcome (CLI, tests).
    pub fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.submit(op, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// A consistent MVCC snapshot for reads. Never waits for the writer.
    pub fn read(&self) -> Result<Snapshot, StoreError> {
        let txn = self.inner.db.begin_read().db("begin read")?;
        Ok(Snapshot::new(snapshot::RedbSnapshot::new(txn)))
    }

    /// The hot indexes (clients, operator clients, signing keys, revocations).
    /// Reports every committed group's size to `observer` from now on. Only the first call
    /// takes effect (there is one metrics registry per process).
    pub fn set_commit_observer(&self, observer: Arc<dyn CommitObserver>) {
        let _ = self.inner.observer.set(observer);
    }

    pub fn hot(&self) -> &Arc<HotIndex> {
        &self.inner.hot
    }

    /// The data directory paths.
    /// The master key: it also seals the files of the data directory that hold secrets (TLS
    /// private keys, the first operator client's secret).
    pub fn master_key(&self) -> &MasterKey {
        &self.inner.key
    }

    pub fn paths(&self) -> &DataDir {
        &self.inner.paths
    }

    /// Seals `plaintext` with the master key for a file outside the database (the replay log's
    /// hash key); `ctx` names the file and field.
    pub fn seal(&self, ctx: SealContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.inner.key.seal(ctx, plaintext)
    }

    /// Opens what [`Store::seal`] sealed for the same `ctx`.
    pub fn unseal(&self, ctx: SealContext<'_>, sealed: &[u8]) -> Result<Secret, StoreError> {
        self.inner.key.unseal(ctx, sealed)
    }

    /// Writes a consistent copy of the database, as of now, to `out` (a new file), while the
    /// store keeps serving. The master key is not copied (see `DESIGN.md`).
    pub fn backup_to(&self, out: &Path) -> Result<BackupReport, StoreError> {
        let txn = self.inner.db.begin_read().db("begin read")?;
        maintenance::copy_snapshot(&txn, out)
    }
}

/// Every database handle uses the same mode: one writer process, and read-only processes
/// (`latchkey backup`) may follow its commits while it runs. Commits are two-phase in this mode.
pub(crate) fn builder(cache_bytes: usize) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(cache_bytes)
        .set_concurrency_mode(ConcurrencyMode::SingleWriter);
    b
}

/// The master key of a data directory, without opening the database (commands that only
/// need the key, such as `cert init`, also work beside a running server). A new key is made
/// only with `create` (a data directory without a database); a database without its key file
/// is [`StoreError::MissingKeyFile`].
pub fn open_master_key(dir: &Path, options: &KeyFileOptions) -> Result<MasterKey, StoreError> {
    let paths = DataDir::new(dir);
    let db_exists = std::fs::metadata(&paths.db)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    if !db_exists && !paths.key.exists() {
        create_private_dir(dir)?;
    }
    master_key(&paths, options, !db_exists)
}

fn master_key(
    paths: &DataDir,
    options: &KeyFileOptions,
    create: bool,
) -> Result<MasterKey, StoreError> {
    if paths.key.exists() {
        MasterKey::load(&paths.key, options)
    } else if create {
        MasterKey::create(&paths.key, options)
    } else {
        Err(StoreError::MissingKeyFile(paths.key.clone()))
    }
}

pub(crate) fn file_backend(
    path: &Path,
    create: bool,
) -> Result<redb::backends::FileBackend, StoreError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    // The database holds hashes and sealed values only, but nobody else needs to read it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::MissingDataDir(path.to_path_buf()),
            _ => StoreError::Io {
                op: "open database file",
                source: e,
            },
        })?;
    // Databases created before it was private: tighten on the next writable open.
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        // Best effort: a co-owner that may write but not chmod still gets its backup.
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    redb::backends::FileBackend::new(file).db("open database file")
}

pub(crate) fn open_error(e: redb::DatabaseError, path: &Path) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
        e => StoreError::Db {
            op: "open database",
            source: e.into(),
        },
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(StoreError::io("create data directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_removes_a_bounded_batch_per_op() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(dir.path(), StoreOptions::default()).unwrap();
        let n = FORGET_BATCH + 30;
        for i in 0..n {
            store
                .write(WriteOp::Revoke {
                    kind: RevocationKind::Token,
                    id: format!("jti-{i}"),
                    by: "op".into(),
                    reason: "test".into(),
                    now: 5,
                    forget_after: 100,
                })
                .unwrap();
        }
        let forgotten = |store: &Store| match store.write(WriteOp::Forget { now: 100 }).unwrap() {
            WriteOutcome::Forgotten { revocations, .. } => revocations,
            other => panic!("{other:?}"),
        };
        assert_eq!(forgotten(&store), FORGET_BATCH);
        assert_eq!(forgotten(&store), 30);
        assert_eq!(forgotten(&store), 0);
        assert_eq!(store.hot().revocation_count(RevocationKind::Token), 0);
    }

    const T: &str = "tenant-a";

    fn open(dir: &Path) -> Store {
        let store = Store::open_or_create(dir, StoreOptions::default()).unwrap();
        store
            .write(WriteOp::PutTenant {
                record: TenantRecord {
                    id: T.into(),
                    display_name: "A".into(),
                    token_alg: "RS256".into(),
                    created_at: 1,
                },
                now: 1,
            })
            .unwrap();
        store
    }

    fn create(store: &Store, id: &str, name: &str, jti: &str) -> Result<WriteOutcome, StoreError> {
        store.write(WriteOp::CreateAgent(NewAgent {
            tenant: T.into(),
            id: id.into(),
            name: name.into(),
            security_profile: SecurityProfile::SharedSecret,
            iat: Some(NewIat {
                jti: jti.into(),
                expires_at: 1_000,
            }),
            by: "test".into(),
            now: 10,
        }))
    }

    fn register(store: &Store, id: &str, jti: &str, rat: &str) -> Result<WriteOutcome, StoreError> {
        store.write(WriteOp::Register(Registration {
            iat_jti: jti.into(),
            tenant: T.into(),
            client_id: id.into(),
            auth_method: AuthMethod::ClientSecretJwt,
            secret: Some(Secret::from("shared-secret")),
            jwks: vec![],
            secret_expires_at: 5_000,
            rat: Secret::from(rat),
            now: 20,
        }))
    }

    fn rotate(store: &Store, id: &str, old: &str, new: &str) -> Result<WriteOutcome, StoreError> {
        store.write(WriteOp::RotateRegistration(Rotation {
            client_id: id.into(),
            presented_rat: Secret::from(old),
            new_rat: Secret::from(new),
            new_secret: Some(Secret::from(format!("secret-{new}").as_str())),
            new_jwks: None,
            secret_expires_at: 6_000,
            grace_until: 0,
            now: 30,
        }))
    }

    fn rotate_with_grace(store: &Store, old: &str, new: &str) -> Result<WriteOutcome, StoreError> {
        store.write(WriteOp::RotateRegistration(Rotation {
            client_id: "e1".into(),
            presented_rat: Secret::from(old),
            new_rat: Secret::from(new),
            new_secret: Some(Secret::from(format!("secret-{new}").as_str())),
            new_jwks: None,
            secret_expires_at: 6_000,
            grace_until: 100,
            now: 30,
        }))
    }

    #[test]
    fn rotation_grace_replays_survives_reopen_and_ends_at_cut_over_or_forget() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            create(&store, "e1", "Nanobox", "iat-1").unwrap();
            register(&store, "e1", "iat-1", "rat-1").unwrap();
            rotate_with_grace(&store, "rat-1", "rat-2").unwrap();
            // The previous RAT gets the lost answer, not a new rotation.
            let WriteOutcome::RotationReplayed {
                registration,
                rat,
                secret,
            } = rotate_with_grace(&store, "rat-1", "rat-x").unwrap()
            else {
                panic!("expected a replay")
            };
            assert_eq!(registration.generation, 2);
            assert_eq!(rat.expose(), b"rat-2");
            assert_eq!(secret.unwrap().expose(), b"secret-rat-2");
        }
        // The grace state is durable and sealed: a reopened store has the previous secret.
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let client = store.hot().client("e1").unwrap();
        let previous = client.previous_at(50).expect("previous credentials live");
        assert_eq!(previous.secret.as_ref().unwrap().expose(), b"shared-secret");
        assert!(client.previous_at(100).is_none(), "not at the window's end");
        let audit = store.read().unwrap().audit(0, 100).unwrap();
        assert!(audit.iter().any(|a| a.event == "agent.rotate.replay"));

        // The cut-over ends the previous RAT and drops the previous secret from the index.
        store
            .write(WriteOp::CutOver {
                client_id: "e1".into(),
                generation: 2,
                now: 40,
            })
            .unwrap();
        assert!(store.hot().client("e1").unwrap().previous.is_none());
        assert!(store.read().unwrap().rotation("e1").unwrap().is_none());
        assert!(matches!(
            rotate_with_grace(&store, "rat-1", "rat-y"),
            Err(StoreError::StaleRat)
        ));
        let audit = store.read().unwrap().audit(0, 100).unwrap();
        assert_eq!(
            audit
                .iter()
                .filter(|a| a.event == "agent.rotate.cutover")
                .count(),
            1
        );

        // A grace window that ends unused is forgotten by maintenance.
        rotate_with_grace(&store, "rat-2", "rat-3").unwrap();
        assert!(store.hot().client("e1").unwrap().previous.is_some());
        store.write(WriteOp::Forget { now: 100 }).unwrap();
        assert!(store.hot().client("e1").unwrap().previous.is_none());
        assert!(store.read().unwrap().rotation("e1").unwrap().is_none());
        assert!(matches!(
            rotate_with_grace(&store, "rat-2", "rat-z"),
            Err(StoreError::StaleRat)
        ));
    }

    #[test]
    fn agent_lifecycle_register_rotate_offboard() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let WriteOutcome::Boarding(agent, iat) = create(&store, "e1", "Nanobox", "iat-1").unwrap()
        else {
            panic!("expected boarding outcome")
        };
        assert_eq!(
            (agent.state, agent.etag, iat.jti.as_str()),
            (BoardingState::Onboarding, 2, "iat-1")
        );
        assert!(matches!(
            create(&store, "e1", "Other", "iat-x"),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            create(&store, "e2", "Nanobox", "iat-y"),
            Err(StoreError::Conflict(_))
        ));

        register(&store, "e1", "iat-1", "rat-1").unwrap();
        assert!(matches!(
            register(&store, "e1", "iat-1", "rat-x"),
            Err(StoreError::InvalidIat("already used"))
        ));
        let client = store.hot().client("e1").unwrap();
        assert_eq!(client.secret.as_ref().unwrap().expose(), b"shared-secret");
        assert_eq!(client.generation, 1);

        rotate(&store, "e1", "rat-1", "rat-2").unwrap();
        assert!(matches!(
            rotate(&store, "e1", "rat-1", "rat-3"),
            Err(StoreError::StaleRat)
        ));
        let client = store.hot().client("e1").unwrap();
        assert_eq!(
            (client.generation, client.secret.as_ref().unwrap().expose()),
            (2, &b"secret-rat-2"[..])
        );

        let snap = store.read().unwrap();
        let reg = snap.registration("e1").unwrap().unwrap();
        assert!(reg.rat_hash.verify(b"rat-2") && !reg.rat_hash.verify(b"rat-1"));
        assert_eq!(
            snap.agent(T, "e1").unwrap().unwrap().state,
            BoardingState::Onboarded
        );
        assert!(
            snap.agent("other-tenant", "e1").unwrap().is_none(),
            "tenants are isolated"
        );

        store
            .write(WriteOp::Offboard {
                tenant: T.into(),
                agent_id: "e1".into(),
                by: "op".into(),
                now: 40,
                forget_after: 90,
            })
            .unwrap();
        assert!(store.hot().client("e1").is_none());
        assert_eq!(
            store
                .hot()
                .revocation(RevocationKind::Agent, "e1")
                .unwrap()
                .revoked_at,
            40
        );
        assert!(matches!(
            rotate(&store, "e1", "rat-2", "rat-9"),
            Err(StoreError::NotFound { .. })
        ));
        // Boarding again works after offboarding.
        store
            .write(WriteOp::IssueBoardingToken {
                tenant: T.into(),
                agent_id: "e1".into(),
                iat: NewIat {
                    jti: "iat-2".into(),
                    expires_at: 1_000,
                },
                by: "test".into(),
                now: 41,
            })
            .unwrap();
        register(&store, "e1", "iat-2", "rat-b").unwrap();

        let audit = store.read().unwrap().audit(0, 100).unwrap();
        let events: Vec<_> = audit
            .iter()
            .map(|a| (a.event.as_str(), a.outcome == AuditOutcome::Success))
            .collect();
        assert!(events.contains(&("agent.rotate", false)), "{events:?}");
        assert!(events.contains(&("agent.offboard", true)), "{events:?}");
        assert!(audit.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    }

    #[test]
    fn reopen_restores_hot_indexes_and_refuses_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            create(&store, "e1", "n1", "j1").unwrap();
            register(&store, "e1", "j1", "r1").unwrap();
            store
                .write(WriteOp::AddSigningKey(NewSigningKey {
                    kid: "k1".into(),
                    alg: "EdDSA".into(),
                    state: KeyState::Active,
                    private_key: Secret::new(vec![7u8; 32]),
                    public_key: vec![1, 2, 3],
                    certificate_chain: vec![vec![0x30, 1], vec![0x30, 2]],
                    pinned: true,
                    takeover: Some(Default::default()),
                    by: "test".into(),
                    now: 5,
                }))
                .unwrap();
            store
                .write(WriteOp::Revoke {
                    kind: RevocationKind::Token,
                    id: "jti-1".into(),
                    by: "op".into(),
                    reason: "test".into(),
                    now: 5,
                    forget_after: 100,
                })
                .unwrap();
        }
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            store
                .hot()
                .client("e1")
                .unwrap()
                .secret
                .as_ref()
                .unwrap()
                .expose(),
            b"shared-secret"
        );
        assert_eq!(
            store.hot().signing_key("k1").unwrap().private_key.expose(),
            &[7u8; 32]
        );
        let k1 = store.hot().signing_key("k1").unwrap();
        assert_eq!(
            (k1.certificate_chain.clone(), k1.pinned),
            (vec![vec![0x30, 1], vec![0x30, 2]], true)
        );
        assert!(
            store
                .hot()
                .revocation(RevocationKind::Token, "jti-1")
                .is_some()
        );
        assert!(matches!(
            store.write(WriteOp::Forget { now: 100 }).unwrap(),
            WriteOutcome::Forgotten {
                revocations: 1,
                boarding: 1
            }
        ));
        assert!(
            store
                .hot()
                .revocation(RevocationKind::Token, "jti-1")
                .is_none()
        );
        drop(store);

        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        assert!(matches!(
            Store::open(dir.path(), StoreOptions::default()),
            Err(StoreError::MissingKeyFile(_))
        ));
        assert!(matches!(
            Store::open_or_create(dir.path(), StoreOptions::default()),
            Err(StoreError::MissingKeyFile(_))
        ));
        MasterKey::create(&dir.path().join(KEY_FILE), &KeyFileOptions::default()).unwrap();
        let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::BadKeyFile { .. }), "{err:?}");
    }

    #[test]
    fn second_open_is_locked_and_missing_dir_is_clear() {
        let dir = tempfile::tempdir().unwrap();
        let _store = open(dir.path());
        let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Locked(_)), "{err:?}");
        let err = Store::open(&dir.path().join("nope"), StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::MissingDataDir(_)), "{err:?}");
    }

    #[test]
    fn etag_and_rename_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        create(&store, "e1", "n1", "j1").unwrap();
        create(&store, "e2", "n2", "j2").unwrap();
        let update = |if_match, name: &str| {
            store.write(WriteOp::UpdateAgent {
                tenant: T.into(),
                id: "e1".into(),
                if_match,
                name: Some(name.into()),
                security_profile: None,
                by: "test".into(),
                now: 50,
            })
        };
        assert!(matches!(
            update(Some(1), "x"),
            Err(StoreError::PreconditionFailed {
                expected: 1,
                current: 2
            })
        ));
        assert!(matches!(
            update(Some(2), "n2"),
            Err(StoreError::Conflict(_))
        ));
        let WriteOutcome::Agent(a) = update(Some(2), "renamed").unwrap() else {
            panic!()
        };
        assert_eq!((a.name.as_str(), a.etag), ("renamed", 3));
        let snap = store.read().unwrap();
        assert_eq!(snap.agent_by_name(T, "renamed").unwrap().unwrap().id, "e1");
        assert!(snap.agent_by_name(T, "n1").unwrap().is_none());
        let page = snap.agents(T, None, 1).unwrap();
        assert_eq!((page.agents.len(), page.next.as_deref()), (1, Some("e1")));
        let page2 = snap.agents(T, page.next.as_deref(), 10).unwrap();
        assert_eq!(
            page2
                .agents
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>(),
            ["e2"]
        );
        assert_eq!(page2.next, None);
        store
            .write(WriteOp::DeleteAgent {
                tenant: T.into(),
                id: "e1".into(),
                if_match: Some(3),
                by: "op".into(),
                now: 60,
                forget_after: 70,
            })
            .unwrap();
        let snap = store.read().unwrap();
        assert!(snap.agent(T, "e1").unwrap().is_none());
        assert!(snap.agent_by_name(T, "renamed").unwrap().is_none());
        assert_eq!(snap.agent_count(T).unwrap(), 1);
    }

    #[test]
    fn refused_op_in_a_group_leaves_no_trace_and_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        create(&store, "e1", "n1", "j1").unwrap();
        register(&store, "e1", "j1", "r0").unwrap();
        // Many concurrent rotations presenting the same RAT: exactly one wins.
        let (tx, rx) = crossbeam::channel::unbounded();
        for i in 0..50 {
            let tx = tx.clone();
            store.submit(
                WriteOp::RotateRegistration(Rotation {
                    client_id: "e1".into(),
                    presented_rat: Secret::from("r0"),
                    new_rat: Secret::from(format!("r{i}-new").as_str()),
                    new_secret: Some(Secret::from("s")),
                    new_jwks: None,
                    secret_expires_at: 1,
                    grace_until: 0,
                    now: 1,
                }),
                move |r| tx.send((i, r.is_ok())).unwrap(),
            );
        }
        drop(tx);
        let wins: Vec<_> = rx.iter().filter(|(_, ok)| *ok).map(|(i, _)| i).collect();
        assert_eq!(wins.len(), 1, "{wins:?}");
        let reg = store.read().unwrap().registration("e1").unwrap().unwrap();
        assert_eq!(reg.generation, 2);
        assert!(reg.rat_hash.verify(format!("r{}-new", wins[0]).as_bytes()));
    }

    #[test]
    fn backup_is_a_consistent_readable_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        create(&store, "e1", "n1", "j1").unwrap();
        register(&store, "e1", "j1", "r1").unwrap();
        let out = dir.path().join("backup.redb");
        // While the store is open (as a running server would have it).
        let report = backup_data_dir(dir.path(), &out).unwrap();
        assert!(report.rows > 5, "{report:?}");
        assert!(
            backup_data_dir(dir.path(), &out).is_err(),
            "never overwrites"
        );
        let report2 = store.backup_to(&dir.path().join("b2.redb")).unwrap();
        assert_eq!(report.rows, report2.rows);
        let locked = check_data_dir(dir.path(), &KeyFileOptions::default()).unwrap_err();
        assert!(matches!(locked, StoreError::Locked(_)), "{locked:?}");
        drop(store);
        // The backup plus the key file is a working data directory.
        let restored = tempfile::tempdir().unwrap();
        std::fs::copy(&out, restored.path().join(DB_FILE)).unwrap();
        std::fs::copy(dir.path().join(KEY_FILE), restored.path().join(KEY_FILE)).unwrap();
        let check = check_data_dir(restored.path(), &KeyFileOptions::default()).unwrap();
        assert!(check.is_ok(), "{check:?}");
        assert_eq!(
            check
                .tables
                .iter()
                .find(|t| t.name == "registrations")
                .unwrap()
                .rows,
            1
        );
        let store = Store::open(restored.path(), StoreOptions::default()).unwrap();
        assert!(store.hot().client("e1").is_some());
    }

    /// One number per kind of op, from a match without a wildcard: a new `WriteOp` does not
    /// compile here until it is listed, and the test below fails until it is exercised.
    fn op_kind(op: &WriteOp) -> usize {
        match op {
            WriteOp::PutTenant { .. } => 0,
            WriteOp::CreateAgent(_) => 1,
            WriteOp::UpdateAgent { .. } => 2,
            WriteOp::DeleteAgent { .. } => 3,
            WriteOp::IssueBoardingToken { .. } => 4,
            WriteOp::Register(_) => 5,
            WriteOp::RotateRegistration(_) => 6,
            WriteOp::CutOver { .. } => 7,
            WriteOp::PutDataSourceConfig(_) => 8,
            WriteOp::Offboard { .. } => 9,
            WriteOp::CreateOperatorClient { .. } => 10,
            WriteOp::DeleteOperatorClient { .. } => 11,
            WriteOp::PutProfile { .. } => 12,
            WriteOp::DeleteProfile { .. } => 13,
            WriteOp::AddSigningKey(_) => 14,
            WriteOp::SetSigningKeyState { .. } => 15,
            WriteOp::AddCertificate(_) => 16,
            WriteOp::SetCertificateState { .. } => 17,
            WriteOp::RenameCertificate { .. } => 18,
            WriteOp::Revoke { .. } => 19,
            WriteOp::Forget { .. } => 20,
            WriteOp::Audit { .. } => 21,
            WriteOp::SuspendAgent { .. } => 22,
            WriteOp::SuspendOperatorClient { .. } => 23,
            WriteOp::RotateOperatorClientSecret(_) => 24,
            WriteOp::PruneAudit(_) => 25,
        }
    }
    const OP_KINDS: usize = 26;

    /// Every kind of op that changes state leaves an audit entry naming who did what to which
    /// subject, and none carries a secret.
    #[test]
    fn every_op_is_audited_with_its_actor() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let op = "op-client";
        let steps: Vec<(WriteOp, &str, &str, &str)> = vec![
            (
                WriteOp::PutTenant {
                    record: TenantRecord {
                        id: "tenant-b".into(),
                        display_name: "B".into(),
                        token_alg: "RS256".into(),
                        created_at: 5,
                    },
                    now: 5,
                },
                "system",
                "tenant.put",
                "tenant-b",
            ),
            (
                WriteOp::CreateAgent(NewAgent {
                    tenant: T.into(),
                    id: "e1".into(),
                    name: "n1".into(),
                    security_profile: SecurityProfile::SharedSecret,
                    iat: Some(NewIat {
                        jti: "iat-1".into(),
                        expires_at: 1_000,
                    }),
                    by: op.into(),
                    now: 10,
                }),
                op,
                "agent.create",
                "e1",
            ),
            (
                WriteOp::UpdateAgent {
                    tenant: T.into(),
                    id: "e1".into(),
                    if_match: None,
                    name: Some("n2".into()),
                    security_profile: None,
                    by: op.into(),
                    now: 11,
                },
                op,
                "agent.update",
                "e1",
            ),
            (
                WriteOp::SuspendAgent {
                    tenant: T.into(),
                    id: "e1".into(),
                    suspend: true,
                    by: op.into(),
                    now: 11,
                    forget_after: 1_000,
                },
                op,
                "agent.suspend",
                "e1",
            ),
            (
                WriteOp::SuspendAgent {
                    tenant: T.into(),
                    id: "e1".into(),
                    suspend: false,
                    by: op.into(),
                    now: 11,
                    forget_after: 1_000,
                },
                op,
                "agent.resume",
                "e1",
            ),
            (
                WriteOp::IssueBoardingToken {
                    tenant: T.into(),
                    agent_id: "e1".into(),
                    iat: NewIat {
                        jti: "iat-2".into(),
                        expires_at: 1_000,
                    },
                    by: op.into(),
                    now: 12,
                },
                op,
                "agent.boarding.issue",
                "e1",
            ),
            (
                WriteOp::Register(Registration {
                    iat_jti: "iat-2".into(),
                    tenant: T.into(),
                    client_id: "e1".into(),
                    auth_method: AuthMethod::ClientSecretJwt,
                    secret: Some(Secret::from("shared-secret")),
                    jwks: vec![],
                    secret_expires_at: 5_000,
                    rat: Secret::from("rat-1"),
                    now: 20,
                }),
                "e1",
                "agent.register",
                "e1",
            ),
            (
                WriteOp::RotateRegistration(Rotation {
                    client_id: "e1".into(),
                    presented_rat: Secret::from("rat-1"),
                    new_rat: Secret::from("rat-2"),
                    new_secret: Some(Secret::from("secret-2")),
                    new_jwks: None,
                    secret_expires_at: 6_000,
                    grace_until: 100,
                    now: 30,
                }),
                "e1",
                "agent.rotate",
                "e1",
            ),
            (
                WriteOp::CutOver {
                    client_id: "e1".into(),
                    generation: 2,
                    now: 31,
                },
                "e1",
                "agent.rotate.cutover",
                "e1",
            ),
            (
                WriteOp::PutDataSourceConfig(NewDataSourceConfig {
                    tenant: T.into(),
                    agent_id: "e1".into(),
                    if_match: None,
                    new_id: "cfg-1".into(),
                    json: "{}".into(),
                    by: op.into(),
                    now: 32,
                }),
                op,
                "agent.datasource.put",
                "e1",
            ),
            (
                WriteOp::Offboard {
                    tenant: T.into(),
                    agent_id: "e1".into(),
                    by: op.into(),
                    now: 40,
                    forget_after: 50,
                },
                op,
                "agent.offboard",
                "e1",
            ),
            (
                WriteOp::DeleteAgent {
                    tenant: T.into(),
                    id: "e1".into(),
                    if_match: None,
                    by: op.into(),
                    now: 41,
                    forget_after: 50,
                },
                op,
                "agent.delete",
                "e1",
            ),
            (
                WriteOp::PutProfile {
                    record: ProfileRecord {
                        name: "viewers".into(),
                        permissions: vec!["agents:read".into()],
                    },
                    by: op.into(),
                    now: 42,
                },
                op,
                "profile.put",
                "viewers",
            ),
            (
                WriteOp::CreateOperatorClient {
                    record: OperatorClientRecord {
                        id: "viewer".into(),
                        tenant: T.into(),
                        secret_hash: SecretHash::usercube(b"client-secret"),
                        display_name: "Viewer".into(),
                        profile: "viewers".into(),
                        created_at: 43,
                        generation: 0,
                        suspended_at: None,
                        previous_secret_hash: None,
                        previous_valid_until: 0,
                    },
                    by: op.into(),
                },
                op,
                "client.create",
                "viewer",
            ),
            (
                WriteOp::SuspendOperatorClient {
                    id: "viewer".into(),
                    suspend: true,
                    by: op.into(),
                    now: 43,
                },
                op,
                "client.suspend",
                "viewer",
            ),
            (
                WriteOp::RotateOperatorClientSecret(SecretRotation {
                    id: "viewer".into(),
                    secret_hash: SecretHash::usercube(b"secret-3"),
                    grace_until: 100,
                    by: op.into(),
                    now: 43,
                }),
                op,
                "client.rotate-secret",
                "viewer",
            ),
            (
                WriteOp::DeleteOperatorClient {
                    id: "viewer".into(),
                    by: op.into(),
                    now: 44,
                },
                op,
                "client.delete",
                "viewer",
            ),
            (
                WriteOp::DeleteProfile {
                    name: "viewers".into(),
                    by: op.into(),
                    now: 45,
                },
                op,
                "profile.delete",
                "viewers",
            ),
            (
                WriteOp::AddSigningKey(NewSigningKey {
                    kid: "k1".into(),
                    alg: "EdDSA".into(),
                    state: KeyState::Published,
                    private_key: Secret::new(vec![7u8; 32]),
                    public_key: vec![1, 2, 3],
                    certificate_chain: vec![],
                    pinned: false,
                    takeover: None,
                    by: op.into(),
                    now: 46,
                }),
                op,
                "key.add",
                "k1",
            ),
            (
                WriteOp::SetSigningKeyState {
                    kid: "k1".into(),
                    state: KeyState::Active,
                    takeover: Some(Takeover::default()),
                    by: op.into(),
                    now: 47,
                },
                op,
                "key.activate",
                "k1",
            ),
            (
                WriteOp::AddCertificate(NewCertificate {
                    alias: "relay".into(),
                    fingerprint: "cd".repeat(32),
                    subject: "CN=relay".into(),
                    kind: CertificateKind::Trusted,
                    not_after: 1_900_000_000,
                    der: vec![0x30, 0x00],
                    private_key: None,
                    by: op.into(),
                    now: 48,
                }),
                op,
                "cert.add",
                "relay",
            ),
            (
                WriteOp::RenameCertificate {
                    alias: "relay".into(),
                    new_alias: "relay-2".into(),
                    by: op.into(),
                    now: 49,
                },
                op,
                "cert.rename",
                "",
            ),
            (
                WriteOp::SetCertificateState {
                    alias: "relay-2".into(),
                    state: CertificateState::Revoked,
                    by: op.into(),
                    now: 50,
                },
                op,
                "cert.state",
                "relay-2",
            ),
            (
                WriteOp::Revoke {
                    kind: RevocationKind::Token,
                    id: "jti-1".into(),
                    by: op.into(),
                    reason: "test".into(),
                    now: 51,
                    forget_after: 52,
                },
                op,
                "revoke",
                "",
            ),
            (WriteOp::Forget { now: 100 }, "system", "forget", ""),
            (
                WriteOp::PruneAudit(PruneAudit {
                    before_time: None,
                    max_rows: Some(3),
                    batch: 1_000,
                    by: "system".into(),
                    now: 100,
                }),
                "system",
                "audit.prune",
                "",
            ),
            (
                WriteOp::Audit {
                    actor: op.into(),
                    event: "agent.boarding.disclose".into(),
                    subject: "e2".into(),
                    outcome: AuditOutcome::Success,
                    now: 101,
                },
                op,
                "agent.boarding.disclose",
                "e2",
            ),
        ];
        let mut covered = [false; OP_KINDS];
        for (write, actor, event, subject) in steps {
            let kind = op_kind(&write);
            covered[kind] = true;
            // The newest entry's seq, not the count: a prune removes rows as it audits itself.
            let before = store
                .read()
                .unwrap()
                .audit(0, 10_000)
                .unwrap()
                .last()
                .map(|a| a.seq);
            let label = format!("{write:?}");
            store
                .write(write)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let audit = store.read().unwrap().audit(0, 10_000).unwrap();
            assert!(
                audit.last().map(|a| a.seq) > before,
                "op kind {kind} left no audit entry"
            );
            let own = audit.last().unwrap();
            assert_eq!(
                (own.actor.as_str(), own.event.as_str(), &own.outcome),
                (actor, event, &AuditOutcome::Success),
                "op kind {kind}"
            );
            if !subject.is_empty() {
                assert_eq!(own.subject, subject, "op kind {kind}");
            }
        }
        let missing: Vec<usize> = (0..OP_KINDS).filter(|&k| !covered[k]).collect();
        assert!(missing.is_empty(), "op kinds never exercised: {missing:?}");
        let audit = store.read().unwrap().audit(0, 10_000).unwrap();
        let text = format!("{audit:?}");
        for secret in [
            "shared-secret",
            "secret-2",
            "rat-1",
            "rat-2",
            "client-secret",
        ] {
            assert!(!text.contains(secret), "audit carries {secret:?}");
        }
    }
}
