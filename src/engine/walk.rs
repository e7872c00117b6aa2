//! The staging walk of an epoch: the one sequence of scheduler decisions
//! that a GPU backend carries out on the device and that the simulator
//! ([`super::simulate`]) only counts, so that a run's ledger and the
//! simulator's agree by construction.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use super::order::{EpochPlan, NO_GROUP};
use super::rows::{GroupRows, PartRows};
use crate::error::Result;
use crate::stage::{Ledger, Moves, Placed, Stager};

/// One decision of the walk, to be carried out in this order.
pub enum Event<'a> {
    /// A co-partitioning block visit starts: its rows of the side go into
    /// the block area (`moves.load`, with their slot-map entries).
    BeginBlock(&'a Moves),
    /// The plan's parts at `parts` (indices into the plan) train on the slab
    /// after `moves`: one part, or in the blocked order parts of one round,
    /// which share no row and train at once.
    Train { parts: Range<usize>, moves: &'a Moves },
    /// The block visit ends: these trained rows are written back.
    EndBlock(&'a [Placed]),
}

/// Every part's rows outside `stager`'s resident set, where its policy has no
/// cache (the walk then stages such steps from those alone): listed once
/// per run on `threads` threads. `None` for other policies, a block area,
/// or no resident set.
pub fn outside_rows(stager: &Stager, rows: &PartRows, threads: usize) -> Option<PartRows> {
    let areas = stager.areas();
    if areas.cache > 0 || areas.resident == 0 || stager.block_slots() > 0 {
        return None;
    }
    let n = stager.n_rows();
    let resident: Vec<bool> = (0..n as u32).map(|r| stager.slot_of(r) < areas.resident).collect();
    Some(rows.filtered(|r| !resident[r as usize], threads))
}

/// The rows a step of the blocked order may hold ([`Walker::step_rows`]): a
/// whole round (at most `bins` parts of at most `rows.max()` rows, disjoint)
/// where half the policy's `slots` hold it, else as many parts as they do,
/// at least one. Half: a step's transfer windows (twice its rows) then stay
/// within the slab's size. The same rule for a run and its simulation keeps
/// their ledgers equal.
pub fn blocked_step_rows(rows: &PartRows, bins: u32, slots: u32) -> u32 {
    let part = rows.max().max(2);
    part.saturating_mul(bins.max(1)).min(slots / 2).max(part)
}

/// One pass of the walk: `plan` from its `from`-th part, `following` the
/// next epoch's plan (for policies that look ahead; `continues` when `plan`
/// is the following one of the last pass and `from` is 0), stopping before
/// a part when `stop` is raised.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    pub plan: &'a EpochPlan,
    pub from: usize,
    pub following: Option<&'a EpochPlan>,
    pub continues: bool,
    pub stop: &'a AtomicBool,
}

/// What the walk needs beyond the plan.
pub struct Walker<'a> {
    pub stager: &'a mut Stager,
    pub rows: &'a PartRows,
    /// Every part's rows outside the resident set, for a policy without a
    /// cache: such a step is staged from those alone
    /// ([`Stager::stage_outside`]).
    pub outside: Option<&'a PartRows>,
    /// Co-partitioning's rows of the side per layout group.
    pub groups: Option<&'a GroupRows>,
    pub moves: &'a mut Moves,
    /// The blocked order: a step takes as many parts of a round (which
    /// share no row) as fit this many rows, at least one. `None`: a step is
    /// one part.
    pub step_rows: Option<u32>,
    /// A step's rows (several parts' concatenated), reused.
    pub scratch: Vec<u32>,
}

