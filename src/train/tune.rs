//! Choosing a run's step size and regularisation on the data at hand
//! (docs/ARCHITECTURE.md, "Choosing on the data").
//!
//! Where the run does not fix them, the candidates ([`LR_CANDIDATES`] ×
//! [`REG_CANDIDATES`], or the values the user listed) train side by side in
//! one run, Factorbird's grid, on the training ratings less a validation
//! share carved from them, with early stopping on the validation RMSE. The
//! setting and epoch with the lowest validation RMSE are kept, and the final
//! model trains that setting for that many epochs on all the training
//! ratings. The test ratings take no part in any of it.

use rand::prelude::*;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{HyperParams, Setting};

/// Initial step sizes η₀ tried where `lr` is not given.
pub const LR_CANDIDATES: [f32; 2] = [0.02, 0.05];

/// Factor regularisations λ tried where `reg` is not given: a factor of two
/// apart, from what a dense, strong signal wants to what sparse, noisy
/// ratings want (BENCHMARKS.md, "Defaults chosen on the data").
pub const REG_CANDIDATES: [f32; 4] = [0.0125, 0.025, 0.05, 0.1];

/// The share of the training ratings held out to choose on, by default.
pub const DEFAULT_VALIDATION: f64 = 0.1;

/// Epochs without a better validation RMSE that end the choosing run, by
/// default.
pub const DEFAULT_PATIENCE: usize = 3;

/// What a run chooses on its data, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tuning {
    /// Choose η₀ among [`LR_CANDIDATES`]; `false`: the run's `lr` (or its
    /// listed values) stands.
    pub lr: bool,
    /// Choose λ among [`REG_CANDIDATES`]; `false`: the run's `reg` stands.
    pub reg: bool,
    /// The share of the training ratings held out as the validation split.
    pub validation: f64,
    /// Epochs without a better validation RMSE that end choosing; given,
    /// it also makes a run of one setting choose its epochs.
    pub patience: Option<usize>,
}

impl Default for Tuning {
    /// Both chosen, on a tenth of the training ratings.
    fn default() -> Self {
        Tuning { lr: true, reg: true, validation: DEFAULT_VALIDATION, patience: None }
    }
}

impl Tuning {
    /// Nothing chosen: the settings given train for the epochs given.
    pub const OFF: Tuning = Tuning { lr: false, reg: false, validation: DEFAULT_VALIDATION, patience: None };

    /// The settings to choose among: each listed (or the one given) η₀
    /// and λ, or the candidates of the ones chosen, lr-major.
    pub fn candidates(&self, hp: &HyperParams, grid: &[Setting]) -> Vec<Setting> {
        let given = if grid.is_empty() { vec![Setting { lr: hp.lr, reg: hp.reg }] } else { grid.to_vec() };
        let lrs = if self.lr { LR_CANDIDATES.to_vec() } else { distinct(given.iter().map(|s| s.lr)) };
        let regs = if self.reg { REG_CANDIDATES.to_vec() } else { distinct(given.iter().map(|s| s.reg)) };
        if !self.lr && !self.reg {
            return given;
        }
        lrs.iter().flat_map(|&lr| regs.iter().map(move |&reg| Setting { lr, reg })).collect()
    }

    /// Whether the run chooses anything: more than one candidate, or
    /// epochs under `patience`.
    pub fn chooses(&self, hp: &HyperParams, grid: &[Setting]) -> bool {
        self.candidates(hp, grid).len() > 1 || self.patience.is_some()
    }

    /// Refuses a validation share no split can have, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        if !(self.validation > 0.0 && self.validation <= 0.5) {
            return Err(Error::arg("`validation`", self.validation.to_string(), "must be above 0 and at most 0.5"));
        }
        if self.patience == Some(0) {
            return Err(Error::arg("`patience`", "0", "must be at least 1 epoch"));
        }
        Ok(())
    }
}

