//! The race: LIBMF (through the `libmf` crate, its C++ built from the
//! registry's sources) against rowstage's CPU backend and GPU backends, on
//! the same synthetic split, at the same rank and thread count, in one run.
//! Prints model updates per second (ratings × epochs / training seconds,
//! evaluation excluded), test RMSE and the ratio to LIBMF's updates/s.
//!
//! ```sh
//! cargo run --release --manifest-path race/Cargo.toml -- --ratings 1000000
//! cargo run --release --manifest-path race/Cargo.toml -- --ratings 10000000 --gpu-epochs 2
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
use rowstage::gpu::{BackendChoice, GpuContext};
use rowstage::model::{HyperParams, MetricsAcc};
use rowstage::stage::{Budget, PolicyKind};
use rowstage::train::{BackendSpec, RunControl, TrainSettings, open_backend, train};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 50_000)]
    users: usize,
    #[arg(long, default_value_t = 20_000)]
    items: usize,
    #[arg(long, default_value_t = 1_000_000)]
    ratings: usize,
    #[arg(long, default_value_t = 1.05)]
    zipf: f64,
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
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the results as JSON to FILE.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

struct Entry {
    name: String,
    epochs: usize,
    updates_per_sec: f64,
    seconds: f64,
    test_rmse: f64,
}

fn main() {
    let a = Args::parse();
    let spec = SyntheticSpec { users: a.users, items: a.items, ratings: a.ratings, zipf: a.zipf };
    let data = Dataset::split(&spec.name(), generate(&spec, a.seed), 0.1, a.seed);
    let n = data.train.len();
    println!(
        "race: {} — {} users, {} items, {} train / {} test ratings; rank {}, {} threads",
        data.name,
        data.users.len(),
        data.items.len(),
        n,
        data.test.len(),
        a.rank,
        a.threads
    );
    let mut entries = Vec::new();

    // LIBMF: its matrix is built before the clock starts, as rowstage's
    // dataset is.
    let mut m = libmf::Matrix::new();
    for r in &data.train {
        m.push(r.user as i32, r.item as i32, r.value);
    }
    let t = Instant::now();
    let model = libmf::Model::params()
        .factors(a.rank as i32)
        .threads(a.threads as i32)
        .iterations(a.epochs as i32)
        .quiet(true)
        .fit(&m)
        .expect("LIBMF trains");
    let seconds = t.elapsed().as_secs_f64();
    // Test ratings with a user or item unseen in training are left out for
    // LIBMF, which has no row for them.
    let mut acc = MetricsAcc::default();
    for r in data.test.iter().filter(|r| r.user != UNKNOWN && r.item != UNKNOWN) {
        acc.add(r.value - model.predict(r.user as i32, r.item as i32));
    }
    let test = acc.finish().rmse;
    entries.push(Entry {
        name: "LIBMF (libmf crate 0.4, SSE build)".to_string(),
        epochs: a.epochs,
        updates_per_sec: (n * a.epochs) as f64 / seconds,
        seconds,
        test_rmse: test,
    });
    report(entries.last().unwrap(), entries[0].updates_per_sec);

    let settings = |epochs| TrainSettings {
        hp: HyperParams { rank: a.rank, ..HyperParams::default() },
        grid: Vec::new(),
        epochs,
        batch: 8192,
        seed: a.seed,
        deterministic: false,
        co_partition: None,
    };
    let mut contenders = vec![(BackendChoice::Cpu, a.epochs)];
    for g in a.gpu.split(',').filter(|g| !g.trim().is_empty()) {
        let b = match g.trim() {
            "vulkan" => BackendChoice::Vulkan,
            "gl" => BackendChoice::Gl,
            "metal" => BackendChoice::Metal,
            "dx12" => BackendChoice::Dx12,
            other => panic!("--gpu: unknown backend {other:?}"),
        };
        contenders.push((b, a.gpu_epochs));
    }
    for (backend, epochs) in contenders {
        if backend != BackendChoice::Cpu
            && let Err(e) = GpuContext::new(backend, None)
        {
            println!("{:<44} skipped: {e}", backend.name());
            continue;
        }
        let s = settings(epochs);
        let spec = BackendSpec {
            backend,
            adapter: None,
            // Every row resident: the race is about the SGD engine.
            device_memory: Some(Budget::Percent(100.0)),
            policy: PolicyKind::Static,
            lookahead: 32,
            threads: a.threads,
        };
        let opened = open_backend(&data, &s, &spec).expect("backend opens");
        let mut be = opened.backend;
        let name = format!("rowstage {} ({})", be.kind(), be.adapter());
        let out = train(&data, &s, be.as_mut(), RunControl::default(), &mut |_| {}).expect("rowstage trains");
        entries.push(Entry {
            name,
            epochs,
            updates_per_sec: out.ratings_per_sec,
            seconds: n as f64 * epochs as f64 / out.ratings_per_sec,
            test_rmse: out.final_metrics.rmse,
        });
        report(entries.last().unwrap(), entries[0].updates_per_sec);
    }
    if let Some(p) = a.json {
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({"name": e.name, "epochs": e.epochs, "updates_per_sec": e.updates_per_sec,
                    "train_seconds": e.seconds, "test_rmse": e.test_rmse,
                    "vs_libmf": e.updates_per_sec / entries[0].updates_per_sec})
            })
            .collect();
        let j = serde_json::json!({"dataset": data.name, "train": n, "test": data.test.len(), "rank": a.rank,
            "threads": a.threads, "results": rows});
        std::fs::write(p, serde_json::to_string_pretty(&j).unwrap()).expect("writing --json");
    }
}

fn report(e: &Entry, libmf: f64) {
    println!(
        "{:<52} {:>3} epochs {:>9.2} s {:>11.3e} updates/s {:>6.2}× LIBMF  test RMSE {:.4}",
        e.name,
        e.epochs,
        e.seconds,
        e.updates_per_sec,
        e.updates_per_sec / libmf,
        e.test_rmse
    );
}
