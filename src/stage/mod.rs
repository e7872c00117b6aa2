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
pub mod copartition;
mod ledger;
pub mod policy;
pub mod sca;
pub mod simulate;

pub use budget::{Budget, human_bytes};
pub use ledger::Ledger;
pub use policy::{NEVER, Policy, PolicyKind, next_uses};

use crate::data::{Rating, UNKNOWN};
use crate::prefetch::prefetch_ptr;

/// No slot / no row. Equal to [`UNKNOWN`], so that an unseen id's slot is the
/// kernels' "unknown" marker.
pub const NONE: u32 = u32::MAX;

/// How many ratings ahead [`Stager::stage`] prefetches the row states.
const STAGE_AHEAD: usize = 16;

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

/// How the slab's slots are split: `resident` rows kept for good (slots
/// `0..resident`), a `cache` area the policy manages (kept across steps), and
/// a `staging` area for rows that stay one step only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Areas {
    pub resident: u32,
    pub cache: u32,
    pub staging: u32,
}

impl Areas {
    pub fn slots(&self) -> u32 {
        self.resident + self.cache + self.staging
    }
}

/// The slot map and the per-step staging decisions, the same for every
/// policy and for the simulator.
pub struct Stager {
    policy: Box<dyn Policy>,
    areas: Areas,
    n_users: u32,
    /// Per global row: its slot and the step stamps below (one record, so
    /// that a lookup touches one cache line).
    rows: Vec<RowState>,
    row_of: Vec<u32>,
    free_cache: Vec<u32>,
    free_staging: Vec<u32>,
    cached: u32,
    /// Rows staged for the current step only.
    staged: Vec<Placed>,
    stamp: u32,
    /// Most rows one step may stage in (the transfer window).
    window: u32,
    /// Trace position of the next access in the epoch.
    pos: u32,
    /// Evaluation: window index of a row staged read-only in this step.
    win: Vec<u32>,
    /// The epoch's access trace and next uses (look-ahead policies only).
    trace: Vec<u32>,
    /// The last epoch's `following` order and its part of the trace.
    follow_order: Vec<u32>,
    follow_trace: Vec<u32>,
    /// Accesses of the last epoch begun (its part of the trace).
    epoch_accesses: u32,
    next: Vec<u32>,
    future: bool,
    /// Co-partitioning: slots `block_start..` hold the current block's rows
    /// of the co-partitioned side (see [`copartition`]).
    block_start: u32,
    free_block: Vec<u32>,
    block_rows: Vec<Placed>,
    /// Every row has a resident slot: nothing is ever staged, so no step
    /// needs the fit scan or the pins that guard evictions.
    all_resident: bool,
}

#[derive(Debug, Clone, Copy)]
struct RowState {
    /// The row's slot, or [`NONE`].
    slot: u32,
    /// The stamp of the last step scan that saw it.
    seen: u32,
    /// The stamp of the last training step that needs it (rows of the
    /// current step are never evicted).
    pin: u32,
    /// Trained since it was staged in or last written back: only such rows
    /// are written back (a clean row's host copy is current, so it leaves
    /// the slab without a transfer).
    dirty: bool,
}

/// Marks a location in the upload window rather than a slot (evaluation).
pub const IN_WINDOW: u32 = 1 << 31;

