//! Staging policies. A policy answers what a cache policy answers (which rows
//! stay resident, whether a staged row is kept, which cached row to evict);
//! the [`super::Stager`] owns the slot map and asks.
//!
//! Accesses are numbered by their position in the epoch's trace: rating `j`
//! of the epoch order makes accesses `2j` (its user) and `2j + 1` (its item).
//! `next[pos]` is the position of the same row's next access in the epoch, or
//! [`NEVER`], computed in one backward pass ([`next_uses`]).

use std::collections::BinaryHeap;

use super::top_rows;

/// No further access in this epoch.
pub const NEVER: u32 = u32::MAX;

/// The staging policies (`--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Every row a batch needs is staged in and written back every batch.
    None,
    /// The rows most frequent in training stay resident; the rest are staged
    /// per batch and written back.
    Static,
    /// All slots cache rows; the least recently used row is evicted.
    Lru,
    /// All slots but a staging reserve cache rows; the least frequently used
    /// row is evicted, and a row is admitted only if its count is at least the
    /// victim's (as FBGEMM does).
    Lfu,
    /// SCA: the split its replay of this run's steps finds moves fewest rows
    /// (docs/ARCHITECTURE.md, "SCA and the planner").
    Sca,
    /// SCA's resident set, and the staged row whose next use is furthest
    /// within the next `--lookahead` batches is evicted first.
    Lookahead,
    /// The offline optimum over the epoch: evict the row used furthest in the
    /// future (the floor no policy can beat).
    Belady,
}

impl PolicyKind {
    /// Parses a comma-separated list of policies, or `all`; `param` names
    /// the option in errors.
    pub fn parse_list(param: &str, text: &str) -> crate::Result<Vec<PolicyKind>> {
        use crate::Named;
        if text.trim() == "all" {
            return Ok(PolicyKind::ALL.to_vec());
        }
        text.split(',')
            .map(|p| {
                <PolicyKind as Named>::from_name(p).ok_or_else(|| {
                    crate::Error::arg(param, p, format!("expected all, or a list of {}", PolicyKind::names()))
                })
            })
            .collect()
    }
}

impl crate::Named for PolicyKind {
    const ALL: &'static [Self] = &PolicyKind::ALL;
    fn name(self) -> &'static str {
        PolicyKind::name(&self)
    }
    fn about(self) -> &'static str {
        match self {
            PolicyKind::None => "Every row a step needs is staged in and written back every step",
            PolicyKind::Static => "The rows most frequent in training stay resident; the rest are staged per step",
            PolicyKind::Lru => "All slots cache rows; the least recently used row is evicted",
            PolicyKind::Lfu => {
                "7/8 of the slots cache rows, the least frequently used evicted, a row admitted only if as frequent \
                 (FBGEMM); the rest a staging reserve"
            }
            PolicyKind::Sca => {
                "SCA: the split its replay of this run's steps finds moves fewest rows (never more than static, lru or lfu)"
            }
            PolicyKind::Lookahead => {
                "Every slot caches rows; the row used furthest in the next --lookahead is evicted (beyond it, SCA's \
                 order: rarest first)"
            }
            PolicyKind::Belady => "The offline optimum: evict the row used furthest in the future (the floor)",
        }
    }
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::None,
        PolicyKind::Static,
        PolicyKind::Lru,
        PolicyKind::Lfu,
        PolicyKind::Sca,
        PolicyKind::Lookahead,
        PolicyKind::Belady,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            PolicyKind::None => "none",
            PolicyKind::Static => "static",
            PolicyKind::Lru => "lru",
            PolicyKind::Lfu => "lfu",
            PolicyKind::Sca => "sca",
            PolicyKind::Lookahead => "lookahead",
            PolicyKind::Belady => "belady",
        }
    }

    /// Whether the policy needs the epoch's next-use positions.
    pub fn needs_future(&self) -> bool {
        matches!(self, PolicyKind::Lookahead | PolicyKind::Belady)
    }
}

/// How SCA keeps its cache area ([`crate::stage::Stager::with_sca_cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// Least recently used out first.
    #[default]
    Lru,
    /// Least frequently used out first, admitted only if used as often as
    /// the row it would evict.
    Lfu,
}

