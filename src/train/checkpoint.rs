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
//!
//! A run across MPI ranks writes a *sharded* checkpoint instead: each rank
//! a file of its share of the rows (contiguous runs of users and items, a
//! P-th of each), named by its tables' CRC-32 so that no other run's share
//! ever replaces it, and rank 0, once every rank has written its share and
//! it sees them all, a manifest that names the shares and holds the run
//! state. The manifest is
//! the commit: shares of an epoch without one are never read, and a rank
//! removes its older shares only after the new manifest is in place. Any
//! number of ranks, or one process, resumes it (each reads every share and
//! holds the whole model, as every rank does while it trains).

use std::ops::Range;
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
        // The data is its counts and its ratings' CRC-32, not the path it
        // was read from (`./u.data` and `/abs/u.data` are one file).
        let fields = [
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

/// What names a sharded checkpoint's files: the checkpoint file's path
/// without `.safetensors`.
fn stem(dir: &Path) -> String {
    let file = checkpoint_path(dir).to_string_lossy().into_owned();
    file.strip_suffix(".safetensors").map(str::to_string).unwrap_or(file)
}

/// The manifest of a sharded checkpoint in `dir`.
pub fn manifest_path(dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.manifest.json", stem(dir)))
}

/// Rank `rank` of `ranks`' share file for epoch `epoch`, whose tables'
/// CRC-32 is `crc`: named by its contents too, so that another run's share
/// of the same epoch never replaces one a manifest names (the same name is
/// the same tables).
fn share_path(dir: &Path, rank: usize, ranks: usize, epoch: usize, crc: u32) -> PathBuf {
    PathBuf::from(format!("{}.share-{rank}-of-{ranks}.epoch-{epoch}.{crc:08x}.safetensors", stem(dir)))
}

/// Share `rank` of `ranks` of `n` rows: a contiguous run.
pub fn share_range(n: usize, rank: usize, ranks: usize) -> Range<usize> {
    // In 128 bits: `n` may come from an edited manifest.
    let at = |k: usize| (n as u128 * k as u128 / ranks.max(1) as u128) as usize;
    at(rank)..at(rank + 1)
}

/// A sharded checkpoint's manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub ranks: usize,
    /// Each rank's share, in rank order.
    pub shares: Vec<ShareEntry>,
    pub state: RunState,
}

/// One share: its file (beside the manifest) and its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareEntry {
    pub file: String,
    pub users: Range<usize>,
    pub items: Range<usize>,
}

/// Whether `dir` holds a checkpoint: one file, or a manifest.
pub fn checkpoint_exists(dir: &Path) -> bool {
    checkpoint_path(dir).is_file() || manifest_path(dir).is_file()
}

/// `model`'s rows of `users` and `items`, with their ids: a share.
fn rows_of(model: &Model, users: &Range<usize>, items: &Range<usize>) -> Model {
    let s = model.stride;
    Model {
        users: model.users[users.start * s..users.end * s].to_vec(),
        items: model.items[items.start * s..items.end * s].to_vec(),
        user_ids: crate::data::IdMap::from_names(model.user_ids.names()[users.clone()].to_vec()),
        item_ids: crate::data::IdMap::from_names(model.item_ids.names()[items.clone()].to_vec()),
        ..*model
    }
}

/// Rank `rank` of `ranks`' share of a sharded checkpoint of `state`: its
/// rows of `model` (and of `best`), written atomically into `dir` (created
/// if missing). Returns its entry for the manifest.
pub fn save_share(
    dir: &Path,
    state: &RunState,
    model: &Model,
    best: Option<&Model>,
    (rank, ranks): (usize, usize),
) -> Result<ShareEntry> {
    let (path, entry) = share_entry(dir, state, model, best, (rank, ranks));
    let share = rows_of(model, &entry.users, &entry.items);
    let best = best.map(|b| rows_of(b, &entry.users, &entry.items));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let json = serde_json::json!({ "share": entry, "of": ranks, "epoch": state.epoch });
    save_tables(&path, FileKind::Checkpoint, &share, best.as_ref(), &json)?;
    Ok(entry)
}

