//! A training run as asked for ([`RunSpec`]), resolved against its data and
//! adapter ([`resolve`]): the batch a budget holds, the co-partitioning that
//! fits, the backend opened, the order chosen for it, and what the user is
//! told about each choice. `rowstage train` parses its flags into a
//! [`RunSpec`], resolves it, trains, and records [`RunConfig`].

use serde::{Deserialize, Serialize};

use super::plan::Plan;
use super::setup::{BackendSpec, Opened, auto_batch, co_partition_for, open_backend, open_backend_fitting};
use super::{DEFAULT_BATCH, Order, TrainOutcome, TrainSettings, resolve_order};
use crate::data::{Dataset, SourceJson};
use crate::error::{Error, Result};
use crate::model::{HyperParams, Setting};
use crate::stage::copartition::{CoPartition, Side};

/// Settings trained side by side in one run at most (a grid search).
pub const MAX_GRID: usize = 64;

/// Epochs a run may ask for at most: far past any that trains (a run
/// meant to go on until stopped asks for this many), and few enough that
/// what is worked out or kept per epoch (`plan`'s and `simulate`'s
/// figures, the report's epochs) fits in memory.
pub const MAX_EPOCHS: usize = 1_000_000;

/// Threads a run may ask for per core: beyond a few, threads only cost
/// memory (each holds its own buffers).
pub const MAX_THREADS_PER_CORE: usize = 4;

/// How a run's batch is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchRequest {
    /// [`DEFAULT_BATCH`], or the largest the budget holds (said in a note).
    Default,
    /// Exactly this many ratings per part (an error where the budget cannot
    /// hold one, naming the smallest that can).
    Fixed(usize),
    /// The planner's batch for the adapter and budget.
    Auto,
}

impl BatchRequest {
    /// As the report records what was asked for.
    pub fn requested(self) -> Option<String> {
        match self {
            BatchRequest::Default => None,
            BatchRequest::Fixed(n) => Some(n.to_string()),
            BatchRequest::Auto => Some("auto".into()),
        }
    }
}

/// The co-partitioning side as asked for: [`SideRequest::Larger`] resolves
/// against the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SideRequest {
    Users,
    Items,
    /// The side with more rows.
    Larger,
}

impl SideRequest {
    /// The side for `data`.
    pub fn resolve(self, data: &Dataset) -> Side {
        match self {
            SideRequest::Users => Side::Users,
            SideRequest::Items => Side::Items,
            SideRequest::Larger => Side::larger(data.users.len(), data.items.len()),
        }
    }
}

/// A training run as asked for, before its data and adapter resolve it:
/// what a report records (`request`) and `train --config` reads back.
/// Fields left out take [`RunSpec::default`]'s values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSpec {
    /// The model's settings; `lr` and `reg` are the grid's first where there
    /// is a grid.
    pub hp: HyperParams,
    /// (lr, reg) settings trained side by side; empty: `hp`'s alone.
    pub grid: Vec<Setting>,
    pub epochs: usize,
    pub batch: BatchRequest,
    pub seed: u64,
    pub deterministic: bool,
    pub order: Order,
    pub co_partition: Option<SideRequest>,
    pub co_partition_visits: u32,
    pub backend: BackendSpec,
    /// Reuse the adapter's cached calibration (for [`BatchRequest::Auto`]).
    pub calibration_cache: bool,
    /// What is chosen on the data before the model trains: `lr` and `reg`
    /// where not given, the epochs under `patience` (docs/ARCHITECTURE.md,
    /// "Choosing on the data"). The library's entry does the choosing;
    /// [`resolve`] trains the settings as they stand.
    pub tune: super::tune::Tuning,
}

impl Default for BackendSpec {
    /// The best adapter, a slab of `auto` size, `sca`, every core.
    fn default() -> Self {
        BackendSpec {
            backend: crate::gpu::BackendChoice::Auto,
            adapter: None,
            device_memory: None,
            policy: crate::stage::PolicyKind::Sca,
            lookahead: 32,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            hogwild_width: crate::gpu::HogwildWidth::Auto,
            distributed: super::setup::Distributed::Off,
            rank_timeout: super::setup::DEFAULT_RANK_TIMEOUT,
            cache: None,
            staleness: super::setup::DEFAULT_STALENESS,
        }
    }
}

