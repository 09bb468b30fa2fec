//! In-memory indexes for the token path: registered clients with their auth material, operator
//! clients, signing keys, revocations.
//!
//! Loaded at open; after that only the writer thread changes them, right after each commit and
//! before it answers the requests of that commit, so an acknowledged write is visible here.
//! Readers use lock-free maps: no lock, no waiting for the writer, no disk. Registered clients,
//! the one index that grows with the fleet and is read on every token request, are in a
//! concurrent hash map (`papaya`), so a lookup costs the same at 1k and at 1M agents; the small
//! indexes are skip lists (`crossbeam-skiplist`). Entries are `Arc`s, replaced whole, so a
//! reader never sees half an update.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_skiplist::SkipMap;
use latchkey_core::{Algorithm, KeyError, VerifyingKey};

use super::agent_index::AgentIndex;
use super::records::{
    AgentRecord, AuthMethod, KeyState, OperatorClientRecord, RevocationKind, RevocationRecord,
};
use super::seal::Secret;

/// What the token endpoint needs to authenticate an agent, shared secret unsealed.
#[derive(Debug)]
pub struct ClientAuth {
    pub client_id: String,
    pub tenant: String,
    pub auth_method: AuthMethod,
    /// The HS256/384/512 key for `client_secret_jwt`.
    pub secret: Option<Secret>,
    /// Registered public keys as JWK JSON.
    pub jwks: Vec<String>,
    pub secret_expires_at: u64,
    pub generation: u64,
    /// Verifying keys built from `secret`; see [`ClientAuth::hmac_key`].
    pub hmac_keys: HmacKeys,
    /// What the last rotation replaced, while its grace window lasts (`store::RotationRecord`).
    pub previous: Option<PreviousCredentials>,
    /// Set by the first request that uses a new credential, before the cut-over is committed:
    /// from then on this process refuses the previous credentials.
    pub cut_over: AtomicBool,
}

/// The credentials a rotation replaced. They authenticate until `until` or until the agent
/// first uses a new credential, whichever comes first.
#[derive(Debug)]
pub struct PreviousCredentials {
    pub secret: Option<Secret>,
    /// Public keys that are not also among the current ones.
    pub jwks: Vec<String>,
    /// End of the grace window.
    pub until: u64,
    /// The previous secret or keys authenticate only before this (their own expiry).
    pub secret_expires_at: u64,
    pub hmac_keys: HmacKeys,
}

impl PreviousCredentials {
    /// The key that checks assertions signed with the previous secret.
    pub fn hmac_key(&self, alg: Algorithm) -> Result<&VerifyingKey, latchkey_core::Error> {
        self.hmac_keys.key(alg, self.secret.as_ref())
    }
}

/// One lazily built HMAC verifying key per HS256/384/512. Building one costs a key setup, an
/// allocation and a zeroizing copy of the secret, which the token endpoint would otherwise
/// pay on every request. The keys live in the [`ClientAuth`] entry, and the entry is replaced
/// whole when the secret changes (rotation, re-registration) or removed (offboarding), so a
/// key never outlives the secret it was built from.
#[derive(Debug, Default)]
pub struct HmacKeys([OnceLock<VerifyingKey>; 3]);

impl ClientAuth {
    /// The key that checks this client's `client_secret_jwt` assertions signed with `alg`
    /// (HS256, HS384 or HS512), built from `secret` on first use and then reused.
    pub fn hmac_key(&self, alg: Algorithm) -> Result<&VerifyingKey, latchkey_core::Error> {
        self.hmac_keys.key(alg, self.secret.as_ref())
    }

    /// The previous credentials if they still authenticate at `now`: within the grace window
    /// and before the first use of a new credential.
    pub fn previous_at(&self, now: u64) -> Option<&PreviousCredentials> {
        self.previous
            .as_ref()
            .filter(|p| now < p.until && !self.cut_over.load(Ordering::Acquire))
    }

    /// Marks the cut-over; true for the one caller that must write it.
    pub fn begin_cut_over(&self) -> bool {
        !self.cut_over.swap(true, Ordering::AcqRel)
    }
}

impl HmacKeys {
    fn key(
        &self,
        alg: Algorithm,
        secret: Option<&Secret>,
    ) -> Result<&VerifyingKey, latchkey_core::Error> {
        let slot = match alg {
            Algorithm::HS256 => 0,
            Algorithm::HS384 => 1,
            Algorithm::HS512 => 2,
            _ => return Err(KeyError::AlgorithmNotAllowed.into()),
        };
        let cell = &self.0[slot];
        if let Some(key) = cell.get() {
            return Ok(key);
        }
        let secret = secret.ok_or(KeyError::NotPossible)?;
        let key = VerifyingKey::hmac(alg, secret.expose())?;
        // Two threads may build it at once; both keys are equal, the first one stays.
        Ok(cell.get_or_init(|| key))
    }
}

/// A signing key with its private half unsealed.
#[derive(Debug)]
pub struct StoredSigningKey {
    pub kid: String,
    pub alg: String,
    pub state: KeyState,
    pub private_key: Secret,
    pub public_key: Vec<u8>,
    pub created_at: u64,
    pub state_changed_at: u64,
    /// DER certificate chain, leaf first (see `SigningKeyRecord`).
    pub certificate_chain: Vec<Vec<u8>>,
    pub pinned: bool,
}

/// A revocation as the verify path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub revoked_at: u64,
    pub forget_after: u64,
}

impl From<&RevocationRecord> for Revocation {
    fn from(r: &RevocationRecord) -> Self {
        Revocation {
            revoked_at: r.revoked_at,
            forget_after: r.forget_after,
        }
    }
}

