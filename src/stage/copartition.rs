//! Co-partitioning (Factorbird, DESIGN.md §4): one factor table travels with
//! the data partition, the other comes from the parameter server.
//!
//! The rows of the chosen side are dealt into blocks: rows sorted by training
//! count, dealt round-robin, so that every block holds about the same number
//! of rows and of ratings. An epoch visits the blocks in a seeded random order
//! and each block's ratings in a seeded random order (a stable sort of the
//! epoch's shuffled order by block rank). Batches never cross a block
//! boundary. While a block trains, its rows of the chosen side sit in a block
//! area of the slab: staged in once when the block starts, written back once
//! when it ends. The other side goes through the staging policy in the rest
//! of the slab.
//!
//! With `visits` V > 1 every block is visited V times per epoch: its ratings
//! (in their shuffled order) are cut into V consecutive parts, and visit v
//! takes part v of every block, blocks in a fresh seeded order per visit.
//! The other side then meets every block's rows V times per epoch instead of
//! in one long stretch, which is what costs accuracy with V = 1
//! (BENCHMARKS.md), at the price of staging a block's rows up to V times.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::Rating;

/// Which table travels with the data partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Users,
    Items,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Users => "users",
            Side::Items => "items",
        }
    }

    /// The side with more rows (ties: users), the default.
    pub fn larger(n_users: usize, n_items: usize) -> Side {
        if n_items > n_users { Side::Items } else { Side::Users }
    }

    /// The global row of `r` on this side (users first, then items).
    pub fn row(self, r: &Rating, n_users: u32) -> u32 {
        match self {
            Side::Users => r.user,
            Side::Items => n_users + r.item,
        }
    }
}

/// Co-partitioning of a run: the side, and the most rows of it a block may
/// hold (the block area of the slab).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoPartition {
    pub side: Side,
    pub block_rows: u32,
    /// Visits of every block per epoch (see the module docs).
    #[serde(default = "one")]
    pub visits: u32,
}

fn one() -> u32 {
    1
}

impl CoPartition {
    /// The blocks of `train` for this co-partitioning.
    pub fn blocks(&self, train: &[Rating], n_users: usize, n_items: usize) -> Blocks {
        Blocks::new(train, n_users, n_items, self.side, self.block_rows, self.visits)
    }

    /// Zeroes the co-partitioned side's counts: the staging policy then plans
    /// for the other side only.
    pub fn other_side_counts(&self, counts: &[u32], n_users: usize) -> Vec<u32> {
        let mut c = counts.to_vec();
        match self.side {
            Side::Users => c[..n_users].fill(0),
            Side::Items => c[n_users..].fill(0),
        }
        c
    }
}

/// The share of the slab given to the block area, at most; the rest must
/// still hold one batch's rows of the other side.
pub const BLOCK_SHARE: f64 = 0.5;

/// Block-area slots for a slab of `slots`: [`BLOCK_SHARE`] of it, leaving at
/// least `other_per_batch` slots for the other side. 0 when nothing is left.
pub fn block_capacity(slots: u32, other_per_batch: u32) -> u32 {
    ((slots as f64 * BLOCK_SHARE) as u32).min(slots.saturating_sub(other_per_batch))
}

/// The blocks of one run.
#[derive(Debug, Clone)]
pub struct Blocks {
    pub side: Side,
    /// Block of every training rating (by its row on `side`).
    block_of: Vec<u32>,
    pub n_blocks: u32,
    /// Most rows of `side` in one block.
    pub rows_per_block: u32,
    /// Visits of every block per epoch.
    pub visits: u32,
    active: u64,
    /// Rows of the side expected to move in per epoch (see
    /// [`Blocks::expected_rows_per_epoch`]).
    expected: f64,
}

