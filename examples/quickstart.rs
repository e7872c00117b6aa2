//! Train on the built-in synthetic dataset through a slab of 10% of the
//! tables, on the best GPU adapter (or the CPU backend when there is none),
//! and print what crossed host↔device.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```

use rowstage::data::{Dataset, SyntheticSpec, generate};
use rowstage::gpu::BackendChoice;
use rowstage::model::HyperParams;
use rowstage::stage::{Budget, PolicyKind, human_bytes};
use rowstage::train::{BackendSpec, RunControl, TrainSettings, open_backend, train};

fn main() -> rowstage::Result<()> {
    // SAFETY: first thing in main, before any other thread.
    unsafe { rowstage::gpu::context::quiet_gl_probe() };
    let spec = SyntheticSpec::DEFAULT;
    let data = Dataset::split(&spec.name(), generate(&spec, 42), 0.1, 42);
    let settings = TrainSettings {
        hp: HyperParams::default(),
        epochs: 10,
        batch: 1024,
        seed: 42,
        deterministic: false,
        co_partition: None,
        order: rowstage::train::Order::Auto,
        grid: Vec::new(),
    };
    let opened = open_backend(
        &data,
        &settings,
        &BackendSpec {
            backend: BackendChoice::Auto,
            adapter: None,
            device_memory: Some(Budget::Percent(10.0)),
            policy: PolicyKind::Sca,
            lookahead: 32,
            threads: 2,
            hogwild_width: Default::default(),
            ..BackendSpec::default()
        },
    )?;
    if let Some(notice) = &opened.notice {
        println!("{notice}");
    }
    let mut backend = opened.backend;
    println!("training {} on {} ({})", data.name, backend.adapter(), backend.kind());
    if let Some(l) = &opened.layout {
        println!("slab: {} = {} slots, {} resident", human_bytes(l.slab_bytes), l.slots, l.areas.resident);
    }
    let out = train(&data, &settings, backend.as_mut(), RunControl::default(), &mut |e| {
        println!(
            "epoch {:>2}: test RMSE {:.4}, {} rows in, {} rows out, {} host→device",
            e.epoch,
            e.test_rmse,
            e.ledger.rows_in(),
            e.ledger.rows_out(),
            human_bytes(e.ledger.bytes_h2d())
        );
    })?;
    println!("final test RMSE {:.4} at {:.3e} ratings/s", out.final_metrics.rmse, out.ratings_per_sec);
    Ok(())
}
