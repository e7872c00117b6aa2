//! `--distributed server`: Factorbird's parameter server, each rank training
//! on its CPU's threads or its own GPU.
//! [`crate::engine::shard`] says who owns what, which ratings each rank
//! trains at each clock and what its cache fetches and pushes; this carries
//! that schedule out over MPI (docs/ARCHITECTURE.md, "Past one machine").
//!
//! A clock, on every rank: send each owner the clock's pushes (row ids and
//! deltas) and fetch requests (row ids); add the deltas pushed to the rows
//! it serves, in rank order; answer the fetches; take in the rows it
//! fetched; train its ratings of the clock. Ranks that share nothing at a
//! clock do not wait for each other. The epoch ends with the last pushes
//! and an all-gather, every rank's users and served items to every other
//! rank, so that each holds the whole model to score, checkpoint and save.

use std::sync::atomic::Ordering;
use std::time::Duration;
use web_time::Instant;

use super::link::{Incoming, Link, MODEL, Outgoing};
use super::rotate::{train_blocks, train_round};
use super::{DeviceEpoch, LayoutKey, Trainer, begin_epoch, ledger_sum, totals, votes};
use crate::data::Rating;
use crate::engine::shard::{Cache, Schedule, Shard, cache_slots, item_owner, schedule_bytes};
use crate::engine::{Backend, EpochInput, EpochTrain, RunLayout, Wire};
use crate::error::{Error, Result};
use crate::model::{Metrics, Model, row_stride};
use crate::stage::{Budget, Ledger, Placed, PolicyKind};
use crate::train::cpu::{ExclusiveTables, steps_of};

/// The parameter server across the world's ranks.
pub struct Server {
    net: Net,
    /// A blocked round's blocks share no row, so a rank deals its share of
    /// one to its threads (the same model on any number) or its GPU; a
    /// clock of another order (a part) trains on one thread, or on the GPU
    /// over the rank's own layout.
    trainer: Trainer,
    state: Option<State>,
}

/// The server's settings and its link to the other ranks.
struct Net {
    bias_reg: f32,
    link: Link,
    policy: PolicyKind,
    /// The cache's size: bytes, or a share of the item table.
    cache: Budget,
    staleness: u32,
}

/// What a run's layout needs, made once.
struct State {
    key: LayoutKey,
    shard: Shard,
    cache: Cache,
    /// Per cache slot: its row as fetched (or as the epoch began), from
    /// which a push's delta is taken.
    base: Vec<f32>,
    /// Every rank's users and served items: what the epoch's end gathers.
    users_of: Vec<Vec<u32>>,
    items_of: Vec<Vec<u32>>,
}

impl Server {
    /// Over the world of a started MPI ([`super::start`]), each rank
    /// training on `trainer`; `limit` bounds every wait for another rank.
    pub fn new(
        bias_reg: f32,
        trainer: Trainer,
        policy: PolicyKind,
        cache: Budget,
        staleness: u32,
        limit: Duration,
    ) -> Result<Self> {
        if !mpi::environment::is_initialized() {
            return Err(Error::arg(
                "`distributed`",
                "server",
                "needs MPI started first (the command line starts it under an MPI launcher such as mpirun, or \
                 where `--distributed` is given)",
            ));
        }
        let staleness = staleness.max(1);
        Ok(Server { net: Net { bias_reg, link: Link::world(limit), policy, cache, staleness }, trainer, state: None })
    }
}

impl Net {
    fn salt(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ("server", self.policy.name(), format!("{:?}", self.cache), self.staleness).hash(&mut h);
        h.finish()
    }

    fn state(&self, old: Option<State>, key: LayoutKey, layout: &RunLayout, model: &Model) -> State {
        if let Some(s) = old.filter(|s| s.key == key) {
            return s;
        }
        let (rank, ranks) = (self.link.rank, self.link.ranks);
        let shard = Shard::new(layout, ranks, rank);
        let slots = cache_slots(self.cache, shard.n_items(), (model.stride * 4) as u64);
        let cache = Cache::new(&shard, layout, self.policy, slots, self.staleness);
        let base = vec![0f32; cache.areas.slots() as usize * model.stride];
        let users_of = (0..ranks).map(|k| shard.users_of(k)).collect();
        let items_of = (0..ranks).map(|k| shard.items_of(k)).collect();
        State { key, shard, cache, base, users_of, items_of }
    }
}

