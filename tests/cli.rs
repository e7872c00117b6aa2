//! The command line end to end: formats, reports, models, and every kind of
//! bad input, which must give a clear error naming what and where, exit code
//! 2, no panic, and no output file written as if complete.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn rowstage() -> Command {
    let mut c = Command::cargo_bin("rowstage").unwrap();
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir()).env("NO_COLOR", "1");
    c
}

/// A small ratings CSV with a header, 40 users × 30 items.
fn ratings_csv(dir: &Path) -> PathBuf {
    let mut s = String::from("userId,movieId,rating,timestamp\n");
    for k in 0..900u32 {
        let u = (k * 7) % 40;
        let i = (k * 13 + k / 40) % 30;
        let r = 1 + (u + 2 * i) % 5;
        s += &format!("{u},{i},{r}.0,{}\n", 1000 + k);
    }
    let p = dir.join("ratings.csv");
    std::fs::write(&p, s).unwrap();
    p
}

/// The JSON a successful command writes to stdout.
fn success_json(c: &mut Command) -> serde_json::Value {
    let out = c.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).expect("stdout is the JSON asked for")
}

fn quick(c: &mut Command) -> &mut Command {
    c.args(["--rank", "4", "--epochs", "2", "--batch", "64", "--backend", "cpu"])
}

#[test]
fn trains_on_a_csv_and_reports_json_with_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = ratings_csv(dir.path());
    let out = quick(rowstage().args(["train", "--data"]).arg(&data).args(["--test-fraction", "0.1", "--json", "-"]))
        .args(["--lr", "0.05", "--reg", "0.08"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let j: serde_json::Value = serde_json::from_slice(&out).expect("stdout is exactly the JSON report");
    for k in ["name", "users", "items", "train", "test"] {
        assert!(j["dataset"].get(k).is_some(), "dataset.{k}");
    }
    for k in ["seed", "backend", "adapter", "wgpu_version", "rank", "lr", "reg", "epochs", "batch", "order"] {
        assert!(j["config"].get(k).is_some(), "config.{k}");
    }
    assert_eq!(j["epochs"].as_array().unwrap().len(), 2);
    for k in [
        "epoch",
        "ratings",
        "conflicts",
        "train_rmse",
        "test_rmse",
        "seconds",
        "ratings_per_sec",
        "rows_in",
        "rows_out",
        "bytes_h2d",
        "bytes_d2h",
        "hits",
        "misses",
    ] {
        assert!(j["epochs"][0].get(k).is_some(), "epochs[].{k}");
    }
    for k in ["test_rmse", "test_mae", "ratings_per_sec"] {
        assert!(j["final"][k].as_f64().unwrap() > 0.0, "final.{k}");
    }
    // Where the epoch's time went, evaluation apart from training.
    for e in j["epochs"].as_array().unwrap() {
        let (train, eval) = (e["seconds"].as_f64().unwrap(), e["eval_seconds"].as_f64().unwrap());
        assert!(train > 0.0 && eval > 0.0, "seconds {train}, eval_seconds {eval}");
        assert!(e["host_seconds"].as_f64().is_some(), "host_seconds");
    }
    assert_eq!(j["dataset"]["train"].as_u64().unwrap() + j["dataset"]["test"].as_u64().unwrap(), 900);
}

#[test]
fn save_eval_recommend_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = ratings_csv(dir.path());
    let model = dir.path().join("m.safetensors");
    quick(rowstage().args(["train", "--data"]).arg(&data).arg("--save").arg(&model)).assert().success();
    rowstage()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .assert()
        .success()
        .stdout(predicate::str::contains("RMSE").and(predicate::str::contains("900 ratings")));
    let j = success_json(
        rowstage()
            .args(["recommend", "--model"])
            .arg(&model)
            .args(["--user", "3", "-n", "5", "--json", "-", "--exclude-rated"])
            .arg(&data),
    );
    let items = j["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "sorted by score");
    // Items user 3 rated are excluded.
    let text = std::fs::read_to_string(&data).unwrap();
    for it in items {
        let item = it["item"].as_str().unwrap();
        assert!(!text.lines().any(|l| l.starts_with(&format!("3,{item},"))), "item {item} was rated by user 3");
    }
    rowstage()
        .args(["recommend", "--model"])
        .arg(&model)
        .args(["--user", "nobody"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown user id \"nobody\""));
    // Every user at once: `user rank item score` lines, each user's own
    // top items (the one-user JSON above is user 3's), none they rated.
    let all = dir.path().join("all.tsv");
    rowstage()
        .args(["recommend", "--model"])
        .arg(&model)
        .args(["--all-users", "-n", "5", "--exclude-rated"])
        .arg(&data)
        .arg("--output")
        .arg(&all)
        .assert()
        .success()
        .stdout("");
    let lines: Vec<Vec<String>> =
        std::fs::read_to_string(&all).unwrap().lines().map(|l| l.split('\t').map(String::from).collect()).collect();
    let (m, _) = rowstage::model::load_model(&model).unwrap();
    assert_eq!(lines.len(), 5 * m.n_users());
    let user3: Vec<&str> = lines.iter().filter(|l| l[0] == "3").map(|l| l[2].as_str()).collect();
    let json3: Vec<&str> = items.iter().map(|i| i["item"].as_str().unwrap()).collect();
    assert_eq!(user3, json3);
    for l in &lines {
        assert_eq!(l.len(), 4, "{l:?}");
        assert!(!text.lines().any(|r| r.starts_with(&format!("{},{},", l[0], l[2]))), "{l:?} was rated");
    }
    // eval --predictions: one per rating, in the file's order, that score
    // to the RMSE eval reports.
    let preds = dir.path().join("p.txt");
    rowstage()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--predictions")
        .arg(&preds)
        .assert()
        .success();
    let p: Vec<f64> = std::fs::read_to_string(&preds).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let truth: Vec<f64> = text.lines().filter_map(|l| l.split(',').nth(2)?.parse().ok()).collect();
    assert_eq!(p.len(), 900);
    assert_eq!(truth.len(), 900);
    let rmse = (p.iter().zip(&truth).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / 900.0).sqrt();
    let out = rowstage()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .args(["--json", "-"])
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((j["rmse"].as_f64().unwrap() - rmse).abs() < 1e-5, "{} against {rmse}", j["rmse"]);
    // Bad serving flags: a clear error, exit 2, nothing written.
    for (args, needle) in [
        (vec!["--all-users", "--user", "3"], "cannot be used with"),
        (vec![], "--user"),
        (vec!["--user", "3", "-n", "0"], "0 is not in 1..=100000"),
        (vec!["--all-users", "--output", "/nonexistent-dir/x.tsv"], "does not exist"),
    ] {
        rowstage()
            .args(["recommend", "--model"])
            .arg(&model)
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(needle));
    }
    // A corrupted model is refused.
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 1;
    std::fs::write(&model, bytes).unwrap();
    rowstage()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("checksum mismatch"));
}

