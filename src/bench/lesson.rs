//! The memory-limit lesson (docs/ARCHITECTURE.md, "The lesson"): one
//! training compared across staging policies at one budget, or across
//! budgets for one policy. Every configuration really trains (a
//! [`super::run`] sweep), so its counts come from its own byte ledger; the
//! offline optimum (Belady) beside them is simulated, as it needs the
//! future. [`explain`] says what each figure shows and why, from the
//! figures; [`PROFILES`] turn each run's measured bytes and steps into what
//! they would cost on named hardware, since a software adapter cannot show
//! that (a projection, labelled as one).

use serde::Serialize;

use super::{BenchPlan, BenchReport, BenchRow};
use crate::error::Result;
use crate::stage::{Budget, PolicyKind};
use crate::units::human_bytes;

/// The budgets a comparison of budgets trains, in percent of the tables.
pub const BUDGETS: [f64; 4] = [100.0, 25.0, 5.0, 1.0];

/// What a lesson compares.
#[derive(Debug, Clone)]
pub enum Comparison {
    /// Every policy that can train, at one budget (the text as given).
    Policies(String, Budget),
    /// One policy at [`BUDGETS`].
    Budgets(PolicyKind),
}

impl Comparison {
    /// The budgets it trains, with their text.
    pub fn budgets(&self) -> Vec<(String, Budget)> {
        match self {
            Comparison::Policies(text, b) => vec![(text.clone(), *b)],
            Comparison::Budgets(_) => BUDGETS.iter().map(|&p| (format!("{p}%"), Budget::Percent(p))).collect(),
        }
    }

    /// The policies it trains: for a comparison of policies every one but
    /// Belady, which no run can follow (it needs the future) and which each
    /// row gives as its floor.
    pub fn policies(&self) -> Vec<PolicyKind> {
        match self {
            Comparison::Policies(..) => PolicyKind::ALL.into_iter().filter(|p| *p != PolicyKind::Belady).collect(),
            Comparison::Budgets(p) => vec![*p],
        }
    }

    /// The sweep of `spec`'s run on `backend`: one warm-up epoch (the first
    /// epoch also loads the resident rows and builds the pipelines), then
    /// one timed epoch per configuration; with [`BenchPlan::of`]'s notices
    /// (`auto` finding no adapter).
    pub fn plan(&self, spec: &crate::train::RunSpec, backend: &str) -> Result<(BenchPlan, Vec<String>)> {
        let spec = crate::train::RunSpec { epochs: 1, ..spec.clone() };
        BenchPlan::of(&spec, (backend, None), self.budgets(), self.policies(), 1)
    }
}

/// A machine's link between the host's tables and the device's memory, and
/// the latency of one device step, for projecting measured traffic.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HardwareProfile {
    pub name: &'static str,
    /// Bytes per second each way.
    pub bytes_per_sec: f64,
    /// Whether both directions share the bandwidth (one memory), rather
    /// than each having its own (PCIe is full duplex).
    pub shared: bool,
    /// Seconds one step costs at least: its copies' and dispatch's fixed
    /// latency.
    pub step_seconds: f64,
    /// Where the figures come from.
    pub source: &'static str,
}

/// The named hardware of the lesson's projections.
pub const PROFILES: [HardwareProfile; 3] = [
    HardwareProfile {
        name: "laptop GPU, PCIe 4.0 ×8",
        bytes_per_sec: 15.75e9,
        shared: false,
        step_seconds: 10e-6,
        source: "PCIe 4.0: 16 GT/s per lane, 128b/130b, 1.97 GB/s per lane each way; 10 µs per step assumed \
                 (one small copy and one dispatch on a discrete GPU), not measured",
    },
    HardwareProfile {
        name: "Apple M2, unified memory",
        bytes_per_sec: 50e9,
        shared: true,
        step_seconds: 20e-6,
        source: "Apple's M2: 100 GB/s of memory bandwidth, and staging a byte reads it and writes it (50 GB/s of \
                 rows); 20 µs per step assumed (one Metal command buffer), not measured",
    },
    HardwareProfile {
        name: "datacenter GPU, PCIe 5.0 ×16",
        bytes_per_sec: 63.0e9,
        shared: false,
        step_seconds: 5e-6,
        source: "PCIe 5.0: 32 GT/s per lane, 128b/130b, 3.94 GB/s per lane each way; 5 µs per step assumed, \
                 not measured",
    },
];

