//! Files every node of a cluster shares: the local CA (`ca.pem` and `ca.key.sealed`, see
//! `tls::CertFiles`), so that every node serves under one CA and a client trusts one `ca.pem`.
//!
//! They live at `/lk/<cluster>/files/<name>` with the bytes of the data directory's files. The
//! CA's private key is the sealed file itself: it is sealed under the master key, which every
//! node of the cluster shares (`Cluster::claim_meta`), and its seal binds only its purpose,
//! not its path, so the same bytes open on every node.
//!
//! A node starting on the cluster calls [`sync_ca`] before its server certificate is made:
//!
//! - the cluster has a CA and the data directory none: the cluster's is written into it;
//! - both have the same CA: nothing to do;
//! - the data directory has another CA: refused, naming the files to remove to take the
//!   cluster's (a node never silently replaces a CA its clients may trust);
//! - only the data directory has one: it is published (create-only). A node that loses that
//!   race to another takes the winner's CA only if its own was not used yet, that is when the
//!   data directory holds no server certificate; otherwise it is refused as above;
//! - neither has one: [`CaSync::Absent`]. The caller creates one (`tls::ensure_certificates`)
//!   and calls [`publish_ca`]; a lost race gives the winner's CA, which the caller installs
//!   with [`install_ca`] (it removes the server certificate issued by the lost CA) before
//!   making its server certificate again.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::super::StoreError;
use super::Cluster;
use super::layout::cluster_prefix;

/// File names, in the data directory and under `files/` in etcd (`tls::CertFiles::in_dir`).
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key.sealed";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key.sealed";

/// What a sealed file starts with (`MasterKey::seal_file`).
const SEALED_MAGIC: &[u8] = b"LKSF";

/// Largest shared file accepted from etcd: a CA certificate or a sealed P-256 key is a few
/// hundred bytes.
const MAX_FILE_BYTES: usize = 64 * 1024;

/// The etcd key of the shared file `name`: `/lk/<cluster>/files/<name>`.
pub fn file_key(name: &str) -> String {
    format!("{}files/{name}", cluster_prefix())
}

/// A CA as the data directory holds it: the certificate's PEM and the sealed private key.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedCa {
    pub cert_pem: Vec<u8>,
    pub sealed_key: Vec<u8>,
}

impl std::fmt::Debug for SharedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCa")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// What [`sync_ca`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaSync {
    /// Neither the cluster nor the data directory has a CA: create one, then [`publish_ca`].
    Absent,
    /// The data directory's CA is the cluster's.
    Same,
    /// The cluster's CA was written into the data directory.
    Installed,
    /// The data directory's CA is now the cluster's.
    Published,
}

/// What [`publish_ca`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// The data directory's CA is now the cluster's.
    Published,
    /// The cluster already had this CA.
    Same,
    /// Another node published first: its CA, for [`install_ca`].
    Lost(SharedCa),
}

/// Makes the data directory's CA and the cluster's one (see the module documentation).
pub fn sync_ca(cluster: &Cluster, data_dir: &Path) -> Result<CaSync, StoreError> {
    let local = LocalCa::read(data_dir)?;
    match (cluster.read_ca()?, &local.cert_pem) {
        (None, None) => Ok(CaSync::Absent),
        (Some(remote), None) => {
            install_ca(data_dir, &remote)?;
            Ok(CaSync::Installed)
        }
        (Some(remote), Some(pem)) if same_cert(&remote.cert_pem, pem) => {
            if local.sealed_key.is_none() {
                write_replace(&data_dir.join(CA_KEY), &remote.sealed_key, 0o600)?;
            }
            Ok(CaSync::Same)
        }
        (Some(_), Some(_)) => Err(another_ca(cluster, data_dir, "")),
        (None, Some(_)) => match publish_ca(cluster, data_dir)? {
            Publish::Published => Ok(CaSync::Published),
            Publish::Same => Ok(CaSync::Same),
            Publish::Lost(winner) if !data_dir.join(SERVER_CERT).exists() => {
                install_ca(data_dir, &winner)?;
                Ok(CaSync::Installed)
            }
            Publish::Lost(_) => Err(another_ca(
                cluster,
                data_dir,
                " (another node published its CA first)",
            )),
        },
    }
}

