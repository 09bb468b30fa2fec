//! The client-assertion replay cache: each `(issuer, jti)` is accepted once until it expires.
//!
//! **Design.** Tables of [`AtomicU64`] slots, allocated as the load needs them and never
//! freed or resized: at most `8 × capacity` bytes, and [`FIRST_LEVEL_SLOTS`] × 8 (32 KiB) for
//! an idle authority. The capacity is split into *levels*: the first holds
//! [`FIRST_LEVEL_SLOTS`], and each next one brings the total to [`LEVEL_GROWTH`] times the
//! previous total (4 Ki, 16 Ki, 64 Ki, … slots), the last one stopping at `capacity`. Slots
//! are grouped in buckets of [`BUCKET_SLOTS`] (two cache lines). A key `(issuer, jti)` is
//! hashed with BLAKE3 keyed by a secret per-instance key (so clients cannot aim for
//! collisions), giving a fingerprint and, in every level, two candidate buckets. Each slot
//! packs
//!
//! ```text
//! | fingerprint: 31 bits | choice: 1 bit | expiry: 32 bits |
//! ```
//!
//! where *choice* says which of the key's two buckets this is, *expiry* is the last second the
//! entry must be remembered (the assertion's `exp` plus the configured leeway) counted from
//! [`EPOCH`], and `0` is an empty slot. A slot whose expiry has passed is free: inserts reclaim
//! it with a compare-and-swap, so expired entries never need a sweep and steady load below
//! capacity never fills the table. An insert takes a free slot in the lowest allocated level
//! that has one among the key's two buckets, so expired room low down is reused first; only
//! when no allocated level has room is the next level allocated (a lock-free publish: racing
//! allocators each build one, the loser drops its own). No locks anywhere.
//!
//! *Why two buckets and not linear probing:* with a bounded probe window, linear probing's
//! clusters overflow a 31-slot window for about one insert in 400 already at half load.
//! Placing each key in the emptier of two 16-slot buckets ("power of two choices") keeps the
//! fullest bucket close to the average. Measured at steady load (65 536 slots in one table,
//! ten lifetimes): no refusal up to 75 % load, 13 in 515 400 at 80 %, 1.6 % at 90 %. With
//! 8-slot buckets refusals already started at 60 %. Levels only add room: a key is refused
//! only when its buckets in every level are full.
//!
//! **Full means fail closed.** If the key's buckets in every level hold only live entries and
//! every level is allocated, the new assertion is refused with [`ReplayError::Full`].
//! Evicting a live entry instead would let its assertion be replayed. Size `capacity` for at
//! least 1.5 × (peak rate × the longest accepted lifetime): `Full` starts to appear at about
//! 80 % load. `max_lifetime` bounds how long one assertion can hold a slot, so a client cannot
//! fill the table with assertions that expire in ten years. (One client can still use up
//! capacity by minting many short-lived assertions; rate-limit per client above this layer.)
//!
//! **Per-issuer share.** With [`ReplayConfig::max_per_issuer`] set, one issuer (one agent)
//! cannot fill the table and make every other issuer's assertions `Full`: an issuer whose
//! live entries reach its share is refused with [`ReplayError::IssuerShare`] while the others
//! go on. Live entries are counted per issuer in a small count-min sketch: two of
//! [`SHARE_CELLS`] cells (picked by a keyed SipHash of the issuer), each a ring of
//! [`SHARE_BUCKETS`] counters by expiry time, and the issuer's count is the smaller of its two
//! cells. A cell shared with other issuers only ever overcounts, so an issuer never gets more
//! than its share; an honest issuer is refused early only if both its cells are shared with
//! issuers that together hold a share, which the two choices make rare. A counter keeps an
//! entry until its bucket (`share_window / (SHARE_BUCKETS - 1)` seconds wide) has passed, so
//! the count is a little high, never low, for entries within `share_window`; entries
//! remembered longer are counted in the last bucket. Entries [`ReplayCache::restore`] puts
//! back are not counted (a restart forgets the counts, not the entries). The sketch costs
//! 64 KiB, allocated only when the share is set; a check reads two cache lines and an insert
//! updates them.
//!
//! **False positives.** A legitimate assertion is refused as [`ReplayError::Replayed`] only
//! if a live entry in one of its buckets, stored under the same choice, has the same
//! fingerprint: bucket index and choice are part of the effective fingerprint. A check
//! compares at most `2 × BUCKET_SLOTS` = 32 live slots per allocated level (at most 10
//! levels at [`MAX_CAPACITY`], 6 at the authority's default), so at full load the chance per
//! fresh assertion is at most `320 × 2^-31 ≈ 1.5 × 10^-7`, whatever the capacity.
//!
//! **Cost.** A check reads two buckets per allocated level: one level (two buckets in a
//! 32 KiB table that stays in cache) until more than a few thousand assertions are live.
//!
//! **Concurrency.** An insert scans the key's buckets in every allocated level for a
//! duplicate, claims a free slot with a CAS (rescanning if the CAS loses), then scans again:
//! if another live copy of the key appeared meanwhile, it reports `Replayed`. With
//! sequentially consistent operations, of two racing inserts of one key at least one sees the
//! other's slot, so at most one succeeds. The count of allocated levels is itself read and
//! raised with sequentially consistent operations, and only after the level is published, so
//! the later of two racing inserts also scans the level the earlier one wrote into.
//!
//! **Restarts.** The table lives in memory only. Two ways keep the authority replay-safe
//! across restarts: a caller that logs accepted entries ([`ReplayCache::check_and_insert_fingerprint`]
//! returns what to log) recovers them into a new table with [`ReplayCache::restore`] (the hash
//! key must then be the same in both processes); and [`ReplayConfig::floor`] refuses
//! assertions issued before a start time (or without `iat`) with [`ReplayError::BeforeFloor`].

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use once_cell::race::OnceBox;
use zeroize::Zeroizing;

