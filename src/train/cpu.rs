//! The CPU backends: the sequential reference trainer (the ground truth of
//! every test) and the multi-threaded Hogwild trainer (`--backend cpu`).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::{Backend, EpochTrain};
use crate::data::Rating;
use crate::error::Result;
use crate::model::{Metrics, MetricsAcc, Model, Step};
use crate::stage::Ledger;

/// Ratings between two looks at the stop flag (sequential reference).
const STOP_CHECK: usize = 4096;

/// Ratings of one Hogwild round: the round's share of the epoch order is split
/// among the threads, and the stop flag is read between rounds.
const ROUND: usize = 1 << 16;

fn step_of(model: &Model, lr: f32, reg: f32, bias_reg: f32) -> Step {
    Step { rank: model.rank, mean: model.mean, lr, reg, bias_reg }
}

/// Sequential per-sample SGD in the epoch order: the reference, and what
/// `--backend cpu --deterministic` runs.
pub struct ReferenceCpu {
    pub reg: f32,
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
        lr: f32,
        stop: &AtomicBool,
    ) -> Result<EpochTrain> {
        let step = step_of(model, lr, self.reg, self.bias_reg);
        let s = model.stride;
        let mut sse = 0.0f64;
        let mut done = 0;
        for part in order.chunks(STOP_CHECK) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for &idx in part {
                let r = train[idx as usize];
                let p = &mut model.users[r.user as usize * s..][..s];
                let q = &mut model.items[r.item as usize * s..][..s];
                let e = step.apply(p, q, r.value);
                sse += (e * e) as f64;
            }
            done += part.len();
        }
        Ok(EpochTrain { sse, count: done as u64, done, conflicts: 0, ledger: Ledger::default() })
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Metrics, Ledger)> {
        Ok((model.evaluate(test), Ledger::default()))
    }

    fn finish(&mut self, _model: &mut Model) -> Result<Ledger> {
        Ok(Ledger::default())
    }
}

/// Multi-threaded Hogwild SGD: the epoch order is taken in rounds of
/// [`ROUND`] ratings, each thread takes a contiguous share of a round and updates the shared tables without locks. Rows are read and
/// written with relaxed atomic loads and stores of the f32 bits (plain moves on
/// every mainstream CPU), so concurrent updates of one row may lose an update,
/// as Hogwild! accepts, but never make undefined behaviour.
pub struct HogwildCpu {
    pub reg: f32,
    pub bias_reg: f32,
    pub threads: usize,
}

impl HogwildCpu {
    pub fn new(reg: f32, bias_reg: f32, threads: usize) -> Self {
        HogwildCpu { reg, bias_reg, threads: threads.max(1) }
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
        lr: f32,
        stop: &AtomicBool,
    ) -> Result<EpochTrain> {
        let step = step_of(model, lr, self.reg, self.bias_reg);
        let s = model.stride;
        let users = as_atomic(&mut model.users);
        let items = as_atomic(&mut model.items);
        let threads = self.threads;
        let (mut sse, mut conflicts, mut done) = (0.0f64, 0u64, 0usize);
        for round in order.chunks(ROUND) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let chunk = round.len().div_ceil(threads).max(1);
            let (round_sse, round_conflicts) = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..round.len().div_ceil(chunk))
                    .map(|t| {
                        scope.spawn(move || {
                            let part = &round[t * chunk..((t + 1) * chunk).min(round.len())];
                            // Two rows of scratch per thread, allocated once per round.
                            let mut p = vec![0.0f32; s];
                            let mut q = vec![0.0f32; s];
                            let (mut sse, mut conflicts) = (0.0f64, 0u64);
                            for (j, &idx) in part.iter().enumerate() {
                                let r = train[idx as usize];
                                // The j-th rating of every thread's part forms one
                                // parallel wave: count a conflict when an earlier
                                // thread's j-th rating shares the user or the item.
                                conflicts += (0..t).any(|e| {
                                    let o = train[round[e * chunk + j] as usize];
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
                                let e = step.apply(&mut p, &mut q, r.value);
                                sse += (e * e) as f64;
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
                handles
                    .into_iter()
                    .map(|h| h.join().expect("Hogwild worker panicked"))
                    .fold((0.0, 0), |(a, b), (c, d)| (a + c, b + d))
            });
            sse += round_sse;
            conflicts += round_conflicts;
            done += round.len();
        }
        Ok(EpochTrain { sse, count: done as u64, done, conflicts, ledger: Ledger::default() })
    }

    fn evaluate(&mut self, model: &Model, test: &[Rating]) -> Result<(Metrics, Ledger)> {
        let chunk = test.len().div_ceil(self.threads).max(1);
        let acc = std::thread::scope(|scope| {
            let handles: Vec<_> = test
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut m = MetricsAcc::default();
                        for r in part {
                            m.add(r.value - model.predict(r.user, r.item));
                        }
                        m
                    })
                })
                .collect();
            let mut total = MetricsAcc::default();
            for h in handles {
                total.merge(&h.join().expect("evaluation worker panicked"));
            }
            total
        });
        Ok((acc.finish(), Ledger::default()))
    }

    fn finish(&mut self, _model: &mut Model) -> Result<Ledger> {
        Ok(Ledger::default())
    }
}
