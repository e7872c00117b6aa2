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
