//! The etcd engine's [`Committer`], and the one thread that keeps the node's mirror: it plans
//! ops against the mirror, commits them as etcd transactions, applies the cluster's ordered
//! watch to the mirror and the hot index, and proves the node fresh.
//!
//! **Ordering.** Every op appends to the audit table, whose sequence numbers are dense: every
//! op therefore reads the audit tail, and any two writes conflict. So the read set each
//! transaction compares is the whole store, as one key: `meta/wseq`, which every write
//! transaction rewrites. A transaction commits only if `wseq`'s mod revision is the one the
//! mirror had applied when the op was planned, i.e. nothing was written since; otherwise the
//! node catches up and plans again. Single-use IATs, RATs and If-Match are linearizable across
//! nodes by construction, since every op is checked against the latest state.
//!
//! **Group commit.** Ops queued together are planned in one mirror transaction (each seeing
//! the ones before it), which is then aborted; their rows go to etcd as one transaction, as
//! large as etcd takes (`max_txn_ops`).
//!
//! **Answers.** An op is answered once the watch has brought its transaction back and the
//! mirror and hot index have applied it: read-your-writes on the node that wrote.
//!
//! **Freshness.** A probe reads `wseq` linearizably every eighth of the bound; when the mirror
//! has applied that write, the node is proven current as of the moment the read was sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TryRecvError, TrySendError};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use redb::Database;

use super::super::commit::{Committer, Reply};
use super::super::freshness::Freshness;
use super::super::hot::HotIndex;
use super::super::ops::{self, Tables};
use super::super::seal::MasterKey;
use super::super::{ObserverSlot, StoreError, WriteOp, WriteOutcome};
use super::layout::{self, RowChange, RowKey, Table, prefix_end};
use super::mirror::{Changed, Mirror, Position, RowUpdate};

/// How the engine behaves; from the `[cluster]` settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The freshness bound F.
    pub freshness: Duration,
    /// Most operations in one etcd transaction (etcd's `--max-txn-ops`, 128 by default).
    pub max_txn_ops: usize,
    /// Most key and value bytes in one etcd transaction (etcd takes 1.5 MiB per request).
    pub max_txn_bytes: usize,
    /// Deadline of each etcd request.
    pub request_timeout: Duration,
    /// Most ops waiting for the engine; `submit` blocks while it is full.
    pub queue_capacity: usize,
    /// How every connection to etcd is made.
    pub tls: crate::config::EtcdTls,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            freshness: Duration::from_secs(2),
            max_txn_ops: 128,
            max_txn_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(5),
            queue_capacity: 16 * 1024,
            tls: crate::config::EtcdTls::default(),
        }
    }
}

/// Told what remote (and local) writes changed beyond the hot index; runs on the engine
/// thread, so it must be quick and must not write to the store.
pub type ChangeListener = Arc<dyn Fn(Changed) + Send + Sync>;

/// Where the engine finds the listener; set once the application is built.
pub type ListenerSlot = std::sync::OnceLock<ChangeListener>;

/// How often a planned group may lose the race against other nodes before its ops are
/// answered "retry later".
const MAX_ATTEMPTS: usize = 16;

/// HTTP/2 ping interval on the etcd connections. etcd closes connections that ping more often
/// than its `--grpc-keepalive-min-time` (5 s by default); a dead connection is noticed sooner
/// by the freshness probe, which then has the watch re-established.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Page size of a full load (smaller when a page of large rows exceeds `MAX_MESSAGE`).
const LOAD_PAGE: i64 = 1000;

/// Largest etcd answer this node decodes (a load page, a watch batch): tonic's default of
/// 4 MiB is less than 1000 rows of 64 KiB data source configurations, and a watch batch can
/// carry several transactions of up to etcd's 1.5 MiB each.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// An op's answer and the rows it writes, as planned.
type PlannedOp = (Result<WriteOutcome, StoreError>, Vec<RowChange>);

