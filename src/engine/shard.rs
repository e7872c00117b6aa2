//! `--distributed server`, Factorbird's parameter server, worked out without
//! MPI (docs/ARCHITECTURE.md, "Past one machine"): which rank owns which
//! rows, which ratings a rank trains at each clock, and what its cache of
//! served item rows fetches and pushes. The MPI trainer
//! (`crate::distributed`) carries the schedule out; the same schedule,
//! made before the epoch trains, gives the epoch's predicted wire bytes.
//!
//! * **Owners.** Item `i` is served by rank `i mod P` (every rank is a
//!   server). A user belongs to one rank with all its ratings
//!   (co-partitioning): in the blocked order the rank of its user bin
//!   (`bin · P / bins`, as rotate deals workers), otherwise contiguous runs
//!   of users with equal rating counts.
//! * **Clocks.** An epoch's plan is cut into clocks: the blocked order's
//!   rounds, or one part each in the other orders. At every clock each rank
//!   trains its own ratings of the clock's parts on its copies of the rows.
//! * **The cache.** The item rows a rank trains but does not serve are
//!   staged into a cache of `slots` rows by the same [`Stager`], policies and
//!   ledger as the device slab: a miss is fetched from the row's owner, a
//!   trained row leaving the cache (or a step's staging) pushes its delta
//!   (its value less the value fetched) to the owner, which adds it.
//! * **Staleness.** Every `staleness` clocks a rank pushes the deltas of
//!   every row it holds and refetches each before it next uses it: a copy
//!   a rank trains on misses at most `staleness` clocks of the other ranks'
//!   updates, and the owner holds every update at most that late.
//!   `staleness` 1 in the blocked order, whose rounds share no row, trains
//!   one process's model up to the rounding of the deltas' sums.
//!
//! Every decision depends on the layout, the plan and the ownership alone,
//! never on the model's values, so a run is the same on every try at a
//! given number of ranks, and the bytes are known before they move.

use std::ops::Range;

use super::{EpochPlan, Part, RunLayout};
use crate::data::Rating;
use crate::stage::{Areas, Ledger, Moves, Placed, PolicyKind, Stager, plan_areas};

/// The rank that serves item `item`.
pub fn item_owner(item: u32, ranks: usize) -> usize {
    item as usize % ranks
}

/// The most foreign items a step of rank `rank` can have, whatever the
/// epoch: its largest part in the orders whose clocks are parts (parts are
/// fixed, only their order changes); in the blocked order, whose rounds pair
/// each user bin with another item bin every sweep, the sum over its user
/// bins of each one's largest part.
fn max_step(layout: &RunLayout, own: &[Rating], starts: &[u32], ranks: usize, rank: usize) -> u32 {
    let mut seen = vec![u32::MAX; layout.n_items()];
    let mut by_bin: Vec<u32> = Vec::new();
    let mut largest = 0u32;
    for p in 0..starts.len() - 1 {
        let mut n = 0u32;
        for r in &own[starts[p] as usize..starts[p + 1] as usize] {
            if item_owner(r.item, ranks) != rank && seen[r.item as usize] != p as u32 {
                seen[r.item as usize] = p as u32;
                n += 1;
            }
        }
        match layout.bins_of_part(p as u32) {
            Some((ub, _)) => {
                if by_bin.len() <= ub as usize {
                    by_bin.resize(ub as usize + 1, 0);
                }
                by_bin[ub as usize] = by_bin[ub as usize].max(n);
            }
            None => largest = largest.max(n),
        }
    }
    largest.max(by_bin.iter().sum())
}

/// One rank's share of a run: its users' ratings, part by part.
pub struct Shard {
    pub ranks: usize,
    pub rank: usize,
    /// Per user: the rank it belongs to.
    user_owner: Vec<u32>,
    /// This rank's ratings, part by part in part order: part `p`'s are
    /// `own[starts[p]..starts[p + 1]]` (one allocation: a rank's share).
    own: Vec<Rating>,
    starts: Vec<u32>,
    /// The blocked order's clocks are its rounds (the plan's groups).
    rounds: bool,
    n_items: usize,
    /// The most foreign items a step of this rank can have, in any epoch.
    max_step: u32,
}

