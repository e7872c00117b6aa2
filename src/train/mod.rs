//! The training loop shared by every backend: epoch order, learning-rate
//! schedule, evaluation after every epoch, and the per-epoch report.
//!
//! The epoch order is a seeded permutation of the training ratings, derived
//! from `(seed, epoch)` alone, so every backend sees the same order and a run
//! can resume at any epoch. Batches are consecutive runs of that order.
//!
//! Deterministic mode (DESIGN.md §4) applies the updates in exactly that
//! sequential order: the CPU reference walks it one rating at a time; the GPU
//! splits each batch into conflict-free waves that preserve the order of any
//! two ratings sharing a row, so both end with the same model up to f32
//! rounding, whatever the staging policy and budget.

pub mod blocked;
pub mod checkpoint;
pub mod cpu;
pub mod plan;
mod setup;

pub use setup::{
    BackendSpec, Opened, Planned, auto_batch, co_partition_for, open_backend, open_backend_fitting, open_backend_on,
    plan_budget, table_bytes,
};

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Rating};
use crate::error::{Error, Result};
use crate::model::{HyperParams, Metrics, Model, Rate, Setting, row_stride};
use crate::stage::Ledger;
use crate::stage::copartition::{Blocks, CoPartition};
use blocked::BlockedRatings;

/// The seeded order of epoch `epoch` over `n` ratings, written into `out`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, out: &mut Vec<u32>) {
    out.clear();
    out.extend(0..n as u32);
    let mut rng =
        StdRng::seed_from_u64(seed ^ 0x0DE7_0000_0000_0000 ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    out.shuffle(&mut rng);
}

/// The epoch orders of a run, each with the next epoch's order (empty after
/// the last), every order shuffled once: the next epoch's order becomes the
/// current one when the run advances. With co-partitioning each order is
/// arranged block by block and `ends` holds the blocks' ends in `order`.
/// In the blocked order ([`blocked`]) the indices point into the blocked copy
/// of the ratings ([`EpochOrders::ratings`]) and `ends` holds the block
/// parts' ends.
pub struct EpochOrders {
    n: usize,
    seed: u64,
    epochs: usize,
    blocks: Option<Blocks>,
    grid: Option<BlockedRatings>,
    pub order: Vec<u32>,
    pub following: Vec<u32>,
    /// Ends of the blocks of `order` (empty without co-partitioning or the
    /// blocked order).
    pub ends: Vec<u32>,
    following_ends: Vec<u32>,
    scratch: Vec<u32>,
}

impl EpochOrders {
    pub fn new(n: usize, seed: u64, epochs: usize) -> Self {
        Self::blocked(n, seed, epochs, None)
    }

