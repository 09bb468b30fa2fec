//! The cluster's live set: each node holds an etcd lease (TTL `cluster-lease-ttl`, kept alive
//! at a third of it) with its key `/lk/default/nodes/<node id>` → `{"url": …}` attached, and
//! watches the `nodes/` prefix. The set goes to [`ReplayOwners::install`]; the lease's known
//! lifetime to [`ReplayOwners::lease_alive_until`], measured from before each keep-alive was
//! sent, so this node stops answering as an owner no later than etcd expires its key. A lost
//! session (etcd unreachable, lease expired, watch ended) stops ownership at once and starts
//! over with a new lease; the key is taken over while the old lease is still alive, so to the
//! other nodes this node never left unless its lease expired.
//!
//! One thread of its own with its own [`Cluster`] connection (and so its own runtime): the
//! store's threads never wait for membership, nor membership for the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp, WatchOptions,
};

use super::Cluster;
use super::layout::cluster_prefix;
use crate::cluster::replay::{Node, ReplayOwners};

/// The prefix of the node keys: `/lk/default/nodes/`.
pub fn nodes_prefix() -> String {
    format!("{}nodes/", cluster_prefix())
}

/// The prefix of the keys saying until when each node may own clients (Unix seconds, 8 bytes
/// big-endian), without a lease so they outlive their node: `/lk/default/alive/`.
pub fn alive_prefix() -> String {
    format!("{}alive/", cluster_prefix())
}

/// Seconds the alive key runs ahead of the lease, so it is rewritten about twice a minute, not
/// at every keep-alive (every write also reaches every node's store watch). The cost: a first
/// node after a restart of the whole cluster refuses assertions up to this much longer.
const ALIVE_AHEAD: u64 = 30;

#[derive(serde::Serialize, serde::Deserialize)]
struct NodeValue {
    url: String,
    /// Which machine boot, host name and data directory registered the key
    /// ([`crate::cluster::instance_marker`]): a restart of the same node takes its key over.
    #[serde(default)]
    instance: String,
}

/// The membership thread; dropping it stops it (the key expires with the lease, unless a
/// restart takes it over first) and joins the thread.
pub struct Membership {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").finish_non_exhaustive()
    }
}

