//! `rowstage simulate`'s sweep: a run's steps replayed through staging
//! policies at several budgets, without kernels, each budget in the order
//! and batch a GPU run of the same settings would take.

use crate::data::Dataset;
use crate::engine::Target;
use crate::engine::rows::PartRows;
use crate::engine::simulate::{SimResult, SimSetup};
use crate::engine::{Order, RunLayout};
use crate::error::Result;
use crate::model::row_stride;
use crate::stage::{Budget, PolicyKind};
use crate::train::{BatchRequest, RunSpec, fit_batch, table_bytes};

/// One budget and policy of the sweep.
#[derive(Debug, Clone)]
pub struct SweepRow {
    /// The budget as given, and in bytes.
    pub label: String,
    pub bytes: u64,
    /// The order replayed (`shuffled/BATCH` or `blocked:BINS`).
    pub order: String,
    pub policy: &'static str,
    pub outcome: SweepOutcome,
}

#[derive(Debug, Clone)]
pub enum SweepOutcome {
    Replayed(SimResult),
    /// The budget cannot hold `step`'s rows: at least `needed` bytes.
    TooSmall {
        step: String,
        needed: u64,
    },
}

/// The rows that were replayed (`rowstage simulate --json`'s list): a
/// budget too small for a step has no result.
pub fn replayed(rows: &[SweepRow]) -> Vec<&SimResult> {
    rows.iter()
        .filter_map(|r| match &r.outcome {
            SweepOutcome::Replayed(r) => Some(r),
            SweepOutcome::TooSmall { .. } => None,
        })
        .collect()
}

/// Replays `spec`'s run (its data `data`, `lookahead` for that policy) at
/// every budget through every policy, calling `on_row` as each is done.
/// Without a fixed batch the shuffled order takes the largest batch each
/// budget holds, as `train` does.
pub fn sweep(
    data: &Dataset,
    spec: &RunSpec,
    lookahead: usize,
    budgets: &[(String, Budget)],
    policies: &[PolicyKind],
    on_row: &mut dyn FnMut(&SweepRow),
) -> Result<Vec<SweepRow>> {
    spec.validate()?;
    let row_bytes = (row_stride(spec.hp.rank) * 4) as u64;
    let tables = table_bytes(data, spec.hp.rank);
    let setup = SimSetup {
        train: &data.train,
        n_users: data.users.len(),
        n_items: data.items.len(),
        batch: spec.settings().batch,
        seed: spec.seed,
        epochs: spec.epochs,
        row_bytes,
        lookahead,
        co_partition: spec.co_partition.map(|r| r.resolve(data)),
        co_partition_visits: spec.co_partition_visits,
        order: spec.order,
    };
    // The order every budget replays, as every run resolves it.
    let order = setup.order.resolve(&Target::of(data, spec.hp.rank, setup.co_partition.is_some()))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    // Without co-partitioning the layout and its parts' rows serve every
    // policy of a budget, and every budget of the same order and batch.
    let mut prepared: Option<(RunLayout, PartRows)> = None;
    for (label, budget) in budgets {
        // Past twice the tables a slab holds every row with room to spare:
        // more slots change nothing but the memory the replay's per-slot
        // arrays take (900 GB of budget asked for 50 GB of them).
        let bytes = budget.resolve(tables).min(tables.saturating_mul(2));
        let mut run = SimSetup { order, ..setup.clone() };
        let mut no_rating_fits = false;
        if spec.batch == BatchRequest::Default && run.order == Order::Shuffled && run.co_partition.is_none() {
            let s = crate::train::TrainSettings { order: run.order, ..spec.settings() };
            match fit_batch(data, &s, crate::stage::slots_in(bytes, row_bytes) as u64, threads)? {
                Some(b) => run.batch = b,
                // Not even one rating's two rows fit: that is the smallest
                // budget, whatever the largest batch is.
                None => {
                    no_rating_fits = true;
                    run.batch = 1;
                }
            }
        }
        let order = match run.order {
            Order::Shuffled => format!("shuffled/{}", run.batch),
            o => o.name(),
        };
        if setup.co_partition.is_none()
            && !no_rating_fits
            && prepared.as_ref().is_none_or(|p| p.0.spec().order != run.order || p.0.spec().batch != run.batch)
        {
            let layout = run.layout(None)?;
            let part_rows = PartRows::new(&layout, threads, true);
            prepared = Some((layout, part_rows));
        }
        for &kind in policies {
            let ran = if no_rating_fits { None } else { run.run(kind, bytes, prepared.as_ref())? };
            let outcome = match ran {
                Some(r) => SweepOutcome::Replayed(r),
                None => SweepOutcome::TooSmall {
                    step: match run.order {
                        Order::Blocked { .. } => "a block's part".to_string(),
                        _ if no_rating_fits => "a single rating".to_string(),
                        _ => format!("a batch of {}", run.batch),
                    },
                    needed: match &prepared {
                        _ if no_rating_fits => 2 * row_bytes,
                        Some((_, part_rows)) => part_rows.max().max(2) as u64 * row_bytes,
                        None => run.needed_slots()? as u64 * row_bytes,
                    },
                },
            };
            let row = SweepRow { label: label.clone(), bytes, order: order.clone(), policy: kind.name(), outcome };
            on_row(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataSource, SyntheticSpec};

    #[test]
    fn a_budget_too_small_says_what_it_needs_and_the_rest_replay() {
        let data = DataSource {
            synthetic: SyntheticSpec { users: 80, items: 50, ratings: 3000, zipf: None },
            ..Default::default()
        }
        .load(3)
        .unwrap()
        .dataset;
        let spec = RunSpec { batch: BatchRequest::Fixed(256), order: Order::Shuffled, epochs: 1, ..RunSpec::default() };
        let budgets = [("1KiB".to_string(), Budget::Bytes(1024)), ("100%".to_string(), Budget::Percent(100.0))];
        let mut seen = 0;
        let rows = sweep(&data, &spec, 32, &budgets, &[PolicyKind::Lru, PolicyKind::Sca], &mut |_| seen += 1).unwrap();
        assert_eq!((rows.len(), seen), (4, 4));
        let row_bytes = (row_stride(spec.hp.rank) * 4) as u64;
        for r in &rows[..2] {
            match &r.outcome {
                SweepOutcome::TooSmall { step, needed } => {
                    assert_eq!(step, "a batch of 256");
                    assert!(*needed > 1024 && needed % row_bytes == 0, "{needed}");
                }
                o => panic!("1 KiB cannot hold a batch of 256: {o:?}"),
            }
        }
        for r in &rows[2..] {
            let SweepOutcome::Replayed(res) = &r.outcome else { panic!("100% holds a batch: {r:?}") };
            assert_eq!((r.order.as_str(), res.policy), ("shuffled/256", r.policy));
            assert!(res.rows_in > 0 && res.hits > 0);
        }
    }
}
