//! The staging policies on real and realistic traces (the simulator, no
//! kernels): SCA stages no more rows than `static`, `lru` or `lfu`, its
//! predicted rows in are within 5% of what it stages, `lookahead` is within
//! 2% of Belady, and nothing beats Belady; at budgets of 1%, 5%, 10% and 25%
//! of the tables, in the blocked order and the shuffled order at small and
//! large batches.

use std::path::PathBuf;

use rowstage::data::{Dataset, LoadOptions, SyntheticSpec, generate, load_ratings};
use rowstage::engine::Order;
use rowstage::engine::simulate::SimSetup;
use rowstage::stage::PolicyKind;

const ROW_BYTES: u64 = 144;

fn movielens_100k() -> Option<Dataset> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-100k/u.data");
    if !path.exists() {
        eprintln!(
            "skipped: MovieLens 100K not found at {} (the shared data folder beside the project)",
            path.display()
        );
        return None;
    }
    let (set, _) = load_ratings(&path, LoadOptions::default()).expect("MovieLens 100K loads");
    Some(Dataset::split("ml-100k", set, 0.1, 42))
}

/// Every check on `data` in `order` at `batch`.
fn check(data: &Dataset, order: Order, batch: usize) {
    let setup = SimSetup {
        train: &data.train,
        n_users: data.users.len(),
        n_items: data.items.len(),
        batch,
        seed: 42,
        epochs: 2,
        row_bytes: ROW_BYTES,
        lookahead: 32,
        co_partition: None,
        co_partition_visits: 1,
        order,
    };
    let tables = (data.users.len() + data.items.len()) as u64 * ROW_BYTES;
    let mut ran = 0;
    for percent in [1, 5, 10, 25] {
        let bytes = tables * percent / 100;
        let run = |kind: PolicyKind| setup.run(kind, bytes, None).expect("the simulation runs");
        let Some(sca) = run(PolicyKind::Sca) else { continue };
        let at = format!("{} {} batch {batch} at {percent}%", data.name, order.name());
        ran += 1;
        let belady = run(PolicyKind::Belady).unwrap().rows_in;
        for kind in [PolicyKind::Static, PolicyKind::Lru, PolicyKind::Lfu] {
            let other = run(kind).unwrap().rows_in;
            assert!(sca.rows_in <= other, "{at}: sca stages {} rows, {} {other}", sca.rows_in, kind.name());
            assert!(other >= belady, "{at}: {} beats belady", kind.name());
        }
        assert!(sca.rows_in >= belady, "{at}: sca beats belady");
        let lookahead = run(PolicyKind::Lookahead).unwrap().rows_in;
        assert!(
            lookahead >= belady && lookahead as f64 <= 1.02 * belady as f64,
            "{at}: lookahead {lookahead}, belady {belady}"
        );
        let predicted = sca.predicted_rows_in.expect("sca predicts its traffic");
        let err = (predicted - sca.rows_in as f64).abs() / sca.rows_in as f64;
        assert!(err <= 0.05, "{at}: sca stages {} rows, predicted {predicted:.0}", sca.rows_in);
    }
    assert!(ran > 0, "{} {}: no budget held a step", data.name, order.name());
}

#[test]
fn sca_never_loses_to_a_simpler_policy_on_movielens_100k() {
    let Some(data) = movielens_100k() else { return };
    check(&data, Order::Blocked { bins: 53, sweeps: 0, tile: 0 }, 2048);
    check(&data, Order::Shuffled, 64);
    check(&data, Order::Shuffled, 256);
}

#[test]
fn sca_never_loses_to_a_simpler_policy_on_synthetic_data() {
    // The default popularity, at a tenth of the default size, and the
    // earlier pure Zipf law.
    for (name, zipf) in [("default", None), ("zipf-1.05", Some(1.05))] {
        let spec = SyntheticSpec { ratings: 40_000, users: 1200, items: 700, zipf };
        let data = Dataset::split(name, generate(&spec, 7), 0.1, 7);
        check(&data, Order::Blocked { bins: 31, sweeps: 0, tile: 0 }, 2048);
        check(&data, Order::Shuffled, 128);
    }
}
