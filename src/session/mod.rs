//! The library's entry for a training run: [`Run`], built from a
//! [`RunRequest`] (its data read from a file or generated) or from a
//! [`Dataset`] already in memory, driven an epoch at a time or to the end,
//! stopped by its [`CancelToken`], and returning its report and model as
//! values ([`Finished`]). [`plan`] says what a run will do on a GPU before it
//! trains. Nothing here prints or reads a flag: the command line (and any
//! other front end) maps its own inputs to a [`RunRequest`] and shows what
//! comes back (docs/ARCHITECTURE.md, "The library's entry").
//!
//! It sits above [`crate::train`] and [`crate::report`]: it resolves and
//! trains through the first and describes the outcome with the second.

mod plan;
pub mod query;

pub use plan::{EpochWire, RunPlan, ServerWirePlan, WirePlan, plan, server_wire_plan, wire_plan, wire_plan_of};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use web_time::Instant;

use serde::Serialize;

use crate::data::{DataSource, Dataset};
use crate::error::{Error, Result};
use crate::model::{HyperParams, Setting};
use crate::report::{ChoiceJson, DatasetInfo, EpochJson, FinalJson, Report};
use crate::train::checkpoint::Checkpoint;
use crate::train::tune::{Choice, DEFAULT_PATIENCE, Tuning, distinct, refine_reg, validation_split};
use crate::train::{
    CancelToken, EpochReport, ResolvedRun, RunConfig, RunControl, RunRequest, RunSpec, TrainOutcome, Training, resolve,
};

/// What a run does besides training: checkpoints and resuming, of the
/// final model's training only. Choosing is not checkpointed: a run
/// stopped while choosing leaves no checkpoint, and run again it chooses
/// the same (the choice depends on the data, the flags and the seed).
#[derive(Default)]
pub struct RunOptions {
    /// Write a checkpoint here after every epoch and when stopped.
    pub checkpoint: Option<PathBuf>,
    /// Continue from this checkpoint.
    pub resume: Option<Checkpoint>,
}

/// Which part of a run an epoch belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The candidate settings side by side on the training ratings less the
    /// validation split; the epoch's "test" figures are the validation
    /// split's.
    Choosing,
    /// The model kept: the chosen setting on all the training ratings.
    Training,
}

impl Stage {
    /// As reports and front ends name it (its JSON): `choosing`, `training`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Choosing => "choosing",
            Stage::Training => "training",
        }
    }
}

/// How far a run is inside an epoch ([`Run::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub stage: Stage,
    /// The epoch in training, 1-based.
    pub epoch: usize,
    /// Its ratings trained so far.
    pub ratings: usize,
    pub ratings_per_epoch: usize,
}

/// A run's end: the trained model and its figures, and the report that
/// `train --json` writes (its `config` is what model files record).
pub struct Finished {
    pub outcome: TrainOutcome,
    pub report: Report,
}

impl Finished {
    /// The run's configuration, as reports and model files record it.
    pub fn config(&self) -> &RunConfig {
        &self.report.config
    }

    /// Writes the kept model with its configuration (safetensors).
    pub fn save_model(&self, path: &Path) -> Result<()> {
        crate::model::write_atomically(path, &self.model_bytes(path)?)
    }

    /// The file [`Finished::save_model`] writes, as bytes (`name` names it
    /// in errors): what a front end without files offers to download.
    pub fn model_bytes(&self, name: &Path) -> Result<Vec<u8>> {
        // What `train --save` refuses, every front end refuses: a model
        // whose loss went non-finite, or one cut off before its last epoch.
        let refused = |why: &str| Err(Error::io(name, std::io::Error::other(format!("not written: {why}"))));
        if let Some(e) = &self.outcome.diverged {
            return refused(&format!("training diverged ({e})"));
        }
        if !self.outcome.complete {
            return refused("the run was stopped before its last epoch");
        }
        let config = serde_json::to_value(self.config()).expect("a run's configuration serialises");
        crate::model::tables_bytes(name, crate::model::FileKind::Model, &self.outcome.model, None, &config)
    }
}

