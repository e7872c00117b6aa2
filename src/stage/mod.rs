//! The host scheduler of DESIGN.md §2: which rows live in which slot of the
//! device slab, what must be staged in or written back for each batch, and the
//! ledger that counts every row and byte that crosses host↔device.
//!
//! Rows of both tables share one id space here: users are `0..U`, items are
//! `U..U+I` ("global rows"), since one slot fits a row of either table.
//!
//! The [`Stager`] owns the slot map and is the same for every policy; a
//! [`Policy`] only answers the questions a cache policy answers (what to keep
//! resident, what to evict). New policies plug in without touching the trainer.

mod budget;
mod ledger;

pub use budget::{Budget, human_bytes};
pub use ledger::Ledger;

use crate::data::{Rating, UNKNOWN};

/// No slot / no row. Equal to [`UNKNOWN`], so that an unseen id's slot is the
/// kernels' "unknown" marker.
pub const NONE: u32 = u32::MAX;

/// The staging policies (`--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// The rows most frequent in training stay resident; the rest are staged
    /// per batch and written back.
    Static,
}

impl PolicyKind {
    pub fn name(&self) -> &'static str {
        match self {
            PolicyKind::Static => "static",
        }
    }
}

/// What a cache policy decides. The [`Stager`] calls it; it never touches the
/// slot map itself.
pub trait Policy: Send {
    fn name(&self) -> &'static str;
    /// Rows to load before training and keep in slots `0..len` for good.
    /// `counts` are training accesses per global row.
    fn resident(&mut self, counts: &[u32]) -> Vec<u32>;
    /// Every access in batch order, hits and misses (for recency or frequency state).
    fn touch(&mut self, _row: u32, _slot: u32, _hit: bool) {}
    /// After a batch: whether a row staged in for it stays cached. `false`
    /// means it is written back and its slot freed at once.
    fn keep(&mut self, _row: u32, _slot: u32) -> bool {
        false
    }
}

/// `static`: the `resident` most frequent rows stay; every other row is
/// staged for its batch and written back after it.
pub struct StaticPolicy {
    pub resident: usize,
}

impl Policy for StaticPolicy {
    fn name(&self) -> &'static str {
        "static"
    }

    fn resident(&mut self, counts: &[u32]) -> Vec<u32> {
        top_rows(counts, self.resident)
    }
}

/// The `n` rows with the most accesses (ties by lower id), most frequent first.
/// One global order over both tables: with equal row sizes this is the exact
/// knapsack solution of SCA's placement.
pub fn top_rows(counts: &[u32], n: usize) -> Vec<u32> {
    let mut rows: Vec<u32> = (0..counts.len() as u32).filter(|&r| counts[r as usize] > 0).collect();
    let n = n.min(rows.len());
    if n == 0 {
        return Vec::new();
    }
    let key = |r: &u32| (std::cmp::Reverse(counts[*r as usize]), *r);
    if n < rows.len() {
        rows.select_nth_unstable_by_key(n - 1, key);
        rows.truncate(n);
    }
    rows.sort_unstable_by_key(key);
    rows
}

/// A row and the slot it occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub row: u32,
    pub slot: u32,
}

/// What one (sub-)batch needs done on the device, in this order: write back
/// `evict`, stage in `load`, compute with `slot_u`/`slot_i`, write back
/// `release` (when training). Buffers are reused across batches.
#[derive(Debug, Default)]
pub struct Moves {
    pub evict: Vec<Placed>,
    pub load: Vec<Placed>,
    pub release: Vec<Placed>,
    pub slot_u: Vec<u32>,
    pub slot_i: Vec<u32>,
}

impl Moves {
    fn clear(&mut self) {
        self.evict.clear();
        self.load.clear();
        self.release.clear();
        self.slot_u.clear();
        self.slot_i.clear();
    }
}

