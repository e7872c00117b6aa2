//! Training across MPI ranks (the `mpi` feature; docs/ARCHITECTURE.md,
//! "Past one machine"). Every rank runs the same run: the same data, split,
//! layout and control flow, so that each makes the same decisions (which
//! setting, when to stop) without being told. What differs is which blocks
//! a rank trains: [`Rotate`] is a [`Backend`] that walks the blocked
//! order's rounds ([`crate::engine::rotate`]), trains its own blocks on
//! the rank's threads or its GPU, and passes bins to the ranks that train
//! them next.
//!
//! MPI is Open MPI or MPICH through the `mpi` crate; the front end starts it
//! ([`start`]) and holds the returned guard until it exits.

mod link;
mod rotate;
mod server;

pub use rotate::Rotate;
pub use server::Server;

use std::sync::atomic::Ordering;

use crate::data::Rating;
use crate::engine::{Backend, EpochInput, EpochTrain, RunLayout};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::stage::Ledger;

use mpi::topology::{Communicator, SimpleCommunicator};

/// Environment variables an MPI launcher sets in every process it starts:
/// Open MPI's `mpirun`, MPICH's Hydra, PMIx launchers and Slurm's `srun`.
const LAUNCHED_BY: [&str; 5] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS"];

/// Whether an MPI launcher started this process.
pub fn launched() -> bool {
    LAUNCHED_BY.iter().any(|v| std::env::var_os(v).is_some())
}

/// This process's place among the ranks on its machine, as the launcher
/// says (Open MPI, MPICH's Hydra, Slurm); 0 where none says.
pub fn local_rank() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// MPI started for this process: finalised when dropped, so the front end
/// holds it until it exits.
pub struct Started {
    _universe: mpi::environment::Universe,
}

/// Starts MPI (main thread only calls it: `Funneled`). `None` where it was
/// started already.
pub fn start() -> Option<Started> {
    let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)?;
    Some(Started { _universe: universe })
}

/// This process's rank and the world's size; `(0, 1)` where MPI was not
/// started.
pub fn world() -> (usize, usize) {
    if !mpi::environment::is_initialized() || mpi::environment::is_finalized() {
        return (0, 1);
    }
    let w = SimpleCommunicator::world();
    (w.rank() as usize, w.size() as usize)
}

/// What trains a rank's share of a round (rotate) or a clock (the server).
pub enum Trainer {
    /// The rank's threads: a round's blocks share no row, so they train at
    /// once without races, and the model is the same on any number.
    Threads(rayon::ThreadPool),
    /// The rank's own GPU backend, handed the rank's ratings of a round or
    /// clock as parts of the layout it holds: the run's (`own_layout`
    /// false), or, for the parameter server in an order whose clocks every
    /// rank shares (a part), a layout of the rank's ratings alone
    /// ([`crate::engine::shard::Shard::own_layout`]), part `p` the rank's
    /// share of the run's part `p`. The host tables stay the model that
    /// travels: rows are written back before they leave the rank or are
    /// read there ([`Trainer::sync_out`]), and staged in again where the
    /// device holds them after the host's copy changed
    /// ([`Trainer::sync_in`]).
    Device { gpu: Box<dyn Backend>, own_layout: bool },
}

impl Trainer {
    /// `threads` threads (at least one).
    pub fn threads(threads: usize) -> Result<Self> {
        Ok(Trainer::Threads(rotate::pool(threads)?))
    }

    fn kind(&self) -> String {
        match self {
            Trainer::Threads(_) => "cpu".into(),
            Trainer::Device { gpu, .. } => gpu.kind(),
        }
    }

    /// Where a rank trains, for the report's adapter line.
    fn describe(&self, rank: usize, ranks: usize) -> String {
        match self {
            Trainer::Threads(pool) => {
                let threads = pool.current_num_threads();
                format!(
                    "the CPU of each of {ranks} MPI ranks, {threads} thread{} each",
                    if threads == 1 { "" } else { "s" }
                )
            }
            Trainer::Device { gpu, .. } => {
                format!("each of {ranks} MPI ranks' own GPU (rank {rank}'s: {})", gpu.adapter())
            }
        }
    }

    fn parallelism(&self) -> usize {
        match self {
            Trainer::Threads(pool) => pool.current_num_threads(),
            Trainer::Device { gpu, .. } => gpu.parallelism(),
        }
    }

