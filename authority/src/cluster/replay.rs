//! Client-assertion replay protection across the nodes of a cluster (see the module docs of
//! [`crate::cluster`] for the design): [`ReplayOwners`] knows the live nodes, picks each
//! client's owner, forwards checks to owners from its own threads in batches, and serves the
//! checks other nodes forward to it on `POST /internal/v1/replay`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel;
use serde::{Deserialize, Serialize};

use super::peer_auth::{AUTH_HEADER, PeerAuth, PeerRefusal};
use super::peer_client::{self, PeerUrl};
use super::rendezvous;
use crate::error::{ApiError, Error, WireError};
use crate::http::{Metrics, Response};

/// The internal route other nodes forward checks to.
pub const PEER_PATH: &str = "/internal/v1/replay";
/// Most checks in one forwarded batch.
pub const MAX_ITEMS: usize = 256;
/// A forwarding thread stops adding checks to a batch past this estimate of its body size,
/// well under the smallest `max-body` a cluster node accepts
/// ([`crate::config::MIN_CLUSTER_MAX_BODY`]).
const BATCH_BYTES: usize = 48 * 1024;
/// JSON a check adds besides its client id and jti (the field names, two numbers, quotes).
const CHECK_OVERHEAD: usize = 96;
/// Longest `jti` a cluster accepts (a batch of [`MAX_ITEMS`] stays under the body bound).
pub const MAX_JTI_BYTES: usize = 512;
/// Longest client id in a forwarded check (agent ids are at most 64 bytes).
const MAX_CLIENT_ID_BYTES: usize = 128;
/// Membership changes remembered for per-client floors; older ones fold into one floor for
/// every client.
const MAX_MOVES: usize = 64;
/// Seconds a refused request is told to wait when an owner cannot be reached or is moving.
const RETRY_AFTER: u64 = 1;

/// How checks are forwarded (`cluster-forward-threads`, `cluster-forward-queue`,
/// `cluster-forward-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardConfig {
    /// Threads sending batches to owners.
    pub threads: usize,
    /// Checks that may wait for a thread; more are refused with 503.
    pub queue: usize,
    /// Deadline of one batch: connect, send, answer.
    pub timeout: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            threads: 4,
            queue: 4096,
            timeout: Duration::from_secs(2),
        }
    }
}

/// A live node: its id and the URL other nodes reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub url: String,
}

/// One assertion to check and record: what the owner's replay cache needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub client_id: String,
    pub jti: String,
    pub iat: u64,
    /// Remember the `jti` until then (the assertion's `exp`, or `iat` + max age).
    pub until: u64,
    /// Sent by a new owner to the client's previous owner, which checks and records it in its
    /// replay cache whoever owns the client now (module docs of [`crate::cluster`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handoff: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    from: String,
    /// The node the sender believes owns every item.
    owner: String,
    items: Vec<Check>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Results {
    results: Vec<Verdict>,
}

/// One check's answer: 200, or the refusal as it would go on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Verdict {
    status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    error_description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl Verdict {
    const ACCEPTED: Verdict = Verdict {
        status: 200,
        error_description: String::new(),
        retry_after: None,
    };

    fn of(result: &Result<(), Error>) -> Verdict {
        match result {
            Ok(()) => Verdict::ACCEPTED,
            Err(e) => {
                let w = WireError::from(e);
                Verdict {
                    status: w.status,
                    error_description: w.description,
                    retry_after: w.retry_after,
                }
            }
        }
    }

    /// The refusal this node answers with: the owner's, by status family.
    fn into_result(self) -> Result<(), Error> {
        let description = self.error_description;
        let retry_after = self.retry_after.unwrap_or(RETRY_AFTER);
        Err(match self.status {
            200 => return Ok(()),
            401 => ApiError::InvalidClient(description).into(),
            429 => ApiError::Throttled {
                retry_after,
                description,
            }
            .into(),
            _ => ApiError::Unavailable {
                retry_after,
                description,
            }
            .into(),
        })
    }
}

/// Where a client's checks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node owns the client.
    Local,
    /// Another node does.
    Forward(Node),
}

/// What the owner of a client checks besides its own replay cache, for the clients that moved
/// to it within the retention: assertions issued before `floor` are refused (an owner since
/// gone may have accepted them), and `previous` owners still live check and record the `jti`
/// too (a handoff), so a move between live nodes costs no refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerPlan {
    pub floor: u64,
    pub previous: Vec<Node>,
}

/// A forwarded check's answer goes here, on a forwarding thread.
pub type Reply = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// Replies of one [`ReplayOwners::forward_all`] still outstanding.
struct Join {
    left: usize,
    first_error: Option<Error>,
    reply: Option<Reply>,
}

struct Pending {
    owner: Node,
    check: Check,
    reply: Reply,
}

/// The live set and the recent changes of ownership.
#[derive(Debug, Default)]
struct View {
    /// Sorted by id.
    nodes: Vec<Node>,
    /// Recent membership changes, oldest first.
    moves: Vec<Move>,
    /// The floor of changes no longer remembered one by one, for every client.
    floor_all: u64,
    /// Whether a view was ever installed.
    known: bool,
}

#[derive(Debug, Clone)]
struct Move {
    at: u64,
    /// Assertions issued before this may have been accepted by an owner this node cannot ask.
    floor: u64,
    before: Vec<String>,
    after: Vec<String>,
}

#[derive(Debug, Default)]
struct Stats {
    forwarded: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    served: AtomicU64,
    peer_refused: AtomicU64,
    queued: AtomicUsize,
    nodes: AtomicUsize,
}

struct Shared {
    /// Refused peer requests are logged at most this often (a wrong master key or a clock
    /// off by more than the window on one node would otherwise log every batch).
    refusal_log: crate::http::admission::LogLimiter,
    self_id: String,
    auth: PeerAuth,
    tls: Option<Arc<rustls::ClientConfig>>,
    config: ForwardConfig,
    stats: Stats,
    metrics: Option<Arc<Metrics>>,
}

