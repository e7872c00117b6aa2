//! Train on a MovieLens ratings file: `u.data` (ml-100k), `ratings.dat`
//! (ml-1m, ml-10m) or `ratings.csv` (ml-latest, ml-25m), detected from the
//! content. 10% of the ratings are held out; the model trains on the best GPU
//! adapter (the CPU backend when there is none) through a slab of 25% of the
//! tables with SCA staging, then prints one user's top items.
//!
//! ```sh
//! cargo run --release --example movielens -- path/to/ml-100k/u.data
//! ```

use std::path::PathBuf;

use rowstage::data::{Dataset, LoadOptions, load_ratings};
use rowstage::gpu::BackendChoice;
use rowstage::model::HyperParams;
use rowstage::stage::{Budget, PolicyKind, human_bytes};
use rowstage::train::{BackendSpec, RunControl, TrainSettings, open_backend_fitting, train};

fn main() {
    // SAFETY: first thing in main, before any other thread.
    unsafe { rowstage::gpu::context::quiet_gl_probe() };
    let Some(path) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: movielens PATH   (u.data, ratings.dat or ratings.csv of a MovieLens release)");
        std::process::exit(2);
    };
    if let Err(e) = run(path) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}

fn run(path: PathBuf) -> rowstage::Result<()> {
    let (set, report) = load_ratings(&path, LoadOptions::default())?;
    println!(
        "{}: {} ratings read as {:?}",
        path.display(),
        set.ratings.len(),
        report.format.expect("a loaded file has a format")
    );
    let data = Dataset::split(&path.display().to_string(), set, 0.1, 42);
    let mut settings = TrainSettings {
        // rowstage's defaults (tuned on MovieLens 100K).
        hp: HyperParams::DEFAULT,
        grid: Vec::new(),
        epochs: rowstage::model::DEFAULT_EPOCHS,
        batch: rowstage::train::DEFAULT_BATCH,
        seed: 42,
        deterministic: false,
        co_partition: None,
        order: rowstage::train::Order::Auto,
    };
    let spec = BackendSpec {
        backend: BackendChoice::Auto,
        adapter: None,
        device_memory: Some(Budget::Percent(25.0)),
        policy: PolicyKind::Sca,
        lookahead: 32,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        hogwild_width: Default::default(),
        ..BackendSpec::default()
    };
    // Small files (ml-100k) have small tables: the batch halves until a
    // quarter of them holds one.
    let opened = open_backend_fitting(&data, &mut settings, &spec, 16, None)?;
    if let Some(n) = &opened.notice {
        println!("{n}");
    }
    let mut backend = opened.backend;
    println!(
        "{} users × {} items, {} train / {} test ratings; batch {}; training on {} ({})",
        data.users.len(),
        data.items.len(),
        data.train.len(),
        data.test.len(),
        settings.batch,
        backend.adapter(),
        backend.kind()
    );
    if let Some(l) = &opened.layout {
        println!(
            "slab {} of {} tables: {} slots, {} of them resident",
            human_bytes(l.slab_bytes),
            human_bytes(settings.table_bytes(&data)),
            l.slots,
            l.areas.resident
        );
    }
    let out = train(&data, &settings, backend.as_mut(), RunControl::default(), &mut |e| {
        if e.epoch % 5 == 0 || e.epoch == 1 {
            println!(
                "epoch {:>2}: train RMSE {:.4}  test RMSE {:.4}  {:.3e} ratings/s  {} rows in",
                e.epoch,
                e.train_rmse,
                e.test_rmse,
                e.ratings_per_sec,
                e.ledger.rows_in()
            );
        }
    })?;
    println!("final test RMSE {:.4}, MAE {:.4}", out.final_metrics.rmse, out.final_metrics.mae);

    // The first user's five best items among those they did not rate.
    let m = &out.model;
    let user = 0u32;
    let rated: std::collections::HashSet<u32> = data.train.iter().filter(|r| r.user == user).map(|r| r.item).collect();
    let mut scored: Vec<(u32, f32)> =
        (0..m.n_items() as u32).filter(|i| !rated.contains(i)).map(|i| (i, m.predict(user, i))).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    println!("top 5 unrated items for user {} (rated {}):", data.users.name(user), rated.len());
    for (i, s) in scored.iter().take(5) {
        println!("  item {:<8} predicted {:.2}", data.items.name(*i), s);
    }
    Ok(())
}
