//! Training across MPI ranks (the `mpi` feature; docs/ARCHITECTURE.md,
//! "Past one machine"). Every rank runs the same run: the same data, split,
//! layout and control flow, so that each makes the same decisions (which
//! setting, when to stop) without being told. What differs is which blocks
//! a rank trains: [`RotateCpu`] is a [`Backend`] that walks the blocked
//! order's rounds ([`crate::engine::rotate`]), trains its own blocks and
//! passes bins to the ranks that train them next.
//!
//! MPI is Open MPI or MPICH through the `mpi` crate; the front end starts it
//! ([`start`]) and holds the returned guard until it exits.

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::datatype::PartitionMut;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use std::sync::atomic::Ordering;
use web_time::Instant;

use crate::data::Rating;
use crate::engine::rotate::{Move, Rotation};
use crate::engine::{Backend, EpochInput, EpochTrain, RunLayout, Wire};
use crate::error::{Error, Result};
use crate::model::{Metrics, Model, row_stride};
use crate::stage::Ledger;
use crate::stage::copartition::Side;
use crate::train::cpu::{apply_all, steps_of};

/// Environment variables an MPI launcher sets in every process it starts:
/// Open MPI's `mpirun`, MPICH's Hydra, PMIx launchers and Slurm's `srun`.
const LAUNCHED_BY: [&str; 5] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS"];