/// What a cache policy decides.
pub trait Policy: Send {
    fn name(&self) -> &'static str;
    /// Rows kept in the resident slots for good, best first.
    fn resident(&mut self, counts: &[u32], n: usize) -> Vec<u32> {
        top_rows(counts, n)
    }
    /// Start of an epoch with its access trace and next-use positions (empty
    /// unless the policy [`PolicyKind::needs_future`]). The policy may swap
    /// the buffers with its own (no copy); the caller refills what it gets.
    /// `shift`: the previous epoch's accesses when this epoch's trace goes on
    /// from it (positions of kept keys move down by that much), `None` when
    /// it does not (kept keys mean nothing now).
    fn begin_epoch(&mut self, _trace: &mut Vec<u32>, _next: &mut Vec<u32>, _shift: Option<u32>) {}
    /// Start of a step of `accesses` accesses from trace position `pos`.
    fn begin_step(&mut self, _pos: u32, _accesses: u32) {}
    /// An access of a non-resident row at trace position `pos`.
    fn touch(&mut self, _row: u32, _pos: u32) {}
    /// A hint that `row` is touched soon: its per-row state is a cache
    /// miss on large tables, asked for ahead as the stager's own is.
    fn prefetch(&self, _row: u32) {}
    /// Whether a missed row should be cached (kept after its step) rather than
    /// staged for its step only. `free` says whether a cache slot is free.
    fn admit(&mut self, _row: u32, _free: bool) -> bool {
        true
    }
    /// A cached row to evict, never one for which `pinned` is true. Within
    /// a step (from `begin_step` to `end_step`) `pinned` never unpins a
    /// row, and policies may remember the rows it pinned until the step ends.
    fn victim(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u32>;
    /// A row entered the cache.
    fn cached(&mut self, row: u32);
    /// A row left the cache.
    fn evicted(&mut self, row: u32);
    /// The end of a step: the rows touched in it may be evicted again.
    fn end_step(&mut self) {}
}

/// Policies without a cache area (`none`, `static`, `sca`): staged rows leave
/// after their step.
pub struct NoCache(pub &'static str);

impl Policy for NoCache {
    fn name(&self) -> &'static str {
        self.0
    }
    fn admit(&mut self, _row: u32, _free: bool) -> bool {
        false
    }
    fn victim(&mut self, _pinned: &dyn Fn(u32) -> bool) -> Option<u32> {
        None
    }
    fn cached(&mut self, _row: u32) {}
    fn evicted(&mut self, _row: u32) {}
}

/// A max-heap of cached rows by a key the policy sets. An entry packs the key
/// (below 2^33) and the row (below 2^31) into one u64, so that the heap
/// compares plain integers. A row's `live` is the key of its one valid entry
/// (or [`GONE`]); every other entry is stale and skipped lazily, and the heap
/// is rebuilt when stale entries pile up.
///
/// A row touched in a step has no valid entry until the step ends (its new
/// key is pushed then), so the victim search never wades through the step's
/// own (pinned) rows, even those whose key did not change.
struct KeyedHeap {
    /// Per row, one record (one cache line holds four): a lookup touches one.
    rows: Vec<HeapRow>,
    heap: BinaryHeap<u64>,
    cached: usize,
    /// Entries of rows found pinned in this step, out of the way of the
    /// step's later victim searches (pinned only grows within a step) and
    /// back in the heap when it ends.
    parked: BinaryHeap<u64>,
    /// Rows touched or inserted in this step, pushed at its end.
    pending: Vec<u32>,
    /// In a step that may evict much of the cache, the heap's entries
    /// sorted ascending instead, victims taken from the end: a victim costs
    /// no sift ([`KeyedHeap::sort_for_step`]). Back to a heap when an entry
    /// goes in (the step's end, or [`KeyedHeap::set_now`]).
    sorted: Option<Vec<u64>>,
}

#[derive(Clone, Copy)]
struct HeapRow {
    /// The key, and the [`IN_CACHE`] and [`PENDING`] flags above it.
    key: u64,
    live: u64,
}

const ROW_BITS: u32 = 31;
const ROW_MASK: u64 = (1 << ROW_BITS) - 1;
/// `live` of a row without a valid heap entry (no key reaches it).
const GONE: u64 = u64::MAX;
const IN_CACHE: u64 = 1 << 63;
const PENDING: u64 = 1 << 62;
const KEY_MASK: u64 = PENDING - 1;

fn pack(key: u64, row: u32) -> u64 {
    debug_assert!(key < 1 << 33 && (row as u64) <= ROW_MASK);
    key << ROW_BITS | row as u64
}

fn unpack(e: u64) -> (u64, u32) {
    (e >> ROW_BITS, (e & ROW_MASK) as u32)
}

/// Whether entry `e` is its row's valid one (the others are stale).
fn is_live(rows: &[HeapRow], e: u64) -> bool {
    let (k, r) = unpack(e);
    rows[r as usize].live == k
}

impl KeyedHeap {
    fn new(rows: usize) -> Self {
        Self::with_key(rows, 0)
    }

