//! Moving a whole store between redb and the cluster: `latchkey cluster import` (a stopped
//! single-node data directory into a fresh cluster) and `latchkey backup --store etcd://…`
//! (every row of the cluster at one revision into a new redb file of the store's schema, which
//! opens as a single-node data directory with the cluster's `master.key`).
//!
//! An import writes many Txns, so it is bracketed by a marker, `meta/import`: written first
//! (in the Txn that also proves the cluster holds no rows), compared by every later Txn (a
//! second import cannot interleave), and deleted by the last one. While it exists a node
//! refuses to start ([`check_no_import`]) and a backup refuses to read; an interrupted import
//! is finished by running the same import again, which clears the rows and writes them anew.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use redb::{Database, ReadableDatabase as _, WriteTransaction};

use super::super::codec;
use super::super::error::DbResult;
use super::super::schema::*;
use super::super::seal::{KeyFileOptions, MasterKey, hex};
use super::super::{DataDir, StoreError, builder, file_backend, open_error};
use super::Cluster;
use super::files::{self, Publish, SharedCa};
use super::layout::{self, Table, meta_key, prefix_end, rows_prefix, wseq_key};

/// Most operations in one Txn: etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// Most key and value bytes in one Txn: etcd refuses a request over `--max-request-bytes`
/// (1.5 MiB by default); the rest is left for the request's framing.
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// Keys per page of a backup's range reads.
pub const PAGE_KEYS: i64 = 1000;

/// Largest page answer accepted: every row is at most `MAX_RECORD_BYTES`, its key a few
/// hundred bytes.
const MAX_PAGE_BYTES: usize = PAGE_KEYS as usize * (codec::MAX_RECORD_BYTES + 4096);

/// How often a backup starts again at a newer revision when the cluster compacted the one it
/// was reading.
const MAX_BACKUP_ATTEMPTS: usize = 5;

/// The marker of an import in progress.
pub fn import_marker_key() -> String {
    meta_key("import")
}

/// Refuses while an import is in progress or was interrupted: a node must not serve a
/// half-imported cluster.
pub fn check_no_import(cluster: &Cluster) -> Result<(), StoreError> {
    let mut client = cluster.client.clone();
    let found = cluster
        .runtime
        .block_on(client.get(
            import_marker_key(),
            Some(GetOptions::new().with_count_only()),
        ))
        .map_err(|e| cluster.error(format!("cannot read {}: {e}", import_marker_key())))?
        .count();
    if found > 0 {
        return Err(import_in_progress(cluster));
    }
    Ok(())
}

fn import_in_progress(cluster: &Cluster) -> StoreError {
    cluster.error(format!(
        "an import into this cluster is in progress or was interrupted ({} exists): wait for \
         it to finish, or rerun `latchkey cluster import` with the same data directory to \
         finish it",
        import_marker_key()
    ))
}

fn not_fresh(cluster: &Cluster, rows: i64) -> StoreError {
    cluster.error(format!(
        "the cluster already holds {rows} rows under {}: import needs a fresh cluster (a \
         cluster's own data is backed up with `latchkey backup --store`)",
        rows_prefix()
    ))
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: u64,
    /// Key and value bytes written.
    pub bytes: u64,
    pub txns: u64,
    /// An interrupted import was found and done again.
    pub resumed: bool,
    pub ca: CaImport,
    pub elapsed: Duration,
}

/// What became of the data directory's CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaImport {
    /// It is now the cluster's.
    Published,
    /// The cluster already had it.
    AlreadyThere,
    /// The data directory has no CA (it served with `--tls-cert` or plain HTTP).
    NoCa,
}

