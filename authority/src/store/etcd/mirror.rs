//! The node's mirror of the cluster: a redb file with the store's schema
//! (`<data-dir>/cluster-mirror.redb`) that only the etcd watch writes, and the hot-index changes
//! each applied row implies.
//!
//! The mirror's own `meta` table holds, besides the schema version and master key id of every
//! store, the etcd revision it has applied (`etcd_revision`), the revision of the last write
//! transaction it has applied (`wseq_revision`, see `committer.rs`), and the etcd cluster id
//! it mirrors (`etcd_cluster_id`): a mirror of another cluster is reloaded, never merged.

use std::collections::BTreeSet;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase};

use super::super::StoreError;
use super::super::codec;
use super::super::error::DbResult;
use super::super::hot::{HotChange, HotIndex, Revocation};
use super::super::ops::{hot_key, unsealed_client};
use super::super::records::*;
use super::super::schema::META;
use super::super::seal::{MasterKey, SealContext};
use super::layout::{self, RowKey, Table};

/// File name of the mirror inside the data directory.
pub const MIRROR_FILE: &str = "cluster-mirror.redb";

const META_ETCD_REVISION: &str = "etcd_revision";
const META_WSEQ_REVISION: &str = "wseq_revision";
const META_CLUSTER_ID: &str = "etcd_cluster_id";

/// Where the mirror stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The etcd revision applied (0: nothing yet; the mirror must be loaded in full).
    pub revision: i64,
    /// The revision of the last write transaction applied (0: none).
    pub wseq: i64,
    /// The etcd cluster this mirror copies (0: unknown).
    pub cluster_id: u64,
}

/// What a batch of applied rows changed outside the hot index, for the application to follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Signing keys: the key ring must follow the hot index.
    pub keys: bool,
    /// Certificates or certificate revocations: the TLS trust store must be rebuilt.
    pub trust: bool,
    /// Token and key revocations written: the verify path's revocation set must add them
    /// (it forgets by time, so removals need nothing).
    pub revoked: Vec<RevocationRecord>,
}

impl Changed {
    /// Whether the application has anything to follow.
    pub fn any(&self) -> bool {
        self.keys || self.trust || !self.revoked.is_empty()
    }
}

impl Changed {
    fn note(&mut self, table: Table, key: &RowKey) {
        match (table, key) {
            (Table::SigningKeys, _) => self.keys = true,
            (Table::Certificates | Table::CertFingerprints, _) => self.trust = true,
            (Table::Revocations, RowKey::Pair(kind, _)) if kind == "cert" => self.trust = true,
            (Table::Revocations, RowKey::Pair(kind, _)) if kind == "key" => self.keys = true,
            _ => {}
        }
    }
}

/// One row change coming from etcd: `None` is a deletion.
pub type RowUpdate = (Table, RowKey, Option<Vec<u8>>);

/// The mirror database and what keeps the hot index in step with it.
#[allow(missing_debug_implementations)]
pub(crate) struct Mirror {
    db: Arc<Database>,
    key: Arc<MasterKey>,
    hot: Arc<HotIndex>,
    position: Position,
    last_durable: std::time::Instant,
}

