//! Generated ratings with a known truth, for checking rowstage's defaults
//! on data of many shapes (BENCHMARKS.md, "Defaults chosen on the data").
//!
//! A rating of user u and item i is
//!
//! ```text
//! mean + b_u + b_i + p_u · q_i + ε,   ε ~ N(0, noise²)
//! ```
//!
//! with p_u, q_i of `rank` entries drawn from N(0, σ²) where σ² = signal /
//! rank, so that the dot product's variance is `signal`; b_u ~ N(0, 0.3²),
//! b_i ~ N(0, 0.4²). Users and items are drawn by popularity rank k with
//! weight k^(−skew) (0: uniform). The value is clamped to `[low, high]` and,
//! where `step` > 0, rounded to a multiple of `step` from `low` (1–5 stars:
//! step 1; half stars: 0.5; continuous: 0). Everything follows from `seed`.

use rand::prelude::*;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

/// The parameters of a generated set.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Truth {
    pub users: usize,
    pub items: usize,
    pub ratings: usize,
    /// Rank of the true factors.
    pub rank: usize,
    /// Variance of p_u · q_i.
    pub signal: f64,
    /// Standard deviation of the noise.
    pub noise: f64,
    pub user_skew: f64,
    pub item_skew: f64,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub step: f64,
}

impl Truth {
    /// The sets of BENCHMARKS.md's table, by name.
    pub fn named(name: &str) -> Option<Truth> {
        let base = Truth {
            users: 10_000,
            items: 5_000,
            ratings: 1_000_000,
            rank: 10,
            signal: 0.08,
            noise: 0.5,
            user_skew: 0.3,
            item_skew: 0.9,
            mean: 3.5,
            low: 1.0,
            high: 5.0,
            step: 0.0,
        };
        Some(match name {
            // The issue's set: rank-10 truth, σ 0.5, skewed items, 1M
            // ratings of 10,000 users × 5,000 items, weak factors.
            "weak-1m" => base,
            // Few ratings per row, noisy, half stars on 0.5–4: strong
            // regularisation pays.
            "sparse-halfstar" => Truth {
                users: 3_000,
                items: 6_000,
                ratings: 60_000,
                rank: 5,
                signal: 0.3,
                noise: 0.7,
                user_skew: 0.6,
                item_skew: 1.0,
                mean: 2.8,
                low: 0.5,
                high: 4.0,
                step: 0.5,
            },
            // Dense, strong rank-20 signal, little noise, 1–10 integers,
            // uniform popularity: weak regularisation pays.
            "dense-strong" => Truth {
                users: 2_000,
                items: 1_000,
                ratings: 400_000,
                rank: 20,
                signal: 2.0,
                noise: 0.3,
                user_skew: 0.0,
                item_skew: 0.0,
                mean: 5.5,
                low: 1.0,
                high: 10.0,
                step: 1.0,
            },
            // MovieLens-like stars with a middling signal, very skewed.
            "skewed-stars" => Truth {
                users: 6_000,
                items: 4_000,
                ratings: 300_000,
                rank: 8,
                signal: 0.5,
                noise: 0.8,
                user_skew: 0.8,
                item_skew: 1.1,
                mean: 3.6,
                step: 1.0,
                ..base
            },
            _ => return None,
        })
    }

    pub const NAMES: [&str; 4] = ["weak-1m", "sparse-halfstar", "dense-strong", "skewed-stars"];

    /// `(user, item, value)` triples, fully determined by `seed`.
    pub fn generate(&self, seed: u64) -> Vec<(u32, u32, f32)> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7275_7468);
        let factor = Normal::new(0.0, (self.signal / self.rank as f64).sqrt().sqrt()).unwrap();
        let p: Vec<f64> = (0..self.users * self.rank).map(|_| factor.sample(&mut rng)).collect();
        let q: Vec<f64> = (0..self.items * self.rank).map(|_| factor.sample(&mut rng)).collect();
        let bu: Vec<f64> = (0..self.users).map(|_| Normal::new(0.0, 0.3).unwrap().sample(&mut rng)).collect();
        let bi: Vec<f64> = (0..self.items).map(|_| Normal::new(0.0, 0.4).unwrap().sample(&mut rng)).collect();
        let users = popularity(self.users, self.user_skew, &mut rng);
        let items = popularity(self.items, self.item_skew, &mut rng);
        let noise = Normal::new(0.0, self.noise).unwrap();
        (0..self.ratings)
            .map(|_| {
                let (u, i) = (users.draw(&mut rng), items.draw(&mut rng));
                let dot: f64 = (0..self.rank).map(|k| p[u * self.rank + k] * q[i * self.rank + k]).sum();
                let mut v = (self.mean + bu[u] + bi[i] + dot + noise.sample(&mut rng)).clamp(self.low, self.high);
                if self.step > 0.0 {
                    v = self.low + ((v - self.low) / self.step).round() * self.step;
                }
                (u as u32, i as u32, v as f32)
            })
            .collect()
    }
}

/// Draws 0..n by a seeded permutation of popularity ranks.
struct Popularity {
    cdf: Vec<f64>,
    perm: Vec<usize>,
}

fn popularity(n: usize, skew: f64, rng: &mut StdRng) -> Popularity {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(rng);
    let mut total = 0.0;
    let cdf = (1..=n)
        .map(|k| {
            total += (k as f64).powf(-skew);
            total
        })
        .collect();
    Popularity { cdf, perm }
}

impl Popularity {
    fn draw(&self, rng: &mut StdRng) -> usize {
        let x = rng.random::<f64>() * self.cdf[self.cdf.len() - 1];
        self.perm[self.cdf.partition_point(|&c| c <= x).min(self.cdf.len() - 1)]
    }
}
