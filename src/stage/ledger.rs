//! The ledger: every row and byte that crosses host↔device, counted where the
//! transfer is issued. Training traffic and evaluation traffic are kept apart
//! so that a simulator (which never evaluates) can be compared with training.

use serde::{Deserialize, Serialize};

/// Counters for one epoch (or a whole run, by [`Ledger::merge`]).
// `Pod`: MPI ranks add theirs up as plain words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Ledger {
    /// Rows staged in for training, per table.
    pub user_rows_in: u64,
    pub item_rows_in: u64,
    /// Rows written back to the host tables, per table.
    pub user_rows_out: u64,
    pub item_rows_out: u64,
    /// Distinct rows of a batch found in the slab / not found, per table.
    pub user_hits: u64,
    pub item_hits: u64,
    pub user_misses: u64,
    pub item_misses: u64,
    /// Row bytes host→device and device→host (training and evaluation).
    pub row_bytes_h2d: u64,
    pub row_bytes_d2h: u64,
    /// Batch input (slot pairs, ratings, parameters) host→device and results
    /// (losses, error sums) device→host.
    pub data_bytes_h2d: u64,
    pub data_bytes_d2h: u64,
    /// Rows staged in to evaluate (read-only, never written back).
    pub eval_rows_in: u64,
    /// Device steps, and resident slots lent to a step's misses (their rows
    /// left and came back: see [`super::Stager::stage`]).
    pub steps: u64,
    #[serde(default)]
    pub lent: u64,
}

impl Ledger {
    pub fn hit(&mut self, user: bool) {
        if user { self.user_hits += 1 } else { self.item_hits += 1 }
    }

    pub fn miss(&mut self, user: bool) {
        if user { self.user_misses += 1 } else { self.item_misses += 1 }
    }

    /// A row staged in; `train == false` counts it as evaluation traffic.
    pub fn row_in(&mut self, user: bool, train: bool) {
        match (train, user) {
            (false, _) => self.eval_rows_in += 1,
            (true, true) => self.user_rows_in += 1,
            (true, false) => self.item_rows_in += 1,
        }
    }

    pub fn row_out(&mut self, user: bool) {
        if user { self.user_rows_out += 1 } else { self.item_rows_out += 1 }
    }

    pub fn rows_in(&self) -> u64 {
        self.user_rows_in + self.item_rows_in
    }

    pub fn rows_out(&self) -> u64 {
        self.user_rows_out + self.item_rows_out
    }

    pub fn hits(&self) -> u64 {
        self.user_hits + self.item_hits
    }

    pub fn misses(&self) -> u64 {
        self.user_misses + self.item_misses
    }

    /// hits / (hits + misses), or `None` before any access.
    pub fn hit_rate(&self) -> Option<f64> {
        let n = self.hits() + self.misses();
        (n > 0).then(|| self.hits() as f64 / n as f64)
    }

    /// All bytes host→device.
    pub fn bytes_h2d(&self) -> u64 {
        self.row_bytes_h2d + self.data_bytes_h2d
    }

    /// All bytes device→host.
    pub fn bytes_d2h(&self) -> u64 {
        self.row_bytes_d2h + self.data_bytes_d2h
    }

    pub fn merge(&mut self, o: &Ledger) {
        let Ledger {
            user_rows_in,
            item_rows_in,
            user_rows_out,
            item_rows_out,
            user_hits,
            item_hits,
            user_misses,
            item_misses,
            row_bytes_h2d,
            row_bytes_d2h,
            data_bytes_h2d,
            data_bytes_d2h,
            eval_rows_in,
            steps,
            lent,
        } = *o;
        self.user_rows_in += user_rows_in;
        self.item_rows_in += item_rows_in;
        self.user_rows_out += user_rows_out;
        self.item_rows_out += item_rows_out;
        self.user_hits += user_hits;
        self.item_hits += item_hits;
        self.user_misses += user_misses;
        self.item_misses += item_misses;
        self.row_bytes_h2d += row_bytes_h2d;
        self.row_bytes_d2h += row_bytes_d2h;
        self.data_bytes_h2d += data_bytes_h2d;
        self.data_bytes_d2h += data_bytes_d2h;
        self.eval_rows_in += eval_rows_in;
        self.steps += steps;
        self.lent += lent;
    }
}
