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

pub mod cpu;
pub mod plan;
mod setup;

pub use setup::{BackendSpec, Opened, Planned, auto_batch, open_backend, plan_budget, table_bytes};

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::data::{Dataset, Rating};
use crate::error::Result;
use crate::model::{HyperParams, Metrics, Model};
use crate::stage::Ledger;

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
/// current one when the run advances.
pub struct EpochOrders {
    n: usize,
    seed: u64,
    epochs: usize,
    pub order: Vec<u32>,
    pub following: Vec<u32>,
}

impl EpochOrders {
    pub fn new(n: usize, seed: u64, epochs: usize) -> Self {
        EpochOrders { n, seed, epochs, order: Vec::with_capacity(n), following: Vec::with_capacity(n) }
    }

    /// Makes `order` epoch `epoch`'s and `following` the next one's. Call
    /// with 0, 1, 2, ... in turn.
    pub fn start(&mut self, epoch: usize) {
        if epoch == 0 || self.following.is_empty() {
            epoch_order(self.n, self.seed, epoch, &mut self.order);
        } else {
            std::mem::swap(&mut self.order, &mut self.following);
        }
        self.following.clear();
        if epoch + 1 < self.epochs {
            epoch_order(self.n, self.seed, epoch + 1, &mut self.following);
        }
    }
}

/// What one epoch of training returned, before evaluation.
#[derive(Debug, Clone, Default)]
pub struct EpochTrain {
    /// Sum of squared errors seen by SGD before each update.
    pub sse: f64,
    pub count: u64,
    pub ledger: Ledger,
}

/// A training engine: CPU reference, CPU Hogwild, or a GPU adapter.
pub trait Backend {
    /// `cpu` or the wgpu backend name (`vulkan`, `gl`, ...).
    fn kind(&self) -> String;
    /// The adapter's name (or the CPU's description).
    fn adapter(&self) -> String;
    /// One pass over `order` (indices into `train`) with learning rate `lr`;
    /// `following` is the next epoch's order (empty after the last), for
    /// policies that plan ahead.
    fn train_epoch(
        &mut self,
        model: &mut Model,
        train: &[Rating],
        order: &[u32],
        following: &[u32],
        lr: f32,
    ) -> Result<EpochTrain>;
    /// Test metrics of the current model, and the traffic it took.
    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Metrics, Ledger)>;
    /// Makes the host tables authoritative again (writes back every row the
    /// device still holds); returns that traffic.
    fn finish(&mut self, model: &mut Model) -> Result<Ledger>;
    /// The cost model's prediction of training traffic, if the policy has one.
    fn prediction(&self) -> Option<Prediction> {
        None
    }
}

/// Settings of one training run (everything but the backend choice, which the
/// caller resolves into a [`Backend`]).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSettings {
    pub hp: HyperParams,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub deterministic: bool,
}

/// One epoch's figures, as printed and reported.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub lr: f32,
    pub train_rmse: f64,
    pub test_rmse: f64,
    pub test_mae: f64,
    pub seconds: f64,
    pub ratings_per_sec: f64,
    pub ledger: Ledger,
    /// The cost model's training traffic for this epoch, where the policy has
    /// one (`sca`): rows in, rows out, and their bytes host→device.
    pub predicted_rows_in: Option<f64>,
    pub predicted_rows_out: Option<f64>,
    pub predicted_bytes_h2d: Option<f64>,
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

/// The result of [`train`].
pub struct TrainOutcome {
    pub model: Model,
    pub epochs: Vec<EpochReport>,
    pub final_metrics: Metrics,
    /// Training ratings per second over all epochs (evaluation excluded).
    pub ratings_per_sec: f64,
}

/// Trains a fresh model on `data` with `backend`, calling `on_epoch` after
/// each epoch.
pub fn train(
    data: &Dataset,
    settings: &TrainSettings,
    backend: &mut dyn Backend,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<TrainOutcome> {
    let mut model = Model::init(data, &settings.hp, settings.seed);
    let mut orders = EpochOrders::new(data.train.len(), settings.seed, settings.epochs);
    let mut epochs = Vec::with_capacity(settings.epochs);
    let mut train_seconds = 0.0;
    for epoch in 0..settings.epochs {
        let lr = settings.hp.lr_at(epoch);
        orders.start(epoch);
        let t0 = Instant::now();
        let mut out = backend.train_epoch(&mut model, &data.train, &orders.order, &orders.following, lr)?;
        let seconds = t0.elapsed().as_secs_f64();
        train_seconds += seconds;
        let (test, eval_ledger) = backend.evaluate(&model, &data.test)?;
        out.ledger.merge(&eval_ledger);
        if epoch + 1 == settings.epochs {
            let flush = backend.finish(&mut model)?;
            out.ledger.merge(&flush);
        }
        let report = EpochReport {
            epoch: epoch + 1,
            lr,
            train_rmse: (out.sse / out.count.max(1) as f64).sqrt(),
            test_rmse: test.rmse,
            test_mae: test.mae,
            seconds,
            ratings_per_sec: data.train.len() as f64 / seconds.max(1e-9),
            ledger: out.ledger,
            predicted_rows_in: None,
            predicted_rows_out: None,
            predicted_bytes_h2d: None,
        };
        let report = match backend.prediction() {
            Some(p) => {
                let first = if epoch == 0 { p.resident as f64 } else { 0.0 };
                let last = if epoch + 1 == settings.epochs { p.resident as f64 } else { 0.0 };
                EpochReport {
                    predicted_rows_in: Some(p.rows_per_epoch + first),
                    predicted_rows_out: Some(p.rows_per_epoch + last),
                    predicted_bytes_h2d: Some((p.rows_per_epoch + first) * p.row_bytes as f64),
                    ..report
                }
            }
            None => report,
        };
        on_epoch(&report);
        epochs.push(report);
    }
    if settings.epochs == 0 {
        backend.finish(&mut model)?;
    }
    let final_metrics = model.evaluate(&data.test);
    Ok(TrainOutcome {
        ratings_per_sec: (data.train.len() * settings.epochs) as f64 / train_seconds.max(1e-9),
        model,
        epochs,
        final_metrics,
    })
}
