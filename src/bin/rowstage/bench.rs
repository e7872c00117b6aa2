//! `rowstage bench`: the sweep's table on a terminal and its exports.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::{DataArgs, load_dataset};
use crate::output::{Out, check_paths, flags, write_output};
use crate::train::{HogwildArgs, interrupt_on_signal};
use rowstage::bench::{self, BenchReport};
use rowstage::error::{Error, Result};
use rowstage::model::HyperParams;
use rowstage::report::DatasetInfo;
use rowstage::stage::{Budget, PolicyKind, human_bytes};
use rowstage::train;

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Backends to compare, comma-separated: auto (the best GPU adapter, else
    /// the CPU), vulkan, metal, dx12, gl, cpu.
    #[arg(long, default_value = "auto", value_name = "LIST")]
    backend: String,
    /// Use the adapter whose name contains this text (case-insensitive).
    #[arg(long, value_name = "SUBSTRING")]
    adapter: Option<String>,
    /// Budgets to sweep, comma-separated (sizes or shares of the tables);
    /// 100% is the all-resident peer the other budgets are compared with.
    #[arg(long, default_value = "100%,25%,10%,5%,1%", value_name = "LIST", allow_hyphen_values = true)]
    device_memory: String,
    /// Policies to sweep, comma-separated, or "all".
    #[arg(long, default_value = "static,lru,sca,lookahead", value_name = "LIST")]
    policy: String,
    /// Latent factors per row.
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = HyperParams::DEFAULT.lr)]
    lr: f32,
    /// L2 regularisation of the factors.
    #[arg(long, default_value_t = HyperParams::DEFAULT.reg)]
    reg: f32,
    /// Ratings per part of the shuffled order (one GPU step); a budget that
    /// cannot hold it trains the largest batch it holds.
    #[arg(long, default_value_t = 2048)]
    batch: usize,
    /// Untimed epochs before the timed ones (they also load the resident rows).
    #[arg(long, default_value_t = 1, value_name = "N")]
    warmup: usize,
    /// Timed epochs per configuration; figures are their medians.
    #[arg(long, default_value_t = 3, value_name = "N")]
    epochs: usize,
    /// Seed of the split, the initial factors and the epoch orders.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Horizon of the lookahead policy, in units of 2048 ratings (the default batch's size, whatever --batch is)
    #[arg(long, default_value_t = 32, value_name = "L", value_parser = crate::at_least_one())]
    lookahead: usize,
    #[command(flatten)]
    hogwild: HogwildArgs,
    /// Threads of the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Write the results as JSON to FILE ("-" for stdout), rewritten after
    /// every configuration so that an interrupted sweep keeps what it measured.
    #[arg(long, value_name = "FILE")]
    export_json: Option<PathBuf>,
    /// Write the results as CSV to FILE ("-" for stdout), rewritten as it goes.
    #[arg(long, value_name = "FILE")]
    export_csv: Option<PathBuf>,
    /// Write the results as a Markdown table to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    export_markdown: Option<PathBuf>,
    /// Time every configuration to this test RMSE: seconds of training
    /// (warm-up included, evaluation excluded) until an epoch reaches it.
    #[arg(long, value_name = "RMSE")]
    target_rmse: Option<f64>,
    /// Draw SVG charts into DIR: rows moved, ratings/s and hit rate against the budget.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Run a fixed sweep instead of the data and sweep flags: `web` is the
    /// one the browser page's "Benchmark this device" runs (README,
    /// "The browser page"), so that figures compare across devices.
    #[arg(long, value_name = "NAME", conflicts_with_all = [
        "data", "synthetic", "zipf", "test", "test_fraction", "device_memory", "policy", "rank", "lr", "reg",
        "batch", "warmup", "epochs", "seed",
    ])]
    preset: Option<String>,
}

/// An export: its flag, its path, and how it renders the report.
type Export<'a> = (&'static str, Option<&'a Path>, fn(&BenchReport) -> String);

/// The bench's export files, rewritten after every configuration (stdout
/// only once, at the end).
struct Exports {
    json: Option<PathBuf>,
    csv: Option<PathBuf>,
    markdown: Option<PathBuf>,
}

impl Exports {
    fn all(&self) -> [Export<'_>; 3] {
        [
            ("--export-json", self.json.as_deref(), bench::export::json),
            ("--export-csv", self.csv.as_deref(), bench::export::csv),
            ("--export-markdown", self.markdown.as_deref(), bench::export::markdown),
        ]
    }

    /// Refuses two exports to stdout and files in missing directories, before
    /// anything is measured.
    fn check(&self) -> Result<()> {
        let mut to_stdout = 0;
        for (flag, path, _) in self.all() {
            let Some(path) = path else { continue };
            if path == Path::new("-") {
                to_stdout += 1;
                if to_stdout > 1 {
                    return Err(Error::arg(flag, "-", "only one export can go to stdout"));
                }
                continue;
            }
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !dir.is_dir() {
                return Err(Error::arg(
                    flag,
                    path.display().to_string(),
                    format!("the directory {} does not exist", dir.display()),
                ));
            }
        }
        Ok(())
    }

