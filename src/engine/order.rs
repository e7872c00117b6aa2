//! The epoch order: the contract between the training loop and every backend
//! (docs/ARCHITECTURE.md, "The order").
//!
//! A run's training ratings are laid out once ([`RunLayout`]) and cut into
//! fixed *parts*: contiguous runs of the layout, each trained in order. An
//! epoch ([`EpochPlan`]) is a sequence of part ids drawn from `(seed, epoch)`
//! alone, and its sequential order is the concatenation of those parts'
//! ratings. Making an epoch's order therefore costs O(parts), not O(ratings),
//! and a part's contents are the same every epoch: what a backend needs per
//! part (its distinct rows, its conflict-free waves, its conflicts) is
//! computed once per run, and a GPU holds the layout in its own memory and
//! is told only which parts come next.
//!
//! Three arrangements, all built with the parallel shuffle of
//! [`super::blocked::deal_and_shuffle`] (the same on any number of threads):
//!
//! * **shuffled**: every rating once in a seeded random order, cut into parts
//!   of `batch` ratings (the last may be shorter); an epoch visits the parts
//!   in a seeded random order. A part is a GPU step: its rows are staged
//!   together.
//! * **co-partitioned** ([`crate::stage::copartition`]): the
//!   ratings grouped by the block of their co-partitioned row, shuffled
//!   within a block, each block cut into V visit parts and those into parts
//!   of `batch`. An epoch goes visit by visit, the blocks of a visit in a
//!   seeded order and a block visit's parts in a seeded order; a *group* of
//!   the plan is one block visit, whose rows of the side are staged once.
//! * **blocked** ([`super::blocked`]): the FPSGD blocks, a part per block and
//!   sweep; an epoch goes sweep by sweep and round by round, a group per
//!   round, whose parts share no row.

use std::ops::Range;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use strength_reduce::StrengthReducedU64;

use super::blocked::{self, BlockedRatings};
use crate::data::Rating;
use crate::error::{Error, Result};
use crate::stage::copartition::{Blocks, CoPartition};

/// The id of a plan group that is not a co-partitioning block visit.
pub const NO_GROUP: u32 = u32::MAX;

/// How an epoch's ratings are ordered (`--order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// `Blocked` without co-partitioning, `Shuffled` with it (resolved by
    /// [`Order::resolve`] when a run starts).
    Auto,
    /// The shuffled arrangement (module docs); arranged block by block under
    /// co-partitioning.
    Shuffled,
    /// FPSGD's blocked order over `bins` × `bins` blocks ([`super::blocked`];
    /// 0: as many as [`Order::resolve`] chooses for the target),
    /// in `sweeps` sweeps per epoch (0: one per [`super::blocked::SWEEP_RATINGS`]
    /// training ratings, [`super::blocked::MIN_VISITS`] at least), its rounds
    /// taken `tile` at a time within tiles of `tile` × `tile` blocks
    /// ([`BlockedEpoch`]; 0 or 1: no tiles, the plain diagonal rounds; 0 lets
    /// [`Order::resolve`] choose).
    Blocked {
        bins: u32,
        sweeps: u32,
        #[serde(default)]
        tile: u32,
    },
}

/// What [`Order::resolve`] chooses for: the data's shape and the settings
/// that shape the model. Nothing about the device, the budget or the thread
/// count: every backend trains the order resolved from these alone
/// (docs/ARCHITECTURE.md, "The order").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The training ratings and the tables' sides.
    pub ratings: usize,
    pub n_users: usize,
    pub n_items: usize,
    /// The rank, which bounds the tile ([`blocked::tile_cap`]).
    pub rank: usize,
    pub co_partition: bool,
}

impl Target {
    /// The target of a run of rank `rank` over `data`'s training ratings.
    pub fn of(data: &crate::data::Dataset, rank: usize, co_partition: bool) -> Self {
        Target { ratings: data.train.len(), n_users: data.users.len(), n_items: data.items.len(), rank, co_partition }
    }
}

impl Order {
    /// The order a run takes, every field set: `Auto` resolved, the blocked
    /// order's unset bins, sweeps and tile chosen from the data, and what
    /// cannot work refused. `Auto` is the blocked order without
    /// co-partitioning, which trains exactly (no two workers touch a row at
    /// once): [`blocked::default_bins`] bins in [`blocked::default_sweeps`]
    /// sweeps, in the largest power-of-two tile within
    /// [`blocked::tile_cap`]; with co-partitioning the shuffled order.
    /// The result depends on `target` alone, and resolving it again gives
    /// it back.
    pub fn resolve(self, target: &Target) -> Result<Order> {
        self.check_co_partition(target.co_partition)?;
        let cap = blocked::tile_cap(target.rank);
        let sweeps_or_default =
            |sweeps: u32| if sweeps > 0 { sweeps } else { blocked::default_sweeps(target.ratings) as u32 };
        let side = target.n_users.min(target.n_items).max(1);
        let (bins, sweeps, tile) = match self {
            Order::Auto if target.co_partition => return Ok(Order::Shuffled),
            Order::Shuffled => return Ok(Order::Shuffled),
            Order::Auto => (0, 0, 0),
            Order::Blocked { bins, sweeps, tile } => (bins, sweeps, tile),
        };
        let sweeps = sweeps_or_default(sweeps);
        let chosen = blocked::default_bins(target.ratings, target.n_users, target.n_items);
        let (bins, tile) = match (bins, tile) {
            // Bins chosen here: a power-of-two tile, the bins rounded down
            // to a multiple of it.
            (0, 0) => {
                let tile = blocked::power_tile(chosen, cap);
                (chosen / tile * tile, tile)
            }
            (0, tile) => ((chosen / tile).max(1) * tile, tile),
            // BINS² blocks are laid out: more bins than a side has rows only
            // adds empty blocks (and, unbounded, exhausts memory).
            (bins, _) if bins as usize > side => {
                return Err(Error::arg(
                    "`order`",
                    self.name(),
                    format!(
                        "BINS must be at most the smaller side's {side} rows (the data has {} users, {} items)",
                        target.n_users, target.n_items
                    ),
                ));
            }
            (bins, 0) => (bins, blocked::divisor_tile(bins, cap)),
            (bins, tile) if bins % tile != 0 => {
                return Err(Error::arg(
                    "`order`",
                    self.name(),
                    format!("TILE must divide BINS ({bins} bins, tile {tile})"),
                ));
            }
            (bins, tile) => (bins, tile),
        };
        Ok(Order::Blocked { bins, sweeps, tile })
    }