impl Default for RunSpec {
    /// `rowstage train`'s defaults.
    fn default() -> Self {
        RunSpec {
            hp: HyperParams::DEFAULT,
            grid: Vec::new(),
            epochs: crate::model::DEFAULT_EPOCHS,
            batch: BatchRequest::Default,
            seed: 42,
            deterministic: false,
            order: Order::Auto,
            co_partition: None,
            co_partition_visits: 1,
            backend: BackendSpec::default(),
            calibration_cache: true,
            tune: super::tune::Tuning::default(),
        }
    }
}

/// A comma-separated list of `param`'s numbers (`--lr 0.02,0.05`), none
/// twice: a value listed twice would train the same setting twice. Ranges
/// are [`RunSpec::validate`]'s to check.
pub fn number_list(param: &str, text: &str) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        match part.parse::<f32>() {
            Ok(v) if out.contains(&v) => return Err(Error::arg(param, text, format!("lists {v} twice"))),
            Ok(v) => out.push(v),
            Err(_) => return Err(Error::arg(param, part, "must be a number")),
        }
    }
    Ok(out)
}

impl RunSpec {
    /// `lr` and `reg` as `--lr` and `--reg` set them: values given are fixed
    /// (nothing chooses them), several make a grid, lr-major; `None` leaves
    /// that one to be chosen on the data ([`super::tune::Tuning`]).
    pub fn with_lr_reg(mut self, lrs: Option<Vec<f32>>, regs: Option<Vec<f32>>) -> Self {
        self.tune.lr = lrs.is_none();
        self.tune.reg = regs.is_none();
        let lrs = lrs.unwrap_or(vec![self.hp.lr]);
        let regs = regs.unwrap_or(vec![self.hp.reg]);
        (self.hp.lr, self.hp.reg) = (lrs[0], regs[0]);
        let grid: Vec<Setting> = lrs.iter().flat_map(|&lr| regs.iter().map(move |&reg| Setting { lr, reg })).collect();
        self.grid = if grid.len() > 1 { grid } else { Vec::new() };
        self
    }

    /// The training settings as asked for, before [`resolve`] fits the batch
    /// and co-partitioning to the budget and the order to the backend.
    pub fn settings(&self) -> TrainSettings {
        TrainSettings {
            hp: self.hp,
            grid: self.grid.clone(),
            epochs: self.epochs,
            batch: match self.batch {
                BatchRequest::Fixed(n) => n,
                _ => DEFAULT_BATCH,
            },
            seed: self.seed,
            deterministic: self.deterministic,
            co_partition: None,
            order: self.order,
        }
    }