/// `--lr` and `--reg` lists are chosen among in one run: a ranked table and
/// `choice.candidates` (best first on validation) in the JSON, and `--save` keeps the kept setting's
/// model alone, which `eval` scores as the report did.
#[test]
fn grid_search_ranks_the_settings_and_saves_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let data = ratings_csv(dir.path());
    let model = dir.path().join("best.safetensors");
    let json = dir.path().join("report.json");
    let out = quick(rowstage().args(["train", "--data"]).arg(&data))
        .args(["--test-fraction", "0.2", "--lr", "0.002,0.05", "--reg", "0,0.1,0.5", "--save"])
        .arg(&model)
        .arg("--json")
        .arg(&json)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("choosing: 6 setting(s) (lr 0.002,0.05 × reg 0,0.1,0.5)"), "{text}");
    assert!(text.contains("place") && text.contains("chose lr"), "{text}");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let grid = j["choice"]["candidates"].as_array().unwrap();
    assert_eq!(grid.len(), 6);
    let rmses: Vec<f64> = grid.iter().map(|g| g["test_rmse"].as_f64().unwrap()).collect();
    assert!(rmses.windows(2).all(|w| w[0] <= w[1]), "ranked best first: {rmses:?}");
    for g in grid {
        assert_eq!(g["epochs"].as_array().unwrap().len(), 2);
    }
    let pairs: std::collections::BTreeSet<String> = grid.iter().map(|g| format!("{}/{}", g["lr"], g["reg"])).collect();
    assert_eq!(pairs.len(), 6, "every (lr, reg) pair once: {pairs:?}");
    // Each key once: the settings tried and the epochs the model trains
    // beside the candidates' figures and the choosing epochs (a reader
    // keeps one of two equal keys).
    let choice = &j["choice"];
    assert_eq!(choice["settings"].as_array().map(Vec::len), Some(6), "{choice}");
    assert!(choice["final_epochs"].as_u64().is_some_and(|e| (1..=2).contains(&e)), "{choice}");
    assert_eq!(choice["epochs"].as_array().map(Vec::len), Some(2), "{choice}");
    let raw = std::fs::read_to_string(&json).unwrap();
    let at = raw.find("\"choice\"").unwrap();
    let object = &raw[at..at + raw[at..].find("\n  }").unwrap()];
    for key in ["settings", "final_epochs", "candidates", "epochs"] {
        let count = object.matches(&format!("\n    \"{key}\": ")).count();
        assert_eq!(count, 1, "{key} appears {count} times in the choice");
    }
    // The kept setting is the best on the validation split (the ranked
    // figures are its), and the final model trains it alone.
    assert_eq!(j["choice"]["lr"], grid[0]["lr"]);
    assert_eq!(j["choice"]["reg"], grid[0]["reg"]);
    assert_eq!((&j["config"]["lr"], &j["config"]["reg"]), (&grid[0]["lr"], &grid[0]["reg"]));
    assert!(j["config"]["grid"].as_array().unwrap().is_empty());
    // The saved model is the kept setting's: eval on the whole file agrees
    // with a direct load.
    let (m, cfg) = rowstage::model::load_model(&model).unwrap();
    assert_eq!(m.copies, 1);
    assert_eq!(cfg["lr"].as_f64().unwrap() as f32, j["choice"]["lr"].as_f64().unwrap() as f32);
    rowstage().args(["eval", "--model"]).arg(&model).arg("--data").arg(&data).assert().success();
    // Bad lists name the value.
    for (flag, value, needle) in [
        ("--lr", "0.01,abc", "\"abc\""),
        ("--lr", "0.01,", "--lr"),
        ("--reg", "0.1,-2", "\"-2\""),
        ("--lr", "0,0.1", "\"0\""),
    ] {
        rowstage()
            .args(["train", &format!("{flag}={value}")])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(needle).and(predicate::str::contains("panicked").not()));
    }
    let many: Vec<String> = (1..=9).map(|k| format!("0.0{k}")).collect();
    rowstage()
        .args(["train", "--lr", &many.join(","), "--reg", &many.join(",")])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at most 64 settings"));
}

/// Runs `train` on `content`, expecting exit 2 with every `needles` in stderr
/// and neither the report nor the model written.
fn bad_file(name: &str, content: &[u8], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    let (json, model) = (dir.path().join("r.json"), dir.path().join("m.safetensors"));
    let assert = quick(rowstage().args(["train", "--data"]).arg(&p).arg("--json").arg(&json).arg("--save").arg(&model))
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(!json.exists() && !model.exists(), "no output may be written on error");
}

#[test]
fn malformed_files_name_file_line_and_text() {
    bad_file("r.csv", b"a,b,1\na,b\n", &["r.csv:2:", "found 2", "\"a,b\""]);
    bad_file("r.csv", b"a,b,1\nc,d,four\n", &["r.csv:2:", "\"four\" is not a number"]);
    bad_file("r.csv", b"a,b,NaN\n", &["r.csv:1:", "not finite"]);
    bad_file("r.csv", b"a,b,1\na,c,-inf\n", &["r.csv:2:", "not finite"]);
    bad_file("r.csv", b"", &["r.csv", "empty"]);
    bad_file("u.data", b"1\t2\t3\t4\n1\t2\n", &["u.data:2:"]);
    bad_file("ratings.dat", b"1::2::5::9\n1::2::x::9\n", &["ratings.dat:2:", "\"x\""]);
    bad_file("r.csv", b"userId,movieId,rating\n", &["no rating found"]);
}

