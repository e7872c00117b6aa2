//! `--distributed rotate`: the blocked order across ranks, each rank on
//! its CPU's threads or its own GPU ([`crate::engine::rotate`] says who
//! trains what and which bins move; docs/ARCHITECTURE.md, "Past one
//! machine").

use std::sync::atomic::Ordering;
use std::time::Duration;
use web_time::Instant;

use super::link::{Incoming, Link, MODEL, Outgoing};
use super::{DeviceEpoch, LayoutKey, Trainer, begin_epoch, ledger_sum, totals, votes};
use crate::data::Rating;
use crate::engine::rotate::{Holders, Move, Rotation};
use crate::engine::{Backend, EpochInput, EpochTrain, RunLayout, Wire};
use crate::error::{Error, Result};
use crate::model::{Metrics, Model, Step, row_stride};
use crate::prefetch::prefetch_ptr;
use crate::stage::Ledger;
use crate::stage::copartition::Side;
use crate::train::cpu::{AHEAD, ExclusiveTables, apply_all, steps_of};

/// A rank's ratings of a round below which it trains them on one thread:
/// handing out work costs microseconds, a few thousand ratings about 50.
const THREADED_ROUND: usize = 4096;

/// The blocked order across the world's ranks.
pub struct Rotate {
    bias_reg: f32,
    link: Link,
    trainer: Trainer,
    /// The rotation of the layout trained last, and what identifies it.
    rotation: Option<(LayoutKey, Rotation)>,
}

impl Rotate {
    /// Over the world of a started MPI ([`super::start`]), each rank
    /// training on `trainer`; `limit` bounds every wait for another rank.
    pub fn new(bias_reg: f32, trainer: Trainer, limit: Duration) -> Result<Self> {
        if !mpi::environment::is_initialized() {
            return Err(Error::arg(
                "`distributed`",
                "rotate",
                "needs MPI started first (the command line starts it under an MPI launcher such as mpirun, or \
                 where `--distributed` is given)",
            ));
        }
        Ok(Rotate { bias_reg, link: Link::world(limit), trainer, rotation: None })
    }
}

/// Sends and receives `moves` (every rank lists the same moves in the same
/// order, so that two ranks' messages match in order); returns the bytes
/// this rank handed to MPI.
fn exchange(link: &Link, rotation: &Rotation, model: &mut Model, moves: &[Move]) -> Result<u64> {
    let me = link.rank;
    let (mut sends, mut recvs) = (Vec::new(), Vec::new());
    for m in moves.iter().filter(|m| m.from == me || m.to == me) {
        let bin = [(m.side, m.bin)];
        if m.from == me {
            sends.push((m.to, pack(rotation, model, &bin)));
        } else {
            recvs.push((m.from, bin, vec![0f32; rotation.rows_of(&bin) * model.stride]));
        }
    }
    let out: Vec<Outgoing> =
        sends.iter().map(|(to, b)| Outgoing { to: *to, tag: MODEL, bytes: bytemuck::cast_slice(b) }).collect();
    let mut inc: Vec<Incoming> = recvs
        .iter_mut()
        .map(|(from, _, b)| Incoming { from: *from, tag: MODEL, bytes: bytemuck::cast_slice_mut(b) })
        .collect();
    link.exchange(&out, &mut inc)?;
    drop(inc);
    for (_, bin, buf) in &recvs {
        unpack(rotation, model, bin, buf);
    }
    Ok(out.iter().map(|o| o.bytes.len() as u64).sum())
}

/// The epoch's end: every rank's held bins to every other rank, so that
/// each holds the whole model. Returns the bytes this rank handed to MPI
/// (its rows once per receiving rank).
fn gather(link: &Link, rotation: &Rotation, model: &mut Model, holders: &Holders) -> Result<u64> {
    let (s, me, ranks) = (model.stride, link.rank, link.ranks);
    let held: Vec<Vec<(Side, u32)>> = (0..ranks).map(|k| rotation.gathered(holders, k)).collect();
    let mine = pack(rotation, model, &held[me]);
    let mut theirs: Vec<Vec<f32>> =
        (0..ranks).map(|k| if k == me { Vec::new() } else { vec![0f32; rotation.rows_of(&held[k]) * s] }).collect();
    let out: Vec<Outgoing> = (0..ranks)
        .filter(|&k| k != me)
        .map(|to| Outgoing { to, tag: MODEL, bytes: bytemuck::cast_slice(&mine) })
        .collect();
    let mut inc: Vec<Incoming> = theirs
        .iter_mut()
        .enumerate()
        .filter(|&(k, _)| k != me)
        .map(|(from, b)| Incoming { from, tag: MODEL, bytes: bytemuck::cast_slice_mut(b) })
        .collect();
    link.exchange(&out, &mut inc)?;
    drop(inc);
    for (k, buf) in theirs.iter().enumerate().filter(|&(k, _)| k != me) {
        unpack(rotation, model, &held[k], buf);
    }
    Ok(out.iter().map(|o| o.bytes.len() as u64).sum())
}

