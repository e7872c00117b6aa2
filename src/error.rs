//! One error type for the whole crate, in the style of candle: every variant
//! carries what failed and with which sizes or values, so that the message alone
//! tells a user what to change.

use std::path::PathBuf;

/// Everything that can go wrong in rowstage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A line of a ratings file could not be parsed.
    #[error("{path}:{line}: {reason}: {text:?}")]
    Parse { path: PathBuf, line: usize, reason: String, text: String },

    /// A ratings file holds no usable rating.
    #[error("{path}: {reason}")]
    EmptyData { path: PathBuf, reason: String },

    /// A command-line value (flag, budget, list) is malformed or out of range.
    #[error("invalid value {value:?} for {flag}: {reason}")]
    InvalidArg { flag: String, value: String, reason: String },

    /// No wgpu adapter matches the request.
    #[error("no GPU adapter found for {requested}: {hint}")]
    NoAdapter { requested: String, hint: String },

    /// The backend asked for has no adapter on this machine, while others
    /// do: a choice to change, not a driver to install.
    #[error("`backend` {backend} has no adapter on this machine{platform}; it has {available}")]
    BackendMissing { backend: String, platform: String, available: String },

    /// The device-memory budget is larger than the adapter allows.
    #[error(
        "device memory budget {budget} bytes is larger than adapter {adapter:?} allows: {limit_name} = {limit} bytes; use `device_memory` {limit} or less"
    )]
    BudgetTooLarge { budget: u64, adapter: String, limit_name: &'static str, limit: u64 },

    /// The device-memory budget cannot hold the rows one step may touch.
    /// `step` names the step ("a batch of 256 ratings"), `fix` the other way
    /// out (", or use a smaller `batch`"; empty where there is none).
    #[error(
        "device memory budget of {budget} usable bytes (the budget rounded down to whole 4-byte words) holds {slots} row slots of {row_bytes} bytes, but {step} needs up to {needed} slots; the smallest budget that works is `device_memory` {min_bytes} ({min_human}){fix}"
    )]
    BudgetTooSmall {
        budget: u64,
        slots: u64,
        row_bytes: u64,
        step: String,
        fix: &'static str,
        needed: u64,
        min_bytes: u64,
        min_human: String,
    },

    /// A wgpu call failed (device lost, out of memory, validation).
    #[error("GPU error on {adapter:?}: {reason}")]
    Gpu { adapter: String, reason: String },

    /// Another MPI rank failed the run: it stopped answering, or it died.
    #[error("MPI rank(s) {ranks} {reason}")]
    Peer { ranks: String, reason: String },

    /// A saved model or checkpoint is unreadable, truncated, corrupted or
    /// from another version.
    #[error("{path}: not a valid rowstage {what}: {reason}")]
    BadModel { path: PathBuf, what: &'static str, reason: String },

    /// A checkpoint does not belong to the run that asks to resume from it.
    #[error("{path}: cannot resume: the checkpoint was made with {field} = {saved}, this run has {field} = {now}")]
    ResumeMismatch { path: PathBuf, field: String, saved: String, now: String },

    /// The run was stopped by Ctrl-C (SIGINT) after writing what it had.
    #[error("interrupted (the report says \"complete\": false)")]
    Interrupted,
    #[error(
        "training diverged at epoch {epoch}: train RMSE {train_rmse}, test RMSE {test_rmse}; lower `lr`, `reg`, `bias_reg` or `init_std`{also}, or check the ratings' scale (the report says \"complete\": false; no model saved)"
    )]
    Diverged { epoch: usize, train_rmse: f64, test_rmse: f64, also: String },

    /// A lookup by external id failed.
    #[error("unknown {kind} id {id:?} (not in the model's training data)")]
    UnknownId { kind: &'static str, id: String },

    /// A sweep (`simulate`, `bench`) in which no configuration could run.
    #[error("nothing measured: every {what} was skipped; the first: {reason}")]
    NothingMeasured { what: &'static str, reason: String },
}

/// `text` (a message of the library's) with its backticked parameter names
/// (`` `device_memory` ``) spelt as a front end names them: `prefix` and
/// the name with dashes (`--device-memory` on the command line,
/// `device-memory` in the browser's query). Backticked text that is not a
/// parameter name (`` `rowstage devices` ``) stays, and so does what the
/// user wrote: a quoted value (`"…"`, as messages quote ids, values and
/// lines) or a name inside a word (a path `` a`lr`b ``).
pub fn spell_params(text: &str, prefix: &str) -> String {
    spell_params_with(text, prefix, "-")
}

/// [`spell_params`] with the words of a name joined by `join` (`_` for
/// Python's keyword arguments, `device_memory`).
pub fn spell_params_with(text: &str, prefix: &str, join: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let (mut i, mut quoted) = (0, false);
    let char_at = |i: usize| text[i..].chars().next().map_or(1, char::len_utf8);
    while i < b.len() {
        match b[i] {
            // An escaped character inside quotes is the user's, whatever it is.
            b'\\' if quoted && i + 1 < b.len() => {
                let n = 1 + char_at(i + 1);
                out.push_str(&text[i..i + n]);
                i += n;
                continue;
            }
            b'"' => quoted = !quoted,
            b'`' if !quoted => {
                let word_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
                if let Some(len) = text[i + 1..].find('`') {
                    let name = &text[i + 1..i + 1 + len];
                    let end = i + len + 2;
                    let word_after = b.get(end).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
                    if !word_before
                        && !word_after
                        && name.starts_with(|c: char| c.is_ascii_lowercase())
                        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    {
                        out.push_str(prefix);
                        out.push_str(&name.replace('_', join));
                        i = end;
                        continue;
                    }
                }
            }
            _ => {}
        }
        let n = char_at(i);
        out.push_str(&text[i..i + n]);
        i += n;
    }
    out
}

impl Error {
    /// Shorthand for an [`Error::Io`] at `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Shorthand for an [`Error::InvalidArg`]. The library names a
    /// parameter in backticks (`` "`device_memory`" ``), as its messages do
    /// everywhere; the command line shows it as its flag (`--device-memory`).
    pub fn arg(flag: &str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArg { flag: flag.to_string(), value: value.into(), reason: reason.into() }
    }

    /// Asks the allocator for `bytes` before they are needed, so that a size
    /// past the machine is an error naming `what` and the parameter that
    /// sized it (`param`, `value`), not an abort.
    pub fn ensure_memory(bytes: u64, what: &str, param: &str, value: impl Into<String>) -> Result<()> {
        let mut probe: Vec<u8> = Vec::new();
        match usize::try_from(bytes).ok().map(|b| probe.try_reserve_exact(b)) {
            Some(Ok(())) => Ok(()),
            _ => Err(Error::arg(
                param,
                value,
                format!("{what} need about {}, more than this machine gives", crate::units::human_bytes(bytes)),
            )),
        }
    }

    /// A [`Error::BudgetTooSmall`] with another way out (`fix`, as its
    /// field); any other error as it is.
    pub fn with_fix(self, fix: &'static str) -> Self {
        match self {
            Error::BudgetTooSmall { budget, slots, row_bytes, step, needed, min_bytes, min_human, .. } => {
                Error::BudgetTooSmall { budget, slots, row_bytes, step, fix, needed, min_bytes, min_human }
            }
            e => e,
        }
    }

    /// The process exit code for this error: 2 for bad input (files, flags,
    /// budgets, ids), 1 for failures at run time (GPU, I/O while writing).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Gpu { .. } | Error::NoAdapter { .. } | Error::Diverged { .. } | Error::Peer { .. } => 1,
            // 128 + SIGINT, as shells report a process ended by Ctrl-C.
            Error::Interrupted => 130,
            Error::Io { .. } => 2,
            _ => 2,
        }
    }
}

/// Result with rowstage's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::{spell_params, spell_params_with};

    #[test]
    fn parameter_names_are_spelt_as_the_front_end_asks() {
        // The browser's query names (the command line's flags are tested
        // with the binary).
        assert_eq!(spell_params("use a larger `device_memory` or `lr`", ""), "use a larger device-memory or lr");
        assert_eq!(spell_params("run `rowstage devices`", ""), "run `rowstage devices`");
        assert_eq!(spell_params_with("a larger `device_memory`", "", "_"), "a larger device_memory");
        // An escape inside quotes before a character of several bytes.
        assert_eq!(spell_params("id \"a\\é`lr`\" for `lr`", "--"), "id \"a\\é`lr`\" for --lr");
    }
}
