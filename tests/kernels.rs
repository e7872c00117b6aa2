//! Every kernel on its own against a plain CPU implementation, on sizes that
//! are not multiples of the workgroup size (64), with a stated tolerance:
//! exact for the kernels that only move words (`map_rows`, `scatter_rows`,
//! `gather_rows`), 1e-5 relative for those that compute (`sgd`,
//! `sgd_tail`, `predict`, where a GPU may fuse multiply-adds).

mod common;

use rowstage::data::{Rating, UNKNOWN};
use rowstage::engine::Part;
use rowstage::gpu::kernels::{PredictParams, Spec, WORKGROUP};
use rowstage::gpu::probe::{Probe, SgdKernel, SgdRun};
use rowstage::model::{Step, row_stride};
use rowstage::stage::entry;

/// Relative tolerance of the computing kernels.
const TOL: f32 = 1e-5;

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= TOL * (1.0 + a.abs().max(b.abs()))
}

/// A small deterministic stream of numbers in [-0.5, 0.5).
fn noise(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 10_000) as f32 / 10_000.0 - 0.5
        })
        .collect()
}

fn probes(spec: Spec, test: &str) -> Vec<Probe> {
    common::test_backends().into_iter().filter_map(|b| common::gpu(b, test).map(|c| Probe::new(c, spec))).collect()
}

#[test]
fn map_rows_sets_exactly_the_given_entries() {
    for probe in probes(Spec::new(4, 1), "map_rows") {
        let map: Vec<u32> = (0..301).map(|r| if r % 3 == 0 { entry::slot(r) } else { entry::ABSENT }).collect();
        // 131 entries (not a multiple of 64): slots, clears and window rows.
        let entries: Vec<[u32; 2]> = (0..131u32)
            .map(|k| {
                // Distinct rows (11 is prime to 301), as the host lists them.
                let row = (k * 11) % 301;
                let e = match k % 3 {
                    0 => entry::slot(k + 1000),
                    1 => entry::ABSENT,
                    _ => entry::window(k),
                };
                [row, e]
            })
            .collect();
        let mut want = map.clone();
        for &[row, e] in &entries {
            want[row as usize] = e;
        }
        assert_eq!(probe.map_rows(&map, &entries).unwrap(), want);
    }
}

#[test]
fn scatter_and_gather_move_rows_between_slots_and_windows() {
    for probe in probes(Spec::new(7, 1), "scatter_and_gather") {
        // Rows of 3 vec4s (rank 7 with one model... or any width), 97 slots.
        let row_vec4 = 3u32;
        let width = 4 * row_vec4 as usize;
        let slab = noise(97 * width, 1);
        let slots: Vec<u32> = (0..67u32).map(|j| (j * 13 + 5) % 97).collect();
        let window = noise(slots.len() * width, 2);
        let mut want = slab.clone();
        for (j, &s) in slots.iter().enumerate() {
            want[s as usize * width..][..width].copy_from_slice(&window[j * width..][..width]);
        }
        assert_eq!(probe.scatter_rows(&slab, &window, &slots, row_vec4).unwrap(), want, "scatter");
        let gathered = probe.gather_rows(&slab, &slots, row_vec4).unwrap();
        let want: Vec<f32> = slots.iter().flat_map(|&s| slab[s as usize * width..][..width].to_vec()).collect();
        assert_eq!(gathered, want, "gather");
    }
}

/// The CPU's SGD of `ratings` in order on a slab (slots through `map`), for
/// `models` models with `rates`; returns the slab and the squared errors.
#[allow(clippy::too_many_arguments)]
fn cpu_sgd(
    slab: &[f32],
    map: &[u32],
    ratings: &[Rating],
    rank: usize,
    models: usize,
    rates: &[[f32; 2]],
    n_users: u32,
    mean: f32,
    bias_reg: f32,
) -> (Vec<f32>, f64) {
    let sub = row_stride(rank);
    let slot_floats = sub * models;
    let mut slab = slab.to_vec();
    let mut sse = 0.0;
    for r in ratings {
        let (su, si) = ((map[r.user as usize] - 1) as usize, (map[(n_users + r.item) as usize] - 1) as usize);
        for (g, &[lr, reg]) in rates.iter().enumerate() {
            let step = Step { rank, mean, lr, reg, bias_reg };
            let mut p = slab[su * slot_floats + g * sub..][..sub].to_vec();
            let mut q = slab[si * slot_floats + g * sub..][..sub].to_vec();
            let e = step.apply(&mut p, &mut q, r.value);
            sse += (e * e) as f64;
            slab[su * slot_floats + g * sub..][..sub].copy_from_slice(&p);
            slab[si * slot_floats + g * sub..][..sub].copy_from_slice(&q);
        }
    }
    (slab, sse)
}