    /// Whether every field is set, as [`Order::resolve`] leaves it.
    pub fn is_resolved(self) -> bool {
        match self {
            Order::Auto => false,
            Order::Shuffled => true,
            Order::Blocked { bins, sweeps, tile } => bins > 0 && sweeps > 0 && tile > 0,
        }
    }

    /// Whether the order trains exactly on every backend: no two workers
    /// ever update one row at once, so every backend and thread count
    /// trains the same model. The shuffled order races (Hogwild!) unless
    /// a run asks for its conflict-free waves.
    pub fn is_exact(self) -> bool {
        !matches!(self, Order::Shuffled)
    }

    /// Refuses the blocked order beside co-partitioning: both arrange the
    /// epoch. Checked before a backend is opened and again by
    /// [`Order::resolve`].
    pub fn check_co_partition(self, co_partition: bool) -> Result<()> {
        match self {
            Order::Blocked { .. } if co_partition => {
                Err(Error::arg("`order`", self.name(), "and `co_partition` both arrange the epoch; choose one"))
            }
            _ => Ok(()),
        }
    }

    /// Parses `--order`: `auto`, `shuffled`, `blocked` (the bins `auto`
    /// chooses for the run's target, [`Order::resolve`]), `blocked:BINS`
    /// (BINS ≥ 1), `blocked:BINS:SWEEPS` (SWEEPS ≥ 1 per epoch, or `auto`)
    /// or `blocked:BINS:SWEEPS:TILE` (TILE ≥ 1 dividing BINS).
    pub fn parse(s: &str) -> Result<Order> {
        let bad = |why: &str| Error::arg("`order`", s, why);
        let number = |t: &str| t.trim().parse::<u32>().ok().filter(|&n| n >= 1);
        let sweeps = |t: &str| if t.trim() == "auto" { Some(0) } else { number(t) };
        let order = match s.trim() {
            "auto" => Order::Auto,
            "shuffled" => Order::Shuffled,
            "blocked" => Order::Blocked { bins: 0, sweeps: 0, tile: 0 },
            t => match t.strip_prefix("blocked:").map(|b| b.split(':').collect::<Vec<_>>()).as_deref() {
                Some([bins]) => match number(bins) {
                    Some(bins) => Order::Blocked { bins, sweeps: 0, tile: 0 },
                    None => return Err(bad("BINS must be a whole number ≥ 1, as in blocked:20")),
                },
                Some([bins, s]) => match (number(bins), sweeps(s)) {
                    (Some(bins), Some(sweeps)) => Order::Blocked { bins, sweeps, tile: 0 },
                    _ => return Err(bad("BINS and SWEEPS must be whole numbers ≥ 1, as in blocked:64:4")),
                },
                Some([bins, s, tile]) => match (number(bins), sweeps(s), number(tile)) {
                    (Some(bins), Some(sweeps), Some(tile)) if bins % tile == 0 => Order::Blocked { bins, sweeps, tile },
                    _ => {
                        return Err(bad(
                            "BINS, SWEEPS and TILE must be whole numbers ≥ 1, TILE dividing BINS, as in blocked:64:4:8",
                        ));
                    }
                },
                _ => {
                    return Err(bad(
                        "must be auto, shuffled, blocked, blocked:BINS, blocked:BINS:SWEEPS or blocked:BINS:SWEEPS:TILE",
                    ));
                }
            },
        };
        Ok(order)
    }

    /// Whether a run of this order trains one model on every backend,
    /// thread count and budget: an exact order, or the shuffled one trained
    /// in its conflict-free waves (`deterministic`).
    pub fn is_device_independent(self, deterministic: bool) -> bool {
        self.is_exact() || deterministic
    }

    /// A line for the user: what the order is, and whether the model depends
    /// on the device (`deterministic`: the shuffled order trained exactly).
    pub fn describe(self, deterministic: bool) -> String {
        let everywhere = "chosen from the data and the settings alone, so every backend, thread count and budget \
                          trains this order and the same model";
        match self {
            Order::Blocked { bins, sweeps, tile } => {
                let tiles = if tile > 1 {
                    format!(", in tiles of {tile} × {tile} blocks (a tile's {tile} rounds one after another)")
                } else {
                    String::new()
                };
                format!(
                    "order: {} — {bins} user bins × {bins} item bins, {sweeps} sweeps an epoch{tiles}; each round \
                     trains up to {bins} blocks that share no row at once (exact: nothing races); {everywhere}",
                    self.name()
                )
            }
            Order::Shuffled if deterministic => format!(
                "order: shuffled — every part's conflict-free waves in sequence (`deterministic`): the sequential \
                 model; {everywhere}"
            ),
            Order::Shuffled => "order: shuffled — Hogwild: racing updates may be lost, so the model depends on the \
                                backend, the thread count and, on a GPU, the Hogwild width and the batch a budget \
                                holds (`deterministic` trains the sequential model instead)"
                .into(),
            Order::Auto => "order: auto (not yet resolved)".into(),
        }
    }

    /// `auto`, `shuffled`, `blocked`, or `blocked:BINS:SWEEPS:TILE` with
    /// the fields not set shortened as `--order` takes them (`blocked:BINS`,
    /// `blocked:BINS:SWEEPS`, SWEEPS `auto`): a resolved order names every
    /// field, so its name parses back to it.
    pub fn name(&self) -> String {
        let sweeps = |s: u32| if s == 0 { "auto".to_string() } else { s.to_string() };
        match *self {
            Order::Auto => "auto".into(),
            Order::Shuffled => "shuffled".into(),
            Order::Blocked { bins: 0, sweeps: 0, tile: 0 } => "blocked".into(),
            Order::Blocked { bins, sweeps: 0, tile: 0 } => format!("blocked:{bins}"),
            Order::Blocked { bins, sweeps: s, tile: 0 } => format!("blocked:{bins}:{}", sweeps(s)),
            Order::Blocked { bins, sweeps: s, tile } => format!("blocked:{bins}:{}:{tile}", sweeps(s)),
        }
    }
}

/// A contiguous run of the layout's ratings, trained in order: 8 bytes, as
/// the GPU reads an epoch's part table.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Part {
    pub start: u32,
    pub len: u32,
}

