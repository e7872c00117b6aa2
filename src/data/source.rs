//! Where a run's ratings come from: a file (and a held-out file or a seeded
//! split), or the synthetic generator. The one description every command
//! that trains or replays a run loads its data from.

use std::path::{Path, PathBuf};

use super::{Dataset, Format, LoadOptions, Rating, RatingSet, SyntheticSpec, generate, load_ratings};
use crate::error::{Error, Result};

/// A run's data as asked for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DataSource {
    /// The ratings file; `None`: the synthetic generator.
    pub path: Option<PathBuf>,
    pub options: LoadOptions,
    /// A held-out ratings file; `None`: a seeded split of `test_fraction`.
    pub test: Option<PathBuf>,
    pub test_fraction: f64,
    /// What the generator draws where there is no file: its sizes and its
    /// law (`zipf`: `None` is MovieLens-shaped).
    pub synthetic: SyntheticSpec,
}

impl Default for DataSource {
    fn default() -> Self {
        DataSource {
            path: None,
            options: LoadOptions::default(),
            test: None,
            test_fraction: 0.1,
            synthetic: SyntheticSpec::DEFAULT,
        }
    }
}

/// A loaded dataset and what loading it skipped.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub dataset: Dataset,
    /// Malformed lines skipped (with `skip_bad_lines`), over both files.
    pub skipped: usize,
    /// One line per file that had lines skipped: where, and the first.
    pub notes: Vec<String>,
}

impl DataSource {
    /// Reads or generates the ratings and splits them, seeded by `seed`.
    pub fn load(&self, seed: u64) -> Result<Loaded> {
        self.load_with(seed, &mut |p| load_ratings(p, self.options))
    }

    /// [`DataSource::load`] with the files' ratings read by `read` (a
    /// front end holding their bytes in memory parses them with
    /// [`super::parse_ratings`]); `path` and `test` name them.
    pub fn load_with(
        &self,
        seed: u64,
        read: &mut dyn FnMut(&Path) -> Result<(RatingSet, super::LoadReport)>,
    ) -> Result<Loaded> {
        if !(0.0..1.0).contains(&self.test_fraction) {
            return Err(Error::arg(
                "`test_fraction`",
                self.test_fraction.to_string(),
                "must be at least 0 and below 1",
            ));
        }
        let (mut skipped, mut notes) = (0, Vec::new());
        let mut load = |p: &Path| -> Result<RatingSet> {
            let (set, rep) = read(p)?;
            if rep.skipped > 0 {
                notes.push(format!(
                    "skipped {} bad lines in {}; first: {}",
                    rep.skipped,
                    p.display(),
                    rep.first_skipped[0]
                ));
            }
            skipped += rep.skipped;
            Ok(set)
        };
        let (name, set) = match &self.path {
            Some(p) => (p.display().to_string(), load(p)?),
            None => {
                self.synthetic.check()?;
                // The ratings (several copies on the way: generated, split,
                // laid out) and the generator's per-row tables, asked of the
                // allocator first: a size past the machine is an error.
                let g = &self.synthetic;
                let bytes = (g.ratings as u64).saturating_mul(4 * std::mem::size_of::<Rating>() as u64)
                    + (g.users as u64 + g.items as u64).saturating_mul(32);
                let sizes = format!("{},{},{}", g.users, g.items, g.ratings);
                Error::ensure_memory(
                    bytes,
                    &format!("{} ratings of {} users and {} items", g.ratings, g.users, g.items),
                    "`synthetic`",
                    sizes,
                )?;
                (self.synthetic.name(), generate(&self.synthetic, seed))
            }
        };
        let dataset = match &self.test {
            Some(t) if self.path.as_deref().is_some_and(|p| same_file(p, t)) => {
                return Err(Error::arg(
                    "`test`",
                    t.display().to_string(),
                    "is the same file as `data`: the test ratings would be the training ratings",
                ));
            }
            Some(t) => Dataset::from_sets(&name, set, load(t)?),
            None => Dataset::split(&name, set, self.test_fraction, seed),
        };
        if dataset.train.is_empty() {
            return Err(Error::arg("`test_fraction`", self.test_fraction.to_string(), "leaves no training rating"));
        }
        Ok(Loaded { dataset, skipped, notes })
    }

    /// The source as the JSON report's config records it.
    pub fn describe(&self) -> SourceJson {
        SourceJson {
            data: self.path.as_ref().map(|p| p.display().to_string()),
            test: self.test.as_ref().map(|p| p.display().to_string()),
            test_fraction: self.test.is_none().then_some(self.test_fraction),
            format: self.options.format,
            zipf: self.synthetic.zipf,
        }
    }
}

/// [`DataSource::describe`]: what a report says of where its data came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceJson {
    pub data: Option<String>,
    pub test: Option<String>,
    pub test_fraction: Option<f64>,
    pub format: Format,
    pub zipf: Option<f64>,
}

/// Whether `a` and `b` name one file (through links, `./`, another
/// spelling); names of files that do not exist (a front end's in-memory
/// files) are compared as given.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        use std::os::unix::fs::MetadataExt;
        return (x.dev(), x.ino()) == (y.dev(), y.ino());
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_source_is_the_built_in_dataset_split_by_the_seed() {
        let a = DataSource::default().load(7).unwrap();
        let b = DataSource::default().load(7).unwrap();
        assert_eq!(a.dataset.train, b.dataset.train);
        assert_eq!(a.dataset.train.len() + a.dataset.test.len(), SyntheticSpec::DEFAULT.ratings);
        assert_eq!((a.skipped, a.notes.len()), (0, 0));
    }

    #[test]
    fn bad_fractions_and_laws_name_the_parameter() {
        for f in [-0.1, 1.0, f64::NAN] {
            let e = DataSource { test_fraction: f, ..Default::default() }.load(1).unwrap_err().to_string();
            assert!(e.contains("test_fraction"), "{e}");
        }
        let small = SyntheticSpec { users: 3, items: 3, ratings: 5, zipf: Some(-1.0) };
        let e = DataSource { synthetic: small, ..Default::default() }.load(1).unwrap_err();
        assert!(e.to_string().contains("zipf"), "{e}");
    }
}
