//! The JSON report of a training run (`--json`) and the one-line-per-epoch
//! text output.

use serde::Serialize;

use crate::model::Setting;
use crate::stage::{Ledger, human_bytes};
use crate::train::EpochReport;

pub use crate::gpu::WGPU_VERSION;

/// `dataset` of the report.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    pub name: String,
    pub users: usize,
    pub items: usize,
    pub train: usize,
    pub test: usize,
    /// Test ratings whose user or item never appears in training.
    pub test_cold: usize,
    /// Lines skipped by `--skip-bad-lines`.
    pub skipped_lines: usize,
}

impl DatasetInfo {
    /// `data` described, with `skipped_lines` bad lines skipped on loading.
    pub fn of(data: &crate::data::Dataset, skipped_lines: usize) -> Self {
        DatasetInfo {
            name: data.name.clone(),
            users: data.users.len(),
            items: data.items.len(),
            train: data.train.len(),
            test: data.test.len(),
            test_cold: data.cold_test(),
            skipped_lines,
        }
    }
}

/// One entry of `epochs`. The accuracy figures are null on the noop backend,
/// which runs no kernel: its speed is the host's ceiling, its tables no model.
#[derive(Debug, Clone, Serialize)]
pub struct EpochJson {
    pub epoch: usize,
    pub lr: f32,
    pub ratings: usize,
    pub conflicts: u64,
    pub train_rmse: Option<f64>,
    pub test_rmse: Option<f64>,
    pub test_mae: Option<f64>,
    pub seconds: f64,
    /// The host's own work in the epoch (its time less its waits for the
    /// device), and the device's time in the epoch's passes from timestamp
    /// queries (null without them).
    pub host_seconds: f64,
    pub device_seconds: Option<f64>,
    /// The evaluation after the epoch, wall time (not in `seconds`).
    pub eval_seconds: f64,
    /// `host` or `device`: which of the two took longer (null without
    /// device time).
    pub bound: Option<&'static str>,
    pub dispatches: u64,
    /// Workers that trained at once, on average.
    pub workers: f64,
    pub ratings_per_sec: f64,
    pub rows_in: u64,
    pub rows_out: u64,
    pub bytes_h2d: u64,
    pub bytes_d2h: u64,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: Option<f64>,
    pub predicted_rows_in: Option<f64>,
    pub predicted_rows_out: Option<f64>,
    pub predicted_bytes_h2d: Option<f64>,
    /// Every counter of the ledger, per table and per kind.
    pub ledger: Ledger,
    /// Across MPI ranks: the bytes all ranks handed to MPI in the epoch
    /// (each message once per receiving rank), per rank, and the same
    /// worked out from the order before training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire_bytes_by_rank: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_wire_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_wire_bytes_by_rank: Option<Vec<u64>>,
}

impl EpochJson {
    /// `e` as reported; `ceiling`: a run on the noop backend.
    pub fn of(e: &EpochReport, ceiling: bool) -> Self {
        let l = &e.ledger;
        // No figure where no kernel ran (noop) or nothing was scored (NaN).
        let model = |x: f64| (!ceiling).then_some(x).filter(|x| !x.is_nan());
        EpochJson {
            epoch: e.epoch,
            lr: e.lr,
            ratings: e.ratings,
            conflicts: e.conflicts,
            train_rmse: model(e.train_rmse),
            test_rmse: model(e.test_rmse),
            test_mae: model(e.test_mae),
            seconds: e.seconds,
            host_seconds: e.host_seconds,
            device_seconds: e.device_seconds,
            eval_seconds: e.eval_seconds,
            bound: e.bound(),
            dispatches: e.dispatches,
            workers: e.workers,
            ratings_per_sec: e.ratings_per_sec,
            rows_in: l.rows_in(),
            rows_out: l.rows_out(),
            bytes_h2d: l.bytes_h2d(),
            bytes_d2h: l.bytes_d2h(),
            hits: l.hits(),
            misses: l.misses(),
            hit_rate: l.hit_rate(),
            predicted_rows_in: e.predicted_rows_in,
            predicted_rows_out: e.predicted_rows_out,
            predicted_bytes_h2d: e.predicted_bytes_h2d,
            ledger: *l,
            wire_bytes: e.wire.as_ref().map(|w| w.total()),
            wire_bytes_by_rank: e.wire.as_ref().map(|w| w.bytes.clone()),
            predicted_wire_bytes: e.wire.as_ref().map(|w| w.predicted_total()),
            predicted_wire_bytes_by_rank: e.wire.as_ref().map(|w| w.predicted.clone()),
        }
    }
}

