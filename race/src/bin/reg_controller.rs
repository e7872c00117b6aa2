//! An experiment, not a part of rowstage: can λ be set in one run, instead
//! of choosing it among candidates trained side by side (BENCHMARKS.md,
//! "Defaults chosen on the data", "λ set in one run: tried and rejected")?
//!
//! After each epoch a controller looks at the validation ratings: where
//! their residuals rise with the factor part of the prediction (`p_u·q_i`),
//! the factors are shrunk too much, and λ goes down; where they fall, the
//! factors overfit, and λ goes up:
//!
//! ```text
//! s = Σ e·f / Σ f²          (e the residual, f = p_u·q_i, over the validation ratings)
//! λ ← clamp(λ · clamp(exp(−gain · s), 1/step, step), floor, 2)
//! ```
//!
//! which is the sign of the validation loss's derivative in λ through one
//! SGD step (Rendle, "Learning recommender systems with adaptive
//! regularization", WSDM 2012), scaled by the factor part's size. The epoch
//! of the lowest validation RMSE is kept, and the final model replays the
//! run's λ of each epoch on all the training ratings for that many epochs.
//! `fixed` trains one λ the same way, for comparison.
//!
//! Plain SGD as rowstage's (η_t = lr / (1 + 0.05 t^1.5), λ_b 0.01, rank 32,
//! initial factors N(0, 0.05²)), but in a shuffled order on one thread: its
//! figures compare with each other, not with rowstage's to the digit.
//!
//! ```sh
//! cargo run --release --manifest-path race/Cargo.toml --bin reg_controller -- --dir /tmp/sets/weak-1m fixed --lr 0.05 --reg 0.035
//! cargo run --release --manifest-path race/Cargo.toml --bin reg_controller -- --dir /tmp/sets/weak-1m controller --lr 0.05 --reg 0.05 --gain 5 --step 1.25 --floor 0.005
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use rand::prelude::*;
use rand::rngs::StdRng;
use rand_distr::Normal;

const RANK: usize = 32;
const BIAS_REG: f32 = 0.01;
const DECAY: f32 = 0.05;

#[derive(Parser)]
struct Cli {
    /// A split's folder: `train.tsv` and `test.tsv` (`accuracy gen` or `rowstage split` writes them).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    #[command(subcommand)]
    how: How,
}

#[derive(Subcommand, Clone, Copy)]
enum How {
    /// One λ throughout.
    Fixed {
        #[arg(long)]
        lr: f32,
        #[arg(long)]
        reg: f32,
    },
    /// λ set after each epoch by the controller (module docs), from `reg`.
    Controller {
        #[arg(long)]
        lr: f32,
        #[arg(long)]
        reg: f32,
        #[arg(long, default_value_t = 5.0)]
        gain: f64,
        /// The most λ changes by in one epoch, as a factor.
        #[arg(long, default_value_t = 100.0)]
        step: f64,
        #[arg(long, default_value_t = 1e-4)]
        floor: f64,
    },
}

#[derive(Clone, Copy)]
struct Rating {
    user: u32,
    item: u32,
    value: f32,
}

/// A row unseen in training.
const UNSEEN: u32 = u32::MAX;

fn read(path: &Path, users: &mut HashMap<String, u32>, items: &mut HashMap<String, u32>, grow: bool) -> Vec<Rating> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let id = |map: &mut HashMap<String, u32>, name: &str| {
        let next = map.len() as u32;
        if grow { *map.entry(name.to_string()).or_insert(next) } else { map.get(name).copied().unwrap_or(UNSEEN) }
    };
    text.lines()
        .map(|line| {
            let mut f = line.split('\t');
            let (u, i, v) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            Rating { user: id(users, u), item: id(items, i), value: v.parse().unwrap() }
        })
        .collect()
}

struct Model {
    p: Vec<f32>,
    q: Vec<f32>,
    bu: Vec<f32>,
    bi: Vec<f32>,
    mean: f32,
}

impl Model {
    fn new(users: usize, items: usize, ratings: &[Rating]) -> Self {
        let mut rng = StdRng::seed_from_u64(1);
        let normal = Normal::new(0.0f32, 0.05).unwrap();
        let mean = (ratings.iter().map(|r| r.value as f64).sum::<f64>() / ratings.len() as f64) as f32;
        Model {
            p: (0..users * RANK).map(|_| normal.sample(&mut rng)).collect(),
            q: (0..items * RANK).map(|_| normal.sample(&mut rng)).collect(),
            bu: vec![0.0; users],
            bi: vec![0.0; items],
            mean,
        }
    }

    fn factor(&self, u: usize, i: usize) -> f32 {
        self.p[u * RANK..][..RANK].iter().zip(&self.q[i * RANK..][..RANK]).map(|(a, b)| a * b).sum()
    }

    fn predict(&self, r: &Rating) -> f32 {
        let (u, i) = (r.user as usize, r.item as usize);
        let mut x = self.mean;
        if r.user != UNSEEN {
            x += self.bu[u];
        }
        if r.item != UNSEEN {
            x += self.bi[i];
        }
        if r.user != UNSEEN && r.item != UNSEEN {
            x += self.factor(u, i);
        }
        x
    }

