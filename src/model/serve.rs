//! Serving a trained model: a file's ratings on the model's ids, top-k items
//! for one user or for every user, and a prediction per rating (what
//! `rowstage recommend` and `rowstage eval` print).

use rayon::prelude::*;

use super::Model;
use crate::data::{Rating, RatingSet, UNKNOWN};

/// The items each of the model's users rated in `set` (model item indices,
/// sorted, no repeats): what top-k leaves out. Users and items of `set`
/// that the model does not know are ignored.
pub fn rated_items(model: &Model, set: &RatingSet) -> Vec<Vec<u32>> {
    let mut rated = vec![Vec::new(); model.n_users()];
    for r in onto_model(model, set) {
        if r.user != UNKNOWN && r.item != UNKNOWN {
            rated[r.user as usize].push(r.item);
        }
    }
    rated.par_iter_mut().for_each(|v| {
        v.sort_unstable();
        v.dedup();
    });
    rated
}

/// User `user`'s `n` highest-scored items, best first (ties by item index),
/// leaving out the items in `excluded` (sorted).
pub fn top_items(model: &Model, user: u32, n: usize, excluded: &[u32]) -> Vec<(u32, f32)> {
    top_items_in(model, user, n, excluded, &mut Vec::new())
}

/// [`top_items`] scoring into `scored`, a buffer kept across users (a
/// catalogue's scores are too large to allocate per user).
fn top_items_in(model: &Model, user: u32, n: usize, excluded: &[u32], scored: &mut Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    scored.clear();
    // `Model::predict` of model copy 0, the user's row sliced once.
    let sub = super::row_stride(model.rank);
    let p = &model.user_row(user)[..sub];
    let score = |i: u32| model.score(Some(p), Some(&model.item_row(i)[..sub]));
    let mut skip = excluded.iter().copied().peekable();
    for i in 0..model.n_items() as u32 {
        while skip.next_if(|&x| x < i).is_some() {}
        if skip.next_if_eq(&i).is_none() {
            scored.push((i, score(i)));
        }
    }
    let better = |x: &(u32, f32), y: &(u32, f32)| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0));
    let n = n.min(scored.len());
    if n > 0 && n < scored.len() {
        scored.select_nth_unstable_by(n - 1, better);
    }
    let mut top = scored[..n].to_vec();
    top.sort_by(better);
    top
}

/// [`top_items`] for every user of the model, in user index order, on all
/// cores. `rated` (from [`rated_items`]) gives each user's exclusions.
pub fn top_items_all(model: &Model, n: usize, rated: Option<&[Vec<u32>]>) -> Vec<Vec<(u32, f32)>> {
    (0..model.n_users() as u32)
        .into_par_iter()
        .map_init(Vec::new, |scored, u| top_items_in(model, u, n, rated.map_or(&[][..], |r| &r[u as usize]), scored))
        .collect()
}

/// `set`'s ratings on the model's ids, in the set's order ([`UNKNOWN`]
/// where the model does not know the user or the item). The set's ids are
/// resolved once per id, not per rating.
pub fn onto_model(model: &Model, set: &RatingSet) -> Vec<Rating> {
    let users: Vec<u32> =
        (0..set.users.len() as u32).map(|u| model.user_ids.get(set.users.name(u)).unwrap_or(UNKNOWN)).collect();
    let items: Vec<u32> =
        (0..set.items.len() as u32).map(|i| model.item_ids.get(set.items.name(i)).unwrap_or(UNKNOWN)).collect();
    set.ratings
        .iter()
        .map(|r| Rating { user: users[r.user as usize], item: items[r.item as usize], value: r.value })
        .collect()
}

/// The model's prediction for every rating (on its ids: [`onto_model`]), in
/// order (LIBMF's `mf-predict` writes the same: one per input rating). A user
/// or item the model does not know contributes neither bias nor factors.
pub fn predictions(model: &Model, ratings: &[Rating]) -> Vec<f32> {
    ratings.iter().map(|r| model.predict(r.user, r.item)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, SyntheticSpec, generate};
    use crate::model::HyperParams;

    /// A model of random factors, and the ratings it was made from (whose
    /// ids are the files', not the model's).
    fn model() -> (Model, RatingSet) {
        let spec = SyntheticSpec { users: 37, items: 53, ratings: 900, zipf: None };
        let set = generate(&spec, 7);
        let data = Dataset::split("t", set.clone(), 0.1, 7);
        (Model::init(&data, &HyperParams { init_std: 0.5, ..HyperParams::default() }, 3), set)
    }

    #[test]
    fn top_items_are_the_best_scores_in_order_without_the_excluded() {
        let (m, _) = model();
        let excluded = vec![0, 5, 17];
        for u in [0, 11, 36] {
            let top = top_items(&m, u, 7, &excluded);
            // Against sorting every item's score.
            let mut all: Vec<(u32, f32)> =
                (0..m.n_items() as u32).filter(|i| !excluded.contains(i)).map(|i| (i, m.predict(u, i))).collect();
            all.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            assert_eq!(top, all[..7].to_vec());
        }
        assert_eq!(top_items(&m, 0, 1000, &[]).len(), m.n_items());
        assert!(top_items(&m, 0, 0, &[]).is_empty());
    }

    #[test]
    fn every_users_top_items_equal_one_users_and_leave_out_what_they_rated() {
        let (m, set) = model();
        let rated = rated_items(&m, &set);
        let all = top_items_all(&m, 5, Some(&rated));
        assert_eq!(all.len(), m.n_users());
        for (u, top) in all.iter().enumerate() {
            assert_eq!(top, &top_items(&m, u as u32, 5, &rated[u]));
            assert!(top.iter().all(|(i, _)| rated[u].binary_search(i).is_err()));
        }
        assert!(rated.iter().any(|r| !r.is_empty()));
    }

    #[test]
    fn predictions_follow_the_input_order() {
        let (m, set) = model();
        let p = predictions(&m, &onto_model(&m, &set));
        assert_eq!(p.len(), set.ratings.len());
        for (r, &x) in set.ratings.iter().zip(&p) {
            let u = m.user_ids.get(set.users.name(r.user)).unwrap_or(UNKNOWN);
            let i = m.item_ids.get(set.items.name(r.item)).unwrap_or(UNKNOWN);
            assert_eq!(x, m.predict(u, i));
        }
    }
}