/// `values` without repeats, in their first order.
pub(crate) fn distinct<T: PartialEq>(values: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// `data` with `fraction` of its training ratings moved to its test set,
/// chosen by a shuffle seeded from `seed`: the split a run chooses on. Its
/// test ratings are the validation ratings; the id maps are `data`'s, so
/// that a model of one has the rows of the other.
pub fn validation_split(data: &Dataset, fraction: f64, seed: u64) -> Dataset {
    let n = data.train.len();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x7A11_DA7E_0000_0001));
    let held = ((n as f64) * fraction).round() as usize;
    let mut is_validation = vec![false; n];
    for &i in &order[..held.min(n)] {
        is_validation[i as usize] = true;
    }
    let (mut train, mut validation) = (Vec::with_capacity(n - held), Vec::with_capacity(held));
    for (r, v) in data.train.iter().zip(is_validation) {
        if v { validation.push(*r) } else { train.push(*r) }
    }
    Dataset {
        name: format!("{} (validation split)", data.name),
        users: data.users.clone(),
        items: data.items.clone(),
        train,
        test: validation,
        unseen_ids: Vec::new(),
    }
}

/// λ between the candidates: where a parabola through the lowest validation
/// RMSEs of three neighbouring candidates in λ (same η₀: the kept one and
/// one on each side, or its two inner neighbours where it is the first or
/// last), against log λ, is lowest, kept within the candidates' range. `None`
/// with fewer than three λ or where the points do not curve upwards.
/// `lowest[k]` is candidate `k`'s lowest validation RMSE over the epochs.
pub fn refine_reg(candidates: &[Setting], lowest: &[f64], kept: usize) -> Option<f32> {
    let lr = candidates[kept].lr;
    let mut side: Vec<(f64, f64)> = candidates
        .iter()
        .zip(lowest)
        .filter(|(c, _)| c.lr == lr && c.reg > 0.0)
        .map(|(c, &v)| ((c.reg as f64).ln(), v))
        .collect();
    side.sort_by(|a, b| a.0.total_cmp(&b.0));
    let at = side.iter().position(|p| p.0 == (candidates[kept].reg as f64).ln())?;
    if side.len() < 3 {
        return None;
    }
    let first = at.saturating_sub(1).min(side.len() - 3);
    let ((x0, y0), (x1, y1), (x2, y2)) = (side[first], side[first + 1], side[first + 2]);
    if !(y0.is_finite() && y1.is_finite() && y2.is_finite()) {
        return None;
    }
    // The vertex of the parabola through the three points.
    let d = (x0 - x1) * (x0 - x2) * (x1 - x2);
    let a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / d;
    let b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / d;
    if a.is_nan() || a <= 0.0 {
        return None;
    }
    let x = (-b / (2.0 * a)).clamp(x0, x2);
    // Three significant digits: a value a user can type back.
    let reg = x.exp();
    let scale = 10f64.powi(2 - reg.log10().floor() as i32);
    Some(((reg * scale).round() / scale) as f32)
}

/// What choosing kept, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// The setting kept.
    pub lr: f32,
    pub reg: f32,
    /// Where `reg` lies between the candidates ([`refine_reg`]): the
    /// candidate it was refined from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refined_from: Option<f32>,
    /// Epochs the final model trains: the choosing run's best epoch
    /// (`final_epochs` in the report, whose `epochs` are the choosing
    /// run's).
    #[serde(rename = "final_epochs")]
    pub epochs: usize,
    /// The kept setting's validation RMSE at that epoch.
    pub validation_rmse: f64,
    /// The settings tried, side by side (`settings` in the report, whose
    /// `candidates` are their figures, best first).
    #[serde(rename = "settings")]
    pub candidates: Vec<Setting>,
    pub validation_ratings: usize,
    /// Training ratings the candidates trained on.
    pub choosing_ratings: usize,
    /// Wall seconds of the choosing run, evaluations included.
    pub seconds: f64,
    /// Why it stopped: `early` (no better validation RMSE for `patience`
    /// epochs), `epochs` (the most asked for), or `interrupted` (a signal
    /// or a cancel: the run ended while choosing).
    pub stopped: &'static str,
    pub patience: usize,
}