/// Expiries are stored as seconds since 2020-01-01T00:00:00Z in 32 bits, which lasts until 2156.
pub const EPOCH: u64 = 1_577_836_800;
/// Slots per bucket: 16 × 8 bytes, two cache lines.
pub const BUCKET_SLOTS: usize = 16;
/// Capacity bounds (slots); the configured value is rounded up to a power of two within them.
pub const MIN_CAPACITY: usize = 64;
/// See [`MIN_CAPACITY`]. 2^30 slots is 8 GiB; bucket counts must fit in 32 bits.
pub const MAX_CAPACITY: usize = 1 << 30;
/// Slots of the first level, the only one allocated up front (32 KiB), or the whole capacity
/// if that is smaller.
pub const FIRST_LEVEL_SLOTS: usize = 4096;
/// Each level brings the total number of slots to this many times the previous total.
pub const LEVEL_GROWTH: usize = 4;
/// Cells of the per-issuer share sketch (see the module docs).
pub const SHARE_CELLS: usize = 1024;
/// Expiry-time counters per cell (one cache line).
pub const SHARE_BUCKETS: usize = 8;

const EXPIRY_BITS: u32 = 32;
const EXPIRY_MASK: u64 = (1 << EXPIRY_BITS) - 1;
const CHOICE_BIT: u64 = 1 << EXPIRY_BITS;
const FP_SHIFT: u32 = EXPIRY_BITS + 1;
const FP_MASK: u64 = (1 << (64 - FP_SHIFT)) - 1;

/// Why an assertion was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayError {
    /// This `(issuer, jti)` was already accepted and has not expired.
    Replayed,
    /// Every slot this assertion could use holds a live entry; refused rather than evict one.
    Full,
    /// Issued before the floor (or carries no `iat` while a floor is set).
    BeforeFloor,
    /// `exp` is already past (beyond leeway) or further ahead than `max_lifetime` allows.
    ExpiryOutOfRange,
    /// This issuer's live entries reached [`ReplayConfig::max_per_issuer`]; other issuers are
    /// not affected.
    IssuerShare,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Replayed => "assertion jti already used",
            Self::Full => "replay cache full",
            Self::BeforeFloor => "assertion issued before the replay floor",
            Self::ExpiryOutOfRange => "assertion exp outside the accepted range",
            Self::IssuerShare => "this client holds its share of the replay cache",
        })
    }
}

impl std::error::Error for ReplayError {}

/// The keyed BLAKE3 fingerprint of an assertion's `(issuer, jti)` (128 bits): the table keeps
/// 32 bits of it plus the bucket index, a replay log all of it. Meaningless without the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 16]);

/// How a [`ReplayCache`] is sized and what it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Most slots (rounded up to a power of two in `MIN_CAPACITY..=MAX_CAPACITY`); allocated
    /// in levels as the load needs them.
    pub capacity: usize,
    /// Longest accepted `exp - now`, in seconds.
    pub max_lifetime: u64,
    /// Clock skew tolerated after `exp`; entries are remembered until `exp + leeway`.
    pub leeway: u64,
    /// Assertions whose `iat` is before this Unix time, or that have no `iat`, are refused.
    pub floor: Option<u64>,
    /// Most live entries one issuer may hold (0: no per-issuer limit). Approximate from
    /// above: see "Per-issuer share" in the module docs.
    pub max_per_issuer: usize,
    /// The longest an entry is usually remembered (seconds), which sizes the share counters'
    /// buckets; 0 means `max_lifetime + leeway`.
    pub share_window: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            capacity: 1 << 16,
            max_lifetime: 3600,
            leeway: 60,
            floor: None,
            max_per_issuer: 0,
            share_window: 0,
        }
    }
}

/// Lock-free, bounded record of accepted client-assertion `jti`s that grows with use.
pub struct ReplayCache {
    levels: Box<[Level]>,
    /// How many leading levels are allocated; raised only after the level is published.
    allocated: AtomicUsize,
    capacity: usize,
    max_lifetime: u64,
    leeway: u64,
    floor: Option<u64>,
    key: Zeroizing<[u8; 32]>,
    shares: Option<Shares>,
}

/// Live entries per issuer, approximately (see "Per-issuer share" in the module docs).
struct Shares {
    max: u64,
    /// Seconds per bucket.
    width: u64,
    hasher: std::hash::RandomState,
    cells: Box<[ShareCell]>,
}

/// Counters by expiry bucket: `| bucket number: 32 bits | count: 32 bits |`.
#[repr(align(64))]
struct ShareCell([AtomicU64; SHARE_BUCKETS]);

/// One table of buckets, allocated on first need.
struct Level {
    buckets: usize,
    table: OnceBox<Box<[Bucket]>>,
}

#[repr(align(128))]
struct Bucket([AtomicU64; BUCKET_SLOTS]);

