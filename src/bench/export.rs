//! The bench report as JSON, CSV and a Markdown table (hyperfine's
//! `--export-*` convention; the CLI maps `-` to stdout).

use super::{BenchReport, BenchRow, Stats};
use crate::stage::human_bytes;

/// The whole report, pretty-printed.
pub fn json(report: &BenchReport) -> String {
    serde_json::to_string_pretty(report).expect("the bench report serialises")
}

const CSV_HEADER: [&str; 42] = [
    "backend",
    "adapter",
    "budget",
    "device_memory_bytes",
    "budget_percent",
    "policy",
    "batch",
    "order",
    "workers",
    "timed_epochs",
    "median_ratings_per_sec",
    "mean_ratings_per_sec",
    "stddev_ratings_per_sec",
    "min_ratings_per_sec",
    "max_ratings_per_sec",
    "median_epoch_seconds",
    "mean_epoch_seconds",
    "stddev_epoch_seconds",
    "min_epoch_seconds",
    "max_epoch_seconds",
    "rows_in_per_epoch",
    "rows_out_per_epoch",
    "bytes_h2d_per_epoch",
    "bytes_d2h_per_epoch",
    "hit_rate",
    "test_rmse",
    "seconds_to_target",
    "epochs_to_target",
    "ceiling",
    "median_host_seconds",
    "median_device_seconds",
    "bound",
    "kernel_bytes_per_sec",
    "kernel_bandwidth_share",
    "steps_per_epoch",
    "dispatches_per_epoch",
    "predicted_rows_in_per_epoch",
    "belady_rows_in_per_epoch",
    "sgd_bytes_per_sec",
    "copy_bytes_per_sec",
    "bandwidth_share",
    "vs_resident",
];

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

fn csv_record(r: &BenchRow) -> [String; 42] {
    [
        r.backend.clone(),
        r.adapter.clone(),
        r.budget.clone(),
        opt(r.device_memory_bytes),
        opt(r.budget_percent),
        r.policy.clone(),
        r.batch.to_string(),
        r.order.clone(),
        r.workers.to_string(),
        r.timed_epochs.to_string(),
        r.median_ratings_per_sec.to_string(),
        r.ratings_per_sec_stats.mean.to_string(),
        r.ratings_per_sec_stats.stddev.to_string(),
        r.ratings_per_sec_stats.min.to_string(),
        r.ratings_per_sec_stats.max.to_string(),
        r.median_epoch_seconds.to_string(),
        r.epoch_seconds_stats.mean.to_string(),
        r.epoch_seconds_stats.stddev.to_string(),
        r.epoch_seconds_stats.min.to_string(),
        r.epoch_seconds_stats.max.to_string(),
        r.rows_in_per_epoch.to_string(),
        r.rows_out_per_epoch.to_string(),
        r.bytes_h2d_per_epoch.to_string(),
        r.bytes_d2h_per_epoch.to_string(),
        opt(r.hit_rate),
        opt(r.test_rmse),
        opt(r.seconds_to_target),
        opt(r.epochs_to_target),
        r.ceiling.to_string(),
        r.median_host_seconds.to_string(),
        opt(r.median_device_seconds),
        opt(r.bound.clone()),
        opt(r.kernel_bytes_per_sec),
        opt(r.kernel_bandwidth_share),
        r.steps_per_epoch.to_string(),
        r.dispatches_per_epoch.to_string(),
        opt(r.predicted_rows_in_per_epoch),
        opt(r.belady_rows_in_per_epoch),
        r.sgd_bytes_per_sec.to_string(),
        opt(r.copy_bytes_per_sec),
        opt(r.bandwidth_share),
        opt(r.vs_resident),
    ]
}

/// One header line and one line per row; empty fields for figures a row
/// does not have. Fields are quoted where needed (adapter names hold commas).
pub fn csv(report: &BenchReport) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER).expect("writing to memory");
    for r in &report.rows {
        w.write_record(csv_record(r)).expect("writing to memory");
    }
    String::from_utf8(w.into_inner().expect("flushing to memory")).expect("CSV of UTF-8 fields")
}