impl Stager {
    /// A stager for `n_users + n_items` rows over `areas`; `window` bounds the
    /// rows staged in per step.
    pub fn new(
        kind: PolicyKind,
        areas: Areas,
        n_users: u32,
        n_items: u32,
        window: u32,
        counts: &[u32],
        lookahead_accesses: u32,
    ) -> Self {
        let n = (n_users + n_items) as usize;
        let policy: Box<dyn Policy> = match kind {
            PolicyKind::None => Box::new(policy::NoCache("none")),
            PolicyKind::Static => Box::new(policy::NoCache("static")),
            PolicyKind::Sca => Box::new(policy::NoCache("sca")),
            PolicyKind::Lru => Box::new(policy::Lru::new(n)),
            PolicyKind::Lfu => Box::new(policy::Lfu::new(n)),
            PolicyKind::Lookahead => {
                Box::new(policy::FurthestNextUse::lookahead(n, lookahead_accesses, counts.to_vec()))
            }
            PolicyKind::Belady => Box::new(policy::FurthestNextUse::belady(n)),
        };
        let slots = areas.slots();
        let r = areas.resident;
        let c = r + areas.cache;
        let mut me = Stager {
            policy,
            areas,
            n_users,
            rows: vec![RowState { slot: NONE, seen: 0, pin: 0, dirty: false }; n],
            row_of: vec![NONE; slots as usize],
            free_cache: (r..c).rev().collect(),
            free_staging: (c..slots).rev().collect(),
            cached: 0,
            staged: Vec::new(),
            stamp: 0,
            window: window.max(2),
            pos: 0,
            win: vec![0; n],
            trace: Vec::new(),
            follow_order: Vec::new(),
            follow_trace: Vec::new(),
            epoch_accesses: 0,
            next: Vec::new(),
            future: kind.needs_future(),
            block_start: slots,
            free_block: Vec::new(),
            block_rows: Vec::new(),
            all_resident: false,
        };
        let resident = me.policy.resident(counts, areas.resident as usize);
        for (slot, &row) in resident.iter().enumerate() {
            me.rows[row as usize].slot = slot as u32;
            me.row_of[slot] = row;
        }
        me.areas.resident = resident.len() as u32;
        // Steps touch only rows that training accesses (`counts` > 0).
        me.all_resident = counts.iter().enumerate().all(|(row, &c)| c == 0 || me.rows[row].slot != NONE);
        me
    }

    /// Adds a block area of `slots` slots after the policy's areas, for the
    /// rows of the co-partitioned side (see [`Stager::begin_block`]).
    pub fn with_block_area(mut self, slots: u32) -> Self {
        self.block_start = self.row_of.len() as u32;
        self.row_of.extend(std::iter::repeat_n(NONE, slots as usize));
        self.free_block = (self.block_start..self.block_start + slots).rev().collect();
        // Blocks move rows in and out: keep the general path.
        self.all_resident &= slots == 0;
        self
    }

    /// Slots of the block area.
    pub fn block_slots(&self) -> u32 {
        self.row_of.len() as u32 - self.block_start
    }

    /// Starts a block: places `rows` (the block's rows of the co-partitioned
    /// side, none of them in the slab) in the block area, counting them as
    /// rows in. They stay, as if resident, until [`Stager::end_block`]. Returns
    /// the placements, to be staged in.
    pub fn begin_block(&mut self, rows: &[u32], ledger: &mut Ledger) -> &[Placed] {
        self.block_rows.clear();
        for &row in rows {
            debug_assert_eq!(self.rows[row as usize].slot, NONE, "a block row is already in the slab");
            let slot = self.free_block.pop().expect("the block area holds a block's rows");
            self.rows[row as usize].slot = slot;
            self.row_of[slot as usize] = row;
            ledger.row_in(self.is_user(row), true);
            self.block_rows.push(Placed { row, slot });
        }
        &self.block_rows
    }