/// A slab of 61 users and 37 items for `rank` and `models`, padding zero,
/// every row in slot `row * 2 + 1` of 200 (not the identity).
fn sgd_setup(rank: usize, models: usize) -> (Vec<f32>, Vec<u32>) {
    let sub = row_stride(rank);
    let mut slab = noise(200 * sub * models, 9);
    for slot in slab.chunks_mut(sub) {
        slot[rank + 1..].fill(0.0);
        slot[rank] *= 0.1;
    }
    let map: Vec<u32> = (0..98u32).map(|row| entry::slot((row * 2 + 1) % 200)).collect();
    (slab, map)
}

#[test]
fn sgd_one_at_a_time_and_on_disjoint_rows_equals_the_sequential_cpu_update() {
    let n_users = 61u32;
    for (rank, models) in [(7usize, 1usize), (32, 1), (5, 3)] {
        let rates: Vec<[f32; 2]> = (0..models).map(|g| [0.02 + 0.01 * g as f32, 0.05]).collect();
        for probe in probes(Spec::new(rank as u32, models as u32), "sgd") {
            let (slab, map) = sgd_setup(rank, models);
            // 131 ratings in two parts of 70 and 61, rows shared freely:
            // width 1 walks them in order.
            let ratings: Vec<Rating> = (0..131u32)
                .map(|k| Rating { user: (k * 7) % n_users, item: (k * 11) % 37, value: 1.0 + (k % 5) as f32 })
                .collect();
            let parts = [Part { start: 0, len: 70 }, Part { start: 70, len: 61 }];
            let run = SgdRun {
                first_part: 0,
                parts: 2,
                width: 1,
                n_users,
                bias_reg: 0.01,
                mean: 3.2,
                kernel: SgdKernel::Sgd,
            };
            let (gpu, loss) = probe.sgd(&slab, &map, &ratings, &parts, &rates, run, models).unwrap();
            let (cpu, sse) = cpu_sgd(&slab, &map, &ratings, rank, models, &rates, n_users, 3.2, 0.01);
            for (k, (a, b)) in gpu.iter().zip(&cpu).enumerate() {
                assert!(close(*a, *b), "rank {rank} × {models}, width 1: float {k}: {a} vs {b}");
            }
            let gpu_sse: f64 = loss.iter().map(|&x| x as f64).sum();
            assert!((gpu_sse - sse).abs() <= 1e-4 * sse, "loss {gpu_sse} vs {sse}");

            // 37 ratings sharing no row, 100 invocations (more than the
            // ratings, not a multiple of 64): every rating once, as in order.
            let disjoint: Vec<Rating> =
                (0..37u32).map(|k| Rating { user: k, item: (k * 5) % 37, value: 2.0 + (k % 3) as f32 }).collect();
            let parts = [Part { start: 0, len: 37 }];
            let run = SgdRun { width: 100, parts: 1, ..run };
            let (gpu, _) = probe.sgd(&slab, &map, &disjoint, &parts, &rates, run, 100 * models).unwrap();
            let (cpu, _) = cpu_sgd(&slab, &map, &disjoint, rank, models, &rates, n_users, 3.2, 0.01);
            assert!(gpu.iter().zip(&cpu).all(|(a, b)| close(*a, *b)), "rank {rank} × {models}: disjoint rows");

            // `sgd_tail`: waves (here parts of rows shared within a part
            // never) walked in order in one workgroup equal the same order.
            let waves: Vec<Part> = (0..5u32).map(|w| Part { start: w * 7, len: 7 }).collect();
            let tail_ratings: Vec<Rating> =
                (0..35u32).map(|k| Rating { user: k % 7, item: (k % 7 + k / 7) % 37, value: 3.0 }).collect();
            let run = SgdRun { first_part: 0, parts: 5, width: 256, kernel: SgdKernel::Tail, ..run };
            let (gpu, _) = probe.sgd(&slab, &map, &tail_ratings, &waves, &rates, run, 256 * models).unwrap();
            let (cpu, _) = cpu_sgd(&slab, &map, &tail_ratings, rank, models, &rates, n_users, 3.2, 0.01);
            assert!(gpu.iter().zip(&cpu).all(|(a, b)| close(*a, *b)), "rank {rank} × {models}: sgd_tail");

            // `sgd_blocked` and `sgd_blocked_lanes`: 37 parts (not a multiple
            // of 64) after two of padding, rows shared within a part (user p,
            // user p + 37 where there is one, item p, each twice) and never
            // between parts: each part walked in order by its own worker
            // equals the parts one after another.
            let mut blocked = Vec::new();
            let mut parts = vec![Part { start: 0, len: 0 }, Part { start: 0, len: 0 }];
            for p in 0..37u32 {
                let start = blocked.len() as u32;
                for round in 0..2u32 {
                    for u in [p, p + 37].into_iter().filter(|&u| u < n_users) {
                        blocked.push(Rating { user: u, item: p, value: 1.0 + ((u + round) % 5) as f32 });
                    }
                }
                parts.push(Part { start, len: blocked.len() as u32 - start });
            }
            let (cpu, sse) = cpu_sgd(&slab, &map, &blocked, rank, models, &rates, n_users, 3.2, 0.01);
            for kernel in [SgdKernel::Blocked, SgdKernel::BlockedLanes] {
                let run = SgdRun { first_part: 2, parts: 37, width: 37, kernel, ..run };
                let words = 37usize.max(run.width as usize) * models;
                let (gpu, loss) = probe.sgd(&slab, &map, &blocked, &parts, &rates, run, words).unwrap();
                for (k, (a, b)) in gpu.iter().zip(&cpu).enumerate() {
                    assert!(close(*a, *b), "rank {rank} × {models}, {kernel:?}: float {k}: {a} vs {b}");
                }
                let gpu_sse: f64 = loss.iter().map(|&x| x as f64).sum();
                assert!((gpu_sse - sse).abs() <= 1e-4 * sse, "{kernel:?}: loss {gpu_sse} vs {sse}");
            }
        }
    }
}

