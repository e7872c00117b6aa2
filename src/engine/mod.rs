//! The engine contract, below both the training loop ([`crate::train`]) and
//! the backends that implement it ([`crate::gpu`], the CPU backends of
//! [`crate::train::cpu`]): the epoch order ([`order`]), what a backend is
//! given per epoch ([`EpochInput`]) and returns ([`EpochTrain`]), and the
//! per-run listings a staging backend needs ([`rows`], [`walk`]).
//! docs/ARCHITECTURE.md describes how the parts fit.

pub mod blocked;
pub mod order;
pub mod rotate;
pub mod rows;
pub mod sca;
pub mod shard;
pub mod simulate;
pub mod slab;
pub mod walk;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

pub use order::{BlockedEpoch, EpochPlan, Group, LayoutSpec, NO_GROUP, Order, Part, RunLayout, Target};

use crate::data::Rating;
use crate::error::Result;
use crate::model::{Metrics, Model, Rate};
use crate::stage::Ledger;

/// One epoch's work for a backend.
pub struct EpochInput<'a> {
    /// The epoch's index (0-based).
    pub epoch: usize,
    pub layout: &'a RunLayout,
    /// The epoch's plan; empty where the backend needs none
    /// ([`Backend::needs_plan`]) and the epoch starts at its beginning.
    pub plan: &'a EpochPlan,
    /// The first part of `plan` to train: past 0 when a run resumes inside
    /// the epoch.
    pub from: usize,
    /// The next epoch's plan (`None` after the last), for policies that plan
    /// ahead.
    pub following: Option<&'a EpochPlan>,
    /// Model `g` of those side by side is updated with `rates[g]` (one rate
    /// outside a grid search).
    pub rates: &'a [Rate],
    /// When raised, the pass ends at the next part boundary, leaving the
    /// model consistent; [`EpochTrain::done`] says how far it got.
    pub stop: &'a AtomicBool,
    /// Ratings of this pass trained so far: the backend adds to it as its
    /// units, rounds or submissions finish, so that a front end can show
    /// progress inside an epoch ([`crate::session::Run::progress`]).
    pub progress: &'a AtomicUsize,
}

/// What one epoch of training returned, before evaluation.
#[derive(Debug, Clone, Default)]
pub struct EpochTrain {
    /// Sum of squared errors seen by SGD before each update, per model side
    /// by side (one outside a grid search).
    pub sse: Vec<f64>,
    pub count: u64,
    /// Ratings of the plan trained: all of them, or fewer when the stop flag
    /// was raised (then a whole number of parts from `from`).
    pub done: usize,
    /// Ratings whose user or item an earlier rating of the same parallel
    /// round also updates: the Hogwild updates that may race. 0 in
    /// deterministic mode and in the blocked order on the CPU (no two
    /// threads share a row).
    pub conflicts: u64,
    pub ledger: Ledger,
    /// The host's own work in the epoch: its wall time less the time it
    /// waited for the device.
    pub host_seconds: f64,
    /// Device time of the epoch's passes, from timestamp queries where the
    /// adapter has them (`None` elsewhere and on CPU backends).
    pub device_seconds: Option<f64>,
    /// Device dispatches (compute passes' kernel launches) in the epoch.
    pub dispatches: u64,
    /// Workers that trained at once, on average over the epoch's SGD
    /// launches: blocks of a blocked round (one worker each), a Hogwild
    /// launch's invocations, a wave's ratings, a CPU's threads.
    pub workers: f64,
    /// Bytes handed to MPI, where the run spans ranks.
    pub wire: Option<Wire>,
}

/// One epoch's bytes handed to MPI, per sending rank: counted where each
/// message is handed over, and worked out beforehand from the order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Wire {
    pub bytes: Vec<u64>,
    pub predicted: Vec<u64>,
}

impl Wire {
    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }

    pub fn predicted_total(&self) -> u64 {
        self.predicted.iter().sum()
    }
}