/// One request to an owner: push ids, fetch ids, then the pushes' deltas
/// (f32 bits), as u32s.
fn request(pushes: &[Placed], fetches: &[Placed], model: &Model, base: &[f32]) -> Vec<u32> {
    let s = model.stride;
    let mut buf = Vec::with_capacity(pushes.len() * (s + 1) + fetches.len());
    buf.extend(pushes.iter().map(|p| p.row));
    buf.extend(fetches.iter().map(|p| p.row));
    for p in pushes {
        let now = model.item_row(p.row);
        let then = &base[p.slot as usize * s..][..s];
        buf.extend(now.iter().zip(then).map(|(a, b)| (a - b).to_bits()));
    }
    buf
}

impl Net {
    /// One exchange of a clock's (or the flush's) moves: `mine[k]` the
    /// pushes and fetches to owner `k`, `theirs[k]` the counts rank `k`
    /// sends this rank. Returns the bytes handed to MPI.
    fn exchange(
        &self,
        (trainer, device): (&mut Trainer, &mut DeviceEpoch),
        model: &mut Model,
        base: &mut [f32],
        mine: &[(Vec<Placed>, Vec<Placed>)],
        theirs: &[[u32; 2]],
    ) -> Result<u64> {
        let (s, me) = (model.stride, self.link.rank);
        let n_users = model.n_users() as u32;
        let global = |rows: &mut dyn Iterator<Item = u32>| -> Vec<u32> { rows.map(|r| n_users + r).collect() };
        // Requests: pushes and fetch ids to their owners, the pushes' rows
        // current on the host first.
        trainer.sync_out(model, &global(&mut mine.iter().flat_map(|(p, _)| p.iter().map(|p| p.row))), device)?;
        let sends: Vec<(usize, Vec<u32>)> = mine
            .iter()
            .enumerate()
            .filter(|&(k, (p, f))| k != me && !(p.is_empty() && f.is_empty()))
            .map(|(k, (p, f))| (k, request(p, f, model, base)))
            .collect();
        let mut recvs: Vec<(usize, Vec<u32>)> = theirs
            .iter()
            .enumerate()
            .filter(|&(k, c)| k != me && c[0] + c[1] > 0)
            .map(|(k, c)| (k, vec![0u32; (c[0] as usize) * (s + 1) + c[1] as usize]))
            .collect();
        let mut sent = self.swap(&sends, &mut recvs)?;
        // The served rows pushed to (and with `fetched`, read): current on
        // the host first.
        let asked = |fetched: bool| -> Vec<u32> {
            let ids = recvs.iter().flat_map(|(k, buf)| {
                let [p, f] = theirs[*k].map(|c| c as usize);
                buf[..if fetched { p + f } else { p }].iter().copied()
            });
            global(&mut ids.into_iter())
        };
        trainer.sync_out(model, &asked(true), device)?;
        // Every delta added (in rank order) before any fetch is answered:
        // a fetch sees every push of the clock.
        for (k, buf) in &recvs {
            let pushes = theirs[*k][0] as usize;
            let (ids, deltas) = buf.split_at(pushes + theirs[*k][1] as usize);
            for (&r, d) in ids[..pushes].iter().zip(deltas.chunks_exact(s)) {
                debug_assert_eq!(item_owner(r, self.link.ranks), me);
                for (x, d) in model.item_row_mut(r).iter_mut().zip(d) {
                    *x += f32::from_bits(*d);
                }
            }
        }
        trainer.sync_in(model, &asked(false), device)?;
        let answers: Vec<(usize, Vec<f32>)> = recvs
            .iter()
            .filter(|(k, _)| theirs[*k][1] > 0)
            .map(|(k, buf)| {
                let [pushes, fetches] = theirs[*k].map(|c| c as usize);
                let mut out = Vec::with_capacity(fetches * s);
                buf[pushes..pushes + fetches].iter().for_each(|&r| out.extend_from_slice(model.item_row(r)));
                (*k, out)
            })
            .collect();
        let mut rows: Vec<(usize, Vec<f32>)> = mine
            .iter()
            .enumerate()
            .filter(|&(k, (_, f))| k != me && !f.is_empty())
            .map(|(k, (_, f))| (k, vec![0f32; f.len() * s]))
            .collect();
        sent += self.swap(&answers, &mut rows)?;
        for (k, buf) in &rows {
            for (p, r) in mine[*k].1.iter().zip(buf.chunks_exact(s)) {
                model.item_row_mut(p.row).copy_from_slice(r);
                base[p.slot as usize * s..][..s].copy_from_slice(r);
            }
        }
        trainer.sync_in(model, &global(&mut mine.iter().flat_map(|(_, f)| f.iter().map(|p| p.row))), device)?;
        Ok(sent)
    }

