//! The GPU backend against the CPU reference, in deterministic mode, on sizes
//! that are not multiples of the workgroup size (64): once with a budget that
//! holds every row, once with one that forces staging every batch.

mod common;

use std::sync::Arc;

use rowstage::data::{Dataset, IdMap, Rating, SyntheticSpec, generate};
use rowstage::engine::rows::PartRows;
use rowstage::gpu::{GpuBackend, GpuSetup, HogwildWidth};
use rowstage::model::{HyperParams, Model};
use rowstage::train::{RunControl, TrainSettings, cpu::ReferenceCpu, table_bytes, train};

/// Largest |a − b| over both tables allowed after 3 epochs: the two sides sum
/// the same floats in the same order, but the GPU may fuse multiply-adds.
const TABLE_TOL: f32 = 2e-4;
/// Test RMSE difference allowed.
const RMSE_TOL: f64 = 1e-4;

fn dataset() -> Dataset {
    // 301 users, 157 items, 5003 ratings: none a multiple of 64.
    let spec = SyntheticSpec::parse("301,157,5003", Some(1.05)).unwrap();
    Dataset::split("tiny", generate(&spec, 11), 0.1, 11)
}

fn settings() -> TrainSettings {
    TrainSettings {
        hp: HyperParams { rank: 7, ..Default::default() },
        epochs: 3,
        batch: 333,
        seed: 5,
        deterministic: true,
        co_partition: None,
        // The order GPU backends train with, so that the CPU reference walks
        // the same one.
        order: rowstage::train::Order::Shuffled,
        grid: Vec::new(),
    }
}

fn reference(data: &Dataset, s: &TrainSettings) -> (Model, f64) {
    let mut cpu = ReferenceCpu { bias_reg: s.hp.bias_reg };
    let out = train(data, s, &mut cpu, RunControl::default(), &mut |_| {}).unwrap();
    (out.model, out.final_metrics.rmse)
}

/// The simulator replaying the run `s` on `data` (lookahead 4, as the GPU
/// backends of these tests use).
fn sim_setup<'a>(
    data: &'a Dataset,
    s: &TrainSettings,
    co_partition: Option<rowstage::stage::copartition::Side>,
) -> rowstage::engine::simulate::SimSetup<'a> {
    rowstage::engine::simulate::SimSetup {
        train: &data.train,
        n_users: data.users.len(),
        n_items: data.items.len(),
        batch: s.batch,
        seed: s.seed,
        epochs: s.epochs,
        row_bytes: s.row_bytes(),
        lookahead: 4,
        co_partition,
        co_partition_visits: s.co_partition.map_or(1, |c| c.visits),
        order: s.order,
    }
}