/// `sgd_tiles` and `sgd_tiles_lanes`: a tiled blocked epoch (6 bins in 2
/// tiles of 3, 2 sweeps: workgroups of 3 workers, not a multiple of
/// anything), a dispatch per tile shift with the rounds derived on the
/// device from the block starts and the sweeps' permutations, equals the
/// sequential walk of the host's plan of the same epoch.
#[test]
fn sgd_tiles_derive_the_rounds_and_equal_the_plans_sequential_walk() {
    use rowstage::engine::{LayoutSpec, Order, RunLayout};
    let n_users = 61u32;
    let ratings: Vec<Rating> = (0..500u32)
        .map(|k| Rating { user: (k * 7 + k / 3) % n_users, item: (k * 11 + k / 5) % 37, value: 1.0 + (k % 5) as f32 })
        .collect();
    let order = Order::Blocked { bins: 6, sweeps: 2, tile: 3 };
    let spec = LayoutSpec { seed: 3, batch: 1, order, co_partition: None };
    let layout = RunLayout::new(&ratings, n_users as usize, 37, spec, 1).unwrap();
    let (epoch, plan) = (layout.blocked_epoch(1).unwrap(), layout.epoch(1));
    // The kernel reads words from `first_part` on: 4 words of padding here.
    let mut words = vec![u32::MAX; 4];
    words.extend(layout.block_starts().unwrap());
    words.extend(&epoch.perms);
    words.resize(words.len().next_multiple_of(2), 0);
    let table: Vec<Part> = words.chunks(2).map(|w| Part { start: w[0], len: w[1] }).collect();
    let walked: Vec<Rating> = plan.parts.iter().flat_map(|&p| layout.part(p).iter().copied()).collect();
    for (rank, models) in [(7usize, 1usize), (32, 2)] {
        let rates: Vec<[f32; 2]> = (0..models).map(|g| [0.02 + 0.01 * g as f32, 0.05]).collect();
        for probe in probes(Spec { rank: rank as u32, models: models as u32, tile: 3 }, "sgd_tiles") {
            let (slab0, map) = sgd_setup(rank, models);
            let (cpu, sse) = cpu_sgd(&slab0, &map, &walked, rank, models, &rates, n_users, 3.2, 0.01);
            for lanes in [false, true] {
                let mut slab = slab0.clone();
                let mut gpu_sse = 0.0;
                for v in 0..2 {
                    for &shift in epoch.shift_order(v) {
                        let run = SgdRun {
                            first_part: 4,
                            parts: v as u32,
                            width: shift,
                            n_users,
                            bias_reg: 0.01,
                            mean: 3.2,
                            kernel: SgdKernel::Tiles { tiles: 2, sweeps: 2, lanes },
                        };
                        let (after, loss) =
                            probe.sgd(&slab, &map, layout.ratings(), &table, &rates, run, 6 * models).unwrap();
                        slab = after;
                        gpu_sse += loss.iter().map(|&x| x as f64).sum::<f64>();
                    }
                }
                for (k, (a, b)) in slab.iter().zip(&cpu).enumerate() {
                    assert!(close(*a, *b), "rank {rank} × {models}, lanes {lanes}: float {k}: {a} vs {b}");
                }
                assert!((gpu_sse - sse).abs() <= 1e-4 * sse, "lanes {lanes}: loss {gpu_sse} vs {sse}");
            }
        }
    }
}