    /// Sends `out` and receives `inc` (sizes known to both sides) as model
    /// messages; the bytes handed to MPI.
    fn swap<T: bytemuck::Pod>(&self, out: &[(usize, Vec<T>)], inc: &mut [(usize, Vec<T>)]) -> Result<u64> {
        let o: Vec<Outgoing> =
            out.iter().map(|(to, b)| Outgoing { to: *to, tag: MODEL, bytes: bytemuck::cast_slice(b) }).collect();
        let mut i: Vec<Incoming> = inc
            .iter_mut()
            .map(|(from, b)| Incoming { from: *from, tag: MODEL, bytes: bytemuck::cast_slice_mut(b) })
            .collect();
        self.link.exchange(&o, &mut i)?;
        Ok(o.iter().map(|m| m.bytes.len() as u64).sum())
    }

    /// The epoch's end: every rank's users and served items to every other
    /// rank. Returns the bytes handed to MPI.
    fn gather(
        &self,
        (trainer, device): (&mut Trainer, &mut DeviceEpoch),
        state: &State,
        model: &mut Model,
    ) -> Result<u64> {
        let (s, me, ranks) = (model.stride, self.link.rank, self.link.ranks);
        let n_users = model.n_users() as u32;
        let rows_of = |k: usize| -> Vec<u32> {
            state.users_of[k].iter().copied().chain(state.items_of[k].iter().map(|&i| n_users + i)).collect()
        };
        trainer.sync_out(model, &rows_of(me), device)?;
        let pack = |k: usize, model: &Model| -> Vec<f32> {
            let mut buf = Vec::with_capacity((state.users_of[k].len() + state.items_of[k].len()) * s);
            state.users_of[k].iter().for_each(|&u| buf.extend_from_slice(model.user_row(u)));
            state.items_of[k].iter().for_each(|&i| buf.extend_from_slice(model.item_row(i)));
            buf
        };
        let mine = pack(me, model);
        let out: Vec<(usize, Vec<f32>)> = (0..ranks).filter(|&k| k != me).map(|k| (k, mine.clone())).collect();
        let mut inc: Vec<(usize, Vec<f32>)> = (0..ranks)
            .filter(|&k| k != me)
            .map(|k| (k, vec![0f32; (state.users_of[k].len() + state.items_of[k].len()) * s]))
            .collect();
        let sent = self.swap(&out, &mut inc)?;
        for (k, buf) in &inc {
            let mut rows = buf.chunks_exact(s);
            for &u in &state.users_of[*k] {
                model.user_row_mut(u).copy_from_slice(rows.next().expect("a user's row"));
            }
            for &i in &state.items_of[*k] {
                model.item_row_mut(i).copy_from_slice(rows.next().expect("an item's row"));
            }
        }
        let others: Vec<u32> = (0..ranks).filter(|&k| k != me).flat_map(rows_of).collect();
        trainer.sync_in(model, &others, device)?;
        Ok(sent)
    }

