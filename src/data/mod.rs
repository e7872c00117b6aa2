//! Ratings data: loading files in the common formats, the built-in synthetic
//! generator, train/test splits and the string-id ↔ dense-id maps.

mod load;
mod source;
mod synthetic;

pub use load::{Format, HeaderMode, LoadOptions, LoadReport, load_ratings, parse_ratings, rating_problem};
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
    /// Interning is most of reading a file, so an id of up to 15 bytes
    /// (most files' ids) is keyed by its bytes packed into one integer, with
    /// no string to reach or compare, and a longer one by its text. foldhash,
    /// not SipHash: the ids come from the user's own file, with no flooding
    /// to defend against.
    short: HashMap<u128, u32, foldhash::fast::FixedState>,
    long: HashMap<String, u32, foldhash::fast::FixedState>,
}

/// `name` packed into one integer where it has 15 bytes at most: its bytes,
/// then its length in the top byte, so that each text has its own key.
fn packed(name: &str) -> Option<u128> {
    let b = name.as_bytes();
    (b.len() < 16).then(|| {
        let mut key = [0u8; 16];
        key[..b.len()].copy_from_slice(b);
        key[15] = b.len() as u8;
        u128::from_le_bytes(key)
    })
}

impl IdMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from names in dense-id order.
    pub fn from_names(names: Vec<String>) -> Self {
        let mut map = IdMap::default();
        for (i, n) in names.iter().enumerate() {
            match packed(n) {
                Some(k) => map.short.insert(k, i as u32),
                None => map.long.insert(n.clone(), i as u32),
            };
        }
        map.names = names;
        map
    }

    /// The dense id of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        let next = self.names.len() as u32;
        let id = match packed(name) {
            Some(k) => *self.short.entry(k).or_insert(next),
            None => match self.long.get(name) {
                Some(&id) => id,
                None => *self.long.entry(name.to_string()).or_insert(next),
            },
        };
        if id == next {
            self.names.push(name.to_string());
        }
        id
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        match packed(name) {
            Some(k) => self.short.get(&k).copied(),
            None => self.long.get(name).copied(),
        }
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

    /// False where two dense ids name one id (a map built by
    /// [`IdMap::from_names`] from a list with repeats).
    pub fn is_distinct(&self) -> bool {
        self.short.len() + self.long.len() == self.names.len()
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
    /// The original ids of the test ratings with a side unseen in training
    /// (by their index in `test`), so that a written split names them
    /// (`rowstage split`: a peer reads every test rating).
    pub unseen_ids: Vec<(usize, String, String)>,
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
        // New ids in first-use order over the training ratings, found
        // through the source maps' dense ids: a name is hashed once per
        // distinct id, not once per rating.
        let renumber = |source: &IdMap, ids: &mut dyn Iterator<Item = &mut u32>| {
            let mut map = IdMap::new();
            let mut new_of = vec![UNKNOWN; source.len()];
            for id in ids {
                let n = &mut new_of[*id as usize];
                if *n == UNKNOWN {
                    *n = map.intern(source.name(*id));
                }
                *id = *n;
            }
            (map, new_of)
        };
        let (users, user_of) = renumber(train_users, &mut train.iter_mut().map(|r| &mut r.user));
        let (items, item_of) = renumber(train_items, &mut train.iter_mut().map(|r| &mut r.item));
        // The test side's ids: through the same table where it shares the
        // training's source map, else by name, once per distinct id.
        let onto = |new: &IdMap, of_train: Vec<u32>, test_source: &IdMap, train_source: &IdMap| {
            if std::ptr::eq(test_source, train_source) {
                of_train
            } else {
                test_source.names().iter().map(|n| new.get(n).unwrap_or(UNKNOWN)).collect()
            }
        };
        let test_user_of = onto(&users, user_of, test_users, train_users);
        let test_item_of = onto(&items, item_of, test_items, train_items);
        let mut unseen_ids = Vec::new();
        for (k, r) in test.iter_mut().enumerate() {
            let (u, i) = (test_user_of[r.user as usize], test_item_of[r.item as usize]);
            if u == UNKNOWN || i == UNKNOWN {
                unseen_ids.push((k, test_users.name(r.user).to_string(), test_items.name(r.item).to_string()));
            }
            (r.user, r.item) = (u, i);
        }
        Dataset { name: name.to_string(), users, items, train, test, unseen_ids }
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
    /// The training (`test` false) or test ratings as tab-separated
    /// `user item rating` lines with the original ids: what a peer (LIBMF,
    /// PyTorch) reads to train on the same split. A side unseen in
    /// training ([`UNKNOWN`]) is written as `-`, an id no peer trained.
    pub fn to_tsv(&self, test: bool) -> Result<String, crate::Error> {
        use std::fmt::Write;
        let ratings = if test { &self.test } else { &self.train };
        let mut unseen = self.unseen_ids.iter().filter(|_| test).peekable();
        let mut s = String::with_capacity(ratings.len() * 16);
        for (k, r) in ratings.iter().enumerate() {
            let original = unseen.next_if(|u| u.0 == k);
            let (user, item) = match original {
                Some((_, u, i)) => (u.as_str(), i.as_str()),
                None => (self.users.name(r.user), self.items.name(r.item)),
            };
            for id in [user, item] {
                check_tsv_field(id)?;
            }
            let _ = writeln!(s, "{user}\t{item}\t{}", r.value);
        }
        Ok(s)
    }
}

