//! Ratings data: loading files in the common formats, the built-in synthetic
//! generator, train/test splits and the string-id ↔ dense-id maps.

mod load;
mod source;
mod synthetic;

pub use load::{Format, HeaderMode, LoadOptions, LoadReport, load_ratings, parse_ratings};
pub use source::{DataSource, Loaded, SourceJson};
pub use synthetic::{SyntheticSpec, generate};

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Marks a test rating whose user or item never appears in training.
pub const UNKNOWN: u32 = u32::MAX;

/// One explicit rating with dense ids: 12 bytes, the layout the GPU reads
/// (user, item, rating bits), so the training ratings upload as they are.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Zeroable, bytemuck::Pod)]
pub struct Rating {
    pub user: u32,
    pub item: u32,
    pub value: f32,
}

/// A bijection between external string ids and dense `u32` ids, in order of
/// first appearance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdMap {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl IdMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from names in dense-id order.
    pub fn from_names(names: Vec<String>) -> Self {
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect();
        IdMap { names, index }
    }

    /// The dense id of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.index.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), id);
        id
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Ratings with ids mapped, before any split.
#[derive(Debug, Clone)]
pub struct RatingSet {
    pub users: IdMap,
    pub items: IdMap,
    pub ratings: Vec<Rating>,
}

/// A training set and a held-out test set over the same dense ids.
///
/// Ids are dense over the *training* ratings only: the model has a row for
/// every user and item it was trained on. Test ratings whose user or item never
/// appears in training carry [`UNKNOWN`] on that side and are predicted from the
/// biases and the mean alone.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub users: IdMap,
    pub items: IdMap,
    pub train: Vec<Rating>,
    pub test: Vec<Rating>,
}

impl Dataset {
    /// Splits `set` with a seeded shuffle: `fraction` of the ratings go to test.
    pub fn split(name: &str, set: RatingSet, fraction: f64, seed: u64) -> Self {
        let mut order: Vec<u32> = (0..set.ratings.len() as u32).collect();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_5B11_7000_0001);
        order.shuffle(&mut rng);
        let n_test = ((set.ratings.len() as f64) * fraction).round() as usize;
        let mut is_test = vec![false; set.ratings.len()];
        for &i in &order[..n_test.min(order.len())] {
            is_test[i as usize] = true;
        }
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (r, t) in set.ratings.iter().zip(is_test) {
            if t { test.push(*r) } else { train.push(*r) }
        }
        Self::from_parts(name, &set.users, &set.items, train, &set.users, &set.items, test)
    }

    /// Uses `train` and `test` as given (for `--test PATH`).
    pub fn from_sets(name: &str, train: RatingSet, test: RatingSet) -> Self {
        Self::from_parts(name, &train.users, &train.items, train.ratings, &test.users, &test.items, test.ratings)
    }

    /// Renumbers ids densely over the training ratings and maps the test ratings
    /// onto them, marking unseen ids with [`UNKNOWN`].
    fn from_parts(
        name: &str,
        train_users: &IdMap,
        train_items: &IdMap,
        mut train: Vec<Rating>,
        test_users: &IdMap,
        test_items: &IdMap,
        mut test: Vec<Rating>,
    ) -> Self {
        let mut users = IdMap::new();
        let mut items = IdMap::new();
        for r in &mut train {
            r.user = users.intern(train_users.name(r.user));
            r.item = items.intern(train_items.name(r.item));
        }
        for r in &mut test {
            r.user = users.get(test_users.name(r.user)).unwrap_or(UNKNOWN);
            r.item = items.get(test_items.name(r.item)).unwrap_or(UNKNOWN);
        }
        Dataset { name: name.to_string(), users, items, train, test }
    }

    /// Test ratings whose user or item is not in training.
    pub fn cold_test(&self) -> usize {
        self.test.iter().filter(|r| r.user == UNKNOWN || r.item == UNKNOWN).count()
    }

    /// Mean training rating (μ of the model).
    pub fn mean(&self) -> f32 {
        let s: f64 = self.train.iter().map(|r| r.value as f64).sum();
        (s / self.train.len().max(1) as f64) as f32
    }

    /// Smallest and largest training rating: predictions are clamped to it.
    pub fn range(&self) -> (f32, f32) {
        self.train.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), r| (lo.min(r.value), hi.max(r.value)))
    }
}

impl Dataset {
    /// `ratings` (this dataset's train or test set) as tab-separated
    /// `user item rating` lines with the original ids: what a peer (LIBMF,
    /// PyTorch) reads to train on the same split. A side unseen in
    /// training ([`UNKNOWN`]) is written as `-`, an id no peer trained.
    pub fn to_tsv(&self, ratings: &[Rating]) -> String {
        use std::fmt::Write;
        let name = |map: &IdMap, id: u32| if id == UNKNOWN { "-".to_string() } else { map.name(id).to_string() };
        let mut s = String::with_capacity(ratings.len() * 16);
        for r in ratings {
            let _ = writeln!(s, "{}\t{}\t{}", name(&self.users, r.user), name(&self.items, r.item), r.value);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(triples: &[(&str, &str, f32)]) -> RatingSet {
        let mut users = IdMap::new();
        let mut items = IdMap::new();
        let ratings = triples
            .iter()
            .map(|&(u, i, v)| Rating { user: users.intern(u), item: items.intern(i), value: v })
            .collect();
        RatingSet { users, items, ratings }
    }

    #[test]
    fn split_is_seeded_and_marks_cold_ids() {
        let s = set(&[("a", "x", 1.0), ("b", "y", 2.0), ("a", "y", 3.0), ("c", "z", 4.0)]);
        let d1 = Dataset::split("t", s.clone(), 0.5, 7);
        let d2 = Dataset::split("t", s, 0.5, 7);
        assert_eq!(d1.train, d2.train);
        assert_eq!(d1.test.len(), 2);
        assert_eq!(d1.train.len(), 2);
        // Every training id is dense.
        assert!(d1.train.iter().all(|r| (r.user as usize) < d1.users.len()));
        for r in &d1.test {
            if r.user != UNKNOWN {
                assert!((r.user as usize) < d1.users.len());
            }
        }
    }

    #[test]
    fn separate_test_set_maps_unseen_ids_to_unknown() {
        let train = set(&[("a", "x", 1.0), ("b", "y", 2.0)]);
        let test = set(&[("a", "y", 3.0), ("z", "x", 4.0), ("a", "q", 5.0)]);
        let d = Dataset::from_sets("t", train, test);
        assert_eq!(d.test[0].user, d.users.get("a").unwrap());
        assert_eq!(d.test[0].item, d.items.get("y").unwrap());
        assert_eq!(d.test[1].user, UNKNOWN);
        assert_eq!(d.test[2].item, UNKNOWN);
        assert_eq!(d.cold_test(), 2);
    }
}
