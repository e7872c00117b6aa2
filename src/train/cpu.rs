//! The CPU backends: the sequential reference trainer (the ground truth of
//! every test) and the multi-threaded Hogwild trainer (`--backend cpu`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use web_time::Instant;

use crate::data::Rating;
use crate::engine::{Backend, BlockedEpoch, EpochInput, EpochTrain, RunLayout};
use crate::error::{Error, Result};
use crate::model::{Metrics, MetricsAcc, Model, Rate, Step, row_stride};
use crate::prefetch::{prefetch_ptr, prefetch_row, prefetch_span};
use crate::stage::Ledger;

/// Ratings between two looks at the stop flag (sequential reference), at
/// part boundaries.
const STOP_CHECK: usize = 4096;

/// Ratings of one Hogwild round: the round's share of the epoch order is split
/// among the threads, and the stop flag is read between rounds. Large enough
/// that the threads rarely wait for each other at a round's end (1 << 16 ran
/// about 25% slower on 2 threads), small enough that Ctrl-C is answered within
/// a few tens of milliseconds.
const ROUND: usize = 1 << 18;

/// One [`Step`] per model side by side.
pub(crate) fn steps_of(model: &Model, rates: &[Rate], bias_reg: f32) -> Vec<Step> {
    assert_eq!(rates.len(), model.copies, "one rate per model side by side");
    rates.iter().map(|r| Step { rank: model.rank, mean: model.mean, lr: r.lr, reg: r.reg, bias_reg }).collect()
}

/// Applies every model's step to the rows `p` and `q` (each holding the
/// models' copies side by side, `sub` floats apart), adding each squared
/// error into `sse`.
#[inline]
pub(crate) fn apply_all(steps: &[Step], sub: usize, p: &mut [f32], q: &mut [f32], rating: f32, sse: &mut [f64]) {
    // One model (all but a grid search) needs no cutting of the rows.
    if let ([step], [sse]) = (steps, &mut *sse) {
        let e = step.apply(p, q, rating);
        *sse += (e * e) as f64;
        return;
    }
    for ((step, (p, q)), sse) in steps.iter().zip(p.chunks_exact_mut(sub).zip(q.chunks_exact_mut(sub))).zip(sse) {
        let e = step.apply(p, q, rating);
        *sse += (e * e) as f64;
    }
}

/// Sequential per-sample SGD in the epoch order: the reference, and what
/// `--backend cpu --deterministic` runs.
pub struct ReferenceCpu {
    pub bias_reg: f32,
}

impl Backend for ReferenceCpu {
    fn kind(&self) -> String {
        "cpu".into()
    }

    fn adapter(&self) -> String {
        "CPU reference (1 thread, sequential)".into()
    }

