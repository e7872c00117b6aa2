//! The host scheduler (docs/ARCHITECTURE.md, "The scheduler"): which rows live in which slot of the
//! device slab, what must be staged in or written back for each step, and the
//! ledger that counts every row and byte that crosses host↔device.
//!
//! Rows of both tables share one id space here: users are `0..U`, items are
//! `U..U+I` ("global rows"), since one slot fits a row of either table.
//!
//! The [`Stager`] owns the slot map and is the same for every policy; a
//! [`Policy`] only answers the questions a cache policy answers (what to keep
//! resident, what to evict). New policies plug in without touching the trainer.
//!
//! A step is given as its distinct rows (in the order of their first use,
//! [`crate::engine::rows`]), never as its ratings: the scheduler's work is
//! proportional to a step's rows, and a part's rows are listed once per run.
//! Every decision is also written as slot-map entries ([`Moves::map`]) for
//! the device's copy of the slot map ([`entry`]), through which the kernels
//! turn (user, item) into slots.

mod budget;
pub mod copartition;
mod ledger;
pub mod policy;
pub mod sca;

pub use budget::{Budget, human_bytes, slots_in};
pub use ledger::Ledger;
pub use policy::{CacheKind, NEVER, Policy, PolicyKind, next_uses};

use crate::data::Rating;
use crate::prefetch::prefetch_ptr;

/// No slot / no row.
pub const NONE: u32 = u32::MAX;

/// The device slot map's entries (one u32 per global row): 0 for a row not on
/// the device, `1 + slot` for a row in a slab slot, [`entry::IN_WINDOW`]`|
/// index` for a row read from the upload window (evaluation only). Zero for
/// absent lets the map be cleared by a buffer clear.
pub mod entry {
    /// The row is not on the device.
    pub const ABSENT: u32 = 0;
    /// Marks an index into the upload window rather than a slot.
    pub const IN_WINDOW: u32 = 1 << 31;
    /// The most slots a slab may have (the entry keeps the top bit clear).
    pub const MAX_SLOTS: u32 = IN_WINDOW - 2;

    /// The entry of a row in `slot`.
    pub fn slot(slot: u32) -> u32 {
        slot + 1
    }

    /// The entry of a row at `index` in the upload window.
    pub fn window(index: u32) -> u32 {
        IN_WINDOW | index
    }
}

/// How many rows ahead [`Stager::stage`] prefetches the row states.
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

/// What one step needs done on the device, in this order: set the slot-map
/// entries of `map`, write back `evict`, stage in `load`, compute (training)
/// or predict (evaluation, with `window` rows read from the upload window),
/// write back `release`. Buffers are reused across steps.
#[derive(Debug, Default)]
pub struct Moves {
    /// Trained rows leaving their slots before the loads: gathered, then
    /// written back.
    pub evict: Vec<Placed>,
    /// Rows staged into slots: resident rows coming back from lending their
    /// slot, then the step's misses.
    pub load: Vec<Placed>,
    /// Evaluation: rows read from the upload window after `load`, `slot`
    /// being the window index.
    pub window: Vec<Placed>,
    /// Rows staged for this step only, written back after it.
    pub release: Vec<Placed>,
    /// Slot-map entries `(row, entry)` to set before the step; no row twice.
    pub map: Vec<[u32; 2]>,
}