    /// The layout the run must train: a device's, unless it is the rank's
    /// own.
    fn run_layout(&self) -> Option<std::sync::Arc<RunLayout>> {
        match self {
            Trainer::Device { gpu, own_layout: false } => gpu.run_layout(),
            _ => None,
        }
    }

    fn is_ceiling(&self) -> bool {
        matches!(self, Trainer::Device { gpu, .. } if gpu.is_ceiling())
    }

    fn finish(&mut self, model: &mut Model) -> Result<Ledger> {
        match self {
            Trainer::Threads(_) => Ok(Ledger::default()),
            Trainer::Device { gpu, .. } => gpu.finish(model),
        }
    }

    /// Makes the host's copies of `rows` (global rows) current.
    fn sync_out(&mut self, model: &mut Model, rows: &[u32], epoch: &mut DeviceEpoch) -> Result<()> {
        if let Trainer::Device { gpu, .. } = self {
            epoch.ledger.merge(&gpu.sync_out(model, rows)?);
        }
        Ok(())
    }

    /// The host's copies of `rows` (global rows) changed: the device's too.
    fn sync_in(&mut self, model: &Model, rows: &[u32], epoch: &mut DeviceEpoch) -> Result<()> {
        if let Trainer::Device { gpu, .. } = self {
            epoch.ledger.merge(&gpu.sync_in(model, rows)?);
        }
        Ok(())
    }
}

/// A device's epoch over a run of rounds: its traffic, time and launches,
/// and the time the host waited for it.
pub(crate) struct DeviceEpoch {
    ledger: Ledger,
    device_seconds: Option<f64>,
    dispatches: u64,
    waited: f64,
    /// A round is never cut short: every rank trains each round whole, and
    /// a stop is voted at the next epoch's start.
    never: std::sync::atomic::AtomicBool,
    plan: crate::engine::EpochPlan,
}

impl Default for DeviceEpoch {
    fn default() -> Self {
        DeviceEpoch {
            ledger: Ledger::default(),
            device_seconds: Some(0.0),
            dispatches: 0,
            waited: 0.0,
            never: std::sync::atomic::AtomicBool::new(false),
            plan: crate::engine::EpochPlan::default(),
        }
    }
}

impl DeviceEpoch {
    /// Trains `parts` of the layout `device` holds (the run's, or a rank's
    /// own) as one group (a round's parts share no row), adding each
    /// model's squared errors into `sse`; returns the ratings trained.
    fn train(
        &mut self,
        device: &mut dyn Backend,
        model: &mut Model,
        input: &EpochInput,
        parts: impl Iterator<Item = u32>,
        sse: &mut [f64],
    ) -> Result<usize> {
        self.plan.parts.clear();
        self.plan.parts.extend(parts);
        if self.plan.parts.is_empty() {
            return Ok(0);
        }
        self.plan.groups.clear();
        self.plan.groups.push(crate::engine::Group { end: self.plan.parts.len() as u32, id: crate::engine::NO_GROUP });
        let layout = device.run_layout().expect("a GPU backend holds the layout it trains");
        let round = EpochInput {
            epoch: input.epoch,
            layout: &layout,
            plan: &self.plan,
            from: 0,
            following: None,
            rates: input.rates,
            stop: &self.never,
            progress: input.progress,
        };
        let started = web_time::Instant::now();
        let t = device.train_epoch(model, &round)?;
        self.waited += (started.elapsed().as_secs_f64() - t.host_seconds).max(0.0);
        for (total, part) in sse.iter_mut().zip(&t.sse) {
            *total += part;
        }
        self.ledger.merge(&t.ledger);
        self.device_seconds = self.device_seconds.zip(t.device_seconds).map(|(a, b)| a + b);
        self.dispatches += t.dispatches;
        Ok(t.done)
    }

    /// The epoch's figures on `trainer`: `ledger` (every rank's, added up)
    /// and the device's time and launches where it is a device.
    fn finish(&self, trainer: &Trainer, ledger: Ledger, wall: f64, mut t: EpochTrain) -> EpochTrain {
        t.ledger = ledger;
        t.host_seconds = (wall - self.waited).max(0.0);
        if let Trainer::Device { .. } = trainer {
            t.device_seconds = self.device_seconds;
            t.dispatches = self.dispatches;
        }
        t
    }
}