impl Shard {
    /// Rank `rank` of `ranks` over `layout`.
    pub fn new(layout: &RunLayout, ranks: usize, rank: usize) -> Self {
        let n_users = layout.n_users();
        let mut user_owner = vec![0u32; n_users];
        let rounds = layout.bins().is_some();
        if let Some(bins) = layout.bins() {
            for (id, part) in layout.parts().iter().enumerate() {
                let (ub, _) = layout.bins_of_part(id as u32).expect("a blocked part has bins");
                let owner = (ub as usize * ranks / bins as usize) as u32;
                for r in &layout.ratings()[part.range()] {
                    user_owner[r.user as usize] = owner;
                }
            }
        } else {
            let mut counts = vec![0u64; n_users];
            for r in layout.ratings() {
                counts[r.user as usize] += 1;
            }
            let total = layout.ratings().len().max(1) as u64;
            let mut before = 0u64;
            for (u, c) in counts.iter().enumerate() {
                user_owner[u] = ((before * ranks as u64) / total).min(ranks as u64 - 1) as u32;
                before += c;
            }
        }
        let mine = |r: &&Rating| user_owner[r.user as usize] as usize == rank;
        let n = layout.ratings().iter().filter(mine).count();
        let (mut own, mut starts) = (Vec::with_capacity(n), Vec::with_capacity(layout.parts().len() + 1));
        starts.push(0);
        for p in 0..layout.parts().len() as u32 {
            own.extend(layout.part(p).iter().filter(mine).copied());
            starts.push(own.len() as u32);
        }
        let max_step = max_step(layout, &own, &starts, ranks, rank);
        Shard { ranks, rank, user_owner, own, starts, rounds, n_items: layout.n_items(), max_step }
    }

    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// Whether the clocks are the blocked order's rounds, whose parts share
    /// no row (and may train at once).
    pub fn rounds(&self) -> bool {
        self.rounds
    }

    /// The rank user `user` belongs to.
    pub fn user_owner(&self, user: u32) -> usize {
        self.user_owner[user as usize] as usize
    }

    /// The users of rank `rank`.
    pub fn users_of(&self, rank: usize) -> Vec<u32> {
        (0..self.user_owner.len() as u32).filter(|&u| self.user_owner[u as usize] as usize == rank).collect()
    }

    /// The items rank `rank` serves.
    pub fn items_of(&self, rank: usize) -> Vec<u32> {
        (0..self.n_items as u32).filter(|&i| item_owner(i, self.ranks) == rank).collect()
    }

    /// This rank's ratings.
    pub fn ratings(&self) -> usize {
        self.own.len()
    }

    /// `plan`'s clocks, as ranges of plan indices.
    pub fn clocks(&self, plan: &EpochPlan) -> Vec<Range<usize>> {
        if self.rounds {
            plan.groups_from(0).map(|(range, _)| range).collect()
        } else {
            (0..plan.parts.len()).map(|k| k..k + 1).collect()
        }
    }

    /// This rank's ratings as a layout of their own, part `p` its share of
    /// `layout`'s part `p` (empty where it has none): what its GPU trains
    /// in an order whose clocks every rank shares.
    pub fn own_layout(&self, layout: &RunLayout) -> RunLayout {
        let parts = self.starts.windows(2).map(|w| Part { start: w[0], len: w[1] - w[0] }).collect();
        RunLayout::of_parts(*layout.spec(), self.own.clone(), parts, layout.n_users(), layout.n_items())
    }

    /// The plan's parts at `clock` that hold ratings of this rank. In the
    /// blocked order each is whole this rank's (a block's users are one
    /// bin's, and a bin is one rank's).
    pub fn own_parts<'a>(&'a self, plan: &'a EpochPlan, clock: Range<usize>) -> impl Iterator<Item = u32> + 'a {
        plan.parts[clock].iter().copied().filter(|&p| self.starts[p as usize + 1] > self.starts[p as usize])
    }

