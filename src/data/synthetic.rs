//! The built-in synthetic dataset: Zipf-skewed user and item popularity, a
//! low-rank ground truth plus noise, ratings on the 1..5 scale, fully
//! determined by the seed.

use rand::prelude::*;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal, Zipf};

use super::{IdMap, Rating, RatingSet};
use crate::error::{Error, Result};

/// What to generate: `--synthetic USERS,ITEMS,RATINGS` with `--zipf`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SyntheticSpec {
    pub users: usize,
    pub items: usize,
    pub ratings: usize,
    /// Zipf exponent of both popularity laws; 0 gives uniform (i.i.d.) draws.
    pub zipf: f64,
}

/// Rank of the hidden ground-truth model.
const TRUE_RANK: usize = 8;

impl SyntheticSpec {
    /// The default dataset of `rowstage train`: small enough for a run on a
    /// software rasteriser to finish in seconds, skewed like real data.
    pub const DEFAULT: SyntheticSpec = SyntheticSpec { users: 6_000, items: 3_000, ratings: 300_000, zipf: 1.05 };

    /// Parses `USERS,ITEMS,RATINGS` (underscores and k/M suffixes allowed).
    pub fn parse(s: &str, zipf: f64) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let bad = |why: &str| Error::arg("--synthetic", s, why);
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
        if spec.users > u32::MAX as usize / 2 || spec.items > u32::MAX as usize / 2 {
            return Err(bad("too many users or items for 32-bit ids"));
        }
        if !(zipf.is_finite() && zipf >= 0.0) {
            return Err(Error::arg("--zipf", zipf.to_string(), "must be a finite number ≥ 0"));
        }
        Ok(spec)
    }

    /// A short name for reports, e.g. `synthetic-6000x3000-300000-zipf1.05`.
    pub fn name(&self) -> String {
        format!("synthetic-{}x{}-{}-zipf{}", self.users, self.items, self.ratings, self.zipf)
    }
}

/// Draws ids 0..n with Zipf(s) popularity; the popularity rank is a seeded
/// permutation so that popular rows are spread over the id range.
struct Popularity {
    zipf: Option<Zipf<f64>>,
    n: usize,
    perm: Vec<u32>,
}

impl Popularity {
    fn new(n: usize, s: f64, rng: &mut StdRng) -> Self {
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.shuffle(rng);
        let zipf = (s > 0.0).then(|| Zipf::new(n as f64, s).expect("n ≥ 1 and s > 0"));
        Popularity { zipf, n, perm }
    }

    fn draw(&self, rng: &mut StdRng) -> u32 {
        let rank = match &self.zipf {
            Some(z) => (z.sample(rng) as usize - 1).min(self.n - 1),
            None => rng.random_range(0..self.n),
        };
        self.perm[rank]
    }
}

/// Generates the ratings of `spec`, fully determined by `seed`.
pub fn generate(spec: &SyntheticSpec, seed: u64) -> RatingSet {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5157_4E7E_71C0_0000);
    let users_pop = Popularity::new(spec.users, spec.zipf, &mut rng);
    let items_pop = Popularity::new(spec.items, spec.zipf, &mut rng);
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
        let spec = SyntheticSpec::parse("500,300,20k", 1.05).unwrap();
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
        let u = generate(&SyntheticSpec { zipf: 0.0, ..spec }, 3);
        let mut counts = vec![0usize; spec.items];
        for r in &u.ratings {
            counts[r.item as usize] += 1;
        }
        assert!(*counts.iter().max().unwrap() < 3 * spec.ratings / spec.items);
    }

    #[test]
    fn parse_errors_name_the_value() {
        for bad in ["10,20", "a,b,c", "0,5,5", "1,2,3,4", "-1,2,3"] {
            let e = SyntheticSpec::parse(bad, 1.0).unwrap_err().to_string();
            assert!(e.contains("--synthetic") && e.contains(bad), "{e}");
        }
        assert!(SyntheticSpec::parse("1,2,3", f64::NAN).is_err());
    }
}