/// Trains `blocks` (of one round: no two share a row with each other or
/// with another thread's) in order, their ratings prefetched ahead as the
/// CPU backend does, adding each model's squared errors into `sse`.
pub(super) fn train_blocks(
    tables: &ExclusiveTables,
    steps: &[Step],
    sub: usize,
    blocks: &[&[Rating]],
    sse: &mut [f64],
) {
    let mut ratings = blocks.iter().flat_map(|b| b.iter());
    // A window of the ratings ahead, reaching across the (often tiny)
    // blocks: the rating 4·AHEAD on is read in, the rows of the one AHEAD
    // on asked for.
    let mut ahead: std::collections::VecDeque<&Rating> = std::collections::VecDeque::with_capacity(4 * AHEAD + 1);
    ahead.extend(ratings.by_ref().take(4 * AHEAD));
    while let Some(r) = ahead.pop_front() {
        if let Some(n) = ratings.next() {
            prefetch_ptr(n);
            ahead.push_back(n);
        }
        if let Some(n) = ahead.get(AHEAD - 1) {
            tables.prefetch(n);
        }
        // SAFETY: no other thread writes these ratings' rows: a round's
        // blocks share no row and this thread alone trains these
        // (`train_rotation`), or one thread trains a clock (the server).
        let (p, q) = unsafe { tables.rows(r) };
        apply_all(steps, sub, p, q, r.value, sse);
    }
}

/// Trains `blocks`, which share no row with each other (a round's, or a
/// rank's share of one), on `pool`'s threads: dealt longest first to the
/// least loaded thread, so that each thread's rows are its blocks' alone
/// and the model is the same on any number of threads. One thread below
/// [`THREADED_ROUND`] ratings.
pub(super) fn train_round(
    pool: &rayon::ThreadPool,
    tables: &ExclusiveTables,
    steps: &[Step],
    sub: usize,
    mut blocks: Vec<&[Rating]>,
    sse: &mut [f64],
) {
    let n: usize = blocks.iter().map(|r| r.len()).sum();
    let threads = pool.current_num_threads();
    if threads == 1 || n < THREADED_ROUND || blocks.len() == 1 {
        return train_blocks(tables, steps, sub, &blocks, sse);
    }
    blocks.sort_by_key(|r| std::cmp::Reverse(r.len()));
    let mut shares: Vec<(usize, Vec<&[Rating]>)> = vec![(0, Vec::new()); threads.min(blocks.len())];
    for r in blocks {
        let least = shares.iter_mut().min_by_key(|(load, _)| *load).expect("a share");
        least.0 += r.len();
        least.1.push(r);
    }
    let sums: Vec<Vec<f64>> = pool.install(|| {
        use rayon::prelude::*;
        shares
            .par_iter()
            .map(|(_, blocks)| {
                let mut part = vec![0.0f64; steps.len()];
                train_blocks(tables, steps, sub, blocks, &mut part);
                part
            })
            .collect()
    });
    for part in sums {
        for (t, p) in sse.iter_mut().zip(part) {
            *t += p;
        }
    }
}

/// A rank's threads.
pub(super) fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|k| format!("rowstage-rank-{k}"))
        .build()
        .map_err(|e| Error::arg("`threads`", threads.to_string(), format!("cannot start the threads: {e}")))
}

/// The rows of `bins`, in the order their rows are sent.
fn rows<'a>(rotation: &'a Rotation, bins: &'a [(Side, u32)]) -> impl Iterator<Item = (Side, u32)> + 'a {
    bins.iter().flat_map(move |&(side, b)| rotation.rows(side, b).iter().map(move |&r| (side, r)))
}

/// `bins`' rows of `model`, one after another: a message.
fn pack(rotation: &Rotation, model: &Model, bins: &[(Side, u32)]) -> Vec<f32> {
    let s = model.stride;
    let mut buf = Vec::with_capacity(rotation.rows_of(bins) * s);
    for (side, r) in rows(rotation, bins) {
        buf.extend_from_slice(match side {
            Side::Users => model.user_row(r),
            Side::Items => model.item_row(r),
        });
    }
    buf
}

/// A message of `bins`' rows ([`pack`]) back into `model`.
fn unpack(rotation: &Rotation, model: &mut Model, bins: &[(Side, u32)], buf: &[f32]) {
    let s = model.stride;
    for ((side, r), row) in rows(rotation, bins).zip(buf.chunks_exact(s)) {
        match side {
            Side::Users => model.user_row_mut(r),
            Side::Items => model.item_row_mut(r),
        }
        .copy_from_slice(row);
    }
}

/// `bins`' rows as global rows (users, then items after the `n_users`
/// users): what a backend syncs.
fn global_rows(rotation: &Rotation, bins: &[(Side, u32)], n_users: u32) -> Vec<u32> {
    rows(rotation, bins)
        .map(|(side, r)| match side {
            Side::Users => r,
            Side::Items => n_users + r,
        })
        .collect()
}

impl Backend for Rotate {
    fn kind(&self) -> String {
        self.trainer.kind()
    }

