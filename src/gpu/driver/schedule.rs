//! Epochs whose rows are all resident: the plan's parts a dispatch of many,
//! or, in tiles, a dispatch per tile shift derived on the device.

use super::*;
use std::sync::atomic::AtomicUsize;

/// Where a tiled blocked order (a slab that holds every row) lives in the
/// `parts` buffer, read as words: after the layout's parts and room for a
/// plan, the block starts (uploaded once), then the epoch's permutations.
/// Per epoch the host writes only those (O(sweeps × bins) words) and a
/// dispatch per tile shift ([`Exec::train_tiles`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiles {
    /// Word of the first block start.
    pub(super) starts_at: u32,
    pub(super) bins: u32,
    /// A tile's workers are workgroups of lanes (`sgd_tiles_lanes`).
    pub(super) lanes: bool,
}

impl Tiles {
    /// The tiles of `run` on this device, where its slab holds every row
    /// and the ratings are resident: `None` where the order has no tiles or
    /// the device's limits refuse them (a dispatch per round then).
    pub(super) fn of(
        run: &RunLayout,
        resident: bool,
        summary: &crate::gpu::AdapterSummary,
        lanes: bool,
        spec: kernels::Spec,
    ) -> Option<Self> {
        let (bins, tile, sweeps) = (run.bins()?, run.tile()?, run.sweeps()?);
        let fits = tile > 1
            && resident
            && tile <= kernels::MAX_LANES.min(summary.max_compute_invocations_per_workgroup)
            && sweeps <= 1 << 16
            && bins / tile <= summary.max_compute_workgroups_per_dimension
            && (bins as u64).pow(2) < u32::MAX as u64 / 2
            // Word offsets into the parts buffer stay within a u32.
            && (run.parts().len() as u64) < u32::MAX as u64 / 8;
        fits.then_some(Tiles {
            starts_at: 4 * run.parts().len() as u32,
            bins,
            lanes: lanes && spec.tile_lanes_fit(summary.max_compute_invocations_per_workgroup),
        })
    }

    /// Words after `starts_at`: the block starts and an epoch's permutations.
    pub(super) fn words(&self, run: &RunLayout) -> u64 {
        let (n, v) = (self.bins as u64, run.sweeps().unwrap_or(0) as u64);
        n * n + 1 + v * BlockedEpoch::stride_of(self.bins, run.tile().unwrap_or(1)) as u64
    }
}

impl Exec {
    /// Writes the epoch's plan as parts after the layout's in the parts
    /// buffer: what a dispatch over several of the plan's parts reads.
    pub(super) fn put_plan(&mut self, plan: &EpochPlan, layout: &RunLayout, ledger: &mut Ledger) {
        let mut table = std::mem::take(&mut self.plan_table);
        table.clear();
        table.extend(plan.parts.iter().map(|&p| layout.parts()[p as usize]));
        ledger.data_bytes_h2d +=
            self.dev.put(&mut self.wire, &self.buffers.parts, self.n_parts as u64 * 8, bytemuck::cast_slice(&table));
        self.plan_table = table;
    }

    /// One pass of `sgd`'s dispatches (block, count, kernel), submitted and
    /// checked.
    fn submit_sgd(
        &mut self,
        tables: &HostTables,
        label: &str,
        ledger: &mut Ledger,
        sgd: &[(u32, u32, Sgd)],
    ) -> Result<()> {
        let lanes = self.lanes;
        self.submit(
            tables,
            label,
            ledger,
            |l| {
                for &(block, n, kind) in sgd {
                    kind.launch(l, block, n, lanes);
                }
            },
            |_, _| {},
        )?;
        self.dev.check()
    }

