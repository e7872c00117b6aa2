//! The simulator: replays exactly the batch sequence `train` would run (same
//! seed, batch size and epoch orders) through a policy with the same
//! [`Stager`] the GPU backend uses, without running kernels. Its counts are
//! what a training run's ledger shows for training traffic.

use std::time::Instant;

use serde::Serialize;

use super::copartition::{CoPartition, Side, block_capacity, distinct_side_rows};
use super::{Ledger, Moves, PolicyKind, Stager, access_counts, max_distinct_rows, plan_areas, sca::CostModel};
use crate::data::Rating;
use crate::train::{EpochOrders, epoch_order};

/// What the simulator needs.
#[derive(Debug, Clone)]
pub struct SimSetup<'a> {
    pub train: &'a [Rating],
    pub n_users: usize,
    pub n_items: usize,
    pub batch: usize,
    pub seed: u64,
    pub epochs: usize,
    pub row_bytes: u64,
    pub lookahead: usize,
    /// Co-partitioning side (the block area is sized per budget as `train`
    /// sizes it).
    pub co_partition: Option<Side>,
    /// Visits of every co-partitioning block per epoch.
    pub co_partition_visits: u32,
}

/// One policy at one budget: the JSON row of `rowstage simulate`.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub policy: &'static str,
    pub device_memory_bytes: u64,
    pub slots: u64,
    pub rows_in: u64,
    pub rows_out: u64,
    pub hits: u64,
    pub misses: u64,
    pub bytes_h2d: u64,
    pub bytes_d2h: u64,
    pub predicted_rows_in: Option<f64>,
    /// Rows in per epoch (the first also loads the resident rows).
    pub epoch_rows_in: Vec<u64>,
    #[serde(skip)]
    pub lookups_per_sec: f64,
}