    /// Every clock's counts (pushes, fetches) this rank sends each owner,
    /// the flush last, traded for those the others send it: `theirs[k][c]`.
    fn counts(&self, schedule: &Schedule) -> Result<Vec<Vec<[u32; 2]>>> {
        let (me, ranks) = (self.link.rank, self.link.ranks);
        let n = schedule.clocks.len() + 1;
        let mut mine = vec![vec![[0u32; 2]; n]; ranks];
        for (c, m) in schedule.clocks.iter().enumerate() {
            m.push.iter().for_each(|p| mine[item_owner(p.row, ranks)][c][0] += 1);
            m.fetch.iter().for_each(|p| mine[item_owner(p.row, ranks)][c][1] += 1);
        }
        schedule.flush.iter().for_each(|p| mine[item_owner(p.row, ranks)][n - 1][0] += 1);
        let out: Vec<Outgoing> = (0..ranks)
            .filter(|&k| k != me)
            .map(|k| Outgoing { to: k, tag: super::link::CONTROL, bytes: bytemuck::cast_slice(&mine[k]) })
            .collect();
        let mut theirs = vec![vec![[0u32; 2]; n]; ranks];
        {
            let mut inc: Vec<Incoming> = theirs
                .iter_mut()
                .enumerate()
                .filter(|&(k, _)| k != me)
                .map(|(k, b)| Incoming { from: k, tag: super::link::CONTROL, bytes: bytemuck::cast_slice_mut(b) })
                .collect();
            self.link.exchange(&out, &mut inc)?;
        }
        Ok(theirs)
    }
}

impl Backend for Server {
    fn kind(&self) -> String {
        self.trainer.kind()
    }

    fn adapter(&self) -> String {
        let n = &self.net;
        format!(
            "{} (`distributed` server: items served by every rank, a cache of {} under {}, pushes at most {} \
             clock{} late)",
            self.trainer.describe(n.link.rank, n.link.ranks),
            n.cache,
            n.policy.name(),
            n.staleness,
            if n.staleness == 1 { "" } else { "s" }
        )
    }

    fn ranks(&self) -> usize {
        self.net.link.ranks
    }

    fn rank(&self) -> usize {
        self.net.link.rank
    }

    fn vote(&mut self, ok: bool) -> Result<Vec<bool>> {
        votes(&self.net.link, ok)
    }

    fn divergence_hint(&self) -> Option<&'static str> {
        Some("or `staleness` (several ranks' deltas on one stale copy add up)")
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
        let (key, stop) = begin_epoch(&self.net.link, "server", self.net.salt(), input, model)?;
        if stop {
            return Ok(EpochTrain { sse: vec![0.0; input.rates.len()], ..Default::default() });
        }
        let mut state = self.net.state(self.state.take(), key, input.layout, model);
        let trained = self.net.train_clocks(&mut self.trainer, &mut state, model, input);
        self.state = Some(state);
        trained
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)> {
        // Every rank holds the whole model after an epoch (`gather`).
        Ok((model.evaluate_all(test), Ledger::default()))
    }

    fn finish(&mut self, model: &mut Model) -> Result<Ledger> {
        self.trainer.finish(model)
    }
}

