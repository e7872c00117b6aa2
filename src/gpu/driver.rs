//! The step driver: [`GpuBackend`], the engine on a device
//! (docs/ARCHITECTURE.md, "The GPU engine").
//!
//! The device holds the training ratings and the slot map; the host only
//! decides and moves rows. An epoch is told to the device as part ids. With
//! a slab that holds every trained row nothing is staged: a dispatch trains
//! up to [`DISPATCH_RATINGS`] ratings of many parts, so the number of
//! dispatches is set by the data and the schedule, not by the batch.
//! Otherwise the scheduler's walk ([`crate::engine::walk`]) decides each
//! part's moves from its distinct rows, listed once per run, and each step
//! is one write (its parameters, moves and staged rows), one compute pass
//! (slot-map entries, write-backs of victims, loads, SGD, write-backs of the
//! staged rows) and one copy into the readback ring, whose rows reach the
//! host tables while later steps run.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::device::{Device, MapSignal, Wire};
use super::kernels::{self, Kernels, MapParams, MoveParams, PredictParams, SgdParams, TAIL_GROUP, WORKGROUP};
use super::launch::{Launch, StepInput, UploadRing, Written};
use super::layout::{GpuLayout, LayoutInput, holds_every_row, plan_layout};
use super::prepare::{self, DeviceRatings};
use super::readback::Readback;
use super::resources::{BindGroups, Buffers, Sizes, StepRegions, TestBuffers};
use super::tables::HostTables;
use super::timing::Timer;
use super::{GpuContext, GpuSetup};
use crate::data::Rating;
use crate::engine::rows::{GroupRows, PartRows, cut_by_rows, lookahead_accesses};
use crate::engine::slab::SlabInput;
use crate::engine::walk::{Event, Pass, Walker, outside_rows};
use crate::engine::{Backend, BlockedEpoch, EpochInput, EpochPlan, EpochTrain, Part, Prediction, RunLayout};
use crate::error::Result;
use crate::model::{Metrics, MetricsAcc, Model, Rate};
use crate::stage::{Ledger, Moves, Placed, Stager, access_counts, entry};

/// Ratings one dispatch trains at most where nothing is staged: enough to
/// keep a large GPU busy for milliseconds, few enough that a dispatch stays
/// far below any driver's watchdog and Ctrl-C is answered quickly.
pub const DISPATCH_RATINGS: usize = 1 << 20;

/// Test ratings one evaluation dispatch predicts at most where nothing is
/// staged.
const EVAL_RATINGS: usize = 1 << 20;

/// Rounds of the blocked order one submission carries where nothing is
/// staged (a parameter block each).
const ROUNDS_PER_SUBMIT: usize = 64;

/// Which SGD kernel a block launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sgd {
    /// `sgd` over the parts table.
    Parts,
    /// `sgd` over the waves table.
    Waves,
    /// `sgd_tail` over the waves table.
    Tail,
    /// `sgd_blocked` (or `sgd_blocked_lanes`) over the epoch's parts.
    Blocked,
}

impl Sgd {
    fn launch(self, l: &mut Launch, block: u32, n: u32, lanes: bool) {
        match self {
            Sgd::Parts => l.sgd(block, n, false),
            Sgd::Waves => l.sgd(block, n, true),
            Sgd::Tail => l.sgd_tail(block),
            Sgd::Blocked => l.sgd_blocked(block, n, lanes),
        }
    }
}

/// The device side of the engine: everything a step touches but the
/// scheduler.
struct Exec {
    dev: Device,
    kernels: Kernels,
    buffers: Buffers,
    /// Per source of step inputs (see [`Written::source`]).
    bind: Vec<BindGroups>,
    /// The kernels read the upload ring and write into the readback ring
    /// themselves ([`super::AdapterSummary::zero_copy`]).
    zero_copy: bool,
    regions: StepRegions,
    layout: GpuLayout,
    readback: Readback,
    timer: Timer,
    input: StepInput,
    upload: UploadRing,
    wire: Wire,
    /// Layout parts (the first half of the `parts` buffer).
    n_parts: u32,
    /// The epoch plan's parts, kept across epochs (no allocation per epoch).
    plan_table: Vec<Part>,
    row_vec4: u32,
    n_users: u32,
    bias_reg: f32,
    mean: f32,
    range: (f32, f32),
    /// Hogwild: ratings of a part updated at once (`None`: all).
    width: Option<u32>,
    /// Deterministic mode: every part's waves (on the device too).
    waves: Option<(Vec<Part>, Vec<u32>)>,
    /// Run the tail of small waves in one workgroup (`sgd_tail`).
    wave_tail: bool,
    /// The layout is the blocked order: a step's parts share no row, each
    /// walked by a worker of its own.
    blocked: bool,
    /// A blocked part's worker is a workgroup of lanes (`sgd_blocked_lanes`)
    /// rather than one invocation (`sgd_blocked`).
    lanes: bool,
    /// A slab that holds every row in a tiled blocked order: the device
    /// derives the rounds (`sgd_tiles`).
    tiles: Option<Tiles>,
    /// Where the training ratings exceed what the device binds: the host's
    /// copy, streamed a part at a time into the ratings window.
    streamed: Option<Vec<Rating>>,
    /// Bytes of ratings one buffer may hold on this device.
    capacity: u64,
    /// Seconds the host waited for the device, and dispatches, this epoch.
    waited: f64,
    dispatches: u64,
    /// SGD launches this epoch and the workers they ran, summed.
    sgd_launches: u64,
    sgd_workers: f64,
    /// Where the epoch's host time went (logged at debug level).
    times: HostTimes,
}

/// Where a tiled blocked order (a slab that holds every row) lives in the
/// `parts` buffer, read as words: after the layout's parts and room for a
/// plan, the block starts (uploaded once), then the epoch's permutations.
/// Per epoch the host writes only those (O(sweeps × bins) words) and a
/// dispatch per tile shift ([`Exec::train_tiles`]).
#[derive(Debug, Clone, Copy)]
struct Tiles {
    /// Word of the first block start.
    starts_at: u32,
    bins: u32,
    /// A tile's workers are workgroups of lanes (`sgd_tiles_lanes`).
    lanes: bool,
}