    /// Every row's key `key` until it is set.
    fn with_key(rows: usize, key: u64) -> Self {
        assert!(rows as u64 <= ROW_MASK, "at most 2^31 rows");
        KeyedHeap {
            rows: vec![HeapRow { key, live: GONE }; rows],
            heap: BinaryHeap::new(),
            cached: 0,
            parked: BinaryHeap::new(),
            pending: Vec::new(),
            sorted: None,
        }
    }

    fn key(&self, row: u32) -> u64 {
        self.rows[row as usize].key & KEY_MASK
    }

    fn prefetch(&self, row: u32) {
        crate::prefetch::prefetch_ptr(self.rows.as_ptr().wrapping_add(row as usize));
    }

    /// Sets the key of a row touched in this step; its entry goes in when
    /// the step ends.
    fn set(&mut self, row: u32, key: u64) {
        let r = &mut self.rows[row as usize];
        let flags = r.key & (IN_CACHE | PENDING);
        r.key = key | flags | PENDING;
        r.live = GONE;
        if flags & PENDING == 0 {
            self.pending.push(row);
        }
    }

    /// Changes the key of a row that may not be part of the current step: a
    /// cached row's new entry goes in at once so that it stays a victim
    /// candidate; a pending row gets it at the step's end.
    fn set_now(&mut self, row: u32, key: u64) {
        self.unsort();
        let r = &mut self.rows[row as usize];
        let flags = r.key & (IN_CACHE | PENDING);
        r.key = key | flags;
        if flags == IN_CACHE {
            r.live = key;
            self.heap.push(pack(key, row));
        }
    }

    fn insert(&mut self, row: u32) {
        self.rows[row as usize].key |= IN_CACHE;
        self.cached += 1;
        let key = self.key(row);
        self.set(row, key);
    }

    /// Pushes the rows touched or inserted in the step with their new keys,
    /// and the parked entries that are still live.
    fn flush(&mut self) {
        // A step that brought many rows in (an eighth of the heap or more),
        // or whose entries were sorted, goes in by one rebuild, O(heap),
        // rather than a sift per row; entries are unique values, so the
        // heap yields the same victims in the same order either way.
        let bulk = self.sorted.is_some() || self.pending.len() * 8 >= self.heap.len();
        let mut entries = match self.sorted.take() {
            Some(sorted) => sorted,
            None if bulk => std::mem::take(&mut self.heap).into_vec(),
            None => Vec::new(),
        };
        if bulk {
            entries.extend(self.parked.drain());
        } else {
            self.unpark();
        }
        for &row in &self.pending {
            let r = &mut self.rows[row as usize];
            r.key &= !PENDING;
            if r.key & IN_CACHE != 0 {
                let key = r.key & KEY_MASK;
                r.live = key;
                if bulk {
                    entries.push(pack(key, row));
                } else {
                    self.heap.push(pack(key, row));
                }
            }
        }
        self.pending.clear();
        // A rebuild drops the stale entries, as does a heap grown past four
        // entries a cached row.
        if bulk || self.heap.len() > 4 * self.cached + 64 {
            if !bulk {
                entries = std::mem::take(&mut self.heap).into_vec();
            }
            let rows = &self.rows;
            entries.retain(|&e| is_live(rows, e));
            self.heap = entries.into();
        }
    }

    fn remove(&mut self, row: u32) {
        let r = &mut self.rows[row as usize];
        r.key &= !IN_CACHE;
        r.live = GONE;
        self.cached -= 1;
    }

