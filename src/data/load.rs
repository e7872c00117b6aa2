//! Ratings file loaders: MovieLens `u.data`, `ratings.dat`, `ratings.csv`, and
//! generic `user,item,rating[,timestamp]` CSV/TSV with or without a header.
//!
//! Every malformed line is an error naming the file, the 1-based line number
//! and the offending text, unless `skip_bad_lines` is set, in which case it is
//! counted and the first few are kept for the report.

use std::path::Path;
use std::str::FromStr;

use super::{IdMap, Rating, RatingSet};
use crate::error::{Error, Result};

/// The layout of a ratings file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Auto,
    Movielens100k,
    MovielensDat,
    MovielensCsv,
    Csv,
    Tsv,
}

impl crate::Named for Format {
    const ALL: &'static [Self] =
        &[Format::Auto, Format::Movielens100k, Format::MovielensDat, Format::MovielensCsv, Format::Csv, Format::Tsv];
    fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Movielens100k => "movielens100k",
            Format::MovielensDat => "movielens-dat",
            Format::MovielensCsv => "movielens-csv",
            Format::Csv => "csv",
            Format::Tsv => "tsv",
        }
    }
    fn about(self) -> &'static str {
        match self {
            Format::Auto => "Detect from the file name and first line",
            Format::Movielens100k => "MovieLens 100K `u.data`: `user<TAB>item<TAB>rating<TAB>timestamp`, no header",
            Format::MovielensDat => "MovieLens 1M/10M `ratings.dat`: `user::item::rating::timestamp`",
            Format::MovielensCsv => "MovieLens latest `ratings.csv`: header `userId,movieId,rating,timestamp`",
            Format::Csv => "Comma-separated `user,item,rating[,timestamp]`",
            Format::Tsv => "Tab-separated `user<TAB>item<TAB>rating[<TAB>timestamp]`",
        }
    }
}

/// Whether the first line is a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderMode {
    Auto,
    Yes,
    No,
}

impl crate::Named for HeaderMode {
    const ALL: &'static [Self] = &[HeaderMode::Auto, HeaderMode::Yes, HeaderMode::No];
    fn name(self) -> &'static str {
        match self {
            HeaderMode::Auto => "auto",
            HeaderMode::Yes => "yes",
            HeaderMode::No => "no",
        }
    }
    fn about(self) -> &'static str {
        match self {
            HeaderMode::Auto => "A header if its rating column holds no digit (e.g. `rating`)",
            HeaderMode::Yes => "The first line is a header",
            HeaderMode::No => "The first line is a rating",
        }
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        <Self as crate::Named>::from_name(s)
            .ok_or_else(|| Error::arg("`format`", s, format!("expected one of {}", <Self as crate::Named>::names())))
    }
}

/// How to read a ratings file.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LoadOptions {
    pub format: Format,
    pub header: HeaderMode,
    pub skip_bad_lines: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { format: Format::Auto, header: HeaderMode::Auto, skip_bad_lines: false }
    }
}

/// What a load found besides the ratings.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The format used (after detection).
    pub format: Option<Format>,
    /// Lines skipped under `skip_bad_lines`.
    pub skipped: usize,
    /// The first few skipped lines' errors, for the user.
    pub first_skipped: Vec<String>,
}

#[derive(Clone, Copy)]
enum Sep {
    Char(u8),
    DoubleColon,
}

/// Reads `path` into a [`RatingSet`], a chunk at a time: the file's text is
/// never held whole, only its ratings (a line longer than
/// [`MAX_LINE_BYTES`] is refused, so that a device such as `/dev/zero`, or
/// a file of another kind, is stopped early).
pub fn load_ratings(path: &Path, opts: LoadOptions) -> Result<(RatingSet, LoadReport)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?;
    if size.is_dir() {
        return Err(Error::io(path, std::io::Error::other("a directory, not a file")));
    }
    let mut parser = Parser::new(path, opts, size.len() as usize);
    // Past half the memory available, the ratings read so far are refused
    // by name rather than read until memory runs out.
    let limit = available_memory().map_or(u64::MAX, |m| m / 2);
    let (mut pending, mut chunk) = (Vec::new(), vec![0u8; 1 << 16]);
    loop {
        let n = file.read(&mut chunk).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        // Whole lines straight from the chunk; a line cut by its end waits
        // in `pending` for the rest.
        let mut rest = &chunk[..n];
        while let Some(k) = memchr::memchr(b'\n', rest) {
            if pending.is_empty() {
                parser.line(&rest[..k])?;
            } else {
                pending.extend_from_slice(&rest[..k]);
                parser.line(&pending)?;
                pending.clear();
            }
            rest = &rest[k + 1..];
        }
        pending.extend_from_slice(rest);
        if pending.len() > MAX_LINE_BYTES {
            return Err(parser.too_long());
        }
        if parser.held_bytes() > limit {
            return Err(Error::io(
                path,
                std::io::Error::other(format!(
                    "its ratings would take more than half the memory available ({} MiB)",
                    parser.held_bytes() >> 20
                )),
            ));
        }
    }
    parser.line(&pending)?;
    parser.finish()
}

