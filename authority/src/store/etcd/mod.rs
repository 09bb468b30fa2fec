//! The etcd engine (cargo feature `etcd`): authorities sharing one etcd cluster. Its design is
//! in ARCHITECTURE.md ("Cluster"); what exists so far is the connection: a client on a tokio
//! runtime of its own, driven only from the store's threads (never from an event loop), with a
//! deadline on every request so an unreachable or leaderless cluster is an error, not a hang.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use super::StoreError;

/// The prefix of every key this engine writes: `/lk/<cluster>/<table>/<key>`.
pub const KEY_PREFIX: &str = "/lk/";

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

/// What a linearizable read proved about the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The cluster's revision at the read.
    pub revision: i64,
    /// Members the cluster lists.
    pub members: usize,
}

impl Cluster {
    /// Connects to `endpoints` (`HOST:PORT`, plain gRPC). Each request is bounded by
    /// `timeout` and requires a leader, so a partitioned member answers with an error at once
    /// instead of serving stale reads or waiting out the partition.
    pub fn connect(endpoints: &[String], timeout: Duration) -> Result<Self, StoreError> {
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
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_require_leader(true);
        let client = runtime
            .block_on(Client::connect(urls, Some(options)))
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
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
}
