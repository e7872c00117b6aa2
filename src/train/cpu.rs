//! The CPU backends: the sequential reference trainer (the ground truth of
//! every test) and the multi-threaded Hogwild trainer (`--backend cpu`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use super::blocked::BlockedRatings;
use super::{Backend, EpochTrain};
use crate::data::Rating;
use crate::error::{Error, Result};
use crate::model::{Metrics, MetricsAcc, Model, Rate, Step, row_stride};
use crate::prefetch::{prefetch, prefetch_row, prefetch_span};
use crate::stage::Ledger;

/// Ratings between two looks at the stop flag (sequential reference).
const STOP_CHECK: usize = 4096;

/// Ratings of one Hogwild round: the round's share of the epoch order is split
/// among the threads, and the stop flag is read between rounds. Large enough
/// that the threads rarely wait for each other at a round's end (1 << 16 ran
/// about 25% slower on 2 threads), small enough that Ctrl-C is answered within
/// a few tens of milliseconds.
const ROUND: usize = 1 << 18;

/// One [`Step`] per model side by side.
fn steps_of(model: &Model, rates: &[Rate], bias_reg: f32) -> Vec<Step> {
    assert_eq!(rates.len(), model.copies, "one rate per model side by side");
    rates.iter().map(|r| Step { rank: model.rank, mean: model.mean, lr: r.lr, reg: r.reg, bias_reg }).collect()
}