impl Membership {
    /// Starts publishing `me` under a lease of `ttl` and feeding the live set to `owners`.
    pub fn start(
        cluster: Cluster,
        me: Node,
        instance: String,
        ttl: Duration,
        owners: Arc<ReplayOwners>,
    ) -> std::io::Result<Membership> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("latchkey-membership".into())
            .spawn(move || run(&cluster, &me, &instance, ttl, &owners, &flag))?;
        Ok(Membership {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    cluster: &Cluster,
    me: &Node,
    instance: &str,
    ttl: Duration,
    owners: &ReplayOwners,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let result = cluster
            .runtime
            .block_on(session(cluster, me, instance, ttl, owners, stop));
        owners.lease_lost();
        match result {
            Ok(()) => {}
            Err(e) => tracing::warn!(
                endpoints = cluster.endpoints(),
                error = %e,
                "cluster membership lost; this node checks no client assertions until it is back"
            ),
        }
        // Not busy-looping against an unreachable cluster; short, to rejoin soon.
        for _ in 0..10 {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One lease's life: register, read the set, then watch and keep alive until stopped or lost.
async fn session(
    cluster: &Cluster,
    me: &Node,
    instance: &str,
    ttl: Duration,
    owners: &ReplayOwners,
    stop: &AtomicBool,
) -> Result<(), String> {
    let err = |what: &str| {
        let what = what.to_owned();
        move |e: etcd_client::Error| format!("{what}: {e}")
    };
    let mut client = cluster.client.clone();
    let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(60);
    let interval = ttl / 3;
    let sent = Instant::now();
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(err("lease grant"))?
        .id();
    let prefix = nodes_prefix();
    let value = serde_json::to_vec(&NodeValue {
        url: me.url.clone(),
        instance: instance.to_owned(),
    })
    .map_err(|e| e.to_string())?;
    // Create-only: two live nodes with one id (a data directory copied with its `node-id`)
    // would both own the same clients. The key of this very node's previous run (killed, or
    // stopped, within its lease TTL: the same boot, host and data directory, whose lock
    // proves that run is over) is taken over, so its clients do not move at all.
    let key = format!("{prefix}{}", me.id);
    let created = client
        .txn(
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]),
        )
        .await
        .map_err(err("node key"))?;
    if !created.succeeded() {
        let previous = created.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                let ours = serde_json::from_slice::<NodeValue>(kv.value())
                    .is_ok_and(|v| !v.instance.is_empty() && v.instance == instance);
                (ours, kv.mod_revision())
            }),
            _ => None,
        });
        let taken = match previous {
            Some((true, revision)) => client
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then([TxnOp::put(
                            key,
                            value,
                            Some(PutOptions::new().with_lease(lease)),
                        )]),
                )
                .await
                .map_err(err("node key"))?
                .succeeded(),
            _ => false,
        };
        if !taken {
            let _ = client.lease_revoke(lease).await;
            return Err(format!(
                "node id {} is already live in the cluster: another node has a copy of this \
                 data directory's node-id file (remove it there to give that node an id of its \
                 own)",
                me.id
            ));
        }
        tracing::info!(node = %me.id, "took over this node's registration from its previous run");
    }
    let alive_key = format!("{}{}", alive_prefix(), me.id);
    // Written before this node owns anything until then, so a node that finds it gone knows
    // how long it may have accepted assertions.
    let mut alive_written = crate::clock::unix_now()
        .saturating_add(ttl.as_secs())
        .saturating_add(1 + ALIVE_AHEAD);
    client
        .put(alive_key.as_str(), alive_written.to_be_bytes(), None)
        .await
        .map_err(err("alive key"))?;
    owners.lease_alive_until(sent + ttl);
    let (mut keeper, mut alive) = client
        .lease_keep_alive(lease)
        .await
        .map_err(err("lease keep-alive"))?;
    let read = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(err("node list"))?;
    let revision = read.header().map_or(0, |h| h.revision());
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for kv in read.kvs() {
        apply(&mut nodes, &prefix, kv, true);
    }
    // Until when nodes that are gone may have owned clients: the first view's floor.
    let alive_prefix = alive_prefix();
    let gone_until = client
        .get(alive_prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(err("alive keys"))?
        .kvs()
        .iter()
        .filter_map(|kv| {
            let id = std::str::from_utf8(kv.key().strip_prefix(alive_prefix.as_bytes())?).ok()?;
            let until = u64::from_be_bytes(kv.value().try_into().ok()?);
            (id != me.id && !nodes.contains_key(id)).then_some(until)
        })
        .max()
        .unwrap_or(0);
    owners.install(
        nodes.values().cloned().collect(),
        crate::clock::unix_now(),
        Some(gone_until),
    );
    let mut watch = client
        .watch(
            prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(err("node watch"))?;
    let mut next_keep_alive = Instant::now() + interval;
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        let wait = next_keep_alive
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        match tokio::time::timeout(wait, watch.message()).await {
            Ok(Ok(Some(resp))) => {
                if resp.canceled() {
                    break Err(format!("node watch cancelled: {}", resp.cancel_reason()));
                }
                for event in resp.events() {
                    if let Some(kv) = event.kv() {
                        apply(
                            &mut nodes,
                            &prefix,
                            kv,
                            event.event_type() == EventType::Put,
                        );
                    }
                }
                owners.install(
                    nodes.values().cloned().collect(),
                    crate::clock::unix_now(),
                    None,
                );
            }
            Ok(Ok(None)) => break Err("node watch ended".into()),
            Ok(Err(e)) => break Err(format!("node watch: {e}")),
            Err(_) => {}
        }
        if Instant::now() >= next_keep_alive {
            let sent = Instant::now();
            if let Err(e) = keeper.keep_alive().await {
                break Err(format!("lease keep-alive: {e}"));
            }
            match tokio::time::timeout(interval, alive.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    let left = u64::try_from(r.ttl()).unwrap_or(0);
                    let until = crate::clock::unix_now()
                        .saturating_add(left)
                        .saturating_add(1);
                    if until > alive_written {
                        alive_written = until.saturating_add(ALIVE_AHEAD);
                        if let Err(e) = client
                            .put(alive_key.as_str(), alive_written.to_be_bytes(), None)
                            .await
                        {
                            break Err(format!("alive key: {e}"));
                        }
                    }
                    owners.lease_alive_until(sent + Duration::from_secs(left));
                }
                Ok(Ok(Some(_))) => break Err("the lease expired".into()),
                Ok(Ok(None)) => break Err("lease keep-alive stream ended".into()),
                Ok(Err(e)) => break Err(format!("lease keep-alive: {e}")),
                Err(_) => break Err("lease keep-alive unanswered".into()),
            }
            next_keep_alive = sent + interval;
        }
    };
    owners.lease_lost();
    // The lease is never revoked. Stopping, the key is left to expire: a restart within the TTL
    // takes it over. Lost (a keep-alive or the watch failed, as during an etcd leader
    // election), the next session takes the key over under a new lease while this one is still
    // alive. Either way the key disappears only when the lease really expired, so a brief loss
    // moves none of this node's clients (a move from a node that is gone costs them the floor).
    result
}

/// Applies one node key to the set (`put`: added or changed; else removed). Keys or values
/// that do not parse are skipped, logged: a foreign key must not stop membership.
fn apply(nodes: &mut BTreeMap<String, Node>, prefix: &str, kv: &KeyValue, put: bool) {
    let Some(id) = kv
        .key()
        .strip_prefix(prefix.as_bytes())
        .and_then(|id| std::str::from_utf8(id).ok())
    else {
        return;
    };
    if !put {
        nodes.remove(id);
        return;
    }
    match serde_json::from_slice::<NodeValue>(kv.value()) {
        Ok(v) => {
            nodes.insert(
                id.to_owned(),
                Node {
                    id: id.to_owned(),
                    url: v.url,
                },
            );
        }
        Err(e) => tracing::warn!(node = id, error = %e, "skipping a node key that does not parse"),
    }
}
