//! The data flags every command shares, and `rowstage split`.

use std::path::PathBuf;

use clap::Args;

use crate::Choice;
use crate::output::{Out, check_paths};
use rowstage::data::{self, Dataset, Format, HeaderMode, LoadOptions, SyntheticSpec};
use rowstage::error::{Error, Result};
use rowstage::model;

#[derive(Args, Clone)]
#[command(next_help_heading = "Data")]
pub(crate) struct DataArgs {
    /// Ratings file (MovieLens u.data / ratings.dat / ratings.csv, or user,item,rating[,timestamp] CSV/TSV).
    /// Without it, the built-in synthetic dataset is used.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Layout of the ratings files.
    #[arg(long, value_parser = Choice::<Format>::new(), default_value = "auto")]
    format: Format,
    /// Whether the first line of a CSV/TSV file is a header.
    #[arg(long, value_parser = Choice::<HeaderMode>::new(), default_value = "auto")]
    header: HeaderMode,
    /// Skip malformed lines (and report how many) instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Held-out ratings file; without it a seeded --test-fraction split is made.
    #[arg(long, value_name = "PATH")]
    test: Option<PathBuf>,
    /// Share of the ratings held out for testing when --test is not given.
    #[arg(long, default_value_t = 0.1, value_name = "F", conflicts_with = "test")]
    test_fraction: f64,
    /// Generate USERS,ITEMS,RATINGS synthetic ratings instead of reading --data
    /// (default when no --data: 4000,2000,200000, popularity shaped like
    /// MovieLens 100K's).
    #[arg(long, value_name = "USERS,ITEMS,RATINGS", conflicts_with = "data")]
    synthetic: Option<String>,
    /// Draw the synthetic users and items from a pure Zipf law of this
    /// exponent instead (0 = uniform; 1.05 was the earlier default).
    #[arg(long, value_name = "S", conflicts_with = "data")]
    zipf: Option<f64>,
}

pub(crate) fn load_opts(format: Format, header: HeaderMode, skip_bad_lines: bool) -> LoadOptions {
    LoadOptions { format, header, skip_bad_lines }
}

impl DataArgs {
    /// The data flags as the library's description of a run's data.
    pub(crate) fn source(&self) -> Result<data::DataSource> {
        Ok(data::DataSource {
            path: self.data.clone(),
            options: load_opts(self.format, self.header, self.skip_bad_lines),
            test: self.test.clone(),
            test_fraction: self.test_fraction,
            synthetic: match self.synthetic.as_deref() {
                Some(s) => SyntheticSpec::parse(s, self.zipf)?,
                None => SyntheticSpec { zipf: self.zipf, ..SyntheticSpec::DEFAULT },
            },
        })
    }
}

/// Loads or generates the dataset `source` describes, telling `out` what was
/// skipped; returns it and the lines skipped.
pub(crate) fn load_dataset(source: &data::DataSource, seed: u64, out: &Out) -> Result<(Dataset, usize)> {
    let loaded = source.load(seed)?;
    for n in &loaded.notes {
        out.line(n);
    }
    Ok((loaded.dataset, loaded.skipped))
}

#[derive(Args)]
pub(crate) struct SplitArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Seed of the split (the same as train's for the same flags).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory to write train.tsv and test.tsv into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub(crate) fn cmd_split(a: SplitArgs) -> Result<()> {
    let out = Out { to_stderr: false };
    let source = a.data.source()?;
    let inputs = [("--data", source.path.as_deref()), ("--test", source.test.as_deref())];
    // The folder first (it is made for the files' checks), then its files.
    check_paths(&[], &[("--out", Some(&a.out))], &inputs)?;
    let made = !a.out.exists();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let split = || -> Result<()> {
        let files = [a.out.join("train.tsv"), a.out.join("test.tsv")];
        check_paths(&[("--out", Some(&files[0])), ("--out", Some(&files[1]))], &[], &inputs)?;
        let (data, _) = load_dataset(&source, a.seed, &out)?;
        let texts = [data.to_tsv(false)?, data.to_tsv(true)?];
        for ((name, ratings), text) in [("train.tsv", &data.train), ("test.tsv", &data.test)].into_iter().zip(texts) {
            let path = a.out.join(name);
            model::write_atomically(&path, text.as_bytes())?;
            out.line(&format!("wrote {} ({} ratings)", path.display(), ratings.len()));
        }
        Ok(())
    };
    // A folder made for a split that then failed (a bad input) is not left
    // behind; one that held files already is left as it was.
    split().inspect_err(|_| {
        if made {
            let _ = std::fs::remove_dir(&a.out);
        }
    })
}