    /// Refuses settings no run can use, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        let hp = &self.hp;
        let non_neg = |name: &str, v: f32| -> Result<()> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::arg(name, v.to_string(), "must be a finite number ≥ 0"))
            }
        };
        for s in self.grid.iter().copied().chain([Setting { lr: hp.lr, reg: hp.reg }]) {
            if !(s.lr.is_finite() && s.lr > 0.0) {
                return Err(Error::arg("`lr`", s.lr.to_string(), "must be a finite number above 0"));
            }
            non_neg("`reg`", s.reg)?;
        }
        if self.grid.len() > MAX_GRID {
            return Err(Error::arg(
                "`lr` × `reg`",
                self.grid.len().to_string(),
                format!("a grid search trains at most {MAX_GRID} settings in one run"),
            ));
        }
        non_neg("`bias_reg`", hp.bias_reg)?;
        non_neg("`decay`", hp.decay)?;
        non_neg("`init_std`", hp.init_std)?;
        if self.epochs == 0 {
            // No epoch would leave the initial tables, which are no model.
            return Err(Error::arg("`epochs`", "0", "must be at least 1"));
        }
        if self.epochs > MAX_EPOCHS {
            return Err(Error::arg("`epochs`", self.epochs.to_string(), format!("must be at most {MAX_EPOCHS}")));
        }
        if hp.rank == 0 || hp.rank > crate::model::MAX_RANK {
            return Err(Error::arg(
                "`rank`",
                hp.rank.to_string(),
                format!("must be between 1 and {}", crate::model::MAX_RANK),
            ));
        }
        if let BatchRequest::Fixed(n) = self.batch
            && !(1..=1 << 20).contains(&n)
        {
            return Err(Error::arg("`batch`", n.to_string(), "must be a whole number between 1 and 1048576"));
        }
        let threads = self.backend.threads;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 0 {
            return Err(Error::arg("`threads`", "0", "must be at least 1"));
        }
        if cfg!(target_arch = "wasm32") && threads > 1 {
            return Err(Error::arg(
                "`threads`",
                threads.to_string(),
                "must be 1 in the browser, which runs no threads",
            ));
        }
        if threads > MAX_THREADS_PER_CORE * cores {
            return Err(Error::arg(
                "`threads`",
                threads.to_string(),
                format!(
                    "must be at most {} ({MAX_THREADS_PER_CORE} per core on this machine's {cores})",
                    MAX_THREADS_PER_CORE * cores
                ),
            ));
        }
        if self.co_partition_visits == 0 {
            return Err(Error::arg("`co_partition_visits`", "0", "must be at least 1"));
        }
        self.tune.validate()?;
        let candidates = self.tune.candidates(hp, &self.grid).len();
        if candidates > MAX_GRID {
            return Err(Error::arg(
                "`lr` × `reg`",
                candidates.to_string(),
                format!("at most {MAX_GRID} settings are chosen among in one run"),
            ));
        }
        self.order.check_co_partition(self.co_partition.is_some())
    }
}

/// A run resolved against its data and adapter: ready to train.
pub struct ResolvedRun {
    pub settings: TrainSettings,
    pub opened: Opened,
    /// The planner's plan, for [`BatchRequest::Auto`] on a GPU.
    pub plan: Option<Plan>,
    /// Hogwild on a GPU (the shuffled order, not deterministic): how many
    /// ratings update at once.
    pub at_once: Option<usize>,
    /// What to tell the user about the choices made, in order.
    pub notes: Vec<String>,
}

/// Resolves `spec` for `data`: chooses the batch (the planner's, or the
/// largest the budget holds), the co-partitioning (halving the batch until a
/// block fits where the batch was not fixed), opens the backend and chooses
/// the order for it.
pub fn resolve(data: &Dataset, spec: &RunSpec) -> Result<ResolvedRun> {
    spec.validate()?;
    let side = spec.co_partition.map(|s| s.resolve(data));
    let mut settings = spec.settings();
    let (mut notes, mut plan) = (Vec::new(), None);
    if spec.batch == BatchRequest::Auto {
        let (batch, p, planned) = auto_batch(data, &settings, &spec.backend, spec.calibration_cache, settings.batch)?;
        notes.extend(planned);
        // The planner chooses the batch only: the slab's split and its
        // traffic are the layout's (SCA's replay of this run), shown after.
        if let Some(p) = &p {
            notes.push(format!(
                "plan: batch {}, the throughput model's choice for this adapter's rates ({:.3e} ratings/s predicted)",
                p.batch, p.predicted_ratings_per_sec
            ));
        }
        notes.push(format!("`batch` auto: batch {batch}"));
        settings.batch = batch;
        plan = p;
    }
    settings.co_partition = fit_co_partition(data, &mut settings, spec, side)?;
    // From the data and the settings alone, before any backend is opened:
    // every backend trains this order.
    settings.order = resolve_order(data, &settings)?;
    if let Some(c) = settings.co_partition {
        let blocks = c.blocks(&data.train, data.users.len(), data.items.len());
        notes.push(format!(
            "co-partitioning by {}: {} blocks of at most {} rows, each visited {} time(s) per epoch and staged once per visit",
            c.side.name(),
            blocks.n_blocks,
            blocks.rows_per_block,
            c.visits
        ));
    }
    let opened = if spec.batch == BatchRequest::Default {
        let opened = open_backend_fitting(data, &mut settings, &spec.backend, 1, None)?;
        if settings.batch < DEFAULT_BATCH {
            notes.push(format!(
                "batch: {} ratings, the largest whose rows the budget holds (the default {DEFAULT_BATCH} does not fit; \
                 `batch` N asks for one)",
                settings.batch
            ));
        }
        opened
    } else {
        open_backend(data, &settings, &spec.backend)?
    };
    let at_once = match (&opened.adapter, settings.order) {
        (Some(adapter), Order::Shuffled) if !settings.deterministic => Some(
            spec.backend.hogwild_width.resolve(adapter).map_or(settings.batch, |w| (w as usize).min(settings.batch)),
        ),
        _ => None,
    };
    Ok(ResolvedRun { settings, opened, plan, at_once, notes })
}