/// `latchkey cluster import`: every row of the stopped data directory `dir` into the fresh
/// cluster, its meta, and its CA.
pub fn import_data_dir(
    cluster: &Cluster,
    dir: &Path,
    key_options: &KeyFileOptions,
) -> Result<ImportReport, StoreError> {
    let started = Instant::now();
    let paths = DataDir::new(dir);
    if !paths.db.is_file() {
        return Err(StoreError::MissingDataDir(dir.to_path_buf()));
    }
    if !paths.key.exists() {
        return Err(StoreError::MissingKeyFile(paths.key.clone()));
    }
    let key = MasterKey::load(&paths.key, key_options)?;
    // A writable open: it fails while a server holds the file, so the rows cannot change under
    // the import (a read-only open would succeed beside a running server).
    let db = builder(64 << 20)
        .create_with_backend(file_backend(&paths.db, false)?)
        .map_err(|e| open_error(e, &paths.db))?;
    let created_at = check_meta(&db, &key, &paths)?;
    let local_ca = local_ca(dir)?;

    // Nothing is written into a cluster that holds rows, unless an interrupted import wrote
    // them (the marker Txn checks again).
    let marker = cluster.import_marker()?;
    if marker.is_none() {
        let rows = cluster.count_rows()?;
        if rows > 0 {
            return Err(not_fresh(cluster, rows));
        }
    }
    cluster.claim_meta(&key, &paths.key, created_at)?;
    if let Some(ours) = &local_ca
        && let Some(theirs) = cluster.read_ca()?
        && !files::same_cert(&theirs.cert_pem, &ours.cert_pem)
    {
        return Err(cluster.error(format!(
            "the cluster has a CA ({}) that is not {}'s: import into a fresh cluster",
            files::file_key("ca.pem"),
            dir.display()
        )));
    }
    let (marker_revision, resumed) = cluster.begin_import(&key, marker)?;
    let ca = match local_ca {
        None => CaImport::NoCa,
        Some(_) => match files::publish_ca(cluster, dir)? {
            Publish::Published => CaImport::Published,
            Publish::Same => CaImport::AlreadyThere,
            Publish::Lost(_) => {
                return Err(cluster.error(format!(
                    "another CA was published while importing; {} stays until this is resolved",
                    import_marker_key()
                )));
            }
        },
    };

    let mut batch = Batch::new(|rows: Vec<(String, Vec<u8>)>, count: u64| {
        let mut ops: Vec<TxnOp> = rows
            .into_iter()
            .map(|(k, v)| TxnOp::put(k, v, None))
            .collect();
        ops.push(TxnOp::put(wseq_key(), count.to_be_bytes(), None));
        cluster.marker_txn(
            Txn::new()
                .when([Compare::mod_revision(
                    import_marker_key(),
                    CompareOp::Equal,
                    marker_revision,
                )])
                .and_then(ops),
        )
    });
    let txn = db.begin_read().db("begin read")?;
    for table in Table::ALL {
        layout::for_each_row(&txn, table, |row| {
            batch.push(layout::row_key(row.table, &row.key), row.value)
        })?;
    }
    batch.flush()?;
    drop(txn);
    let rows = batch.rows;
    let finish = Txn::new()
        .when([Compare::mod_revision(
            import_marker_key(),
            CompareOp::Equal,
            marker_revision,
        )])
        .and_then([
            TxnOp::delete(import_marker_key(), None),
            TxnOp::put(wseq_key(), rows.to_be_bytes(), None),
        ]);
    cluster.marker_txn(finish)?;
    Ok(ImportReport {
        rows,
        bytes: batch.bytes,
        txns: batch.txns + 2,
        resumed,
        ca,
        elapsed: started.elapsed(),
    })
}

/// The data directory's schema version and master key id must be this release's and the key
/// file's; returns its creation time (which becomes the cluster's).
fn check_meta(db: &Database, key: &MasterKey, paths: &DataDir) -> Result<u64, StoreError> {
    let txn = db.begin_read().db("begin read")?;
    let meta = txn.open_table(META).db("open meta")?;
    let get = |name: &'static str| -> Result<Vec<u8>, StoreError> {
        meta.get(name)
            .db("read meta")?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| StoreError::Corrupt {
                table: "meta",
                reason: format!("no {name}"),
            })
    };
    let version = codec::decode_u64(META_SCHEMA_VERSION, &get(META_SCHEMA_VERSION)?)?;
    if version != u64::from(SCHEMA_VERSION) {
        return Err(StoreError::Corrupt {
            table: "meta",
            reason: format!(
                "schema version {version}, this release reads version {SCHEMA_VERSION}; \
                 import with the release that wrote the data directory"
            ),
        });
    }
    if get(META_KEY_ID)? != key.id() {
        return Err(StoreError::BadKeyFile {
            path: paths.key.clone(),
            reason: "this key file does not belong to this database".into(),
        });
    }
    codec::decode_u64(META_CREATED_AT, &get(META_CREATED_AT)?)
}