    fn to_stdout(&self) -> bool {
        self.all().iter().any(|(_, p, _)| *p == Some(Path::new("-")))
    }

    /// Writes the files (and stdout when `last`).
    fn write(&self, report: &BenchReport, last: bool) -> Result<()> {
        for (_, path, render) in self.all() {
            // stdout, a FIFO or a device takes the report once, at the end:
            // its reader would see each rewrite as another report.
            let streamed = |p: &Path| p == Path::new("-") || std::fs::metadata(p).is_ok_and(|m| !m.is_file());
            match path {
                Some(p) if streamed(p) && !last => {}
                Some(p) => write_output(p, render(report).trim_end())?,
                None => {}
            }
        }
        Ok(())
    }
}

/// Progress of a sweep on a terminal, a line per configuration, and the
/// exports rewritten as it goes.
struct BenchProgress<'a> {
    bar: ProgressBar,
    out: &'a Out,
    exports: &'a Exports,
    epochs: u64,
    /// The "vs 100%" column as printed for each row so far.
    printed: Vec<String>,
}

/// A row's ratio to the all-resident throughput as the table prints it.
fn vs_resident_cell(r: &bench::BenchRow) -> String {
    r.vs_resident.map_or("-".into(), |v| format!("{v:.2}×"))
}

/// A line for every row whose "vs 100%" now reads otherwise than `printed`
/// (as printed when the row was measured): a line's ratio is to the fastest
/// all-resident row measured by then, and a faster one measured later
/// changes it (the exports hold the final ratios).
fn changed_ratios(rows: &[bench::BenchRow], printed: &[String]) -> Vec<String> {
    rows.iter()
        .zip(printed)
        .filter_map(|(r, printed)| {
            let now = vs_resident_cell(r);
            (now != *printed).then(|| {
                format!(
                    "vs 100% of {} {} {} is {now}, not {printed}: a faster all-resident row was measured after it",
                    r.backend, r.budget, r.policy
                )
            })
        })
        .collect()
}

impl bench::Progress for BenchProgress<'_> {
    fn start(&mut self, index: usize, total: usize, label: &str) {
        self.bar.set_message(format!("[{}/{total}] {label}", index + 1));
    }

    fn epoch(&mut self, _e: &train::EpochReport) {
        self.bar.inc(1);
    }

    fn row(&mut self, report: &BenchReport) -> Result<()> {
        let r = report.rows.last().expect("a row was added");
        let vs_resident = vs_resident_cell(r);
        let line = format!(
            "{:<7} {:<8} {:<10} {:>6} {:>11.3e} {:>8} {:>11.0} {:>11} {:>7} {:>8} {:>7} {:>8} {:>8} {:>9}",
            r.backend,
            r.budget,
            r.policy,
            r.batch,
            r.median_ratings_per_sec,
            vs_resident,
            r.rows_in_per_epoch,
            r.belady_rows_in_per_epoch.map_or("-".into(), |v| format!("{v:.0}")),
            r.hit_rate.map_or("-".into(), |h| format!("{:.1}%", 100.0 * h)),
            r.test_rmse.map_or("ceiling".into(), |v| format!("{v:.4}")),
            r.bandwidth_share.map_or("-".into(), |b| format!("{:.1}%", 100.0 * b)),
            r.bound.as_deref().unwrap_or("-"),
            r.kernel_bytes_per_sec.map_or("-".into(), |b| format!("{:.2}", b / 1e9)),
            r.seconds_to_target.map_or("-".into(), |t| format!("{t:.2} s")),
        );
        self.printed.push(vs_resident);
        self.bar.suspend(|| self.out.line(&line));
        self.exports.write(report, false)
    }

    fn skipped(&mut self, s: &bench::Skipped) {
        self.bar.inc(self.epochs);
        let line = format!("{:<7} {:<8} {:<10} skipped: {}", s.backend, s.budget, s.policy, s.reason);
        self.bar.suspend(|| self.out.line(&line));
    }
}

