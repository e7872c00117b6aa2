//! The CPU backend's blocked order (`--order blocked`): trained by several
//! threads, it gives exactly the model of the sequential walk of the same
//! order, reports no conflicts, stops at a prefix and resumes from it, and
//! refuses orders that would let two threads touch one row.

mod common;

use std::sync::atomic::AtomicBool;

use common::StopAfter;
use rowstage::data::{Dataset, SyntheticSpec, generate};
use rowstage::engine::{Backend, EpochInput, RunLayout};
use rowstage::model::{HyperParams, Model};
use rowstage::train::cpu::{HogwildCpu, ReferenceCpu};
use rowstage::train::{Order, RunControl, TrainSettings, train};

fn dataset() -> Dataset {
    // Skewed, and not a multiple of anything: 7 bins of uneven blocks.
    let spec = SyntheticSpec::parse("613,389,40009", Some(1.05)).unwrap();
    Dataset::split("blocked", generate(&spec, 5), 0.1, 5)
}

fn settings(order: Order) -> TrainSettings {
    TrainSettings {
        hp: HyperParams { rank: 8, ..Default::default() },
        epochs: 3,
        batch: 1000,
        seed: 11,
        deterministic: false,
        co_partition: None,
        order,
        grid: Vec::new(),
    }
}

const BLOCKED: Order = Order::Blocked { bins: 7, sweeps: 0, tile: 0 };

#[test]
fn threads_give_the_model_of_the_sequential_walk_and_no_conflicts() {
    let data = dataset();
    let s = settings(BLOCKED);
    let reference =
        train(&data, &s, &mut ReferenceCpu { bias_reg: s.hp.bias_reg }, RunControl::default(), &mut |_| {}).unwrap();
    assert_eq!(reference.order.name(), "blocked:7:8:1");
    for threads in [1, 2, 3, 5] {
        let mut cpu = HogwildCpu::new(s.hp.bias_reg, threads);
        let out = train(&data, &s, &mut cpu, RunControl::default(), &mut |_| {}).unwrap();
        assert_eq!(out.model, reference.model, "{threads} threads: the model differs from the sequential walk");
        assert!(out.epochs.iter().all(|e| e.conflicts == 0 && e.ratings == data.train.len()));
        // The same updates, their squared errors summed in another grouping.
        for (a, b) in out.epochs.iter().zip(&reference.epochs) {
            assert!(
                (a.train_rmse - b.train_rmse).abs() <= 1e-12 * b.train_rmse,
                "{threads} threads, epoch {}",
                a.epoch
            );
        }
    }
}

/// Ranks that are not multiples of 4 (padding in every row) and a grid of
/// models side by side in one row: still bit-equal to the sequential walk.
#[test]
fn any_rank_and_a_grid_give_the_bits_of_the_sequential_walk() {
    let data = dataset();
    let grid = vec![
        rowstage::model::Setting { lr: 0.01, reg: 0.05 },
        rowstage::model::Setting { lr: 0.02, reg: 0.02 },
        rowstage::model::Setting { lr: 0.005, reg: 0.1 },
    ];
    for (rank, grid) in [(1, Vec::new()), (7, grid.clone()), (33, Vec::new()), (16, grid)] {
        let s = TrainSettings { hp: HyperParams { rank, ..Default::default() }, epochs: 2, grid, ..settings(BLOCKED) };
        let reference =
            train(&data, &s, &mut ReferenceCpu { bias_reg: s.hp.bias_reg }, RunControl::default(), &mut |_| {})
                .unwrap();
        let out = train(&data, &s, &mut HogwildCpu::new(s.hp.bias_reg, 2), RunControl::default(), &mut |_| {}).unwrap();
        assert_eq!(out.model, reference.model, "rank {rank}, {} settings", s.grid.len().max(1));
    }
}

