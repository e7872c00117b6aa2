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

pub use plan::{RunPlan, plan};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::data::{DataSource, Dataset};
use crate::error::Result;
use crate::report::{DatasetInfo, EpochJson, FinalJson, Report};
use crate::train::checkpoint::Checkpoint;
use crate::train::{
    CancelToken, EpochReport, ResolvedRun, RunConfig, RunControl, RunRequest, RunSpec, TrainOutcome, Training, resolve,
};

/// What a run does besides training: checkpoints, resuming, early stopping.
#[derive(Default)]
pub struct RunOptions {
    /// Write a checkpoint here after every epoch and when stopped.
    pub checkpoint: Option<PathBuf>,
    /// Continue from this checkpoint.
    pub resume: Option<Checkpoint>,
    /// Stop when test RMSE has not improved for this many epochs, keeping
    /// the best epoch's model.
    pub patience: Option<usize>,
}

/// How far a run is inside an epoch ([`Run::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
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
        let config = serde_json::to_value(self.config()).expect("a run's configuration serialises");
        crate::model::save_model(&self.outcome.model, &config, path)
    }
}

/// A training run, resolved and ready: [`Run::step`] trains an epoch,
/// [`Run::finish`] ends it.
pub struct Run {
    data: Dataset,
    request: RunRequest,
    /// Malformed lines the loader skipped.
    skipped_lines: usize,
    /// The loader's notes, then the resolver's.
    notes: Vec<String>,
    resolved: ResolvedRun,
    training: Training,
    cancel: CancelToken,
}

impl Run {
    /// Loads (or generates) the request's data, then builds the run as
    /// [`Run::new`] does.
    pub fn from_request(request: RunRequest, options: RunOptions) -> Result<Self> {
        request.spec.validate()?;
        let loaded = request.source.load(request.spec.seed)?;
        let mut run = Run::new(loaded.dataset, request.source, request.spec, options)?;
        run.skipped_lines = loaded.skipped;
        run.notes.splice(0..0, loaded.notes);
        Ok(run)
    }

    /// Resolves `spec` against `data` (the batch, the co-partitioning, the
    /// backend opened, the order) and starts training: a fresh model, or
    /// `options.resume`'s. `source` is what reports say of where the data
    /// came from (a front end holding ratings in memory names them in its
    /// `path`).
    pub fn new(data: Dataset, source: DataSource, spec: RunSpec, options: RunOptions) -> Result<Self> {
        spec.validate()?;
        let mut resolved = resolve(&data, &spec)?;
        let control = RunControl {
            stop: None,
            checkpoint: options.checkpoint.as_deref(),
            resume: options.resume,
            patience: options.patience,
        };
        let training = Training::start(&data, &resolved.settings, resolved.opened.backend.as_mut(), control)?;
        let notes = resolved.notes.clone();
        let request = RunRequest { source, spec };
        Ok(Run { data, request, skipped_lines: 0, notes, resolved, training, cancel: CancelToken::new() })
    }

    /// The token that stops this run.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// The data trained on.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// The run as asked for.
    pub fn request(&self) -> &RunRequest {
        &self.request
    }

    /// What a user should be told before the first epoch: lines the loader
    /// skipped, and each choice the resolver made.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// What the specification resolved to: the settings (the order, the
    /// batch), the backend opened, the slab's plan, and notes for the user
    /// on each choice made.
    pub fn resolved(&self) -> &ResolvedRun {
        &self.resolved
    }

    /// Epochs complete so far (a resumed run's included).
    pub fn epochs_done(&self) -> usize {
        self.training.epochs_done()
    }

    /// How far the run is: the epoch in training (1-based) and its ratings
    /// done so far, out of an epoch's. The count is shared with the backend
    /// ([`Run::progress_counter`]), which adds to it as units, rounds or
    /// passes finish (the CPU per unit of work, a GPU per pass).
    pub fn progress(&self) -> Progress {
        Progress {
            epoch: self.epochs_done() + 1,
            ratings: self.training.progress().load(Ordering::Relaxed),
            ratings_per_epoch: self.data.train.len(),
        }
    }

    /// The ratings-done counter itself, to poll from another thread while
    /// [`Run::step`] runs.
    pub fn progress_counter(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.training.progress()
    }

    /// Trains and evaluates the next epoch: its report, or `None` when the
    /// run has ended (every epoch done, early stopping, or a cancel, which
    /// ends an epoch part-way).
    pub fn step(&mut self) -> Result<Option<EpochReport>> {
        let backend = self.resolved.opened.backend.as_mut();
        self.training.step(&self.data, backend, self.cancel.flag())
    }

    /// Steps to the end, calling `on_epoch` after each epoch, and finishes.
    pub fn run_to_end(mut self, on_epoch: &mut dyn FnMut(&EpochReport)) -> Result<Finished> {
        while let Some(report) = self.step()? {
            on_epoch(&report);
        }
        self.finish()
    }

    /// Ends the run: the model kept, its figures and its report.
    pub fn finish(self) -> Result<Finished> {
        let Run { data, request, skipped_lines, mut resolved, training, .. } = self;
        let outcome = training.finish(&data, resolved.opened.backend.as_mut())?;
        let config = RunConfig::of(&request.spec, &resolved, &outcome, request.source.describe());
        let ceiling = config.ceiling;
        let grid = crate::report::grid_results(
            &outcome.settings,
            &outcome.epochs,
            outcome.best_epoch.filter(|_| outcome.complete),
        );
        let report = Report {
            dataset: DatasetInfo::of(&data, skipped_lines),
            config,
            request,
            epochs: outcome.epochs.iter().map(|e| EpochJson::of(e, ceiling)).collect(),
            final_: FinalJson {
                test_rmse: (!ceiling).then_some(outcome.final_metrics.rmse),
                test_mae: (!ceiling).then_some(outcome.final_metrics.mae),
                ratings_per_sec: outcome.ratings_per_sec,
            },
            complete: outcome.complete,
            best_epoch: outcome.best_epoch,
            stopped_early: outcome.stopped_early,
            best: grid.first().cloned(),
            grid: (!grid.is_empty()).then_some(grid),
        };
        Ok(Finished { outcome, report })
    }
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
            epochs.push(e.epoch);
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
}