/// The data directory's CA, when it has both files.
fn local_ca(dir: &Path) -> Result<Option<SharedCa>, StoreError> {
    let read = |name: &str| match std::fs::read(dir.join(name)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            op: "read CA file",
            source,
        }),
    };
    match (read("ca.pem")?, read("ca.key.sealed")?) {
        (Some(cert_pem), Some(sealed_key)) => Ok(Some(SharedCa {
            cert_pem,
            sealed_key,
        })),
        (None, _) => Ok(None),
        (Some(_), None) => Err(StoreError::Invalid(format!(
            "{} has ca.pem but no ca.key.sealed: start it once as a single node (which seals a \
             plain ca.key of an earlier release), stop it, and import again",
            dir.display()
        ))),
    }
}

/// Rows queued for the next Txn of an import; `commit` writes one Txn's rows and the running
/// row count.
struct Batch<F: FnMut(Vec<(String, Vec<u8>)>, u64) -> Result<(), StoreError>> {
    commit: F,
    rows_queued: Vec<(String, Vec<u8>)>,
    queued_bytes: usize,
    rows: u64,
    bytes: u64,
    txns: u64,
}

/// What each Txn of an import carries besides its rows: the `wseq` put (every write of rows
/// rewrites it).
fn wseq_bytes() -> usize {
    wseq_key().len() + 8
}

impl<F: FnMut(Vec<(String, Vec<u8>)>, u64) -> Result<(), StoreError>> Batch<F> {
    fn new(commit: F) -> Self {
        Batch {
            commit,
            rows_queued: Vec::new(),
            queued_bytes: 0,
            rows: 0,
            bytes: 0,
            txns: 0,
        }
    }

    /// Queues a row, first committing the queue if the row would take it past a bound.
    fn push(&mut self, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        let size = key.len() + value.len();
        if size + wseq_bytes() > MAX_TXN_BYTES {
            return Err(StoreError::Invalid(format!(
                "row {key} is {size} bytes, more than one etcd request may carry                  ({MAX_TXN_BYTES} bytes)"
            )));
        }
        // The wseq put is one of the Txn's ops.
        if self.rows_queued.len() + 2 > MAX_TXN_OPS
            || self.queued_bytes + size + wseq_bytes() > MAX_TXN_BYTES
        {
            self.flush()?;
        }
        self.rows_queued.push((key, value));
        self.queued_bytes += size;
        self.rows += 1;
        self.bytes += size as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.rows_queued.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows_queued);
        (self.commit)(rows, self.rows)?;
        self.queued_bytes = 0;
        self.txns += 1;
        Ok(())
    }
}

impl Cluster {
    /// Writes the import marker: into a cluster without rows, or over an interrupted import's
    /// marker (clearing the rows it wrote). Returns the marker's revision, which every later
    /// Txn of the import compares, and whether an interrupted import was found.
    fn begin_import(&self, key: &MasterKey, seen: Option<i64>) -> Result<(i64, bool), StoreError> {
        let marker = import_marker_key();
        let (txn, resumed) = match seen {
            // A fresh cluster: the compares prove it holds no rows and no marker.
            None => (
                Txn::new()
                    .when([
                        Compare::create_revision(marker.clone(), CompareOp::Equal, 0),
                        Compare::create_revision(rows_prefix(), CompareOp::Equal, 0).with_prefix(),
                    ])
                    .and_then([
                        TxnOp::put(marker.clone(), key.id(), None),
                        TxnOp::put(wseq_key(), 0u64.to_be_bytes(), None),
                    ])
                    .or_else([TxnOp::get(
                        rows_prefix(),
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )]),
                false,
            ),
            // The claim checked the master key; this clears the rows of the interrupted import.
            Some(mod_revision) => (
                Txn::new()
                    .when([Compare::mod_revision(
                        marker.clone(),
                        CompareOp::Equal,
                        mod_revision,
                    )])
                    .and_then([
                        TxnOp::delete(rows_prefix(), Some(DeleteOptions::new().with_prefix())),
                        TxnOp::put(marker.clone(), key.id(), None),
                        TxnOp::put(wseq_key(), 0u64.to_be_bytes(), None),
                    ]),
                true,
            ),
        };
        let mut client = self.client.clone();
        let response = self
            .runtime
            .block_on(client.txn(txn))
            .map_err(|e| self.error(format!("cannot write {marker}: {e}")))?;
        if response.succeeded() {
            let revision = response.header().map_or(0, |h| h.revision());
            return Ok((revision, resumed));
        }
        let rows = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.count()),
            _ => None,
        });
        Err(match rows {
            Some(n) if n > 0 => not_fresh(self, n),
            _ => self.error(format!(
                "another `latchkey cluster import` started at the same time ({marker} changed)"
            )),
        })
    }

    /// The import marker's mod revision, if there is one.
    fn import_marker(&self) -> Result<Option<i64>, StoreError> {
        let mut client = self.client.clone();
        let found = self
            .runtime
            .block_on(client.get(import_marker_key(), None))
            .map_err(|e| self.error(format!("cannot read {}: {e}", import_marker_key())))?;
        Ok(found.kvs().first().map(|kv| kv.mod_revision()))
    }

    /// How many rows the cluster holds.
    fn count_rows(&self) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        let found = self
            .runtime
            .block_on(client.get(
                rows_prefix(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ))
            .map_err(|e| self.error(format!("cannot count rows: {e}")))?;
        Ok(found.count())
    }

    /// Commits one Txn of an import, which compares the marker's revision.
    fn marker_txn(&self, txn: Txn) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let response = self
            .runtime
            .block_on(client.txn(txn))
            .map_err(|e| self.error(format!("import write failed: {e}")))?;
        if !response.succeeded() {
            return Err(self.error(format!(
                "{} changed during the import: another `latchkey cluster import` is running \
                 against this cluster",
                import_marker_key()
            )));
        }
        Ok(())
    }
}