/// The co-partitioning of `side` for the budget: without a fixed batch the
/// batch halves until a block fits beside one.
fn fit_co_partition(
    data: &Dataset,
    settings: &mut TrainSettings,
    spec: &RunSpec,
    side: Option<Side>,
) -> Result<Option<CoPartition>> {
    loop {
        let c = co_partition_for(
            data,
            settings.hp.rank,
            settings.copies(),
            settings.batch,
            spec.backend.device_memory,
            side,
            spec.co_partition_visits,
        );
        match (side, c) {
            (Some(_), None) if spec.batch == BatchRequest::Default && settings.batch > 1 => settings.batch /= 2,
            (Some(s), None) => {
                return Err(Error::arg(
                    "`co_partition`",
                    s.name(),
                    format!(
                        "the budget leaves no room for a block beside a batch of {} ratings; use a larger `device_memory`{}",
                        settings.batch,
                        if settings.batch > 1 { " or a smaller `batch`" } else { "" }
                    ),
                ));
            }
            (_, c) => return Ok(c),
        }
    }
}

/// A run's configuration as its report and saved model record it: what was
/// asked for, what it resolved to, and where the data came from.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub rank: usize,
    /// The setting kept (a grid search's best).
    pub lr: f32,
    pub reg: f32,
    pub grid: Vec<Setting>,
    pub bias_reg: f32,
    pub decay: f32,
    pub init_std: f32,
    pub epochs: usize,
    pub batch: usize,
    pub batch_requested: Option<String>,
    pub plan: Option<Plan>,
    pub seed: u64,
    pub deterministic: bool,
    pub order: String,
    /// Whether the order trains the same model on every backend, thread
    /// count and budget ([`Order::is_device_independent`]).
    pub order_device_independent: bool,
    pub backend: String,
    /// The noop backend: a host ceiling, no model.
    pub ceiling: bool,
    pub backend_requested: &'static str,
    pub adapter: String,
    pub wgpu_version: &'static str,
    pub device_memory: String,
    pub device_memory_bytes: Option<u64>,
    pub slots: Option<u32>,
    pub resident_slots: Option<u32>,
    pub cache_slots: Option<u32>,
    pub staging_slots: Option<u32>,
    pub lookahead: usize,
    pub co_partition: Option<CoPartition>,
    pub block_slots: Option<u32>,
    pub row_bytes: Option<u64>,
    pub policy: &'static str,
    pub threads: usize,
    /// `off`, `rotate` or `server`, and the MPI ranks the run spanned (1
    /// for one process).
    pub distributed: &'static str,
    pub ranks: usize,
    /// `server`: each rank's cache of served rows as asked for, and the
    /// staleness bound in clocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staleness: Option<u32>,
    pub hogwild_width: Option<usize>,
    pub hogwild_width_requested: String,
    #[serde(flatten)]
    pub source: SourceJson,
}