fn max_diff(a: &Model, b: &Model) -> f32 {
    a.users.iter().zip(&b.users).chain(a.items.iter().zip(&b.items)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn gpu_backend(ctx: rowstage::gpu::GpuContext, data: &Dataset, s: &TrainSettings, slab_bytes: u64) -> GpuBackend {
    gpu_backend_with(ctx, data, s, slab_bytes, rowstage::stage::PolicyKind::Static, None, HogwildWidth::Auto)
}

fn gpu_backend_with(
    ctx: rowstage::gpu::GpuContext,
    data: &Dataset,
    s: &TrainSettings,
    slab_bytes: u64,
    policy: rowstage::stage::PolicyKind,
    wave_tail: Option<bool>,
    hogwild_width: HogwildWidth,
) -> GpuBackend {
    gpu_backend_streaming(ctx, data, s, slab_bytes, policy, wave_tail, hogwild_width, None)
}

#[allow(clippy::too_many_arguments)]
fn gpu_backend_streaming(
    ctx: rowstage::gpu::GpuContext,
    data: &Dataset,
    s: &TrainSettings,
    slab_bytes: u64,
    policy: rowstage::stage::PolicyKind,
    wave_tail: Option<bool>,
    hogwild_width: HogwildWidth,
    data_window: Option<u64>,
) -> GpuBackend {
    let layout = Arc::new(s.layout(data, 2).unwrap());
    GpuBackend::new(
        ctx,
        &GpuSetup {
            rank: s.hp.rank,
            copies: s.copies(),
            bias_reg: s.hp.bias_reg,
            deterministic: s.deterministic,
            slab_bytes,
            policy,
            lookahead: 4,
            mean: data.mean(),
            range: data.range(),
            layout,
            wave_tail,
            hogwild_width,
            threads: 2,
            data_window,
            blocked_lanes: None,
        },
    )
    .unwrap()
}

/// The most distinct rows of any part of `s`'s layout: the smallest slab.
fn min_slots(data: &Dataset, s: &TrainSettings) -> u32 {
    PartRows::new(&s.layout(data, 2).unwrap(), 2, false).max()
}

#[test]
fn deterministic_gpu_matches_cpu_reference_all_resident_and_staged() {
    let data = dataset();
    let s = settings();
    let (want, want_rmse) = reference(&data, &s);
    let all = table_bytes(&data, s.hp.rank) + 1024;
    for backend in common::test_backends() {
        // Budget 1: everything resident. Budget 2: the smallest that works,
        // so nearly every row is staged in and written back every batch.
        let Some(ctx) = common::gpu(backend, "deterministic_gpu_matches_cpu_reference") else {
            continue;
        };
        let probe = gpu_backend(ctx, &data, &s, all);
        let row_bytes = probe.layout().row_bytes;
        drop(probe);
        let budgets = [("all resident", all), ("staged every batch", min_slots(&data, &s) as u64 * row_bytes + 12)];
        // Each budget with the small waves as dispatches and in `sgd_tail`.
        for ((label, bytes), tail) in budgets.into_iter().flat_map(|b| [(b, false), (b, true)]) {
            let ctx = common::gpu(backend, label).unwrap();
            let static_ = rowstage::stage::PolicyKind::Static;
            let mut gpu = gpu_backend_with(ctx, &data, &s, bytes, static_, Some(tail), HogwildWidth::Auto);
            let layout = gpu.layout().clone();
            let out = train(&data, &s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
            let d = max_diff(&out.model, &want);
            eprintln!(
                "{backend:?} {label}, wave tail {tail}: slots {} resident {} window {}; max |Δ| = {d:.2e}; test RMSE gpu {:.6} cpu {:.6}; rows in {} out {}",
                layout.slots,
                layout.areas.resident,
                layout.upload_rows,
                out.final_metrics.rmse,
                want_rmse,
                out.epochs.iter().map(|e| e.ledger.rows_in()).sum::<u64>(),
                out.epochs.iter().map(|e| e.ledger.rows_out()).sum::<u64>(),
            );
            assert!(d < TABLE_TOL, "{backend:?} {label}, wave tail {tail}: tables differ by {d}");
            assert!((out.final_metrics.rmse - want_rmse).abs() < RMSE_TOL);
            // The GPU's own evaluation of the last epoch agrees with the host's.
            let last = out.epochs.last().unwrap();
            assert!(
                (last.test_rmse - out.final_metrics.rmse).abs() < 1e-5,
                "{} vs {}",
                last.test_rmse,
                out.final_metrics.rmse
            );
            if label == "staged every batch" {
                assert!(layout.areas.resident < layout.slots);
                assert!(out.epochs[1].ledger.rows_in() > 0, "a small budget must stage rows every epoch");
            } else {
                assert_eq!(
                    out.epochs[1].ledger.rows_in(),
                    0,
                    "everything resident: nothing to stage after the first load"
                );
            }
            // Ledger totals equal the bytes handed to wgpu.
            let wire = gpu.wire();
            let h2d: u64 = out.epochs.iter().map(|e| e.ledger.bytes_h2d()).sum();
            let d2h: u64 = out.epochs.iter().map(|e| e.ledger.bytes_d2h()).sum();
            assert_eq!((h2d, d2h), (wire.h2d, wire.d2h), "ledger vs wire");
        }
    }
}

/// Deterministic mode with waves both ways in one step: the large first
/// waves one dispatch each, then the tail of small waves (fewer ratings than
/// `sgd_tail`'s 256 invocations) in one workgroup. A batch of 2000 on Zipf
/// 0.6 data has both; the model must equal the CPU reference's, as with every
/// wave dispatched apart.
#[test]
fn deterministic_waves_dispatched_and_in_one_workgroup_match_the_reference() {
    // Milder skew than the other tests' 1.05, so that the first wave holds
    // over 256 ratings before the hot rows' tail begins.
    let spec = SyntheticSpec::parse("3001,1499,20011", Some(0.6)).unwrap();
    let data = Dataset::split("waves", generate(&spec, 4), 0.1, 4);
    let s = TrainSettings { epochs: 2, batch: 2000, ..settings() };
    let (want, want_rmse) = reference(&data, &s);
    // The first epoch's first part has waves on both sides of 256.
    let layout = s.layout(&data, 2).unwrap();
    let mut wave = vec![0u32; data.users.len() + data.items.len()];
    let mut sizes: Vec<u32> = Vec::new();
    for &r in layout.part(layout.epoch(0).parts[0]) {
        let rows = [r.user as usize, data.users.len() + r.item as usize];
        let w = rows.iter().map(|&x| wave[x]).max().unwrap() as usize;
        rows.iter().for_each(|&x| wave[x] = w as u32 + 1);
        sizes.resize(sizes.len().max(w + 1), 0);
        sizes[w] += 1;
    }
    assert!(sizes[0] >= 256 && sizes.iter().filter(|&&c| c < 256).count() >= 2, "wave sizes {sizes:?}");
    let all = table_bytes(&data, s.hp.rank) + 1024;
    for backend in common::test_backends() {
        for tail in [false, true] {
            let Some(ctx) = common::gpu(backend, "deterministic_waves_dispatched_and_in_one_workgroup") else {
                break;
            };
            let mut gpu = gpu_backend_with(
                ctx,
                &data,
                &s,
                all,
                rowstage::stage::PolicyKind::Static,
                Some(tail),
                HogwildWidth::Auto,
            );
            let out = train(&data, &s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
            let d = max_diff(&out.model, &want);
            eprintln!("{backend:?} wave tail {tail}: {} waves in the first batch; max |Δ| = {d:.2e}", sizes.len());
            assert!(d < TABLE_TOL, "{backend:?} wave tail {tail}: tables differ by {d}");
            assert!((out.final_metrics.rmse - want_rmse).abs() < RMSE_TOL);
        }
    }
}

/// `sgd` and `predict` are compiled for the run's rank: the bias lane of the
/// last vec4 at each of its four positions (ranks 4, 1, 6 here; 7 above), a
/// rank with no whole vec4 of factors (1), and rank 32, the default.
#[test]
fn every_rank_specialisation_matches_the_reference() {
    let data = dataset();
    for backend in common::test_backends() {
        for rank in [1, 4, 6, 32] {
            let s = TrainSettings { hp: HyperParams { rank, ..Default::default() }, epochs: 2, ..settings() };
            let (want, want_rmse) = reference(&data, &s);
            let Some(ctx) = common::gpu(backend, "every_rank_specialisation_matches_the_reference") else {
                break;
            };
            let mut gpu = gpu_backend(ctx, &data, &s, table_bytes(&data, rank) + 1024);
            let out = train(&data, &s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
            let d = max_diff(&out.model, &want);
            eprintln!("{backend:?} rank {rank}: max |Δ| = {d:.2e}");
            assert!(d < TABLE_TOL, "{backend:?} rank {rank}: tables differ by {d}");
            assert!((out.final_metrics.rmse - want_rmse).abs() < RMSE_TOL, "{backend:?} rank {rank}: test RMSE");
            let last = out.epochs.last().unwrap();
            assert!((last.test_rmse - out.final_metrics.rmse).abs() < 1e-5, "{backend:?} rank {rank}: predict");
        }
    }
}

/// Every policy at a 5% budget (or the smallest that holds a batch) and at
/// 100% gives the same model as the all-resident run in deterministic mode, and
/// its training traffic equals what the simulator predicts for the same
/// policy, budget and seed.
#[test]
fn every_policy_gives_the_same_model_and_matches_the_simulator() {
    use rowstage::stage::PolicyKind;
    let data = dataset();
    let s = TrainSettings { epochs: 2, ..settings() };
    let (want, want_rmse) = reference(&data, &s);
    let tables = table_bytes(&data, s.hp.rank);
    for backend in common::test_backends() {
        let Some(ctx) = common::gpu(backend, "every_policy_gives_the_same_model") else {
            continue;
        };
        drop(ctx);
        let row_bytes = (rowstage::model::row_stride(s.hp.rank) * 4) as u64;
        let sim = sim_setup(&data, &s, None);
        let small = (tables / 20).max(sim.needed_slots().unwrap() as u64 * row_bytes);
        for kind in PolicyKind::ALL {
            for bytes in [small, tables] {
                let ctx = common::gpu(backend, kind.name()).unwrap();
                let mut gpu = gpu_backend_with(ctx, &data, &s, bytes, kind, None, HogwildWidth::Auto);
                let out = train(&data, &s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
                let d = max_diff(&out.model, &want);
                let rows_in: u64 = out.epochs.iter().map(|e| e.ledger.rows_in()).sum();
                let rows_out: u64 = out.epochs.iter().map(|e| e.ledger.rows_out()).sum();
                let hits: u64 = out.epochs.iter().map(|e| e.ledger.hits()).sum();
                let simulated = sim.run(kind, bytes, None).unwrap().unwrap();
                eprintln!(
                    "{backend:?} {:<9} {bytes:>6} B: max |Δ| {d:.1e}, RMSE {:.6}; rows in {rows_in} (simulated {}), out {rows_out} ({}), hits {hits} ({})",
                    kind.name(),
                    out.final_metrics.rmse,
                    simulated.rows_in,
                    simulated.rows_out,
                    simulated.hits
                );
                assert!(d < TABLE_TOL, "{} at {bytes} B: tables differ by {d}", kind.name());
                assert!((out.final_metrics.rmse - want_rmse).abs() < 1e-6, "{}: RMSE differs", kind.name());
                assert_eq!(
                    (rows_in, rows_out, hits),
                    (simulated.rows_in, simulated.rows_out, simulated.hits),
                    "{} at {bytes} B: ledger vs simulator",
                    kind.name()
                );
            }
        }
    }
}

/// Deterministic mode on the GPU at a budget that stages rows every batch:
/// a run stopped mid-epoch, checkpointed and resumed on a fresh backend ends
/// with the model of the uninterrupted run. Hogwild on the same data reports
/// its conflicts (deterministic reports none) and reaches the same test RMSE
/// within 0.01.
#[test]
fn gpu_resume_and_hogwild_conflicts() {
    use rowstage::train::checkpoint::load_checkpoint;
    let data = dataset();
    let s = settings();
    let tables = table_bytes(&data, s.hp.rank);
    for backend in common::test_backends() {
        let Some(ctx) = common::gpu(backend, "gpu_resume_and_hogwild_conflicts") else {
            continue;
        };
        // Half the tables: more than a batch needs, far less than all rows.
        let bytes = tables / 2;
        let mut gpu = gpu_backend(ctx, &data, &s, bytes);
        let whole = train(&data, &s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
        assert!(whole.epochs.iter().all(|e| e.conflicts == 0), "deterministic waves never conflict");
        assert!(whole.epochs[1].ledger.rows_in() > 0, "the budget must stage rows");

        let dir = tempfile::tempdir().unwrap();
        let ctx = common::gpu(backend, "stopped run").unwrap();
        let mut stopping = common::StopAfter::new(gpu_backend(ctx, &data, &s, bytes), 2, 4 * s.batch);
        let control = RunControl { checkpoint: Some(dir.path()), ..Default::default() };
        let first = train(&data, &s, &mut stopping, control, &mut |_| {}).unwrap();
        assert!(!first.complete);
        let saved = load_checkpoint(dir.path()).unwrap();
        assert_eq!((saved.state.epoch, saved.state.position), (1, stopping.stopped_at.unwrap()));

        let ctx = common::gpu(backend, "resumed run").unwrap();
        let mut fresh = gpu_backend(ctx, &data, &s, bytes);
        let control = RunControl { resume: Some(saved), ..Default::default() };
        let resumed = train(&data, &s, &mut fresh, control, &mut |_| {}).unwrap();
        let d = max_diff(&resumed.model, &whole.model);
        eprintln!("{backend:?}: resumed vs uninterrupted max |Δ| = {d:.2e}");
        assert!(d <= 1e-6, "{backend:?}: resumed model differs by {d}");
        assert!((resumed.final_metrics.rmse - whole.final_metrics.rmse).abs() < 1e-6);
    }
}

/// Hogwild on the GPU reports its conflicts per epoch (deterministic mode
/// none) and reaches the deterministic test RMSE within 0.01, at the width
/// of each kind of adapter (the whole batch at once, and 64 at once, which
/// races less), on data whose tables are large next to a batch (as in real
/// use; on the tiny set above nearly every rating of a batch shares a row
/// with another).
#[test]
fn gpu_hogwild_reports_conflicts_and_matches_deterministic_accuracy() {
    let spec = SyntheticSpec::parse("3001,1499,30011", Some(1.05)).unwrap();
    let data = Dataset::split("hogwild", generate(&spec, 4), 0.1, 4);
    let det = TrainSettings { epochs: 5, batch: 250, ..settings() };
    let hog = TrainSettings { deterministic: false, ..det.clone() };
    let all = table_bytes(&data, det.hp.rank) + 1024;
    let runs = [(&det, HogwildWidth::Auto), (&hog, HogwildWidth::Step), (&hog, HogwildWidth::Ratings(64))];
    for backend in common::test_backends() {
        let mut seen = Vec::new();
        for (s, width) in runs {
            let Some(ctx) = common::gpu(backend, "gpu_hogwild_reports_conflicts") else {
                break;
            };
            let static_ = rowstage::stage::PolicyKind::Static;
            let mut gpu = gpu_backend_with(ctx, &data, s, all, static_, None, width);
            let out = train(&data, s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
            let conflicts: Vec<u64> = out.epochs.iter().map(|e| e.conflicts).collect();
            eprintln!(
                "{backend:?} deterministic={} width {width:?}: conflicts per epoch {conflicts:?} of {} ratings; test RMSE {:.5}",
                s.deterministic,
                data.train.len(),
                out.final_metrics.rmse
            );
            if s.deterministic {
                assert!(conflicts.iter().all(|&c| c == 0), "deterministic waves never conflict");
            } else {
                assert!(conflicts.iter().all(|&c| c > 0), "batches on skewed data share rows");
            }
            seen.push((conflicts.iter().sum::<u64>(), out.final_metrics.rmse));
        }
        if let [(_, d), (whole, h), (narrow, h64)] = seen[..] {
            assert!((h - d).abs() < 0.01, "{backend:?}: Hogwild {h} vs deterministic {d}");
            assert!((h64 - d).abs() < 0.01, "{backend:?}: Hogwild 64 at once {h64} vs deterministic {d}");
            assert!(narrow < whole, "64 at once race less than 250: {narrow} vs {whole} conflicts");
        }
    }
}

/// Ratings that share no row (user j rates item 7j mod n): however many
/// run at once, they cannot race.
fn disjoint() -> Dataset {
    let n = 1003u32;
    let names = |p: &str| IdMap::from_names((0..n).map(|j| format!("{p}{j}")).collect());
    let train: Vec<Rating> =
        (0..n).map(|j| Rating { user: j, item: (j * 7) % n, value: 1.0 + (j % 5) as f32 }).collect();
    let test = train.iter().step_by(10).copied().collect();
    Dataset { name: "disjoint".into(), users: names("u"), items: names("i"), train, test, unseen_ids: Vec::new() }
}

/// Hogwild one rating at a time runs each batch in order in one invocation:
/// no conflicts, and the sequential model of the CPU reference. At a width
/// of 50 (not a multiple of the workgroup size, nor a divisor of the batch
/// of 333) on ratings that share no row, every rating is applied exactly
/// once: again the sequential model.
#[test]
fn hogwild_one_at_a_time_and_any_width_without_shared_rows_is_sequential_sgd() {
    let s = TrainSettings { deterministic: false, ..settings() };
    for (data, width) in [(dataset(), 1), (disjoint(), 50)] {
        let (want, want_rmse) = reference(&data, &s);
        let all = table_bytes(&data, s.hp.rank) + 1024;
        for backend in common::test_backends() {
            let Some(ctx) = common::gpu(backend, "hogwild_one_at_a_time") else {
                continue;
            };
            let static_ = rowstage::stage::PolicyKind::Static;
            let mut gpu = gpu_backend_with(ctx, &data, &s, all, static_, None, HogwildWidth::Ratings(width));
            let out = train(&data, &s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
            let conflicts: u64 = out.epochs.iter().map(|e| e.conflicts).sum();
            let d = max_diff(&out.model, &want);
            let rmse = out.final_metrics.rmse;
            eprintln!(
                "{backend:?} {} width {width}: conflicts {conflicts}; max |Δ| = {d:.2e}; test RMSE {rmse:.6} cpu {want_rmse:.6}",
                data.name
            );
            assert_eq!(conflicts, 0, "{}: no rating races", data.name);
            assert!(d <= TABLE_TOL, "{backend:?} {}: max |Δ| {d} > {TABLE_TOL}", data.name);
            assert!((rmse - want_rmse).abs() <= RMSE_TOL);
        }
    }
}

/// Co-partitioning by users: each block's user rows are staged once per
/// visit and written back once, items go through the policy. In
/// deterministic mode the model equals the CPU reference trained in the same
/// (blocked) order, the ledger equals the simulator's, and with one visit the
/// user rows moved per epoch are exactly the users with ratings (with three,
/// at most three times as many, close to the blocks' estimate).
#[test]
fn co_partitioned_training_matches_the_reference_and_the_simulator() {
    use rowstage::stage::PolicyKind;
    use rowstage::stage::copartition::Side;
    let data = dataset();
    let tables = table_bytes(&data, 7);
    let bytes = (tables * 6 / 10) & !3;
    let all = [PolicyKind::Static, PolicyKind::Sca, PolicyKind::Lru, PolicyKind::Lookahead];
    for (visits, kinds) in [(1u32, &all[..]), (3, &[PolicyKind::Sca][..])] {
        let co = rowstage::train::co_partition_for(
            &data,
            7,
            1,
            333,
            Some(rowstage::stage::Budget::Bytes(bytes)),
            Some(Side::Users),
            visits,
        );
        let s = TrainSettings { epochs: 2, co_partition: co, ..settings() };
        let c = co.expect("the budget leaves room for a block area");
        let blocks = c.blocks(&data.train, data.users.len(), data.items.len());
        assert!(blocks.n_blocks > 1, "the test needs several blocks");
        let (want, want_rmse) = reference(&data, &s);
        let sim = rowstage::engine::simulate::SimSetup {
            co_partition_visits: visits,
            ..sim_setup(&data, &s, Some(Side::Users))
        };
        for backend in common::test_backends() {
            for &kind in kinds {
                let Some(ctx) = common::gpu(backend, "co_partitioned_training") else {
                    break;
                };
                let mut gpu = gpu_backend_with(ctx, &data, &s, bytes, kind, None, HogwildWidth::Auto);
                assert_eq!(gpu.layout().block_slots, c.block_rows);
                let out = train(&data, &s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
                let d = max_diff(&out.model, &want);
                let rows_in: u64 = out.epochs.iter().map(|e| e.ledger.rows_in()).sum();
                let user_in = out.epochs[1].ledger.user_rows_in;
                let simulated = sim.run(kind, bytes, None).unwrap().unwrap();
                eprintln!(
                    "{backend:?} {} co-partitioned, {visits} visit(s): {} blocks, max |Δ| {d:.1e}; rows in {rows_in} (simulated {}); user rows in, epoch 2: {user_in} (estimate {:.0})",
                    kind.name(),
                    blocks.n_blocks,
                    simulated.rows_in,
                    blocks.expected_rows_per_epoch()
                );
                assert!(d < TABLE_TOL, "{}: tables differ by {d}", kind.name());
                assert!((out.final_metrics.rmse - want_rmse).abs() < 1e-6);
                assert_eq!(rows_in, simulated.rows_in, "{}: ledger vs simulator", kind.name());
                if visits == 1 {
                    assert_eq!(user_in, blocks.active_rows(), "each user row is staged once per epoch");
                } else {
                    assert!(user_in > blocks.active_rows() && user_in <= 3 * blocks.active_rows());
                    let est = blocks.expected_rows_per_epoch();
                    assert!((user_in as f64 - est).abs() < 0.05 * est, "{user_in} vs estimate {est:.0}");
                }
            }
        }
    }
}

/// Grid search in one run: four (lr, reg) settings side by side give, setting
/// by setting and epoch by epoch, what four separate runs give. On the CPU
/// reference exactly; on the GPU at a budget that stages rows every batch,
/// within the tolerances above, with slots four rows wide.
#[test]
fn grid_search_in_one_run_equals_separate_runs() {
    use rowstage::model::Setting;
    let data = dataset();
    let grid: Vec<Setting> =
        [0.01f32, 0.03].iter().flat_map(|&lr| [0.02f32, 0.1].map(move |reg| Setting { lr, reg })).collect();
    let g = TrainSettings { grid: grid.clone(), ..settings() };
    let separate: Vec<_> = grid
        .iter()
        .map(|x| {
            let one = TrainSettings { hp: HyperParams { lr: x.lr, reg: x.reg, ..g.hp }, ..settings() };
            let mut cpu = ReferenceCpu { bias_reg: one.hp.bias_reg };
            train(&data, &one, &mut cpu, RunControl::default(), &mut |_| {}).unwrap()
        })
        .collect();
    let check = |label: &str, out: &rowstage::train::TrainOutcome, tol_rmse: f64, tol_table: f32| {
        assert_eq!(out.settings, grid);
        for (e, report) in out.epochs.iter().enumerate() {
            assert_eq!(report.grid.len(), grid.len(), "{label}: every setting reported");
            for (k, sep) in separate.iter().enumerate() {
                let (a, b) = (report.grid[k].test_rmse, sep.epochs[e].test_rmse);
                assert!((a - b).abs() <= tol_rmse, "{label} epoch {} setting {k}: {a} vs {b}", e + 1);
                let (a, b) = (report.grid[k].train_rmse, sep.epochs[e].train_rmse);
                assert!((a - b).abs() <= tol_rmse.max(1e-6), "{label} epoch {} setting {k} train: {a} vs {b}", e + 1);
            }
        }
        let want = (0..grid.len())
            .min_by(|&a, &b| separate[a].final_metrics.rmse.total_cmp(&separate[b].final_metrics.rmse))
            .unwrap();
        assert_eq!(out.best_setting, want, "{label}: the best setting");
        let d = max_diff(&out.model, &separate[want].model);
        eprintln!("{label}: best setting {want} ({:?}), max |Δ| against its separate run {d:.2e}", grid[want]);
        assert_eq!(out.model.copies, 1, "the kept model is the best setting's alone");
        assert!(d <= tol_table, "{label}: tables differ by {d}");
    };
    let mut cpu = ReferenceCpu { bias_reg: g.hp.bias_reg };
    let out = train(&data, &g, &mut cpu, RunControl::default(), &mut |_| {}).unwrap();
    check("CPU reference", &out, 0.0, 0.0);

    for backend in common::test_backends() {
        let Some(ctx) = common::gpu(backend, "grid_search_in_one_run") else {
            continue;
        };
        let bytes = (g.table_bytes(&data) / 10).max(min_slots(&data, &g) as u64 * g.row_bytes());
        let mut gpu =
            gpu_backend_with(ctx, &data, &g, bytes, rowstage::stage::PolicyKind::Sca, None, HogwildWidth::Auto);
        let layout = gpu.layout().clone();
        assert_eq!(layout.row_bytes, 4 * (rowstage::model::row_stride(7) * 4) as u64, "a slot holds 4 copies");
        let out = train(&data, &g, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
        assert!(out.epochs[1].ledger.rows_in() > 0, "the budget must stage rows");
        check(&format!("{backend:?}"), &out, RMSE_TOL, TABLE_TOL);
        let wire = gpu.wire();
        let h2d: u64 = out.epochs.iter().map(|e| e.ledger.bytes_h2d()).sum();
        let d2h: u64 = out.epochs.iter().map(|e| e.ledger.bytes_d2h()).sum();
        assert_eq!((h2d, d2h), (wire.h2d, wire.d2h), "ledger vs wire");
    }
}

/// Training and test ratings past what the device may hold at once (here
/// forced down to 5,000 bytes: 416 ratings, more than a part of 333) are
/// streamed a part at a time through the ratings window, each part's
/// ratings counted as data: the same model as the CPU reference, all
/// resident and staged, Hogwild one at a time and in deterministic waves.
#[test]
fn ratings_past_what_the_device_holds_are_streamed_a_part_at_a_time() {
    let data = dataset();
    let det = TrainSettings { epochs: 2, ..settings() };
    let one = TrainSettings { deterministic: false, ..det.clone() };
    let all = table_bytes(&data, det.hp.rank) + 1024;
    for backend in common::test_backends() {
        for (s, width) in [(&det, HogwildWidth::Auto), (&one, HogwildWidth::Ratings(1))] {
            let (want, want_rmse) = reference(&data, s);
            let Some(ctx) = common::gpu(backend, "streamed ratings") else { break };
            let row_bytes = (rowstage::model::row_stride(s.hp.rank) * 4) as u64;
            let staged = min_slots(&data, s) as u64 * row_bytes + 12;
            for bytes in [all, staged] {
                let ctx = ctx.clone();
                let static_ = rowstage::stage::PolicyKind::Static;
                let mut whole = gpu_backend_with(ctx.clone(), &data, s, bytes, static_, None, width);
                let kept = train(&data, s, &mut whole, RunControl::default(), &mut |_| {}).unwrap();
                let mut gpu = gpu_backend_streaming(ctx, &data, s, bytes, static_, None, width, Some(5000));
                let out = train(&data, s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
                let d = max_diff(&out.model, &want);
                let data_in = |o: &rowstage::train::TrainOutcome| -> u64 {
                    o.epochs.iter().map(|e| e.ledger.data_bytes_h2d).sum()
                };
                eprintln!(
                    "{backend:?} deterministic={} {bytes} B streamed: max |Δ| {d:.2e}; data h2d {} streamed, {} held",
                    s.deterministic,
                    data_in(&out),
                    data_in(&kept)
                );
                assert!(d < TABLE_TOL, "{backend:?}: tables differ by {d}");
                assert!((out.final_metrics.rmse - want_rmse).abs() < RMSE_TOL);
                let last = out.epochs.last().unwrap();
                assert!((last.test_rmse - out.final_metrics.rmse).abs() < 1e-5, "streamed test ratings");
                // Every epoch sends the training ratings again, part by part.
                assert!(data_in(&out) > data_in(&kept) + data.train.len() as u64 * 12, "streaming is counted");
                let wire = gpu.wire();
                let h2d: u64 = out.epochs.iter().map(|e| e.ledger.bytes_h2d()).sum();
                assert_eq!(h2d, wire.h2d, "ledger vs wire");
            }
        }
    }
}

/// The blocked order on the device: each round's parts walked in order by a
/// worker each (an invocation, or a workgroup of lanes sharing the rank),
/// nothing racing, gives the CPU's blocked-order model (the sequential walk
/// of the same order) within f32 tolerance: all resident (a dispatch per
/// round), and staged for every policy (a step per round, or per as many of
/// a round's parts as the slab holds the rows of), the ledger equal to the
/// simulator's, at several ranks and with a grid of models. In tiles
/// (`blocked:8:3:4`) all resident, the device derives every round itself
/// (`sgd_tiles`, `sgd_tiles_lanes`: no plan, a dispatch per tile shift).
#[test]
fn the_blocked_order_on_the_device_equals_the_cpu_blocked_order() {
    use rowstage::stage::PolicyKind;
    use rowstage::train::Order;
    let data = dataset();
    let plain = Order::Blocked { bins: 5, sweeps: 3, tile: 0 };
    let base = TrainSettings { epochs: 2, deterministic: false, order: plain, ..settings() };
    let grid = vec![rowstage::model::Setting { lr: 0.01, reg: 0.05 }, rowstage::model::Setting { lr: 0.03, reg: 0.02 }];
    let tiled = TrainSettings { order: Order::Blocked { bins: 8, sweeps: 3, tile: 4 }, ..base.clone() };
    let cases = [
        (base.clone(), "rank 7"),
        (TrainSettings { grid: grid.clone(), ..base.clone() }, "rank 7, 2 models"),
        (tiled.clone(), "rank 7, tiles"),
        (TrainSettings { grid, ..tiled }, "rank 7, 2 models, tiles"),
    ];
    for backend in common::test_backends() {
        for (s, label) in &cases {
            let tiles = label.ends_with("tiles");
            let (want, want_rmse) = reference(&data, s);
            let tables = s.table_bytes(&data);
            let sim = sim_setup(&data, s, None);
            for lanes in [false, true] {
                for (kind, bytes) in [(PolicyKind::Static, tables + 1024), (PolicyKind::Static, tables / 4)]
                    .into_iter()
                    .chain(PolicyKind::ALL.map(|k| (k, tables / 3)))
                {
                    if (lanes || tiles) && bytes != tables + 1024 && kind != PolicyKind::Lru {
                        continue;
                    }
                    let Some(ctx) = common::gpu(backend, "blocked order") else { return };
                    let layout = Arc::new(s.layout(&data, 2).unwrap());
                    let mut gpu = GpuBackend::new(
                        ctx,
                        &GpuSetup {
                            rank: s.hp.rank,
                            copies: s.copies(),
                            bias_reg: s.hp.bias_reg,
                            deterministic: false,
                            slab_bytes: bytes.next_multiple_of(16),
                            policy: kind,
                            lookahead: 4,
                            mean: data.mean(),
                            range: data.range(),
                            layout,
                            wave_tail: None,
                            hogwild_width: HogwildWidth::Auto,
                            threads: 2,
                            data_window: None,
                            blocked_lanes: Some(lanes),
                        },
                    )
                    .unwrap();
                    let out = train(&data, s, &mut gpu, RunControl::default(), &mut |_| {}).unwrap();
                    let d = max_diff(&out.model, &want);
                    let rows_in: u64 = out.epochs.iter().map(|e| e.ledger.rows_in()).sum();
                    let steps: u64 = out.epochs.iter().map(|e| e.ledger.steps).sum();
                    let conflicts: u64 = out.epochs.iter().map(|e| e.conflicts).sum();
                    let simulated = sim.run(kind, bytes.next_multiple_of(16), None).unwrap().unwrap();
                    eprintln!(
                        "{backend:?} {label} lanes {lanes} {} {bytes} B: max |Δ| {d:.1e}; rows in {rows_in} (simulated {}), {steps} steps",
                        kind.name(),
                        simulated.rows_in
                    );
                    assert_eq!(out.order, rowstage::train::resolve_order(&data, s).unwrap());
                    assert!(d < TABLE_TOL, "{label} {}: tables differ by {d}", kind.name());
                    assert!((out.final_metrics.rmse - want_rmse).abs() < RMSE_TOL);
                    assert_eq!(conflicts, 0, "the blocked order never races");
                    if bytes == tables + 1024 {
                        // All resident: a dispatch per round, or per tile
                        // shift (3 sweeps of 8 / 4 shifts).
                        let rounds = if tiles { 3 * 2 } else { 3 * 5 };
                        assert_eq!(out.epochs[1].dispatches, rounds, "{label}: dispatches of an epoch");
                    }
                    assert_eq!(rows_in, simulated.rows_in, "{}: ledger vs simulator", kind.name());
                }
            }
        }
    }
}

/// A tiled blocked order all resident (the device derives the rounds, the
/// loop makes no plan) stopped by the stop flag between epochs, and by a cut
/// inside an epoch (which then goes round by round), resumes from its
/// checkpoint to the uninterrupted run's model.
#[test]
fn a_tiled_epoch_stopped_and_resumed_ends_with_the_uninterrupted_model() {
    use rowstage::train::checkpoint::load_checkpoint;
    use std::sync::atomic::{AtomicBool, Ordering};
    let data = dataset();
    let order = rowstage::train::Order::Blocked { bins: 8, sweeps: 3, tile: 4 };
    let s = TrainSettings { epochs: 3, deterministic: false, order, ..settings() };
    let all = table_bytes(&data, s.hp.rank) + 1024;
    for backend in common::test_backends() {
        let Some(ctx) = common::gpu(backend, "tiled resume") else { continue };
        let whole =
            train(&data, &s, &mut gpu_backend(ctx, &data, &s, all), RunControl::default(), &mut |_| {}).unwrap();
        assert!(whole.epochs.iter().all(|e| e.dispatches <= 3 * 2 + 2), "{backend:?}: a dispatch per tile shift");
        for cut in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let flag = AtomicBool::new(false);
            let ctx = common::gpu(backend, "tiled stop").unwrap();
            let control = RunControl { checkpoint: Some(dir.path()), stop: Some(&flag), ..Default::default() };
            let first = if cut {
                let mut stopping = common::StopAfter::new(gpu_backend(ctx, &data, &s, all), 2, 700);
                train(&data, &s, &mut stopping, control, &mut |_| {}).unwrap()
            } else {
                let mut gpu = gpu_backend(ctx, &data, &s, all);
                train(&data, &s, &mut gpu, control, &mut |_| flag.store(true, Ordering::Relaxed)).unwrap()
            };
            assert!(!first.complete, "{backend:?} cut {cut}: stopped");
            let saved = load_checkpoint(dir.path()).unwrap();
            assert_eq!(saved.state.epoch, 1);
            assert_eq!(saved.state.position > 0, cut, "a cut stops inside the epoch, the flag before it");
            let ctx = common::gpu(backend, "tiled resumed").unwrap();
            let control = RunControl { resume: Some(saved), ..Default::default() };
            let resumed = train(&data, &s, &mut gpu_backend(ctx, &data, &s, all), control, &mut |_| {}).unwrap();
            let d = max_diff(&resumed.model, &whole.model);
            eprintln!("{backend:?} cut {cut}: resumed vs uninterrupted max |Δ| = {d:.2e}");
            assert!(d <= 1e-6, "{backend:?} cut {cut}: resumed model differs by {d}");
        }
    }
}

/// A GPU reports progress as its passes are submitted, not only when an
/// epoch ends: a watcher that cancels the run on the first count it sees
/// stops the first epoch part-way, and the count then equals the ratings
/// the stopped epoch trained.
#[test]
fn a_gpu_run_reports_progress_inside_an_epoch() {
    use rowstage::session::{Run, RunOptions};
    use rowstage::train::{BackendSpec, RunSpec};
    use std::sync::atomic::Ordering;
    for backend in common::test_backends() {
        let Some(ctx) = common::gpu(backend, "a_gpu_run_reports_progress_inside_an_epoch") else {
            continue;
        };
        drop(ctx);
        let spec = RunSpec {
            hp: HyperParams { rank: 7, ..Default::default() },
            epochs: 2,
            seed: 5,
            backend: BackendSpec {
                backend,
                // Staged: an epoch is hundreds of submitted steps.
                device_memory: Some(rowstage::stage::Budget::Percent(5.0)),
                ..BackendSpec::default()
            },
            ..RunSpec::default()
        };
        let source = rowstage::data::DataSource::default();
        let mut run = Run::new(dataset(), source, spec, RunOptions::default()).unwrap();
        let (counter, token) = (run.progress_counter(), run.cancel_token());
        let watcher = std::thread::spawn(move || {
            while counter.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            token.cancel();
        });
        assert!(run.step().unwrap().is_none(), "{backend:?}: the cancelled epoch ends part-way");
        watcher.join().unwrap();
        let seen = run.progress();
        assert_eq!(seen.epoch, 1);
        assert!(
            0 < seen.ratings && seen.ratings < seen.ratings_per_epoch,
            "{backend:?}: {} of {} ratings counted when the watcher stopped the run",
            seen.ratings,
            seen.ratings_per_epoch
        );
        let done = run.finish().unwrap();
        assert!(!done.outcome.complete);
    }
}