/// What a cluster backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterBackup {
    pub rows: u64,
    /// Size of the file written.
    pub bytes: u64,
    /// The etcd revision every row was read at.
    pub revision: i64,
}

/// Why a read at a pinned revision stopped.
enum PinnedRead {
    /// The cluster compacted the revision: start again at a newer one.
    Compacted,
    Failed(StoreError),
}

impl From<StoreError> for PinnedRead {
    fn from(e: StoreError) -> Self {
        PinnedRead::Failed(e)
    }
}

/// `latchkey backup --store etcd://…`: every row at one revision, and the cluster's meta, into
/// the new file `out` (mode 0600; never overwritten; removed on failure).
pub fn backup_cluster(cluster: &Cluster, out: &Path) -> Result<ClusterBackup, StoreError> {
    backup_cluster_paged(cluster, out, PAGE_KEYS, &mut |_| {})
}

/// [`backup_cluster`] with `page_keys` per page, calling `after_page` with each page's pinned
/// revision (tests compact the cluster there).
fn backup_cluster_paged(
    cluster: &Cluster,
    out: &Path,
    page_keys: i64,
    after_page: &mut dyn FnMut(i64),
) -> Result<ClusterBackup, StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
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
        let mut attempt = 0;
        let (rows, revision) = loop {
            attempt += 1;
            let mut w = dst.begin_write().db("begin backup")?;
            w.set_two_phase_commit(true);
            create_tables(&w)?;
            match cluster.copy_at_one_revision(&w, page_keys, after_page) {
                Ok(done) => {
                    w.commit().db("commit backup")?;
                    break done;
                }
                Err(PinnedRead::Compacted) if attempt < MAX_BACKUP_ATTEMPTS => {
                    w.abort().db("abort backup")?;
                }
                Err(PinnedRead::Compacted) => {
                    return Err(cluster.error(format!(
                        "the cluster compacted the revision being read {attempt} times in a \
                         row; retry when it compacts less often"
                    )));
                }
                Err(PinnedRead::Failed(e)) => return Err(e),
            }
        };
        dst.close().db("close backup")?;
        let bytes = std::fs::metadata(out)
            .map_err(StoreError::io("stat backup"))?
            .len();
        Ok(ClusterBackup {
            rows,
            bytes,
            revision,
        })
    })();
    if result.is_err() {
        // A half-written backup must not look like a backup.
        let _ = std::fs::remove_file(out);
    }
    result
}