impl Tiles {
    /// The tiles of `run` on this device, where its slab holds every row
    /// and the ratings are resident: `None` where the order has no tiles or
    /// the device's limits refuse them (a dispatch per round then).
    fn of(
        run: &RunLayout,
        resident: bool,
        summary: &super::AdapterSummary,
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
    fn words(&self, run: &RunLayout) -> u64 {
        let (n, v) = (self.bins as u64, run.sweeps().unwrap_or(0) as u64);
        n * n + 1 + v * BlockedEpoch::stride_of(self.bins, run.tile().unwrap_or(1)) as u64
    }
}

/// Seconds of an epoch's host work by part: on a fast GPU the host's work
/// per step, not the kernel, bounds the throughput, and
/// `RUST_LOG=rowstage=debug` shows which part.
#[derive(Debug, Default, Clone, Copy)]
struct HostTimes {
    /// Writing steps' inputs (rows copied from the host tables included).
    write: f64,
    /// Encoding and submitting passes.
    encode: f64,
    /// Completing write-backs (waits and copies into the host tables).
    readback: f64,
}

/// The test set on the device.
struct TestSet {
    /// The slice it was made from (pointer and length): a different slice
    /// is uploaded afresh.
    key: (usize, usize),
    buffers: TestBuffers,
    /// Ends of the evaluation steps and their distinct rows (cut so that a
    /// step's rows outside the resident area fit the upload window).
    ends: Vec<u32>,
    rows: PartRows,
    /// First error sum of every step, and the total.
    sums_at: Vec<u32>,
    pairs: u64,
    /// Where the test ratings exceed what the device binds: the host's copy.
    streamed: Option<Vec<Rating>>,
}

/// The GPU training backend over a [`GpuContext`].
pub struct GpuBackend {
    exec: Exec,
    run: Arc<RunLayout>,
    rows: PartRows,
    /// Every part's rows outside the resident set (a policy without a cache).
    outside: Option<PartRows>,
    groups: Option<GroupRows>,
    conflicts: Vec<u32>,
    /// Sums over every part of the layout: what an epoch that trains its
    /// whole plan adds up, counted once per run instead of per part.
    whole: WholeEpoch,
    stager: Stager,
    moves: Moves,
    test: Option<TestSet>,
    copies: u32,
    deterministic: bool,
    resident_loaded: bool,
    /// Data uploaded when the backend was made, counted in the first epoch.
    made_ledger: Ledger,
    /// The epoch whose plan the last epoch passed as its following one.
    following_of: Option<usize>,
    prediction: Option<Prediction>,
}

/// What an epoch adds up over every part it trains, summed once per run:
/// a plan holds every part of the layout once, so a whole epoch's sums are
/// the layout's.
#[derive(Debug, Clone, Copy, Default)]
struct WholeEpoch {
    ratings: usize,
    user_rows: u64,
    item_rows: u64,
    conflicts: u64,
}

impl WholeEpoch {
    fn of(run: &RunLayout, rows: &PartRows, conflicts: &[u32]) -> Self {
        Self::sum(0..run.parts().len() as u32, run, rows, conflicts)
    }

    /// The sums over `parts`, part by part.
    fn sum(parts: impl IntoIterator<Item = u32>, run: &RunLayout, rows: &PartRows, conflicts: &[u32]) -> Self {
        let mut w = WholeEpoch::default();
        for p in parts {
            let (u, i) = rows.counts(p);
            w.ratings += run.parts()[p as usize].len as usize;
            w.user_rows += u as u64;
            w.item_rows += i as u64;
            w.conflicts += conflicts.get(p as usize).map_or(0, |&c| c as u64);
        }
        w
    }

    /// `trained`'s sums: these where it holds every part of the layout (a
    /// plan holds a part at most once), else summed part by part.
    fn of_trained(&self, trained: &[u32], run: &RunLayout, rows: &PartRows, conflicts: &[u32]) -> WholeEpoch {
        if trained.len() == run.parts().len() {
            return *self;
        }
        Self::sum(trained.iter().copied(), run, rows, conflicts)
    }
}

/// Chunks of `len` items in pieces of at most `size` (at least one chunk).
fn chunks(len: usize, size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let size = size.max(1);
    (0..len.div_ceil(size).max(1)).map(move |k| k * size..((k + 1) * size).min(len))
}

impl Exec {
    fn sgd_params(&self, first_part: u32, parts: u32, width: u32, base: u32) -> SgdParams {
        SgdParams {
            first_part,
            parts,
            width,
            n_users: self.n_users,
            bias_reg: self.bias_reg,
            mean: self.mean,
            base,
            ..SgdParams::default()
        }
    }

    fn moves_params(&self, first: u32, count: u32, slots_at: u32) -> MoveParams {
        MoveParams { first, count, row_vec4: self.row_vec4, slots_at, ..MoveParams::default() }
    }

    /// Writes the step input, encodes one pass with `f`'s launches (timed),
    /// then `after` (copies) and submits. Returns the submission.
    fn submit(
        &mut self,
        tables: &HostTables,
        label: &str,
        ledger: &mut Ledger,
        f: impl FnOnce(&mut Launch),
        after: impl FnOnce(&mut wgpu::CommandEncoder, &Buffers),
    ) -> Result<wgpu::SubmissionIndex> {
        let t = Instant::now();
        let (written, waited) =
            self.input.write(&self.dev, &mut self.upload, &self.regions, tables, &mut self.wire, ledger)?;
        self.waited += waited;
        let t1 = Instant::now();
        self.times.write += (t1 - t).as_secs_f64();
        let submission = self.encode(written, label, f, after);
        self.times.encode += t1.elapsed().as_secs_f64();
        Ok(submission)
    }

