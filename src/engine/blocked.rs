//! The blocked epoch order of FPSGD (Zhuang et al., RecSys 2013; LIBMF) and
//! DSGD (Gemulla et al., KDD 2011): `--order blocked`, and the parallel
//! shuffle every layout of [`super::order`] is built with.
//!
//! Users are dealt into `bins` bins and items into `bins` bins, each bin with
//! about the same number of training ratings (heaviest rows first, each to
//! the lightest bin so far). A block is one user bin × one item bin. The
//! ratings are copied once per run into block-major order, shuffled inside
//! each block with the seed, so that a worker reads a block's ratings
//! sequentially and works on one user bin and one item bin at a time.
//!
//! An epoch is V sweeps (`visits`) of `bins` rounds each. Round r of a sweep
//! holds the blocks (α(i), β((i + r) mod bins)) for i in 0..bins, with α and
//! β permutations of the bins drawn per sweep from `(seed, epoch)`: the
//! blocks of a round share no user and no item, and the rounds of a sweep
//! cover every block exactly once (a Latin square). Sweep v takes the v-th
//! of V consecutive parts of every block: V is one per [`SWEEP_RATINGS`]
//! training ratings, and [`MIN_VISITS`] at least. Inside a round the parts
//! are listed largest first. [`super::order::RunLayout`] makes the parts and
//! the epochs' plans.
//!
//! **Tiles.** With a tile T dividing the bins (G = bins / T tiles a side),
//! worker i = k·T + j (tile k, place j) and round (c, r) hold block
//! (α(i), β(((k + c) mod G)·T + (j + r) mod T)): for each of G shifts c
//! (drawn in a seeded order) the T rounds r (in a seeded order) stay inside
//! the tiles (k, k + c), so a GPU trains T rounds of a tile in one workgroup
//! with barriers between, and a dispatch per shift rather than per round.
//! Still a Latin square: a round's blocks share no bin, a sweep covers every
//! block once. T = 1 and T = bins are the plain rounds above, the same plan
//! from the same seed ([`super::order::BlockedEpoch`]).
//!
//! Why sweeps: a block trained in one stretch gives each row all of its
//! updates against one bin of the other side in a row. With one sweep that
//! cost 0.025 test RMSE after 10 epochs on 1M synthetic ratings (0.7935 with
//! blocks sorted by user as LIBMF does, 0.7879 shuffled, against 0.7687 for
//! the shuffled order), 0.014 on 10M, and 0.018 on 36k ratings in 20 × 20
//! blocks of 90; with one sweep per 64k ratings the gap is 0.001–0.003
//! (BENCHMARKS.md, "Side by side with LIBMF").

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::Rating;

/// Ratings per sweep (module docs): an epoch makes `ratings / SWEEP_RATINGS`
/// sweeps, at least [`MIN_VISITS`]. What buys accuracy is the number of
/// sweeps: on 10M ratings 16 sweeps cost 0.013 test RMSE against the
/// shuffled order, 64 cost 0.003 and 160 cost 0.001, with 4 bins or 20.
pub const SWEEP_RATINGS: usize = 1 << 16;

/// Sweeps per epoch at least, however small the data: one sweep gives each
/// row its updates against one bin of the other side in a stretch, which
/// costs accuracy even with small blocks (module docs).
pub const MIN_VISITS: usize = 8;

/// Sweeps per epoch when not given: one per [`SWEEP_RATINGS`] ratings, at
/// least [`MIN_VISITS`].
pub fn default_sweeps(ratings: usize) -> usize {
    (ratings / SWEEP_RATINGS).max(MIN_VISITS)
}

/// Ratings a part (a block's share of a sweep) holds at least on average
/// when the bins are chosen: a GPU runs a round's parts at once, and parts
/// much smaller leave a round's time to its dispatch.
pub const PART_RATINGS: usize = 4;

/// The most bins chosen: each round then has this many workers.
pub const MAX_BINS: u32 = 1024;

/// Bins per side of the default order for `ratings` training ratings of
/// `n_users` × `n_items`: a function of the data alone, so that every
/// backend, thread count and budget trains the same order and the same
/// model (docs/ARCHITECTURE.md, "The order").
///
/// An epoch is `bins × sweeps` rounds of up to `bins` workers, and the
/// sweeps are fixed by accuracy ([`default_sweeps`]), so more bins mean
/// more workers at once and more, shorter rounds: the most bins whose parts
/// keep [`PART_RATINGS`] ratings on average, at most 256 (128 at 10M
/// ratings, the parallelism a large GPU needs; chosen when a round was a
/// dispatch, about √(65536 × rating latency / dispatch cost) for a latency
/// near a dispatch's). The CPU trains the same order a tile chain at a time
/// (`train::cpu`), so many bins cost it little. Never more bins than rows
/// of the smaller side.
pub fn default_bins(ratings: usize, n_users: usize, n_items: usize) -> u32 {
    let sweeps = default_sweeps(ratings) as f64;
    let by_data = ((ratings as f64 / (PART_RATINGS as f64 * sweeps)).sqrt() as u32).clamp(4, 256);
    let side = n_users.min(n_items).max(1) as u32;
    by_data.min(MAX_BINS).min(side).max(1)
}

