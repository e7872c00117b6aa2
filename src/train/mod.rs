//! The training loop shared by every backend: the run's layout and epoch
//! plans ([`crate::engine::order`]), the learning-rate schedule, evaluation
//! after every epoch, and the per-epoch report.
//!
//! Every epoch's order comes from `(seed, epoch)` alone, so every backend
//! sees the same order and a run can resume at any part boundary.
//!
//! Deterministic mode (docs/ARCHITECTURE.md, "Schedules") applies the updates in exactly that
//! sequential order: the CPU reference walks it one rating at a time; the GPU
//! splits each part into conflict-free waves that preserve the order of any
//! two ratings sharing a row, so both end with the same model up to f32
//! rounding, whatever the staging policy and budget.

pub mod checkpoint;
pub mod cpu;
pub mod plan;
pub mod run;
mod setup;

pub use setup::{
    BackendSpec, Opened, Planned, auto_batch, co_partition_for, fit_batch, gpu_setup, open_backend,
    open_backend_fitting, open_backend_on, plan_budget, table_bytes,
};

pub use run::{BatchRequest, ResolvedRun, RunConfig, RunSpec, SideRequest, resolve};

pub use crate::engine::{Backend, EpochInput, EpochTrain, Order, Prediction};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::engine::{EpochPlan, LayoutSpec, RunLayout, Target};
use crate::error::{Error, Result};
use crate::model::{HyperParams, Metrics, Model, Setting, row_stride};
use crate::stage::Ledger;
use crate::stage::copartition::CoPartition;

/// The index of the lowest of `rmses` (the first of equals; 0 when empty).
fn lowest(rmses: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::INFINITY);
    for (g, r) in rmses.enumerate() {
        if r < best.1 {
            best = (g, r);
        }
    }
    best.0
}

/// Settings of one training run (everything but the backend choice, which the
/// caller resolves into a [`Backend`]).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSettings {
    /// The hyperparameters; `lr` and `reg` are ignored when `grid` is not empty.
    pub hp: HyperParams,
    /// Grid search in one run: these (η₀, λ) settings train side by side, one
    /// slot of the device holding every setting's copy of a row. Empty: the
    /// one setting of `hp`.
    pub grid: Vec<Setting>,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub deterministic: bool,
    /// Co-partitioning (the epoch order goes block by block); `None` for a
    /// plain shuffled order.
    pub co_partition: Option<CoPartition>,
    /// The epoch order ([`Order::Auto`]: the fastest that fits the backend).
    pub order: Order,
}

impl TrainSettings {
    /// The settings trained side by side: the grid, or `hp`'s alone.
    pub fn settings(&self) -> Vec<Setting> {
        if self.grid.is_empty() { vec![Setting { lr: self.hp.lr, reg: self.hp.reg }] } else { self.grid.clone() }
    }

    /// Models side by side in every row.
    pub fn copies(&self) -> usize {
        self.grid.len().max(1)
    }

    /// Bytes of one row of the tables as staged: every model's copy.
    pub fn row_bytes(&self) -> u64 {
        (row_stride(self.hp.rank) * 4 * self.copies()) as u64
    }

    /// Bytes of both tables with every model's copies.
    pub fn table_bytes(&self, data: &Dataset) -> u64 {
        (data.users.len() + data.items.len()) as u64 * self.row_bytes()
    }

    /// What the run's layout is made from; `order` must be resolved.
    pub fn layout_spec(&self) -> LayoutSpec {
        LayoutSpec { seed: self.seed, batch: self.batch, order: self.order, co_partition: self.co_partition }
    }

    /// The run's layout of `data` in its order resolved ([`resolve_order`]),
    /// built on `threads` threads (the layout does not depend on how many).
    pub fn layout(&self, data: &Dataset, threads: usize) -> Result<RunLayout> {
        let spec = LayoutSpec { order: resolve_order(data, self)?, ..self.layout_spec() };
        RunLayout::new(&data.train, data.users.len(), data.items.len(), spec, threads)
    }
}

/// One epoch's figures for one setting of a grid search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingEpoch {
    pub lr: f32,
    pub reg: f32,
    pub train_rmse: f64,
    pub test_rmse: f64,
    pub test_mae: f64,
}

