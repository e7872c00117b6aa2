//! Biased matrix factorization (docs/ARCHITECTURE.md, "The model"): the host tables, the SGD step
//! every CPU path shares, predictions and metrics.
//!
//! Row layout: `k` factors, then the bias, padded with zeros to a multiple of
//! four floats so that the GPU reads a row as `vec4`s. Users and items use the
//! same layout, so one slot of the device slab fits a row of either table.

mod compare;
mod io;
pub mod serve;

pub use compare::{TableDiff, compare};
pub(crate) use io::sync_folder;
pub use io::{
    FileKind, check_distinct, check_output, load_model, load_tables, parse_tables, save_model, save_tables,
    tables_bytes, write_atomically,
};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, IdMap, Rating, UNKNOWN};

/// Training hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HyperParams {
    /// Number of latent factors `k`.
    pub rank: usize,
    /// Initial learning rate η₀.
    pub lr: f32,
    /// L2 regularisation λ of the factors.
    pub reg: f32,
    /// L2 regularisation λ_b of the biases.
    pub bias_reg: f32,
    /// Schedule decay β: η_t = η₀ / (1 + β t^1.5).
    pub decay: f32,
    /// Standard deviation of the initial factors.
    pub init_std: f32,
}

impl HyperParams {
    /// Defaults for explicit 0.5–5 star ratings at rank 32, tuned on
    /// MovieLens 100K with [`DEFAULT_EPOCHS`] epochs (docs/ARCHITECTURE.md,
    /// "The model"; BENCHMARKS.md): η₀ 0.05 decaying as 1 / (1 + 0.05 t^1.5),
    /// λ 0.08 on the factors.
    pub const DEFAULT: HyperParams =
        HyperParams { rank: 32, lr: 0.05, reg: 0.08, bias_reg: 0.01, decay: 0.05, init_std: 0.05 };
}

/// Epochs of a run when not given.
pub const DEFAULT_EPOCHS: usize = 30;

impl Default for HyperParams {
    fn default() -> Self {
        HyperParams::DEFAULT
    }
}

impl HyperParams {
    /// The learning rate of epoch `t` (0-based).
    pub fn lr_at(&self, epoch: usize) -> f32 {
        self.lr / (1.0 + self.decay * (epoch as f32).powf(1.5))
    }

    /// The learning rate and regularisation of epoch `epoch` for each of
    /// `settings`, on this schedule: exactly what a run of that setting alone
    /// would use.
    pub fn rates_at(&self, settings: &[Setting], epoch: usize) -> Vec<Rate> {
        settings.iter().map(|s| Rate { lr: HyperParams { lr: s.lr, ..*self }.lr_at(epoch), reg: s.reg }).collect()
    }
}

/// One setting of a grid search: the initial learning rate η₀ and the factor
/// regularisation λ (the other hyperparameters are shared).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub lr: f32,
    pub reg: f32,
}

/// What one model of a run trains an epoch with: η_t and λ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub lr: f32,
    pub reg: f32,
}

/// The largest rank trained or read.
pub const MAX_RANK: usize = 1024;

/// The length in floats of one row: `rank` factors plus a bias, padded to a
/// multiple of 4.
pub fn row_stride(rank: usize) -> usize {
    (rank + 1).next_multiple_of(4)
}

/// A trained or training model: the authoritative host tables.
///
/// A grid search trains `copies` models side by side: each table row then
/// holds every model's copy of that row, one [`row_stride`] after another, so
/// that one staged row (one slot of the device slab) serves all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub rank: usize,
    /// Models side by side in each row (1 outside a grid search).
    pub copies: usize,
    /// Floats per row: `copies ×` [`row_stride`]`(rank)`.
    pub stride: usize,
    /// μ, the mean training rating.
    pub mean: f32,
    /// Predictions are clamped to this range (the training ratings' range).
    pub min_rating: f32,
    pub max_rating: f32,
    /// `users × stride` floats.
    pub users: Vec<f32>,
    /// `items × stride` floats.
    pub items: Vec<f32>,
    pub user_ids: IdMap,
    pub item_ids: IdMap,
}