#[test]
fn predict_sums_the_clamped_errors_from_the_slab_and_the_window() {
    let (rank, models, n_users) = (6usize, 2usize, 61u32);
    let sub = row_stride(rank);
    for probe in probes(Spec::new(rank as u32, models as u32), "predict") {
        let (slab, mut map) = sgd_setup(rank, models);
        // Rows 90.. are in the upload window instead of the slab.
        let window = noise(8 * sub * models, 4);
        for (k, row) in (90..98u32).enumerate() {
            map[row as usize] = entry::window(k as u32);
        }
        // 150 ratings (two and a half workgroups), some with unknown ids.
        let test: Vec<Rating> = (0..150u32)
            .map(|k| Rating {
                user: if k % 17 == 0 { UNKNOWN } else { (k * 3) % n_users },
                item: if k % 23 == 0 { UNKNOWN } else { (k * 7) % 37 },
                value: 1.0 + (k % 5) as f32,
            })
            .collect();
        let (mean, lo, hi) = (3.1f32, 1.0f32, 5.0f32);
        let params =
            PredictParams { first: 0, count: 150, sums_at: 0, n_users, mean, min_rating: lo, max_rating: hi, pad0: 0 };
        let groups = 150usize.div_ceil(WORKGROUP as usize);
        let sums = probe.predict(&slab, &map, &window, &test, params, groups * models).unwrap();
        let row = |g: u32, model: usize| -> &[f32] {
            let e = map[g as usize];
            let (buf, at) = if e & entry::IN_WINDOW != 0 {
                (&window, (e & !entry::IN_WINDOW) as usize)
            } else {
                (&slab, (e - 1) as usize)
            };
            &buf[at * sub * models + model * sub..][..sub]
        };
        for (w, chunk) in test.chunks(WORKGROUP as usize).enumerate() {
            for g in 0..models {
                let (mut sq, mut abs) = (0.0f64, 0.0f64);
                for r in chunk {
                    let mut pred = mean;
                    let p = (r.user != UNKNOWN).then(|| row(r.user, g));
                    let q = (r.item != UNKNOWN).then(|| row(n_users + r.item, g));
                    pred += p.map_or(0.0, |p| p[rank]) + q.map_or(0.0, |q| q[rank]);
                    if let (Some(p), Some(q)) = (p, q) {
                        pred += p[..rank].iter().zip(&q[..rank]).map(|(a, b)| a * b).sum::<f32>();
                    }
                    let e = r.value - pred.clamp(lo, hi);
                    sq += (e * e) as f64;
                    abs += e.abs() as f64;
                }
                let got = sums[w * models + g];
                assert!(
                    close(got[0], sq as f32) && close(got[1], abs as f32),
                    "workgroup {w} model {g}: {got:?} vs ({sq}, {abs})"
                );
            }
        }
    }
}
