//! Where each row of the store lives in etcd, and how a row moves between etcd and a redb file
//! with the store's schema (the node's mirror, a backup, an imported data directory).
//!
//! `/lk/<cluster>/t/<table>/<key>` holds the row's value bytes unchanged (the records of
//! `DESIGN.md`, secrets sealed exactly as in redb). Key components are escaped (`%` → `%25`,
//! `/` → `%2F`) so a tuple key's parts stay apart; audit sequence numbers are 20 decimal digits
//! so they sort. `/lk/<cluster>/meta/<name>` holds the cluster's meta, and `meta/wseq` is the
//! key every write transaction rewrites (see `committer.rs`).

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::super::StoreError;
use super::super::error::DbResult;
use super::super::schema::*;

/// Every key this engine writes starts with it.
pub const KEY_PREFIX: &str = "/lk/";

/// The cluster name in every key, until a setting chooses another (one etcd cluster may then
/// hold several authority clusters).
pub const CLUSTER_NAME: &str = "default";

/// The etcd prefix of the whole cluster: `/lk/<cluster>/`.
pub fn cluster_prefix() -> String {
    format!("{KEY_PREFIX}{CLUSTER_NAME}/")
}

/// The prefix of every table row: `/lk/<cluster>/t/`.
pub fn rows_prefix() -> String {
    format!("{}t/", cluster_prefix())
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

/// The etcd key of the cluster meta entry `name`.
pub fn meta_key(name: &str) -> String {
    format!("{}meta/{name}", cluster_prefix())
}

/// The key every write transaction compares and rewrites: all writes are ordered through it.
pub fn wseq_key() -> String {
    meta_key("wseq")
}

/// A replicated table of the store (every table but `meta`, which is per copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Tenants,
    Agents,
    AgentNames,
    TenantAgents,
    Boarding,
    Registrations,
    OperatorClients,
    Profiles,
    SigningKeys,
    Certificates,
    CertFingerprints,
    Revocations,
    Rotations,
    DataSourceConfigs,
    Audit,
}

impl Table {
    pub const ALL: [Table; 15] = [
        Table::Tenants,
        Table::Agents,
        Table::AgentNames,
        Table::TenantAgents,
        Table::Boarding,
        Table::Registrations,
        Table::OperatorClients,
        Table::Profiles,
        Table::SigningKeys,
        Table::Certificates,
        Table::CertFingerprints,
        Table::Revocations,
        Table::Rotations,
        Table::DataSourceConfigs,
        Table::Audit,
    ];

    /// The redb table name, also the etcd path segment.
    pub fn name(self) -> &'static str {
        match self {
            Table::Tenants => "tenants",
            Table::Agents => "agents",
            Table::AgentNames => "agent_names",
            Table::TenantAgents => "tenant_agents",
            Table::Boarding => "boarding",
            Table::Registrations => "registrations",
            Table::OperatorClients => "operator_clients",
            Table::Profiles => "profiles",
            Table::SigningKeys => "signing_keys",
            Table::Certificates => "certificates",
            Table::CertFingerprints => "cert_fingerprints",
            Table::Revocations => "revocations",
            Table::Rotations => "rotations",
            Table::DataSourceConfigs => "datasource_configs",
            Table::Audit => "audit",
        }
    }

    fn from_name(s: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == s)
    }

    fn key_shape(self) -> Shape {
        match self {
            Table::AgentNames | Table::TenantAgents | Table::Revocations => Shape::Pair,
            Table::Audit => Shape::Seq,
            _ => Shape::Str,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Str,
    Pair,
    Seq,
}

/// A row's key in its table's key type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKey {
    Str(String),
    Pair(String, String),
    Seq(u64),
}

/// One row: table, key, value bytes (for `agent_names` and `cert_fingerprints` the UTF-8 id or
/// alias, for `tenant_agents` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub table: Table,
    pub key: RowKey,
    pub value: Vec<u8>,
}

/// One row-level change an op makes, in the order it makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowChange {
    Put(Table, RowKey, Vec<u8>),
    Del(Table, RowKey),
    /// Audit rows `first..=last` (retention): one range delete, whatever its length.
    DelAuditRange(u64, u64),
}

/// The etcd key of `key` in `table`.
pub fn row_key(table: Table, key: &RowKey) -> String {
    let mut out = format!("{}{}/", rows_prefix(), table.name());
    match key {
        RowKey::Str(k) => escape_into(&mut out, k),
        RowKey::Pair(a, b) => {
            escape_into(&mut out, a);
            out.push('/');
            escape_into(&mut out, b);
        }
        RowKey::Seq(n) => out.push_str(&format!("{n:020}")),
    }
    out
}

