//! Grid search in one run (Factorbird): 3 learning rates × 3 regularisations
//! trained side by side, every row of the slab holding the nine settings'
//! copies, so one staging transfer and one read of a batch drive nine updates.
//! Prints the settings ranked by test RMSE.
//!
//! ```sh
//! cargo run --release --example grid_search
//! ```

use rowstage::data::{Dataset, SyntheticSpec, generate};
use rowstage::gpu::BackendChoice;
use rowstage::model::{HyperParams, Setting};
use rowstage::report::{grid_results, grid_table};
use rowstage::stage::{Budget, PolicyKind, human_bytes};
use rowstage::train::{BackendSpec, RunControl, TrainSettings, open_backend, train};

fn main() -> rowstage::Result<()> {
    // SAFETY: first thing in main, before any other thread.
    unsafe { rowstage::gpu::context::quiet_gl_probe() };
    let spec = SyntheticSpec::DEFAULT;
    let data = Dataset::split(&spec.name(), generate(&spec, 42), 0.1, 42);
    // Halves and doubles of the defaults (lr 0.05, reg 0.08).
    let grid: Vec<Setting> =
        [0.025f32, 0.05, 0.1].iter().flat_map(|&lr| [0.04f32, 0.08, 0.16].map(|reg| Setting { lr, reg })).collect();
    let settings = TrainSettings {
        hp: HyperParams::default(),
        grid,
        epochs: rowstage::model::DEFAULT_EPOCHS,
        batch: rowstage::train::DEFAULT_BATCH,
        seed: 42,
        deterministic: false,
        co_partition: None,
        order: rowstage::train::Order::Auto,
    };
    let opened = open_backend(
        &data,
        &settings,
        &BackendSpec {
            backend: BackendChoice::Auto,
            adapter: None,
            device_memory: Some(Budget::Percent(25.0)),
            policy: PolicyKind::Sca,
            lookahead: 32,
            threads: 2,
            hogwild_width: Default::default(),
        },
    )?;
    if let Some(n) = &opened.notice {
        println!("{n}");
    }
    let mut backend = opened.backend;
    println!(
        "{} settings side by side on {} ({}); a row of all copies is {}, the tables {}",
        settings.copies(),
        backend.adapter(),
        backend.kind(),
        human_bytes(settings.row_bytes()),
        human_bytes(settings.table_bytes(&data))
    );
    let out = train(&data, &settings, backend.as_mut(), RunControl::default(), &mut |e| {
        println!(
            "epoch {:>2}: best test RMSE {:.4} (lr now {:.5}), {:.3e} ratings/s × {} settings",
            e.epoch,
            e.test_rmse,
            e.lr,
            e.ratings_per_sec,
            e.grid.len()
        );
    })?;
    println!("ranked by test RMSE after the last epoch:");
    for line in grid_table(&grid_results(&out.settings, &out.epochs, None)) {
        println!("{line}");
    }
    let best = out.settings[out.best_setting];
    println!("kept: lr {} reg {}, test RMSE {:.4}", best.lr, best.reg, out.final_metrics.rmse);
    Ok(())
}