    fn train_epoch(&mut self, model: &mut Model, input: &EpochInput) -> Result<EpochTrain> {
        let t0 = Instant::now();
        let steps = steps_of(model, input.rates, self.bias_reg);
        let (s, sub) = (model.stride, row_stride(model.rank));
        let mut sse = vec![0.0f64; steps.len()];
        let (mut done, mut since_check) = (0, 0);
        for &part in &input.plan.parts[input.from..] {
            if since_check >= STOP_CHECK {
                since_check = 0;
                if input.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            let ratings = input.layout.part(part);
            for r in ratings {
                let p = &mut model.users[r.user as usize * s..][..s];
                let q = &mut model.items[r.item as usize * s..][..s];
                apply_all(&steps, sub, p, q, r.value, &mut sse);
            }
            done += ratings.len();
            since_check += ratings.len();
            input.progress.fetch_add(ratings.len(), Ordering::Relaxed);
        }
        let host_seconds = t0.elapsed().as_secs_f64();
        Ok(EpochTrain { sse, count: done as u64, done, host_seconds, workers: 1.0, ..Default::default() })
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)> {
        Ok((model.evaluate_all(test), Ledger::default()))
    }

    fn finish(&mut self, _model: &mut Model) -> Result<Ledger> {
        Ok(Ledger::default())
    }
}

/// The multi-threaded CPU backend (`--backend cpu`), for either order.
///
/// In the blocked order ([`crate::engine::blocked`], its default) the threads
/// train block parts whose rows no other thread touches meanwhile, in place
/// and without races; see `train_blocked`.
///
/// In the shuffled order it is Hogwild SGD: the epoch's parts are taken in
/// rounds of about 2^18 ratings (`ROUND`). The round's ratings are first
/// copied in order (each part is a contiguous run of the layout), so that
/// the updates read them sequentially; then each thread takes a contiguous
/// share of the round and
/// updates the shared tables without locks, prefetching the rows of the
/// rating `AHEAD` (8) on. Rows are read and written with relaxed atomic loads
/// and stores of the f32 bits (plain moves on every mainstream CPU), so
/// concurrent updates of one row may lose an update, as Hogwild! accepts, but
/// never make undefined behaviour.
pub struct HogwildCpu {
    pub bias_reg: f32,
    pub threads: usize,
}

impl HogwildCpu {
    pub fn new(bias_reg: f32, threads: usize) -> Self {
        HogwildCpu { bias_reg, threads: threads.max(1) }
    }
}

/// How many ratings ahead the Hogwild loop asks for rows: an update takes
/// long enough that this covers a memory access's latency.
pub(crate) const AHEAD: usize = 8;

/// Views an exclusively borrowed f32 table as atomics for the scope of one
/// epoch.
fn as_atomic(t: &mut [f32]) -> &[AtomicU32] {
    // SAFETY: AtomicU32 has the size and alignment of u32 and f32, and the
    // exclusive borrow guarantees no non-atomic access for the returned
    // lifetime.
    unsafe { std::slice::from_raw_parts(t.as_mut_ptr() as *const AtomicU32, t.len()) }
}

/// Both tables of an epoch, viewed as atomics.
struct Tables<'a> {
    users: &'a [AtomicU32],
    items: &'a [AtomicU32],
    stride: usize,
}

impl Tables<'_> {
    fn rows(&self, r: &Rating) -> (&[AtomicU32], &[AtomicU32]) {
        let s = self.stride;
        (&self.users[r.user as usize * s..][..s], &self.items[r.item as usize * s..][..s])
    }

    /// Asks for `r`'s rows ahead of their use.
    #[inline(always)]
    fn prefetch(&self, r: &Rating) {
        let (pu, qi) = self.rows(r);
        prefetch_row(pu);
        prefetch_row(qi);
    }

    /// One SGD update of every model side by side on `r`'s rows, through
    /// the scratch rows `p` and `q`.
    #[inline(always)]
    fn update(&self, r: &Rating, steps: &[Step], sub: usize, p: &mut [f32], q: &mut [f32], sse: &mut [f64]) {
        let (pu, qi) = self.rows(r);
        for (x, a) in p.iter_mut().zip(pu) {
            *x = f32::from_bits(a.load(Ordering::Relaxed));
        }
        for (x, a) in q.iter_mut().zip(qi) {
            *x = f32::from_bits(a.load(Ordering::Relaxed));
        }
        apply_all(steps, sub, p, q, r.value, sse);
        for (x, a) in p.iter().zip(pu) {
            a.store(x.to_bits(), Ordering::Relaxed);
        }
        for (x, a) in q.iter().zip(qi) {
            a.store(x.to_bits(), Ordering::Relaxed);
        }
    }
}

/// Both tables of an epoch as raw pointers, for the blocked order, where a
/// row is only ever touched by the one thread that trains its block.
pub(crate) struct ExclusiveTables {
    users: *mut f32,
    items: *mut f32,
    n_users: usize,
    n_items: usize,
    stride: usize,
}

// SAFETY: the pointers come from an exclusive borrow of the model held for
// the whole epoch; the callers of `rows` guarantee that no two threads reach
// the same row.
unsafe impl Send for ExclusiveTables {}
unsafe impl Sync for ExclusiveTables {}

impl ExclusiveTables {
    pub(crate) fn new(model: &mut Model) -> Self {
        let stride = model.stride;
        ExclusiveTables {
            n_users: model.users.len() / stride,
            n_items: model.items.len() / stride,
            users: model.users.as_mut_ptr(),
            items: model.items.as_mut_ptr(),
            stride,
        }
    }

