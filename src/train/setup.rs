//! Resolving `--backend`, `--adapter`, `--device-memory` and `--threads` into
//! a ready [`Backend`].

use serde::Serialize;

use std::sync::Arc;

use super::{Backend, TrainSettings, cpu};
use crate::data::Dataset;
use crate::engine::Order;
use crate::engine::rows::max_step_rows;
use crate::error::{Error, Result};
use crate::gpu::{AdapterSummary, BackendChoice, GpuBackend, GpuContext, GpuLayout, GpuSetup, HogwildWidth};
use crate::model::row_stride;
use crate::stage::copartition::{CoPartition, Side, block_capacity};
use crate::stage::{Budget, PolicyKind};

/// Where and how to train.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BackendSpec {
    pub backend: BackendChoice,
    pub adapter: Option<String>,
    /// `None` is `auto`: [`AUTO_SHARE`] of the tables, raised to the smallest
    /// budget that holds a batch, capped at the adapter's largest binding.
    pub device_memory: Option<Budget>,
    pub policy: PolicyKind,
    /// `lookahead`'s horizon in batches.
    pub lookahead: usize,
    pub threads: usize,
    /// Hogwild on a GPU: how many ratings of a step update at once (ignored
    /// by the CPU backend and in deterministic mode).
    pub hogwild_width: HogwildWidth,
    /// Training across MPI ranks (docs/ARCHITECTURE.md, "Past one machine").
    pub distributed: Distributed,
    /// Seconds a rank waits for another's message before it ends the run,
    /// naming the rank it waited for.
    pub rank_timeout: u32,
    /// `distributed` server: each rank's cache of served item rows, in bytes
    /// or as a share of the item table (`None`: [`AUTO_SHARE`]).
    pub cache: Option<Budget>,
    /// `distributed` server: clocks between a rank's pushes of every row it
    /// holds (and refetches of them): how late a copy may be.
    pub staleness: u32,
}

/// [`BackendSpec::staleness`]'s default.
pub const DEFAULT_STALENESS: u32 = 4;

/// [`BackendSpec::rank_timeout`]'s default: long enough for a rank to wait
/// out a slower one's share of an epoch on a busy machine.
pub const DEFAULT_RANK_TIMEOUT: u32 = 120;

/// How a run spans processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distributed {
    /// One process.
    #[default]
    Off,
    /// The blocked order across MPI ranks, bins passed between rounds: one
    /// process's model, bit for bit.
    Rotate,
    /// Factorbird's parameter server: items served by every rank, users
    /// with their ratings, each rank's cache of served rows kept by the
    /// staging policy, deltas pushed at most `staleness` clocks late.
    Server,
}

impl crate::Named for Distributed {
    const ALL: &'static [Self] = &[Distributed::Off, Distributed::Rotate, Distributed::Server];
    fn name(self) -> &'static str {
        match self {
            Distributed::Off => "off",
            Distributed::Rotate => "rotate",
            Distributed::Server => "server",
        }
    }
    fn about(self) -> &'static str {
        match self {
            Distributed::Off => "One process (the default without an MPI launcher)",
            Distributed::Rotate => {
                "The blocked order across MPI ranks, item and user bins passed between rounds: one process's model \
                 (the default under mpirun; needs the `mpi` feature)"
            }
            Distributed::Server => {
                "Factorbird's parameter server across MPI ranks: items served by every rank, each rank's cache of \
                 them kept by --policy, deltas pushed at most --staleness clocks late (needs the `mpi` feature)"
            }
        }
    }
}

impl BackendSpec {
    /// Whether a run across MPI ranks trains on each rank's GPU: a GPU
    /// `backend` named (`auto` there means each rank's CPU).
    pub fn on_device(&self) -> bool {
        !matches!(self.backend, BackendChoice::Cpu | BackendChoice::Auto)
    }

    /// `distributed` server's cache as it trains: [`BackendSpec::cache`], or
    /// [`AUTO_SHARE`] of the item table.
    pub fn cache_budget(&self) -> Budget {
        self.cache.unwrap_or(Budget::Percent(AUTO_SHARE))
    }