impl Model {
    /// A fresh model for `data`: factors drawn from N(0, init_std²) with `seed`,
    /// biases and padding zero.
    pub fn init(data: &Dataset, hp: &HyperParams, seed: u64) -> Self {
        let stride = row_stride(hp.rank);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x1A17_F4C7_0000_0002);
        let normal = Normal::new(0.0f32, hp.init_std.max(0.0)).expect("finite std");
        let mut table = |n: usize| {
            let mut t = vec![0.0f32; n * stride];
            for row in t.chunks_exact_mut(stride) {
                for x in &mut row[..hp.rank] {
                    *x = normal.sample(&mut rng);
                }
            }
            t
        };
        let users = table(data.users.len());
        let items = table(data.items.len());
        let (min_rating, max_rating) = data.range();
        Model {
            rank: hp.rank,
            copies: 1,
            stride,
            mean: data.mean(),
            min_rating,
            max_rating,
            users,
            items,
            user_ids: data.users.clone(),
            item_ids: data.items.clone(),
        }
    }

    /// `copies` models initialised alike, side by side (see [`Model`]): model
    /// `g` starts exactly as `Model::init(data, hp, seed)` does.
    pub fn init_copies(data: &Dataset, hp: &HyperParams, seed: u64, copies: usize) -> Self {
        Model::init(data, hp, seed).widen(copies)
    }

    /// This single model repeated `copies` times in every row.
    pub fn widen(self, copies: usize) -> Self {
        assert_eq!(self.copies, 1, "widen a single model");
        if copies == 1 {
            return self;
        }
        let s = self.stride;
        let widen = |t: &[f32]| -> Vec<f32> { t.chunks_exact(s).flat_map(|row| row.repeat(copies)).collect() };
        Model { users: widen(&self.users), items: widen(&self.items), copies, stride: s * copies, ..self }
    }

    /// Model `g` of the ones side by side, alone.
    pub fn copy(&self, g: usize) -> Model {
        assert!(g < self.copies, "model {g} of {}", self.copies);
        let sub = row_stride(self.rank);
        let pick = |t: &[f32]| -> Vec<f32> {
            t.chunks_exact(self.stride).flat_map(|row| row[g * sub..(g + 1) * sub].iter().copied()).collect()
        };
        Model {
            users: pick(&self.users),
            items: pick(&self.items),
            copies: 1,
            stride: sub,
            user_ids: self.user_ids.clone(),
            item_ids: self.item_ids.clone(),
            ..*self
        }
    }

    /// `other`'s rows after this model's (a sharded checkpoint's shares put
    /// back together): both must be the same shape of model.
    pub fn append(&mut self, other: &Model) -> std::result::Result<(), String> {
        let shape =
            |m: &Model| (m.rank, m.copies, m.stride, m.mean.to_bits(), m.min_rating.to_bits(), m.max_rating.to_bits());
        if shape(self) != shape(other) {
            return Err("its tables are another shape of model (rank, copies, mean or rating range)".into());
        }
        self.users.extend_from_slice(&other.users);
        self.items.extend_from_slice(&other.items);
        let join = |a: &IdMap, b: &IdMap| IdMap::from_names(a.names().iter().chain(b.names()).cloned().collect());
        self.user_ids = join(&self.user_ids, &other.user_ids);
        self.item_ids = join(&self.item_ids, &other.item_ids);
        if !self.user_ids.is_distinct() || !self.item_ids.is_distinct() {
            return Err("an id is in two shares".into());
        }
        Ok(())
    }

    pub fn n_users(&self) -> usize {
        self.users.len() / self.stride
    }

    pub fn n_items(&self) -> usize {
        self.items.len() / self.stride
    }

    pub fn user_row(&self, u: u32) -> &[f32] {
        &self.users[u as usize * self.stride..][..self.stride]
    }

    pub fn item_row(&self, i: u32) -> &[f32] {
        &self.items[i as usize * self.stride..][..self.stride]
    }

    pub fn user_row_mut(&mut self, u: u32) -> &mut [f32] {
        &mut self.users[u as usize * self.stride..][..self.stride]
    }

    pub fn item_row_mut(&mut self, i: u32) -> &mut [f32] {
        &mut self.items[i as usize * self.stride..][..self.stride]
    }

    /// The clamped prediction; an [`UNKNOWN`] side contributes neither bias nor
    /// factors.
    pub fn predict(&self, user: u32, item: u32) -> f32 {
        self.predict_with(0, user, item)
    }

    /// [`Model::predict`] of model `g` of the ones side by side.
    pub fn predict_with(&self, g: usize, user: u32, item: u32) -> f32 {
        let sub = row_stride(self.rank);
        let pu = (user != UNKNOWN).then(|| &self.user_row(user)[g * sub..][..sub]);
        let qi = (item != UNKNOWN).then(|| &self.item_row(item)[g * sub..][..sub]);
        self.score(pu, qi)
    }

    /// The clamped prediction from one model copy's user row and item row
    /// (`None`: an unknown side, which contributes neither bias nor factors).
    fn score(&self, pu: Option<&[f32]>, qi: Option<&[f32]>) -> f32 {
        let mut r = self.mean;
        let k = self.rank;
        if let Some(p) = pu {
            r += p[k];
        }
        if let Some(q) = qi {
            r += q[k];
        }
        if let (Some(p), Some(q)) = (pu, qi) {
            r += dot(&p[..k], &q[..k]);
        }
        r.clamp(self.min_rating, self.max_rating)
    }

    /// RMSE and MAE of the clamped predictions on `ratings` (of the first
    /// model, the only one outside a grid search).
    pub fn evaluate(&self, ratings: &[Rating]) -> Metrics {
        self.evaluate_with(0, ratings)
    }

    /// [`Model::evaluate`] of model `g` of the ones side by side.
    pub fn evaluate_with(&self, g: usize, ratings: &[Rating]) -> Metrics {
        let mut m = MetricsAcc::default();
        for r in ratings {
            m.add(r.value - self.predict_with(g, r.user, r.item));
        }
        m.finish()
    }

    /// [`Model::evaluate`] of every model side by side.
    pub fn evaluate_all(&self, ratings: &[Rating]) -> Vec<Metrics> {
        (0..self.copies).map(|g| self.evaluate_with(g, ratings)).collect()
    }
}

