//! How the command line writes: stdout that neither panics nor hides a
//! failed write, text beside JSON on stdout, the library's parameter names
//! said as flags, and files written whole.

use std::io::Write;
use std::path::Path;

use rowstage::error::{Error, Result};
use rowstage::model;

/// `println!` that neither panics nor hides a failed write: a closed pipe
/// ends the process by SIGPIPE (restored in `main`), the conventional quiet
/// exit; any other failure (a full disk) is an error naming stdout, exit 2.
macro_rules! say {
    ($($t:tt)*) => { $crate::output::say_line(&format!($($t)*)) };
}

pub(crate) fn say_line(s: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{s}").and_then(|_| out.flush()) {
        eprintln!("error: writing to <stdout>: {e}");
        std::process::exit(2);
    }
}

/// The library names its parameters in backticks (`` `device_memory` ``);
/// the command line says them as its flags (`--device-memory`). Backticked
/// text that is not a parameter name (`` `rowstage devices` ``) stays.
pub(crate) fn flags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('`') {
        let Some(len) = rest[open + 1..].find('`') else { break };
        let name = &rest[open + 1..open + 1 + len];
        out.push_str(&rest[..open]);
        if name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            out.push_str("--");
            out.push_str(&name.replace('_', "-"));
        } else {
            out.push_str(&rest[open..open + len + 2]);
        }
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Where human-readable output goes: stderr when stdout carries JSON.
pub(crate) struct Out {
    pub(crate) to_stderr: bool,
}

impl Out {
    pub(crate) fn line(&self, s: &str) {
        let s = &flags(s);
        if self.to_stderr {
            eprintln!("{s}");
        } else {
            say_line(s);
        }
    }
}

/// Refuses, before any work, an output that cannot be written (a missing or
/// read-only folder, a read-only file, a folder where a file goes) or that
/// is an input or another output (by file identity). `None` entries are
/// flags not given; `-` is stdout.
pub(crate) fn check_paths<'p>(
    outputs: &[(&'static str, Option<&'p Path>)],
    inputs: &[(&'static str, Option<&'p Path>)],
) -> Result<()> {
    fn given<'p>(pairs: &[(&'static str, Option<&'p Path>)]) -> Vec<(&'static str, &'p Path)> {
        pairs.iter().filter_map(|&(f, p)| Some((f, p?))).collect()
    }
    let (outs, ins) = (given(outputs), given(inputs));
    for &(flag, path) in &outs {
        model::check_output(flag, path)?;
    }
    if outs.iter().filter(|(_, p)| *p == Path::new("-")).count() > 1 {
        return Err(Error::arg(outs.iter().rfind(|(_, p)| *p == Path::new("-")).map_or("", |o| o.0), "-", "only one output can go to stdout"));
    }
    model::check_distinct(&outs, &ins)
}

pub(crate) fn write_output(path: &Path, text: &str) -> Result<()> {
    if path == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes()).and_then(|_| stdout.write_all(b"\n")).map_err(|e| Error::io("<stdout>", e))
    } else {
        model::write_atomically(path, format!("{text}\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_librarys_parameter_names_become_flags() {
        assert_eq!(
            flags("use a larger `device_memory` or `order` blocked:BINS"),
            "use a larger --device-memory or --order blocked:BINS"
        );
        assert_eq!(flags("invalid value \"x\" for `lr`: no"), "invalid value \"x\" for --lr: no");
        assert_eq!(
            flags("run `rowstage devices`, `Foo` stays, an odd ` quote"),
            "run `rowstage devices`, `Foo` stays, an odd ` quote"
        );
        assert_eq!(flags("no backticks"), "no backticks");
    }
}