/// The choosing part of a run, while it lasts.
struct Choosing {
    /// The training ratings less the validation split, and the split as
    /// the test set.
    data: Dataset,
    started: Instant,
    patience: usize,
    /// The final training's options, used when choosing ends.
    options: RunOptions,
}

/// A training run, resolved and ready: [`Run::step`] trains an epoch
/// (choosing first, where the settings are chosen on the data),
/// [`Run::finish`] ends it.
pub struct Run {
    data: Dataset,
    request: RunRequest,
    /// Malformed lines the loader skipped.
    skipped_lines: usize,
    /// The loader's notes, then the resolver's.
    notes: Vec<String>,
    /// Some while the settings are being chosen.
    choosing: Option<Choosing>,
    /// What choosing kept, and its epochs (their figures the validation
    /// split's).
    choice: Option<(Choice, Vec<EpochReport>)>,
    /// The specification the current stage trains.
    spec: RunSpec,
    resolved: ResolvedRun,
    training: Training,
    cancel: CancelToken,
    /// Every global row's lookups per epoch, made for the first picture.
    lookups: Option<Vec<u32>>,
}

impl Run {
    /// Loads (or generates) the request's data, then builds the run as
    /// [`Run::new`] does.
    pub fn from_request(request: RunRequest, options: RunOptions) -> Result<Self> {
        let read = request.source.options;
        Self::from_request_with(request, options, &mut |p| crate::data::load_ratings(p, read))
    }

    /// [`Run::from_request`] with the request's files read by `read` (a
    /// front end holding their bytes parses them with
    /// [`crate::data::parse_ratings`]; see [`DataSource::load_with`]).
    pub fn from_request_with(
        request: RunRequest,
        options: RunOptions,
        read: &mut dyn FnMut(&Path) -> Result<(crate::data::RatingSet, crate::data::LoadReport)>,
    ) -> Result<Self> {
        request.spec.validate()?;
        let loaded = request.source.load_with(request.spec.seed, read)?;
        let mut run = Run::new(loaded.dataset, request.source, request.spec, options)?;
        run.skipped_lines = loaded.skipped;
        run.notes.splice(0..0, loaded.notes);
        Ok(run)
    }

