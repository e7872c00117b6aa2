//! The race: LIBMF (through the `libmf` crate, its C++ built from the
//! registry's sources) against rowstage's CPU backend and GPU backends, on
//! the same synthetic split, at the same rank and thread count, in one run.
//! Prints model updates per second (ratings × epochs / training seconds:
//! LIBMF's `fit`, gridding included; rowstage's epochs, making the epoch
//! orders included; evaluation excluded for both), test RMSE and the ratio
//! to LIBMF's updates/s. `--repeat N` interleaves N runs of every contender
//! and prints medians, the ratio taken within each repetition: this
//! machine's speed drifts too much for one run to say.
//!
//! ```sh
//! cargo run --release --manifest-path race/Cargo.toml -- --ratings 1000000 --repeat 3
//! cargo run --release --manifest-path race/Cargo.toml -- --ratings 10000000 --repeat 5 --gpu "" --cpu-orders blocked
//! ```
//!
//! The two libraries train different models with different optimisers, so the
//! RMSE column is what each reaches in the same number of epochs with its own
//! recommended settings: LIBMF's defaults (learning rate 0.1 with its
//! adaptive per-row step, no biases), rowstage's defaults (biased MF, η₀ 0.01
//! with decay). Both see exactly the same training and test ratings.

use std::time::Instant;

use clap::Parser;
use rowstage::data::UNKNOWN;
use rowstage::data::{Dataset, SyntheticSpec, generate};
use rowstage::gpu::{BackendChoice, GpuContext, HogwildWidth};
use rowstage::model::{HyperParams, MetricsAcc};
use rowstage::stage::{Budget, PolicyKind};
use rowstage::train::{BackendSpec, Order, RunControl, TrainSettings, open_backend, train};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 50_000)]
    users: usize,
    #[arg(long, default_value_t = 20_000)]
    items: usize,
    #[arg(long, default_value_t = 1_000_000)]
    ratings: usize,
    /// A pure Zipf law of this exponent; without it the MovieLens-shaped
    /// default law.
    #[arg(long)]
    zipf: Option<f64>,
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// Epochs of LIBMF and the CPU backend.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Epochs of the GPU backends (software adapters are slow; their RMSE is
    /// then not comparable with the CPU columns, their updates/s is).
    #[arg(long, default_value_t = 3)]
    gpu_epochs: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// GPU backends to race (comma-separated; empty for none).
    #[arg(long, default_value = "vulkan,gl")]
    gpu: String,
    /// How the GPU backends apply a batch (comma-separated): hogwild (at
    /// rowstage's default width: 64 ratings at once on a hardware GPU),
    /// hogwild:W (W at once) or hogwild:step (the whole batch at once: on a
    /// hardware GPU the updates to a hot row race and are lost), and
    /// deterministic (conflict-free waves: the sequential model, slower).
    #[arg(long, default_value = "hogwild")]
    gpu_modes: String,
    /// Epoch orders of the CPU backend to race (comma-separated: blocked,
    /// its default, blocked:BINS, and shuffled, the order every backend
    /// shares).
    #[arg(long, default_value = "blocked,shuffled")]
    cpu_orders: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run every contender this many times, interleaved; the summary shows
    /// medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Write the results as JSON to FILE.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// One contender's runs: updates/s, its ratio to LIBMF's run of the same
