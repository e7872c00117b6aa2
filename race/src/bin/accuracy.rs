//! The accuracy race: rowstage's defaults against LIBMF on the same split,
//! both timed as whole processes (reading the files, rowstage's own choosing
//! of its settings, training and scoring), and the table of defaults
//! against a grid's best, a bias-only model and LIBMF.
//!
//! ```sh
//! A="cargo run --release --manifest-path race/Cargo.toml --bin accuracy --"
//! $A gen --set weak-1m --out /tmp/sets                   # train.tsv, test.tsv
//! $A race --dir /tmp/sets/weak-1m --repeat 3             # time to a model
//! $A table --dir /tmp/sets/weak-1m                       # defaults, grid, bias-only, LIBMF
//! ```
//!
//! Splits are 90/10, seeded; test ratings whose user or item has no
//! training rating are dropped, so that both libraries score the same
//! ratings (LIBMF has no row for them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::{Parser, Subcommand};
use rand::prelude::*;
use rand::rngs::StdRng;
use rowstage_race::truth::Truth;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a named set and write its split.
    Gen {
        /// weak-1m, sparse-halfstar, dense-strong, skewed-stars, or all.
        #[arg(long)]
        set: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a ratings file's seeded 90/10 split (as `gen` splits).
    Split {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Train LIBMF on a split and print its test RMSE (run as a process by
    /// `race` and `table`).
    Libmf {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 0.1)]
        lr: f32,
        #[arg(long, default_value_t = 0.1)]
        l2: f32,
        #[arg(long, default_value_t = 20)]
        iters: i32,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        #[arg(long, default_value_t = 32)]
        rank: i32,
    },
    /// Interleaved runs of `rowstage train` at its defaults and LIBMF,
    /// each timed as a whole process; medians.
    Race {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        #[arg(long, default_value = "target/release/rowstage")]
        rowstage: PathBuf,
        #[arg(long, default_value_t = 0.1)]
        libmf_lr: f32,
        #[arg(long, default_value_t = 0.05)]
        libmf_l2: f32,
        #[arg(long, default_value_t = 20)]
        libmf_iters: i32,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// More flags for rowstage (e.g. "--lr 0.05 --reg 0.08": the old defaults).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        rowstage_flags: String,
    },
}

fn main() {
    match Cli::parse().command {
        Cmd::Gen { set, seed, out } => {
            let names: Vec<&str> = if set == "all" { Truth::NAMES.to_vec() } else { vec![set.as_str()] };
            for name in names {
                let truth = Truth::named(name).unwrap_or_else(|| panic!("unknown set {name}: {:?}", Truth::NAMES));
                let triples = truth.generate(seed);
                let lines: Vec<String> = triples.iter().map(|(u, i, v)| format!("u{u}\ti{i}\t{v}")).collect();
                let dir = out.join(name);
                write_split(&lines, seed, &dir);
                std::fs::write(dir.join("truth.json"), serde_json::to_string_pretty(&truth).unwrap()).unwrap();
                println!("{name}: {} ratings, {truth:?} -> {}", lines.len(), dir.display());
            }
        }
        Cmd::Split { data, seed, out } => {
            let text = std::fs::read_to_string(&data).expect("reading --data");
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join("\t"))
                .collect();
            write_split(&lines, seed, &out);
        }
        Cmd::Libmf { dir, lr, l2, iters, threads, rank } => {
            let (train, test) = (read(&dir.join("train.tsv")), read(&dir.join("test.tsv")));
            let (mut users, mut items) = (HashMap::new(), HashMap::new());
            let mut m = libmf::Matrix::new();
            for (u, i, v) in &train {
                let n = users.len() as i32;
                let u = *users.entry(u.clone()).or_insert(n);
                let n = items.len() as i32;
                let i = *items.entry(i.clone()).or_insert(n);
                m.push(u, i, *v);
            }
            let model = libmf::Model::params()
                .factors(rank)
                .threads(threads)
                .iterations(iters)
                .learning_rate(lr)
                .lambda_p2(l2)
                .lambda_q2(l2)
                .quiet(true)
                .fit(&m)
                .expect("LIBMF trains");
            let (mut sse, mut n) = (0.0f64, 0usize);
            // A test rating whose user or item has no training rating has no
            // row in LIBMF (`gen` and `split` drop them; `rowstage split`
            // keeps them): left out, and counted.
            for (u, i, v) in test.iter().filter(|(u, i, _)| users.contains_key(u) && items.contains_key(i)) {
                let p = model.predict(users[u], items[i]);
                sse += ((v - p) as f64).powi(2);
                n += 1;
            }
            println!(
                "{}",
                serde_json::json!({"test_rmse": (sse / n as f64).sqrt(), "ratings": n, "left_out": test.len() - n})
            );
        }
        Cmd::Race { dir, repeat, rowstage, libmf_lr, libmf_l2, libmf_iters, threads, rowstage_flags } => {
            let me = std::env::current_exe().unwrap();
            let libmf = |_| {
                let mut c = Command::new(&me);
                c.arg("libmf").arg("--dir").arg(&dir).args(["--lr", &libmf_lr.to_string()]);
                c.args(["--l2", &libmf_l2.to_string(), "--iters", &libmf_iters.to_string()]);
                c.args(["--threads", &threads.to_string()]);
                timed(c)
            };
            let ours = |_| {
                let mut c = Command::new(&rowstage);
                c.arg("train").arg("--data").arg(dir.join("train.tsv")).arg("--test").arg(dir.join("test.tsv"));
                c.args(["--backend", "cpu", "--threads", &threads.to_string(), "--json", "-"]);
                c.args(rowstage_flags.split_whitespace());
                timed(c)
            };
            let mut runs = (Vec::new(), Vec::new());
            for r in 0..repeat {
                let (a, b) = (libmf(r), ours(r));
                // Time to a model: rowstage's choosing and training seconds
                // (evaluations included) until its test RMSE reached LIBMF's.
                let to_libmf =
                    b.3.iter().find(|(_, rmse)| *rmse <= a.1).map_or("never".to_string(), |(t, _)| format!("{t:.2} s"));
                println!(
                    "run {}: LIBMF {:.2} s test RMSE {:.4}   rowstage {:.2} s test RMSE {:.4}{}; reached LIBMF's RMSE after {to_libmf}",
                    r + 1,
                    a.0,
                    a.1,
                    b.0,
                    b.1,
                    b.2
                );
                runs.0.push(a);
                runs.1.push(b);
            }
            type Run = (f64, f64, String, Vec<(f64, f64)>);
            let med = |v: &[Run], k: usize| median(v.iter().map(|x| if k == 0 { x.0 } else { x.1 }).collect());
            println!(
                "median of {repeat}: LIBMF {:.2} s test RMSE {:.4}; rowstage {:.2} s test RMSE {:.4} ({:.2}× LIBMF's time)",
                med(&runs.0, 0),
                med(&runs.0, 1),
                med(&runs.1, 0),
                med(&runs.1, 1),
                med(&runs.1, 0) / med(&runs.0, 0)
            );
        }
    }
}

