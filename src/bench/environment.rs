//! Where a sweep ran: the machine, the adapters and their drivers, the
//! build and the date, recorded in the bench's JSON so that a figure can be
//! traced to its machine (hyperfine and criterion record the same).

use serde::Serialize;

use crate::gpu::AdapterSummary;

/// One adapter wgpu found, as the JSON records it.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    /// The limits that size the slab and the dispatches (as far as the
    /// adapter, or a browser's WebGPU, tells them).
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub timestamps: bool,
}

/// The machine and build a sweep ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub rowstage_version: &'static str,
    /// The commit rowstage was built from, where the build saw a git
    /// checkout.
    pub git_revision: Option<&'static str>,
    pub wgpu_version: &'static str,
    /// When the sweep started, UTC, RFC 3339.
    pub date_utc: String,
    pub os: &'static str,
    pub arch: &'static str,
    /// The processor's model name, where the OS tells it.
    pub cpu: Option<String>,
    /// Hardware threads available to this process.
    pub cpu_threads: usize,
    /// Every adapter wgpu found; the rows name theirs.
    pub adapters: Vec<AdapterInfo>,
    /// The browser that ran the sweep (its user agent), for the page's.
    pub browser: Option<String>,
}

impl Environment {
    /// This machine now, with the adapters the caller enumerated.
    pub fn capture(adapters: &[AdapterSummary]) -> Self {
        Environment {
            rowstage_version: crate::VERSION,
            git_revision: option_env!("ROWSTAGE_GIT_REVISION"),
            wgpu_version: crate::gpu::WGPU_VERSION,
            date_utc: rfc3339_utc(web_time::SystemTime::now()),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            cpu: cpu_model(),
            cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            adapters: adapters
                .iter()
                .map(|a| AdapterInfo {
                    name: a.name.clone(),
                    backend: a.backend.clone(),
                    device_type: a.device_type.clone(),
                    driver: a.driver.clone(),
                    driver_info: a.driver_info.clone(),
                    max_storage_buffer_binding_size: a.max_storage_buffer_binding_size,
                    max_buffer_size: a.max_buffer_size,
                    max_compute_workgroups_per_dimension: a.max_compute_workgroups_per_dimension,
                    max_compute_invocations_per_workgroup: a.max_compute_invocations_per_workgroup,
                    timestamps: a.timestamps,
                })
                .collect(),
            browser: None,
        }
    }
}

/// The processor's model name from /proc/cpuinfo (Linux); `None` elsewhere.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (a time before 1970 reads as 1970).
pub fn rfc3339_utc(t: web_time::SystemTime) -> String {
    let secs = t.duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dates_are_rfc3339_utc() {
        let at = |s: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.
        assert_eq!(at(951_827_696), "2000-02-29T12:34:56Z");
        // 2026-12-06 15:00:00.
        assert_eq!(at(1_796_569_200), "2026-12-06T15:00:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