impl Part {
    pub fn range(&self) -> Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// What a layout is made from, besides the ratings: everything that decides
/// the epochs' orders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayoutSpec {
    pub seed: u64,
    /// Ratings per part in the shuffled and co-partitioned arrangements.
    pub batch: usize,
    /// Resolved: `Shuffled` or `Blocked`.
    pub order: Order,
    pub co_partition: Option<CoPartition>,
}

/// How the parts of a layout are arranged into epochs.
#[derive(Debug, Clone)]
enum Arrangement {
    Shuffled,
    CoPartitioned {
        n_blocks: u32,
        visits: u32,
        /// Part ids of block visit `v * n_blocks + b` (contiguous ids).
        groups: Vec<Range<u32>>,
    },
    Blocked {
        bins: u32,
        visits: u32,
        /// Bins per tile ([`BlockedEpoch`]), 1 for none.
        tile: u32,
        /// Part id of block `b`'s visit `v` at `b * visits + v` ([`NO_GROUP`]
        /// where that part is empty).
        block_parts: Vec<u32>,
        block_len: Vec<u32>,
        /// Where each block's ratings start in the layout.
        block_start: Vec<u32>,
        /// `visits`, ready to divide by ([`sweep_cut`]).
        by_visits: StrengthReducedU64,
        /// (user bin, item bin) of every part.
        part_bins: Vec<(u32, u32)>,
    },
}

/// A run's training ratings in the engine's layout and its fixed parts
/// (module docs), built once per run.
#[derive(Debug, Clone)]
pub struct RunLayout {
    spec: LayoutSpec,
    ratings: Vec<Rating>,
    parts: Vec<Part>,
    n_users: usize,
    n_items: usize,
    arrangement: Arrangement,
}

/// One epoch's order: part ids in sequence, and the groups they form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochPlan {
    pub parts: Vec<u32>,
    /// Consecutive runs of `parts`, in order, covering it: co-partitioning's
    /// block visits, the blocked order's rounds, or one group.
    pub groups: Vec<Group>,
}

/// A run of an [`EpochPlan`]'s parts: `end` is its end in the plan, `id` the
/// layout's group (a co-partitioning block visit, see
/// [`RunLayout::group_parts`]) or [`NO_GROUP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub end: u32,
    pub id: u32,
}

/// Sweep `v`'s share of a block of `len` ratings from `start`, of `visits`
/// sweeps: the `v`-th of `visits` equal cuts (what a GPU derives too). The
/// division is exact, by multiplication: a CPU epoch makes one cut per
/// block and sweep, millions, and a divide instruction each cost it a
/// tenth of its time.
fn sweep_cut(start: usize, len: usize, v: usize, visits: StrengthReducedU64) -> (usize, usize) {
    let cut = |k: usize| start + ((len as u64 * k as u64) / visits) as usize;
    (cut(v), cut(v + 1))
}

/// Cuts `range` into consecutive parts of at most `batch`.
fn cut(range: Range<usize>, batch: usize, parts: &mut Vec<Part>) {
    let mut s = range.start;
    while s < range.end {
        let len = batch.min(range.end - s);
        parts.push(Part { start: s as u32, len: len as u32 });
        s += len;
    }
}