impl Choice {
    /// One line for the user: what was chosen, how, at what cost.
    pub fn line(&self) -> String {
        format!(
            "chose lr {} reg {}{} and {} epoch(s): the lowest validation RMSE ({:.4}) of {} setting(s) trained side \
             by side on {} of the training ratings, {} held out (stopped: {}), in {:.2} s; the model now trains them \
             on all the training ratings",
            self.lr,
            self.reg,
            self.refined_from.map_or(String::new(), |r| format!(
                " (refined from the candidate {r}: where a parabola through its and its neighbours' validation \
                 RMSEs is lowest)"
            )),
            self.epochs,
            self.validation_rmse,
            self.candidates.len(),
            self.choosing_ratings,
            self.validation_ratings,
            match self.stopped {
                "early" => format!("no better validation RMSE for {} epochs", self.patience),
                "interrupted" => "interrupted".to_string(),
                _ => "the most epochs asked for".to_string(),
            },
            self.seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataSource, SyntheticSpec};

    #[test]
    fn given_values_stand_and_the_rest_are_chosen() {
        let hp = HyperParams { lr: 0.03, reg: 0.1, ..HyperParams::DEFAULT };
        let all = Tuning::default().candidates(&hp, &[]);
        assert_eq!(all.len(), LR_CANDIDATES.len() * REG_CANDIDATES.len());
        let reg_only = Tuning { lr: false, ..Tuning::default() }.candidates(&hp, &[]);
        assert!(reg_only.iter().all(|s| s.lr == 0.03) && reg_only.len() == REG_CANDIDATES.len());
        let listed = [Setting { lr: 0.01, reg: 0.1 }, Setting { lr: 0.02, reg: 0.1 }];
        let lr_listed = Tuning { lr: false, ..Tuning::default() }.candidates(&hp, &listed);
        assert_eq!(lr_listed.len(), 2 * REG_CANDIDATES.len());
        assert_eq!(Tuning::OFF.candidates(&hp, &listed), listed);
        assert!(!Tuning::OFF.chooses(&hp, &[]));
        assert!(Tuning { patience: Some(2), ..Tuning::OFF }.chooses(&hp, &[]));
        assert!(Tuning { validation: 0.0, ..Tuning::default() }.validate().is_err());
    }

    #[test]
    fn reg_is_refined_between_candidates_only_inside_them() {
        let c: Vec<Setting> = [0.0125f32, 0.025, 0.05, 0.1].iter().map(|&reg| Setting { lr: 0.05, reg }).collect();
        // Lowest between 0.05 and 0.1, nearer 0.1.
        let r = refine_reg(&c, &[0.90, 0.8183, 0.7981, 0.7975], 3).unwrap();
        assert!(r > 0.05 && r < 0.1, "the last candidate, refined inwards: {r}");
        // Still falling at the last candidate: no extrapolation past it.
        assert_eq!(refine_reg(&c, &[0.90, 0.85, 0.82, 0.80], 3), Some(0.1));
        // Symmetric about the kept one: the kept one.
        assert_eq!(refine_reg(&c, &[0.9, 0.81, 0.80, 0.81], 2), Some(0.05));
        // A straight line has no vertex.
        assert_eq!(refine_reg(&c, &[0.9, 0.82, 0.81, 0.80], 2), None);
    }

    #[test]
    fn the_validation_split_comes_from_the_training_ratings_alone() {
        let source = DataSource {
            synthetic: SyntheticSpec { users: 50, items: 40, ratings: 1001, zipf: None },
            ..Default::default()
        };
        let data = source.load(3).unwrap().dataset;
        let v = validation_split(&data, 0.1, 3);
        assert_eq!(v.train.len() + v.test.len(), data.train.len());
        assert_eq!(v.test.len(), (data.train.len() as f64 * 0.1).round() as usize);
        let mut all: Vec<_> = v.train.iter().chain(&v.test).map(|r| (r.user, r.item, r.value.to_bits())).collect();
        let mut train: Vec<_> = data.train.iter().map(|r| (r.user, r.item, r.value.to_bits())).collect();
        all.sort_unstable();
        train.sort_unstable();
        assert_eq!(all, train, "the split's ratings are the training ratings");
        // Another test set changes nothing of it.
        let other = Dataset { test: Vec::new(), ..data.clone() };
        assert_eq!(validation_split(&other, 0.1, 3).test, v.test);
        assert_ne!(validation_split(&data, 0.1, 4).test, v.test, "the seed chooses the split");
    }
}