impl Moves {
    pub fn clear(&mut self) {
        self.evict.clear();
        self.load.clear();
        self.window.clear();
        self.release.clear();
        self.map.clear();
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

/// The slab slot by slot: its areas in slot order (resident, cache,
/// staging, then the block area), the global row in each slot ([`NONE`]
/// where empty) and how many rows each slot has received.
#[derive(Debug, Clone)]
pub struct SlabView {
    pub areas: Areas,
    pub block: u32,
    pub rows: Vec<u32>,
    pub loads: Vec<u32>,
    pub n_users: u32,
}

/// [`SlabView`] as the page draws it: each slot's row (users first, then
/// items; `null` where empty), the rows it has received, and its row's
/// lookups per epoch, with the lookups from which a row is among the
/// hottest 5% of the rows training touches.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlabPicture {
    pub resident: u32,
    pub cache: u32,
    pub staging: u32,
    pub block: u32,
    pub n_users: u32,
    pub rows: Vec<Option<u32>>,
    pub loads: Vec<u32>,
    pub lookups: Vec<u32>,
    pub hot_lookups: u32,
}

impl SlabPicture {
    /// `view` with `counts`, every global row's lookups per epoch.
    pub fn of(view: SlabView, counts: &[u32]) -> Self {
        let mut touched: Vec<u32> = counts.iter().copied().filter(|&c| c > 0).collect();
        touched.sort_unstable_by(|a, b| b.cmp(a));
        // The last of the top 5% (rounded up) sets the threshold.
        let hot_lookups = touched.get(touched.len().div_ceil(20).saturating_sub(1)).copied().unwrap_or(0).max(1);
        let row = |r: u32| (r != NONE).then_some(r);
        SlabPicture {
            resident: view.areas.resident,
            cache: view.areas.cache,
            staging: view.areas.staging,
            block: view.block,
            n_users: view.n_users,
            lookups: view.rows.iter().map(|&r| row(r).map_or(0, |r| counts[r as usize])).collect(),
            rows: view.rows.into_iter().map(row).collect(),
            loads: view.loads,
            hot_lookups,
        }
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
    /// Per slot: how many rows have been placed in it (the slab picture).
    slot_loads: Vec<u32>,
    free_cache: Vec<u32>,
    free_staging: Vec<u32>,
    cached: u32,
    /// Rows staged for the current step only.
    staged: Vec<Placed>,
    stamp: u32,
    /// Trace position of the next access in the epoch.
    pos: u32,
    /// The epoch's access trace and next uses (look-ahead policies only).
    trace: Vec<u32>,
    /// The following epoch's part of the last trace.
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
    /// Every row has a resident slot: nothing is ever staged.
    all_resident: bool,
    /// Resident rows that lent their slot to a step's misses, with that slot;
    /// they come back when their slot is free again.
    lent: Vec<Placed>,
    /// Where the search for a resident slot to lend starts (the least likely
    /// resident rows sit in the highest resident slots).
    lend_from: u32,
    /// The stamp of a step in which the policy had no victim, or no lent
    /// slot was free: neither can change until the step ends (every row
    /// cached or staged from then on is the step's own), so the searches,
    /// each linear, are not repeated for the step's later misses.
    no_victim: u32,
    no_free_lent: u32,
    /// Rows whose slot-map entry is cleared by the next step (released,
    /// shown to an evaluation through the window, or ending a block).
    pending_unmap: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct RowState {
    /// The row's slot, or [`NONE`].
    slot: u32,
    /// The stamp of the last step that needs the row or gave it a slot-map
    /// entry: rows marked by the current step are never evicted or lent,
    /// and their entries are not cleared (12 bytes a row, so that a step's
    /// scattered lookups stay in the cache).
    mark: u32,
    /// Trained since it was staged in or last written back: only such rows
    /// are written back (a clean row's host copy is current, so it leaves
    /// the slab without a transfer).
    dirty: bool,
    /// A resident row out of its slot, which a step borrowed.
    lent: bool,
}

impl Stager {
    /// A stager for `n_users + n_items` rows over `areas`; `lookahead_accesses`
    /// is `lookahead`'s horizon in trace positions.
    pub fn new(
        kind: PolicyKind,
        areas: Areas,
        n_users: u32,
        n_items: u32,
        counts: &[u32],
        lookahead_accesses: u32,
    ) -> Self {
        let n = (n_users + n_items) as usize;
        let policy: Box<dyn Policy> = match kind {
            PolicyKind::None => Box::new(policy::NoCache("none")),
            PolicyKind::Static => Box::new(policy::NoCache("static")),
            // SCA's cache area, where its plan has one, is kept least
            // recently used out first unless its plan says otherwise
            // ([`Stager::with_sca_cache`]; docs/ARCHITECTURE.md, "SCA").
            PolicyKind::Sca if areas.cache > 0 => Box::new(policy::Lru::named(n, "sca")),
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
        let fresh = RowState { slot: NONE, mark: 0, dirty: false, lent: false };
        let mut me = Stager {
            policy,
            areas,
            n_users,
            rows: vec![fresh; n],
            row_of: vec![NONE; slots as usize],
            slot_loads: vec![0; slots as usize],
            free_cache: (r..c).rev().collect(),
            free_staging: (c..slots).rev().collect(),
            cached: 0,
            staged: Vec::new(),
            stamp: 0,
            pos: 0,
            trace: Vec::new(),
            follow_trace: Vec::new(),
            epoch_accesses: 0,
            next: Vec::new(),
            future: kind.needs_future(),
            block_start: slots,
            free_block: Vec::new(),
            block_rows: Vec::new(),
            all_resident: false,
            lent: Vec::new(),
            lend_from: 0,
            no_victim: 0,
            no_free_lent: 0,
            pending_unmap: Vec::new(),
        };
        let resident = me.policy.resident(counts, areas.resident as usize);
        for (slot, &row) in resident.iter().enumerate() {
            me.rows[row as usize].slot = slot as u32;
            me.row_of[slot] = row;
            me.slot_loads[slot] = 1;
        }
        me.areas.resident = resident.len() as u32;
        // Steps touch only rows that training accesses (`counts` > 0).
        me.all_resident = counts.iter().enumerate().all(|(row, &c)| c == 0 || me.rows[row].slot != NONE);
        me
    }

    /// SCA's cache area kept as `cache` says (before any step). Other
    /// policies, and SCA without a cache area, are left as they are.
    pub fn with_sca_cache(mut self, cache: policy::CacheKind) -> Self {
        if self.policy.name() == "sca" && self.areas.cache > 0 {
            let n = self.rows.len();
            self.policy = match cache {
                policy::CacheKind::Lru => Box::new(policy::Lru::named(n, "sca")),
                policy::CacheKind::Lfu => Box::new(policy::Lfu::named(n, "sca")),
            };
        }
        self
    }

    /// Adds a block area of `slots` slots after the policy's areas, for the
    /// rows of the co-partitioned side (see [`Stager::begin_block`]).
    pub fn with_block_area(mut self, slots: u32) -> Self {
        self.block_start = self.row_of.len() as u32;
        self.row_of.extend(std::iter::repeat_n(NONE, slots as usize));
        self.slot_loads.extend(std::iter::repeat_n(0, slots as usize));
        self.free_block = (self.block_start..self.block_start + slots).rev().collect();
        // Blocks move rows in and out: keep the general path.
        self.all_resident &= slots == 0;
        self
    }

    /// Whether every row training touches is resident: then no step stages
    /// anything, and a backend may skip the stager altogether (every row of
    /// every step is a hit).
    pub fn all_resident(&self) -> bool {
        self.all_resident
    }

    /// Slots of the block area.
    pub fn block_slots(&self) -> u32 {
        self.row_of.len() as u32 - self.block_start
    }

    /// Starts a block: places `rows` (the block's rows of the co-partitioned
    /// side, none of them in the slab) in the block area, counting them as
    /// rows in, their slot-map entries in `moves.map`. They stay, as if
    /// resident, until [`Stager::end_block`]. `moves.load` receives the
    /// placements, to be staged in.
    pub fn begin_block(&mut self, rows: &[u32], moves: &mut Moves, ledger: &mut Ledger) {
        moves.clear();
        let stamp = self.next_stamp();
        let pending = std::mem::take(&mut self.pending_unmap);
        self.block_rows.clear();
        for &row in rows {
            debug_assert_eq!(self.rows[row as usize].slot, NONE, "a block row is already in the slab");
            let slot = self.free_block.pop().expect("the block area holds a block's rows");
            self.place(row, slot, stamp, moves);
            ledger.row_in(self.is_user(row), true);
            self.block_rows.push(Placed { row, slot });
            moves.load.push(Placed { row, slot });
        }
        self.unmap_pending(pending, stamp, moves);
    }

    /// Ends the block: its rows leave the block area (their slot-map entries
    /// are cleared by the next step). Returns those that were trained (all of
    /// them unless the epoch stopped inside the block), counted as rows out,
    /// to be written back.
    pub fn end_block(&mut self, ledger: &mut Ledger) -> &[Placed] {
        let mut dirty = 0;
        for k in 0..self.block_rows.len() {
            let p = self.block_rows[k];
            self.row_of[p.slot as usize] = NONE;
            self.free_block.push(p.slot);
            self.pending_unmap.push(p.row);
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

    /// What the slab holds now, slot by slot (the page's picture).
    pub fn view(&self) -> SlabView {
        SlabView {
            areas: self.areas,
            block: self.block_slots(),
            rows: self.row_of.clone(),
            loads: self.slot_loads.clone(),
            n_users: self.n_users,
        }
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

    /// Global rows (users and items).
    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }

    /// The resident rows and their slots: to be staged in before training.
    pub fn resident(&self) -> Vec<Placed> {
        (0..self.areas.resident).map(|slot| Placed { row: self.row_of[slot as usize], slot }).collect()
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
            self.rows.iter_mut().for_each(|r| r.mark = 0);
            (self.no_victim, self.no_free_lent) = (0, 0);
            self.stamp = 1;
        }
        self.stamp
    }

    /// Puts `row` in `slot` and gives it that slot-map entry.
    fn place(&mut self, row: u32, slot: u32, stamp: u32, moves: &mut Moves) {
        let r = &mut self.rows[row as usize];
        r.slot = slot;
        r.mark = stamp;
        self.row_of[slot as usize] = row;
        self.slot_loads[slot as usize] += 1;
        moves.map.push([row, entry::slot(slot)]);
    }

    /// Clears the slot-map entries of the rows left pending by earlier steps,
    /// except those this step gave an entry of their own.
    fn unmap_pending(&mut self, mut pending: Vec<u32>, stamp: u32, moves: &mut Moves) {
        for &row in &pending {
            let r = &mut self.rows[row as usize];
            if r.mark != stamp {
                r.mark = stamp;
                moves.map.push([row, entry::ABSENT]);
            }
        }
        // Keep the buffer for reuse, unless rows were left pending since.
        pending.clear();
        if self.pending_unmap.is_empty() {
            self.pending_unmap = pending;
        }
    }

    /// Starts an epoch whose steps will stage `this` (each step's distinct
    /// rows, in order) with `following` the next epoch's steps (nothing after
    /// the last epoch): resets the trace position and, for policies that look
    /// ahead, computes every access's next use in one backward pass. Next
    /// uses reach into the following epoch, so that the end of one epoch is
    /// not planned as if training stopped there. `continues`: `this` is the
    /// `following` of the previous call (its trace is reused).
    pub fn begin_epoch<'r>(
        &mut self,
        this: impl Iterator<Item = &'r [u32]>,
        following: impl Iterator<Item = &'r [u32]>,
        continues: bool,
    ) {
        self.pos = 0;
        if !self.future {
            return;
        }
        self.trace.clear();
        if continues {
            self.trace.extend_from_slice(&self.follow_trace);
        } else {
            this.for_each(|rows| self.trace.extend_from_slice(rows));
        }
        let split = self.trace.len();
        following.for_each(|rows| self.trace.extend_from_slice(rows));
        let shift = continues.then_some(self.epoch_accesses);
        self.epoch_accesses = split as u32;
        self.follow_trace.clear();
        self.follow_trace.extend_from_slice(&self.trace[split..]);
        next_uses(&self.trace, self.rows.len(), &mut self.next);
        self.policy.begin_epoch(&mut self.trace, &mut self.next, shift);
    }

    /// Maps one training step onto slots. `rows` are the step's distinct
    /// global rows, in the order of their first use, and must come in epoch
    /// order after [`Stager::begin_epoch`]. Fills `moves` and counts hits,
    /// misses, rows in and out on `ledger`. Always fits when the slab holds
    /// a step's rows: where the free and evictable slots run out, resident
    /// rows not needed by the step lend their slots (written back if
    /// trained) and come back when their slot is free again.
    pub fn stage(&mut self, rows: &[u32], moves: &mut Moves, ledger: &mut Ledger) {
        moves.clear();
        self.staged.clear();
        let stamp = self.next_stamp();
        let pending = std::mem::take(&mut self.pending_unmap);
        self.policy.begin_step(self.pos, rows.len() as u32);
        self.lend_from = self.areas.resident;
        // Pin every row of the step before any eviction: a row needed later
        // in this step must not be evicted for an earlier miss.
        // A row's state is a cache miss on large tables (a step's rows are
        // all over them): the pin pass asks for it `STAGE_AHEAD` rows early,
        // and the pass after finds it in the cache.
        if !self.all_resident {
            for (n, &row) in rows.iter().enumerate() {
                if let Some(&ahead) = rows.get(n + STAGE_AHEAD) {
                    prefetch_ptr(self.rows.as_ptr().wrapping_add(ahead as usize));
                    self.policy.prefetch(ahead);
                }
                self.rows[row as usize].mark = stamp;
            }
        }
        for &row in rows {
            let pos = self.pos;
            self.pos += 1;
            let user = self.is_user(row);
            let state = self.rows[row as usize];
            self.rows[row as usize].dirty = true;
            let resident = state.slot != NONE && (state.slot < self.areas.resident || state.slot >= self.block_start);
            if !resident && !state.lent {
                self.policy.touch(row, pos);
            }
            if state.slot != NONE {
                ledger.hit(user);
                continue;
            }
            ledger.miss(user);
            ledger.row_in(user, true);
            if state.lent {
                // A resident row whose slot an earlier step borrowed: back
                // into it (no step of this one took it: see `lend`).
                let k = self.lent.iter().position(|p| p.row == row).expect("a lent row is listed");
                let p = self.lent.swap_remove(k);
                debug_assert_eq!(self.row_of[p.slot as usize], NONE);
                self.rows[row as usize].lent = false;
                self.place(row, p.slot, stamp, moves);
                moves.load.push(p);
                continue;
            }
            let p = self.place_miss(row, stamp, moves, ledger);
            moves.load.push(p);
        }
        self.policy.end_step();
        // Lent slots this step left free get their rows back now.
        let mut k = 0;
        while k < self.lent.len() {
            let p = self.lent[k];
            if self.row_of[p.slot as usize] == NONE {
                self.lent.swap_remove(k);
                self.rows[p.row as usize].lent = false;
                self.place(p.row, p.slot, stamp, moves);
                moves.load.push(p);
                ledger.row_in(self.is_user(p.row), true);
            } else {
                k += 1;
            }
        }
        self.unmap_pending(pending, stamp, moves);
        self.release_staged(moves, ledger);
    }

    /// Rows staged for this step only leave after it: written back (they
    /// were trained), their slot-map entries cleared by the next step.
    fn release_staged(&mut self, moves: &mut Moves, ledger: &mut Ledger) {
        let staged = std::mem::take(&mut self.staged);
        for &p in &staged {
            let r = &mut self.rows[p.row as usize];
            r.slot = NONE;
            r.dirty = false;
            self.row_of[p.slot as usize] = NONE;
            if p.slot >= self.areas.resident {
                self.free_staging.push(p.slot);
            }
            self.pending_unmap.push(p.row);
            moves.release.push(p);
            ledger.row_out(self.is_user(p.row));
        }
        self.staged = staged;
    }

    /// Whether a step whose rows outside the resident area are `outside`
    /// rows may be staged from those alone ([`Stager::stage_outside`]): a
    /// policy without a cache (every row outside the resident set is staged
    /// for its step and released after it), no resident row lent out, no
    /// block area, and room for all of them in the staging area.
    pub fn stages_outside_only(&self, outside: usize) -> bool {
        self.areas.cache == 0
            && self.areas.resident > 0
            && self.lent.is_empty()
            && self.block_slots() == 0
            && outside <= self.free_staging.len()
    }

    /// [`Stager::stage`] of a step for which [`Stager::stages_outside_only`]
    /// holds, given its rows outside the resident set (in first-use order)
    /// and the (users, items) it has in it: the same moves and counts, with
    /// no work for its resident rows, which are all hits. Their dirty bits
    /// are left to [`Stager::mark_resident_dirty`] (or
    /// [`Stager::mark_trained`]) when the pass ends.
    pub fn stage_outside(
        &mut self,
        outside: &[u32],
        resident_hits: (u32, u32),
        moves: &mut Moves,
        ledger: &mut Ledger,
    ) {
        moves.clear();
        self.staged.clear();
        let stamp = self.next_stamp();
        let pending = std::mem::take(&mut self.pending_unmap);
        let all = outside.len() as u32 + resident_hits.0 + resident_hits.1;
        self.policy.begin_step(self.pos, all);
        self.pos += all;
        ledger.user_hits += resident_hits.0 as u64;
        ledger.item_hits += resident_hits.1 as u64;
        for (n, &row) in outside.iter().enumerate() {
            if let Some(&ahead) = outside.get(n + STAGE_AHEAD) {
                prefetch_ptr(self.rows.as_ptr().wrapping_add(ahead as usize));
            }
            debug_assert_eq!(self.rows[row as usize].slot, NONE, "a row outside the resident set stayed");
            let user = self.is_user(row);
            self.rows[row as usize].dirty = true;
            ledger.miss(user);
            ledger.row_in(user, true);
            let slot = self.free_staging.pop().expect("stages_outside_only checked the room");
            self.place(row, slot, stamp, moves);
            let p = Placed { row, slot };
            self.staged.push(p);
            moves.load.push(p);
        }
        self.policy.end_step();
        self.unmap_pending(pending, stamp, moves);
        self.release_staged(moves, ledger);
    }

    /// Marks the resident rows among `rows` trained (see
    /// [`Stager::stage_outside`]).
    pub fn mark_trained(&mut self, rows: &[u32]) {
        for &row in rows {
            let r = &mut self.rows[row as usize];
            if r.slot != NONE && r.slot < self.areas.resident {
                r.dirty = true;
            }
        }
    }

    /// A slot for a missed row: a cache slot (free, or a victim's) if the
    /// policy admits it, else a staging slot for this step; a victim's slot,
    /// then a lent resident slot, as the last resorts.
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
        if let Some(slot) = slot {
            self.cached += 1;
            self.policy.cached(row);
            self.place(row, slot, stamp, moves);
            return Placed { row, slot };
        }
        let slot = match self.free_staging.pop() {
            Some(s) => s,
            None => match self.evict(stamp, moves, ledger) {
                Some(s) => s,
                None => self.lend(stamp, moves, ledger),
            },
        };
        let p = Placed { row, slot };
        self.place(row, slot, stamp, moves);
        if self.is_cache_slot(slot) {
            self.cached += 1;
            self.policy.cached(row);
        } else {
            self.staged.push(p);
        }
        p
    }

    /// A resident slot for this step's staging: one a resident row lent
    /// earlier and that is free (unless that row is needed by this step,
    /// which then finds its slot free), else the slot of the least likely
    /// resident row this step does not need, which leaves (written back if
    /// trained) and comes back when the slot is free again.
    fn lend(&mut self, stamp: u32, moves: &mut Moves, ledger: &mut Ledger) -> u32 {
        if self.no_free_lent != stamp {
            let free = |p: &&Placed| self.row_of[p.slot as usize] == NONE && self.rows[p.row as usize].mark != stamp;
            if let Some(p) = self.lent.iter().find(free) {
                return p.slot;
            }
            self.no_free_lent = stamp;
        }
        while self.lend_from > 0 {
            self.lend_from -= 1;
            let slot = self.lend_from;
            let row = self.row_of[slot as usize];
            if row == NONE || self.rows[row as usize].mark == stamp {
                continue;
            }
            let r = &mut self.rows[row as usize];
            r.slot = NONE;
            r.lent = true;
            r.mark = stamp;
            self.row_of[slot as usize] = NONE;
            moves.map.push([row, entry::ABSENT]);
            if std::mem::take(&mut self.rows[row as usize].dirty) {
                moves.evict.push(Placed { row, slot });
                ledger.row_out(self.is_user(row));
            }
            self.lent.push(Placed { row, slot });
            ledger.lent += 1;
            return slot;
        }
        unreachable!("the slab holds every step's rows (checked when the backend is made), so a slot is free")
    }

    /// Evicts the policy's victim (never a row of the current step) and
    /// returns its slot, now taken by the caller. The victim is written back
    /// only if it was trained since it was last staged in or written back.
    fn evict(&mut self, stamp: u32, moves: &mut Moves, ledger: &mut Ledger) -> Option<u32> {
        if self.no_victim == stamp {
            return None;
        }
        let rows = &self.rows;
        let Some(victim) = self.policy.victim(&|r| rows[r as usize].mark == stamp) else {
            self.no_victim = stamp;
            return None;
        };
        let slot = self.rows[victim as usize].slot;
        self.policy.evicted(victim);
        self.cached -= 1;
        let r = &mut self.rows[victim as usize];
        r.slot = NONE;
        r.mark = stamp;
        self.row_of[slot as usize] = NONE;
        moves.map.push([victim, entry::ABSENT]);
        if std::mem::take(&mut self.rows[victim as usize].dirty) {
            moves.evict.push(Placed { row: victim, slot });
            ledger.row_out(self.is_user(victim));
        }
        Some(slot)
    }

    /// Brings every lent resident row back into its slot (all free between
    /// steps): `moves.load` and their slot-map entries, counted as rows in.
    /// Before an evaluation, so that it finds the resident set whole.
    pub fn restore_lent(&mut self, moves: &mut Moves, ledger: &mut Ledger) {
        moves.clear();
        let stamp = self.next_stamp();
        let pending = std::mem::take(&mut self.pending_unmap);
        for p in std::mem::take(&mut self.lent) {
            debug_assert_eq!(self.row_of[p.slot as usize], NONE, "a lent slot is free between steps");
            self.rows[p.row as usize].lent = false;
            self.place(p.row, p.slot, stamp, moves);
            moves.load.push(p);
            ledger.row_in(self.is_user(p.row), true);
        }
        self.unmap_pending(pending, stamp, moves);
    }

    /// Whether a resident row is out, lending its slot.
    pub fn has_lent(&self) -> bool {
        !self.lent.is_empty()
    }

    /// Maps an evaluation step over `rows` (its distinct rows) after
    /// [`Stager::restore_lent`]: rows in the slab are read there, the others
    /// staged read-only into the upload window (`moves.window`, the index as
    /// slot) and counted as evaluation rows in. Policy state does not
    /// change, so evaluation never perturbs training.
    pub fn stage_eval(&mut self, rows: &[u32], moves: &mut Moves, ledger: &mut Ledger) {
        moves.clear();
        debug_assert!(self.lent.is_empty(), "lent rows come back before an evaluation");
        let stamp = self.next_stamp();
        let pending = std::mem::take(&mut self.pending_unmap);
        for &row in rows {
            if self.rows[row as usize].slot != NONE {
                continue;
            }
            let index = moves.window.len() as u32;
            self.rows[row as usize].mark = stamp;
            moves.map.push([row, entry::window(index)]);
            moves.window.push(Placed { row, slot: index });
            self.pending_unmap.push(row);
            ledger.row_in(self.is_user(row), false);
        }
        self.unmap_pending(pending, stamp, moves);
    }

    /// Marks every resident row trained: what a pass that stages nothing
    /// (every row resident) does to them, without visiting its steps' rows.
    pub fn mark_resident_dirty(&mut self) {
        for slot in 0..self.areas.resident as usize {
            let row = self.row_of[slot];
            if row != NONE {
                self.rows[row as usize].dirty = true;
            }
        }
    }

    /// Of `rows`, those in the slab and trained since they were staged in
    /// or last written back: [`Stager::take_dirty`] for those rows alone
    /// (a run across MPI ranks, before it sends them to another rank).
    pub fn take_dirty_of(&mut self, rows: &[u32], ledger: &mut Ledger) -> Vec<Placed> {
        let mut out = Vec::new();
        for &row in rows {
            let r = &mut self.rows[row as usize];
            if r.slot != NONE && std::mem::take(&mut r.dirty) {
                ledger.row_out(row < self.n_users);
                out.push(Placed { row, slot: r.slot });
            }
        }
        out
    }

    /// Of `rows`, those in the slab, marked clean and counted as rows in:
    /// their host copies changed (another MPI rank trained them), so they
    /// are to be staged in again, into the slots they hold.
    pub fn restage(&mut self, rows: &[u32], ledger: &mut Ledger) -> Vec<Placed> {
        let mut out = Vec::new();
        // A row listed twice (an item two ranks pushed) is staged once.
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        rows.dedup();
        for row in rows {
            let r = &mut self.rows[row as usize];
            if r.slot != NONE {
                r.dirty = false;
                ledger.row_in(row < self.n_users, true);
                out.push(Placed { row, slot: r.slot });
            }
        }
        out
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

/// Training accesses per global row (users then items).
pub fn access_counts(train: &[Rating], n_users: usize, n_items: usize) -> Vec<u32> {
    let mut c = vec![0u32; n_users + n_items];
    for r in train {
        c[r.user as usize] += 1;
        c[n_users + r.item as usize] += 1;
    }
    c
}

/// The split of `slots` into resident rows and staging slots for `static`:
/// the most resident rows such that every step (`steps`: each step's
/// distinct rows) stages at most the remaining slots. Iterates resident =
/// slots − max misses to a fixed point (more resident rows never add misses).
pub fn static_resident<'r>(
    steps: impl Fn() -> Box<dyn Iterator<Item = &'r [u32]> + 'r>,
    counts: &[u32],
    slots: u32,
) -> usize {
    let mut rank = vec![u32::MAX; counts.len()];
    let by_freq = top_rows(counts, counts.len());
    for (k, &r) in by_freq.iter().enumerate() {
        rank[r as usize] = k as u32;
    }
    let max_misses = |resident: usize| -> u32 {
        steps()
            .map(|rows| {
                // Rows counted 0 are not the policy's (co-partitioning's block area).
                rows.iter()
                    .filter(|&&row| (rank[row as usize] as usize) >= resident && counts[row as usize] > 0)
                    .count() as u32
            })
            .max()
            .unwrap_or(0)
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

/// Splits `slots` into areas for `kind`, given every step's distinct rows
/// (for `static`, which sizes staging to the worst step) and the batch (for
/// SCA's model).
pub fn plan_areas<'r>(
    kind: PolicyKind,
    slots: u32,
    steps: impl Fn() -> Box<dyn Iterator<Item = &'r [u32]> + 'r>,
    batch: usize,
    counts: &[u32],
    ratings: usize,
) -> Areas {
    // A slab that holds every row training touches keeps them all resident
    // under every policy but `none` (the no-reuse baseline): a cache that
    // never evicts decides nothing, and nothing is ever staged, so the
    // stager is skipped altogether.
    let touched = counts.iter().filter(|&&c| c > 0).count() as u32;
    if kind != PolicyKind::None && slots >= touched {
        return Areas { resident: touched, cache: 0, staging: slots - touched };
    }
    match kind {
        PolicyKind::None => Areas { resident: 0, cache: 0, staging: slots },
        PolicyKind::Static => {
            let r = static_resident(steps, counts, slots) as u32;
            Areas { resident: r, cache: 0, staging: slots - r }
        }
        PolicyKind::Sca => {
            let r = sca::CostModel::new(counts, ratings, batch).split(slots, 1).0;
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
    fn the_slab_picture_calls_the_top_five_percent_hot() {
        // 40 touched rows with lookups 40, 39, …, 1, and two untouched.
        let mut counts: Vec<u32> = (1..=40).collect();
        counts.extend([0, 0]);
        let view = SlabView {
            areas: Areas { resident: 2, cache: 1, staging: 0 },
            block: 0,
            rows: vec![39, 41, NONE],
            loads: vec![0, 1, 0],
            n_users: 20,
        };
        let p = SlabPicture::of(view, &counts);
        // 5% of 40 is 2 rows: those with 40 and 39 lookups.
        assert_eq!(p.hot_lookups, 39);
        assert_eq!(p.rows, vec![Some(39), Some(41), None]);
        assert_eq!(p.lookups, vec![40, 0, 0]);
        // One touched row: it is the top 5%.
        let one = SlabView {
            areas: Areas { resident: 1, cache: 0, staging: 0 },
            block: 0,
            rows: vec![0],
            loads: vec![0],
            n_users: 1,
        };
        assert_eq!(SlabPicture::of(one, &[7]).hot_lookups, 7);
    }

    #[test]
    fn top_rows_orders_by_count_then_id() {
        assert_eq!(top_rows(&[3, 9, 0, 9, 1], 3), vec![1, 3, 0]);
        assert_eq!(top_rows(&[0, 0], 5), Vec::<u32>::new());
    }

    fn stager(kind: PolicyKind, areas: Areas, users: u32, items: u32, counts: &[u32]) -> Stager {
        Stager::new(kind, areas, users, items, counts, 8)
    }

    /// The distinct global rows of `ratings` in first-use order.
    fn rows(ratings: &[Rating], users: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for x in ratings {
            for row in [x.user, users + x.item] {
                if !out.contains(&row) {
                    out.push(row);
                }
            }
        }
        out
    }

    /// The slot map a device would hold after applying every step's entries.
    fn apply(map: &mut [u32], moves: &Moves) {
        let mut seen = std::collections::HashSet::new();
        for &[row, e] in &moves.map {
            assert!(seen.insert(row), "row {row} twice in one step's slot-map entries");
            map[row as usize] = e;
        }
    }

    /// Checks the device's slot map against the stager's for every row.
    fn check_map(st: &Stager, map: &[u32]) {
        for (row, &e) in map.iter().enumerate() {
            let slot = st.slot_of(row as u32);
            let want = if slot == NONE { entry::ABSENT } else { entry::slot(slot) };
            assert_eq!(e, want, "row {row}: device entry {e:#x}, stager slot {slot}");
        }
    }

    #[test]
    fn static_stager_hits_resident_and_releases_the_rest() {
        // 2 users, 3 items: global rows 0,1 | 2,3,4.
        let ratings = [r(0, 0), r(0, 1), r(1, 2), r(0, 0)];
        let counts = access_counts(&ratings, 2, 3);
        let mut st = stager(PolicyKind::Static, Areas { resident: 2, cache: 0, staging: 3 }, 2, 3, &counts);
        // User 0 (3 uses) and item 0 (2 uses) are resident.
        assert_eq!(st.resident().iter().map(|p| p.row).collect::<Vec<_>>(), vec![0, 2]);
        let mut map = vec![entry::ABSENT; 5];
        for p in st.resident() {
            map[p.row as usize] = entry::slot(p.slot);
        }
        let mut ledger = Ledger::default();
        let mut moves = Moves::default();
        let step = rows(&ratings, 2);
        st.begin_epoch([&step[..]].into_iter(), std::iter::empty(), false);
        st.stage(&step, &mut moves, &mut ledger);
        apply(&mut map, &moves);
        // Misses: item 1 (row 3), user 1 (row 1), item 2 (row 4).
        assert_eq!(moves.load.len(), 3);
        assert_eq!((ledger.misses(), ledger.hits()), (3, 2));
        assert_eq!(moves.release.len(), 3);
        for p in &moves.load {
            assert_eq!(map[p.row as usize], entry::slot(p.slot), "a loaded row is mapped to its slot");
        }
        // The next step clears the released rows' entries.
        st.stage(&step[..2], &mut moves, &mut ledger);
        apply(&mut map, &moves);
        check_map(&st, &map);
    }

    #[test]
    fn a_slab_holding_every_trained_row_keeps_them_all_resident_under_every_policy_but_none() {
        // 3 users, 3 items; user 2 and item 2 are never trained.
        let ratings = [r(0, 0), r(1, 1), r(0, 1), r(1, 0)];
        let counts = access_counts(&ratings, 3, 3);
        let step = rows(&ratings, 3);
        let steps = || Box::new([&step[..]].into_iter()) as Box<dyn Iterator<Item = &[u32]>>;
        let caching = [PolicyKind::Sca, PolicyKind::Static, PolicyKind::Lru, PolicyKind::Lfu];
        for kind in caching.into_iter().chain([PolicyKind::Lookahead, PolicyKind::Belady]) {
            // 4 trained rows in 5 slots: all resident, none staged.
            let areas = plan_areas(kind, 5, steps, 4, &counts, 4);
            assert_eq!(areas, Areas { resident: 4, cache: 0, staging: 1 }, "{kind:?}");
            let mut st = stager(kind, areas, 3, 3, &counts);
            assert!(st.all_resident());
            let (mut ledger, mut moves) = (Ledger::default(), Moves::default());
            st.stage(&step, &mut moves, &mut ledger);
            assert_eq!((ledger.misses(), ledger.hits(), moves.load.len(), moves.release.len()), (0, 4, 0, 0));
            // A block area moves rows in and out: the general path again.
            assert!(!stager(kind, areas, 3, 3, &counts).with_block_area(2).all_resident());
        }
        // `none`, the no-reuse baseline, stages every row whatever the slab.
        let areas = plan_areas(PolicyKind::None, 5, steps, 4, &counts, 4);
        assert!(areas.resident == 0 && !stager(PolicyKind::None, areas, 3, 3, &counts).all_resident());
        // One slot short of the trained rows: SCA plans staging as before.
        let areas = plan_areas(PolicyKind::Sca, 3, steps, 4, &counts, 4);
        assert!(areas.resident < 3 && !stager(PolicyKind::Sca, areas, 3, 3, &counts).all_resident(), "{areas:?}");
    }

    #[test]
    fn only_trained_rows_are_written_back() {
        // 1 user (row 0) and items 0..3 (rows 1..4); LRU over 3 cache slots.
        let ratings = [r(0, 0), r(0, 1), r(0, 2), r(0, 0)];
        let counts = access_counts(&ratings, 1, 3);
        let mut st = stager(PolicyKind::Lru, Areas { resident: 0, cache: 3, staging: 0 }, 1, 3, &counts);
        let (mut moves, mut ledger) = (Moves::default(), Ledger::default());
        st.stage(&rows(&ratings[..2], 1), &mut moves, &mut ledger);
        // The sync before a checkpoint writes back u, a, b and marks them clean.
        let synced: Vec<u32> = st.take_dirty(&mut ledger).iter().map(|p| p.row).collect();
        assert_eq!(synced, vec![0, 1, 2]);
        assert_eq!(ledger.rows_out(), 3);
        assert!(st.take_dirty(&mut ledger).is_empty(), "nothing trained since the sync");
        // c evicts a (least recently used), clean since the sync: it leaves
        // the slab without a transfer.
        st.stage(&rows(&ratings[2..3], 1), &mut moves, &mut ledger);
        assert_eq!(moves.load.len(), 1);
        assert!(moves.evict.is_empty(), "a clean row was written back: {:?}", moves.evict);
        assert_eq!(moves.map.iter().filter(|e| e[1] == entry::ABSENT).count(), 1, "the victim leaves the map");
        assert_eq!(ledger.rows_out(), 3);
        // a comes back and evicts b, also clean; then u, c and a are dirty.
        st.stage(&rows(&ratings[3..], 1), &mut moves, &mut ledger);
        assert!(moves.evict.is_empty());
        let mut dirty: Vec<u32> = st.take_dirty(&mut ledger).iter().map(|p| p.row).collect();
        dirty.sort();
        assert_eq!(dirty, vec![0, 1, 3]);
        assert_eq!(ledger.rows_out(), 6);
    }

    #[test]
    fn resident_rows_lend_their_slots_when_staging_runs_out_and_come_back() {
        // 4 users and 4 items, every row trained; 2 resident slots (users 0
        // and 1, the most frequent) and 2 staging slots.
        let ratings = [r(0, 0), r(0, 1), r(1, 0), r(0, 2), r(1, 3), r(2, 1), r(3, 2), r(0, 3)];
        let counts = access_counts(&ratings, 4, 4);
        let areas = Areas { resident: 2, cache: 0, staging: 2 };
        let mut st = stager(PolicyKind::Sca, areas, 4, 4, &counts);
        let resident: Vec<u32> = st.resident().iter().map(|p| p.row).collect();
        let mut map = vec![entry::ABSENT; 8];
        for p in st.resident() {
            map[p.row as usize] = entry::slot(p.slot);
        }
        let (mut moves, mut ledger) = (Moves::default(), Ledger::default());
        // A step of three rows none of which is resident: two staging slots
        // and one resident slot, lent.
        let step: Vec<u32> = (0..8).filter(|r| !resident.contains(r)).take(3).collect();
        st.stage(&step, &mut moves, &mut ledger);
        apply(&mut map, &moves);
        assert_eq!(ledger.lent, 1);
        assert_eq!(moves.load.len(), 3);
        let mut slots: Vec<u32> = moves.load.iter().map(|p| p.slot).collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), 3, "three rows, three slots");
        let out = resident.iter().filter(|&&r| st.slot_of(r) == NONE).count();
        assert_eq!(out, 1, "one resident row out while its slot serves the step");
        // The lent row was never trained: it left without a write-back.
        assert!(moves.evict.is_empty());
        // The next step, on a resident row alone, brings the lent row back.
        st.stage(&[resident[0]], &mut moves, &mut ledger);
        apply(&mut map, &moves);
        assert!(resident.iter().all(|&r| st.slot_of(r) < 2), "the resident rows are home");
        assert_eq!(moves.load.len(), 1, "the lent row came back");
        check_map(&st, &map);
        // A step needing the lent row itself puts it back into its own slot.
        st.stage(&step, &mut moves, &mut ledger);
        apply(&mut map, &moves);
        let lent: Vec<Placed> = st.lent.clone();
        assert_eq!(lent.len(), 1);
        let mut with_owner = step.clone();
        with_owner.push(lent[0].row);
        st.stage(&with_owner, &mut moves, &mut ledger);
        apply(&mut map, &moves);
        assert_eq!(st.slot_of(lent[0].row), lent[0].slot, "the owner is back in its slot");
    }

    #[test]
    fn evaluation_reads_missing_rows_through_the_window_and_leaves_the_map_as_it_was() {
        let ratings = [r(0, 0), r(1, 1), r(2, 2)];
        let counts = access_counts(&ratings, 3, 3);
        let mut st = stager(PolicyKind::Static, Areas { resident: 2, cache: 0, staging: 2 }, 3, 3, &counts);
        let mut map = vec![entry::ABSENT; 6];
        for p in st.resident() {
            map[p.row as usize] = entry::slot(p.slot);
        }
        let (mut moves, mut ledger) = (Moves::default(), Ledger::default());
        let all: Vec<u32> = (0..6).collect();
        st.stage_eval(&all, &mut moves, &mut ledger);
        apply(&mut map, &moves);
        assert_eq!(moves.window.len(), 4);
        assert_eq!(ledger.eval_rows_in, 4);
        for p in &moves.window {
            assert_eq!(map[p.row as usize], entry::window(p.slot));
        }
        // The next step clears the window entries.
        st.stage(&[], &mut moves, &mut ledger);
        apply(&mut map, &moves);
        check_map(&st, &map);
    }

    #[test]
    fn static_split_fixed_point() {
        // Steps of two ratings; user 0 in every rating.
        let ratings: Vec<Rating> = (0..8).map(|i| r(0, i)).collect();
        let steps: Vec<Vec<u32>> = ratings.chunks(2).map(|c| rows(c, 1)).collect();
        let counts = access_counts(&ratings, 1, 8);
        let iter = || Box::new(steps.iter().map(|s| &s[..])) as Box<dyn Iterator<Item = &[u32]>>;
        // 4 slots: resident user 0 (+1 item), staging 2 items per step.
        let res = static_resident(iter, &counts, 4);
        assert!((1..=2).contains(&res), "{res}");
    }
}
