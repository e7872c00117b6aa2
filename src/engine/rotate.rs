//! The blocked order across ranks (`--distributed rotate`): which rank trains
//! each block of a round, which bins travel between rounds, and the bytes
//! that takes, worked out from the order alone (docs/ARCHITECTURE.md, "Past
//! one machine"). Nothing here talks to another process: the MPI trainer
//! (`crate::distributed`) walks this schedule, and `plan` and the report
//! print its traffic before a byte moves.
//!
//! Worker `i` of a round (the blocked order's `i`-th block, [`BlockedEpoch`])
//! belongs to rank `i · ranks / bins`: a contiguous run of workers, so that a
//! tiled order whose tiles are the ranks' runs keeps a shift's rounds inside
//! each rank. A bin (of users or of items) is wherever it was last trained;
//! a round first moves every bin it needs from its holder to the rank that
//! trains it, then every rank trains its blocks. Rounds are row-disjoint, so
//! each block sees exactly the rows the sequential walk gives it: the model
//! is one process's, bit for bit on the CPU. At the end of an epoch every
//! rank sends the rows it holds to every other (an all-gather), so that
//! each rank holds the whole model to score, checkpoint and save, and the
//! next epoch starts with every bin everywhere.

use super::{BlockedEpoch, Order, RunLayout};
use crate::error::{Error, Result};
use crate::stage::copartition::Side;

/// Where a bin's current rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Every rank holds them (an epoch's start, after the all-gather).
    All,
    Rank(usize),
}

/// A bin sent between two ranks before a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub side: Side,
    pub bin: u32,
    pub from: usize,
    pub to: usize,
}

/// A block of a round: the layout's block (`user bin × bins + item bin`),
/// its sweep, and the rank that trains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    pub block: usize,
    pub sweep: usize,
    pub rank: usize,
}

/// Each bin's holder at an epoch's end, per side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holders {
    pub users: Vec<Holder>,
    pub items: Vec<Holder>,
}

/// Bytes handed to MPI in one epoch, per sending rank.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bins moved between rounds.
    pub rotation: Vec<u64>,
    /// The epoch's end: each rank's rows, once to every other rank.
    pub gather: Vec<u64>,
}

impl Traffic {
    pub fn by_rank(&self) -> Vec<u64> {
        self.rotation.iter().zip(&self.gather).map(|(r, g)| r + g).collect()
    }

    pub fn total(&self) -> u64 {
        self.by_rank().iter().sum()
    }
}

/// Refuses an order rotate cannot train: any but the blocked one (which a
/// co-partitioned run never has).
pub fn check_order(order: Order) -> Result<()> {
    if matches!(order, Order::Blocked { .. }) {
        return Ok(());
    }
    Err(Error::arg(
        "`distributed`",
        "rotate",
        format!(
            "rotates the blocked order's bins between ranks; this run's order is {} (`distributed` server \
             trains any order)",
            order.name()
        ),
    ))
}

/// A run's layout split over `ranks` (module docs).
#[derive(Debug, Clone)]
pub struct Rotation {
    ranks: usize,
    bins: usize,
    /// The rows of each bin that have training ratings, ascending; rows with
    /// none are never updated, so every rank's copy stays the initial one.
    user_rows: Vec<Vec<u32>>,
    item_rows: Vec<Vec<u32>>,
}

impl Rotation {
    /// The rotation of `layout` (the blocked order, not co-partitioned)
    /// over `ranks`, at most one per bin.
    pub fn new(layout: &RunLayout, ranks: usize) -> Result<Self> {
        check_order(layout.spec().order)?;
        let (Some(bins), Some(starts)) = (layout.bins(), layout.block_starts()) else {
            unreachable!("a layout of the blocked order has bins")
        };
        let bins = bins as usize;
        if ranks == 0 || ranks > bins {
            return Err(Error::arg(
                "`distributed`",
                "rotate",
                format!(
                    "gives each of {ranks} ranks at least one of the order's {bins} bins: run at most {bins} \
                     ranks, or an order with more bins (`order` blocked:BINS:SWEEPS:TILE)"
                ),
            ));
        }
        let mut user_bin = vec![u32::MAX; layout.n_users()];
        let mut item_bin = vec![u32::MAX; layout.n_items()];
        let ratings = layout.ratings();
        for b in 0..bins * bins {
            let (ub, ib) = ((b / bins) as u32, (b % bins) as u32);
            for r in &ratings[starts[b] as usize..starts[b + 1] as usize] {
                user_bin[r.user as usize] = ub;
                item_bin[r.item as usize] = ib;
            }
        }
        let group = |of: &[u32]| {
            let mut rows = vec![Vec::new(); bins];
            for (row, &b) in of.iter().enumerate() {
                if b != u32::MAX {
                    rows[b as usize].push(row as u32);
                }
            }
            rows
        };
        Ok(Rotation { ranks, bins, user_rows: group(&user_bin), item_rows: group(&item_bin) })
    }

    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// The rank that trains worker `i`'s blocks.
    pub fn rank_of_worker(&self, i: usize) -> usize {
        i * self.ranks / self.bins
    }