    /// Whether finding no GPU adapter falls back to the CPU backend (with a
    /// notice) rather than failing: `--backend auto` with no adapter filter.
    fn falls_back_to_cpu(&self) -> bool {
        self.backend == BackendChoice::Auto && self.adapter.is_none()
    }
}

/// The share of the tables `--device-memory auto` starts from, in percent.
pub const AUTO_SHARE: f64 = 25.0;

/// An opened backend and what a user should be told about it.
pub struct Opened {
    pub backend: Box<dyn Backend>,
    /// The slab layout, for a GPU backend.
    pub layout: Option<GpuLayout>,
    /// The adapter, for a GPU backend.
    pub adapter: Option<AdapterSummary>,
    /// A one-line notice (e.g. the fallback to the CPU).
    pub notice: Option<String>,
}

/// A calibrated plan for one slab.
pub struct Planned {
    /// The adapter, described.
    pub adapter: String,
    pub bytes: u64,
    pub slots: u32,
    pub row_bytes: u64,
    pub calibration: crate::gpu::calibrate::Calibration,
    /// `None` when not even a batch of 64 fits.
    pub plan: Option<super::plan::Plan>,
}

/// Calibrates `ctx`'s adapter (from the cache when allowed) and plans a slab
/// of `budget` for `copies` models side by side (a grid search: each slot
/// holds every model's copy of a row, so a budget holds `copies` times fewer
/// rows and the kernel does `copies` updates per rating); `None` is
/// [`AUTO_SHARE`] of the tables, capped at what the adapter can bind. An
/// explicit budget above that limit is an error. The planner searches the
/// batch, or models `batch` when given.
pub fn plan_budget(
    ctx: GpuContext,
    data: &Dataset,
    rank: usize,
    copies: usize,
    budget: Option<Budget>,
    use_calibration_cache: bool,
    batch: Option<usize>,
) -> Result<Planned> {
    let row_bytes = (row_stride(rank) * 4 * copies) as u64;
    let tables = table_bytes(data, rank) * copies as u64;
    let bytes = match budget {
        Some(b) => {
            let bytes = b.resolve(tables);
            crate::gpu::check_budget(bytes, &ctx.summary)?;
            bytes
        }
        None => Budget::Percent(AUTO_SHARE).resolve(tables).min(ctx.summary.max_slab_bytes() & !3),
    };
    let slots = crate::stage::slots_in(bytes, row_bytes);
    let adapter = ctx.describe();
    let (_ctx, calibration) = crate::gpu::calibrate::calibration(ctx, rank, use_calibration_cache)?;
    let counts = crate::stage::access_counts(&data.train, data.users.len(), data.items.len());
    // Calibrated with one model; G models cost G updates per rating.
    let per_model = crate::gpu::calibrate::Calibration {
        sgd_ratings_per_sec: calibration.sgd_ratings_per_sec / copies as f64,
        ..calibration.clone()
    };
    let plan = match batch {
        Some(b) => super::plan::plan_at(&counts, data.train.len(), slots, row_bytes, &per_model, b),
        None => {
            super::plan::plan(&counts, data.train.len(), slots, row_bytes, &per_model, data.train.len().min(1 << 16))
        }
    };
    Ok(Planned { adapter, bytes, slots, row_bytes, calibration, plan })
}