impl Shared {
    fn publish(&self) {
        let Some(m) = &self.metrics else { return };
        let s = &self.stats;
        let lines = format!(
            "# HELP latchkey_cluster_nodes Live nodes in this node's view of the cluster.\n\
             # TYPE latchkey_cluster_nodes gauge\nlatchkey_cluster_nodes {}\n\
             # HELP latchkey_cluster_replay_forwarded_total Client-assertion checks answered by their owner node.\n\
             # TYPE latchkey_cluster_replay_forwarded_total counter\nlatchkey_cluster_replay_forwarded_total {}\n\
             # HELP latchkey_cluster_replay_failed_total Forwarded checks whose owner could not be reached or answered wrongly (answered 503).\n\
             # TYPE latchkey_cluster_replay_failed_total counter\nlatchkey_cluster_replay_failed_total {}\n\
             # HELP latchkey_cluster_replay_rejected_total Checks refused because the forwarding queue was full (answered 503).\n\
             # TYPE latchkey_cluster_replay_rejected_total counter\nlatchkey_cluster_replay_rejected_total {}\n\
             # HELP latchkey_cluster_replay_queued Forwarded checks waiting or in flight.\n\
             # TYPE latchkey_cluster_replay_queued gauge\nlatchkey_cluster_replay_queued {}\n\
             # HELP latchkey_cluster_replay_served_total Checks other nodes forwarded to this one.\n\
             # TYPE latchkey_cluster_replay_served_total counter\nlatchkey_cluster_replay_served_total {}\n\
             # HELP latchkey_cluster_peer_refused_total Peer requests refused (authentication, time, replay, size).\n\
             # TYPE latchkey_cluster_peer_refused_total counter\nlatchkey_cluster_peer_refused_total {}\n",
            s.nodes.load(Ordering::Relaxed),
            s.forwarded.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.rejected.load(Ordering::Relaxed),
            s.queued.load(Ordering::Relaxed),
            s.served.load(Ordering::Relaxed),
            s.peer_refused.load(Ordering::Relaxed),
        );
        m.set_section("cluster_replay", lines);
    }
}

/// Replay ownership for one node of a cluster.
pub struct ReplayOwners {
    shared: Arc<Shared>,
    tx: channel::Sender<Pending>,
    view: ArcSwap<View>,
    /// Reference for `alive_until_ms`.
    base: Instant,
    /// Until when (ms after `base`) this node's lease is known to be alive; 0: not alive.
    alive_until_ms: AtomicU64,
    /// Clock skew tolerated on assertions.
    leeway: u64,
    /// Seconds after a change past which every assertion issued before its floor is too old.
    retention: u64,
}

impl std::fmt::Debug for ReplayOwners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayOwners")
            .field("node", &self.shared.self_id)
            .field("nodes", &self.view.load().nodes.len())
            .finish_non_exhaustive()
    }
}

/// What [`ReplayOwners::new`] needs.
#[derive(Debug)]
pub struct OwnersConfig {
    /// This node's id.
    pub node_id: String,
    /// The cluster's peer key (`MasterKey::peer_auth_key`).
    pub peer_key: [u8; 32],
    /// Trust for `https` peers (the cluster's CA); `None` allows only `http` peers.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub forward: ForwardConfig,
    /// The assertion leeway (`App::assertion_leeway`).
    pub leeway: u64,
    /// `[tokens] assertion-max-age`.
    pub max_age: u64,
}

impl ReplayOwners {
    /// Starts the forwarding threads; they end when the returned value is dropped.
    pub fn new(
        config: OwnersConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> std::io::Result<Arc<ReplayOwners>> {
        let forward = config.forward;
        let (tx, rx) = channel::bounded::<Pending>(forward.queue.max(1));
        let shared = Arc::new(Shared {
            refusal_log: crate::http::admission::LogLimiter::new(Duration::from_secs(10)),
            self_id: config.node_id,
            auth: PeerAuth::new(&config.peer_key),
            tls: config.tls,
            config: forward,
            stats: Stats::default(),
            metrics,
        });
        for i in 0..forward.threads.max(1) {
            let rx = rx.clone();
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("latchkey-forward-{i}"))
                .spawn(move || forward_loop(&shared, &rx))?;
        }
        shared.publish();
        Ok(Arc::new(ReplayOwners {
            shared,
            tx,
            view: ArcSwap::from_pointee(View::default()),
            base: Instant::now(),
            alive_until_ms: AtomicU64::new(0),
            leeway: config.leeway,
            retention: config
                .max_age
                .saturating_add(config.leeway.saturating_mul(2))
                .saturating_add(1),
        }))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.self_id
    }

    /// The peer authentication (the membership thread and tests sign with it too).
    pub fn auth(&self) -> &PeerAuth {
        &self.shared.auth
    }

    /// Installs the live set seen at `now`. A change of members is remembered for the
    /// per-client floors and handoffs (module docs). `gone_until`, for the first view: the
    /// latest time a node that is not live may have accepted assertions as an owner (`None`:
    /// unknown, so `now`).
    pub fn install(&self, mut nodes: Vec<Node>, now: u64, gone_until: Option<u64>) {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
        let old = self.view.load();
        let ids = |ns: &[Node]| ns.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let after = ids(&nodes);
        // A node's first view: the others owned every client before it was there; what
        // nodes now gone accepted is bounded by when they were last alive.
        let (before, floor) = if old.known {
            (ids(&old.nodes), self.floor_at(now))
        } else {
            let others = after
                .iter()
                .filter(|id| **id != self.shared.self_id)
                .cloned()
                .collect();
            (others, self.floor_at(gone_until.unwrap_or(now).min(now)))
        };
        let mut moves = old.moves.clone();
        let mut floor_all = old.floor_all;
        if before != after || !old.known {
            moves.push(Move {
                at: now,
                floor,
                before,
                after,
            });
        }
        moves.retain(|m| m.at.saturating_add(self.retention) >= now);
        while moves.len() > MAX_MOVES {
            let m = moves.remove(0);
            floor_all = floor_all.max(m.floor);
        }
        self.shared
            .stats
            .nodes
            .store(nodes.len(), Ordering::Relaxed);
        self.view.store(Arc::new(View {
            nodes,
            moves,
            floor_all,
            known: true,
        }));
        self.shared.publish();
    }