    fn encode(
        &mut self,
        written: Written,
        label: &str,
        f: impl FnOnce(&mut Launch),
        after: impl FnOnce(&mut wgpu::CommandEncoder, &Buffers),
    ) -> wgpu::SubmissionIndex {
        let mut enc = self.dev.encoder(label);
        written.copy(&self.upload, &mut enc, &self.buffers.step);
        let source = written.source(&self.upload);
        {
            let pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: self.timer.writes(),
            });
            let mut pass = pass.forget_lifetime();
            let mut launch = Launch {
                pass: &mut pass,
                kernels: &self.kernels,
                bind: &self.bind[source],
                offsets: written.offsets,
                max_per_dim: self.dev.ctx.summary.max_compute_workgroups_per_dimension,
                dispatches: 0,
                source,
            };
            f(&mut launch);
            self.dispatches += launch.dispatches;
        }
        self.timer.after_pass(&self.dev, &mut enc);
        after(&mut enc, &self.buffers);
        let (submission, blocked) = self.dev.submit(enc);
        self.waited += blocked;
        written.release(&mut self.upload, submission.clone());
        submission
    }

    /// Stages `moves.load` into their slots and sets `moves.map`, outside a
    /// training step (the resident set, a block's rows, lent rows coming
    /// back), in as many steps as the upload window and the moves need. The
    /// caller counts the rows on the ledger.
    /// Rows still on their way back must have reached `model` (see
    /// [`Readback::complete_holding`]).
    fn load(&mut self, tables: &HostTables, moves: &Moves, ledger: &mut Ledger) -> Result<()> {
        let per_map = ((self.regions.max_words - self.layout.upload_rows as u64) / 2).max(1) as usize;
        let map_chunks: Vec<_> = chunks(moves.map.len(), per_map).collect();
        let load_chunks: Vec<_> = chunks(moves.load.len(), self.layout.upload_rows as usize).collect();
        for k in 0..map_chunks.len().max(load_chunks.len()) {
            let map = map_chunks.get(k).map_or(&[][..], |r| &moves.map[r.clone()]);
            let load = load_chunks.get(k).map_or(&[][..], |r| &moves.load[r.clone()]);
            if map.is_empty() && load.is_empty() {
                continue;
            }
            self.input.clear();
            let map_at = self.input.map(map);
            let slots_at = self.input.slots(load);
            self.input.rows(load.iter().map(|p| p.row));
            let b_map = self.input.block(MapParams { first: map_at, count: map.len() as u32, ..MapParams::default() });
            let b_scatter = self.input.block(self.moves_params(0, load.len() as u32, slots_at));
            let (n_map, n_load, rv) = (map.len() as u32, load.len() as u32, self.row_vec4);
            self.submit(
                tables,
                "stage rows in",
                ledger,
                |l| {
                    l.map_rows(b_map, n_map);
                    l.scatter(b_scatter, n_load, rv);
                },
                |_, _| {},
            )?;
        }
        self.dev.check()
    }

    /// Writes `placed` rows back to the host tables (through the readback
    /// ring, in as many steps as the download window needs); they reach
    /// the tables as the ring completes. The caller counts them.
    fn write_back(&mut self, tables: &mut HostTables, placed: &[Placed], ledger: &mut Ledger) -> Result<()> {
        if placed.is_empty() {
            return Ok(());
        }
        for r in chunks(placed.len(), self.layout.download_rows as usize) {
            let chunk = &placed[r];
            self.input.clear();
            let slots_at = self.input.slots(chunk);
            let b = self.input.block(self.moves_params(0, chunk.len() as u32, slots_at));
            let (n, rv) = (chunk.len() as u32, self.row_vec4);
            let bytes = n as u64 * self.layout.row_bytes;
            let (target, waited) = self.readback.reserve(&self.dev, tables)?;
            self.waited += waited;
            let (gather_to, copy_to) = self.write_back_target(target);
            let submission = self.submit(
                tables,
                "write rows back",
                ledger,
                |l| l.gather(b, n, rv, gather_to),
                |enc, buffers| {
                    if let Some(rb) = &copy_to {
                        enc.copy_buffer_to_buffer(&buffers.download, 0, rb, 0, bytes);
                    }
                },
            )?;
            self.count_d2h(bytes, ledger);
            self.readback.push(bytes, chunk.iter().map(|p| p.row), submission);
        }
        self.dev.check()
    }

    /// Where a write-back into readback buffer `target` is gathered to (a
    /// gather target of the bind groups), and the readback buffer the
    /// download window is then copied to (none in zero-copy mode, where the
    /// gather writes into it).
    fn write_back_target(&self, target: usize) -> (usize, Option<wgpu::Buffer>) {
        if self.zero_copy { (target, None) } else { (0, Some(self.readback.buffers()[target].clone())) }
    }

    fn count_d2h(&mut self, bytes: u64, ledger: &mut Ledger) {
        self.wire.d2h += bytes;
        ledger.row_bytes_d2h += bytes;
    }

    /// Streams `part`'s training ratings into the ratings window (where the
    /// device cannot hold them all); returns the layout index the window
    /// starts at.
    fn stream(&mut self, part: Part, ledger: &mut Ledger) -> u32 {
        let Some(host) = &self.streamed else { return 0 };
        let bytes = bytemuck::cast_slice(&host[part.range()]);
        ledger.data_bytes_h2d += self.dev.put(&mut self.wire, &self.buffers.ratings, 0, bytes);
        part.start
    }

    /// The SGD blocks of the step of plan indices `parts`, in launch order,
    /// as (block, invocations, kernel): in the blocked order one
    /// `sgd_blocked` over the step's parts (a worker each, over the epoch's
    /// part table); otherwise the step's one part, in Hogwild one `sgd` of
    /// the width, in deterministic mode its waves (the tail of small ones in
    /// one `sgd_tail` block).
    fn sgd_blocks(
        &mut self,
        plan: &EpochPlan,
        parts: Range<usize>,
        layout: &RunLayout,
        base: u32,
    ) -> Vec<(u32, u32, Sgd)> {
        let mut out = Vec::new();
        if self.blocked {
            let n = parts.len() as u32;
            let params = self.sgd_params(self.n_parts + parts.start as u32, n, n, base);
            out.push((self.input.block(params), n, Sgd::Blocked));
            self.sgd_launches += 1;
            self.sgd_workers += n as f64;
            return out;
        }
        let part = plan.parts[parts.start];
        let len = layout.parts()[part as usize].len;
        match &self.waves {
            None => {
                let width = self.width.map_or(len, |w| w.min(len)).max(1);
                let params = self.sgd_params(part, 1, width, base);
                out.push((self.input.block(params), width, Sgd::Parts));
                self.sgd_launches += 1;
                self.sgd_workers += width as f64;
            }
            Some((waves, part_waves)) => {
                let (w0, w1) = (part_waves[part as usize], part_waves[part as usize + 1]);
                let lens: Vec<u32> = waves[w0 as usize..w1 as usize].iter().map(|w| w.len).collect();
                // The waves from the first one smaller than `sgd_tail`'s
                // workgroup on run in one `sgd_tail` block.
                let n = lens.len();
                let split = if self.wave_tail { lens.iter().position(|&c| c < TAIL_GROUP).unwrap_or(n) } else { n };
                let split = if n - split < 2 { n } else { split };
                for (k, &width) in lens[..split].iter().enumerate() {
                    let params = self.sgd_params(w0 + k as u32, 1, width, base);
                    out.push((self.input.block(params), width, Sgd::Waves));
                }
                // A wave's ratings train at once, the tail's waves in turn.
                self.sgd_launches += n as u64;
                self.sgd_workers += lens.iter().map(|&w| w as f64).sum::<f64>();
                if split < n {
                    let params = self.sgd_params(w0 + split as u32, (n - split) as u32, TAIL_GROUP, base);
                    out.push((self.input.block(params), TAIL_GROUP, Sgd::Tail));
                }
            }
        }
        out
    }

    /// One staged training step: the plan's parts at `parts` after `moves`.
    #[allow(clippy::too_many_arguments)]
    fn train_step(
        &mut self,
        tables: &mut HostTables,
        plan: &EpochPlan,
        parts: Range<usize>,
        moves: &Moves,
        layout: &RunLayout,
        ledger: &mut Ledger,
    ) -> Result<()> {
        // A row staged in now may still be on its way back from an earlier
        // step: the write-backs up to that step reach the host first.
        let t = Instant::now();
        self.waited += self.readback.complete_holding(&self.dev, tables, moves.load.iter().map(|p| p.row))?;
        self.times.readback += t.elapsed().as_secs_f64();
        // Streamed ratings come a part a step (the walk then makes steps of one).
        let base = self.stream(layout.parts()[plan.parts[parts.start] as usize], ledger);
        self.input.clear();
        let map_at = self.input.map(&moves.map);
        let out_at = self.input.slots(&moves.evict);
        self.input.slots(&moves.release);
        let load_at = self.input.slots(&moves.load);
        self.input.rows(moves.load.iter().map(|p| p.row));
        let (n_map, n_evict, n_load, n_release) =
            (moves.map.len() as u32, moves.evict.len() as u32, moves.load.len() as u32, moves.release.len() as u32);
        let b_map = self.input.block(MapParams { first: map_at, count: n_map, ..MapParams::default() });
        let b_evict = self.input.block(self.moves_params(0, n_evict, out_at));
        let b_load = self.input.block(self.moves_params(0, n_load, load_at));
        let b_release = self.input.block(self.moves_params(n_evict, n_release, out_at + n_evict));
        let sgd = self.sgd_blocks(plan, parts, layout, base);
        let (rv, lanes) = (self.row_vec4, self.lanes);
        let out = n_evict + n_release;
        let bytes = out as u64 * self.layout.row_bytes;
        let (gather_to, copy_to) = if out > 0 {
            let t = Instant::now();
            let (target, waited) = self.readback.reserve(&self.dev, tables)?;
            self.waited += waited;
            self.times.readback += t.elapsed().as_secs_f64();
            self.write_back_target(target)
        } else {
            (0, None)
        };
        let submission = self.submit(
            tables,
            "train step",
            ledger,
            |l| {
                l.map_rows(b_map, n_map);
                l.gather(b_evict, n_evict, rv, gather_to);
                l.scatter(b_load, n_load, rv);
                for &(block, n, kind) in &sgd {
                    kind.launch(l, block, n, lanes);
                }
                l.gather(b_release, n_release, rv, gather_to);
            },
            |enc, buffers| {
                if let Some(rb) = &copy_to {
                    enc.copy_buffer_to_buffer(&buffers.download, 0, rb, 0, bytes);
                }
            },
        )?;
        if out > 0 {
            self.count_d2h(bytes, ledger);
            self.readback.push(bytes, moves.evict.iter().chain(&moves.release).map(|p| p.row), submission);
        }
        self.dev.check()
    }

    /// Writes the epoch's plan as parts after the layout's in the parts
    /// buffer: what a dispatch over several of the plan's parts reads.
    fn put_plan(&mut self, plan: &EpochPlan, layout: &RunLayout, ledger: &mut Ledger) {
        let mut table = std::mem::take(&mut self.plan_table);
        table.clear();
        table.extend(plan.parts.iter().map(|&p| layout.parts()[p as usize]));
        ledger.data_bytes_h2d +=
            self.dev.put(&mut self.wire, &self.buffers.parts, self.n_parts as u64 * 8, bytemuck::cast_slice(&table));
        self.plan_table = table;
    }

    /// Trains the plan from index `first` on, every row resident: in the
    /// blocked order a dispatch per round (up to [`ROUNDS_PER_SUBMIT`] in a
    /// pass: the dispatches of a pass run in order); in Hogwild dispatches
    /// of up to [`DISPATCH_RATINGS`] ratings over the epoch's part table;
    /// deterministic waves and streamed ratings a part at a time. Stops
    /// between submissions when `stop` is raised; returns the parts trained.
    fn train_resident(
        &mut self,
        tables: &HostTables,
        layout: &RunLayout,
        plan: &EpochPlan,
        first: usize,
        stop: &std::sync::atomic::AtomicBool,
        ledger: &mut Ledger,
    ) -> Result<usize> {
        let lanes = self.lanes;
        if self.waves.is_some() || self.streamed.is_some() {
            for k in first..plan.parts.len() {
                if stop.load(Ordering::Relaxed) {
                    return Ok(k - first);
                }
                let base = self.stream(layout.parts()[plan.parts[k] as usize], ledger);
                self.input.clear();
                let sgd = self.sgd_blocks(plan, k..k + 1, layout, base);
                self.submit(
                    tables,
                    "train",
                    ledger,
                    |l| {
                        for &(block, n, kind) in &sgd {
                            kind.launch(l, block, n, lanes);
                        }
                    },
                    |_, _| {},
                )?;
                self.dev.check()?;
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
                self.submit(
                    tables,
                    "train rounds",
                    ledger,
                    |l| {
                        for &(block, n, kind) in &sgd {
                            kind.launch(l, block, n, lanes);
                        }
                    },
                    |_, _| {},
                )?;
                self.dev.check()?;
                done = chunk.last().map_or(done, |r| r.end);
            }
            return Ok(done - first);
        }
        let parts = &plan.parts[first..];
        let len = |k: usize| layout.parts()[parts[k] as usize].len as usize;
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
        }
        Ok(k)
    }

    /// Trains epoch `order` of a tiled blocked order, every row resident:
    /// its permutations written once, then a dispatch per tile shift (up to
    /// [`ROUNDS_PER_SUBMIT`] in a pass), each workgroup running its tile's
    /// rounds. Stops between submissions when `stop` is raised; returns the
    /// tile shifts trained.
    fn train_tiles(
        &mut self,
        tables: &HostTables,
        order: &BlockedEpoch,
        stop: &std::sync::atomic::AtomicBool,
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
            done = end;
        }
        Ok(done)
    }

    /// Reads back the epoch's squared-error accumulators, per model.
    fn read_loss(&mut self, copies: usize, words: u64, ledger: &mut Ledger) -> Result<Vec<f64>> {
        let mut enc = self.dev.encoder("read loss");
        let bytes = words * 4;
        enc.copy_buffer_to_buffer(&self.buffers.loss, 0, &self.buffers.small_readback, 0, bytes);
        self.waited += self.dev.submit(enc).1;
        self.wire.d2h += bytes;
        ledger.data_bytes_d2h += bytes;
        let mut sse = vec![0.0; copies];
        let signal = MapSignal::new();
        self.waited += self.dev.read(&signal, &self.buffers.small_readback, bytes, |b| {
            for (j, &x) in bytemuck::cast_slice::<u8, f32>(b).iter().enumerate() {
                sse[j % copies] += x as f64;
            }
        })?;
        Ok(sse)
    }
}

