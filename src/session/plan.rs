//! What a run will do on a GPU, worked out before it trains (`rowstage
//! plan`): the adapter's calibration, the batch `batch` auto takes, and the
//! slab's plan — the same calls, in the same order, as the run makes, so
//! that the plan is what the run applies (a test compares the two).

use serde::Serialize;

use crate::data::Dataset;
use crate::engine::Order;
use crate::error::Result;
use crate::gpu::{GpuBackend, GpuContext, GpuLayout};
use crate::report::layout_line;
use crate::stage::{CacheKind, human_bytes};
use crate::train::plan::Plan;
use crate::train::{BatchRequest, RunSpec, auto_batch, gpu_setup, plan_budget};

/// A run's plan on its adapter, as `rowstage plan --json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    pub adapter: String,
    /// The calibration's summary, and what `batch` auto decided.
    pub calibration: Vec<String>,
    /// The i.i.d. model's best batch and split (`None` when not even a batch
    /// of 64 fits the slab).
    pub planner: Option<Plan>,
    pub order: String,
    pub batch: usize,
    pub device_memory_bytes: u64,
    pub slots: u32,
    pub resident_slots: u32,
    pub cache_slots: u32,
    pub staging_slots: u32,
    pub cache_policy: CacheKind,
    /// Rows staged in per epoch after the first, replayed from the run's own
    /// steps.
    pub predicted_rows_in_per_epoch: Option<f64>,
    #[serde(skip)]
    layout: GpuLayout,
    #[serde(skip)]
    data: String,
    #[serde(skip)]
    table_bytes: u64,
    #[serde(skip)]
    auto: bool,
}

/// Plans `spec` on `data` for its adapter: `batch` auto as the run resolves
/// it (the planner's batch, halved until the first epoch's steps fit), any
/// other batch as given.
pub fn plan(data: &Dataset, spec: &RunSpec) -> Result<RunPlan> {
    spec.validate()?;
    let mut settings = spec.settings();
    let b = &spec.backend;
    let auto = spec.batch == BatchRequest::Auto;
    let ctx = GpuContext::new(b.backend, b.adapter.as_deref())?;
    let (adapter, summary) = (ctx.describe(), ctx.summary.clone());
    let (calibration, planner) = if auto {
        drop(ctx);
        let (batch, plan, notes) = auto_batch(data, &settings, b, spec.calibration_cache, crate::train::DEFAULT_BATCH)?;
        settings.batch = batch;
        (notes, plan)
    } else {
        let p = plan_budget(
            ctx,
            data,
            settings.hp.rank,
            settings.copies(),
            b.device_memory,
            spec.calibration_cache,
            Some(settings.batch),
        )?;
        (vec![p.calibration.summary()], p.plan)
    };
    let setup = gpu_setup(data, &settings, b, &summary)?;
    let layout = GpuBackend::plan(&setup, &summary)?;
    let order = setup.layout.spec().order;
    let shuffled_batch = matches!(order, Order::Shuffled).then_some(settings.batch);
    Ok(RunPlan {
        adapter,
        calibration,
        planner,
        order: order.name(),
        batch: settings.batch,
        device_memory_bytes: layout.slab_bytes,
        slots: layout.slots,
        resident_slots: layout.areas.resident,
        cache_slots: layout.areas.cache,
        staging_slots: layout.areas.staging,
        cache_policy: layout.sca_cache,
        predicted_rows_in_per_epoch: layout.prediction.map(|p| p.rows_per_epoch),
        data: format!(
            "{}: {} training ratings; order {}{}",
            data.name,
            data.train.len(),
            order.name(),
            shuffled_batch.map_or(String::new(), |b| format!(", batch {b}"))
        ),
        table_bytes: settings.table_bytes(data),
        layout,
        auto,
    })
}

