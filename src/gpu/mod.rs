//! The GPU backend: one slab of exactly `--device-memory` bytes holding row
//! slots, the four kernels, and the per-step staging of DESIGN.md §2.
//!
//! Device buffers, all created once:
//!
//! * `slab`: the only device buffer that keeps embedding rows. Kernels reach
//!   rows only through slot indices.
//! * `upload` / `download`: transfer windows, one batch's staged rows in transit
//!   (the "upload region" and "download region" of DESIGN.md §2). Rows pass
//!   through them on the way to or from their slots; `sgd` never reads them.
//!   `predict` reads evaluation rows the slab lacks straight from `upload`
//!   (read-only, so evaluation never changes what the slab holds). They are
//!   sized to one batch's misses, not to the tables, and reported beside the
//!   slab.
//! * `slots`, `samples`, `params`: batch input, counted as data traffic.
//! * `loss`: one squared-error accumulator per sample slot of a step and per
//!   model, read back once per epoch; `sums`: evaluation's error sums per
//!   workgroup and model. Both count as data traffic.
//! * `rates`: each model's learning rate and regularisation for the epoch.
//!
//! A grid search of G settings makes every slot G times as wide: the slot
//! holds the G models' copies of a row side by side, so one staged row, one
//! sample read and one dispatch drive G updates (DESIGN.md §4).
//!
//! Per step: write the missed rows into `upload` in one write, `scatter_rows`
//! puts them in their slots, `sgd` runs (one dispatch, or in deterministic
//! mode one per conflict-free wave, the tail of small waves in one `sgd_tail`
//! workgroup on hardware GPUs), `gather_rows` packs the rows that leave into
//! `download` (only rows trained since they were staged in or last written
//! back: the `Stager` keeps a dirty bit per row), which is copied to one of
//! three mapped readback buffers. The host reads those rows into its tables
//! while later steps run: when the buffer is needed again, when a step stages
//! one of those rows, or at the end of the epoch.

pub mod calibrate;
pub mod context;
pub mod kernels;

pub use context::{AdapterSummary, BackendChoice, GpuContext, list_adapters};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kernels::{
    Kernels, MoveParams, PARAMS_SIZE, PARAMS_STRIDE, PredictParams, SgdParams, TAIL_GROUP, WORKGROUP, dispatch_size,
};

use crate::data::Rating;
use crate::error::{Error, Result};
use crate::model::{Metrics, MetricsAcc, Model, Rate};
use crate::stage::copartition::{CoPartition, distinct_side_rows};
use crate::stage::{Areas, Ledger, Moves, Placed, PolicyKind, Stager, human_bytes};
use crate::train::{Backend, EpochTrain, Prediction};

/// Write-backs that may be in flight at once (readback buffers).
const READBACK_RING: usize = 3;

/// How long one wait on the device may take before it is an error.
const POLL_TIMEOUT: Duration = Duration::from_secs(300);

/// Parameter blocks of one step, by index into the params buffer.
const BLOCK_GATHER_EVICT: usize = 0;
const BLOCK_SCATTER: usize = 1;
const BLOCK_GATHER_RELEASE: usize = 2;
const BLOCK_KERNEL: usize = 3;

/// Bytes actually handed to wgpu, counted at the call sites: what the
/// ledger must add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    pub h2d: u64,
    pub d2h: u64,
}

/// Sizes of the GPU backend, fixed at creation.
#[derive(Debug, Clone)]
pub struct GpuLayout {
    pub slab_bytes: u64,
    pub row_bytes: u64,
    pub slots: u32,
    pub areas: Areas,
    /// Rows one step may stage in (the transfer windows' size in rows).
    pub window: u32,
    /// Samples one step may hold.
    pub max_samples: u32,
    /// The cost model's traffic (`sca` only).
    pub prediction: Option<Prediction>,
    /// Slots of the co-partitioning block area (0 without), after the
    /// policy's areas.
    pub block_slots: u32,
}

impl GpuLayout {
    /// Bytes of the transfer windows (upload + download).
    pub fn window_bytes(&self) -> u64 {
        self.window as u64 * self.row_bytes * 3
    }
}

/// Seconds of one training epoch's host time, by what it did: on a fast GPU
/// the host's work per rating and per step, not the kernel, bounds the
/// throughput, and `RUST_LOG=rowstage=debug` shows which part.
#[derive(Debug, Default, Clone, Copy)]
struct HostTimes {
    /// `Stager::begin_epoch` (the policy's plan for the epoch).
    plan: f64,
    /// Gathering each batch's ratings from the epoch order.
    gather: f64,
    /// `Stager::stage`: choosing slots, loads and evictions.
    stage: f64,
    /// Samples, uploads, parameters and command encoding.
    prepare: f64,
    /// `Queue::submit`.
    submit: f64,
    /// Waiting for the device (write-backs, the loss read).
    wait: f64,
}

/// The GPU training backend over a [`GpuContext`].
pub struct GpuBackend {
    ctx: GpuContext,
    kernels: Kernels,
    layout: GpuLayout,
    /// Vec4s of a slot (every model's copy of a row).
    row_vec4: u32,
    /// Models side by side in a slot (a grid search; 1 otherwise).
    copies: u32,
    deterministic: bool,
    /// See [`GpuSetup::wave_tail`].
    wave_tail: bool,
    /// Hogwild's width (see [`HogwildWidth`]); `None`: the whole step.
    hogwild_width: Option<u32>,
    bias_reg: f32,
    mean: f32,
    range: (f32, f32),
    n_users: u32,
    n_rows: usize,
    stager: Stager,
    moves: Moves,
    buffers: Buffers,
    bind: BindGroups,
    // Host scratch, reused every step.
    upload_host: Vec<f32>,
    sample_host: Vec<u32>,
    params_host: Vec<u8>,
    slots_host: Vec<u32>,
    waves: Waves,
    ledger: Ledger,
    /// Hogwild conflicts of the epoch so far (see [`Waves::single`]).
    conflicts: u64,
    co_partition: Option<CoPartition>,
    // Scratch for a block's distinct rows.
    block_seen: Vec<u32>,
    block_stamp: u32,
    block_list: Vec<u32>,
    wire: Wire,
    /// Where an epoch's host time went (logged at debug level).
    times: HostTimes,
    error: Arc<Mutex<Option<String>>>,
    resident_loaded: bool,
    /// Write-backs still being read from the device, oldest first.
    pending: std::collections::VecDeque<PendingRows>,
    /// Which readback buffer the next write-back uses.
    next_readback: usize,
    /// Per global row: the serial of the pending write-back holding it.
    pending_mark: Vec<u32>,
    serial: u32,
    /// Row lists of completed write-backs, reused by later ones.
    free_rows: Vec<Vec<u32>>,
    /// One per readback buffer, and one for [`GpuBackend::map_read`].
    ring_signals: Vec<MapSignal>,
    read_signal: MapSignal,
}

