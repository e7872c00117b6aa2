//! The slab's plan: the budget checked against the adapter and against the
//! largest step, the slots split into areas for the policy, and the sizes of
//! the transfer windows.

use super::AdapterSummary;
use crate::engine::Prediction;
use crate::engine::RunLayout;
use crate::engine::rows::{GroupRows, PartRows};
use crate::engine::sca::{Trace, plan_sca};
use crate::engine::walk::blocked_step_rows;
use crate::error::{Error, Result};
use crate::stage::copartition::{CoPartition, Side};
use crate::stage::{Areas, CacheKind, PolicyKind, entry, human_bytes, plan_areas};

/// Sizes of the GPU backend, fixed at creation.
#[derive(Debug, Clone)]
pub struct GpuLayout {
    pub slab_bytes: u64,
    pub row_bytes: u64,
    pub slots: u32,
    pub areas: Areas,
    /// Slots of the co-partitioning block area (0 without), after the
    /// policy's areas.
    pub block_slots: u32,
    /// The most distinct rows of any step.
    pub step_rows: u32,
    /// The walk's cap on a step's rows when a step holds several parts of
    /// a blocked round ([`crate::engine::walk::blocked_step_rows`]).
    pub multi_part_rows: Option<u32>,
    /// Rows the upload window holds (a step's loads) and the download window
    /// (a step's write-backs).
    pub upload_rows: u32,
    pub download_rows: u32,
    /// Every trained row resident: no step stages anything.
    pub all_resident: bool,
    /// The cost model's traffic (`sca` only).
    pub prediction: Option<Prediction>,
    /// How SCA's cache area is kept.
    pub sca_cache: CacheKind,
}

impl GpuLayout {
    /// Bytes of the transfer windows: upload, download, and the readback
    /// ring behind the download window.
    pub fn window_bytes(&self) -> u64 {
        (self.upload_rows as u64 + (1 + super::readback::RING as u64) * self.download_rows as u64) * self.row_bytes
    }
}

/// Refuses a slab of `bytes` that `adapter` cannot bind, naming the limit.
pub fn check_budget(bytes: u64, adapter: &AdapterSummary) -> Result<()> {
    let limit = adapter.max_slab_bytes();
    if bytes <= limit {
        return Ok(());
    }
    Err(Error::BudgetTooLarge {
        budget: bytes,
        adapter: adapter.name.clone(),
        limit_name: if adapter.max_storage_buffer_binding_size <= adapter.max_buffer_size {
            "max_storage_buffer_binding_size"
        } else {
            "max_buffer_size"
        },
        limit,
    })
}

/// What the plan needs to know.
pub struct LayoutInput<'a> {
    pub slab_bytes: u64,
    pub row_bytes: u64,
    pub policy: PolicyKind,
    pub batch: usize,
    pub ratings: usize,
    pub n_users: usize,
    pub n_items: usize,
    pub co_partition: Option<CoPartition>,
    /// Training counts per global row as the policy sees them (without the
    /// co-partitioned side).
    pub counts: &'a [u32],
    /// Every part's distinct rows (counts alone where every row will be
    /// resident).
    pub rows: &'a PartRows,
    /// The run's layout and co-partitioning's groups, which SCA's plan
    /// replays.
    pub layout: &'a RunLayout,
    pub groups: Option<&'a GroupRows>,
    pub threads: usize,
    /// The blocked order's bins when a step may hold several parts of a
    /// round (ratings not streamed).
    pub multi_part_bins: Option<u32>,
    /// The blocked order's largest part (ratings), to name in errors.
    pub largest_part: Option<u32>,
}

/// Whether a slab of `slots` keeps every trained row resident for `policy`
/// (then nothing is ever staged, and the parts' rows need not be listed).
pub fn holds_every_row(policy: PolicyKind, slots: u32, counts: &[u32], co_partition: bool) -> bool {
    let touched = counts.iter().filter(|&&c| c > 0).count() as u64;
    !co_partition && policy != PolicyKind::None && slots as u64 >= touched
}

/// Checks the budget against the adapter and the largest step, and splits
/// it into areas.
pub fn plan_layout(input: &LayoutInput, adapter: &AdapterSummary) -> Result<GpuLayout> {
    check_budget(input.slab_bytes, adapter)?;
    let row_bytes = input.row_bytes;
    let slots = (input.slab_bytes / row_bytes).min(entry::MAX_SLOTS as u64) as u32;
    let block_slots = input.co_partition.map_or(0, |c| c.block_rows);
    let step_rows = input.rows.max().max(2);
    let needed = match input.co_partition {
        // The block area, and a part's rows of the other side at worst.
        Some(c) => {
            let other = match c.side {
                Side::Users => input.n_items,
                Side::Items => input.n_users,
            };
            c.block_rows + (input.batch.min(other) as u32).max(1)
        }
        None => step_rows,
    };
    if slots < needed {
        let min_bytes = needed as u64 * row_bytes;
        return Err(Error::BudgetTooSmall {
            budget: input.slab_bytes,
            slots: slots as u64,
            row_bytes,
            step: match input.largest_part {
                Some(len) => format!("a block's part of up to {len} ratings (the blocked order)"),
                None => format!("a batch of {} ratings", input.batch),
            },
            fix: if input.largest_part.is_some() {
                "an `order` of more bins (blocked:BINS), which trains another model"
            } else {
                "use a smaller `batch`"
            },
            needed: needed as u64,
            min_bytes,
            min_human: human_bytes(min_bytes),
        });
    }
    let policy_slots = slots - block_slots;
    let multi_part_rows = input.multi_part_bins.map(|bins| blocked_step_rows(input.rows, bins, policy_slots));
    let step_rows = multi_part_rows.map_or(step_rows, |cap| cap.max(step_rows));
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
    let all_resident = holds_every_row(input.policy, policy_slots, input.counts, input.co_partition.is_some());
    // A step loads its misses and the lent rows coming back (each at most a
    // step's rows) and writes back its victims and its staged rows.
    let upload_rows = (2 * step_rows).min(slots.max(2));
    let download_rows = 2 * step_rows;
    Ok(GpuLayout {
        slab_bytes: input.slab_bytes,
        row_bytes,
        slots,
        areas,
        block_slots,
        step_rows,
        multi_part_rows,
        upload_rows,
        download_rows,
        all_resident,
        sca_cache: sca.map_or(CacheKind::Lru, |p| p.cache),
        prediction: sca.map(|p| Prediction {
            rows_per_epoch: p.rows_in_per_epoch,
            resident: areas.resident as u64,
            cold: p.cold_rows_in,
            row_bytes,
        }),
    })
}