/// Dot product summed the way the WGSL kernels sum it: four lane accumulators
/// over `vec4` chunks, then `x + y + z + w`. Keeping the same order keeps the
/// CPU reference and the GPU within a few ulps of each other.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 4];
    let (ca, ra) = a.as_chunks::<4>();
    let (cb, rb) = b.as_chunks::<4>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    acc[0] + acc[1] + acc[2] + acc[3]
}

/// The constants of one SGD update.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub rank: usize,
    pub mean: f32,
    pub lr: f32,
    pub reg: f32,
    pub bias_reg: f32,
}

impl Step {
    /// One per-sample SGD update (docs/ARCHITECTURE.md, "The model") on rows `p` (user) and `q`
    /// (item), both from the old values. Returns the error before the update.
    ///
    /// The common ranks run a copy compiled for that rank ([`Step::apply_fixed`]):
    /// the loops unroll into whole `vec4` steps, with no remainder and no
    /// bounds checks inside them. It computes every value in the same order as the
    /// general path ([`Step::apply_any`]), so the results are the same bits.
    #[inline]
    pub fn apply(&self, p: &mut [f32], q: &mut [f32], rating: f32) -> f32 {
        match self.rank {
            8 => self.apply_fixed::<8>(p, q, rating),
            16 => self.apply_fixed::<16>(p, q, rating),
            32 => self.apply_fixed::<32>(p, q, rating),
            64 => self.apply_fixed::<64>(p, q, rating),
            128 => self.apply_fixed::<128>(p, q, rating),
            _ => self.apply_any(p, q, rating),
        }
    }