struct Request {
    op: WriteOp,
    reply: Reply,
}

/// The etcd engine: a queue in front of its thread.
pub(crate) struct Engine {
    tx: Option<Sender<Request>>,
    wake: Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Committer for Engine {
    fn submit(&self, op: WriteOp, reply: Reply) {
        let req = Request { op, reply };
        let Some(tx) = &self.tx else {
            (req.reply)(Err(StoreError::Closed));
            return;
        };
        let req = match tx.try_send(req) {
            Ok(()) => None,
            Err(TrySendError::Full(req)) => tx.send(req).err().map(|e| e.0),
            Err(TrySendError::Disconnected(req)) => Some(req),
        };
        match req {
            Some(req) => (req.reply)(Err(StoreError::Closed)),
            None => self.wake.notify_one(),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.tx.take();
        self.wake.notify_one();
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

/// What the engine thread owns.
pub(crate) struct Parts {
    pub endpoints: Vec<String>,
    pub db: Arc<Database>,
    pub key: Arc<MasterKey>,
    pub hot: Arc<HotIndex>,
    pub observer: Arc<ObserverSlot>,
    pub listener: Arc<ListenerSlot>,
    pub freshness: Arc<Freshness>,
    pub settings: EngineSettings,
}

impl Engine {
    /// Starts the engine thread: connects, loads or catches up the mirror, and serves writes.
    /// Returns once the thread runs; [`Freshness`] says when the node is current.
    pub(crate) fn spawn(parts: Parts) -> Result<Engine, StoreError> {
        let (tx, rx) = crossbeam::channel::bounded::<Request>(parts.settings.queue_capacity.max(1));
        let wake = Arc::new(tokio::sync::Notify::new());
        let wake2 = wake.clone();
        let list = parts.endpoints.join(",");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd {
                endpoints: list.clone(),
                reason: format!("cannot start the client runtime: {e}"),
            })?;
        let (client, watcher) = runtime.block_on(connect(&parts.endpoints, &parts.settings))?;
        let thread = std::thread::Builder::new()
            .name("latchkey-store-etcd".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut node = match Node::new(parts, client, watcher) {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::error!(error = %e, "the cluster engine cannot start");
                            for r in rx.try_iter() {
                                (r.reply)(Err(StoreError::Closed));
                            }
                            return;
                        }
                    };
                    node.run(rx, wake2).await;
                })
            })
            .map_err(StoreError::io("spawn store engine"))?;
        Ok(Engine {
            tx: Some(tx),
            wake,
            thread: Some(thread),
        })
    }
}

/// Two clients: one with a deadline on every request, one without for the watch (a deadline
/// would cut the stream). Both require a leader, so a partitioned member answers with an
/// error (and cancels the watch) instead of serving a stale view.
async fn connect(endpoints: &[String], s: &EngineSettings) -> Result<(Client, Client), StoreError> {
    let urls: Vec<String> = endpoints.iter().map(|e| s.tls.url(e)).collect();
    let fail = |e: etcd_client::Error| StoreError::Etcd {
        endpoints: endpoints.join(","),
        reason: format!("cannot connect: {e}"),
    };
    let unary = s.tls.apply(
        etcd_client::ConnectOptions::new()
            .with_connect_timeout(s.request_timeout)
            .with_timeout(s.request_timeout)
            .with_require_leader(true)
            .with_keep_alive(KEEP_ALIVE, s.request_timeout),
    );
    let watch = s.tls.apply(
        etcd_client::ConnectOptions::new()
            .with_connect_timeout(s.request_timeout)
            .with_require_leader(true)
            .with_keep_alive(KEEP_ALIVE, s.request_timeout),
    );
    let client = Client::connect(urls.clone(), Some(unary))
        .await
        .map_err(fail)?;
    let watcher = Client::connect(urls.clone(), Some(watch))
        .await
        .map_err(fail)?;
    super::health::manage(&client, &urls, &s.tls);
    super::health::manage(&watcher, &urls, &s.tls);
    Ok((client, watcher))
}