impl Blocks {
    /// Deals the rows of `side` that have training ratings into blocks of at
    /// most `capacity` rows, each visited `visits` times per epoch.
    pub fn new(train: &[Rating], n_users: usize, n_items: usize, side: Side, capacity: u32, visits: u32) -> Self {
        let visits = visits.max(1);
        let n_side = match side {
            Side::Users => n_users,
            Side::Items => n_items,
        };
        let base = match side {
            Side::Users => 0,
            Side::Items => n_users as u32,
        };
        let mut counts = vec![0u32; n_side];
        for r in train {
            counts[(side.row(r, n_users as u32) - base) as usize] += 1;
        }
        let active = super::top_rows(&counts, counts.iter().filter(|&&c| c > 0).count());
        let capacity = capacity.max(1) as usize;
        let n_blocks = active.len().div_ceil(capacity).max(1);
        let mut block_of_row = vec![0u32; n_side];
        for (k, &row) in active.iter().enumerate() {
            block_of_row[row as usize] = (k % n_blocks) as u32;
        }
        let block_of = train.iter().map(|r| block_of_row[(side.row(r, n_users as u32) - base) as usize]).collect();
        // A row with c ratings appears in a given visit's part of its block
        // with probability about 1 − (1 − 1/V)^c.
        let v = visits as f64;
        let expected =
            counts.iter().filter(|&&c| c > 0).map(|&c| v * (1.0 - (1.0 - 1.0 / v).powi(c as i32))).sum::<f64>();
        Blocks {
            side,
            block_of,
            n_blocks: n_blocks as u32,
            rows_per_block: active.len().div_ceil(n_blocks) as u32,
            visits,
            active: active.len() as u64,
            expected,
        }
    }

    /// Rows of the side staged in (and written back) per epoch: every active
    /// row once with one visit; with V visits, the rows each visit's part of
    /// a block holds, estimated as if a row's ratings fell into the V parts
    /// independently.
    pub fn expected_rows_per_epoch(&self) -> f64 {
        self.expected
    }

    /// Rows of the side that have training ratings (each moves in and out
    /// once per epoch).
    pub fn active_rows(&self) -> u64 {
        self.active
    }