/// Invocations of a workgroup that every adapter runs (WebGPU's and
/// wgpu's downlevel limit), which bounds a tile ([`tile_cap`]).
pub const WORKGROUP_INVOCATIONS: u32 = 256;

/// Lanes a worker of rank `rank` takes on a GPU: the first power of two at
/// least its row's vec4s (one lane a vec4, a tree reduction for the dot
/// product).
pub fn lanes(rank: usize) -> u32 {
    (crate::model::row_stride(rank) as u32 / 4).next_power_of_two()
}

/// The largest tile the default order takes at `rank`: as many workers as
/// one workgroup of [`WORKGROUP_INVOCATIONS`] holds with their [`lanes`]
/// (16 at rank 32, 4 at rank 128). A property of the order, not of a
/// device: every adapter can run such a workgroup, and the CPU ignores
/// tiles' shapes except to group work.
pub fn tile_cap(rank: usize) -> u32 {
    (WORKGROUP_INVOCATIONS / lanes(rank).min(WORKGROUP_INVOCATIONS)).max(1)
}

/// Tile rounds a sweep keeps at least (workgroups of a GPU dispatch, which
/// spread over its cores): tiles of at most a quarter of the bins.
pub const MIN_TILE_ROUNDS: u32 = 4;

/// The tile for `bins` chosen bins under `cap` ([`tile_cap`]): the
/// largest power of two at most `cap` and `bins / MIN_TILE_ROUNDS` (the
/// bins are then rounded down to a multiple of it). A GPU that holds every
/// row trains a tile round in one dispatch, so a larger tile means fewer
/// dispatches per epoch (`bins / tile × sweeps`) for the same workers.
pub fn power_tile(bins: u32, cap: u32) -> u32 {
    1 << largest_tile(bins, cap).ilog2()
}

/// The largest tile `cap` and [`MIN_TILE_ROUNDS`] allow for `bins` (1 at
/// least).
fn largest_tile(bins: u32, cap: u32) -> u32 {
    cap.min(bins / MIN_TILE_ROUNDS).max(1)
}

/// The tile for `bins` bins given by the user: the largest divisor of `bins`
/// within the limits of [`power_tile`] (1 where none is, as for a prime).
pub fn divisor_tile(bins: u32, cap: u32) -> u32 {
    (1..=largest_tile(bins, cap)).rev().find(|&t| bins.is_multiple_of(t)).unwrap_or(1)
}

/// The training ratings in block-major order (module docs).
#[derive(Debug, Clone)]
pub struct BlockedRatings {
    /// Every training rating once, block by block, shuffled within a block.
    /// Private: the CPU backend's row exclusivity rests on every rating of
    /// a block lying in that block's bins.
    ratings: Vec<Rating>,
    /// `starts[b]..starts[b + 1]` are block `b`'s ratings; block `b` is user
    /// bin `b / bins`, item bin `b % bins`.
    starts: Vec<u32>,
    pub bins: u32,
    /// Sweeps per epoch: every block is cut into this many parts.
    pub visits: usize,
    user_bin: Vec<u32>,
    item_bin: Vec<u32>,
}

/// Ratings per shuffle bucket when the blocks are built (about; every
/// block gets the same number of buckets): 384 KiB of ratings, so that a
/// bucket's Fisher–Yates swaps stay in a core's L2 cache, and few enough
/// buckets that dealing the ratings into them writes to few pages at once
/// (4096-rating buckets measured no faster).
pub const SHUFFLE_BUCKET: u32 = 32768;

/// SplitMix64's finaliser: a bijection of u64 whose output bits all depend
/// on every input bit, used as a stateless random draw per rating.
fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `f(c, first, chunk)` on `items` cut into up to `threads` contiguous
/// chunks, one thread each (`c`: the chunk's number, `first`: its offset in
/// `items`); the results come in chunk order.
pub(crate) fn par_chunks<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(usize, usize, &[T]) -> R + Sync,
) -> Vec<R> {
    let size = items.len().div_ceil(threads.max(1)).max(1);
    if items.len() <= size {
        return vec![f(0, 0, items)];
    }
    let f = &f;
    crate::parallel::join_all(
        items.chunks(size).enumerate().map(|(c, chunk)| move || f(c, c * size, chunk)),
        "a blocked-copy worker",
    )
}