impl RunPlan {
    /// The plan in lines, as `rowstage plan` prints it (parameters in
    /// backticks, for a front end to name as it names them).
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("adapter: {}", self.adapter)];
        lines.extend(self.calibration.iter().cloned());
        lines.push(self.data.clone());
        lines.push(layout_line(&self.layout, self.table_bytes));
        if let Some(p) = &self.planner {
            lines.push(format!(
                "planner (i.i.d. model): batch {} at a modelled {:.3e} ratings/s{}",
                p.batch,
                p.predicted_ratings_per_sec,
                if self.auto && p.batch != self.batch {
                    format!("; {} is the largest the slab holds", self.batch)
                } else {
                    String::new()
                }
            ));
        }
        if let Some(pr) = self.layout.prediction {
            lines.push(format!(
                "sca: predicted per epoch {:.0} rows in ({} host→device), from a replay of this run's own steps; \
                 the first epoch also loads {} resident rows{}",
                pr.rows_per_epoch,
                human_bytes((pr.rows_per_epoch * pr.row_bytes as f64) as u64),
                pr.resident,
                if pr.cold >= 0.5 { format!(" and fills the cache ({:.0} rows)", pr.cold) } else { String::new() }
            ));
        }
        lines
    }
}

/// What `distributed` rotate hands MPI, worked out from the order before a
/// byte moves ([`crate::engine::rotate`]): what `train` prints before it
/// trains and `plan --ranks` shows.
#[derive(Debug, Clone, Serialize)]
pub struct WirePlan {
    pub ranks: usize,
    pub order: String,
    /// One row's bytes (every model's copy side by side).
    pub row_bytes: u64,
    /// Rows with training ratings: what every rank sends each other rank at
    /// an epoch's end, between them.
    pub trained_rows: u64,
    pub epochs: Vec<EpochWire>,
}

/// One epoch's bytes handed to MPI by all ranks.
#[derive(Debug, Clone, Serialize)]
pub struct EpochWire {
    pub epoch: usize,
    /// Bins passed between rounds.
    pub rotation_bytes: u64,
    /// The epoch's end: every rank's rows to every other rank, (P − 1) ×
    /// trained rows × row bytes.
    pub gather_bytes: u64,
    pub bytes_by_rank: Vec<u64>,
}

impl WirePlan {
    pub fn mean_bytes(&self) -> f64 {
        let total: u64 = self.epochs.iter().map(|e| e.rotation_bytes + e.gather_bytes).sum();
        total as f64 / self.epochs.len().max(1) as f64
    }

    /// The plan in lines, as `plan` and `train` print it.
    pub fn lines(&self) -> Vec<String> {
        let Some(first) = self.epochs.first() else { return Vec::new() };
        let rotation = self.epochs.iter().map(|e| e.rotation_bytes).sum::<u64>() / self.epochs.len() as u64;
        vec![
            format!(
                "wire: across {} ranks (`distributed` rotate, order {}) MPI is handed {} per epoch (the mean of \
                 epochs {}–{}, worked out from the order): {} of bins passed between rounds, and {} at each epoch's \
                 end, every rank's rows to {} ({} trained rows × {} B × {})",
                self.ranks,
                self.order,
                human_bytes(self.mean_bytes() as u64),
                first.epoch,
                first.epoch + self.epochs.len() - 1,
                human_bytes(rotation),
                human_bytes(first.gather_bytes),
                if self.ranks == 2 { "the other rank".to_string() } else { format!("the {} others", self.ranks - 1) },
                self.trained_rows,
                self.row_bytes,
                self.ranks - 1
            ),
            format!(
                "wire: epoch {} by rank: {}",
                first.epoch,
                first.bytes_by_rank.iter().map(|&b| human_bytes(b)).collect::<Vec<_>>().join(", ")
            ),
        ]
    }
}

/// [`WirePlan`] of `spec` on `data` across `ranks`, for its first `epochs`
/// epochs (the final training's: all the training ratings, one model),
/// laying the run out as it would (`plan --ranks`, no run at hand).
pub fn wire_plan(data: &Dataset, spec: &RunSpec, ranks: usize, epochs: usize) -> Result<WirePlan> {
    let (settings, layout) = final_layout(data, spec, crate::train::Distributed::Rotate)?;
    wire_plan_of(&layout, ranks, settings.row_bytes(), 0..epochs.max(1))
}

/// The final training's settings (all the training ratings, one model)
/// and its layout, laid out as the run under `mode` lays it out, refusing
/// what that run would refuse.
fn final_layout(
    data: &Dataset,
    spec: &RunSpec,
    mode: crate::train::Distributed,
) -> Result<(crate::train::TrainSettings, crate::engine::RunLayout)> {
    spec.validate()?;
    let mut settings = spec.settings();
    settings.order = crate::train::resolve_order(data, &settings)?;
    crate::train::check_distributed(
        &crate::train::BackendSpec { distributed: mode, ..spec.backend.clone() },
        &settings,
    )?;
    let layout = settings.layout(data, spec.backend.threads.max(1))?;
    Ok((settings, layout))
}