/// Whether an MPI launcher started this process.
pub fn launched() -> bool {
    LAUNCHED_BY.iter().any(|v| std::env::var_os(v).is_some())
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

/// The blocked order across the world's ranks on each rank's CPU, one
/// thread per rank (module docs).
pub struct RotateCpu {
    bias_reg: f32,
    world: SimpleCommunicator,
    rank: usize,
    ranks: usize,
}

/// The most floats one message carries (MPI counts are `int`).
const MAX_MESSAGE: usize = i32::MAX as usize;

impl RotateCpu {
    /// Over the world of a started MPI ([`start`]).
    pub fn new(bias_reg: f32) -> Result<Self> {
        if !mpi::environment::is_initialized() {
            return Err(Error::arg(
                "`distributed`",
                "rotate",
                "needs MPI started first (the command line starts it when an MPI launcher such as mpirun started \
                 the process)",
            ));
        }
        let world = SimpleCommunicator::world();
        let (rank, ranks) = (world.rank() as usize, world.size() as usize);
        Ok(RotateCpu { bias_reg, world, rank, ranks })
    }

    /// Whether any rank's stop flag is up: the ranks stop together, at an
    /// epoch's start, or not at all.
    fn any_stopped(&self, stop: bool) -> bool {
        let mut any = 0i32;
        self.world.all_reduce_into(&i32::from(stop), &mut any, SystemOperation::max());
        any != 0
    }

    /// Sends and receives `moves` (every rank lists the same, in the same
    /// order, so messages between two ranks match in order); returns the
    /// bytes this rank handed to MPI.
    fn exchange(&self, rotation: &Rotation, model: &mut Model, moves: &[Move]) -> Result<u64> {
        let s = model.stride;
        let mine = |m: &&Move| m.from == self.rank || m.to == self.rank;
        let (mut sends, mut recvs) = (Vec::new(), Vec::new());
        for m in moves.iter().filter(mine) {
            let rows = rotation.rows(m.side, m.bin);
            let floats = rows.len() * s;
            if floats > MAX_MESSAGE {
                return Err(Error::arg(
                    "`distributed`",
                    "rotate",
                    format!("a bin of {} rows is more than one MPI message holds: use more bins", rows.len()),
                ));
            }
            if m.from == self.rank {
                let table = table(model, m.side);
                let mut buf = Vec::with_capacity(floats);
                for &r in rows {
                    buf.extend_from_slice(&table[r as usize * s..][..s]);
                }
                sends.push((m.to, buf));
            } else {
                recvs.push((m.from, *m, vec![0f32; floats]));
            }
        }
        let sent = sends.iter().map(|(_, b)| (b.len() * 4) as u64).sum();
        mpi::request::scope(|scope| {
            let mut pending = Vec::with_capacity(sends.len() + recvs.len());
            for (to, buf) in &sends {
                pending.push(self.world.process_at_rank(*to as i32).immediate_send(scope, &buf[..]));
            }
            for (from, _, buf) in &mut recvs {
                pending.push(self.world.process_at_rank(*from as i32).immediate_receive_into(scope, &mut buf[..]));
            }
            for p in pending {
                p.wait();
            }
        });
        for (_, m, buf) in &recvs {
            let table = table_mut(model, m.side);
            for (&r, row) in rotation.rows(m.side, m.bin).iter().zip(buf.chunks_exact(s)) {
                table[r as usize * s..][..s].copy_from_slice(row);
            }
        }
        Ok(sent)
    }

    /// The epoch's end: every rank's held bins to every rank (one
    /// all-gather), so that each holds the whole model. Returns the bytes
    /// this rank handed to MPI, counted once per receiving rank.
    fn gather(&self, rotation: &Rotation, model: &mut Model, holders: &crate::engine::rotate::Holders) -> Result<u64> {
        let s = model.stride;
        let bins: Vec<_> = (0..self.ranks).map(|k| rotation.gathered(holders, k)).collect();
        let counts: Vec<usize> = bins.iter().map(|b| rotation.rows_of(b) * s).collect();
        if counts.iter().sum::<usize>() > MAX_MESSAGE {
            return Err(Error::arg(
                "`distributed`",
                "rotate",
                "the tables are more than one MPI all-gather holds (2^31 floats)",
            ));
        }
        let mut send = Vec::with_capacity(counts[self.rank]);
        for &(side, bin) in &bins[self.rank] {
            let table = table(model, side);
            for &r in rotation.rows(side, bin) {
                send.extend_from_slice(&table[r as usize * s..][..s]);
            }
        }
        let displs: Vec<i32> =
            counts.iter().scan(0usize, |at, &c| Some(std::mem::replace(at, *at + c) as i32)).collect();
        let counts32: Vec<i32> = counts.iter().map(|&c| c as i32).collect();
        let mut recv = vec![0f32; counts.iter().sum()];
        {
            let mut parts = PartitionMut::new(&mut recv[..], &counts32[..], &displs[..]);
            self.world.all_gather_varcount_into(&send[..], &mut parts);
        }
        for (k, held) in bins.iter().enumerate() {
            let mut at = displs[k] as usize;
            for &(side, bin) in held {
                let table = table_mut(model, side);
                for &r in rotation.rows(side, bin) {
                    table[r as usize * s..][..s].copy_from_slice(&recv[at..at + s]);
                    at += s;
                }
            }
        }
        Ok((send.len() * 4) as u64 * (self.ranks as u64 - 1))
    }

    /// Every rank's `value`, in rank order (a control message, not counted
    /// as the model's traffic).
    fn everyone<T: mpi::datatype::Equivalence + Default + Clone>(&self, value: T) -> Vec<T> {
        let mut all = vec![T::default(); self.ranks];
        self.world.all_gather_into(&value, &mut all[..]);
        all
    }
}

fn table(model: &Model, side: Side) -> &[f32] {
    match side {
        Side::Users => &model.users,
        Side::Items => &model.items,
    }
}

fn table_mut(model: &mut Model, side: Side) -> &mut [f32] {
    match side {
        Side::Users => &mut model.users,
        Side::Items => &mut model.items,
    }
}

impl Backend for RotateCpu {
    fn kind(&self) -> String {
        "cpu".into()
    }

    fn adapter(&self) -> String {
        format!("the CPU of each of {} MPI ranks, one thread each (`distributed` rotate)", self.ranks)
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn needs_plan(&self, _layout: &RunLayout) -> bool {
        // The rounds come from the order's permutations (`Rotation::walk`).
        false
    }

    fn train_epoch(&mut self, model: &mut Model, input: &EpochInput) -> Result<EpochTrain> {
        let t0 = Instant::now();
        if input.from > 0 {
            return Err(Error::arg(
                "`resume`",
                "a checkpoint inside an epoch",
                "`distributed` rotate resumes at an epoch's start; this checkpoint stopped inside one",
            ));
        }
        if self.any_stopped(input.stop.load(Ordering::Relaxed)) {
            return Ok(EpochTrain { sse: vec![0.0; input.rates.len()], ..Default::default() });
        }
        let layout = input.layout;
        let rotation = Rotation::new(layout, self.ranks)?;
        let order = layout.blocked_epoch(input.epoch).expect("a rotation's layout is blocked");
        let steps = steps_of(model, input.rates, self.bias_reg);
        let (s, sub) = (model.stride, row_stride(model.rank));
        let mut sse = vec![0.0f64; steps.len()];
        let (mut done, mut sent) = (0usize, 0u64);
        let holders = rotation.walk(layout, &order, |moves, tasks| {
            sent += self.exchange(&rotation, model, moves)?;
            for t in tasks.iter().filter(|t| t.rank == self.rank) {
                let ratings: &[Rating] = layout.block_sweep(t.block, t.sweep);
                for r in ratings {
                    let p = &mut model.users[r.user as usize * s..][..s];
                    let q = &mut model.items[r.item as usize * s..][..s];
                    apply_all(&steps, sub, p, q, r.value, &mut sse);
                }
                done += ratings.len();
                input.progress.fetch_add(ratings.len(), Ordering::Relaxed);
            }
            Ok(())
        })?;
        sent += self.gather(&rotation, model, &holders)?;
        let host_seconds = t0.elapsed().as_secs_f64();
        // Every rank sums the same numbers in rank order: one result on all.
        let by_rank = self.everyone(sent);
        let done_by_rank = self.everyone(done as u64);
        let mut total_sse = vec![0.0f64; sse.len()];
        for (g, mine) in sse.iter().enumerate() {
            for theirs in self.everyone(*mine) {
                total_sse[g] += theirs;
            }
        }
        let row_bytes = (s * 4) as u64;
        let predicted = rotation.traffic(layout, input.epoch, row_bytes)?.by_rank();
        let done: usize = done_by_rank.iter().sum::<u64>() as usize;
        Ok(EpochTrain {
            sse: total_sse,
            count: done as u64,
            done,
            host_seconds,
            workers: self.ranks as f64,
            wire: Some(Wire { bytes: by_rank, predicted }),
            ..Default::default()
        })
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)> {
        // Every rank holds the whole model after an epoch (`gather`).
        Ok((model.evaluate_all(test), Ledger::default()))
    }

    fn finish(&mut self, _model: &mut Model) -> Result<Ledger> {
        Ok(Ledger::default())
    }
}