/// Rank `rank` of `ranks`' share of a checkpoint of `state`: its file
/// (named by the CRC-32 of its rows of `model` and of `best`, hashed where
/// they lie: rank 0 names every share without copying it) and its entry in
/// the manifest.
fn share_entry(
    dir: &Path,
    state: &RunState,
    model: &Model,
    best: Option<&Model>,
    (rank, ranks): (usize, usize),
) -> (PathBuf, ShareEntry) {
    let (users, items) = (share_range(model.n_users(), rank, ranks), share_range(model.n_items(), rank, ranks));
    let s = model.stride;
    let mut crc = crc32fast::Hasher::new();
    for m in std::iter::once(model).chain(best) {
        crc.update(bytemuck::cast_slice(&m.users[users.start * s..users.end * s]));
        crc.update(bytemuck::cast_slice(&m.items[items.start * s..items.end * s]));
    }
    let path = share_path(dir, rank, ranks, state.epoch, crc.finalize());
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (path, ShareEntry { file, users, items })
}

/// Rank 0, once every one of `ranks` ranks has written its share of `model`
/// (every rank holds the whole model, so rank 0 names each share as its
/// rank did): the manifest, written atomically, after checking that rank 0
/// sees every share (a folder on each rank's own disk would leave a
/// manifest of files no rank can read). It is the checkpoint now: a
/// one-process checkpoint file in the same place is removed.
pub fn save_manifest(
    dir: &Path,
    state: &RunState,
    model: &Model,
    best: Option<&Model>,
    ranks: usize,
) -> Result<PathBuf> {
    let path = manifest_path(dir);
    let mut shares = Vec::with_capacity(ranks);
    for k in 0..ranks {
        let (file, entry) = share_entry(dir, state, model, best, (k, ranks));
        if !file.is_file() {
            return Err(Error::io(
                &file,
                std::io::Error::other(format!(
                    "rank 0 does not see rank {k}'s share of the checkpoint: `checkpoint` must be a folder every \
                     rank sees (a shared file system)"
                )),
            ));
        }
        shares.push(entry);
    }
    let manifest = Manifest { ranks, shares, state: state.clone() };
    let bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    crate::model::write_atomically(&path, &bytes)?;
    remove_if_present(&checkpoint_path(dir))?;
    Ok(path)
}

/// The share files beside `dir`'s checkpoint: (path, rank, ranks, epoch).
fn shares_in(dir: &Path) -> Result<Vec<(PathBuf, usize, usize, usize)>> {
    let stem = stem(dir);
    let folder = Path::new(&stem).parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!("{}.share-", Path::new(&stem).file_name().unwrap_or_default().to_string_lossy());
    let entries = match std::fs::read_dir(folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(folder, e)),
    };
    let parse = |name: &str| -> Option<(usize, usize, usize)> {
        let rest = name.strip_prefix(&prefix)?.strip_suffix(".safetensors")?;
        let (rank, rest) = rest.split_once("-of-")?;
        let (ranks, epoch) = rest.split_once(".epoch-")?;
        // The epoch, then the tables' CRC-32 (none in the earliest names).
        let epoch = epoch.split_once('.').map_or(epoch, |(e, _)| e);
        Some((rank.parse().ok()?, ranks.parse().ok()?, epoch.parse().ok()?))
    };
    Ok(entries
        .flatten()
        .filter_map(|e| parse(&e.file_name().to_string_lossy()).map(|(r, p, ep)| (e.path(), r, p, ep)))
        .collect())
}

