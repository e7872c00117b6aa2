//! `--device-memory` values: `64MiB`, `512KiB`, `1GB`, `1048576`, or a share of
//! the two tables such as `10%`.

use crate::error::{Error, Result};

/// A device-memory budget as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Bytes(u64),
    /// A share of both tables' bytes, in percent (0 < p ≤ 100... or more).
    Percent(f64),
}

impl Budget {
    /// Parses a comma-separated list of budgets, each with its text.
    pub fn parse_list(flag: &str, text: &str) -> Result<Vec<(String, Budget)>> {
        text.split(',').map(|b| Ok((b.trim().to_string(), Budget::parse(flag, b)?))).collect()
    }

    /// Parses a budget; `flag` names the option in errors.
    pub fn parse(flag: &str, s: &str) -> Result<Budget> {
        let t = s.trim();
        let bad = |why: &str| Error::arg(flag, s, why);
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad("expected a percentage such as 10%"))?;
            if !(v.is_finite() && v > 0.0 && v <= 1000.0) {
                return Err(bad("the percentage must be above 0 and at most 1000"));
            }
            return Ok(Budget::Percent(v));
        }
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .replace('_', "")
            .parse()
            .map_err(|_| bad("expected a size such as 64MiB, 512KiB, 1GB, 1048576 or a share such as 10%"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => return Err(bad("unknown unit; use B, KB, KiB, MB, MiB, GB, GiB or %")),
        };
        let bytes = num * mult as f64;
        if bytes.is_nan() || bytes < 1.0 {
            return Err(bad("the size must be at least 1 byte"));
        }
        if bytes >= 1e15 {
            return Err(bad("the size must be below 1 PB"));
        }
        Ok(Budget::Bytes(bytes.round() as u64))
    }

    /// The budget in bytes for tables of `table_bytes` in total, rounded down to
    /// a multiple of 4 (wgpu's copy alignment).
    pub fn resolve(&self, table_bytes: u64) -> u64 {
        let b = match *self {
            Budget::Bytes(b) => b,
            Budget::Percent(p) => (table_bytes as f64 * p / 100.0) as u64,
        };
        b & !3
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Bytes(b) => write!(f, "{}", human_bytes(*b)),
            Budget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The slots a slab of `bytes` holds for rows of `row_bytes`: the one place
/// a budget becomes slots (train, plan, simulate, bench and the lesson all
/// come here), at most the slot map's [`crate::stage::entry::MAX_SLOTS`].
pub fn slots_in(bytes: u64, row_bytes: u64) -> u32 {
    (bytes / row_bytes.max(1)).min(crate::stage::entry::MAX_SLOTS as u64) as u32
}

pub use crate::units::human_bytes;

/// As `--device-memory` takes it, exactly: bytes as a whole number
/// (`"1048576"`), a share with its sign (`"10%"`).
impl serde::Serialize for Budget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Budget::Bytes(b) => s.collect_str(b),
            Budget::Percent(p) => s.collect_str(&format_args!("{p}%")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Budget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Budget::parse("`device_memory`", &text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_shares() {
        assert_eq!(Budget::parse("f", "64MiB").unwrap(), Budget::Bytes(64 << 20));
        assert_eq!(Budget::parse("f", "512KiB").unwrap(), Budget::Bytes(512 << 10));
        assert_eq!(Budget::parse("f", "1GB").unwrap(), Budget::Bytes(1_000_000_000));
        assert_eq!(Budget::parse("f", "1048576").unwrap(), Budget::Bytes(1 << 20));
        assert_eq!(Budget::parse("f", "1.5 MiB").unwrap(), Budget::Bytes(3 << 19));
        assert_eq!(Budget::parse("f", "10%").unwrap(), Budget::Percent(10.0));
        assert_eq!(Budget::Percent(10.0).resolve(1000), 100);
        assert_eq!(Budget::Percent(10.0).resolve(1030), 100);
        assert_eq!(Budget::Bytes(1023).resolve(0), 1020);
    }

    #[test]
    fn rejects_garbage_with_the_value() {
        for bad in ["", "abc", "10XB", "-5MiB", "0%", "0", "nan%", "5%%"] {
            let e = Budget::parse("--device-memory", bad).unwrap_err().to_string();
            assert!(e.contains("--device-memory") && e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }
}
