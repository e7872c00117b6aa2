//! SCA's split of the slab for the run at hand (docs/ARCHITECTURE.md,
//! "SCA"): the rows most likely to be needed stay resident, the other slots
//! are a cache kept across steps (least recently used out first), and the
//! resident set's size is the one whose replay of this run's own trace, the
//! same walk a run carries out ([`super::walk`]), stages the fewest rows in.
//!
//! The candidates include `static`'s split exactly (its resident set, the
//! rest staged a step at a time), `lru`'s (no resident set, all cache) and
//! sizes between: so on the replayed trace SCA stages no more rows than
//! either. The i.i.d. cost model ([`crate::stage::sca::CostModel`]) is kept
//! for the planner's batch search; on real traces, whose steps are neither
//! independent nor alike, the replay is what predicts the traffic.

use std::sync::atomic::{AtomicBool, Ordering};

use super::order::{EpochPlan, RunLayout};
use super::rows::{GroupRows, PartRows};
use super::walk::{Event, Pass, Walker, outside_rows};
use crate::stage::{Areas, CacheKind, Ledger, Moves, PolicyKind, Stager, plan_areas, static_resident};

/// Step rows each replayed epoch reads at most (a prefix, scaled to the
/// epoch): bounds the planning time of a large run to a fraction of a
/// second per candidate.
pub const REPLAY_ROWS: u64 = 1 << 21;

/// Resident sizes first tried besides `static`'s split: `max × k / COARSE`,
/// k = 0..=COARSE, with the rest cache; a search by halving steps follows.
const COARSE: u32 = 8;

/// Halving rounds after the coarse sizes (two replays each).
const REFINE: u32 = 3;

/// The run SCA plans for: what a simulation or a GPU run walks.
pub struct Trace<'a> {
    pub layout: &'a RunLayout,
    pub rows: &'a PartRows,
    /// Co-partitioning's rows of the side per group (its blocks' traffic is
    /// replayed too).
    pub groups: Option<&'a GroupRows>,
    /// Training counts per global row as the policy sees them.
    pub counts: &'a [u32],
    pub n_users: u32,
    pub n_items: u32,
    /// The policy's slots (without a block area).
    pub slots: u32,
    pub block_slots: u32,
    /// The walk's cap on a blocked step's rows ([`Walker::step_rows`]).
    pub step_rows: Option<u32>,
    pub threads: usize,
}

/// The chosen split and the traffic its replay measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaPlan {
    pub areas: Areas,
    /// How the cache area is kept.
    pub cache: CacheKind,
    /// Rows staged in per epoch once the cache is warm.
    pub rows_in_per_epoch: f64,
    /// The first epoch's rows in beyond that: the cache filling.
    pub cold_rows_in: f64,
}

/// SCA's split of `trace.slots`: the candidate with the fewest steady rows
/// in per epoch, ties to the larger resident set (fewer rows to track).
pub fn plan_sca(trace: &Trace) -> ScaPlan {
    let slots = trace.slots;
    let steps = || Box::new(trace.rows.iter()) as Box<dyn Iterator<Item = &[u32]>>;
    // The two epochs every candidate replays, made once.
    let plans = [trace.layout.epoch(0), trace.layout.epoch(1)];
    let touched = trace.counts.iter().filter(|&&c| c > 0).count() as u32;
    if slots >= touched {
        // Every trained row resident: nothing to choose.
        let areas = plan_areas(PolicyKind::Static, slots, steps, 0, trace.counts, 0);
        return match trace.groups {
            None => ScaPlan { areas, cache: CacheKind::Lru, rows_in_per_epoch: 0.0, cold_rows_in: 0.0 },
            Some(_) => replay(trace, &plans, areas, CacheKind::Lru),
        };
    }
    let max = (static_resident(steps, trace.counts, slots) as u32).min(slots);
    let cached = |h: u32| (Areas { resident: h, cache: slots - h, staging: 0 }, CacheKind::Lru);
    let reserve = (slots / 8).max(1).min(slots);
    // First `static`'s split, resident sizes over 0..=max with the rest an
    // LRU cache, and `lfu`'s own split (no resident set, an eighth staged);
    // then halving steps around the best (the traffic is close to unimodal
    // in the resident size: too few resident rows churn the cache, too many
    // leave it too small for the steps' working set); last the best size
    // with its cache kept by use counts. Each round's candidates are
    // replayed at once, a thread each.
    let mut first = vec![(Areas { resident: max, cache: 0, staging: slots - max }, CacheKind::Lru)];
    first.extend((0..=COARSE).rev().map(|k| cached((max as u64 * k as u64 / COARSE as u64) as u32)));
    first.push((Areas { resident: 0, cache: slots - reserve, staging: reserve }, CacheKind::Lfu));
    let mut tried = Vec::new();
    let mut best = None;
    let mut round = |candidates: Vec<(Areas, CacheKind)>, best: &mut Option<ScaPlan>| {
        let fresh: Vec<_> = candidates.into_iter().filter(|c| c.0.slots() == slots && !tried.contains(c)).collect();
        tried.extend_from_slice(&fresh);
        for plan in replay_all(trace, &plans, &fresh) {
            if best.is_none_or(|b: ScaPlan| better(&plan, &b)) {
                *best = Some(plan);
            }
        }
    };
    round(first, &mut best);
    let mut step = max / COARSE;
    for _ in 0..REFINE {
        step /= 2;
        let h = best.expect("a first round").areas;
        if step == 0 || h.staging > 0 {
            break;
        }
        round(vec![cached(h.resident.saturating_sub(step)), cached((h.resident + step).min(max))], &mut best);
    }
    let b = best.expect("a first round");
    if b.cache == CacheKind::Lru && b.areas.cache > 0 {
        round(vec![(b.areas, CacheKind::Lfu)], &mut best);
    }
    best.expect("a first round")
}