/// After the manifest across `ranks` ranks that names rank `rank`'s share
/// `kept` (a file name): the rank's other shares removed, and on rank 0
/// those of ranks past `ranks` (a checkpoint of more ranks that this run
/// resumed).
pub fn remove_old_shares(dir: &Path, (rank, ranks): (usize, usize), kept: &str) -> Result<()> {
    let mut removed = None;
    for (path, r, ..) in shares_in(dir)? {
        let mine = r == rank && path.file_name() != Some(std::ffi::OsStr::new(kept));
        if mine || (rank == 0 && r >= ranks) {
            remove_if_present(&path)?;
            removed = path.parent().map(Path::to_path_buf);
        }
    }
    if let Some(folder) = removed {
        crate::model::sync_folder(&folder);
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// The sharded checkpoint whose manifest is `path`: every share read and
/// checked against the manifest, the whole model put together.
fn load_sharded(path: &Path) -> Result<(RunState, Model, Option<Model>)> {
    let bad = |reason: String| Error::BadModel { path: path.to_path_buf(), what: "checkpoint manifest", reason };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(format!("unreadable: {e}")))?;
    let (f, folder) = (&m.state.fingerprint, path.parent().unwrap_or(Path::new(".")));
    if m.ranks == 0 || m.shares.len() != m.ranks {
        return Err(bad(format!("it lists {} share(s) for {} rank(s)", m.shares.len(), m.ranks)));
    }
    let (mut model, mut best): (Option<Model>, Option<Option<Model>>) = (None, None);
    for (k, e) in m.shares.iter().enumerate() {
        if e.users != share_range(f.users, k, m.ranks) || e.items != share_range(f.items, k, m.ranks) {
            return Err(bad(format!("share {k}'s rows are not rank {k}'s of {} users and {} items", f.users, f.items)));
        }
        if Path::new(&e.file).file_name() != Some(std::ffi::OsStr::new(&e.file)) {
            return Err(bad(format!("share {k}'s file {:?} is not a name beside the manifest", e.file)));
        }
        let file = folder.join(&e.file);
        let (part, part_best, json) = load_tables(&file, FileKind::Checkpoint)?;
        let said: Option<ShareEntry> = serde_json::from_value(json["share"].clone()).ok();
        if said.as_ref() != Some(e) || json["epoch"].as_u64() != Some(m.state.epoch as u64) {
            return Err(Error::BadModel {
                path: file,
                what: "checkpoint share",
                reason: format!(
                    "it is not share {k} of the checkpoint after epoch {} that the manifest names",
                    m.state.epoch
                ),
            });
        }
        if (part.n_users(), part.n_items()) != (e.users.len(), e.items.len()) {
            return Err(Error::BadModel {
                path: file,
                what: "checkpoint share",
                reason: format!("it holds {} users and {} items, not its share's", part.n_users(), part.n_items()),
            });
        }
        match &mut model {
            None => model = Some(part),
            Some(whole) => whole.append(&part).map_err(|r| bad(format!("share {k}: {r}")))?,
        }
        match (&mut best, part_best) {
            (None, b) => best = Some(b),
            (Some(Some(whole)), Some(b)) => whole.append(&b).map_err(|r| bad(format!("share {k}: {r}")))?,
            (Some(None), None) => {}
            _ => return Err(bad(format!("share {k} disagrees with share 0 on holding best-epoch tables"))),
        }
    }
    Ok((m.state, model.expect("at least one share"), best.flatten()))
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
    // A sharded checkpoint left in the same place is not this run's now.
    remove_if_present(&manifest_path(dir))?;
    for (share, ..) in shares_in(dir)? {
        remove_if_present(&share)?;
    }
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

/// Reads the checkpoint in `dir`: one file, or a sharded checkpoint's
/// manifest and shares (where both are there, after a writer stopped
/// between writing one and removing the other, the newer).
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let (file, manifest) = (checkpoint_path(dir), manifest_path(dir));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let sharded = match (modified(&file), modified(&manifest)) {
        (Some(f), Some(m)) => m >= f,
        (None, Some(_)) => true,
        _ => false,
    };
    let (path, state, model, best_model) = if sharded {
        let (state, model, best) = load_sharded(&manifest)?;
        (manifest, state, model, best)
    } else {
        let (model, best_model, json) = load_tables(&file, FileKind::Checkpoint)?;
        let state: RunState = serde_json::from_value(json).map_err(|e| Error::BadModel {
            path: file.clone(),
            what: "checkpoint",
            reason: format!("its run state is unreadable: {e}"),
        })?;
        (file, state, model, best_model)
    };
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
