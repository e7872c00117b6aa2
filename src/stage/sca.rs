//! The expected-communication model of Stochastic Communication Avoidance
//! (docs/ARCHITECTURE.md, "SCA and the planner"). Every lookup is a random draw: row r of a table is drawn
//! with probability p_r (its share of that table's training lookups). A batch
//! of B ratings makes B draws from each table, so
//!
//!   q_r  = 1 − (1 − p_r)^B         the chance row r is needed by a batch
//!   U(B) = Σ q_r                   expected distinct rows per batch
//!   E[misses | H] = Σ_{r∉H} q_r,   Var = Σ_{r∉H} q_r (1 − q_r)
//!
//! Both tables draw B times per batch, so q is monotone in the training count
//! across both tables: the best resident set H of any size is the top rows by
//! count (an exact knapsack solution, rows being the same size).

/// The model for one dataset and batch size.
#[derive(Debug, Clone)]
pub struct CostModel {
    /// q_r of every global row, sorted descending.
    q_sorted: Vec<f64>,
    /// Suffix sums of q and q(1−q) over `q_sorted`: `tail_e[h]` is
    /// E[misses] when the top `h` rows are resident.
    tail_e: Vec<f64>,
    tail_var: Vec<f64>,
    pub batch: usize,
}

/// z of the staging capacity C = E + z·√Var.
pub const Z: f64 = 3.0;

impl CostModel {
    /// `counts`: training lookups per global row; `ratings`: training ratings
    /// (each table is looked up once per rating).
    pub fn new(counts: &[u32], ratings: usize, batch: usize) -> Self {
        let n = ratings.max(1) as f64;
        let mut q_sorted: Vec<f64> =
            counts.iter().filter(|&&c| c > 0).map(|&c| 1.0 - (1.0 - c as f64 / n).powi(batch as i32)).collect();
        q_sorted.sort_by(|a, b| b.total_cmp(a));
        let mut tail_e = vec![0.0; q_sorted.len() + 1];
        let mut tail_var = vec![0.0; q_sorted.len() + 1];
        for h in (0..q_sorted.len()).rev() {
            let q = q_sorted[h];
            tail_e[h] = tail_e[h + 1] + q;
            tail_var[h] = tail_var[h + 1] + q * (1.0 - q);
        }
        CostModel { q_sorted, tail_e, tail_var, batch }
    }

    /// U(B): expected distinct rows per batch.
    pub fn expected_distinct(&self) -> f64 {
        self.tail_e[0]
    }

    /// Expected misses per batch with the top `h` rows resident.
    pub fn expected_misses(&self, h: usize) -> f64 {
        self.tail_e[h.min(self.q_sorted.len())]
    }

    /// Variance of the misses per batch with the top `h` rows resident.
    pub fn miss_variance(&self, h: usize) -> f64 {
        self.tail_var[h.min(self.q_sorted.len())]
    }

    /// Staging capacity that holds a batch's misses with high probability.
    pub fn capacity(&self, h: usize) -> u32 {
        (self.expected_misses(h) + Z * self.miss_variance(h).sqrt()).ceil() as u32
    }

    /// The largest resident set for `slots` with `buffers` staging areas of
    /// the capacity it needs: |H| + buffers·C(H) ≤ slots. Returns (|H|, C).
    pub fn split(&self, slots: u32, buffers: u32) -> (u32, u32) {
        let fits = |h: u32| h as u64 + buffers as u64 * self.capacity(h as usize) as u64 <= slots as u64;
        let max_h = (self.q_sorted.len() as u32).min(slots);
        if !fits(0) {
            return (0, slots / buffers.max(1));
        }
        // h + buffers·C(h) grows with h (C falls by at most one per row), so
        // binary search the last h that fits.
        let (mut lo, mut hi) = (0u32, max_h);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) { lo = mid } else { hi = mid - 1 }
        }
        (lo, self.capacity(lo as usize))
    }

    /// Expected rows staged in per epoch of `ratings` with the top `h` rows
    /// resident (no cache between batches).
    pub fn rows_in_per_epoch(&self, h: usize, ratings: usize) -> f64 {
        self.expected_misses(h) * (ratings as f64 / self.batch.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enumerates every batch of B draws per table from tiny distributions
    /// and checks the expected distinct rows, misses and variance.
    #[test]
    fn formulas_match_brute_force_enumeration() {
        // One table of 3 rows with counts 3, 2, 1 (6 lookups); the other
        // table is the same; B = 2 draws from each.
        let counts = [3u32, 2, 1, 3, 2, 1];
        let (ratings, batch) = (6usize, 2usize);
        let model = CostModel::new(&counts, ratings, batch);
        let p = [0.5, 2.0 / 6.0, 1.0 / 6.0];
        // Enumerate the draws of one table: rows a, b with prob p_a p_b.
        // Per table: distribution of the set of rows needed.
        let mut e_rows = 0.0;
        let mut e_miss_h1 = 0.0; // resident: the top row (row 0 of either table; both have q equal, one is resident)
        let mut var_acc = 0.0;
        // Brute force over both tables: 3^2 × 3^2 outcomes.
        let mut outcomes = Vec::new();
        for a in 0..3 {
            for b in 0..3 {
                for c in 0..3 {
                    for d in 0..3 {
                        let prob = p[a] * p[b] * p[c] * p[d];
                        let mut need = std::collections::BTreeSet::new();
                        need.insert(a);
                        need.insert(b);
                        need.insert(3 + c);
                        need.insert(3 + d);
                        outcomes.push((prob, need));
                    }
                }
            }
        }
        for (prob, need) in &outcomes {
            e_rows += prob * need.len() as f64;
            let m = need.iter().filter(|&&r| r != 0).count() as f64;
            e_miss_h1 += prob * m;
            var_acc += prob * m * m;
        }
        let var_h1 = var_acc - e_miss_h1 * e_miss_h1;
        assert!((model.expected_distinct() - e_rows).abs() < 1e-12);
        assert!((model.expected_misses(1) - e_miss_h1).abs() < 1e-12);
        // The model treats rows as independent Bernoulli(q_r): enumerate
        // that model exactly over the 5 non-resident rows.
        let q: Vec<f64> = [p[1], p[2], p[0], p[1], p[2]].iter().map(|p| 1.0 - (1.0f64 - p).powi(2)).collect();
        let (mut m1, mut m2) = (0.0, 0.0);
        for mask in 0u32..32 {
            let prob: f64 = (0..5).map(|k| if mask >> k & 1 == 1 { q[k] } else { 1.0 - q[k] }).product();
            let m = mask.count_ones() as f64;
            m1 += prob * m;
            m2 += prob * m * m;
        }
        assert!((model.miss_variance(1) - (m2 - m1 * m1)).abs() < 1e-12);
        // Draws within a table are negatively correlated, so the independent
        // model over-estimates the true variance: the capacity errs on the
        // safe side.
        assert!(model.miss_variance(1) >= var_h1, "{} vs {var_h1}", model.miss_variance(1));
    }

    #[test]
    fn split_respects_double_buffering() {
        let counts: Vec<u32> = (1..=1000u32).map(|r| 100_000 / r).collect();
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        let model = CostModel::new(&counts, total as usize / 2, 256);
        for slots in [50u32, 200, 800, 1000] {
            let (h, c) = model.split(slots, 2);
            assert!(h + 2 * c <= slots || h == 0, "{slots}: {h} + 2·{c}");
            if h > 0 && h < 1000 {
                // One more resident row would not fit.
                assert!(h + 1 + 2 * model.capacity(h as usize + 1) > slots);
            }
        }
    }
}