/// The slot map and the per-batch staging decisions.
pub struct Stager {
    policy: Box<dyn Policy>,
    n_users: u32,
    slot_of: Vec<u32>,
    row_of: Vec<u32>,
    free: Vec<u32>,
    /// Rows staged for the current batch that the policy may release.
    staged: Vec<Placed>,
    /// Per global row: the stamp of the last batch scan that saw it.
    seen: Vec<u32>,
    stamp: u32,
    /// Most rows one batch may stage in (the transfer window).
    window: u32,
    resident: u32,
}

impl Stager {
    /// A stager over `slots` slots for `n_users + n_items` rows; `window` bounds
    /// the rows staged in per batch.
    pub fn new(policy: Box<dyn Policy>, n_users: u32, n_items: u32, slots: u32, window: u32) -> Self {
        let n = (n_users + n_items) as usize;
        Stager {
            policy,
            n_users,
            slot_of: vec![NONE; n],
            row_of: vec![NONE; slots as usize],
            free: (0..slots).rev().collect(),
            staged: Vec::new(),
            seen: vec![0; n],
            stamp: 0,
            window: window.max(2),
            resident: 0,
        }
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    pub fn slots(&self) -> u32 {
        self.row_of.len() as u32
    }

    pub fn resident_rows(&self) -> u32 {
        self.resident
    }

    /// Global row of a user.
    pub fn user_row(&self, u: u32) -> u32 {
        u
    }

    /// Global row of an item.
    pub fn item_row(&self, i: u32) -> u32 {
        self.n_users + i
    }

    /// The global rows of a rating's user and item; [`NONE`] for a side unseen
    /// in training (evaluation only).
    fn rows_of(&self, r: &Rating) -> [u32; 2] {
        let u = if r.user == UNKNOWN { NONE } else { self.user_row(r.user) };
        let i = if r.item == UNKNOWN { NONE } else { self.item_row(r.item) };
        [u, i]
    }

    /// Whether a global row belongs to the user table.
    pub fn is_user(&self, row: u32) -> bool {
        row < self.n_users
    }

    /// The slot of a global row, or [`NONE`].
    pub fn slot_of(&self, row: u32) -> u32 {
        self.slot_of[row as usize]
    }

    /// Asks the policy for its resident set, places it in the lowest slots and
    /// returns the placements (to be staged in before training).
    pub fn place_resident(&mut self, counts: &[u32]) -> Vec<Placed> {
        let rows = self.policy.resident(counts);
        let rows = &rows[..rows.len().min(self.row_of.len())];
        let placed: Vec<Placed> = rows.iter().map(|&row| self.occupy(row)).collect();
        self.resident = placed.len() as u32;
        placed
    }

    fn occupy(&mut self, row: u32) -> Placed {
        let slot = self.free.pop().expect("caller checked capacity");
        self.slot_of[row as usize] = slot;
        self.row_of[slot as usize] = row;
        Placed { row, slot }
    }

    fn vacate(&mut self, p: Placed) {
        self.slot_of[p.row as usize] = NONE;
        self.row_of[p.slot as usize] = NONE;
        self.free.push(p.slot);
    }

    fn next_stamp(&mut self) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.fill(0);
            self.stamp = 1;
        }
        self.stamp
    }

    /// How many leading ratings of `ratings` fit in one device step: their
    /// distinct missing rows must fit in the free slots and the window. Always
    /// at least 1 when two slots are free (the budget check guarantees it).
    pub fn prefix_that_fits(&mut self, ratings: &[Rating]) -> usize {
        let cap = (self.free.len() as u32).min(self.window);
        let stamp = self.next_stamp();
        let mut misses = 0u32;
        for (n, r) in ratings.iter().enumerate() {
            let rows = self.rows_of(r);
            let mut need = 0;
            for row in rows.into_iter().filter(|&row| row != NONE) {
                if self.slot_of[row as usize] == NONE && self.seen[row as usize] != stamp {
                    need += 1;
                }
            }
            if misses + need > cap {
                return n.max(1);
            }
            misses += need;
            for row in rows.into_iter().filter(|&row| row != NONE) {
                self.seen[row as usize] = stamp;
            }
        }
        ratings.len()
    }

    /// Maps one (sub-)batch onto slots. Fills `moves` and counts hits, misses
    /// and rows in on `ledger`. Rows staged in here are released (and listed in
    /// `moves.release`) unless the policy keeps them. `ratings` must fit (see
    /// [`Stager::prefix_that_fits`]). With `train == false` (evaluation) the
    /// ledger's evaluation counters are used and nothing is written back.
    pub fn stage(&mut self, ratings: &[Rating], train: bool, moves: &mut Moves, ledger: &mut Ledger) {
        moves.clear();
        self.staged.clear();
        let stamp = self.next_stamp();
        for r in ratings {
            let mut slots = [0u32; 2];
            for (k, row) in self.rows_of(r).into_iter().enumerate() {
                if row == NONE {
                    slots[k] = NONE;
                    continue;
                }
                let slot = self.slot_of[row as usize];
                let first = self.seen[row as usize] != stamp;
                self.seen[row as usize] = stamp;
                let slot = if slot != NONE {
                    if first {
                        self.policy.touch(row, slot, true);
                        if train {
                            ledger.hit(self.is_user(row));
                        }
                    }
                    slot
                } else {
                    let p = self.occupy(row);
                    self.policy.touch(row, p.slot, false);
                    moves.load.push(p);
                    self.staged.push(p);
                    if train {
                        ledger.miss(self.is_user(row));
                    }
                    p.slot
                };
                slots[k] = slot;
            }
            moves.slot_u.push(slots[0]);
            moves.slot_i.push(slots[1]);
        }
        for &p in &moves.load {
            ledger.row_in(self.is_user(p.row), train);
        }
        let staged = std::mem::take(&mut self.staged);
        for &p in &staged {
            if !self.policy.keep(p.row, p.slot) {
                self.vacate(p);
                if train {
                    moves.release.push(p);
                    ledger.row_out(self.is_user(p.row));
                }
            }
        }
        self.staged = staged;
    }

    /// Every occupied slot, for the final write-back of training.
    pub fn occupied(&self) -> Vec<Placed> {
        self.row_of
            .iter()
            .enumerate()
            .filter(|(_, r)| **r != NONE)
            .map(|(s, &row)| Placed { row, slot: s as u32 })
            .collect()
    }
}