impl RunConfig {
    /// The configuration of `run`, asked for as `spec`, from data `source`,
    /// as it ended (`outcome`).
    pub fn of(spec: &RunSpec, run: &ResolvedRun, outcome: &TrainOutcome, source: SourceJson) -> Self {
        let (s, layout, backend) = (&run.settings, run.opened.layout.as_ref(), run.opened.backend.as_ref());
        let kept = outcome.settings[outcome.best_setting];
        let b = &spec.backend;
        RunConfig {
            rank: s.hp.rank,
            lr: kept.lr,
            reg: kept.reg,
            grid: s.grid.clone(),
            bias_reg: s.hp.bias_reg,
            decay: s.hp.decay,
            init_std: s.hp.init_std,
            epochs: spec.epochs,
            batch: s.batch,
            batch_requested: spec.batch.requested(),
            plan: run.plan.clone(),
            seed: spec.seed,
            deterministic: spec.deterministic,
            order: outcome.order.name(),
            order_device_independent: outcome.order.is_device_independent(spec.deterministic),
            backend: backend.kind(),
            ceiling: backend.is_ceiling(),
            backend_requested: b.backend.name(),
            adapter: backend.adapter(),
            wgpu_version: crate::gpu::WGPU_VERSION,
            device_memory: b.device_memory.map_or("auto".into(), |m| m.to_string()),
            device_memory_bytes: layout.map(|l| l.slab_bytes),
            slots: layout.map(|l| l.slots),
            resident_slots: layout.map(|l| l.areas.resident),
            cache_slots: layout.map(|l| l.areas.cache),
            staging_slots: layout.map(|l| l.areas.staging),
            lookahead: b.lookahead,
            co_partition: s.co_partition,
            block_slots: layout.map(|l| l.block_slots),
            row_bytes: layout.map(|l| l.row_bytes),
            policy: b.policy.name(),
            threads: b.threads,
            distributed: crate::Named::name(b.distributed),
            ranks: backend.ranks(),
            cache: (b.distributed == super::setup::Distributed::Server).then(|| b.cache_budget().to_string()),
            staleness: (b.distributed == super::setup::Distributed::Server).then_some(b.staleness),
            hogwild_width: run.at_once,
            hogwild_width_requested: b.hogwild_width.name(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::BackendChoice;

    fn spec() -> RunSpec {
        RunSpec {
            hp: HyperParams { rank: 4, ..HyperParams::default() },
            epochs: 1,
            seed: 1,
            backend: BackendSpec { backend: BackendChoice::Cpu, threads: 1, ..BackendSpec::default() },
            ..RunSpec::default()
        }
    }

    #[test]
    fn bad_settings_name_their_parameter() {
        type Spoil = fn(&mut RunSpec);
        let cases: [(&str, Spoil); 9] = [
            ("`rank`", |s| s.hp.rank = 0),
            ("`lr`", |s| s.hp.lr = 0.0),
            ("`reg`", |s| s.grid = vec![Setting { lr: 0.1, reg: -1.0 }]),
            ("`bias_reg`", |s| s.hp.bias_reg = f32::NAN),
            ("`decay`", |s| s.hp.decay = -1.0),
            ("`init_std`", |s| s.hp.init_std = f32::INFINITY),
            ("`batch`", |s| s.batch = BatchRequest::Fixed(0)),
            ("`threads`", |s| s.backend.threads = 0),
            ("`co_partition_visits`", |s| s.co_partition_visits = 0),
        ];
        for (name, spoil) in cases {
            let mut s = spec();
            spoil(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
        spec().validate().unwrap();
    }

    #[test]
    fn a_cpu_run_resolves_to_the_default_batch_and_the_blocked_order() {
        let data = crate::data::DataSource {
            synthetic: crate::data::SyntheticSpec { users: 60, items: 40, ratings: 2000, zipf: None },
            ..Default::default()
        }
        .load(1)
        .unwrap()
        .dataset;
        let run = resolve(&data, &spec()).unwrap();
        assert_eq!(run.settings.batch, DEFAULT_BATCH);
        assert!(matches!(run.settings.order, Order::Blocked { .. }), "{:?}", run.settings.order);
        assert!(run.at_once.is_none() && run.plan.is_none() && run.notes.is_empty());
        let mut co = spec();
        co.co_partition = Some(SideRequest::Larger);
        co.order = Order::Blocked { bins: 0, sweeps: 0, tile: 0 };
        let e = resolve(&data, &co).err().expect("blocked with co-partitioning is refused");
        assert!(e.to_string().contains("`co_partition`"), "{e}");
    }
}