    /// [`Step::apply`] for any rank.
    #[inline]
    pub fn apply_any(&self, p: &mut [f32], q: &mut [f32], rating: f32) -> f32 {
        let k = self.rank;
        let (p, q) = (&mut p[..k + 1], &mut q[..k + 1]);
        let e = rating - (self.mean + p[k] + q[k] + dot(&p[..k], &q[..k]));
        let (lr, reg, breg) = (self.lr, self.reg, self.bias_reg);
        p[k] += lr * (e - breg * p[k]);
        q[k] += lr * (e - breg * q[k]);
        for (pu, qi) in p[..k].iter_mut().zip(&mut q[..k]) {
            let (a, b) = (*pu, *qi);
            *pu = a + lr * (e * b - reg * a);
            *qi = b + lr * (e * a - reg * b);
        }
        e
    }

    /// [`Step::apply`] compiled for rank `K` (a multiple of 4, equal to
    /// `self.rank`), in SSE (every x86-64 CPU has it). Each lane does the
    /// general path's operations in its order (no fused multiply-add), so the
    /// bits agree. Written with intrinsics because LLVM turns the same loops
    /// over `[f32; 4]` lanes into 2-lane loads and shuffles, which ran 1.3×
    /// slower than the general path.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn apply_fixed<const K: usize>(&self, p: &mut [f32], q: &mut [f32], rating: f32) -> f32 {
        use std::arch::x86_64::*;
        const { assert!(K.is_multiple_of(4)) };
        debug_assert_eq!(self.rank, K);
        let (p, q) = (&mut p[..K + 1], &mut q[..K + 1]);
        let (pp, qp) = (p.as_mut_ptr(), q.as_mut_ptr());
        // SAFETY: every load and store reads or writes 4 floats at c < K,
        // inside the K + 1 that `p` and `q` hold; SSE is part of x86-64.
        let e = unsafe {
            let mut acc = _mm_setzero_ps();
            for c in (0..K).step_by(4) {
                acc = _mm_add_ps(acc, _mm_mul_ps(_mm_loadu_ps(pp.add(c)), _mm_loadu_ps(qp.add(c))));
            }
            let mut a = [0.0f32; 4];
            _mm_storeu_ps(a.as_mut_ptr(), acc);
            rating - (self.mean + p[K] + q[K] + (a[0] + a[1] + a[2] + a[3]))
        };
        let (lr, reg, breg) = (self.lr, self.reg, self.bias_reg);
        p[K] += lr * (e - breg * p[K]);
        q[K] += lr * (e - breg * q[K]);
        let (pp, qp) = (p.as_mut_ptr(), q.as_mut_ptr());
        // SAFETY: as above.
        unsafe {
            let (lr, reg, e) = (_mm_set1_ps(lr), _mm_set1_ps(reg), _mm_set1_ps(e));
            for c in (0..K).step_by(4) {
                let (a, b) = (_mm_loadu_ps(pp.add(c)), _mm_loadu_ps(qp.add(c)));
                // a + lr * (e * b - reg * a), and the same for b.
                let na = _mm_add_ps(a, _mm_mul_ps(lr, _mm_sub_ps(_mm_mul_ps(e, b), _mm_mul_ps(reg, a))));
                let nb = _mm_add_ps(b, _mm_mul_ps(lr, _mm_sub_ps(_mm_mul_ps(e, a), _mm_mul_ps(reg, b))));
                _mm_storeu_ps(pp.add(c), na);
                _mm_storeu_ps(qp.add(c), nb);
            }
        }
        e
    }

    /// Elsewhere the general path serves every rank.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    fn apply_fixed<const K: usize>(&self, p: &mut [f32], q: &mut [f32], rating: f32) -> f32 {
        self.apply_any(p, q, rating)
    }
}

/// RMSE and MAE.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub rmse: f64,
    pub mae: f64,
    pub count: u64,
}

/// Accumulates errors in f64.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsAcc {
    pub sq: f64,
    pub abs: f64,
    pub count: u64,
}

impl MetricsAcc {
    #[inline]
    pub fn add(&mut self, e: f32) {
        let e = e as f64;
        self.sq += e * e;
        self.abs += e.abs();
        self.count += 1;
    }

    pub fn merge(&mut self, o: &MetricsAcc) {
        self.sq += o.sq;
        self.abs += o.abs;
        self.count += o.count;
    }

