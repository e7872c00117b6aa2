//! Byte counts and seconds as people read them. Below every other module, so that
//! errors and loaders can say sizes without importing a layer above them.

/// Seconds as people read them, three significant digits: `27.5 µs`,
/// `2.56 ms`, `1.20 s`.
pub fn human_seconds(s: f64) -> String {
    let digits = |v: f64| {
        if v >= 100.0 {
            0
        } else if v >= 10.0 {
            1
        } else {
            2
        }
    };
    let (v, unit) = if s < 1e-3 {
        (s * 1e6, "µs")
    } else if s < 1.0 {
        (s * 1e3, "ms")
    } else {
        (s, "s")
    };
    format!("{v:.*} {unit}", digits(v))
}

/// `1536` → `1.50 KiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.2} {}", UNITS[u]) }
}
