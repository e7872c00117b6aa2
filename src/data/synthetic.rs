//! The built-in synthetic dataset: skewed user and item popularity, a
//! low-rank ground truth plus noise, ratings on the 1..5 scale, fully
//! determined by the seed.
//!
//! The default popularity is shaped like MovieLens 100K's: rank k of n rows
//! is drawn with weight (k + k₀)^(−s) (Zipf–Mandelbrot), users with s = 0.44,
//! k₀ = 0 and items with s = 0.8, k₀ = 27, fitted so that at the default size
//! (4000 users, 2000 items) the shares of ratings held by the top row, the
//! top 1% and the top 10% of each side are within 1.4× of MovieLens 100K's
//! (users 0.74%, 5.1%, 31.9%; items 0.58%, 7.6%, 42.7%). `--zipf S` gives the
//! earlier law instead: pure Zipf(S) on both sides (S = 1.05 put 13% of all
//! ratings on one item; 0 is uniform).

use rand::prelude::*;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal, Zipf};

use super::{IdMap, Rating, RatingSet};
use crate::error::{Error, Result};

/// What to generate: `--synthetic USERS,ITEMS,RATINGS` with `--zipf`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyntheticSpec {
    pub users: usize,
    pub items: usize,
    pub ratings: usize,
    /// The exponent of a pure Zipf law on both sides (0: uniform, i.i.d.
    /// draws); `None`: the MovieLens-shaped law (module docs).
    pub zipf: Option<f64>,
}

/// The MovieLens-shaped law's (s, k₀) for users and for items (module docs).
const USER_LAW: (f64, f64) = (0.44, 0.0);
const ITEM_LAW: (f64, f64) = (0.8, 27.0);

/// Rank of the hidden ground-truth model.
const TRUE_RANK: usize = 8;

impl SyntheticSpec {
    /// The default dataset of `rowstage train`: small enough for a run on a
    /// software rasteriser to finish in seconds, skewed like real data.
    pub const DEFAULT: SyntheticSpec = SyntheticSpec { users: 4_000, items: 2_000, ratings: 200_000, zipf: None };

    /// Parses `USERS,ITEMS,RATINGS` (underscores and k/M suffixes allowed).
    pub fn parse(s: &str, zipf: Option<f64>) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let bad = |why: &str| Error::arg("`synthetic`", s, why);
        if parts.len() != 3 {
            return Err(bad("expected USERS,ITEMS,RATINGS, e.g. 6000,3000,300000"));
        }
        let num = |p: &str| -> Result<usize> {
            let p = p.replace('_', "");
            let (digits, mult) = match p.chars().last() {
                Some('k' | 'K') => (&p[..p.len() - 1], 1_000),
                Some('m' | 'M') => (&p[..p.len() - 1], 1_000_000),
                _ => (&p[..], 1),
            };
            digits
                .parse::<usize>()
                .ok()
                .and_then(|v| v.checked_mul(mult))
                .filter(|&v| v > 0)
                .ok_or_else(|| bad(&format!("{p:?} is not a positive whole number")))
        };
        let spec = SyntheticSpec { users: num(parts[0])?, items: num(parts[1])?, ratings: num(parts[2])?, zipf };
        spec.check()?;
        Ok(spec)
    }

    /// Refuses sizes and laws the generator cannot draw: no side empty or
    /// past 32-bit ids, no ratings, a Zipf exponent that is not a finite
    /// number ≥ 0.
    pub fn check(&self) -> Result<()> {
        let sizes = || format!("{},{},{}", self.users, self.items, self.ratings);
        if self.users == 0 || self.items == 0 || self.ratings == 0 {
            return Err(Error::arg("`synthetic`", sizes(), "every size must be a positive whole number"));
        }
        if self.users > u32::MAX as usize / 2 || self.items > u32::MAX as usize / 2 {
            return Err(Error::arg("`synthetic`", sizes(), "too many users or items for 32-bit ids"));
        }
        if self.ratings > u32::MAX as usize {
            return Err(Error::arg("`synthetic`", sizes(), format!("at most {} ratings (32-bit positions)", u32::MAX)));
        }
        if let Some(z) = self.zipf.filter(|z| !(z.is_finite() && *z >= 0.0)) {
            return Err(Error::arg("`zipf`", z.to_string(), "must be a finite number ≥ 0"));
        }
        Ok(())
    }

    /// A short name for reports: `synthetic-4000x2000-200000`, with
    /// `-zipf1.05` under the pure Zipf law.
    pub fn name(&self) -> String {
        let law = self.zipf.map_or(String::new(), |z| format!("-zipf{z}"));
        format!("synthetic-{}x{}-{}{law}", self.users, self.items, self.ratings)
    }
}

/// Draws ids 0..n by popularity rank; the rank is a seeded permutation so
/// that popular rows are spread over the id range.
struct Popularity {
    law: Law,
    n: usize,
    perm: Vec<u32>,
}

enum Law {
    Uniform,
    Zipf(Zipf<f64>),
    /// The cumulative weights of ranks 1..=n, (k + k₀)^(−s).
    Mandelbrot(Vec<f64>),
}

impl Popularity {
    fn new(n: usize, zipf: Option<f64>, (s, k0): (f64, f64), rng: &mut StdRng) -> Self {
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.shuffle(rng);
        let law = match zipf {
            Some(z) if z > 0.0 => Law::Zipf(Zipf::new(n as f64, z).expect("n ≥ 1 and s > 0")),
            Some(_) => Law::Uniform,
            None => {
                let mut total = 0.0;
                Law::Mandelbrot(
                    (1..=n)
                        .map(|k| {
                            total += (k as f64 + k0).powf(-s);
                            total
                        })
                        .collect(),
                )
            }
        };
        Popularity { law, n, perm }
    }