pub(crate) fn cmd_bench(a: BenchArgs) -> Result<()> {
    let (backends, adapter) = (a.backend.as_str(), a.adapter.as_deref());
    // `auto` is resolved now: the best adapter, or the CPU when there is none.
    let (mut plan, notices, source) = match &a.preset {
        Some(name) => {
            let preset = bench::Preset::named(name)?;
            let (plan, notices) = preset.plan(backends, adapter)?;
            (plan, notices, preset.source()?)
        }
        None => {
            // Every configuration is a `train` run of these settings.
            let spec = train::RunSpec {
                hp: HyperParams { rank: a.rank, lr: a.lr, reg: a.reg, ..HyperParams::default() },
                epochs: a.epochs,
                batch: train::BatchRequest::Fixed(a.batch),
                seed: a.seed,
                ..train::RunSpec::default()
            };
            let budgets = Budget::parse_list("--device-memory", &a.device_memory)?;
            let policies = PolicyKind::parse_list("--policy", &a.policy)?;
            let (plan, notices) = bench::BenchPlan::of(&spec, (backends, adapter), budgets, policies, a.warmup)?;
            (plan, notices, a.data.source()?)
        }
    };
    if let Some(t) = a.threads {
        // Checked as `train` checks it.
        let backend = train::BackendSpec { threads: t, ..train::BackendSpec::default() };
        train::RunSpec { backend, ..train::RunSpec::default() }.validate()?;
        plan.threads = t;
    }
    plan.lookahead = a.lookahead;
    plan.hogwild_width = a.hogwild.width()?;
    let exports =
        Exports { json: a.export_json.clone(), csv: a.export_csv.clone(), markdown: a.export_markdown.clone() };
    exports.check()?;
    let inputs = [("--data", source.path.as_deref()), ("--test", source.test.as_deref())];
    check_paths(
        &[
            ("--export-json", a.export_json.as_deref()),
            ("--export-csv", a.export_csv.as_deref()),
            ("--export-markdown", a.export_markdown.as_deref()),
        ],
        // The charts go into the folder, created if missing.
        &[("--plot", a.plot.as_deref())],
        &inputs,
    )?;
    let out = Out { to_stderr: exports.to_stdout() };
    if let Some(t) = a.target_rmse
        && !(t.is_finite() && t > 0.0)
    {
        return Err(Error::arg("--target-rmse", t.to_string(), "must be a finite RMSE above 0"));
    }
    plan.target_rmse = a.target_rmse;
    for n in notices {
        warn!("notice: {}", flags(&n));
    }
    let (data, skipped) = load_dataset(&source, plan.settings.seed, &out)?;
    let (rank, warmup, epochs) = (plan.settings.hp.rank, plan.warmup, plan.epochs);
    let per_config = (warmup + epochs) as u64;
    out.line(&format!(
        "bench: {} — {} train / {} test ratings, tables {} at rank {}; {} configuration(s), {} warm-up + {} timed epoch(s) each",
        data.name,
        data.train.len(),
        data.test.len(),
        human_bytes(train::table_bytes(&data, rank)),
        rank,
        plan.configurations(),
        warmup,
        epochs
    ));
    out.line(&format!(
        "{:<7} {:<8} {:<10} {:>6} {:>11} {:>8} {:>11} {:>11} {:>7} {:>8} {:>7} {:>8} {:>8} {:>9}",
        "backend",
        "budget",
        "policy",
        "batch",
        "ratings/s",
        "vs 100%",
        "rows in/ep",
        "Belady",
        "hits",
        "RMSE",
        "bw",
        "bound",
        "dev GB/s",
        "to target"
    ));
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(plan.configurations() as u64 * per_config);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} epochs {msg}, {elapsed} elapsed, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut progress = BenchProgress { bar, out: &out, exports: &exports, epochs: per_config, printed: Vec::new() };
    let cancel = train::CancelToken::new();
    interrupt_on_signal(cancel.clone());
    let report = bench::run(&data, DatasetInfo::of(&data, skipped), &plan, cancel.flag(), &mut progress)?;
    progress.bar.finish_and_clear();
    for line in changed_ratios(&report.rows, &progress.printed) {
        out.line(&line);
    }
    exports.write(&report, true)?;
    if let Some(dir) = &a.plot
        && !report.rows.is_empty()
    {
        for p in bench::plot::plot(&report, dir)? {
            out.line(&format!("chart: {}", p.display()));
        }
    }
    if !report.complete {
        out.line(&format!("interrupted: {} configuration(s) measured and exported", report.rows.len()));
        return Err(Error::Interrupted);
    }
    if let (true, Some(s)) = (report.rows.is_empty(), report.skipped.first()) {
        return Err(Error::NothingMeasured {
            what: "configuration",
            reason: format!("{} {} {}: {}", s.backend, s.budget, s.policy, s.reason),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_changed_by_a_later_faster_row_is_reported() {
        let row = |policy: &str, rate: f64| bench::BenchRow {
            backend: "gl".into(),
            adapter: "llvmpipe".into(),
            budget: "100%".into(),
            budget_percent: Some(100.0),
            policy: policy.into(),
            median_ratings_per_sec: rate,
            ..Default::default()
        };
        let mut rows = vec![row("sca", 90.0)];
        bench::fill_ratios(&mut rows);
        let printed = [vs_resident_cell(&rows[0])];
        assert_eq!(printed[0], "1.00×");
        rows.push(row("lookahead", 100.0));
        bench::fill_ratios(&mut rows);
        let printed = [printed[0].clone(), vs_resident_cell(&rows[1])];
        assert_eq!(
            changed_ratios(&rows, &printed),
            ["vs 100% of gl 100% sca is 0.90×, not 1.00×: a faster all-resident row was measured after it"]
        );
        assert!(changed_ratios(&rows[1..], &printed[1..]).is_empty());
    }
}