/// The training ratings' bytes a device can hold at once: what one storage
/// binding takes, or less for a test.
fn ratings_capacity(setup: &GpuSetup, adapter: &super::AdapterSummary) -> u64 {
    let bind = adapter.max_storage_buffer_binding_size.min(adapter.max_buffer_size);
    setup.data_window.map_or(bind, |w| w.min(bind)) / 12 * 12
}

/// [`GpuBackend::plan`]'s layout and the listings it was made from.
struct Planned {
    layout: GpuLayout,
    counts: Vec<u32>,
    rows: PartRows,
    groups: Option<GroupRows>,
}

impl GpuBackend {
    /// Lays the slab and the device's copy of the ratings out for `setup` on
    /// `ctx`, and compiles the kernels.
    /// The slab's plan for `setup` on `adapter`, with the per-run listings
    /// it came from: host work only, what [`GpuBackend::new`] starts with
    /// (and `rowstage plan` prints, so that it shows what a run will do).
    pub fn plan(setup: &GpuSetup, adapter: &super::AdapterSummary) -> Result<GpuLayout> {
        Ok(Self::planned(setup, adapter)?.layout)
    }

    fn planned(setup: &GpuSetup, adapter: &super::AdapterSummary) -> Result<Planned> {
        let run = setup.layout.clone();
        let (n_users, n_items) = (run.n_users(), run.n_items());
        let copies = setup.copies.max(1);
        let row_bytes = (crate::model::row_stride(setup.rank) * 4 * copies) as u64;
        let threads = setup.threads.max(1);
        let co = run.spec().co_partition;
        let mut counts = access_counts(run.ratings(), n_users, n_items);
        if let Some(c) = co {
            counts = c.other_side_counts(&counts, n_users);
        }
        let block_slots = co.map_or(0, |c| c.block_rows);
        let slots = crate::stage::slots_in(setup.slab_bytes, row_bytes);
        let every_row = holds_every_row(setup.policy, slots.saturating_sub(block_slots), &counts, co.is_some());
        let rows = PartRows::new(&run, threads, !every_row);
        let groups = co.map(|c| GroupRows::new(&run, c.side));
        // Streamed ratings come a part a step; otherwise a blocked step may
        // hold several parts of a round.
        let capacity = ratings_capacity(setup, adapter);
        let multi_part_bins = run.bins().filter(|_| run.ratings().len() as u64 * 12 <= capacity);
        let layout = plan_layout(
            &LayoutInput {
                slab_bytes: setup.slab_bytes,
                row_bytes,
                slab: SlabInput {
                    slots,
                    policy: setup.policy,
                    batch: run.spec().batch,
                    ratings: run.ratings().len(),
                    n_users,
                    n_items,
                    co_partition: co,
                    counts: &counts,
                    rows: &rows,
                    layout: &run,
                    groups: groups.as_ref(),
                    threads,
                    multi_part_bins,
                },
                largest_part: run.bins().map(|_| run.max_part_len() as u32),
            },
            adapter,
        )?;
        Ok(Planned { layout, counts, rows, groups })
    }