/// Training accesses per global row (users then items).
pub fn access_counts(train: &[Rating], n_users: usize, n_items: usize) -> Vec<u32> {
    let mut c = vec![0u32; n_users + n_items];
    for r in train {
        c[r.user as usize] += 1;
        c[n_users + r.item as usize] += 1;
    }
    c
}

/// The largest number of distinct rows any batch of `batch` consecutive
/// ratings of `order` touches.
pub fn max_distinct_rows(train: &[Rating], order: &[u32], batch: usize, n_users: usize) -> u32 {
    let mut seen = vec![u32::MAX; n_users + train.iter().map(|r| r.item as usize + 1).max().unwrap_or(0)];
    let mut best = 0;
    for (b, chunk) in order.chunks(batch).enumerate() {
        let mut d = 0;
        for &i in chunk {
            let r = &train[i as usize];
            for row in [r.user as usize, n_users + r.item as usize] {
                if seen[row] != b as u32 {
                    seen[row] = b as u32;
                    d += 1;
                }
            }
        }
        best = best.max(d);
    }
    best
}

/// The split of `slots` into resident rows and staging slots for `static`: the
/// most resident rows such that every batch of `order` stages at most the
/// remaining slots. Iterates resident = slots − max misses to a fixed point
/// (more resident rows never add misses).
pub fn static_resident(
    train: &[Rating],
    order: &[u32],
    batch: usize,
    counts: &[u32],
    n_users: usize,
    slots: u32,
) -> usize {
    let mut rank = vec![u32::MAX; counts.len()];
    let by_freq = top_rows(counts, counts.len());
    for (k, &r) in by_freq.iter().enumerate() {
        rank[r as usize] = k as u32;
    }
    let max_misses = |resident: usize| -> u32 {
        let mut seen = vec![u32::MAX; counts.len()];
        let mut worst = 0;
        for (b, chunk) in order.chunks(batch).enumerate() {
            let mut m = 0;
            for &i in chunk {
                let r = &train[i as usize];
                for row in [r.user as usize, n_users + r.item as usize] {
                    if (rank[row] as usize) >= resident && seen[row] != b as u32 {
                        seen[row] = b as u32;
                        m += 1;
                    }
                }
            }
            worst = worst.max(m);
        }
        worst
    };
    let mut resident = 0usize;
    for _ in 0..6 {
        let staging = max_misses(resident);
        let next = (slots.saturating_sub(staging) as usize).min(by_freq.len());
        if next <= resident {
            break;
        }
        resident = next;
    }
    resident
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(user: u32, item: u32) -> Rating {
        Rating { user, item, value: 3.0 }
    }

    #[test]
    fn top_rows_orders_by_count_then_id() {
        assert_eq!(top_rows(&[3, 9, 0, 9, 1], 3), vec![1, 3, 0]);
        assert_eq!(top_rows(&[0, 0], 5), Vec::<u32>::new());
    }

    #[test]
    fn static_stager_hits_resident_and_releases_the_rest() {
        // 2 users, 3 items: global rows 0,1 | 2,3,4.
        let ratings = [r(0, 0), r(0, 1), r(1, 2), r(0, 0)];
        let counts = access_counts(&ratings, 2, 3);
        let mut st = Stager::new(Box::new(StaticPolicy { resident: 2 }), 2, 3, 5, 16);
        let placed = st.place_resident(&counts);
        // User 0 (3 uses) and item 0 (2 uses) are resident.
        assert_eq!(placed.iter().map(|p| p.row).collect::<Vec<_>>(), vec![0, 2]);
        let mut ledger = Ledger::default();
        let mut moves = Moves::default();
        assert_eq!(st.prefix_that_fits(&ratings), 4);
        st.stage(&ratings, true, &mut moves, &mut ledger);
        // Misses: item 1 (row 3), user 1 (row 1), item 2 (row 4).
        assert_eq!(moves.load.len(), 3);
        assert_eq!(ledger.misses(), 3);
        assert_eq!(ledger.hits(), 2); // user 0 and item 0, once each
        assert_eq!(moves.release.len(), 3);
        assert_eq!(moves.slot_u[0], moves.slot_u[3]);
        assert_eq!(moves.slot_i[0], st.slot_of(2));
        // Released slots are free again: the whole batch fits again.
        assert_eq!(st.prefix_that_fits(&ratings), 4);
    }

    #[test]
    fn prefix_stops_when_staging_is_full() {
        let ratings = [r(0, 0), r(1, 1), r(2, 2)];
        let mut st = Stager::new(Box::new(StaticPolicy { resident: 0 }), 3, 3, 4, 16);
        st.place_resident(&access_counts(&ratings, 3, 3));
        assert_eq!(st.prefix_that_fits(&ratings), 2);
        let mut st = Stager::new(Box::new(StaticPolicy { resident: 0 }), 3, 3, 6, 3);
        assert_eq!(st.prefix_that_fits(&ratings), 1, "window of 3 rows");
    }

    #[test]
    fn static_split_fixed_point() {
        // Batches of 2 ratings; user 0 in every rating.
        let ratings: Vec<Rating> = (0..8).map(|i| r(0, i)).collect();
        let order: Vec<u32> = (0..8).collect();
        let counts = access_counts(&ratings, 1, 8);
        assert_eq!(max_distinct_rows(&ratings, &order, 2, 1), 3);
        // 4 slots: resident user 0 (+1 item), staging 2 items per batch.
        let res = static_resident(&ratings, &order, 2, &counts, 1, 4);
        assert!((1..=2).contains(&res), "{res}");
    }
}
