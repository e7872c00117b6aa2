//! The CPU backend's working copy of the tables in the blocked order: each
//! row's factors in whole cache lines, the biases in arrays apart.
//!
//! The model's row (DESIGN.md §1) is `rank` factors, the bias, and padding
//! to a multiple of four floats, for the GPU's `vec4` loads: 144 bytes at
//! rank 32, which spans three 64-byte cache lines wherever it starts. Here
//! a row's factors start on a cache line and take [`factor_stride`] floats
//! (two whole lines at rank 32, as LIBMF lays its rows out), and the biases
//! sit in arrays of their own, 4 bytes a row, small enough to stay cached.
//! At 10M ratings, where the tables outgrow the caches, an update then
//! moves two lines per row instead of three.
//!
//! The copy is made at the first blocked epoch and kept across epochs, as a
//! GPU backend keeps its resident rows: evaluation reads it, and
//! [`super::Backend::finish`] writes it back into the model when it was
//! trained since. The arithmetic is [`Step::apply_split`], the very
//! operations of [`Step::apply`], and predictions go through
//! [`Model::predict_from`], so results are bit-equal to training the model's
//! own rows (a test).

use crate::data::{Rating, UNKNOWN};
use crate::model::{Metrics, MetricsAcc, Model, Step, row_stride};

/// One 64-byte cache line of floats, aligned to one.
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
struct Line([f32; 16]);

/// Floats of one model's factors in a row of the working copy: a power of
/// two up to 16 (rows never straddle a line), a multiple of 16 above
/// (rows start on a line).
pub fn factor_stride(rank: usize) -> usize {
    if rank <= 16 { rank.max(1).next_power_of_two() } else { rank.next_multiple_of(16) }
}

/// One table of the working copy.
struct SplitTable {
    /// Row r's factors of model g at `(r * copies + g) * fstride`.
    factors: Vec<Line>,
    /// Row r's bias of model g at `r * copies + g`.
    bias: Vec<f32>,
}

impl SplitTable {
    fn from_rows(rows: &[f32], stride: usize, rank: usize, copies: usize, fstride: usize) -> Self {
        let n = rows.len() / stride;
        let sub = row_stride(rank);
        let mut factors = vec![Line([0.0; 16]); (n * copies * fstride).div_ceil(16)];
        let f: &mut [f32] = bytemuck::cast_slice_mut(&mut factors);
        let mut bias = vec![0.0f32; n * copies];
        for (r, row) in rows.chunks_exact(stride).enumerate() {
            for (g, model) in row.chunks_exact(sub).enumerate() {
                let at = r * copies + g;
                f[at * fstride..][..rank].copy_from_slice(&model[..rank]);
                bias[at] = model[rank];
            }
        }
        SplitTable { factors, bias }
    }

    fn write_back(&self, rows: &mut [f32], stride: usize, rank: usize, copies: usize, fstride: usize) {
        let sub = row_stride(rank);
        let f: &[f32] = bytemuck::cast_slice(&self.factors);
        for (r, row) in rows.chunks_exact_mut(stride).enumerate() {
            for (g, model) in row.chunks_exact_mut(sub).enumerate() {
                let at = r * copies + g;
                model[..rank].copy_from_slice(&f[at * fstride..][..rank]);
                model[rank] = self.bias[at];
            }
        }
    }

    fn floats(&self) -> &[f32] {
        bytemuck::cast_slice(&self.factors)
    }
}

/// The working copy of both tables (module docs).
pub struct SplitTables {
    rank: usize,
    copies: usize,
    fstride: usize,
    n_users: usize,
    n_items: usize,
    users: SplitTable,
    items: SplitTable,
    /// Trained since it was made or last written back.
    pub dirty: bool,
}

impl SplitTables {
    pub fn from_model(model: &Model) -> Self {
        let (rank, copies, fstride) = (model.rank, model.copies, factor_stride(model.rank));
        SplitTables {
            rank,
            copies,
            fstride,
            n_users: model.n_users(),
            n_items: model.n_items(),
            users: SplitTable::from_rows(&model.users, model.stride, rank, copies, fstride),
            items: SplitTable::from_rows(&model.items, model.stride, rank, copies, fstride),
            dirty: false,
        }
    }

    /// Whether this copy has `model`'s shape (it was made from it).
    pub fn fits(&self, model: &Model) -> bool {
        (self.rank, self.copies, self.n_users, self.n_items)
            == (model.rank, model.copies, model.n_users(), model.n_items())
    }