    fn rmse(&self, ratings: &[Rating]) -> f64 {
        let sse: f64 = ratings.iter().map(|r| ((r.value - self.predict(r)) as f64).powi(2)).sum();
        (sse / ratings.len() as f64).sqrt()
    }

    /// The slope of the residuals on the factor part (module docs).
    fn slope(&self, ratings: &[Rating]) -> f64 {
        let (mut ef, mut ff) = (0.0f64, 0.0f64);
        for r in ratings.iter().filter(|r| r.user != UNSEEN && r.item != UNSEEN) {
            let f = self.factor(r.user as usize, r.item as usize) as f64;
            ef += (r.value - self.predict(r)) as f64 * f;
            ff += f * f;
        }
        ef / ff.max(1e-12)
    }

    fn epoch(&mut self, ratings: &[Rating], order: &[u32], lr: f32, reg: f32) {
        for &k in order {
            let r = ratings[k as usize];
            let (u, i) = (r.user as usize, r.item as usize);
            let e = r.value - self.predict(&r);
            self.bu[u] += lr * (e - BIAS_REG * self.bu[u]);
            self.bi[i] += lr * (e - BIAS_REG * self.bi[i]);
            let (p, q) = (&mut self.p[u * RANK..][..RANK], &mut self.q[i * RANK..][..RANK]);
            for (a, b) in p.iter_mut().zip(q.iter_mut()) {
                let (x, y) = (*a, *b);
                *a = x + lr * (e * y - reg * x);
                *b = y + lr * (e * x - reg * y);
            }
        }
    }
}

/// Trains on `ratings` for up to `epochs`, λ of epoch t from `next_reg`
/// (given the model after epoch t−1), scoring `judged` after each epoch;
/// returns each epoch's (λ, RMSE on `judged`, RMSE on `test`) and the model.
fn train(
    ratings: &[Rating],
    rows: (usize, usize),
    epochs: usize,
    lr: f32,
    mut reg_of: impl FnMut(usize, &Model) -> f32,
    judged: &[Rating],
    test: &[Rating],
) -> (Vec<(f32, f64, f64)>, Model) {
    let mut model = Model::new(rows.0, rows.1, ratings);
    let mut rng = StdRng::seed_from_u64(3);
    let mut order: Vec<u32> = (0..ratings.len() as u32).collect();
    let mut history = Vec::new();
    for t in 0..epochs {
        let reg = reg_of(t, &model);
        order.shuffle(&mut rng);
        model.epoch(ratings, &order, lr / (1.0 + DECAY * (t as f32).powf(1.5)), reg);
        history.push((reg, model.rmse(judged), model.rmse(test)));
    }
    (history, model)
}

fn main() {
    let cli = Cli::parse();
    let started = std::time::Instant::now();
    let (mut users, mut items) = (HashMap::new(), HashMap::new());
    let all = read(&cli.dir.join("train.tsv"), &mut users, &mut items, true);
    let test = read(&cli.dir.join("test.tsv"), &mut users, &mut items, false);
    let rows = (users.len(), items.len());
    // A seeded tenth of the training ratings held out to judge by.
    let mut held = vec![false; all.len()];
    let mut picks: Vec<usize> = (0..all.len()).collect();
    picks.shuffle(&mut StdRng::seed_from_u64(7));
    for &k in &picks[..all.len() / 10] {
        held[k] = true;
    }
    let part = |v: bool| all.iter().zip(&held).filter(|(_, h)| **h == v).map(|(r, _)| *r).collect::<Vec<_>>();
    let (fit, validation) = (part(false), part(true));
    let (lr, history) = match cli.how {
        How::Fixed { lr, reg } => (lr, train(&fit, rows, cli.epochs, lr, |_, _| reg, &validation, &test).0),
        How::Controller { lr, reg, gain, step, floor } => {
            let mut now = reg as f64;
            let reg_of = |t: usize, m: &Model| {
                if t > 0 {
                    let factor = (-gain * m.slope(&validation)).exp().clamp(1.0 / step, step);
                    now = (now * factor).clamp(floor, 2.0);
                }
                now as f32
            };
            (lr, train(&fit, rows, cli.epochs, lr, reg_of, &validation, &test).0)
        }
    };
    let (best, _) = history.iter().enumerate().fold(
        (0, f64::INFINITY),
        |(b, v), (t, h)| {
            if h.1 < v - 1e-6 { (t, h.1) } else { (b, v) }
        },
    );
    for (t, (reg, v, te)) in history.iter().enumerate() {
        println!("epoch {:2}  λ {reg:.4}  validation {v:.4}  test {te:.4}", t + 1);
    }
    // The final model: the run's λ of each epoch, replayed on all the
    // training ratings, for the best epoch's count.
    let regs: Vec<f32> = history.iter().map(|h| h.0).collect();
    let (_, model) = train(&all, rows, best + 1, lr, |t, _| regs[t], &test, &test);
    println!(
        "kept epoch {} (validation {:.4}, λ then {:.4}); final model on all the training ratings: test RMSE {:.4}  ({:.1} s)",
        best + 1,
        history[best].1,
        regs[best],
        model.rmse(&test),
        started.elapsed().as_secs_f64()
    );
}