    /// Orders arranged by `blocks` (co-partitioning) when given.
    pub fn blocked(n: usize, seed: u64, epochs: usize, blocks: Option<Blocks>) -> Self {
        EpochOrders {
            n,
            seed,
            epochs,
            blocks,
            grid: None,
            order: Vec::with_capacity(n),
            following: Vec::with_capacity(n),
            ends: Vec::new(),
            following_ends: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The orders a run of `settings` on `data` trains with; `order` must be
    /// resolved (not [`Order::Auto`]). `threads` may share the blocked
    /// copy's shuffle; the orders do not depend on it.
    pub fn for_run(data: &Dataset, settings: &TrainSettings, threads: usize) -> Self {
        let n = data.train.len();
        let (users, items) = (data.users.len(), data.items.len());
        match settings.order {
            Order::Blocked { bins } => EpochOrders {
                grid: Some(BlockedRatings::new(&data.train, users, items, bins, settings.seed, threads)),
                ..Self::new(n, settings.seed, settings.epochs)
            },
            _ => {
                let blocks = settings.co_partition.map(|c| c.blocks(&data.train, users, items));
                Self::blocked(n, settings.seed, settings.epochs, blocks)
            }
        }
    }

    /// The ratings the orders index: the blocked copy in the blocked order,
    /// `train` otherwise.
    pub fn ratings<'a>(&'a self, train: &'a [Rating]) -> &'a [Rating] {
        self.grid.as_ref().map_or(train, |g| g.ratings())
    }

    /// The blocked order's blocks, if it is the order.
    pub fn grid(&self) -> Option<&BlockedRatings> {
        self.grid.as_ref()
    }

    fn make(&mut self, epoch: usize, following: bool) {
        let (order, ends) =
            if following { (&mut self.following, &mut self.following_ends) } else { (&mut self.order, &mut self.ends) };
        if let Some(g) = &self.grid {
            g.arrange(self.seed, epoch, order, ends);
            return;
        }
        epoch_order(self.n, self.seed, epoch, order);
        ends.clear();
        if let Some(b) = &self.blocks {
            b.arrange(order, self.seed, epoch, ends, &mut self.scratch);
        }
    }

    /// Makes `order` epoch `epoch`'s and `following` the next one's. Call
    /// with 0, 1, 2, ... in turn.
    pub fn start(&mut self, epoch: usize) {
        if epoch == 0 || self.following.is_empty() {
            self.make(epoch, false);
        } else {
            std::mem::swap(&mut self.order, &mut self.following);
            std::mem::swap(&mut self.ends, &mut self.following_ends);
        }
        self.following.clear();
        self.following_ends.clear();
        if epoch + 1 < self.epochs {
            self.make(epoch + 1, true);
        }
    }
}

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

/// The spans of `order[from..]` that batches must not cross, as ends relative
/// to `from`: the co-partitioning blocks, or one span.
pub fn spans_from(ends: &[u32], from: usize, len: usize) -> Vec<u32> {
    let mut out: Vec<u32> = ends.iter().filter(|&&e| e as usize > from).map(|&e| e - from as u32).collect();
    if out.last().is_none_or(|&e| (e as usize) < len) {
        out.push(len as u32);
    }
    out
}

/// What one epoch of training returned, before evaluation.
#[derive(Debug, Clone, Default)]
pub struct EpochTrain {
    /// Sum of squared errors seen by SGD before each update, per model side
    /// by side (one outside a grid search).
    pub sse: Vec<f64>,
    pub count: u64,
    /// Ratings of the order applied: all of them, or fewer when the stop flag
    /// was raised (then a prefix, a whole number of batches).
    pub done: usize,
    /// Ratings whose user or item an earlier rating of the same parallel wave
    /// also updates: the Hogwild updates that may race. 0 in deterministic mode
    /// and in the CPU backend's blocked order (no two threads share a row).
    pub conflicts: u64,
    pub ledger: Ledger,
}

/// A training engine: CPU reference, CPU Hogwild, or a GPU adapter.
pub trait Backend {
    /// `cpu` or the wgpu backend name (`vulkan`, `gl`, ...).
    fn kind(&self) -> String;
    /// The adapter's name (or the CPU's description).
    fn adapter(&self) -> String;
    /// One pass over `order` (indices into `train`), model `g` of the ones
    /// side by side in `model` updated with `rates[g]` (one rate outside a
    /// grid search); `following` is the next epoch's order (empty after the last), for
    /// policies that plan ahead. `spans` are the ends (in `order`) of the
    /// spans batches must not cross: the co-partitioning blocks, the blocked
    /// order's block parts, or just `order.len()`. `blocked` holds the
    /// blocked order's bins when that is the order ([`blocked`]). When
    /// `stop` is raised the pass ends at the next batch (or block part)
    /// boundary, leaving the model consistent; [`EpochTrain::done`] says how
    /// far it got.
    #[allow(clippy::too_many_arguments)]
    fn train_epoch(
        &mut self,
        model: &mut Model,
        train: &[Rating],
        order: &[u32],
        spans: &[u32],
        blocked: Option<&BlockedRatings>,
        following: &[u32],
        rates: &[Rate],
        stop: &AtomicBool,
    ) -> Result<EpochTrain>;
    /// Test metrics of each model side by side, and the traffic they took.
    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)>;
    /// Makes the host tables authoritative again (writes back every row the
    /// device still holds); returns that traffic.
    fn finish(&mut self, model: &mut Model) -> Result<Ledger>;
    /// The cost model's prediction of training traffic, if the policy has one.
    fn prediction(&self) -> Option<Prediction> {
        None
    }
    /// Threads that train at once (sizes the blocked order's bins).
    fn parallelism(&self) -> usize {
        1
    }
}

/// How an epoch's ratings are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// `Blocked` on the CPU backend without co-partitioning, `Shuffled`
    /// otherwise (resolved by [`Order::resolve`] when a run starts).
    Auto,
    /// A seeded permutation of the training ratings (DESIGN.md §4), arranged
    /// block by block under co-partitioning; what GPU backends train with.
    Shuffled,
    /// FPSGD's blocked order over `bins` × `bins` blocks ([`blocked`]): CPU
    /// backends only.
    Blocked { bins: u32 },
}

