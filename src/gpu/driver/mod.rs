//! The step driver: [`GpuBackend`], the engine on a device
//! (docs/ARCHITECTURE.md, "The GPU engine"), in rooms by concern:
//! `resources` (planning the slab and building the backend), `schedule`
//! (epochs whose rows are all resident: dispatches of parts or tile shifts),
//! `staging` (steps that move rows: loads, write-backs, the pipelined walk)
//! and `counters` (what an epoch counts: ratings, hits, conflicts, loss).
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
use web_time::Instant;

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

mod counters;
mod resources;
mod schedule;
mod staging;

use counters::{WholeEpoch, chunks};
use schedule::Tiles;
use staging::pipelined;

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

    fn slab_view(&self) -> Option<crate::stage::SlabView> {
        Some(self.stager.view())
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
        let counted_before = input.progress.load(Ordering::Relaxed);
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
            let shifts = self.exec.train_tiles(
                &tables,
                &order,
                input.stop,
                (input.progress, self.whole.ratings),
                &mut ledger,
            )?;
            self.run.blocked_parts_before(&order, shifts)
        } else if self.exec.layout.all_resident {
            self.exec.train_resident(&tables, &self.run, plan, input.from, (input.stop, input.progress), &mut ledger)?
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
        // The passes counted as they were submitted; the count now ends at
        // the ratings trained exactly (a tiled pass counts in proportion).
        let counted = input.progress.load(Ordering::Relaxed).wrapping_sub(counted_before);
        if counted <= done {
            input.progress.fetch_add(done - counted, Ordering::Relaxed);
        } else {
            input.progress.fetch_sub(counted - done, Ordering::Relaxed);
        }
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
            wire: None,
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
        if test.is_empty() {
            // Nothing to score (NaN figures, shown as "no test ratings"); the
            // lent rows still go back, as after every epoch (what `simulate`
            // replays).
            if self.stager.has_lent() {
                let mut moves = Moves::default();
                self.stager.restore_lent(&mut moves, &mut ledger);
                self.exec.load(host, &moves, &mut ledger)?;
            }
            return Ok((vec![crate::model::MetricsAcc::default().finish(); self.copies as usize], ledger));
        }
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

    fn sync_out(&mut self, model: &mut Model, rows: &[u32]) -> Result<Ledger> {
        self.write_back_taken(model, |stager, ledger| stager.take_dirty_of(rows, ledger))
    }

    fn sync_in(&mut self, model: &Model, rows: &[u32]) -> Result<Ledger> {
        let mut ledger = Ledger::default();
        // Before the first epoch the resident rows are loaded from the host
        // tables as they are then; other rows are staged when used.
        if !self.resident_loaded {
            return Ok(ledger);
        }
        let moves = Moves { load: self.stager.restage(rows, &mut ledger), ..Moves::default() };
        self.exec.load(&HostTables::Read(model), &moves, &mut ledger)?;
        Ok(ledger)
    }

    fn finish(&mut self, model: &mut Model) -> Result<Ledger> {
        self.write_back_taken(model, Stager::take_dirty)
    }
}

impl GpuBackend {
    /// Writes back the trained rows `take` takes from the stager (marking
    /// them clean), after any write-back in flight: the host tables' copies
    /// of them made current. Nothing before the first epoch's loads.
    fn write_back_taken(
        &mut self,
        model: &mut Model,
        take: impl FnOnce(&mut Stager, &mut Ledger) -> Vec<Placed>,
    ) -> Result<Ledger> {
        let mut ledger = Ledger::default();
        if !self.resident_loaded {
            return Ok(ledger);
        }
        let exec = &mut self.exec;
        let mut tables = HostTables::Mut(model);
        exec.waited += exec.readback.complete_all(&exec.dev, &mut tables)?;
        let dirty = take(&mut self.stager, &mut ledger);
        exec.write_back(&mut tables, &dirty, &mut ledger)?;
        exec.readback.complete_all(&exec.dev, &mut tables)?;
        Ok(ledger)
    }
}
