//! Fuzzing the inputs rowstage reads from users' files: the ratings loaders
//! (every format, with and without a header, strict and skipping bad lines)
//! and the model reader (damaged files, and files whose checksum is right
//! but whose contents are nonsense). Each must answer with a value or an
//! error, never a panic. proptest runs the cases; `FUZZ_CASES` sets how many
//! per property (the default totals over 10,000).

use std::path::Path;

use proptest::prelude::*;

use rowstage::data::{Format, HeaderMode, LoadOptions, parse_ratings};
use rowstage::model::{FileKind, parse_tables};

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![
        Just(Format::Auto),
        Just(Format::Movielens100k),
        Just(Format::MovielensDat),
        Just(Format::MovielensCsv),
        Just(Format::Csv),
        Just(Format::Tsv),
    ]
}

fn header() -> impl Strategy<Value = HeaderMode> {
    prop_oneof![Just(HeaderMode::Auto), Just(HeaderMode::Yes), Just(HeaderMode::No)]
}

/// Lines that look like ratings files: ids, numbers of every shape,
/// separators of every format, stray quotes, blanks, CRs and non-ASCII.
fn rating_line() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        "[0-9]{1,6}",
        "-?[0-9]{0,3}\\.[0-9]{0,3}",
        "[0-9]e[+-]?[0-9]{1,3}",
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e39".to_string()),
        Just(String::new()),
        "[a-zA-Z\"' ]{0,6}",
        "[\\u{80}-\\u{10ffff}]{1,3}",
    ];
    let sep = prop_oneof![Just(","), Just("\t"), Just("::"), Just(" "), Just(";"), Just(",,")];
    (prop::collection::vec((field, sep), 0..6), prop_oneof![Just(""), Just("\r")]).prop_map(|(fields, end)| {
        let mut s = String::new();
        for (f, sep) in fields {
            s.push_str(&f);
            s.push_str(sep);
        }
        s.pop();
        s + end
    })
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn loaders_never_panic_on_rating_like_text(
        lines in prop::collection::vec(rating_line(), 0..12),
        format in format(),
        header in header(),
        skip in any::<bool>(),
        name in prop_oneof![Just("r.csv"), Just("u.data"), Just("ratings.dat"), Just("x")],
    ) {
        let text = lines.join("\n");
        let opts = LoadOptions { format, header, skip_bad_lines: skip };
        if let Ok((set, report)) = parse_ratings(Path::new(name), text.as_bytes(), opts) {
            // What loads is usable: every rating finite, on known ids.
            prop_assert!(set.ratings.iter().all(|r| r.value.is_finite()));
            prop_assert!(set.ratings.iter().all(|r| (r.user as usize) < set.users.len() && (r.item as usize) < set.items.len()));
            prop_assert!(report.skipped <= lines.len());
        }
    }

    #[test]
    fn loaders_never_panic_on_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        format in format(),
        skip in any::<bool>(),
    ) {
        let opts = LoadOptions { format, header: HeaderMode::Auto, skip_bad_lines: skip };
        let _ = parse_ratings(Path::new("fuzz"), &bytes, opts);
    }
}

/// A small valid model file's bytes, saved by the library itself.
fn model_bytes() -> Vec<u8> {
    use rowstage::data::{Dataset, SyntheticSpec, generate};
    use rowstage::model::{HyperParams, Model, save_model};
    let spec = SyntheticSpec { users: 9, items: 7, ratings: 60, zipf: None };
    let data = Dataset::split("fuzz", generate(&spec, 1), 0.1, 1);
    let model = Model::init(&data, &HyperParams { rank: 3, ..HyperParams::default() }, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    save_model(&model, &serde_json::json!({}), &path).unwrap();
    std::fs::read(path).unwrap()
}

proptest! {
    #![proptest_config(cases(2500))]

    /// Damaged model files: bytes flipped, cut short or spliced. The CRC
    /// refuses most; none may panic.
    #[test]
    fn the_model_reader_never_panics_on_damaged_files(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
        splice in prop::option::of((any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))),
    ) {
        let mut bytes = model_bytes_cached().to_vec();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Some((at, extra)) = splice {
            let i = at.index(bytes.len());
            bytes.splice(i..i, extra);
        }
        if let Some(at) = cut {
            bytes.truncate(at.index(bytes.len()));
        }
        for kind in [FileKind::Model, FileKind::Checkpoint] {
            let _ = parse_tables(Path::new("fuzz.safetensors"), &bytes, kind);
        }
    }
}

fn model_bytes_cached() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(model_bytes)
}