#[test]
fn a_resume_with_no_checkpoint_makes_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("missing").join("run");
    rowstage()
        .args(["train", "--synthetic", "100,50,1000", "--epochs", "1", "--resume"])
        .arg(&run)
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("no checkpoint to resume").and(predicate::str::contains("checkpoint.safetensors")),
        );
    assert!(!dir.path().join("missing").exists(), "a failed resume made {}", run.display());
}

/// A build without the `mpi` feature says so where MPI is asked for, and
/// refuses to train as several copies started by an MPI launcher (each
/// would train alone and write the same files); tests/mpi.rs tests the
/// feature itself under mpirun.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_the_mpi_feature_distributed_runs_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    rowstage()
        .args(["train", "--synthetic", "100,50,1000", "--epochs", "1", "--backend", "cpu", "--distributed", "rotate"])
        .arg("--save")
        .arg(&model)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--distributed").and(predicate::str::contains("built without MPI")));
    rowstage()
        .args(["train", "--synthetic", "100,50,1000", "--epochs", "1", "--backend", "cpu", "--save"])
        .arg(&model)
        .env("OMPI_COMM_WORLD_SIZE", "3")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("3 copies").and(predicate::str::contains("--features mpi")));
    assert!(!model.exists());
    // One copy under a launcher is one process, as without it.
    rowstage()
        .args(["train", "--synthetic", "100,50,1000", "--epochs", "1", "--backend", "cpu", "--lr", "0.05"])
        .env("OMPI_COMM_WORLD_SIZE", "1")
        .assert()
        .success();
}

