//! Checkpoints, resuming and early stopping through the library, on the CPU
//! reference (bit-exact) — the GPU version of the resume test lives in
//! `gpu_train.rs`.

mod common;

use common::StopAfter;
use rowstage::data::{Dataset, SyntheticSpec, generate};
use rowstage::model::HyperParams;
use rowstage::train::checkpoint::{CHECKPOINT_FILE, load_checkpoint};
use rowstage::train::{RunControl, TrainSettings, cpu::ReferenceCpu, train};

fn dataset() -> Dataset {
    let spec = SyntheticSpec::parse("211,97,3001", Some(1.05)).unwrap();
    Dataset::split("resume", generate(&spec, 3), 0.1, 3)
}

fn settings() -> TrainSettings {
    TrainSettings {
        hp: HyperParams { rank: 6, ..Default::default() },
        epochs: 4,
        batch: 250,
        seed: 9,
        deterministic: true,
        co_partition: None,
        order: rowstage::train::Order::Auto,
        grid: Vec::new(),
    }
}

fn cpu(s: &TrainSettings) -> ReferenceCpu {
    ReferenceCpu { bias_reg: s.hp.bias_reg }
}

#[test]
fn a_run_stopped_mid_epoch_and_resumed_ends_with_the_uninterrupted_model() {
    let data = dataset();
    let s = settings();
    let whole = train(&data, &s, &mut cpu(&s), RunControl::default(), &mut |_| {}).unwrap();

    let dir = tempfile::tempdir().unwrap();
    // Stop in the second epoch after 3 parts (batches).
    let mut stopping = StopAfter::new(cpu(&s), 2, 3 * s.batch);
    let control = RunControl { checkpoint: Some(dir.path()), ..Default::default() };
    let first = train(&data, &s, &mut stopping, control, &mut |_| {}).unwrap();
    assert!(!first.complete);
    assert_eq!(first.epochs.len(), 1);
    let saved = load_checkpoint(dir.path()).unwrap();
    let cut = stopping.stopped_at.unwrap();
    assert!(cut >= 3 * s.batch && cut < data.train.len(), "{cut}");
    assert_eq!((saved.state.epoch, saved.state.position), (1, cut));

    let control = RunControl { checkpoint: Some(dir.path()), resume: Some(saved), ..Default::default() };
    let mut epochs_seen = Vec::new();
    let second = train(&data, &s, &mut cpu(&s), control, &mut |e| epochs_seen.push(e.epoch)).unwrap();
    assert!(second.complete);
    assert_eq!(epochs_seen, vec![2, 3, 4]);
    assert_eq!(second.epochs.len(), 4, "the resumed report keeps the epochs before the stop");
    assert_eq!(second.epochs[1].ratings, data.train.len() - cut);
    assert_eq!(second.model, whole.model, "resumed model differs from the uninterrupted one");
    assert_eq!(second.final_metrics.rmse, whole.final_metrics.rmse);

    // A checkpoint of another run is refused, naming the field.
    let other = TrainSettings { hp: HyperParams { lr: 0.02, ..s.hp }, ..s.clone() };
    let control = RunControl { resume: Some(load_checkpoint(dir.path()).unwrap()), ..Default::default() };
    let e = train(&data, &other, &mut cpu(&other), control, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("`lr`") && e.contains(&s.hp.lr.to_string()) && e.contains("0.02"), "{e}");
}

#[test]
fn damaged_checkpoints_are_refused() {
    let data = dataset();
    let s = TrainSettings { epochs: 1, ..settings() };
    let dir = tempfile::tempdir().unwrap();
    let control = RunControl { checkpoint: Some(dir.path()), ..Default::default() };
    train(&data, &s, &mut cpu(&s), control, &mut |_| {}).unwrap();
    let path = dir.path().join(CHECKPOINT_FILE);
    let good = std::fs::read(&path).unwrap();
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let e = load_checkpoint(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a valid rowstage checkpoint") && e.contains("truncated"), "{e}");

    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n - 5] ^= 0x10;
    std::fs::write(&path, &flipped).unwrap();
    let e = load_checkpoint(dir.path()).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");

    // A saved model is not a checkpoint, and the other way round.
    std::fs::write(&path, &good).unwrap();
    let (m, _, _) = rowstage::model::load_tables(&path, rowstage::model::FileKind::Checkpoint).unwrap();
    rowstage::model::save_model(&m, &serde_json::json!({}), &path).unwrap();
    let e = load_checkpoint(dir.path()).unwrap_err().to_string();
    assert!(e.contains("a saved model"), "{e}");
}