/// A key's hash words (which pick its buckets in each level) and its fingerprint.
#[derive(Clone, Copy)]
struct Probe {
    words: [u64; 2],
    fingerprint: u64,
}

impl ReplayCache {
    /// A cache with the given hash `key`, which must be secret and random (see
    /// [`ReplayCache::with_random_key`]).
    pub fn new(config: ReplayConfig, key: [u8; 32]) -> Self {
        let capacity = config
            .capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        let levels: Box<[Level]> = level_sizes(capacity)
            .into_iter()
            .map(|slots| Level {
                buckets: slots / BUCKET_SLOTS,
                table: OnceBox::new(),
            })
            .collect();
        let shares = (config.max_per_issuer > 0).then(|| {
            let window = match config.share_window {
                0 => config.max_lifetime.saturating_add(config.leeway),
                w => w,
            };
            Shares {
                max: config.max_per_issuer as u64,
                width: window.div_ceil(SHARE_BUCKETS as u64 - 1).max(1),
                hasher: std::hash::RandomState::new(),
                cells: (0..SHARE_CELLS)
                    .map(|_| ShareCell(std::array::from_fn(|_| AtomicU64::new(0))))
                    .collect(),
            }
        });
        let cache = Self {
            levels,
            allocated: AtomicUsize::new(0),
            capacity,
            max_lifetime: config.max_lifetime,
            leeway: config.leeway,
            floor: config.floor,
            key: Zeroizing::new(key),
            shares,
        };
        cache.grow(0);
        cache
    }