    /// Resolves `spec` against `data` (the batch, the co-partitioning, the
    /// backend opened, the order) and starts training: choosing the
    /// settings where `spec.tune` asks (docs/ARCHITECTURE.md, "Choosing on
    /// the data"), else the model itself, fresh or `options.resume`'s.
    /// `source` is what reports say of where the data came from (a front end
    /// holding ratings in memory names them in its `path`).
    pub fn new(data: Dataset, source: DataSource, mut spec: RunSpec, options: RunOptions) -> Result<Self> {
        spec.validate()?;
        let request = RunRequest { source, spec: spec.clone() };
        // The batch cuts the order, so a resumed run keeps its checkpoint's
        // where the user does not ask for one, whatever the budget now (a
        // budget too small for it is then the error, named as such). So
        // does the order where the user leaves it to the run.
        let mut kept_batch = false;
        if let Some(c) = &options.resume {
            if spec.batch == crate::train::BatchRequest::Default {
                kept_batch = true;
                spec.batch = crate::train::BatchRequest::Fixed(c.state.fingerprint.batch);
            }
            if spec.order == crate::train::Order::Auto
                && let Ok(order) = crate::train::Order::parse(&c.state.fingerprint.order)
            {
                spec.order = order;
            }
        }
        // A resumed run continues its checkpoint's setting and never
        // chooses again: a step size or λ this run leaves to choosing (not
        // given, or listed) is the checkpoint's, and so are the epochs where
        // the checkpoint's run chose them. One given stands, and the
        // checkpoint's fingerprint refuses it by name where it differs.
        let resumed = options.resume.as_ref().map(|c| {
            let hp = c.state.fingerprint.hp;
            let listed = |f: fn(&Setting) -> f32| distinct(spec.grid.iter().map(f)).len() > 1;
            let lr = if spec.tune.lr || listed(|s| s.lr) { hp.lr } else { spec.hp.lr };
            let reg = if spec.tune.reg || listed(|s| s.reg) { hp.reg } else { spec.hp.reg };
            RunSpec {
                hp: HyperParams { lr, reg, ..spec.hp },
                grid: Vec::new(),
                epochs: c.state.chosen_epochs.unwrap_or(spec.epochs),
                ..spec.clone()
            }
        });
        let (options_resumed, spec_chose) = (resumed.is_some(), spec.tune.chooses(&spec.hp, &spec.grid));
        if let (Some(c), Some(r)) = (&options.resume, &resumed)
            && c.state.epoch > r.epochs
        {
            // Fewer epochs than the checkpoint has trained: no run ends there.
            return Err(Error::arg(
                "`epochs`",
                r.epochs.to_string(),
                format!(
                    "the checkpoint has {} epoch(s) trained already: give at least that many to resume it",
                    c.state.epoch
                ),
            ));
        }
        if options_resumed || !spec_chose {
            let chosen = options.resume.as_ref().and_then(|c| c.state.chosen_epochs);
            let stage_spec = RunSpec { tune: Tuning::OFF, ..resumed.unwrap_or(spec) };
            let (resolved, mut training) = start(&data, &stage_spec, options, None).map_err(|e| {
                if kept_batch { e.with_fix(" (the checkpoint's batch, which a resumed run keeps)") } else { e }
            })?;
            if let Some(epochs) = chosen {
                training.record_choice(epochs);
            }
            let mut notes = resolved.notes.clone();
            if let Some(epochs) = chosen {
                notes.push(format!(
                    "lr {} reg {} and {epochs} epoch(s): the checkpoint's choice (a resumed run continues it, it \
                     does not choose again)",
                    stage_spec.hp.lr, stage_spec.hp.reg
                ));
            } else if options_resumed && spec_chose {
                notes.push(format!(
                    "lr {} reg {}: the checkpoint's (a resumed run continues its setting, it does not choose again)",
                    stage_spec.hp.lr, stage_spec.hp.reg
                ));
            }
            return Ok(Run {
                data,
                request,
                skipped_lines: 0,
                notes,
                choosing: None,
                choice: None,
                spec: stage_spec,
                resolved,
                training,
                cancel: CancelToken::new(),
                lookups: None,
            });
        }
        let started = Instant::now();
        let candidates = spec.tune.candidates(&spec.hp, &spec.grid);
        let held = validation_split(&data, spec.tune.validation, spec.seed);
        if held.test.is_empty() {
            // Nothing to choose on: patience asked for is refused; otherwise
            // the run trains the settings as they stand, and says so.
            if let Some(p) = spec.tune.patience {
                return Err(Error::arg(
                    "`patience`",
                    p.to_string(),
                    format!(
                        "needs held-out ratings to judge by, and the `validation` share of the {} training \
                         ratings holds none",
                        data.train.len()
                    ),
                ));
            }
            let fixed = RunSpec { tune: Tuning::OFF, grid: Vec::new(), ..spec };
            let mut run = Run::new(data, request.source.clone(), fixed, options)?;
            run.request = request;
            run.notes.push(format!(
                "not choosing `lr` and `reg`: the `validation` share of the {} training ratings holds none; \
                 training lr {} reg {}",
                run.data.train.len(),
                run.spec.hp.lr,
                run.spec.hp.reg
            ));
            return Ok(run);
        }
        let patience = spec.tune.patience.unwrap_or(DEFAULT_PATIENCE);
        let choose_spec = RunSpec {
            hp: HyperParams { lr: candidates[0].lr, reg: candidates[0].reg, ..spec.hp },
            grid: if candidates.len() > 1 { candidates.clone() } else { Vec::new() },
            tune: Tuning::OFF,
            ..spec
        };
        let (resolved, training) =
            start(&held, &choose_spec, RunOptions::default(), Some(patience)).map_err(|e| match e {
                Error::BudgetTooSmall { .. } if candidates.len() > 1 => Error::arg(
                    "`device_memory`",
                    // What the user gave (a share or a size), not the bytes
                    // it came to.
                    choose_spec.backend.device_memory.map_or("auto".into(), |b| b.to_string()),
                    format!(
                        "{e}. Choosing trains {} settings side by side, every row slot holding each one's copy: give \
                         a larger budget, or `lr` and `reg` to train one setting",
                        candidates.len()
                    ),
                ),
                e => e,
            })?;
        let mut notes = resolved.notes.clone();
        let list = |f: fn(&Setting) -> f32| {
            distinct(candidates.iter().map(f)).iter().map(f32::to_string).collect::<Vec<_>>().join(",")
        };
        notes.push(format!(
            "choosing: {} setting(s) (lr {} × reg {}) trained side by side on {} of the training ratings, scored on \
             the {} held out (`validation` {}), up to {} epochs, stopping after {patience} without a better \
             validation RMSE; the test ratings take no part",
            candidates.len(),
            list(|c| c.lr),
            list(|c| c.reg),
            held.train.len(),
            held.test.len(),
            request.spec.tune.validation,
            choose_spec.epochs,
        ));
        Ok(Run {
            data,
            request,
            skipped_lines: 0,
            notes,
            choosing: Some(Choosing { data: held, started, patience, options }),
            choice: None,
            spec: choose_spec,
            resolved,
            training,
            cancel: CancelToken::new(),
            lookups: None,
        })
    }