fn md_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("-".into(), f)
}

/// `mean ± σ (min … max)` of a ratings/s figure.
fn spread(s: &Stats) -> String {
    format!("{:.3e} ± {:.1e} ({:.3e} … {:.3e})", s.mean, s.stddev, s.min, s.max)
}

/// A Markdown table of the rows, with the dataset and the sweep above it.
pub fn markdown(report: &BenchReport) -> String {
    let d = &report.dataset;
    let p = &report.plan;
    let mut s = format!(
        "Dataset: {} ({} users, {} items, {} train / {} test ratings); tables {} at rank {}; batch up to {}; {} warm-up + {} timed epoch(s); wgpu {}{}\n\n",
        d.name,
        d.users,
        d.items,
        d.train,
        d.test,
        human_bytes(report.table_bytes),
        p.settings.hp.rank,
        p.settings.batch,
        p.warmup,
        p.epochs,
        report.wgpu_version,
        if report.complete { "" } else { " — INCOMPLETE (interrupted or still running)" },
    );
    let e = &report.environment;
    s.push_str(&format!(
        "Machine: {} ({} threads, {} {}); rowstage {}{}; {}\n\n",
        e.cpu.as_deref().unwrap_or("unknown processor"),
        e.cpu_threads,
        e.os,
        e.arch,
        e.rowstage_version,
        e.git_revision.map_or(String::new(), |g| format!(" ({g})")),
        e.date_utc,
    ));
    for a in &e.adapters {
        s.push_str(&format!(
            "Adapter: {} ({}, {}; driver {} {})\n",
            a.name, a.backend, a.device_type, a.driver, a.driver_info
        ));
    }
    if !e.adapters.is_empty() {
        s.push('\n');
    }
    s.push_str(
        "| backend | adapter | budget | policy | order | workers | batch | ratings/s (median) | mean ± σ (min … max) | vs all-resident | rows in/epoch | Belady floor | h2d/epoch | d2h/epoch | hit rate | test RMSE | s to target | host s | device s | bound | kernel GB/s | SGD bandwidth share |\n",
    );
    s.push_str(
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n",
    );
    for r in &report.rows {
        s.push_str(&format!(
            "| {}{} | {} | {} | {} | {} | {:.0} | {} | {:.3e} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {} | {} |\n",
            r.backend,
            if r.ceiling { " (host ceiling)" } else { "" },
            r.adapter.replace('|', "/"),
            r.budget,
            r.policy,
            r.order,
            r.workers,
            r.batch,
            r.median_ratings_per_sec,
            spread(&r.ratings_per_sec_stats),
            md_opt(r.vs_resident, |v| format!("{v:.2}×")),
            r.rows_in_per_epoch,
            md_opt(r.belady_rows_in_per_epoch, |v| format!("{v:.0}")),
            human_bytes(r.bytes_h2d_per_epoch as u64),
            human_bytes(r.bytes_d2h_per_epoch as u64),
            md_opt(r.hit_rate, |v| format!("{:.1}%", 100.0 * v)),
            md_opt(r.test_rmse, |v| format!("{v:.4}")),
            md_opt(r.seconds_to_target, |v| format!("{v:.2}")),
            r.median_host_seconds,
            md_opt(r.median_device_seconds, |v| format!("{v:.3}")),
            r.bound.as_deref().unwrap_or("-"),
            md_opt(r.kernel_bytes_per_sec, |v| format!("{:.2}", v / 1e9)),
            md_opt(r.bandwidth_share, |v| format!("{:.1}%", 100.0 * v)),
        ));
    }
    for k in &report.skipped {
        s.push_str(&format!("\nSkipped {} {} {}: {}", k.backend, k.budget, k.policy, k.reason));
    }
    s
}