/// What tells one run's layout from another's: where its ratings are, how
/// many, over how many rows, laid out how, and its first and last ratings
/// (a layout freed and another made at its address differs in one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayoutKey {
    at: usize,
    ratings: usize,
    rows: (usize, usize),
    spec: String,
    ends: Option<(Rating, Rating)>,
}

impl LayoutKey {
    /// What every rank must agree on before an epoch: the layout (but where
    /// it lies in memory), the epoch, its rates and the model's shape.
    fn fingerprint(&self, epoch: usize, rates: &[crate::model::Rate], model: &Model) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.ratings, self.rows, &self.spec, epoch, model.stride, model.users.len(), model.items.len()).hash(&mut h);
        if let Some((a, b)) = self.ends {
            for r in [a, b] {
                (r.user, r.item, r.value.to_bits()).hash(&mut h);
            }
        }
        for r in rates {
            (r.lr.to_bits(), r.reg.to_bits()).hash(&mut h);
        }
        h.finish()
    }

    pub(crate) fn of(layout: &RunLayout) -> Self {
        let r = layout.ratings();
        LayoutKey {
            at: r.as_ptr() as usize,
            ratings: r.len(),
            rows: (layout.n_users(), layout.n_items()),
            spec: format!("{:?}", layout.spec()),
            ends: r.first().zip(r.last()).map(|(a, b)| (*a, *b)),
        }
    }
}

/// An epoch's start under `mode`: refuses a resume inside an epoch, then
/// [`agree`]s. Returns whether the ranks stop here.
pub(crate) fn begin_epoch(
    link: &link::Link,
    mode: &str,
    salt: u64,
    input: &EpochInput,
    model: &Model,
) -> Result<(LayoutKey, bool)> {
    if input.from > 0 {
        return Err(Error::arg(
            "`resume`",
            "a checkpoint inside an epoch",
            format!("`distributed` {mode} resumes at an epoch's start; this checkpoint stopped inside one"),
        ));
    }
    let key = LayoutKey::of(input.layout);
    let stop = agree(link, &key, salt, input, model)?;
    Ok((key, stop))
}

/// The epoch's figures of every rank, added in rank order so that every
/// rank holds one result: the bytes each handed MPI, the ratings trained,
/// each model's squared errors.
pub(crate) fn totals(link: &link::Link, sent: u64, done: u64, sse: &[f64]) -> Result<(Vec<u64>, usize, Vec<f64>)> {
    let bytes = link.everyone(sent)?;
    let done = link.everyone(done)?.iter().sum::<u64>() as usize;
    let sse = sse.iter().map(|&mine| Ok(link.everyone(mine)?.iter().sum())).collect::<Result<Vec<f64>>>()?;
    Ok((bytes, done, sse))
}

/// Every rank's `ok`, in rank order ([`Backend::vote`]).
pub(crate) fn votes(link: &link::Link, ok: bool) -> Result<Vec<bool>> {
    Ok(link.everyone(u8::from(ok))?.iter().map(|&v| v != 0).collect())
}

/// Every rank's `ledger`, added up in rank order: one result on all.
pub(crate) fn ledger_sum(link: &link::Link, ledger: Ledger) -> Result<Ledger> {
    Ok(link.everyone(ledger)?.iter().fold(Ledger::default(), |mut sum, l| {
        sum.merge(l);
        sum
    }))
}

/// The vote at an epoch's start. The ranks stop together there: a stop
/// raised on any rank (a signal, a cancel) stops all of them. With it goes
/// a fingerprint of what each rank is about to train (`salt`: the mode and
/// its settings), so that ranks started with other flags or another file
/// fail by name instead of exchanging rows of different runs. Returns
/// whether to stop.
pub(crate) fn agree(link: &link::Link, key: &LayoutKey, salt: u64, input: &EpochInput, model: &Model) -> Result<bool> {
    let mine = key.fingerprint(input.epoch, input.rates, model) ^ salt;
    let votes = link.everyone([u64::from(input.stop.load(Ordering::Relaxed)), mine])?;
    if let Some(k) = votes.iter().position(|v| v[1] != mine) {
        return Err(Error::Peer {
            ranks: k.to_string(),
            reason: format!(
                "trains another run than rank {} (other data, settings, mode or epoch): every rank must be \
                 started with the same flags on the same file",
                link.rank
            ),
        });
    }
    Ok(votes.iter().any(|v| v[0] != 0))
}