    /// Writes the copy into `model` if it was trained since the last time.
    pub fn write_back(&mut self, model: &mut Model) {
        assert!(self.fits(model), "the working copy was made from another model");
        if std::mem::take(&mut self.dirty) {
            let (rank, copies, fstride) = (self.rank, self.copies, self.fstride);
            self.users.write_back(&mut model.users, model.stride, rank, copies, fstride);
            self.items.write_back(&mut model.items, model.stride, rank, copies, fstride);
        }
    }

    /// Model `g`'s prediction for (`user`, `item`), as [`Model::predict_with`]
    /// makes it from the model's rows (`model` gives μ and the clamp range).
    pub fn predict_with(&self, model: &Model, g: usize, user: u32, item: u32) -> f32 {
        let at = |row: u32| row as usize * self.copies + g;
        let (u, i) = (at(user), at(item));
        let pu = (user != UNKNOWN).then(|| (&self.users.floats()[u * self.fstride..][..self.rank], self.users.bias[u]));
        let qi = (item != UNKNOWN).then(|| (&self.items.floats()[i * self.fstride..][..self.rank], self.items.bias[i]));
        model.predict_from(pu, qi)
    }

    /// Test metrics of every model side by side on up to `threads` threads.
    pub fn evaluate(&self, model: &Model, test: &[Rating], threads: usize) -> Vec<Metrics> {
        evaluate_with(model.copies, test, threads, |g, r| self.predict_with(model, g, r.user, r.item))
    }

    /// Raw access for the threads of one blocked epoch.
    pub fn exclusive(&mut self) -> ExclusiveRows<'_> {
        self.dirty = true;
        let row = self.copies * self.fstride;
        let (users, items) = (&mut self.users, &mut self.items);
        ExclusiveRows {
            user_factors: bytemuck::cast_slice_mut::<Line, f32>(&mut users.factors).as_mut_ptr(),
            item_factors: bytemuck::cast_slice_mut::<Line, f32>(&mut items.factors).as_mut_ptr(),
            user_bias: users.bias.as_mut_ptr(),
            item_bias: items.bias.as_mut_ptr(),
            n_users: self.n_users,
            n_items: self.n_items,
            row,
            copies: self.copies,
            fstride: self.fstride,
            _borrow: std::marker::PhantomData,
        }
    }
}

/// RMSE and MAE of `predict(g, rating)` for every model `g < copies`, the
/// ratings cut among up to `threads` threads.
pub fn evaluate_with(
    copies: usize,
    test: &[Rating],
    threads: usize,
    predict: impl Fn(usize, &Rating) -> f32 + Sync,
) -> Vec<Metrics> {
    let chunk = test.len().div_ceil(threads.max(1)).max(1);
    let predict = &predict;
    let acc = std::thread::scope(|scope| {
        let handles: Vec<_> = test
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut m = vec![MetricsAcc::default(); copies];
                    for r in part {
                        for (g, m) in m.iter_mut().enumerate() {
                            m.add(r.value - predict(g, r));
                        }
                    }
                    m
                })
            })
            .collect();
        let mut total = vec![MetricsAcc::default(); copies];
        for h in handles {
            let part = h.join().expect("evaluation worker panicked");
            total.iter_mut().zip(&part).for_each(|(t, p)| t.merge(p));
        }
        total
    });
    acc.iter().map(MetricsAcc::finish).collect()
}

/// Both tables of the working copy as raw pointers, for the blocked order,
/// where a row is only ever touched by the one thread that trains its
/// block. Borrows the copy exclusively for its lifetime.
pub struct ExclusiveRows<'a> {
    user_factors: *mut f32,
    item_factors: *mut f32,
    user_bias: *mut f32,
    item_bias: *mut f32,
    n_users: usize,
    n_items: usize,
    /// Floats of factors per row (every model side by side).
    row: usize,
    copies: usize,
    fstride: usize,
    _borrow: std::marker::PhantomData<&'a mut SplitTables>,
}

// SAFETY: the pointers come from an exclusive borrow of the working copy held
// for the lifetime; the callers of `update` guarantee that no two threads
// reach the same row.
unsafe impl Send for ExclusiveRows<'_> {}
unsafe impl Sync for ExclusiveRows<'_> {}