    /// Lays the slab and the device's copy of the ratings out for `setup` on
    /// `ctx`, and compiles the kernels.
    pub fn new(ctx: GpuContext, setup: &GpuSetup) -> Result<Self> {
        let run = setup.layout.clone();
        let (n_users, n_items) = (run.n_users(), run.n_items());
        let n_rows = n_users + n_items;
        let copies = setup.copies.max(1);
        let row_bytes = (crate::model::row_stride(setup.rank) * 4 * copies) as u64;
        let threads = setup.threads.max(1);
        let Planned { layout, counts, rows, groups } = Self::planned(setup, &ctx.summary)?;
        let capacity = ratings_capacity(setup, &ctx.summary);
        let dev = Device::new(ctx);
        let summary = dev.ctx.summary.clone();
        let width = setup.hogwild_width.resolve(&summary);
        // The device's copy of the ratings: waves in deterministic mode.
        // The blocked order is exact by itself: no waves, no conflicts.
        let blocked = run.bins().is_some();
        let waved = setup.deterministic && !blocked;
        let DeviceRatings { ratings: device_ratings, waves, part_waves } = if waved {
            prepare::waves(&run, threads)
        } else {
            DeviceRatings { ratings: Vec::new(), waves: Vec::new(), part_waves: Vec::new() }
        };
        let conflicts = if setup.deterministic || blocked {
            vec![0; run.parts().len()]
        } else {
            prepare::conflicts(&run, width, threads)
        };
        let source: &[Rating] = if waved { &device_ratings } else { run.ratings() };
        let all_bytes = source.len() as u64 * 12;
        let streamed = all_bytes > capacity;
        if streamed && (run.max_part_len() as u64 * 12) > capacity {
            return Err(dev.err(format!(
                "a part of {} ratings does not fit the {capacity} bytes of ratings the device can bind; use a smaller `batch`",
                run.max_part_len()
            )));
        }
        let max_wave = waves.iter().map(|w| w.len).max().unwrap_or(0);
        let batch = run.max_part_len() as u32;
        let workers = run.bins().unwrap_or(0);
        let invocations = width.map_or(batch, |w| w.min(batch)).max(max_wave).max(TAIL_GROUP).max(workers).max(1);
        let loss_words = invocations as u64 * copies as u64;
        // A block's dynamic offset must be a multiple of the adapter's
        // alignment (a power of two), whatever the block's size.
        let uniform_align = summary.min_uniform_buffer_offset_alignment.max(1) as u64;
        let max_waves = part_waves.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let regions = StepRegions {
            block_stride: kernels::PARAMS_SIZE.next_multiple_of(uniform_align),
            max_blocks: max_waves.max(ROUNDS_PER_SUBMIT as u32) + 8,
            // Slot-map entries (two words each) for the loads, the victims,
            // the lent rows and the rows left by the last step, and one
            // slot per load, victim and staged row.
            max_words: 12 * layout.upload_rows.max(layout.download_rows) as u64 + 64,
            window_bytes: layout.upload_rows as u64 * row_bytes,
            align: (summary.min_storage_buffer_offset_alignment as u64).max(16),
        };
        let spec = kernels::Spec {
            rank: setup.rank as u32,
            models: copies as u32,
            tile: run.tile().unwrap_or(1).clamp(1, kernels::MAX_LANES),
        };
        let lanes = setup.blocked_lanes.unwrap_or(!summary.is_software())
            && kernels::lanes(setup.rank as u32)
                <= kernels::MAX_LANES.min(summary.max_compute_invocations_per_workgroup);
        let tiles = Tiles::of(&run, layout.all_resident && !streamed, &summary, lanes, spec);
        let sizes = Sizes {
            ratings_bytes: all_bytes.min(capacity),
            part_entries: 2 * run.parts().len() as u64 + tiles.map_or(0, |t| t.words(&run).div_ceil(2)),
            wave_entries: waves.len() as u64,
            n_rows: n_rows as u64,
            loss_words,
            copies: copies as u64,
        };
        let buffers = Buffers::new(&dev, &layout, &regions, &sizes);
        let kernels = Kernels::new(dev.device(), spec);
        let zero_copy = summary.zero_copy;
        let upload = UploadRing::new(&dev, regions.buffer_bytes(), zero_copy);
        let readback = Readback::new(&dev, layout.download_rows as u64 * row_bytes, n_rows, zero_copy);
        let bind = {
            let inputs: Vec<&wgpu::Buffer> =
                if zero_copy { upload.buffers().iter().collect() } else { vec![&buffers.step] };
            let targets: Vec<&wgpu::Buffer> =
                if zero_copy { readback.buffers().iter().collect() } else { vec![&buffers.download] };
            buffers.bind_groups(&dev, &kernels, &regions, &inputs, &targets)
        };
        let mut wire = Wire::default();
        let mut made_ledger = Ledger::default();
        // Uploaded once: the ratings (unless streamed), the layout's parts,
        // the waves. The slot map starts cleared: no row on the device.
        if !streamed {
            made_ledger.data_bytes_h2d += dev.put(&mut wire, &buffers.ratings, 0, bytemuck::cast_slice(source));
        }
        made_ledger.data_bytes_h2d += dev.put(&mut wire, &buffers.parts, 0, bytemuck::cast_slice(run.parts()));
        made_ledger.data_bytes_h2d += dev.put(&mut wire, &buffers.waves, 0, bytemuck::cast_slice(&waves));
        if let (Some(t), Some(starts)) = (tiles, run.block_starts()) {
            made_ledger.data_bytes_h2d +=
                dev.put(&mut wire, &buffers.parts, t.starts_at as u64 * 4, bytemuck::cast_slice(&starts));
        }
        let mut enc = dev.encoder("clear slot map");
        enc.clear_buffer(&buffers.slot_map, 0, None);
        dev.submit(enc);
        let horizon = lookahead_accesses(setup.lookahead, run.ratings().len(), &rows);
        let stager = Stager::new(setup.policy, layout.areas, n_users as u32, n_items as u32, &counts, horizon)
            .with_sca_cache(layout.sca_cache)
            .with_block_area(layout.block_slots);
        let timer = Timer::new(&dev, !summary.is_noop());
        let outside = if layout.all_resident { None } else { outside_rows(&stager, &rows, threads) };
        let exec = Exec {
            kernels,
            buffers,
            bind,
            regions,
            readback,
            timer,
            input: StepInput::default(),
            upload,
            zero_copy,
            wire,
            n_parts: run.parts().len() as u32,
            plan_table: Vec::new(),
            row_vec4: (row_bytes / 16) as u32,
            n_users: n_users as u32,
            bias_reg: setup.bias_reg,
            mean: setup.mean,
            range: setup.range,
            width: if setup.deterministic { None } else { width },
            waves: waved.then_some((waves, part_waves)),
            wave_tail: setup.wave_tail.unwrap_or(!summary.is_software()),
            blocked,
            lanes,
            tiles,
            streamed: streamed.then(|| if waved { device_ratings } else { run.ratings().to_vec() }),
            capacity,
            waited: 0.0,
            dispatches: 0,
            sgd_launches: 0,
            sgd_workers: 0.0,
            times: HostTimes::default(),
            layout,
            dev,
        };
        exec.dev.check()?;
        let prediction = exec.layout.prediction;
        let whole = WholeEpoch::of(&run, &rows, &conflicts);
        Ok(GpuBackend {
            exec,
            run,
            rows,
            outside,
            groups,
            conflicts,
            whole,
            stager,
            moves: Moves::default(),
            test: None,
            copies: copies as u32,
            deterministic: setup.deterministic,
            resident_loaded: false,
            made_ledger,
            following_of: None,
            prediction,
        })
    }