/// `--batch auto`: the planner's batch for `spec`'s adapter and budget, then
/// halved while one of the first epoch's batches cannot fit the slab. Returns
/// the batch, the plan and lines to tell the user. Without a GPU adapter (or
/// with `--backend cpu`) it is `fallback`.
pub fn auto_batch(
    data: &Dataset,
    settings: &TrainSettings,
    spec: &BackendSpec,
    use_calibration_cache: bool,
    fallback: usize,
) -> Result<(usize, Option<super::plan::Plan>, Vec<String>)> {
    let mut notes = Vec::new();
    if spec.backend == BackendChoice::Cpu {
        return Ok((fallback, None, notes));
    }
    let ctx = match GpuContext::new(spec.backend, spec.adapter.as_deref()) {
        Ok(c) => c,
        Err(Error::NoAdapter { .. }) if spec.backend == BackendChoice::Auto => return Ok((fallback, None, notes)),
        Err(e) => return Err(e),
    };
    let Planned { bytes, slots, row_bytes, calibration, plan, .. } =
        plan_budget(ctx, data, settings.hp.rank, settings.copies(), spec.device_memory, use_calibration_cache, None)?;
    notes.push(calibration.summary());
    let planned = plan.as_ref().map_or(64, |p| p.batch);
    let Some(batch) =
        fit_batch(data, &TrainSettings { batch: planned, ..settings.clone() }, slots as u64, spec.threads)?
    else {
        let min_bytes = 2 * row_bytes;
        return Err(Error::BudgetTooSmall {
            budget: bytes,
            slots: slots as u64,
            row_bytes,
            step: "a single rating".into(),
            fix: "",
            needed: 2,
            min_bytes,
            min_human: crate::stage::human_bytes(min_bytes),
        });
    };
    if batch < planned {
        notes.push(format!(
            "`batch` auto: the plan's batch of {planned} needs more than the slab's {slots} slots; the largest that fits is {batch}"
        ));
    }
    Ok((batch, plan, notes))
}

/// The co-partitioning of a run on `side` (`None`: none) with a slab of
/// `budget` (`None`: [`AUTO_SHARE`] of the tables) for `copies` models side
/// by side: the block area takes
/// [`crate::stage::copartition::BLOCK_SHARE`] of the slots at most and leaves
/// one batch's rows of the other side. The same for every backend, so that
/// the CPU and the GPU train in the same order. `None` when the budget leaves
/// no room for a block.
pub fn co_partition_for(
    data: &Dataset,
    rank: usize,
    copies: usize,
    batch: usize,
    budget: Option<Budget>,
    side: Option<Side>,
    visits: u32,
) -> Option<CoPartition> {
    let side = side?;
    let row_bytes = (row_stride(rank) * 4 * copies) as u64;
    let bytes = budget.unwrap_or(Budget::Percent(AUTO_SHARE)).resolve(table_bytes(data, rank) * copies as u64);
    let slots = crate::stage::slots_in(bytes, row_bytes);
    let other = match side {
        Side::Users => data.items.len(),
        Side::Items => data.users.len(),
    };
    let block_rows = block_capacity(slots, batch.min(other).max(1) as u32);
    (block_rows > 0).then_some(CoPartition { side, block_rows, visits: visits.max(1) })
}

/// Bytes of both tables at `rank` for `data`, one model (see
/// [`TrainSettings::table_bytes`] for a grid search's).
pub fn table_bytes(data: &Dataset, rank: usize) -> u64 {
    ((data.users.len() + data.items.len()) * row_stride(rank) * 4) as u64
}

/// The largest batch up to `batch` whose parts of the shuffled order (no
/// co-partitioning) have at most `slots` distinct rows: what a budget of
/// `slots` slots can train. `None` when not even one rating's two rows fit.
pub fn fit_batch(data: &Dataset, settings: &TrainSettings, slots: u64, threads: usize) -> Result<Option<usize>> {
    // The shuffled layout's ratings do not depend on the batch, only its
    // cut into parts does.
    let shuffled = TrainSettings { order: Order::Shuffled, co_partition: None, ..settings.clone() };
    let layout = shuffled.layout(data, threads)?;
    let n_rows = data.users.len() + data.items.len();
    let fits =
        |batch: usize| max_step_rows(layout.ratings(), data.users.len() as u32, n_rows, batch).max(2) as u64 <= slots;
    if fits(settings.batch) {
        return Ok(Some(settings.batch));
    }
    if !fits(1) {
        return Ok(None);
    }
    // The rows of a batch grow with it: the largest that fits lies in
    // [lo, hi).
    let (mut lo, mut hi) = (1, settings.batch);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { lo = mid } else { hi = mid }
    }
    Ok(Some(lo))
}