/// One epoch's figures, as printed and reported. In a grid search the RMSE
/// figures and `lr` are those of the epoch's best setting (lowest test RMSE),
/// and `grid` holds every setting's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub lr: f32,
    /// Ratings trained in this run's pass (fewer than the training set when
    /// the epoch was resumed from a mid-epoch checkpoint).
    pub ratings: usize,
    /// See [`EpochTrain::conflicts`].
    pub conflicts: u64,
    pub train_rmse: f64,
    pub test_rmse: f64,
    pub test_mae: f64,
    /// Training time: making the epoch's plan and the pass over it (the
    /// first epoch also carries laying the run out, unless the backend was
    /// built with its layout); evaluation excluded.
    pub seconds: f64,
    /// See [`EpochTrain::host_seconds`], [`EpochTrain::device_seconds`];
    /// the host's seconds also count making the next epoch's plan.
    #[serde(default)]
    pub host_seconds: f64,
    #[serde(default)]
    pub device_seconds: Option<f64>,
    /// The evaluation after the epoch (wall time, not in `seconds`): under a
    /// budget it stages the test ratings' rows, and may cost more than the
    /// training.
    #[serde(default)]
    pub eval_seconds: f64,
    /// Device dispatches of the epoch's training (0 on the CPU).
    #[serde(default)]
    pub dispatches: u64,
    /// Workers that trained at once on average ([`EpochTrain::workers`]).
    #[serde(default)]
    pub workers: f64,
    pub ratings_per_sec: f64,
    pub ledger: Ledger,
    /// The cost model's training traffic for this epoch, where the policy has
    /// one (`sca`): rows in, rows out, and their bytes host→device.
    pub predicted_rows_in: Option<f64>,
    pub predicted_rows_out: Option<f64>,
    pub predicted_bytes_h2d: Option<f64>,
    /// Every setting's figures, in the order of [`TrainSettings::settings`]
    /// (empty outside a grid search).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grid: Vec<SettingEpoch>,
}

impl EpochReport {
    /// What bounded the epoch: `device` when the device's passes took longer
    /// than the host's own work (so the host waited for the device), `host`
    /// otherwise; `None` where there is no device time (CPU backends, and
    /// adapters without timestamp queries).
    pub fn bound(&self) -> Option<&'static str> {
        self.device_seconds.map(|d| if d > self.host_seconds { "device" } else { "host" })
    }
}

/// How a run is steered beyond its settings: interruption, checkpoints,
/// resuming, early stopping.
#[derive(Default)]
pub struct RunControl<'a> {
    /// Raised (e.g. by a SIGINT handler) to stop at the next batch boundary.
    pub stop: Option<&'a AtomicBool>,
    /// Write a checkpoint into this directory after every epoch and when
    /// stopped.
    pub checkpoint: Option<&'a Path>,
    /// Continue from this checkpoint (its fingerprint must match the run).
    pub resume: Option<checkpoint::Checkpoint>,
    /// Stop when test RMSE has not improved for this many epochs; the best
    /// epoch's model is kept.
    pub patience: Option<usize>,
}

/// The result of [`train`].
pub struct TrainOutcome {
    /// The epoch order the run took ([`Order::Auto`] resolved).
    pub order: Order,
    /// The final model: the best epoch's under `--patience`; in a grid search
    /// the best setting's alone.
    pub model: Model,
    /// The settings trained (one outside a grid search) and the index of the
    /// one kept: the lowest test RMSE at the last epoch, or at the best epoch
    /// under `--patience`.
    pub settings: Vec<Setting>,
    pub best_setting: usize,
    /// Every complete epoch of the run, resumed ones included.
    pub epochs: Vec<EpochReport>,
    pub final_metrics: Metrics,
    /// Training ratings per second over all epochs (evaluation excluded).
    pub ratings_per_sec: f64,
    /// False when the stop flag ended the run before its last epoch.
    pub complete: bool,
    /// The epoch (1-based) whose model was kept, under `--patience`.
    pub best_epoch: Option<usize>,
    /// True when `--patience` ended the run before its last epoch.
    pub stopped_early: bool,
    /// The last checkpoint written, if any.
    pub checkpoint: Option<std::path::PathBuf>,
    /// The error of an epoch whose loss came out non-finite: the run stopped
    /// there (`complete` false) and its model is not worth keeping.
    pub diverged: Option<Error>,
}

/// Ratings per part of the shuffled order when `--batch` is not given.
pub const DEFAULT_BATCH: usize = 2048;

/// The order a run of `settings` takes: `settings.order` resolved from the
/// data and the settings alone ([`Order::resolve`]), the same on every
/// backend, thread count and budget.
pub fn resolve_order(data: &Dataset, settings: &TrainSettings) -> Result<Order> {
    settings.order.resolve(&Target::of(data, settings.hp.rank, settings.co_partition.is_some()))
}

