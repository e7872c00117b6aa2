//! `rowstage bench` as a library: a sweep on every test adapter, its rows
//! checked against the simulator's offline optimum, its exports and charts
//! read back, and an interrupted sweep keeping what it measured.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use rowstage::bench::{self, BenchPlan, BenchReport, Progress};
use rowstage::data::{Dataset, SyntheticSpec, generate};
use rowstage::gpu::BackendChoice;
use rowstage::model::HyperParams;
use rowstage::report::DatasetInfo;
use rowstage::stage::{Budget, PolicyKind};
use rowstage::train::TrainSettings;

fn dataset() -> (Dataset, DatasetInfo) {
    // Sizes that are not multiples of the workgroup size (64).
    let spec = SyntheticSpec::parse("301,157,5003", Some(1.05)).unwrap();
    let data = Dataset::split("tiny", generate(&spec, 11), 0.1, 11);
    let info = DatasetInfo::of(&data, 0);
    (data, info)
}

fn plan(backend: BackendChoice) -> BenchPlan {
    BenchPlan {
        backends: vec![(backend, None), (BackendChoice::Cpu, None)],
        budgets: vec![
            ("100%".into(), Budget::Percent(100.0)),
            ("30%".into(), Budget::Percent(30.0)),
            ("8%".into(), Budget::Percent(8.0)),
        ],
        policies: vec![PolicyKind::Static, PolicyKind::Sca, PolicyKind::Belady],
        warmup: 1,
        epochs: 2,
        settings: TrainSettings {
            hp: HyperParams { rank: 7, ..Default::default() },
            grid: Vec::new(),
            epochs: 3,
            batch: 333,
            seed: 5,
            deterministic: false,
            co_partition: None,
            order: rowstage::train::Order::Auto,
        },
        lookahead: 8,
        threads: 2,
        hogwild_width: Default::default(),
        // Above any first epoch's test RMSE on these ratings (1–5 stars):
        // every row reaches it in its first epoch.
        target_rmse: Some(1.5),
    }
}

/// Records the configurations started and raises `stop` when the
/// `stop_at`-th starts.
struct Recorder<'a> {
    starts: usize,
    rows_seen: usize,
    stop_at: Option<usize>,
    stop: &'a AtomicBool,
}

impl Progress for Recorder<'_> {
    fn start(&mut self, index: usize, _total: usize, _label: &str) {
        self.starts += 1;
        if self.stop_at == Some(index) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    fn row(&mut self, report: &BenchReport) -> rowstage::Result<()> {
        self.rows_seen += 1;
        assert_eq!(report.rows.len(), self.rows_seen, "every row is reported as it lands");
        assert!(!report.complete, "a report handed over mid-sweep is not complete");
        Ok(())
    }
}