/// A step's write-back in flight: its rows are copied to a mapped buffer and
/// reach the host tables when [`GpuBackend::complete_oldest`] takes it.
struct PendingRows {
    buffer: usize,
    bytes: u64,
    rows: Vec<u32>,
    serial: u32,
    submission: wgpu::SubmissionIndex,
}

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// Where a mapped buffer's `map_async` callback reports: one channel per
/// buffer, made once, so that a step allocates no channel of its own.
struct MapSignal {
    tx: std::sync::mpsc::Sender<MapResult>,
    rx: std::sync::mpsc::Receiver<MapResult>,
}

impl MapSignal {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        MapSignal { tx, rx }
    }

    /// Asks for `slice` to be mapped for reading; [`MapSignal::take`] tells
    /// how it went once the device has been polled past it.
    fn request(&self, slice: wgpu::BufferSlice) {
        let tx = self.tx.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
    }

    fn take(&self) -> std::result::Result<(), String> {
        match self.rx.try_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("mapping a readback buffer: {e}")),
            Err(_) => Err("a readback did not complete".into()),
        }
    }
}

struct Buffers {
    slab: wgpu::Buffer,
    upload: wgpu::Buffer,
    download: wgpu::Buffer,
    /// [`READBACK_RING`] mapped buffers for rows leaving the slab, used in
    /// turn, so that later steps run while the host reads a step's rows back.
    readback: Vec<wgpu::Buffer>,
    load_slots: wgpu::Buffer,
    out_slots: wgpu::Buffer,
    samples: wgpu::Buffer,
    params: wgpu::Buffer,
    loss: wgpu::Buffer,
    sums: wgpu::Buffer,
    /// (η_t, λ) per model, written at the start of every epoch.
    rates: wgpu::Buffer,
    small_readback: wgpu::Buffer,
}

struct BindGroups {
    scatter: wgpu::BindGroup,
    gather: wgpu::BindGroup,
    sgd: wgpu::BindGroup,
    predict: wgpu::BindGroup,
}

/// Conflict-free waves of one step: `ranges[w]` is the span of samples (in
/// the reordered sample buffer) of wave `w`.
#[derive(Default)]
struct Waves {
    last: Vec<u32>,
    stamp_of: Vec<u32>,
    stamp: u32,
    wave_of: Vec<u32>,
    counts: Vec<u32>,
    ranges: Vec<(u32, u32)>,
    perm: Vec<u32>,
}

impl Waves {
    /// Starts a new stamp over `n_rows` rows: no row carries it yet (the
    /// marks are sized on first use and cleared when the stamp wraps).
    fn fresh_stamp(&mut self, n_rows: usize) {
        if self.stamp_of.len() != n_rows {
            self.last = vec![0; n_rows];
            self.stamp_of = vec![0; n_rows];
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.stamp_of.fill(0);
            self.stamp = 1;
        }
    }

    /// Assigns each rating the wave after the last wave that used its user or
    /// item: any two ratings sharing a row keep their order, and no wave holds
    /// a row twice, so running waves in order equals the sequential order.
    fn build(&mut self, ratings: &[Rating], n_users: u32, n_rows: usize) {
        self.fresh_stamp(n_rows);
        self.wave_of.clear();
        self.counts.clear();
        for r in ratings {
            let rows = [r.user as usize, (n_users + r.item) as usize];
            let mut w = 0;
            for &row in &rows {
                if self.stamp_of[row] == self.stamp {
                    w = w.max(self.last[row] + 1);
                }
            }
            for &row in &rows {
                self.stamp_of[row] = self.stamp;
                self.last[row] = w;
            }
            if w as usize >= self.counts.len() {
                self.counts.resize(w as usize + 1, 0);
            }
            self.counts[w as usize] += 1;
            self.wave_of.push(w);
        }
        self.ranges.clear();
        let mut start = 0;
        for &c in &self.counts {
            self.ranges.push((start, c));
            start += c;
        }
        // Stable counting sort of the ratings by wave.
        // `counts` becomes each wave's next free position.
        for (c, r) in self.counts.iter_mut().zip(&self.ranges) {
            *c = r.0;
        }
        self.perm.clear();
        self.perm.resize(ratings.len(), 0);
        for (j, &w) in self.wave_of.iter().enumerate() {
            self.perm[self.counts[w as usize] as usize] = j as u32;
            self.counts[w as usize] += 1;
        }
    }

    /// One wave holding every rating in order (Hogwild), run `width` at a
    /// time. Returns the conflicts: ratings whose user or item an earlier
    /// rating of the same `width` in flight also updates (the updates that
    /// may race).
    fn single(&mut self, ratings: &[Rating], n_users: u32, n_rows: usize, width: usize) -> u64 {
        let n = ratings.len();
        self.ranges.clear();
        self.ranges.push((0, n as u32));
        self.perm.clear();
        self.perm.extend(0..n as u32);
        let mut conflicts = 0;
        for round in ratings.chunks(width.max(1)) {
            self.fresh_stamp(n_rows);
            for r in round {
                let (u, i) = (r.user as usize, (n_users + r.item) as usize);
                conflicts += (self.stamp_of[u] == self.stamp || self.stamp_of[i] == self.stamp) as u64;
                self.stamp_of[u] = self.stamp;
                self.stamp_of[i] = self.stamp;
            }
        }
        conflicts
    }
}

