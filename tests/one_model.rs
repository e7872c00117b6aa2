//! One run, one model on every device: the same `rowstage train` command,
//! with default flags, trains the same tables on the CPU at any thread
//! count, on every GPU adapter and at every budget (docs/ARCHITECTURE.md,
//! "The order"). Compared table by table, not by RMSE.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// Largest |difference| allowed between a GPU's tables and the CPU's: f32
/// rounding of the same updates in another grouping (fused multiply-adds,
/// the dot product's reduction order).
const DEVICE_TOL: f32 = 1e-4;

fn rowstage() -> Command {
    let mut c = Command::cargo_bin("rowstage").unwrap();
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir()).env("NO_COLOR", "1");
    c
}

/// Trains with `data` (flags), `extra` flags and `--save` into `dir`;
/// returns the model's path and the report.
fn train(dir: &Path, name: &str, data: &[&str], extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let path = dir.join(format!("{name}.safetensors"));
    let out = rowstage()
        .arg("train")
        .args(data)
        .args(extra)
        .args(["--json", "-", "--save"])
        .arg(&path)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    (path, serde_json::from_slice(&out).expect("the JSON report"))
}

fn diff(a: &Path, b: &Path) -> rowstage::model::TableDiff {
    let (x, _) = rowstage::model::load_model(a).unwrap();
    let (y, _) = rowstage::model::load_model(b).unwrap();
    rowstage::model::compare(&x, &y).unwrap()
}

/// Every backend and budget on `data`: the order in every report is the
/// CPU's, the CPU's tables are bit-identical at 1, 2 and 3 threads, and each
/// GPU's are within [`DEVICE_TOL`] of them, all resident (100%), at the
/// default budget and at a small one.
fn one_model_everywhere(data: &[&str], small_budget: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (reference, j) = train(dir.path(), "cpu1", data, &["--backend", "cpu", "--threads", "1"]);
    let order = j["config"]["order"].as_str().unwrap().to_string();
    assert!(order.starts_with("blocked:"), "{order}");
    assert_eq!(j["config"]["order_device_independent"], true);
    for threads in ["2", "3"] {
        let (m, j) = train(dir.path(), &format!("cpu{threads}"), data, &["--backend", "cpu", "--threads", threads]);
        assert_eq!(j["config"]["order"], order.as_str());
        let d = diff(&reference, &m);
        assert!(d.identical, "{threads} threads: {d:?}");
    }
    // The old flag is an alias here: the default order is already exact.
    let (m, _) = train(dir.path(), "cpu-det", data, &["--backend", "cpu", "--deterministic"]);
    assert!(diff(&reference, &m).identical, "--deterministic");
    // The noop backend resolves the same order (its tables are no model).
    let noop = rowstage()
        .arg("train")
        .args(data)
        .args(["--backend", "noop", "--json", "-"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let noop: serde_json::Value = serde_json::from_slice(&noop).unwrap();
    assert_eq!(noop["config"]["order"], order.as_str(), "noop");
    for backend in common::test_backends() {
        if common::gpu(backend, "one_model_everywhere").is_none() {
            continue;
        }
        let be = format!("{backend:?}").to_lowercase();
        for budget in ["100%", "auto", small_budget] {
            let (m, j) =
                train(dir.path(), &format!("{be}-{budget}"), data, &["--backend", &be, "--device-memory", budget]);
            assert_eq!(j["config"]["order"], order.as_str(), "{be} {budget}");
            let d = diff(&reference, &m);
            eprintln!("{be} at {budget}: largest |difference| from the CPU's tables {:.2e}", d.max_abs);
            assert!(d.max_abs <= DEVICE_TOL, "{be} at {budget}: {d:?}");
        }
    }
}

#[test]
fn the_default_run_trains_one_model_on_every_backend_thread_count_and_budget() {
    // Sizes that are multiples of nothing, so that bins, tiles and parts
    // come out uneven.
    one_model_everywhere(&["--synthetic", "613,389,20011", "--epochs", "2", "--rank", "7", "--seed", "3"], "6%");
}

#[test]
fn movielens_100k_trains_one_model_on_every_backend() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-100k/u.data");
    if !path.exists() {
        println!("movielens_100k_trains_one_model_on_every_backend: SKIPPED: {} is absent", path.display());
        return;
    }
    let path = path.to_str().unwrap();
    one_model_everywhere(&["--data", path, "--epochs", "2"], "5%");
}

/// `train --config report.json` trains the report's model again, on any
/// device flags given beside it; model and data flags are refused beside it.
#[test]
fn a_report_reproduces_its_run_with_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = ["--synthetic", "401,277,9013", "--epochs", "2", "--rank", "6", "--seed", "9", "--lr", "0.03"];
    let (first, report) = train(dir.path(), "first", &data, &["--backend", "cpu", "--threads", "2"]);
    let path = dir.path().join("report.json");
    std::fs::write(&path, serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(report["request"]["spec"]["epochs"], 2);
    let config = ["--config", path.to_str().unwrap()];
    // Every device flag the README lists beside it, `--hogwild-width` too
    // (a flattened group's id was once taken for a model flag).
    let device = ["--backend", "cpu", "--threads", "3", "--hogwild-width", "auto", "--policy", "lru"];
    let (again, j) = train(dir.path(), "again", &config, &device);
    assert_eq!(j["config"]["order"], report["config"]["order"]);
    assert_eq!(j["config"]["lr"], report["config"]["lr"]);
    assert!(diff(&first, &again).identical, "the same request on 3 threads");
    for backend in common::test_backends().into_iter().take(1) {
        if common::gpu(backend, "a_report_reproduces_its_run_with_config").is_none() {
            continue;
        }
        let be = format!("{backend:?}").to_lowercase();
        let (m, _) = train(dir.path(), "gpu", &config, &["--backend", &be, "--device-memory", "10%"]);
        let d = diff(&first, &m);
        assert!(d.max_abs <= DEVICE_TOL, "{be}: {d:?}");
    }
    for (flag, value) in [("--rank", "8"), ("--epochs", "5"), ("--synthetic", "10,10,50"), ("--order", "shuffled")] {
        let out = rowstage().args(["train", "--config", path.to_str().unwrap(), flag, value]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains("--config") && !stderr.contains("panicked"), "{stderr}");
    }
    std::fs::write(dir.path().join("bad.json"), "{\"spec\": 3}").unwrap();
    let out = rowstage().args(["train", "--config"]).arg(dir.path().join("bad.json")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.json") && !stderr.contains("panicked"), "{stderr}");
}