#[test]
fn auto_picks_the_blocked_order_of_the_data_and_it_costs_little_accuracy() {
    let data = dataset();
    let s = TrainSettings { epochs: 8, ..settings(Order::Auto) };
    let mut cpu = HogwildCpu::new(s.hp.bias_reg, 2);
    let blocked = train(&data, &s, &mut cpu, RunControl::default(), &mut |_| {}).unwrap();
    // The data's bins (√(36k / (4 × 8 sweeps)) = 33, in tiles of 8 at rank
    // 8, rounded down to 32), whatever the thread count.
    let bins = rowstage::engine::blocked::default_bins(data.train.len(), data.users.len(), data.items.len());
    assert_eq!(bins, 33);
    assert_eq!(blocked.order, Order::Blocked { bins: 32, sweeps: 8, tile: 8 });
    // Against the sequential shuffled order (no Hogwild: the same figure on
    // every run).
    let s = TrainSettings { order: Order::Shuffled, ..s };
    let shuffled =
        train(&data, &s, &mut ReferenceCpu { bias_reg: s.hp.bias_reg }, RunControl::default(), &mut |_| {}).unwrap();
    assert_eq!(shuffled.order, Order::Shuffled);
    let (b, sh) = (blocked.final_metrics.rmse, shuffled.final_metrics.rmse);
    // Stated margin: 1.5% of the sequential shuffled order's test RMSE. On
    // this Zipf-1.05 data (13% of the ratings on one item) the data's order
    // (32 bins) measured 0.4-1.7% above it over five seeds, and the CPU's
    // former default (4 bins) -0.3-1.2% (8 epochs, rank 8).
    assert!(b <= sh * 1.015, "blocked {b:.4} vs shuffled {sh:.4}");
}

/// The default order (tiled): every thread count walks it a tile chain per
/// unit and ends with the sequential walk's bits, as does an order of two
/// tiles a side and one of a single tile (trained a part per unit).
#[test]
fn tiled_orders_in_tile_chains_give_the_bits_of_the_sequential_walk() {
    let data = dataset();
    for order in [Order::Auto, Order::parse("blocked:6:3:3").unwrap(), Order::parse("blocked:4:2:4").unwrap()] {
        let s = settings(order);
        let reference =
            train(&data, &s, &mut ReferenceCpu { bias_reg: s.hp.bias_reg }, RunControl::default(), &mut |_| {})
                .unwrap();
        for threads in [1, 2, 3, 5] {
            let out =
                train(&data, &s, &mut HogwildCpu::new(s.hp.bias_reg, threads), RunControl::default(), &mut |_| {})
                    .unwrap();
            assert_eq!(out.order, reference.order);
            assert_eq!(out.model, reference.model, "{}: {threads} threads", reference.order.name());
            assert!(out.epochs.iter().all(|e| e.conflicts == 0 && e.ratings == data.train.len()));
        }
    }
}

/// A stop raised while tile chains run ends the pass where a shift ends,
/// so that what was trained is a prefix of the epoch's plan (where a
/// resume starts), whenever the stop comes.
#[test]
fn tile_chains_stop_where_a_shift_ends() {
    let data = dataset();
    let s = settings(Order::parse("blocked:12:8:3").unwrap());
    let layout = s.layout(&data, 2).unwrap();
    let order = layout.blocked_epoch(0).unwrap();
    let plan = layout.epoch(0);
    let shift_ends: Vec<usize> = (0..=order.sweeps as usize * order.shifts())
        .map(|k| plan.ratings_from(&layout, 0) - plan.ratings_from(&layout, layout.blocked_parts_before(&order, k)))
        .collect();
    let rates = [rowstage::model::Rate { lr: 0.01, reg: 0.05 }];
    let empty = rowstage::engine::EpochPlan::default();
    for delay_us in [0, 50, 200, 1000, 5000] {
        let mut model = Model::init(&data, &s.hp, 1);
        let (stop, progress) = (AtomicBool::new(false), std::sync::atomic::AtomicUsize::new(0));
        let input = EpochInput {
            epoch: 0,
            layout: &layout,
            plan: &empty,
            from: 0,
            following: None,
            rates: &rates,
            stop: &stop,
            progress: &progress,
        };
        let out = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_micros(delay_us));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            HogwildCpu::new(0.01, 3).train_epoch(&mut model, &input).unwrap()
        });
        assert!(shift_ends.contains(&out.done), "stopped after {delay_us} µs at {} ratings", out.done);
        // The progress counter the threads added to as units finished.
        assert_eq!(progress.load(std::sync::atomic::Ordering::Relaxed), out.done);
    }
}