/// What the GPU backend needs to know at creation.
pub struct GpuSetup<'a> {
    pub rank: usize,
    /// Models side by side in every slot (a grid search; 1 otherwise): the
    /// slab's rows are `copies` times as wide.
    pub copies: usize,
    pub bias_reg: f32,
    pub batch: usize,
    pub deterministic: bool,
    pub slab_bytes: u64,
    pub policy: PolicyKind,
    /// `lookahead`'s horizon in batches.
    pub lookahead: usize,
    pub mean: f32,
    pub range: (f32, f32),
    pub n_users: usize,
    pub n_items: usize,
    pub train: &'a [Rating],
    /// The first epoch's order: sizes the staging area exactly.
    pub first_order: &'a [u32],
    /// Co-partitioning: a block area of `block_rows` slots for the chosen
    /// side; the policy plans the rest of the slab for the other side.
    pub co_partition: Option<CoPartition>,
    /// Deterministic mode: run the tail of small waves in one workgroup
    /// (`sgd_tail`) rather than one dispatch per wave. `None`: on for
    /// hardware GPUs, where it made deterministic epochs 1.6× faster on an
    /// H100, and off for software adapters
    /// ([`AdapterSummary::is_software`]), which run a workgroup on one
    /// thread: there it was 2.5× slower.
    pub wave_tail: Option<bool>,
    /// Hogwild: how many ratings of a step update at once.
    pub hogwild_width: HogwildWidth,
}

/// How many ratings of a Hogwild step update at once, and so may race: `W`
/// invocations each run every `W`-th rating of the step in order, as
/// cuMF_SGD's batch-Hogwild! does (DESIGN.md §4).
///
/// A GPU that runs a whole batch at once loses nearly every update of a row
/// that many of the batch's ratings share: on an H100, skewed synthetic data
/// (the hottest user and item in 11–14% of the ratings) trained to test RMSE
/// 0.8355 against deterministic training's 0.7640. Replaying the races on
/// the CPU (every read of a round before its writes, the last write of a row
/// kept) put W = 64 within 0.002 of sequential SGD on that data and on 1M
/// ratings at batch 8192, and the whole batch 0.06–0.08 behind. On the H100,
/// 64 at once then ended within 0.004 of deterministic training, as fast as
/// the whole batch at batch 2048 and at 0.63× of it at batch 8192
/// (BENCHMARKS.md, "Hogwild at a bounded width").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HogwildWidth {
    /// [`HARDWARE_HOGWILD_WIDTH`] on a hardware GPU; the whole step on a
    /// software adapter, which runs a few invocations at a time anyway (and
    /// one workgroup on one thread, so a narrow step would idle its cores).
    #[default]
    Auto,
    /// Every rating of a step at once.
    Step,
    /// At most this many (at least 1; 1 runs a step in order).
    Ratings(u32),
}

/// [`HogwildWidth::Auto`]'s width on a hardware GPU.
pub const HARDWARE_HOGWILD_WIDTH: u32 = 64;

impl HogwildWidth {
    /// `auto`, `step` or a whole number of ratings (at least 1).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(HogwildWidth::Auto),
            "step" | "batch" => Ok(HogwildWidth::Step),
            t => match t.parse::<u32>() {
                Ok(0) => Err("the width must be at least 1".into()),
                Ok(n) => Ok(HogwildWidth::Ratings(n)),
                Err(_) => Err("expected auto, step or a whole number of ratings, e.g. 64".into()),
            },
        }
    }

    /// The width on `adapter`: `None` runs every rating of a step at once.
    pub fn resolve(self, adapter: &AdapterSummary) -> Option<u32> {
        match self {
            HogwildWidth::Auto => (!adapter.is_software()).then_some(HARDWARE_HOGWILD_WIDTH),
            HogwildWidth::Step => None,
            HogwildWidth::Ratings(n) => Some(n.max(1)),
        }
    }
}

/// Writes `bytes` at the start of `buf` and counts them on `wire`; returns the
/// count for the caller's ledger.
fn put(queue: &wgpu::Queue, wire: &mut Wire, buf: &wgpu::Buffer, bytes: &[u8]) -> u64 {
    if !bytes.is_empty() {
        queue.write_buffer(buf, 0, bytes);
        wire.h2d += bytes.len() as u64;
    }
    bytes.len() as u64
}

fn buffer(device: &wgpu::Device, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(16).next_multiple_of(4),
        usage,
        mapped_at_creation: false,
    })
}

fn entry(binding: u32, buf: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource: buf.as_entire_binding() }
}

fn params_entry(buf: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding: 3,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: buf,
            offset: 0,
            size: wgpu::BufferSize::new(PARAMS_SIZE),
        }),
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

/// Checks the budget against the adapter and the batch, and splits it into
/// resident and staging slots.
pub fn plan_layout(setup: &GpuSetup, adapter: &AdapterSummary) -> Result<GpuLayout> {
    use crate::stage::{max_distinct_rows, plan_areas};
    let row_bytes = (crate::model::row_stride(setup.rank) * 4 * setup.copies.max(1)) as u64;
    check_budget(setup.slab_bytes, adapter)?;
    let slots = (setup.slab_bytes / row_bytes).min(u32::MAX as u64 - 1) as u32;
    let block_slots = setup.co_partition.map_or(0, |c| c.block_rows);
    let needed = match setup.co_partition {
        // The block area, and a batch's rows of the other side at worst.
        Some(c) => {
            let other = match c.side {
                crate::stage::copartition::Side::Users => setup.n_items,
                crate::stage::copartition::Side::Items => setup.n_users,
            };
            c.block_rows + (setup.batch.min(other) as u32).max(1)
        }
        None => max_distinct_rows(setup.train, setup.first_order, setup.batch, setup.n_users).max(2),
    };
    if slots < needed {
        let min_bytes = needed as u64 * row_bytes;
        return Err(Error::BudgetTooSmall {
            budget: setup.slab_bytes,
            slots: slots as u64,
            row_bytes,
            batch: setup.batch,
            needed: needed as u64,
            min_bytes,
            min_human: human_bytes(min_bytes),
        });
    }
    let counts = policy_counts(setup);
    let policy_slots = slots - block_slots;
    let areas =
        plan_areas(setup.policy, policy_slots, setup.train, setup.first_order, setup.batch, &counts, setup.n_users);
    let window = crate::stage::window_rows(setup.batch, areas);
    Ok(GpuLayout {
        slab_bytes: setup.slab_bytes,
        row_bytes,
        slots,
        areas,
        window,
        max_samples: setup.batch.max(1) as u32,
        prediction: (setup.policy == PolicyKind::Sca).then(|| {
            let model = crate::stage::sca::CostModel::new(&counts, setup.train.len(), setup.batch);
            // Each block's rows of the co-partitioned side move once per epoch.
            let block_rows = setup.co_partition.map_or(0.0, |c| {
                let n = c.blocks(setup.train, setup.n_users, setup.n_items);
                n.expected_rows_per_epoch()
            });
            Prediction {
                rows_per_epoch: model.rows_in_per_epoch(areas.resident as usize, setup.train.len()) + block_rows,
                resident: areas.resident as u64,
                row_bytes,
            }
        }),
        block_slots,
    })
}