impl Walker<'_> {
    /// Walks `pass`, ending an open block first when it stops. Calls `each`
    /// with every event; returns the parts trained.
    pub fn epoch(
        &mut self,
        pass: Pass,
        ledger: &mut Ledger,
        mut each: impl FnMut(Event, &mut Ledger) -> Result<()>,
    ) -> Result<usize> {
        let Pass { plan, from, following, continues, stop } = pass;
        let rows = self.rows;
        let this = plan.parts[from.min(plan.parts.len())..].iter().map(|&p| rows.of(p));
        let next = following.map_or(&[][..], |f| &f.parts[..]).iter().map(|&p| rows.of(p));
        self.stager.begin_epoch(this, next, continues);
        let mut done = 0;
        // Parts staged from their rows outside the resident set whose
        // resident rows are not yet marked trained.
        let mut unmarked = Vec::new();
        'groups: for (range, id) in plan.groups_from(from) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let block = self.groups.filter(|_| id != NO_GROUP);
            if let Some(g) = block {
                self.stager.begin_block(g.of(id), self.moves, ledger);
                each(Event::BeginBlock(self.moves), ledger)?;
            }
            let mut stopped = false;
            let mut k = range.start;
            while k < range.end {
                if stop.load(Ordering::Relaxed) {
                    stopped = true;
                    break;
                }
                let step = self.step_at(plan, k, range.end);
                self.stage(&plan.parts[step.clone()], &mut unmarked, ledger);
                ledger.steps += 1;
                k = step.end;
                done += step.len();
                each(Event::Train { parts: step, moves: self.moves }, ledger)?;
            }
            if block.is_some() {
                let out = self.stager.end_block(ledger).to_vec();
                each(Event::EndBlock(&out), ledger)?;
            }
            if stopped {
                break 'groups;
            }
        }
        // Steps staged from their rows outside the resident set left the
        // resident rows' dirty bits: a whole epoch trains every resident row.
        if from == 0 && done == plan.parts.len() && !unmarked.is_empty() {
            self.stager.mark_resident_dirty();
        } else {
            self.mark(&mut unmarked);
        }
        Ok(done)
    }

    /// The step starting at plan index `k` of a group ending at `end`: one
    /// part, or as many as fit [`Walker::step_rows`].
    fn step_at(&self, plan: &EpochPlan, k: usize, end: usize) -> Range<usize> {
        let Some(cap) = self.step_rows else { return k..k + 1 };
        let count = |p: u32| {
            let (u, i) = self.rows.counts(p);
            u + i
        };
        let mut rows = count(plan.parts[k]);
        let mut j = k + 1;
        while j < end && rows + count(plan.parts[j]) <= cap {
            rows += count(plan.parts[j]);
            j += 1;
        }
        k..j
    }

    /// Marks the resident rows of the `unmarked` parts trained.
    fn mark(&mut self, unmarked: &mut Vec<u32>) {
        for p in unmarked.drain(..) {
            self.stager.mark_trained(self.rows.of(p));
        }
    }

    /// Stages the step of `parts` (rows disjoint between parts). A step
    /// staged from its rows outside the resident set joins `unmarked`; any
    /// other step first marks those trained, since it may lend a resident
    /// slot, whose row is written back only if marked.
    fn stage(&mut self, parts: &[u32], unmarked: &mut Vec<u32>, ledger: &mut Ledger) {
        let rows = self.rows;
        if let Some(out) = self.outside {
            let outside: usize = parts.iter().map(|&p| out.of(p).len()).sum();
            if self.stager.stages_outside_only(outside) {
                unmarked.extend_from_slice(parts);
                let (mut u, mut i) = (0, 0);
                for &p in parts {
                    let (all, off) = (rows.counts(p), out.counts(p));
                    (u, i) = (u + all.0 - off.0, i + all.1 - off.1);
                }
                let step_rows = gather(&mut self.scratch, parts.iter().map(|&p| out.of(p)));
                self.stager.stage_outside(step_rows, (u, i), self.moves, ledger);
                return;
            }
        }
        self.mark(unmarked);
        let step_rows = gather(&mut self.scratch, parts.iter().map(|&p| rows.of(p)));
        self.stager.stage(step_rows, self.moves, ledger);
    }
}

/// `lists` concatenated into `scratch` (a single list as it is).
fn gather<'r>(scratch: &'r mut Vec<u32>, mut lists: impl Iterator<Item = &'r [u32]>) -> &'r [u32] {
    let first = lists.next().unwrap_or(&[]);
    match lists.next() {
        None => first,
        Some(second) => {
            scratch.clear();
            scratch.extend_from_slice(first);
            scratch.extend_from_slice(second);
            lists.for_each(|l| scratch.extend_from_slice(l));
            scratch
        }
    }
}
