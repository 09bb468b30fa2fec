//! The etcd engine (cargo feature `etcd`): authorities sharing one etcd cluster. Its design is
//! in ARCHITECTURE.md ("Cluster"); what exists so far is the connection (a client on a tokio
//! runtime of its own, driven only from the store's threads, never from an event loop, with a
//! deadline on every request so an unreachable or leaderless cluster is an error, not a hang)
//! and the cluster's meta.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use super::schema::{META_CREATED_AT, META_KEY_ID, META_SCHEMA_VERSION, SCHEMA_VERSION};
use super::seal::hex;
use super::{MasterKey, StoreError};

pub(crate) mod committer;
pub mod files;
pub mod health;
pub mod layout;
pub mod migrate;
pub mod mirror;
pub mod nodes;

pub use committer::{ChangeListener, EngineSettings};
pub use mirror::{Changed, MIRROR_FILE};

use layout::meta_key;
pub use layout::{CLUSTER_NAME, KEY_PREFIX};

/// What [`Cluster::claim_meta`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaClaim {
    /// The cluster was empty: this node wrote its meta (schema version, creation time, master
    /// key id).
    Initialised,
    /// The cluster's meta matches this node's schema version and master key.
    Joined,
}

/// A connected etcd client and the runtime that drives it.
pub struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: Client,
    endpoints: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Held while this node runs the first-run steps; released (its lease revoked) on drop.
#[derive(Debug)]
pub struct BootstrapLock {
    cluster: Cluster,
    lease: i64,
}

impl BootstrapLock {
    /// The cluster the lock was taken on.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}

impl Drop for BootstrapLock {
    fn drop(&mut self) {
        let mut client = self.cluster.client.clone();
        if let Err(e) = self
            .cluster
            .runtime
            .block_on(client.lease_revoke(self.lease))
        {
            tracing::warn!(error = %e, "could not release the bootstrap lock; it ends with its lease");
        }
    }
}

/// What a linearizable read proved about the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The cluster's revision at the read.
    pub revision: i64,
    /// Members the cluster lists.
    pub members: usize,
}

impl Cluster {
    /// Connects to `endpoints` (`HOST:PORT`; TLS as `tls` says). Each request is bounded by
    /// `timeout` and requires a leader, so a partitioned member answers with an error at once
    /// instead of serving stale reads or waiting out the partition.
    pub fn connect(
        endpoints: &[String],
        timeout: Duration,
        tls: &crate::config::EtcdTls,
    ) -> Result<Self, StoreError> {
        let list = endpoints.join(",");
        let fail = |reason: String| StoreError::Etcd {
            endpoints: list.clone(),
            reason,
        };
        // One thread: the client multiplexes every request over HTTP/2, and the store's own
        // threads block on it; a multi-threaded runtime would only add threads.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("latchkey-etcd")
            .build()
            .map_err(|e| fail(format!("cannot start the client runtime: {e}")))?;
        let urls: Vec<String> = endpoints.iter().map(|e| tls.url(e)).collect();
        let options = tls.apply(
            ConnectOptions::new()
                .with_connect_timeout(timeout)
                .with_timeout(timeout)
                .with_require_leader(true),
        );
        let client = runtime
            .block_on(Client::connect(urls.clone(), Some(options)))
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        health::manage(&client, &urls, tls);
        Ok(Cluster {
            runtime,
            client,
            endpoints: list,
        })
    }

