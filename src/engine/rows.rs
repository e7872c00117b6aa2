//! Every part's distinct rows, listed once per run on all cores: what the
//! scheduler stages for a part, in the order of their first use. A part's
//! contents repeat every epoch ([`super::order`]), so its rows do too.
//!
//! Rows are global rows (users `0..U`, items `U..U+I`), as in
//! [`crate::stage`].

use super::blocked::par_chunks;
use super::order::RunLayout;
use crate::data::{Rating, UNKNOWN};
use crate::stage::copartition::Side;

/// The distinct rows of every part of a layout.
#[derive(Debug, Clone, Default)]
pub struct PartRows {
    /// `rows[offsets[k]..offsets[k + 1]]` are part k's rows (empty when only
    /// the counts were kept).
    offsets: Vec<u64>,
    rows: Vec<u32>,
    /// Distinct user rows and item rows of every part.
    users: Vec<u32>,
    items: Vec<u32>,
    /// Global rows below this are users.
    n_users: u32,
}

/// The distinct rows of `ratings` in first-use order (user, then item, of
/// each rating), skipping ids unknown to training, appended to `out`;
/// `seen[row] == stamp` marks a row already listed. Returns how many users
/// it listed.
fn distinct_into(ratings: &[Rating], n_users: u32, seen: &mut [u32], stamp: u32, out: &mut Vec<u32>) -> u32 {
    let mut users = 0;
    for r in ratings {
        if r.user != UNKNOWN {
            let u = r.user as usize;
            if seen[u] != stamp {
                seen[u] = stamp;
                out.push(r.user);
                users += 1;
            }
        }
        if r.item != UNKNOWN {
            let i = (n_users + r.item) as usize;
            if seen[i] != stamp {
                seen[i] = stamp;
                out.push(i as u32);
            }
        }
    }
    users
}

impl PartRows {
    /// Lists every part of `layout` on up to `threads` threads; with
    /// `keep_rows` false only the counts are kept (enough for a slab that
    /// holds every row, which stages nothing).
    pub fn new(layout: &RunLayout, threads: usize, keep_rows: bool) -> Self {
        let n_users = layout.n_users() as u32;
        let n_rows = layout.n_users() + layout.n_items();
        let chunks = par_chunks(layout.parts(), threads, |_, first, parts| {
            let mut seen = vec![0u32; n_rows];
            let (mut rows, mut lens, mut users) = (Vec::new(), Vec::with_capacity(parts.len()), Vec::new());
            let mut scratch = Vec::new();
            for (k, p) in parts.iter().enumerate() {
                let stamp = (first + k + 1) as u32;
                scratch.clear();
                let u = distinct_into(&layout.ratings()[p.range()], n_users, &mut seen, stamp, &mut scratch);
                lens.push(scratch.len() as u32);
                users.push(u);
                if keep_rows {
                    rows.extend_from_slice(&scratch);
                }
            }
            (rows, lens, users)
        });
        let mut me = PartRows { n_users, ..Default::default() };
        me.offsets.push(0);
        for (rows, lens, users) in chunks {
            for (&len, &u) in lens.iter().zip(&users) {
                let end = me.offsets.last().copied().unwrap_or(0) + if keep_rows { len as u64 } else { 0 };
                me.offsets.push(end);
                me.users.push(u);
                me.items.push(len - u);
            }
            me.rows.extend_from_slice(&rows);
        }
        me
    }

