//! A run as asked for ([`RunRequest`]: where its data comes from and its
//! settings, serialisable) and the token that stops it ([`CancelToken`]).
//! The library's entry, [`crate::session::Run`], is built from these.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::run::RunSpec;
use crate::data::DataSource;
use crate::error::{Error, Result};
/// A run as asked for, whole: where its data comes from and its settings.
/// Serialisable: every report records it (`request`), and a run built from
/// it trains the same model (`rowstage train --config report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    pub source: DataSource,
    pub spec: RunSpec,
}

/// The most bytes read from a configuration file: a report of thousands of
/// epochs is a few MiB.
const MAX_CONFIG_BYTES: u64 = 64 << 20;

impl RunRequest {
    /// Reads the request from `path`: a report written by `train --json`
    /// (its `request`) or a file holding a request alone. An error names the
    /// file and what is wrong with it.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::arg("`config`", path.display().to_string(), reason);
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).map_err(|e| Error::io(path, e))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(bad(format!("larger than {} MiB: not a report or a run request", MAX_CONFIG_BYTES >> 20)));
        }
        let value: serde_json::Value =
            serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| bad(format!("not JSON: {e}")))?;
        let request = value.get("request").cloned().unwrap_or(value);
        serde_json::from_value(request).map_err(|e| {
            bad(format!("not a report of `train --json` or a run request ({{\"source\", \"spec\"}}): {e}"))
        })
    }
}

/// Stops a [`Run`] at the next part boundary when cancelled, from any
/// thread (a signal handler, a browser's Stop button); the run then ends
/// with its host tables whole and `complete: false`.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The flag itself, for the engine's loops.
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SyntheticSpec;
    use crate::model::HyperParams;

    fn source() -> DataSource {
        DataSource {
            synthetic: SyntheticSpec { users: 90, items: 70, ratings: 3001, zipf: None },
            ..Default::default()
        }
    }

    fn spec(epochs: usize) -> RunSpec {
        RunSpec { hp: HyperParams { rank: 5, ..HyperParams::default() }, epochs, seed: 2, ..RunSpec::default() }
    }

    #[test]
    fn a_request_reads_back_from_a_report_or_alone_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let request = RunRequest { source: source(), spec: spec(3) };
        let report = serde_json::json!({"dataset": {}, "request": request});
        let (a, b) = (dir.path().join("report.json"), dir.path().join("request.json"));
        std::fs::write(&a, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        std::fs::write(&b, serde_json::to_string(&request).unwrap()).unwrap();
        assert_eq!(RunRequest::read(&a).unwrap(), request);
        assert_eq!(RunRequest::read(&b).unwrap(), request);
        // Fields left out take the defaults.
        std::fs::write(&b, r#"{"source": {}, "spec": {"epochs": 2}}"#).unwrap();
        let partial = RunRequest::read(&b).unwrap();
        assert_eq!((partial.spec.epochs, partial.spec.hp), (2, RunSpec::default().hp));
        for bad in ["{", "[1, 2]", r#"{"spec": {"epochs": "many"}, "source": {}}"#] {
            std::fs::write(&b, bad).unwrap();
            let e = RunRequest::read(&b).unwrap_err().to_string();
            assert!(e.contains("request.json") && e.contains("`config`"), "{bad}: {e}");
        }
    }
}