    /// This rank's ratings of the plan's parts at `clock`, one part after another.
    pub fn step<'a>(&'a self, plan: &'a EpochPlan, clock: Range<usize>) -> impl Iterator<Item = &'a [Rating]> + 'a {
        plan.parts[clock]
            .iter()
            .map(|&p| &self.own[self.starts[p as usize] as usize..self.starts[p as usize + 1] as usize])
            .filter(|r| !r.is_empty())
    }

    /// The items of a step that another rank serves, in the order of their
    /// first use, into `out` (`seen` is a per-item scratch of stamps).
    fn foreign_items<'a>(
        &self,
        step: impl Iterator<Item = &'a [Rating]>,
        seen: &mut [u32],
        stamp: u32,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        for r in step.flatten() {
            if item_owner(r.item, self.ranks) != self.rank && seen[r.item as usize] != stamp {
                seen[r.item as usize] = stamp;
                out.push(r.item);
            }
        }
    }

    /// Every clock's foreign items of `plan`.
    pub fn trace(&self, plan: &EpochPlan) -> Vec<Vec<u32>> {
        let mut seen = vec![0u32; self.n_items];
        self.clocks(plan)
            .into_iter()
            .enumerate()
            .map(|(k, c)| {
                let mut out = Vec::new();
                self.foreign_items(self.step(plan, c), &mut seen, k as u32 + 1, &mut out);
                out
            })
            .collect()
    }

    /// This rank's accesses per foreign item over an epoch (0 for the items
    /// it serves): what the policy ranks rows by.
    pub fn foreign_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.n_items];
        for r in &self.own {
            if item_owner(r.item, self.ranks) != self.rank {
                counts[r.item as usize] += 1;
            }
        }
        counts
    }
}

/// What one clock moves: deltas pushed to their owners, then rows fetched
/// from them, before the clock's step trains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClockMoves {
    /// Rows whose deltas are pushed: the last clock's staged rows, trained
    /// rows leaving the cache, and at a sync every row held.
    pub push: Vec<Placed>,
    /// Rows fetched into their slots: misses, and held rows gone stale.
    pub fetch: Vec<Placed>,
}

/// An epoch's schedule: each clock's moves, and the pushes that end it.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    pub clocks: Vec<ClockMoves>,
    /// The last clock's staged rows and every row still trained in the cache.
    pub flush: Vec<Placed>,
    pub ledger: Ledger,
}

impl Schedule {
    /// Rows this rank pushes to, and fetches from, each rank in the epoch.
    pub fn rows_by_owner(&self, ranks: usize) -> (Vec<u64>, Vec<u64>) {
        let (mut push, mut fetch) = (vec![0u64; ranks], vec![0u64; ranks]);
        for c in &self.clocks {
            c.push.iter().for_each(|p| push[item_owner(p.row, ranks)] += 1);
            c.fetch.iter().for_each(|p| fetch[item_owner(p.row, ranks)] += 1);
        }
        self.flush.iter().for_each(|p| push[item_owner(p.row, ranks)] += 1);
        (push, fetch)
    }
}

/// What a rank hands MPI in one epoch: 4 bytes an id for every row it
/// pushes or fetches (`push`, `fetch`: per owner), a row's bytes for every
/// delta it pushes and every row it serves (`served`: the rows the others
/// fetch from it), and the epoch's-end gather of its `gathered` rows to each
/// other rank.
pub fn schedule_bytes(push: &[u64], fetch: &[u64], served: u64, gathered: u64, ranks: usize, row_bytes: u64) -> u64 {
    let ids: u64 = push.iter().chain(fetch).sum::<u64>() * 4;
    ids + push.iter().sum::<u64>() * row_bytes + served * row_bytes + gathered * row_bytes * (ranks as u64 - 1)
}

