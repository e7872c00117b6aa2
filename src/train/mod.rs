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
pub mod request;
pub mod run;
mod setup;
pub mod tune;

pub use setup::{
    AUTO_SHARE, BackendSpec, DEFAULT_RANK_TIMEOUT, DEFAULT_STALENESS, Distributed, Opened, Planned, auto_batch,
    check_distributed, co_partition_for, fit_batch, gpu_setup, open_backend, open_backend_fitting, open_backend_on,
    plan_budget, table_bytes,
};

pub use request::{CancelToken, RunRequest};
pub use run::{BatchRequest, MAX_EPOCHS, ResolvedRun, RunConfig, RunSpec, SideRequest, number_list, resolve};

pub use crate::engine::{Backend, EpochInput, EpochTrain, Order, Prediction};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use web_time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::engine::{EpochPlan, LayoutSpec, RunLayout, Target};
use crate::error::{Error, Result};
use crate::model::{HyperParams, Metrics, Model, Setting, row_stride};
use crate::stage::Ledger;
use crate::stage::copartition::CoPartition;

/// How much lower an RMSE must be to count as better when settings and
/// epochs are compared. Two devices score the same model within f32
/// rounding (about 1e-7 here); a margin well above that keeps a choice
/// between near-equal candidates the same on every device.
pub const BETTER_BY: f64 = 1e-6;

/// Whether RMSE `a` is better than `b` by more than [`BETTER_BY`].
fn better(a: f64, b: f64) -> bool {
    a < b - BETTER_BY
}