    fn unpark(&mut self) {
        let rows = &self.rows;
        self.heap.extend(self.parked.drain().filter(|&e| is_live(rows, e)));
    }

    /// The unpinned cached row with the largest key. With `take` its entry
    /// leaves the heap (the caller evicts the row). Pinned rows met on the
    /// way are parked until the step ends: the stager pins a step's rows
    /// when it starts and unpins none before it ends, so a later search of
    /// the same step would only meet them again (a step whose rows fill the
    /// cache made that quadratic).
    fn max(&mut self, pinned: &dyn Fn(u32) -> bool, take: bool) -> Option<u32> {
        if let Some(sorted) = &mut self.sorted {
            // The same entries in the same order as the heap would pop them.
            while let Some(&e) = sorted.last() {
                let row = unpack(e).1;
                if !is_live(&self.rows, e) {
                    sorted.pop();
                    continue;
                }
                if pinned(row) {
                    sorted.pop();
                    self.parked.push(e);
                    continue;
                }
                if take {
                    sorted.pop();
                }
                return Some(row);
            }
            return None;
        }
        while let Some(e) = self.heap.pop() {
            let row = unpack(e).1;
            if !is_live(&self.rows, e) {
                continue;
            }
            if pinned(row) {
                self.parked.push(e);
                continue;
            }
            if !take {
                self.heap.push(e);
            }
            return Some(row);
        }
        None
    }

    /// Maps every cached row's key through `f` and rebuilds the heap.
    fn rekey(&mut self, f: impl Fn(u32, u64) -> u64) {
        self.sorted = None;
        self.parked.clear();
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.clear();
        for (row, r) in self.rows.iter_mut().enumerate() {
            if r.key & IN_CACHE != 0 {
                let key = f(row as u32, r.key & KEY_MASK);
                r.key = key | IN_CACHE;
                r.live = key;
                entries.push(pack(key, row as u32));
            }
        }
        self.heap = entries.into();
    }

    /// The largest key of any cached row, pinned (parked) or not.
    fn peek_key(&mut self) -> Option<u64> {
        let rows = &self.rows;
        let live = |e: &u64| is_live(rows, *e);
        for heap in [&mut self.heap, &mut self.parked] {
            while heap.peek().is_some_and(|e| !live(e)) {
                heap.pop();
            }
        }
        if let Some(sorted) = &mut self.sorted {
            while sorted.last().is_some_and(|e| !live(e)) {
                sorted.pop();
            }
        }
        let sorted_top = self.sorted.as_ref().and_then(|v| v.last());
        let top = self.heap.peek().max(self.parked.peek()).max(sorted_top).copied();
        top.map(|e| self.key(unpack(e).1))
    }

    /// Sorts the entries for a step that may take many victims: sorting
    /// once costs less than a sift per victim when the step evicts a good
    /// share of the cache.
    fn sort_for_step(&mut self) {
        if self.sorted.is_none() {
            let mut entries = std::mem::take(&mut self.heap).into_vec();
            entries.sort_unstable();
            self.sorted = Some(entries);
        }
    }

    fn unsort(&mut self) {
        if let Some(entries) = self.sorted.take() {
            self.heap = entries.into();
        }
    }
}

/// Least recently used, as an intrusive doubly linked list over rows: the
/// most recent at the head, the victim taken from the tail (O(1) per access).
/// A step's rows are touched one by one as the stager reaches them, so rows
/// of the step not reached yet may sit near the tail, pinned: the victim
/// search skips them, and remembers how far (`skip`) for the rest of the
/// step, since they stay pinned until it ends.
pub struct Lru {
    name: &'static str,
    prev: Vec<u32>,
    next: Vec<u32>,
    in_list: Vec<bool>,
    head: u32,
    tail: u32,
    /// The row nearest the head of a run from the tail of rows found pinned
    /// in this step ([`NEVER`]: none yet).
    skip: u32,
}

impl Lru {
    pub fn new(rows: usize) -> Self {
        Self::named(rows, "lru")
    }

    /// LRU under another policy's name (`sca` keeps its cache area so).
    pub fn named(rows: usize, name: &'static str) -> Self {
        Lru {
            name,
            prev: vec![NEVER; rows],
            next: vec![NEVER; rows],
            in_list: vec![false; rows],
            head: NEVER,
            tail: NEVER,
            skip: NEVER,
        }
    }

