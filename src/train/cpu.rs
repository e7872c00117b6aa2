//! The CPU backends: the sequential reference trainer (the ground truth of
//! every test) and the multi-threaded Hogwild trainer (`--backend cpu`).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::{Backend, EpochTrain};
use crate::data::Rating;
use crate::error::Result;
use crate::model::{Metrics, MetricsAcc, Model, Rate, Step, row_stride};
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

/// Multi-threaded Hogwild SGD: the epoch order is taken in rounds of
/// [`ROUND`] ratings. The round's ratings are first gathered in order (in
/// parallel, prefetching far ahead), so that the updates read them
/// sequentially; then each thread takes a contiguous share of the round and
/// updates the shared tables without locks, prefetching the rows of the
/// rating [`AHEAD`] on. Rows are read and written with relaxed atomic loads
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

/// A hint to bring `x`'s cache line in; never faults, no effect on results.
#[inline(always)]
fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and cannot fault; the
    // pointer comes from a reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch(x as *const T as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// [`prefetch`] of every cache line of a row.
#[inline(always)]
fn prefetch_row(row: &[AtomicU32]) {
    for x in row.iter().step_by(16) {
        prefetch(x);
    }
    if let Some(last) = row.last() {
        prefetch(last);
    }
}

/// Views an exclusively borrowed f32 table as atomics for the scope of one
/// epoch.
fn as_atomic(t: &mut [f32]) -> &[AtomicU32] {
    // SAFETY: AtomicU32 has the size and alignment of u32 and f32, and the
    // exclusive borrow guarantees no non-atomic access for the returned
    // lifetime.
    unsafe { std::slice::from_raw_parts(t.as_mut_ptr() as *const AtomicU32, t.len()) }
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
        _spans: &[u32],
        _following: &[u32],
        rates: &[Rate],
        stop: &AtomicBool,
    ) -> Result<EpochTrain> {
        let steps = steps_of(model, rates, self.bias_reg);
        let steps = &steps[..];
        let (s, sub) = (model.stride, row_stride(model.rank));
        let users = as_atomic(&mut model.users);
        let items = as_atomic(&mut model.items);
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
                                    prefetch_row(&users[n.user as usize * s..][..s]);
                                    prefetch_row(&items[n.item as usize * s..][..s]);
                                }
                                // The j-th rating of every thread's part forms one
                                // parallel wave: count a conflict when an earlier
                                // thread's j-th rating shares the user or the item.
                                conflicts += (0..t).any(|e| {
                                    let o = wave[e * chunk + j];
                                    o.user == r.user || o.item == r.item
                                }) as u64;
                                let pu = &users[r.user as usize * s..][..s];
                                let qi = &items[r.item as usize * s..][..s];
                                for (x, a) in p.iter_mut().zip(pu) {
                                    *x = f32::from_bits(a.load(Ordering::Relaxed));
                                }
                                for (x, a) in q.iter_mut().zip(qi) {
                                    *x = f32::from_bits(a.load(Ordering::Relaxed));
                                }
                                apply_all(steps, sub, &mut p, &mut q, r.value, &mut sse);
                                for (x, a) in p.iter().zip(pu) {
                                    a.store(x.to_bits(), Ordering::Relaxed);
                                }
                                for (x, a) in q.iter().zip(qi) {
                                    a.store(x.to_bits(), Ordering::Relaxed);
                                }
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
}