    /// The rows of every part that `keep` keeps, in the same order, listed
    /// on up to `threads` threads: e.g. a part's rows outside a fixed
    /// resident set, all a step of a policy without a cache must stage.
    pub fn filtered(&self, keep: impl Fn(u32) -> bool + Sync, threads: usize) -> PartRows {
        let parts: Vec<u32> = (0..self.users.len() as u32).collect();
        let keep = &keep;
        let chunks = par_chunks(&parts, threads, |_, _, ids| {
            let (mut rows, mut users, mut items) =
                (Vec::new(), Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()));
            for &k in ids {
                let before = rows.len();
                rows.extend(self.of(k).iter().copied().filter(|&r| keep(r)));
                let u = self.of(k).iter().filter(|&&r| keep(r) && r < self.n_users).count() as u32;
                users.push(u);
                items.push((rows.len() - before) as u32 - u);
            }
            (rows, users, items)
        });
        let mut out = PartRows { offsets: vec![0], n_users: self.n_users, ..Default::default() };
        for (rows, users, items) in chunks {
            let mut at = *out.offsets.last().unwrap_or(&0);
            for (&u, &i) in users.iter().zip(&items) {
                at += (u + i) as u64;
                out.offsets.push(at);
            }
            out.rows.extend_from_slice(&rows);
            out.users.extend_from_slice(&users);
            out.items.extend_from_slice(&items);
        }
        out
    }

    /// Part `k`'s distinct rows in first-use order (empty when only counts
    /// were kept).
    pub fn of(&self, k: u32) -> &[u32] {
        let (a, b) = (self.offsets[k as usize] as usize, self.offsets[k as usize + 1] as usize);
        &self.rows[a..b]
    }

    /// Part `k`'s distinct (user rows, item rows).
    pub fn counts(&self, k: u32) -> (u32, u32) {
        (self.users[k as usize], self.items[k as usize])
    }

    /// The most distinct rows of any part: the smallest slab that holds a
    /// step.
    pub fn max(&self) -> u32 {
        self.users.iter().zip(&self.items).map(|(u, i)| u + i).max().unwrap_or(0)
    }

    /// Distinct rows summed over all parts (a trace of one epoch).
    pub fn total(&self) -> u64 {
        self.users.iter().zip(&self.items).map(|(&u, &i)| (u + i) as u64).sum()
    }

    /// Every part's rows, in part order.
    pub fn iter(&self) -> impl Iterator<Item = &[u32]> + '_ {
        (0..self.users.len() as u32).map(|k| self.of(k))
    }
}

/// The most distinct rows of any run of `batch` consecutive ratings of
/// `ratings` (over `n_rows` global rows): the largest part of a shuffled
/// layout cut at `batch`, without cutting it.
pub fn max_step_rows(ratings: &[Rating], n_users: u32, n_rows: usize, batch: usize) -> u32 {
    let mut seen = vec![0u32; n_rows];
    let mut scratch = Vec::new();
    let mut best = 0;
    for (k, chunk) in ratings.chunks(batch.max(1)).enumerate() {
        scratch.clear();
        distinct_into(chunk, n_users, &mut seen, k as u32 + 1, &mut scratch);
        best = best.max(scratch.len() as u32);
    }
    best
}

/// Ratings in one unit of `lookahead`'s horizon (`--lookahead L`): the
/// default batch, whatever the run's batch or part size, so that a horizon
/// sees as far into the epoch under every order.
pub const LOOKAHEAD_UNIT: usize = 2048;

/// `lookahead`'s horizon of `units` × [`LOOKAHEAD_UNIT`] ratings, in trace
/// positions (the parts' distinct rows, as many as that many ratings take
/// on average).
pub fn lookahead_accesses(units: usize, ratings: usize, rows: &PartRows) -> u32 {
    let per_rating = rows.total() as f64 / ratings.max(1) as f64;
    (units as f64 * LOOKAHEAD_UNIT as f64 * per_rating).ceil().min(u32::MAX as f64) as u32
}

/// The distinct rows of the co-partitioned side of every layout group (a
/// block visit): staged once when the group starts.
#[derive(Debug, Clone, Default)]
pub struct GroupRows {
    offsets: Vec<u64>,
    rows: Vec<u32>,
}

impl GroupRows {
    pub fn new(layout: &RunLayout, side: Side) -> Self {
        let n_users = layout.n_users() as u32;
        let mut seen = vec![0u32; layout.n_users() + layout.n_items()];
        let mut me = GroupRows { offsets: vec![0], rows: Vec::new() };
        for g in 0..layout.groups() as u32 {
            let stamp = g + 1;
            for p in layout.group_parts(g) {
                for r in layout.part(p) {
                    let row = side.row(r, n_users);
                    if seen[row as usize] != stamp {
                        seen[row as usize] = stamp;
                        me.rows.push(row);
                    }
                }
            }
            me.offsets.push(me.rows.len() as u64);
        }
        me
    }

    /// Group `g`'s rows of the side.
    pub fn of(&self, g: u32) -> &[u32] {
        &self.rows[self.offsets[g as usize] as usize..self.offsets[g as usize + 1] as usize]
    }
}