/// Training counts per row as the policy sees them: without the
/// co-partitioned side, which the block area holds.
fn policy_counts(setup: &GpuSetup) -> Vec<u32> {
    let counts = crate::stage::access_counts(setup.train, setup.n_users, setup.n_items);
    match setup.co_partition {
        Some(c) => c.other_side_counts(&counts, setup.n_users),
        None => counts,
    }
}

impl GpuBackend {
    /// Builds the slab, the windows and the kernels for `setup` on `ctx`.
    pub fn new(ctx: GpuContext, setup: &GpuSetup) -> Result<Self> {
        let layout = plan_layout(setup, &ctx.summary)?;
        let error = Arc::new(Mutex::new(None));
        {
            let error = error.clone();
            ctx.device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = error.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(e.to_string());
                }
            }));
        }
        let device = &ctx.device;
        let row_vec4 = (layout.row_bytes / 16) as u32;
        let copies = setup.copies.max(1) as u64;
        let max_wg = (layout.max_samples as u64).div_ceil(WORKGROUP as u64) * copies;
        // One squared-error accumulator per sample of a step and model.
        let loss_words = layout.max_samples as u64 * copies;
        let max_blocks = BLOCK_KERNEL as u64 + layout.max_samples as u64;
        use wgpu::BufferUsages as U;
        let window_bytes = layout.window as u64 * layout.row_bytes;
        let buffers = Buffers {
            slab: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("slab"),
                size: layout.slab_bytes,
                usage: U::STORAGE | U::COPY_DST | U::COPY_SRC,
                mapped_at_creation: false,
            }),
            upload: buffer(device, "upload window", window_bytes, U::STORAGE | U::COPY_DST),
            download: buffer(device, "download window", window_bytes * 2, U::STORAGE | U::COPY_SRC),
            readback: (0..READBACK_RING)
                .map(|k| buffer(device, &format!("row readback {k}"), window_bytes * 2, U::MAP_READ | U::COPY_DST))
                .collect(),
            load_slots: buffer(device, "load slots", layout.window as u64 * 4, U::STORAGE | U::COPY_DST),
            out_slots: buffer(device, "write-back slots", layout.window as u64 * 8, U::STORAGE | U::COPY_DST),
            // 3 words per sample, then up to one wave end per sample.
            samples: buffer(device, "samples", layout.max_samples as u64 * 16 + 4, U::STORAGE | U::COPY_DST),
            params: buffer(device, "params", max_blocks * PARAMS_STRIDE, U::UNIFORM | U::COPY_DST),
            loss: buffer(device, "loss sums", loss_words * 4, U::STORAGE | U::COPY_SRC | U::COPY_DST),
            sums: buffer(device, "error sums", max_wg * 8, U::STORAGE | U::COPY_SRC),
            small_readback: buffer(
                device,
                "sums readback",
                (max_wg * 8).max(loss_words * 4),
                U::MAP_READ | U::COPY_DST,
            ),
            rates: buffer(device, "rates", copies * 8, U::STORAGE | U::COPY_DST),
        };
        let kernels = Kernels::new(device, kernels::Spec { rank: setup.rank as u32, models: copies as u32 });
        let b = &buffers;
        // Bindings 0-2, the parameter block, and binding 4 where the kernel has one.
        let group = |label: &str, k: &kernels::Kernel, e: [&wgpu::Buffer; 3], extra: Option<&wgpu::Buffer>| {
            let entries = [entry(0, e[0]), entry(1, e[1]), entry(2, e[2]), params_entry(&b.params)];
            let entries: Vec<_> = entries.into_iter().chain(extra.map(|x| entry(4, x))).collect();
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &k.layout,
                entries: &entries,
            })
        };
        let bind = BindGroups {
            scatter: group("scatter_rows bind group", &kernels.scatter, [&b.slab, &b.upload, &b.load_slots], None),
            gather: group("gather_rows bind group", &kernels.gather, [&b.slab, &b.download, &b.out_slots], None),
            sgd: group("sgd bind group", &kernels.sgd, [&b.slab, &b.samples, &b.loss], Some(&b.rates)),
            predict: group("predict bind group", &kernels.predict, [&b.slab, &b.samples, &b.sums], Some(&b.upload)),
        };
        let counts = policy_counts(setup);
        let horizon = (setup.lookahead * setup.batch * 2).min(u32::MAX as usize) as u32;
        let stager = Stager::new(
            setup.policy,
            layout.areas,
            setup.n_users as u32,
            setup.n_items as u32,
            layout.window,
            &counts,
            horizon,
        )
        .with_block_area(layout.block_slots);
        let mut me = GpuBackend {
            kernels,
            row_vec4,
            copies: copies as u32,
            deterministic: setup.deterministic,
            wave_tail: setup.wave_tail.unwrap_or(!ctx.summary.is_software()),
            hogwild_width: setup.hogwild_width.resolve(&ctx.summary),
            bias_reg: setup.bias_reg,
            mean: setup.mean,
            range: setup.range,
            n_users: setup.n_users as u32,
            n_rows: setup.n_users + setup.n_items,
            stager,
            moves: Moves::default(),
            buffers,
            bind,
            upload_host: Vec::new(),
            sample_host: Vec::new(),
            params_host: Vec::new(),
            slots_host: Vec::new(),
            waves: Waves::default(),
            ledger: Ledger::default(),
            conflicts: 0,
            co_partition: setup.co_partition,
            block_seen: Vec::new(),
            block_stamp: 0,
            block_list: Vec::new(),
            wire: Wire::default(),
            times: HostTimes::default(),
            error,
            resident_loaded: false,
            pending: std::collections::VecDeque::with_capacity(READBACK_RING),
            next_readback: 0,
            pending_mark: vec![0; setup.n_users + setup.n_items],
            serial: 0,
            free_rows: Vec::new(),
            ring_signals: (0..READBACK_RING).map(|_| MapSignal::new()).collect(),
            read_signal: MapSignal::new(),
            layout,
            ctx,
        };
        me.moves.load = me.stager.resident();
        me.check()?;
        Ok(me)
    }

    /// Gives the device back, e.g. to build another backend on it.
    pub fn into_context(self) -> GpuContext {
        self.ctx
    }

    pub fn layout(&self) -> &GpuLayout {
        &self.layout
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Bytes handed to wgpu so far.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// Reads back the whole slab (tests and diagnostics); not counted.
    pub fn debug_read_slab(&mut self) -> Result<Vec<f32>> {
        let size = self.layout.slab_bytes & !3;
        let tmp = buffer(
            &self.ctx.device,
            "slab debug readback",
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut enc = self.encoder("slab debug copy");
        enc.copy_buffer_to_buffer(&self.buffers.slab, 0, &tmp, 0, size);
        self.ctx.queue.submit([enc.finish()]);
        let mut out = vec![0.0f32; size as usize / 4];
        self.map_read(&tmp, size, |b| out.copy_from_slice(bytemuck::cast_slice(b)))?;
        Ok(out)
    }

    fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    fn gpu_err(&self, reason: String) -> Error {
        Error::Gpu { adapter: self.ctx.summary.name.clone(), reason }
    }

    /// Turns an error wgpu reported asynchronously into a returned error.
    fn check(&self) -> Result<()> {
        let msg = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        match msg {
            Some(m) => Err(self.gpu_err(m)),
            None => Ok(()),
        }
    }

    /// Writes `self.slots_host` to `out_slots`, counted as batch data.
    fn write_out_slots(&mut self) {
        let bytes = bytemuck::cast_slice(&self.slots_host);
        self.ledger.data_bytes_h2d += put(&self.ctx.queue, &mut self.wire, &self.buffers.out_slots, bytes);
    }

    /// Writes `self.sample_host` to `samples`, counted as batch data.
    fn write_samples(&mut self) {
        let bytes = bytemuck::cast_slice(&self.sample_host);
        self.ledger.data_bytes_h2d += put(&self.ctx.queue, &mut self.wire, &self.buffers.samples, bytes);
    }

    /// Waits for the queue, maps `size` bytes of `buf` and hands them to `f`.
    fn map_read(&mut self, buf: &wgpu::Buffer, size: u64, f: impl FnOnce(&[u8])) -> Result<()> {
        let slice = buf.slice(..size);
        self.read_signal.request(slice);
        let t = Instant::now();
        self.ctx
            .device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(POLL_TIMEOUT) })
            .map_err(|e| self.gpu_err(format!("waiting for the device: {e}")))?;
        self.times.wait += t.elapsed().as_secs_f64();
        self.check()?;
        self.read_signal.take().map_err(|e| self.gpu_err(e))?;
        {
            let view = slice.get_mapped_range().map_err(|e| self.gpu_err(format!("reading a mapped buffer: {e}")))?;
            f(&view);
        }
        buf.unmap();
        Ok(())
    }

    /// Writes the rows of `moves.load` into the upload window and their slots
    /// into `load_slots` (two writes), counting them.
    fn write_loads(&mut self, model: &Model) {
        self.upload_host.clear();
        self.slots_host.clear();
        for p in &self.moves.load {
            let row = if p.row < self.n_users { model.user_row(p.row) } else { model.item_row(p.row - self.n_users) };
            self.upload_host.extend_from_slice(row);
            self.slots_host.push(p.slot);
        }
        let (queue, wire) = (&self.ctx.queue, &mut self.wire);
        self.ledger.row_bytes_h2d += put(queue, wire, &self.buffers.upload, bytemuck::cast_slice(&self.upload_host));
        self.ledger.data_bytes_h2d +=
            put(queue, wire, &self.buffers.load_slots, bytemuck::cast_slice(&self.slots_host));
    }

    fn set_block<T: bytemuck::Pod>(&mut self, block: usize, value: T) {
        let at = block * PARAMS_STRIDE as usize;
        if self.params_host.len() < at + PARAMS_STRIDE as usize {
            self.params_host.resize(at + PARAMS_STRIDE as usize, 0);
        }
        self.params_host[at..at + size_of::<T>()].copy_from_slice(bytemuck::bytes_of(&value));
    }

    /// Writes the parameter blocks `0..blocks` in one write.
    fn write_params(&mut self, blocks: usize) {
        let n = (blocks * PARAMS_STRIDE as usize).min(self.params_host.len());
        let bytes = &self.params_host[..n];
        self.ledger.data_bytes_h2d += put(&self.ctx.queue, &mut self.wire, &self.buffers.params, bytes);
    }

    fn move_params(&self, first: u32, count: usize) -> MoveParams {
        MoveParams { first, count: count as u32, row_vec4: self.row_vec4, _pad: 0 }
    }

    fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass,
        kernel: &kernels::Kernel,
        group: &wgpu::BindGroup,
        block: usize,
        invocations: u64,
    ) {
        let (x, y) = dispatch_size(invocations, self.ctx.summary.max_compute_workgroups_per_dimension);
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, group, &[(block as u64 * PARAMS_STRIDE) as u32]);
        pass.dispatch_workgroups(x, y, 1);
    }

    /// Stages the resident set in before the first step (chunked by the window).
    fn load_resident(&mut self, model: &Model) -> Result<()> {
        let placed = std::mem::take(&mut self.moves.load);
        for p in &placed {
            self.ledger.row_in(p.row < self.n_users, true);
        }
        self.load_rows(model, &placed)?;
        self.resident_loaded = true;
        Ok(())
    }

    /// Stages `placed` rows into their slots (chunked by the window), outside
    /// any training step. The caller counts them on the ledger.
    fn load_rows(&mut self, model: &Model, placed: &[Placed]) -> Result<()> {
        for chunk in placed.chunks(self.layout.window as usize) {
            self.moves.load.clear();
            self.moves.load.extend_from_slice(chunk);
            self.write_loads(model);
            self.set_block(BLOCK_SCATTER, self.move_params(0, chunk.len()));
            self.write_params(BLOCK_SCATTER + 1);
            let n = chunk.len() as u64 * self.row_vec4 as u64;
            let enc = self.one_dispatch("scatter rows", &self.kernels.scatter, &self.bind.scatter, BLOCK_SCATTER, n);
            self.ctx.queue.submit([enc.finish()]);
        }
        self.moves.load.clear();
        self.check()
    }

    /// Writes `placed` rows back to the host tables (chunked by the download
    /// window) and waits for them. The caller counts them on the ledger.
    fn write_back_rows(&mut self, model: &mut Model, placed: &[Placed]) -> Result<()> {
        for chunk in placed.chunks(self.layout.window as usize * 2) {
            self.moves.evict.clear();
            self.moves.release.clear();
            self.moves.release.extend_from_slice(chunk);
            self.slots_host.clear();
            self.slots_host.extend(chunk.iter().map(|p| p.slot));
            self.write_out_slots();
            self.set_block(BLOCK_GATHER_RELEASE, self.move_params(0, chunk.len()));
            self.write_params(BLOCK_GATHER_RELEASE + 1);
            let n = chunk.len() as u64 * self.row_vec4 as u64;
            let (kernel, group) = (&self.kernels.gather, &self.bind.gather);
            let enc = self.one_dispatch("gather rows for write-back", kernel, group, BLOCK_GATHER_RELEASE, n);
            // The readback ring completes older chunks as it fills.
            self.submit_step(model, enc)?;
        }
        self.moves.release.clear();
        self.complete_all(model)
    }

    /// An encoder holding one compute pass with one dispatch of `kernel`.
    fn one_dispatch(
        &self,
        label: &str,
        kernel: &kernels::Kernel,
        group: &wgpu::BindGroup,
        block: usize,
        invocations: u64,
    ) -> wgpu::CommandEncoder {
        let mut enc = self.encoder(label);
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None });
            self.dispatch(&mut pass, kernel, group, block, invocations);
        }
        enc
    }

    /// Starts a co-partitioning block over `ratings`: its rows of the chosen
    /// side go into the block area. Write-backs still in flight reach the host
    /// first, since a row may be on its way back from the last block.
    fn begin_block<'r>(&mut self, model: &mut Model, ratings: impl Iterator<Item = &'r Rating>) -> Result<()> {
        let Some(c) = self.co_partition else {
            return Ok(());
        };
        self.complete_all(model)?;
        let mut rows = std::mem::take(&mut self.block_list);
        distinct_side_rows(ratings, c.side, self.n_users, &mut self.block_seen, &mut self.block_stamp, &mut rows);
        let placed = self.stager.begin_block(&rows, &mut self.ledger).to_vec();
        self.block_list = rows;
        self.load_rows(model, &placed)
    }

    /// Ends the current block: its rows are written back.
    fn end_block(&mut self, model: &mut Model) -> Result<()> {
        if self.co_partition.is_none() {
            return Ok(());
        }
        let placed = self.stager.end_block(&mut self.ledger).to_vec();
        self.write_back_rows(model, &placed)
    }

    /// Submits `enc` (whose gathers packed the rows of `moves.evict` then
    /// `moves.release` into the download window) with a copy of those rows to
    /// a free readback buffer. The rows reach the host tables later: when the
    /// buffer is needed again, when a step stages one of them, or at the end
    /// of the epoch ([`GpuBackend::complete_all`]).
    fn submit_step(&mut self, model: &mut Model, mut enc: wgpu::CommandEncoder) -> Result<()> {
        let n = self.moves.evict.len() + self.moves.release.len();
        let bytes = n as u64 * self.layout.row_bytes;
        if bytes > 0 && self.pending.len() == READBACK_RING {
            self.complete_oldest(model)?;
        }
        let buffer = self.next_readback;
        if bytes > 0 {
            enc.copy_buffer_to_buffer(&self.buffers.download, 0, &self.buffers.readback[buffer], 0, bytes);
        }
        let t = Instant::now();
        let submission = self.ctx.queue.submit([enc.finish()]);
        self.times.submit += t.elapsed().as_secs_f64();
        if bytes == 0 {
            return self.check();
        }
        self.wire.d2h += bytes;
        self.ledger.row_bytes_d2h += bytes;
        self.serial = self.serial.wrapping_add(1).max(1);
        let mut rows = self.free_rows.pop().unwrap_or_default();
        rows.clear();
        rows.extend(self.moves.evict.iter().chain(&self.moves.release).map(|p| p.row));
        for &r in &rows {
            self.pending_mark[r as usize] = self.serial;
        }
        self.ring_signals[buffer].request(self.buffers.readback[buffer].slice(..bytes));
        self.pending.push_back(PendingRows { buffer, bytes, rows, serial: self.serial, submission });
        self.next_readback = (self.next_readback + 1) % READBACK_RING;
        Ok(())
    }

    /// Completes every write-back in flight.
    fn complete_all(&mut self, model: &mut Model) -> Result<()> {
        while !self.pending.is_empty() {
            self.complete_oldest(model)?;
        }
        Ok(())
    }

    /// Waits for the oldest write-back in flight and writes its rows to the
    /// host tables.
    fn complete_oldest(&mut self, model: &mut Model) -> Result<()> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        let t = Instant::now();
        self.ctx
            .device
            .poll(wgpu::PollType::Wait { submission_index: Some(p.submission), timeout: Some(POLL_TIMEOUT) })
            .map_err(|e| self.gpu_err(format!("waiting for the device: {e}")))?;
        self.times.wait += t.elapsed().as_secs_f64();
        self.check()?;
        self.ring_signals[p.buffer].take().map_err(|e| self.gpu_err(e))?;
        let buf = &self.buffers.readback[p.buffer];
        {
            let view = buf
                .slice(..p.bytes)
                .get_mapped_range()
                .map_err(|e| self.gpu_err(format!("reading a mapped buffer: {e}")))?;
            let s = model.stride;
            let src: &[f32] = bytemuck::cast_slice(&view);
            for (&row, src) in p.rows.iter().zip(src.chunks_exact(s)) {
                let dst = if row < self.n_users {
                    &mut model.users[row as usize * s..][..s]
                } else {
                    &mut model.items[(row - self.n_users) as usize * s..][..s]
                };
                dst.copy_from_slice(src);
                if self.pending_mark[row as usize] == p.serial {
                    self.pending_mark[row as usize] = 0;
                }
            }
        }
        buf.unmap();
        self.free_rows.push(p.rows);
        Ok(())
    }

    /// One device step of training on `ratings` (which fit the slab).
    fn train_step(&mut self, model: &mut Model, ratings: &[Rating]) -> Result<()> {
        let t0 = Instant::now();
        let (wait0, submit0) = (self.times.wait, self.times.submit);
        let mut moves = std::mem::take(&mut self.moves);
        self.stager.stage(ratings, &mut moves, &mut self.ledger);
        self.moves = moves;
        self.ledger.steps += 1;
        let staged = t0.elapsed().as_secs_f64();
        self.times.stage += staged;
        // A row staged in now may still be on its way back from an earlier
        // step: then the write-backs up to that step reach the host first.
        if !self.pending.is_empty() {
            let newest = self.moves.load.iter().map(|l| self.pending_mark[l.row as usize]).max().unwrap_or(0);
            while self.pending.front().is_some_and(|p| newest != 0 && p.serial <= newest) {
                self.complete_oldest(model)?;
            }
        }
        self.write_loads(model);

        // Samples in wave order.
        if self.deterministic {
            self.waves.build(ratings, self.n_users, self.n_rows);
        } else {
            let width = self.hogwild_width.map_or(ratings.len(), |w| w as usize);
            self.conflicts += self.waves.single(ratings, self.n_users, self.n_rows, width);
        }
        self.sample_host.clear();
        for &j in &self.waves.perm {
            let j = j as usize;
            self.sample_host.extend_from_slice(&[
                self.moves.slot_u[j],
                self.moves.slot_i[j],
                ratings[j].value.to_bits(),
            ]);
        }
        // Deterministic mode: the waves from the first one smaller than
        // `sgd_tail`'s workgroup on (a hot row's long tail of waves of a few
        // ratings each) run in one `sgd_tail` dispatch, their ends after the
        // samples; the larger waves before them get a dispatch each.
        let n_waves = self.waves.ranges.len();
        let split = if self.deterministic && self.wave_tail {
            self.waves.ranges.iter().position(|r| r.1 < TAIL_GROUP).unwrap_or(n_waves)
        } else {
            n_waves
        };
        let split = if n_waves - split < 2 { n_waves } else { split };
        let ends_at = self.sample_host.len() as u32;
        self.sample_host.extend(self.waves.ranges[split..].iter().map(|&(first, count)| first + count));
        self.write_samples();

        // Slots leaving the slab: evicted before the loads, released after.
        let n_evict = self.moves.evict.len();
        let n_release = self.moves.release.len();
        self.slots_host.clear();
        self.slots_host.extend(self.moves.evict.iter().chain(&self.moves.release).map(|p| p.slot));
        self.write_out_slots();

        let n_load = self.moves.load.len();
        self.set_block(BLOCK_GATHER_EVICT, self.move_params(0, n_evict));
        self.set_block(BLOCK_SCATTER, self.move_params(0, n_load));
        self.set_block(BLOCK_GATHER_RELEASE, self.move_params(n_evict as u32, n_release));
        let (bias_reg, mean) = (self.bias_reg, self.mean);
        // A wave's invocations: one per sample, or Hogwild's width.
        let hogwild = if self.deterministic { None } else { self.hogwild_width };
        let width = move |count: u32| hogwild.map_or(count, |w| w.min(count));
        let sgd = |first, count, ends, width| SgdParams { first, count, bias_reg, mean, ends, width, _pad: [0; 2] };
        for w in 0..split {
            let (first, count) = self.waves.ranges[w];
            self.set_block(BLOCK_KERNEL + w, sgd(first, count, 0, width(count)));
        }
        let mut blocks = split;
        if split < n_waves {
            let (first, waves) = (self.waves.ranges[split].0, (n_waves - split) as u32);
            self.set_block(BLOCK_KERNEL + split, sgd(first, waves, ends_at, 0));
            blocks += 1;
        }
        self.write_params(BLOCK_KERNEL + blocks);

        let mut enc = self.encoder("train step");
        {
            let mut pass = enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("train step"), timestamp_writes: None });
            let rv = self.row_vec4 as u64;
            if n_evict > 0 {
                self.dispatch(
                    &mut pass,
                    &self.kernels.gather,
                    &self.bind.gather,
                    BLOCK_GATHER_EVICT,
                    n_evict as u64 * rv,
                );
            }
            if n_load > 0 {
                self.dispatch(&mut pass, &self.kernels.scatter, &self.bind.scatter, BLOCK_SCATTER, n_load as u64 * rv);
            }
            for (w, &(_, count)) in self.waves.ranges[..split].iter().enumerate() {
                self.dispatch(&mut pass, &self.kernels.sgd, &self.bind.sgd, BLOCK_KERNEL + w, width(count) as u64);
            }
            if split < n_waves {
                // One workgroup (one invocation's worth of groups).
                self.dispatch(&mut pass, &self.kernels.sgd_tail, &self.bind.sgd, BLOCK_KERNEL + split, 1);
            }
            if n_release > 0 {
                self.dispatch(
                    &mut pass,
                    &self.kernels.gather,
                    &self.bind.gather,
                    BLOCK_GATHER_RELEASE,
                    n_release as u64 * rv,
                );
            }
        }
        let done = self.submit_step(model, enc);
        // The rest of the step's time: samples, uploads, encoding.
        let waited = self.times.wait - wait0 + self.times.submit - submit0;
        self.times.prepare += t0.elapsed().as_secs_f64() - staged - waited;
        done
    }
    /// Reads `words` f32 sums of `src` back and hands each, with its index,
    /// to `each` (which adds them in f64).
    fn read_sums(
        &mut self,
        src: &wgpu::Buffer,
        words: u64,
        mut enc: wgpu::CommandEncoder,
        mut each: impl FnMut(usize, f64),
    ) -> Result<()> {
        let bytes = words * 4;
        enc.copy_buffer_to_buffer(src, 0, &self.buffers.small_readback, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        self.wire.d2h += bytes;
        self.ledger.data_bytes_d2h += bytes;
        let rb = self.buffers.small_readback.clone();
        self.map_read(&rb, bytes, |b| {
            for (j, &x) in bytemuck::cast_slice::<u8, f32>(b).iter().enumerate() {
                each(j, x as f64);
            }
        })
    }

    /// One device step of evaluation on `ratings`: stages missing rows in
    /// read-only (nothing is written back) and returns the error sums.
    fn eval_step(&mut self, model: &Model, ratings: &[Rating], acc: &mut [MetricsAcc]) -> Result<()> {
        let mut moves = std::mem::take(&mut self.moves);
        self.stager.stage_eval(ratings, &mut moves, &mut self.ledger);
        self.moves = moves;
        self.write_loads(model);
        self.sample_host.clear();
        for (j, r) in ratings.iter().enumerate() {
            self.sample_host.extend_from_slice(&[self.moves.slot_u[j], self.moves.slot_i[j], r.value.to_bits()]);
        }
        self.write_samples();
        self.set_block(
            BLOCK_KERNEL,
            PredictParams {
                first: 0,
                count: ratings.len() as u32,
                mean: self.mean,
                min_rating: self.range.0,
                max_rating: self.range.1,
                _pad: [0; 3],
            },
        );
        self.write_params(BLOCK_KERNEL + 1);
        let (kernel, group) = (&self.kernels.predict, &self.bind.predict);
        let enc = self.one_dispatch("evaluation step", kernel, group, BLOCK_KERNEL, ratings.len() as u64);
        let groups = (ratings.len() as u64).div_ceil(WORKGROUP as u64);
        let sums_buf = self.buffers.sums.clone();
        // (squared, absolute) error sums per workgroup and model.
        let copies = self.copies as usize;
        self.read_sums(&sums_buf, groups * copies as u64 * 2, enc, |j, x| {
            let a = &mut acc[(j / 2) % copies];
            if j % 2 == 0 {
                a.sq += x;
            } else {
                a.abs += x;
            }
        })?;
        for a in acc.iter_mut() {
            a.count += ratings.len() as u64;
        }
        Ok(())
    }

    /// Splits `ratings` into steps that fit the slab and runs `f` on each.
    fn for_each_step(
        &mut self,
        ratings: &[Rating],
        max: usize,
        train: bool,
        mut f: impl FnMut(&mut Self, &[Rating]) -> Result<()>,
    ) -> Result<()> {
        for batch in ratings.chunks(max.max(1)) {
            let mut rest = batch;
            while !rest.is_empty() {
                let n = if train { self.stager.prefix_that_fits(rest) } else { self.stager.eval_prefix(rest) };
                if n < rest.len() {
                    self.ledger.splits += 1;
                }
                f(self, &rest[..n])?;
                rest = &rest[n..];
            }
        }
        Ok(())
    }
}