impl HardwareProfile {
    /// Seconds per epoch that `row`'s measured bytes and steps would take
    /// on this hardware: the bytes over the link plus, where rows were
    /// staged, the steps times their latency. A lower bound of the staging
    /// cost (no compute is counted).
    pub fn staging_seconds(&self, row: &BenchRow) -> f64 {
        let (h2d, d2h) = (row.bytes_h2d_per_epoch, row.bytes_d2h_per_epoch);
        let bytes = if self.shared { h2d + d2h } else { h2d.max(d2h) };
        // All resident, no row comes in (the tables' write-back at the
        // epoch's end aside): no step waits for a copy.
        let staged = row.rows_in_per_epoch > 0.0;
        bytes / self.bytes_per_sec + if staged { row.steps_per_epoch * self.step_seconds } else { 0.0 }
    }
}

/// A lesson's figures with what they show: the sweep's report, the lines
/// that explain it, and each row's projection on each of [`PROFILES`].
#[derive(Debug, Clone, Serialize)]
pub struct Lesson {
    pub report: BenchReport,
    pub explanation: Vec<String>,
    pub profiles: &'static [HardwareProfile],
    /// Per row of the report, per profile: staging seconds per epoch.
    pub projected_staging_seconds: Vec<Vec<f64>>,
}

impl Lesson {
    pub fn of(report: BenchReport) -> Lesson {
        let explanation = explain(&report);
        let projected_staging_seconds =
            report.rows.iter().map(|r| PROFILES.iter().map(|p| p.staging_seconds(r)).collect()).collect();
        Lesson { report, explanation, profiles: &PROFILES, projected_staging_seconds }
    }
}

