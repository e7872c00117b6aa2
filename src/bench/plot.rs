//! SVG charts of a bench report, drawn with plotters: rows moved per epoch,
//! ratings/s and hit rate, each against the device-memory budget (a share of
//! the tables, log scale), one line per backend and policy.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::{BenchReport, BenchRow};
use crate::error::{Error, Result};

/// One line of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
}

/// Draws `series` into an SVG string.
fn chart(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> std::result::Result<String, String> {
    let xs = || series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = xs().fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let y1 = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0f64, f64::max);
    let (x0, x1) = if x0.is_finite() { (x0 / 1.5, x1 * 1.5) } else { (0.5, 200.0) };
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(84)
            .build_cartesian_2d((x0..x1).log_scale(), 0.0..y1)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x}%"))
            .y_label_formatter(&|y| if y1 >= 1e4 { format!("{y:.1e}") } else { format!("{y:.2}") })
            .draw()
            .map_err(|e| e.to_string())?;
        for s in series {
            let style = s.style;
            c.draw_series(LineSeries::new(s.points.iter().copied(), style).point_size(3))
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The rows of `report` that staged (have a budget), grouped into one series
/// per backend+adapter and policy, each sorted by budget.
fn grouped(report: &BenchReport) -> Vec<(String, Vec<&BenchRow>)> {
    let several = {
        let mut a: Vec<(&str, &str)> =
            report.rows.iter().filter(|r| r.budget_percent.is_some()).map(|r| (&*r.backend, &*r.adapter)).collect();
        a.sort();
        a.dedup();
        a.len() > 1
    };
    let mut out: Vec<(String, Vec<&BenchRow>)> = Vec::new();
    for r in report.rows.iter().filter(|r| r.budget_percent.is_some()) {
        let name = if several { format!("{} {}", r.backend, r.policy) } else { r.policy.clone() };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(r),
            None => out.push((name, vec![r])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by(|a, b| a.budget_percent.unwrap_or(0.0).total_cmp(&b.budget_percent.unwrap_or(0.0)));
    }
    out
}

fn color(k: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    PALETTE[k % PALETTE.len()]
}

fn series_of(groups: &[(String, Vec<&BenchRow>)], y: impl Fn(&BenchRow) -> Option<f64>) -> Vec<Series> {
    groups
        .iter()
        .enumerate()
        .map(|(k, (name, rows))| Series {
            name: name.clone(),
            points: rows.iter().filter_map(|r| Some((r.budget_percent?, y(r)?))).collect(),
            style: color(k).stroke_width(2),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// Writes `rows_moved.svg`, `throughput.svg` and `hit_rate.svg` into `dir`
/// (created if missing); returns their paths.
pub fn plot(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let groups = grouped(report);
    let name = &report.dataset.name;
    let x_desc = "device memory budget (% of both tables, log scale)";

    // The offline optimum, once per budget (the same for every policy), drawn
    // first and wide so that a policy on the floor shows on top of it.
    let mut floor: Vec<(f64, f64)> = Vec::new();
    for r in &report.rows {
        if let (Some(x), Some(y)) = (r.budget_percent, r.belady_rows_in_per_epoch)
            && !floor.iter().any(|p| p.0 == x)
        {
            floor.push((x, y));
        }
    }
    floor.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut moved = Vec::new();
    if !floor.is_empty() {
        moved.push(Series {
            name: "Belady (offline optimum)".into(),
            points: floor,
            style: RGBColor(150, 150, 150).stroke_width(7),
        });
    }
    moved.extend(series_of(&groups, |r| Some(r.rows_in_per_epoch)));

    let mut speed = series_of(&groups, |r| Some(r.median_ratings_per_sec));
    // Backends without staging (the CPU) as flat lines across the budgets.
    let xs: Vec<f64> = groups.iter().flat_map(|(_, v)| v.iter().filter_map(|r| r.budget_percent)).collect();
    let (lo, hi) = xs.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
    for r in report.rows.iter().filter(|r| r.budget_percent.is_none()) {
        if lo.is_finite() {
            speed.push(Series {
                name: format!("{} (no staging)", r.adapter),
                points: vec![(lo, r.median_ratings_per_sec), (hi, r.median_ratings_per_sec)],
                style: RGBColor(90, 90, 90).stroke_width(2),
            });
        }
    }
    let hits = series_of(&groups, |r| r.hit_rate.map(|h| 100.0 * h));

    let charts = [
        ("rows_moved.svg", format!("Rows staged in per epoch — {name}"), "rows host→device per epoch", moved),
        ("throughput.svg", format!("Training throughput — {name}"), "ratings/s (median of timed epochs)", speed),
        ("hit_rate.svg", format!("Slab hit rate — {name}"), "hit rate (% of row lookups)", hits),
    ];
    let mut written = Vec::new();
    for (file, title, y_desc, series) in charts {
        let path = dir.join(file);
        let svg = chart(&title, x_desc, y_desc, &series)
            .map_err(|e| Error::io(&path, std::io::Error::other(format!("drawing the chart: {e}"))))?;
        crate::model::write_atomically(&path, svg.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}