    fn unlink(&mut self, row: u32) {
        if row == self.skip {
            // The run of pinned rows loses its end: it now ends one nearer
            // the tail (or is empty).
            self.skip = self.next[row as usize];
        }
        let (p, n) = (self.prev[row as usize], self.next[row as usize]);
        if p == NEVER {
            self.head = n
        } else {
            self.next[p as usize] = n
        }
        if n == NEVER { self.tail = p } else { self.prev[n as usize] = p }
    }

    fn push_front(&mut self, row: u32) {
        self.prev[row as usize] = NEVER;
        self.next[row as usize] = self.head;
        if self.head == NEVER {
            self.tail = row
        } else {
            self.prev[self.head as usize] = row
        }
        self.head = row;
    }
}

impl Policy for Lru {
    fn name(&self) -> &'static str {
        self.name
    }
    fn touch(&mut self, row: u32, _pos: u32) {
        if self.in_list[row as usize] && self.head != row {
            self.unlink(row);
            self.push_front(row);
        }
    }
    fn victim(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u32> {
        let mut r = if self.skip == NEVER { self.tail } else { self.prev[self.skip as usize] };
        while r != NEVER && pinned(r) {
            self.skip = r;
            r = self.prev[r as usize];
        }
        (r != NEVER).then_some(r)
    }
    fn cached(&mut self, row: u32) {
        self.in_list[row as usize] = true;
        self.push_front(row);
    }
    fn evicted(&mut self, row: u32) {
        self.in_list[row as usize] = false;
        self.unlink(row);
    }
    fn begin_step(&mut self, _pos: u32, _accesses: u32) {
        self.skip = NEVER;
    }
    fn end_step(&mut self) {
        self.skip = NEVER;
    }
}

/// Least frequently used, counting every access since training began;
/// admission only if the row's count is at least the
/// victim's.
pub struct Lfu {
    name: &'static str,
    /// Keyed by the access count (the key is `u32::MAX - count`), which is
    /// all the per-row state there is: one record a lookup.
    heap: KeyedHeap,
}

impl Lfu {
    pub fn new(rows: usize) -> Self {
        Self::named(rows, "lfu")
    }

    /// LFU under another policy's name (`sca`'s cache area may be kept so).
    pub fn named(rows: usize, name: &'static str) -> Self {
        Lfu { name, heap: KeyedHeap::with_key(rows, Self::key(0)) }
    }

    /// Larger key = evicted first: the smallest count.
    fn key(count: u32) -> u64 {
        (u32::MAX - count) as u64
    }

    fn count(&self, row: u32) -> u32 {
        u32::MAX - self.heap.key(row) as u32
    }
}

impl Policy for Lfu {
    fn name(&self) -> &'static str {
        self.name
    }
    fn begin_step(&mut self, _pos: u32, accesses: u32) {
        // A step of half the cache's entries or more may evict much of it.
        if accesses as usize * 2 >= self.heap.heap.len() {
            self.heap.sort_for_step();
        }
    }
    fn touch(&mut self, row: u32, _pos: u32) {
        let key = Self::key(self.count(row).saturating_add(1));
        self.heap.set(row, key);
    }
    fn prefetch(&self, row: u32) {
        self.heap.prefetch(row)
    }
    fn admit(&mut self, row: u32, free: bool) -> bool {
        if free {
            return true;
        }
        let mine = self.count(row);
        // The victim is the smallest count: the largest (u32::MAX - count).
        match self.heap.peek_key() {
            Some(k) => mine >= u32::MAX - k as u32,
            None => true,
        }
    }
    fn victim(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u32> {
        self.heap.max(pinned, true)
    }
    fn cached(&mut self, row: u32) {
        self.heap.insert(row)
    }
    fn evicted(&mut self, row: u32) {
        self.heap.remove(row)
    }
    fn end_step(&mut self) {
        self.heap.flush()
    }
}

/// Furthest next use: over the whole epoch (`belady`), or within a horizon of
/// `horizon` accesses past the current step (`lookahead`: the loader sees the
/// step and the next L batches). A row whose next use lies beyond what the
/// loader sees is ranked by its SCA prior (training frequency; rarer rows
/// evicted first) until the loader reaches that use, which then sets the
/// row's key to its true next use.
pub struct FurthestNextUse {
    heap: KeyedHeap,
    next: Vec<u32>,
    trace: Vec<u32>,
    horizon: Option<u32>,
    /// Lookahead: trace positions below this are visible.
    revealed: usize,
    counts: Vec<u32>,
    name: &'static str,
}

impl FurthestNextUse {
    pub fn belady(rows: usize) -> Self {
        Self::new(rows, None, Vec::new(), "belady")
    }

