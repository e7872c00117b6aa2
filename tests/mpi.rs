//! Training across MPI ranks under `mpirun` on loopback (docs/ARCHITECTURE.md,
//! "Past one machine"): `--distributed rotate` trains one process's model bit
//! for bit at 2 and 4 ranks, `--distributed server` (the parameter server)
//! within 0.01 test RMSE of one process on MovieLens 100K, the `wire_bytes`
//! of both equal an outside count (a PMPI wrapper), a stopped rank ends the
//! job naming it, and checkpoints resume under the same and another number
//! of ranks.
//!
//! Built with the `mpi` feature only (`cargo test --features mpi --test mpi`).
//! Without `mpirun` (Open MPI) the tests say so and pass, unless
//! ROWSTAGE_REQUIRE_MPI=1 (CI), where they fail.

#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("rowstage")
}

/// One job at a time: the tests' ranks would otherwise share the cores
/// with another job's, and a rank starved for seconds looks like a stopped
/// one.
static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether Open MPI's `mpirun` is here (then the test holds [`ONE_JOB`]);
/// where it is not, a test prints why it does not run (and fails under
/// ROWSTAGE_REQUIRE_MPI=1).
fn have_mpirun(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Open MPI"));
    if !found {
        let reason = "Open MPI's mpirun was not found (scripts/deps.sh --mpi installs it)";
        assert!(std::env::var("ROWSTAGE_REQUIRE_MPI").as_deref() != Ok("1"), "{test}: {reason}");
        println!("skipped {test}: {reason}");
        return None;
    }
    Some(ONE_JOB.lock().unwrap_or_else(|e| e.into_inner()))
}