impl Order {
    /// The order a run takes on `backend` with `co_partition`: `Auto`
    /// resolved, and `Blocked` refused where it cannot work.
    pub fn resolve(self, backend: &dyn Backend, co_partition: bool) -> Result<Order> {
        self.check_co_partition(co_partition)?;
        let cpu = backend.kind() == "cpu";
        match self {
            Order::Auto if cpu && !co_partition => {
                Ok(Order::Blocked { bins: blocked::default_bins(backend.parallelism()) })
            }
            Order::Auto => Ok(Order::Shuffled),
            Order::Blocked { .. } if !cpu => Err(Error::arg(
                "--order",
                "blocked",
                format!("is for the CPU backend; the {} backend trains in the shuffled order", backend.kind()),
            )),
            Order::Blocked { bins: 0 } => Err(Error::arg("--order", "blocked:0", "needs at least 1 bin")),
            o => Ok(o),
        }
    }

    /// Refuses the blocked order beside co-partitioning: both arrange the
    /// epoch. Checked before a backend is opened and again by
    /// [`Order::resolve`].
    pub fn check_co_partition(self, co_partition: bool) -> Result<()> {
        match self {
            Order::Blocked { .. } if co_partition => {
                Err(Error::arg("--order", self.name(), "and --co-partition both arrange the epoch; choose one"))
            }
            _ => Ok(()),
        }
    }

    /// Parses `--order`: `auto`, `shuffled`, `blocked` (with
    /// [`blocked::default_bins`] for `threads`) or `blocked:BINS` (BINS ≥ 1).
    pub fn parse(s: &str, threads: usize) -> Result<Order> {
        let bad = |why: &str| Error::arg("--order", s, why);
        match s.trim() {
            "auto" => Ok(Order::Auto),
            "shuffled" => Ok(Order::Shuffled),
            "blocked" => Ok(Order::Blocked { bins: blocked::default_bins(threads) }),
            t => match t.strip_prefix("blocked:").map(|b| b.trim().parse::<u32>()) {
                Some(Ok(bins)) if bins >= 1 => Ok(Order::Blocked { bins }),
                Some(_) => Err(bad("BINS must be a whole number ≥ 1, as in blocked:20")),
                None => Err(bad("must be auto, shuffled, blocked or blocked:BINS")),
            },
        }
    }