    /// The token that stops this run.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Stops this run with `token` from now on (a front end that made its
    /// token before the run was opened: a stop asked for meanwhile holds).
    pub fn set_cancel_token(&mut self, token: CancelToken) {
        self.cancel = token;
    }

    /// The data trained on (all of it: choosing trains on a split of its
    /// training ratings).
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// The device slab now, slot by slot, where the backend has one (the
    /// page's picture; docs/ARCHITECTURE.md, "The browser page").
    pub fn slab_picture(&mut self) -> Option<crate::stage::SlabPicture> {
        let view = self.resolved.opened.backend.slab_view()?;
        let d = &self.data;
        let counts =
            self.lookups.get_or_insert_with(|| crate::stage::access_counts(&d.train, d.users.len(), d.items.len()));
        Some(crate::stage::SlabPicture::of(view, counts))
    }

    /// The run as asked for.
    pub fn request(&self) -> &RunRequest {
        &self.request
    }

    /// What a user should be told before the first epoch: lines the loader
    /// skipped, each choice the resolver made, and what will be chosen.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// What the current stage's specification resolved to: the settings
    /// (the order, the batch, the candidates while choosing), the backend
    /// opened, the slab's plan, and notes for the user on each choice made.
    pub fn resolved(&self) -> &ResolvedRun {
        &self.resolved
    }

    /// The stage the next epoch belongs to.
    pub fn stage(&self) -> Stage {
        if self.choosing.is_some() { Stage::Choosing } else { Stage::Training }
    }

    /// What choosing kept, once it has ended.
    pub fn choice(&self) -> Option<&Choice> {
        self.choice.as_ref().map(|(c, _)| c)
    }

    /// Epochs of the current stage complete so far (a resumed run's
    /// included).
    pub fn epochs_done(&self) -> usize {
        self.training.epochs_done()
    }

    /// How far the run is: the stage, the epoch in training (1-based) and
    /// its ratings done so far, out of an epoch's. The count is shared with
    /// the backend ([`Run::progress_counter`]), which adds to it as units,
    /// rounds or passes finish (the CPU per unit of work, a GPU per pass).
    pub fn progress(&self) -> Progress {
        let data = self.choosing.as_ref().map_or(&self.data, |c| &c.data);
        Progress {
            stage: self.stage(),
            epoch: self.epochs_done() + 1,
            ratings: self.training.progress().load(Ordering::Relaxed),
            ratings_per_epoch: data.train.len(),
        }
    }

    /// The current stage's ratings-done counter, to poll from another
    /// thread while [`Run::step`] runs (a new counter when the stage
    /// changes).
    pub fn progress_counter(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.training.progress()
    }

