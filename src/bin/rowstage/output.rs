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

/// Whether stdout (fd 1) and stderr (fd 2) were closed when the process
/// started ([`guard_closed_stdio`]).
static CLOSED: [std::sync::atomic::AtomicBool; 2] =
    [std::sync::atomic::AtomicBool::new(false), std::sync::atomic::AtomicBool::new(false)];

fn closed(fd: usize) -> bool {
    CLOSED[fd - 1].load(std::sync::atomic::Ordering::Relaxed)
}

/// Finds stdout or stderr closed at start (`>&-`). Rust's runtime puts
/// /dev/null, opened read-write, in the place of a standard descriptor
/// closed at start, and its streams then take every write silently; a
/// shell's `>/dev/null` opens it write-only. So /dev/null held read-write
/// on fd 1 or 2 is taken as a stream closed at start, and a write there is
/// refused ([`say_line`], [`write_output`], [`err_line`]): a report asked of
/// a closed stdout is an error, not a success.
pub(crate) fn guard_closed_stdio() {
    #[cfg(unix)]
    for fd in [1, 2] {
        // SAFETY: fstat, stat and fcntl on a descriptor and a path this
        // process owns; the structs are plain data.
        unsafe {
            let (mut st, mut null) = (std::mem::zeroed::<libc::stat>(), std::mem::zeroed::<libc::stat>());
            let is_null = libc::fstat(fd, &mut st) == 0
                && libc::stat(c"/dev/null".as_ptr(), &mut null) == 0
                && (st.st_mode & libc::S_IFMT) == libc::S_IFCHR
                && st.st_rdev == null.st_rdev;
            let read_write = libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE == libc::O_RDWR;
            if is_null && read_write {
                CLOSED[fd as usize - 1].store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// This process's MPI rank: ranks past 0 print only their errors, named
/// by rank, so that one run prints one output.
static RANK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn set_rank(rank: usize) {
    RANK.store(rank, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this process writes the run's output (rank 0, or no MPI).
pub(crate) fn speaks() -> bool {
    RANK.load(std::sync::atomic::Ordering::Relaxed) == 0
}

pub(crate) fn say_line(s: &str) {
    if !speaks() {
        return;
    }
    if closed(1) {
        err_line("error: writing to <stdout>: it is closed");
        std::process::exit(2);
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{s}").and_then(|_| out.flush()) {
        err_line(&format!("error: writing to <stdout>: {e}"));
        std::process::exit(2);
    }
}

/// `eprintln!` that does not panic: a stderr that cannot be written (closed,
/// or a full disk) ends the run with exit 2, as a failed stdout does; a
/// closed pipe ends it by SIGPIPE.
macro_rules! warn {
    ($($t:tt)*) => { $crate::output::err_line(&format!($($t)*)) };
}

pub(crate) fn err_line(s: &str) {
    if !speaks() {
        if !s.starts_with("error") {
            return;
        }
        let rank = RANK.load(std::sync::atomic::Ordering::Relaxed);
        return err_line_of(&format!("rank {rank}: {s}"));
    }
    err_line_of(s)
}

fn err_line_of(s: &str) {
    if closed(2) {
        std::process::exit(2);
    }
    // One write a line: stderr is unbuffered, and `writeln!` writes the
    // newline apart, between which mpirun interleaves other ranks' lines.
    let mut err = std::io::stderr().lock();
    if err.write_all(format!("{s}\n").as_bytes()).and_then(|_| err.flush()).is_err() {
        std::process::exit(2);
    }
}

/// The library names its parameters in backticks (`` `device_memory` ``);
/// the command line says them as its flags (`--device-memory`), as
/// [`rowstage::error::spell_params`] spells them.
pub(crate) fn flags(text: &str) -> String {
    rowstage::error::spell_params(text, "--")
}

/// Where human-readable output goes: stderr when stdout carries JSON.
pub(crate) struct Out {
    pub(crate) to_stderr: bool,
}

impl Out {
    pub(crate) fn line(&self, s: &str) {
        let s = &flags(s);
        if self.to_stderr {
            err_line(s);
        } else {
            say_line(s);
        }
    }
}

/// Refuses, before any work, an output that cannot be written (a missing or
/// read-only folder, a read-only file, a folder where a file goes), a
/// folder output that is a file, and any output that is an input or another
/// output (by file identity). `None` entries are flags not given; `-` is
/// stdout.
pub(crate) fn check_paths<'p>(
    files: &[(&'static str, Option<&'p Path>)],
    folders: &[(&'static str, Option<&'p Path>)],
    inputs: &[(&'static str, Option<&'p Path>)],
) -> Result<()> {
    fn given<'p>(pairs: &[(&'static str, Option<&'p Path>)]) -> Vec<(&'static str, &'p Path)> {
        pairs.iter().filter_map(|&(f, p)| Some((f, p?))).collect()
    }
    let (outs, dirs, ins) = (given(files), given(folders), given(inputs));
    if let Some((flag, _)) = outs.iter().find(|(_, p)| *p == Path::new("-")).filter(|_| closed(1)) {
        return Err(Error::arg(flag, "-", "stdout is closed"));
    }
    for &(flag, path) in &outs {
        model::check_output(flag, path)?;
    }
    for &(flag, dir) in &dirs {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::arg(flag, dir.display().to_string(), "is a file, not a folder"));
        }
    }
    if outs.iter().filter(|(_, p)| *p == Path::new("-")).count() > 1 {
        return Err(Error::arg(
            outs.iter().rfind(|(_, p)| *p == Path::new("-")).map_or("", |o| o.0),
            "-",
            "only one output can go to stdout",
        ));
    }
    let all: Vec<_> = outs.into_iter().chain(dirs).collect();
    model::check_distinct(&all, &ins)
}

pub(crate) fn write_output(path: &Path, text: &str) -> Result<()> {
    if !speaks() {
        return Ok(());
    }
    if path == Path::new("-") {
        if closed(1) {
            return Err(Error::io("<stdout>", std::io::Error::other("it is closed")));
        }
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
        // What the user wrote stays as written: quoted values and lines
        // (escaped quotes included), and names inside a word.
        assert_eq!(flags("unknown user id \"`user`\" for `user`"), "unknown user id \"`user`\" for --user");
        assert_eq!(flags(r#"bad line: "a\"`lr`" near `lr`"#), r#"bad line: "a\"`lr`" near --lr"#);
        assert_eq!(flags("data: a`lr`b/x.tsv, `lr`."), "data: a`lr`b/x.tsv, --lr.");
        assert_eq!(flags("é `lr` ü"), "é --lr ü");
    }
}