    /// `r`'s user row and item row.
    ///
    /// # Safety
    /// No other thread may touch either row while the borrows live.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn rows(&self, r: &Rating) -> (&mut [f32], &mut [f32]) {
        let (u, i, s) = (r.user as usize, r.item as usize, self.stride);
        assert!(u < self.n_users && i < self.n_items, "rating ({u}, {i}) outside the tables");
        // SAFETY: in bounds (checked above); the user and item tables are
        // distinct allocations, and the caller keeps other threads away.
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.users.add(u * s), s),
                std::slice::from_raw_parts_mut(self.items.add(i * s), s),
            )
        }
    }

    /// Asks for `r`'s rows ahead of their use (a hint: reads nothing).
    #[inline(always)]
    pub(crate) fn prefetch(&self, r: &Rating) {
        let (u, i, s) = (r.user as usize, r.item as usize, self.stride);
        if u < self.n_users && i < self.n_items {
            for (base, row) in [(self.users, u), (self.items, i)] {
                // wrapping_add: no dereference, so no in-bounds requirement.
                prefetch_span(base.wrapping_add(row * s), s);
            }
        }
    }
}

/// The units of an epoch pass of the blocked order, handed out in order:
/// runs of parts that one thread trains in one go, whose rows no other unit
/// touches until they are done. A unit may start once each of its bins has
/// seen as many units as came before it (its `after`).
enum Schedule<'a> {
    /// A unit per part of the plan given (from a position on): any blocked
    /// order, stoppable at any part.
    PerPart {
        parts: Vec<&'a [Rating]>,
        /// Per part: (user bin, after), (bins + item bin, after).
        deps: Vec<[(u32, u32); 2]>,
    },
    /// The tiled order's epoch as tile chains (docs/ARCHITECTURE.md, "The
    /// CPU backend"): in each tile shift, the TILE rounds of one worker tile
    /// meet one item tile and no other tile's bins, so one thread walks the
    /// chain (its rounds in order) while others walk the shift's other
    /// chains: the sequential order's result, with a unit per chain rather
    /// than per part. A chain is derived from the epoch's permutations by
    /// the thread that trains it. Stoppable where a shift ends, as a GPU
    /// stops ([`RunLayout::blocked_parts_before`]).
    ///
    /// Inside a shift the chains may go in any order; `tiles[u]` is unit
    /// `u`'s worker tile, each shift's ordered by when its two chains of the
    /// shift before (the same worker tile, and the one that last held its
    /// item tile) were handed out, so that a thread rarely waits for one
    /// still being trained.
    Chains { order: BlockedEpoch, layout: &'a RunLayout, tiles: Vec<u32> },
}

impl<'a> Schedule<'a> {
    fn per_part(layout: &'a RunLayout, plan: &[u32]) -> Result<Self> {
        let bins = layout.bins().unwrap_or(1);
        let mut seen = vec![0u32; 2 * bins as usize];
        let (mut parts, mut deps) = (Vec::with_capacity(plan.len()), Vec::with_capacity(plan.len()));
        for &p in plan {
            let (u, i) = layout.bins_of_part(p).ok_or_else(|| {
                Error::arg("`order`", layout.spec().order.name(), format!("part {p} is not a block part"))
            })?;
            let (u, i) = (u as usize, (bins + i) as usize);
            deps.push([(u as u32, seen[u]), (i as u32, seen[i])]);
            (seen[u], seen[i]) = (seen[u] + 1, seen[i] + 1);
            parts.push(layout.part(p));
        }
        Ok(Schedule::PerPart { parts, deps })
    }

    /// `None` where the order has fewer than two tiles a side, or tiles of
    /// one bin.
    fn tile_chains(layout: &'a RunLayout, epoch: usize) -> Option<Self> {
        let order = layout.blocked_epoch(epoch)?;
        let g = order.shifts();
        if g < 2 || order.tile < 2 {
            return None;
        }
        let mut tiles = Vec::with_capacity(order.sweeps as usize * g * g);
        // Where each worker tile's chain was handed out in the shift before.
        let mut at = vec![0usize; g];
        let mut keyed: Vec<(usize, usize)> = Vec::with_capacity(g);
        for v in 0..order.sweeps as usize {
            let shifts = order.shift_order(v);
            for (si, &c) in shifts.iter().enumerate() {
                keyed.clear();
                keyed.extend((0..g).map(|k| {
                    // A new sweep deals new tiles: no chain of the shift
                    // before is a better start than another.
                    let key = if si == 0 {
                        k
                    } else {
                        let before = (k + c as usize + g - shifts[si - 1] as usize) % g;
                        at[k].max(at[before])
                    };
                    (key, k)
                }));
                keyed.sort_unstable();
                for (place, &(_, k)) in keyed.iter().enumerate() {
                    at[k] = place;
                    tiles.push(k as u32);
                }
            }
        }
        Some(Schedule::Chains { order, layout, tiles })
    }

