//! The simulator: replays exactly the steps `train` would run (same seed,
//! batch, layout and epoch plans) through a policy with the same
//! [`Stager`] and the same walk ([`super::walk`]) a GPU backend carries out,
//! without running kernels. Its counts are what a training run's ledger
//! shows for training traffic.

use std::sync::atomic::AtomicBool;
use web_time::Instant;

use serde::Serialize;

use super::order::{LayoutSpec, Order, RunLayout};
use super::rows::{GroupRows, PartRows, lookahead_accesses};
use super::slab::{SlabInput, plan_slab};
use super::walk::{Pass, Walker, outside_rows};
use crate::data::Rating;
use crate::error::Result;
use crate::stage::copartition::{CoPartition, Side, block_capacity};
use crate::stage::{CacheKind, Ledger, Moves, PolicyKind, Stager, access_counts};

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
    /// The epoch order (resolved: `Shuffled` or `Blocked`).
    pub order: Order,
}

/// One policy at one budget: the JSON row of `rowstage simulate`.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// The epoch order replayed.
    pub order: String,
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
    /// Resident slots lent to steps' misses over the run.
    pub lent: u64,
    #[serde(skip)]
    pub lookups_per_sec: f64,
}

/// Host threads the simulator lays runs out with.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl SimSetup<'_> {
    /// The layout `train` would use with co-partitioning `co`.
    pub fn layout(&self, co: Option<CoPartition>) -> Result<RunLayout> {
        let spec = LayoutSpec { seed: self.seed, batch: self.batch, order: self.order, co_partition: co };
        RunLayout::new(self.train, self.n_users, self.n_items, spec, threads())
    }

    /// Slots a step may need at most (the smallest workable slab) without
    /// co-partitioning.
    pub fn needed_slots(&self) -> Result<u32> {
        let layout = self.layout(None)?;
        Ok(PartRows::new(&layout, threads(), false).max().max(2))
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

    /// Runs `kind` with a slab of `bytes`; `None` if it cannot hold a step.
    /// `prepared` may hold the layout and rows of a run without
    /// co-partitioning (they do not depend on the budget), to reuse.
    pub fn run(
        &self,
        kind: PolicyKind,
        bytes: u64,
        prepared: Option<&(RunLayout, PartRows)>,
    ) -> Result<Option<SimResult>> {
        let slots = crate::stage::slots_in(bytes, self.row_bytes);
        let co = self.co_partition(slots);
        if self.co_partition.is_some() && co.is_none() {
            return Ok(None);
        }
        let owned;
        let (layout, rows) = match prepared {
            Some(p) if co.is_none() => (&p.0, &p.1),
            _ => {
                let layout = self.layout(co)?;
                let rows = PartRows::new(&layout, threads(), true);
                owned = (layout, rows);
                (&owned.0, &owned.1)
            }
        };
        let mut counts = access_counts(self.train, self.n_users, self.n_items);
        if let Some(c) = co {
            counts = c.other_side_counts(&counts, self.n_users);
        }
        let groups = co.map(|c| GroupRows::new(layout, c.side));
        let slab = SlabInput {
            slots,
            policy: kind,
            batch: self.batch,
            ratings: self.train.len(),
            n_users: self.n_users,
            n_items: self.n_items,
            co_partition: co,
            counts: &counts,
            rows,
            layout,
            groups: groups.as_ref(),
            threads: threads(),
            multi_part_bins: layout.bins(),
        };
        let Ok(slab) = plan_slab(&slab) else { return Ok(None) };
        let (areas, block_slots, sca, step_rows) = (slab.areas, slab.block_slots, slab.sca, slab.multi_part_rows);
        let mut st = Stager::new(
            kind,
            areas,
            self.n_users as u32,
            self.n_items as u32,
            &counts,
            lookahead_accesses(self.lookahead, self.train.len(), rows),
        )
        .with_sca_cache(sca.map_or(CacheKind::Lru, |p| p.cache))
        .with_block_area(block_slots);
        let mut ledger = Ledger::default();
        let areas = st.areas();
        for p in st.resident() {
            ledger.row_in(st.is_user(p.row), true);
        }
        let outside = outside_rows(&st, rows, threads());
        let t0 = Instant::now();
        let mut moves = Moves::default();
        let never = AtomicBool::new(false);
        // Not reserved up front: `epochs` is the user's number.
        let mut epoch_rows_in = Vec::new();
        let mut plan = layout.epoch(0);
        for epoch in 0..self.epochs {
            let following = (epoch + 1 < self.epochs).then(|| layout.epoch(epoch + 1));
            let mut walk = Walker {
                stager: &mut st,
                rows,
                outside: outside.as_ref(),
                groups: groups.as_ref(),
                moves: &mut moves,
                step_rows,
                scratch: Vec::new(),
            };
            let pass = Pass { plan: &plan, from: 0, following: following.as_ref(), continues: epoch > 0, stop: &never };
            walk.epoch(pass, &mut ledger, |_, _| Ok(()))?;
            // Training evaluates after every epoch, which first brings the
            // lent resident rows back (as a GPU run does).
            if st.has_lent() {
                st.restore_lent(&mut moves, &mut ledger);
            }
            epoch_rows_in.push(ledger.rows_in() - epoch_rows_in.iter().sum::<u64>());
            if let Some(f) = following {
                plan = f;
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        st.take_dirty(&mut ledger);
        let predicted_rows_in =
            sca.map(|p| areas.resident as f64 + p.cold_rows_in + self.epochs as f64 * p.rows_in_per_epoch);
        Ok(Some(SimResult {
            order: self.order.name(),
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
            lent: ledger.lent,
            lookups_per_sec: (2 * self.train.len() * self.epochs) as f64 / seconds.max(1e-9),
        }))
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
                    order: Order::Shuffled,
                };
                let belady = setup.run(PolicyKind::Belady, slots as u64 * 16, None).unwrap().unwrap();
                let layout = setup.layout(None).unwrap();
                let steps: Vec<Vec<u32>> = layout
                    .epoch(0)
                    .parts
                    .iter()
                    .map(|&p| {
                        let r = layout.part(p)[0];
                        vec![0, 1 + r.item]
                    })
                    .collect();
                let opt = best(&steps, slots as usize, BTreeSet::new());
                assert_eq!(belady.rows_in as u32, opt, "trace {items:?}, {slots} slots");
                for kind in PolicyKind::ALL {
                    // Rows in count resident preloads too, so policies compare fairly.
                    let r = setup.run(kind, slots as u64 * 16, None).unwrap().unwrap();
                    assert!(r.rows_in >= belady.rows_in, "{} beat belady on {items:?} with {slots} slots", kind.name());
                }
            }
        }
    }

    #[test]
    fn no_policy_beats_belady_and_sca_prediction_is_close_on_iid_data() {
        let spec = SyntheticSpec { users: 3000, items: 1500, ratings: 60_000, zipf: Some(0.0) };
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
            order: Order::Shuffled,
        };
        let bytes = (d.users.len() + d.items.len()) as u64 * 144 / 4;
        let belady = setup.run(PolicyKind::Belady, bytes, None).unwrap().unwrap();
        for kind in PolicyKind::ALL {
            let r = setup.run(kind, bytes, None).unwrap().unwrap();
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