impl Mirror {
    pub fn new(
        db: Arc<Database>,
        key: Arc<MasterKey>,
        hot: Arc<HotIndex>,
    ) -> Result<Self, StoreError> {
        let position = read_position(&db)?;
        Ok(Mirror {
            db,
            key,
            hot,
            position,
            last_durable: std::time::Instant::now(),
        })
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// Applies one watch batch: row changes, and the new revision (`wseq` when the batch holds
    /// a write transaction). Commits the mirror, then publishes the hot-index changes.
    pub fn apply(
        &mut self,
        rows: Vec<RowUpdate>,
        revision: i64,
        wseq: Option<i64>,
    ) -> Result<Changed, StoreError> {
        let mut txn = self.db.begin_write().db("mirror begin")?;
        // The mirror can always be rebuilt from the cluster, and its position commits with its
        // rows: a crash loses at most the last second of applied rows, consistently, and the
        // watch resumes from the position that survived.
        if self.last_durable.elapsed() < std::time::Duration::from_secs(1) {
            txn.set_durability(Durability::None)
                .map_err(|e| StoreError::Invalid(format!("mirror durability: {e}")))?;
        } else {
            self.last_durable = std::time::Instant::now();
        }
        let mut touched = BTreeSet::new();
        for (table, key, value) in &rows {
            layout::write_row(&txn, *table, key, value.as_deref())?;
            touched.insert((*table, key.clone()));
        }
        let mut position = self.position;
        position.revision = position.revision.max(revision);
        if let Some(w) = wseq {
            position.wseq = position.wseq.max(w);
        }
        write_position(&txn, position)?;
        txn.commit().db("mirror commit")?;
        self.position = position;
        self.publish(&touched)
    }

    /// Replaces the whole mirror with `rows` (all of them, read at one `revision`).
    pub fn replace_all(
        &mut self,
        rows: impl IntoIterator<Item = (Table, RowKey, Vec<u8>)>,
        position: Position,
    ) -> Result<Changed, StoreError> {
        let mut touched = BTreeSet::new();
        {
            let r = self.db.begin_read().db("mirror begin read")?;
            for table in HOT_TABLES {
                layout::for_each_row(&r, table, |row| {
                    touched.insert((row.table, row.key));
                    Ok(())
                })?;
            }
        }
        let mut txn = self.db.begin_write().db("mirror begin")?;
        txn.set_two_phase_commit(true);
        for table in Table::ALL {
            layout::clear_table(&txn, table)?;
        }
        for (table, key, value) in rows {
            layout::write_row(&txn, table, &key, Some(&value))?;
            touched.insert((table, key));
        }
        write_position(&txn, position)?;
        txn.commit().db("mirror commit")?;
        self.position = position;
        self.last_durable = std::time::Instant::now();
        let mut changed = self.publish(&touched)?;
        changed.keys = true;
        changed.trust = true;
        Ok(changed)
    }

    /// Derives the hot-index entry of every touched row from the committed mirror, the way
    /// `snapshot::load_hot` does at open.
    fn publish(&self, touched: &BTreeSet<(Table, RowKey)>) -> Result<Changed, StoreError> {
        let r = self.db.begin_read().db("mirror begin read")?;
        let mut changed = Changed::default();
        let mut clients = BTreeSet::new();
        let get = |table, key: &RowKey| layout::read_row(&r, table, key);
        for (table, key) in touched {
            changed.note(*table, key);
            match (table, key) {
                (Table::Agents, RowKey::Str(id)) => {
                    let rec = match get(Table::Agents, key)? {
                        Some(v) => Some(codec::decode::<AgentRecord>(&v)?),
                        None => None,
                    };
                    self.hot.apply(HotChange::AgentSuspension(
                        id.clone(),
                        rec.as_ref().and_then(|a| a.suspended_at),
                    ));
                    self.hot
                        .apply(HotChange::Agent(id.clone(), rec.map(Arc::new)));
                }
                (Table::Registrations | Table::Rotations, RowKey::Str(id)) => {
                    clients.insert(id.clone());
                }
                (Table::OperatorClients, RowKey::Str(id)) => {
                    let rec = match get(Table::OperatorClients, key)? {
                        Some(v) => Some(Arc::new(codec::decode::<OperatorClientRecord>(&v)?)),
                        None => None,
                    };
                    self.hot.apply(HotChange::OperatorClient(id.clone(), rec));
                }
                (Table::SigningKeys, RowKey::Str(kid)) => {
                    let entry = match get(Table::SigningKeys, key)? {
                        Some(v) => {
                            let rec = codec::decode::<SigningKeyRecord>(&v)?;
                            let private = self.key.unseal(
                                SealContext {
                                    table: "signing_keys",
                                    key: &rec.kid,
                                },
                                &rec.sealed_private_key,
                            )?;
                            Some(Arc::new(hot_key(&rec, private)))
                        }
                        None => None,
                    };
                    self.hot.apply(HotChange::Key(kid.clone(), entry));
                }
                (Table::Revocations, RowKey::Pair(kind, id)) => {
                    let Some(kind) = RevocationKind::parse(kind) else {
                        tracing::warn!(kind = %kind, "revocation of an unknown kind ignored");
                        continue;
                    };
                    let entry = match get(Table::Revocations, key)? {
                        Some(v) => {
                            let rec = codec::decode::<RevocationRecord>(&v)?;
                            let entry = Revocation::from(&rec);
                            if matches!(rec.kind, RevocationKind::Token | RevocationKind::Key) {
                                changed.revoked.push(rec);
                            }
                            Some(entry)
                        }
                        None => None,
                    };
                    self.hot
                        .apply(HotChange::Revocation(kind, id.clone(), entry));
                }
                _ => {}
            }
        }
        for id in clients {
            let key = RowKey::Str(id.clone());
            let entry = match get(Table::Registrations, &key)? {
                Some(v) => {
                    let rec = codec::decode::<RegistrationRecord>(&v)?;
                    let rotation = match get(Table::Rotations, &key)? {
                        Some(v) => Some(codec::decode::<RotationRecord>(&v)?),
                        None => None,
                    };
                    Some(Arc::new(unsealed_client(
                        &self.key,
                        &rec,
                        rotation.as_ref(),
                    )?))
                }
                None => None,
            };
            self.hot.apply(HotChange::Client(id, entry));
        }
        self.hot.bump();
        Ok(changed)
    }
}

/// The tables the hot index is derived from.
const HOT_TABLES: [Table; 6] = [
    Table::Agents,
    Table::Registrations,
    Table::Rotations,
    Table::OperatorClients,
    Table::SigningKeys,
    Table::Revocations,
];

fn read_position(db: &Database) -> Result<Position, StoreError> {
    let r = db.begin_read().db("mirror begin read")?;
    let meta = r.open_table(META).db("mirror meta")?;
    let get = |name: &'static str| -> Result<u64, StoreError> {
        match meta.get(name).db("mirror meta")? {
            Some(v) => codec::decode_u64(name, v.value()),
            None => Ok(0),
        }
    };
    Ok(Position {
        revision: get(META_ETCD_REVISION)? as i64,
        wseq: get(META_WSEQ_REVISION)? as i64,
        cluster_id: get(META_CLUSTER_ID)?,
    })
}