/// repetition, training seconds and test RMSE of each.
struct Entry {
    name: String,
    epochs: usize,
    runs: Vec<(f64, f64, f64, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

impl Entry {
    fn col(&self, k: usize) -> Vec<f64> {
        self.runs.iter().map(|r| [r.0, r.1, r.2, r.3][k]).collect()
    }
}

fn main() {
    let a = Args::parse();
    let spec = SyntheticSpec { users: a.users, items: a.items, ratings: a.ratings, zipf: a.zipf };
    let data = Dataset::split(&spec.name(), generate(&spec, a.seed), 0.1, a.seed);
    let n = data.train.len();
    println!(
        "race: {} — {} users, {} items, {} train / {} test ratings; rank {}, {} threads, {} repetition(s)",
        data.name,
        data.users.len(),
        data.items.len(),
        n,
        data.test.len(),
        a.rank,
        a.threads,
        a.repeat
    );
    // LIBMF: its matrix is built before the clock starts, as rowstage's
    // dataset is.
    let mut m = libmf::Matrix::new();
    for r in &data.train {
        m.push(r.user as i32, r.item as i32, r.value);
    }
    let settings = |epochs, order, deterministic| TrainSettings {
        hp: HyperParams { rank: a.rank, ..HyperParams::default() },
        grid: Vec::new(),
        epochs,
        batch: 8192,
        seed: a.seed,
        deterministic,
        co_partition: None,
        order,
    };
    let mut contenders = Vec::new();
    for o in a.cpu_orders.split(',').filter(|o| !o.trim().is_empty()) {
        let order = Order::parse(o).unwrap_or_else(|e| panic!("--cpu-orders: {e}"));
        contenders.push((BackendChoice::Cpu, a.epochs, order, false, HogwildWidth::Auto));
    }
    let mut gpu_modes = Vec::new();
    for m in a.gpu_modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let unknown =
            || -> ! { panic!("--gpu-modes: unknown mode {m:?} (hogwild, hogwild:W, hogwild:step, deterministic)") };
        gpu_modes.push(match m.split_once(':') {
            _ if m == "deterministic" => (true, HogwildWidth::Auto),
            _ if m == "hogwild" => (false, HogwildWidth::Auto),
            Some(("hogwild", w)) => (false, HogwildWidth::parse(w).unwrap_or_else(|_| unknown())),
            _ => unknown(),
        });
    }
    for g in a.gpu.split(',').filter(|g| !g.trim().is_empty()) {
        let b = <BackendChoice as rowstage::Named>::from_name(g).unwrap_or_else(|| {
            panic!("--gpu: unknown backend {g:?}: one of {}", <BackendChoice as rowstage::Named>::names())
        });
        if let Err(e) = GpuContext::new(b, None) {
            println!("{:<80} skipped: {e}", b.name());
            continue;
        }
        for &(deterministic, width) in &gpu_modes {
            contenders.push((b, a.gpu_epochs, Order::Auto, deterministic, width));
        }
    }
    let mut entries: Vec<Entry> = std::iter::once(Entry {
        name: "LIBMF (libmf crate 0.4, SSE build)".to_string(),
        epochs: a.epochs,
        runs: Vec::new(),
    })
    .chain(contenders.iter().map(|&(_, epochs, ..)| Entry { name: String::new(), epochs, runs: Vec::new() }))
    .collect();
    // Repetitions interleave the contenders, so that a slow spell of the
    // machine hits all of them; ratios are taken within a repetition.
    for _ in 0..a.repeat {
        let t = Instant::now();
        let model = libmf::Model::params()
            .factors(a.rank as i32)
            .threads(a.threads as i32)
            .iterations(a.epochs as i32)
            .quiet(true)
            .fit(&m)
            .expect("LIBMF trains");
        let seconds = t.elapsed().as_secs_f64();
        // Test ratings with a user or item unseen in training are left out
        // for LIBMF, which has no row for them.
        let mut acc = MetricsAcc::default();
        for r in data.test.iter().filter(|r| r.user != UNKNOWN && r.item != UNKNOWN) {
            acc.add(r.value - model.predict(r.user as i32, r.item as i32));
        }
        let libmf = (n * a.epochs) as f64 / seconds;
        entries[0].runs.push((libmf, 1.0, seconds, acc.finish().rmse));
        report(&entries[0]);
        for (k, &(backend, epochs, order, deterministic, hogwild_width)) in contenders.iter().enumerate() {
            let s = settings(epochs, order, deterministic);
            let spec = BackendSpec {
                backend,
                adapter: None,
                // Every row resident: the race is about the SGD engine.
                device_memory: Some(Budget::Percent(100.0)),
                policy: PolicyKind::Static,
                lookahead: 32,
                threads: a.threads,
                hogwild_width,
                ..BackendSpec::default()
            };
            let opened = open_backend(&data, &s, &spec).expect("backend opens");
            let mut be = opened.backend;
            let out = train(&data, &s, be.as_mut(), RunControl::default(), &mut |_| {}).expect("rowstage trains");
            let e = &mut entries[k + 1];
            let waves = match &opened.adapter {
                _ if deterministic => ", deterministic waves".to_string(),
                Some(adapter) => match hogwild_width.resolve(adapter) {
                    Some(w) => format!(", Hogwild {w} at once"),
                    None => ", Hogwild batch at once".to_string(),
                },
                None => String::new(),
            };
            e.name = format!("rowstage {} ({}, {} order{waves})", be.kind(), be.adapter(), out.order.name());
            let seconds = n as f64 * epochs as f64 / out.ratings_per_sec;
            e.runs.push((out.ratings_per_sec, out.ratings_per_sec / libmf, seconds, out.final_metrics.rmse));
            report(e);
        }
    }
    if a.repeat > 1 {
        println!("medians over {} repetitions (ratios taken within each repetition):", a.repeat);
        for e in &entries {
            print_row(e, (median(e.col(0)), median(e.col(1)), median(e.col(2)), median(e.col(3))));
        }
    }
    if let Some(p) = a.json {
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({"name": e.name, "epochs": e.epochs,
                    "updates_per_sec": e.col(0), "vs_libmf": e.col(1), "train_seconds": e.col(2),
                    "test_rmse": e.col(3), "median_updates_per_sec": median(e.col(0)),
                    "median_vs_libmf": median(e.col(1))})
            })
            .collect();
        let j = serde_json::json!({"dataset": data.name, "train": n, "test": data.test.len(), "rank": a.rank,
            "threads": a.threads, "repeat": a.repeat, "results": rows});
        std::fs::write(p, serde_json::to_string_pretty(&j).unwrap()).expect("writing --json");
    }
}

/// Prints `e`'s latest run.
fn report(e: &Entry) {
    print_row(e, *e.runs.last().expect("a run"));
}

/// Prints one line of `e`: `run` is (updates/s, ratio to LIBMF, training
/// seconds, test RMSE), one run's or the medians.
fn print_row(e: &Entry, (ups, ratio, seconds, rmse): (f64, f64, f64, f64)) {
    println!(
        "{:<80} {:>3} epochs {:>9.2} s {:>11.3e} updates/s {:>6.2}× LIBMF  test RMSE {:.4}",
        e.name, e.epochs, seconds, ups, ratio, rmse
    );
}