/// Ops planned together, waiting for their transaction to come back through the watch.
struct Pending {
    revision: i64,
    answers: Vec<(Reply, Result<WriteOutcome, StoreError>)>,
    taken: Instant,
}

/// Why the watch loop must start over.
enum Restart {
    /// Reconnect and watch from the mirror's position.
    Rewatch,
    /// The cluster compacted past the mirror: load everything again.
    Reload,
}

struct Node {
    client: Client,
    watcher: Client,
    mirror: Mirror,
    db: Arc<Database>,
    key: Arc<MasterKey>,
    observer: Arc<ObserverSlot>,
    listener: Arc<ListenerSlot>,
    freshness: Arc<Freshness>,
    settings: EngineSettings,
    pending: VecDeque<Pending>,
    /// The latest probe whose write the mirror had not applied yet: (sent, wseq revision).
    probe: Option<(Instant, i64)>,
    watch: Option<etcd_client::WatchStream>,
    cluster_id: u64,
    /// Ops taken off the queue but not yet planned.
    carry: VecDeque<Request>,
    /// Since when probes have shown writes the watch has not brought.
    lagging_since: Option<Instant>,
}

impl Node {
    fn new(p: Parts, client: Client, watcher: Client) -> Result<Self, StoreError> {
        let mirror = Mirror::new(p.db.clone(), p.key.clone(), p.hot.clone())?;
        Ok(Node {
            client,
            watcher,
            mirror,
            db: p.db,
            key: p.key,
            observer: p.observer,
            listener: p.listener,
            freshness: p.freshness,
            settings: p.settings,
            pending: VecDeque::new(),
            probe: None,
            watch: None,
            cluster_id: 0,
            carry: VecDeque::new(),
            lagging_since: None,
        })
    }