    /// `shuffled`, `blocked:BINS` (or `auto`).
    pub fn name(&self) -> String {
        match self {
            Order::Auto => "auto".into(),
            Order::Shuffled => "shuffled".into(),
            Order::Blocked { bins } => format!("blocked:{bins}"),
        }
    }
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
    /// Training time: making the epoch's order and the pass over it (the
    /// first epoch also carries making the blocked copy); evaluation excluded.
    pub seconds: f64,
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

/// The cost model's training traffic, for policies that have one.
#[derive(Debug, Clone, Copy)]
pub struct Prediction {
    /// Rows staged in (and written back) per epoch.
    pub rows_per_epoch: f64,
    /// Rows loaded before the first epoch and written back after the last.
    pub resident: u64,
    pub row_bytes: u64,
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
    let order = settings.order.resolve(backend, settings.co_partition.is_some())?;
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
    let n = data.train.len();
    // Making the orders is part of training: its time counts into the first
    // epoch's seconds (the blocked copy) and each epoch's (its order).
    let setup = Instant::now();
    let mut orders = EpochOrders::for_run(data, settings, backend.parallelism());
    let mut setup_seconds = setup.elapsed().as_secs_f64();
    let mut complete = true;
    let mut stopped_early = false;
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
    while state.epoch < settings.epochs {
        let epoch = state.epoch;
        let rates = settings.hp.rates_at(&grid, epoch);
        state.lr = rates[0].lr;
        let t0 = Instant::now();
        orders.start(epoch);
        let from = state.position.min(n);
        let spans = spans_from(&orders.ends, from, n - from);
        let mut out = backend.train_epoch(
            &mut model,
            orders.ratings(&data.train),
            &orders.order[from..],
            &spans,
            orders.grid(),
            &orders.following,
            &rates,
            stop,
        )?;
        let seconds = t0.elapsed().as_secs_f64() + std::mem::take(&mut setup_seconds);
        state.train_seconds += seconds;
        if from + out.done < n {
            // Stopped mid-epoch: make the host authoritative, remember where.
            out.ledger.merge(&backend.finish(&mut model)?);
            state.partial_ledger.merge(&out.ledger);
            state.position = from + out.done;
            complete = false;
            save(&state, &model, best_model.as_ref())?;
            break;
        }
        let (tests, eval_ledger) = backend.evaluate(&model, &data.test)?;
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
            let first = if epoch == 0 { p.resident as f64 } else { 0.0 };
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend of a given kind that trains nothing: enough for resolving
    /// an order.
    struct Kind(&'static str, usize);

    impl Backend for Kind {
        fn kind(&self) -> String {
            self.0.into()
        }
        fn adapter(&self) -> String {
            self.0.into()
        }
        fn train_epoch(
            &mut self,
            _: &mut Model,
            _: &[Rating],
            _: &[u32],
            _: &[u32],
            _: Option<&BlockedRatings>,
            _: &[u32],
            _: &[Rate],
            _: &AtomicBool,
        ) -> Result<EpochTrain> {
            unreachable!("only resolved against")
        }
        fn evaluate(&mut self, _: &Model, _: &[Rating]) -> Result<(Vec<Metrics>, Ledger)> {
            unreachable!("only resolved against")
        }
        fn finish(&mut self, _: &mut Model) -> Result<Ledger> {
            unreachable!("only resolved against")
        }
        fn parallelism(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn orders_resolve_by_backend_and_refuse_what_cannot_work() {
        let (cpu, cpu16, gpu) = (Kind("cpu", 2), Kind("cpu", 16), Kind("vulkan", 1));
        assert_eq!(Order::Auto.resolve(&cpu, false).unwrap(), Order::Blocked { bins: 4 });
        assert_eq!(Order::Auto.resolve(&cpu16, false).unwrap(), Order::Blocked { bins: 32 });
        assert_eq!(Order::Auto.resolve(&cpu, true).unwrap(), Order::Shuffled, "co-partitioning keeps its order");
        assert_eq!(Order::Auto.resolve(&gpu, false).unwrap(), Order::Shuffled);
        assert_eq!(Order::Shuffled.resolve(&cpu, false).unwrap(), Order::Shuffled);
        let blocked = Order::Blocked { bins: 5 };
        assert_eq!(blocked.resolve(&cpu, false).unwrap(), blocked);
        let e = blocked.resolve(&gpu, false).unwrap_err().to_string();
        assert!(e.contains("--order") && e.contains("CPU backend") && e.contains("vulkan"), "{e}");
        let e = blocked.resolve(&cpu, true).unwrap_err().to_string();
        assert!(e.contains("--co-partition"), "{e}");
        assert!(Order::Blocked { bins: 0 }.resolve(&cpu, false).is_err());
        assert_eq!(blocked.name(), "blocked:5");
    }
}