/// The table and key an etcd key under [`rows_prefix`] names; `Err` for anything else (a key
/// this release did not write: a newer release's table, or a foreign writer).
pub fn parse_row_key(etcd_key: &[u8]) -> Result<(Table, RowKey), StoreError> {
    let bad = |why: &str| StoreError::Corrupt {
        table: "etcd",
        reason: format!(
            "key {:?}: {why}",
            String::from_utf8_lossy(&etcd_key[..etcd_key.len().min(120)])
        ),
    };
    let s = std::str::from_utf8(etcd_key).map_err(|_| bad("not UTF-8"))?;
    let rest = s
        .strip_prefix(rows_prefix().as_str())
        .ok_or_else(|| bad("not a table row"))?;
    let (name, key) = rest.split_once('/').ok_or_else(|| bad("no table"))?;
    let table = Table::from_name(name).ok_or_else(|| bad("unknown table"))?;
    let key = match table.key_shape() {
        Shape::Str => RowKey::Str(unescape(key).ok_or_else(|| bad("bad escape"))?),
        Shape::Pair => {
            let (a, b) = key
                .split_once('/')
                .ok_or_else(|| bad("expected two parts"))?;
            RowKey::Pair(
                unescape(a).ok_or_else(|| bad("bad escape"))?,
                unescape(b).ok_or_else(|| bad("bad escape"))?,
            )
        }
        Shape::Seq => {
            if key.len() != 20 || !key.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("expected 20 digits"));
            }
            RowKey::Seq(key.parse().map_err(|_| bad("sequence out of range"))?)
        }
    };
    Ok((table, key))
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("25") => out.push('%'),
            Some("2F") => out.push('/'),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    if rest.contains('/') {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

type Bytes = &'static [u8];
type Str = &'static str;

fn str_def(t: Table) -> Option<TableDefinition<'static, Str, Bytes>> {
    Some(match t {
        Table::Tenants => TENANTS,
        Table::Agents => AGENTS,
        Table::Boarding => BOARDING,
        Table::Registrations => REGISTRATIONS,
        Table::OperatorClients => OPERATOR_CLIENTS,
        Table::Profiles => PROFILES,
        Table::SigningKeys => SIGNING_KEYS,
        Table::Certificates => CERTIFICATES,
        Table::Rotations => ROTATIONS,
        Table::DataSourceConfigs => DATASOURCE_CONFIGS,
        _ => return None,
    })
}

fn utf8(table: Table, v: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(v).map_err(|_| StoreError::Corrupt {
        table: table.name(),
        reason: "a value that must be UTF-8 is not".into(),
    })
}

fn wrong_key(table: Table, key: &RowKey) -> StoreError {
    StoreError::Corrupt {
        table: table.name(),
        reason: format!("key {key:?} does not have the table's key type"),
    }
}

/// Writes (`Some`) or removes (`None`) one row in a redb write transaction.
pub fn write_row(
    txn: &WriteTransaction,
    table: Table,
    key: &RowKey,
    value: Option<&[u8]>,
) -> Result<(), StoreError> {
    let op = "mirror write";
    match (table, key) {
        (Table::AgentNames, RowKey::Pair(a, b)) => {
            let mut t = txn.open_table(AGENT_NAMES).db(op)?;
            match value {
                Some(v) => drop(t.insert((a.as_str(), b.as_str()), utf8(table, v)?).db(op)?),
                None => drop(t.remove((a.as_str(), b.as_str())).db(op)?),
            }
        }
        (Table::TenantAgents, RowKey::Pair(a, b)) => {
            let mut t = txn.open_table(TENANT_AGENTS).db(op)?;
            match value {
                Some(_) => drop(t.insert((a.as_str(), b.as_str()), ()).db(op)?),
                None => drop(t.remove((a.as_str(), b.as_str())).db(op)?),
            }
        }
        (Table::Revocations, RowKey::Pair(a, b)) => {
            let mut t = txn.open_table(REVOCATIONS).db(op)?;
            match value {
                Some(v) => drop(t.insert((a.as_str(), b.as_str()), v).db(op)?),
                None => drop(t.remove((a.as_str(), b.as_str())).db(op)?),
            }
        }
        (Table::CertFingerprints, RowKey::Str(k)) => {
            let mut t = txn.open_table(CERT_FINGERPRINTS).db(op)?;
            match value {
                Some(v) => drop(t.insert(k.as_str(), utf8(table, v)?).db(op)?),
                None => drop(t.remove(k.as_str()).db(op)?),
            }
        }
        (Table::Audit, RowKey::Seq(n)) => {
            let mut t = txn.open_table(AUDIT).db(op)?;
            match value {
                Some(v) => drop(t.insert(*n, v).db(op)?),
                None => drop(t.remove(*n).db(op)?),
            }
        }
        (t, RowKey::Str(k)) => {
            let def = str_def(t).ok_or_else(|| wrong_key(t, key))?;
            let mut tab = txn.open_table(def).db(op)?;
            match value {
                Some(v) => drop(tab.insert(k.as_str(), v).db(op)?),
                None => drop(tab.remove(k.as_str()).db(op)?),
            }
        }
        (t, _) => return Err(wrong_key(t, key)),
    }
    Ok(())
}