    /// Reorders `order` (the epoch's shuffled order) block by block, blocks
    /// in a random order seeded by `(seed, epoch)`, keeping the shuffled order
    /// inside each block; with several visits, part by part (module docs).
    /// `ends` receives each block visit's end in `order`.
    pub fn arrange(&self, order: &mut Vec<u32>, seed: u64, epoch: usize, ends: &mut Vec<u32>, scratch: &mut Vec<u32>) {
        let n = self.n_blocks as usize;
        let mut rank: Vec<u32> = (0..n as u32).collect();
        let mut rng =
            StdRng::seed_from_u64(seed ^ 0xB10C_0000_0000_0000 ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        rank.shuffle(&mut rng);
        // rank[b] = position of block b in this epoch.
        let mut start = vec![0u32; n + 1];
        for &j in order.iter() {
            start[rank[self.block_of[j as usize] as usize] as usize + 1] += 1;
        }
        for k in 0..n {
            start[k + 1] += start[k];
        }
        ends.clear();
        ends.extend(start[1..].iter().copied().filter(|&e| e > 0));
        ends.dedup();
        scratch.clear();
        scratch.resize(order.len(), 0);
        for &j in order.iter() {
            let at = &mut start[rank[self.block_of[j as usize] as usize] as usize];
            scratch[*at as usize] = j;
            *at += 1;
        }
        std::mem::swap(order, scratch);
        let visits = self.visits as usize;
        if visits > 1 {
            // Block k spans order[ends[k-1]..ends[k]]; visit v takes its v-th
            // part, the blocks in a fresh order per visit.
            let block_ends = std::mem::take(ends);
            let mut seq: Vec<usize> = (0..block_ends.len()).collect();
            scratch.clear();
            for v in 0..visits {
                seq.shuffle(&mut rng);
                for &k in &seq {
                    let b0 = if k == 0 { 0 } else { block_ends[k - 1] as usize };
                    let len = block_ends[k] as usize - b0;
                    let (p0, p1) = (b0 + len * v / visits, b0 + len * (v + 1) / visits);
                    if p1 > p0 {
                        scratch.extend_from_slice(&order[p0..p1]);
                        ends.push(scratch.len() as u32);
                    }
                }
            }
            std::mem::swap(order, scratch);
        }
    }
}

/// The distinct rows of `side` among `ratings`, in first-seen order, using
/// `seen` (one stamp per global row, grown as needed) to deduplicate.
pub fn distinct_side_rows<'r>(
    ratings: impl Iterator<Item = &'r Rating>,
    side: Side,
    n_users: u32,
    seen: &mut Vec<u32>,
    stamp: &mut u32,
    out: &mut Vec<u32>,
) {
    *stamp = stamp.wrapping_add(1);
    if *stamp == 0 {
        seen.fill(0);
        *stamp = 1;
    }
    out.clear();
    for r in ratings {
        let row = side.row(r, n_users) as usize;
        if row >= seen.len() {
            seen.resize(row + 1, 0);
        }
        if seen[row] != *stamp {
            seen[row] = *stamp;
            out.push(row as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_balanced_and_the_order_is_a_permutation_grouped_by_block() {
        let mut train = Vec::new();
        for k in 0..1000u32 {
            // Skewed users: user u gets about 1000/(u+1) ratings.
            let u = (k * k) % 37 % (1 + k % 23);
            train.push(Rating { user: u, item: k % 11, value: 3.0 });
        }
        let b = Blocks::new(&train, 23, 11, Side::Users, 5, 1);
        let active = train.iter().map(|r| r.user).collect::<std::collections::BTreeSet<_>>().len() as u64;
        assert_eq!(b.active_rows(), active);
        assert_eq!(b.n_blocks as u64, active.div_ceil(5), "{active} users in blocks of at most 5");
        assert!(b.rows_per_block <= 5);
        let mut order: Vec<u32> = (0..1000).rev().collect();
        let (mut ends, mut scratch) = (Vec::new(), Vec::new());
        b.arrange(&mut order, 1, 0, &mut ends, &mut scratch);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(*ends.last().unwrap(), 1000);
        let mut start = 0;
        let mut blocks_seen = Vec::new();
        for &e in &ends {
            let block = b.block_of[order[start] as usize];
            assert!(order[start..e as usize].iter().all(|&j| b.block_of[j as usize] == block));
            assert!(!blocks_seen.contains(&block), "a block appears once per epoch");
            blocks_seen.push(block);
            start = e as usize;
        }
        // Another epoch visits the blocks in another order.
        let mut order2: Vec<u32> = (0..1000).rev().collect();
        let mut ends2 = Vec::new();
        b.arrange(&mut order2, 1, 1, &mut ends2, &mut scratch);
        assert_ne!(order, order2);

        // Three visits: every block appears three times, each time with the
        // next third of its ratings, and the order is still a permutation.
        let b3 = Blocks::new(&train, 23, 11, Side::Users, 5, 3);
        let mut order3: Vec<u32> = (0..1000).rev().collect();
        let mut ends3 = Vec::new();
        b3.arrange(&mut order3, 1, 0, &mut ends3, &mut scratch);
        let mut sorted = order3.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(*ends3.last().unwrap(), 1000);
        let mut visits = vec![0; b3.n_blocks as usize];
        let mut start = 0;
        for &e in &ends3 {
            let block = b3.block_of[order3[start] as usize];
            assert!(order3[start..e as usize].iter().all(|&j| b3.block_of[j as usize] == block));
            visits[block as usize] += 1;
            start = e as usize;
        }
        assert!(visits.iter().all(|&v| v == 3), "{visits:?}");
        assert!(b3.expected_rows_per_epoch() > b.expected_rows_per_epoch());
        assert_eq!(b.expected_rows_per_epoch(), b.active_rows() as f64);
    }
}