/// [`WirePlan`] of the run laid out as `layout`, rows of `row_bytes`,
/// across `ranks`, for `epochs` (0-based).
pub fn wire_plan_of(
    layout: &crate::engine::RunLayout,
    ranks: usize,
    row_bytes: u64,
    epochs: std::ops::Range<usize>,
) -> Result<WirePlan> {
    let rotation = crate::engine::rotate::Rotation::new(layout, ranks)?;
    let epochs = epochs
        .map(|e| {
            let t = rotation.traffic(layout, e, row_bytes)?;
            Ok(EpochWire {
                epoch: e + 1,
                rotation_bytes: t.rotation.iter().sum(),
                gather_bytes: t.gather.iter().sum(),
                bytes_by_rank: t.by_rank(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let trained_rows = rotation.trained_rows() as u64;
    Ok(WirePlan { ranks, order: layout.spec().order.name(), row_bytes, trained_rows, epochs })
}

/// What `distributed` server hands MPI, worked out without MPI from every
/// rank's cache schedule ([`crate::engine::shard::World`]): the bytes each
/// epoch's `predicted_wire_bytes` gives, for the final training (all the
/// training ratings, one model), as `plan --ranks P --distributed server`
/// prints them.
#[derive(Debug, Clone, Serialize)]
pub struct ServerWirePlan {
    pub ranks: usize,
    pub order: String,
    pub row_bytes: u64,
    pub policy: &'static str,
    /// Each rank's cache, as asked for and in rows.
    pub cache: String,
    pub cache_slots: u32,
    pub staleness: u32,
    /// Per epoch (1-based), the bytes each rank hands MPI.
    pub epochs: Vec<(usize, Vec<u64>)>,
}

impl ServerWirePlan {
    /// The plan in lines, as `plan` prints it.
    pub fn lines(&self) -> Vec<String> {
        let total = |b: &[u64]| b.iter().sum::<u64>();
        let mean = self.epochs.iter().map(|(_, b)| total(b)).sum::<u64>() / self.epochs.len().max(1) as u64;
        let mut lines = vec![format!(
            "wire: across {} ranks (`distributed` server, order {}, a cache of {} ({} rows of {} B) under {}, \
             staleness {}) MPI is handed {} per epoch (the mean of epochs 1–{}, from every rank's cache schedule)",
            self.ranks,
            self.order,
            self.cache,
            self.cache_slots,
            self.row_bytes,
            self.policy,
            self.staleness,
            human_bytes(mean),
            self.epochs.len()
        )];
        for (e, b) in &self.epochs {
            lines.push(format!(
                "wire: epoch {e}: {} ({})",
                human_bytes(total(b)),
                b.iter().map(|&x| human_bytes(x)).collect::<Vec<_>>().join(", ")
            ));
        }
        lines
    }
}

/// [`ServerWirePlan`] of `spec` on `data` across `ranks`, for its first
/// `epochs` epochs, laying the run out as it would.
pub fn server_wire_plan(data: &Dataset, spec: &RunSpec, ranks: usize, epochs: usize) -> Result<ServerWirePlan> {
    use crate::engine::shard::{World, cache_slots};
    let (settings, layout) = final_layout(data, spec, crate::train::Distributed::Server)?;
    let b = &spec.backend;
    let budget = b.cache_budget();
    let row_bytes = settings.row_bytes();
    let slots = cache_slots(budget, layout.n_items(), row_bytes);
    let mut world = World::new(&layout, ranks, b.policy, slots, b.staleness, row_bytes);
    let epochs = (0..epochs.max(1)).map(|e| (e + 1, world.epoch_bytes(&layout, e, b.policy.needs_future()))).collect();
    Ok(ServerWirePlan {
        ranks,
        order: layout.spec().order.name(),
        row_bytes,
        policy: b.policy.name(),
        cache: budget.to_string(),
        cache_slots: slots,
        staleness: b.staleness.max(1),
        epochs,
    })
}