    /// The lease is alive until `until` (a keep-alive answered).
    pub fn lease_alive_until(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.base).as_millis();
        self.alive_until_ms.store(
            u64::try_from(ms).unwrap_or(u64::MAX).max(1),
            Ordering::Release,
        );
    }

    /// The lease lapsed or cannot be renewed: this node stops answering as an owner.
    pub fn lease_lost(&self) {
        self.alive_until_ms.store(0, Ordering::Release);
    }

    fn lease_alive(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        now < self.alive_until_ms.load(Ordering::Acquire)
    }

    /// Whether this node holds its lease and sees itself among the live nodes: it can then
    /// route every client's checks.
    pub fn ready(&self) -> bool {
        self.lease_alive()
            && self
                .view
                .load()
                .nodes
                .iter()
                .any(|n| n.id == self.shared.self_id)
    }

    /// Where `client`'s checks go, or 503 while this node knows no live set.
    pub fn route(&self, client: &str) -> Result<Route, Error> {
        let view = self.view.load();
        let owner = rendezvous::owner(view.nodes.iter().map(|n| n.id.as_str()), client)
            .ok_or_else(|| unavailable("this node does not yet know the cluster's live nodes"))?;
        if owner == self.shared.self_id {
            return Ok(Route::Local);
        }
        let node = view
            .nodes
            .iter()
            .find(|n| n.id == owner)
            .cloned()
            .ok_or_else(|| unavailable("the cluster's live set changed; retry"))?;
        Ok(Route::Forward(node))
    }

    /// Before this node checks `client`'s assertion as its owner: that it is the owner in its
    /// own view and holds its lease; and what else the check needs for a client that moved
    /// here recently ([`OwnerPlan`]).
    pub fn owner_plan(&self, client: &str) -> Result<OwnerPlan, Error> {
        if !self.lease_alive() {
            return Err(unavailable(
                "this node's cluster lease is not current; it checks no assertions until it is",
            ));
        }
        let view = self.view.load();
        let me = self.shared.self_id.as_str();
        fn owner_in<'a>(ns: &'a [String], client: &str) -> Option<&'a str> {
            rendezvous::owner(ns.iter().map(String::as_str), client)
        }
        if rendezvous::owner(view.nodes.iter().map(|n| n.id.as_str()), client) != Some(me) {
            return Err(unavailable(
                "the cluster's live set is changing; this node no longer checks this agent's \
                 assertions",
            ));
        }
        let mut plan = OwnerPlan {
            floor: view.floor_all,
            previous: Vec::new(),
        };
        for m in &view.moves {
            if owner_in(&m.after, client) != Some(me) {
                continue;
            }
            match owner_in(&m.before, client) {
                Some(p) if p == me => {}
                // The previous owner is still live: its cache knows what it accepted.
                Some(p) if let Some(node) = view.nodes.iter().find(|n| n.id == p) => {
                    if !plan.previous.contains(node) {
                        plan.previous.push(node.clone());
                    }
                }
                // Gone (or nobody): what it accepted is lost to this node.
                _ => plan.floor = plan.floor.max(m.floor),
            }
        }
        Ok(plan)
    }

    /// The floor this node applies to a handoff check of `client`, as its previous owner. The
    /// new owner asks only this node, so what this node's own previous owners accepted is
    /// not asked of anyone: for each recent move that gave it `client`, the floor of that
    /// move, as if nobody could have been asked (only a first view with nobody before it
    /// keeps its bound from when gone nodes were last alive).
    pub fn handoff_floor(&self, client: &str) -> u64 {
        let view = self.view.load();
        let me = self.shared.self_id.as_str();
        fn owner_in<'a>(ns: &'a [String], client: &str) -> Option<&'a str> {
            rendezvous::owner(ns.iter().map(String::as_str), client)
        }
        view.moves
            .iter()
            .filter(|m| owner_in(&m.after, client) == Some(me))
            .filter_map(|m| match owner_in(&m.before, client) {
                Some(p) if p == me => None,
                Some(_) => Some(self.floor_at(m.at)),
                None => Some(m.floor),
            })
            .fold(view.floor_all, u64::max)
    }

    /// The floor a change at `at` sets for the clients it moved: as after a restart, an
    /// earlier owner may have accepted assertions issued up to `at + leeway`.
    fn floor_at(&self, at: u64) -> u64 {
        crate::api::onboarding::replay_floor(at, self.leeway)
    }

    /// Queues `check` for its owner; `reply` gets the owner's answer (or 503 if it cannot be
    /// reached in time) on a forwarding thread. When the queue is full, `reply` gets 503 at
    /// once, on the caller's thread: every reply is called exactly once.
    pub fn forward(&self, owner: Node, check: Check, reply: Reply) {
        let s = &self.shared.stats;
        let busy =
            || unavailable("too many assertions waiting for their owner nodes; retry shortly");
        let taken = s
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.shared.config.queue.max(1)).then_some(n + 1)
            });
        if taken.is_err() {
            s.rejected.fetch_add(1, Ordering::Relaxed);
            self.shared.publish();
            return reply(Err(busy()));
        }
        let pending = Pending {
            owner,
            check,
            reply,
        };
        // The count above keeps the channel from filling; it is disconnected only if every
        // forwarding thread died.
        if let Err(channel::TrySendError::Full(p) | channel::TrySendError::Disconnected(p)) =
            self.tx.try_send(pending)
        {
            s.queued.fetch_sub(1, Ordering::AcqRel);
            s.rejected.fetch_add(1, Ordering::Relaxed);
            self.shared.publish();
            (p.reply)(Err(busy()));
        }
    }

    /// Forwards `check` to every node of `nodes`; `reply` gets `Ok` once all accepted, else
    /// the first refusal. Every reply is called exactly once.
    pub fn forward_all(&self, nodes: Vec<Node>, check: Check, reply: Reply) {
        if nodes.len() <= 1 {
            match nodes.into_iter().next() {
                Some(node) => self.forward(node, check, reply),
                None => reply(Ok(())),
            }
            return;
        }
        let join = Arc::new(std::sync::Mutex::new(Join {
            left: nodes.len(),
            first_error: None,
            reply: Some(reply),
        }));
        for node in nodes {
            let join = Arc::clone(&join);
            self.forward(
                node,
                check.clone(),
                Box::new(move |r| {
                    let mut j = join.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = r
                        && j.first_error.is_none()
                    {
                        j.first_error = Some(e);
                    }
                    j.left -= 1;
                    if j.left == 0
                        && let Some(reply) = j.reply.take()
                    {
                        let result = j.first_error.take().map_or(Ok(()), Err);
                        drop(j);
                        reply(result);
                    }
                }),
            );
        }
    }

    /// Serves a forwarded batch: authenticates it, then runs `check` (this node's floors,
    /// replay cache and log) on each item: as the owner, or as the previous owner of a
    /// handoff. Every refusal is an [`Error`] for the one wire mapping; the answer is signed
    /// over the request's nonce. Items whose clients moved here from a live node also need
    /// that node's check: then the answer comes from [`ReplayOwners::finish`].
    pub fn serve(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: u64,
        check: impl Fn(&Check, u64) -> Result<(), Error>,
    ) -> Result<Served, Error> {
        let stats = &self.shared.stats;
        let nonce = match self
            .shared
            .auth
            .verify_request(header, PEER_PATH, body, now)
        {
            Ok(n) => n,
            Err(e) => {
                stats.peer_refused.fetch_add(1, Ordering::Relaxed);
                self.shared.publish();
                if let Some(held_back) = self.shared.refusal_log.allow(Instant::now()) {
                    tracing::warn!(reason = %e, held_back, "peer request refused (is every node's master.key the same, and its clock in time?)");
                }
                return Err(peer_refusal(e));
            }
        };
        let batch: Batch = serde_json::from_slice(body)
            .map_err(|e| Error::from(ApiError::InvalidRequest(format!("bad peer batch: {e}"))))?;
        if batch.items.len() > MAX_ITEMS {
            return Err(ApiError::PayloadTooLarge(format!(
                "a peer batch holds at most {MAX_ITEMS} checks"
            ))
            .into());
        }
        let misrouted = batch.owner != self.shared.self_id;
        let mut pending = Vec::new();
        let mut verdicts = Vec::with_capacity(batch.items.len());
        for (i, item) in batch.items.into_iter().enumerate() {
            let result = if misrouted {
                Err(unavailable("the check reached another node than its owner"))
            } else if item.jti.len() > MAX_JTI_BYTES || item.client_id.len() > MAX_CLIENT_ID_BYTES {
                Err(ApiError::InvalidClient(format!(
                    "client assertion jti longer than {MAX_JTI_BYTES} bytes"
                ))
                .into())
            } else if item.handoff {
                // As the previous owner: what this cache holds, whoever owns the client now,
                // under the floors of how this node came to own it.
                check(&item, self.handoff_floor(&item.client_id))
            } else {
                self.owner_plan(&item.client_id).and_then(|plan| {
                    check(&item, plan.floor)?;
                    if !plan.previous.is_empty() {
                        pending.push((
                            i,
                            plan.previous,
                            Check {
                                handoff: true,
                                ..item
                            },
                        ));
                    }
                    Ok(())
                })
            };
            verdicts.push(Verdict::of(&result));
        }
        stats
            .served
            .fetch_add(verdicts.len() as u64, Ordering::Relaxed);
        self.shared.publish();
        if pending.is_empty() {
            return Ok(Served::Ready(sign_results(&self.shared, &nonce, verdicts)));
        }
        Ok(Served::Handoff(Handoff {
            nonce,
            verdicts,
            pending,
        }))
    }

    /// Completes a batch that needs previous owners' checks: forwards them and calls `done`
    /// with the signed answer once all are in (on a forwarding thread, or this one when the
    /// queue is full).
    pub fn finish(&self, handoff: Handoff, done: impl FnOnce(Response) + Send + 'static) {
        let Handoff {
            nonce,
            verdicts,
            pending,
        } = handoff;
        let state = Arc::new(std::sync::Mutex::new(Finishing {
            left: pending.len(),
            verdicts,
            done: Some(Box::new(done)),
        }));
        for (i, previous, check) in pending {
            let state = Arc::clone(&state);
            let shared = Arc::clone(&self.shared);
            self.forward_all(
                previous,
                check,
                Box::new(move |r| {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    if let (Err(_), Some(v)) = (&r, st.verdicts.get_mut(i)) {
                        *v = Verdict::of(&r);
                    }
                    st.left -= 1;
                    if st.left == 0
                        && let Some(done) = st.done.take()
                    {
                        let verdicts = std::mem::take(&mut st.verdicts);
                        drop(st);
                        done(sign_results(&shared, &nonce, verdicts));
                    }
                }),
            );
        }
    }
}

