//! `--distributed rotate`: the blocked order across ranks on each rank's
//! CPU ([`crate::engine::rotate`] says who trains what and which bins
//! move; docs/ARCHITECTURE.md, "Past one machine").

use std::sync::atomic::Ordering;
use std::time::Duration;
use web_time::Instant;

use super::link::{Incoming, Link, MODEL, Outgoing};
use super::{LayoutKey, begin_epoch, totals};
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

/// The blocked order across the world's ranks, each on its own threads.
pub struct RotateCpu {
    bias_reg: f32,
    link: Link,
    /// The rank's threads: a round's blocks share no row, so they train at
    /// once without races, and the model is the same on any number.
    pool: rayon::ThreadPool,
    /// The rotation of the layout trained last, and what identifies it.
    rotation: Option<(LayoutKey, Rotation)>,
}

impl RotateCpu {
    /// Over the world of a started MPI ([`super::start`]), on `threads`
    /// threads per rank; `limit` bounds every wait for another rank.
    pub fn new(bias_reg: f32, threads: usize, limit: Duration) -> Result<Self> {
        if !mpi::environment::is_initialized() {
            return Err(Error::arg(
                "`distributed`",
                "rotate",
                "needs MPI started first (the command line starts it under an MPI launcher such as mpirun, or \
                 where `--distributed` is given)",
            ));
        }
        Ok(RotateCpu { bias_reg, link: Link::world(limit), pool: pool(threads)?, rotation: None })
    }

    /// Sends and receives `moves` (every rank lists the same moves in the
    /// same order, so that two ranks' messages match in order); returns
    /// the bytes this rank handed to MPI.
    fn exchange(&self, rotation: &Rotation, model: &mut Model, moves: &[Move]) -> Result<u64> {
        let me = self.link.rank;
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
        self.link.exchange(&out, &mut inc)?;
        drop(inc);
        for (_, bin, buf) in &recvs {
            unpack(rotation, model, bin, buf);
        }
        Ok(out.iter().map(|o| o.bytes.len() as u64).sum())
    }

    /// The epoch's end: every rank's held bins to every other rank, so
    /// that each holds the whole model. Returns the bytes this rank handed
    /// to MPI (its rows once per receiving rank).
    fn gather(&self, rotation: &Rotation, model: &mut Model, holders: &Holders) -> Result<u64> {
        let (s, me, ranks) = (model.stride, self.link.rank, self.link.ranks);
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
        self.link.exchange(&out, &mut inc)?;
        drop(inc);
        for (k, buf) in theirs.iter().enumerate().filter(|&(k, _)| k != me) {
            unpack(rotation, model, &held[k], buf);
        }
        Ok(out.iter().map(|o| o.bytes.len() as u64).sum())
    }
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

impl Backend for RotateCpu {
    fn kind(&self) -> String {
        "cpu".into()
    }

    fn adapter(&self) -> String {
        let threads = self.pool.current_num_threads();
        format!(
            "the CPU of each of {} MPI ranks, {threads} thread{} each (`distributed` rotate)",
            self.link.ranks,
            if threads == 1 { "" } else { "s" }
        )
    }

    fn ranks(&self) -> usize {
        self.link.ranks
    }

    fn needs_plan(&self, _layout: &RunLayout) -> bool {
        // The rounds come from the order's permutations (`Rotation::walk`).
        false
    }

    fn train_epoch(&mut self, model: &mut Model, input: &EpochInput) -> Result<EpochTrain> {
        let t0 = Instant::now();
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
        trained.map(|mut t| {
            t.host_seconds = t0.elapsed().as_secs_f64();
            t
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

impl RotateCpu {
    /// One epoch of `rotation` (module docs of [`crate::engine::rotate`]).
    fn train_rotation(&self, model: &mut Model, input: &EpochInput, rotation: &Rotation) -> Result<EpochTrain> {
        let layout = input.layout;
        let order = layout.blocked_epoch(input.epoch).expect("a rotation's layout is blocked");
        let steps = steps_of(model, input.rates, self.bias_reg);
        let (s, sub, me) = (model.stride, row_stride(model.rank), self.link.rank);
        let mut sse = vec![0.0f64; steps.len()];
        let (mut done, mut sent) = (0u64, 0u64);
        let holders = rotation.walk(layout, &order, |moves, tasks| {
            sent += self.exchange(rotation, model, moves)?;
            let mine: Vec<&[Rating]> = tasks
                .iter()
                .filter(|t| t.rank == me)
                .map(|t| layout.block_sweep(t.block, t.sweep))
                .filter(|r| !r.is_empty())
                .collect();
            let n: usize = mine.iter().map(|r| r.len()).sum();
            train_round(&self.pool, &ExclusiveTables::new(model), &steps, sub, mine, &mut sse);
            done += n as u64;
            input.progress.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })?;
        sent += self.gather(rotation, model, &holders)?;
        // Every rank adds the same figures in rank order: one result on all.
        let (bytes, done, total_sse) = totals(&self.link, sent, done, &sse)?;
        let predicted = rotation.traffic(layout, input.epoch, (s * 4) as u64)?.by_rank();
        Ok(EpochTrain {
            sse: total_sse,
            count: done as u64,
            done,
            workers: self.link.ranks as f64,
            wire: Some(Wire { bytes, predicted }),
            ..Default::default()
        })
    }
}
