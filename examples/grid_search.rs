//! Grid search in one run (Factorbird): 3 learning rates × 3 regularisations
//! trained side by side on the training ratings less a validation split,
//! every row of the slab holding the nine settings' copies, so one staging
//! transfer and one read of a batch drive nine updates. The setting and
//! epoch with the lowest validation RMSE are kept and trained on all the
//! training ratings; the test ratings are only scored.
//!
//! ```sh
//! cargo run --release --example grid_search
//! ```

use rowstage::data::DataSource;
use rowstage::model::Setting;
use rowstage::report::grid_table;
use rowstage::session::{Run, RunOptions, Stage};
use rowstage::stage::Budget;
use rowstage::train::tune::Tuning;
use rowstage::train::{BackendSpec, RunRequest, RunSpec};

fn main() -> rowstage::Result<()> {
    // SAFETY: first thing in main, before any other thread.
    unsafe { rowstage::gpu::context::quiet_gl_probe() };
    // Halves and doubles of lr 0.05 and reg 0.05.
    let grid: Vec<Setting> =
        [0.025f32, 0.05, 0.1].iter().flat_map(|&lr| [0.025f32, 0.05, 0.1].map(|reg| Setting { lr, reg })).collect();
    let spec = RunSpec {
        grid,
        // The listed values are the candidates: nothing else is tried.
        tune: Tuning { lr: false, reg: false, ..Tuning::default() },
        backend: BackendSpec { device_memory: Some(Budget::Percent(25.0)), ..BackendSpec::default() },
        ..RunSpec::default()
    };
    let mut run = Run::from_request(RunRequest { source: DataSource::default(), spec }, RunOptions::default())?;
    for n in run.notes() {
        println!("{n}");
    }
    println!("on {} ({})", run.resolved().opened.backend.adapter(), run.resolved().opened.backend.kind());
    while let Some((stage, e)) = run.step()? {
        let held = if stage == Stage::Choosing { "validation" } else { "test" };
        println!(
            "{stage:?} epoch {:>2}: best {held} RMSE {:.4} (lr now {:.5}), {:.3e} ratings/s",
            e.epoch, e.test_rmse, e.lr, e.ratings_per_sec
        );
    }
    let done = run.finish()?;
    if let Some(c) = &done.report.choice {
        println!("ranked by validation RMSE at the epoch kept:");
        for line in grid_table(&c.candidates, "validation") {
            println!("{line}");
        }
        if let Some(kept) = &c.choice {
            println!("{}", kept.line());
        }
    }
    println!("final: test RMSE {:.4}", done.outcome.final_metrics.rmse);
    Ok(())
}
