//! Cluster mode beside the etcd store (cargo feature `etcd`): what the nodes of one cluster do
//! with each other rather than with etcd.
//!
//! **Client-assertion replay across nodes.** An agent's assertion sent to two nodes must get
//! at most one token, without an etcd write per assertion and without one replay cache per
//! node (which would let an assertion be used once per node). So every client id has one
//! owner node: the live node with the highest rendezvous weight for it ([`rendezvous`]), over
//! the live set every node watches in etcd (`/lk/default/nodes/<id>`, each key attached to its
//! node's lease; `store::etcd::nodes`). The owner checks and records the `jti` in its own
//! replay cache and replay log, exactly as a single node does; a node that does not own the
//! client forwards the check to the owner ([`replay::ReplayOwners::forward`]) from its own
//! threads, in batches per owner, over HTTPS to `POST /internal/v1/replay`, authenticated with
//! a key derived from the shared master key ([`peer_auth`]). The event loop never waits: the
//! token request is deferred and answered from the forwarding thread.
//!
//! **Failure modes.** An owner that cannot be reached within `cluster-forward-timeout`, a full
//! forwarding queue, a node that knows no live set yet, a node whose lease is not current, or
//! an owner whose own view disagrees: 503 `temporarily_unavailable` with `Retry-After`, never
//! an unchecked token. When ownership moves (a node joins, leaves or its lease lapses), the
//! new owner has not seen what the old one accepted: for each client it gained at time `T` it
//! refuses assertions issued before `T + leeway + 1` (the restart floor of `api::agent_token`,
//! applied per moved client), while clients that did not move are unaffected. Agents sign a
//! fresh assertion per try, so they get through at once. A node stops answering as owner as
//! soon as its lease is not known to be alive, before etcd expires it and the others move its
//! clients; what remains is the lag of a node's watch behind etcd (milliseconds on a healthy
//! cluster), during which two nodes may each believe they own a client that just moved.

pub mod peer_auth;
pub mod peer_client;
pub mod rendezvous;
pub mod replay;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::app::App;
use crate::config::ServeSettings;
use crate::error::Error;
use crate::store::StoreEngine;
use crate::store::etcd::Cluster;
use crate::store::etcd::nodes::Membership;
use replay::{ForwardConfig, Node, OwnersConfig, ReplayOwners};

/// The file in the data directory holding this node's id (created on the first cluster start).
pub const NODE_ID_FILE: &str = "node-id";

/// This data directory's node id: read from [`NODE_ID_FILE`], or created there (16 random
/// bytes, hex). Stable across restarts, so a restarted node owns the clients it owned before.
pub fn node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(std::io::Error::other(format!(
                    "{}: a node id is 1 to 64 of [A-Za-z0-9_-]",
                    path.display()
                )));
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 16];
            aws_lc_rs::rand::fill(&mut raw)
                .map_err(|_| std::io::Error::other("system random source failed"))?;
            let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(&path, format!("{id}\n"))?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// `serve` on `--store etcd://`: sets the app's replay owners (before its routes are built,
/// so the peer endpoint is among them) and starts membership, which publishes this node at
/// its advertised URL. `None` on the redb engine: nothing changes there. Dropping the
/// membership leaves the cluster.
pub fn join(
    app: &Arc<App>,
    settings: &ServeSettings,
    data_dir: &Path,
    listen: SocketAddr,
) -> Result<Option<Membership>, Error> {
    let StoreEngine::Etcd { endpoints } = &settings.store else {
        return Ok(None);
    };
    let url = advertise_url(settings, listen)?;
    let tls = if peer_client::PeerUrl::parse(&url)
        .map_err(Error::Config)?
        .tls
    {
        let ca = crate::tls::CertFiles::in_dir(data_dir).ca_cert;
        if !ca.exists() {
            return Err(Error::Config(format!(
                "cluster peers are verified against the cluster's CA certificate {}, which is \
                 missing",
                ca.display()
            )));
        }
        Some(peer_client::tls_config(crate::tls::load_certs(&ca)?).map_err(Error::Config)?)
    } else {
        None
    };
    let id = node_id(data_dir)?;
    let c = &settings.cluster;
    let owners = ReplayOwners::new(
        OwnersConfig {
            node_id: id.clone(),
            peer_key: *app.store.master_key().peer_auth_key(),
            tls,
            forward: ForwardConfig {
                threads: c.forward_threads,
                queue: c.forward_queue,
                timeout: c.forward_timeout,
            },
            leeway: app.assertion_leeway(),
            max_age: app.settings.assertion_max_age,
        },
        Some(Arc::clone(&app.metrics)),
    )?;
    app.replay_owners
        .set(Arc::clone(&owners))
        .map_err(|_| Error::Config("the replay owners are set once".into()))?;
    let cluster = Cluster::connect(
        endpoints,
        std::time::Duration::from_secs(5),
        &settings.etcd_tls,
    )?;
    tracing::info!(node = %id, url = %url, "joining the cluster's client-assertion owners");
    let membership = Membership::start(
        cluster,
        Node { id, url },
        instance_marker(data_dir),
        c.lease_ttl,
        Arc::clone(&owners),
    )?;
    // The node listens once it can route every agent's assertion, so its first answers are
    // tokens, not "retry later". A node that cannot join (its id is live elsewhere) still
    // serves after the wait, answering 503 on the token path, and its log says why.
    let deadline = std::time::Instant::now() + c.lease_ttl;
    while !owners.ready() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if !owners.ready() {
        tracing::warn!(
            "this node is not among the cluster's live nodes yet; it answers agent token \
             requests with 503 until it is"
        );
    }
    Ok(Some(membership))
}

