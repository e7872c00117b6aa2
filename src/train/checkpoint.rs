//! Checkpoints: everything a run needs to continue where it stopped, in one
//! file written atomically (a temporary file, then a rename) and guarded by
//! the model format's CRC-32, so a crash mid-write leaves the previous
//! checkpoint whole and a damaged file is refused.
//!
//! A checkpoint holds the host tables (made authoritative first), the best
//! epoch's tables when `--patience` keeps them, and [`RunState`]: the epoch and
//! the position inside it, the epoch reports so far (each with its ledger),
//! and a fingerprint of the data and the settings that decide the mathematics.
//! The random streams need no saved state: the initial factors come from the
//! seed and each epoch's plan from `(seed, epoch)` alone ([`crate::engine::order`]),
//! so `(seed, epoch, position)` is the whole RNG state, and the learning rate
//! is a function of the epoch.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{EpochReport, TrainSettings};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{FileKind, HyperParams, Model, Setting, load_tables, save_tables};
use crate::stage::Ledger;

/// The file inside a checkpoint directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// What must be equal for a checkpoint to continue a run. The budget, the
/// policy, the backend, the thread count and the number of epochs may change
/// between runs: they change speed and traffic, not the model (in
/// deterministic mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub data: String,
    pub users: usize,
    pub items: usize,
    pub train: usize,
    pub test: usize,
    /// CRC-32 of the training ratings in order (user, item, rating bits).
    pub train_crc32: u32,
    pub hp: HyperParams,
    /// The grid of a grid search (empty otherwise).
    #[serde(default)]
    pub grid: Vec<Setting>,
    pub seed: u64,
    pub batch: usize,
    pub deterministic: bool,
    /// `none`, or `users:ROWS:VISITS` / `items:ROWS:VISITS`.
    pub co_partition: String,
    /// `shuffled` or `blocked:BINS` (see [`crate::train::Order`]).
    #[serde(default = "shuffled")]
    pub order: String,
}

/// The order of checkpoints written before the blocked order existed.
fn shuffled() -> String {
    "shuffled".into()
}

impl Fingerprint {
    pub fn of(data: &Dataset, settings: &TrainSettings) -> Self {
        let mut h = crc32fast::Hasher::new();
        for r in &data.train {
            h.update(&r.user.to_le_bytes());
            h.update(&r.item.to_le_bytes());
            h.update(&r.value.to_bits().to_le_bytes());
        }
        Fingerprint {
            data: data.name.clone(),
            users: data.users.len(),
            items: data.items.len(),
            train: data.train.len(),
            test: data.test.len(),
            train_crc32: h.finalize(),
            hp: settings.hp,
            grid: settings.grid.clone(),
            seed: settings.seed,
            batch: settings.batch,
            deterministic: settings.deterministic,
            co_partition: settings
                .co_partition
                .map_or("none".into(), |c| format!("{}:{}:{}", c.side.name(), c.block_rows, c.visits)),
            order: settings.order.name(),
        }
    }

    /// Fails naming the first field where `self` (saved) and `now` differ.
    pub fn check(&self, now: &Fingerprint, path: &Path) -> Result<()> {
        fn pair<T: std::fmt::Display>(a: T, b: T) -> (String, String) {
            (a.to_string(), b.to_string())
        }
        let fields = [
            ("dataset name", pair(&self.data, &now.data)),
            ("dataset users", pair(self.users, now.users)),
            ("dataset items", pair(self.items, now.items)),
            ("training ratings", pair(self.train, now.train)),
            ("test ratings", pair(self.test, now.test)),
            ("the training ratings' CRC-32", pair(self.train_crc32, now.train_crc32)),
            ("`rank`", pair(self.hp.rank, now.hp.rank)),
            ("`lr`", pair(self.hp.lr, now.hp.lr)),
            ("`reg`", pair(self.hp.reg, now.hp.reg)),
            ("`bias_reg`", pair(self.hp.bias_reg, now.hp.bias_reg)),
            ("`decay`", pair(self.hp.decay, now.hp.decay)),
            ("`init_std`", pair(self.hp.init_std, now.hp.init_std)),
            ("the `lr` × `reg` grid", pair(grid_text(&self.grid), grid_text(&now.grid))),
            ("`seed`", pair(self.seed, now.seed)),
            ("`batch`", pair(self.batch, now.batch)),
            ("`deterministic`", pair(self.deterministic, now.deterministic)),
            ("`co_partition` (side:rows per block:visits)", pair(&self.co_partition, &now.co_partition)),
            ("`order` (its bins follow the data and `rank` where not given)", pair(&self.order, &now.order)),
        ];
        match fields.into_iter().find(|(_, (a, b))| a != b) {
            None => Ok(()),
            Some((field, (saved, now))) => {
                Err(Error::ResumeMismatch { path: path.to_path_buf(), field: field.to_string(), saved, now })
            }
        }
    }
}

fn grid_text(grid: &[Setting]) -> String {
    let all: Vec<String> = grid.iter().map(|s| format!("lr {} reg {}", s.lr, s.reg)).collect();
    if all.is_empty() { "none".into() } else { all.join(", ") }
}