/// Every table of the schema, as `maintenance::init_schema` creates them, so the file opens
/// like a data directory's database.
fn create_tables(w: &WriteTransaction) -> Result<(), StoreError> {
    let op = "create tables";
    w.open_table(META).db(op)?;
    w.open_table(TENANTS).db(op)?;
    w.open_table(AGENTS).db(op)?;
    w.open_table(AGENT_NAMES).db(op)?;
    w.open_table(TENANT_AGENTS).db(op)?;
    w.open_table(BOARDING).db(op)?;
    w.open_table(REGISTRATIONS).db(op)?;
    w.open_table(OPERATOR_CLIENTS).db(op)?;
    w.open_table(PROFILES).db(op)?;
    w.open_table(SIGNING_KEYS).db(op)?;
    w.open_table(CERTIFICATES).db(op)?;
    w.open_table(CERT_FINGERPRINTS).db(op)?;
    w.open_table(REVOCATIONS).db(op)?;
    w.open_table(ROTATIONS).db(op)?;
    w.open_table(DATASOURCE_CONFIGS).db(op)?;
    w.open_table(AUDIT).db(op)?;
    Ok(())
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("required revision has been compacted"))
}

impl Cluster {
    /// Reads every row in pages pinned at the first page's revision, then the meta at that
    /// revision, into `w`: the row count and the revision.
    fn copy_at_one_revision(
        &self,
        w: &WriteTransaction,
        page_keys: i64,
        after_page: &mut dyn FnMut(i64),
    ) -> Result<(u64, i64), PinnedRead> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_PAGE_BYTES);
        let end = prefix_end(rows_prefix().as_bytes());
        let mut start = rows_prefix().into_bytes();
        let mut revision = 0;
        let mut rows = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(page_keys);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = match self.runtime.block_on(kv.get(start.clone(), Some(options))) {
                Ok(p) => p,
                Err(e) if is_compacted(&e) => return Err(PinnedRead::Compacted),
                Err(e) => return Err(self.error(format!("cannot read rows: {e}")).into()),
            };
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            for kv in page.kvs() {
                let (table, key) = layout::parse_row_key(kv.key())?;
                layout::write_row(w, table, &key, Some(kv.value()))?;
                rows += 1;
            }
            after_page(revision);
            match page.kvs().last() {
                Some(last) if page.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        let meta = match self.runtime.block_on(kv.get(
            meta_key(""),
            Some(GetOptions::new().with_prefix().with_revision(revision)),
        )) {
            Ok(m) => m,
            Err(e) if is_compacted(&e) => return Err(PinnedRead::Compacted),
            Err(e) => return Err(self.error(format!("cannot read the meta: {e}")).into()),
        };
        let find = |name: &str| {
            let key = meta_key(name);
            meta.kvs()
                .iter()
                .find(|kv| kv.key() == key.as_bytes())
                .map(|kv| kv.value().to_vec())
        };
        if find("import").is_some() {
            return Err(import_in_progress(self).into());
        }
        let key_id = find(META_KEY_ID).ok_or_else(|| {
            self.error("the cluster has no meta (no node or import ever claimed it)".into())
        })?;
        let version = codec::decode_u64(
            META_SCHEMA_VERSION,
            &find(META_SCHEMA_VERSION).unwrap_or_default(),
        )?;
        if version != u64::from(SCHEMA_VERSION) {
            return Err(self
                .error(format!(
                    "the cluster has schema version {version}, this release reads version \
                     {SCHEMA_VERSION}; back it up with the release that wrote it"
                ))
                .into());
        }
        let created_at =
            codec::decode_u64(META_CREATED_AT, &find(META_CREATED_AT).unwrap_or_default())?;
        let mut t = w.open_table(META).db("write meta")?;
        t.insert(META_SCHEMA_VERSION, &codec::encode_u64(version)[..])
            .db("write meta")?;
        t.insert(META_CREATED_AT, &codec::encode_u64(created_at)[..])
            .db("write meta")?;
        t.insert(META_KEY_ID, &key_id[..]).db("write meta")?;
        tracing::debug!(key_id = %hex(&key_id), rows, revision, "cluster backup read");
        Ok((rows, revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_keeps_nodes_from_starting_until_the_import_is_rerun() {
        let Some(etcd) = super::super::files::test_etcd::Etcd::start(
            "a_marker_keeps_nodes_from_starting_until_the_import_is_rerun",
        ) else {
            return;
        };
        let cluster = etcd.connect().unwrap();
        check_no_import(&cluster).unwrap();
        let mut client = cluster.client.clone();
        cluster
            .runtime
            .block_on(client.put(import_marker_key(), b"x".to_vec(), None))
            .unwrap();
        let err = check_no_import(&cluster).unwrap_err().to_string();
        assert!(err.contains("in progress or was interrupted"), "{err}");
        assert!(err.contains("rerun `latchkey cluster import`"), "{err}");
        assert!(err.contains(&etcd.endpoint), "{err}");
    }

    #[test]
    fn a_backup_compacted_under_it_starts_again_at_a_newer_revision() {
        use crate::store::KeyFileOptions;
        let Some(etcd) = super::super::files::test_etcd::Etcd::start(
            "a_backup_compacted_under_it_starts_again_at_a_newer_revision",
        ) else {
            return;
        };
        let cluster = etcd.connect().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key =
            MasterKey::create(&dir.path().join("master.key"), &KeyFileOptions::default()).unwrap();
        cluster
            .claim_meta(&key, &dir.path().join("master.key"), 1_700_000_000)
            .unwrap();
        let mut client = cluster.client.clone();
        let mut put = |id: &str| {
            let k = layout::row_key(Table::Agents, &layout::RowKey::Str(id.into()));
            cluster
                .runtime
                .block_on(client.put(k, id.as_bytes().to_vec(), None))
                .unwrap()
                .header()
                .map_or(0, |h| h.revision())
        };
        for id in ["a", "b", "c", "d", "e"] {
            put(id);
        }
        // After the first page of the first attempt, a write and a compaction past the pinned
        // revision: the next page fails with ErrCompacted and the backup starts again.
        let mut pinned = Vec::new();
        let mut compactor = cluster.client.clone();
        let out = dir.path().join("backup.redb");
        let report = backup_cluster_paged(&cluster, &out, 2, &mut |revision| {
            if pinned.is_empty() {
                let now = put("f");
                cluster
                    .runtime
                    .block_on(compactor.compact(now, None))
                    .unwrap();
            }
            pinned.push(revision);
        })
        .unwrap();
        assert_eq!(report.rows, 6);
        assert!(pinned[0] < report.revision, "{pinned:?} {report:?}");
        assert_eq!(*pinned.last().unwrap(), report.revision);

        let db = Database::open(&out).unwrap();
        let r = db.begin_read().unwrap();
        let mut ids = Vec::new();
        layout::for_each_row(&r, Table::Agents, |row| {
            ids.push(row.value);
            Ok(())
        })
        .unwrap();
        assert_eq!(ids.len(), 6);
        let meta = r.open_table(META).unwrap();
        assert_eq!(
            meta.get(META_KEY_ID).unwrap().unwrap().value(),
            &key.id()[..]
        );
        assert_eq!(
            codec::decode_u64(
                META_CREATED_AT,
                meta.get(META_CREATED_AT).unwrap().unwrap().value()
            )
            .unwrap(),
            1_700_000_000
        );
    }

    /// Runs rows of the given value sizes through a batch: each Txn's (rows, bytes, count).
    fn batches(sizes: &[usize]) -> Result<Vec<(usize, usize, u64)>, StoreError> {
        let mut seen = Vec::new();
        let mut batch = Batch::new(|rows: Vec<(String, Vec<u8>)>, count| {
            let bytes = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
            seen.push((rows.len(), bytes, count));
            Ok(())
        });
        for (i, size) in sizes.iter().enumerate() {
            batch.push(format!("k{i:05}"), vec![0; *size])?;
        }
        batch.flush()?;
        drop(batch);
        Ok(seen)
    }

    #[test]
    fn import_txns_stay_within_etcds_default_op_and_size_limits() {
        // Small rows: 127 per Txn, the 128th op being wseq.
        let small = batches(&[10; 300]).unwrap();
        assert_eq!(
            small.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![127, 127, 46]
        );
        assert_eq!(small.last().unwrap().2, 300);
        assert_eq!(small[0].2, 127);
        // Large rows: bounded by bytes, every Txn with its wseq put under the limit.
        let large = batches(&[200 * 1024; 12]).unwrap();
        assert!(large.len() >= 3, "{large:?}");
        for (rows, bytes, _) in &large {
            assert!(*rows < MAX_TXN_OPS, "{rows} rows and the wseq put");
            assert!(bytes + wseq_bytes() <= MAX_TXN_BYTES, "{bytes}");
        }
        assert_eq!(large.iter().map(|b| b.0).sum::<usize>(), 12);
        // A row that no Txn can carry is named, not split.
        let err = batches(&[10, MAX_TXN_BYTES]).unwrap_err().to_string();
        assert!(err.contains("row k00001"), "{err}");
        assert_eq!(batches(&[]).unwrap(), vec![]);
    }
}