    /// Trains the plan from index `first` on, every row resident: in the
    /// blocked order a dispatch per round (up to [`ROUNDS_PER_SUBMIT`] in a
    /// pass: the dispatches of a pass run in order); in Hogwild dispatches
    /// of up to [`DISPATCH_RATINGS`] ratings over the epoch's part table;
    /// deterministic waves and streamed ratings a part at a time. Stops
    /// between submissions when `stop` is raised, adding each submission's
    /// ratings to `progress`; returns the parts trained.
    pub(super) fn train_resident(
        &mut self,
        tables: &HostTables,
        layout: &RunLayout,
        plan: &EpochPlan,
        first: usize,
        (stop, progress): (&std::sync::atomic::AtomicBool, &AtomicUsize),
        ledger: &mut Ledger,
    ) -> Result<usize> {
        let ratings = |k: usize| layout.parts()[plan.parts[k] as usize].len as usize;
        if self.waves.is_some() || self.streamed.is_some() {
            for k in first..plan.parts.len() {
                if stop.load(Ordering::Relaxed) {
                    return Ok(k - first);
                }
                let base = self.stream(layout.parts()[plan.parts[k] as usize], ledger);
                self.input.clear();
                let sgd = self.sgd_blocks(plan, k..k + 1, layout, base);
                self.submit_sgd(tables, "train", ledger, &sgd)?;
                progress.fetch_add(ratings(k), Ordering::Relaxed);
            }
            return Ok(plan.parts.len() - first);
        }
        if self.blocked {
            let rounds: Vec<Range<usize>> = plan.groups_from(first).map(|(r, _)| r).collect();
            let mut done = first;
            for chunk in rounds.chunks(ROUNDS_PER_SUBMIT) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                self.input.clear();
                let sgd: Vec<(u32, u32, Sgd)> =
                    chunk.iter().flat_map(|r| self.sgd_blocks(plan, r.clone(), layout, 0)).collect();
                self.submit_sgd(tables, "train rounds", ledger, &sgd)?;
                let end = chunk.last().map_or(done, |r| r.end);
                progress.fetch_add((done..end).map(ratings).sum(), Ordering::Relaxed);
                done = end;
            }
            return Ok(done - first);
        }
        let parts = &plan.parts[first..];
        let len = |k: usize| ratings(first + k);
        let widest = layout.max_part_len() as u32;
        let width = self.width.map_or(widest, |w| w.min(widest)).max(1);
        let mut k = 0;
        while k < parts.len() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let start = k;
            let mut n = 0usize;
            while k < parts.len() && (n == 0 || n + len(k) <= DISPATCH_RATINGS) {
                n += len(k);
                k += 1;
            }
            self.input.clear();
            let params = self.sgd_params(self.n_parts + (first + start) as u32, (k - start) as u32, width, 0);
            let b = self.input.block(params);
            self.submit(tables, "train", ledger, |l| l.sgd(b, width, false), |_, _| {})?;
            self.dev.check()?;
            self.sgd_launches += 1;
            self.sgd_workers += width.min(n as u32) as f64;
            progress.fetch_add(n, Ordering::Relaxed);
        }
        Ok(k)
    }

    /// Trains epoch `order` of a tiled blocked order, every row resident:
    /// its permutations written once, then a dispatch per tile shift (up to
    /// [`ROUNDS_PER_SUBMIT`] in a pass), each workgroup running its tile's
    /// rounds. Stops between submissions when `stop` is raised; returns the
    /// tile shifts trained. `progress` gains each pass's share of the
    /// epoch's `ratings`, in proportion to its shifts (a shift's ratings are
    /// only known on the device).
    pub(super) fn train_tiles(
        &mut self,
        tables: &HostTables,
        order: &BlockedEpoch,
        stop: &std::sync::atomic::AtomicBool,
        (progress, ratings): (&AtomicUsize, usize),
        ledger: &mut Ledger,
    ) -> Result<usize> {
        let t = self.tiles.expect("a tiled layout");
        let perms_at = (t.starts_at as u64 + (t.bins as u64).pow(2) + 1) * 4;
        ledger.data_bytes_h2d +=
            self.dev.put(&mut self.wire, &self.buffers.parts, perms_at, bytemuck::cast_slice(&order.perms));
        let g = order.shifts();
        let total = order.sweeps as usize * g;
        let mut done = 0;
        while done < total && !stop.load(Ordering::Relaxed) {
            let end = (done + ROUNDS_PER_SUBMIT).min(total);
            self.input.clear();
            let blocks: Vec<u32> = (done..end)
                .map(|d| {
                    let v = d / g;
                    // Read as the kernel's: the block starts, the sweep, the
                    // shift and the sweeps (sgd.wgsl, "in tiles").
                    self.input.block(SgdParams {
                        starts_at: t.starts_at,
                        sweep: v as u32,
                        shift: order.shift_order(v)[d % g],
                        sweeps: order.sweeps,
                        ..self.sgd_params(0, 0, 0, 0)
                    })
                })
                .collect();
            self.submit(
                tables,
                "train tiles",
                ledger,
                |l| {
                    for &b in &blocks {
                        l.sgd_tiles(b, g as u32, t.lanes);
                    }
                },
                |_, _| {},
            )?;
            self.dev.check()?;
            self.sgd_launches += blocks.len() as u64;
            self.sgd_workers += blocks.len() as f64 * t.bins as f64;
            progress.fetch_add(ratings * end / total - ratings * done / total, Ordering::Relaxed);
            done = end;
        }
        Ok(done)
    }
}