    /// The rows of `side`'s bin `bin` that have training ratings, ascending.
    pub fn rows(&self, side: Side, bin: u32) -> &[u32] {
        match side {
            Side::Users => &self.user_rows[bin as usize],
            Side::Items => &self.item_rows[bin as usize],
        }
    }

    /// Walks epoch `order` of `layout` round by round: `round` is given the
    /// bins to move before the round (in one order every rank agrees on)
    /// and its blocks, empty parts left out. Every bin starts the epoch
    /// everywhere. Returns where each bin ends.
    pub fn walk(
        &self,
        layout: &RunLayout,
        order: &BlockedEpoch,
        mut round: impl FnMut(&[Move], &[Task]) -> Result<()>,
    ) -> Result<Holders> {
        let n = self.bins;
        let mut holders = Holders { users: vec![Holder::All; n], items: vec![Holder::All; n] };
        let (mut moves, mut tasks) = (Vec::new(), Vec::new());
        for sweep in 0..order.sweeps as usize {
            for (shift, r) in order.rounds(sweep) {
                moves.clear();
                tasks.clear();
                for i in 0..n {
                    let block = order.block(sweep, i, shift, r);
                    if layout.block_sweep(block, sweep).is_empty() {
                        continue;
                    }
                    let rank = self.rank_of_worker(i);
                    let bins = [(Side::Users, block / n), (Side::Items, block % n)];
                    for (side, bin) in bins {
                        let holder = match side {
                            Side::Users => &mut holders.users[bin],
                            Side::Items => &mut holders.items[bin],
                        };
                        if let Holder::Rank(from) = *holder
                            && from != rank
                        {
                            moves.push(Move { side, bin: bin as u32, from, to: rank });
                        }
                        *holder = Holder::Rank(rank);
                    }
                    tasks.push(Task { block, sweep, rank });
                }
                if !tasks.is_empty() {
                    round(&moves, &tasks)?;
                }
            }
        }
        Ok(holders)
    }

    /// What rank `rank` sends at the epoch's end: the bins it holds, users
    /// then items, bins ascending.
    pub fn gathered(&self, holders: &Holders, rank: usize) -> Vec<(Side, u32)> {
        let held = |side: Side, of: &[Holder]| {
            of.iter()
                .enumerate()
                .filter(move |(_, h)| **h == Holder::Rank(rank))
                .map(move |(b, _)| (side, b as u32))
                .collect::<Vec<_>>()
        };
        let mut out = held(Side::Users, &holders.users);
        out.extend(held(Side::Items, &holders.items));
        out
    }

    /// Rows with training ratings, both sides: what the epoch's end
    /// gathers (every rank's share to every other rank).
    pub fn trained_rows(&self) -> usize {
        self.user_rows.iter().chain(&self.item_rows).map(Vec::len).sum()
    }

    /// Rows of `bins`.
    pub fn rows_of(&self, bins: &[(Side, u32)]) -> usize {
        bins.iter().map(|&(s, b)| self.rows(s, b).len()).sum()
    }

