//! SVG charts of a bench report, drawn with plotters: rows moved per epoch,
//! ratings/s and hit rate, each against the device-memory budget (a share of
//! the tables, log scale), one line per backend and policy.

use std::path::{Path, PathBuf};

use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::{BenchReport, BenchRow};
use crate::error::{Error, Result};

/// One line of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
    /// Its marker (by policy) and whether its line is dashed (by backend),
    /// so that lines which coincide (one policy on two adapters, two
    /// policies at one budget) stay told apart.
    marker: usize,
    dashed: bool,
}

/// How a chart's y values read.
#[derive(Clone, Copy)]
enum Unit {
    /// Counts and rates with SI prefixes (1.2M, 300k).
    Si,
    /// Percentages.
    Percent,
}

/// `v` with an SI prefix and three significant digits at most: 1.23M, 45k, 7.
pub fn si(v: f64) -> String {
    let (scaled, prefix) = match v.abs() {
        a if a >= 1e12 => (v / 1e12, "T"),
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    format!("{}{prefix}", significant(scaled))
}

/// `v` to three significant digits, without trailing zeros.
fn significant(v: f64) -> String {
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// A percentage for an axis: 1%, 2.5%, 100%.
pub fn percent(v: f64) -> String {
    format!("{}%", significant(v))
}

const FONT: &str = "sans-serif";

/// Draws marker `kind` at `at`.
fn marker<'a, DB: DrawingBackend + 'a>(
    kind: usize,
    at: (i32, i32),
    style: ShapeStyle,
) -> DynElement<'a, DB, (i32, i32)> {
    let filled = style.filled();
    match kind % 4 {
        0 => (EmptyElement::at(at) + Circle::new((0, 0), 4, filled)).into_dyn(),
        1 => (EmptyElement::at(at) + TriangleMarker::new((0, 0), 5, filled)).into_dyn(),
        2 => (EmptyElement::at(at) + Rectangle::new([(-4, -4), (4, 4)], filled)).into_dyn(),
        _ => (EmptyElement::at(at) + Cross::new((0, 0), 4, style.stroke_width(2))).into_dyn(),
    }
}

/// Draws `series` into an SVG string: the plot on the left, its legend in a
/// column of its own on the right (never over the data), x on a log scale,
/// y on a log scale where `log_y`.
fn chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    unit: Unit,
    series: &[Series],
) -> std::result::Result<String, String> {
    let xs = || series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    // Ticks at the budgets measured, not a log scale's crowded defaults.
    let mut budgets: Vec<f64> = xs().collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    let (x0, x1) = match (budgets.first(), budgets.last()) {
        (Some(&lo), Some(&hi)) => (lo / 1.5, hi * 1.5),
        _ => (0.5, 200.0),
    };
    let y1 = ys().fold(0.0f64, f64::max);
    let y0 = ys().filter(|&y| y > 0.0).fold(f64::INFINITY, f64::min);
    // One series 20 times another's scale flattens it against the axis: a
    // log scale keeps both readable.
    let log_y = matches!(unit, Unit::Si) && y0.is_finite() && y1 / y0 > 20.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1080, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot, legend) = root.split_horizontally(800);
        let y_label = move |y: &f64| match unit {
            Unit::Si => si(*y),
            Unit::Percent => percent(*y),
        };
        let x_label = |x: &f64| percent(*x);
        let mut builder = ChartBuilder::on(&plot);
        builder.caption(title, (FONT, 24)).margin(16).x_label_area_size(56).y_label_area_size(80);
        macro_rules! draw {
            ($c:expr) => {{
                let mut c = $c;
                c.configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .axis_desc_style((FONT, 19))
                    .label_style((FONT, 17))
                    .light_line_style(WHITE)
                    .x_label_formatter(&x_label)
                    .y_label_formatter(&y_label)
                    .draw()
                    .map_err(|e| e.to_string())?;
                for s in series {
                    let style = s.style;
                    if s.dashed {
                        c.draw_series(DashedLineSeries::new(s.points.iter().copied(), 10, 6, style))
                            .map_err(|e| e.to_string())?;
                    } else {
                        c.draw_series(LineSeries::new(s.points.iter().copied(), style)).map_err(|e| e.to_string())?;
                    }
                    let pts: Vec<(i32, i32)> = s.points.iter().map(|&p| c.backend_coord(&p)).collect();
                    let kind = s.marker;
                    for at in pts {
                        plot.draw(&marker(kind, at, style)).map_err(|e| e.to_string())?;
                    }
                }
            }};
        }
        if log_y {
            draw!(
                builder
                    .build_cartesian_2d(
                        (x0..x1).log_scale().with_key_points(budgets.clone()),
                        (y0 / 1.3..y1 * 1.3).log_scale()
                    )
                    .map_err(|e| e.to_string())?
            );
        } else {
            let top = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
            draw!(
                builder
                    .build_cartesian_2d((x0..x1).log_scale().with_key_points(budgets.clone()), 0.0..top)
                    .map_err(|e| e.to_string())?
            );
        }
        // The legend: a sample of each line (dash, marker) and its name.
        let mut y = 70;
        for s in series {
            let sample = [(12, y), (60, y)];
            if s.dashed {
                legend.draw(&DashedPathElement::new(sample, 10, 6, s.style)).map_err(|e| e.to_string())?;
            } else {
                legend.draw(&PathElement::new(sample, s.style)).map_err(|e| e.to_string())?;
            }
            legend.draw(&marker(s.marker, (36, y), s.style)).map_err(|e| e.to_string())?;
            legend.draw(&Text::new(s.name.clone(), (70, y - 9), (FONT, 18))).map_err(|e| e.to_string())?;
            y += 30;
        }
        if log_y {
            legend
                .draw(&Text::new("y on a log scale", (12, y + 12), (FONT, 16).into_font().color(&RGBColor(90, 90, 90))))
                .map_err(|e| e.to_string())?;
        }
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
    let index = |list: &mut Vec<String>, v: &str| match list.iter().position(|x| x == v) {
        Some(k) => k,
        None => {
            list.push(v.to_string());
            list.len() - 1
        }
    };
    let (mut backends, mut policies) = (Vec::new(), Vec::new());
    groups
        .iter()
        .enumerate()
        .map(|(k, (name, rows))| Series {
            name: name.clone(),
            points: rows.iter().filter_map(|r| Some((r.budget_percent?, y(r)?))).collect(),
            style: color(k).stroke_width(2),
            marker: index(&mut policies, &rows[0].policy),
            dashed: index(&mut backends, &format!("{}/{}", rows[0].backend, rows[0].adapter)) % 2 == 1,
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
            marker: 0,
            dashed: false,
        });
    }
    moved.extend(series_of(&groups, |r| Some(r.rows_in_per_epoch)));

    let mut speed = series_of(&groups, |r| Some(r.median_ratings_per_sec));
    // Backends without staging (the CPU) as flat lines across the budgets.
    let xs: Vec<f64> = groups.iter().flat_map(|(_, v)| v.iter().filter_map(|r| r.budget_percent)).collect();
    let (lo, hi) = xs.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
    for (k, r) in report.rows.iter().filter(|r| r.budget_percent.is_none()).enumerate() {
        if lo.is_finite() {
            speed.push(Series {
                name: format!("{} (no staging)", r.backend),
                points: vec![(lo, r.median_ratings_per_sec), (hi, r.median_ratings_per_sec)],
                style: RGBColor(90, 90, 90).stroke_width(2),
                marker: 3,
                dashed: k % 2 == 0,
            });
        }
    }
    let hits = series_of(&groups, |r| r.hit_rate.map(|h| 100.0 * h));

    let charts = [
        ("rows_moved.svg", format!("Rows staged in per epoch — {name}"), "rows host→device per epoch", Unit::Si, moved),
        (
            "throughput.svg",
            format!("Training throughput — {name}"),
            "ratings/s (median of timed epochs)",
            Unit::Si,
            speed,
        ),
        ("hit_rate.svg", format!("Slab hit rate — {name}"), "hit rate (% of row lookups)", Unit::Percent, hits),
    ];
    let mut written = Vec::new();
    for (file, title, y_desc, unit, series) in charts {
        let path = dir.join(file);
        let svg = chart(&title, x_desc, y_desc, unit, &series)
            .map_err(|e| Error::io(&path, std::io::Error::other(format!("drawing the chart: {e}"))))?;
        crate::model::write_atomically(&path, svg.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_carry_si_prefixes_and_percent_signs() {
        assert_eq!((si(0.0), si(7.0), si(12.5), si(999.0)), ("0".into(), "7".into(), "12.5".into(), "999".into()));
        assert_eq!((si(1000.0), si(45_000.0), si(300_000.0)), ("1k".into(), "45k".into(), "300k".into()));
        assert_eq!((si(1.234e6), si(2.5e9), si(4e12)), ("1.23M".into(), "2.5G".into(), "4T".into()));
        assert_eq!(
            (percent(1.0), percent(2.5), percent(100.0), percent(0.25)),
            ("1%".into(), "2.5%".into(), "100%".into(), "0.25%".into())
        );
    }
}