/// Refuses an id a tab-separated file cannot hold: one with a tab, a line
/// break, or a leading or trailing space (a reader trims them).
pub fn check_tsv_field(id: &str) -> Result<(), crate::Error> {
    if id.contains(['\t', '\n', '\r']) || id.trim() != id {
        return Err(crate::Error::arg(
            "id",
            id,
            "holds a tab, a line break or an outer space, which tab-separated lines cannot carry; rename it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_texts_are_one_map_in_first_appearance_order() {
        let mut m = IdMap::new();
        // Short and long (16 bytes and more) ids, and ids that pack alike
        // but for their length.
        let names = ["7", "07", "u7", "0", "a-sixteen-byte-i", "fifteen-bytes-1", "7", "7\0", "a-sixteen-byte-i"];
        let ids: Vec<u32> = names.iter().map(|n| m.intern(n)).collect();
        // "7" twice is one id; every other spelling is its own id.
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 0, 6, 4]);
        assert_eq!(m.len(), 7);
        for (n, &id) in names.iter().zip(&ids) {
            assert_eq!(m.get(n), Some(id), "{n:?}");
            assert_eq!(m.name(id), *n);
        }
        assert_eq!(m.get("8"), None);
        assert_eq!(m.get("007"), None);
        assert_eq!(IdMap::from_names(m.names().to_vec()), m);
        assert!(m.is_distinct());
        assert!(!IdMap::from_names(vec!["a".into(), "b".into(), "a".into()]).is_distinct());
    }

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

    /// Renumbering keeps every rating's names, numbers ids in first use
    /// over the training ratings, and marks exactly the test ids no
    /// training rating has.
    #[test]
    fn a_split_keeps_names_and_numbers_ids_in_first_use() {
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let raw: Vec<(&str, &str, f32)> =
            (0..40u32).map(|k| (names[(k * 5 % 7) as usize], names[(k * k % 6) as usize], k as f32)).collect();
        let d = Dataset::split("t", set(&raw), 0.3, 11);
        let mut seen: Vec<(String, String, f32)> = Vec::new();
        for r in &d.train {
            seen.push((d.users.name(r.user).into(), d.items.name(r.item).into(), r.value));
        }
        let mut first_users: Vec<&str> = Vec::new();
        for r in &d.train {
            let n = d.users.name(r.user);
            if !first_users.contains(&n) {
                first_users.push(n);
            }
        }
        assert_eq!(d.users.names(), first_users.as_slice(), "ids in first-use order");
        for r in &d.test {
            let &(u, i, v) = raw.iter().find(|x| x.2 == r.value).unwrap();
            assert_eq!(r.user == UNKNOWN, d.users.get(u).is_none(), "{u}");
            assert_eq!(r.item == UNKNOWN, d.items.get(i).is_none(), "{i}");
            if r.user != UNKNOWN {
                assert_eq!(d.users.name(r.user), u);
            }
            if r.item != UNKNOWN {
                assert_eq!(d.items.name(r.item), i);
            }
            seen.push((u.into(), i.into(), v));
        }
        seen.sort_by(|a, b| a.2.total_cmp(&b.2));
        let want: Vec<(String, String, f32)> = raw.iter().map(|&(u, i, v)| (u.into(), i.into(), v)).collect();
        assert_eq!(seen, want);
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