/// Publishes the data directory's CA as the cluster's, create-only: if the cluster has one
/// already, that one stays and is returned (unless it is this one).
pub fn publish_ca(cluster: &Cluster, data_dir: &Path) -> Result<Publish, StoreError> {
    let local = LocalCa::read(data_dir)?;
    let (Some(cert_pem), Some(sealed_key)) = (local.cert_pem, local.sealed_key) else {
        return Err(StoreError::Invalid(format!(
            "{}: no CA to publish (both {CA_CERT} and {CA_KEY} are needed)",
            data_dir.display()
        )));
    };
    let ours = SharedCa {
        cert_pem,
        sealed_key,
    };
    match cluster.create_ca(&ours)? {
        None => Ok(Publish::Published),
        Some(winner) if same_cert(&winner.cert_pem, &ours.cert_pem) => Ok(Publish::Same),
        Some(winner) => Ok(Publish::Lost(winner)),
    }
}

/// Writes `ca` into the data directory as its CA (`ca.pem` 0644, `ca.key.sealed` 0600), and
/// removes a server certificate (and its key) that another CA issued, so the next
/// `tls::ensure_certificates` issues one under `ca`.
pub fn install_ca(data_dir: &Path, ca: &SharedCa) -> Result<(), StoreError> {
    let server_cert = data_dir.join(SERVER_CERT);
    if let Ok(chain) = std::fs::read(&server_cert)
        && !issued_by(&chain, &ca.cert_pem)
    {
        remove_if_present(&server_cert)?;
        remove_if_present(&data_dir.join(SERVER_KEY))?;
    }
    write_replace(&data_dir.join(CA_KEY), &ca.sealed_key, 0o600)?;
    write_replace(&data_dir.join(CA_CERT), &ca.cert_pem, 0o644)?;
    Ok(())
}

/// The CA files of a data directory, each if present.
struct LocalCa {
    cert_pem: Option<Vec<u8>>,
    sealed_key: Option<Vec<u8>>,
}

impl LocalCa {
    fn read(dir: &Path) -> Result<Self, StoreError> {
        Ok(LocalCa {
            cert_pem: read_if_present(&dir.join(CA_CERT))?,
            sealed_key: read_if_present(&dir.join(CA_KEY))?,
        })
    }
}

fn another_ca(cluster: &Cluster, dir: &Path, why: &str) -> StoreError {
    let p = |name: &str| dir.join(name).display().to_string();
    cluster.error(format!(
        "{} is not the cluster's CA{why}: every node of a cluster serves under one CA. To take \
         the cluster's, stop this node and remove {}, {}, {} and {} (the server certificate is \
         then issued again under the cluster's CA); clients that trusted the old {CA_CERT} must \
         then trust the cluster's",
        p(CA_CERT),
        p(CA_CERT),
        p(CA_KEY),
        p(SERVER_CERT),
        p(SERVER_KEY)
    ))
}

impl Cluster {
    /// The cluster's CA, if it has one. Both files are read at one revision.
    pub fn read_ca(&self) -> Result<Option<SharedCa>, StoreError> {
        let mut client = self.client.clone();
        let response = self
            .runtime
            .block_on(client.get(
                file_key("ca."),
                Some(GetOptions::new().with_prefix().with_limit(8)),
            ))
            .map_err(|e| self.error(format!("cannot read the cluster's CA: {e}")))?;
        self.shared_ca(response.kvs())
    }

    /// Stores `ca` as the cluster's CA unless it has one: `None` when stored, else the CA the
    /// cluster has.
    pub fn create_ca(&self, ca: &SharedCa) -> Result<Option<SharedCa>, StoreError> {
        check_ca(ca).map_err(|why| StoreError::Invalid(format!("the CA to publish: {why}")))?;
        let (cert, key) = (file_key(CA_CERT), file_key(CA_KEY));
        let txn = Txn::new()
            .when([
                Compare::create_revision(cert.clone(), CompareOp::Equal, 0),
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(cert, ca.cert_pem.clone(), None),
                TxnOp::put(key, ca.sealed_key.clone(), None),
            ])
            .or_else([TxnOp::get(
                file_key("ca."),
                Some(GetOptions::new().with_prefix().with_limit(8)),
            )]);
        let mut client = self.client.clone();
        let response = self
            .runtime
            .block_on(client.txn(txn))
            .map_err(|e| self.error(format!("cannot publish the CA: {e}")))?;
        if response.succeeded() {
            return Ok(None);
        }
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                return self.shared_ca(get.kvs())?.map(Some).ok_or_else(|| {
                    self.error("the cluster's CA vanished while publishing".into())
                });
            }
        }
        Err(self.error("publishing the CA: no answer to its read".into()))
    }

    /// The CA in the key-values of a `files/ca.` read: both files or neither.
    fn shared_ca(&self, kvs: &[etcd_client::KeyValue]) -> Result<Option<SharedCa>, StoreError> {
        let find = |name: &str| {
            let key = file_key(name);
            kvs.iter()
                .find(|kv| kv.key() == key.as_bytes())
                .map(|kv| kv.value().to_vec())
        };
        let ca = match (find(CA_CERT), find(CA_KEY)) {
            (None, None) => return Ok(None),
            (Some(cert_pem), Some(sealed_key)) => SharedCa {
                cert_pem,
                sealed_key,
            },
            _ => {
                return Err(self.error(format!(
                    "the cluster has only one of {} and {}",
                    file_key(CA_CERT),
                    file_key(CA_KEY)
                )));
            }
        };
        check_ca(&ca).map_err(|why| self.error(format!("the cluster's CA: {why}")))?;
        Ok(Some(ca))
    }
}