    fn units(&self) -> usize {
        match self {
            Schedule::PerPart { parts, .. } => parts.len(),
            Schedule::Chains { order, .. } => order.sweeps as usize * order.shifts() * order.shifts(),
        }
    }

    /// Units between two places where the pass may stop: a stop raised
    /// mid-way ends the pass at the next such place, so that the parts done
    /// are a prefix of the epoch's plan (where a resume starts).
    fn stop_every(&self) -> usize {
        match self {
            Schedule::PerPart { .. } => 1,
            Schedule::Chains { order, .. } => order.shifts(),
        }
    }

    /// Unit `u`'s bins and their `after` into `deps`, its ratings in order
    /// into `ratings` (by reference: a part is often a few ratings, and a
    /// copy per part cost more than the walk).
    fn unit<'s>(&'s self, u: usize, deps: &mut Vec<(u32, u32)>, ratings: &mut Vec<&'s Rating>) {
        deps.clear();
        ratings.clear();
        match self {
            Schedule::PerPart { parts, deps: d } => {
                deps.extend_from_slice(&d[u]);
                ratings.extend(parts[u].iter());
            }
            Schedule::Chains { order, layout, tiles } => {
                let (n, t, g) = (order.bins as usize, order.tile as usize, order.shifts());
                let (v, shift, k) = (u / (g * g), u / g, tiles[u] as usize);
                let c = order.shift_order(v)[shift % g] as usize;
                // BlockedEpoch::block, its divisions taken out of the loop.
                let (alpha, beta) = order.sweep_bins(v);
                let (users, items) = (&alpha[k * t..][..t], &beta[(k + c) % g * t..][..t]);
                for &r in order.tile_rounds(v) {
                    let r = r as usize;
                    for (j, &u) in users.iter().enumerate() {
                        let i = items[if j + r < t { j + r } else { j + r - t }];
                        ratings.extend(layout.block_sweep(u as usize * n + i as usize, v));
                    }
                }
                // Every bin meets one chain a shift: `shift` came before.
                deps.extend(users.iter().map(|&u| (u, shift as u32)));
                deps.extend(items.iter().map(|&i| (n as u32 + i, shift as u32)));
            }
        }
    }
}

/// Hands out a schedule's units in order, and decides at each place where
/// the pass may stop whether it does: under one lock, so that no unit past
/// a stop is ever handed out.
struct Dispenser {
    next: usize,
    stopped: bool,
}