    /// Ends the block: its rows leave the block area. Returns those that
    /// were trained (all of them unless the epoch stopped inside the block),
    /// counted as rows out, to be written back.
    pub fn end_block(&mut self, ledger: &mut Ledger) -> &[Placed] {
        let mut dirty = 0;
        for k in 0..self.block_rows.len() {
            let p = self.block_rows[k];
            self.row_of[p.slot as usize] = NONE;
            self.free_block.push(p.slot);
            let row = &mut self.rows[p.row as usize];
            row.slot = NONE;
            if std::mem::take(&mut row.dirty) {
                ledger.row_out(p.row < self.n_users);
                self.block_rows[dirty] = p;
                dirty += 1;
            }
        }
        self.block_rows.truncate(dirty);
        &self.block_rows
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    pub fn areas(&self) -> Areas {
        self.areas
    }

    pub fn slots(&self) -> u32 {
        self.row_of.len() as u32
    }

    /// The resident rows and their slots: to be staged in before training.
    pub fn resident(&self) -> Vec<Placed> {
        (0..self.areas.resident).map(|slot| Placed { row: self.row_of[slot as usize], slot }).collect()
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
        self.rows[row as usize].slot
    }

    fn is_cache_slot(&self, slot: u32) -> bool {
        slot >= self.areas.resident && slot < self.areas.resident + self.areas.cache
    }

    fn next_stamp(&mut self) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.rows.iter_mut().for_each(|r| (r.seen, r.pin) = (0, 0));
            self.stamp = 1;
        }
        self.stamp
    }

    /// Starts an epoch that will stage `train[order[..]]` in that order:
    /// resets the trace position and, for policies that look ahead, computes
    /// every access's next use in one backward pass.
    /// `following` is the next epoch's order (empty after the last epoch):
    /// next uses reach into it, so that the end of one epoch is not planned as
    /// if training stopped there.
    pub fn begin_epoch(&mut self, train: &[Rating], order: &[u32], following: &[u32]) {
        self.pos = 0;
        if self.future {
            // The last epoch's `following` is usually this `order`: reuse its
            // trace instead of gathering the ratings again.
            let reuse = self.follow_order.as_slice() == order;
            let this = order.iter().map(|&j| &train[j as usize]);
            self.load_trace((!reuse).then_some(this), following.iter().map(|&j| &train[j as usize]), order.len());
            self.follow_order.clear();
            self.follow_order.extend_from_slice(following);
        }
    }

    /// [`Stager::begin_epoch`] for ratings already in epoch order: `this`
    /// epoch's and the `following` one's. `continues`: `this` is the
    /// `following` of the previous call (its trace is reused).
    pub fn begin_epoch_ordered(&mut self, this: &[Rating], following: &[Rating], continues: bool) {
        self.pos = 0;
        if self.future {
            self.follow_order.clear();
            self.load_trace((!continues).then_some(this.iter()), following.iter(), this.len());
        }
    }

    /// Builds the trace of this epoch (`this`, or the kept `following` part
    /// of the last one when `None`) and the following one, and hands it with
    /// its next uses to the policy.
    fn load_trace<'r>(
        &mut self,
        this: Option<impl Iterator<Item = &'r Rating>>,
        following: impl Iterator<Item = &'r Rating>,
        this_len: usize,
    ) {
        let reuse = this.is_none();
        self.trace.clear();
        if reuse {
            self.trace.extend_from_slice(&self.follow_trace);
        }
        let n_users = self.n_users;
        for r in this.into_iter().flatten().chain(following) {
            self.trace.push(r.user);
            self.trace.push(n_users + r.item);
        }
        let shift = reuse.then_some(self.epoch_accesses);
        let split = 2 * this_len;
        self.epoch_accesses = split as u32;
        self.follow_trace.clear();
        self.follow_trace.extend_from_slice(&self.trace[split..]);
        next_uses(&self.trace, self.rows.len(), &mut self.next);
        self.policy.begin_epoch(&mut self.trace, &mut self.next, shift);
    }

    /// How many leading ratings of `ratings` fit in one training step: their
    /// distinct missing rows must fit in the free and evictable slots and in
    /// the window. At least 1 (the budget check guarantees a rating fits).
    pub fn prefix_that_fits(&mut self, ratings: &[Rating]) -> usize {
        let free = (self.free_cache.len() + self.free_staging.len()) as u32;
        // A batch touches at most two rows per rating; its misses plus its
        // pinned cached rows are at most that, so if free and cached slots and
        // the window all cover it, the whole batch fits without a scan.
        let bound = 2 * ratings.len() as u64;
        if self.all_resident || (bound <= (free + self.cached) as u64 && bound <= self.window as u64) {
            return ratings.len();
        }
        let stamp = self.next_stamp();
        let mut evictable = self.cached;
        let mut misses = 0u32;
        for (n, r) in ratings.iter().enumerate() {
            let rows = self.rows_of(r);
            let mut need = 0;
            let mut pin = 0;
            for row in rows.into_iter().filter(|&row| row != NONE && self.rows[row as usize].seen != stamp) {
                let slot = self.rows[row as usize].slot;
                if slot == NONE {
                    need += 1;
                } else if self.is_cache_slot(slot) {
                    pin += 1;
                }
            }
            let cap = (free + evictable - pin).min(self.window);
            if misses + need > cap {
                return n.max(1);
            }
            misses += need;
            evictable -= pin;
            for row in rows.into_iter().filter(|&row| row != NONE) {
                self.rows[row as usize].seen = stamp;
            }
        }
        ratings.len()
    }

    /// Maps one training step onto slots. Fills `moves` (evictions, loads,
    /// releases, slot pairs) and counts hits, misses, rows in and out on
    /// `ledger`. `ratings` must fit (see [`Stager::prefix_that_fits`]) and come
    /// in epoch order after [`Stager::begin_epoch`].
    pub fn stage(&mut self, ratings: &[Rating], moves: &mut Moves, ledger: &mut Ledger) {
        moves.clear();
        self.staged.clear();
        let stamp = self.next_stamp();
        self.policy.begin_step(self.pos, 2 * ratings.len() as u32);
        // Pin every row of the step before any eviction: a row needed later
        // in this step must not be evicted for an earlier miss.
        if !self.all_resident {
            for r in ratings {
                for row in self.rows_of(r) {
                    self.rows[row as usize].pin = stamp;
                }
            }
        }
        for (n, r) in ratings.iter().enumerate() {
            // A row's state is a cache miss on large tables (the walk is in
            // random order): ask for it `STAGE_AHEAD` ratings early.
            if let Some(ahead) = ratings.get(n + STAGE_AHEAD) {
                for row in self.rows_of(ahead) {
                    prefetch_ptr(self.rows.as_ptr().wrapping_add(row as usize));
                }
            }
            let rows = self.rows_of(r);
            let mut slots = [0u32; 2];
            for (k, row) in rows.into_iter().enumerate() {
                let pos = self.pos;
                self.pos += 1;
                let first = self.rows[row as usize].seen != stamp;
                self.rows[row as usize].seen = stamp;
                let slot = self.rows[row as usize].slot;
                // Placed below if missing; trained by this step either way.
                self.rows[row as usize].dirty = true;
                let resident = slot != NONE && (slot < self.areas.resident || slot >= self.block_start);
                if !resident {
                    self.policy.touch(row, pos);
                }
                slots[k] = if slot != NONE {
                    if first {
                        ledger.hit(self.is_user(row));
                    }
                    slot
                } else {
                    ledger.miss(self.is_user(row));
                    ledger.row_in(self.is_user(row), true);
                    let p = self.place_miss(row, stamp, moves, ledger);
                    moves.load.push(p);
                    p.slot
                };
            }
            moves.slot_u.push(slots[0]);
            moves.slot_i.push(slots[1]);
        }
        self.policy.end_step();
        let staged = std::mem::take(&mut self.staged);
        for &p in &staged {
            // Staged for this step, so trained: always written back.
            self.rows[p.row as usize].slot = NONE;
            self.rows[p.row as usize].dirty = false;
            self.row_of[p.slot as usize] = NONE;
            self.free_staging.push(p.slot);
            moves.release.push(p);
            ledger.row_out(self.is_user(p.row));
        }
        self.staged = staged;
    }

    /// A slot for a missed row: a cache slot (free, or a victim's) if the
    /// policy admits it, else a staging slot for this step; a victim's slot as
    /// the last resort.
    fn place_miss(&mut self, row: u32, stamp: u32, moves: &mut Moves, ledger: &mut Ledger) -> Placed {
        let admit = self.areas.cache > 0 && self.policy.admit(row, !self.free_cache.is_empty());
        let slot = if admit || self.free_staging.is_empty() {
            match self.free_cache.pop() {
                Some(s) => Some(s),
                None => self.evict(stamp, moves, ledger),
            }
        } else {
            None
        };
        match slot {
            Some(slot) => {
                self.cached += 1;
                self.policy.cached(row);
                self.rows[row as usize].slot = slot;
                self.row_of[slot as usize] = row;
                Placed { row, slot }
            }
            None => {
                let slot = match self.free_staging.pop() {
                    Some(s) => s,
                    None => self.evict(stamp, moves, ledger).expect("prefix_that_fits guarantees a slot"),
                };
                let p = Placed { row, slot };
                self.rows[row as usize].slot = slot;
                self.row_of[slot as usize] = row;
                if self.is_cache_slot(slot) {
                    self.cached += 1;
                    self.policy.cached(row);
                } else {
                    self.staged.push(p);
                }
                p
            }
        }
    }

    /// Evicts the policy's victim (never a row of the current step) and
    /// returns its slot, now taken by the caller. The victim is written back
    /// only if it was trained since it was last staged in or written back.
    fn evict(&mut self, stamp: u32, moves: &mut Moves, ledger: &mut Ledger) -> Option<u32> {
        let rows = &self.rows;
        let victim = self.policy.victim(&|r| rows[r as usize].pin == stamp)?;
        let slot = self.rows[victim as usize].slot;
        self.policy.evicted(victim);
        self.cached -= 1;
        self.rows[victim as usize].slot = NONE;
        self.row_of[slot as usize] = NONE;
        if std::mem::take(&mut self.rows[victim as usize].dirty) {
            moves.evict.push(Placed { row: victim, slot });
            ledger.row_out(self.is_user(victim));
        }
        Some(slot)
    }

    /// How many leading ratings of an evaluation step fit: their distinct
    /// rows not in the slab must fit in the window.
    pub fn eval_prefix(&mut self, ratings: &[Rating]) -> usize {
        let stamp = self.next_stamp();
        let mut misses = 0;
        for (n, r) in ratings.iter().enumerate() {
            let rows = self.rows_of(r);
            let need = rows
                .iter()
                .filter(|&&row| {
                    row != NONE && self.rows[row as usize].slot == NONE && self.rows[row as usize].seen != stamp
                })
                .count() as u32;
            if misses + need > self.window {
                return n.max(1);
            }
            misses += need;
            for row in rows.into_iter().filter(|&row| row != NONE) {
                self.rows[row as usize].seen = stamp;
            }
        }
        ratings.len()
    }

    /// Maps an evaluation step: rows in the slab by slot, other rows staged
    /// read-only into the upload window (`IN_WINDOW | index`, listed in
    /// `moves.load` with the index as slot). Policy state and the slot map do
    /// not change, so evaluation never perturbs training.
    pub fn stage_eval(&mut self, ratings: &[Rating], moves: &mut Moves, ledger: &mut Ledger) {
        moves.clear();
        let stamp = self.next_stamp();
        for r in ratings {
            let mut locs = [NONE; 2];
            for (k, row) in self.rows_of(r).into_iter().enumerate() {
                if row == NONE {
                    continue;
                }
                let slot = self.rows[row as usize].slot;
                locs[k] = if slot != NONE {
                    slot
                } else if self.rows[row as usize].seen == stamp {
                    IN_WINDOW | self.win[row as usize]
                } else {
                    self.rows[row as usize].seen = stamp;
                    let idx = moves.load.len() as u32;
                    self.win[row as usize] = idx;
                    moves.load.push(Placed { row, slot: idx });
                    ledger.row_in(self.is_user(row), false);
                    IN_WINDOW | idx
                };
            }
            moves.slot_u.push(locs[0]);
            moves.slot_i.push(locs[1]);
        }
    }

    /// The rows in the slab trained since they were staged in or last
    /// written back, now marked clean, and counted as rows out: the
    /// write-back that makes the host tables current (end of training, or
    /// before a checkpoint). The rows stay in their slots.
    pub fn take_dirty(&mut self, ledger: &mut Ledger) -> Vec<Placed> {
        let mut out = Vec::new();
        for (slot, &row) in self.row_of.iter().enumerate() {
            if row != NONE && std::mem::take(&mut self.rows[row as usize].dirty) {
                ledger.row_out(row < self.n_users);
                out.push(Placed { row, slot: slot as u32 });
            }
        }
        out
    }
}