/// The slots of a cache of `budget` (bytes, or a share of the item table of
/// `n_items` rows of `row_bytes`).
pub fn cache_slots(budget: crate::stage::Budget, n_items: usize, row_bytes: u64) -> u32 {
    crate::stage::slots_in(budget.resolve(n_items as u64 * row_bytes), row_bytes)
}

/// Every rank's shard and cache of a run, in one process: what `plan`
/// works the server's traffic out with, no MPI needed.
pub struct World {
    shards: Vec<Shard>,
    caches: Vec<Cache>,
    /// Each rank's users and served items: its rows in the epoch's-end gather.
    gathered: Vec<u64>,
    row_bytes: u64,
}

impl World {
    /// `ranks` ranks over `layout`, each with a cache of `slots` under
    /// `policy`, `staleness` clocks apart; rows of `row_bytes`.
    pub fn new(
        layout: &RunLayout,
        ranks: usize,
        policy: PolicyKind,
        slots: u32,
        staleness: u32,
        row_bytes: u64,
    ) -> Self {
        let shards: Vec<Shard> = (0..ranks).map(|k| Shard::new(layout, ranks, k)).collect();
        let caches = shards.iter().map(|s| Cache::new(s, layout, policy, slots, staleness)).collect();
        let gathered = (0..ranks).map(|k| (shards[0].users_of(k).len() + shards[0].items_of(k).len()) as u64).collect();
        World { shards, caches, gathered, row_bytes }
    }

    /// The bytes each rank hands MPI in epoch `epoch` (0-based), epochs
    /// asked for in order from 0 (each cache carries on from the last).
    pub fn epoch_bytes(&mut self, layout: &RunLayout, epoch: usize, needs_future: bool) -> Vec<u64> {
        let ranks = self.shards.len();
        let (plan, next) = (layout.epoch(epoch), layout.epoch(epoch + 1));
        let rows: Vec<(Vec<u64>, Vec<u64>)> = self
            .shards
            .iter()
            .zip(&mut self.caches)
            .map(|(s, c)| {
                let following = needs_future.then(|| s.trace(&next));
                c.schedule(&s.trace(&plan), following.as_deref()).rows_by_owner(ranks)
            })
            .collect();
        (0..ranks)
            .map(|k| {
                let served = rows.iter().map(|(_, fetch)| fetch[k]).sum();
                let (push, fetch) = &rows[k];
                schedule_bytes(push, fetch, served, self.gathered[k], ranks, self.row_bytes)
            })
            .collect()
    }
}

/// A rank's cache of served rows: the slab's [`Stager`] over the item table,
/// and when each slot's row was fetched.
pub struct Cache {
    stager: Stager,
    moves: Moves,
    /// Per slot: the clock its row was fetched at (or the epoch began).
    fetched: Vec<u32>,
    staleness: u32,
    pub areas: Areas,
}

impl Cache {
    /// A cache of `slots` rows under `policy` for `shard` of `layout`, its
    /// clocks `staleness` apart at most (the first epoch's steps size
    /// `static`'s split and SCA's model). Where a step can hold more rows than
    /// `slots`, the cache gets staging slots for them.
    pub fn new(shard: &Shard, layout: &RunLayout, policy: PolicyKind, slots: u32, staleness: u32) -> Self {
        let trace = shard.trace(&layout.epoch(0));
        let counts = shard.foreign_counts();
        let ratings = shard.ratings();
        let batch = ratings.div_ceil(trace.len().max(1)).max(1);
        let steps = || Box::new(trace.iter().map(|s| &s[..])) as Box<dyn Iterator<Item = &[u32]>>;
        let mut areas = plan_areas(policy, slots, steps, batch, &counts, ratings);
        // Every step's rows must fit, in any epoch: staging slots beyond
        // the cache asked for where it is smaller.
        if areas.slots() < shard.max_step {
            areas.staging += shard.max_step - areas.slots();
        }
        let horizon = (batch as u32).saturating_mul(32);
        let stager = Stager::new(policy, areas, 0, shard.n_items() as u32, &counts, horizon);
        let fetched = vec![0; areas.slots() as usize];
        Cache { stager, moves: Moves::default(), fetched, staleness: staleness.max(1), areas }
    }

