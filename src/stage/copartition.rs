//! Co-partitioning (Factorbird; docs/ARCHITECTURE.md, "Co-partitioning and grid search"): one factor table travels with
//! the data partition, the other comes from the parameter server.
//!
//! The rows of the chosen side are dealt into blocks: rows sorted by training
//! count, dealt round-robin, so that every block holds about the same number
//! of rows and of ratings. The run's layout ([`crate::engine::order`]) holds
//! each block's ratings together, shuffled once; an epoch visits the blocks
//! in a seeded random order and a block's parts (batches) in a seeded random
//! order. Batches never cross a block boundary. While a block trains, its rows of the chosen side sit in a block
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

use serde::{Deserialize, Serialize};

use crate::data::Rating;

/// Which table travels with the data partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Block of every row of `side` (by its index in the side's table).
    block_of_row: Vec<u32>,
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
        // A row with c ratings appears in a given visit's part of its block
        // with probability about 1 − (1 − 1/V)^c.
        let v = visits as f64;
        let expected =
            counts.iter().filter(|&&c| c > 0).map(|&c| v * (1.0 - (1.0 - 1.0 / v).powi(c as i32))).sum::<f64>();
        Blocks {
            side,
            block_of_row,
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

    /// The block of rating `r` (by its row on the side).
    pub fn block_of(&self, r: &Rating, n_users: u32) -> u32 {
        let row = self.side.row(r, n_users);
        let base = match self.side {
            Side::Users => 0,
            Side::Items => n_users,
        };
        self.block_of_row[(row - base) as usize]
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
    fn blocks_are_balanced_and_hold_rows_whole() {
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
        let mut rows_of = vec![std::collections::BTreeSet::new(); b.n_blocks as usize];
        for r in &train {
            rows_of[b.block_of(r, 23) as usize].insert(r.user);
        }
        assert!(rows_of.iter().all(|s| s.len() <= 5), "{rows_of:?}");
        let mut per_block = vec![0u32; b.n_blocks as usize];
        for r in &train {
            per_block[b.block_of(r, 23) as usize] += 1;
        }
        assert!(per_block.iter().all(|&c| c > 0));
        let b3 = Blocks::new(&train, 23, 11, Side::Users, 5, 3);
        assert!(b3.expected_rows_per_epoch() > b.expected_rows_per_epoch());
        assert_eq!(b.expected_rows_per_epoch(), b.active_rows() as f64);
    }
}