    /// The `--store` endpoints, comma-separated (for messages).
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// A linearizable read (it goes through the leader's read index, so it succeeds only with
    /// a quorum) and the member list: proof that the cluster is up and answering.
    pub fn status(&self) -> Result<ClusterStatus, StoreError> {
        let mut client = self.client.clone();
        let (revision, members) = self
            .runtime
            .block_on(async move {
                let read = client
                    .get(
                        KEY_PREFIX,
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await?;
                let members = client.member_list().await?;
                let revision = read.header().map_or(0, |h| h.revision());
                Ok::<_, etcd_client::Error>((revision, members.members().len()))
            })
            .map_err(|e| StoreError::Etcd {
                endpoints: self.endpoints.clone(),
                reason: format!("not answering: {e}"),
            })?;
        Ok(ClusterStatus { revision, members })
    }

    /// Claims the cluster's meta for this node's master key, in one Txn: an empty cluster gets
    /// this node's schema version, creation time and master key id (written alone and first,
    /// as `init_schema` writes redb's meta, since the first-run steps after it each create
    /// only what is missing); otherwise the stored ones must match. A node whose master key is
    /// not the cluster's could open none of its sealed secrets, so it is refused, naming both
    /// key ids.
    pub fn claim_meta(
        &self,
        key: &MasterKey,
        key_file: &std::path::Path,
        now: u64,
    ) -> Result<MetaClaim, StoreError> {
        let id_key = meta_key(META_KEY_ID);
        let txn = Txn::new()
            .when([Compare::create_revision(
                id_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    meta_key(META_SCHEMA_VERSION),
                    u64::from(SCHEMA_VERSION).to_be_bytes(),
                    None,
                ),
                TxnOp::put(meta_key(META_CREATED_AT), now.to_be_bytes(), None),
                TxnOp::put(id_key, key.id(), None),
            ])
            .or_else([TxnOp::get(
                meta_key(""),
                Some(GetOptions::new().with_prefix()),
            )]);
        let mut client = self.client.clone();
        let response = self
            .runtime
            .block_on(client.txn(txn))
            .map_err(|e| self.error(format!("cannot claim the cluster's meta: {e}")))?;
        if response.succeeded() {
            return Ok(MetaClaim::Initialised);
        }
        let mut schema = None;
        let mut stored_id = None;
        for op in response.op_responses() {
            let TxnOpResponse::Get(get) = op else {
                continue;
            };
            for kv in get.kvs() {
                let name = kv.key().strip_prefix(meta_key("").as_bytes());
                match name {
                    Some(n) if n == META_SCHEMA_VERSION.as_bytes() => {
                        schema = Some(kv.value().to_vec())
                    }
                    Some(n) if n == META_KEY_ID.as_bytes() => stored_id = Some(kv.value().to_vec()),
                    _ => {}
                }
            }
        }
        let schema = schema.ok_or_else(|| {
            self.error("the cluster's meta has a master key id but no schema version".into())
        })?;
        let version = super::codec::decode_u64(META_SCHEMA_VERSION, &schema)?;
        if version != u64::from(SCHEMA_VERSION) {
            return Err(self.error(format!(
                "the cluster has schema version {version}, this release reads version \
                 {SCHEMA_VERSION}; was it written by a newer latchkey?"
            )));
        }
        let stored_id = stored_id.unwrap_or_default();
        if stored_id != key.id() {
            return Err(StoreError::BadKeyFile {
                path: key_file.to_path_buf(),
                reason: format!(
                    "its master key id {} is not the one of the etcd cluster at {} ({}): every \
                     node of a cluster needs the same master.key",
                    hex(&key.id()),
                    self.endpoints,
                    hex(&stored_id)
                ),
            });
        }
        Ok(MetaClaim::Joined)
    }

    /// Takes the cluster's bootstrap lock: one node at a time runs the first-run steps
    /// (signing keys, the `admin` client, the configuration's tenants, profiles and clients),
    /// so two nodes starting together against an empty cluster do not both create them. The
    /// lock is a key on a lease of `ttl`: a node that dies holding it frees it when the lease
    /// ends. Waits at most `wait`.
    pub fn bootstrap_lock(
        self,
        ttl: Duration,
        wait: Duration,
    ) -> Result<BootstrapLock, StoreError> {
        let key = meta_key("bootstrap-lock");
        let deadline = std::time::Instant::now() + wait;
        let mut client = self.client.clone();
        let lease = self
            .runtime
            .block_on(client.lease_grant(ttl.as_secs().max(1) as i64, None))
            .map_err(|e| self.error(format!("cannot take the bootstrap lock: {e}")))?
            .id();
        loop {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    b"bootstrap".to_vec(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let taken = self
                .runtime
                .block_on(client.txn(txn))
                .map_err(|e| self.error(format!("cannot take the bootstrap lock: {e}")))?
                .succeeded();
            if taken {
                return Ok(BootstrapLock {
                    cluster: self,
                    lease,
                });
            }
            if std::time::Instant::now() >= deadline {
                return Err(self.error(format!(
                    "another node held the bootstrap lock for {} s",
                    wait.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The master key id the cluster's meta holds, if it has been claimed.
    pub fn meta_key_id(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut client = self.client.clone();
        let r = self
            .runtime
            .block_on(client.get(meta_key(META_KEY_ID), None))
            .map_err(|e| self.error(format!("cannot read the cluster's meta: {e}")))?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    fn error(&self, reason: String) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            reason,
        }
    }
}