/// `final` of the report (accuracy null on the noop backend).
#[derive(Debug, Clone, Serialize)]
pub struct FinalJson {
    pub test_rmse: Option<f64>,
    pub test_mae: Option<f64>,
    pub ratings_per_sec: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dataset: DatasetInfo,
    /// What was chosen on the data before the model trained, and how
    /// (absent where the run fixed its settings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choice: Option<ChoiceJson>,
    /// What the run resolved to.
    pub config: crate::train::RunConfig,
    /// The run as asked for: `train --config` reads it back.
    pub request: crate::train::RunRequest,
    pub epochs: Vec<EpochJson>,
    #[serde(rename = "final")]
    pub final_: FinalJson,
    /// False when a signal stopped the run before its last epoch. The kept
    /// epoch and setting, and whether patience ended choosing, are the
    /// `choice`'s: the model itself trains a fixed number of epochs.
    pub complete: bool,
}

/// The choosing part of a run: what it kept, what it cost, each
/// candidate's figures and its epochs, whose "test" figures are the
/// validation split's.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceJson {
    /// What was kept; `None` where the run ended while choosing before any
    /// candidate was scored (a stop or a divergence in the first epoch).
    #[serde(flatten)]
    pub choice: Option<crate::train::tune::Choice>,
    /// The candidates ranked by validation RMSE at the epoch kept, best
    /// first.
    pub candidates: Vec<GridJson>,
    pub epochs: Vec<EpochJson>,
}

/// One setting of a grid search: its figures at the epoch kept (the last, or
/// the best one under `--patience`) and every epoch's.
#[derive(Debug, Clone, Serialize)]
pub struct GridJson {
    /// 1 for the lowest test RMSE.
    pub place: usize,
    pub lr: f32,
    pub reg: f32,
    pub test_rmse: f64,
    pub test_mae: f64,
    /// This setting's own lowest test RMSE over the epochs, and its epoch.
    pub lowest_test_rmse: f64,
    pub lowest_epoch: usize,
    pub epochs: Vec<GridEpochJson>,
}

/// One epoch of one setting of a grid search.
#[derive(Debug, Clone, Serialize)]
pub struct GridEpochJson {
    pub epoch: usize,
    /// η_t of this epoch.
    pub lr: f32,
    pub train_rmse: f64,
    pub test_rmse: f64,
    pub test_mae: f64,
}

/// The settings of a grid search ranked by test RMSE at `kept_epoch` (1-based;
/// `None`: the last epoch), best first. Empty outside a grid search.
pub fn grid_results(settings: &[Setting], epochs: &[EpochReport], kept_epoch: Option<usize>) -> Vec<GridJson> {
    let Some(kept) = kept_epoch.and_then(|k| epochs.iter().find(|e| e.epoch == k)).or(epochs.last()) else {
        return Vec::new();
    };
    if kept.grid.len() != settings.len() || settings.len() < 2 {
        return Vec::new();
    }
    let mut out: Vec<GridJson> = settings
        .iter()
        .enumerate()
        .map(|(g, s)| {
            let epochs: Vec<GridEpochJson> = epochs
                .iter()
                .filter_map(|e| {
                    let x = e.grid.get(g)?;
                    Some(GridEpochJson {
                        epoch: e.epoch,
                        lr: x.lr,
                        train_rmse: x.train_rmse,
                        test_rmse: x.test_rmse,
                        test_mae: x.test_mae,
                    })
                })
                .collect();
            let lowest = epochs.iter().min_by(|a, b| a.test_rmse.total_cmp(&b.test_rmse));
            GridJson {
                place: 0,
                lr: s.lr,
                reg: s.reg,
                test_rmse: kept.grid[g].test_rmse,
                test_mae: kept.grid[g].test_mae,
                lowest_test_rmse: lowest.map_or(f64::NAN, |e| e.test_rmse),
                lowest_epoch: lowest.map_or(0, |e| e.epoch),
                epochs,
            }
        })
        .collect();
    // Stable: equal RMSEs keep the grid's order, as the run's choice does.
    out.sort_by(|a, b| a.test_rmse.total_cmp(&b.test_rmse));
    for (i, g) in out.iter_mut().enumerate() {
        g.place = i + 1;
    }
    out
}

/// The ranked table of a grid search, one line per setting.
/// `held`: what the figures score, `test` or `validation`.
pub fn grid_table(grid: &[GridJson], held: &str) -> Vec<String> {
    let mut lines = vec![format!(
        "{:>5}  {:>10}  {:>10}  {:>15}  {:>15}  {:>14}",
        "place",
        "lr",
        "reg",
        format!("{held} RMSE"),
        format!("{held} MAE"),
        "lowest (epoch)"
    )];
    for g in grid {
        lines.push(format!(
            "{:>5}  {:>10}  {:>10}  {:>15.4}  {:>15.4}  {:>7.4} ({:>3})",
            g.place, g.lr, g.reg, g.test_rmse, g.test_mae, g.lowest_test_rmse, g.lowest_epoch
        ));
    }
    lines
}