    fn draw(&self, rng: &mut StdRng) -> u32 {
        let rank = match &self.law {
            Law::Zipf(z) => (z.sample(rng) as usize - 1).min(self.n - 1),
            Law::Uniform => rng.random_range(0..self.n),
            Law::Mandelbrot(cdf) => {
                let x = rng.random::<f64>() * cdf[self.n - 1];
                cdf.partition_point(|&c| c <= x).min(self.n - 1)
            }
        };
        self.perm[rank]
    }
}

/// Generates the ratings of `spec`, fully determined by `seed`.
pub fn generate(spec: &SyntheticSpec, seed: u64) -> RatingSet {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5157_4E7E_71C0_0000);
    let users_pop = Popularity::new(spec.users, spec.zipf, USER_LAW, &mut rng);
    let items_pop = Popularity::new(spec.items, spec.zipf, ITEM_LAW, &mut rng);
    let factor = Normal::new(0.0f32, (0.6 / (TRUE_RANK as f32).sqrt()).sqrt()).unwrap();
    let user_bias = Normal::new(0.0f32, 0.35).unwrap();
    let item_bias = Normal::new(0.0f32, 0.5).unwrap();
    let noise = Normal::new(0.0f32, 0.6).unwrap();
    let p: Vec<f32> = (0..spec.users * TRUE_RANK).map(|_| factor.sample(&mut rng)).collect();
    let q: Vec<f32> = (0..spec.items * TRUE_RANK).map(|_| factor.sample(&mut rng)).collect();
    let bu: Vec<f32> = (0..spec.users).map(|_| user_bias.sample(&mut rng)).collect();
    let bi: Vec<f32> = (0..spec.items).map(|_| item_bias.sample(&mut rng)).collect();
    let mean = 3.5f32;

    let ratings = (0..spec.ratings)
        .map(|_| {
            let u = users_pop.draw(&mut rng) as usize;
            let i = items_pop.draw(&mut rng) as usize;
            let dot: f32 =
                p[u * TRUE_RANK..][..TRUE_RANK].iter().zip(&q[i * TRUE_RANK..][..TRUE_RANK]).map(|(a, b)| a * b).sum();
            let v = (mean + bu[u] + bi[i] + dot + noise.sample(&mut rng)).round().clamp(1.0, 5.0);
            Rating { user: u as u32, item: i as u32, value: v }
        })
        .collect();
    // External ids are the generator's ids as strings, so that a saved model's
    // id maps name them.
    RatingSet {
        users: IdMap::from_names((0..spec.users).map(|u| format!("u{u}")).collect()),
        items: IdMap::from_names((0..spec.items).map(|i| format!("i{i}")).collect()),
        ratings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_skewed() {
        let spec = SyntheticSpec::parse("500,300,20k", Some(1.05)).unwrap();
        assert_eq!(spec.ratings, 20_000);
        let a = generate(&spec, 3);
        let b = generate(&spec, 3);
        assert_eq!(a.ratings, b.ratings);
        assert_ne!(a.ratings, generate(&spec, 4).ratings);
        assert!(a.ratings.iter().all(|r| (1.0..=5.0).contains(&r.value) && r.value.fract() == 0.0));
        // Zipf: the most popular item takes far more than its uniform share.
        let mut counts = vec![0usize; spec.items];
        for r in &a.ratings {
            counts[r.item as usize] += 1;
        }
        let top = *counts.iter().max().unwrap();
        assert!(top > 20 * spec.ratings / spec.items, "top item has {top} ratings");
        // Uniform draws are not skewed.
        let u = generate(&SyntheticSpec { zipf: Some(0.0), ..spec }, 3);
        let mut counts = vec![0usize; spec.items];
        for r in &u.ratings {
            counts[r.item as usize] += 1;
        }
        assert!(*counts.iter().max().unwrap() < 3 * spec.ratings / spec.items);
    }

    #[test]
    fn parse_errors_name_the_value() {
        for bad in ["10,20", "a,b,c", "0,5,5", "1,2,3,4", "-1,2,3"] {
            let e = SyntheticSpec::parse(bad, None).unwrap_err().to_string();
            assert!(e.contains("`synthetic`") && e.contains(bad), "{e}");
        }
        assert!(SyntheticSpec::parse("1,2,3", Some(f64::NAN)).is_err());
    }

    /// Shares of all ratings held by the top row, the top 1% and the top
    /// 10% of `counts`' rows.
    fn shares(mut counts: Vec<usize>) -> [f64; 3] {
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let n = counts.len() as f64;
        let total: usize = counts.iter().sum();
        let top = |f: f64| counts[..((n * f).round() as usize).max(1)].iter().sum::<usize>() as f64 / total as f64;
        [counts[0] as f64 / total as f64, top(0.01), top(0.1)]
    }

    #[test]
    fn the_default_popularity_is_shaped_like_movielens_100k() {
        let spec = SyntheticSpec::DEFAULT;
        let set = generate(&spec, 42);
        let (mut users, mut items) = (vec![0; spec.users], vec![0; spec.items]);
        for r in &set.ratings {
            users[r.user as usize] += 1;
            items[r.item as usize] += 1;
        }
        // MovieLens 100K's shares (README): top row, top 1%, top 10%.
        for (side, got, want) in
            [("users", shares(users), [0.0074, 0.051, 0.319]), ("items", shares(items), [0.0058, 0.076, 0.427])]
        {
            for (g, w) in got.iter().zip(want) {
                let ratio = g / w;
                assert!((1.0 / 1.5..=1.5).contains(&ratio), "{side}: {got:?} against MovieLens 100K's {want:?}");
            }
        }
    }
}