impl Backend for GpuBackend {
    fn kind(&self) -> String {
        self.ctx.summary.backend.clone()
    }

    fn adapter(&self) -> String {
        self.ctx.summary.name.clone()
    }

    fn prediction(&self) -> Option<Prediction> {
        self.layout.prediction
    }

    fn train_epoch(
        &mut self,
        model: &mut Model,
        train: &[Rating],
        order: &[u32],
        spans: &[u32],
        _blocked: Option<&crate::train::blocked::BlockedRatings>,
        following: &[u32],
        rates: &[Rate],
        stop: &AtomicBool,
    ) -> Result<EpochTrain> {
        if rates.len() != self.copies as usize || model.copies != self.copies as usize {
            return Err(self.gpu_err(format!(
                "{} rates and a model of {} copies for a slab of {} copies",
                rates.len(),
                model.copies,
                self.copies
            )));
        }
        self.ledger = Ledger::default();
        let rates: Vec<[f32; 2]> = rates.iter().map(|r| [r.lr, r.reg]).collect();
        self.ledger.data_bytes_h2d +=
            put(&self.ctx.queue, &mut self.wire, &self.buffers.rates, bytemuck::cast_slice(&rates));
        if !self.resident_loaded {
            self.load_resident(model)?;
        }
        let epoch_start = Instant::now();
        self.times = HostTimes::default();
        self.stager.begin_epoch(train, order, following);
        self.times.plan = epoch_start.elapsed().as_secs_f64();
        let mut enc = self.encoder("clear loss");
        enc.clear_buffer(&self.buffers.loss, 0, None);
        self.ctx.queue.submit([enc.finish()]);
        self.conflicts = 0;
        let mut batch: Vec<Rating> = Vec::with_capacity(self.layout.max_samples as usize);
        let mut done = 0;
        let whole = [order.len() as u32];
        let spans = if spans.is_empty() { &whole[..] } else { spans };
        let mut start = 0;
        'spans: for &end in spans {
            let span = &order[start..(end as usize).min(order.len())];
            start = end as usize;
            if span.is_empty() {
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            self.begin_block(model, span.iter().map(|&i| &train[i as usize]))?;
            for chunk in span.chunks(self.layout.max_samples as usize) {
                if stop.load(Ordering::Relaxed) {
                    self.end_block(model)?;
                    break 'spans;
                }
                let t = Instant::now();
                batch.clear();
                batch.extend(chunk.iter().map(|&i| train[i as usize]));
                self.times.gather += t.elapsed().as_secs_f64();
                self.for_each_step(&batch, batch.len(), true, |me, step| me.train_step(model, step))?;
                done += chunk.len();
            }
            self.end_block(model)?;
        }
        self.complete_all(model)?;
        let loss = self.buffers.loss.clone();
        let enc = self.encoder("read loss");
        let mut sse = vec![0.0; self.copies as usize];
        let words = self.layout.max_samples as u64 * self.copies as u64;
        let copies = self.copies as usize;
        self.read_sums(&loss, words, enc, |j, x| sse[j % copies] += x)?;
        let t = self.times;
        let total = epoch_start.elapsed().as_secs_f64();
        log::debug!(
            "{}: epoch of {done} ratings in {} steps, {total:.4} s: plan {:.4}, gather {:.4}, stage {:.4}, \
             prepare {:.4}, submit {:.4}, wait {:.4}, other {:.4} s",
            self.ctx.summary.name,
            self.ledger.steps,
            t.plan,
            t.gather,
            t.stage,
            t.prepare,
            t.submit,
            t.wait,
            total - (t.plan + t.gather + t.stage + t.prepare + t.submit + t.wait)
        );
        Ok(EpochTrain {
            sse,
            count: done as u64,
            done,
            conflicts: self.conflicts,
            ledger: std::mem::take(&mut self.ledger),
        })
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)> {
        self.ledger = Ledger::default();
        if !self.resident_loaded {
            self.load_resident(model)?;
        }
        let mut acc = vec![MetricsAcc::default(); self.copies as usize];
        let max = self.layout.max_samples as usize;
        self.for_each_step(test, max, false, |me, step| me.eval_step(model, step, &mut acc))?;
        Ok((acc.iter().map(MetricsAcc::finish).collect(), std::mem::take(&mut self.ledger)))
    }

    fn finish(&mut self, model: &mut Model) -> Result<Ledger> {
        self.ledger = Ledger::default();
        if !self.resident_loaded {
            return Ok(Ledger::default());
        }
        let dirty = self.stager.take_dirty(&mut self.ledger);
        self.write_back_rows(model, &dirty)?;
        Ok(std::mem::take(&mut self.ledger))
    }
}