/// Fewer rows in per epoch, ties to the larger resident set (fewer rows to
/// track).
fn better(a: &ScaPlan, b: &ScaPlan) -> bool {
    a.rows_in_per_epoch < b.rows_in_per_epoch
        || (a.rows_in_per_epoch == b.rows_in_per_epoch && a.areas.resident > b.areas.resident)
}

/// [`replay`] of every candidate, on up to `trace.threads` threads; the
/// plans in the candidates' order.
fn replay_all(trace: &Trace, plans: &[EpochPlan; 2], candidates: &[(Areas, CacheKind)]) -> Vec<ScaPlan> {
    use std::sync::atomic::AtomicUsize;
    let next = AtomicUsize::new(0);
    let workers = trace.threads.clamp(1, candidates.len().max(1));
    let mut out: Vec<Option<ScaPlan>> = vec![None; candidates.len()];
    let work = || {
        let mut done = Vec::new();
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(areas, cache)) = candidates.get(k) else { break };
            done.push((k, replay(trace, plans, areas, cache)));
        }
        done
    };
    for (k, plan) in crate::parallel::join_all((0..workers).map(|_| work), "a replay thread").into_iter().flatten() {
        out[k] = Some(plan);
    }
    out.into_iter().map(|p| p.expect("every candidate replayed")).collect()
}

/// Two epochs of the walk over `areas` (each a prefix of at most
/// [`REPLAY_ROWS`] step rows): the second's rows in scaled to an epoch, and
/// the first's excess.
fn replay(trace: &Trace, plans: &[EpochPlan; 2], areas: Areas, cache: CacheKind) -> ScaPlan {
    let mut st = Stager::new(PolicyKind::Sca, areas, trace.n_users, trace.n_items, trace.counts, 0)
        .with_sca_cache(cache)
        .with_block_area(trace.block_slots);
    let outside = outside_rows(&st, trace.rows, trace.threads);
    let mut moves = Moves::default();
    let mut ledger = Ledger::default();
    let total = trace.rows.total().max(1) as f64;
    let mut epochs = [(0u64, 0u64); 2];
    for (epoch, out) in epochs.iter_mut().enumerate() {
        let plan = &plans[epoch];
        let stop = AtomicBool::new(false);
        let before = ledger.rows_in();
        let mut read = 0u64;
        let mut walk = Walker {
            stager: &mut st,
            rows: trace.rows,
            outside: outside.as_ref(),
            groups: trace.groups,
            moves: &mut moves,
            step_rows: trace.step_rows,
            scratch: Vec::new(),
        };
        let pass = Pass { plan, from: 0, following: None, continues: epoch > 0, stop: &stop };
        let rows = trace.rows;
        walk.epoch(pass, &mut ledger, |event, _| {
            if let Event::Train { parts, .. } = event {
                read += plan.parts[parts].iter().map(|&p| rows.of(p).len() as u64).sum::<u64>();
                if read >= REPLAY_ROWS {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            Ok(())
        })
        .expect("the replay's callback does not fail");
        // Evaluation after an epoch brings lent rows back, as in a run.
        if st.has_lent() {
            st.restore_lent(&mut moves, &mut ledger);
        }
        *out = (ledger.rows_in() - before, read.max(1));
    }
    let [(first, read0), (second, read1)] = epochs;
    let per_row = second as f64 / read1 as f64;
    ScaPlan {
        areas: st.areas(),
        cache,
        rows_in_per_epoch: per_row * total,
        cold_rows_in: (first as f64 - per_row * read0 as f64).max(0.0),
    }
}