    /// A cache with a fresh hash key from the operating system's secure random source.
    pub fn with_random_key(config: ReplayConfig) -> Result<Self, crate::Error> {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| crate::Error::Crypto)?;
        Ok(Self::new(config, key))
    }

    /// Most slots the cache will ever hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of slot tables allocated so far (plus the level directory): what the cache
    /// costs now, at most `8 × capacity` plus a few hundred bytes.
    pub fn heap_bytes(&self) -> usize {
        self.tables()
            .map(|(_, t)| std::mem::size_of_val(t))
            .sum::<usize>()
            + std::mem::size_of_val(&*self.levels)
    }

    /// Records the assertion `(issuer, jti)` issued at `iat` and expiring at `exp` (Unix
    /// seconds) if it has not been seen; refuses it otherwise. `exp` must already have been
    /// validated by the claim checks; the range check here only bounds slot lifetimes.
    pub fn check_and_insert(
        &self,
        issuer: &str,
        jti: &str,
        iat: Option<u64>,
        exp: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        self.check_and_insert_for(issuer, self.fingerprint(issuer, jti), iat, exp, now)
            .map(|_| ())
    }

    /// [`ReplayCache::check_and_insert_fingerprint`] held to `issuer`'s share (when
    /// [`ReplayConfig::max_per_issuer`] is set): an issuer at its share is refused with
    /// [`ReplayError::IssuerShare`] before anything is inserted.
    pub fn check_and_insert_for(
        &self,
        issuer: &str,
        fingerprint: Fingerprint,
        iat: Option<u64>,
        exp: u64,
        now: u64,
    ) -> Result<u64, ReplayError> {
        let Some(shares) = &self.shares else {
            return self.check_and_insert_fingerprint(fingerprint, iat, exp, now);
        };
        let cells = shares.cells_of(issuer);
        let now_rel = now.saturating_sub(EPOCH);
        if shares.live(cells, now_rel) >= shares.max {
            return Err(ReplayError::IssuerShare);
        }
        let until = self.check_and_insert_fingerprint(fingerprint, iat, exp, now)?;
        shares.add(cells, until.saturating_sub(EPOCH), now_rel);
        Ok(until)
    }

    /// Seconds until an issuer at its share may have room again: one share bucket (at least
    /// 1; 1 without a share).
    pub fn share_retry_after(&self) -> u64 {
        self.shares.as_ref().map_or(1, |s| s.width)
    }

    /// An estimate from above of `issuer`'s live entries at `now` (0 without a share).
    pub fn issuer_entries(&self, issuer: &str, now: u64) -> u64 {
        self.shares
            .as_ref()
            .map_or(0, |s| s.live(s.cells_of(issuer), now.saturating_sub(EPOCH)))
    }

    /// The keyed fingerprint of `(issuer, jti)`: what the table and a replay log store.
    pub fn fingerprint(&self, issuer: &str, jti: &str) -> Fingerprint {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        // Length-prefix the issuer so ("ab", "c") and ("a", "bc") hash differently.
        h.update(&(issuer.len() as u64).to_le_bytes());
        h.update(issuer.as_bytes());
        h.update(jti.as_bytes());
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&h.finalize().as_bytes()[..16]);
        Fingerprint(fp)
    }

    /// [`ReplayCache::check_and_insert`] for a fingerprint already computed. On success,
    /// returns the last Unix second the entry is remembered (`exp + leeway`): what a replay log
    /// must record for [`ReplayCache::restore`].
    pub fn check_and_insert_fingerprint(
        &self,
        fingerprint: Fingerprint,
        iat: Option<u64>,
        exp: u64,
        now: u64,
    ) -> Result<u64, ReplayError> {
        if let Some(floor) = self.floor {
            match iat {
                Some(iat) if iat >= floor => {}
                _ => return Err(ReplayError::BeforeFloor),
            }
        }
        let remember_until = exp.saturating_add(self.leeway);
        if remember_until < now || exp.saturating_sub(now) > self.max_lifetime {
            return Err(ReplayError::ExpiryOutOfRange);
        }
        // Stored expiries are ≥ 1 so a live slot is never 0 (empty).
        let expiry = remember_until
            .checked_sub(EPOCH)
            .filter(|e| (1..=EXPIRY_MASK).contains(e))
            .ok_or(ReplayError::ExpiryOutOfRange)?;
        self.insert(probe(fingerprint), expiry, now)?;
        Ok(remember_until)
    }

    /// Puts back an entry a previous process accepted, remembered until `remember_until` (as
    /// returned by [`ReplayCache::check_and_insert_fingerprint`]). Entries already forgotten at
    /// `now` are skipped, and so is a duplicate. `Full` means the table is too small for what
    /// the previous process remembered: the caller must not serve as if it were restored.
    pub fn restore(
        &self,
        fingerprint: Fingerprint,
        remember_until: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        if remember_until < now {
            return Ok(());
        }
        let expiry = remember_until
            .checked_sub(EPOCH)
            .filter(|e| (1..=EXPIRY_MASK).contains(e))
            .ok_or(ReplayError::ExpiryOutOfRange)?;
        match self.insert(probe(fingerprint), expiry, now) {
            Ok(()) | Err(ReplayError::Replayed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Claims a slot for `probe` until `expiry` (relative to [`EPOCH`]) unless it is live.
    fn insert(&self, probe: Probe, expiry: u64, now: u64) -> Result<(), ReplayError> {
        let now_rel = now.saturating_sub(EPOCH);
        loop {
            // Read before the scan (and, sequentially consistent, before the CAS below) so a
            // racing insert of this key that reads it after its own CAS scans our level too.
            let allocated = self.allocated.load(Ordering::SeqCst);
            // The free slot of the emptier bucket in the lowest level with room:
            // (free count, slot, choice, observed value).
            let mut target: Option<(usize, &AtomicU64, usize, u64)> = None;
            for (level, table) in self.tables().take(allocated) {
                let mut best: Option<(usize, &AtomicU64, usize, u64)> = None;
                for (choice, b) in self.levels[level]
                    .candidates(probe, level)
                    .into_iter()
                    .enumerate()
                {
                    let mut free = 0;
                    let mut first = None;
                    for slot in &table[b].0 {
                        let v = slot.load(Ordering::SeqCst);
                        if !live(v, now_rel) {
                            free += 1;
                            first = first.or(Some((slot, v)));
                        } else if matches(v, probe, choice) {
                            return Err(ReplayError::Replayed);
                        }
                    }
                    if let Some((slot, v)) = first
                        && best.is_none_or(|(f, ..)| free > f)
                    {
                        best = Some((free, slot, choice, v));
                    }
                }
                target = target.or(best);
            }
            let Some((_, slot, choice, old)) = target else {
                if allocated >= self.levels.len() {
                    return Err(ReplayError::Full);
                }
                self.grow(allocated);
                continue;
            };
            let new =
                (probe.fingerprint << FP_SHIFT) | if choice == 1 { CHOICE_BIT } else { 0 } | expiry;
            if slot
                .compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue; // someone took or changed the slot: look again
            }
            // A racing insert of the same key may have claimed another free slot (e.g. one
            // that expired between our scan and theirs, or in a level it just allocated).
            // Whoever sees the other backs off.
            let allocated = self.allocated.load(Ordering::SeqCst);
            let duplicate = self.tables().take(allocated).any(|(level, table)| {
                let candidates = self.levels[level].candidates(probe, level);
                candidates.into_iter().enumerate().any(|(c, b)| {
                    table[b].0.iter().any(|other| {
                        !std::ptr::eq(other, slot) && {
                            let v = other.load(Ordering::SeqCst);
                            live(v, now_rel) && matches(v, probe, c)
                        }
                    })
                })
            });
            return if duplicate {
                Err(ReplayError::Replayed)
            } else {
                Ok(())
            };
        }
    }

    /// Allocates level `level` (if no one has yet) and counts it as allocated. Called with
    /// `level` = the number of allocated levels, so levels are allocated in order.
    fn grow(&self, level: usize) {
        let Some(l) = self.levels.get(level) else {
            return;
        };
        l.table.get_or_init(|| {
            Box::new(
                (0..l.buckets)
                    .map(|_| Bucket(std::array::from_fn(|_| AtomicU64::new(0))))
                    .collect(),
            )
        });
        self.allocated.fetch_max(level + 1, Ordering::SeqCst);
    }

    /// The allocated levels, lowest first, with their index.
    fn tables(&self) -> impl Iterator<Item = (usize, &[Bucket])> {
        self.levels
            .iter()
            .map_while(|l| l.table.get().map(|t| &t[..]))
            .enumerate()
    }

    /// Number of live entries at `now`. O(allocated slots): for metrics and tests, not the
    /// hot path.
    pub fn live_entries(&self, now: u64) -> usize {
        let now_rel = now.saturating_sub(EPOCH);
        self.tables()
            .flat_map(|(_, t)| t)
            .flat_map(|b| &b.0)
            .filter(|s| live(s.load(Ordering::Relaxed), now_rel))
            .count()
    }
}

impl Shares {
    /// The issuer's two distinct cells.
    fn cells_of(&self, issuer: &str) -> [usize; 2] {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(issuer);
        let n = SHARE_CELLS as u64;
        let a = (h & 0xFFFF_FFFF) % n;
        let mut b = (h >> 32) % n;
        if a == b {
            b = (a + 1) % n;
        }
        // Both are below SHARE_CELLS.
        [a as usize, b as usize]
    }

    /// The smaller of the two cells' counts of buckets that have not passed at `now_rel`.
    fn live(&self, cells: [usize; 2], now_rel: u64) -> u64 {
        let current = now_rel / self.width;
        cells
            .iter()
            .map(|&c| {
                self.cells[c]
                    .0
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .filter(|v| (v >> 32) >= current)
                    .map(|v| v & 0xFFFF_FFFF)
                    .sum::<u64>()
            })
            .min()
            .unwrap_or(0)
    }

    /// Counts one entry remembered until `until_rel` in both cells.
    fn add(&self, cells: [usize; 2], until_rel: u64, now_rel: u64) {
        let current = now_rel / self.width;
        // Beyond the ring's reach, the last bucket it has.
        let bucket = (until_rel / self.width).min(current + SHARE_BUCKETS as u64 - 1);
        let tag = bucket & 0xFFFF_FFFF;
        for &c in &cells {
            let slot = &self.cells[c].0[(bucket % SHARE_BUCKETS as u64) as usize];
            let mut v = slot.load(Ordering::Relaxed);
            loop {
                let new = match v >> 32 {
                    t if t == tag => v.saturating_add(1).min(v | 0xFFFF_FFFF),
                    // The slot holds a bucket that has passed: this one takes it over.
                    t if t < tag => (tag << 32) | 1,
                    // A later bucket already has the slot (only for an entry that expires
                    // before it could matter): nothing to count.
                    _ => break,
                };
                match slot.compare_exchange_weak(v, new, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(seen) => v = seen,
                }
            }
        }
    }
}

impl Level {
    /// The key's two distinct buckets in this level (`level` decorrelates the levels, so keys
    /// crowded together in one level spread out in the next).
    fn candidates(&self, probe: Probe, level: usize) -> [usize; 2] {
        let n = self.buckets as u64;
        let salt = (level as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Multiply-shift maps a uniform 32-bit value onto 0..n (n < 2^32) without a division.
        let pick = |w: u64| {
            let h = (w ^ salt).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 32;
            (h * n) >> 32
        };
        let first = pick(probe.words[0]);
        let mut second = pick(probe.words[1]);
        if second == first {
            // Two distinct buckets (every level has at least 4).
            second = (first + 1) % n;
        }
        // Both are below `buckets`, a usize.
        [first as usize, second as usize]
    }
}

/// The slot counts of the levels for a power-of-two `capacity`: [`FIRST_LEVEL_SLOTS`] (or
/// all of it), then each level brings the total to [`LEVEL_GROWTH`] times the last total.
/// Every size is a multiple of [`BUCKET_SLOTS`] (all totals are powers of two ≥ 64).
fn level_sizes(capacity: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut total = 0;
    let mut next = FIRST_LEVEL_SLOTS.min(capacity);
    loop {
        sizes.push(next - total);
        total = next;
        if total >= capacity {
            return sizes;
        }
        next = (total * LEVEL_GROWTH).min(capacity);
    }
}

fn probe(fingerprint: Fingerprint) -> Probe {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&fingerprint.0[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    let (a, b) = (word(0), word(1));
    // The low half of `a` and all of `b` pick buckets; the high half of `a` is the stored
    // fingerprint.
    Probe {
        words: [a & 0xFFFF_FFFF, b],
        fingerprint: (a >> 32) & FP_MASK,
    }
}

/// Whether slot value `v` is an entry that must still be remembered at `now_rel`.
fn live(v: u64, now_rel: u64) -> bool {
    v != 0 && (v & EXPIRY_MASK) >= now_rel
}

/// Whether slot value `v`, found in the key's bucket number `choice`, is this key's entry.
fn matches(v: u64, probe: Probe, choice: usize) -> bool {
    (v >> FP_SHIFT) == probe.fingerprint && ((v & CHOICE_BIT) != 0) == (choice == 1)
}

impl fmt::Debug for ReplayCache {
    // Never print the hash key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCache")
            .field("capacity", &self.capacity())
            .field("levels", &self.levels.len())
            .field("allocated", &self.allocated.load(Ordering::Relaxed))
            .field("max_lifetime", &self.max_lifetime)
            .field("leeway", &self.leeway)
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const NOW: u64 = 1_800_000_000;

    fn cache(config: ReplayConfig) -> ReplayCache {
        ReplayCache::new(config, [42; 32])
    }

    fn small() -> ReplayCache {
        cache(ReplayConfig {
            capacity: 64,
            max_lifetime: 600,
            leeway: 0,
            floor: None,
            ..ReplayConfig::default()
        })
    }

    fn shared(max_per_issuer: usize) -> ReplayCache {
        cache(ReplayConfig {
            capacity: 1 << 12,
            max_lifetime: 600,
            leeway: 0,
            max_per_issuer,
            share_window: 70,
            ..ReplayConfig::default()
        })
    }

    #[test]
    fn an_issuer_at_its_share_is_refused_and_others_go_on() {
        let c = shared(100);
        for i in 0..100 {
            assert_eq!(
                c.check_and_insert("hog", &format!("{i}"), None, NOW + 60, NOW),
                Ok(())
            );
        }
        assert_eq!(
            c.check_and_insert("hog", "one-more", None, NOW + 60, NOW),
            Err(ReplayError::IssuerShare)
        );
        assert_eq!(c.issuer_entries("hog", NOW), 100);
        // Nothing was inserted for the refused one: it is fresh once the share frees up.
        for i in 0..50 {
            assert_eq!(
                c.check_and_insert(&format!("agent-{i}"), "j", None, NOW + 60, NOW),
                Ok(())
            );
        }
        // Once the hog's entries expired (and their bucket passed), it is served again.
        let later = NOW + 60 + 2 * 10 + 1;
        assert_eq!(c.issuer_entries("hog", later), 0);
        assert_eq!(
            c.check_and_insert("hog", "one-more", None, later + 60, later),
            Ok(())
        );
    }

    #[test]
    fn without_a_share_one_issuer_may_use_the_whole_cache() {
        let c = shared(0);
        for i in 0..200 {
            assert_eq!(
                c.check_and_insert("hog", &format!("{i}"), None, NOW + 60, NOW),
                Ok(())
            );
        }
        assert_eq!(c.issuer_entries("hog", NOW), 0);
    }

    #[test]
    fn the_share_counts_from_above_never_below() {
        // Entries remembered beyond the window still count, in its last bucket.
        let c = shared(10);
        for i in 0..10 {
            assert_eq!(
                c.check_and_insert("long", &format!("{i}"), None, NOW + 500, NOW),
                Ok(())
            );
        }
        assert_eq!(c.issuer_entries("long", NOW + 60), 10);
        assert_eq!(
            c.check_and_insert("long", "x", None, NOW + 500, NOW + 60),
            Err(ReplayError::IssuerShare)
        );
        // A replay is still a replay, and a refused share inserts nothing.
        let c = shared(1);
        assert_eq!(c.check_and_insert("a", "j", None, NOW + 60, NOW), Ok(()));
        assert_eq!(
            c.check_and_insert("a", "j", None, NOW + 60, NOW),
            Err(ReplayError::IssuerShare)
        );
        assert_eq!(c.check_and_insert("b", "j", None, NOW + 60, NOW), Ok(()));
        assert_eq!(
            c.check_and_insert("b", "j", None, NOW + 60, NOW),
            Err(ReplayError::IssuerShare)
        );
    }

    #[test]
    fn second_use_is_replay() {
        let c = cache(ReplayConfig::default());
        assert_eq!(c.check_and_insert("c1", "j", None, NOW + 60, NOW), Ok(()));
        assert_eq!(
            c.check_and_insert("c1", "j", None, NOW + 60, NOW + 30),
            Err(ReplayError::Replayed)
        );
        // Same jti from another client, or another jti, is a different assertion.
        assert_eq!(c.check_and_insert("c2", "j", None, NOW + 60, NOW), Ok(()));
        assert_eq!(c.check_and_insert("c1", "k", None, NOW + 60, NOW), Ok(()));
        // Framing: ("c1", "j") ≠ ("c", "1j").
        assert_eq!(c.check_and_insert("c", "1j", None, NOW + 60, NOW), Ok(()));
    }

    #[test]
    fn remembered_through_exp_plus_leeway_then_forgotten() {
        let c = cache(ReplayConfig {
            leeway: 10,
            ..ReplayConfig::default()
        });
        c.check_and_insert("c", "j", None, NOW + 60, NOW).unwrap();
        assert_eq!(
            c.check_and_insert("c", "j", None, NOW + 60, NOW + 70),
            Err(ReplayError::Replayed)
        );
        // Past exp + leeway the claim checks reject the token anyway; the slot is free.
        assert_eq!(c.live_entries(NOW + 71), 0);
        assert_eq!(c.live_entries(NOW + 70), 1);
    }

    #[test]
    fn expiry_range() {
        let c = cache(ReplayConfig {
            max_lifetime: 300,
            leeway: 5,
            ..ReplayConfig::default()
        });
        let check = |exp| c.check_and_insert("c", &format!("{exp}"), None, exp, NOW);
        assert_eq!(check(NOW + 301), Err(ReplayError::ExpiryOutOfRange));
        assert_eq!(check(NOW + 300), Ok(()));
        assert_eq!(check(NOW - 6), Err(ReplayError::ExpiryOutOfRange));
        assert_eq!(check(NOW - 5), Ok(()), "within leeway");
        assert_eq!(check(u64::MAX), Err(ReplayError::ExpiryOutOfRange));
        assert_eq!(
            c.check_and_insert("c", "early", None, 100, 0),
            Err(ReplayError::ExpiryOutOfRange),
            "before the epoch"
        );
    }

    #[test]
    fn floor_refuses_older_or_undated_assertions() {
        let c = cache(ReplayConfig {
            floor: Some(NOW),
            ..ReplayConfig::default()
        });
        assert_eq!(
            c.check_and_insert("c", "a", Some(NOW - 1), NOW + 60, NOW),
            Err(ReplayError::BeforeFloor)
        );
        assert_eq!(
            c.check_and_insert("c", "b", None, NOW + 60, NOW),
            Err(ReplayError::BeforeFloor)
        );
        assert_eq!(
            c.check_and_insert("c", "c", Some(NOW), NOW + 60, NOW),
            Ok(())
        );
        // Without a floor, iat does not matter.
        let open = cache(ReplayConfig::default());
        assert_eq!(
            open.check_and_insert("c", "a", Some(0), NOW + 60, NOW),
            Ok(())
        );
    }

    /// Full fails closed: no live entry is evicted, so none of them can be replayed.
    #[test]
    fn full_fails_closed() {
        let c = small();
        let mut accepted = Vec::new();
        let mut full = 0;
        for i in 0..200 {
            match c.check_and_insert("c", &format!("j{i}"), None, NOW + 100, NOW) {
                Ok(()) => accepted.push(i),
                Err(ReplayError::Full) => full += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(full > 0, "200 keys into 64 slots must hit Full");
        assert!(accepted.len() <= 64);
        assert_eq!(c.live_entries(NOW), accepted.len());
        for i in accepted {
            assert_eq!(
                c.check_and_insert("c", &format!("j{i}"), None, NOW + 100, NOW + 50),
                Err(ReplayError::Replayed),
                "j{i} must still be remembered"
            );
        }
        // Once they expire, the space comes back.
        assert_eq!(
            c.check_and_insert("c", "after", None, NOW + 200, NOW + 101),
            Ok(())
        );
    }

    /// A steady rate that keeps three quarters of the table live never reports Full: expired
    /// slots are reclaimed in place.
    #[test]
    fn steady_load_within_capacity_never_fills() {
        let lifetime = 60;
        let c = cache(ReplayConfig {
            capacity: 4096,
            max_lifetime: lifetime,
            leeway: 0,
            ..ReplayConfig::default()
        });
        // Entries live for `lifetime + 1` seconds (exp is inclusive).
        let per_second = 4096 * 3 / 4 / (lifetime as usize + 1);
        let mut n = 0u64;
        for t in 0..(30 * lifetime) {
            let now = NOW + t;
            for _ in 0..per_second {
                n += 1;
                assert_eq!(
                    c.check_and_insert("client", &format!("{n}"), None, now + lifetime, now),
                    Ok(()),
                    "insert {n} at t={t}"
                );
            }
        }
        assert!(n > 10 * 4096, "inserted many times the capacity: {n}");
        assert!(c.live_entries(NOW + 30 * lifetime - 1) <= 4096 * 3 / 4);
    }

    #[test]
    fn slot_packing_roundtrip() {
        let probe = Probe {
            words: [0, 1],
            fingerprint: FP_MASK,
        };
        let v = (probe.fingerprint << FP_SHIFT) | CHOICE_BIT | 1;
        assert!(matches(v, probe, 1));
        assert!(
            !matches(v, probe, 0),
            "same fingerprint, other bucket choice"
        );
        assert!(live(v, 1));
        assert!(!live(v, 2));
        assert!(!live(0, 0), "empty slot is never live");
    }

    /// What one table accepted, logged as (fingerprint, remember-until), refuses in another
    /// table with the same key; expired entries are not restored.
    #[test]
    fn restored_entries_are_replays_in_a_new_table() {
        let old = cache(ReplayConfig::default());
        let fp = old.fingerprint("c", "j");
        let until = old
            .check_and_insert_fingerprint(fp, Some(NOW), NOW + 60, NOW)
            .unwrap();
        assert_eq!(until, NOW + 60 + ReplayConfig::default().leeway);
        let gone = old.fingerprint("c", "gone");
        let new = cache(ReplayConfig::default());
        new.restore(fp, until, NOW + 5).unwrap();
        new.restore(fp, until, NOW + 5).unwrap(); // duplicates are fine
        new.restore(gone, NOW + 4, NOW + 5).unwrap();
        assert_eq!(new.live_entries(NOW + 5), 1, "expired entry skipped");
        assert_eq!(
            new.check_and_insert("c", "j", Some(NOW), NOW + 60, NOW + 5),
            Err(ReplayError::Replayed)
        );
        assert_eq!(
            new.check_and_insert("c", "k", Some(NOW), NOW + 60, NOW + 5),
            Ok(())
        );
        // Another key: the fingerprint means nothing there.
        let other = ReplayCache::new(ReplayConfig::default(), [7; 32]);
        other.restore(fp, until, NOW + 5).unwrap();
        assert_eq!(
            other.check_and_insert("c", "j", Some(NOW), NOW + 60, NOW + 5),
            Ok(())
        );
    }

    #[test]
    fn random_keys_differ() {
        let a = ReplayCache::with_random_key(ReplayConfig::default()).unwrap();
        let b = ReplayCache::with_random_key(ReplayConfig::default()).unwrap();
        assert_ne!(*a.key, *b.key);
        a.check_and_insert("c", "j", None, NOW + 1, NOW).unwrap();
        b.check_and_insert("c", "j", None, NOW + 1, NOW).unwrap();
    }

    #[test]
    fn config_is_clamped() {
        let c = cache(ReplayConfig {
            capacity: 1000,
            ..ReplayConfig::default()
        });
        assert_eq!(c.capacity(), 1024);
        let tiny = cache(ReplayConfig {
            capacity: 0,
            ..ReplayConfig::default()
        });
        assert_eq!(tiny.capacity(), MIN_CAPACITY);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("42"),
            "hash key must not be printed: {debug}"
        );
    }

    /// Many threads submitting the same assertions: each is accepted exactly once.
    #[test]
    fn concurrent_same_key_accepted_once() {
        accepted_once_under_contention(8192, 2000);
    }

    /// The same while the threads make the cache allocate new levels.
    #[test]
    fn concurrent_same_key_accepted_once_while_growing() {
        accepted_once_under_contention(1 << 16, 12_000);
    }

    fn accepted_once_under_contention(capacity: usize, keys: usize) {
        const THREADS: usize = 4;
        let c = cache(ReplayConfig {
            capacity,
            ..ReplayConfig::default()
        });
        let wins: Vec<Vec<usize>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..THREADS)
                .map(|t| {
                    let c = &c;
                    s.spawn(move || {
                        (0..keys)
                            .filter(|k| {
                                // Every thread walks the keys, some in reverse, so they collide.
                                let k = if t % 2 == 0 { *k } else { keys - 1 - k };
                                c.check_and_insert("c", &format!("{k}"), None, NOW + 60, NOW)
                                    .is_ok()
                            })
                            .map(|k| if t % 2 == 0 { k } else { keys - 1 - k })
                            .collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut counts = HashMap::new();
        for k in wins.iter().flatten() {
            *counts.entry(*k).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), keys, "every key accepted by someone");
        assert!(counts.values().all(|&n| n == 1), "no key accepted twice");
    }

    /// An idle cache holds only its first level whatever its capacity, and grows level by
    /// level with live entries, remembering all of them.
    #[test]
    fn grows_with_use() {
        let c = cache(ReplayConfig {
            capacity: 1 << 22,
            ..ReplayConfig::default()
        });
        assert_eq!(c.capacity(), 1 << 22);
        let idle = c.heap_bytes();
        assert!(
            idle <= FIRST_LEVEL_SLOTS * 8 + 1024,
            "idle cache holds {idle} bytes"
        );
        let n = 20_000;
        for i in 0..n {
            c.check_and_insert("c", &format!("j{i}"), None, NOW + 60, NOW)
                .unwrap();
        }
        // 20 000 entries need more than the first two levels (16 Ki slots), not the fourth.
        let grown = c.heap_bytes();
        assert!(grown > 16 * 1024 * 8, "{grown}");
        assert!(grown <= 64 * 1024 * 8 + 1024, "{grown}");
        assert_eq!(c.live_entries(NOW), n);
        for i in 0..n {
            assert_eq!(
                c.check_and_insert("c", &format!("j{i}"), None, NOW + 60, NOW + 1),
                Err(ReplayError::Replayed),
                "j{i}"
            );
        }
    }

    /// With every level allocated, Full still fails closed, and the cache never holds more
    /// than its capacity.
    #[test]
    fn full_across_levels_fails_closed() {
        let capacity = 16 * 1024;
        let c = cache(ReplayConfig {
            capacity,
            max_lifetime: 600,
            leeway: 0,
            floor: None,
            ..ReplayConfig::default()
        });
        let mut accepted = Vec::new();
        let mut full = 0;
        for i in 0..capacity + capacity / 4 {
            match c.check_and_insert("c", &format!("j{i}"), None, NOW + 100, NOW) {
                Ok(()) => accepted.push(i),
                Err(ReplayError::Full) => full += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(full > 0);
        assert!(accepted.len() <= capacity);
        assert!(
            accepted.len() >= capacity * 3 / 4,
            "refusals only near capacity: {} accepted",
            accepted.len()
        );
        assert!(c.heap_bytes() >= capacity * 8);
        assert!(c.heap_bytes() <= capacity * 8 + 1024);
        for i in accepted {
            assert_eq!(
                c.check_and_insert("c", &format!("j{i}"), None, NOW + 100, NOW + 50),
                Err(ReplayError::Replayed),
                "j{i} must still be remembered"
            );
        }
    }

    #[test]
    fn levels_add_up_to_the_capacity() {
        let mut capacity = MIN_CAPACITY;
        while capacity <= MAX_CAPACITY {
            let sizes = level_sizes(capacity);
            assert_eq!(sizes.iter().sum::<usize>(), capacity);
            assert!(sizes.iter().all(|&s| s > 0 && s % BUCKET_SLOTS == 0));
            assert!(sizes.len() <= 10, "{capacity}: {sizes:?}");
            capacity *= 2;
        }
        assert_eq!(level_sizes(1 << 22).len(), 6);
        assert_eq!(level_sizes(1024), [1024]);
    }

    proptest::proptest! {
        /// Against a model: a key is accepted iff it is not live in the model, unless the
        /// cache is full (then it is refused, never wrongly accepted).
        #[test]
        fn matches_model(ops in proptest::collection::vec((0u8..40, 0u64..30, 0u64..5), 1..200)) {
            let c = small();
            let mut model: HashMap<u8, u64> = HashMap::new();
            let mut now = NOW;
            for (key, life, step) in ops {
                now += step;
                let exp = now + life;
                let got = c.check_and_insert("c", &format!("{key}"), None, exp, now);
                let live_in_model = model.get(&key).is_some_and(|&e| e >= now);
                if live_in_model {
                    proptest::prop_assert_eq!(got, Err(ReplayError::Replayed));
                } else {
                    proptest::prop_assert!(got == Ok(()) || got == Err(ReplayError::Full), "{:?}", got);
                    if got.is_ok() {
                        model.insert(key, exp);
                    }
                }
            }
        }
    }
}