fn epoch_rng(seed: u64, salt: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ salt ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl RunLayout {
    /// Lays out `train` (over `n_users` × `n_items` rows) for `spec`, on up
    /// to `threads` threads; the result does not depend on how many.
    pub fn new(train: &[Rating], n_users: usize, n_items: usize, spec: LayoutSpec, threads: usize) -> Result<Self> {
        if train.len() >= u32::MAX as usize {
            return Err(Error::arg("`data`", train.len().to_string(), "at most 2^32 − 1 training ratings"));
        }
        // Sweeps and visits cut each block's ratings into that many parts, an
        // index entry per block and cut: more cuts than ratings are empty,
        // and past memory they would abort, so both are bounded first.
        let cuts = |n: u32, flag: &str, value: String, what: &str| -> Result<()> {
            // Never below what the order chooses by itself on small data.
            let most = train.len().max(blocked::default_sweeps(train.len()));
            if n as usize > most {
                return Err(Error::arg(
                    flag,
                    value,
                    format!(
                        "{n} {what} an epoch cut the data's {} training ratings into empty parts; at most {most}",
                        train.len()
                    ),
                ));
            }
            Ok(())
        };
        match (spec.order, spec.co_partition) {
            (Order::Blocked { bins, sweeps, .. }, None) => {
                cuts(sweeps, "`order`", format!("{sweeps} sweeps"), "sweeps")?;
                let cells = u64::from(bins).pow(2) * u64::from(sweeps.max(1));
                Error::ensure_memory(cells * 4, "its blocks' sweeps", "`order`", format!("{sweeps} sweeps"))?;
            }
            (Order::Shuffled, Some(c)) => cuts(c.visits, "`co_partition_visits`", c.visits.to_string(), "visits")?,
            _ => {}
        }
        let batch = spec.batch.max(1);
        let mut parts = Vec::new();
        let (ratings, arrangement) = match (spec.order, spec.co_partition) {
            (Order::Blocked { .. }, Some(_)) => return Err(spec.order.check_co_partition(true).unwrap_err()),
            (Order::Auto, _) => {
                return Err(Error::arg("`order`", "auto", "must be resolved for a backend before laying out a run"));
            }
            (Order::Shuffled, None) => {
                let ratings = blocked::shuffled_copy(train, spec.seed, threads);
                cut(0..ratings.len(), batch, &mut parts);
                (ratings, Arrangement::Shuffled)
            }
            (Order::Shuffled, Some(c)) => {
                let blocks: Blocks = c.blocks(train, n_users, n_items);
                let nb = blocks.n_blocks as usize;
                let (ratings, starts) = blocked::deal_and_shuffle(
                    train,
                    nb,
                    |r| blocks.block_of(r, n_users as u32),
                    spec.seed ^ 0xC0_9A27,
                    threads,
                );
                let visits = c.visits.max(1) as usize;
                let cells = visits as u64 * nb as u64 * std::mem::size_of::<std::ops::Range<u32>>() as u64;
                Error::ensure_memory(cells, "its blocks' visits", "`co_partition_visits`", c.visits.to_string())?;
                let mut groups = vec![0..0; visits * nb];
                for b in 0..nb {
                    let (s, len) = (starts[b] as usize, (starts[b + 1] - starts[b]) as usize);
                    for v in 0..visits {
                        let first = parts.len() as u32;
                        cut(s + len * v / visits..s + len * (v + 1) / visits, batch, &mut parts);
                        groups[v * nb + b] = first..parts.len() as u32;
                    }
                }
                (ratings, Arrangement::CoPartitioned { n_blocks: nb as u32, visits: visits as u32, groups })
            }
            (Order::Blocked { bins, sweeps, tile }, None) => {
                let sweeps = (sweeps > 0).then_some(sweeps as usize);
                let grid = BlockedRatings::new(train, n_users, n_items, bins, sweeps, spec.seed, threads);
                let (bins, visits) = (grid.bins, grid.visits);
                let nb = (bins * bins) as usize;
                let by_visits = StrengthReducedU64::new(visits as u64);
                let mut block_parts = vec![NO_GROUP; nb * visits];
                let mut part_bins = Vec::new();
                for b in 0..nb {
                    let (s0, len) = (grid.start_of(b) as usize, grid.len_of(b) as usize);
                    for v in 0..visits {
                        let (p0, p1) = sweep_cut(s0, len, v, by_visits);
                        if p1 > p0 {
                            block_parts[b * visits + v] = parts.len() as u32;
                            parts.push(Part { start: p0 as u32, len: (p1 - p0) as u32 });
                            part_bins.push((b as u32 / bins, b as u32 % bins));
                        }
                    }
                }
                let block_len = (0..nb).map(|b| grid.len_of(b)).collect();
                let block_start = (0..nb).map(|b| grid.start_of(b)).collect();
                let tile = tile.max(1);
                if bins % tile != 0 {
                    return Err(Error::arg("`order`", spec.order.name(), "TILE must divide BINS"));
                }
                let arrangement = Arrangement::Blocked {
                    bins,
                    visits: visits as u32,
                    tile,
                    block_parts,
                    block_len,
                    block_start,
                    by_visits,
                    part_bins,
                };
                (grid.into_ratings(), arrangement)
            }
        };
        Ok(RunLayout { spec, ratings, parts, n_users, n_items, arrangement })
    }

    /// A layout of `ratings` cut into the given `parts` (contiguous, in
    /// order, covering them), arranged as the shuffled order's: what a
    /// parameter server's rank trains on its GPU, its share of each part of
    /// the run's layout ([`super::shard::Shard::own_layout`]).
    pub fn of_parts(spec: LayoutSpec, ratings: Vec<Rating>, parts: Vec<Part>, n_users: usize, n_items: usize) -> Self {
        debug_assert_eq!(parts.iter().map(|p| p.len as usize).sum::<usize>(), ratings.len());
        RunLayout { spec, ratings, parts, n_users, n_items, arrangement: Arrangement::Shuffled }
    }

    pub fn spec(&self) -> &LayoutSpec {
        &self.spec
    }

    /// Every training rating once, in the layout's order.
    pub fn ratings(&self) -> &[Rating] {
        &self.ratings
    }

    /// The fixed parts; ids index this.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The ratings of part `id`, in training order.
    pub fn part(&self, id: u32) -> &[Rating] {
        &self.ratings[self.parts[id as usize].range()]
    }

    pub fn n_users(&self) -> usize {
        self.n_users
    }

    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// The longest part.
    pub fn max_part_len(&self) -> usize {
        self.parts.iter().map(|p| p.len as usize).max().unwrap_or(0)
    }

    /// The blocked order's bins per side, if it is the order.
    pub fn bins(&self) -> Option<u32> {
        match &self.arrangement {
            Arrangement::Blocked { bins, .. } => Some(*bins),
            _ => None,
        }
    }

    /// The blocked order's sweeps per epoch, if it is the order.
    pub fn sweeps(&self) -> Option<u32> {
        match &self.arrangement {
            Arrangement::Blocked { visits, .. } => Some(*visits),
            _ => None,
        }
    }

    /// The blocked order's bins per tile (1: none), if it is the order.
    pub fn tile(&self) -> Option<u32> {
        match &self.arrangement {
            Arrangement::Blocked { tile, .. } => Some(*tile),
            _ => None,
        }
    }

    /// Where each block's ratings start in the layout, and the end (bins² +
    /// 1 entries): block `b`'s sweep `v` is the `v`-th of `sweeps` equal
    /// cuts of its ratings (what a GPU derives a part from).
    pub fn block_starts(&self) -> Option<Vec<u32>> {
        match &self.arrangement {
            Arrangement::Blocked { block_len, .. } => {
                let mut starts = Vec::with_capacity(block_len.len() + 1);
                let mut at = 0u32;
                starts.push(at);
                for &len in block_len {
                    at += len;
                    starts.push(at);
                }
                Some(starts)
            }
            _ => None,
        }
    }

    /// Epoch `epoch`'s blocked order as permutations ([`BlockedEpoch`]), if
    /// it is the order: O(sweeps × bins), from `(seed, epoch)` alone.
    pub fn blocked_epoch(&self, epoch: usize) -> Option<BlockedEpoch> {
        let Arrangement::Blocked { bins, visits, tile, .. } = &self.arrangement else { return None };
        let mut rng = epoch_rng(self.spec.seed, 0xF95C_0000_0000_0000, epoch);
        let (n, t) = (*bins as usize, *tile as usize);
        let mut perms = Vec::with_capacity(*visits as usize * BlockedEpoch::stride_of(*bins, *tile));
        let (mut alpha, mut beta, mut shifts, mut rounds): (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>) =
            ((0..n as u32).collect(), (0..n as u32).collect(), (0..(n / t) as u32).collect(), (0..t as u32).collect());
        for _ in 0..*visits {
            // In this sequence, so that tiles of 1 and of every bin draw the
            // plain rounds' permutations (a shuffle of one draws nothing).
            alpha.shuffle(&mut rng);
            beta.shuffle(&mut rng);
            shifts.shuffle(&mut rng);
            rounds.shuffle(&mut rng);
            for p in [&alpha, &beta, &shifts, &rounds] {
                perms.extend_from_slice(p);
            }
        }
        Some(BlockedEpoch { bins: *bins, tile: *tile, sweeps: *visits, perms })
    }

    /// The parts of epoch `order`'s plan in its first `shifts` tile shifts
    /// (a GPU's dispatches, [`BlockedEpoch`]): where a tiled epoch that
    /// stopped there resumes, as an index of the plan. O(parts), for a stop.
    pub fn blocked_parts_before(&self, order: &BlockedEpoch, shifts: usize) -> usize {
        let Arrangement::Blocked { visits, block_parts, .. } = &self.arrangement else { return 0 };
        let (g, n, visits) = (order.shifts(), order.bins as usize, *visits as usize);
        if shifts >= visits * g {
            return self.parts.len();
        }
        (0..shifts)
            .map(|s| {
                let (v, c) = (s / g, order.shift_order(s / g)[s % g]);
                (0..order.tile)
                    .flat_map(|r| (0..n).map(move |i| order.block(v, i, c, r)))
                    .filter(|&b| block_parts[b * visits + v] != NO_GROUP)
                    .count()
            })
            .sum()
    }

    /// The part of `block`'s cut in `sweep` in the blocked order (`None`
    /// where that cut is empty, or the order is another).
    pub fn block_part(&self, block: usize, sweep: usize) -> Option<u32> {
        match &self.arrangement {
            Arrangement::Blocked { visits, block_parts, .. } => {
                Some(block_parts[block * *visits as usize + sweep]).filter(|&p| p != NO_GROUP)
            }
            _ => None,
        }
    }

    /// The ratings of block `block`'s part in sweep `sweep` (empty where it
    /// has none, or the order is not blocked), found from the block's start
    /// and length alone: no part table is read, so a walk over scattered
    /// blocks stays in cache.
    pub fn block_sweep(&self, block: usize, sweep: usize) -> &[Rating] {
        match &self.arrangement {
            Arrangement::Blocked { block_len, block_start, by_visits, .. } => {
                let (p0, p1) = sweep_cut(block_start[block] as usize, block_len[block] as usize, sweep, *by_visits);
                &self.ratings[p0..p1]
            }
            _ => &[],
        }
    }

    /// The (user bin, item bin) of blocked part `id`: every rating of the
    /// part lies in those bins.
    pub fn bins_of_part(&self, id: u32) -> Option<(u32, u32)> {
        match &self.arrangement {
            Arrangement::Blocked { part_bins, .. } => part_bins.get(id as usize).copied(),
            _ => None,
        }
    }

    /// Layout groups (co-partitioning's block visits; none otherwise).
    pub fn groups(&self) -> usize {
        match &self.arrangement {
            Arrangement::CoPartitioned { groups, .. } => groups.len(),
            _ => 0,
        }
    }

    /// The part ids of layout group `id` (a block visit).
    pub fn group_parts(&self, id: u32) -> Range<u32> {
        match &self.arrangement {
            Arrangement::CoPartitioned { groups, .. } => groups.get(id as usize).cloned().unwrap_or(0..0),
            _ => 0..0,
        }
    }

    /// Epoch `epoch`'s plan, from `(seed, epoch)` alone.
    pub fn epoch(&self, epoch: usize) -> EpochPlan {
        let mut plan = EpochPlan::default();
        self.epoch_into(epoch, &mut plan);
        plan
    }

    /// [`RunLayout::epoch`] into `plan`, reusing its buffers: a plan holds a
    /// part id per part, megabytes on large runs, and fresh pages every
    /// epoch cost more than filling them.
    pub fn epoch_into(&self, epoch: usize, plan: &mut EpochPlan) {
        let seed = self.spec.seed;
        plan.parts.clear();
        plan.groups.clear();
        match &self.arrangement {
            Arrangement::Shuffled => {
                let mut rng = epoch_rng(seed, 0x0DE7_0000_0000_0000, epoch);
                plan.parts.extend(0..self.parts.len() as u32);
                plan.parts.shuffle(&mut rng);
                plan.groups.push(Group { end: plan.parts.len() as u32, id: NO_GROUP });
            }
            Arrangement::CoPartitioned { n_blocks, visits, groups } => {
                let mut rng = epoch_rng(seed, 0xB10C_0000_0000_0000, epoch);
                let mut blocks: Vec<u32> = (0..*n_blocks).collect();
                for v in 0..*visits {
                    blocks.shuffle(&mut rng);
                    for &b in &blocks {
                        let id = v * n_blocks + b;
                        let range = groups[id as usize].clone();
                        if range.is_empty() {
                            continue;
                        }
                        let first = plan.parts.len();
                        plan.parts.extend(range);
                        plan.parts[first..].shuffle(&mut rng);
                        plan.groups.push(Group { end: plan.parts.len() as u32, id });
                    }
                }
            }
            Arrangement::Blocked { bins, visits, block_parts, block_len, .. } => {
                let order = self.blocked_epoch(epoch).expect("the blocked order");
                let (n, visits) = (*bins as usize, *visits as usize);
                // Every sweep's rounds at once (one per core): the same plan
                // as one pass.
                let per_visit: Vec<(Vec<u32>, Vec<u32>)> = (0..visits)
                    .into_par_iter()
                    .map_init(
                        || Vec::with_capacity(n),
                        |round, v| {
                            let (mut parts, mut ends) = (Vec::with_capacity(n * n), Vec::with_capacity(n));
                            for (shift, r) in order.rounds(v) {
                                round.clear();
                                round.extend((0..n).map(|i| order.block(v, i, shift, r)));
                                // Longest first, so that neighbouring workers
                                // get similar lengths (ties by block: one order).
                                round.sort_unstable_by_key(|&b| (std::cmp::Reverse(block_len[b]), b));
                                let first = parts.len();
                                parts.extend(
                                    round.iter().map(|&b| block_parts[b * visits + v]).filter(|&p| p != NO_GROUP),
                                );
                                if parts.len() > first {
                                    ends.push(parts.len() as u32);
                                }
                            }
                            (parts, ends)
                        },
                    )
                    .collect();
                for (parts, ends) in per_visit {
                    let base = plan.parts.len() as u32;
                    plan.parts.extend_from_slice(&parts);
                    plan.groups.extend(ends.iter().map(|&e| Group { end: base + e, id: NO_GROUP }));
                }
            }
        }
    }
}

/// One epoch of the blocked order as permutations (module docs of
/// [`super::blocked`], "Tiles"): per sweep the workers' user bins α and item
/// bins β (`bins` each), the tile shifts in their order (`bins / tile`) and
/// the rounds inside a tile in their order (`tile`), `stride` words a sweep.
/// O(sweeps × bins) words: what a GPU holding every row is given per epoch,
/// deriving each round's blocks itself; [`RunLayout::epoch_into`] expands the
/// same permutations into part ids, so both train one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedEpoch {
    pub bins: u32,
    pub tile: u32,
    pub sweeps: u32,
    pub perms: Vec<u32>,
}