/// The hot indexes. Read-only outside the store.
#[derive(Debug, Default)]
pub struct HotIndex {
    clients: papaya::HashMap<String, Arc<ClientAuth>>,
    operator_clients: SkipMap<String, Arc<OperatorClientRecord>>,
    keys: SkipMap<String, Arc<StoredSigningKey>>,
    /// Suspended agents and when they were suspended: read on every agent token request, so
    /// a hash map like `clients`, not a skip list.
    suspended_agents: papaya::HashMap<String, u64>,
    /// One map per `RevocationKind`, indexed by `kind as usize`, so lookups borrow a `&str`.
    revocations: [SkipMap<String, Revocation>; 4],
    /// Set by a cluster engine: the token path serves only while it is open.
    gate: OnceLock<Arc<super::freshness::Freshness>>,
    /// Agents in list order, per tenant (see `agent_index`); never read by the token path.
    agents: AgentIndex,
    commits: AtomicU64,
}

/// One change to apply after a commit.
#[derive(Debug)]
pub(crate) enum HotChange {
    Client(String, Option<Arc<ClientAuth>>),
    OperatorClient(String, Option<Arc<OperatorClientRecord>>),
    Key(String, Option<Arc<StoredSigningKey>>),
    /// An agent suspended (since) or resumed (`None`).
    AgentSuspension(String, Option<u64>),
    Revocation(RevocationKind, String, Option<Revocation>),
    Agent(String, Option<Arc<AgentRecord>>),
}

fn slot(kind: RevocationKind) -> usize {
    match kind {
        RevocationKind::Token => 0,
        RevocationKind::Key => 1,
        RevocationKind::Certificate => 2,
        RevocationKind::Agent => 3,
    }
}

impl HotIndex {
    /// The registered client `client_id`, if any.
    /// `Ok` unless a cluster engine's freshness gate is closed (single node: always `Ok`).
    pub fn serving(&self) -> Result<(), super::freshness::Stale> {
        match self.gate.get() {
            Some(g) => g.check(std::time::Instant::now()),
            None => Ok(()),
        }
    }

    /// The cluster engine's freshness gate, if there is one.
    pub fn freshness(&self) -> Option<&Arc<super::freshness::Freshness>> {
        self.gate.get()
    }

    /// Installs a cluster engine's gate (once, at open).
    #[cfg(feature = "etcd")]
    pub(crate) fn set_gate(&self, gate: Arc<super::freshness::Freshness>) {
        let _ = self.gate.set(gate);
    }

    pub fn client(&self, client_id: &str) -> Option<Arc<ClientAuth>> {
        self.clients.pin().get(client_id).cloned()
    }

    /// The operator client `id`, if any.
    pub fn operator_client(&self, id: &str) -> Option<Arc<OperatorClientRecord>> {
        self.operator_clients.get(id).map(|e| e.value().clone())
    }

    /// Whether agent `id` is suspended: one hash lookup, no store read.
    pub fn agent_suspended(&self, id: &str) -> bool {
        self.suspended_agents.pin().contains_key(id)
    }

    /// The signing key `kid` (any state).
    pub fn signing_key(&self, kid: &str) -> Option<Arc<StoredSigningKey>> {
        self.keys.get(kid).map(|e| e.value().clone())
    }

    /// All signing keys, in kid order.
    pub fn signing_keys(&self) -> Vec<Arc<StoredSigningKey>> {
        self.keys.iter().map(|e| e.value().clone()).collect()
    }

    /// The revocation of `id` of the given kind, if one is recorded.
    pub fn revocation(&self, kind: RevocationKind, id: &str) -> Option<Revocation> {
        self.revocations[slot(kind)].get(id).map(|e| *e.value())
    }

    /// Every tenant's agents, indexed for listing.
    pub fn agents(&self) -> &AgentIndex {
        &self.agents
    }

    /// Number of registered clients (for metrics and benches).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Number of revocations of a kind.
    pub fn revocation_count(&self, kind: RevocationKind) -> usize {
        self.revocations[slot(kind)].len()
    }

    /// Incremented after every commit that reached the indexes; lets a cache notice change.
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    pub(crate) fn apply(&self, change: HotChange) {
        match change {
            HotChange::Client(id, Some(v)) => {
                self.clients.pin().insert(id, v);
            }
            HotChange::Client(id, None) => {
                self.clients.pin().remove(&id);
            }
            HotChange::OperatorClient(id, Some(v)) => {
                self.operator_clients.insert(id, v);
            }
            HotChange::OperatorClient(id, None) => {
                self.operator_clients.remove(&id);
            }
            HotChange::Key(id, Some(v)) => {
                self.keys.insert(id, v);
            }
            HotChange::Key(id, None) => {
                self.keys.remove(&id);
            }
            HotChange::AgentSuspension(id, Some(at)) => {
                self.suspended_agents.pin().insert(id, at);
            }
            HotChange::AgentSuspension(id, None) => {
                self.suspended_agents.pin().remove(&id);
            }
            HotChange::Revocation(kind, id, Some(v)) => {
                self.revocations[slot(kind)].insert(id, v);
            }
            HotChange::Revocation(kind, id, None) => {
                self.revocations[slot(kind)].remove(&id);
            }
            HotChange::Agent(id, rec) => self.agents.apply(&id, rec),
        }
    }

    pub(crate) fn bump(&self) {
        self.commits.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspension_is_set_and_lifted_in_memory() {
        let hot = HotIndex::default();
        assert!(!hot.agent_suspended("a1"));
        hot.apply(HotChange::AgentSuspension("a1".into(), Some(5)));
        assert!(hot.agent_suspended("a1"));
        assert!(!hot.agent_suspended("a2"), "only the suspended agent");
        hot.apply(HotChange::AgentSuspension("a1".into(), None));
        assert!(!hot.agent_suspended("a1"));
    }
}