/// Runs `c` to the end; its wall seconds, the test RMSE its JSON reports
/// (`final.test_rmse` for rowstage, `test_rmse` for LIBMF), what rowstage
/// chose, and rowstage's (seconds since its choosing began, test RMSE) after
/// each epoch of the model kept.
fn timed(mut c: Command) -> (f64, f64, String, Vec<(f64, f64)>) {
    let t = Instant::now();
    let out = c.output().expect("the contender starts");
    let seconds = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rmse = j["final"]["test_rmse"].as_f64().or(j["test_rmse"].as_f64()).expect("a test RMSE");
    let chose = match j["config"]["lr"].as_f64() {
        Some(lr) => format!(
            " (lr {lr:.3} reg {:.3}, {} epochs)",
            j["config"]["reg"],
            j["epochs"].as_array().map_or(0, |e| e.len())
        ),
        None => String::new(),
    };
    let mut t = j["choice"]["seconds"].as_f64().unwrap_or(0.0);
    let mut curve = Vec::new();
    for e in j["epochs"].as_array().into_iter().flatten() {
        t += e["seconds"].as_f64().unwrap_or(0.0) + e["eval_seconds"].as_f64().unwrap_or(0.0);
        curve.push((t, e["test_rmse"].as_f64().unwrap_or(f64::INFINITY)));
    }
    (seconds, rmse, chose, curve)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Writes `lines` split 90/10 by `seed` into `dir`, dropping test lines
/// whose user or item has no training line.
fn write_split(lines: &[String], seed: u64, dir: &Path) {
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_test = lines.len() / 10;
    let (test, train) = order.split_at(n_test);
    let key = |l: &String, k: usize| l.split('\t').nth(k).unwrap_or("").to_string();
    let seen_u: std::collections::HashSet<String> = train.iter().map(|&k| key(&lines[k], 0)).collect();
    let seen_i: std::collections::HashSet<String> = train.iter().map(|&k| key(&lines[k], 1)).collect();
    std::fs::create_dir_all(dir).unwrap();
    let join =
        |ks: &mut dyn Iterator<Item = &usize>| ks.map(|&k| lines[k].as_str()).collect::<Vec<_>>().join("\n") + "\n";
    std::fs::write(dir.join("train.tsv"), join(&mut train.iter())).unwrap();
    let mut kept = test.iter().filter(|&&k| seen_u.contains(&key(&lines[k], 0)) && seen_i.contains(&key(&lines[k], 1)));
    std::fs::write(dir.join("test.tsv"), join(&mut kept)).unwrap();
}

fn read(path: &Path) -> Vec<(String, String, f32)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((f.next()?.to_string(), f.next()?.to_string(), f.next()?.trim().parse().ok()?))
        })
        .collect()
}