    /// Epoch `epoch`'s bytes per sending rank, rows of `row_bytes`, worked
    /// out from the order alone: what the trainer will hand to MPI.
    pub fn traffic(&self, layout: &RunLayout, epoch: usize, row_bytes: u64) -> Result<Traffic> {
        let order = layout.blocked_epoch(epoch).expect("a rotation's layout is blocked");
        let mut rotation = vec![0u64; self.ranks];
        let holders = self.walk(layout, &order, |moves, _| {
            for m in moves {
                rotation[m.from] += self.rows(m.side, m.bin).len() as u64 * row_bytes;
            }
            Ok(())
        })?;
        let others = self.ranks as u64 - 1;
        let gather =
            (0..self.ranks).map(|k| self.rows_of(&self.gathered(&holders, k)) as u64 * row_bytes * others).collect();
        Ok(Traffic { rotation, gather })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Rating;
    use crate::engine::{LayoutSpec, Order};

    fn layout(bins: u32, sweeps: u32, tile: u32) -> RunLayout {
        let train: Vec<Rating> = (0..5000u32)
            .map(|k| Rating { user: (k * 7919) % 301, item: (k * 104_729 + k / 13) % 173, value: (k % 5) as f32 })
            .collect();
        let spec = LayoutSpec { seed: 5, batch: 64, order: Order::Blocked { bins, sweeps, tile }, co_partition: None };
        RunLayout::new(&train, 301, 173, spec, 2).unwrap()
    }

    /// Every block of every sweep is trained once, by the rank of its
    /// worker; every bin a round needs is at that rank when the round
    /// starts (moved there or already held), and no bin is needed by two
    /// ranks in one round.
    #[test]
    fn a_walk_trains_every_block_once_with_its_bins_at_hand() {
        for (ranks, (bins, sweeps, tile)) in [(1, (8, 2, 1)), (3, (8, 2, 1)), (4, (8, 3, 2)), (8, (8, 1, 8))] {
            let layout = layout(bins, sweeps, tile);
            let rot = Rotation::new(&layout, ranks).unwrap();
            let order = layout.blocked_epoch(1).unwrap();
            let mut seen = std::collections::HashSet::new();
            let mut at = [vec![None; bins as usize], vec![None; bins as usize]];
            rot.walk(&layout, &order, |moves, tasks| {
                for m in moves {
                    let side = m.side as usize;
                    assert_eq!(at[side][m.bin as usize], Some(m.from), "a bin moves from where it is");
                    at[side][m.bin as usize] = Some(m.to);
                }
                let mut used = std::collections::HashSet::new();
                for t in tasks {
                    assert!(seen.insert((t.block, t.sweep)), "block {} sweep {} twice", t.block, t.sweep);
                    for (side, bin) in [(0, t.block / bins as usize), (1, t.block % bins as usize)] {
                        assert!(used.insert((side, bin)), "two blocks of a round share a bin");
                        let here = at[side][bin].get_or_insert(t.rank);
                        assert_eq!(*here, t.rank, "bin {bin} of side {side} not at rank {}", t.rank);
                    }
                }
                Ok(())
            })
            .unwrap();
            let parts = (0..(bins * bins) as usize)
                .flat_map(|b| (0..sweeps as usize).map(move |v| (b, v)))
                .filter(|&(b, v)| !layout.block_sweep(b, v).is_empty())
                .count();
            assert_eq!(seen.len(), parts);
        }
    }

    /// One rank moves nothing; a tiled order whose tiles are the ranks'
    /// workers moves item bins only between shifts, fewer than the plain
    /// rounds of the same bins; the gather sends every trained row once to
    /// every other rank.
    #[test]
    fn traffic_follows_the_order() {
        let row = 144;
        let one = Rotation::new(&layout(8, 2, 1), 1).unwrap();
        assert_eq!(one.traffic(&layout(8, 2, 1), 0, row).unwrap().total(), 0);
        let (plain, tiled) = (layout(8, 1, 1), layout(8, 1, 4));
        let p = Rotation::new(&plain, 2).unwrap().traffic(&plain, 0, row).unwrap();
        let t = Rotation::new(&tiled, 2).unwrap().traffic(&tiled, 0, row).unwrap();
        let rotated = |t: &Traffic| t.rotation.iter().sum::<u64>();
        assert!(rotated(&t) < rotated(&p), "tiled {} plain {}", rotated(&t), rotated(&p));
        let trained = |l: &RunLayout| {
            let (mut u, mut i) = (std::collections::HashSet::new(), std::collections::HashSet::new());
            for r in l.ratings() {
                u.insert(r.user);
                i.insert(r.item);
            }
            (u.len() + i.len()) as u64
        };
        assert_eq!(t.gather.iter().sum::<u64>(), trained(&tiled) * row);
        assert!(Rotation::new(&plain, 9).is_err(), "more ranks than bins");
    }
}