/// What [`ReplayOwners::serve`] answers.
#[derive(Debug)]
pub enum Served {
    Ready(Response),
    /// Some checks wait for previous owners: [`ReplayOwners::finish`].
    Handoff(Handoff),
}

/// A served batch waiting for previous owners' checks.
#[derive(Debug)]
pub struct Handoff {
    nonce: super::peer_auth::Nonce,
    verdicts: Vec<Verdict>,
    /// Item index, the previous owners to ask, the check to send them.
    pending: Vec<(usize, Vec<Node>, Check)>,
}

struct Finishing {
    left: usize,
    verdicts: Vec<Verdict>,
    done: Option<Box<dyn FnOnce(Response) + Send>>,
}

/// The signed answer of a batch.
fn sign_results(
    shared: &Shared,
    nonce: &super::peer_auth::Nonce,
    results: Vec<Verdict>,
) -> Response {
    match serde_json::to_vec(&Results { results }) {
        Ok(body) => {
            let auth = shared.auth.sign_answer(nonce, &body);
            Response::raw_json(200, body).header(AUTH_HEADER, auth)
        }
        // Unsigned: the sender refuses it, so its checks answer 503.
        Err(e) => Response::from_error(&Error::Config(format!("encoding a peer answer: {e}"))),
    }
}