/// The longest line a ratings file may have: a rating is a few dozen bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Bytes of memory available (Linux: `MemAvailable`), where known.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses ratings already in memory; `path` only names the source in errors.
pub fn parse_ratings(path: &Path, bytes: &[u8], opts: LoadOptions) -> Result<(RatingSet, LoadReport)> {
    let mut parser = Parser::new(path, opts, bytes.len());
    for line in bytes.split(|&b| b == b'\n') {
        parser.line(line)?;
    }
    parser.finish()
}

/// Ratings read line by line: the format is settled at the first line that
/// is not blank (detected from it and the file's name, unless given), and a
/// header is looked for there.
struct Parser<'p> {
    path: &'p Path,
    opts: LoadOptions,
    /// The separator, the header rule and the format, once settled.
    layout: Option<(Sep, HeaderMode, Format)>,
    /// Lines seen, blank ones included: the next line's number less one.
    lines: usize,
    users: IdMap,
    items: IdMap,
    ratings: Vec<Rating>,
    report: LoadReport,
}

impl<'p> Parser<'p> {
    /// `size`: the text's length in bytes, to reserve for its ratings.
    fn new(path: &'p Path, opts: LoadOptions, size: usize) -> Self {
        Parser {
            path,
            opts,
            layout: None,
            lines: 0,
            users: IdMap::new(),
            items: IdMap::new(),
            ratings: Vec::with_capacity(size / 24),
            report: LoadReport::default(),
        }
    }

    /// Bytes held for ratings so far (reserved from the file's size, then
    /// grown as read).
    fn held_bytes(&self) -> u64 {
        (self.ratings.capacity() * std::mem::size_of::<Rating>()) as u64
    }

    /// The line being read is past [`MAX_LINE_BYTES`].
    fn too_long(&self) -> Error {
        Error::Parse {
            path: self.path.to_path_buf(),
            line: self.lines + 1,
            reason: format!("longer than {} KiB: not a ratings file", MAX_LINE_BYTES >> 10),
            text: String::new(),
        }
    }