/// The layout a run of `settings` (order resolved) trains on with
/// `backend`: the one it was built for, or a new one.
fn run_layout(data: &Dataset, settings: &TrainSettings, backend: &dyn Backend) -> Result<Arc<RunLayout>> {
    match backend.run_layout() {
        Some(l) if *l.spec() == settings.layout_spec() => Ok(l),
        Some(l) => Err(Error::arg(
            "`order`",
            settings.order.name(),
            format!(
                "the backend was opened for another layout of the ratings (order `{}`, batch {}, seed {}), \
                 this run asks for order `{}`, batch {}, seed {}",
                l.spec().order.name(),
                l.spec().batch,
                l.spec().seed,
                settings.order.name(),
                settings.batch,
                settings.seed
            ),
        )),
        None => Ok(Arc::new(settings.layout(data, backend.parallelism())?)),
    }
}

/// Trains `data` with `backend`, calling `on_epoch` after each epoch: a
/// fresh model, or the one in `control.resume` from where it stopped.
pub fn train(
    data: &Dataset,
    settings: &TrainSettings,
    backend: &mut dyn Backend,
    control: RunControl,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<TrainOutcome> {
    let order = resolve_order(data, settings)?;
    let settings = &TrainSettings { order, ..settings.clone() };
    let fingerprint = checkpoint::Fingerprint::of(data, settings);
    let (mut model, mut state, mut best_model) = match control.resume {
        Some(c) => {
            c.state.fingerprint.check(&fingerprint, &c.path)?;
            (c.model, c.state, c.best_model)
        }
        None => (
            Model::init_copies(data, &settings.hp, settings.seed, settings.copies()),
            checkpoint::RunState::new(fingerprint, 0.0),
            None,
        ),
    };
    let grid = settings.settings();
    let never = AtomicBool::new(false);
    let stop = control.stop.unwrap_or(&never);
    // Laying the run out is part of training: its time counts into the
    // first epoch's seconds.
    let setup = Instant::now();
    let layout = run_layout(data, settings, backend)?;
    let mut setup_seconds = setup.elapsed().as_secs_f64();
    let mut complete = true;
    let mut stopped_early = false;
    let mut diverged_at = None;
    let mut written = None;
    let mut save = |state: &checkpoint::RunState, model: &Model, best: Option<&Model>| -> Result<()> {
        if let Some(dir) = control.checkpoint {
            written = Some(checkpoint::save_checkpoint(dir, state, model, best)?);
        }
        Ok(())
    };
    // The host tables must be authoritative after an epoch whose model is
    // copied (checkpoint, best epoch), and at the end.
    let sync_every_epoch = control.checkpoint.is_some() || control.patience.is_some();
    let mut plan = None;
    let mut spare: Option<EpochPlan> = None;
    while state.epoch < settings.epochs {
        let epoch = state.epoch;
        let rates = settings.hp.rates_at(&grid, epoch);
        state.lr = rates[0].lr;
        let t0 = Instant::now();
        // A backend that derives the order itself gets no plan, unless the
        // epoch resumes inside (its position is found in the plan).
        let needs_plan = backend.needs_plan(&layout);
        let this = match plan.take() {
            Some(p) => p,
            None if needs_plan || state.position > 0 => layout.epoch(epoch),
            None => EpochPlan::default(),
        };
        // The plan two epochs back lends its buffers to the next one. Making
        // it is the host's work too (see `host_seconds`).
        let t_plan = Instant::now();
        let following = (needs_plan && epoch + 1 < settings.epochs).then(|| {
            let mut next = spare.take().unwrap_or_default();
            layout.epoch_into(epoch + 1, &mut next);
            next
        });
        let plan_seconds = t_plan.elapsed().as_secs_f64();
        let from = if this.parts.is_empty() { 0 } else { this.part_at(&layout, state.position)? };
        let input = EpochInput {
            epoch,
            layout: &layout,
            plan: &this,
            from,
            following: following.as_ref(),
            rates: &rates,
            stop,
        };
        let mut out = backend.train_epoch(&mut model, &input)?;
        let seconds = t0.elapsed().as_secs_f64() + std::mem::take(&mut setup_seconds);
        state.train_seconds += seconds;
        let left = if this.parts.is_empty() { layout.ratings().len() } else { this.ratings_from(&layout, from) };
        plan = following;
        spare = Some(this);
        if out.done < left {
            // Stopped mid-epoch: make the host authoritative, remember where.
            out.ledger.merge(&backend.finish(&mut model)?);
            state.partial_ledger.merge(&out.ledger);
            state.position += out.done;
            complete = false;
            save(&state, &model, best_model.as_ref())?;
            break;
        }
        let t_eval = Instant::now();
        let (tests, eval_ledger) = backend.evaluate(&model, &data.test)?;
        let eval_seconds = t_eval.elapsed().as_secs_f64();
        out.ledger.merge(&eval_ledger);
        let g = lowest(tests.iter().map(|t| t.rmse));
        let test = tests[g];
        let train_rmse = |g: usize| (out.sse.get(g).copied().unwrap_or(0.0) / out.count.max(1) as f64).sqrt();
        let last = epoch + 1 == settings.epochs;
        if last || sync_every_epoch {
            out.ledger.merge(&backend.finish(&mut model)?);
        }
        let mut ledger = std::mem::take(&mut state.partial_ledger);
        ledger.merge(&out.ledger);
        let mut report = EpochReport {
            epoch: epoch + 1,
            lr: rates[g].lr,
            ratings: out.done,
            conflicts: out.conflicts,
            train_rmse: train_rmse(g),
            test_rmse: test.rmse,
            test_mae: test.mae,
            seconds,
            host_seconds: out.host_seconds + plan_seconds,
            device_seconds: out.device_seconds,
            eval_seconds,
            dispatches: out.dispatches,
            workers: out.workers,
            ratings_per_sec: out.done as f64 / seconds.max(1e-9),
            ledger,
            predicted_rows_in: None,
            predicted_rows_out: None,
            predicted_bytes_h2d: None,
            grid: if grid.len() > 1 {
                (0..grid.len())
                    .map(|g| SettingEpoch {
                        lr: rates[g].lr,
                        reg: rates[g].reg,
                        train_rmse: train_rmse(g),
                        test_rmse: tests[g].rmse,
                        test_mae: tests[g].mae,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        };
        if let Some(p) = backend.prediction() {
            let first = if epoch == 0 { p.resident as f64 + p.cold } else { 0.0 };
            let last = if last { p.resident as f64 } else { 0.0 };
            report.predicted_rows_in = Some(p.rows_per_epoch + first);
            report.predicted_rows_out = Some(p.rows_per_epoch + last);
            report.predicted_bytes_h2d = Some((p.rows_per_epoch + first) * p.row_bytes as f64);
        }
        if let Some(patience) = control.patience {
            if state.best.is_none_or(|b| test.rmse < b.test_rmse) {
                state.best = Some(checkpoint::Best { epoch: epoch + 1, test_rmse: test.rmse, setting: g });
                state.since_best = 0;
                best_model = Some(model.clone());
            } else {
                state.since_best += 1;
            }
            stopped_early = state.since_best >= patience && !last;
        }
        // A non-finite loss (a learning rate too large for the ratings'
        // scale) only gets worse: stop here, keep no model of it.
        let finite = report.train_rmse.is_finite() && report.test_rmse.is_finite();
        let diverged = !finite && !backend.is_ceiling();
        if diverged {
            diverged_at =
                Some(Error::Diverged { epoch: epoch + 1, train_rmse: report.train_rmse, test_rmse: report.test_rmse });
            complete = false;
            on_epoch(&report);
            state.epochs.push(report);
            break;
        }
        on_epoch(&report);
        state.epochs.push(report);
        state.epoch += 1;
        state.position = 0;
        state.lr = settings.hp.rates_at(&grid, state.epoch)[0].lr;
        save(&state, &model, best_model.as_ref())?;
        if stopped_early {
            break;
        }
    }
    if state.epochs.is_empty() && complete {
        backend.finish(&mut model)?;
    }
    let best_epoch = state.best.map(|b| b.epoch);
    // The setting kept: the best epoch's best, or the last epoch's best.
    let mut best_setting = match state.epochs.last() {
        Some(e) if !e.grid.is_empty() => lowest(e.grid.iter().map(|x| x.test_rmse)),
        _ => 0,
    };
    if let Some(best) = best_model
        && complete
    {
        model = best;
        best_setting = state.best.map_or(0, |b| b.setting);
    }
    if model.copies > 1 {
        model = model.copy(best_setting.min(model.copies - 1));
    }
    let final_metrics = model.evaluate(&data.test);
    let trained: usize = state.epochs.iter().map(|e| e.ratings).sum();
    Ok(TrainOutcome {
        order,
        settings: grid,
        best_setting,
        ratings_per_sec: trained as f64 / state.train_seconds.max(1e-9),
        model,
        epochs: state.epochs,
        final_metrics,
        complete,
        best_epoch,
        stopped_early,
        checkpoint: written,
        diverged: diverged_at,
    })
}