fn forward_loop(shared: &Shared, rx: &channel::Receiver<Pending>) {
    while let Ok(first) = rx.recv() {
        let size = |p: &Pending| p.check.client_id.len() + p.check.jti.len() + CHECK_OVERHEAD;
        let mut bytes = size(&first);
        let mut taken = vec![first];
        while taken.len() < MAX_ITEMS && bytes < BATCH_BYTES - size_bound() {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += size(&p);
                    taken.push(p);
                }
                Err(_) => break,
            }
        }
        let n = taken.len();
        let mut by_owner: HashMap<String, (Node, Vec<Pending>)> = HashMap::new();
        for p in taken {
            by_owner
                .entry(p.owner.id.clone())
                .or_insert_with(|| (p.owner.clone(), Vec::new()))
                .1
                .push(p);
        }
        for (_, (owner, group)) in by_owner {
            send_batch(shared, &owner, group);
        }
        shared.stats.queued.fetch_sub(n, Ordering::AcqRel);
        shared.publish();
    }
}

/// Sends one owner its checks and answers each; any failure answers all of them 503.
fn send_batch(shared: &Shared, owner: &Node, group: Vec<Pending>) {
    let (checks, replies): (Vec<Check>, Vec<Reply>) =
        group.into_iter().map(|p| (p.check, p.reply)).unzip();
    match exchange(shared, owner, checks) {
        Ok(verdicts) => {
            shared
                .stats
                .forwarded
                .fetch_add(replies.len() as u64, Ordering::Relaxed);
            for (reply, verdict) in replies.into_iter().zip(verdicts) {
                reply(verdict.into_result());
            }
        }
        Err(reason) => {
            shared
                .stats
                .failed
                .fetch_add(replies.len() as u64, Ordering::Relaxed);
            tracing::warn!(owner = %owner.id, url = %owner.url, reason = %reason, checks = replies.len(), "forwarding client-assertion checks failed");
            for reply in replies {
                reply(Err(unavailable(&format!(
                    "the node that checks this agent's assertions ({}) cannot be reached; retry \
                     with a new assertion",
                    owner.id
                ))));
            }
        }
    }
}

/// One batch to one owner: its verdicts, one per check, or why there are none.
fn exchange(shared: &Shared, owner: &Node, items: Vec<Check>) -> Result<Vec<Verdict>, String> {
    let n = items.len();
    let url = PeerUrl::parse(&owner.url)?;
    let body = serde_json::to_vec(&Batch {
        from: shared.self_id.clone(),
        owner: owner.id.clone(),
        items,
    })
    .map_err(|e| e.to_string())?;
    let (auth, nonce) = shared
        .auth
        .sign_request(PEER_PATH, &body, crate::clock::unix_now());
    let answer = peer_client::post(
        &url,
        shared.tls.as_ref(),
        PEER_PATH,
        &auth,
        &body,
        shared.config.timeout,
    )?;
    if answer.status != 200 {
        return Err(format!(
            "answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body[..answer.body.len().min(256)])
        ));
    }
    if !shared
        .auth
        .verify_answer(&nonce, answer.auth.as_deref(), &answer.body)
    {
        return Err("the answer is not authenticated by the cluster's peer key".into());
    }
    let results: Results = serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
    if results.results.len() != n {
        return Err(format!("{} verdicts for {n} checks", results.results.len()));
    }
    Ok(results.results)
}

/// The largest estimate one check can have (its jti and client id are bounded).
const fn size_bound() -> usize {
    MAX_JTI_BYTES + MAX_CLIENT_ID_BYTES + CHECK_OVERHEAD
}
const _: () = assert!(BATCH_BYTES + 4096 < crate::config::MIN_CLUSTER_MAX_BODY);

fn unavailable(description: &str) -> Error {
    ApiError::Unavailable {
        retry_after: RETRY_AFTER,
        description: description.into(),
    }
    .into()
}