impl Net {
    /// One epoch: the schedule made, its bytes predicted, then carried out
    /// clock by clock.
    fn train_clocks(
        &self,
        trainer: &mut Trainer,
        state: &mut State,
        model: &mut Model,
        input: &EpochInput,
    ) -> Result<EpochTrain> {
        let t0 = Instant::now();
        let (s, me, ranks) = (model.stride, self.link.rank, self.link.ranks);
        let mut device = DeviceEpoch::default();
        let plan = input.plan;
        let trace = state.shard.trace(plan);
        let following = match input.following {
            Some(f) if self.policy.needs_future() => Some(state.shard.trace(f)),
            _ => None,
        };
        // Held rows are current at an epoch's start (the last one ended
        // with the whole model everywhere): so are their bases. Before the
        // schedule is made, which moves the cache to the epoch's end.
        for p in state.cache.held() {
            state.base[p.slot as usize * s..][..s].copy_from_slice(model.item_row(p.row));
        }
        let schedule = state.cache.schedule(&trace, following.as_deref());
        let theirs = self.counts(&schedule)?;
        // The prediction, from the schedule and the counts alone.
        let (push, fetch) = schedule.rows_by_owner(ranks);
        let served: u64 = theirs.iter().flatten().map(|c| u64::from(c[1])).sum();
        let gathered = (state.users_of[me].len() + state.items_of[me].len()) as u64;
        let predicted = self.link.everyone(schedule_bytes(&push, &fetch, served, gathered, ranks, (s * 4) as u64))?;
        let steps = steps_of(model, input.rates, self.bias_reg);
        let sub = row_stride(model.rank);
        let mut sse = vec![0.0f64; steps.len()];
        let (mut done, mut sent) = (0u64, 0u64);
        let by_owner = |moves: &[Placed]| -> Vec<Vec<Placed>> {
            let mut out = vec![Vec::new(); ranks];
            moves.iter().for_each(|p| out[item_owner(p.row, ranks)].push(*p));
            out
        };
        for (c, clock) in state.shard.clocks(plan).into_iter().enumerate() {
            let m = &schedule.clocks[c];
            let mine: Vec<_> = by_owner(&m.push).into_iter().zip(by_owner(&m.fetch)).collect();
            let counts: Vec<[u32; 2]> = theirs.iter().map(|t| t[c]).collect();
            sent += self.exchange((trainer, &mut device), model, &mut state.base, &mine, &counts)?;
            let n = match trainer {
                Trainer::Threads(pool) => {
                    let mine: Vec<&[Rating]> = state.shard.step(plan, clock).collect();
                    let n: usize = mine.iter().map(|r| r.len()).sum();
                    let tables = ExclusiveTables::new(model);
                    if state.shard.rounds() {
                        train_round(pool, &tables, &steps, sub, mine, &mut sse);
                    } else {
                        train_blocks(&tables, &steps, sub, &mine, &mut sse);
                    }
                    input.progress.fetch_add(n, Ordering::Relaxed);
                    n
                }
                // A blocked round's parts with this rank's ratings are its
                // blocks, whole (a block's users are one bin's); a part of
                // another order is the rank's share, part for part in its
                // own layout.
                Trainer::Device { gpu, .. } => {
                    device.train(gpu.as_mut(), model, input, state.shard.own_parts(plan, clock), &mut sse)?
                }
            };
            done += n as u64;
        }
        let n = schedule.clocks.len();
        let mine: Vec<_> = by_owner(&schedule.flush).into_iter().map(|p| (p, Vec::new())).collect();
        let counts: Vec<[u32; 2]> = theirs.iter().map(|t| t[n]).collect();
        sent += self.exchange((trainer, &mut device), model, &mut state.base, &mine, &counts)?;
        sent += self.gather((trainer, &mut device), state, model)?;
        // Every rank adds the same figures in rank order: one result on all.
        let (bytes, done, total_sse) = totals(&self.link, sent, done, &sse)?;
        // The cache's rows and hits; a GPU's bytes each way beside them.
        let (l, d) = (schedule.ledger, device.ledger);
        let mine = Ledger {
            item_hits: l.item_hits,
            item_misses: l.item_misses,
            item_rows_in: l.item_rows_in,
            item_rows_out: l.item_rows_out,
            steps: l.steps,
            row_bytes_h2d: d.row_bytes_h2d,
            row_bytes_d2h: d.row_bytes_d2h,
            data_bytes_h2d: d.data_bytes_h2d,
            data_bytes_d2h: d.data_bytes_d2h,
            ..Default::default()
        };
        let ledger = ledger_sum(&self.link, mine)?;
        let t = EpochTrain {
            sse: total_sse,
            count: done as u64,
            done,
            workers: ranks as f64,
            wire: Some(Wire { bytes, predicted }),
            ..Default::default()
        };
        Ok(device.finish(trainer, ledger, t0.elapsed().as_secs_f64(), t))
    }
}