/// The best epoch so far (under `--patience`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub test_rmse: f64,
    /// The setting of a grid search that reached it (0 outside one).
    #[serde(default)]
    pub setting: usize,
}

/// Where a run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub fingerprint: Fingerprint,
    /// The epoch in progress (0-based): epochs before it are complete.
    pub epoch: usize,
    /// Ratings of that epoch's order already applied (a whole number of
    /// batches; 0 at an epoch boundary).
    pub position: usize,
    /// The learning rate of epoch `epoch` (informative: it follows from the
    /// settings and the epoch).
    pub lr: f32,
    /// Reports of the complete epochs, ledgers included.
    pub epochs: Vec<EpochReport>,
    /// Traffic of the epoch in progress up to `position`.
    pub partial_ledger: Ledger,
    pub best: Option<Best>,
    /// Each setting's lowest test RMSE so far (a grid search's settings
    /// each; one otherwise).
    #[serde(default)]
    pub best_each: Vec<f64>,
    /// Epochs since any setting last lowered its own test RMSE.
    pub since_best: usize,
    /// Seconds spent in training passes (evaluation excluded).
    pub train_seconds: f64,
    /// The epochs a run's choosing kept, when it chose: a resumed run
    /// trains to them rather than choosing again.
    #[serde(default)]
    pub chosen_epochs: Option<usize>,
    /// The backend that made it (`cpu`, `vulkan`, ...; empty in checkpoints
    /// older than this field). A `noop` state is no model and never resumes.
    #[serde(default)]
    pub backend: String,
}

impl RunState {
    pub fn new(fingerprint: Fingerprint, lr: f32) -> Self {
        RunState {
            fingerprint,
            epoch: 0,
            position: 0,
            lr,
            epochs: Vec::new(),
            partial_ledger: Ledger::default(),
            best: None,
            best_each: Vec::new(),
            since_best: 0,
            train_seconds: 0.0,
            chosen_epochs: None,
            backend: String::new(),
        }
    }
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub state: RunState,
    pub model: Model,
    /// The best epoch's tables, when the run kept them.
    pub best_model: Option<Model>,
    /// The file it came from.
    pub path: PathBuf,
}

/// The checkpoint file for `dir`; a path to the file itself is accepted too.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    if dir.extension().is_some_and(|e| e == "safetensors") { dir.to_path_buf() } else { dir.join(CHECKPOINT_FILE) }
}

/// Writes a checkpoint into `dir` (created if missing), replacing the previous
/// one atomically.
pub fn save_checkpoint(dir: &Path, state: &RunState, model: &Model, best: Option<&Model>) -> Result<PathBuf> {
    let path = checkpoint_path(dir);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let json = serde_json::to_value(state).expect("run state serialises");
    save_tables(&path, FileKind::Checkpoint, model, best, &json)?;
    Ok(path)
}

/// A lock on a checkpoint folder, held while a run writes there and
/// released by the kernel when the process ends, however it ends.
pub struct FolderLock {
    _file: std::fs::File,
}

/// Makes `dir` if missing and locks it for this process (flock on
/// `dir/.lock`): a second run aimed at the same folder is refused, naming
/// it, rather than replacing the first run's checkpoints.
pub fn lock_folder(dir: &Path) -> Result<FolderLock> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::io(dir, std::io::Error::other("a file, not a folder for checkpoints")));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this process owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::io(
                dir,
                std::io::Error::other("another rowstage run is checkpointing into this folder (it is locked)"),
            ));
        }
    }
    Ok(FolderLock { _file: file })
}

/// Reads the checkpoint in `dir`.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let path = checkpoint_path(dir);
    let (model, best_model, json) = load_tables(&path, FileKind::Checkpoint)?;
    let state: RunState = serde_json::from_value(json).map_err(|e| Error::BadModel {
        path: path.clone(),
        what: "checkpoint",
        reason: format!("its run state is unreadable: {e}"),
    })?;
    // The tables must be the ones the run state describes: a file edited
    // or put together by hand would otherwise index past them.
    let f = &state.fingerprint;
    let shape = |m: &Model| (m.n_users(), m.n_items(), m.copies, m.rank);
    let want = (f.users, f.items, f.grid.len().max(1), f.hp.rank);
    for (m, which) in [(Some(&model), "tables"), (best_model.as_ref(), "best-epoch tables")] {
        if let Some(m) = m
            && shape(m) != want
        {
            let (u, i, c, r) = shape(m);
            return Err(Error::BadModel {
                path,
                what: "checkpoint",
                reason: format!(
                    "its {which} hold {u} users, {i} items, {c} model(s) at rank {r}, where its run state says {}, \
                     {}, {} at rank {}",
                    want.0, want.1, want.2, want.3
                ),
            });
        }
    }
    if state.epoch != state.epochs.len() {
        return Err(Error::BadModel {
            path,
            what: "checkpoint",
            reason: format!(
                "its run state is at epoch {} but reports {} complete epoch(s)",
                state.epoch.saturating_add(1),
                state.epochs.len()
            ),
        });
    }
    if best_model.is_some() && state.best.is_none() {
        return Err(Error::BadModel {
            path,
            what: "checkpoint",
            reason: "it holds best-epoch tables but no best epoch".into(),
        });
    }
    Ok(Checkpoint { state, model, best_model, path })
}