impl BlockedEpoch {
    /// Words of one sweep's permutations.
    pub fn stride(&self) -> usize {
        Self::stride_of(self.bins, self.tile)
    }

    /// Words of one sweep's permutations for `bins` bins in tiles of
    /// `tile`: α and β (`bins` each), the shifts, the rounds.
    pub fn stride_of(bins: u32, tile: u32) -> usize {
        let (n, t) = (bins as usize, tile as usize);
        2 * n + n / t + t
    }

    /// Tile rounds (shifts) per sweep: a GPU's dispatches per sweep.
    pub fn shifts(&self) -> usize {
        (self.bins / self.tile) as usize
    }

    fn sweep(&self, v: usize) -> &[u32] {
        &self.perms[v * self.stride()..(v + 1) * self.stride()]
    }

    /// Sweep `v`'s tile shifts in order.
    pub fn shift_order(&self, v: usize) -> &[u32] {
        let n = self.bins as usize;
        &self.sweep(v)[2 * n..2 * n + self.shifts()]
    }

    /// Sweep `v`'s workers' user bins α and item bins β (`bins` each):
    /// worker `k·tile + j` of round (`shift`, `r`) trains block
    /// (α[k·tile + j], β[((k + shift) mod shifts)·tile + (j + r) mod tile]),
    /// as [`BlockedEpoch::block`] computes it.
    pub fn sweep_bins(&self, v: usize) -> (&[u32], &[u32]) {
        let n = self.bins as usize;
        self.sweep(v)[..2 * n].split_at(n)
    }