    /// Trains and evaluates the next epoch: its stage and report, or `None`
    /// when the run has ended (every epoch done, or a cancel, which ends an
    /// epoch part-way). When choosing ends, the next call starts the final
    /// training.
    /// What the stage in training hands MPI in `epochs` (0-based, within
    /// the stage's) under `distributed` rotate, worked out from its own
    /// layout; `None` on one process and under `server` (whose schedule is
    /// made, and its bytes predicted, as each epoch starts).
    pub fn wire_plan(&self, epochs: std::ops::Range<usize>) -> Result<Option<WirePlan>> {
        let ranks = self.resolved.opened.backend.ranks();
        if ranks <= 1 || self.request.spec.backend.distributed != crate::train::Distributed::Rotate {
            return Ok(None);
        }
        let t = &self.training;
        // No further than the stage's epochs, but one at least.
        let end = epochs.end.min(t.settings().epochs).max(epochs.start + 1);
        wire_plan_of(t.layout(), ranks, t.settings().row_bytes(), epochs.start..end).map(Some)
    }

    pub fn step(&mut self) -> Result<Option<(Stage, EpochReport)>> {
        loop {
            let Some(choosing) = &self.choosing else {
                let backend = self.resolved.opened.backend.as_mut();
                return Ok(self.training.step(&self.data, backend, self.cancel.flag())?.map(|e| (Stage::Training, e)));
            };
            let backend = self.resolved.opened.backend.as_mut();
            if let Some(e) = self.training.step(&choosing.data, backend, self.cancel.flag())? {
                return Ok(Some((Stage::Choosing, e)));
            }
            if !self.training.is_complete() {
                // Cancelled or diverged while choosing: the run ends here.
                return Ok(None);
            }
            self.end_choosing()?;
        }
    }

    /// Keeps the setting and epoch of the lowest validation RMSE, and
    /// starts the final training with them on all the training ratings.
    fn end_choosing(&mut self) -> Result<()> {
        let choosing = self.choosing.take().expect("choosing");
        let stopped = if self.training.stopped_early() { "early" } else { "epochs" };
        let choice = self.choice_of(&choosing, stopped).expect("a complete choosing run has a best epoch");
        let spec = RunSpec {
            hp: HyperParams { lr: choice.lr, reg: choice.reg, ..self.request.spec.hp },
            grid: Vec::new(),
            epochs: choice.epochs,
            tune: Tuning::OFF,
            ..self.request.spec.clone()
        };
        let epochs = self.training.epochs().to_vec();
        // The chosen setting alone: the backend is opened again for it (a
        // slab of one copy a row, the full training ratings' layout). The
        // candidates' backend is dropped first, so that two slabs never
        // coexist on the device; a placeholder that holds nothing stands in
        // until the new one is opened.
        self.resolved.opened.backend = Box::new(crate::train::cpu::ReferenceCpu { bias_reg: 0.0 });
        let (resolved, mut training) = start(&self.data, &spec, choosing.options, None)?;
        training.record_choice(choice.epochs);
        self.resolved = resolved;
        self.training = training;
        self.spec = spec;
        self.choice = Some((choice, epochs));
        Ok(())
    }

    /// What choosing keeps so far (`None` before its first epoch ends):
    /// the setting and epoch of the lowest validation RMSE, its λ refined
    /// between the built-in candidates, and what choosing cost.
    fn choice_of(&self, choosing: &Choosing, stopped: &'static str) -> Option<Choice> {
        let settings = self.training.settings().settings();
        let best = self.training.best()?;
        let mut kept = settings[best.setting];
        // Each candidate's lowest validation RMSE over the epochs.
        let epochs = self.training.epochs();
        let lowest: Vec<f64> = (0..settings.len())
            .map(|g| {
                epochs.iter().map(|e| e.grid.get(g).map_or(e.test_rmse, |x| x.test_rmse)).fold(f64::INFINITY, f64::min)
            })
            .collect();
        // λ chosen from the built-in candidates is refined between them; a
        // λ the user listed is kept as listed.
        let refined = self.request.spec.tune.reg.then(|| refine_reg(&settings, &lowest, best.setting)).flatten();
        let refined_from = refined.filter(|&r| r != kept.reg).map(|r| std::mem::replace(&mut kept.reg, r));
        Some(Choice {
            lr: kept.lr,
            reg: kept.reg,
            refined_from,
            epochs: best.epoch,
            validation_rmse: best.test_rmse,
            candidates: settings,
            validation_ratings: choosing.data.test.len(),
            choosing_ratings: choosing.data.train.len(),
            seconds: choosing.started.elapsed().as_secs_f64(),
            stopped,
            patience: choosing.patience,
        })
    }