    async fn run(&mut self, rx: Receiver<Request>, wake: Arc<tokio::sync::Notify>) {
        let (probe_tx, mut probes) = tokio::sync::mpsc::channel(4);
        tokio::spawn(probe(
            self.client.clone(),
            self.settings.freshness / 8,
            self.settings.freshness / 4,
            probe_tx,
        ));
        let mut restart = Some(Restart::Rewatch);
        loop {
            if let Some(r) = restart.take()
                && let Err(next) = self.restart(r).await
            {
                restart = Some(next);
                // Bounded backoff while the cluster is unreachable; queued writes are
                // answered meanwhile, so nothing waits on a dead cluster.
                self.refuse_queued(&rx, "the cluster store is unreachable; retry");
                if self.disconnected(&rx) {
                    self.drain_pending().await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let Some(watch) = self.watch.as_mut() else {
                restart = Some(Restart::Rewatch);
                continue;
            };
            tokio::select! {
                msg = watch.message() => {
                    if let Err(r) = self.on_watch(msg) {
                        restart = Some(r);
                    }
                }
                Some(p) = probes.recv() => {
                    if let Err(r) = self.on_probe(p) {
                        restart = Some(r);
                    }
                }
                () = wake.notified() => {
                    if let Err(r) = self.commit_queued(&rx).await {
                        restart = Some(r);
                    }
                    if self.disconnected(&rx) {
                        self.drain_pending().await;
                        return;
                    }
                }
            }
        }
    }

    /// Whether the queue is empty and its sender gone (the store was dropped). An op that
    /// arrived meanwhile is kept for the next group.
    fn disconnected(&mut self, rx: &Receiver<Request>) -> bool {
        match rx.try_recv() {
            Err(TryRecvError::Disconnected) => self.carry.is_empty(),
            Err(TryRecvError::Empty) => false,
            Ok(r) => {
                self.carry.push_back(r);
                false
            }
        }
    }

    /// Answers what is still waiting for its transaction before the engine ends.
    async fn drain_pending(&mut self) {
        let deadline = Instant::now() + self.settings.request_timeout;
        while !self.pending.is_empty() && Instant::now() < deadline {
            let Some(watch) = self.watch.as_mut() else {
                break;
            };
            match tokio::time::timeout(Duration::from_millis(200), watch.message()).await {
                Ok(msg) => {
                    if self.on_watch(msg).is_err() {
                        break;
                    }
                }
                Err(_) => continue,
            }
        }
        for p in self.pending.drain(..) {
            for (reply, _) in p.answers {
                reply(Err(StoreError::ClusterUnavailable(
                    "the node stopped before the cluster confirmed the write; it may or may \
                     not have been made"
                        .into(),
                )));
            }
        }
    }

    fn refuse_queued(&mut self, rx: &Receiver<Request>, why: &str) {
        for r in self.carry.drain(..).chain(rx.try_iter()) {
            (r.reply)(Err(StoreError::ClusterUnavailable(why.into())));
        }
    }

    /// (Re)establishes the watch: a full load first when the mirror is empty, of another
    /// cluster, or compacted past.
    async fn restart(&mut self, why: Restart) -> Result<(), Restart> {
        self.watch = None;
        if self.cluster_id == 0 {
            self.cluster_id = self.cluster_id().await.map_err(|e| {
                tracing::warn!(error = %e, "cannot reach the etcd cluster");
                Restart::Rewatch
            })?;
        }
        let position = self.mirror.position();
        let reload = matches!(why, Restart::Reload)
            || position.revision == 0
            || position.cluster_id != self.cluster_id;
        if reload {
            self.full_load().await.map_err(|e| {
                tracing::warn!(error = %e, "full load of the cluster failed; retrying");
                Restart::Reload
            })?;
        }
        let from = self.mirror.position().revision + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        match self
            .watcher
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .watch(layout::cluster_prefix(), Some(options))
            .await
        {
            Ok(w) => {
                self.watch = Some(w);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the etcd cluster");
                Err(Restart::Rewatch)
            }
        }
    }

    async fn cluster_id(&mut self) -> Result<u64, etcd_client::Error> {
        let r = self
            .client
            .get(
                layout::wseq_key(),
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        Ok(r.header().map_or(0, |h| h.cluster_id()))
    }

    /// Loads every row at one revision into the mirror (pages of `LOAD_PAGE`).
    async fn full_load(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let prefix = layout::rows_prefix();
        let end = prefix_end(prefix.as_bytes());
        let mut rows = Vec::new();
        let mut from = prefix.clone().into_bytes();
        let mut revision = 0;
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let mut limit = LOAD_PAGE;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let page = match kv.get(from.clone(), Some(options)).await {
                Ok(page) => page,
                // Rows of up to 256 KiB: a page of large ones can exceed even a large message
                // limit; smaller pages then, down to one row per page.
                Err(e) if limit > 1 && e.to_string().contains("too large") => {
                    limit = (limit / 8).max(1);
                    continue;
                }
                Err(e) => return Err(self.unavailable("load", e)),
            };
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            for kv in page.kvs() {
                match layout::parse_row_key(kv.key()) {
                    Ok((t, k)) => rows.push((t, k, kv.value().to_vec())),
                    Err(e) => tracing::warn!(error = %e, "row ignored"),
                }
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        let wseq = self
            .client
            .get(
                layout::wseq_key(),
                Some(GetOptions::new().with_revision(revision)),
            )
            .await
            .map_err(|e| self.unavailable("load", e))?
            .kvs()
            .first()
            .map_or(0, |kv| kv.mod_revision());
        let count = rows.len();
        let changed = self.mirror.replace_all(
            rows,
            Position {
                revision,
                wseq,
                cluster_id: self.cluster_id,
            },
        )?;
        self.notify(changed);
        tracing::info!(
            rows = count,
            revision,
            ms = started.elapsed().as_millis() as u64,
            "loaded the cluster into the mirror"
        );
        self.answer_applied();
        Ok(())
    }

    fn on_watch(
        &mut self,
        msg: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    ) -> Result<(), Restart> {
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Restart::Rewatch),
            Err(e) => {
                tracing::warn!(error = %e, "the etcd watch failed; watching again");
                return Err(Restart::Rewatch);
            }
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    applied = self.mirror.position().revision,
                    "the cluster compacted past this node's mirror; reloading it in full"
                );
                return Err(Restart::Reload);
            }
            tracing::warn!(
                reason = resp.cancel_reason(),
                "the etcd watch was cancelled"
            );
            return Err(Restart::Rewatch);
        }
        if resp.events().is_empty() {
            return Ok(());
        }
        let wseq_key = layout::wseq_key();
        let mut rows: Vec<RowUpdate> = Vec::with_capacity(resp.events().len());
        let mut revision = 0;
        let mut wseq = None;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            if kv.key() == wseq_key.as_bytes() {
                wseq = Some(kv.mod_revision());
                continue;
            }
            if !kv.key().starts_with(layout::rows_prefix().as_bytes()) {
                continue;
            }
            match layout::parse_row_key(kv.key()) {
                Ok((t, k)) => rows.push((
                    t,
                    k,
                    match ev.event_type() {
                        EventType::Put => Some(kv.value().to_vec()),
                        EventType::Delete => None,
                    },
                )),
                Err(e) => tracing::warn!(error = %e, "row ignored"),
            }
        }
        match self.mirror.apply(rows, revision, wseq) {
            Ok(changed) => self.notify(changed),
            Err(e) => {
                tracing::error!(error = %e, "cannot apply the cluster's changes to the mirror");
                return Err(Restart::Reload);
            }
        }
        self.answer_applied();
        Ok(())
    }

    fn notify(&self, changed: Changed) {
        if changed.any()
            && let Some(l) = self.listener.get()
        {
            l(changed);
        }
    }

    /// A quorum read showed the cluster's last write. A watch that has not brought it for
    /// longer than the freshness bound is stuck (a connection that died without a reset, a
    /// member cut off from the others): it is watched again.
    fn on_probe(&mut self, (sent, wseq): (Instant, i64)) -> Result<(), Restart> {
        self.probe = Some((sent, wseq));
        self.check_probe();
        if self.mirror.position().wseq >= wseq {
            self.lagging_since = None;
            return Ok(());
        }
        let since = *self.lagging_since.get_or_insert(sent);
        if since.elapsed() > self.settings.freshness {
            tracing::warn!(
                applied = self.mirror.position().wseq,
                cluster = wseq,
                "the etcd watch fell behind the cluster; watching again"
            );
            self.lagging_since = None;
            return Err(Restart::Rewatch);
        }
        Ok(())
    }

    fn check_probe(&mut self) {
        if let Some((sent, wseq)) = self.probe
            && self.mirror.position().wseq >= wseq
        {
            self.freshness.prove(sent);
            self.probe = None;
        }
    }

    /// Answers every planned group whose transaction the mirror has applied.
    fn answer_applied(&mut self) {
        self.check_probe();
        let applied = self.mirror.position().revision;
        self.freshness.set_applied_revision(applied);
        while self.pending.front().is_some_and(|p| p.revision <= applied) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if let Some(o) = self.observer.get() {
                o.committed(p.answers.len());
                o.commit_took(p.taken.elapsed());
            }
            for (reply, answer) in p.answers {
                reply(answer);
            }
        }
    }

    /// Takes what is queued and commits it in groups.
    async fn commit_queued(&mut self, rx: &Receiver<Request>) -> Result<(), Restart> {
        let mut queue: VecDeque<Request> = std::mem::take(&mut self.carry);
        queue.extend(rx.try_iter());
        if let Some(o) = self.observer.get() {
            o.queue_depth(rx.len());
        }
        while !queue.is_empty() {
            self.commit_group(&mut queue).await?;
            // Ops that arrived meanwhile join the next group.
            queue.extend(rx.try_iter());
        }
        Ok(())
    }

    /// Commits the front of `queue` as one transaction (as many ops as fit), retrying when
    /// another node wrote first.
    async fn commit_group(&mut self, queue: &mut VecDeque<Request>) -> Result<(), Restart> {
        let taken = Instant::now();
        let mut take = queue.len();
        for _attempt in 0..MAX_ATTEMPTS {
            let ops: Vec<WriteOp> = queue.iter().take(take).map(|r| r.op.clone()).collect();
            let planned = match self.plan(ops) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot plan against the mirror");
                    for r in queue.drain(..take) {
                        (r.reply)(Err(StoreError::ClusterUnavailable(
                            "this node's mirror failed; retry".into(),
                        )));
                    }
                    return Err(Restart::Reload);
                }
            };
            let ops_count: usize = planned.iter().map(|p| txn_ops(&p.1)).sum::<usize>() + 1;
            let bytes: usize = planned.iter().map(|p| txn_bytes(&p.1)).sum();
            if (ops_count > self.settings.max_txn_ops || bytes > self.settings.max_txn_bytes)
                && take > 1
            {
                take = take.div_ceil(2);
                continue;
            }
            if ops_count > self.settings.max_txn_ops || bytes > self.settings.max_txn_bytes {
                let r = queue.pop_front().expect("take >= 1");
                (r.reply)(Err(StoreError::Invalid(format!(
                    "this change writes {} rows ({bytes} bytes), more than one cluster \
                     transaction takes ({} operations, {} bytes)",
                    ops_count - 1,
                    self.settings.max_txn_ops,
                    self.settings.max_txn_bytes
                ))));
                return Ok(());
            }
            let expected = self.mirror.position().wseq;
            let mut then: Vec<TxnOp> = Vec::with_capacity(ops_count);
            for (_, rows) in &planned {
                then.extend(rows.iter().map(txn_op));
            }
            then.push(TxnOp::put(
                layout::wseq_key(),
                taken.elapsed().as_nanos().to_be_bytes().to_vec(),
                None,
            ));
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    layout::wseq_key(),
                    CompareOp::Equal,
                    expected,
                )])
                .and_then(then)
                .or_else([TxnOp::get(layout::wseq_key(), None)]);
            let response = match self.client.txn(txn).await {
                Ok(r) => r,
                Err(e) => {
                    let why = unavailable_reason(&e);
                    tracing::warn!(error = %e, "the cluster refused a write");
                    for r in queue.drain(..take) {
                        (r.reply)(Err(StoreError::ClusterUnavailable(why.clone())));
                    }
                    return Ok(());
                }
            };
            if response.succeeded() {
                let revision = response.header().map_or(i64::MAX, |h| h.revision());
                let answers = queue
                    .drain(..take)
                    .zip(planned)
                    .map(|(r, (answer, _))| (r.reply, answer))
                    .collect();
                self.pending.push_back(Pending {
                    revision,
                    answers,
                    taken,
                });
                self.answer_applied();
                // The next group plans on top of this one: wait for it to come back, or its
                // compare would fail for certain.
                return self.catch_up(revision).await;
            }
            // Another node wrote first: catch up to its write, then plan again.
            let latest = response
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                    _ => None,
                })
                .unwrap_or(0);
            self.catch_up(latest).await?;
        }
        for r in queue.drain(..take) {
            (r.reply)(Err(StoreError::ClusterUnavailable(
                "other nodes kept writing first; retry".into(),
            )));
        }
        Ok(())
    }

    /// Applies the watch until the mirror has the write transaction at `wseq`.
    async fn catch_up(&mut self, wseq: i64) -> Result<(), Restart> {
        let deadline = Instant::now() + self.settings.request_timeout;
        while self.mirror.position().wseq < wseq {
            let Some(watch) = self.watch.as_mut() else {
                return Err(Restart::Rewatch);
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, watch.message()).await {
                Ok(msg) => self.on_watch(msg)?,
                Err(_) => return Err(Restart::Rewatch),
            }
        }
        Ok(())
    }

    /// Plans `ops` in one mirror write transaction, which is then aborted: the rows each op
    /// would write, in order, and its answer.
    fn plan(&self, ops: Vec<WriteOp>) -> Result<Vec<PlannedOp>, StoreError> {
        use super::super::error::DbResult;
        let txn = self.db.begin_write().db("plan")?;
        let mut out = Vec::with_capacity(ops.len());
        {
            let mut tables = Tables::open(&txn)?;
            for op in ops {
                let mut rows = Vec::new();
                let applied = ops::apply_recording(&mut tables, &self.key, op, Some(&mut rows))?;
                out.push((applied.result, rows));
            }
        }
        txn.abort().db("plan abort")?;
        Ok(out)
    }

    fn unavailable(&self, what: &str, e: etcd_client::Error) -> StoreError {
        StoreError::ClusterUnavailable(format!("cluster {what}: {}", unavailable_reason(&e)))
    }
}