    /// Every row the cache holds, with its slot: at an epoch's start, the
    /// rows whose bases the trainer sets before [`Cache::schedule`].
    pub fn held(&self) -> Vec<Placed> {
        let view = self.stager.view();
        view.rows
            .iter()
            .enumerate()
            .filter(|&(_, &r)| r != crate::stage::NONE)
            .map(|(s, &row)| Placed { row, slot: s as u32 })
            .collect()
    }

    /// The policy's name.
    pub fn policy(&self) -> &'static str {
        self.stager.policy_name()
    }

    /// The schedule of an epoch whose clocks' foreign rows are `trace`
    /// (`following`: the next epoch's, for policies that look ahead). Every
    /// row held at its start is current (the epoch before ended with every
    /// rank holding the whole model).
    pub fn schedule(&mut self, trace: &[Vec<u32>], following: Option<&[Vec<u32>]>) -> Schedule {
        let follow = following.unwrap_or(&[]);
        self.stager.begin_epoch(trace.iter().map(|s| &s[..]), follow.iter().map(|s| &s[..]), false);
        self.fetched.iter_mut().for_each(|f| *f = 0);
        let mut out = Schedule::default();
        let mut released: Vec<Placed> = Vec::new();
        // Rows fetched before this clock are refetched when next used.
        let mut stale_before = 0u32;
        for (k, rows) in trace.iter().enumerate() {
            let clock = k as u32 + 1;
            let mut moves = ClockMoves { push: std::mem::take(&mut released), fetch: Vec::new() };
            if k > 0 && (k as u32).is_multiple_of(self.staleness) {
                moves.push.extend(self.stager.take_dirty(&mut out.ledger));
                stale_before = clock;
            }
            self.stager.stage(rows, &mut self.moves, &mut out.ledger);
            out.ledger.steps += 1;
            moves.push.extend_from_slice(&self.moves.evict);
            for p in &self.moves.load {
                self.fetched[p.slot as usize] = clock;
            }
            moves.fetch.extend_from_slice(&self.moves.load);
            for &row in rows {
                // Rows staged for this step alone were released already:
                // fetched this clock.
                let slot = self.stager.slot_of(row);
                if slot != crate::stage::NONE && self.fetched[slot as usize] < stale_before {
                    self.fetched[slot as usize] = clock;
                    moves.fetch.push(Placed { row, slot });
                }
            }
            released.extend_from_slice(&self.moves.release);
            out.clocks.push(moves);
        }
        out.flush = released;
        out.flush.extend(self.stager.take_dirty(&mut out.ledger));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{LayoutSpec, Order};

    fn ratings(n: u32, users: u32, items: u32) -> Vec<Rating> {
        (0..n)
            .map(|k| Rating {
                user: (k.wrapping_mul(2_654_435_761) >> 5) % users,
                item: ((k.wrapping_mul(40_503) >> 3) % items).min((k * 7) % items),
                value: (k % 5) as f32 + 1.0,
            })
            .collect()
    }

    fn layout(order: Order, n: u32) -> RunLayout {
        let spec = LayoutSpec { order, batch: 64, seed: 3, co_partition: None };
        RunLayout::new(&ratings(n, 97, 61), 97, 61, spec, 1).unwrap()
    }

    #[test]
    fn every_rating_belongs_to_one_rank_and_a_user_to_one() {
        for order in [Order::Blocked { bins: 8, sweeps: 2, tile: 1 }, Order::Shuffled] {
            let l = layout(order, 3001);
            let shards: Vec<Shard> = (0..3).map(|k| Shard::new(&l, 3, k)).collect();
            assert_eq!(shards.iter().map(Shard::ratings).sum::<usize>(), 3001);
            for s in &shards {
                for r in &s.own {
                    assert_eq!(s.user_owner(r.user), s.rank);
                }
            }
            assert!(shards.iter().all(|s| s.ratings() > 3001 / 6), "shares roughly even");
        }
    }

    /// Replays a schedule: rows held per slot, checking that every row a
    /// step trains is held and was fetched no more than `staleness` clocks
    /// before, and that every trained row is pushed before it leaves.
    #[test]
    fn the_schedule_holds_each_steps_rows_fresh_and_pushes_every_trained_row() {
        for (order, ranks, rank, policy, slots, staleness) in [
            (Order::Shuffled, 2, 1, PolicyKind::Lru, 8, 1),
            (Order::Shuffled, 2, 1, PolicyKind::Lru, 20, 4),
            (Order::Shuffled, 2, 1, PolicyKind::Sca, 20, 3),
            (Order::Shuffled, 2, 1, PolicyKind::Static, 30, 2),
            (Order::Shuffled, 2, 1, PolicyKind::Lfu, 16, 5),
            (Order::Blocked { bins: 12, sweeps: 2, tile: 1 }, 3, 2, PolicyKind::Lru, 12, 1),
            (Order::Blocked { bins: 12, sweeps: 2, tile: 1 }, 3, 0, PolicyKind::Lru, 25, 1),
            (Order::Blocked { bins: 12, sweeps: 2, tile: 1 }, 4, 1, PolicyKind::Lru, 10, 2),
        ] {
            let l = layout(order, 4000);
            let shard = Shard::new(&l, ranks, rank);
            let plan = l.epoch(0);
            let trace = shard.trace(&plan);
            let mut cache = Cache::new(&shard, &l, policy, slots, staleness);
            let held0 = cache.held();
            let s = cache.schedule(&trace, None);
            // Which row each slot holds, and where and when each row was
            // last fetched.
            let mut holds: std::collections::HashMap<u32, u32> = held0.iter().map(|p| (p.slot, p.row)).collect();
            let mut fetched: std::collections::HashMap<u32, (u32, u32)> =
                held0.iter().map(|p| (p.row, (p.slot, 0))).collect();
            let mut dirty = std::collections::HashSet::new();
            let mut pushed = 0;
            for (k, (rows, m)) in trace.iter().zip(&s.clocks).enumerate() {
                let clock = k as u32 + 1;
                for p in &m.push {
                    assert!(dirty.remove(&p.row), "{policy:?}: push of an untrained row {}", p.row);
                    pushed += 1;
                }
                for p in &m.fetch {
                    holds.insert(p.slot, p.row);
                    fetched.insert(p.row, (p.slot, clock));
                }
                for &row in rows {
                    let (slot, when) = fetched[&row];
                    assert_eq!(holds[&slot], row, "{policy:?}: a step's row is held");
                    assert!(
                        clock - when <= staleness,
                        "{policy:?}: row {row} fetched at clock {when}, used at {clock}"
                    );
                    dirty.insert(row);
                }
            }
            for p in &s.flush {
                assert!(dirty.remove(&p.row));
                pushed += 1;
            }
            assert!(dirty.is_empty(), "{policy:?}: rows trained and never pushed: {dirty:?}");
            assert!(pushed > 0);
        }
    }

    /// Carries a schedule out on counts: every use of a row adds 1 to the
    /// rank's copy, a push adds the copy less its base to the server's
    /// value, a fetch copies the server's value into the copy and its base
    /// (kept per slot, as the trainer keeps it). After the flush the server
    /// holds every use: no delta lost or counted twice.
    #[test]
    fn carried_out_the_schedule_loses_no_update() {
        for (policy, slots, staleness) in
            [(PolicyKind::Lru, 10, 2), (PolicyKind::Lru, 40, 3), (PolicyKind::Lfu, 16, 2), (PolicyKind::Sca, 16, 4)]
        {
            let l = layout(Order::Shuffled, 4000);
            let shard = Shard::new(&l, 2, 0);
            let mut cache = Cache::new(&shard, &l, policy, slots, staleness);
            let n = shard.n_items();
            let (mut server, mut copy) = (vec![0i64; n], vec![0i64; n]);
            let mut base = vec![0i64; cache.areas.slots() as usize];
            let mut uses = vec![0i64; n];
            for epoch in 0..3 {
                let plan = l.epoch(epoch);
                let trace = shard.trace(&plan);
                // An epoch starts with the whole model everywhere.
                copy.copy_from_slice(&server);
                for p in cache.held() {
                    base[p.slot as usize] = server[p.row as usize];
                }
                let s = cache.schedule(&trace, None);
                for (rows, m) in trace.iter().zip(&s.clocks) {
                    for p in &m.push {
                        server[p.row as usize] += copy[p.row as usize] - base[p.slot as usize];
                    }
                    for p in &m.fetch {
                        copy[p.row as usize] = server[p.row as usize];
                        base[p.slot as usize] = server[p.row as usize];
                    }
                    rows.iter().for_each(|&r| copy[r as usize] += 1);
                }
                for p in &s.flush {
                    server[p.row as usize] += copy[p.row as usize] - base[p.slot as usize];
                }
                trace.iter().flatten().for_each(|&r| uses[r as usize] += 1);
            }
            assert_eq!(server, uses, "{policy:?} {slots} slots, staleness {staleness}");
        }
    }

    /// The parameter server carried out in one process, ranks one after
    /// another at each clock as `crate::distributed` carries it out across
    /// processes (every push of a clock added before any fetch is
    /// answered), with real SGD steps, for `epochs`. Returns the largest
    /// difference from the sequential walk's tables.
    fn carried_out(
        l: &RunLayout,
        k: usize,
        ranks: usize,
        policy: PolicyKind,
        slots: u32,
        staleness: u32,
        epochs: usize,
    ) -> f32 {
        use crate::model::Step;
        let s = crate::model::row_stride(k);
        let (nu, ni) = (l.n_users(), l.n_items());
        let step = Step { rank: k, mean: 3.0, lr: 0.05, reg: 0.05, bias_reg: 0.05 };
        let init = |n: usize, salt: u32| -> Vec<f32> {
            (0..n * s)
                .map(|x| if x % s < k { ((x as u32).wrapping_mul(2_654_435_761) ^ salt) % 1000 } else { 0 } as f32 / 5000.0)
                .collect()
        };
        let (users0, items0) = (init(nu, 1), init(ni, 2));
        let (mut users, mut items) = (users0.clone(), items0.clone());
        for epoch in 0..epochs {
            for &p in &l.epoch(epoch).parts {
                for r in l.part(p) {
                    let (u, i) = (r.user as usize * s, r.item as usize * s);
                    step.apply(&mut users[u..u + s], &mut items[i..i + s], r.value);
                }
            }
        }
        let shards: Vec<Shard> = (0..ranks).map(|r| Shard::new(l, ranks, r)).collect();
        let mut caches: Vec<Cache> = shards.iter().map(|sh| Cache::new(sh, l, policy, slots, staleness)).collect();
        let mut models: Vec<(Vec<f32>, Vec<f32>)> = vec![(users0.clone(), items0.clone()); ranks];
        let mut bases: Vec<Vec<f32>> = caches.iter().map(|c| vec![0f32; c.areas.slots() as usize * s]).collect();
        for epoch in 0..epochs {
            let plan = l.epoch(epoch);
            let schedules: Vec<Schedule> = (0..ranks)
                .map(|r| {
                    for p in caches[r].held() {
                        let i = p.row as usize * s;
                        bases[r][p.slot as usize * s..][..s].copy_from_slice(&models[r].1[i..i + s]);
                    }
                    caches[r].schedule(&shards[r].trace(&plan), None)
                })
                .collect();
            let clocks = shards[0].clocks(&plan);
            for c in 0..=clocks.len() {
                let mut deltas = Vec::new();
                for r in 0..ranks {
                    let push = if c < clocks.len() { &schedules[r].clocks[c].push } else { &schedules[r].flush };
                    for p in push {
                        let i = p.row as usize * s;
                        let d: Vec<f32> =
                            (0..s).map(|x| models[r].1[i + x] - bases[r][p.slot as usize * s + x]).collect();
                        deltas.push((p.row, d));
                    }
                }
                for (row, d) in deltas {
                    let i = row as usize * s;
                    let owner = &mut models[item_owner(row, ranks)].1;
                    (0..s).for_each(|x| owner[i + x] += d[x]);
                }
                if c == clocks.len() {
                    break;
                }
                for r in 0..ranks {
                    for p in &schedules[r].clocks[c].fetch {
                        let i = p.row as usize * s;
                        let v: Vec<f32> = models[item_owner(p.row, ranks)].1[i..i + s].to_vec();
                        models[r].1[i..i + s].copy_from_slice(&v);
                        bases[r][p.slot as usize * s..][..s].copy_from_slice(&v);
                    }
                }
                for (r, (mu, mi)) in models.iter_mut().enumerate() {
                    for ratings in shards[r].step(&plan, clocks[c].clone()) {
                        for x in ratings {
                            let (u, i) = (x.user as usize * s, x.item as usize * s);
                            step.apply(&mut mu[u..u + s], &mut mi[i..i + s], x.value);
                        }
                    }
                }
            }
            // The gather: owners' rows to everyone.
            let all: Vec<(Vec<f32>, Vec<f32>)> = models.clone();
            for m in models.iter_mut() {
                for u in 0..nu {
                    let o = shards[0].user_owner(u as u32);
                    m.0[u * s..][..s].copy_from_slice(&all[o].0[u * s..][..s]);
                }
                for i in 0..ni {
                    m.1[i * s..][..s].copy_from_slice(&all[item_owner(i as u32, ranks)].1[i * s..][..s]);
                }
            }
        }
        let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        worst(&models[0].0, &users).max(worst(&models[0].1, &items))
    }

    /// At staleness 1 the blocked order's rounds share no row, so the
    /// parameter server trains the sequential walk's model up to the
    /// rounding of the deltas, whatever the cache and its policy.
    #[test]
    fn at_staleness_1_the_blocked_order_trains_the_sequential_model() {
        let l = layout(Order::Blocked { bins: 12, sweeps: 2, tile: 1 }, 6000);
        for (ranks, policy, slots) in
            [(3, PolicyKind::Lru, 6), (2, PolicyKind::Lru, 9), (4, PolicyKind::Sca, 5), (3, PolicyKind::Lfu, 7)]
        {
            let d = carried_out(&l, 4, ranks, policy, slots, 1, 2);
            assert!(d < 1e-5, "{ranks} ranks, {policy:?} {slots} slots: {d:e}");
        }
    }

    /// No step of any epoch holds more foreign rows than the bound the
    /// cache is sized with: a cache of one slot stages every epoch.
    #[test]
    fn a_cache_holds_every_step_of_every_epoch() {
        for order in [Order::Blocked { bins: 12, sweeps: 2, tile: 4 }, Order::Shuffled] {
            let l = layout(order, 5000);
            for (ranks, rank) in [(2, 0), (3, 2), (4, 1)] {
                let shard = Shard::new(&l, ranks, rank);
                let mut cache = Cache::new(&shard, &l, PolicyKind::Lru, 1, 2);
                for e in 0..8 {
                    let trace = shard.trace(&l.epoch(e));
                    assert!(trace.iter().all(|t| t.len() as u32 <= shard.max_step), "{order:?} epoch {e}");
                    cache.schedule(&trace, None);
                }
            }
        }
    }

    #[test]
    fn the_blocked_orders_clocks_are_its_rounds() {
        let l = layout(Order::Blocked { bins: 8, sweeps: 2, tile: 1 }, 3001);
        let plan = l.epoch(0);
        let shard = Shard::new(&l, 2, 0);
        assert_eq!(shard.clocks(&plan).len(), 8 * 2);
        let s = Shard::new(&layout(Order::Shuffled, 3001), 2, 0);
        let p = layout(Order::Shuffled, 3001).epoch(0);
        assert_eq!(s.clocks(&p).len(), p.parts.len());
    }
}