/// Rows one step may stage in (the transfer windows' size): a batch's worst
/// case, two rows per rating, bounded by the slots that are not resident.
pub fn window_rows(batch: usize, areas: Areas) -> u32 {
    (2 * batch as u64).min((areas.cache + areas.staging) as u64).max(2) as u32
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
                    // Rows counted 0 are not the policy's (co-partitioning's block area).
                    if (rank[row] as usize) >= resident && counts[row] > 0 && seen[row] != b as u32 {
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

/// Splits `slots` into areas for `kind`, given the training data and the
/// first epoch's order (for `static`, which sizes staging to that order's
/// worst batch).
pub fn plan_areas(
    kind: PolicyKind,
    slots: u32,
    train: &[Rating],
    first_order: &[u32],
    batch: usize,
    counts: &[u32],
    n_users: usize,
) -> Areas {
    let sca = || sca::CostModel::new(counts, train.len(), batch).split(slots, 1).0;
    // A slab that holds every row training touches keeps them all resident:
    // nothing is ever staged (the all-resident peer of a sweep), and the
    // stager then skips its per-step fit scan and pins.
    let touched = counts.iter().filter(|&&c| c > 0).count() as u32;
    if matches!(kind, PolicyKind::Sca | PolicyKind::Static) && slots >= touched {
        return Areas { resident: touched, cache: 0, staging: slots - touched };
    }
    match kind {
        PolicyKind::None => Areas { resident: 0, cache: 0, staging: slots },
        PolicyKind::Static => {
            let r = static_resident(train, first_order, batch, counts, n_users, slots) as u32;
            Areas { resident: r, cache: 0, staging: slots - r }
        }
        PolicyKind::Sca => {
            let r = sca();
            Areas { resident: r, cache: 0, staging: slots - r }
        }
        // Lookahead keeps SCA's order as a prior inside its keys rather than
        // pinning SCA's set: every slot is cache.
        PolicyKind::Lru | PolicyKind::Belady | PolicyKind::Lookahead => Areas { resident: 0, cache: slots, staging: 0 },
        PolicyKind::Lfu => {
            // A reserve for rows LFU does not admit: an eighth of the slab.
            let staging = (slots / 8).max(1).min(slots);
            Areas { resident: 0, cache: slots - staging, staging }
        }
    }
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

    fn stager(kind: PolicyKind, areas: Areas, users: u32, items: u32, counts: &[u32]) -> Stager {
        Stager::new(kind, areas, users, items, 64, counts, 8)
    }

    #[test]
    fn static_stager_hits_resident_and_releases_the_rest() {
        // 2 users, 3 items: global rows 0,1 | 2,3,4.
        let ratings = [r(0, 0), r(0, 1), r(1, 2), r(0, 0)];
        let counts = access_counts(&ratings, 2, 3);
        let mut st = stager(PolicyKind::Static, Areas { resident: 2, cache: 0, staging: 3 }, 2, 3, &counts);
        // User 0 (3 uses) and item 0 (2 uses) are resident.
        assert_eq!(st.resident().iter().map(|p| p.row).collect::<Vec<_>>(), vec![0, 2]);
        let mut ledger = Ledger::default();
        let mut moves = Moves::default();
        assert_eq!(st.prefix_that_fits(&ratings), 4);
        st.begin_epoch(&ratings, &[0, 1, 2, 3], &[]);
        st.stage(&ratings, &mut moves, &mut ledger);
        // Misses: item 1 (row 3), user 1 (row 1), item 2 (row 4).
        assert_eq!(moves.load.len(), 3);
        assert_eq!((ledger.misses(), ledger.hits()), (3, 2));
        assert_eq!(moves.release.len(), 3);
        assert_eq!(moves.slot_u[0], moves.slot_u[3]);
        assert_eq!(moves.slot_i[0], st.slot_of(2));
        // Released slots are free again: the whole batch fits again.
        assert_eq!(st.prefix_that_fits(&ratings), 4);
    }

    #[test]
    fn a_slab_holding_every_trained_row_keeps_them_all_resident() {
        // 3 users, 3 items; user 2 and item 2 are never trained.
        let ratings = [r(0, 0), r(1, 1), r(0, 1), r(1, 0)];
        let counts = access_counts(&ratings, 3, 3);
        let order = [0, 1, 2, 3];
        for kind in [PolicyKind::Sca, PolicyKind::Static] {
            // 4 trained rows in 5 slots: all resident, none staged.
            let areas = plan_areas(kind, 5, &ratings, &order, 4, &counts, 3);
            assert_eq!(areas, Areas { resident: 4, cache: 0, staging: 1 }, "{kind:?}");
            let mut st = stager(kind, areas, 3, 3, &counts);
            assert!(st.all_resident);
            assert_eq!(st.prefix_that_fits(&ratings), 4);
            let (mut ledger, mut moves) = (Ledger::default(), Moves::default());
            st.begin_epoch(&ratings, &order, &[]);
            st.stage(&ratings, &mut moves, &mut ledger);
            assert_eq!((ledger.misses(), ledger.hits(), moves.load.len(), moves.release.len()), (0, 4, 0, 0));
            assert_eq!(moves.slot_u[0], moves.slot_u[2], "user 0 keeps its slot");
            // A block area moves rows in and out: the general path again.
            assert!(!stager(kind, areas, 3, 3, &counts).with_block_area(2).all_resident);
        }
        // One slot short of the trained rows: SCA plans staging as before.
        let areas = plan_areas(PolicyKind::Sca, 3, &ratings, &order, 4, &counts, 3);
        assert!(areas.resident < 3 && !stager(PolicyKind::Sca, areas, 3, 3, &counts).all_resident, "{areas:?}");
    }

    #[test]
    fn only_trained_rows_are_written_back() {
        // 1 user (row 0) and items 0..3 (rows 1..4); LRU over 3 cache slots.
        let ratings = [r(0, 0), r(0, 1), r(0, 2), r(0, 0)];
        let counts = access_counts(&ratings, 1, 3);
        let mut st = stager(PolicyKind::Lru, Areas { resident: 0, cache: 3, staging: 0 }, 1, 3, &counts);
        st.begin_epoch(&ratings, &[0, 1, 2, 3], &[]);
        let (mut moves, mut ledger) = (Moves::default(), Ledger::default());
        st.stage(&ratings[..2], &mut moves, &mut ledger);
        // The sync before a checkpoint writes back u, a, b and marks them clean.
        let synced: Vec<u32> = st.take_dirty(&mut ledger).iter().map(|p| p.row).collect();
        assert_eq!(synced, vec![0, 1, 2]);
        assert_eq!(ledger.rows_out(), 3);
        assert!(st.take_dirty(&mut ledger).is_empty(), "nothing trained since the sync");
        // c evicts a (least recently used), clean since the sync: it leaves
        // the slab without a transfer.
        st.stage(&ratings[2..3], &mut moves, &mut ledger);
        assert_eq!(moves.load.len(), 1);
        assert!(moves.evict.is_empty(), "a clean row was written back: {:?}", moves.evict);
        assert_eq!(ledger.rows_out(), 3);
        // a comes back and evicts b, also clean; then u, c and a are dirty.
        st.stage(&ratings[3..], &mut moves, &mut ledger);
        assert!(moves.evict.is_empty());
        let mut dirty: Vec<u32> = st.take_dirty(&mut ledger).iter().map(|p| p.row).collect();
        dirty.sort();
        assert_eq!(dirty, vec![0, 1, 3]);
        assert_eq!(ledger.rows_out(), 6);
    }

    #[test]
    fn prefix_stops_when_slots_or_window_run_out() {
        let ratings = [r(0, 0), r(1, 1), r(2, 2)];
        let counts = access_counts(&ratings, 3, 3);
        let mut st = stager(PolicyKind::None, Areas { resident: 0, cache: 0, staging: 4 }, 3, 3, &counts);
        assert_eq!(st.prefix_that_fits(&ratings), 2);
        let mut st = Stager::new(PolicyKind::None, Areas { resident: 0, cache: 0, staging: 6 }, 3, 3, 3, &counts, 8);
        assert_eq!(st.prefix_that_fits(&ratings), 1, "window of 3 rows");
    }

    /// Runs `batches` (each a list of (user, item)) through `kind` with `slots`
    /// cache slots; returns (misses, rows out) over the trace.
    fn run(kind: PolicyKind, areas: Areas, users: u32, items: u32, batches: &[&[(u32, u32)]]) -> (u64, u64) {
        let all: Vec<Rating> = batches.iter().flat_map(|b| b.iter().map(|&(u, i)| r(u, i))).collect();
        let counts = access_counts(&all, users as usize, items as usize);
        let mut st = stager(kind, areas, users, items, &counts);
        let order: Vec<u32> = (0..all.len() as u32).collect();
        st.begin_epoch(&all, &order, &[]);
        let (mut moves, mut ledger) = (Moves::default(), Ledger::default());
        let mut at = 0;
        for b in batches {
            let step = &all[at..at + b.len()];
            assert_eq!(st.prefix_that_fits(step), step.len());
            st.stage(step, &mut moves, &mut ledger);
            at += b.len();
        }
        (ledger.misses(), ledger.rows_out())
    }

    #[test]
    fn policies_on_a_hand_made_trace() {
        // 1 user (row 0, in every batch) and items 0..4 (rows 1..5); 3 slots.
        // Batches: {a}, {b}, {a}, {c}, {a}, {b} with a, b, c items 0, 1, 2.
        let t: [&[(u32, u32)]; 6] = [&[(0, 0)], &[(0, 1)], &[(0, 0)], &[(0, 2)], &[(0, 0)], &[(0, 1)]];
        let cache3 = Areas { resident: 0, cache: 3, staging: 0 };
        // none: every row of every batch is staged in: 2 per batch.
        assert_eq!(run(PolicyKind::None, Areas { resident: 0, cache: 0, staging: 3 }, 1, 3, &t).0, 12);
        // LRU, 3 slots: u,a | b | hit | c evicts b (LRU) | hit | b evicts c → misses u,a,b,c,b = 5.
        assert_eq!(run(PolicyKind::Lru, cache3, 1, 3, &t).0, 5);
        // Belady: at c, evict the one used furthest (b at 6 vs a at 5): b; then b again: 5 as well;
        // with 3 slots nothing better exists (u, a, b, c are 4 rows).
        assert_eq!(run(PolicyKind::Belady, cache3, 1, 3, &t).0, 5);
        // With 2 slots one slot is left for items, and consecutive items
        // differ: u plus all 6 items miss under any policy.
        let cache2 = Areas { resident: 0, cache: 2, staging: 0 };
        let (belady2, _) = run(PolicyKind::Belady, cache2, 1, 3, &t);
        let (lru2, _) = run(PolicyKind::Lru, cache2, 1, 3, &t);
        assert_eq!((belady2, lru2), (7, 7));
        // static with user 0 and item 0 resident and 1 staging slot: misses b, c, b.
        let st = Areas { resident: 2, cache: 0, staging: 1 };
        assert_eq!(run(PolicyKind::Static, st, 1, 3, &t).0, 3);
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