    /// Gives the device back, e.g. to build another backend on it.
    pub fn into_context(self) -> GpuContext {
        self.exec.dev.ctx
    }

    pub fn layout(&self) -> &GpuLayout {
        &self.exec.layout
    }

    pub fn context(&self) -> &GpuContext {
        &self.exec.dev.ctx
    }

    /// Bytes handed to wgpu so far.
    pub fn wire(&self) -> Wire {
        self.exec.wire
    }

    /// Hogwild: how many ratings of a part update at once (`None`: every
    /// rating of a part, or deterministic mode's waves).
    pub fn hogwild_width(&self) -> Option<u32> {
        self.exec.width
    }

    /// Reads back the whole slab (tests and diagnostics); not counted.
    pub fn debug_read_slab(&mut self) -> Result<Vec<f32>> {
        let size = self.exec.layout.slab_bytes & !3;
        Ok(bytemuck::cast_slice(&self.debug_read(|b| &b.slab, size)?).to_vec())
    }

    /// Reads back the slot map (tests and diagnostics); not counted.
    pub fn debug_read_slot_map(&mut self) -> Result<Vec<u32>> {
        let size = (self.run.n_users() + self.run.n_items()) as u64 * 4;
        Ok(bytemuck::cast_slice(&self.debug_read(|b| &b.slot_map, size)?).to_vec())
    }

    /// The stager's slot of every global row ([`crate::stage::NONE`] when
    /// not in the slab), to compare with the device's slot map.
    pub fn debug_slots(&self) -> Vec<u32> {
        (0..(self.run.n_users() + self.run.n_items()) as u32).map(|r| self.stager.slot_of(r)).collect()
    }

    fn debug_read(&mut self, which: impl Fn(&Buffers) -> &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        use wgpu::BufferUsages as U;
        let dev = &self.exec.dev;
        let tmp = dev.buffer("debug readback", size, U::MAP_READ | U::COPY_DST);
        let mut enc = dev.encoder("debug copy");
        enc.copy_buffer_to_buffer(which(&self.exec.buffers), 0, &tmp, 0, size);
        dev.queue().submit([enc.finish()]);
        let mut out = Vec::new();
        dev.read(&MapSignal::new(), &tmp, size, |b| out.extend_from_slice(b))?;
        Ok(out)
    }

    /// Stages the resident set in before the first step.
    fn load_resident(&mut self, tables: &HostTables, ledger: &mut Ledger) -> Result<()> {
        let placed = self.stager.resident();
        let mut moves = Moves::default();
        for p in &placed {
            ledger.row_in(self.stager.is_user(p.row), true);
            moves.map.push([p.row, entry::slot(p.slot)]);
        }
        moves.load = placed;
        self.exec.load(tables, &moves, ledger)?;
        self.resident_loaded = true;
        Ok(())
    }

    /// Uploads `test` and cuts it into evaluation steps, unless it is the
    /// test set already on the device.
    fn prepare_test(&mut self, test: &[Rating], ledger: &mut Ledger) -> Result<()> {
        let key = (test.as_ptr() as usize, test.len());
        if self.test.as_ref().is_some_and(|t| t.key == key) {
            return Ok(());
        }
        let n_users = self.run.n_users() as u32;
        let n_rows = self.run.n_users() + self.run.n_items();
        let resident = self.exec.layout.areas.resident;
        let bytes = test.len() as u64 * 12;
        let streamed = bytes > self.exec.capacity;
        // A step's test ratings fit the device's ratings window when streamed.
        let longest = EVAL_RATINGS.min((self.exec.capacity / 12).max(1) as usize);
        let (ends, rows) = if self.exec.layout.all_resident {
            let ends = chunks(test.len(), longest).map(|r| r.end as u32).collect();
            (ends, PartRows::default())
        } else {
            // A step's rows outside the resident area must fit the window.
            let st = &self.stager;
            let outside = |g: u32| st.slot_of(g) == crate::stage::NONE || st.slot_of(g) >= resident;
            let limit = self.exec.layout.upload_rows as usize;
            cut_by_rows(test, n_users, n_rows, limit, longest, outside)
        };
        let mut sums_at = Vec::with_capacity(ends.len());
        let mut pairs = 0u64;
        let mut start = 0u32;
        for &end in &ends {
            sums_at.push(pairs as u32);
            pairs += ((end - start) as u64).div_ceil(WORKGROUP as u64) * self.copies as u64;
            start = end;
        }
        let device_bytes = if streamed {
            let mut widest = 0u32;
            let mut s = 0u32;
            for &e in &ends {
                widest = widest.max(e - s);
                s = e;
            }
            widest as u64 * 12
        } else {
            bytes
        };
        let exec = &self.exec;
        let inputs: Vec<&wgpu::Buffer> =
            if exec.zero_copy { exec.upload.buffers().iter().collect() } else { vec![&exec.buffers.step] };
        let buffers =
            exec.buffers.test_buffers(&exec.dev, &exec.kernels, &exec.regions, &inputs, device_bytes, pairs.max(1));
        if !streamed {
            ledger.data_bytes_h2d +=
                self.exec.dev.put(&mut self.exec.wire, &buffers.test, 0, bytemuck::cast_slice(test));
        }
        self.test =
            Some(TestSet { key, buffers, ends, rows, sums_at, pairs, streamed: streamed.then(|| test.to_vec()) });
        Ok(())
    }
}