    /// `horizon` in accesses (2 per rating); `counts` are training counts.
    pub fn lookahead(rows: usize, horizon: u32, counts: Vec<u32>) -> Self {
        Self::new(rows, Some(horizon), counts, "lookahead")
    }

    fn new(rows: usize, horizon: Option<u32>, counts: Vec<u32>, name: &'static str) -> Self {
        FurthestNextUse {
            heap: KeyedHeap::new(rows),
            next: Vec::new(),
            trace: Vec::new(),
            horizon,
            revealed: 0,
            counts,
            name,
        }
    }

    /// Key of a row whose next use is not yet visible: above every position,
    /// rarer rows higher (evicted first).
    fn prior(&self, row: u32) -> u64 {
        (1u64 << 32) + (u32::MAX - self.counts[row as usize]) as u64
    }

    /// The key of a row whose next use is unknown.
    fn unknown(&self, row: u32) -> u64 {
        if self.horizon.is_some() { self.prior(row) } else { NEVER as u64 }
    }
}

impl Policy for FurthestNextUse {
    fn name(&self) -> &'static str {
        self.name
    }
    fn begin_epoch(&mut self, trace: &mut Vec<u32>, next: &mut Vec<u32>, shift: Option<u32>) {
        std::mem::swap(&mut self.next, next);
        if self.horizon.is_some() {
            std::mem::swap(&mut self.trace, trace);
        }
        // Cached rows keep their next uses, moved to this epoch's positions
        // (the trace goes on from the last one); positions the last epoch had
        // revealed stay revealed.
        let positions = |k: u64| k < NEVER as u64;
        match shift {
            Some(shift) => {
                self.heap.rekey(|_, k| if positions(k) { k.saturating_sub(shift as u64) } else { k });
                self.revealed = self.revealed.saturating_sub(shift as usize);
            }
            None => {
                let unknown: Vec<u64> = (0..self.heap.rows.len() as u32).map(|r| self.unknown(r)).collect();
                self.heap.rekey(|r, _| unknown[r as usize]);
                self.revealed = 0;
            }
        }
    }
    fn begin_step(&mut self, pos: u32, accesses: u32) {
        let Some(h) = self.horizon else { return };
        // The loader now sees this step and the next `h` accesses: rows ranked
        // by their prior whose next use comes into view get that use as key.
        let end = (pos as usize + accesses as usize + h as usize).min(self.trace.len());
        while self.revealed < end {
            let x = self.trace[self.revealed];
            if self.heap.key(x) > NEVER as u64 {
                self.heap.set_now(x, self.revealed as u64);
            }
            self.revealed += 1;
        }
    }
    fn touch(&mut self, row: u32, pos: u32) {
        let next = self.next.get(pos as usize).copied().unwrap_or(NEVER);
        let key = match self.horizon {
            Some(_) if next == NEVER || next as usize >= self.revealed => self.prior(row),
            _ => next as u64,
        };
        self.heap.set(row, key);
    }
    fn victim(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u32> {
        self.heap.max(pinned, true)
    }
    fn cached(&mut self, row: u32) {
        self.heap.insert(row)
    }
    fn evicted(&mut self, row: u32) {
        self.heap.remove(row)
    }
    fn end_step(&mut self) {
        self.heap.flush()
    }
}

/// `next[k]`: the position of the next access of the row accessed at `k`
/// (`trace[k]`), or [`NEVER`]. One backward pass.
pub fn next_uses(trace: &[u32], n_rows: usize, next: &mut Vec<u32>) {
    next.clear();
    next.resize(trace.len(), NEVER);
    let mut last = vec![NEVER; n_rows];
    for k in (0..trace.len()).rev() {
        let row = trace[k] as usize;
        next[k] = last[row];
        last[row] = k as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_uses_backward_pass() {
        let mut next = Vec::new();
        next_uses(&[0, 1, 0, 2, 1, 0], 3, &mut next);
        assert_eq!(next, vec![2, 4, 5, NEVER, NEVER, NEVER]);
    }

    #[test]
    fn lru_evicts_the_oldest_unpinned() {
        let mut p = Lru::new(4);
        for (pos, row) in [0u32, 1, 2].into_iter().enumerate() {
            p.touch(row, pos as u32);
            p.cached(row);
        }
        p.touch(0, 3);
        p.end_step();
        assert_eq!(p.victim(&|_| false), Some(1));
        assert_eq!(p.victim(&|r| r == 1), Some(2));
    }

    #[test]
    fn lfu_admits_only_if_as_frequent_as_the_victim() {
        let mut p = Lfu::new(4);
        for (pos, row) in [0u32, 0, 1, 1, 1].into_iter().enumerate() {
            p.touch(row, pos as u32);
        }
        p.cached(0);
        p.cached(1);
        p.end_step();
        p.touch(2, 5); // row 2: count 1 < victim (row 0) count 2
        assert!(!p.admit(2, false));
        assert!(p.admit(2, true));
        p.touch(2, 6);
        p.end_step();
        assert!(p.admit(2, false), "count 2 ties the victim's");
        assert_eq!(p.victim(&|_| false), Some(0));
    }

    /// LFU's victims, step after step, are the least frequent unpinned
    /// cached rows (ties: the larger row), whether a step's rows went into
    /// the heap one by one (small steps) or by a rebuild (large ones), and
    /// whether the victims came from the heap or, in a large step, from its
    /// entries sorted.
    #[test]
    fn lfu_victims_match_a_brute_force_count_over_small_and_large_steps() {
        const ROWS: u32 = 300;
        const CAP: usize = 60;
        let mut p = Lfu::new(ROWS as usize);
        let mut count = vec![0u32; ROWS as usize];
        let mut cached = vec![false; ROWS as usize];
        let mut in_cache = 0;
        let mut seed = 7u64;
        let mut rand = |n: u32| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) % n as u64) as u32
        };
        let mut pos = 0;
        for step in 0..400 {
            // Small steps sift each row in; every fifth is large enough to
            // make the flush rebuild the heap.
            let len = if step % 5 == 0 { 40 + rand(30) } else { 1 + rand(6) };
            let mut rows: Vec<u32> = (0..len)
                .map(|_| {
                    // Skewed: small rows far more often.
                    let bound = rand(ROWS) + 1;
                    rand(bound)
                })
                .collect();
            rows.sort_unstable();
            rows.dedup();
            let pinned = |r: u32| rows.binary_search(&r).is_ok();
            p.begin_step(pos, rows.len() as u32);
            for &r in &rows {
                p.touch(r, pos);
                pos += 1;
                count[r as usize] += 1;
                if cached[r as usize] {
                    continue;
                }
                if in_cache == CAP {
                    let expect = (0..ROWS)
                        .filter(|&c| cached[c as usize] && !pinned(c))
                        .max_by_key(|&c| (u32::MAX - count[c as usize], c));
                    let got = p.victim(&pinned);
                    assert_eq!(got, expect, "step {step}");
                    let Some(v) = got else { continue };
                    p.evicted(v);
                    cached[v as usize] = false;
                    in_cache -= 1;
                }
                p.cached(r);
                cached[r as usize] = true;
                in_cache += 1;
            }
            p.end_step();
        }
    }

    #[test]
    fn belady_evicts_furthest_next_use() {
        let trace = [0u32, 1, 2, 1, 0];
        let mut next = Vec::new();
        next_uses(&trace, 3, &mut next);
        let mut p = FurthestNextUse::belady(3);
        p.begin_epoch(&mut trace.to_vec(), &mut next, None);
        for (pos, &row) in trace[..3].iter().enumerate() {
            p.touch(row, pos as u32);
            p.cached(row);
        }
        p.end_step();
        // Next uses: row 0 at 4, row 1 at 3, row 2 never.
        assert_eq!(p.victim(&|_| false), Some(2));
        assert_eq!(p.victim(&|r| r == 2), Some(0));
    }
}