/// What tells a restart of this node from another node with a copy of its data directory:
/// the machine's boot, its host name and the data directory's path, hashed. A restart has all
/// three (and the data directory's lock proves the previous run is over); a copy elsewhere
/// differs in one.
pub fn instance_marker(data_dir: &Path) -> String {
    let mut h = blake3::Hasher::new_derive_key("latchkey 2026 cluster node instance v1");
    h.update(&crate::replay_log::boot_id());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    h.update(&(host.trim().len() as u64).to_le_bytes());
    h.update(host.trim().as_bytes());
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    h.update(path.as_os_str().as_encoded_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

/// `--cluster-advertise`, or the first listener's address when it names one host.
fn advertise_url(settings: &ServeSettings, listen: SocketAddr) -> Result<String, Error> {
    let scheme = if settings.plain_http { "http" } else { "https" };
    match &settings.cluster.advertise {
        Some(url) => {
            let parsed = peer_client::PeerUrl::parse(url)
                .map_err(|e| Error::Config(format!("cluster-advertise {e}")))?;
            if parsed.tls == settings.plain_http {
                return Err(Error::Config(format!(
                    "cluster-advertise {url:?}: this node serves {scheme}"
                )));
            }
            Ok(parsed.to_string())
        }
        None if settings.client_auth == crate::tls::ClientAuthMode::Required => {
            Err(Error::Config(format!(
                "the listener {listen} requires client certificates, which nodes do not present \
                 to each other: set --cluster-advertise to a listener that does not"
            )))
        }
        None if listen.ip().is_unspecified() => Err(Error::Config(format!(
            "listening on {listen}, a wildcard address: set --cluster-advertise to the URL other \
             nodes reach this one at"
        ))),
        None => Ok(format!("{scheme}://{listen}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_url_is_the_listen_address_or_the_setting() {
        let base = crate::config::Settings::default().resolve().unwrap();
        let at = |s: &ServeSettings, listen: &str| advertise_url(s, listen.parse().unwrap());
        assert_eq!(at(&base, "10.0.0.7:8443").unwrap(), "https://10.0.0.7:8443");
        assert!(
            at(&base, "0.0.0.0:8443").is_err(),
            "a wildcard names no host"
        );
        let plain = ServeSettings {
            plain_http: true,
            ..base.clone()
        };
        assert_eq!(at(&plain, "127.0.0.1:80").unwrap(), "http://127.0.0.1:80");
        let mut named = base.clone();
        named.cluster.advertise = Some("https://node-1.example:9443/".into());
        assert_eq!(
            at(&named, "0.0.0.0:8443").unwrap(),
            "https://node-1.example:9443"
        );
        named.cluster.advertise = Some("http://node-1.example:9443".into());
        assert!(
            at(&named, "0.0.0.0:8443").is_err(),
            "this node serves https"
        );
        let required = ServeSettings {
            client_auth: crate::tls::ClientAuthMode::Required,
            ..base
        };
        assert!(at(&required, "10.0.0.7:8443").is_err());
    }

    #[test]
    fn the_node_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = node_id(dir.path()).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(node_id(dir.path()).unwrap(), id);
        std::fs::write(dir.path().join(NODE_ID_FILE), "bad id!\n").unwrap();
        assert!(node_id(dir.path()).is_err());
    }
}