fn write_position(txn: &redb::WriteTransaction, p: Position) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).db("mirror meta")?;
    for (name, v) in [
        (META_ETCD_REVISION, p.revision as u64),
        (META_WSEQ_REVISION, p.wseq as u64),
        (META_CLUSTER_ID, p.cluster_id),
    ] {
        meta.insert(name, &codec::encode_u64(v)[..])
            .db("mirror meta")?;
    }
    Ok(())
}

/// Reads the mirror's position without opening it for writing (tests, status).
#[allow(dead_code)]
pub fn position_of(db: &Database) -> Result<Position, StoreError> {
    read_position(db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::seal::KeyFileOptions;

    fn mirror() -> (tempfile::TempDir, Mirror) {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(
            crate::store::open_master_key(dir.path(), &KeyFileOptions::default()).unwrap(),
        );
        let db = Arc::new(redb::Database::create(dir.path().join(MIRROR_FILE)).unwrap());
        crate::store::maintenance::init_schema(&db, &key).unwrap();
        let hot = Arc::new(HotIndex::default());
        let m = Mirror::new(db, key, hot).unwrap();
        (dir, m)
    }

    fn revocation(kind: RevocationKind, id: &str) -> Vec<u8> {
        codec::encode(&RevocationRecord {
            kind,
            id: id.into(),
            revoked_at: 10,
            forget_after: 20,
            by: "x".into(),
            reason: "r".into(),
        })
        .unwrap()
    }

    #[test]
    fn applied_rows_reach_the_hot_index_and_the_position_moves() {
        let (_d, mut m) = mirror();
        assert_eq!(m.position(), Position::default());
        let key = RowKey::Pair("jti".into(), "t1".into());
        let changed = m
            .apply(
                vec![(
                    Table::Revocations,
                    key.clone(),
                    Some(revocation(RevocationKind::Token, "t1")),
                )],
                7,
                Some(7),
            )
            .unwrap();
        assert!(!changed.keys && !changed.trust);
        assert_eq!(changed.revoked.len(), 1, "the verify path must learn of it");
        assert!(m.hot.revocation(RevocationKind::Token, "t1").is_some());
        assert_eq!(m.position().revision, 7);
        assert_eq!(m.position().wseq, 7);
        m.apply(vec![(Table::Revocations, key, None)], 9, None)
            .unwrap();
        assert!(m.hot.revocation(RevocationKind::Token, "t1").is_none());
        assert_eq!((m.position().revision, m.position().wseq), (9, 7));
        assert_eq!(read_position(&m.db).unwrap(), m.position());
    }

    #[test]
    fn a_full_reload_drops_what_is_gone_from_the_hot_index() {
        let (_d, mut m) = mirror();
        m.apply(
            vec![(
                Table::Revocations,
                RowKey::Pair("cert".into(), "old".into()),
                Some(revocation(RevocationKind::Certificate, "old")),
            )],
            3,
            Some(3),
        )
        .unwrap();
        let changed = m
            .replace_all(
                vec![(
                    Table::Revocations,
                    RowKey::Pair("jti".into(), "new".into()),
                    revocation(RevocationKind::Token, "new"),
                )],
                Position {
                    revision: 50,
                    wseq: 40,
                    cluster_id: 1,
                },
            )
            .unwrap();
        assert!(changed.trust && changed.keys);
        assert!(
            m.hot
                .revocation(RevocationKind::Certificate, "old")
                .is_none()
        );
        assert!(m.hot.revocation(RevocationKind::Token, "new").is_some());
        assert_eq!(m.position().revision, 50);
    }
}
