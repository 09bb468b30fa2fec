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

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