/// A CA certificate that parses, a sealed key that looks like a sealed file, both bounded.
fn check_ca(ca: &SharedCa) -> Result<(), String> {
    if ca.cert_pem.len() > MAX_FILE_BYTES || ca.sealed_key.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    if first_cert(&ca.cert_pem).is_none() {
        return Err(format!("{CA_CERT} holds no PEM certificate"));
    }
    if !ca.sealed_key.starts_with(SEALED_MAGIC) {
        return Err(format!("{CA_KEY} is not a latchkey sealed file"));
    }
    Ok(())
}

fn first_cert(pem: &[u8]) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).next()?.ok()
}

/// Whether two PEM files hold the same (first) certificate, whatever their line endings.
pub(super) fn same_cert(a: &[u8], b: &[u8]) -> bool {
    match (first_cert(a), first_cert(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// Whether the server chain `chain` (leaf, then CA, as `tls::ensure_certificates` writes it)
/// ends in the CA `ca_pem`.
fn issued_by(chain: &[u8], ca_pem: &[u8]) -> bool {
    let Some(ca) = first_cert(ca_pem) else {
        return false;
    };
    CertificateDer::pem_slice_iter(chain)
        .filter_map(Result::ok)
        .last()
        .is_some_and(|last| last == ca)
}

fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            op: "read CA file",
            source: e,
        }),
    }
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
            op: "remove server certificate",
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Replaces `path` with `bytes` (mode `mode`) atomically: a crash leaves the old file or the
/// new one, never half of one.
fn write_replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(StoreError::io("write CA file"))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(StoreError::io("write CA file"))?;
    std::fs::rename(&tmp, path).map_err(StoreError::io("rename CA file"))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io("sync data directory"))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "test_etcd.rs"]
pub(super) mod test_etcd;

#[cfg(test)]
mod tests {
    use super::test_etcd::Etcd;
    use super::*;
    use crate::store::{KeyFileOptions, MasterKey};

    /// A data directory with `master.key` (a copy of `key_from`'s when given).
    fn data_dir(root: &Path, name: &str, key_from: Option<&Path>) -> (PathBuf, MasterKey) {
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap();
        let key_file = dir.join("master.key");
        let key = match key_from {
            Some(from) => {
                std::fs::copy(from.join("master.key"), &key_file).unwrap();
                MasterKey::load(&key_file, &KeyFileOptions::default()).unwrap()
            }
            None => MasterKey::create(&key_file, &KeyFileOptions::default()).unwrap(),
        };
        (dir, key)
    }