    /// Reads the next line (without its `\n`).
    fn line(&mut self, raw: &[u8]) -> Result<()> {
        // A UTF-8 byte-order mark (spreadsheets write one) is no part of an
        // id.
        let raw = if self.lines == 0 { raw.strip_prefix(BOM).unwrap_or(raw) } else { raw };
        self.lines += 1;
        let raw = trim_cr(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let bad = |reason: String| Error::Parse {
            path: self.path.to_path_buf(),
            line: self.lines,
            reason,
            text: clipped(&String::from_utf8_lossy(raw), 200),
        };
        let is_first = self.layout.is_none();
        let (sep, header, format) = *self.layout.get_or_insert_with(|| {
            let format = match self.opts.format {
                Format::Auto => detect(self.path, &String::from_utf8_lossy(raw)),
                f => f,
            };
            let (sep, header) = match format {
                Format::Movielens100k => (Sep::Char(b'\t'), HeaderMode::No),
                Format::MovielensDat => (Sep::DoubleColon, HeaderMode::No),
                Format::MovielensCsv => (Sep::Char(b','), HeaderMode::Yes),
                Format::Csv => (Sep::Char(b','), self.opts.header),
                Format::Tsv => (Sep::Char(b'\t'), self.opts.header),
                Format::Auto => unreachable!("detect never returns Auto"),
            };
            self.report.format = Some(format);
            (sep, header, format)
        });
        let (users, items) = (&mut self.users, &mut self.items);
        let parsed = std::str::from_utf8(raw).map_err(|e| bad(format!("not valid UTF-8 ({e})"))).and_then(|line| {
            with_fields(line, sep, |fields, count| {
                if is_first && is_header(header, fields) {
                    return Ok(None);
                }
                let (u, i, v) = parse_fields(fields, count, format)?;
                Ok(Some(Rating { user: users.intern(u), item: items.intern(i), value: v }))
            })
            .map_err(|reason| match self.opts.format {
                // The layout was the user's word, not the file's: say so.
                Format::Auto => bad(reason),
                f => bad(format!("{reason} (read as `format` {})", crate::Named::name(f))),
            })
        });
        match parsed {
            Ok(Some(r)) => self.ratings.push(r),
            Ok(None) => {}
            Err(e) if self.opts.skip_bad_lines => {
                self.report.skipped += 1;
                if self.report.first_skipped.len() < 5 {
                    self.report.first_skipped.push(e.to_string());
                }
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The ratings read, or why there are none.
    fn finish(self) -> Result<(RatingSet, LoadReport)> {
        let Parser { path, layout, users, items, ratings, report, .. } = self;
        let empty = |reason: String| Err(Error::EmptyData { path: path.to_path_buf(), reason });
        if layout.is_none() {
            return empty("the file is empty".into());
        }
        if ratings.is_empty() {
            return empty(if report.skipped > 0 {
                format!("no valid rating: all {} data lines were bad", report.skipped)
            } else {
                "no rating found (only a header or blank lines)".into()
            });
        }
        Ok((RatingSet { users, items, ratings }, report))
    }
}

/// `text` cut to its first `most` characters, saying how long it was: an
/// error quotes a line or a field, and a line of a binary file or of
/// megabytes would bury the message.
fn clipped(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        None => text.to_string(),
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
    }
}

fn trim_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// Picks the format from the file name, then from the first line's separator.
fn detect(path: &Path, first_line: &str) -> Format {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if first_line.contains("::") {
        Format::MovielensDat
    } else if name == "u.data" || name.ends_with(".data") {
        Format::Movielens100k
    } else if first_line.contains('\t') {
        Format::Tsv
    } else if name == "ratings.csv" && first_line.starts_with("userId,") {
        Format::MovielensCsv
    } else {
        Format::Csv
    }
}

/// Calls `f` with a line's fields. A comma-separated line with a quote is
/// read as RFC 4180 says (the `csv` crate: `"Smith, John"` is one field, `""`
/// a quote); tabs and `::` are taken literally. `f` gets the first
/// [`MAX_FIELDS`] and the count of all: no allocation per line on the plain
/// path.
fn with_fields<T>(
    line: &str,
    sep: Sep,
    f: impl FnOnce(&[&str], usize) -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    fn first<'a, T>(
        parts: impl Iterator<Item = &'a str>,
        f: impl FnOnce(&[&str], usize) -> std::result::Result<T, String>,
    ) -> std::result::Result<T, String> {
        let mut fields = [""; MAX_FIELDS];
        let mut n = 0;
        for p in parts {
            if n < MAX_FIELDS {
                fields[n] = p;
            }
            n += 1;
        }
        f(&fields[..n.min(MAX_FIELDS)], n)
    }
    match sep {
        Sep::Char(b',') if line.contains('"') => {
            let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(line.as_bytes());
            let mut record = csv::StringRecord::new();
            match reader.read_record(&mut record) {
                Ok(true) => first(record.iter(), f),
                Ok(false) => f(&[], 0),
                Err(e) => Err(format!("not a CSV record ({e})")),
            }
        }
        Sep::Char(c) => first(line.split(c as char), f),
        Sep::DoubleColon => first(line.split("::"), f),
    }
}

/// The largest rating magnitude read.
const MAX_RATING: f32 = 1e9;

/// user, item, rating and a timestamp.
const MAX_FIELDS: usize = 4;

fn is_header(mode: HeaderMode, fields: &[&str]) -> bool {
    match mode {
        HeaderMode::Yes => true,
        HeaderMode::No => false,
        HeaderMode::Auto => fields.get(2).is_some_and(|f| {
            !f.trim().is_empty() && !f.bytes().any(|b| b.is_ascii_digit()) && f.trim().parse::<f32>().is_err()
        }),
    }
}

/// `field` without surrounding white space; the common untrimmed field costs
/// two byte tests.
fn trim(field: &str) -> &str {
    let b = field.as_bytes();
    match (b.first(), b.last()) {
        (Some(x), Some(y)) if x.is_ascii_graphic() && y.is_ascii_graphic() => field,
        _ => field.trim(),
    }
}

fn parse_fields<'a>(
    fields: &[&'a str],
    count: usize,
    format: Format,
) -> std::result::Result<(&'a str, &'a str, f32), String> {
    if count < 3 {
        return Err(format!(
            "expected user, item, rating{} columns, found {}",
            if format == Format::Movielens100k || format == Format::MovielensDat {
                ", timestamp"
            } else {
                "[, timestamp]"
            },
            count
        ));
    }
    if count > MAX_FIELDS {
        return Err(format!("expected at most {MAX_FIELDS} columns (user, item, rating, timestamp), found {count}"));
    }
    let (u, i, r) = (trim(fields[0]), trim(fields[1]), trim(fields[2]));
    if u.is_empty() {
        return Err("empty user id".into());
    }
    if i.is_empty() {
        return Err("empty item id".into());
    }
    let v: f32 = r.parse().map_err(|_| format!("rating {:?} is not a number", clipped(r, 40)))?;
    if let Some(problem) = rating_problem(v) {
        return Err(format!("rating {:?} is {problem}", clipped(r, 40)));
    }
    Ok((u, i, v))
}

/// Why `v` cannot be a rating, where it cannot: the rule for ratings from
/// any source (files here, arrays from Python).
pub fn rating_problem(v: f32) -> Option<String> {
    if !v.is_finite() {
        Some("not finite".into())
    } else if v.abs() > MAX_RATING {
        // Squared errors of larger ratings overflow single precision.
        Some(format!("out of range: at most {MAX_RATING:e} in magnitude"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_past_the_bound_is_refused_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.tsv");
        let mut bytes = b"a\tb\t3\nc\td\t4\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 300_000));
        std::fs::write(&path, &bytes).unwrap();
        let e = load_ratings(&path, LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("long.tsv:3:") && e.contains("longer than"), "{e}");
    }

    #[test]
    fn a_file_read_in_chunks_is_the_text_parsed_whole() {
        // Lines across the 64 KiB chunks' ends, a byte-order mark, CRLF,
        // blank lines, a header, a last line without its line break.
        let mut text = String::from("\u{feff}user,item,rating\r\n\n");
        for k in 0..20_000u32 {
            text += &format!("user-{},item-{},{}.5\r\n", k % 997, (k * 31) % 1009, k % 5);
            if k % 4001 == 0 {
                text += "  \n";
            }
        }
        text += "last,one,4";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, &text).unwrap();
        let (read, _) = load_ratings(&path, LoadOptions::default()).unwrap();
        let (parsed, report) = parse_ratings(&path, text.as_bytes(), LoadOptions::default()).unwrap();
        assert_eq!(read.ratings.len(), 20_001);
        assert_eq!(read.ratings, parsed.ratings);
        assert_eq!((read.users.len(), read.items.len()), (parsed.users.len(), parsed.items.len()));
        assert_eq!(read.users.name(0), "user-0");
        assert_eq!(report.format, Some(Format::Csv));
        // An error names the same line either way.
        let bad = text.replacen("user-5,item-155,0.5", "user-5,item-155,x", 1);
        std::fs::write(&path, &bad).unwrap();
        let e = load_ratings(&path, LoadOptions::default()).unwrap_err().to_string();
        let f = parse_ratings(&path, bad.as_bytes(), LoadOptions::default()).unwrap_err().to_string();
        assert_eq!(e, f);
        assert!(e.contains("r.csv:9:"), "{e}");
    }

    fn parse(name: &str, text: &str) -> Result<(RatingSet, LoadReport)> {
        parse_ratings(Path::new(name), text.as_bytes(), LoadOptions::default())
    }

    #[test]
    fn detects_every_format() {
        let (s, r) = parse("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n").unwrap();
        assert_eq!(r.format, Some(Format::Movielens100k));
        assert_eq!(s.ratings.len(), 2);
        let (s, r) = parse("ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n").unwrap();
        assert_eq!(r.format, Some(Format::MovielensDat));
        assert_eq!(s.ratings[0].value, 5.0);
        let (s, r) =
            parse("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n").unwrap();
        assert_eq!(r.format, Some(Format::MovielensCsv));
        assert_eq!(s.ratings.len(), 2);
        assert_eq!(s.ratings[1].value, 4.5);
        let (s, r) = parse("x.csv", "u1,i1,2\nu2,i1,3.5\n").unwrap();
        assert_eq!(r.format, Some(Format::Csv));
        assert_eq!(s.users.len(), 2);
        assert_eq!(s.items.len(), 1);
        let (s, r) = parse("x.tsv", "user\titem\trating\nalice\tbook\t5\n").unwrap();
        assert_eq!(r.format, Some(Format::Tsv));
        assert_eq!(s.ratings.len(), 1);
        assert_eq!(s.users.name(0), "alice");
    }

    #[test]
    fn header_detection_and_crlf() {
        let (s, _) = parse("x.csv", "user,item,rating\r\na,b,1\r\n\r\n").unwrap();
        assert_eq!(s.ratings.len(), 1);
        // A numeric first line is data, not a header.
        let (s, _) = parse("x.csv", "1,2,3\n").unwrap();
        assert_eq!(s.ratings.len(), 1);
    }

    #[test]
    fn bad_lines_name_file_line_and_text() {
        let e = parse("r.csv", "a,b,1\na,b\n").unwrap_err().to_string();
        assert!(e.contains("r.csv:2:") && e.contains("found 2") && e.contains("\"a,b\""), "{e}");
        let e = parse("r.csv", "a,b,1\nc,d,x1\n").unwrap_err().to_string();
        assert!(e.contains("r.csv:2:") && e.contains("not a number"), "{e}");
        let e = parse("r.csv", "a,b,NaN\n").unwrap_err().to_string();
        assert!(e.contains("r.csv:1:") && e.contains("not finite"), "{e}");
        let e = parse("r.csv", "a,b,1\na,b,inf\n").unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("not finite"), "{e}");
        let e = parse("r.csv", "a,b,1,2,3\n").unwrap_err().to_string();
        assert!(e.contains("at most 4 columns"), "{e}");
        let e = parse("r.csv", ",b,1\n").unwrap_err().to_string();
        assert!(e.contains("empty user id"), "{e}");
        let e = parse("r.csv", "").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse("r.csv", "user,item,rating\n").unwrap_err().to_string();
        assert!(e.contains("no rating found"), "{e}");
        let e = parse_ratings(Path::new("r.csv"), b"a,b,1\n\xff\xfe,b,2\n", LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn a_long_line_is_quoted_cut_short() {
        let line = format!("a,b,{}", "9x".repeat(100_000));
        let e = parse("r.csv", &line).unwrap_err().to_string();
        assert!(
            e.len() < 500 && e.contains("r.csv:1:") && e.contains("(200004 bytes)"),
            "{} bytes: {}",
            e.len(),
            &e[..200]
        );
    }

    #[test]
    fn a_layout_the_user_forced_is_named_in_the_error() {
        let forced = LoadOptions { format: Format::Movielens100k, ..Default::default() };
        let e = parse_ratings(Path::new("r.csv"), b"1,1,3\n", forced).unwrap_err().to_string();
        assert!(e.contains("r.csv:1:") && e.contains("`format` movielens100k"), "{e}");
        let e = parse("r.csv", "a,b\n").unwrap_err().to_string();
        assert!(!e.contains("`format`"), "a detected layout is not the user's word: {e}");
    }

    #[test]
    fn skip_bad_lines_counts_them() {
        let opts = LoadOptions { skip_bad_lines: true, ..Default::default() };
        let (s, r) = parse_ratings(Path::new("r.csv"), b"a,b,1\nbroken\nc,d,nan\ne,f,2\n", opts).unwrap();
        assert_eq!(s.ratings.len(), 2);
        assert_eq!(r.skipped, 2);
        assert!(r.first_skipped[0].contains(":2:"));
        let e = parse_ratings(Path::new("r.csv"), b"broken\n", opts).unwrap_err().to_string();
        assert!(e.contains("all 1 data lines were bad"), "{e}");
    }
}