/// `mpirun -np P [extra mpirun flags] rowstage ARGS`, on loopback, more
/// ranks than cores allowed, root allowed (CI runs as root).
fn mpirun(np: usize, mpi_flags: &[&str], args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl", "self,vader")
        .args(["--oversubscribe", "-np", &np.to_string()])
        .args(mpi_flags)
        .arg(bin())
        .args(args);
    c
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("runs");
    assert!(
        out.status.success(),
        "{c:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn one_process(args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.args(args);
    run(c)
}

/// Whether two model files hold the same tables bit for bit
/// (`rowstage compare`).
fn identical(a: &Path, b: &Path) -> bool {
    let out = one_process(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout).contains("bit-identical")
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A small run's data and settings, both settings fixed (no choosing).
const FIXED: [&str; 12] = [
    "train",
    "--synthetic",
    "700,500,30000",
    "--rank",
    "8",
    "--lr",
    "0.05",
    "--reg",
    "0.05",
    "--epochs",
    "3",
    "--seed",
];

fn fixed(seed: &str, extra: &[&str]) -> Vec<String> {
    FIXED.iter().chain(&[seed]).chain(extra).map(|s| s.to_string()).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn rotate_trains_one_processs_model_at_2_and_4_ranks_and_prints_once() {
    let Some(_one) = have_mpirun("rotate_trains_one_processs_model_at_2_and_4_ranks_and_prints_once") else { return };
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.safetensors");
    one_process(&strs(&fixed("3", &["--backend", "cpu", "--threads", "2", "--save", one.to_str().unwrap()])));
    for np in [2, 4] {
        let (model, json) = (dir.path().join(format!("r{np}.safetensors")), dir.path().join(format!("r{np}.json")));
        let out = run(mpirun(
            np,
            &[],
            &strs(&fixed("3", &["--save", model.to_str().unwrap(), "--json", json.to_str().unwrap()])),
        ));
        assert!(identical(&one, &model), "{np} ranks: not one process's model");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("final: test RMSE").count(), 1, "one output, from rank 0:\n{stdout}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
        let j = report(&json);
        assert_eq!(j["config"]["ranks"], np);
        assert_eq!(j["config"]["distributed"], "rotate");
        for e in j["epochs"].as_array().unwrap() {
            let by_rank: Vec<u64> =
                e["wire_bytes_by_rank"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(by_rank.len(), np);
            assert_eq!(e["wire_bytes"].as_u64().unwrap(), by_rank.iter().sum::<u64>());
            assert_eq!(e["wire_bytes"], e["predicted_wire_bytes"], "the schedule's prediction is exact");
            assert!(by_rank.iter().all(|&b| b > 0));
        }
    }
}

/// A rank trains its share of a round on its threads: the same model on
/// any number (the blocks of a round share no row). Without a launcher,
/// `--distributed rotate` runs as a world of one.
/// The parameter server on MovieLens 100K: within 0.01 test RMSE of one
/// process at the same settings, at 2 and 4 ranks, in the blocked and the
/// shuffled order, under two policies and a small cache; with a staleness
/// of 1 in the blocked order (whose rounds share no row) one process's
/// model up to the rounding of the deltas. Every epoch's wire bytes are the
/// schedule's prediction.
#[test]
fn server_trains_within_a_hundredth_of_one_process_on_movielens() {
    let Some(_one) = have_mpirun("server_trains_within_a_hundredth_of_one_process_on_movielens") else { return };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-100k/u.data");
    if !data.exists() {
        println!("skipped server_trains_within_a_hundredth_of_one_process_on_movielens: {} is absent", data.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = |order: &str, extra: &[&str]| -> Vec<String> {
        ["train", "--data", data.to_str().unwrap(), "--lr", "0.05", "--reg", "0.05", "--epochs", "8", "--order", order]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let final_rmse = |json: &Path| report(json)["final"]["test_rmse"].as_f64().unwrap();
    for order in ["auto", "shuffled"] {
        let one = dir.path().join(format!("one-{order}.json"));
        one_process(&strs(&args(order, &["--backend", "cpu", "--threads", "1", "--json", one.to_str().unwrap()])));
        let one = final_rmse(&one);
        for (np, extra) in [
            (2, &["--staleness", "1"][..]),
            (2, &[][..]),
            (4, &[][..]),
            (4, &["--policy", "lru", "--cache", "64KiB", "--staleness", "2"][..]),
        ] {
            let json = dir.path().join(format!("s{np}.json"));
            let mut a = args(order, &["--distributed", "server", "--json", json.to_str().unwrap()]);
            a.extend(extra.iter().map(|s| s.to_string()));
            let out = run(mpirun(np, &[], &strs(&a)));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
            let j = report(&json);
            assert_eq!(j["config"]["distributed"], "server");
            assert_eq!(j["config"]["ranks"], np);
            let rmse = j["final"]["test_rmse"].as_f64().unwrap();
            let exact = order == "auto" && extra.contains(&"1");
            let tolerance = if exact { 1e-4 } else { 0.01 };
            assert!((rmse - one).abs() <= tolerance, "{order}, {np} ranks {extra:?}: {rmse:.4} against {one:.4}");
            for e in j["epochs"].as_array().unwrap() {
                assert_eq!(e["wire_bytes"], e["predicted_wire_bytes"], "{order}, {np} ranks {extra:?}");
                assert!(e["wire_bytes"].as_u64().unwrap() > 0);
            }
        }
    }
}

/// `plan --ranks 3 --distributed server`, worked out in one process
/// without MPI, gives every rank's bytes of every epoch that a run under
/// mpirun then hands MPI.
#[test]
fn the_servers_plan_is_what_a_run_hands_mpi() {
    let Some(_one) = have_mpirun("the_servers_plan_is_what_a_run_hands_mpi") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (plan, run_json) = (dir.path().join("plan.json"), dir.path().join("run.json"));
    let data = ["--synthetic", "700,500,30000", "--rank", "8", "--seed", "4"];
    let server = ["--distributed", "server", "--policy", "lru", "--cache", "10%", "--staleness", "3"];
    one_process(
        &[&["plan"][..], &data, &server, &["--ranks", "3", "--epochs", "3", "--json", plan.to_str().unwrap()]].concat(),
    );
    let train = [&["train"][..], &data, &server, &["--lr", "0.05", "--reg", "0.05", "--epochs", "3"]].concat();
    run(mpirun(3, &[], &[&train[..], &["--json", run_json.to_str().unwrap()]].concat()));
    let (p, r) = (report(&plan), report(&run_json));
    let planned: Vec<&serde_json::Value> = p["epochs"].as_array().unwrap().iter().map(|e| &e[1]).collect();
    let measured: Vec<&serde_json::Value> =
        r["epochs"].as_array().unwrap().iter().map(|e| &e["wire_bytes_by_rank"]).collect();
    assert_eq!(planned, measured);
}

#[test]
fn a_ranks_threads_train_the_same_model() {
    let Some(_one) = have_mpirun("a_ranks_threads_train_the_same_model") else { return };
    let dir = tempfile::tempdir().unwrap();
    // Rounds of 4 blocks of about 3,400 ratings: past the size a rank
    // shares among its threads.
    let args = |extra: &[&str]| -> Vec<String> {
        ["train", "--synthetic", "700,500,60000", "--rank", "8", "--lr", "0.05", "--reg", "0.05", "--epochs", "2"]
            .iter()
            .chain(&["--order", "blocked:4:1:1"])
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let one = dir.path().join("one.safetensors");
    one_process(&strs(&args(&["--backend", "cpu", "--save", one.to_str().unwrap()])));
    for threads in ["1", "3"] {
        let model = dir.path().join(format!("t{threads}.safetensors"));
        let json = dir.path().join(format!("t{threads}.json"));
        let out = one_process(&strs(&args(&[
            "--distributed",
            "rotate",
            "--threads",
            threads,
            "--save",
            model.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ])));
        assert!(identical(&one, &model), "{threads} thread(s): {}", String::from_utf8_lossy(&out.stdout));
        let j = report(&json);
        assert_eq!(j["config"]["ranks"], 1);
        assert!(j["config"]["adapter"].as_str().unwrap().contains(&format!("{threads} thread")));
    }
    // The parameter server deals a rank's share of a round to its threads
    // too: the same model on 1 and 3 (at 2 ranks, binding off).
    let mut saved = Vec::new();
    for threads in ["1", "3"] {
        let model = dir.path().join(format!("server{threads}.safetensors"));
        let a = args(&["--distributed", "server", "--threads", threads, "--save", model.to_str().unwrap()]);
        run(mpirun(2, &["--bind-to", "none"], &strs(&a)));
        saved.push(model);
    }
    assert!(identical(&saved[0], &saved[1]), "the server's model on 1 and 3 threads a rank");
}

#[test]
fn settings_chosen_under_mpirun_are_one_processs_choice() {
    let Some(_one) = have_mpirun("settings_chosen_under_mpirun_are_one_processs_choice") else { return };
    let dir = tempfile::tempdir().unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        ["train", "--synthetic", "500,300,15000", "--rank", "8", "--epochs", "4", "--seed", "9"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let (one, three) = (dir.path().join("one.safetensors"), dir.path().join("three.safetensors"));
    let out_one = one_process(&strs(&args(&["--backend", "cpu", "--save", one.to_str().unwrap()])));
    let out_three = run(mpirun(3, &[], &strs(&args(&["--save", three.to_str().unwrap()]))));
    let chose = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("chose "))
            .map(|l| l.split(": the lowest").next().unwrap().to_string())
            .expect("a choice line")
    };
    assert_eq!(chose(&out_one), chose(&out_three));
    assert!(identical(&one, &three));
    // The parameter server chooses too, every candidate's rows in one
    // fetch: the same choice (its models are one process's but for the
    // staleness, far within the candidates' gaps).
    let out_server = run(mpirun(3, &[], &strs(&args(&["--distributed", "server"]))));
    assert_eq!(chose(&out_one), chose(&out_server));
}

#[test]
fn wire_bytes_equal_an_mpi_profiling_wrappers_count() {
    let Some(_one) = have_mpirun("wire_bytes_equal_an_mpi_profiling_wrappers_count") else { return };
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libcount.so");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mpi/count_bytes.c");
    let built = Command::new("mpicc").args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&source).status();
    assert!(built.is_ok_and(|s| s.success()), "mpicc could not build the PMPI wrapper");
    for (np, mode) in [(2, "rotate"), (4, "rotate"), (2, "server"), (4, "server")] {
        let counts = dir.path().join(format!("counts{np}{mode}"));
        std::fs::create_dir_all(&counts).unwrap();
        let json = dir.path().join(format!("r{np}{mode}.json"));
        let preload = format!("LD_PRELOAD={}", lib.display());
        let out_dir = format!("ROWSTAGE_PMPI_OUT={}", counts.display());
        let args = fixed("4", &["--json", json.to_str().unwrap(), "--distributed", mode, "--cache", "20%"]);
        run(mpirun(np, &["-x", &preload, "-x", &out_dir], &strs(&args)));
        let j = report(&json);
        for k in 0..np {
            let text = std::fs::read_to_string(counts.join(format!("rank{k}"))).expect("the wrapper's count");
            let figures: Vec<u64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let (model, control, other) = (figures[0], figures[1], figures[2]);
            let reported: u64 =
                j["epochs"].as_array().unwrap().iter().map(|e| e["wire_bytes_by_rank"][k].as_u64().unwrap()).sum();
            assert_eq!(model, reported, "{mode}, rank {k} of {np}: the wrapper counted {model}, the report {reported}");
            assert!(control > 0 && other == 0, "rank {k}: control {control}, other {other}");
        }
    }
}

#[test]
fn a_stopped_rank_ends_the_job_within_the_limit_naming_it() {
    let Some(_one) = have_mpirun("a_stopped_rank_ends_the_job_within_the_limit_naming_it") else { return };
    let args = ["train", "--synthetic", "700,500,30000", "--rank", "8", "--lr", "0.05", "--reg", "0.05"];
    let mut c = mpirun(3, &[], &args);
    c.args(["--epochs", "100000", "--rank-timeout", "5"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // The ranks are mpirun's children; rank 1 is the one to stop, once
    // training has begun (rank 0 printed an epoch).
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0 && !line.starts_with("epoch") {
        line.clear();
    }
    assert!(line.starts_with("epoch"), "training never began");
    // Found through /proc: the process whose parent is mpirun and whose
    // environment says rank 1.
    let mpirun_pid = child.id().to_string();
    let victim: i32 = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the fields after the last ')'.
            let parent = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1));
            parent == Some(mpirun_pid.as_str())
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == b"OMPI_COMM_WORLD_RANK=1"))
        })
        .expect("rank 1's process");
    let stopped = Instant::now();
    // SAFETY: a signal to a process this test started (through mpirun).
    assert_eq!(unsafe { libc::kill(victim, libc::SIGSTOP) }, 0);
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let out = child.wait_with_output().unwrap();
    let took = stopped.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // The limit, and what mpirun takes to end the other ranks.
    assert!(took < Duration::from_secs(5 + 15), "the job took {took:?} to end");
    // A surviving rank names rank 1 among those it waited for (a rank that
    // waits in turn for rank 1 may be named beside it).
    let named = stderr.lines().filter(|l| !l.starts_with("rank 1:")).any(|l| {
        l.split("MPI rank(s) ")
            .nth(1)
            .and_then(|rest| rest.split(" sent nothing for 5 s").next())
            .is_some_and(|list| list.split(", ").any(|r| r == "1"))
    });
    assert!(named, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // SAFETY: as above; the job has ended, so this only makes sure.
    unsafe { libc::kill(victim, libc::SIGKILL) };
}

/// Each rank on its own GPU backend (lavapipe and llvmpipe in CI). Rotate:
/// one process's model on the same backend, bit for bit, at 2 and 3 ranks,
/// with the default slab and with one too small to hold the tables (rows
/// staged, cached and written back between the rounds); a run checkpointed
/// on the GPUs resumes to the uninterrupted model. The server: in the
/// blocked order the model its ranks train on their CPUs, to the rounding
/// of llvmpipe's kernels; in the shuffled order within 0.01 test RMSE.
#[test]
fn each_ranks_own_gpu_trains_rotates_and_the_servers_model() {
    let test = "each_ranks_own_gpu_trains_rotates_and_the_servers_model";
    let Some(_one) = have_mpirun(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for backend in common::test_backends() {
        if common::gpu(backend, test).is_none() {
            continue;
        }
        let name = rowstage::Named::name(backend);
        for budget in [None, Some("16KiB")] {
            let args = |np: usize, extra: &[&str]| -> Vec<String> {
                let mut a = fixed("4", &["--backend", name]);
                if let Some(b) = budget {
                    a.extend(["--device-memory".to_string(), b.to_string()]);
                }
                a.extend(extra.iter().map(|s| s.to_string()));
                a.extend(["--save".to_string(), path(&format!("{name}-{budget:?}-{np}.safetensors"))]);
                a
            };
            one_process(&strs(&args(1, &[])));
            for np in [2, 3] {
                let json = path(&format!("{name}-{budget:?}-{np}.json"));
                let out = run(mpirun(np, &[], &strs(&args(np, &["--json", &json]))));
                let at = |n: usize| PathBuf::from(path(&format!("{name}-{budget:?}-{n}.safetensors")));
                assert!(identical(&at(1), &at(np)), "{name}, budget {budget:?}, {np} ranks: not one process's model");
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
                let j = report(Path::new(&json));
                assert_eq!(j["config"]["ranks"], np);
                for e in j["epochs"].as_array().unwrap() {
                    assert_eq!(e["wire_bytes"], e["predicted_wire_bytes"]);
                    // Every rank's device staged rows in and wrote rows back.
                    assert!(e["ledger"]["user_rows_in"].as_u64().unwrap() > 0, "{e}");
                    assert!(e["ledger"]["item_rows_out"].as_u64().unwrap() > 0, "{e}");
                }
            }
        }
        // Checkpointed after 2 epochs on the GPUs, resumed there to 4.
        let run_for = |n: &str, extra: &[&str]| -> Vec<String> {
            let mut v = fixed("4", &["--backend", name]);
            let at = v.iter().position(|a| a == "--epochs").unwrap();
            v[at + 1] = n.to_string();
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let (whole, resumed, ck) =
            (path("whole.safetensors"), path("resumed.safetensors"), path(&format!("ck-{name}")));
        run(mpirun(2, &[], &strs(&run_for("4", &["--save", &whole]))));
        run(mpirun(2, &[], &strs(&run_for("2", &["--checkpoint", &ck]))));
        run(mpirun(2, &[], &strs(&run_for("4", &["--resume", &ck, "--save", &resumed]))));
        assert!(identical(Path::new(&whole), Path::new(&resumed)), "{name}: resumed on the GPUs");
        // The server, 3 ranks, a small cache and a small slab.
        let server = |backend: &str, file: &str| {
            let extra = ["--distributed", "server", "--policy", "lru", "--cache", "8KiB", "--backend", backend];
            let mut a = fixed("4", &extra);
            if backend != "cpu" {
                a.extend(["--device-memory".to_string(), "16KiB".to_string()]);
            }
            a.extend(["--save".to_string(), path(file)]);
            run(mpirun(3, &[], &strs(&a)));
        };
        server("cpu", "server-cpu.safetensors");
        server(name, "server-gpu.safetensors");
        let out = one_process(&["compare", &path("server-cpu.safetensors"), &path("server-gpu.safetensors")]);
        let said = String::from_utf8_lossy(&out.stdout);
        let largest: f64 =
            said.split("largest |difference| ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(largest < 1e-5, "{name}: the server on the GPUs against the CPUs: {said}");
        // The shuffled order, whose clocks every rank shares: each GPU
        // trains its rank's share of a part at once (Hogwild, or waves),
        // not in the CPU's sequence, so the test RMSE is compared.
        let shuffled = |backend: &str| -> f64 {
            let json = path(&format!("shuffled-{backend}.json"));
            let extra = ["--distributed", "server", "--order", "shuffled", "--backend", backend, "--json", &json];
            run(mpirun(3, &[], &strs(&fixed("4", &extra))));
            report(Path::new(&json))["final"]["test_rmse"].as_f64().unwrap()
        };
        let (cpu, gpu) = (shuffled("cpu"), shuffled(name));
        assert!((cpu - gpu).abs() < 0.01, "{name}: the shuffled server on the GPUs {gpu} against the CPUs {cpu}");
    }
}

#[test]
fn a_checkpoint_resumes_to_the_uninterrupted_model_under_the_same_and_another_number_of_ranks() {
    let Some(_one) =
        have_mpirun("a_checkpoint_resumes_to_the_uninterrupted_model_under_the_same_and_another_number_of_ranks")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let epochs = |n: &str, extra: &[String]| -> Vec<String> {
        let mut v = fixed("5", &[]);
        let at = v.iter().position(|a| a == "--epochs").unwrap();
        v[at + 1] = n.to_string();
        v.extend(extra.iter().cloned());
        v
    };
    let whole = path("whole.safetensors");
    run(mpirun(2, &[], &strs(&epochs("5", &["--save".into(), whole.clone()]))));
    // Two epochs, checkpointed (each rank its share, rank 0 the manifest);
    // then three more under 2 ranks, under 4 and in one process.
    run(mpirun(2, &[], &strs(&epochs("2", &["--checkpoint".into(), path("ck")]))));
    let mut files: Vec<String> = std::fs::read_dir(path("ck"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| !f.starts_with('.'))
        .collect();
    files.sort();
    // A share's name ends in its tables' CRC-32.
    let shapes: Vec<String> = files
        .iter()
        .map(|f| f.split_once(".epoch-2.").map_or(f.clone(), |(head, _)| format!("{head}.epoch-2")))
        .collect();
    assert_eq!(
        shapes,
        ["checkpoint.manifest.json", "checkpoint.share-0-of-2.epoch-2", "checkpoint.share-1-of-2.epoch-2"],
        "each rank's share of the last epoch's checkpoint, and the manifest: {files:?}"
    );
    for copy in ["ck4", "ck1"] {
        std::fs::create_dir_all(path(copy)).unwrap();
        for f in &files {
            std::fs::copy(dir.path().join("ck").join(f), dir.path().join(copy).join(f)).unwrap();
        }
    }
    for (np, ck) in [(2, "ck"), (4, "ck4"), (1, "ck1")] {
        let resumed = path(&format!("resumed{np}.safetensors"));
        let mut args = epochs("5", &["--resume".into(), path(ck), "--save".into(), resumed.clone()]);
        if np == 1 {
            // The ranks trained on their CPUs; one process's `auto` may be a GPU.
            args.extend(["--backend".to_string(), "cpu".to_string()]);
        }
        let out = if np == 1 { one_process(&strs(&args)) } else { run(mpirun(np, &[], &strs(&args))) };
        assert!(String::from_utf8_lossy(&out.stdout).contains("resuming"));
        assert!(identical(Path::new(&whole), Path::new(&resumed)), "resumed under {np} rank(s)");
    }
    // The parameter server resumes at an epoch's start too, its caches
    // cold: at staleness 1 (one process's model up to the deltas'
    // rounding) to the uninterrupted run's test RMSE.
    let server = |n: &str, extra: &[&str]| -> Vec<String> {
        let mut v = epochs(n, &["--distributed".into(), "server".into(), "--staleness".into(), "1".into()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let (whole, part) = (path("server-whole.json"), path("server-resumed.json"));
    run(mpirun(3, &[], &strs(&server("5", &["--json", &whole]))));
    run(mpirun(3, &[], &strs(&server("2", &["--checkpoint", &path("sck")]))));
    run(mpirun(2, &[], &strs(&server("5", &["--resume", &path("sck"), "--json", &part]))));
    let rmse = |p: &str| report(Path::new(p))["final"]["test_rmse"].as_f64().unwrap();
    assert!((rmse(&whole) - rmse(&part)).abs() < 1e-4, "{} against {}", rmse(&part), rmse(&whole));
}

#[test]
fn rotate_refuses_what_it_cannot_train_by_name() {
    let Some(_one) = have_mpirun("rotate_refuses_what_it_cannot_train_by_name") else { return };
    for (extra, says) in [
        (&["--order", "shuffled"][..], "rotates the blocked order"),
        (&["--adapter", "llvmpipe"][..], "picks an adapter only for a GPU --backend"),
        (&["--order", "blocked:2:1:1"][..], "at least one of the order's 2 bins"),
    ] {
        let out = mpirun(3, &[], &strs(&fixed("1", extra))).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}");
        assert!(stderr.contains(says) && !stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
    // `--distributed off` under a launcher: each copy would train alone.
    let out = mpirun(2, &[], &strs(&fixed("1", &["--distributed", "off"]))).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`distributed` off asks each to train alone") || stderr.contains("--distributed off asks"),
        "{stderr}"
    );
    // Ranks started on other flags (mpirun's MPMD form): refused before a
    // row of one run meets the other's.
    let mut c = mpirun(1, &[], &strs(&fixed("1", &[])));
    c.arg(":").args(["-np", "1"]).arg(bin()).args(strs(&fixed("2", &[])));
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("trains another run than rank") && !stderr.contains("panicked"), "{stderr}");
}