    #[test]
    fn nodes_of_a_cluster_get_one_ca_and_another_ca_is_refused() {
        let Some(etcd) = Etcd::start("nodes_of_a_cluster_get_one_ca_and_another_ca_is_refused")
        else {
            return;
        };
        let cluster = etcd.connect().unwrap();
        let root = tempfile::tempdir().unwrap();
        let (a, key) = data_dir(root.path(), "a", None);
        let (b, key_b) = data_dir(root.path(), "b", Some(&a));

        // Neither has one: the first node creates its CA and publishes it.
        assert_eq!(sync_ca(&cluster, &a).unwrap(), CaSync::Absent);
        crate::tls::ensure_certificates(&a, &key, &[]).unwrap();
        assert_eq!(publish_ca(&cluster, &a).unwrap(), Publish::Published);
        assert_eq!(sync_ca(&cluster, &a).unwrap(), CaSync::Same);

        // The second node takes it, and issues its server certificate under it with the
        // shared master key.
        assert_eq!(sync_ca(&cluster, &b).unwrap(), CaSync::Installed);
        let ca_a = std::fs::read(a.join(CA_CERT)).unwrap();
        assert_eq!(std::fs::read(b.join(CA_CERT)).unwrap(), ca_a);
        let (_, created) = crate::tls::ensure_certificates(&b, &key_b, &[]).unwrap();
        assert_eq!(created, crate::tls::Created::ServerCertificate);
        assert!(issued_by(
            &std::fs::read(b.join(SERVER_CERT)).unwrap(),
            &ca_a
        ));
        assert_eq!(sync_ca(&cluster, &b).unwrap(), CaSync::Same);

        // A node with a CA of its own is refused, naming the files to remove, and keeps it.
        let (c, key_c) = data_dir(root.path(), "c", Some(&a));
        crate::tls::ensure_certificates(&c, &key_c, &[]).unwrap();
        let ca_c = std::fs::read(c.join(CA_CERT)).unwrap();
        let err = sync_ca(&cluster, &c).unwrap_err().to_string();
        for f in [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY] {
            assert!(err.contains(&c.join(f).display().to_string()), "{err}");
        }
        assert_eq!(std::fs::read(c.join(CA_CERT)).unwrap(), ca_c);
        // Publishing it loses to the cluster's, which the caller may install: the server
        // certificate of the lost CA goes with it.
        let Publish::Lost(winner) = publish_ca(&cluster, &c).unwrap() else {
            panic!("the cluster's CA must win");
        };
        assert_eq!(winner.cert_pem, ca_a);
        install_ca(&c, &winner).unwrap();
        assert!(!c.join(SERVER_CERT).exists());
        assert_eq!(sync_ca(&cluster, &c).unwrap(), CaSync::Same);
        assert_eq!(cluster.read_ca().unwrap(), Some(winner));
    }

    fn pem(seed: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, seed);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem().into_bytes()
    }

    #[test]
    fn same_cert_ignores_line_endings_and_tells_cas_apart() {
        let a = pem("a");
        let crlf = String::from_utf8(a.clone())
            .unwrap()
            .replace('\n', "\r\n")
            .into_bytes();
        assert!(same_cert(&a, &crlf));
        assert!(!same_cert(&a, &pem("b")));
    }

    #[test]
    fn install_keeps_a_server_certificate_of_the_same_ca_and_drops_another_cas() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SharedCa {
            cert_pem: pem("cluster"),
            sealed_key: b"LKSF\x01sealed".to_vec(),
        };
        // A chain ending in another CA: removed with its key.
        let other = [pem("leaf"), pem("other")].concat();
        std::fs::write(dir.path().join(SERVER_CERT), &other).unwrap();
        std::fs::write(dir.path().join(SERVER_KEY), b"k").unwrap();
        install_ca(dir.path(), &ca).unwrap();
        assert!(!dir.path().join(SERVER_CERT).exists());
        assert!(!dir.path().join(SERVER_KEY).exists());
        assert_eq!(
            std::fs::read(dir.path().join(CA_CERT)).unwrap(),
            ca.cert_pem
        );
        assert_eq!(
            std::fs::read(dir.path().join(CA_KEY)).unwrap(),
            ca.sealed_key
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A chain ending in this CA stays.
        let ours = [pem("leaf"), ca.cert_pem.clone()].concat();
        std::fs::write(dir.path().join(SERVER_CERT), &ours).unwrap();
        install_ca(dir.path(), &ca).unwrap();
        assert_eq!(std::fs::read(dir.path().join(SERVER_CERT)).unwrap(), ours);
    }

    #[test]
    fn a_ca_from_etcd_must_look_like_one() {
        let good = SharedCa {
            cert_pem: pem("x"),
            sealed_key: b"LKSF\x01...".to_vec(),
        };
        assert_eq!(check_ca(&good), Ok(()));
        let plain_key = SharedCa {
            sealed_key: b"-----BEGIN PRIVATE KEY-----".to_vec(),
            ..good.clone()
        };
        assert!(check_ca(&plain_key).unwrap_err().contains("sealed"));
        let no_cert = SharedCa {
            cert_pem: b"junk".to_vec(),
            ..good
        };
        assert!(check_ca(&no_cert).unwrap_err().contains("no PEM"));
    }
}
