//! The agent list index: every agent of every tenant, in each order a list can ask for, so a
//! page of `GET /agents` costs O(page) plus a walk over chunk lengths, never a read of the
//! tenant's whole fleet.
//!
//! Per tenant there are four partitions (all agents, and one per boarding state), each holding
//! the agents in four orders: by id (= entity id), by name, by security profile and by eTag,
//! every key ending with the id so that each order is total and stable. A boarding-status
//! filter picks a partition; a condition on the sort field (`eq`, `startsWith`) narrows to a
//! range of ranks; what remains (other conditions, online state) is checked while walking the
//! range, and that walk is bounded per request by the caller.
//!
//! Each order is a [`Ranked`] set: a sorted list cut into chunks of at most `2 × CHUNK`
//! entries. Rank and select walk the chunk lengths (n / CHUNK words, about a thousand at 1M
//! agents) and binary-search one chunk; insert and remove shift within one chunk.
//!
//! Only the writer thread changes the index (right after each commit, before it answers), so
//! an acknowledged agent write is visible to the next list. Readers hold the read lock for the
//! length of one page.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::records::{AgentRecord, BoardingState, SecurityProfile};

/// Target chunk length; a chunk splits at twice this. Tiny under test, so that the model
/// tests cross many chunk boundaries.
const CHUNK: usize = if cfg!(test) { 2 } else { 512 };

/// A sorted set with rank and select.
#[derive(Debug, Clone)]
pub struct Ranked<K> {
    chunks: Vec<Vec<K>>,
    len: usize,
}

impl<K> Default for Ranked<K> {
    fn default() -> Self {
        Ranked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<K: Ord> Ranked<K> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk `k` belongs in: the first whose last entry is ≥ `k`, else the last one.
    fn chunk_for(&self, k: &K) -> usize {
        let c = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|l| l < k));
        c.min(self.chunks.len().saturating_sub(1))
    }

    /// Inserts `k`; false if it was there.
    pub fn insert(&mut self, k: K) -> bool {
        if self.chunks.is_empty() {
            self.chunks.push(vec![k]);
            self.len = 1;
            return true;
        }
        let c = self.chunk_for(&k);
        let chunk = &mut self.chunks[c];
        let Err(at) = chunk.binary_search(&k) else {
            return false;
        };
        chunk.insert(at, k);
        self.len += 1;
        if chunk.len() > 2 * CHUNK {
            let tail = chunk.split_off(CHUNK);
            self.chunks.insert(c + 1, tail);
        }
        true
    }

    /// Removes `k`; false if it was not there.
    pub fn remove(&mut self, k: &K) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let c = self.chunk_for(k);
        let chunk = &mut self.chunks[c];
        let Ok(at) = chunk.binary_search(k) else {
            return false;
        };
        chunk.remove(at);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(c);
        }
        true
    }

    /// The number of entries for which `pred` holds, `pred` being true on a prefix of the
    /// order (as for `slice::partition_point`).
    pub fn partition_point(&self, pred: impl Fn(&K) -> bool) -> usize {
        let c = self.chunks.partition_point(|c| c.last().is_some_and(&pred));
        let before: usize = self.chunks[..c].iter().map(Vec::len).sum();
        before + self.chunks.get(c).map_or(0, |ch| ch.partition_point(&pred))
    }

    /// `(chunk, offset)` of rank `i` (one past the end when `i ≥ len`).
    fn position(&self, mut i: usize) -> (usize, usize) {
        for (c, chunk) in self.chunks.iter().enumerate() {
            if i < chunk.len() {
                return (c, i);
            }
            i -= chunk.len();
        }
        (self.chunks.len(), 0)
    }

    /// Entries from rank `i` on, ascending.
    pub fn iter_from(&self, i: usize) -> impl Iterator<Item = &K> {
        let (c, o) = self.position(i);
        let first = self.chunks.get(c).map_or(&[][..], |ch| &ch[o..]);
        first
            .iter()
            .chain(self.chunks.get(c + 1..).unwrap_or(&[]).iter().flatten())
    }

    /// Entries of rank below `i`, descending.
    pub fn iter_below(&self, i: usize) -> impl Iterator<Item = &K> {
        let (c, o) = self.position(i);
        let first = self.chunks.get(c).map_or(&[][..], |ch| &ch[..o]);
        first
            .iter()
            .rev()
            .chain(self.chunks[..c].iter().rev().flat_map(|ch| ch.iter().rev()))
    }
}

