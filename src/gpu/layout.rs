//! The slab's plan: the budget checked against the adapter and against the
//! largest step, the slots split into areas for the policy, and the sizes of
//! the transfer windows.

use super::AdapterSummary;
use crate::engine::Prediction;
use crate::engine::slab::{SlabInput, plan_slab};
use crate::error::{Error, Result};
use crate::stage::{Areas, CacheKind, PolicyKind, human_bytes};

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

/// What the plan needs to know: the slab's split ([`SlabInput`], its slots
/// from `slab_bytes`), the budget in bytes and the largest part to name in
/// errors.
pub struct LayoutInput<'a> {
    pub slab_bytes: u64,
    pub row_bytes: u64,
    pub slab: SlabInput<'a>,
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
/// it into areas ([`plan_slab`], as the simulator does).
pub fn plan_layout(input: &LayoutInput, adapter: &AdapterSummary) -> Result<GpuLayout> {
    check_budget(input.slab_bytes, adapter)?;
    let row_bytes = input.row_bytes;
    let slab = &input.slab;
    let plan = plan_slab(slab).map_err(|needed| {
        let min_bytes = needed as u64 * row_bytes;
        Error::BudgetTooSmall {
            budget: input.slab_bytes,
            slots: slab.slots as u64,
            row_bytes,
            step: match input.largest_part {
                Some(len) => format!("a block's part of up to {len} ratings (the blocked order)"),
                None => format!("a batch of {} ratings", slab.batch),
            },
            fix: if input.largest_part.is_some() {
                ", or an `order` of more bins (blocked:BINS), which trains another model"
            } else {
                ", or use a smaller `batch`"
            },
            needed: needed as u64,
            min_bytes,
            min_human: human_bytes(min_bytes),
        }
    })?;
    let (slots, areas, step_rows) = (plan.slots, plan.areas, plan.step_rows);
    let policy_slots = slots - plan.block_slots;
    let all_resident = holds_every_row(slab.policy, policy_slots, slab.counts, slab.co_partition.is_some());
    // A step loads its misses and the lent rows coming back (each at most a
    // step's rows) and writes back its victims and its staged rows.
    let upload_rows = (2 * step_rows).min(slots.max(2));
    let download_rows = 2 * step_rows;
    Ok(GpuLayout {
        slab_bytes: input.slab_bytes,
        row_bytes,
        slots,
        areas,
        block_slots: plan.block_slots,
        step_rows,
        multi_part_rows: plan.multi_part_rows,
        upload_rows,
        download_rows,
        all_resident,
        sca_cache: plan.sca_cache(),
        prediction: plan.sca.map(|p| Prediction {
            rows_per_epoch: p.rows_in_per_epoch,
            resident: areas.resident as u64,
            cold: p.cold_rows_in,
            cache: areas.cache as u64,
            row_bytes,
        }),
    })
}