    /// The RMSE and MAE; NaN for both when nothing was added (no ratings to
    /// score: reports show that as null or "no test ratings", never 0).
    pub fn finish(&self) -> Metrics {
        if self.count == 0 {
            return Metrics { rmse: f64::NAN, mae: f64::NAN, count: 0 };
        }
        let n = self.count as f64;
        Metrics { rmse: (self.sq / n).sqrt(), mae: self.abs / n, count: self.count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_pads_to_vec4() {
        assert_eq!(row_stride(32), 36);
        assert_eq!(row_stride(3), 4);
        assert_eq!(row_stride(1), 4);
        assert_eq!(row_stride(5), 8);
    }

    #[test]
    fn step_moves_prediction_towards_rating() {
        let step = Step { rank: 3, mean: 3.0, lr: 0.1, reg: 0.0, bias_reg: 0.0 };
        let mut p = vec![0.1, 0.2, 0.3, 0.0];
        let mut q = vec![0.3, 0.2, 0.1, 0.0];
        let e0 = step.apply(&mut p, &mut q, 5.0);
        // Biases moved by lr * e.
        assert!((p[3] - 0.1 * e0).abs() < 1e-6 && (q[3] - 0.1 * e0).abs() < 1e-6);
        let e1 = step.apply(&mut p, &mut q, 5.0);
        assert!(e1.abs() < e0.abs());
    }

    #[test]
    fn the_ranks_compiled_apart_give_the_general_paths_bits() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(5);
        for rank in [8, 16, 32, 64, 128] {
            let step = Step { rank, mean: 3.1, lr: 0.03, reg: 0.05, bias_reg: 0.02 };
            // Rows longer than rank + 1, as in a padded or widened table.
            let row = |rng: &mut StdRng| -> Vec<f32> { (0..rank + 3).map(|_| rng.random_range(-0.5..0.5)).collect() };
            let (mut p, mut q) = (row(&mut rng), row(&mut rng));
            let (mut p2, mut q2) = (p.clone(), q.clone());
            for rating in [1.0, 5.0, 3.5, 2.0] {
                let e = step.apply(&mut p, &mut q, rating);
                let e2 = step.apply_any(&mut p2, &mut q2, rating);
                assert_eq!(e.to_bits(), e2.to_bits(), "rank {rank}: error");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!((bits(&p), bits(&q)), (bits(&p2), bits(&q2)), "rank {rank}: rows");
            }
        }
    }

    #[test]
    fn schedule_decays() {
        let hp = HyperParams { lr: 0.1, decay: 1.0, ..Default::default() };
        assert_eq!(hp.lr_at(0), 0.1);
        assert!((hp.lr_at(1) - 0.05).abs() < 1e-7);
        let flat = HyperParams { decay: 0.0, ..hp };
        assert_eq!(flat.lr_at(9), 0.1);
    }

    #[test]
    fn copies_widen_and_split_back() {
        use crate::data::{Dataset, SyntheticSpec, generate};
        let spec = SyntheticSpec::parse("30,20,300", Some(1.0)).unwrap();
        let data = Dataset::split("s", generate(&spec, 1), 0.1, 1);
        let hp = HyperParams { rank: 5, ..Default::default() };
        let one = Model::init(&data, &hp, 3);
        let three = Model::init_copies(&data, &hp, 3, 3);
        assert_eq!((three.copies, three.stride), (3, 3 * one.stride));
        for g in 0..3 {
            assert_eq!(three.copy(g), one);
        }
        let t = &data.test[..];
        assert_eq!(three.evaluate_all(t), vec![one.evaluate(t); 3]);
        let rates = HyperParams { lr: 0.5, decay: 1.0, ..hp }
            .rates_at(&[Setting { lr: 0.1, reg: 0.2 }, Setting { lr: 0.4, reg: 0.0 }], 1);
        assert_eq!(rates, vec![Rate { lr: 0.05, reg: 0.2 }, Rate { lr: 0.2, reg: 0.0 }]);
    }

    #[test]
    fn dot_matches_naive_sum_closely() {
        let a: Vec<f32> = (0..33).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..33).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-5);
    }
}