/// [`open_backend_on`] with the largest batch up to `settings.batch` that
/// the budget can train (down to `min_batch`): a small device memory means
/// small batches. In the shuffled order the batch comes from [`fit_batch`];
/// otherwise (co-partitioning) it halves while the slab cannot hold a step.
/// The error of the smallest batch tried when none fits. Every try runs on
/// one device: `ctx`, or one opened here for a GPU `spec`.
pub fn open_backend_fitting(
    data: &Dataset,
    settings: &mut TrainSettings,
    spec: &BackendSpec,
    min_batch: usize,
    ctx: Option<&GpuContext>,
) -> Result<Opened> {
    let opened_here;
    let ctx = match ctx {
        Some(c) => Some(c),
        // Rotate trains on the CPU: no adapter is looked for.
        None if spec.backend == BackendChoice::Cpu || spec.distributed != Distributed::Off => None,
        None => match GpuContext::new(spec.backend, spec.adapter.as_deref()) {
            Ok(c) => {
                opened_here = c;
                Some(&opened_here)
            }
            // `auto` without an adapter: open_backend_on falls back to the CPU.
            Err(Error::NoAdapter { .. }) if spec.falls_back_to_cpu() => None,
            Err(e) => return Err(e),
        },
    };
    if let (Order::Shuffled, None, Some(b), Some(_)) = (settings.order, settings.co_partition, spec.device_memory, ctx)
    {
        let slots = crate::stage::slots_in(b.resolve(settings.table_bytes(data)), settings.row_bytes()) as u64;
        if let Some(batch) = fit_batch(data, settings, slots, spec.threads)? {
            settings.batch = batch.max(min_batch);
        }
    }
    loop {
        match open_backend_on(data, settings, spec, ctx.cloned()) {
            // The batch cuts the shuffled order (also co-partitioning's),
            // not the blocked one.
            Err(Error::BudgetTooSmall { .. })
                if settings.batch > min_batch
                    && (settings.order == Order::Shuffled || settings.co_partition.is_some()) =>
            {
                settings.batch = (settings.batch / 2).max(min_batch);
            }
            // Halved to the least already: a smaller batch is no way out.
            Err(e @ Error::BudgetTooSmall { .. })
                if settings.order == Order::Shuffled || settings.co_partition.is_some() =>
            {
                return Err(e.with_fix(" (the batch was halved to the least it can be)"));
            }
            other => return other,
        }
    }
}

/// Opens the backend `spec` asks for. `--backend auto` falls back to the
/// Hogwild CPU backend with a notice when wgpu finds no adapter.
pub fn open_backend(data: &Dataset, settings: &TrainSettings, spec: &BackendSpec) -> Result<Opened> {
    open_backend_on(data, settings, spec, None)
}

/// [`open_backend`] on the device `ctx` when given (opened for `spec` by
/// the caller, who may run several backends on it one after another), else
/// on a device opened here. A CPU `spec` ignores `ctx`.
pub fn open_backend_on(
    data: &Dataset,
    settings: &TrainSettings,
    spec: &BackendSpec,
    ctx: Option<GpuContext>,
) -> Result<Opened> {
    let hp = &settings.hp;
    // The blocked order is exact on any number of threads; only the
    // shuffled order needs one thread to be deterministic on the CPU.
    let sequential = settings.deterministic && !super::resolve_order(data, settings)?.is_exact();
    let cpu_backend = || -> Box<dyn Backend> {
        if sequential {
            Box::new(cpu::ReferenceCpu { bias_reg: hp.bias_reg })
        } else {
            Box::new(cpu::HogwildCpu::new(hp.bias_reg, spec.threads))
        }
    };
    if spec.distributed != Distributed::Off {
        return open_distributed(data, settings, spec);
    }
    if spec.backend == BackendChoice::Cpu {
        // A budget given for a slab the CPU backend does not have: said,
        // not silently dropped.
        let notice = spec.device_memory.map(|b| {
            format!(
                "`device_memory` {b} sizes a GPU backend's slab; the CPU backend holds every row in host memory, \
                 so no row is staged and the policy has nothing to do"
            )
        });
        return Ok(Opened { backend: cpu_backend(), layout: None, adapter: None, notice });
    }
    let opened = match ctx {
        Some(ctx) => Ok(ctx),
        None => GpuContext::new(spec.backend, spec.adapter.as_deref()),
    };
    let ctx = match opened {
        Ok(ctx) => ctx,
        Err(Error::NoAdapter { hint, .. }) if spec.falls_back_to_cpu() => {
            return Ok(Opened {
                backend: cpu_backend(),
                layout: None,
                adapter: None,
                notice: Some(format!("no GPU adapter found ({hint}); training on the CPU backend instead")),
            });
        }
        Err(e) => return Err(e),
    };
    let setup = gpu_setup(data, settings, spec, &ctx.summary)?;
    let gpu = GpuBackend::new(ctx, &setup)?;
    let layout = gpu.layout().clone();
    let adapter = gpu.context().summary.clone();
    Ok(Opened { backend: Box::new(gpu), layout: Some(layout), adapter: Some(adapter), notice: None })
}