/// Applies every model's step to the rows `p` and `q` (each holding the
/// models' copies side by side, `sub` floats apart), adding each squared
/// error into `sse`.
#[inline]
fn apply_all(steps: &[Step], sub: usize, p: &mut [f32], q: &mut [f32], rating: f32, sse: &mut [f64]) {
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

    fn train_epoch(
        &mut self,
        model: &mut Model,
        train: &[Rating],
        order: &[u32],
        _spans: &[u32],
        _blocked: Option<&BlockedRatings>,
        _following: &[u32],
        rates: &[Rate],
        stop: &AtomicBool,
    ) -> Result<EpochTrain> {
        let steps = steps_of(model, rates, self.bias_reg);
        let (s, sub) = (model.stride, row_stride(model.rank));
        let mut sse = vec![0.0f64; steps.len()];
        let mut done = 0;
        for part in order.chunks(STOP_CHECK) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for &idx in part {
                let r = train[idx as usize];
                let p = &mut model.users[r.user as usize * s..][..s];
                let q = &mut model.items[r.item as usize * s..][..s];
                apply_all(&steps, sub, p, q, r.value, &mut sse);
            }
            done += part.len();
        }
        Ok(EpochTrain { sse, count: done as u64, done, conflicts: 0, ledger: Ledger::default() })
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
/// In the blocked order ([`super::blocked`], its default) the threads train
/// block parts whose rows no other thread touches meanwhile, in place and
/// without races; see `train_blocked`.
///
/// In the shuffled order it is Hogwild SGD: the epoch order is taken in
/// rounds of 2^18 ratings (`ROUND`). The round's ratings are first gathered in order (in
/// parallel, prefetching far ahead), so that the updates read them
/// sequentially; then each thread takes a contiguous share of the round and
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
const AHEAD: usize = 8;

/// How many ratings ahead the gather asks for them: a copy is short, so the
/// requests must go out much further ahead.
const GATHER_AHEAD: usize = 96;

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
struct ExclusiveTables {
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
    fn new(model: &mut Model) -> Self {
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
    unsafe fn rows(&self, r: &Rating) -> (&mut [f32], &mut [f32]) {
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
    fn prefetch(&self, r: &Rating) {
        let (u, i, s) = (r.user as usize, r.item as usize, self.stride);
        if u < self.n_users && i < self.n_items {
            for (base, row) in [(self.users, u), (self.items, i)] {
                // wrapping_add: no dereference, so no in-bounds requirement.
                prefetch_span(base.wrapping_add(row * s), s);
            }
        }
    }
}

/// One part of the blocked order, ready to be scheduled: where it lies in
/// the order, where its ratings lie, its bins, and how many earlier parts
/// share each bin.
struct Part {
    begin: usize,
    /// Its ratings are `train[first..first + (end - begin)]`.
    first: usize,
    end: usize,
    bins: (u32, u32),
    /// Parts of the same user bin, and of the same item bin, before this one.
    after: (u32, u32),
}

/// Spins on `ready` (a short wait: the part it waits on is being trained),
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
    /// The blocked order ([`super::blocked`]) in parallel, with the result of
    /// walking it sequentially. The threads take the parts (ends in `spans`)
    /// in order; a part starts once every earlier part of its user bin and
    /// of its item bin is done, and then its thread is the only one touching
    /// those bins' rows, so it updates them in place and no update races.
    /// The stop flag is read before taking a part. Returns the squared
    /// errors and the ratings done (a prefix of the order).
    ///
    /// Row exclusivity is checked, not assumed: `train` must be `grid`'s
    /// ratings and every part a run of consecutive indices inside one block
    /// (as [`BlockedRatings::arrange`] makes them), whose ratings lie in the
    /// block's bins by construction; anything else is refused with an error
    /// before the rows it would touch are.
    #[allow(clippy::too_many_arguments)]
    fn train_blocked(
        &self,
        model: &mut Model,
        steps: &[Step],
        sub: usize,
        train: &[Rating],
        order: &[u32],
        spans: &[u32],
        grid: &BlockedRatings,
        stop: &AtomicBool,
    ) -> Result<(Vec<f64>, usize)> {
        let refuse = |why: String| Error::arg("--order", "blocked", why);
        if !std::ptr::eq(train, grid.ratings()) {
            return Err(refuse("the ratings passed are not the blocked copy the order indexes".into()));
        }
        let tables = &ExclusiveTables::new(model);
        let mut parts = Vec::with_capacity(spans.len());
        let mut seen = (vec![0u32; grid.bins as usize], vec![0u32; grid.bins as usize]);
        let mut begin = 0;
        for &end in spans {
            let end = (end as usize).min(order.len());
            if end > begin {
                let first = order[begin] as usize;
                let bins = grid.bins_of_range(first..first + (end - begin)).ok_or_else(|| {
                    refuse(format!("order[{begin}..{end}] (from rating {first}) is not inside one block"))
                })?;
                let (u, i) = (&mut seen.0[bins.0 as usize], &mut seen.1[bins.1 as usize]);
                parts.push(Part { begin, first, end, bins, after: (*u, *i) });
                (*u, *i) = (*u + 1, *i + 1);
            }
            begin = end;
        }
        // Walks one part; Err(position in the order) where its indices stop
        // running consecutively.
        let walk = |part: &Part, sse: &mut [f64]| -> std::result::Result<(), usize> {
            let ratings = &train[part.first..part.first + (part.end - part.begin)];
            for (j, (r, &k)) in ratings.iter().zip(&order[part.begin..part.end]).enumerate() {
                if k as usize != part.first + j {
                    return Err(part.begin + j);
                }
                if let Some(n) = ratings.get(j + AHEAD) {
                    tables.prefetch(n);
                }
                // SAFETY: the rating lies in this part's block, so its rows
                // are in the block's user bin and item bin, whose earlier
                // parts are done and whose later parts wait for this one (or
                // this thread runs alone).
                let (p, q) = unsafe { tables.rows(r) };
                apply_all(steps, sub, p, q, r.value, sse);
            }
            Ok(())
        };
        let out_of_order =
            |at: usize| refuse(format!("order[{at}] = {} breaks its part's run of consecutive ratings", order[at]));
        // One thread never waits (it takes the parts in order): the same
        // loop serves it.
        let threads = self.threads.min(parts.len()).max(1);
        let done_in = |bins: &[u32]| -> Vec<AtomicU32> { bins.iter().map(|_| AtomicU32::new(0)).collect() };
        let (user_done, item_done) = (done_in(&seen.0), done_in(&seen.1));
        let (next, abort) = (AtomicUsize::new(0), AtomicBool::new(false));
        let (parts, user_done, item_done, next, abort, walk) = (&parts, &user_done, &item_done, &next, &abort, &walk);
        let results: Vec<(Vec<f64>, Option<usize>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(move || {
                        let mut sse = vec![0.0f64; steps.len()];
                        while !stop.load(Ordering::Relaxed) && !abort.load(Ordering::Relaxed) {
                            let Some(part) = parts.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                            let (u, i) = (&user_done[part.bins.0 as usize], &item_done[part.bins.1 as usize]);
                            let ready = || {
                                u.load(Ordering::Acquire) == part.after.0 && i.load(Ordering::Acquire) == part.after.1
                            };
                            if !wait_for(ready, abort) {
                                break;
                            }
                            if let Err(at) = walk(part, &mut sse) {
                                abort.store(true, Ordering::Relaxed);
                                return (sse, Some(at));
                            }
                            u.store(part.after.0 + 1, Ordering::Release);
                            i.store(part.after.1 + 1, Ordering::Release);
                        }
                        (sse, None)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("Hogwild worker panicked")).collect()
        });
        if let Some(at) = results.iter().find_map(|r| r.1) {
            return Err(out_of_order(at));
        }
        let mut sse = vec![0.0f64; steps.len()];
        for (part, _) in &results {
            sse.iter_mut().zip(part).for_each(|(a, c)| *a += c);
        }
        // Every part taken was finished, and parts are taken in order.
        let taken = next.load(Ordering::Relaxed).min(parts.len());
        Ok((sse, if taken == 0 { 0 } else { parts[taken - 1].end }))
    }
}

impl Backend for HogwildCpu {
    fn kind(&self) -> String {
        "cpu".into()
    }

    fn adapter(&self) -> String {
        format!("CPU Hogwild ({} threads)", self.threads)
    }

    fn train_epoch(
        &mut self,
        model: &mut Model,
        train: &[Rating],
        order: &[u32],
        spans: &[u32],
        blocked: Option<&BlockedRatings>,
        _following: &[u32],
        rates: &[Rate],
        stop: &AtomicBool,
    ) -> Result<EpochTrain> {
        let steps = steps_of(model, rates, self.bias_reg);
        let steps = &steps[..];
        let (s, sub) = (model.stride, row_stride(model.rank));
        if let Some(grid) = blocked {
            let (sse, done) = self.train_blocked(model, steps, sub, train, order, spans, grid, stop)?;
            // No two threads ever train rows of one bin at once: nothing races.
            return Ok(EpochTrain { sse, count: done as u64, done, conflicts: 0, ledger: Ledger::default() });
        }
        let tables = Tables { users: as_atomic(&mut model.users), items: as_atomic(&mut model.items), stride: s };
        let tables = &tables;
        let threads = self.threads;
        let (mut sse, mut conflicts, mut done) = (vec![0.0f64; steps.len()], 0u64, 0usize);
        // The round's ratings in order, gathered once (in parallel) so that
        // the update loop and the conflict count read them sequentially.
        let mut gathered = vec![Rating { user: 0, item: 0, value: 0.0 }; order.len().min(ROUND)];
        for round in order.chunks(ROUND) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let chunk = round.len().div_ceil(threads).max(1);
            let wave = &mut gathered[..round.len()];
            std::thread::scope(|scope| {
                for (out, part) in wave.chunks_mut(chunk).zip(round.chunks(chunk)) {
                    scope.spawn(move || {
                        for (j, (o, &idx)) in out.iter_mut().zip(part).enumerate() {
                            if let Some(&far) = part.get(j + GATHER_AHEAD) {
                                prefetch(&train[far as usize]);
                            }
                            *o = train[idx as usize];
                        }
                    });
                }
            });
            let wave = &gathered[..round.len()];
            let (round_sse, round_conflicts) = std::thread::scope(|scope| {
                let handles: Vec<_> = wave
                    .chunks(chunk)
                    .enumerate()
                    .map(|(t, part)| {
                        scope.spawn(move || {
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
                                // The j-th rating of every thread's part forms one
                                // parallel wave: count a conflict when an earlier
                                // thread's j-th rating shares the user or the item.
                                conflicts += (0..t).any(|e| {
                                    let o = wave[e * chunk + j];
                                    o.user == r.user || o.item == r.item
                                }) as u64;
                                tables.update(r, steps, sub, &mut p, &mut q, &mut sse);
                            }
                            (sse, conflicts)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("Hogwild worker panicked")).fold(
                    (vec![0.0; steps.len()], 0),
                    |(mut a, b), (c, d)| {
                        a.iter_mut().zip(&c).for_each(|(a, c)| *a += c);
                        (a, b + d)
                    },
                )
            });
            sse.iter_mut().zip(&round_sse).for_each(|(a, c)| *a += c);
            conflicts += round_conflicts;
            done += round.len();
        }
        Ok(EpochTrain { sse, count: done as u64, done, conflicts, ledger: Ledger::default() })
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Vec<Metrics>, Ledger)> {
        let chunk = test.len().div_ceil(self.threads).max(1);
        let copies = model.copies;
        let acc = std::thread::scope(|scope| {
            let handles: Vec<_> = test
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut m = vec![MetricsAcc::default(); copies];
                        for r in part {
                            for (g, m) in m.iter_mut().enumerate() {
                                m.add(r.value - model.predict_with(g, r.user, r.item));
                            }
                        }
                        m
                    })
                })
                .collect();
            let mut total = vec![MetricsAcc::default(); copies];
            for h in handles {
                let part = h.join().expect("evaluation worker panicked");
                total.iter_mut().zip(&part).for_each(|(t, p)| t.merge(p));
            }
            total
        });
        Ok((acc.iter().map(MetricsAcc::finish).collect(), Ledger::default()))
    }

    fn finish(&mut self, _model: &mut Model) -> Result<Ledger> {
        Ok(Ledger::default())
    }

    fn parallelism(&self) -> usize {
        self.threads
    }
}
