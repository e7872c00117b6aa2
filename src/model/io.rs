//! Models on disk as safetensors: the two tables, the id maps, the settings
//! they were trained with, and a CRC-32 over everything, so that a truncated,
//! corrupted or foreign file is refused instead of loaded as garbage.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::Model;
use crate::data::IdMap;
use crate::error::{Error, Result};

/// Bumped whenever the layout changes; other values are refused.
pub const FORMAT_VERSION: &str = "1";
const FORMAT_NAME: &str = "rowstage-model";

fn names_blob(ids: &IdMap) -> Vec<u8> {
    ids.names().join("\n").into_bytes()
}

fn checksum(parts: &[&[u8]], meta: &[(&str, &str)]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    for (k, v) in meta {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    h.finalize()
}

/// What a file holds: its `format` tag and how errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A trained model (`rowstage train --save`).
    Model,
    /// A training checkpoint (`rowstage train --checkpoint`): the current
    /// model, optionally the best epoch's, and the run's state.
    Checkpoint,
}

impl FileKind {
    fn tag(self) -> &'static str {
        match self {
            FileKind::Model => FORMAT_NAME,
            FileKind::Checkpoint => CHECKPOINT_NAME,
        }
    }

    fn what(self) -> &'static str {
        match self {
            FileKind::Model => "model",
            FileKind::Checkpoint => "checkpoint",
        }
    }
}

const CHECKPOINT_NAME: &str = "rowstage-checkpoint";

/// Writes `model` to `path` atomically (a temporary file, then a rename), with
/// `config` (any JSON) kept in the metadata.
pub fn save_model(model: &Model, config: &serde_json::Value, path: &Path) -> Result<()> {
    save_tables(path, FileKind::Model, model, None, config)
}

/// Reads a model written by [`save_model`], with the config it was saved with.
pub fn load_model(path: &Path) -> Result<(Model, serde_json::Value)> {
    let (model, _, config) = load_tables(path, FileKind::Model)?;
    Ok((model, config))
}

/// Writes `model` (and `second`, tables of the same shape, as `best_users`
/// and `best_items`) with `config` as one file of `kind`, atomically, under
/// one CRC-32.
pub fn save_tables(
    path: &Path,
    kind: FileKind,
    model: &Model,
    second: Option<&Model>,
    config: &serde_json::Value,
) -> Result<()> {
    write_atomically(path, &tables_bytes(path, kind, model, second, config)?)
}

