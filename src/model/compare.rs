//! How far apart two models' tables are: what "the same model on every
//! device" is measured by (docs/ARCHITECTURE.md, "The order").

use serde::Serialize;

use super::Model;
use crate::error::{Error, Result};

/// The largest absolute differences between two models' tables, row by row
/// under the same ids.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TableDiff {
    pub users: usize,
    pub items: usize,
    /// Largest |a − b| over every user row's factors and bias.
    pub max_abs_users: f32,
    /// Largest |a − b| over every item row's factors and bias.
    pub max_abs_items: f32,
    /// The larger of the two.
    pub max_abs: f32,
    /// Whether every float is the same bit pattern.
    pub identical: bool,
    /// |a − b| of the training means.
    pub mean_abs: f32,
}

/// Compares `a` and `b` row by row: the same rank, models side by side and
/// ids, in the same order, are required (a model trained on other data, or
/// other settings of the shape, is refused by name).
pub fn compare(a: &Model, b: &Model) -> Result<TableDiff> {
    let shape = |m: &Model| (m.rank, m.copies, m.n_users(), m.n_items());
    if shape(a) != shape(b) {
        return Err(Error::arg(
            "the second model",
            format!("rank {}, {} model(s), {} users, {} items", b.rank, b.copies, b.n_users(), b.n_items()),
            format!(
                "the models differ in shape: the first has rank {}, {} model(s), {} users, {} items",
                a.rank,
                a.copies,
                a.n_users(),
                a.n_items()
            ),
        ));
    }
    for (side, x, y) in [("user", &a.user_ids, &b.user_ids), ("item", &a.item_ids, &b.item_ids)] {
        if let Some(k) = (0..x.len()).find(|&k| x.names()[k] != y.names()[k]) {
            return Err(Error::arg(
                "the second model",
                y.names()[k].clone(),
                format!("{side} {k} is {:?} in the first model: they were trained on other data", x.names()[k]),
            ));
        }
    }
    let max_abs = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
    let same = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
    let (mu, mi) = (max_abs(&a.users, &b.users), max_abs(&a.items, &b.items));
    Ok(TableDiff {
        users: a.n_users(),
        items: a.n_items(),
        max_abs_users: mu,
        max_abs_items: mi,
        max_abs: mu.max(mi),
        identical: same(&a.users, &b.users) && same(&a.items, &b.items) && a.mean.to_bits() == b.mean.to_bits(),
        mean_abs: (a.mean - b.mean).abs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataSource, SyntheticSpec};
    use crate::model::HyperParams;

    #[test]
    fn the_largest_difference_is_found_and_other_data_refused() {
        let data = DataSource {
            synthetic: SyntheticSpec { users: 30, items: 20, ratings: 300, zipf: None },
            ..Default::default()
        }
        .load(1)
        .unwrap()
        .dataset;
        let hp = HyperParams { rank: 4, ..HyperParams::default() };
        let a = Model::init(&data, &hp, 1);
        let d = compare(&a, &a).unwrap();
        assert!(d.identical && d.max_abs == 0.0, "{d:?}");
        let mut b = a.clone();
        b.items[7] += 0.25;
        b.users[3] -= 0.125;
        let d = compare(&a, &b).unwrap();
        assert!(!d.identical);
        assert_eq!((d.max_abs_users, d.max_abs_items, d.max_abs), (0.125, 0.25, 0.25));
        let other = Model::init(&data, &HyperParams { rank: 8, ..hp }, 1);
        assert!(compare(&a, &other).unwrap_err().to_string().contains("rank 4"));
    }
}