/// Empties `table` (a full reload replaces every row).
pub fn clear_table(txn: &WriteTransaction, table: Table) -> Result<(), StoreError> {
    let op = "mirror clear";
    macro_rules! clear {
        ($def:expr) => {{
            txn.delete_table($def).db(op)?;
            txn.open_table($def).db(op)?;
        }};
    }
    match table {
        Table::AgentNames => clear!(AGENT_NAMES),
        Table::TenantAgents => clear!(TENANT_AGENTS),
        Table::Revocations => clear!(REVOCATIONS),
        Table::CertFingerprints => clear!(CERT_FINGERPRINTS),
        Table::Audit => clear!(AUDIT),
        t => clear!(str_def(t).expect("every other table is string-keyed")),
    }
    Ok(())
}

/// Reads one row's value from a redb transaction (read or write).
pub fn read_row<T: ReadTables>(
    txn: &T,
    table: Table,
    key: &RowKey,
) -> Result<Option<Vec<u8>>, StoreError> {
    txn.read_row(table, key)
}

/// Calls `f` with every row of `table`, in key order. A table missing from an older file is
/// empty.
pub fn for_each_row(
    txn: &ReadTransaction,
    table: Table,
    mut f: impl FnMut(Row) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let op = "read rows";
    macro_rules! scan {
        ($def:expr, |$k:ident, $v:ident| $key:expr, $val:expr) => {{
            let t = match txn.open_table($def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(StoreError::db(op)(e.into())),
            };
            for entry in t.iter().db(op)? {
                let (k, v) = entry.db(op)?;
                let ($k, $v) = (k.value(), v.value());
                f(Row {
                    table,
                    key: $key,
                    value: $val,
                })?;
            }
        }};
    }
    match table {
        Table::AgentNames => scan!(
            AGENT_NAMES,
            |k, v| RowKey::Pair(k.0.to_owned(), k.1.to_owned()),
            v.as_bytes().to_vec()
        ),
        Table::TenantAgents => scan!(
            TENANT_AGENTS,
            |k, _v| RowKey::Pair(k.0.to_owned(), k.1.to_owned()),
            Vec::new()
        ),
        Table::Revocations => scan!(
            REVOCATIONS,
            |k, v| RowKey::Pair(k.0.to_owned(), k.1.to_owned()),
            v.to_vec()
        ),
        Table::CertFingerprints => scan!(
            CERT_FINGERPRINTS,
            |k, v| RowKey::Str(k.to_owned()),
            v.as_bytes().to_vec()
        ),
        Table::Audit => scan!(AUDIT, |k, v| RowKey::Seq(k), v.to_vec()),
        t => {
            let def = str_def(t).expect("every other table is string-keyed");
            scan!(def, |k, v| RowKey::Str(k.to_owned()), v.to_vec())
        }
    }
    Ok(())
}

/// Point reads of rows, for both kinds of redb transaction.
pub trait ReadTables {
    fn read_row(&self, table: Table, key: &RowKey) -> Result<Option<Vec<u8>>, StoreError>;
}

macro_rules! impl_read_tables {
    ($txn:ty) => {
        impl ReadTables for $txn {
            fn read_row(&self, table: Table, key: &RowKey) -> Result<Option<Vec<u8>>, StoreError> {
                let op = "read row";
                macro_rules! open {
                    ($def:expr) => {
                        match self.open_table($def) {
                            Ok(t) => t,
                            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                            Err(e) => return Err(StoreError::db(op)(e.into())),
                        }
                    };
                }
                Ok(match (table, key) {
                    (Table::AgentNames, RowKey::Pair(a, b)) => open!(AGENT_NAMES)
                        .get((a.as_str(), b.as_str()))
                        .db(op)?
                        .map(|v| v.value().as_bytes().to_vec()),
                    (Table::TenantAgents, RowKey::Pair(a, b)) => open!(TENANT_AGENTS)
                        .get((a.as_str(), b.as_str()))
                        .db(op)?
                        .map(|_| Vec::new()),
                    (Table::Revocations, RowKey::Pair(a, b)) => open!(REVOCATIONS)
                        .get((a.as_str(), b.as_str()))
                        .db(op)?
                        .map(|v| v.value().to_vec()),
                    (Table::CertFingerprints, RowKey::Str(k)) => open!(CERT_FINGERPRINTS)
                        .get(k.as_str())
                        .db(op)?
                        .map(|v| v.value().as_bytes().to_vec()),
                    (Table::Audit, RowKey::Seq(n)) => {
                        open!(AUDIT).get(*n).db(op)?.map(|v| v.value().to_vec())
                    }
                    (t, RowKey::Str(k)) => {
                        let def = str_def(t).ok_or_else(|| wrong_key(t, key))?;
                        open!(def)
                            .get(k.as_str())
                            .db(op)?
                            .map(|v| v.value().to_vec())
                    }
                    (t, _) => return Err(wrong_key(t, key)),
                })
            }
        }
    };
}