impl ExclusiveRows<'_> {
    /// One SGD update of every model side by side on `r`'s rows, adding each
    /// model's squared error into `sse`.
    ///
    /// # Safety
    /// No other thread may touch `r`'s user row or item row meanwhile.
    #[inline(always)]
    pub unsafe fn update(&self, steps: &[Step], r: &Rating, sse: &mut [f64]) {
        let (u, i) = (r.user as usize, r.item as usize);
        assert!(u < self.n_users && i < self.n_items, "rating ({u}, {i}) outside the tables");
        let (c, row) = (self.copies, self.row);
        // SAFETY: in bounds (checked above); the four arrays are distinct
        // allocations, and the caller keeps other threads away from the rows.
        let (p, q, pb, qb) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.user_factors.add(u * row), row),
                std::slice::from_raw_parts_mut(self.item_factors.add(i * row), row),
                std::slice::from_raw_parts_mut(self.user_bias.add(u * c), c),
                std::slice::from_raw_parts_mut(self.item_bias.add(i * c), c),
            )
        };
        let rows = p.chunks_exact_mut(self.fstride).zip(q.chunks_exact_mut(self.fstride));
        for ((((step, (p, q)), pb), qb), sse) in steps.iter().zip(rows).zip(pb).zip(qb).zip(sse) {
            let e = step.apply_split(p, pb, q, qb, r.value);
            *sse += (e * e) as f64;
        }
    }

    /// Asks for `r`'s rows ahead of their use (a hint: reads nothing).
    #[inline(always)]
    pub fn prefetch(&self, r: &Rating) {
        let (u, i) = (r.user as usize, r.item as usize);
        if u < self.n_users && i < self.n_items {
            // wrapping_add: no dereference, so no in-bounds requirement.
            super::cpu::prefetch_span(self.user_factors.wrapping_add(u * self.row), self.row);
            super::cpu::prefetch_span(self.item_factors.wrapping_add(i * self.row), self.row);
            super::cpu::prefetch_span(self.user_bias.wrapping_add(u * self.copies), self.copies);
            super::cpu::prefetch_span(self.item_bias.wrapping_add(i * self.copies), self.copies);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_rows_never_straddle_more_lines_than_they_fill() {
        for rank in 1..=80 {
            let f = factor_stride(rank);
            assert!(f >= rank);
            if f <= 16 {
                assert_eq!(16 % f, 0, "rank {rank}: {f} floats tile a line");
            } else {
                assert_eq!(f % 16, 0, "rank {rank}: {f} floats are whole lines");
                assert!(f - rank < 16, "rank {rank}: less than a line of padding");
            }
        }
    }

    #[test]
    fn the_copy_round_trips_and_predicts_as_the_model() {
        let data = crate::data::Dataset::split(
            "t",
            crate::data::generate(&crate::data::SyntheticSpec::parse("40,30,500", 1.0).unwrap(), 3),
            0.1,
            3,
        );
        for (rank, copies) in [(1, 1), (7, 3), (32, 1), (33, 2)] {
            let hp = crate::model::HyperParams { rank, ..Default::default() };
            let mut model = Model::init_copies(&data, &hp, 5, copies);
            // Non-zero biases, so that they are seen to round-trip.
            for (k, x) in model.users.iter_mut().chain(model.items.iter_mut()).enumerate() {
                if k % row_stride(rank) == rank {
                    *x = (k % 7) as f32 * 0.1 - 0.3;
                }
            }
            let mut copy = SplitTables::from_model(&model);
            assert_eq!(bytemuck::cast_slice::<Line, f32>(&copy.users.factors).as_ptr() as usize % 64, 0);
            for g in 0..copies {
                for r in data.test.iter().chain(&[Rating { user: UNKNOWN, item: 0, value: 1.0 }]) {
                    let (a, b) = (model.predict_with(g, r.user, r.item), copy.predict_with(&model, g, r.user, r.item));
                    assert_eq!(a.to_bits(), b.to_bits(), "rank {rank} model {g}");
                }
            }
            let mut other = Model::init_copies(&data, &hp, 6, copies);
            copy.write_back(&mut other);
            assert_ne!(other, model, "not trained: nothing written back");
            copy.dirty = true;
            copy.write_back(&mut other);
            assert_eq!(other, model, "rank {rank}, {copies} models: written back exactly");
        }
    }
}
