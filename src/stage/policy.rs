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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
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
    /// SCA: the rows with the largest access probability stay resident; the
    /// staging capacity holds a batch's misses with high probability.
    Sca,
    /// SCA's resident set, and the staged row whose next use is furthest
    /// within the next `--lookahead` batches is evicted first.
    Lookahead,
    /// The offline optimum over the epoch: evict the row used furthest in the
    /// future (the floor no policy can beat).
    Belady,
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

/// What a cache policy decides.
pub trait Policy: Send {
    fn name(&self) -> &'static str;
    /// Rows kept in the resident slots for good, best first.
    fn resident(&mut self, counts: &[u32], n: usize) -> Vec<u32> {
        top_rows(counts, n)
    }
    /// Start of an epoch with its next-use positions (empty unless the policy
    /// [`PolicyKind::needs_future`]).
    fn begin_epoch(&mut self, _next: &[u32]) {}
    /// An access of a non-resident row at trace position `pos`.
    fn touch(&mut self, _row: u32, _pos: u32) {}
    /// Whether a missed row should be cached (kept after its step) rather than
    /// staged for its step only. `free` says whether a cache slot is free.
    fn admit(&mut self, _row: u32, _free: bool) -> bool {
        true
    }
    /// A cached row to evict, never one for which `pinned` is true.
    fn victim(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u32>;
    /// A row entered the cache.
    fn cached(&mut self, row: u32);
    /// A row left the cache.
    fn evicted(&mut self, row: u32);
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

/// A max-heap of cached rows by a key the policy sets; stale entries (the
/// row's key changed, or it left the cache) are skipped lazily and the heap is
/// rebuilt when they pile up.
struct KeyedHeap {
    key: Vec<u64>,
    in_cache: Vec<bool>,
    heap: BinaryHeap<(u64, u32)>,
    cached: usize,
    aside: Vec<(u64, u32)>,
}

impl KeyedHeap {
    fn new(rows: usize) -> Self {
        KeyedHeap {
            key: vec![0; rows],
            in_cache: vec![false; rows],
            heap: BinaryHeap::new(),
            cached: 0,
            aside: Vec::new(),
        }
    }

    fn set(&mut self, row: u32, key: u64) {
        self.key[row as usize] = key;
        if self.in_cache[row as usize] {
            self.heap.push((key, row));
            if self.heap.len() > 4 * self.cached + 64 {
                let (key, in_cache) = (&self.key, &self.in_cache);
                self.heap =
                    (0..key.len() as u32).filter(|&r| in_cache[r as usize]).map(|r| (key[r as usize], r)).collect();
            }
        }
    }

    fn insert(&mut self, row: u32) {
        self.in_cache[row as usize] = true;
        self.cached += 1;
        self.heap.push((self.key[row as usize], row));
    }

    fn remove(&mut self, row: u32) {
        self.in_cache[row as usize] = false;
        self.cached -= 1;
    }

    /// The unpinned cached row with the largest key.
    fn max(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u32> {
        let mut found = None;
        while let Some((k, row)) = self.heap.pop() {
            if !self.in_cache[row as usize] || self.key[row as usize] != k {
                continue;
            }
            self.aside.push((k, row));
            if !pinned(row) {
                found = Some(row);
                break;
            }
        }
        self.heap.extend(self.aside.drain(..));
        found
    }

    fn peek_key(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u64> {
        self.max(pinned).map(|r| self.key[r as usize])
    }
}

/// Least recently used.
pub struct Lru(KeyedHeap);

impl Lru {
    pub fn new(rows: usize) -> Self {
        Lru(KeyedHeap::new(rows))
    }
}

impl Policy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }
    fn touch(&mut self, row: u32, pos: u32) {
        // Larger key = evicted first: the oldest access.
        self.0.set(row, (u32::MAX - pos) as u64);
    }
    fn victim(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u32> {
        self.0.max(pinned)
    }
    fn cached(&mut self, row: u32) {
        self.0.insert(row)
    }
    fn evicted(&mut self, row: u32) {
        self.0.remove(row)
    }
}

/// Least frequently used, counting every access since training began, ties
/// broken by recency; admission only if the row's count is at least the
/// victim's.
pub struct Lfu {
    heap: KeyedHeap,
    count: Vec<u32>,
}

impl Lfu {
    pub fn new(rows: usize) -> Self {
        Lfu { heap: KeyedHeap::new(rows), count: vec![0; rows] }
    }

    fn key(count: u32, pos: u32) -> u64 {
        (((u32::MAX - count) as u64) << 32) | (u32::MAX - pos) as u64
    }
}

impl Policy for Lfu {
    fn name(&self) -> &'static str {
        "lfu"
    }
    fn touch(&mut self, row: u32, pos: u32) {
        let c = &mut self.count[row as usize];
        *c = c.saturating_add(1);
        let key = Self::key(*c, pos);
        self.heap.set(row, key);
    }
    fn admit(&mut self, row: u32, free: bool) -> bool {
        if free {
            return true;
        }
        let mine = self.count[row as usize];
        // The victim is the smallest count: the largest (u32::MAX - count).
        match self.heap.peek_key(&|_| false) {
            Some(k) => mine >= u32::MAX - (k >> 32) as u32,
            None => true,
        }
    }
    fn victim(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u32> {
        self.heap.max(pinned)
    }
    fn cached(&mut self, row: u32) {
        self.heap.insert(row)
    }
    fn evicted(&mut self, row: u32) {
        self.heap.remove(row)
    }
}

/// Furthest next use: over the whole epoch (`belady`), or within a horizon of
/// `horizon` accesses (`lookahead`), beyond which rows are told apart only by
/// their training frequency (rarer rows evicted first).
pub struct FurthestNextUse {
    heap: KeyedHeap,
    next: Vec<u32>,
    horizon: Option<u32>,
    counts: Vec<u32>,
    name: &'static str,
}

impl FurthestNextUse {
    pub fn belady(rows: usize) -> Self {
        FurthestNextUse {
            heap: KeyedHeap::new(rows),
            next: Vec::new(),
            horizon: None,
            counts: Vec::new(),
            name: "belady",
        }
    }

    /// `horizon` in accesses (2 per rating); `counts` are training counts.
    pub fn lookahead(rows: usize, horizon: u32, counts: Vec<u32>) -> Self {
        FurthestNextUse {
            heap: KeyedHeap::new(rows),
            next: Vec::new(),
            horizon: Some(horizon),
            counts,
            name: "lookahead",
        }
    }
}

impl Policy for FurthestNextUse {
    fn name(&self) -> &'static str {
        self.name
    }
    fn begin_epoch(&mut self, next: &[u32]) {
        self.next.clear();
        self.next.extend_from_slice(next);
    }
    fn touch(&mut self, row: u32, pos: u32) {
        let next = self.next.get(pos as usize).copied().unwrap_or(NEVER);
        let key = match self.horizon {
            Some(h) if next == NEVER || next - pos > h => (1u64 << 32) + (u32::MAX - self.counts[row as usize]) as u64,
            _ => next as u64,
        };
        self.heap.set(row, key);
    }
    fn victim(&mut self, pinned: &dyn Fn(u32) -> bool) -> Option<u32> {
        self.heap.max(pinned)
    }
    fn cached(&mut self, row: u32) {
        self.heap.insert(row)
    }
    fn evicted(&mut self, row: u32) {
        self.heap.remove(row)
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
        p.touch(2, 5); // row 2: count 1 < victim (row 0) count 2
        assert!(!p.admit(2, false));
        assert!(p.admit(2, true));
        p.touch(2, 6);
        assert!(p.admit(2, false), "count 2 ties the victim's");
        assert_eq!(p.victim(&|_| false), Some(0));
    }

    #[test]
    fn belady_evicts_furthest_next_use() {
        let trace = [0u32, 1, 2, 1, 0];
        let mut next = Vec::new();
        next_uses(&trace, 3, &mut next);
        let mut p = FurthestNextUse::belady(3);
        p.begin_epoch(&next);
        for (pos, &row) in trace[..3].iter().enumerate() {
            p.touch(row, pos as u32);
            p.cached(row);
        }
        // Next uses: row 0 at 4, row 1 at 3, row 2 never.
        assert_eq!(p.victim(&|_| false), Some(2));
        assert_eq!(p.victim(&|r| r == 2), Some(0));
    }
}