    /// Steps to the end, calling `on_epoch` after each epoch, and finishes.
    pub fn run_to_end(mut self, on_epoch: &mut dyn FnMut(Stage, &EpochReport)) -> Result<Finished> {
        while let Some((stage, report)) = self.step()? {
            on_epoch(stage, &report);
        }
        self.finish()
    }

    /// Ends the run: the model kept, its figures and its report. A run
    /// stopped while choosing keeps the best candidate so far (trained on
    /// the training ratings less the validation split), marked incomplete.
    pub fn finish(self) -> Result<Finished> {
        // Stopped while choosing: the report's choice is what it kept so
        // far, and its epochs (scored on the validation split) are the
        // choice's, not the model's.
        let so_far = self.choosing.as_ref().map(|c| self.choice_of(c, "interrupted"));
        let Run { data, request, skipped_lines, mut resolved, training, choosing, choice, spec, .. } = self;
        // Each choice with its epochs and the settings tried side by side.
        let choice = match (choice, so_far) {
            (Some((c, epochs)), _) => Some((c.candidates.clone(), Some(c), epochs)),
            (None, Some(c)) => Some((training.settings().settings(), c, training.epochs().to_vec())),
            (None, None) => None,
        };
        let scored = choosing.as_ref().map_or(&data, |c| &c.data);
        let mut outcome = training.finish(scored, resolved.opened.backend.as_mut())?;
        if choosing.is_some() {
            // Scored on the test ratings, as every report's final figures are.
            outcome.final_metrics = outcome.model.evaluate(&data.test);
        }
        let config = RunConfig::of(&spec, &resolved, &outcome, request.source.describe());
        let ceiling = config.ceiling;
        let report = Report {
            dataset: DatasetInfo::of(&data, skipped_lines),
            config,
            request,
            choice: choice.map(|(settings, c, epochs)| ChoiceJson {
                epochs: epochs.iter().map(|e| EpochJson::of(e, ceiling)).collect(),
                candidates: crate::report::grid_results(&settings, &epochs, c.as_ref().map(|c| c.epochs)),
                choice: c,
            }),
            epochs: if choosing.is_some() {
                Vec::new()
            } else {
                outcome.epochs.iter().map(|e| EpochJson::of(e, ceiling)).collect()
            },
            final_: FinalJson {
                test_rmse: (!ceiling).then_some(outcome.final_metrics.rmse).filter(|x| !x.is_nan()),
                test_mae: (!ceiling).then_some(outcome.final_metrics.mae).filter(|x| !x.is_nan()),
                ratings_per_sec: outcome.ratings_per_sec,
            },
            complete: outcome.complete && choosing.is_none(),
        };
        outcome.complete &= choosing.is_none();
        Ok(Finished { outcome, report })
    }
}