/// What the sweep's figures show, each explained by its cause, one
/// paragraph per line.
pub fn explain(report: &BenchReport) -> Vec<String> {
    let rows: Vec<&BenchRow> = report.rows.iter().filter(|r| r.budget_percent.is_some()).collect();
    let mut out = Vec::new();
    if rows.is_empty() {
        out.push(if !report.rows.is_empty() {
            "Nothing was staged: the CPU backend keeps the tables in host memory, so there is no slab to limit.".into()
        } else if !report.skipped.is_empty() {
            let why: Vec<String> =
                report.skipped.iter().map(|k| format!("{} {}: {}", k.budget, k.policy, k.reason)).collect();
            format!("No configuration could train: {}.", why.join("; "))
        } else {
            "Stopped before any configuration finished: nothing to explain.".into()
        });
        return out;
    }
    let lookups = 2.0 * report.dataset.train as f64;
    let row_bytes = report.plan.settings.row_bytes().max(1);
    let slots = |r: &BenchRow| r.device_memory_bytes.unwrap_or(0) / row_bytes;
    let by_budget = |r: &&BenchRow| r.budget_percent.unwrap_or(0.0);
    // The policy the lines follow across budgets: SCA where it ran.
    let featured = rows.iter().find(|r| r.policy == "sca").unwrap_or(&rows[0]).policy.clone();
    let smallest = rows
        .iter()
        .copied()
        .filter(|r| r.policy == featured)
        .min_by(|a, b| by_budget(a).total_cmp(&by_budget(b)))
        .expect("a row");
    let resident = rows.iter().copied().find(|r| r.budget_percent.unwrap_or(0.0) >= 100.0 && r.policy == featured);

    // What moved.
    let mut moved = String::from("What moved: ");
    if let Some(full) = resident {
        moved += &format!(
            "with the whole tables on the device, {:.0} rows cross per epoch once the resident rows are loaded. ",
            full.rows_in_per_epoch
        );
    }
    moved += &format!(
        "At {} the slab holds {} rows, and {:.0} rows cross per epoch with {} ({} host→device): {:.0}% of the {:.0} row lookups.",
        smallest.budget,
        slots(smallest),
        smallest.rows_in_per_epoch,
        smallest.policy,
        human_bytes(smallest.bytes_h2d_per_epoch as u64),
        100.0 * smallest.rows_in_per_epoch / lookups.max(1.0),
        lookups
    );
    out.push(moved);

    // What it cost, against all resident (a comparison of budgets).
    if let Some(full) = resident {
        for r in rows.iter().filter(|r| r.budget_percent.unwrap_or(0.0) < 100.0 && r.policy == featured) {
            let (rmse, full_rmse) = (r.test_rmse.unwrap_or(f64::NAN), full.test_rmse.unwrap_or(f64::NAN));
            // The same model where the batch is the same (the order and its
            // arithmetic do not depend on the slab); a smaller batch, which a
            // slab too small for the asked one forces, trains another.
            let why = if r.batch != full.batch {
                format!(
                    "the slab held no batch of {}, so this run trained batches of {}: another model",
                    full.batch, r.batch
                )
            } else if r.order != full.order {
                format!("this run trained another order ({}): another model", r.order)
            } else if (rmse - full_rmse).abs() <= 1e-4 {
                "staging changes where a row lives, never the arithmetic: the limit costs time, not accuracy".into()
            } else {
                "the same batch and order, yet an RMSE more than 1e-4 away: not expected, please report it".into()
            };
            out.push(format!(
                "What it cost at {}: {:.2}× the all-resident speed, test RMSE {rmse:.4} against {full_rmse:.4} with \
                 everything resident: {why}.",
                r.budget,
                r.median_ratings_per_sec / full.median_ratings_per_sec.max(f64::MIN_POSITIVE),
            ));
        }
        if smallest.workers < full.workers {
            out.push(format!(
                "What it does to parallelism: the order ({}) trains the blocks of a round at once, a worker each, as long as \
                 the slab holds their rows. All resident {:.0} workers ran at once; at {}, {:.0}: a smaller on-chip memory \
                 limits the working set that trains in parallel, not only the bytes that move.",
                full.order, full.workers, smallest.budget, smallest.workers
            ));
        }
    }

    // The policies side by side (a comparison of policies).
    let mut budgets: Vec<&str> = rows.iter().map(|r| r.budget.as_str()).collect();
    budgets.dedup();
    let mut compared = false;
    for b in budgets {
        let at: Vec<&BenchRow> = rows.iter().copied().filter(|r| r.budget == b).collect();
        let least = at.iter().map(|r| r.rows_in_per_epoch).fold(f64::INFINITY, f64::min);
        let fewest: Vec<&str> = at.iter().filter(|r| r.rows_in_per_epoch == least).map(|r| r.policy.as_str()).collect();
        // Where every policy moves the same (all resident: nothing), there
        // is nothing to compare.
        if at.len() > 1 && fewest.len() < at.len() {
            compared = true;
            let list: Vec<String> = at.iter().map(|r| format!("{} {:.0}", r.policy, r.rows_in_per_epoch)).collect();
            out.push(format!(
                "Who moves least at {b}: rows in per epoch {}: {} the fewest.",
                list.join(", "),
                fewest.join(" and ")
            ));
        }
    }
    if compared {
        out.push(
            "Why: none stages every row a step needs, every step; static pins the hottest rows and stages the rest step \
             by step; lru and lfu cache across steps but pin nothing, so cold rows evict hot ones; sca pins the hottest \
             rows and caches the rest, the split its replay of this run's own steps found to move fewest; lookahead \
             evicts the row whose next use is furthest ahead in the steps it can see."
                .to_string(),
        );
    }

    // The floor.
    for r in rows.iter().filter(|r| r.policy == featured || r.budget == smallest.budget) {
        if let Some(floor) = r.belady_rows_in_per_epoch.filter(|&f| f > 0.0)
            && r.budget_percent.unwrap_or(0.0) < 100.0
        {
            out.push(format!(
                "How close {} gets at {}: {:.0} rows per epoch, {:.2}× the offline optimum ({floor:.0}, Belady: evict the row \
                 whose next use is furthest away, knowing the whole future; no policy moves fewer).",
                r.policy,
                r.budget,
                r.rows_in_per_epoch,
                r.rows_in_per_epoch / floor
            ));
        }
    }
    out.push("Hit rate: the share of a step's distinct rows already on the device when the step starts.".to_string());

    // What bound the speed.
    // The adapter the rows trained on (the environment lists every one).
    let software = report
        .environment
        .adapters
        .iter()
        .any(|a| a.device_type.eq_ignore_ascii_case("cpu") && rows.iter().any(|r| r.adapter.starts_with(&a.name)));
    let bounds: Vec<Option<&str>> = rows.iter().map(|r| r.bound.as_deref()).collect();
    let mut bound = format!(
        "What bound the speed: {}. ",
        match bounds.first() {
            Some(None) if bounds.iter().all(Option::is_none) => {
                "the adapter gave no timestamps, so the host's time and the device's cannot be told apart".to_string()
            }
            Some(Some(b)) if bounds.iter().all(|x| *x == Some(*b)) => {
                format!("every run was {b}-bound (the {b}'s seconds were the longer)")
            }
            _ => rows
                .iter()
                .map(|r| format!(
                    "{} {} {}",
                    r.budget,
                    r.policy,
                    r.bound.as_deref().map_or("unknown".into(), |b| format!("{b}-bound"))
                ))
                .collect::<Vec<_>>()
                .join(", "),
        }
    );
    if software {
        bound += &format!(
            "This is a software adapter: at {} it ran {:.0} dispatches and {:.0} steps per epoch with {:.0} worker(s) at \
             once, and on a CPU that emulates a GPU those, not the bytes, set the speed. ",
            smallest.budget, smallest.dispatches_per_epoch, smallest.steps_per_epoch, smallest.workers
        );
        // Where policies share a budget: how far their speeds and their
        // traffic spread, measured.
        let at: Vec<&BenchRow> = rows.iter().copied().filter(|r| r.budget == smallest.budget).collect();
        let spread = |f: &dyn Fn(&BenchRow) -> f64| {
            let (lo, hi) = at.iter().map(|r| f(r)).fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
            hi / lo.max(f64::MIN_POSITIVE)
        };
        if at.len() > 1 && at.iter().all(|r| r.rows_in_per_epoch > 0.0) {
            bound += &format!(
                "At {} the policies' speeds span {:.2}× and the rows they moved {:.2}×: the speeds are this adapter's, \
                 not the bytes'. ",
                smallest.budget,
                spread(&|r| r.median_ratings_per_sec),
                spread(&|r| r.rows_in_per_epoch)
            );
        }
        bound += "The projections give what each run's bytes and steps would cost on named hardware.";
    }
    out.push(bound);
    out.push(format!(
        "Projections: each run's measured bytes over a named link plus its steps times a step latency; a lower bound of \
         the staging cost, not a measurement (no compute is counted). {}",
        PROFILES.iter().map(|p| format!("{}: {}.", p.name, p.source)).collect::<Vec<_>>().join(" ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_is_the_bytes_over_the_link_plus_the_steps() {
        let row = BenchRow {
            bytes_h2d_per_epoch: 2e9,
            bytes_d2h_per_epoch: 1e9,
            rows_in_per_epoch: 5.0,
            steps_per_epoch: 1000.0,
            ..Default::default()
        };
        let pcie = HardwareProfile { name: "x", bytes_per_sec: 1e9, shared: false, step_seconds: 1e-3, source: "" };
        // Full duplex: the larger direction; plus 1000 steps of 1 ms.
        assert!((pcie.staging_seconds(&row) - 3.0).abs() < 1e-12);
        let unified = HardwareProfile { shared: true, ..pcie };
        assert!((unified.staging_seconds(&row) - 4.0).abs() < 1e-12);
        // Nothing staged (all resident): the steps wait for no copy.
        let resident = BenchRow { rows_in_per_epoch: 0.0, ..row };
        assert!((pcie.staging_seconds(&resident) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn the_comparisons_train_every_policy_or_every_budget() {
        let p = Comparison::Policies("25%".into(), Budget::Percent(25.0));
        assert_eq!(p.policies().len(), PolicyKind::ALL.len() - 1);
        assert!(!p.policies().contains(&PolicyKind::Belady));
        assert_eq!(p.budgets().len(), 1);
        let b = Comparison::Budgets(PolicyKind::Sca);
        assert_eq!(b.budgets().iter().map(|b| b.0.as_str()).collect::<Vec<_>>(), ["100%", "25%", "5%", "1%"]);
    }
}