/// Cuts `ratings` into consecutive runs whose distinct rows that `counts`
/// (as [`distinct_into`] lists them) are at most `limit`, each run at most
/// `max_len` long, and lists every run's rows: evaluation's steps, sized to
/// the upload window. Returns the runs' ends and their rows.
pub fn cut_by_rows(
    ratings: &[Rating],
    n_users: u32,
    n_rows: usize,
    limit: usize,
    max_len: usize,
    counts: impl Fn(u32) -> bool,
) -> (Vec<u32>, PartRows) {
    let mut seen = vec![0u32; n_rows];
    let mut out = PartRows { offsets: vec![0], n_users, ..Default::default() };
    let mut ends = Vec::new();
    let (mut stamp, mut start, mut counted, mut users) = (1u32, 0usize, 0usize, 0u32);
    let mut listed: Vec<u32> = Vec::new();
    let close = |out: &mut PartRows, ends: &mut Vec<u32>, end: usize, rows: &[u32], users: u32| {
        ends.push(end as u32);
        out.rows.extend_from_slice(rows);
        out.offsets.push(out.rows.len() as u64);
        out.users.push(users);
        out.items.push(rows.len() as u32 - users);
    };
    // A rating's global rows (user, item), unknown ids left out.
    let rows_of = |r: &Rating| [(r.user != UNKNOWN).then_some(r.user), (r.item != UNKNOWN).then(|| n_users + r.item)];
    for (j, r) in ratings.iter().enumerate() {
        let fresh = |seen: &[u32], stamp: u32| rows_of(r).map(|g| g.filter(|&g| seen[g as usize] != stamp));
        let mut new = fresh(&seen, stamp);
        let add = new.iter().flatten().filter(|&&g| counts(g)).count();
        if j > start && (counted + add > limit || j - start >= max_len) {
            close(&mut out, &mut ends, j, &listed, users);
            listed.clear();
            (stamp, start, counted, users) = (stamp + 1, j, 0, 0);
            new = fresh(&seen, stamp);
        }
        for g in new.into_iter().flatten() {
            seen[g as usize] = stamp;
            listed.push(g);
            counted += counts(g) as usize;
            users += (g < n_users) as u32;
        }
    }
    if start < ratings.len() || ends.is_empty() {
        close(&mut out, &mut ends, ratings.len(), &listed, users);
    }
    (ends, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::order::{LayoutSpec, Order};

    fn ratings() -> Vec<Rating> {
        (0..1000u32).map(|k| Rating { user: (k * 7) % 31, item: (k * k) % 17, value: 1.0 }).collect()
    }

    #[test]
    fn every_part_lists_its_rows_once_in_first_use_order_on_any_number_of_threads() {
        let train = ratings();
        let spec = LayoutSpec { seed: 1, batch: 77, order: Order::Shuffled, co_partition: None };
        let layout = RunLayout::new(&train, 31, 17, spec, 1).unwrap();
        let one = PartRows::new(&layout, 1, true);
        let three = PartRows::new(&layout, 3, true);
        let counts_only = PartRows::new(&layout, 2, false);
        for k in 0..layout.parts().len() as u32 {
            let mut want = Vec::new();
            for r in layout.part(k) {
                for row in [r.user, 31 + r.item] {
                    if !want.contains(&row) {
                        want.push(row);
                    }
                }
            }
            assert_eq!(one.of(k), &want[..], "part {k}");
            assert_eq!(three.of(k), &want[..], "part {k} on 3 threads");
            let users = want.iter().filter(|&&r| r < 31).count() as u32;
            assert_eq!(one.counts(k), (users, want.len() as u32 - users));
            assert_eq!(counts_only.counts(k), one.counts(k));
            assert!(counts_only.of(k).is_empty());
        }
        assert_eq!(one.max() as usize, (0..layout.parts().len() as u32).map(|k| one.of(k).len()).max().unwrap());
    }

    #[test]
    fn cutting_by_rows_keeps_every_run_within_the_limit() {
        let mut test = ratings();
        test[5].user = UNKNOWN;
        test[9].item = UNKNOWN;
        // Rows below 40 count against the limit (as resident ones would not).
        let (ends, rows) = cut_by_rows(&test, 31, 48, 10, 64, |g| g < 40);
        assert_eq!(*ends.last().unwrap() as usize, test.len());
        let mut start = 0;
        for (k, &end) in ends.iter().enumerate() {
            let run = &test[start..end as usize];
            assert!(run.len() <= 64);
            let mut want: Vec<u32> = Vec::new();
            for r in run {
                for (row, off) in [(r.user, 0), (r.item, 31)] {
                    if row != UNKNOWN && !want.contains(&(row + off)) {
                        want.push(row + off);
                    }
                }
            }
            assert_eq!(rows.of(k as u32), &want[..], "run {k}");
            assert!(want.iter().filter(|&&g| g < 40).count() <= 10, "run {k} over the limit");
            start = end as usize;
        }
    }
}