impl SimSetup<'_> {
    /// Slots a batch may need at most (the smallest workable slab), from the
    /// first epoch's order.
    pub fn needed_slots(&self) -> u32 {
        let mut order = Vec::new();
        epoch_order(self.train.len(), self.seed, 0, &mut order);
        max_distinct_rows(self.train, &order, self.batch, self.n_users).max(2)
    }

    /// The co-partitioning `train` would use with `slots` slots.
    pub fn co_partition(&self, slots: u32) -> Option<CoPartition> {
        let side = self.co_partition?;
        let other = match side {
            Side::Users => self.n_items,
            Side::Items => self.n_users,
        };
        let block_rows = block_capacity(slots, self.batch.min(other).max(1) as u32);
        (block_rows > 0).then_some(CoPartition { side, block_rows, visits: self.co_partition_visits.max(1) })
    }

    /// Runs `kind` with a slab of `bytes`; `None` if it cannot hold a batch.
    pub fn run(&self, kind: PolicyKind, bytes: u64) -> Option<SimResult> {
        let slots = (bytes / self.row_bytes).min(u32::MAX as u64 - 1) as u32;
        let co = self.co_partition(slots);
        let block_slots = co.map_or(0, |c| c.block_rows);
        let needed = match co {
            Some(c) => {
                let other = match c.side {
                    Side::Users => self.n_items,
                    Side::Items => self.n_users,
                };
                c.block_rows + self.batch.min(other).max(1) as u32
            }
            None => self.needed_slots(),
        };
        if slots < needed || (self.co_partition.is_some() && co.is_none()) {
            return None;
        }
        let mut counts = access_counts(self.train, self.n_users, self.n_items);
        if let Some(c) = co {
            counts = c.other_side_counts(&counts, self.n_users);
        }
        let blocks = co.map(|c| c.blocks(self.train, self.n_users, self.n_items));
        let block_traffic = blocks.as_ref().map_or(0, |b| b.active_rows());
        let mut orders = EpochOrders::blocked(self.train.len(), self.seed, self.epochs, blocks);
        orders.start(0);
        let areas = plan_areas(kind, slots - block_slots, self.train, &orders.order, self.batch, &counts, self.n_users);
        let horizon = (self.lookahead * self.batch * 2).min(u32::MAX as usize) as u32;
        let mut st = Stager::new(
            kind,
            areas,
            self.n_users as u32,
            self.n_items as u32,
            super::window_rows(self.batch, areas),
            &counts,
            horizon,
        )
        .with_block_area(block_slots);
        let mut ledger = Ledger::default();
        let areas = st.areas();
        for p in st.resident() {
            ledger.row_in(st.is_user(p.row), true);
        }
        let t0 = Instant::now();
        let mut moves = Moves::default();
        // The epoch's ratings in order, and the next epoch's: each gathered
        // once, for the trace and then for the batches.
        let (mut ordered, mut ordered_next) = (Vec::new(), Vec::new());
        let gather = |order: &[u32], out: &mut Vec<Rating>| {
            out.clear();
            out.extend(order.iter().map(|&j| self.train[j as usize]));
        };
        let (mut seen, mut stamp, mut rows) = (Vec::new(), 0, Vec::new());
        let mut epoch_rows_in = Vec::with_capacity(self.epochs);
        for epoch in 0..self.epochs {
            if epoch > 0 {
                orders.start(epoch);
            }
            if epoch == 0 {
                gather(&orders.order, &mut ordered);
            } else {
                std::mem::swap(&mut ordered, &mut ordered_next);
            }
            gather(&orders.following, &mut ordered_next);
            st.begin_epoch_ordered(&ordered, &ordered_next, epoch > 0);
            let mut start = 0;
            for end in crate::train::spans_from(&orders.ends, 0, ordered.len()) {
                let span = &ordered[start..end as usize];
                start = end as usize;
                if let Some(c) = co {
                    distinct_side_rows(span.iter(), c.side, self.n_users as u32, &mut seen, &mut stamp, &mut rows);
                    st.begin_block(&rows, &mut ledger);
                }
                for chunk in span.chunks(self.batch.max(1)) {
                    let mut rest = chunk;
                    while !rest.is_empty() {
                        let n = st.prefix_that_fits(rest);
                        if n < rest.len() {
                            ledger.splits += 1;
                        }
                        st.stage(&rest[..n], &mut moves, &mut ledger);
                        ledger.steps += 1;
                        rest = &rest[n..];
                    }
                }
                if co.is_some() {
                    st.end_block(&mut ledger);
                }
            }
            epoch_rows_in.push(ledger.rows_in() - epoch_rows_in.iter().sum::<u64>());
        }
        let seconds = t0.elapsed().as_secs_f64();
        st.take_dirty(&mut ledger);
        let predicted_rows_in = (kind == PolicyKind::Sca).then(|| {
            let model = CostModel::new(&counts, self.train.len(), self.batch);
            areas.resident as f64
                + self.epochs as f64
                    * (model.rows_in_per_epoch(areas.resident as usize, self.train.len()) + block_traffic as f64)
        });
        Some(SimResult {
            policy: kind.name(),
            device_memory_bytes: bytes,
            slots: slots as u64,
            rows_in: ledger.rows_in(),
            rows_out: ledger.rows_out(),
            hits: ledger.hits(),
            misses: ledger.misses(),
            bytes_h2d: ledger.rows_in() * self.row_bytes,
            bytes_d2h: ledger.rows_out() * self.row_bytes,
            predicted_rows_in,
            epoch_rows_in,
            lookups_per_sec: (2 * self.train.len() * self.epochs) as f64 / seconds.max(1e-9),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, SyntheticSpec, generate};

    /// Belady against an exhaustive search over every eviction choice on
    /// tiny traces: no schedule moves fewer rows in.
    #[test]
    fn belady_is_optimal_on_tiny_traces() {
        use std::collections::BTreeSet;
        // Exhaustive: minimum misses serving `steps` (sets of rows) with `k` slots.
        fn best(steps: &[Vec<u32>], k: usize, cache: BTreeSet<u32>) -> u32 {
            let Some((first, rest)) = steps.split_first() else { return 0 };
            let missing: Vec<u32> = first.iter().copied().filter(|r| !cache.contains(r)).collect();
            let mut candidates: Vec<u32> = cache.iter().copied().filter(|r| !first.contains(r)).collect();
            let room = k - cache.len();
            let must_evict = missing.len().saturating_sub(room);
            let mut out = u32::MAX;
            // Every subset of `candidates` of size ≥ must_evict to evict.
            candidates.sort();
            for mask in 0u32..(1 << candidates.len()) {
                if (mask.count_ones() as usize) < must_evict {
                    continue;
                }
                let mut c = cache.clone();
                for (b, r) in candidates.iter().enumerate() {
                    if mask >> b & 1 == 1 {
                        c.remove(r);
                    }
                }
                c.extend(missing.iter().copied());
                if c.len() <= k {
                    out = out.min(missing.len() as u32 + best(rest, k, c));
                }
            }
            out
        }
        let mut seed = 7u64;
        let mut rand = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for _case in 0..40 {
            // 1 user (always present) and 5 items, batches of 1 rating: the
            // trace is the item sequence.
            let items: Vec<u32> = (0..7).map(|_| rand() % 5).collect();
            let train: Vec<Rating> = items.iter().map(|&i| Rating { user: 0, item: i, value: 3.0 }).collect();
            for slots in 2..=4u32 {
                let setup = SimSetup {
                    train: &train,
                    n_users: 1,
                    n_items: 5,
                    batch: 1,
                    seed: 1,
                    epochs: 1,
                    row_bytes: 16,
                    lookahead: 4,
                    co_partition: None,
                    co_partition_visits: 1,
                };
                let belady = setup.run(PolicyKind::Belady, slots as u64 * 16).unwrap();
                let mut order = Vec::new();
                epoch_order(train.len(), 1, 0, &mut order);
                let steps: Vec<Vec<u32>> = order.iter().map(|&j| vec![0, 1 + train[j as usize].item]).collect();
                let opt = best(&steps, slots as usize, BTreeSet::new());
                assert_eq!(belady.rows_in as u32, opt, "trace {items:?}, {slots} slots");
                for kind in PolicyKind::ALL {
                    // Rows in count resident preloads too, so policies compare fairly.
                    let r = setup.run(kind, slots as u64 * 16).unwrap();
                    assert!(r.rows_in >= belady.rows_in, "{} beat belady on {items:?} with {slots} slots", kind.name());
                }
            }
        }
    }

    #[test]
    fn no_policy_beats_belady_and_sca_prediction_is_close_on_iid_data() {
        let spec = SyntheticSpec { users: 3000, items: 1500, ratings: 60_000, zipf: 0.0 };
        let d = Dataset::split("iid", generate(&spec, 3), 0.0, 3);
        let setup = SimSetup {
            train: &d.train,
            n_users: d.users.len(),
            n_items: d.items.len(),
            batch: 256,
            seed: 3,
            epochs: 2,
            row_bytes: 144,
            lookahead: 32,
            co_partition: None,
            co_partition_visits: 1,
        };
        let bytes = (d.users.len() + d.items.len()) as u64 * 144 / 4;
        let belady = setup.run(PolicyKind::Belady, bytes).unwrap();
        for kind in PolicyKind::ALL {
            let r = setup.run(kind, bytes).unwrap();
            assert!(r.rows_in >= belady.rows_in, "{}: {} < belady {}", kind.name(), r.rows_in, belady.rows_in);
            assert!(r.misses <= r.rows_in, "every miss stages one row in, besides the resident preload");
            if kind == PolicyKind::Sca {
                let p = r.predicted_rows_in.unwrap();
                let err = (r.rows_in as f64 - p).abs() / p;
                assert!(err < 0.05, "sca measured {} vs predicted {p:.0}", r.rows_in);
            }
        }
    }
}