/// The index of the lowest of `rmses` (the first of those within
/// [`BETTER_BY`] of each other; 0 when empty).
fn lowest(rmses: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::INFINITY);
    for (g, r) in rmses.enumerate() {
        if better(r, best.1) {
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
    /// Bytes handed to MPI per rank, counted and predicted (runs across
    /// ranks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire: Option<crate::engine::Wire>,
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
/// fresh model, or the one in `control.resume` from where it stopped. The
/// loop of [`Training`], which a caller may also drive an epoch at a time.
pub fn train(
    data: &Dataset,
    settings: &TrainSettings,
    backend: &mut dyn Backend,
    control: RunControl,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<TrainOutcome> {
    let never = AtomicBool::new(false);
    let stop = control.stop.unwrap_or(&never);
    let mut training = Training::start(data, settings, backend, control)?;
    while let Some(report) = training.step(data, backend, stop)? {
        on_epoch(&report);
    }
    training.finish(data, backend)
}

/// A run's training between epochs: [`Training::step`] trains the next
/// epoch, [`Training::finish`] makes the outcome. It holds no borrow of the
/// data or the backend, so that whoever owns them (a command line, a
/// browser's event loop) can drive it an epoch at a time.
pub struct Training {
    /// The settings with their order resolved.
    settings: TrainSettings,
    grid: Vec<Setting>,
    model: Model,
    state: checkpoint::RunState,
    best_model: Option<Model>,
    layout: Arc<RunLayout>,
    /// Laying the run out, counted into the first epoch's seconds.
    setup_seconds: f64,
    checkpoint: Option<PathBuf>,
    patience: Option<usize>,
    /// The plan of the epoch after the one trained last, and a spare plan
    /// whose buffers the next one reuses.
    plan: Option<EpochPlan>,
    spare: Option<EpochPlan>,
    complete: bool,
    stopped_early: bool,
    diverged: Option<Error>,
    written: Option<PathBuf>,
    /// No epoch is left to train (the last done, a stop, early stopping, a
    /// divergence).
    ended: bool,
    /// Ratings of the epoch in training done so far ([`EpochInput::progress`]).
    progress: Arc<AtomicUsize>,
}

impl Training {
    /// Starts (or resumes, `control.resume`) training `settings` on `data`
    /// with `backend`: the model, the layout, the state. `control.stop` is
    /// not kept: each [`Training::step`] is given its own.
    pub fn start(
        data: &Dataset,
        settings: &TrainSettings,
        backend: &mut dyn Backend,
        control: RunControl,
    ) -> Result<Self> {
        let order = resolve_order(data, settings)?;
        let settings = TrainSettings { order, ..settings.clone() };
        let fingerprint = checkpoint::Fingerprint::of(data, &settings);
        let (model, state, best_model) = match control.resume {
            Some(c) => {
                c.state.fingerprint.check(&fingerprint, &c.path)?;
                if c.state.backend == "noop" {
                    return Err(Error::BadModel {
                        path: c.path.clone(),
                        what: "checkpoint",
                        reason: "the noop backend made it: its tables are no model to continue".into(),
                    });
                }
                (c.model, c.state, c.best_model)
            }
            None => (
                {
                    // The tables (and a grid's copies), asked for first.
                    let bytes = settings.table_bytes(data).saturating_mul(2);
                    let what = format!(
                        "the tables of {} users and {} items at rank {}",
                        data.users.len(),
                        data.items.len(),
                        settings.hp.rank
                    );
                    Error::ensure_memory(bytes, &what, "`rank`", settings.hp.rank.to_string())?;
                    Model::init_copies(data, &settings.hp, settings.seed, settings.copies())
                },
                checkpoint::RunState { backend: backend.kind(), ..checkpoint::RunState::new(fingerprint, 0.0) },
                None,
            ),
        };
        let setup = Instant::now();
        let layout = run_layout(data, &settings, backend)?;
        Ok(Training {
            grid: settings.settings(),
            ended: state.epoch >= settings.epochs,
            settings,
            model,
            state,
            best_model,
            layout,
            setup_seconds: setup.elapsed().as_secs_f64(),
            checkpoint: control.checkpoint.map(Path::to_path_buf),
            patience: control.patience,
            plan: None,
            spare: None,
            complete: true,
            stopped_early: false,
            diverged: None,
            written: None,
            progress: Arc::default(),
        })
    }

    /// The count of ratings the epoch in training has done so far, to read
    /// from another thread while [`Training::step`] runs.
    pub fn progress(&self) -> Arc<AtomicUsize> {
        self.progress.clone()
    }

    /// The settings trained, their order resolved.
    pub fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    /// The run's training ratings as it lays them out.
    pub fn layout(&self) -> &RunLayout {
        &self.layout
    }

    /// Epochs complete so far (resumed ones included).
    pub fn epochs_done(&self) -> usize {
        self.state.epoch
    }

    /// Records that the run's settings and epochs were chosen on the data,
    /// so that a checkpoint resumes them (`epochs`: the count kept).
    pub fn record_choice(&mut self, epochs: usize) {
        self.state.chosen_epochs = Some(epochs);
    }

    /// The reports of the epochs complete so far.
    pub fn epochs(&self) -> &[EpochReport] {
        &self.state.epochs
    }

    /// Under patience, the epoch and setting of the lowest test RMSE so far.
    pub fn best(&self) -> Option<checkpoint::Best> {
        self.state.best
    }

    /// Whether patience ended the run before its last epoch.
    pub fn stopped_early(&self) -> bool {
        self.stopped_early
    }

    /// False once a stop or a divergence has ended the run part-way.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    fn save(&mut self, backend: &mut dyn Backend) -> Result<()> {
        let Some(dir) = &self.checkpoint else { return Ok(()) };
        let ranks = backend.ranks();
        if ranks == 1 {
            self.written = Some(checkpoint::save_checkpoint(dir, &self.state, &self.model, self.best_model.as_ref())?);
            return Ok(());
        }
        // Across MPI ranks: every rank its share, then rank 0 the manifest
        // once all are written, then each rank's older shares removed.
        let (rank, best) = (backend.rank(), self.best_model.as_ref());
        let share = checkpoint::save_share(dir, &self.state, &self.model, best, (rank, ranks));
        let failed = |votes: Vec<bool>, what: &str| -> Result<()> {
            let ranks: Vec<String> =
                votes.iter().enumerate().filter(|(k, ok)| !**ok && *k != rank).map(|(k, _)| k.to_string()).collect();
            if ranks.is_empty() {
                return Ok(());
            }
            Err(Error::Peer { ranks: ranks.join(", "), reason: format!("could not write {what}") })
        };
        let votes = backend.vote(share.is_ok())?;
        let share = share?;
        failed(votes, "its share of the checkpoint")?;
        let manifest = (rank == 0).then(|| checkpoint::save_manifest(dir, &self.state, &self.model, best, ranks));
        let votes = backend.vote(manifest.as_ref().is_none_or(|m| m.is_ok()))?;
        let manifest = manifest.transpose()?;
        failed(votes, "the checkpoint's manifest")?;
        checkpoint::remove_old_shares(dir, (rank, ranks), &share.file)?;
        self.written = Some(manifest.unwrap_or_else(|| checkpoint::manifest_path(dir)));
        Ok(())
    }

    /// Trains the next epoch and evaluates it: its report, or `None` when
    /// no epoch is left or `stop` ended this one part-way (the host tables
    /// made whole and the checkpoint written; the outcome then says
    /// `complete: false`).
    pub fn step(
        &mut self,
        data: &Dataset,
        backend: &mut dyn Backend,
        stop: &AtomicBool,
    ) -> Result<Option<EpochReport>> {
        if self.ended {
            return Ok(None);
        }
        let settings = &self.settings;
        let (layout, grid) = (self.layout.clone(), &self.grid);
        // The host tables must be authoritative after an epoch whose model
        // is copied (checkpoint, best epoch), and at the end.
        let sync_every_epoch = self.checkpoint.is_some() || self.patience.is_some();
        let epoch = self.state.epoch;
        let rates = settings.hp.rates_at(grid, epoch);
        self.state.lr = rates[0].lr;
        let t0 = Instant::now();
        // A backend that derives the order itself gets no plan, unless the
        // epoch resumes inside (its position is found in the plan).
        let needs_plan = backend.needs_plan(&layout);
        let this = match self.plan.take() {
            Some(p) => p,
            None if needs_plan || self.state.position > 0 => layout.epoch(epoch),
            None => EpochPlan::default(),
        };
        // The plan two epochs back lends its buffers to the next one. Making
        // it is the host's work too (see `host_seconds`).
        let t_plan = Instant::now();
        let following = (needs_plan && epoch + 1 < settings.epochs).then(|| {
            let mut next = self.spare.take().unwrap_or_default();
            layout.epoch_into(epoch + 1, &mut next);
            next
        });
        let plan_seconds = t_plan.elapsed().as_secs_f64();
        let from = if this.parts.is_empty() { 0 } else { this.part_at(&layout, self.state.position)? };
        self.progress.store(0, std::sync::atomic::Ordering::Relaxed);
        let input = EpochInput {
            epoch,
            layout: &layout,
            plan: &this,
            from,
            following: following.as_ref(),
            rates: &rates,
            stop,
            progress: &self.progress,
        };
        let mut out = backend.train_epoch(&mut self.model, &input)?;
        let seconds = t0.elapsed().as_secs_f64() + std::mem::take(&mut self.setup_seconds);
        self.state.train_seconds += seconds;
        let left = if this.parts.is_empty() { layout.ratings().len() } else { this.ratings_from(&layout, from) };
        self.plan = following;
        self.spare = Some(this);
        if out.done < left {
            // Stopped mid-epoch: make the host authoritative, remember where.
            out.ledger.merge(&backend.finish(&mut self.model)?);
            self.state.partial_ledger.merge(&out.ledger);
            self.state.position += out.done;
            self.complete = false;
            self.ended = true;
            self.save(backend)?;
            return Ok(None);
        }
        let t_eval = Instant::now();
        let (tests, eval_ledger) = backend.evaluate(&self.model, &data.test)?;
        let eval_seconds = t_eval.elapsed().as_secs_f64();
        out.ledger.merge(&eval_ledger);
        let g = lowest(tests.iter().map(|t| t.rmse));
        let test = tests[g];
        let train_rmse = |g: usize| (out.sse.get(g).copied().unwrap_or(0.0) / out.count.max(1) as f64).sqrt();
        let last = epoch + 1 == settings.epochs;
        if last || sync_every_epoch {
            out.ledger.merge(&backend.finish(&mut self.model)?);
        }
        let mut ledger = std::mem::take(&mut self.state.partial_ledger);
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
            wire: out.wire.take(),
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
            // The last epoch writes back what the slab holds: the resident
            // rows and the cached ones.
            let last = if last { (p.resident + p.cache) as f64 } else { 0.0 };
            report.predicted_rows_in = Some(p.rows_per_epoch + first);
            report.predicted_rows_out = Some(p.rows_per_epoch + last);
            report.predicted_bytes_h2d = Some((p.rows_per_epoch + first) * p.row_bytes as f64);
        }
        if let Some(patience) = self.patience {
            // Patience runs out when no setting has lowered its own test
            // RMSE for that many epochs: a slower setting that is still
            // improving may yet overtake the best so far.
            let each = &mut self.state.best_each;
            each.resize(tests.len(), f64::INFINITY);
            let mut improved = false;
            for (b, t) in each.iter_mut().zip(&tests) {
                if better(t.rmse, *b) {
                    *b = t.rmse;
                    improved = true;
                }
            }
            if self.state.best.is_none_or(|b| better(test.rmse, b.test_rmse)) {
                self.state.best = Some(checkpoint::Best { epoch: epoch + 1, test_rmse: test.rmse, setting: g });
                self.best_model = Some(self.model.clone());
            }
            self.state.since_best = if improved { 0 } else { self.state.since_best + 1 };
            self.stopped_early = self.state.since_best >= patience && !last;
        }
        // A non-finite loss (a learning rate too large for the ratings'
        // scale) only gets worse: stop here, keep no model of it.
        // NaN test figures with no test ratings are "nothing scored", not a
        // divergence.
        let finite = report.train_rmse.is_finite() && (data.test.is_empty() || report.test_rmse.is_finite());
        if !finite && !backend.is_ceiling() {
            self.diverged = Some(Error::Diverged {
                epoch: epoch + 1,
                train_rmse: report.train_rmse,
                test_rmse: report.test_rmse,
                also: backend.divergence_hint().map_or(String::new(), |h| format!(", {h}")),
            });
            self.complete = false;
            self.ended = true;
            self.state.epochs.push(report.clone());
            return Ok(Some(report));
        }
        self.state.epochs.push(report.clone());
        self.state.epoch += 1;
        self.state.position = 0;
        self.state.lr = settings.hp.rates_at(grid, self.state.epoch)[0].lr;
        self.ended = self.stopped_early || self.state.epoch >= settings.epochs;
        self.save(backend)?;
        Ok(Some(report))
    }

    /// The outcome: the model kept (the best epoch's under patience, the
    /// best setting's in a grid), scored on the test ratings.
    pub fn finish(self, data: &Dataset, backend: &mut dyn Backend) -> Result<TrainOutcome> {
        let Training {
            settings, grid, mut model, state, best_model, complete, stopped_early, written, diverged, ..
        } = self;
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
            order: settings.order,
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
            diverged,
        })
    }
}