#[test]
fn a_blocked_run_stopped_mid_epoch_resumes_to_the_uninterrupted_model() {
    let data = dataset();
    let s = settings(BLOCKED);
    let whole = train(&data, &s, &mut HogwildCpu::new(s.hp.bias_reg, 2), RunControl::default(), &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Stop in the second epoch at the part boundary after 12,345 ratings.
    let mut stopping = StopAfter::new(HogwildCpu::new(s.hp.bias_reg, 3), 2, 12_345);
    let control = RunControl { checkpoint: Some(dir.path()), ..Default::default() };
    let first = train(&data, &s, &mut stopping, control, &mut |_| {}).unwrap();
    assert!(!first.complete);
    let saved = rowstage::train::checkpoint::load_checkpoint(dir.path()).unwrap();
    let cut = stopping.stopped_at.unwrap();
    assert!(cut >= 12_345 && cut < data.train.len());
    assert_eq!((saved.state.epoch, saved.state.position), (1, cut));
    let control = RunControl { resume: Some(saved), ..Default::default() };
    let second = train(&data, &s, &mut HogwildCpu::new(s.hp.bias_reg, 2), control, &mut |_| {}).unwrap();
    assert!(second.complete);
    assert_eq!(second.model, whole.model, "the resumed model differs from the uninterrupted one");

    // A checkpoint of the blocked order does not resume a shuffled run.
    let other = settings(Order::Shuffled);
    let control = RunControl {
        resume: Some(rowstage::train::checkpoint::load_checkpoint(dir.path()).unwrap()),
        ..Default::default()
    };
    let e = train(&data, &other, &mut HogwildCpu::new(s.hp.bias_reg, 2), control, &mut |_| {}).err().unwrap();
    assert!(e.to_string().contains("`order`") && e.to_string().contains("blocked:7:8:1"), "{e}");
}

/// `data` in 7 × 7 blocks.
fn blocked_layout(data: &Dataset) -> RunLayout {
    TrainSettings { order: BLOCKED, ..settings(BLOCKED) }.layout(data, 2).unwrap()
}

#[test]
fn a_raised_stop_flag_ends_the_pass_before_any_part() {
    let data = dataset();
    let layout = blocked_layout(&data);
    let plan = layout.epoch(0);
    let mut model = Model::init(&data, &HyperParams { rank: 8, ..Default::default() }, 1);
    let before = model.clone();
    let rates = [rowstage::model::Rate { lr: 0.01, reg: 0.05 }];
    let stop = AtomicBool::new(true);
    let input = EpochInput {
        epoch: 0,
        layout: &layout,
        plan: &plan,
        from: 0,
        following: None,
        rates: &rates,
        stop: &stop,
        progress: &Default::default(),
    };
    let out = HogwildCpu::new(0.01, 2).train_epoch(&mut model, &input).unwrap();
    assert_eq!(out.done, 0);
    assert_eq!(model, before);
}

/// Row exclusivity between threads rests on every rating of a blocked part
/// lying in the part's bins: checked on the real layout of the tests.
#[test]
fn every_blocked_part_lies_in_its_bins_and_no_round_shares_one() {
    let data = dataset();
    let layout = blocked_layout(&data);
    let grid =
        rowstage::engine::blocked::BlockedRatings::new(&data.train, data.users.len(), data.items.len(), 7, None, 11, 1);
    for (id, part) in layout.parts().iter().enumerate() {
        let pair = layout.bins_of_part(id as u32).unwrap();
        assert!(layout.ratings()[part.range()].iter().all(|r| grid.bins_of(r) == pair), "part {id}");
    }
    let plan = layout.epoch(1);
    for (range, _) in plan.groups_from(0) {
        let pairs: Vec<_> = plan.parts[range].iter().map(|&p| layout.bins_of_part(p).unwrap()).collect();
        for (k, a) in pairs.iter().enumerate() {
            assert!(pairs[..k].iter().all(|b| a.0 != b.0 && a.1 != b.1), "a round shares a bin: {pairs:?}");
        }
    }
}