impl_read_tables!(ReadTransaction);
impl_read_tables!(WriteTransaction);

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase as _;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/lk/default/t/"), b"/lk/default/t0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        let end = prefix_end(rows_prefix().as_bytes());
        let last = row_key(Table::Audit, &RowKey::Seq(u64::MAX));
        assert!(last.as_bytes() < &end[..]);
        assert!(wseq_key().as_bytes() < rows_prefix().as_bytes());
    }

    #[test]
    fn row_keys_round_trip_and_keep_tuple_parts_apart() {
        for (table, key) in [
            (Table::Agents, RowKey::Str("a/b%c".into())),
            (Table::Agents, RowKey::Str("plain-id".into())),
            (Table::AgentNames, RowKey::Pair("t/1".into(), "n%2F".into())),
            (Table::Revocations, RowKey::Pair("jti".into(), "".into())),
            (Table::Audit, RowKey::Seq(u64::MAX)),
            (Table::Audit, RowKey::Seq(7)),
        ] {
            let k = row_key(table, &key);
            assert!(k.starts_with("/lk/default/t/"), "{k}");
            assert_eq!(parse_row_key(k.as_bytes()).unwrap(), (table, key));
        }
        assert_eq!(
            row_key(Table::Audit, &RowKey::Seq(7)),
            "/lk/default/t/audit/00000000000000000007"
        );
        // Sequence keys sort as numbers.
        assert!(row_key(Table::Audit, &RowKey::Seq(9)) < row_key(Table::Audit, &RowKey::Seq(10)));
    }

    #[test]
    fn foreign_keys_are_refused_not_guessed() {
        for bad in [
            "/lk/default/meta/wseq",
            "/lk/default/t/nosuch/x",
            "/lk/default/t/agents/a/b",
            "/lk/default/t/agents/%zz",
            "/lk/default/t/agent_names/only-one",
            "/lk/default/t/audit/12",
            "/lk/other/t/agents/x",
        ] {
            assert!(parse_row_key(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse_row_key(b"/lk/default/t/agents/\xff").is_err());
    }

    #[test]
    fn rows_write_read_and_scan_in_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("m.redb")).unwrap();
        let rows: Vec<(Table, RowKey, Vec<u8>)> = Table::ALL
            .into_iter()
            .map(|t| {
                let key = match t.key_shape() {
                    Shape::Str => RowKey::Str(format!("{}-k", t.name())),
                    Shape::Pair => RowKey::Pair("ten".into(), format!("{}-k", t.name())),
                    Shape::Seq => RowKey::Seq(3),
                };
                let value = if t == Table::TenantAgents {
                    Vec::new()
                } else {
                    format!("{}-v", t.name()).into_bytes()
                };
                (t, key, value)
            })
            .collect();
        let w = db.begin_write().unwrap();
        for (t, k, v) in &rows {
            write_row(&w, *t, k, Some(v)).unwrap();
            assert_eq!(read_row(&w, *t, k).unwrap().as_deref(), Some(&v[..]));
        }
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        for (t, k, v) in &rows {
            let mut seen = Vec::new();
            for_each_row(&r, *t, |row| {
                seen.push(row);
                Ok(())
            })
            .unwrap();
            assert_eq!(
                seen,
                vec![Row {
                    table: *t,
                    key: k.clone(),
                    value: v.clone()
                }]
            );
        }
        drop(r);
        let w = db.begin_write().unwrap();
        for (t, k, _) in &rows {
            write_row(&w, *t, k, None).unwrap();
            assert_eq!(read_row(&w, *t, k).unwrap(), None);
        }
        assert!(write_row(&w, Table::Agents, &RowKey::Seq(1), Some(b"x")).is_err());
        w.commit().unwrap();
    }
}
