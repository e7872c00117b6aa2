//! The slab's plan: a budget's slots split into the areas a policy uses
//! (docs/ARCHITECTURE.md, "Memory architecture"). One function for every
//! command: the GPU engine sizes its slab with it (adding its windows and
//! the adapter's limits, `gpu::layout`), and the simulator replays the same
//! split, so that `train`, `plan`, `simulate`, `bench` and the lesson agree.

use super::RunLayout;
use super::rows::{GroupRows, PartRows};
use super::sca::{ScaPlan, Trace, plan_sca};
use super::walk::blocked_step_rows;
use crate::stage::copartition::{CoPartition, Side};
use crate::stage::{Areas, CacheKind, PolicyKind, plan_areas};

/// What the plan needs to know.
pub struct SlabInput<'a> {
    /// The budget's slots ([`crate::stage::slots_in`]).
    pub slots: u32,
    pub policy: PolicyKind,
    pub batch: usize,
    /// Training ratings.
    pub ratings: usize,
    pub n_users: usize,
    pub n_items: usize,
    pub co_partition: Option<CoPartition>,
    /// Training counts per global row as the policy sees them (without the
    /// co-partitioned side).
    pub counts: &'a [u32],
    /// Every part's distinct rows.
    pub rows: &'a PartRows,
    /// The run's layout and co-partitioning's groups, which SCA's plan
    /// replays.
    pub layout: &'a RunLayout,
    pub groups: Option<&'a GroupRows>,
    pub threads: usize,
    /// The blocked order's bins where a step may hold several parts of a
    /// round (ratings not streamed).
    pub multi_part_bins: Option<u32>,
}

/// A budget's slots, split.
#[derive(Debug, Clone, Copy)]
pub struct SlabPlan {
    pub slots: u32,
    /// The co-partitioning block area (0 without), after the policy's.
    pub block_slots: u32,
    pub areas: Areas,
    /// The most distinct rows of any step.
    pub step_rows: u32,
    /// The walk's cap on a step's rows when a step holds several parts of a
    /// blocked round.
    pub multi_part_rows: Option<u32>,
    /// SCA's plan, for `sca`.
    pub sca: Option<ScaPlan>,
}

impl SlabPlan {
    /// How SCA's cache area is kept (LRU for other policies).
    pub fn sca_cache(&self) -> CacheKind {
        self.sca.map_or(CacheKind::Lru, |p| p.cache)
    }
}

/// The slots a step needs at least: a part's rows, or co-partitioning's
/// block area and a batch of the other side.
pub fn needed_slots(input: &SlabInput) -> u32 {
    match input.co_partition {
        Some(c) => {
            let other = match c.side {
                Side::Users => input.n_items,
                Side::Items => input.n_users,
            };
            c.block_rows + (input.batch.min(other) as u32).max(1)
        }
        None => input.rows.max().max(2),
    }
}

/// Splits `input.slots` for the policy, or `Err(needed)`, the slots a step
/// needs, where the budget cannot hold one.
pub fn plan_slab(input: &SlabInput) -> Result<SlabPlan, u32> {
    let needed = needed_slots(input);
    if input.slots < needed {
        return Err(needed);
    }
    let block_slots = input.co_partition.map_or(0, |c| c.block_rows);
    let policy_slots = input.slots - block_slots;
    let multi_part_rows = input.multi_part_bins.map(|bins| blocked_step_rows(input.rows, bins, policy_slots));
    let step_rows = input.rows.max().max(2);
    let steps = || Box::new(input.rows.iter()) as Box<dyn Iterator<Item = &[u32]>>;
    let sca = (input.policy == PolicyKind::Sca).then(|| {
        plan_sca(&Trace {
            layout: input.layout,
            rows: input.rows,
            groups: input.groups,
            counts: input.counts,
            n_users: input.n_users as u32,
            n_items: input.n_items as u32,
            slots: policy_slots,
            block_slots,
            step_rows: multi_part_rows,
            threads: input.threads,
        })
    });
    let areas = match sca {
        Some(p) => p.areas,
        None => plan_areas(input.policy, policy_slots, steps, input.batch, input.counts, input.ratings),
    };
    Ok(SlabPlan {
        slots: input.slots,
        block_slots,
        areas,
        step_rows: multi_part_rows.map_or(step_rows, |cap| cap.max(step_rows)),
        multi_part_rows,
        sca,
    })
}