/// A checkpoint across MPI ranks: each rank's share of the rows and a
/// manifest. Put back together it is the one-process checkpoint; a share
/// missing, another checkpoint's, or a manifest edited is refused by name;
/// a one-process checkpoint written there replaces it whole.
#[test]
fn sharded_checkpoints_are_the_whole_checkpoint_and_damaged_ones_are_refused() {
    use rowstage::train::checkpoint::{manifest_path, remove_old_shares, save_checkpoint, save_manifest, save_share};
    let data = dataset();
    let s = TrainSettings { epochs: 2, ..settings() };
    let one = tempfile::tempdir().unwrap();
    let control = RunControl { checkpoint: Some(one.path()), ..Default::default() };
    train(&data, &s, &mut cpu(&s), control, &mut |_| {}).unwrap();
    let whole = load_checkpoint(one.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |state: &rowstage::train::checkpoint::RunState, ranks: usize| {
        let files: Vec<String> =
            (0..ranks).map(|k| save_share(dir.path(), state, &whole.model, None, (k, ranks)).unwrap().file).collect();
        save_manifest(dir.path(), state, &whole.model, None, ranks).unwrap();
        for (k, file) in files.iter().enumerate() {
            remove_old_shares(dir.path(), (k, ranks), file).unwrap();
        }
    };
    write(&whole.state, 3);
    let back = load_checkpoint(dir.path()).unwrap();
    assert_eq!(back.path, manifest_path(dir.path()));
    assert_eq!(back.model, whole.model, "the shares put together are the model");
    assert_eq!(back.state.epoch, whole.state.epoch);
    // With the best epoch's tables (patience), shared the same way.
    let best =
        rowstage::model::Model { users: whole.model.users.iter().map(|x| x * 0.5).collect(), ..whole.model.clone() };
    let state = rowstage::train::checkpoint::RunState {
        best: Some(rowstage::train::checkpoint::Best { epoch: 1, test_rmse: 1.0, setting: 0 }),
        ..whole.state.clone()
    };
    for k in 0..3 {
        save_share(dir.path(), &state, &whole.model, Some(&best), (k, 3)).unwrap();
    }
    save_manifest(dir.path(), &state, &whole.model, Some(&best), 3).unwrap();
    let back = load_checkpoint(dir.path()).unwrap();
    assert_eq!((back.model, back.best_model), (whole.model.clone(), Some(best)));
    // Rewritten across 2 ranks: the 3-rank shares are gone, and it loads.
    write(&whole.state, 2);
    let names = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    // A share is named by its rank, its epoch and its tables' CRC-32.
    let shape = |name: &str| match name.rsplit_once(".safetensors").and_then(|(n, _)| n.rsplit_once('.')) {
        Some((head, crc)) if crc.len() == 8 && crc.chars().all(|c| c.is_ascii_hexdigit()) => format!("{head}.CRC"),
        _ => name.to_string(),
    };
    let shapes = |d: &std::path::Path| names(d).iter().map(|n| shape(n)).collect::<Vec<_>>();
    assert_eq!(
        shapes(dir.path()),
        ["checkpoint.manifest.json", "checkpoint.share-0-of-2.epoch-2.CRC", "checkpoint.share-1-of-2.epoch-2.CRC"]
    );
    assert_eq!(load_checkpoint(dir.path()).unwrap().model, whole.model);
    let share =
        |k: usize| dir.path().join(names(dir.path()).into_iter().find(|n| n.contains(&format!("share-{k}-"))).unwrap());
    let (share0, share1) = (share(0), share(1));

    // Another run's share of the same epoch, other tables: another file,
    // so the committed checkpoint stays whole; its manifest is refused
    // where rank 0 does not see every share (a folder on each rank's disk).
    let other =
        rowstage::model::Model { items: whole.model.items.iter().map(|x| x + 1.0).collect(), ..whole.model.clone() };
    let theirs = save_share(dir.path(), &whole.state, &other, None, (1, 2)).unwrap();
    assert_ne!(dir.path().join(&theirs.file), share1, "another run's tables, another name");
    assert_eq!(load_checkpoint(dir.path()).unwrap().model, whole.model, "the committed shares are untouched");
    let e = save_manifest(dir.path(), &whole.state, &other, None, 2).unwrap_err().to_string();
    assert!(e.contains("rank 0 does not see rank 0's share") && e.contains("every rank sees"), "{e}");
    remove_old_shares(dir.path(), (1, 2), &share1.file_name().unwrap().to_string_lossy()).unwrap();
    assert_eq!(shapes(dir.path()).len(), 3, "the other run's share removed with the rank's old ones");

    let good = std::fs::read(&share1).unwrap();
    std::fs::remove_file(&share1).unwrap();
    let e = load_checkpoint(dir.path()).unwrap_err().to_string();
    assert!(e.contains(&*share1.file_name().unwrap().to_string_lossy()), "{e}");
    // Share 0's file in share 1's place.
    std::fs::copy(&share0, &share1).unwrap();
    let e = load_checkpoint(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not share 1 of the checkpoint after epoch 2"), "{e}");
    std::fs::write(&share1, &good).unwrap();
    // A manifest edited: rows that are not the shares', a file elsewhere.
    let manifest = manifest_path(dir.path());
    let text = std::fs::read_to_string(&manifest).unwrap();
    let half = whole.model.n_users() / 2;
    let (end, short) = (format!("\"end\": {half}"), format!("\"end\": {}", half - 1));
    for (from, to, says) in [
        (end.as_str(), short.as_str(), "rows are not rank 0's"),
        ("\"file\": \"checkpoint.share-1", "\"file\": \"../checkpoint.share-1", "not a name beside the manifest"),
        ("\"ranks\": 2", "\"ranks\": 3", "2 share(s) for 3 rank(s)"),
    ] {
        assert!(text.contains(from), "{from} in {text}");
        std::fs::write(&manifest, text.replacen(from, to, 1)).unwrap();
        let e = load_checkpoint(dir.path()).unwrap_err().to_string();
        assert!(e.contains(says), "{from}: {e}");
    }
    std::fs::write(&manifest, &text).unwrap();
    assert_eq!(load_checkpoint(dir.path()).unwrap().model, whole.model);
    // One process writing there replaces the sharded checkpoint whole.
    save_checkpoint(dir.path(), &whole.state, &whole.model, None).unwrap();
    assert_eq!(names(dir.path()), [CHECKPOINT_FILE]);
}

#[test]
fn patience_stops_when_test_rmse_stalls_and_keeps_the_best_epoch() {
    // No regularisation, a high rate and many factors on few ratings: test
    // RMSE falls, then rises as the model overfits.
    let data = dataset();
    let s = TrainSettings {
        hp: HyperParams { rank: 32, lr: 0.05, reg: 0.0, bias_reg: 0.0, decay: 0.0, init_std: 0.1 },
        epochs: 60,
        ..settings()
    };
    let dir = tempfile::tempdir().unwrap();
    let control = RunControl { patience: Some(2), checkpoint: Some(dir.path()), ..Default::default() };
    let out = train(&data, &s, &mut cpu(&s), control, &mut |_| {}).unwrap();
    let rmses: Vec<f64> = out.epochs.iter().map(|e| e.test_rmse).collect();
    eprintln!("test RMSE per epoch: {rmses:.4?}");
    assert!(out.stopped_early, "overfitting should stop the run before epoch 60");
    assert!(out.epochs.len() < 60);
    let best = out.best_epoch.unwrap();
    let min = rmses.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(rmses[best - 1], min);
    assert_eq!(out.epochs.len(), best + 2, "stops 2 epochs after the best");
    assert_eq!(out.final_metrics.rmse, min, "the kept model is the best epoch's");
    // The checkpoint carries the best epoch's tables too.
    let c = load_checkpoint(dir.path()).unwrap();
    assert_eq!(c.best_model.as_ref(), Some(&out.model));
    assert_eq!(c.state.best.unwrap().epoch, best);
}

/// `--patience` in a grid search keeps the best (epoch, setting): the lowest
/// test RMSE any setting reached, and that setting's model of that epoch.
#[test]
fn grid_with_patience_keeps_the_best_epoch_and_setting() {
    use rowstage::model::Setting;
    let data = dataset();
    let s = TrainSettings {
        hp: HyperParams { rank: 32, lr: 0.05, reg: 0.0, bias_reg: 0.0, decay: 0.0, init_std: 0.1 },
        grid: vec![Setting { lr: 0.05, reg: 0.0 }, Setting { lr: 0.02, reg: 0.0 }],
        epochs: 60,
        ..settings()
    };
    let control = RunControl { patience: Some(2), ..Default::default() };
    let out = train(&data, &s, &mut cpu(&s), control, &mut |_| {}).unwrap();
    assert!(out.stopped_early, "overfitting should stop the run before epoch 60");
    let lowest = out.epochs.iter().flat_map(|e| e.grid.iter().map(|x| x.test_rmse)).fold(f64::INFINITY, f64::min);
    let kept = &out.epochs[out.best_epoch.unwrap() - 1];
    assert_eq!(kept.grid[out.best_setting].test_rmse, lowest);
    assert_eq!(out.model.copies, 1);
    assert!((out.final_metrics.rmse - lowest).abs() < 1e-12, "{} vs {lowest}", out.final_metrics.rmse);
}

/// A grid search stopped mid-epoch resumes from its checkpoint (the wide
/// tables) to the uninterrupted run's models; a checkpoint of another grid is
/// refused naming the grid.
#[test]
fn a_grid_search_resumes_to_the_uninterrupted_models() {
    use rowstage::model::Setting;
    let data = dataset();
    let grid = vec![Setting { lr: 0.01, reg: 0.05 }, Setting { lr: 0.03, reg: 0.01 }, Setting { lr: 0.02, reg: 0.1 }];
    let s = TrainSettings { grid: grid.clone(), ..settings() };
    let whole = train(&data, &s, &mut cpu(&s), RunControl::default(), &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut stopping = StopAfter::new(cpu(&s), 3, 2 * s.batch);
    let control = RunControl { checkpoint: Some(dir.path()), ..Default::default() };
    assert!(!train(&data, &s, &mut stopping, control, &mut |_| {}).unwrap().complete);
    let saved = load_checkpoint(dir.path()).unwrap();
    assert_eq!(saved.model.copies, 3);

    let other = TrainSettings { grid: grid[..2].to_vec(), ..settings() };
    let control = RunControl { resume: Some(saved.clone()), ..Default::default() };
    let e = train(&data, &other, &mut cpu(&other), control, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("`lr` × `reg` grid"), "{e}");

    let control = RunControl { resume: Some(saved), ..Default::default() };
    let resumed = train(&data, &s, &mut cpu(&s), control, &mut |_| {}).unwrap();
    assert_eq!(resumed.best_setting, whole.best_setting);
    assert_eq!(resumed.model, whole.model);
    let rmses = |o: &rowstage::train::TrainOutcome| -> Vec<f64> {
        o.epochs.iter().flat_map(|e| e.grid.iter().map(|x| x.test_rmse)).collect()
    };
    assert_eq!(rmses(&resumed), rmses(&whole));
}

/// A checkpoint records its backend; one the noop backend made (its tables
/// no model) never resumes into a model.
#[test]
fn a_noop_checkpoint_never_becomes_a_model() {
    let data = dataset();
    let s = TrainSettings { epochs: 2, ..settings() };
    let dir = tempfile::tempdir().unwrap();
    let control = RunControl { checkpoint: Some(dir.path()), ..Default::default() };
    let first = TrainSettings { epochs: 1, ..s.clone() };
    train(&data, &first, &mut cpu(&first), control, &mut |_| {}).unwrap();
    let mut c = load_checkpoint(dir.path()).unwrap();
    assert_eq!(c.state.backend, "cpu", "the backend that made it is recorded");
    c.state.backend = "noop".into();
    rowstage::train::checkpoint::save_checkpoint(dir.path(), &c.state, &c.model, c.best_model.as_ref()).unwrap();
    let control = RunControl { resume: Some(load_checkpoint(dir.path()).unwrap()), ..Default::default() };
    let e = train(&data, &s, &mut cpu(&s), control, &mut |_| {}).err().expect("refused").to_string();
    assert!(e.contains("noop"), "{e}");
}