/// Steps the scheduler may run ahead of the device work.
const PIPELINE_DEPTH: usize = 4;

/// One of the scheduler's decisions, handed to the device side.
enum Job {
    Begin(Moves),
    Train(Range<usize>, Moves),
    End(Vec<Placed>),
}

/// `m` copied into a buffer given back (or a new one).
fn copy_moves(m: &Moves, into: Option<Moves>) -> Moves {
    let mut out = into.unwrap_or_default();
    out.evict.clone_from(&m.evict);
    out.load.clone_from(&m.load);
    out.window.clone_from(&m.window);
    out.release.clone_from(&m.release);
    out.map.clone_from(&m.map);
    out
}

/// The staged epoch on two threads: the scheduler's walk (decisions, from
/// each part's rows) runs on its own thread up to [`PIPELINE_DEPTH`] steps
/// ahead, and this one carries the decisions out: rows copied between the
/// host tables and the transfer buffers, steps written, encoded and
/// submitted, write-backs landed. The decisions never wait for the device,
/// and only this thread touches the host tables. (The scheduler copying
/// the loads out itself, once their write-backs had landed, measured
/// slower on a 2-core VM: the rows this thread had just landed then crossed
/// between the cores' caches.) Returns the parts trained.
fn pipelined(
    mut walker: Walker,
    exec: &mut Exec,
    tables: &mut HostTables,
    run: &RunLayout,
    input: &EpochInput,
    continues: bool,
    ledger: &mut Ledger,
) -> Result<usize> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(PIPELINE_DEPTH);
    let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Moves>();
    let pass = Pass { plan: input.plan, from: input.from, following: input.following, continues, stop: input.stop };
    std::thread::scope(|scope| {
        let scheduler = scope.spawn(move || {
            let mut staged = Ledger::default();
            let (t0, mut sending) = (Instant::now(), 0.0);
            let done = walker.epoch(pass, &mut staged, |event, _| {
                let spent = spent_rx.try_recv().ok();
                let job = match event {
                    Event::BeginBlock(moves) => Job::Begin(copy_moves(moves, spent)),
                    Event::Train { parts, moves } => Job::Train(parts, copy_moves(moves, spent)),
                    Event::EndBlock(placed) => Job::End(placed.to_vec()),
                };
                let t = Instant::now();
                // The device side stopped (an error it reports itself).
                let sent = tx.send(job).map_err(|_| crate::error::Error::Interrupted);
                sending += t.elapsed().as_secs_f64();
                sent
            });
            let total = t0.elapsed().as_secs_f64();
            log::debug!(
                "scheduler thread: {total:.4} s: deciding {:.4}, waiting for the device side {sending:.4} s",
                total - sending
            );
            (done, staged)
        });
        let mut failed = None;
        for job in rx.iter() {
            let result = match &job {
                Job::Begin(moves) => {
                    let rows = moves.load.iter().map(|p| p.row);
                    exec.readback.complete_holding(&exec.dev, tables, rows).and_then(|w| {
                        exec.waited += w;
                        exec.load(tables, moves, ledger)
                    })
                }
                Job::Train(parts, moves) => exec.train_step(tables, input.plan, parts.clone(), moves, run, ledger),
                Job::End(placed) => exec.write_back(tables, placed, ledger),
            };
            if let Err(e) = result {
                failed = Some(e);
                break;
            }
            if let Job::Begin(m) | Job::Train(_, m) = job {
                let _ = spent_tx.send(m);
            }
        }
        // Dropping the receiver ends the scheduler at its next step.
        drop(rx);
        let (done, staged) = scheduler.join().expect("the scheduler thread panicked");
        ledger.merge(&staged);
        match failed {
            Some(e) => Err(e),
            None => done,
        }
    })
}

impl Backend for GpuBackend {
    fn kind(&self) -> String {
        self.exec.dev.ctx.summary.backend.clone()
    }

    fn adapter(&self) -> String {
        self.exec.dev.ctx.summary.name.clone()
    }

    fn prediction(&self) -> Option<Prediction> {
        self.prediction
    }

    fn needs_plan(&self, _layout: &RunLayout) -> bool {
        self.exec.tiles.is_none()
    }

    fn run_layout(&self) -> Option<Arc<RunLayout>> {
        Some(self.run.clone())
    }

    fn is_ceiling(&self) -> bool {
        self.exec.dev.ctx.summary.is_noop()
    }