/// Resolves `spec` on `data` and starts its training (`patience`: early
/// stopping on `data`'s test ratings, which are then a validation split).
fn start(
    data: &Dataset,
    spec: &RunSpec,
    options: RunOptions,
    patience: Option<usize>,
) -> Result<(ResolvedRun, Training)> {
    let mut resolved = resolve(data, spec)?;
    let control =
        RunControl { stop: None, checkpoint: options.checkpoint.as_deref(), resume: options.resume, patience };
    let training = Training::start(data, &resolved.settings, resolved.opened.backend.as_mut(), control)?;
    Ok((resolved, training))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataSource, SyntheticSpec};
    use crate::gpu::BackendChoice;
    use crate::model::HyperParams;
    use crate::train::BackendSpec;

    fn source() -> DataSource {
        DataSource {
            synthetic: SyntheticSpec { users: 90, items: 70, ratings: 3001, zipf: None },
            ..Default::default()
        }
    }

    fn spec(epochs: usize) -> RunSpec {
        RunSpec {
            hp: HyperParams { rank: 5, ..HyperParams::default() },
            epochs,
            seed: 2,
            backend: BackendSpec { backend: BackendChoice::Cpu, threads: 2, ..BackendSpec::default() },
            tune: Tuning::OFF,
            ..RunSpec::default()
        }
    }

    #[test]
    fn stepping_an_epoch_at_a_time_trains_the_model_of_one_call() {
        let data = source().load(2).unwrap().dataset;
        let whole = resolve(&data, &spec(3)).unwrap();
        let mut settings_backend = whole.opened.backend;
        let reference =
            crate::train::train(&data, &whole.settings, settings_backend.as_mut(), RunControl::default(), &mut |_| {})
                .unwrap();
        let mut run = Run::new(data, source(), spec(3), RunOptions::default()).unwrap();
        let mut epochs = Vec::new();
        while let Some(e) = run.step().unwrap() {
            epochs.push(e.1.epoch);
        }
        assert_eq!(epochs, [1, 2, 3]);
        // After an epoch, the counter holds the whole epoch's ratings.
        let p = run.progress();
        assert_eq!((p.epoch, p.ratings, p.ratings_per_epoch), (4, run.data().train.len(), run.data().train.len()));
        assert!(run.step().unwrap().is_none(), "an ended run trains nothing more");
        let done = run.finish().unwrap();
        assert!(done.outcome.complete);
        assert_eq!(done.outcome.model, reference.model);
        assert_eq!(done.config().order, reference.order.name());
    }

    #[test]
    fn a_cancelled_run_ends_incomplete_with_whole_tables() {
        let data = source().load(2).unwrap().dataset;
        let mut run = Run::new(data, source(), spec(4), RunOptions::default()).unwrap();
        assert!(run.step().unwrap().is_some());
        run.cancel_token().cancel();
        assert!(run.step().unwrap().is_none(), "a cancelled epoch reports nothing");
        let done = run.finish().unwrap();
        assert!(!done.outcome.complete);
        assert_eq!(done.outcome.epochs.len(), 1);
        assert!(done.outcome.model.users.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn a_run_stopped_while_choosing_reports_the_choice_so_far_and_no_model_epochs() {
        let data = source().load(2).unwrap().dataset;
        let spec = RunSpec {
            tune: Tuning::default(),
            backend: BackendSpec { backend: BackendChoice::Cpu, threads: 1, ..BackendSpec::default() },
            ..spec(6)
        };
        let mut run = Run::new(data, source(), spec, RunOptions::default()).unwrap();
        assert_eq!(run.step().unwrap().map(|(s, _)| s), Some(Stage::Choosing));
        assert_eq!(run.step().unwrap().map(|(s, _)| s), Some(Stage::Choosing));
        run.cancel_token().cancel();
        assert!(run.step().unwrap().is_none());
        let done = run.finish().unwrap();
        let r = &done.report;
        assert!(!r.complete && r.epochs.is_empty(), "choosing epochs are not the model's: {:?}", r.epochs.len());
        let c = r.choice.as_ref().expect("the choice so far");
        assert_eq!(c.epochs.len(), 2, "the choosing epochs, scored on the validation split");
        let kept = c.choice.as_ref().expect("a setting kept so far");
        assert_eq!(kept.stopped, "interrupted");
        assert!(kept.epochs <= 2 && c.candidates.len() == 8);
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(json["choice"]["stopped"], "interrupted");
        assert_eq!(json["epochs"], serde_json::json!([]));
    }

    /// The run as it chooses by default: its candidates on the validation
    /// split, then the choice on all the training ratings.
    fn choosing_run(data: Dataset, threads: usize) -> (Finished, Vec<Stage>) {
        let spec = RunSpec {
            tune: Tuning::default(),
            backend: BackendSpec { backend: BackendChoice::Cpu, threads, ..BackendSpec::default() },
            ..spec(6)
        };
        let mut run = Run::new(data, source(), spec, RunOptions::default()).unwrap();
        assert_eq!(run.stage(), Stage::Choosing);
        let mut stages = Vec::new();
        while let Some((stage, _)) = run.step().unwrap() {
            stages.push(stage);
        }
        (run.finish().unwrap(), stages)
    }

    #[test]
    fn a_run_chooses_on_validation_then_trains_the_choice_on_every_training_rating() {
        let data = source().load(2).unwrap().dataset;
        let (done, stages) = choosing_run(data.clone(), 2);
        let choice = done.report.choice.as_ref().expect("a choice").choice.clone().expect("a setting kept");
        assert_eq!(choice.candidates.len(), 8);
        assert_eq!(choice.validation_ratings + choice.choosing_ratings, data.train.len());
        let chosen = stages.iter().filter(|s| **s == Stage::Training).count();
        assert_eq!(chosen, choice.epochs, "the final model trains the chosen epochs");
        assert!(stages.iter().take_while(|s| **s == Stage::Choosing).count() >= choice.epochs);
        // The final model is the chosen setting, trained on all the
        // training ratings every epoch.
        assert_eq!((done.config().lr, done.config().reg), (choice.lr, choice.reg));
        assert!(done.outcome.epochs.iter().all(|e| e.ratings == data.train.len()));
        assert!(done.outcome.complete && done.report.complete);
        // The same on another thread count, bit for bit.
        let (again, _) = choosing_run(data, 1);
        assert_eq!(again.outcome.model, done.outcome.model);
    }

    #[test]
    fn the_test_ratings_take_no_part_in_the_choice() {
        let data = source().load(2).unwrap().dataset;
        let (done, _) = choosing_run(data.clone(), 2);
        // The test ratings turned upside down: the choice and the model
        // stay; only the reported test figures change.
        let mut flipped = data;
        for r in &mut flipped.test {
            r.value = 6.0 - r.value;
        }
        let (other, _) = choosing_run(flipped, 2);
        let kept = |d: &Finished| d.report.choice.as_ref().and_then(|c| c.choice.clone()).unwrap();
        let (a, b) = (kept(&done), kept(&other));
        assert_eq!((a.lr, a.reg, a.epochs, a.validation_rmse), (b.lr, b.reg, b.epochs, b.validation_rmse));
        assert_eq!(done.outcome.model, other.outcome.model);
        assert_ne!(done.outcome.final_metrics.rmse, other.outcome.final_metrics.rmse);
    }

    #[test]
    fn given_settings_are_not_chosen() {
        let data = source().load(2).unwrap().dataset;
        let fixed = RunSpec { hp: HyperParams { lr: 0.03, reg: 0.07, ..spec(3).hp }, ..spec(3) };
        let mut run = Run::new(data.clone(), source(), fixed.clone(), RunOptions::default()).unwrap();
        assert_eq!(run.stage(), Stage::Training);
        while run.step().unwrap().is_some() {}
        let done = run.finish().unwrap();
        assert!(done.report.choice.is_none());
        assert_eq!((done.config().lr, done.config().reg, done.outcome.epochs.len()), (0.03, 0.07, 3));
        // `reg` given, `lr` chosen: every candidate has the given reg.
        let lr_only = RunSpec { tune: Tuning { lr: true, ..Tuning::OFF }, ..fixed };
        let (mut run, mut n) = (Run::new(data, source(), lr_only, RunOptions::default()).unwrap(), 0);
        while run.step().unwrap().is_some() {
            n += 1;
        }
        let done = run.finish().unwrap();
        let choice = done.report.choice.as_ref().and_then(|c| c.choice.as_ref()).unwrap();
        assert!(n > 0 && choice.candidates.iter().all(|c| c.reg == 0.07), "{:?}", choice.candidates);
        assert_eq!(done.config().reg, 0.07);
    }
}