/// Spins on `ready` (a short wait: the unit it waits on is being trained),
/// yielding the core after a while in case the threads outnumber the cores.
/// False when `abort` was raised instead.
fn wait_for(ready: impl Fn() -> bool, abort: &AtomicBool) -> bool {
    let mut spins = 0u32;
    while !ready() {
        if abort.load(Ordering::Relaxed) {
            return false;
        }
        spins += 1;
        if spins < 1 << 10 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    true
}

impl HogwildCpu {
    /// The blocked order ([`crate::engine::blocked`]) in parallel, with the
    /// result of walking it sequentially. The threads take the units of
    /// `schedule` in order; a unit starts once every earlier unit of its
    /// bins is done, and then its thread is the only one touching those
    /// bins' rows, so it updates them in place and no update races. Returns
    /// the squared errors and the ratings done (the units of a prefix, which
    /// ends where the schedule may stop).
    ///
    /// Row exclusivity rests on the layout: every rating of a blocked part
    /// lies in the part's bins ([`RunLayout::bins_of_part`]).
    fn train_blocked(
        &self,
        model: &mut Model,
        steps: &[Step],
        sub: usize,
        schedule: &Schedule,
        input: &EpochInput,
    ) -> Result<(Vec<f64>, usize)> {
        let (stop, progress) = (input.stop, input.progress);
        let bins = input.layout.bins().unwrap_or(1) as usize;
        let tables = &ExclusiveTables::new(model);
        // A unit's ratings gathered in order, so that prefetching reaches
        // across its (often tiny) parts.
        let walk = |ratings: &[&Rating], sse: &mut [f64]| {
            for (j, r) in ratings.iter().enumerate() {
                // A unit's parts lie all over the layout: ask for a rating
                // twice as far ahead as for its rows, which need it read.
                if let Some(&n) = ratings.get(j + 4 * AHEAD) {
                    prefetch_ptr(n);
                }
                if let Some(n) = ratings.get(j + AHEAD) {
                    tables.prefetch(n);
                }
                // SAFETY: the rating lies in one of this unit's blocks, so
                // its rows are in the unit's bins, whose earlier units are
                // done and whose later units wait for this one (or this
                // thread runs alone).
                let (p, q) = unsafe { tables.rows(r) };
                apply_all(steps, sub, p, q, r.value, sse);
            }
        };
        let (units, stop_every) = (schedule.units(), schedule.stop_every());
        // One thread never waits (it takes the units in order): the same
        // loop serves it.
        let threads = self.threads.min(units).max(1);
        let done: Vec<AtomicU32> = (0..2 * bins).map(|_| AtomicU32::new(0)).collect();
        let dispenser = Mutex::new(Dispenser { next: 0, stopped: false });
        let take = || -> Option<usize> {
            let mut d = dispenser.lock().unwrap_or_else(|e| e.into_inner());
            if d.stopped || d.next >= units {
                return None;
            }
            if d.next.is_multiple_of(stop_every) && stop.load(Ordering::Relaxed) {
                d.stopped = true;
                return None;
            }
            d.next += 1;
            Some(d.next - 1)
        };
        let abort = AtomicBool::new(false);
        let (done, abort, walk, take) = (&done, &abort, &walk, &take);
        let results: Vec<(Vec<f64>, usize)> = crate::parallel::join_all(
            (0..threads).map(|_| {
                move || {
                    let (mut sse, mut trained) = (vec![0.0f64; steps.len()], 0usize);
                    let (mut deps, mut ratings) = (Vec::new(), Vec::<&Rating>::new());
                    while let Some(u) = take() {
                        schedule.unit(u, &mut deps, &mut ratings);
                        let ready = || deps.iter().all(|&(b, after)| done[b as usize].load(Ordering::Acquire) == after);
                        if !wait_for(ready, abort) {
                            break;
                        }
                        walk(&ratings, &mut sse);
                        trained += ratings.len();
                        progress.fetch_add(ratings.len(), Ordering::Relaxed);
                        for &(b, after) in &deps {
                            done[b as usize].store(after + 1, Ordering::Release);
                        }
                    }
                    (sse, trained)
                }
            }),
            "a blocked-order worker",
        );
        let mut sse = vec![0.0f64; steps.len()];
        let mut ratings = 0;
        for (part, n) in &results {
            sse.iter_mut().zip(part).for_each(|(a, c)| *a += c);
            ratings += n;
        }
        Ok((sse, ratings))
    }
}

impl Backend for HogwildCpu {
    fn kind(&self) -> String {
        "cpu".into()
    }

    fn adapter(&self) -> String {
        let plural = if self.threads == 1 { "" } else { "s" };
        format!("CPU ({} thread{plural})", self.threads)
    }

    fn train_epoch(&mut self, model: &mut Model, input: &EpochInput) -> Result<EpochTrain> {
        let t0 = Instant::now();
        let steps = steps_of(model, input.rates, self.bias_reg);
        let steps = &steps[..];
        let (s, sub) = (model.stride, row_stride(model.rank));
        let parts = &input.plan.parts[input.from..];
        let layout = input.layout;
        if layout.bins().is_some() {
            // Tile chains where the loop made no plan (a tiled epoch from
            // its start, `needs_plan`), a unit per part of the plan given.
            let chains = if input.plan.parts.is_empty() { Schedule::tile_chains(layout, input.epoch) } else { None };
            let schedule = match chains {
                Some(s) => s,
                None => Schedule::per_part(layout, parts)?,
            };
            let (sse, done) = self.train_blocked(model, steps, sub, &schedule, input)?;
            // No two threads ever train rows of one bin at once: nothing races.
            let host_seconds = t0.elapsed().as_secs_f64();
            let workers = self.threads.min(layout.bins().unwrap_or(1) as usize) as f64;
            return Ok(EpochTrain { sse, count: done as u64, done, host_seconds, workers, ..Default::default() });
        }
        let tables = Tables { users: as_atomic(&mut model.users), items: as_atomic(&mut model.items), stride: s };
        let tables = &tables;
        let threads = self.threads;
        let (mut sse, mut conflicts, mut done) = (vec![0.0f64; steps.len()], 0u64, 0usize);
        // A round's ratings in order, gathered once (in parallel, each part a
        // contiguous copy) so that the update loop and the conflict count read
        // them sequentially.
        let mut gathered: Vec<Rating> = Vec::with_capacity(ROUND + layout.max_part_len());
        let mut k = 0;
        while k < parts.len() {
            if input.stop.load(Ordering::Relaxed) {
                break;
            }
            // Whole parts up to about ROUND ratings.
            let first = k;
            let mut n = 0;
            while k < parts.len() && (n == 0 || n + layout.parts()[parts[k] as usize].len as usize <= ROUND) {
                n += layout.parts()[parts[k] as usize].len as usize;
                k += 1;
            }
            gathered.clear();
            for &p in &parts[first..k] {
                gathered.extend_from_slice(layout.part(p));
            }
            let chunk = n.div_ceil(threads).max(1);
            let wave = &gathered[..];
            let per_thread = crate::parallel::join_all(
                wave.chunks(chunk).enumerate().map(|(t, part)| {
                    move || {
                        // Two rows of scratch per thread, allocated once per round.
                        let mut p = vec![0.0f32; s];
                        let mut q = vec![0.0f32; s];
                        let (mut sse, mut conflicts) = (vec![0.0f64; steps.len()], 0u64);
                        for (j, r) in part.iter().enumerate() {
                            // Rows are read in a random order: ask for the
                            // rows of the rating AHEAD on now.
                            if let Some(n) = part.get(j + AHEAD) {
                                tables.prefetch(n);
                            }
                            // The j-th rating of every thread's share forms one
                            // parallel wave: count a conflict when an earlier
                            // thread's j-th rating shares the user or the item.
                            conflicts += (0..t).any(|e| {
                                let o = wave[e * chunk + j];
                                o.user == r.user || o.item == r.item
                            }) as u64;
                            tables.update(r, steps, sub, &mut p, &mut q, &mut sse);
                        }
                        (sse, conflicts)
                    }
                }),
                "a Hogwild worker",
            );
            let (round_sse, round_conflicts) =
                per_thread.into_iter().fold((vec![0.0; steps.len()], 0), |(mut a, b), (c, d)| {
                    a.iter_mut().zip(&c).for_each(|(a, c)| *a += c);
                    (a, b + d)
                });
            sse.iter_mut().zip(&round_sse).for_each(|(a, c)| *a += c);
            conflicts += round_conflicts;
            done += n;
            input.progress.fetch_add(n, Ordering::Relaxed);
        }
        let host_seconds = t0.elapsed().as_secs_f64();
        let workers = threads as f64;
        Ok(EpochTrain { sse, count: done as u64, done, conflicts, host_seconds, workers, ..Default::default() })
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)> {
        let chunk = test.len().div_ceil(self.threads).max(1);
        let copies = model.copies;
        let parts = crate::parallel::join_all(
            test.chunks(chunk).map(|part| {
                move || {
                    let mut m = vec![MetricsAcc::default(); copies];
                    for r in part {
                        for (g, m) in m.iter_mut().enumerate() {
                            m.add(r.value - model.predict_with(g, r.user, r.item));
                        }
                    }
                    m
                }
            }),
            "an evaluation worker",
        );
        let mut acc = vec![MetricsAcc::default(); copies];
        for part in &parts {
            acc.iter_mut().zip(part).for_each(|(t, p)| t.merge(p));
        }
        Ok((acc.iter().map(MetricsAcc::finish).collect(), Ledger::default()))
    }

    fn finish(&mut self, _model: &mut Model) -> Result<Ledger> {
        Ok(Ledger::default())
    }

    fn parallelism(&self) -> usize {
        self.threads
    }

    /// A tiled blocked epoch from its start is walked in tile chains made
    /// from the order's permutations, not from a plan.
    fn needs_plan(&self, layout: &RunLayout) -> bool {
        layout.tile().is_none_or(|t| t < 2 || layout.bins().is_none_or(|b| b / t < 2))
    }
}
