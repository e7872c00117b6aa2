//! The memory-limit lesson: the same training with the accelerator's memory
//! (the slab) at 100%, 25%, 5% and 1% of the embedding tables, and what each
//! limit costs. It explains, from its own measurements, what moved, what it
//! cost, why SCA keeps the hot rows, and how close lookahead gets to the
//! offline optimum; then it draws the charts.
//!
//! ```sh
//! cargo run --release --example memory_limit_lesson            # charts in lesson-charts/
//! cargo run --release --example memory_limit_lesson -- DIR     # charts in DIR
//! ```
//!
//! It runs on the best GPU adapter wgpu finds (a software one such as
//! lavapipe is fine), and needs one: staging is what it is about.

use std::sync::atomic::AtomicBool;

use rowstage::bench::lesson::{BUDGETS, Lesson};
use rowstage::bench::{self, BenchPlan, BenchReport, Progress};
use rowstage::data::{Dataset, SyntheticSpec, generate};
use rowstage::gpu::{BackendChoice, GpuContext};
use rowstage::model::HyperParams;
use rowstage::report::DatasetInfo;
use rowstage::stage::{Budget, PolicyKind, access_counts, human_bytes};
use rowstage::train::{TrainSettings, table_bytes};
use rowstage::units::human_seconds;

const POLICIES: [PolicyKind; 4] = [PolicyKind::Static, PolicyKind::Lru, PolicyKind::Sca, PolicyKind::Lookahead];

/// Prints each budget's table as soon as its last policy has run.
struct Tables {
    per_budget: usize,
}

impl Progress for Tables {
    fn start(&mut self, index: usize, _total: usize, label: &str) {
        if index.is_multiple_of(self.per_budget) {
            let budget = label.split_whitespace().nth(1).unwrap_or("?");
            println!("\n— the slab at {budget} of the tables —");
            println!(
                "  {:<10} {:>7} {:>13} {:>11} {:>9} {:>12} {:>9} {:>9}",
                "policy", "workers", "rows in/epoch", "h2d/epoch", "hit rate", "ratings/s", "vs 100%", "test RMSE"
            );
        }
    }

    fn row(&mut self, report: &BenchReport) -> rowstage::Result<()> {
        let r = report.rows.last().expect("a row");
        println!(
            "  {:<10} {:>7.0} {:>13.0} {:>11} {:>8.1}% {:>12.3e} {:>9} {:>9.4}",
            r.policy,
            r.workers,
            r.rows_in_per_epoch,
            human_bytes(r.bytes_h2d_per_epoch as u64),
            100.0 * r.hit_rate.unwrap_or(0.0),
            r.median_ratings_per_sec,
            r.vs_resident.map_or("-".into(), |v| format!("{v:.2}×")),
            r.test_rmse.unwrap_or(f64::NAN)
        );
        if report.rows.len().is_multiple_of(self.per_budget) {
            let floor = r.belady_rows_in_per_epoch.unwrap_or(0.0);
            println!(
                "  {:<10} {:>7} {:>13.0}   (the offline optimum, simulated: no policy moves fewer)",
                "Belady", "", floor
            );
        }
        Ok(())
    }

    fn skipped(&mut self, s: &bench::Skipped) {
        println!("  {:<10} skipped: {}", s.policy, s.reason);
    }
}

fn main() -> rowstage::Result<()> {
    // SAFETY: first thing in main, before any other thread.
    unsafe { rowstage::gpu::context::quiet_gl_probe() };
    let charts = std::env::args().nth(1).unwrap_or_else(|| "lesson-charts".into());
    let ctx = GpuContext::new(BackendChoice::Auto, None)?;
    let adapter = ctx.describe();
    drop(ctx);

    let spec = SyntheticSpec::DEFAULT;
    let data = Dataset::split(&spec.name(), generate(&spec, 42), 0.1, 42);
    let hp = HyperParams::default();
    let rows = data.users.len() + data.items.len();
    let tables = table_bytes(&data, hp.rank);
    println!("THE MEMORY-LIMIT LESSON on {adapter}\n");
    println!(
        "The model: {} users and {} items, one row each of {} factors and a bias ({} B per row, padded to whole vec4s):",
        data.users.len(),
        data.items.len(),
        hp.rank,
        tables / rows as u64
    );
    println!(
        "{} of embedding tables, kept whole in host memory. The GPU gets one fixed buffer, the slab, standing in for an",
        human_bytes(tables)
    );
    println!("accelerator's small on-chip memory; a scheduler stages into it the rows each step of training needs.");
    println!(
        "Every one of the {} training ratings reads and updates one user row and one item row: {} row lookups per epoch.",
        data.train.len(),
        2 * data.train.len()
    );

    // Why keeping the hot rows pays: the popularity is skewed (Zipf).
    let mut counts = access_counts(&data.train, data.users.len(), data.items.len());
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let total: u64 = counts.iter().map(|&c| c as u64).sum();
    let share = |p: f64| {
        let n = ((rows as f64 * p / 100.0).ceil() as usize).max(1);
        100.0 * counts[..n].iter().map(|&c| c as u64).sum::<u64>() as f64 / total as f64
    };
    println!(
        "The ratings are skewed: the hottest 1% of rows get {:.1}% of the lookups, the hottest 5% get {:.1}%, the hottest 25% get {:.1}%.",
        share(1.0),
        share(5.0),
        share(25.0)
    );

    let plan = BenchPlan {
        backends: vec![(BackendChoice::Auto, None)],
        budgets: BUDGETS.iter().map(|&p| (format!("{p}%"), Budget::Percent(p))).collect(),
        policies: POLICIES.to_vec(),
        warmup: 1,
        epochs: 2,
        settings: TrainSettings {
            hp,
            grid: Vec::new(),
            epochs: 3,
            batch: 2048,
            seed: 42,
            deterministic: false,
            co_partition: None,
            order: rowstage::train::Order::Auto,
        },
        target_rmse: None,
        lookahead: 32,
        threads: 2,
        hogwild_width: Default::default(),
    };
    println!(
        "\nEach run: {} policies × {} budgets, 1 warm-up epoch then 2 timed epochs (medians); every budget trains the same blocked order, so the models can be compared.",
        POLICIES.len(),
        BUDGETS.len()
    );
    let info = DatasetInfo::of(&data, 0);
    let never = AtomicBool::new(false);
    let report = bench::run(&data, info, &plan, &never, &mut Tables { per_budget: POLICIES.len() })?;

    // What the figures show, each by its cause (the page shows the same).
    println!("\nWHAT IT SHOWS");
    let lesson = Lesson::of(report);
    for line in &lesson.explanation {
        println!("* {line}");
    }
    println!("\nWHAT THE BYTES WOULD COST ON NAMED HARDWARE (a projection: a lower bound of staging time per epoch)");
    print!("  {:<10} {:>6}", "policy", "budget");
    for p in lesson.profiles {
        print!(" {:>30}", p.name);
    }
    println!();
    for (r, seconds) in lesson.report.rows.iter().zip(&lesson.projected_staging_seconds) {
        print!("  {:<10} {:>6}", r.policy, r.budget);
        for s in seconds {
            print!(" {:>30}", human_seconds(*s));
        }
        println!();
    }
    let report = lesson.report;
    let files = bench::plot::plot(&report, std::path::Path::new(&charts))?;
    println!("\nCharts (SVG; open them in a browser):");
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}