/// What a run across MPI ranks cannot train, refused by name before it
/// starts (`train` and `plan --ranks` alike): rotate needs the blocked
/// order; an adapter needs a GPU backend; the server's GPUs lay out each
/// rank's ratings on their own, which keeps no co-partitioning.
pub fn check_distributed(spec: &BackendSpec, settings: &TrainSettings) -> Result<()> {
    let mode = crate::Named::name(spec.distributed);
    if spec.distributed == Distributed::Rotate {
        crate::engine::rotate::check_order(settings.order)?;
    }
    if let Some(c) = settings.co_partition.filter(|_| spec.distributed == Distributed::Server && spec.on_device()) {
        return Err(Error::arg(
            "`co_partition`",
            c.side.name(),
            "is not trained by `distributed` server on a GPU `backend` (each rank's GPU lays out the rank's own \
             ratings): leave it out, or train the server on the ranks' CPUs",
        ));
    }
    if !spec.on_device() && spec.adapter.is_some() {
        return Err(Error::arg(
            "`adapter`",
            spec.adapter.clone().unwrap_or_default(),
            format!("`distributed` {mode} picks an adapter only for a GPU `backend` (vulkan, metal, dx12, gl)"),
        ));
    }
    Ok(())
}

/// `distributed` rotate or server: each rank trains on its CPU's threads
/// or, for a GPU `--backend`, on its own GPU backend opened here as one
/// process's would be (the server in an order other than the blocked: on
/// the rank's own share of the layout).
fn open_distributed(data: &Dataset, settings: &TrainSettings, spec: &BackendSpec) -> Result<Opened> {
    let mode = crate::Named::name(spec.distributed);
    let order = super::resolve_order(data, settings)?;
    check_distributed(spec, &TrainSettings { order, ..settings.clone() })?;
    #[cfg(feature = "mpi")]
    {
        use crate::distributed::{Rotate, Server, Trainer};
        let limit = std::time::Duration::from_secs(u64::from(spec.rank_timeout.max(1)));
        let (trainer, opened) = if spec.on_device() {
            // The rank's GPU, opened and laid out as one process's would be;
            // the ranks on one machine take alike adapters in turn.
            let local = BackendSpec { distributed: Distributed::Off, ..spec.clone() };
            let nth = crate::distributed::local_rank();
            let ctx = GpuContext::new_nth(spec.backend, spec.adapter.as_deref(), nth)?;
            if spec.distributed == Distributed::Server && !matches!(order, Order::Blocked { .. }) {
                // A clock is a part every rank shares: the GPU trains the
                // rank's share of each, laid out on their own.
                let settings = TrainSettings { order, ..settings.clone() };
                let layout = settings.layout(data, spec.threads)?;
                let (rank, ranks) = crate::distributed::world();
                let own = crate::engine::shard::Shard::new(&layout, ranks, rank).own_layout(&layout);
                let setup = gpu_setup_on(data, &settings, &local, &ctx.summary, own)?;
                let gpu = GpuBackend::new(ctx, &setup)?;
                let adapter = Some(gpu.context().summary.clone());
                (Trainer::Device { gpu: Box::new(gpu), own_layout: true }, (None, adapter, None))
            } else {
                let opened = open_backend_on(data, settings, &local, Some(ctx))?;
                let (layout, adapter, notice) = (opened.layout, opened.adapter, opened.notice);
                (Trainer::Device { gpu: opened.backend, own_layout: false }, (layout, adapter, notice))
            }
        } else {
            let notice = match (spec.device_memory, spec.backend) {
                (Some(b), _) => Some(format!(
                    "`device_memory` {b} sizes a GPU backend's slab; `distributed` {mode} trains on each rank's \
                     CPU, which holds every row in host memory"
                )),
                (None, BackendChoice::Auto) => Some(format!(
                    "`distributed` {mode} trains on each rank's CPU unless `backend` names a GPU backend (vulkan, \
                     metal, dx12, gl)"
                )),
                _ => None,
            };
            (Trainer::threads(spec.threads)?, (None, None, notice))
        };
        let bias_reg = settings.hp.bias_reg;
        let backend: Box<dyn Backend> = match spec.distributed {
            Distributed::Server => {
                Box::new(Server::new(bias_reg, trainer, spec.policy, spec.cache_budget(), spec.staleness, limit)?)
            }
            _ => Box::new(Rotate::new(bias_reg, trainer, limit)?),
        };
        let (layout, adapter, notice) = opened;
        Ok(Opened { backend, layout, adapter, notice })
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err(Error::arg(
            "`distributed`",
            mode,
            "this rowstage was built without MPI: build it with `cargo build --release --features mpi` \
             (scripts/deps.sh --mpi installs what that needs)",
        ))
    }
}