    fn adapter(&self) -> String {
        format!("{} (`distributed` rotate)", self.trainer.describe(self.link.rank, self.link.ranks))
    }

    fn ranks(&self) -> usize {
        self.link.ranks
    }

    fn needs_plan(&self, _layout: &RunLayout) -> bool {
        // The rounds come from the order's permutations (`Rotation::walk`).
        false
    }

    fn rank(&self) -> usize {
        self.link.rank
    }

    fn vote(&mut self, ok: bool) -> Result<Vec<bool>> {
        votes(&self.link, ok)
    }

    fn parallelism(&self) -> usize {
        self.trainer.parallelism()
    }

    fn run_layout(&self) -> Option<std::sync::Arc<RunLayout>> {
        self.trainer.run_layout()
    }

    fn is_ceiling(&self) -> bool {
        self.trainer.is_ceiling()
    }

    fn train_epoch(&mut self, model: &mut Model, input: &EpochInput) -> Result<EpochTrain> {
        let (key, stop) = begin_epoch(&self.link, "rotate", 1, input, model)?;
        if stop {
            return Ok(EpochTrain { sse: vec![0.0; input.rates.len()], ..Default::default() });
        }
        let layout = input.layout;
        let rotation = match self.rotation.take() {
            Some((k, r)) if k == key => r,
            _ => Rotation::new(layout, self.link.ranks)?,
        };
        let trained = self.train_rotation(model, input, &rotation);
        self.rotation = Some((key, rotation));
        trained
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)> {
        // Every rank holds the whole model after an epoch (`gather`), in
        // its host tables.
        Ok((model.evaluate_all(test), Ledger::default()))
    }

    fn finish(&mut self, model: &mut Model) -> Result<Ledger> {
        self.trainer.finish(model)
    }
}

impl Rotate {
    /// One epoch of `rotation` (module docs of [`crate::engine::rotate`]).
    fn train_rotation(&mut self, model: &mut Model, input: &EpochInput, rotation: &Rotation) -> Result<EpochTrain> {
        let t0 = Instant::now();
        let layout = input.layout;
        let order = layout.blocked_epoch(input.epoch).expect("a rotation's layout is blocked");
        let steps = steps_of(model, input.rates, self.bias_reg);
        let (s, sub, me) = (model.stride, row_stride(model.rank), self.link.rank);
        let n_users = layout.n_users() as u32;
        let (link, trainer) = (&self.link, &mut self.trainer);
        let mut sse = vec![0.0f64; steps.len()];
        let (mut done, mut sent) = (0u64, 0u64);
        let mut device = DeviceEpoch::default();
        let holders = rotation.walk(layout, &order, |moves, tasks| {
            let bins = |to_me: bool| -> Vec<(Side, u32)> {
                moves
                    .iter()
                    .filter(|m| if to_me { m.to == me } else { m.from == me })
                    .map(|m| (m.side, m.bin))
                    .collect()
            };
            trainer.sync_out(model, &global_rows(rotation, &bins(false), n_users), &mut device)?;
            sent += exchange(link, rotation, model, moves)?;
            trainer.sync_in(model, &global_rows(rotation, &bins(true), n_users), &mut device)?;
            let mine = tasks.iter().filter(|t| t.rank == me);
            let n = match trainer {
                Trainer::Threads(pool) => {
                    let blocks: Vec<&[Rating]> =
                        mine.map(|t| layout.block_sweep(t.block, t.sweep)).filter(|r| !r.is_empty()).collect();
                    let n: usize = blocks.iter().map(|r| r.len()).sum();
                    train_round(pool, &ExclusiveTables::new(model), &steps, sub, blocks, &mut sse);
                    input.progress.fetch_add(n, Ordering::Relaxed);
                    n
                }
                Trainer::Device { gpu, .. } => {
                    let parts = mine.filter_map(|t| layout.block_part(t.block, t.sweep));
                    device.train(gpu.as_mut(), model, input, parts, &mut sse)?
                }
            };
            done += n as u64;
            Ok(())
        })?;
        let held = rotation.gathered(&holders, me);
        trainer.sync_out(model, &global_rows(rotation, &held, n_users), &mut device)?;
        sent += gather(link, rotation, model, &holders)?;
        let others: Vec<(Side, u32)> =
            (0..link.ranks).filter(|&k| k != me).flat_map(|k| rotation.gathered(&holders, k)).collect();
        trainer.sync_in(model, &global_rows(rotation, &others, n_users), &mut device)?;
        // Every rank adds the same figures in rank order: one result on all.
        let (bytes, done, total_sse) = totals(link, sent, done, &sse)?;
        let predicted = rotation.traffic(layout, input.epoch, (s * 4) as u64)?.by_rank();
        let ledger = ledger_sum(link, device.ledger)?;
        let t = EpochTrain {
            sse: total_sse,
            count: done as u64,
            done,
            workers: link.ranks as f64,
            wire: Some(Wire { bytes, predicted }),
            ..Default::default()
        };
        Ok(device.finish(trainer, ledger, t0.elapsed().as_secs_f64(), t))
    }
}