/// `plan --ranks P` works out what `--distributed rotate` will hand MPI
/// without MPI (any build): per epoch and rank, the gather being every
/// trained row to the P − 1 other ranks; more ranks than bins are refused.
#[test]
fn plan_ranks_works_out_the_wire_bytes_without_mpi() {
    let out = rowstage()
        .args(["plan", "--synthetic", "700,500,30000", "--rank", "8", "--ranks", "4", "--order", "blocked:16:2:4"])
        .args(["--epochs", "2", "--json", "-"])
        .assert()
        .success()
        .get_output()
        .clone();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["ranks"], 4);
    assert_eq!(j["order"], "blocked:16:2:4");
    let (rows, row_bytes) = (j["trained_rows"].as_u64().unwrap(), j["row_bytes"].as_u64().unwrap());
    assert_eq!(row_bytes, 48, "rank 8: 8 factors, the bias, padding to 12 floats");
    let epochs = j["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for e in epochs {
        assert_eq!(e["gather_bytes"].as_u64().unwrap(), 3 * rows * row_bytes);
        let by_rank: Vec<u64> = e["bytes_by_rank"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect();
        assert_eq!(by_rank.len(), 4);
        let total = e["rotation_bytes"].as_u64().unwrap() + e["gather_bytes"].as_u64().unwrap();
        assert_eq!(by_rank.iter().sum::<u64>(), total);
        assert!(e["rotation_bytes"].as_u64().unwrap() > 0);
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("wire: across 4 ranks"));
    rowstage()
        .args(["plan", "--synthetic", "700,500,30000", "--ranks", "40", "--order", "blocked:16:2:4"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at least one of the order's 16 bins"));
}

/// `plan --ranks P --distributed server` works out every rank's cache
/// schedule in one process (any build): per epoch and rank, the gather at
/// least (every rank's users and served items to the others); a larger
/// cache fetches less; `--distributed off` with ranks is refused, and so
/// is what a run across ranks would refuse.
#[test]
fn plan_ranks_works_out_the_servers_wire_bytes_without_mpi() {
    let plan = |cache: &str| -> serde_json::Value {
        let out = rowstage()
            .args(["plan", "--synthetic", "700,500,30000", "--rank", "8", "--ranks", "3", "--distributed", "server"])
            .args(["--cache", cache, "--policy", "lru", "--epochs", "2", "--json", "-"])
            .assert()
            .success()
            .get_output()
            .clone();
        assert!(String::from_utf8_lossy(&out.stderr).contains("wire: across 3 ranks (--distributed server"));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (small, large) = (plan("5%"), plan("60%"));
    assert_eq!(small["ranks"], 3);
    assert_eq!(small["row_bytes"], 48);
    assert!(small["cache_slots"].as_u64().unwrap() < large["cache_slots"].as_u64().unwrap());
    let total = |j: &serde_json::Value| -> u64 {
        j["epochs"].as_array().unwrap().iter().flat_map(|e| e[1].as_array().unwrap()).map(|b| b.as_u64().unwrap()).sum()
    };
    for j in [&small, &large] {
        let epochs = j["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 2);
        for e in epochs {
            // Each rank sends at least its share of the 1,200 rows' gather to 2 others.
            assert!(e[1].as_array().unwrap().iter().all(|b| b.as_u64().unwrap() >= 2 * 48 * 1200 / 3 / 2));
        }
    }
    assert!(total(&small) > total(&large), "a larger cache fetches less: {} against {}", total(&small), total(&large));
    rowstage()
        .args(["plan", "--synthetic", "700,500,30000", "--ranks", "3", "--distributed", "off"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("give rotate or server"));
    // What `train` under mpirun refuses, `plan` refuses too.
    for (extra, says) in [
        (&["--distributed", "rotate", "--order", "shuffled"][..], "rotates the blocked order"),
        (&["--distributed", "server", "--adapter", "llvmpipe"][..], "picks an adapter only for a GPU --backend"),
    ] {
        rowstage()
            .args(["plan", "--synthetic", "700,500,30000", "--ranks", "3"])
            .args(extra)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(says));
    }
    // Each rank's GPU lays out its own ratings, without co-partitioning:
    // refused before anything starts, MPI or not.
    rowstage()
        .args(["train", "--synthetic", "700,500,30000", "--distributed", "server", "--backend", "vulkan"])
        .args(["--order", "shuffled", "--co-partition", "users"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("\"users\" for --co-partition: is not trained by --distributed server"));
}

#[test]
fn unreadable_file_and_bad_flags_exit_2() {
    rowstage()
        .args(["train", "--data", "/nonexistent/ratings.csv"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent/ratings.csv"));
    for (flag, value, needle) in [
        ("--device-memory", "12 parsecs", "--device-memory"),
        ("--device-memory", "0%", "--device-memory"),
        ("--synthetic", "10,20", "--synthetic"),
        ("--lr", "-1", "--lr"),
        ("--rank", "0", "--rank"),
        ("--batch", "0", "--batch"),
        ("--test-fraction", "1.5", "--test-fraction"),
        ("--backend", "cuda", "--backend"),
        ("--patience", "0", "--patience"),
        ("--co-partition", "rows", "--co-partition"),
        ("--co-partition-visits", "0", "--co-partition-visits"),
        ("--order", "sideways", "--order"),
        ("--order", "blocked:0", "--order"),
        ("--hogwild-width", "0", "--hogwild-width"),
        ("--hogwild-width", "wide", "--hogwild-width"),
        ("--resume", "/nonexistent/run", "/nonexistent/run/checkpoint.safetensors"),
    ] {
        rowstage()
            .args(["train", &format!("{flag}={value}")])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(needle).and(predicate::str::contains("panicked").not()));
    }
    // A negative number after a space is the flag's value, refused by name,
    // not an unknown flag `-0`.
    for (flag, value) in [("--lr", "-0.1"), ("--zipf", "-2"), ("--reg", "-1"), ("--device-memory", "-5%")] {
        rowstage()
            .args(["train", flag, value])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!("invalid value \"{value}\" for {flag}")));
    }
}

#[test]
fn the_blocked_order_is_refused_with_co_partitioning_and_runs_on_the_device() {
    let small = ["train", "--synthetic", "300,200,5000", "--epochs", "1", "--order", "blocked:4"];
    rowstage()
        .args(small)
        .args(["--backend", "cpu", "--co-partition", "users"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--co-partition").and(predicate::str::contains("panicked").not()));
    for backend in common::test_backends() {
        if common::gpu(backend, "the_blocked_order_on_the_device").is_none() {
            continue;
        }
        let be = format!("{backend:?}").to_lowercase();
        // Fields not given are chosen from the data, the same on every
        // backend: the sweeps (8 at least), and the tile (a quarter of the
        // bins at most, dividing them: none for 4 bins, 2 for 8).
        for (order, trained) in [("blocked:4", "blocked:4:8:1"), ("blocked:8:2", "blocked:8:2:2")] {
            for b in ["cpu", &be] {
                let j = success_json(rowstage().args(&small[..small.len() - 1]).args([
                    order,
                    "--backend",
                    b,
                    "--json",
                    "-",
                ]));
                assert_eq!(j["config"]["order"], trained, "{b}");
                assert_eq!(j["epochs"][0]["conflicts"], 0, "{b}: the blocked order never races");
            }
        }
    }
}

#[test]
fn skip_bad_lines_reports_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.csv");
    let mut s = String::new();
    for k in 0..200 {
        s += &format!("u{},i{},{}\n", k % 17, k % 11, 1 + k % 5);
    }
    s += "broken line\nu1,i1,nan\n";
    std::fs::write(&p, s).unwrap();
    let out = quick(rowstage().args(["train", "--skip-bad-lines", "--json", "-", "--data"]).arg(&p))
        .assert()
        .success()
        .stderr(predicate::str::contains("skipped 2 bad lines"))
        .get_output()
        .stdout
        .clone();
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(j["dataset"]["skipped_lines"], 2);
}

#[test]
fn separate_test_file_reports_cold_ratings() {
    let dir = tempfile::tempdir().unwrap();
    let data = ratings_csv(dir.path());
    let test = dir.path().join("test.tsv");
    std::fs::write(&test, "3\t4\t5\nnewuser\t4\t3\n3\tnewitem\t2\n").unwrap();
    let j =
        success_json(quick(rowstage().args(["train", "--json", "-", "--data"]).arg(&data).arg("--test").arg(&test)));
    assert_eq!(j["dataset"]["test"], 3);
    assert_eq!(j["dataset"]["test_cold"], 2);
}

#[test]
fn budgets_too_small_or_too_large_name_the_fix() {
    for backend in common::test_backends() {
        let Some(ctx) = common::gpu(backend, "budgets_too_small_or_too_large") else {
            continue;
        };
        let name = ctx.summary.name.clone();
        let limit = ctx.summary.max_slab_bytes();
        drop(ctx);
        let be = format!("{backend:?}").to_lowercase();
        let base = [
            "train",
            "--synthetic",
            "200,100,3000",
            "--rank",
            "4",
            "--epochs",
            "1",
            "--batch",
            "256",
            "--backend",
            &be,
        ];
        rowstage()
            .args(base)
            .args(["--device-memory", "40"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("the smallest budget that works is --device-memory"));
        let too_big = (limit + 1024).to_string();
        rowstage()
            .args(base)
            .args(["--device-memory", &too_big])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(name.as_str()).and(predicate::str::contains(limit.to_string())));
        // The smallest working budget that the error names does work.
        let out = rowstage().args(base).args(["--device-memory", "40"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let min = err.split("--device-memory ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        rowstage().args(base).args(["--device-memory", &min]).assert().success();
    }
}

#[test]
fn default_run_uses_the_builtin_dataset() {
    // The README's first command, shortened to 1 epoch on the CPU backend to
    // keep the test quick; the GPU path of the same run is covered above.
    rowstage().args(["train", "--epochs", "1", "--backend", "cpu"]).assert().success().stdout(
        predicate::str::contains("synthetic-4000x2000-200000").and(predicate::str::contains("final: test RMSE")),
    );
}

#[test]
fn auto_backend_falls_back_to_the_cpu_with_a_notice() {
    // DX12 exists on no Linux machine: `auto` restricted to it finds no adapter.
    if cfg!(windows) {
        eprintln!("auto_backend_falls_back_to_the_cpu: SKIPPED on Windows, where DX12 adapters exist");
        return;
    }
    rowstage()
        .env("WGPU_BACKEND", "dx12")
        .args(["train", "--synthetic", "50,40,600", "--rank", "4", "--epochs", "1"])
        .assert()
        .success()
        .stderr(predicate::str::contains("notice: no GPU adapter found").and(predicate::str::contains("CPU backend")))
        .stdout(predicate::str::contains("backend: cpu"));
}

#[test]
fn hogwild_cpu_reaches_the_accuracy_of_sequential_sgd() {
    // Racing updates may be lost (the shuffled order), or none race (the
    // blocked order, the CPU default), but on skewed data the final test
    // RMSE stays within 0.01 of the sequential reference.
    let rmse = |extra: &[&str]| -> f64 {
        let out = rowstage()
            .args([
                "train",
                "--synthetic",
                "800,500,40000",
                "--rank",
                "8",
                "--epochs",
                "8",
                "--backend",
                "cpu",
                "--threads",
                "2",
                "--json",
                "-",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success());
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // Conflicts: ratings racing with another thread's in the same
        // parallel wave; none in the sequential order.
        let conflicts: Vec<u64> =
            j["epochs"].as_array().unwrap().iter().map(|e| e["conflicts"].as_u64().unwrap()).collect();
        if extra == ["--order", "shuffled"] {
            assert!(conflicts.iter().all(|&c| c > 0), "{conflicts:?}");
        } else {
            assert!(conflicts.iter().all(|&c| c == 0), "{conflicts:?}");
        }
        // 36k training ratings: √(36000 / (4 × 8 sweeps)) = 33 bins, in
        // tiles of 8, whatever the thread count (default_bins).
        let order = if extra.is_empty() { "blocked:32:8:8" } else { extra.last().unwrap() };
        assert_eq!(j["config"]["order"], order);
        j["final"]["test_rmse"].as_f64().unwrap()
    };
    let seq = rmse(&["--deterministic", "--order", "shuffled"]);
    let (hog, blocked) = (rmse(&["--order", "shuffled"]), rmse(&[]));
    eprintln!("test RMSE: Hogwild {hog:.4}, blocked {blocked:.4}, sequential {seq:.4}");
    assert!((hog - seq).abs() < 0.01, "Hogwild {hog} vs sequential {seq}");
    assert!((blocked - seq).abs() < 0.01, "blocked {blocked} vs sequential {seq}");
}

#[test]
fn plan_and_batch_auto_use_a_calibration_cached_per_adapter() {
    for backend in common::test_backends() {
        let Some(ctx) = common::gpu(backend, "plan_and_batch_auto") else {
            continue;
        };
        drop(ctx);
        let be = format!("{backend:?}").to_lowercase();
        let cache = tempfile::tempdir().unwrap();
        let plan = |extra: &[&str]| {
            let out = rowstage()
                .env("XDG_CACHE_HOME", cache.path())
                .args([
                    "plan",
                    "--synthetic",
                    "2000,1000,40000",
                    "--zipf",
                    "1.05",
                    "--rank",
                    "8",
                    "--device-memory",
                    "10%",
                    "--backend",
                    &be,
                ])
                .args(["--json", "-"])
                .args(extra)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            (
                serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (j, err) = plan(&[]);
        assert!(!err.contains("(cached)"), "the first run measures: {err}");
        let p = &j["planner"];
        let (h, c, s) =
            (p["resident"].as_u64().unwrap(), p["staging_capacity"].as_u64().unwrap(), p["slots"].as_u64().unwrap());
        assert!(h + 2 * c <= s, "the i.i.d. model's double-buffered split {h} + 2·{c} ≤ {s}");
        assert!(j["predicted_rows_in_per_epoch"].as_f64().unwrap() > 0.0);
        let slots = ["resident_slots", "cache_slots", "staging_slots"].map(|k| j[k].as_u64().unwrap());
        assert_eq!(slots.iter().sum::<u64>(), j["slots"].as_u64().unwrap(), "{j}");
        assert!(cache.path().join("rowstage/calibration.json").exists());
        let (_, err) = plan(&[]);
        assert!(err.contains("(cached)"), "the second run reads the cache: {err}");
        let (_, err) = plan(&["--no-calibration-cache"]);
        assert!(!err.contains("(cached)"), "{err}");
        // `train --batch auto` applies exactly the plan `plan` prints: the
        // same batch and split, in each order.
        for order in ["auto", "shuffled"] {
            let (j, _) = plan(&["--order", order]);
            let out = rowstage()
                .env("XDG_CACHE_HOME", cache.path())
                .args(["train", "--synthetic", "2000,1000,40000", "--zipf", "1.05", "--rank", "8", "--epochs", "2"])
                .args(["--backend", &be, "--batch", "auto", "--device-memory", "10%", "--order", order, "--json", "-"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            for (pk, tk) in [
                ("batch", "batch"),
                ("order", "order"),
                ("resident_slots", "resident_slots"),
                ("cache_slots", "cache_slots"),
                ("staging_slots", "staging_slots"),
                ("slots", "slots"),
                ("device_memory_bytes", "device_memory_bytes"),
            ] {
                assert_eq!(j[pk], t["config"][tk], "--order {order}: plan's {pk} against train's");
            }
            // The second epoch: the resident rows and the cache are loaded.
            let predicted = j["predicted_rows_in_per_epoch"].as_f64().unwrap();
            let measured = t["epochs"][1]["rows_in"].as_f64().unwrap();
            assert!(
                (measured - predicted).abs() <= 0.05 * measured,
                "--order {order}: {measured} rows in, plan {predicted}"
            );
        }

        rowstage()
            .env("XDG_CACHE_HOME", cache.path())
            .args(["train", "--synthetic", "2000,1000,40000", "--rank", "8", "--epochs", "1", "--backend", &be])
            .args(["--batch", "auto", "--device-memory", "10%", "--policy", "sca"])
            .assert()
            .success()
            .stdout(predicate::str::contains("--batch auto: batch").and(predicate::str::contains("(model ")));
        // A budget that holds no batch of 64: --batch auto takes the largest that fits and says so.
        rowstage()
            .env("XDG_CACHE_HOME", cache.path())
            .args(["train", "--synthetic", "2000,1000,40000", "--rank", "8", "--epochs", "1", "--backend", &be])
            .args(["--batch", "auto", "--device-memory", "2KiB", "--lr", "0.05", "--reg", "0.08"])
            .assert()
            .success()
            .stdout(
                predicate::str::contains("the largest that fits is").and(predicate::str::contains("final: test RMSE")),
            );
        // Choosing among 8 settings side by side needs 8 copies a slot: a
        // byte budget too small for them says so, and how to train one.
        rowstage()
            .env("XDG_CACHE_HOME", cache.path())
            .args(["train", "--synthetic", "2000,1000,40000", "--rank", "8", "--epochs", "1", "--backend", &be])
            .args(["--device-memory", "2KiB"])
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains("8 settings side by side").and(predicate::str::contains("--lr and --reg")),
            );
        // A budget that holds no batch of 64: `plan` takes the batch `train`
        // would (the largest that fits), and an explicit batch that does not
        // fit names the smallest budget.
        let tiny =
            ["plan", "--synthetic", "2000,1000,40000", "--rank", "8", "--device-memory", "1KiB", "--backend", &be];
        rowstage()
            .env("XDG_CACHE_HOME", cache.path())
            .args(tiny)
            .args(["--order", "shuffled"])
            .assert()
            .success()
            .stdout(
                predicate::str::contains("the largest that fits is").and(predicate::str::contains("sca: predicted")),
            );
        rowstage()
            .env("XDG_CACHE_HOME", cache.path())
            .args(tiny)
            .args(["--order", "shuffled", "--batch", "2048"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("smallest budget that works"));
    }
}

#[test]
fn ctrl_c_writes_an_incomplete_report_and_a_checkpoint_then_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let report = dir.path().join("r.json");
    let model = dir.path().join("m.safetensors");
    let args = |epochs: &str| -> Vec<String> {
        // Both settings given: this is about checkpoints, not choosing.
        ["train", "--backend", "cpu", "--threads", "2", "--synthetic", "4000,2000,200000", "--rank", "8", "--lr"]
            .iter()
            .chain(&["0.05", "--reg", "0.08", "--epochs"])
            .map(|s| s.to_string())
            .chain([epochs.to_string()])
            .collect()
    };
    let bin = assert_cmd::cargo::cargo_bin("rowstage");
    let child = std::process::Command::new(&bin)
        .args(args("100000"))
        .arg("--checkpoint")
        .arg(&ck)
        .arg("--json")
        .arg(&report)
        .arg("--save")
        .arg(&model)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first epoch's checkpoint exists.
    let file = ck.join("checkpoint.safetensors");
    common::wait_for(&file, 120);
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted") && !stderr.contains("panicked"), "{stderr}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(j["complete"], false);
    let done = j["epochs"].as_array().unwrap().len();
    assert!(done >= 1);
    assert!(!model.exists(), "an interrupted run must not write --save as if complete");

    // Resume with a near total: the run continues at the stopped epoch.
    let total = (done + 2).to_string();
    let out = rowstage()
        .args(args(&total))
        .arg("--resume")
        .arg(&ck)
        .args(["--json", "-"])
        .arg("--save")
        .arg(&model)
        .assert()
        .success()
        .get_output()
        .clone();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["complete"], true);
    assert_eq!(j["epochs"].as_array().unwrap().len(), done + 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming"));
    assert!(model.exists());

    // A damaged checkpoint is refused with exit 2, naming the file.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    rowstage()
        .args(args(&total))
        .arg("--resume")
        .arg(&ck)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("checkpoint.safetensors").and(predicate::str::contains("not a valid")));
}

#[test]
fn a_resume_continues_the_checkpoints_setting_and_refuses_another_given() {
    let dir = tempfile::tempdir().unwrap();
    let data = ratings_csv(dir.path());
    let ck = dir.path().join("ck");
    let base = |c: &mut Command| {
        c.args(["train", "--backend", "cpu", "--rank", "4", "--batch", "64"]).arg("--data").arg(&data);
    };
    let mut first = rowstage();
    base(&mut first);
    first.args(["--lr", "0.03", "--reg", "0.07", "--epochs", "1", "--checkpoint"]).arg(&ck).assert().success();
    // Neither given: the checkpoint's setting continues, nothing is chosen
    // first (choosing would train on other settings, then be refused).
    let mut resumed = rowstage();
    base(&mut resumed);
    let j = success_json(resumed.args(["--epochs", "2", "--json", "-", "--resume"]).arg(&ck));
    assert!(j["choice"].is_null(), "a resumed run chooses nothing: {}", j["choice"]);
    assert_eq!(j["epochs"].as_array().unwrap().len(), 2);
    let hp = &j["config"];
    assert_eq!((hp["lr"].as_f64().unwrap() as f32, hp["reg"].as_f64().unwrap() as f32), (0.03, 0.07), "{hp}");
    // Another value given is refused by name before any training.
    let mut other = rowstage();
    base(&mut other);
    other
        .args(["--lr", "0.01", "--epochs", "3", "--resume"])
        .arg(&ck)
        .assert()
        .code(2)
        .stdout(predicate::str::contains("epoch").not())
        .stderr(predicate::str::contains("made with --lr = 0.03, this run has --lr = 0.01"));
    // Fewer epochs than the checkpoint has trained: no run ends there.
    let mut fewer = rowstage();
    base(&mut fewer);
    fewer
        .args(["--epochs", "1", "--resume"])
        .arg(&ck)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("has 2 epoch(s) trained already"));
    // The data is its ratings, not how its path is spelt.
    let spelt = dir.path().join(".").join("ratings.csv");
    let mut respelt = rowstage();
    respelt.args(["train", "--backend", "cpu", "--rank", "4", "--batch", "64", "--data"]).arg(&spelt);
    respelt.args(["--epochs", "3", "--resume"]).arg(&ck).assert().success();
    // `--resume A --checkpoint B` keeps another run's checkpoint in B.
    let theirs = dir.path().join("theirs");
    let mut made = rowstage();
    base(&mut made);
    made.args(["--lr", "0.05", "--reg", "0.1", "--epochs", "1", "--checkpoint"]).arg(&theirs).assert().success();
    let before = std::fs::read(theirs.join("checkpoint.safetensors")).unwrap();
    let mut aimed = rowstage();
    base(&mut aimed);
    aimed
        .args(["--epochs", "4", "--resume"])
        .arg(&ck)
        .arg("--checkpoint")
        .arg(&theirs)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("holds another run's checkpoint"));
    assert_eq!(std::fs::read(theirs.join("checkpoint.safetensors")).unwrap(), before, "B left as it was");
}

#[test]
fn bench_exports_json_csv_markdown_and_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = ratings_csv(dir.path());
    let (json, csv) = (dir.path().join("b.json"), dir.path().join("b.csv"));
    let md = rowstage()
        .args(["bench", "--backend", "cpu", "--rank", "4", "--batch", "64", "--warmup", "0", "--epochs", "1"])
        .arg("--data")
        .arg(&data)
        .arg("--export-json")
        .arg(&json)
        .arg("--export-csv")
        .arg(&csv)
        .args(["--export-markdown", "-", "--target-rmse", "100"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let md = String::from_utf8(md).unwrap();
    assert!(md.starts_with("Dataset: "), "stdout is exactly the Markdown export:\n{md}");
    assert!(md.contains("| cpu | CPU ("), "{md}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["complete"], true);
    assert_eq!(j["rows"][0]["backend"], "cpu");
    assert!(j["rows"][0]["median_ratings_per_sec"].as_f64().unwrap() > 0.0);
    // Any epoch is below an RMSE of 100: the first one reaches the target.
    assert_eq!(j["rows"][0]["epochs_to_target"], 1, "{j}");
    assert!(j["rows"][0]["seconds_to_target"].as_f64().unwrap() > 0.0, "{j}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.starts_with("backend,adapter,budget,"));

    let bad = |args: &[&str], needles: &[&str]| {
        let out = rowstage().arg("bench").args(["--synthetic", "50,40,500"]).args(args).assert().code(2);
        let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        for n in needles {
            assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    };
    bad(&["--backend", "cpu,tpu"], &["--backend", "tpu"]);
    bad(&["--policy", "sca,fifo"], &["--policy", "fifo"]);
    bad(&["--device-memory", "10%,lots"], &["--device-memory", "lots"]);
    bad(&["--epochs", "0"], &["--epochs", "0"]);
    bad(&["--target-rmse", "NaN"], &["--target-rmse", "NaN"]);
    bad(&["--target-rmse", "0"], &["--target-rmse", "0"]);
    bad(&["--lookahead", "0"], &["--lookahead", "0"]);
    bad(&["--hogwild-width", "1.5"], &["--hogwild-width", "1.5"]);
    bad(&["--export-json", "-", "--export-csv", "-"], &["--export-csv", "only one export can go to stdout"]);
    let missing = dir.path().join("no/such/dir/out.csv");
    bad(&["--export-csv", missing.to_str().unwrap()], &["--export-csv", "no/such/dir", "does not exist"]);
    assert!(!missing.exists());
}

#[test]
fn bench_skips_a_backend_without_a_usable_adapter_and_measures_the_others() {
    // No adapter's name contains the filter, on any machine: among several
    // backends the GPU one is skipped with the reason and the CPU row is
    // measured; asked alone, the same backend is the error (exit 1).
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("b.json");
    let common =
        ["bench", "--synthetic", "60,40,600", "--rank", "4", "--batch", "64", "--warmup", "0", "--epochs", "1"];
    let budgets = ["--device-memory", "100%,10%", "--policy", "sca", "--adapter", "no-adapter-is-called-this"];
    rowstage()
        .args(common)
        .args(budgets)
        .args(["--backend", "cpu,vulkan"])
        .arg("--export-json")
        .arg(&json)
        .assert()
        .success();
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["complete"], true);
    assert_eq!(j["rows"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(j["rows"][0]["backend"], "cpu");
    let skipped = j["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "one per budget × policy of the skipped backend: {j}");
    for s in skipped {
        assert_eq!(s["backend"], "vulkan");
        assert!(s["reason"].as_str().unwrap().contains("no-adapter-is-called-this"), "{s}");
    }
    let out = rowstage().args(common).args(budgets).args(["--backend", "vulkan"]).assert().code(1);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("no GPU adapter found") && err.contains("no-adapter-is-called-this"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_diverging_run_stops_with_an_error_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (json, model) = (dir.path().join("r.json"), dir.path().join("m.safetensors"));
    rowstage()
        .args(["train", "--backend", "cpu", "--synthetic", "300,200,6000", "--epochs", "4", "--lr", "100"])
        .args(["--json".as_ref(), json.as_os_str(), "--save".as_ref(), model.as_os_str()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("diverged at epoch 1").and(predicate::str::contains("panicked").not()))
        .stdout(predicate::str::contains("not saving").and(predicate::str::contains("final:").not()));
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["complete"], false);
    // `--reg` was left to choosing, so the epoch that diverged is one of
    // choosing's, not the model's.
    assert_eq!(j["choice"]["epochs"].as_array().unwrap().len(), 1, "stopped at the epoch that diverged: {j}");
    assert_eq!(j["epochs"].as_array().unwrap().len(), 0);
    assert!(!model.exists(), "no model of a diverged run");
}

#[test]
fn output_paths_are_checked_first_and_special_files_written_through() {
    let dir = tempfile::tempdir().unwrap();
    // A missing folder is reported before any training.
    let missing = dir.path().join("no/such/m.safetensors");
    rowstage()
        .args(["train", "--backend", "cpu", "--synthetic", "300,200,6000", "--epochs", "1", "--save"])
        .arg(&missing)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--save").and(predicate::str::contains("does not exist")))
        .stdout(predicate::str::contains("epoch").not());
    // A read-only file is refused, even for root.
    let ro = dir.path().join("ro.json");
    std::fs::write(&ro, "keep").unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&ro, perm).unwrap();
    rowstage()
        .args(["train", "--backend", "cpu", "--synthetic", "300,200,6000", "--epochs", "1", "--json"])
        .arg(&ro)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("read-only"));
    assert_eq!(std::fs::read_to_string(&ro).unwrap(), "keep");
    // A symlink is written through: it stays a link, its target gets the report.
    #[cfg(unix)]
    {
        let target = dir.path().join("target.json");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        rowstage()
            .args(["train", "--backend", "cpu", "--synthetic", "300,200,6000", "--epochs", "1", "--json"])
            .arg(&link)
            .assert()
            .success();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::read_to_string(&target).unwrap().contains("\"complete\": true"));
    }
    // Stale temporary files of a killed run are removed by the next write.
    let stale = dir.path().join(".r.json.tmp-4000000");
    std::fs::write(&stale, "x").unwrap();
    rowstage()
        .args(["train", "--backend", "cpu", "--synthetic", "300,200,6000", "--epochs", "1", "--json"])
        .arg(dir.path().join("r.json"))
        .assert()
        .success();
    if std::path::Path::new("/proc/self").exists() {
        assert!(!stale.exists(), "the stale temporary file is cleaned up");
    }
    rowstage()
        .args(["train", "--backend", "cpu", "--threads", "100000"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--threads").and(predicate::str::contains("per core")));
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly_and_a_full_one_is_an_error() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let bin = assert_cmd::cargo::cargo_bin("rowstage");
    let mut child = std::process::Command::new(&bin)
        .args(["train", "--backend", "cpu", "--synthetic", "300,200,6000", "--epochs", "200"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 20];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is closed here: the next line written meets a closed pipe.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc_sigpipe()), "{:?} {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if std::path::Path::new("/dev/full").exists() {
        let full = std::fs::File::create("/dev/full").unwrap();
        let out = std::process::Command::new(&bin)
            .args(["train", "--backend", "cpu", "--synthetic", "300,200,6000", "--epochs", "1"])
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("<stdout>") && !stderr.contains("panicked"), "{stderr}");
    }
}

/// SIGPIPE's number (13 on every Unix rowstage runs on).
#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}

/// A backend this platform lacks, where others have adapters, is a flag to
/// change: exit 2, naming the backends that exist.
#[cfg(all(unix, not(target_os = "macos")))]
#[test]
fn a_backend_the_platform_lacks_names_the_ones_it_has() {
    let found = rowstage::gpu::list_adapters(rowstage::gpu::BackendChoice::Auto);
    if found.is_empty() {
        eprintln!("skipped: no GPU adapter on this machine, so no backend to name (install mesa-vulkan-drivers)");
        return;
    }
    for backend in ["metal", "dx12"] {
        rowstage()
            .args(["train", "--backend", backend, "--synthetic", "300,200,6000", "--epochs", "1"])
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains(format!("--backend {backend} has no adapter on this machine"))
                    .and(predicate::str::contains("use --backend"))
                    .and(predicate::str::contains(found[0].backend.to_lowercase())),
            );
    }
}

/// `devices --json` takes a path or `-`, as every other command's does.
#[test]
fn devices_json_goes_to_a_path_or_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.json");
    rowstage().args(["devices", "--json"]).arg(&path).assert().success().stdout("");
    let from_file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let out = rowstage().args(["devices", "--json", "-"]).output().unwrap();
    let from_stdout: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_file, from_stdout);
    assert!(from_file.is_array());
    rowstage().args(["devices", "--json", "/nonexistent-dir/d.json"]).assert().code(2);
}

/// An output aimed at an input or at another output is refused before any
/// work, by file identity (another spelling, a hard link, a file not
/// written yet), and the input is left as it was; devices are written
/// through.
#[test]
fn train_refuses_an_output_that_is_an_input_or_another_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = ratings_csv(dir.path());
    let before = std::fs::read(&data).unwrap();
    let link = dir.path().join("link.csv");
    std::fs::hard_link(&data, &link).unwrap();
    let report = dir.path().join("report.json");
    quick(rowstage().args(["train", "--data"]).arg(&data).arg("--json").arg(&report)).assert().success();
    let report_before = std::fs::read(&report).unwrap();
    let dotted = |p: &Path| p.parent().unwrap().join(".").join(p.file_name().unwrap());
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (vec!["--save".into(), data.clone().into()], "--save"),
        (vec!["--json".into(), dotted(&data).into()], "--json"),
        (vec!["--json".into(), link.clone().into()], "--json"),
        (
            vec![
                "--json".into(),
                dir.path().join("new.json").into(),
                "--save".into(),
                dotted(&dir.path().join("new.json")).into(),
            ],
            "--save",
        ),
    ];
    for (args, flag) in cases {
        let out = quick(rowstage().args(["train", "--data"]).arg(&data).args(&args)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains("same file") && !stderr.contains("panicked"), "{stderr}");
    }
    assert!(!dir.path().join("new.json").exists(), "nothing written");
    // A run reproduced from a report may not write over that report.
    let out = rowstage().args(["train", "--config"]).arg(&report).arg("--json").arg(dotted(&report)).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&data).unwrap(), before, "the data is untouched");
    assert_eq!(std::fs::read(&report).unwrap(), report_before, "the report is untouched");
    // A device is written through.
    quick(rowstage().args(["train", "--data"]).arg(&data).args(["--json", "/dev/null"])).assert().success();
}