/// The share of an epoch's ratings in Hogwild conflict above which a run on
/// a hardware GPU says what it costs and how to avoid it.
pub const CONFLICT_NOTE_SHARE: f64 = 0.1;

/// A note on epoch `e`'s conflicts where they cost accuracy: `at_once`
/// ratings update together on a hardware GPU (a software adapter runs its
/// invocations one after another), more than [`crate::gpu::HARDWARE_HOGWILD_WIDTH`],
/// and at least [`CONFLICT_NOTE_SHARE`] of the epoch's ratings share a row
/// with an earlier one of theirs. Ratings sharing a row race and all but
/// one of their updates may be lost; on skewed data that costs accuracy
/// (BENCHMARKS.md, "Hogwild on a real GPU").
pub fn conflict_note(e: &EpochReport, at_once: Option<usize>, hardware: bool) -> Option<String> {
    let width = crate::gpu::HARDWARE_HOGWILD_WIDTH;
    let at_once = at_once.filter(|&w| hardware && w > width as usize)?;
    let share = e.conflicts as f64 / e.ratings.max(1) as f64;
    (share >= CONFLICT_NOTE_SHARE).then(|| {
        format!(
            "{:.0}% of epoch {}'s ratings share a user or item with an earlier rating of the {at_once} that update \
             at once: their updates race and some are lost, which costs test RMSE on skewed data. `hogwild_width` \
             auto ({width} at once on a GPU) races less at nearly sequential accuracy; `deterministic` applies them \
             in order (conflict-free waves: the sequential model, slower).",
            100.0 * share,
            e.epoch,
        )
    })
}

/// The text line printed after an epoch; `ceiling`: a run on the noop
/// backend, whose RMSE is no model's and is not shown.
/// `choosing`: an epoch of the candidates, scored on the validation split.
pub fn epoch_line(e: &EpochReport, staged: bool, ceiling: bool, choosing: bool) -> String {
    let l = &e.ledger;
    let mut s = if ceiling {
        format!(
            "epoch {:>3}  host ceiling (noop: no kernel ran)  {:>9.3e} ratings/s  {:>5.0} workers  conflicts {:>7}",
            e.epoch, e.ratings_per_sec, e.workers, e.conflicts
        )
    } else {
        let (stage, held) = if choosing { ("choosing ", "validation") } else { ("", "test") };
        // NaN with a finite training loss: nothing to score; beside a
        // diverged one, the model's NaN.
        let scored = if e.test_rmse.is_nan() && e.train_rmse.is_finite() {
            format!("no {held} ratings")
        } else {
            format!("{held} {:.4}", e.test_rmse)
        };
        format!(
            "{stage}epoch {:>3}  train {:.4}  {scored}  {:>9.3e} ratings/s  {:>5.0} workers  conflicts {:>7}",
            e.epoch, e.train_rmse, e.ratings_per_sec, e.workers, e.conflicts
        )
    };
    if staged {
        let predicted = |p: Option<f64>| p.map_or(String::new(), |p| format!(" (model {p:.0})"));
        s += &format!(
            "  rows in {:>8}{} out {:>8}{}  h2d {:>10} d2h {:>10}  hit {}",
            l.rows_in(),
            predicted(e.predicted_rows_in),
            l.rows_out(),
            predicted(e.predicted_rows_out),
            human_bytes(l.bytes_h2d()),
            human_bytes(l.bytes_d2h()),
            l.hit_rate().map_or("  n/a".into(), |h| format!("{:5.1}%", h * 100.0)),
        );
    }
    if let Some(w) = &e.wire {
        s += &format!("  wire {:>10} (predicted {})", human_bytes(w.total()), human_bytes(w.predicted_total()));
    }
    if let (Some(bound), Some(device)) = (e.bound(), e.device_seconds) {
        s += &format!("  {bound}-bound (host {:.3} s, device {device:.3} s)", e.host_seconds);
    } else if staged {
        s += &format!("  host {:.3} s", e.host_seconds);
    }
    s
}

/// The slab's layout in one line, as `train` and `plan` print it: its size
/// and share of `tables` bytes, and its areas.
pub fn layout_line(l: &crate::gpu::GpuLayout, tables: u64) -> String {
    format!(
        "device memory: {} slab = {} slots of {} B ({:.1}% of the {} tables): {} resident, {} cache, {} staging, \
         {} block; transfer windows {}",
        human_bytes(l.slab_bytes),
        l.slots,
        l.row_bytes,
        100.0 * l.slab_bytes as f64 / tables.max(1) as f64,
        human_bytes(tables),
        l.areas.resident,
        l.areas.cache,
        l.areas.staging,
        l.block_slots,
        human_bytes(l.window_bytes()),
    )
}
