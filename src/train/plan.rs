//! The planner (docs/ARCHITECTURE.md, "SCA and the planner"): searches the batch size B and the split of the
//! slab into a resident set H and two staging areas of capacity C
//! (|H| + 2C ≤ S, double buffering) that maximise the modelled ratings/s,
//! with the device's rates from [`crate::gpu::calibrate`].
//!
//! Time per batch is modelled as one step's fixed cost, plus the SGD time,
//! plus the transfer of the expected misses in and out and of the batch data.
//! The three are added, not overlapped: the training loop overlaps only the
//! write-back of one step with the next, so the sum errs on the slow side.

use serde::Serialize;

use crate::gpu::calibrate::Calibration;
use crate::stage::sca::CostModel;

/// A chosen plan and what it predicts.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub batch: usize,
    pub slots: u32,
    pub resident: u32,
    pub staging_capacity: u32,
    pub expected_misses_per_batch: f64,
    pub predicted_rows_in_per_epoch: f64,
    pub predicted_rows_out_per_epoch: f64,
    pub predicted_bytes_h2d_per_epoch: f64,
    pub predicted_ratings_per_sec: f64,
}

/// Bytes of batch input per rating (slot pair and rating).
const SAMPLE_BYTES: f64 = 12.0;

/// The best plan over batch sizes 64, 128, ... up to `max_batch`, or `None`
/// when not even a batch of 64 fits `slots`.
pub fn plan(
    counts: &[u32],
    ratings: usize,
    slots: u32,
    row_bytes: u64,
    cal: &Calibration,
    max_batch: usize,
) -> Option<Plan> {
    let mut best: Option<Plan> = None;
    let mut b = 64usize;
    while b <= max_batch.max(64) {
        if let Some(p) = plan_at(counts, ratings, slots, row_bytes, cal, b)
            && best.as_ref().is_none_or(|q| p.predicted_ratings_per_sec > q.predicted_ratings_per_sec)
        {
            best = Some(p);
        }
        b *= 2;
    }
    best
}

/// The plan for batch size `b`, or `None` when its staging areas cannot
/// hold the expected misses in `slots`.
pub fn plan_at(
    counts: &[u32],
    ratings: usize,
    slots: u32,
    row_bytes: u64,
    cal: &Calibration,
    b: usize,
) -> Option<Plan> {
    let model = CostModel::new(counts, ratings, b);
    let (h, c) = model.split(slots, 2);
    // The split is feasible only if its staging areas hold the misses.
    if h as u64 + 2 * model.capacity(h as usize) as u64 > slots as u64 || c < 1 {
        return None;
    }
    let e = model.expected_misses(h as usize);
    let bytes = 2.0 * e * row_bytes as f64 + SAMPLE_BYTES * b as f64;
    let t = cal.step_seconds + b as f64 / cal.sgd_ratings_per_sec + bytes / cal.h2d_bytes_per_sec;
    let batches = ratings as f64 / b as f64;
    Some(Plan {
        batch: b,
        slots,
        resident: h,
        staging_capacity: c,
        expected_misses_per_batch: e,
        predicted_rows_in_per_epoch: e * batches,
        predicted_rows_out_per_epoch: e * batches,
        predicted_bytes_h2d_per_epoch: e * batches * row_bytes as f64,
        predicted_ratings_per_sec: b as f64 / t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(step: f64) -> Calibration {
        Calibration {
            adapter: "test".into(),
            rank: 32,
            h2d_bytes_per_sec: 1e9,
            step_seconds: step,
            sgd_ratings_per_sec: 1e7,
            cached: false,
        }
    }

    #[test]
    fn larger_steps_win_when_steps_are_expensive_and_the_plan_fits() {
        let counts: Vec<u32> = (1..=20_000u32).map(|r| 200_000 / r + 1).collect();
        let n = counts.iter().map(|&c| c as usize).sum::<usize>() / 2;
        let cheap = plan(&counts, n, 4000, 144, &cal(1e-6), 65_536).unwrap();
        let costly = plan(&counts, n, 4000, 144, &cal(1e-2), 65_536).unwrap();
        assert!(costly.batch >= cheap.batch, "{} vs {}", costly.batch, cheap.batch);
        for p in [&cheap, &costly] {
            assert!(p.resident + 2 * p.staging_capacity <= p.slots);
        }
        assert!(plan(&counts, n, 10, 144, &cal(1e-3), 65_536).is_none(), "10 slots hold no batch of 64");
    }
}
