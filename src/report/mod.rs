//! The JSON report of a training run (`--json`) and the one-line-per-epoch
//! text output.

use serde::Serialize;

use crate::stage::{Ledger, human_bytes};
use crate::train::EpochReport;

/// The wgpu version rowstage was built with.
pub const WGPU_VERSION: &str = env!("ROWSTAGE_WGPU_VERSION");

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

/// One entry of `epochs`.
#[derive(Debug, Clone, Serialize)]
pub struct EpochJson {
    pub epoch: usize,
    pub lr: f32,
    pub ratings: usize,
    pub conflicts: u64,
    pub train_rmse: f64,
    pub test_rmse: f64,
    pub test_mae: f64,
    pub seconds: f64,
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
}

impl From<&EpochReport> for EpochJson {
    fn from(e: &EpochReport) -> Self {
        let l = &e.ledger;
        EpochJson {
            epoch: e.epoch,
            lr: e.lr,
            ratings: e.ratings,
            conflicts: e.conflicts,
            train_rmse: e.train_rmse,
            test_rmse: e.test_rmse,
            test_mae: e.test_mae,
            seconds: e.seconds,
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
        }
    }
}

/// `final` of the report.
#[derive(Debug, Clone, Serialize)]
pub struct FinalJson {
    pub test_rmse: f64,
    pub test_mae: f64,
    pub ratings_per_sec: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dataset: DatasetInfo,
    pub config: serde_json::Value,
    pub epochs: Vec<EpochJson>,
    #[serde(rename = "final")]
    pub final_: FinalJson,
    /// False when Ctrl-C stopped the run before its last epoch.
    pub complete: bool,
    /// Under `--patience`: the epoch whose model was kept.
    pub best_epoch: Option<usize>,
    /// Under `--patience`: whether it ended the run early.
    pub stopped_early: bool,
}

/// The text line printed after an epoch.
pub fn epoch_line(e: &EpochReport, staged: bool) -> String {
    let l = &e.ledger;
    let mut s = format!(
        "epoch {:>3}  train {:.4}  test {:.4}  {:>9.3e} ratings/s  conflicts {:>7}",
        e.epoch, e.train_rmse, e.test_rmse, e.ratings_per_sec, e.conflicts
    );
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
    s
}