#[test]
fn a_sweep_is_bounded_by_belady_exports_and_plots_and_survives_interruption() {
    let (data, info) = dataset();
    for backend in common::test_backends() {
        let name = "bench sweep";
        let Some(ctx) = common::gpu(backend, name) else { continue };
        drop(ctx);
        let plan = plan(backend);
        let stop = AtomicBool::new(false);
        let mut rec = Recorder { starts: 0, rows_seen: 0, stop_at: None, stop: &stop };
        let report = bench::run(&data, info.clone(), &plan, &stop, &mut rec).unwrap();
        assert!(report.complete);
        assert_eq!(rec.starts, 10);
        assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);
        assert_eq!(report.rows.len(), 10);
        for r in report.rows.iter().filter(|r| r.backend != "cpu") {
            let floor = r.belady_rows_in_per_epoch.expect("a staged row has a Belady floor");
            let what = format!("{} {} {} batch {}", r.backend, r.budget, r.policy, r.batch);
            // Belady trained on the GPU moves exactly what the simulator's
            // optimum moves; no other policy moves fewer.
            if r.policy == "belady" {
                assert_eq!(r.rows_in_per_epoch, floor, "{what}");
            }
            assert!(r.rows_in_per_epoch >= floor, "{what}: {} rows in below the floor {floor}", r.rows_in_per_epoch);
            let hit = r.hit_rate.expect("staged rows have a hit rate");
            if r.budget == "100%" && r.policy != "belady" {
                // A slab of exactly the tables keeps a few slots for staging,
                // so a handful of rows may still move.
                assert!(hit > 0.99, "{what}: hit rate {hit} with the tables' size");
            }
            assert!((0.0..=1.0).contains(&hit), "{what}: hit rate {hit}");
            let rmse = r.test_rmse.expect("a GPU adapter's row has a model");
            assert!(r.median_ratings_per_sec > 0.0 && rmse.is_finite() && rmse < 1.5, "{what}");
            assert!(!r.ceiling, "{what}");
            // lavapipe and llvmpipe have timestamp queries: device time and
            // the kernels' bandwidth come from them.
            assert!(r.median_device_seconds.is_some_and(|d| d > 0.0), "{what}: no device time");
            assert!(r.kernel_bytes_per_sec.is_some_and(|b| b > 0.0) && r.bound.is_some(), "{what}");
            assert!(r.bandwidth_share.is_some_and(|b| b > 0.0), "{what}");
            assert!(r.vs_resident.is_some(), "{what}: the 100% rows are the peer");
            assert_eq!(r.timed_epochs, 2);
            assert_eq!(r.epochs_to_target, Some(1), "{what}");
            assert!(r.seconds_to_target.is_some_and(|t| t > 0.0), "{what}");
        }
        let best_resident =
            report.rows.iter().filter(|r| r.budget == "100%").map(|r| r.vs_resident.unwrap()).fold(0.0f64, f64::max);
        assert_eq!(best_resident, 1.0, "the fastest all-resident row is the peer itself");
        let cpu = report.rows.last().unwrap();
        assert_eq!((cpu.backend.as_str(), cpu.budget.as_str(), cpu.policy.as_str()), ("cpu", "-", "-"));
        assert_eq!(cpu.rows_in_per_epoch, 0.0);

        // Exports read back.
        let csv = bench::export::csv(&report);
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let header = reader.headers().unwrap().clone();
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 10);
        assert!(records.iter().all(|r| r.len() == header.len()));
        let col = header.iter().position(|h| h == "rows_in_per_epoch").unwrap();
        assert_eq!(records[0][col].parse::<f64>().unwrap(), report.rows[0].rows_in_per_epoch);
        let md = bench::export::markdown(&report);
        assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 12, "header, rule and 10 rows:\n{md}");
        let json: serde_json::Value = serde_json::from_str(&bench::export::json(&report)).unwrap();
        assert_eq!(json["complete"], true);
        assert_eq!(json["rows"].as_array().unwrap().len(), 10);

        // Charts: three SVGs with their titles, axis labels and legends.
        let dir = tempfile::tempdir().unwrap();
        let files = bench::plot::plot(&report, dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        for (f, must) in files.iter().zip([
            ["Rows staged in per epoch", "Belady (offline optimum)", "rows host→device per epoch"],
            ["Training throughput", "(no staging)", "ratings/s"],
            ["Slab hit rate", "sca", "hit rate (% of row lookups)"],
        ]) {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(svg.starts_with("<svg"), "{}", f.display());
            for m in must.iter().chain(&["device memory budget (% of both tables, log scale)", "static"]) {
                assert!(svg.contains(m), "{} lacks {m:?}", f.display());
            }
            // The legend stands in its own column right of the plot (which
            // ends at x = 800), never over the data.
            let legend_x = svg
                .split("<text")
                .filter_map(|t| t.split_once("</text>").map(|(t, _)| t))
                .filter(|t| t.split_once('>').is_some_and(|(_, name)| ["static", "sca"].contains(&name.trim())))
                .filter_map(|t| t.split("x=\"").nth(1)?.split('"').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>();
            assert!(
                !legend_x.is_empty() && legend_x.iter().all(|&x| x > 800.0),
                "{}: legend at {legend_x:?}",
                f.display()
            );
            // Ticks carry units: percent budgets on x.
            assert!(svg.contains("100%\n</text>"), "{}: no percent ticks", f.display());
        }

        // Interrupted while the third configuration runs: the first two stay.
        let stop = AtomicBool::new(false);
        let mut rec = Recorder { starts: 0, rows_seen: 0, stop_at: Some(2), stop: &stop };
        let partial = bench::run(&data, info.clone(), &plan, &stop, &mut rec).unwrap();
        assert!(!partial.complete);
        assert_eq!(partial.rows.len(), 2);
        assert_eq!(bench::export::markdown(&partial).matches("INCOMPLETE").count(), 1);
    }
}