/// The sort value of one order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortValue {
    /// Id order: the id alone.
    None,
    Number(u64),
    Text(Arc<str>),
}

/// A position in one order: the sort value, then the id.
pub type SortKey = (SortValue, Arc<str>);

/// The orders a list can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Id,
    Name,
    SecurityProfile,
    ETag,
}

impl Order {
    const ALL: [Order; 4] = [Order::Id, Order::Name, Order::SecurityProfile, Order::ETag];

    /// The key of `a` in this order.
    pub fn key(self, a: &AgentRecord, id: &Arc<str>) -> SortKey {
        let v = match self {
            Order::Id => SortValue::None,
            Order::Name => SortValue::Text(a.name.as_str().into()),
            // The rank of the profile's name among the names, so the order is the wire's.
            Order::SecurityProfile => SortValue::Number(match a.security_profile {
                SecurityProfile::Rsa3072 => 0,
                SecurityProfile::SharedSecret => 1,
            }),
            Order::ETag => SortValue::Number(a.etag),
        };
        (v, Arc::clone(id))
    }
}

/// One partition: its agents in every order.
#[derive(Debug, Default)]
struct Partition {
    orders: [Ranked<SortKey>; 4],
}

impl Partition {
    fn insert(&mut self, keys: &[SortKey; 4]) {
        for (k, set) in keys.iter().zip(&mut self.orders) {
            set.insert(k.clone());
        }
    }

    fn remove(&mut self, keys: &[SortKey; 4]) {
        for (k, set) in keys.iter().zip(&mut self.orders) {
            set.remove(k);
        }
    }
}

/// One tenant's agents: partition 0 holds all, 1 + state index the agents in that state.
#[derive(Debug, Default)]
struct TenantAgents {
    parts: [Partition; 4],
}

fn state_part(s: BoardingState) -> usize {
    match s {
        BoardingState::NotOnboarded => 1,
        BoardingState::Onboarding => 2,
        BoardingState::Onboarded => 3,
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Every agent by id (ids are unique across tenants), as last committed.
    agents: HashMap<Arc<str>, Arc<AgentRecord>>,
    tenants: HashMap<String, TenantAgents>,
}

/// The index. Cheap to read under its lock; see the module notes for who writes.
#[derive(Debug, Default)]
pub struct AgentIndex {
    inner: RwLock<Inner>,
}

/// What one list asks for.
#[derive(Debug, Clone)]
pub struct ListRequest<'a> {
    pub tenant: &'a str,
    /// Only agents in this boarding state.
    pub state: Option<BoardingState>,
    pub order: Order,
    pub descending: bool,
    /// Narrows the order to the keys whose sort value satisfies this (on the sort field only;
    /// true on a contiguous run of the order).
    pub range: Option<SortRange>,
    /// Where the page starts.
    pub start: Start,
    /// Page size.
    pub limit: usize,
    /// Most entries looked at while residual conditions reject them.
    pub max_scan: usize,
}

/// A contiguous run of one order, by its sort value (or id, in id order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortRange {
    Eq(String),
    Prefix(String),
}

impl SortRange {
    fn text(k: &SortKey) -> &str {
        match &k.0 {
            SortValue::Text(t) => t,
            _ => &k.1,
        }
    }

    /// True on the keys before the run.
    fn before(&self, k: &SortKey) -> bool {
        let t = Self::text(k);
        match self {
            SortRange::Eq(v) | SortRange::Prefix(v) => t < v.as_str(),
        }
    }

    /// True on the keys before the end of the run.
    fn before_end(&self, k: &SortKey) -> bool {
        let t = Self::text(k);
        match self {
            SortRange::Eq(v) => t <= v.as_str(),
            SortRange::Prefix(v) => t < v.as_str() || t.starts_with(v.as_str()),
        }
    }
}

/// The first entry of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Skip this many matching entries.
    Offset(usize),
    /// The entries strictly after this key, in the list's direction.
    After(SortKey),
}