/// The bytes [`save_tables`] writes (`path` names the file in errors).
pub fn tables_bytes(
    path: &Path,
    kind: FileKind,
    model: &Model,
    second: Option<&Model>,
    config: &serde_json::Value,
) -> Result<Vec<u8>> {
    // The ids are stored one a line: an id with a line break in it (one
    // given through an array, never read from a ratings file) would come
    // back as two.
    for (side, ids) in [("user", &model.user_ids), ("item", &model.item_ids)] {
        if let Some(id) = ids.names().iter().find(|n| n.contains('\n')) {
            return Err(Error::io(
                path,
                std::io::Error::other(format!(
                    "not written: the {side} id {id:?} holds a line break, which a model file cannot store"
                )),
            ));
        }
    }
    let users: &[u8] = bytemuck::cast_slice(&model.users);
    let items: &[u8] = bytemuck::cast_slice(&model.items);
    let uids = names_blob(&model.user_ids);
    let iids = names_blob(&model.item_ids);
    let rank = model.rank.to_string();
    let mean = model.mean.to_bits().to_string();
    let lo = model.min_rating.to_bits().to_string();
    let hi = model.max_rating.to_bits().to_string();
    let config = config.to_string();
    let meta_fields: [(&str, &str); 7] = [
        ("format", kind.tag()),
        ("version", FORMAT_VERSION),
        ("rank", &rank),
        ("mean_bits", &mean),
        ("min_rating_bits", &lo),
        ("max_rating_bits", &hi),
        ("config", &config),
    ];
    let mut parts: Vec<&[u8]> = vec![users, items, &uids, &iids];
    if let Some(b) = second {
        parts.push(bytemuck::cast_slice(&b.users));
        parts.push(bytemuck::cast_slice(&b.items));
    }
    let sum = checksum(&parts, &meta_fields);
    let mut meta: HashMap<String, String> = meta_fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    meta.insert("crc32".into(), format!("{sum:08x}"));

    let ser = |e: safetensors::SafeTensorError| Error::BadModel {
        path: path.to_path_buf(),
        what: kind.what(),
        reason: format!("cannot serialise: {e}"),
    };
    let mut tensors = vec![
        ("users", TensorView::new(Dtype::F32, vec![model.n_users(), model.stride], users).map_err(ser)?),
        ("items", TensorView::new(Dtype::F32, vec![model.n_items(), model.stride], items).map_err(ser)?),
        ("user_ids", TensorView::new(Dtype::U8, vec![uids.len()], &uids).map_err(ser)?),
        ("item_ids", TensorView::new(Dtype::U8, vec![iids.len()], &iids).map_err(ser)?),
    ];
    if let Some(b) = second {
        tensors.push(("best_users", TensorView::new(Dtype::F32, vec![b.n_users(), b.stride], parts[4]).map_err(ser)?));
        tensors.push(("best_items", TensorView::new(Dtype::F32, vec![b.n_items(), b.stride], parts[5]).map_err(ser)?));
    }
    safetensors::serialize(tensors, Some(meta)).map_err(ser)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames
/// it over `path`: readers see the old file or the whole new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    // A device, FIFO or symlink is written through (an atomic replace would
    // put a regular file in its place); a read-only file is refused.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
                f.write_all(bytes)?;
                f.flush()
            };
            return write().map_err(|e| Error::io(path, e));
        }
        Ok(m) if m.permissions().readonly() => {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::PermissionDenied, "the file is read-only"),
            ));
        }
        _ => {}
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    remove_stale_temporaries(dir, &name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once its folder is synced (a crash
        // could otherwise lose it where the file system does not order it).
        sync_folder(dir);
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Syncs `dir`'s entries (renames, removals) to disk, where the platform
/// can; a file system that cannot is left as it is (nothing to report: the
/// file's own contents are synced).
pub(crate) fn sync_folder(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Checks, before any work, that `path` (a file to be written; `-` is
/// stdout) can be written: its folder exists, it is not a folder itself,
/// and it is not a read-only file. Names `what` (the flag) in the error.
pub fn check_output(what: &str, path: &Path) -> Result<()> {
    if path == Path::new("-") {
        return Ok(());
    }
    let bad = |why: &str| Error::io(path, std::io::Error::other(format!("{what}: {why}")));
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Err(bad("is a folder, not a file")),
        Ok(m) if m.is_file() && m.permissions().readonly() => return Err(bad("the file is read-only")),
        Ok(m) if !m.is_file() => return Ok(()),
        _ => {}
    }
    // Files are replaced by a rename in their folder (`write_atomically`):
    // the folder must take a new file. Tried by making one, since permission
    // bits do not tell (root ignores them; a read-only mount does not).
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad(&format!("{} is not a folder", dir.display()))),
        Err(_) => return Err(bad(&format!("the folder {} does not exist", dir.display()))),
    }
    let probe = dir.join(format!(".rowstage-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(bad(&format!("the folder {} cannot be written ({e})", dir.display()))),
    }
}

/// Refuses, before any work, an output that is the same file as an input or
/// as another output: by file identity (device and inode where the system
/// has them), not by spelling, so `./x` and `x`, or a hard link, are caught.
/// Each entry is (flag, path); `-` (stdout) and paths that do not exist yet
/// never coincide, and devices and FIFOs are written through, never refused.
pub fn check_distinct(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    /// A file as the system knows it: an existing file or folder by identity,
    /// one not written yet by its folder's real path and its name.
    #[derive(PartialEq)]
    enum Key {
        Existing(u64, u64, Option<std::path::PathBuf>),
        New(std::path::PathBuf),
    }
    let file = |p: &Path| {
        if p == Path::new("-") {
            return None;
        }
        match std::fs::metadata(p) {
            Ok(m) if !(m.is_file() || m.is_dir()) => None,
            #[cfg(unix)]
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                Some(Key::Existing(m.dev(), m.ino(), None))
            }
            #[cfg(not(unix))]
            Ok(_) => Some(Key::Existing(0, 0, std::fs::canonicalize(p).ok())),
            Err(_) => {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Some(Key::New(std::fs::canonicalize(dir).ok()?.join(p.file_name()?)))
            }
        }
    };
    for (k, (flag, out)) in outputs.iter().enumerate() {
        let Some(id) = file(out) else { continue };
        let others = outputs[..k].iter().map(|o| (o, "output")).chain(inputs.iter().map(|i| (i, "input")));
        for ((other_flag, other), kind) in others {
            if file(other).as_ref() == Some(&id) {
                return Err(Error::arg(
                    flag,
                    out.display().to_string(),
                    format!(
                        "is the same file as the {kind} of {other_flag} ({}); writing it would destroy that",
                        other.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Removes `dir/.{name}.tmp-PID` files that a killed rowstage left behind:
/// those whose process no longer runs (known where `/proc` lists processes;
/// elsewhere none is removed).
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    if !Path::new("/proc/self").exists() {
        return;
    }
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads a file written by [`save_tables`] as `kind`: the model, the second
/// tables if the file has them, and the config.
pub fn load_tables(path: &Path, kind: FileKind) -> Result<(Model, Option<Model>, serde_json::Value)> {
    // A model is a file: a device such as /dev/zero would be read forever.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::other("not a regular file (a model is a file `train --save` wrote)"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_tables(path, &bytes, kind)
}

/// [`load_tables`] of bytes already in memory; `path` only names the source
/// in errors.
pub fn parse_tables(path: &Path, bytes: &[u8], kind: FileKind) -> Result<(Model, Option<Model>, serde_json::Value)> {
    let bad = |reason: String| Error::BadModel { path: path.to_path_buf(), what: kind.what(), reason };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file or truncated ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().ok_or_else(|| bad("no metadata".into()))?;
    let get = |k: &str| meta.get(k).map(String::as_str).ok_or_else(|| bad(format!("metadata has no {k:?}")));
    if get("format")? != kind.tag() {
        let hint = match get("format")? {
            FORMAT_NAME => " (a saved model: give it to eval or recommend)",
            CHECKPOINT_NAME => " (a training checkpoint: give its directory to train `resume`)",
            _ => "",
        };
        return Err(bad(format!("format is {:?}, expected {:?}{hint}", get("format")?, kind.tag())));
    }
    if get("version")? != FORMAT_VERSION {
        return Err(bad(format!(
            "written by format version {}, this rowstage reads version {FORMAT_VERSION}",
            get("version")?
        )));
    }
    let tensor = |name: &str, dtype: Dtype| -> Result<TensorView<'_>> {
        let t = st.tensor(name).map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
        if t.dtype() != dtype {
            return Err(bad(format!("tensor {name:?} has dtype {:?}, expected {dtype:?}", t.dtype())));
        }
        Ok(t)
    };
    let (users, items) = (tensor("users", Dtype::F32)?, tensor("items", Dtype::F32)?);
    let (uids, iids) = (tensor("user_ids", Dtype::U8)?, tensor("item_ids", Dtype::U8)?);
    let fields = ["format", "version", "rank", "mean_bits", "min_rating_bits", "max_rating_bits", "config"];
    let meta_fields: Vec<(&str, &str)> = fields.iter().map(|k| Ok((*k, get(k)?))).collect::<Result<_>>()?;
    let second = match (st.tensor("best_users"), st.tensor("best_items")) {
        (Ok(_), Ok(_)) => Some((tensor("best_users", Dtype::F32)?, tensor("best_items", Dtype::F32)?)),
        _ => None,
    };
    let mut parts = vec![users.data(), items.data(), uids.data(), iids.data()];
    if let Some((bu, bi)) = &second {
        parts.push(bu.data());
        parts.push(bi.data());
    }
    let want = checksum(&parts, &meta_fields);
    let have = u32::from_str_radix(get("crc32")?, 16).map_err(|_| bad("crc32 is not hexadecimal".into()))?;
    if want != have {
        return Err(bad(format!("checksum mismatch (stored {have:08x}, computed {want:08x}): the file is corrupted")));
    }

    let num = |k: &str| -> Result<u32> { get(k)?.parse().map_err(|_| bad(format!("{k} is not a number"))) };
    let rank = num("rank")? as usize;
    if rank > super::MAX_RANK {
        return Err(bad(format!("its rank {rank} is above the largest, {}", super::MAX_RANK)));
    }
    let sub = super::row_stride(rank);
    // A checkpoint of a grid search holds several models side by side.
    let stride = users.shape().get(1).copied().unwrap_or(0);
    let copies = stride / sub;
    let mut tables = vec![&users, &items];
    if let Some((bu, bi)) = &second {
        tables.extend([bu, bi]);
    }
    if copies == 0
        || stride % sub != 0
        || (kind == FileKind::Model && copies != 1)
        || tables.iter().any(|t| t.shape().len() != 2 || t.shape()[1] != stride)
    {
        return Err(bad(format!("tables are not {sub} floats wide (or a multiple, in a checkpoint) for rank {rank}")));
    }
    if let Some((bu, bi)) = &second
        && (bu.shape() != users.shape() || bi.shape() != items.shape())
    {
        return Err(bad("best_users/best_items differ in shape from users/items".into()));
    }
    let floats = |t: &TensorView| -> Vec<f32> {
        t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let ids = |t: &TensorView, n: usize, what: &str| -> Result<IdMap> {
        let s = std::str::from_utf8(t.data()).map_err(|_| bad(format!("{what} ids are not UTF-8")))?;
        let names: Vec<String> = if n == 0 { Vec::new() } else { s.split('\n').map(str::to_string).collect() };
        if names.len() != n {
            return Err(bad(format!("{} {what} ids for {n} rows", names.len())));
        }
        Ok(IdMap::from_names(names))
    };
    let n_users = users.shape()[0];
    let n_items = items.shape()[0];
    let model = Model {
        rank,
        copies,
        stride,
        mean: f32::from_bits(num("mean_bits")?),
        min_rating: f32::from_bits(num("min_rating_bits")?),
        max_rating: f32::from_bits(num("max_rating_bits")?),
        users: floats(&users),
        items: floats(&items),
        user_ids: ids(&uids, n_users, "user")?,
        item_ids: ids(&iids, n_items, "item")?,
    };
    // A checksum guards the bytes, not their sense: a rating range that is
    // not finite or inverted, or a mean outside it, is a corrupt model.
    let (lo, hi, mean) = (model.min_rating, model.max_rating, model.mean);
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err(bad(format!("its rating range {lo}..{hi} is not a finite, ordered range")));
    }
    if !(lo..=hi).contains(&mean) {
        return Err(bad(format!("its mean rating {mean} lies outside its range {lo}..{hi}")));
    }
    if let Some(x) = model.users.iter().chain(&model.items).find(|x| !x.is_finite()) {
        return Err(bad(format!("its tables hold a non-finite value ({x})")));
    }
    // rowstage keeps the padding after each bias zero; a value there means
    // the rank does not describe the tables (a rank 6 read of rank 7's rows
    // would take a factor for the bias).
    let padding = |t: &[f32]| t.chunks_exact(sub).any(|row| row[rank + 1..].iter().any(|&x| x != 0.0));
    if padding(&model.users) || padding(&model.items) {
        return Err(bad(format!("its rows hold values past rank {rank}'s factors and bias: the rank is not theirs")));
    }
    for (side, m) in [("user", &model.user_ids), ("item", &model.item_ids)] {
        if !m.is_distinct() {
            return Err(bad(format!("its {side} ids repeat an id")));
        }
    }
    let second = second.map(|(bu, bi)| Model {
        users: floats(&bu),
        items: floats(&bi),
        user_ids: model.user_ids.clone(),
        item_ids: model.item_ids.clone(),
        rank: model.rank,
        copies: model.copies,
        stride: model.stride,
        mean: model.mean,
        min_rating: model.min_rating,
        max_rating: model.max_rating,
    });
    let config = serde_json::from_str(get("config")?).map_err(|e| bad(format!("config is not JSON: {e}")))?;
    Ok((model, second, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, SyntheticSpec, generate};
    use crate::model::HyperParams;

    fn model() -> Model {
        let spec = SyntheticSpec::parse("30,20,300", Some(1.0)).unwrap();
        let d = Dataset::split("s", generate(&spec, 1), 0.1, 1);
        Model::init(&d, &HyperParams { rank: 5, ..Default::default() }, 1)
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let m = model();
        save_model(&m, &serde_json::json!({"lr": 0.1}), &p).unwrap();
        let (back, cfg) = load_model(&p).unwrap();
        assert_eq!(back, m);
        assert_eq!(cfg["lr"], 0.1);
    }

    #[test]
    fn refuses_truncated_corrupted_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        save_model(&model(), &serde_json::json!({}), &p).unwrap();
        let good = std::fs::read(&p).unwrap();

        std::fs::write(&p, &good[..good.len() - 7]).unwrap();
        let e = load_model(&p).unwrap_err().to_string();
        assert!(e.contains("not a valid rowstage model"), "{e}");

        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 10] ^= 0x40;
        std::fs::write(&p, &flipped).unwrap();
        let e = load_model(&p).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");

        std::fs::write(&p, b"hello").unwrap();
        assert!(load_model(&p).unwrap_err().to_string().contains("not a valid rowstage model"));

        // Another version.
        let needle = b"\"version\":\"1\"";
        let at = good.windows(needle.len()).position(|w| w == needle).expect("version in header");
        let mut other = good.clone();
        other[at + needle.len() - 2] = b'9';
        std::fs::write(&p, &other).unwrap();
        let e = load_model(&p).unwrap_err().to_string();
        assert!(e.contains("format version 9"), "{e}");
    }

    #[test]
    fn refuses_a_model_whose_metadata_makes_no_sense() {
        // Saved with a valid checksum over nonsense: the checksum does not
        // make it a model.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let good = model();
        type Spoil = fn(&mut Model);
        let cases: [(&str, Spoil); 4] = [
            ("not a finite, ordered range", |m| (m.min_rating, m.max_rating) = (5.0, 1.0)),
            ("not a finite, ordered range", |m| m.max_rating = f32::NAN),
            ("outside its range", |m| m.mean = 99.0),
            ("non-finite value", |m| m.items[3] = f32::INFINITY),
        ];
        for (needle, spoil) in cases {
            let mut m = good.clone();
            spoil(&mut m);
            save_model(&m, &serde_json::json!({}), &p).unwrap();
            let e = load_model(&p).unwrap_err().to_string();
            assert!(e.contains("not a valid rowstage model") && e.contains(needle), "{needle}: {e}");
        }
    }

    /// A file whose checksum is right over tensors and metadata of any
    /// shape, dtype and text: the reader refuses or loads it, never panics
    /// (the fuzz test in tests/fuzz.rs damages valid files; this one signs
    /// nonsense, which only this module can).
    mod signed_nonsense {
        use super::*;
        use proptest::prelude::*;

        fn dtype() -> impl Strategy<Value = Dtype> {
            prop_oneof![6 => Just(Dtype::F32), 1 => Just(Dtype::U8), 1 => Just(Dtype::I32), 1 => Just(Dtype::F64)]
        }

        /// A tensor: dtype, shape (0 to 3 dimensions of up to 6) and bytes.
        fn tensor() -> impl Strategy<Value = (Dtype, Vec<usize>, Vec<u8>)> {
            (dtype(), prop::collection::vec(0usize..6, 0..3)).prop_flat_map(|(d, shape)| {
                let n = shape.iter().product::<usize>() * d.bitsize() / 8;
                (Just(d), Just(shape), prop::collection::vec(any::<u8>(), n))
            })
        }

        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => (0u32..12).prop_map(|x| x.to_string()),
                1 => any::<u32>().prop_map(|x| x.to_string()),
                1 => any::<u64>().prop_map(|x| x.to_string()),
                1 => Just("-1".to_string()),
                1 => "[a-z0-9.]{0,4}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2500),
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn signed_nonsense_is_refused_or_loaded_never_a_panic(
                tables in prop::collection::vec(tensor(), 4),
                best in prop::option::of(prop::collection::vec(tensor(), 2)),
                ids in prop::collection::vec(prop::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..12), 2),
                rank in number(),
                bits in prop::collection::vec(prop_oneof![any::<u32>().prop_map(|x| x.to_string()), number()], 3),
                kind in prop_oneof![Just(FileKind::Model), Just(FileKind::Checkpoint)],
            ) {
                // The id blobs as U8 tensors in place of two of the four.
                let mut tables = tables;
                for (t, blob) in tables[2..].iter_mut().zip(&ids) {
                    *t = (Dtype::U8, vec![blob.len()], blob.clone());
                }
                let names = ["users", "items", "user_ids", "item_ids", "best_users", "best_items"];
                let all: Vec<&(Dtype, Vec<usize>, Vec<u8>)> = tables.iter().chain(best.iter().flatten()).collect();
                let parts: Vec<&[u8]> = all.iter().map(|t| t.2.as_slice()).collect();
                let meta_fields: [(&str, &str); 7] = [
                    ("format", kind.tag()),
                    ("version", FORMAT_VERSION),
                    ("rank", &rank),
                    ("mean_bits", &bits[0]),
                    ("min_rating_bits", &bits[1]),
                    ("max_rating_bits", &bits[2]),
                    ("config", "{}"),
                ];
                let mut meta: HashMap<String, String> =
                    meta_fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                meta.insert("crc32".into(), format!("{:08x}", checksum(&parts, &meta_fields)));
                let views: Vec<(&str, TensorView<'_>)> = all
                    .iter()
                    .zip(names)
                    .map(|(t, name)| (name, TensorView::new(t.0, t.1.clone(), &t.2).expect("sized to its shape")))
                    .collect();
                let bytes = safetensors::serialize(views, Some(meta)).expect("serialises");
                if let Ok((m, second, _)) = parse_tables(Path::new("nonsense"), &bytes, kind) {
                    // What loads is a usable model.
                    prop_assert!(m.min_rating <= m.max_rating && m.mean.is_finite());
                    prop_assert_eq!(m.users.len(), m.n_users() * m.stride);
                    prop_assert_eq!(m.user_ids.len(), m.n_users());
                    prop_assert_eq!(m.item_ids.len(), m.n_items());
                    if let Some(b) = second {
                        prop_assert_eq!(b.users.len(), m.users.len());
                    }
                }
            }
        }
    }
}