/// The cost model's traffic, for policies that have one.
#[derive(Debug, Clone, Copy)]
pub struct Prediction {
    /// Rows staged in (and written back) per epoch.
    pub rows_per_epoch: f64,
    /// Rows loaded before the first epoch and written back after the last.
    pub resident: u64,
    /// The first epoch's rows in beyond `rows_per_epoch` (a cache filling).
    pub cold: f64,
    /// Cache slots: the cached rows the last epoch writes back besides the
    /// resident ones.
    pub cache: u64,
    pub row_bytes: u64,
}

/// A training engine: CPU reference, CPU Hogwild, or a GPU adapter.
pub trait Backend {
    /// `cpu` or the wgpu backend name (`vulkan`, `gl`, `noop`, ...).
    fn kind(&self) -> String;
    /// The adapter's name (or the CPU's description).
    fn adapter(&self) -> String;
    /// One pass over `input.plan` from `input.from`.
    fn train_epoch(&mut self, model: &mut Model, input: &EpochInput) -> Result<EpochTrain>;
    /// Test metrics of each model side by side, and the traffic they took.
    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)>;
    /// Makes the host tables authoritative again (writes back every row the
    /// device still holds); returns that traffic.
    fn finish(&mut self, model: &mut Model) -> Result<Ledger>;
    /// Makes the host tables' copies of `rows` (global rows: users, then
    /// items after the users) current, writing back those the backend
    /// holds and has trained; returns that traffic. A run across MPI ranks
    /// calls it before it sends rows to another rank.
    fn sync_out(&mut self, _model: &mut Model, _rows: &[u32]) -> Result<Ledger> {
        Ok(Ledger::default())
    }
    /// The host tables' copies of `rows` changed (another MPI rank trained
    /// them): the backend replaces its own copies; returns that traffic.
    fn sync_in(&mut self, _model: &Model, _rows: &[u32]) -> Result<Ledger> {
        Ok(Ledger::default())
    }
    /// The cost model's prediction of training traffic, if the policy has one.
    fn prediction(&self) -> Option<Prediction> {
        None
    }
    /// Whether [`Backend::train_epoch`] reads [`EpochInput::plan`] (and
    /// `following`) for an epoch of `layout` trained from its beginning. A GPU holding
    /// every row in a tiled blocked order derives the order on the device
    /// from [`RunLayout::blocked_epoch`], and the loop then makes no plan:
    /// on 10M ratings a plan is 2M part ids per epoch.
    fn needs_plan(&self, _layout: &RunLayout) -> bool {
        true
    }
    /// Threads the backend lays the run out with (the layout does not
    /// depend on how many).
    fn parallelism(&self) -> usize {
        1
    }
    /// The layout this backend was built for, if it was (a GPU backend holds
    /// it on the device): the run must train that one.
    fn run_layout(&self) -> Option<Arc<RunLayout>> {
        None
    }
    /// The slab slot by slot, for a backend that has one.
    fn slab_view(&self) -> Option<crate::stage::SlabView> {
        None
    }
    /// MPI ranks the backend trains across (1 for one process).
    fn ranks(&self) -> usize {
        1
    }
    /// This process's MPI rank (0 for one process).
    fn rank(&self) -> usize {
        0
    }
    /// Every MPI rank's `ok`, in rank order, asked of all of them at once
    /// (one process: its own).
    fn vote(&mut self, ok: bool) -> Result<Vec<bool>> {
        Ok(vec![ok])
    }
    /// What else than the step sizes may make this backend's training
    /// diverge, said in the error (a parameter server's staleness).
    fn divergence_hint(&self) -> Option<&'static str> {
        None
    }
    /// Whether the backend runs no kernels (wgpu's noop backend): its speed
    /// is the host's ceiling, and its model is not a model.
    fn is_ceiling(&self) -> bool {
        false
    }
}