    /// Sweep `v`'s rounds inside a tile, in order (the same in every
    /// shift of the sweep).
    pub fn tile_rounds(&self, v: usize) -> &[u32] {
        let n = self.bins as usize;
        &self.sweep(v)[2 * n + self.shifts()..]
    }

    /// Sweep `v`'s rounds in order, as (shift, round in the tile).
    pub fn rounds(&self, v: usize) -> impl Iterator<Item = (u32, u32)> + '_ {
        let inner = self.tile_rounds(v);
        self.shift_order(v).iter().flat_map(move |&c| inner.iter().map(move |&r| (c, r)))
    }

    /// The block (`user bin × bins + item bin`) worker `i` trains in sweep
    /// `v`'s round (`shift`, `r`).
    pub fn block(&self, v: usize, i: usize, shift: u32, r: u32) -> usize {
        let (n, t) = (self.bins as usize, self.tile as usize);
        let s = self.sweep(v);
        let (k, j) = (i / t, i % t);
        let g = n / t;
        s[i] as usize * n + s[n + ((k + shift as usize) % g) * t + (j + r as usize) % t] as usize
    }
}

impl EpochPlan {
    /// Ratings the plan trains from its `from`-th part on.
    pub fn ratings_from(&self, layout: &RunLayout, from: usize) -> usize {
        if from == 0 && self.parts.len() == layout.parts.len() {
            // A plan holds a part at most once: this one holds them all.
            return layout.ratings.len();
        }
        self.parts[from.min(self.parts.len())..].iter().map(|&p| layout.parts[p as usize].len as usize).sum()
    }

    /// The index of the part that starts `position` ratings into the epoch:
    /// where a run stopped after `position` ratings resumes. An error when
    /// `position` falls inside a part (a checkpoint of another layout).
    pub fn part_at(&self, layout: &RunLayout, position: usize) -> Result<usize> {
        if position == 0 {
            return Ok(0);
        }
        let mut done = 0;
        for (k, &p) in self.parts.iter().enumerate() {
            if done == position {
                return Ok(k);
            }
            done += layout.parts[p as usize].len as usize;
        }
        if done == position {
            return Ok(self.parts.len());
        }
        Err(Error::arg(
            "`resume`",
            position.to_string(),
            "the checkpoint's position is not a part boundary of this run's order",
        ))
    }