/// The blocked copy being written by several threads at disjoint slots.
struct Scatter(*mut Rating, usize);

// SAFETY: the threads write disjoint slots (see `write`'s callers) and
// nothing reads the buffer until they are joined.
unsafe impl Sync for Scatter {}

impl Scatter {
    /// # Safety
    /// No other thread may write `slot`.
    unsafe fn write(&self, slot: usize, r: Rating) {
        assert!(slot < self.1, "blocked copy slot {slot} out of {}", self.1);
        // SAFETY: in bounds (checked), and the slot is this thread's alone.
        unsafe { self.0.add(slot).write(r) };
    }
}

/// Shuffles `ratings[starts[k]..starts[k + 1]]` for every bucket k, each
/// with its own generator seeded from `(seed, k)`, the buckets dealt to up
/// to `threads` threads in contiguous runs: the result is the same for any
/// number of threads.
fn shuffle_buckets(ratings: &mut [Rating], starts: &[u32], seed: u64, threads: usize) {
    let keys = starts.len() - 1;
    let shuffle = |first_key: usize, bucket_run: &mut [Rating]| {
        let base = starts[first_key] as usize;
        for k in first_key..keys {
            let (a, b) = (starts[k] as usize - base, starts[k + 1] as usize - base);
            if a >= bucket_run.len() {
                break;
            }
            let mut rng = StdRng::seed_from_u64(seed ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            bucket_run[a..b].shuffle(&mut rng);
        }
    };
    let threads = threads.clamp(1, keys.max(1));
    // Cut at bucket starts near every 1/threads of the ratings (no cut for
    // one thread, which then shuffles everything itself).
    let n = ratings.len();
    let mut cuts: Vec<usize> =
        (1..threads).map(|t| starts.partition_point(|&s| (s as usize) < n * t / threads)).collect();
    cuts.dedup();
    std::thread::scope(|scope| {
        let mut rest = ratings;
        let mut first_key = 0;
        for &cut in &cuts {
            let (run, tail) = rest.split_at_mut(starts[cut] as usize - starts[first_key] as usize);
            scope.spawn(move || shuffle(first_key, run));
            (rest, first_key) = (tail, cut);
        }
        shuffle(first_key, rest);
    });
}

/// Deals rows into `bins` bins of about equal rating counts: heaviest first,
/// each to the lightest bin so far (ties: the lowest bin). Rows without
/// ratings go round-robin.
fn balanced_bins(counts: &[u32], bins: u32) -> Vec<u32> {
    let mut rows: Vec<u32> = (0..counts.len() as u32).collect();
    rows.sort_by_key(|&r| (Reverse(counts[r as usize]), r));
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = (0..bins).map(|b| Reverse((0, b))).collect();
    let mut bin_of = vec![0u32; counts.len()];
    for (k, &r) in rows.iter().enumerate() {
        let c = counts[r as usize];
        if c == 0 {
            bin_of[r as usize] = k as u32 % bins;
            continue;
        }
        let Reverse((load, b)) = heap.pop().expect("bins > 0");
        bin_of[r as usize] = b;
        heap.push(Reverse((load + c as u64, b)));
    }
    bin_of
}

/// Deals `train` into `groups` groups by `group_of` and shuffles every group
/// (module docs: the ratings are dealt at random into buckets of about
/// [`SHUFFLE_BUCKET`], in the same counting-sort pass that sorts them into
/// groups, and each bucket is then shuffled on its own: a uniformly random
/// permutation of each group, with every bucket's swaps inside a core's
/// cache). Returns the ratings group by group and each group's start (and
/// the end). Counting, dealing and shuffling run on `threads` threads; the
/// result does not depend on how many.
pub fn deal_and_shuffle(
    train: &[Rating],
    groups: usize,
    group_of: impl Fn(&Rating) -> u32 + Sync,
    seed: u64,
    threads: usize,
) -> (Vec<Rating>, Vec<u32>) {
    let threads = threads.max(1);
    let groups = groups.max(1);
    // Every group gets the same number of buckets, so a bucket holds about
    // SHUFFLE_BUCKET ratings where the groups are of similar sizes, more in
    // a heavier one.
    let per_group = train.len().div_ceil(groups * SHUFFLE_BUCKET as usize).max(1) as u64;
    let deal = seed ^ 0xB10C_5EED_0000_0001;
    let key = |j: usize, r: &Rating| {
        let g = group_of(r) as u64;
        (g * per_group + (((mix64(deal ^ j as u64) >> 32) * per_group) >> 32)) as usize
    };
    let keys = groups * per_group as usize;
    // A stable counting sort by bucket, chunk by chunk: chunk c writes
    // bucket k's ratings after those of bucket k in chunks before c.
    let mut offsets = par_chunks(train, threads, |_, first, chunk| {
        let mut count = vec![0u32; keys];
        for (j, r) in chunk.iter().enumerate() {
            count[key(first + j, r)] += 1;
        }
        count
    });
    let mut bucket_starts = vec![0u32; keys + 1];
    let mut next = 0u32;
    for k in 0..keys {
        bucket_starts[k] = next;
        for chunk in &mut offsets {
            (chunk[k], next) = (next, next + chunk[k]);
        }
    }
    bucket_starts[keys] = next;
    let mut ratings: Vec<Rating> = bytemuck::zeroed_vec(train.len());
    let out = Scatter(ratings.as_mut_ptr(), ratings.len());
    let offsets = &offsets;
    par_chunks(train, threads, |c, first, chunk| {
        let mut at = offsets[c].clone();
        for (j, r) in chunk.iter().enumerate() {
            let slot = &mut at[key(first + j, r)];
            // SAFETY: the chunks' offsets partition 0..len (each bucket's
            // range split among the chunks by their counts), so every slot
            // is written once, by one thread, and lies in bounds.
            unsafe { out.write(*slot as usize, *r) };
            *slot += 1;
        }
    });
    shuffle_buckets(&mut ratings, &bucket_starts, seed ^ 0xB10C_5EED_0000_0002, threads);
    let starts = (0..=groups).map(|g| bucket_starts[g * per_group as usize]).collect();
    (ratings, starts)
}

/// Every training rating once, in a uniformly random order seeded by `seed`
/// (the same on any number of threads): the shuffled layout's ratings.
pub fn shuffled_copy(train: &[Rating], seed: u64, threads: usize) -> Vec<Rating> {
    deal_and_shuffle(train, 1, |_| 0, seed ^ 0x5_4FF1_ED00, threads).0
}

/// Row counts of one table side, counted on `threads` threads.
fn side_counts(train: &[Rating], n_users: usize, n_items: usize, threads: usize) -> (Vec<u32>, Vec<u32>) {
    let counts = par_chunks(train, threads, |_, _, chunk| {
        let (mut cu, mut ci) = (vec![0u32; n_users], vec![0u32; n_items]);
        for r in chunk {
            cu[r.user as usize] += 1;
            ci[r.item as usize] += 1;
        }
        (cu, ci)
    });
    let (mut cu, mut ci) = (vec![0u32; n_users], vec![0u32; n_items]);
    for (u, i) in &counts {
        cu.iter_mut().zip(u).for_each(|(a, b)| *a += b);
        ci.iter_mut().zip(i).for_each(|(a, b)| *a += b);
    }
    (cu, ci)
}

impl BlockedRatings {
    /// Builds the blocks of `train` over `n_users` × `n_items` rows on up to
    /// `threads` threads (the result does not depend on how many), each
    /// block shuffled by [`deal_and_shuffle`]. At 9M ratings on 2 threads
    /// this takes about 0.28 s, against 0.57 s for one thread and one
    /// Fisher–Yates pass per block (BENCHMARKS.md).
    /// `sweeps`: per epoch, or `None` for one per [`SWEEP_RATINGS`] training
    /// ratings ([`MIN_VISITS`] at least).
    pub fn new(
        train: &[Rating],
        n_users: usize,
        n_items: usize,
        bins: u32,
        sweeps: Option<usize>,
        seed: u64,
        threads: usize,
    ) -> Self {
        let bins = bins.max(1);
        let (cu, ci) = side_counts(train, n_users, n_items, threads.max(1));
        let (user_bin, item_bin) = (balanced_bins(&cu, bins), balanced_bins(&ci, bins));
        let nb = (bins * bins) as usize;
        let (ratings, starts) = deal_and_shuffle(
            train,
            nb,
            |r| user_bin[r.user as usize] * bins + item_bin[r.item as usize],
            seed,
            threads,
        );
        let visits = sweeps.unwrap_or(default_sweeps(train.len())).max(1);
        BlockedRatings { ratings, starts, bins, visits, user_bin, item_bin }
    }

    /// Ratings of block `b` (user bin `b / bins`, item bin `b % bins`).
    pub fn len_of(&self, b: usize) -> u32 {
        self.starts[b + 1] - self.starts[b]
    }

    /// Where block `b`'s ratings start in [`BlockedRatings::ratings`].
    pub fn start_of(&self, b: usize) -> u32 {
        self.starts[b]
    }

    /// Every training rating once, block by block.
    pub fn ratings(&self) -> &[Rating] {
        &self.ratings
    }

    /// The blocked copy, given up to the layout that owns it.
    pub fn into_ratings(self) -> Vec<Rating> {
        self.ratings
    }

    /// The user bin and the item bin of `r`.
    pub fn bins_of(&self, r: &Rating) -> (u32, u32) {
        (self.user_bin[r.user as usize], self.item_bin[r.item as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn skewed(n: usize, users: u32, items: u32) -> Vec<Rating> {
        (0..n as u32)
            .map(|k| Rating {
                user: (k.wrapping_mul(2_654_435_761) >> 7) % (1 + k % users),
                item: (k * 7 + k / 3) % (1 + (k * 13) % items),
                value: (k % 5) as f32 + 1.0,
            })
            .collect()
    }

    #[test]
    fn blocks_hold_every_rating_once_in_balanced_bins() {
        let train = skewed(5_003, 97, 41);
        let bins = 6;
        let b = BlockedRatings::new(&train, 97, 41, bins, None, 3, 2);
        assert_eq!(b.visits, MIN_VISITS, "5k ratings: the fewest sweeps");
        let mut a: Vec<_> = train.iter().map(|r| (r.user, r.item, r.value.to_bits())).collect();
        let mut c: Vec<_> = b.ratings().iter().map(|r| (r.user, r.item, r.value.to_bits())).collect();
        a.sort();
        c.sort();
        assert_eq!(a, c, "the blocked copy holds exactly the training ratings");
        for blk in 0..(bins * bins) as usize {
            let s = b.start_of(blk) as usize;
            let pair = (blk as u32 / bins, blk as u32 % bins);
            let ratings = &b.ratings()[s..s + b.len_of(blk) as usize];
            assert!(ratings.iter().all(|r| b.bins_of(r) == pair), "block {blk} holds only its bins' ratings");
        }
        // Bins carry about equal rating counts.
        let mut per_bin = vec![0u32; bins as usize];
        for r in &train {
            per_bin[b.bins_of(r).0 as usize] += 1;
        }
        let (lo, hi) = (per_bin.iter().min().unwrap(), per_bin.iter().max().unwrap());
        assert!(*hi as f64 <= *lo as f64 * 1.2 + 100.0, "{per_bin:?}");
        let large = BlockedRatings::new(&skewed(9 * SWEEP_RATINGS + 17, 300, 200), 300, 200, 2, None, 1, 1);
        assert_eq!(large.visits, 9.max(MIN_VISITS), "one sweep per SWEEP_RATINGS");
    }

    #[test]
    fn the_shuffle_is_uniform_and_alike_on_any_number_of_threads() {
        // One group of 100k ratings, 4 shuffle buckets.
        let n = 100_003u32;
        let train: Vec<Rating> = (0..n).map(|k| Rating { user: k % 1000, item: k % 997, value: k as f32 }).collect();
        let one = shuffled_copy(&train, 5, 1);
        assert!(n as usize > 3 * SHUFFLE_BUCKET as usize, "more than one bucket");
        for threads in [2, 3, 7] {
            assert_eq!(one, shuffled_copy(&train, 5, threads), "{threads} threads");
        }
        let mut seen: Vec<u32> = one.iter().map(|r| r.value as u32).collect();
        // The first 4000 places draw from every quarter of the input about
        // equally (a uniform shuffle: 1000 from each, sigma 27; the bounds
        // are 3.6 sigma, and the seed is fixed).
        let mut quarters = [0u32; 4];
        for &v in &seen[..4000] {
            quarters[(v as u64 * 4 / n as u64) as usize] += 1;
        }
        assert!(quarters.iter().all(|&q| (900..1100).contains(&q)), "{quarters:?}");
        seen.sort();
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "a permutation");
        assert_ne!(one, shuffled_copy(&train, 6, 2), "the seed matters");
        // Groups keep their ratings together, each shuffled.
        let (grouped, starts) = deal_and_shuffle(&train, 3, |r| r.user % 3, 9, 2);
        for g in 0..3 {
            let part = &grouped[starts[g] as usize..starts[g + 1] as usize];
            assert!(part.iter().all(|r| r.user % 3 == g as u32));
        }
        assert_eq!(starts[3] as usize, train.len());
    }
}