    fn train_epoch(&mut self, model: &mut Model, input: &EpochInput) -> Result<EpochTrain> {
        let t0 = Instant::now();
        let copies = self.copies as usize;
        if input.rates.len() != copies || model.copies != copies {
            return Err(self.exec.dev.err(format!(
                "{} rates and a model of {} copies for a slab of {copies} copies",
                input.rates.len(),
                model.copies
            )));
        }
        if !std::ptr::eq(input.layout, &*self.run) {
            return Err(self.exec.dev.err("the epoch's layout is not the one this backend holds"));
        }
        let mut ledger = std::mem::take(&mut self.made_ledger);
        {
            let exec = &mut self.exec;
            exec.waited = 0.0;
            exec.dispatches = 0;
            exec.sgd_launches = 0;
            exec.sgd_workers = 0.0;
            exec.times = HostTimes::default();
            let rates: Vec<[f32; 2]> = input.rates.iter().map(|r: &Rate| [r.lr, r.reg]).collect();
            ledger.data_bytes_h2d += exec.dev.put(&mut exec.wire, &exec.buffers.rates, 0, bytemuck::cast_slice(&rates));
            let mut enc = exec.dev.encoder("clear loss");
            enc.clear_buffer(&exec.buffers.loss, 0, None);
            exec.waited += exec.dev.submit(enc).1;
        }
        let mut tables = HostTables::Mut(model);
        if !self.resident_loaded {
            self.load_resident(&tables, &mut ledger)?;
        }
        let plan = input.plan;
        // The device derives a whole epoch's rounds; a plan that is not the
        // whole epoch (a resumed epoch, a caller's cut) goes round by round.
        let whole_plan = plan.parts.is_empty() || plan.parts.len() == self.run.parts().len();
        let tiled = self.exec.tiles.is_some() && input.from == 0 && whole_plan;
        if !tiled {
            self.exec.put_plan(plan, &self.run, &mut ledger);
        }
        let parts = if tiled {
            let order = self.run.blocked_epoch(input.epoch).expect("tiles are the blocked order's");
            let shifts = self.exec.train_tiles(&tables, &order, input.stop, &mut ledger)?;
            self.run.blocked_parts_before(&order, shifts)
        } else if self.exec.layout.all_resident {
            self.exec.train_resident(&tables, &self.run, plan, input.from, input.stop, &mut ledger)?
        } else {
            let continues = input.from == 0 && self.following_of == Some(input.epoch);
            let walker = Walker {
                stager: &mut self.stager,
                rows: &self.rows,
                outside: self.outside.as_ref(),
                groups: self.groups.as_ref(),
                moves: &mut self.moves,
                step_rows: self.exec.layout.multi_part_rows,
                scratch: Vec::new(),
            };
            pipelined(walker, &mut self.exec, &mut tables, &self.run, input, continues, &mut ledger)?
        };
        let sums = if tiled && parts == self.run.parts().len() {
            self.whole
        } else if tiled {
            // Stopped inside a tiled epoch: the first `parts` parts of its
            // plan (made here if the loop made none) are the ones trained.
            let made;
            let full = if plan.parts.is_empty() {
                made = self.run.epoch(input.epoch);
                &made
            } else {
                plan
            };
            self.whole.of_trained(&full.parts[..parts], &self.run, &self.rows, &self.conflicts)
        } else {
            self.whole.of_trained(&plan.parts[input.from..input.from + parts], &self.run, &self.rows, &self.conflicts)
        };
        if self.exec.layout.all_resident {
            // Every step's rows are hits, and every resident row is trained.
            ledger.user_hits += sums.user_rows;
            ledger.item_hits += sums.item_rows;
            ledger.steps += parts as u64;
            self.stager.mark_resident_dirty();
        }
        self.following_of = input.following.map(|_| input.epoch + 1);
        let exec = &mut self.exec;
        exec.waited += exec.readback.complete_all(&exec.dev, &mut tables)?;
        let loss_words = (exec.buffers.loss.size() / 4).min(exec.buffers.small_readback.size() / 4);
        let sse = exec.read_loss(copies, loss_words, &mut ledger)?;
        let (device_seconds, waited) = exec.timer.take_seconds(&exec.dev, &mut exec.wire, &mut ledger)?;
        exec.waited += waited;
        let done = sums.ratings;
        let conflicts = if self.deterministic { 0 } else { sums.conflicts };
        let total = t0.elapsed().as_secs_f64();
        let t = exec.times;
        log::debug!(
            "{}: epoch of {done} ratings in {} steps and {} dispatches, {total:.4} s: waiting for the device {:.4}, \
             writing steps {:.4}, encoding {:.4}, write-backs {:.4}, scheduling and the rest {:.4} s",
            exec.dev.ctx.summary.name,
            ledger.steps,
            exec.dispatches,
            exec.waited,
            t.write,
            t.encode,
            t.readback,
            total - t.write - t.encode - t.readback,
        );
        Ok(EpochTrain {
            sse,
            count: done as u64,
            done,
            conflicts,
            ledger,
            host_seconds: (total - exec.waited).max(0.0),
            device_seconds,
            dispatches: exec.dispatches,
            workers: exec.sgd_workers / exec.sgd_launches.max(1) as f64,
        })
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)> {
        let mut ledger = Ledger::default();
        // Every epoch completes its write-backs: the host tables are what
        // the device's rows were last staged from.
        if !self.exec.readback.is_idle() {
            return Err(self.exec.dev.err("evaluation with write-backs in flight"));
        }
        let tables = HostTables::Read(model);
        let host = &tables;
        if !self.resident_loaded {
            self.load_resident(host, &mut ledger)?;
        }
        self.prepare_test(test, &mut ledger)?;
        if self.stager.has_lent() {
            let mut moves = Moves::default();
            self.stager.restore_lent(&mut moves, &mut ledger);
            self.exec.load(host, &moves, &mut ledger)?;
        }
        let t = self.test.as_ref().expect("prepared");
        let (n_users, copies) = (self.exec.n_users, self.copies as usize);
        let mut start = 0u32;
        for (k, &end) in t.ends.iter().enumerate() {
            let exec = &mut self.exec;
            exec.input.clear();
            let (mut n_map, mut b_map) = (0, 0);
            if !exec.layout.all_resident {
                self.stager.stage_eval(t.rows.of(k as u32), &mut self.moves, &mut ledger);
                let map_at = exec.input.map(&self.moves.map);
                exec.input.rows(self.moves.window.iter().map(|p| p.row));
                n_map = self.moves.map.len() as u32;
                b_map = exec.input.block(MapParams { first: map_at, count: n_map, ..MapParams::default() });
            }
            let first = match &t.streamed {
                Some(host_test) => {
                    let bytes = bytemuck::cast_slice(&host_test[start as usize..end as usize]);
                    ledger.data_bytes_h2d += exec.dev.put(&mut exec.wire, &t.buffers.test, 0, bytes);
                    0
                }
                None => start,
            };
            let count = end - start;
            let b_predict = exec.input.block(PredictParams {
                first,
                count,
                sums_at: t.sums_at[k],
                n_users,
                mean: exec.mean,
                min_rating: exec.range.0,
                max_rating: exec.range.1,
                pad0: 0,
            });
            let groups = &t.buffers.predict;
            exec.submit(
                host,
                "evaluate",
                &mut ledger,
                |l| {
                    l.map_rows(b_map, n_map);
                    l.predict(&groups[l.source], b_predict, count);
                },
                |_, _| {},
            )?;
            exec.dev.check()?;
            start = end;
        }
        // (squared, absolute) error sums per workgroup and model, read once.
        let exec = &mut self.exec;
        let bytes = t.pairs * 8;
        let mut enc = exec.dev.encoder("read error sums");
        enc.copy_buffer_to_buffer(&t.buffers.sums, 0, &t.buffers.readback, 0, bytes);
        exec.dev.submit(enc);
        exec.wire.d2h += bytes;
        ledger.data_bytes_d2h += bytes;
        let mut acc = vec![MetricsAcc::default(); copies];
        exec.dev.read(&MapSignal::new(), &t.buffers.readback, bytes, |b| {
            for (j, pair) in bytemuck::cast_slice::<u8, [f32; 2]>(b).iter().enumerate() {
                let a = &mut acc[j % copies];
                a.sq += pair[0] as f64;
                a.abs += pair[1] as f64;
            }
        })?;
        for a in acc.iter_mut() {
            a.count += test.len() as u64;
        }
        Ok((acc.iter().map(MetricsAcc::finish).collect(), ledger))
    }

    fn finish(&mut self, model: &mut Model) -> Result<Ledger> {
        let mut ledger = Ledger::default();
        if !self.resident_loaded {
            return Ok(ledger);
        }
        let exec = &mut self.exec;
        let mut tables = HostTables::Mut(model);
        exec.waited += exec.readback.complete_all(&exec.dev, &mut tables)?;
        let dirty = self.stager.take_dirty(&mut ledger);
        exec.write_back(&mut tables, &dirty, &mut ledger)?;
        exec.readback.complete_all(&exec.dev, &mut tables)?;
        Ok(ledger)
    }
}