/// What a GPU run of `settings` on `adapter` is set up with: the order
/// (resolved from the data and settings alone), the run's layout, the
/// slab's size. `train` opens its backend
/// with it and `plan` prints its plan ([`GpuBackend::plan`]), so that the two
/// agree.
pub fn gpu_setup(
    data: &Dataset,
    settings: &TrainSettings,
    spec: &BackendSpec,
    adapter: &crate::gpu::AdapterSummary,
) -> Result<GpuSetup> {
    // The order is the data's and the settings' (every budget and device
    // trains it): a budget that cannot hold a step is refused by the slab's
    // plan, naming the smallest that works.
    let settings = TrainSettings { order: super::resolve_order(data, settings)?, ..settings.clone() };
    let layout = settings.layout(data, spec.threads)?;
    gpu_setup_on(data, &settings, spec, adapter, layout)
}

/// [`gpu_setup`] for `layout`, laid out already (`settings`' order
/// resolved): the run's, or a parameter server rank's own share of it.
fn gpu_setup_on(
    data: &Dataset,
    settings: &TrainSettings,
    spec: &BackendSpec,
    adapter: &crate::gpu::AdapterSummary,
    layout: crate::engine::RunLayout,
) -> Result<GpuSetup> {
    let hp = &settings.hp;
    let (row_bytes, tables) = (settings.row_bytes(), settings.table_bytes(data));
    let order = settings.order;
    let layout = Arc::new(layout);
    let slab_bytes = match spec.device_memory {
        Some(b) => b.resolve(tables),
        None => {
            let needed = match order {
                Order::Shuffled if settings.co_partition.is_none() => {
                    let n_rows = data.users.len() + data.items.len();
                    max_step_rows(layout.ratings(), data.users.len() as u32, n_rows, settings.batch) as u64
                }
                _ => crate::engine::rows::PartRows::new(&layout, spec.threads, false).max() as u64,
            };
            Budget::Percent(AUTO_SHARE).resolve(tables).max(needed * row_bytes).min(adapter.max_slab_bytes() & !3)
        }
    };
    Ok(GpuSetup {
        rank: hp.rank,
        copies: settings.copies(),
        bias_reg: hp.bias_reg,
        deterministic: settings.deterministic,
        slab_bytes,
        policy: spec.policy,
        lookahead: spec.lookahead,
        mean: data.mean(),
        range: data.range(),
        layout,
        wave_tail: None,
        hogwild_width: spec.hogwild_width,
        threads: spec.threads,
        data_window: None,
        blocked_lanes: None,
    })
}