    /// The groups from plan index `from` on, each as its plan range and id
    /// (the first possibly cut by `from`).
    pub fn groups_from(&self, from: usize) -> impl Iterator<Item = (Range<usize>, u32)> + '_ {
        let mut start = 0usize;
        self.groups.iter().filter_map(move |g| {
            let range = start.max(from)..g.end as usize;
            start = g.end as usize;
            (!range.is_empty()).then_some((range, g.id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::copartition::Side;

    fn skewed(n: usize, users: u32, items: u32) -> Vec<Rating> {
        (0..n as u32)
            .map(|k| Rating {
                user: (k.wrapping_mul(2_654_435_761) >> 7) % (1 + k % users),
                item: (k * 7 + k / 3) % (1 + (k * 13) % items),
                value: (k % 5) as f32 + 1.0,
            })
            .collect()
    }

    fn key(r: &Rating) -> (u32, u32, u32) {
        (r.user, r.item, r.value.to_bits())
    }

    /// Every plan visits every part exactly once, and the parts cover every
    /// rating exactly once: the sequential order is a permutation.
    fn assert_covers(layout: &RunLayout, plan: &EpochPlan, train: &[Rating]) {
        let mut ids = plan.parts.clone();
        ids.sort();
        assert_eq!(ids, (0..layout.parts().len() as u32).collect::<Vec<_>>(), "every part once");
        let mut a: Vec<_> = plan.parts.iter().flat_map(|&p| layout.part(p)).map(key).collect();
        let mut b: Vec<_> = train.iter().map(key).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "the epoch's order is a permutation of the training ratings");
        assert_eq!(plan.groups.last().map(|g| g.end as usize), Some(plan.parts.len()));
        assert!(plan.groups.windows(2).all(|w| w[0].end < w[1].end), "no empty group");
    }

    fn spec(order: Order, batch: usize, co_partition: Option<CoPartition>) -> LayoutSpec {
        LayoutSpec { seed: 7, batch, order, co_partition }
    }

    #[test]
    fn shuffled_parts_are_batches_in_a_seeded_order_on_any_number_of_threads() {
        let train = skewed(5_003, 97, 41);
        let layout = RunLayout::new(&train, 97, 41, spec(Order::Shuffled, 333, None), 2).unwrap();
        assert_eq!(layout.parts().len(), 5_003usize.div_ceil(333));
        assert!(layout.parts()[..15].iter().all(|p| p.len == 333));
        assert_eq!(layout.max_part_len(), 333);
        let (e0, e1) = (layout.epoch(0), layout.epoch(1));
        assert_covers(&layout, &e0, &train);
        assert_ne!(e0, e1, "another epoch, another order");
        assert_eq!(e0, layout.epoch(0), "the same epoch, the same order");
        let again = RunLayout::new(&train, 97, 41, spec(Order::Shuffled, 333, None), 5).unwrap();
        assert_eq!(layout.ratings(), again.ratings(), "independent of the thread count");
        // Resuming: positions at part boundaries map to plan indices.
        assert_eq!(e0.part_at(&layout, 0).unwrap(), 0);
        let two = layout.parts()[e0.parts[0] as usize].len + layout.parts()[e0.parts[1] as usize].len;
        assert_eq!(e0.part_at(&layout, two as usize).unwrap(), 2);
        assert_eq!(e0.part_at(&layout, train.len()).unwrap(), e0.parts.len());
        assert!(e0.part_at(&layout, 5).is_err(), "inside a part");
        assert_eq!(e0.ratings_from(&layout, 2), train.len() - two as usize);
    }

    #[test]
    fn co_partitioned_groups_hold_one_block_each_visit_part_once() {
        let train = skewed(5_003, 97, 41);
        for visits in [1, 3] {
            let c = CoPartition { side: Side::Users, block_rows: 20, visits };
            let layout = RunLayout::new(&train, 97, 41, spec(Order::Shuffled, 100, Some(c)), 2).unwrap();
            let blocks = c.blocks(&train, 97, 41);
            let plan = layout.epoch(0);
            assert_covers(&layout, &plan, &train);
            let mut seen = std::collections::HashSet::new();
            for (range, id) in plan.groups_from(0) {
                assert!(seen.insert(id), "a block visit appears once per epoch");
                let block = id % blocks.n_blocks;
                assert!(id / blocks.n_blocks < visits);
                for &p in &plan.parts[range.clone()] {
                    assert!(layout.group_parts(id).contains(&p));
                    assert!(layout.part(p).iter().all(|r| blocks.block_of(r, 97) == block), "one block per group");
                    assert!(layout.parts()[p as usize].len <= 100);
                }
            }
            assert_eq!(seen.len(), layout.groups().min(seen.len()));
            assert_ne!(plan, layout.epoch(1));
        }
    }

    #[test]
    fn blocked_rounds_share_no_bin_and_every_block_is_visited_each_sweep() {
        let train = skewed(5_003, 97, 41);
        let bins = 6;
        let grid = BlockedRatings::new(&train, 97, 41, bins, None, 7, 1);
        let mut plans = Vec::new();
        for tile in [0, 1, 2, 3, 6] {
            let order = Order::Blocked { bins, sweeps: 0, tile };
            let layout = RunLayout::new(&train, 97, 41, spec(order, 1, None), 2).unwrap();
            assert_eq!((layout.bins(), layout.tile()), (Some(bins), Some(tile.max(1))));
            let plan = layout.epoch(0);
            assert_covers(&layout, &plan, &train);
            for (range, _) in plan.groups_from(0) {
                let pairs: Vec<(u32, u32)> =
                    plan.parts[range].iter().map(|&p| layout.bins_of_part(p).unwrap()).collect();
                let (mut us, mut is): (Vec<u32>, Vec<u32>) = pairs.iter().copied().unzip();
                us.sort();
                us.dedup();
                is.sort();
                is.dedup();
                assert_eq!(
                    (us.len(), is.len()),
                    (pairs.len(), pairs.len()),
                    "a round's blocks share no bin: {pairs:?}"
                );
            }
            for (id, part) in layout.parts().iter().enumerate() {
                let pair = layout.bins_of_part(id as u32).unwrap();
                assert!(
                    layout.ratings()[part.range()].iter().all(|r| grid.bins_of(r) == pair),
                    "part {id} in its block"
                );
            }
            assert_eq!(plan.parts.len(), layout.parts().len());
            assert_ne!(plan, layout.epoch(1));
            // The permutations: every sweep a Latin square of rounds, a
            // tile's rounds staying in the tiles of their shift.
            let e = layout.blocked_epoch(0).unwrap();
            let (n, t) = (bins as usize, tile.max(1) as usize);
            for v in 0..e.sweeps as usize {
                let mut seen = vec![0u32; n * n];
                let rounds: Vec<(u32, u32)> = e.rounds(v).collect();
                assert_eq!(rounds.len(), n);
                for &(c, r) in &rounds {
                    let blocks: Vec<usize> = (0..n).map(|i| e.block(v, i, c, r)).collect();
                    let beta = &e.perms[v * e.stride() + n..v * e.stride() + 2 * n];
                    for (i, &b) in blocks.iter().enumerate() {
                        seen[b] += 1;
                        let place = beta.iter().position(|&x| x as usize == b % n).unwrap();
                        assert_eq!(place / t, (i / t + c as usize) % (n / t), "worker {i}'s item bin in its tile");
                    }
                }
                assert!(seen.iter().all(|&k| k == 1), "sweep {v} visits every block once");
            }
            plans.push(plan);
        }
        // A tiled epoch stopped after s shifts trained the plan's first
        // `blocked_parts_before(s)` parts: those of the first s shifts.
        let order = Order::Blocked { bins, sweeps: 3, tile: 3 };
        let layout = RunLayout::new(&train, 97, 41, spec(order, 1, None), 2).unwrap();
        let (plan, e) = (layout.epoch(2), layout.blocked_epoch(2).unwrap());
        let Arrangement::Blocked { block_parts, visits, .. } = &layout.arrangement else { unreachable!() };
        let mut want = std::collections::HashSet::new();
        for s in 0..=3 * e.shifts() {
            let k = layout.blocked_parts_before(&e, s);
            let got: std::collections::HashSet<u32> = plan.parts[..k].iter().copied().collect();
            assert_eq!(got, want, "the parts of the first {s} shifts");
            if s < 3 * e.shifts() {
                let (v, c) = (s / e.shifts(), e.shift_order(s / e.shifts())[s % e.shifts()]);
                for r in 0..e.tile {
                    for i in 0..bins as usize {
                        let p = block_parts[e.block(v, i, c, r) * *visits as usize + v];
                        if p != NO_GROUP {
                            want.insert(p);
                        }
                    }
                }
            }
        }
        assert_eq!(layout.blocked_parts_before(&e, 3 * e.shifts()), layout.parts().len());
        // No tile, a tile of 1 and a tile of every bin are the plain rounds.
        assert_eq!(plans[0], plans[1]);
        assert_eq!(plans[1], plans[4]);
        assert_ne!(plans[1], plans[2]);
        let e = RunLayout::new(&train, 97, 41, spec(Order::Blocked { bins, sweeps: 0, tile: 4 }, 1, None), 2);
        assert!(e.unwrap_err().to_string().contains("TILE must divide BINS"));
    }

    #[test]
    fn layouts_refuse_what_cannot_be_arranged() {
        let train = skewed(100, 9, 9);
        let c = CoPartition { side: Side::Items, block_rows: 3, visits: 1 };
        let e = RunLayout::new(&train, 9, 9, spec(Order::Blocked { bins: 2, sweeps: 0, tile: 0 }, 10, Some(c)), 1)
            .unwrap_err();
        assert!(e.to_string().contains("`co_partition`"), "{e}");
        assert!(RunLayout::new(&train, 9, 9, spec(Order::Auto, 10, None), 1).is_err());
    }

    #[test]
    fn orders_resolve_from_the_data_alone_and_refuse_what_cannot_work() {
        let on = |co_partition| Target { ratings: 270_000, n_users: 6000, n_items: 3000, rank: 32, co_partition };
        let (plain, co) = (on(false), on(true));
        // Parts of at least 4 ratings in 8 sweeps: √(270000 / 32) = 91 bins,
        // in tiles of 16 (rank 32's cap, a quarter of the bins at most),
        // rounded down to 80.
        let auto = Order::Auto.resolve(&plain).unwrap();
        assert_eq!(auto, Order::Blocked { bins: 80, sweeps: 8, tile: 16 });
        assert_eq!(auto.name(), "blocked:80:8:16");
        assert_eq!(Order::parse(&auto.name()).unwrap(), auto, "the name parses back");
        assert_eq!(auto.resolve(&plain).unwrap(), auto, "resolving again keeps it");
        assert!(auto.is_resolved() && auto.is_exact());
        assert_eq!(Order::Auto.resolve(&co).unwrap(), Order::Shuffled, "co-partitioning keeps its order");
        assert!(!Order::Shuffled.is_exact());
        // The rank bounds the tile: a workgroup of 256 holds 4 workers of
        // 64 lanes at rank 128.
        assert_eq!(
            Order::Auto.resolve(&Target { rank: 128, ..plain }).unwrap(),
            Order::Blocked { bins: 88, sweeps: 8, tile: 4 }
        );
        // Few rows on a side bound the bins.
        let few_items = Target { n_items: 30, ..plain };
        assert_eq!(Order::Auto.resolve(&few_items).unwrap(), Order::Blocked { bins: 28, sweeps: 8, tile: 4 });
        assert_eq!(Order::Shuffled.resolve(&plain).unwrap(), Order::Shuffled);
        // Given bins are kept, with the largest dividing tile within the
        // limits (none for 5), and sweeps from the data where not given.
        let five = Order::Blocked { bins: 5, sweeps: 0, tile: 0 };
        assert_eq!(five.resolve(&plain).unwrap(), Order::Blocked { bins: 5, sweeps: 8, tile: 1 });
        assert_eq!(five.resolve(&plain).unwrap().name(), "blocked:5:8:1");
        let twelve = Order::Blocked { bins: 12, sweeps: 0, tile: 0 };
        assert_eq!(twelve.resolve(&plain).unwrap(), Order::Blocked { bins: 12, sweeps: 8, tile: 3 });
        let given = Order::parse("blocked:12:auto:4").unwrap();
        assert_eq!(given.resolve(&plain).unwrap(), Order::Blocked { bins: 12, sweeps: 8, tile: 4 }, "a given tile");
        let e = five.resolve(&co).unwrap_err().to_string();
        assert!(e.contains("`co_partition`"), "{e}");
        // Bins are bounded by the smaller side's rows.
        assert_eq!(
            Order::Blocked { bins: 3000, sweeps: 1, tile: 1 }.resolve(&plain).unwrap(),
            Order::Blocked { bins: 3000, sweeps: 1, tile: 1 }
        );
        let e = Order::Blocked { bins: 100_000, sweeps: 0, tile: 0 }.resolve(&plain).unwrap_err().to_string();
        assert!(e.contains("at most the smaller side's 3000 rows"), "{e}");
        // Plain `blocked` takes the bins `auto` would, keeping its sweeps.
        let plain_blocked = Order::parse("blocked").unwrap();
        assert_eq!(plain_blocked.name(), "blocked");
        assert_eq!(plain_blocked.resolve(&plain).unwrap(), auto);
        assert_eq!(
            Order::Blocked { bins: 0, sweeps: 3, tile: 0 }.resolve(&plain).unwrap(),
            Order::Blocked { bins: 80, sweeps: 3, tile: 16 }
        );
        assert_eq!(five.name(), "blocked:5");
        assert_eq!(Order::parse("blocked:64:4").unwrap(), Order::Blocked { bins: 64, sweeps: 4, tile: 0 });
        assert_eq!(Order::parse("blocked:64:4").unwrap().name(), "blocked:64:4");
        assert_eq!(Order::parse("blocked:64:4").unwrap().resolve(&plain).unwrap().name(), "blocked:64:4:16");
        assert_eq!(Order::parse("blocked:9").unwrap(), Order::Blocked { bins: 9, sweeps: 0, tile: 0 });
        for bad in
            ["blocked:0", "blocked:4:0", "blocked:x", "blocked:4:2:3", "blocked:4:2:0", "blocked:4:2:2:2", "random"]
        {
            assert!(Order::parse(bad).is_err(), "{bad}");
        }
        assert_eq!((blocked::power_tile(7, 16), blocked::power_tile(300, 16), blocked::power_tile(40, 1)), (1, 16, 1));
        // Every resolution is resolved, parses back from its name and
        // resolves to itself.
        for order in ["auto", "blocked", "blocked:12", "blocked:64:4", "blocked:12:auto:4", "shuffled"] {
            let o = Order::parse(order).unwrap().resolve(&plain).unwrap();
            assert!(o.is_resolved(), "{order}");
            assert_eq!(Order::parse(&o.name()).unwrap(), o, "{order}");
            assert_eq!(o.resolve(&plain).unwrap(), o, "{order}");
        }
    }
}