/// One page.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub agents: Vec<Arc<AgentRecord>>,
    /// Matching agents in the whole list; a lower bound when `exact` is false.
    pub total: u64,
    pub exact: bool,
    /// The key to continue after, when there may be more.
    pub next: Option<SortKey>,
}

impl AgentIndex {
    /// Number of agents indexed.
    pub fn len(&self) -> usize {
        self.read().agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Agents per boarding state, all tenants: O(tenants), from the per-state partitions.
    pub fn count_by_state(&self) -> [(BoardingState, usize); 3] {
        let inner = self.read();
        [
            BoardingState::NotOnboarded,
            BoardingState::Onboarding,
            BoardingState::Onboarded,
        ]
        .map(|s| {
            let n = inner
                .tenants
                .values()
                .map(|t| t.parts[state_part(s)].orders[0].len())
                .sum();
            (s, n)
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change visible in a way
        // that matters more than stopping lists; keep serving.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces (or, with `None`, removes) agent `id`.
    pub(crate) fn apply(&self, id: &str, rec: Option<Arc<AgentRecord>>) {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *guard;
        if let Some((key, old)) = inner.agents.remove_entry(id)
            && let Some(t) = inner.tenants.get_mut(&old.tenant)
        {
            let keys = Order::ALL.map(|o| o.key(&old, &key));
            t.parts[0].remove(&keys);
            t.parts[state_part(old.state)].remove(&keys);
            if t.parts[0].orders[0].is_empty() {
                inner.tenants.remove(&old.tenant);
            }
        }
        if let Some(rec) = rec {
            let key: Arc<str> = id.into();
            let t = inner.tenants.entry(rec.tenant.clone()).or_default();
            // One allocation per key, shared by both partitions.
            let keys = Order::ALL.map(|o| o.key(&rec, &key));
            t.parts[0].insert(&keys);
            t.parts[state_part(rec.state)].insert(&keys);
            inner.agents.insert(key, rec);
        }
    }

    /// One page of a tenant's agents. `keep` is checked on every entry of the run (other
    /// conditions); with it, at most `max_scan` entries are looked at, and a page cut short by
    /// that bound has a `next` key and an inexact total.
    pub fn list(
        &self,
        req: &ListRequest<'_>,
        keep: Option<&dyn Fn(&AgentRecord) -> bool>,
    ) -> ListPage {
        let inner = self.read();
        let Some(t) = inner.tenants.get(req.tenant) else {
            return ListPage {
                exact: true,
                ..ListPage::default()
            };
        };
        let part = req.state.map_or(0, state_part);
        let set =
            &t.parts[part].orders[Order::ALL.iter().position(|o| *o == req.order).unwrap_or(0)];
        let (lo, hi) = match &req.range {
            None => (0, set.len()),
            Some(r) => (
                set.partition_point(|k| r.before(k)),
                set.partition_point(|k| r.before_end(k)),
            ),
        };
        let hi = hi.max(lo);
        let limit = req.limit.max(1);
        // The run [lo, hi) in the list's direction, starting at the cursor.
        let (from, skip) = match &req.start {
            Start::Offset(n) => (None, *n),
            Start::After(k) => (Some(k), 0),
        };
        let begin = |asc: bool| match from {
            None => {
                if asc {
                    lo
                } else {
                    hi
                }
            }
            Some(k) => {
                let r = if asc {
                    set.partition_point(|e| e <= k)
                } else {
                    set.partition_point(|e| e < k)
                };
                r.clamp(lo, hi)
            }
        };
        let lookup = |k: &SortKey| inner.agents.get(&k.1).cloned();
        match keep {
            None => {
                let span = hi - lo;
                let (start, avail) = if req.descending {
                    let b = begin(false);
                    (b, b - lo)
                } else {
                    let b = begin(true);
                    (b, hi - b)
                };
                let take = avail.saturating_sub(skip).min(limit);
                let keys: Vec<&SortKey> = if req.descending {
                    set.iter_below(start.saturating_sub(skip))
                        .take(take)
                        .collect()
                } else {
                    set.iter_from(start + skip).take(take).collect()
                };
                let more = avail > skip + take;
                ListPage {
                    next: if more {
                        keys.last().map(|k| (*k).clone())
                    } else {
                        None
                    },
                    agents: keys.into_iter().filter_map(lookup).collect(),
                    total: span as u64,
                    exact: true,
                }
            }
            Some(keep) => {
                let iter: Box<dyn Iterator<Item = &SortKey>> = if req.descending {
                    let b = begin(false);
                    Box::new(set.iter_below(b).take(b - lo))
                } else {
                    let b = begin(true);
                    Box::new(set.iter_from(b).take(hi - b))
                };
                let mut page = ListPage::default();
                let mut matched = 0usize;
                let mut last_key = None;
                let mut fill_key = None;
                let mut ended = true;
                for (scanned, k) in iter.enumerate() {
                    if scanned == req.max_scan.max(limit) {
                        ended = false;
                        break;
                    }
                    last_key = Some(k);
                    let Some(a) = lookup(k) else { continue };
                    if !keep(&a) {
                        continue;
                    }
                    matched += 1;
                    if matched > skip && page.agents.len() < limit {
                        page.agents.push(a);
                        if page.agents.len() == limit {
                            fill_key = Some(k.clone());
                        }
                    }
                }
                page.next = match fill_key {
                    // Full: more only if the scan saw another match or stopped early.
                    Some(k) if !ended || matched > skip + limit => Some(k),
                    Some(_) => None,
                    // Cut short by the bound: continue after the last entry looked at.
                    None if !ended => last_key.cloned(),
                    None => None,
                };
                page.total = matched as u64;
                page.exact = ended && from.is_none();
                page
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn agent(tenant: &str, id: &str, name: &str, state: u8, etag: u64) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            tenant: tenant.into(),
            name: name.into(),
            security_profile: if etag.is_multiple_of(2) {
                SecurityProfile::SharedSecret
            } else {
                SecurityProfile::Rsa3072
            },
            state: match state % 3 {
                0 => BoardingState::NotOnboarded,
                1 => BoardingState::Onboarding,
                _ => BoardingState::Onboarded,
            },
            etag,
            current_iat: None,
            created_at: 0,
            updated_at: 0,
            suspended_at: None,
        }
    }

    #[test]
    fn ranked_inserts_removes_ranks_and_iterates_across_chunks() {
        let mut r = Ranked::default();
        for i in (0..5000u32).rev() {
            assert!(r.insert(i * 2));
        }
        assert!(!r.insert(10));
        assert_eq!(r.len(), 5000);
        assert!(r.chunks.len() > 4, "split into chunks");
        assert_eq!(r.partition_point(|k| *k < 1001), 501);
        assert_eq!(
            r.iter_from(1500).take(3).copied().collect::<Vec<_>>(),
            [3000, 3002, 3004]
        );
        assert_eq!(
            r.iter_below(1500).take(2).copied().collect::<Vec<_>>(),
            [2998, 2996]
        );
        assert!(r.remove(&3000) && !r.remove(&3000) && !r.remove(&3001));
        assert_eq!(r.len(), 4999);
        assert_eq!(r.iter_from(1500).next(), Some(&3002));
        assert_eq!(r.iter_from(5000).next(), None);
        assert_eq!(r.iter_below(0).next(), None);
    }

    /// What an operation sequence builds, against the naive model: every agent of the tenant
    /// filtered, sorted, then cut.
    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8, u8, u64),
        Del(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..60, 0u8..20, 0u8..3, 0u64..5).prop_map(|(i, n, s, e)| Op::Put(i, n, s, e)),
            (0u8..60).prop_map(Op::Del),
        ]
    }

    fn naive(
        all: &HashMap<String, AgentRecord>,
        req: &ListRequest<'_>,
        keep: &dyn Fn(&AgentRecord) -> bool,
    ) -> Vec<SortKey> {
        let mut v: Vec<SortKey> = all
            .values()
            .filter(|a| a.tenant == req.tenant)
            .filter(|a| req.state.is_none_or(|s| a.state == s))
            .filter(|a| keep(a))
            .map(|a| req.order.key(a, &Arc::from(a.id.as_str())))
            .filter(|k| {
                req.range
                    .as_ref()
                    .is_none_or(|r| !r.before(k) && r.before_end(k))
            })
            .collect();
        v.sort();
        if req.descending {
            v.reverse();
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn index_pages_match_the_naive_model(
            ops in prop::collection::vec(op(), 1..200),
            order in 0usize..4,
            descending: bool,
            state in prop::option::of(0u8..3),
            range in prop::option::of((any::<bool>(), 0u8..20)),
            residual: bool,
            limit in 1usize..7,
        ) {
            let index = AgentIndex::default();
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Put(i, n, s, e) => {
                        let tenant = if i % 7 == 0 { "other" } else { "t" };
                        let a = agent(tenant, &format!("a{i:02}"), &format!("n{n}"), s, e);
                        index.apply(&a.id, Some(Arc::new(a.clone())));
                        model.insert(a.id.clone(), a);
                    }
                    Op::Del(i) => {
                        let id = format!("a{i:02}");
                        index.apply(&id, None);
                        model.remove(&id);
                    }
                }
            }
            let order = Order::ALL[order];
            let range = range.map(|(eq, n)| {
                let v = if order == Order::Id { format!("a{}", n % 6) } else { format!("n{}", n % 3) };
                if eq { SortRange::Eq(v) } else { SortRange::Prefix(v) }
            });
            let range = range.filter(|_| matches!(order, Order::Id | Order::Name));
            let keep_fn = |a: &AgentRecord| a.etag != 3;
            let keep: Option<&dyn Fn(&AgentRecord) -> bool> =
                if residual { Some(&keep_fn) } else { None };
            let mut req = ListRequest {
                tenant: "t",
                state: state.map(|s| agent("t", "x", "x", s, 0).state),
                order,
                descending,
                range,
                start: Start::Offset(0),
                limit,
                max_scan: 10_000,
            };
            let want = naive(&model, &req, keep.unwrap_or(&|_| true));
            // Offset paging.
            for page in 0..(want.len() / limit + 2) {
                req.start = Start::Offset(page * limit);
                let got = index.list(&req, keep);
                prop_assert_eq!(got.total, want.len() as u64);
                prop_assert!(got.exact);
                let ids: Vec<&str> = got.agents.iter().map(|a| a.id.as_str()).collect();
                let exp: Vec<&str> = want.iter().skip(page * limit).take(limit).map(|k| &*k.1).collect();
                prop_assert_eq!(ids, exp);
            }
            // Cursor paging: every entry once, in order.
            req.start = Start::Offset(0);
            let mut seen = Vec::new();
            loop {
                let got = index.list(&req, keep);
                seen.extend(got.agents.iter().map(|a| a.id.clone()));
                match got.next {
                    Some(k) => req.start = Start::After(k),
                    None => break,
                }
                prop_assert!(seen.len() <= want.len());
            }
            let exp: Vec<String> = want.iter().map(|k| k.1.to_string()).collect();
            prop_assert_eq!(seen, exp);
        }
    }

    /// A residual scan stops at its bound and says where to go on; following the cursor
    /// still yields every match once.
    #[test]
    fn bounded_scan_continues_with_a_cursor() {
        let index = AgentIndex::default();
        for i in 0..100 {
            let a = agent("t", &format!("a{i:03}"), "n", 0, i);
            index.apply(&a.id.clone(), Some(Arc::new(a)));
        }
        let keep = |a: &AgentRecord| a.etag.is_multiple_of(10);
        let mut req = ListRequest {
            tenant: "t",
            state: None,
            order: Order::Id,
            descending: false,
            range: None,
            start: Start::Offset(0),
            limit: 5,
            max_scan: 15,
        };
        let first = index.list(&req, Some(&keep));
        assert_eq!(first.agents.len(), 2, "a000, a010 within 15 entries");
        assert!(!first.exact);
        let mut seen: Vec<String> = first.agents.iter().map(|a| a.id.clone()).collect();
        let mut next = first.next;
        while let Some(k) = next {
            req.start = Start::After(k);
            let p = index.list(&req, Some(&keep));
            seen.extend(p.agents.iter().map(|a| a.id.clone()));
            next = p.next;
        }
        let want: Vec<String> = (0..10).map(|i| format!("a{:03}", i * 10)).collect();
        assert_eq!(seen, want);
    }
}