/// Reads `wseq` linearizably every `every` and reports (when the read was sent, its mod
/// revision). A read that fails or takes longer than `timeout` reports nothing (the gate
/// closes by itself) and is retried at once, so a leader election costs only its own length.
async fn probe(
    mut client: Client,
    every: Duration,
    timeout: Duration,
    tx: tokio::sync::mpsc::Sender<(Instant, i64)>,
) {
    let every = every.max(Duration::from_millis(10));
    let mut failures: u64 = 0;
    loop {
        let sent = Instant::now();
        let outcome = tokio::time::timeout(timeout, client.get(layout::wseq_key(), None)).await;
        match outcome {
            Ok(Ok(r)) => {
                failures = 0;
                let wseq = r.kvs().first().map_or(0, |kv| kv.mod_revision());
                if tx.send((sent, wseq)).await.is_err() {
                    return;
                }
                tokio::time::sleep_until((sent + every).into()).await;
                continue;
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "cannot confirm this node is current");
                }
            }
            Err(_) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(failures, "the freshness read timed out");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a client is told when the cluster did not take a write (details go to the log).
fn unavailable_reason(e: &etcd_client::Error) -> String {
    let text = e.to_string();
    if text.contains("database space exceeded") || text.contains("NOSPACE") {
        "the cluster store is out of space (its etcd space quota); writes are refused until \
         an operator frees space"
            .into()
    } else if text.contains("Timeout") || text.contains("deadline") {
        "the cluster store did not confirm the write in time; it may or may not have been \
         made, so read before retrying"
            .into()
    } else {
        "the cluster store is unreachable or has no leader; retry".into()
    }
}

fn txn_op(change: &RowChange) -> TxnOp {
    match change {
        RowChange::Put(t, k, v) => TxnOp::put(layout::row_key(*t, k), v.clone(), None),
        RowChange::Del(t, k) => TxnOp::delete(layout::row_key(*t, k), None),
        RowChange::DelAuditRange(first, last) => TxnOp::delete(
            layout::row_key(Table::Audit, &RowKey::Seq(*first)),
            Some(DeleteOptions::new().with_range(layout::row_key(
                Table::Audit,
                &RowKey::Seq(last.saturating_add(1)),
            ))),
        ),
    }
}

fn txn_ops(rows: &[RowChange]) -> usize {
    rows.len()
}

fn txn_bytes(rows: &[RowChange]) -> usize {
    rows.iter()
        .map(|r| match r {
            RowChange::Put(_, _, v) => 64 + v.len(),
            _ => 64,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_retention_is_one_range_delete() {
        let op = txn_op(&RowChange::DelAuditRange(5, 9));
        let dbg = format!("{op:?}");
        for seq in [5, 10] {
            let key = layout::row_key(Table::Audit, &RowKey::Seq(seq)).into_bytes();
            assert!(dbg.contains(&format!("{key:?}")), "{dbg}");
        }
    }
}