fn peer_refusal(e: PeerRefusal) -> Error {
    match e {
        PeerRefusal::Busy => unavailable(&e.to_string()),
        PeerRefusal::Oversize => ApiError::PayloadTooLarge(e.to_string()).into(),
        PeerRefusal::Malformed
        | PeerRefusal::BadMac
        | PeerRefusal::Stale
        | PeerRefusal::Replayed => ApiError::InvalidClient(e.to_string()).into(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    const KEY: [u8; 32] = [5; 32];

    fn owners(id: &str, forward: ForwardConfig) -> Arc<ReplayOwners> {
        let o = ReplayOwners::new(
            OwnersConfig {
                node_id: id.into(),
                peer_key: KEY,
                tls: None,
                forward,
                leeway: 5,
                max_age: 120,
            },
            Some(Arc::new(Metrics::new())),
        )
        .unwrap();
        o.lease_alive_until(Instant::now() + Duration::from_secs(3600));
        o
    }

    fn node(id: &str, url: &str) -> Node {
        Node {
            id: id.into(),
            url: url.into(),
        }
    }

    fn check(client: &str, jti: &str) -> Check {
        Check {
            client_id: client.into(),
            jti: jti.into(),
            iat: 1_000,
            until: 1_100,
            handoff: false,
        }
    }

    /// A client of `nodes` that `owner` owns.
    fn client_of(nodes: &[&str], owner: &str) -> String {
        (0..)
            .map(|i| format!("agent-{i}"))
            .find(|c| rendezvous::owner(nodes.iter().copied(), c) == Some(owner))
            .unwrap()
    }

    /// Forwards one check and waits for its answer.
    fn forward_one(o: &ReplayOwners, owner: Node, c: Check) -> Result<(), WireError> {
        let (tx, rx) = mpsc::channel();
        o.forward(
            owner,
            c,
            Box::new(move |r| tx.send(r.map_err(|e| WireError::from(&e))).unwrap()),
        );
        rx.recv().unwrap()
    }

    /// A fake owner answering one request: `answer` gets the request's auth header and body
    /// and returns (status, answer auth header, body).
    fn fake_owner(
        answer: impl FnOnce(&str, &[u8]) -> (u16, Option<String>, Vec<u8>) + Send + 'static,
    ) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            let (head_end, length) = loop {
                let n = s.read(&mut buf).unwrap();
                raw.extend_from_slice(&buf[..n]);
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut req = httparse::Request::new(&mut headers);
                if let Ok(httparse::Status::Complete(end)) = req.parse(&raw) {
                    let len = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| {
                            std::str::from_utf8(h.value)
                                .unwrap()
                                .parse::<usize>()
                                .unwrap()
                        })
                        .unwrap();
                    break (end, len);
                }
            };
            while raw.len() < head_end + length {
                let n = s.read(&mut buf).unwrap();
                raw.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&raw[..head_end]).to_string();
            let auth = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{AUTH_HEADER}: ")))
                .unwrap_or("")
                .to_owned();
            let (status, answer_auth, body) = answer(&auth, &raw[head_end..head_end + length]);
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if let Some(a) = answer_auth {
                out.push_str(&format!("{AUTH_HEADER}: {a}\r\n"));
            }
            out.push_str("\r\n");
            s.write_all(out.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
        });
        url
    }

    /// The fake owner checks with the real peer side: [`ReplayOwners::serve`] of `owner`,
    /// refusing `jti`s named "used".
    fn serving_owner(owner: Arc<ReplayOwners>) -> String {
        fake_owner(move |auth, body| {
            let now = crate::clock::unix_now();
            match owner.serve(Some(auth), body, now, |c, _| {
                if c.jti == "used" {
                    Err(ApiError::InvalidClient("client assertion refused: replayed".into()).into())
                } else {
                    Ok(())
                }
            }) {
                Ok(Served::Ready(r)) => (
                    200,
                    r.header_value(AUTH_HEADER).map(str::to_owned),
                    r.body_bytes().to_vec(),
                ),
                Ok(Served::Handoff(_)) => (500, None, b"unexpected handoff".to_vec()),
                Err(e) => {
                    let w = WireError::from(&e);
                    (w.status, None, w.to_json().into_bytes())
                }
            }
        })
    }

    #[test]
    fn a_forwarded_check_gets_its_owners_verdict() {
        let nodes = ["a", "b"];
        let owner = owners("a", ForwardConfig::default());
        let url = serving_owner(Arc::clone(&owner));
        owner.install(vec![node("a", &url)], 0, None);
        owner.install(
            vec![node("a", &url), node("b", "http://127.0.0.1:1")],
            0,
            None,
        );
        let client = client_of(&nodes, "a");
        let sender = owners("b", ForwardConfig::default());
        sender.install(
            vec![node("a", &url), node("b", "http://127.0.0.1:1")],
            0,
            None,
        );
        assert_eq!(
            sender.route(&client).unwrap(),
            Route::Forward(node("a", &url))
        );
        assert_eq!(
            forward_one(&sender, node("a", &url), check(&client, "fresh")),
            Ok(())
        );

        let url = serving_owner(Arc::clone(&owner));
        let w = forward_one(&sender, node("a", &url), check(&client, "used")).unwrap_err();
        assert_eq!((w.status, w.error), (401, "invalid_client"));
        assert!(w.description.contains("replayed"), "{w}");
        assert_eq!(sender.shared.stats.forwarded.load(Ordering::Relaxed), 2);
        assert_eq!(owner.shared.stats.served.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_unreachable_or_unauthenticated_owner_is_503_never_acceptance() {
        let sender = owners("b", ForwardConfig::default());
        // Nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let w = forward_one(
            &sender,
            node("a", &format!("http://127.0.0.1:{port}")),
            check("c", "j"),
        )
        .unwrap_err();
        assert_eq!((w.status, w.retry_after), (503, Some(1)));
        assert!(w.description.contains("cannot be reached"), "{w}");

        // An answer that claims acceptance without the cluster's key.
        let url = fake_owner(|_, _| {
            let body = br#"{"results":[{"status":200}]}"#.to_vec();
            (
                200,
                Some(PeerAuth::new(&[9; 32]).sign_answer(&[0; 16], &body)),
                body,
            )
        });
        let w = forward_one(&sender, node("a", &url), check("c", "j")).unwrap_err();
        assert_eq!(w.status, 503);
        // The owner's refusal of the request itself (wrong key here) is 503 too.
        let url = fake_owner(|_, _| (401, None, b"{}".to_vec()));
        let w = forward_one(&sender, node("a", &url), check("c", "j")).unwrap_err();
        assert_eq!(w.status, 503);
        // A verdict count that does not match.
        let url = fake_owner(|auth, _| {
            let nonce = auth.split(' ').nth(2).unwrap().to_owned();
            let mut n = [0u8; 16];
            for (i, b) in n.iter_mut().enumerate() {
                *b = u8::from_str_radix(&nonce[2 * i..2 * i + 2], 16).unwrap();
            }
            let body = br#"{"results":[]}"#.to_vec();
            (200, Some(PeerAuth::new(&KEY).sign_answer(&n, &body)), body)
        });
        let w = forward_one(&sender, node("a", &url), check("c", "j")).unwrap_err();
        assert_eq!(w.status, 503);
        assert_eq!(sender.shared.stats.failed.load(Ordering::Relaxed), 4);
        assert_eq!(sender.shared.stats.forwarded.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let config = ForwardConfig {
            threads: 1,
            queue: 1,
            timeout: Duration::from_secs(30),
        };
        let sender = owners("b", config);
        // An owner that accepts the connection and holds it until released.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let _ = release_rx.recv();
            drop(s);
        });
        let (tx, rx) = mpsc::channel();
        let first = tx.clone();
        sender.forward(
            node("a", &url),
            check("c", "1"),
            Box::new(move |r| first.send(r.is_ok()).unwrap()),
        );
        // The queue holds one: the second is refused on this thread, before returning.
        let w = forward_one(&sender, node("a", &url), check("c", "2")).unwrap_err();
        assert_eq!((w.status, w.retry_after), (503, Some(1)));
        assert_eq!(sender.shared.stats.rejected.load(Ordering::Relaxed), 1);
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(!rx.recv().unwrap(), "the held check fails, not accepted");
    }

    #[test]
    fn the_peer_endpoint_refuses_misrouted_oversize_and_unauthenticated_batches() {
        let owner = owners("a", ForwardConfig::default());
        owner.install(vec![node("a", "http://x:1")], 0, None);
        owner.install(
            vec![node("a", "http://x:1"), node("b", "http://y:1")],
            0,
            None,
        );
        let now = crate::clock::unix_now();
        let client = client_of(&["a", "b"], "a");
        let batch = |owner_id: &str, n: usize, jti: &str| {
            serde_json::to_vec(&Batch {
                from: "b".into(),
                owner: owner_id.into(),
                items: (0..n).map(|_| check(&client, jti)).collect(),
            })
            .unwrap()
        };
        let serve = |body: &[u8], key: &[u8; 32]| {
            let (h, nonce) = PeerAuth::new(key).sign_request(PEER_PATH, body, now);
            owner
                .serve(Some(&h), body, now, |_, _| Ok(()))
                .map(|served| {
                    let Served::Ready(r) = served else {
                        panic!("no handoff for a client that never moved")
                    };
                    assert!(owner.auth().verify_answer(
                        &nonce,
                        r.header_value(AUTH_HEADER),
                        r.body_bytes()
                    ));
                    serde_json::from_slice::<Results>(r.body_bytes())
                        .unwrap()
                        .results
                })
                .map_err(|e| WireError::from(&e))
        };
        assert_eq!(
            serve(&batch("a", 2, "j"), &KEY).unwrap(),
            vec![Verdict::ACCEPTED; 2]
        );
        // Sent to the wrong node: nothing is checked there.
        let v = serve(&batch("b", 1, "j"), &KEY).unwrap();
        assert_eq!(v[0].status, 503);
        let w = serve(&batch("a", MAX_ITEMS + 1, "j"), &KEY).unwrap_err();
        assert_eq!(w.status, 413);
        let v = serve(&batch("a", 1, &"j".repeat(MAX_JTI_BYTES + 1)), &KEY).unwrap();
        assert_eq!(v[0].status, 401);
        let w = serve(&batch("a", 1, "j"), &[6; 32]).unwrap_err();
        assert_eq!((w.status, w.error), (401, "invalid_client"));
        let w = serve(b"{not json", &KEY).unwrap_err();
        assert_eq!(w.status, 400);
        assert_eq!(owner.shared.stats.peer_refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_owner_without_a_current_lease_or_view_checks_nothing() {
        let o = owners("a", ForwardConfig::default());
        let w = WireError::from(&o.route("c").unwrap_err());
        assert_eq!(w.status, 503, "no view yet");
        o.install(vec![node("a", "http://x:1")], 100, None);
        assert_eq!(o.route("c").unwrap(), Route::Local);
        assert!(o.owner_plan("c").is_ok());
        o.lease_lost();
        let w = WireError::from(&o.owner_plan("c").unwrap_err());
        assert_eq!((w.status, w.retry_after), (503, Some(1)));
    }

    fn plan(floor: u64, previous: &[Node]) -> OwnerPlan {
        OwnerPlan {
            floor,
            previous: previous.to_vec(),
        }
    }

    #[test]
    fn clients_moved_from_a_gone_node_get_a_floor_and_from_a_live_one_a_handoff() {
        let a = owners("a", ForwardConfig::default());
        let floor = |t: u64| crate::api::onboarding::replay_floor(t, 5);
        // The first node: every client it owns may have been accepted by a node now gone.
        a.install(vec![node("a", "u")], 1_000, None);
        assert_eq!(a.owner_plan("agent-0").unwrap(), plan(floor(1_000), &[]));
        // b joins: a keeps the clients b does not win, with nothing new to check.
        a.install(vec![node("a", "u"), node("b", "v")], 1_050, None);
        let kept = client_of(&["a", "b"], "a");
        assert_eq!(a.owner_plan(&kept).unwrap(), plan(floor(1_000), &[]));
        let lost = client_of(&["a", "b"], "b");
        assert_eq!(
            WireError::from(&a.owner_plan(&lost).unwrap_err()).status,
            503,
            "a client b owns is not a's to check"
        );
        // b leaves: its clients come back to a, which cannot ask b what it accepted.
        a.install(vec![node("a", "u")], 1_100, None);
        assert_eq!(a.owner_plan(&lost).unwrap(), plan(floor(1_100), &[]));
        assert_eq!(a.owner_plan(&kept).unwrap(), plan(floor(1_000), &[]));
        // Past the retention (max age + 2 × leeway + 1) the age check refuses everything
        // issued before those floors: they are forgotten.
        a.install(vec![node("a", "u")], 1_100 + 120 + 10 + 2, None);
        assert_eq!(a.owner_plan(&lost).unwrap(), plan(0, &[]));

        // A node joining live nodes asks the previous owner instead of refusing.
        let d = owners("d", ForwardConfig::default());
        d.install(vec![node("a", "u"), node("d", "x")], 1_500, None);
        let to_d = client_of(&["a", "d"], "d");
        assert_eq!(d.owner_plan(&to_d).unwrap(), plan(0, &[node("a", "u")]));
        // The previous owner leaves: what it accepted before the move is lost, so the move's
        // floor applies; its own clients move with the floor of its departure.
        d.install(vec![node("d", "x")], 1_600, None);
        assert_eq!(d.owner_plan(&to_d).unwrap(), plan(floor(1_500), &[]));
        let from_a = client_of(&["a", "d"], "a");
        assert_eq!(d.owner_plan(&from_a).unwrap(), plan(floor(1_600), &[]));
    }

    #[test]
    fn a_first_view_floor_is_bounded_by_when_gone_nodes_were_alive() {
        let floor = |t: u64| crate::api::onboarding::replay_floor(t, 5);
        let first = |gone: Option<u64>| {
            let o = owners("a", ForwardConfig::default());
            o.install(vec![node("a", "u")], 1_000, gone);
            o.owner_plan("agent-0").unwrap()
        };
        // A new cluster: nobody ever owned anything.
        assert_eq!(first(Some(0)), plan(floor(0), &[]));
        // Every node gone since 900: what they accepted was issued by 900 + leeway.
        assert_eq!(first(Some(900)), plan(floor(900), &[]));
        // Unknown, or a node whose clock ran ahead: from now.
        assert_eq!(first(None), plan(floor(1_000), &[]));
        assert_eq!(first(Some(5_000)), plan(floor(1_000), &[]));
    }

    #[test]
    fn a_handoff_is_checked_under_every_floor_of_how_the_node_came_to_own_the_client() {
        let floor = |t: u64| crate::api::onboarding::replay_floor(t, 5);
        // e joined f: its clients came from f, which e asks; but a node asking e about them
        // cannot reach f through e, so e's handoff floor is that move's.
        let e = owners("e", ForwardConfig::default());
        e.install(vec![node("e", "u"), node("f", "v")], 1_000, Some(0));
        let from_f = client_of(&["e", "f"], "e");
        assert_eq!(e.owner_plan(&from_f).unwrap(), plan(0, &[node("f", "v")]));
        assert_eq!(e.handoff_floor(&from_f), floor(1_000));
        // The first node of a new cluster has nobody's acceptances to fear.
        let g = owners("g", ForwardConfig::default());
        g.install(vec![node("g", "u")], 1_000, Some(0));
        assert_eq!(g.handoff_floor("agent-0"), floor(0));
        // h joins and takes some of g's clients; h asks g, under g's floors.
        g.install(vec![node("g", "u"), node("h", "v")], 1_010, None);
        let hs = client_of(&["g", "h"], "h");
        assert_eq!(g.handoff_floor(&hs), floor(0));
    }

    #[test]
    fn a_batch_for_a_moved_client_is_answered_after_the_previous_owners_check() {
        let now = crate::clock::unix_now();
        // b, the previous owner, answers with its real peer side.
        let b = owners("b", ForwardConfig::default());
        let b_url = serving_owner(Arc::clone(&b));
        b.install(vec![node("b", &b_url)], 0, None);
        let a = owners("a", ForwardConfig::default());
        a.install(vec![node("a", "http://x:1"), node("b", &b_url)], 0, None);
        let client = client_of(&["a", "b"], "a");
        let run = |jti: &str| {
            let body = serde_json::to_vec(&Batch {
                from: "c".into(),
                owner: "a".into(),
                items: vec![check(&client, jti)],
            })
            .unwrap();
            let (h, nonce) = PeerAuth::new(&KEY).sign_request(PEER_PATH, &body, now);
            let Served::Handoff(handoff) = a.serve(Some(&h), &body, now, |_, _| Ok(())).unwrap()
            else {
                panic!("a client that moved from a live node needs its check")
            };
            let (tx, rx) = mpsc::channel();
            a.finish(handoff, move |r| tx.send(r).unwrap());
            let r = rx.recv().unwrap();
            assert!(
                a.auth()
                    .verify_answer(&nonce, r.header_value(AUTH_HEADER), r.body_bytes())
            );
            serde_json::from_slice::<Results>(r.body_bytes())
                .unwrap()
                .results
        };
        assert_eq!(run("fresh"), vec![Verdict::ACCEPTED]);
        // What b accepted before the move is refused.
        let b_url = serving_owner(Arc::clone(&b));
        a.install(vec![node("a", "http://x:1"), node("b", &b_url)], 0, None);
        assert_eq!(run("used")[0].status, 401);
        assert_eq!(b.shared.stats.served.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn forward_all_waits_for_every_node_and_reports_the_first_refusal() {
        let sender = owners("s", ForwardConfig::default());
        let ok = fake_owner(ok_answer);
        let also_ok = fake_owner(ok_answer);
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        sender.forward_all(
            vec![node("a", &ok), node("b", &also_ok)],
            check("c", "j"),
            Box::new(move |r| t.send(r.is_ok()).unwrap()),
        );
        assert!(rx.recv().unwrap());
        let ok = fake_owner(ok_answer);
        sender.forward_all(
            vec![node("a", &ok), node("b", "http://127.0.0.1:1")],
            check("c", "j"),
            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        );
        assert!(!rx.recv().unwrap(), "one node unreachable: refused");
    }

    /// A fake node accepting every check of a one-item batch, signed as the real one does.
    fn ok_answer(auth: &str, _: &[u8]) -> (u16, Option<String>, Vec<u8>) {
        let nonce = auth.split(' ').nth(2).unwrap();
        let mut n = [0u8; 16];
        for (i, b) in n.iter_mut().enumerate() {
            *b = u8::from_str_radix(&nonce[2 * i..2 * i + 2], 16).unwrap();
        }
        let body = br#"{"results":[{"status":200}]}"#.to_vec();
        (200, Some(PeerAuth::new(&KEY).sign_answer(&n, &body)), body)
    }
}
