//! The library's entry for a training run: [`Run`], built from a
//! [`RunSpec`] and a [`Dataset`] (read from a file or made in memory), driven
//! an epoch at a time or to the end, stopped by its [`CancelToken`], and
//! returning its outcome and configuration as values. It prints nothing and
//! reads no flag: the command line (and any other front end) maps its own
//! inputs to a [`RunSpec`] and shows what comes back (docs/ARCHITECTURE.md,
//! "The library's entry").

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

use super::checkpoint::Checkpoint;
use super::run::{ResolvedRun, RunConfig, RunSpec, resolve};
use super::{EpochReport, RunControl, TrainOutcome, Training};
use crate::data::{DataSource, Dataset, SourceJson};
use crate::error::{Error, Result};

/// A run as asked for, whole: where its data comes from and its settings.
/// Serialisable: every report records it (`request`), and a run built from
/// it trains the same model (`rowstage train --config report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    pub source: DataSource,
    pub spec: RunSpec,
}

/// The most bytes read from a configuration file: a report of thousands of
/// epochs is a few MiB.
const MAX_CONFIG_BYTES: u64 = 64 << 20;

impl RunRequest {
    /// Reads the request from `path`: a report written by `train --json`
    /// (its `request`) or a file holding a request alone. An error names the
    /// file and what is wrong with it.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::arg("`config`", path.display().to_string(), reason);
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).map_err(|e| Error::io(path, e))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(bad(format!("larger than {} MiB: not a report or a run request", MAX_CONFIG_BYTES >> 20)));
        }
        let value: serde_json::Value =
            serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| bad(format!("not JSON: {e}")))?;
        let request = value.get("request").cloned().unwrap_or(value);
        serde_json::from_value(request).map_err(|e| {
            bad(format!("not a report of `train --json` or a run request ({{\"source\", \"spec\"}}): {e}"))
        })
    }
}

/// Stops a [`Run`] at the next part boundary when cancelled, from any
/// thread (a signal handler, a browser's Stop button); the run then ends
/// with its host tables whole and `complete: false`.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The flag itself, for the engine's loops.
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }
}

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

/// A run's end: the trained model and figures, and the configuration that
/// reports and model files record.
pub struct Finished {
    pub outcome: TrainOutcome,
    pub config: RunConfig,
}

/// A training run, resolved and ready: [`Run::step`] trains an epoch,
/// [`Run::finish`] ends it.
pub struct Run {
    data: Dataset,
    source: SourceJson,
    spec: RunSpec,
    resolved: ResolvedRun,
    training: Training,
    cancel: CancelToken,
}

impl Run {
    /// Resolves `spec` against `data` (the batch, the co-partitioning, the
    /// backend opened, the order) and starts training: a fresh model, or
    /// `options.resume`'s. `source` is what reports say of the data.
    pub fn new(data: Dataset, source: SourceJson, spec: RunSpec, options: RunOptions) -> Result<Self> {
        let mut resolved = resolve(&data, &spec)?;
        let control = RunControl {
            stop: None,
            checkpoint: options.checkpoint.as_deref(),
            resume: options.resume,
            patience: options.patience,
        };
        let training = Training::start(&data, &resolved.settings, resolved.opened.backend.as_mut(), control)?;
        Ok(Run { data, source, spec, resolved, training, cancel: CancelToken::new() })
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
    pub fn spec(&self) -> &RunSpec {
        &self.spec
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

    /// Ends the run: the model kept and its figures, and the configuration.
    pub fn finish(self) -> Result<Finished> {
        let Run { data, source, spec, mut resolved, training, .. } = self;
        let outcome = training.finish(&data, resolved.opened.backend.as_mut())?;
        let config = RunConfig::of(&spec, &resolved, &outcome, source);
        Ok(Finished { outcome, config })
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
        let whole = super::super::run::resolve(&data, &spec(3)).unwrap();
        let mut settings_backend = whole.opened.backend;
        let reference =
            crate::train::train(&data, &whole.settings, settings_backend.as_mut(), RunControl::default(), &mut |_| {})
                .unwrap();
        let mut run = Run::new(data, source().describe(), spec(3), RunOptions::default()).unwrap();
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
        assert_eq!(done.config.order, reference.order.name());
    }

    #[test]
    fn a_request_reads_back_from_a_report_or_alone_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let request = RunRequest { source: source(), spec: spec(3) };
        let report = serde_json::json!({"dataset": {}, "request": request});
        let (a, b) = (dir.path().join("report.json"), dir.path().join("request.json"));
        std::fs::write(&a, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        std::fs::write(&b, serde_json::to_string(&request).unwrap()).unwrap();
        assert_eq!(RunRequest::read(&a).unwrap(), request);
        assert_eq!(RunRequest::read(&b).unwrap(), request);
        // Fields left out take the defaults.
        std::fs::write(&b, r#"{"source": {}, "spec": {"epochs": 2}}"#).unwrap();
        let partial = RunRequest::read(&b).unwrap();
        assert_eq!((partial.spec.epochs, partial.spec.hp), (2, RunSpec::default().hp));
        for bad in ["{", "[1, 2]", r#"{"spec": {"epochs": "many"}, "source": {}}"#] {
            std::fs::write(&b, bad).unwrap();
            let e = RunRequest::read(&b).unwrap_err().to_string();
            assert!(e.contains("request.json") && e.contains("`config`"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_cancelled_run_ends_incomplete_with_whole_tables() {
        let data = source().load(2).unwrap().dataset;
        let mut run = Run::new(data, source().describe(), spec(4), RunOptions::default()).unwrap();
        assert!(run.step().unwrap().is_some());
        run.cancel_token().cancel();
        assert!(run.step().unwrap().is_none(), "a cancelled epoch reports nothing");
        let done = run.finish().unwrap();
        assert!(!done.outcome.complete);
        assert_eq!(done.outcome.epochs.len(), 1);
        assert!(done.outcome.model.users.iter().all(|x| x.is_finite()));
    }
}
