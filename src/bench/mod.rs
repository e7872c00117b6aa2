//! `rowstage bench`: one dataset trained through a sweep of backends ×
//! device-memory budgets × staging policies, each configuration with warm-up
//! epochs and then timed epochs, summarised by medians.
//!
//! Each configuration is a real training run through [`crate::train::train`]
//! (same epoch orders, same kernels, same ledger), so a bench row is what
//! `rowstage train` would report for that configuration. Per row:
//!
//! * median ratings/s and seconds over the timed epochs (evaluation excluded);
//! * rows and bytes each way per timed epoch (medians), and the hit rate;
//! * test RMSE after the last epoch (none on the noop backend, whose speed
//!   is the host's ceiling and whose tables are no model);
//! * the host's and the device's seconds per epoch (medians; the device's
//!   from timestamp queries where the adapter has them) and which bounded
//!   the epoch;
//! * the training step's achieved bandwidth: the bytes SGD must touch per
//!   rating (both rows read and written, the rating and its two slot-map
//!   entries, [`sgd_bytes_per_rating`]) times the ratings/s, as a share of
//!   the adapter's measured device copy bandwidth
//!   ([`crate::gpu::calibrate::copy_bandwidth`]). Epoch time includes
//!   staging, so this is a lower bound of the kernel's own bandwidth; and
//!   the kernels' bandwidth from the device time: the bytes every pass
//!   touched (SGD's, and the staged rows' through the windows) over the
//!   device seconds;
//! * the ratio to the same backend's all-resident throughput (the fastest
//!   row whose budget holds both tables), the cost of staging;
//! * the Belady floor: rows the offline optimum moves per epoch at that
//!   budget, from the simulator (no kernels).
//!
//! The CPU backend has no device memory: it runs once, with budget and policy
//! `-`.

pub mod environment;
pub mod export;
pub mod lesson;
pub mod plot;
pub mod simulate;

use std::sync::atomic::AtomicBool;

use serde::Serialize;

use crate::data::Dataset;
use crate::engine::simulate::SimSetup;
use crate::error::{Error, Result};
use crate::gpu::BackendChoice;
use crate::stage::{Budget, PolicyKind};
use crate::train::{self, BackendSpec, EpochReport, RunControl, TrainSettings};
pub use environment::Environment;

/// The smallest batch the sweep shrinks to before it skips a budget.
pub const MIN_BATCH: usize = 16;

/// Backends of a sweep, each with an adapter name filter.
pub type Backends = Vec<(BackendChoice, Option<String>)>;

/// What to sweep.
#[derive(Debug, Clone, Serialize)]
pub struct BenchPlan {
    /// Backends (and an adapter name filter each), in order.
    pub backends: Backends,
    /// Budgets with the text the user gave (`10%`, `64MiB`).
    pub budgets: Vec<(String, Budget)>,
    pub policies: Vec<PolicyKind>,
    /// Untimed epochs before the timed ones (at least 0).
    pub warmup: usize,
    /// Timed epochs (at least 1).
    pub epochs: usize,
    /// Everything else of the run; `epochs` is replaced by `warmup + epochs`.
    /// `batch` is the largest batch: where a budget cannot hold one, it is
    /// halved (down to [`MIN_BATCH`]) until the slab holds a batch.
    pub settings: TrainSettings,
    pub lookahead: usize,
    pub threads: usize,
    pub hogwild_width: crate::gpu::HogwildWidth,
    /// A test RMSE to time each configuration to (`seconds_to_target`).
    pub target_rmse: Option<f64>,
}

/// A fixed sweep: the same data, settings and configurations on every
/// machine, so that figures from a phone's browser and a workstation's
/// command line go into one table. `rowstage bench --preset web` and the
/// page's "Benchmark this device" run [`PRESETS`]' `web`.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    /// The generator's `USERS,ITEMS,RATINGS` (MovieLens-shaped skew).
    pub synthetic: &'static str,
    pub budgets: &'static str,
    pub policies: &'static str,
    pub warmup: usize,
    pub epochs: usize,
    pub rank: usize,
    /// Fixed, so that no configuration spends time choosing.
    pub lr: f32,
    pub reg: f32,
    pub batch: usize,
    pub seed: u64,
}

/// The presets, by name.
pub const PRESETS: &[Preset] = &[Preset {
    name: "web",
    // Small enough for a software adapter in a browser (SwiftShader trains
    // it in about half a minute), skewed as real data is.
    synthetic: "2000,1000,50000",
    budgets: "100%,25%,5%",
    policies: "sca",
    warmup: 1,
    epochs: 2,
    rank: 32,
    lr: 0.05,
    reg: 0.08,
    batch: 2048,
    seed: 42,
}];

impl Preset {
    /// The preset called `name`.
    pub fn named(name: &str) -> Result<&'static Preset> {
        PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            Error::arg("`preset`", name, format!("expected one of {}", names.join(", ")))
        })
    }

    /// Where its ratings come from: the generator.
    pub fn source(&self) -> Result<crate::data::DataSource> {
        let synthetic = crate::data::SyntheticSpec::parse(self.synthetic, None)?;
        Ok(crate::data::DataSource { synthetic, ..crate::data::DataSource::default() })
    }

    /// Its sweep over the comma-separated `backends` (see [`BenchPlan::of`]).
    pub fn plan(&self, backends: &str, adapter: Option<&str>) -> Result<(BenchPlan, Vec<String>)> {
        let spec = crate::train::RunSpec {
            hp: crate::model::HyperParams { rank: self.rank, lr: self.lr, reg: self.reg, ..Default::default() },
            epochs: self.epochs,
            batch: crate::train::BatchRequest::Fixed(self.batch),
            seed: self.seed,
            ..crate::train::RunSpec::default()
        };
        let budgets = Budget::parse_list("`device_memory`", self.budgets)?;
        let policies = PolicyKind::parse_list("`policy`", self.policies)?;
        BenchPlan::of(&spec, (backends, adapter), budgets, policies, self.warmup)
    }
}

/// The backends of a sweep from a comma-separated list of names, `auto`
/// resolved now to the best adapter's backend (or the CPU's where there is
/// none and no `adapter` filter was asked for, with a notice), and each named
/// once. Returns them with `adapter` (the CPU's `None`) and the notices.
fn resolve_backends(names: &str, adapter: Option<&str>) -> Result<(Backends, Vec<String>)> {
    use crate::Named;
    let (mut resolved, mut notices) = (Vec::new(), Vec::new());
    for name in names.split(',') {
        let b = <BackendChoice as Named>::from_name(name)
            .ok_or_else(|| Error::arg("`backend`", name, format!("expected a list of {}", BackendChoice::names())))?;
        let choice = if b == BackendChoice::Auto {
            match crate::gpu::GpuContext::new(b, adapter) {
                Ok(ctx) => <BackendChoice as Named>::from_name(&ctx.summary.backend.to_lowercase()).unwrap_or(b),
                Err(Error::NoAdapter { hint, .. }) if adapter.is_none() => {
                    notices.push(format!("no GPU adapter found ({hint}); benchmarking the CPU backend instead"));
                    BackendChoice::Cpu
                }
                Err(e) => return Err(e),
            }
        } else {
            b
        };
        let filter = if choice == BackendChoice::Cpu { None } else { adapter.map(str::to_string) };
        if !resolved.contains(&(choice, filter.clone())) {
            resolved.push((choice, filter));
        }
    }
    Ok((resolved, notices))
}

impl BenchPlan {
    /// The sweep of `spec`'s run (its `epochs` the timed ones) over the
    /// comma-separated `backends` (on adapters matching `adapter`) ×
    /// `budgets` × `policies`, after `warmup` untimed epochs; with notices
    /// for the user (`auto` finding no adapter).
    pub fn of(
        spec: &crate::train::RunSpec,
        (backends, adapter): (&str, Option<&str>),
        budgets: Vec<(String, Budget)>,
        policies: Vec<PolicyKind>,
        warmup: usize,
    ) -> Result<(Self, Vec<String>)> {
        spec.validate()?;
        if spec.epochs == 0 {
            return Err(Error::arg("`epochs`", "0", "must be at least 1 timed epoch"));
        }
        let most = crate::train::MAX_EPOCHS - spec.epochs;
        if warmup > most {
            return Err(Error::arg(
                "`warmup`",
                warmup.to_string(),
                format!(
                    "must be at most {most}: warm-up and timed epochs together at most {}",
                    crate::train::MAX_EPOCHS
                ),
            ));
        }
        let (backends, notices) = resolve_backends(backends, adapter)?;
        let mut settings = spec.settings();
        settings.epochs = warmup + spec.epochs;
        let plan = BenchPlan {
            backends,
            budgets,
            policies,
            warmup,
            epochs: spec.epochs,
            settings,
            lookahead: spec.backend.lookahead,
            threads: spec.backend.threads,
            hogwild_width: spec.backend.hogwild_width,
            target_rmse: None,
        };
        Ok((plan, notices))
    }

    /// Configurations the sweep runs (the CPU backend counts once).
    pub fn configurations(&self) -> usize {
        self.backends
            .iter()
            .map(|(b, _)| if *b == BackendChoice::Cpu { 1 } else { self.budgets.len() * self.policies.len() })
            .sum()
    }
}

/// One configuration's results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchRow {
    /// `cpu` or the wgpu backend (`vulkan`, `gl`, ...).
    pub backend: String,
    pub adapter: String,
    /// The budget as given (`-` for the CPU backend).
    pub budget: String,
    pub device_memory_bytes: Option<u64>,
    /// The slab as a share of both tables, in percent.
    pub budget_percent: Option<f64>,
    /// The staging policy (`-` for the CPU backend).
    pub policy: String,
    /// The batch used: the plan's, or smaller where the budget holds no
    /// batch of that size.
    pub batch: usize,
    /// The epoch order trained (`blocked:B`, `shuffled`).
    pub order: String,
    /// Workers that trained at once (median over the timed epochs).
    pub workers: f64,
    pub timed_epochs: usize,
    pub median_ratings_per_sec: f64,
    pub median_epoch_seconds: f64,
    /// Every timed epoch's ratings/s, in order.
    pub ratings_per_sec: Vec<f64>,
    /// Ratings/s over the timed epochs: mean, σ, min, max, median.
    pub ratings_per_sec_stats: Stats,
    /// Seconds per timed epoch (evaluation excluded).
    pub epoch_seconds_stats: Stats,
    /// The host's seconds per timed epoch.
    pub host_seconds_stats: Stats,
    /// The device's seconds per timed epoch, where timestamps were measured.
    pub device_seconds_stats: Option<Stats>,
    /// Medians over the timed epochs.
    pub rows_in_per_epoch: f64,
    pub rows_out_per_epoch: f64,
    pub bytes_h2d_per_epoch: f64,
    pub bytes_d2h_per_epoch: f64,
    /// Hits / lookups over the timed epochs (`None` without staging).
    pub hit_rate: Option<f64>,
    /// After the last epoch (`None` on the noop backend: no model).
    pub test_rmse: Option<f64>,
    /// The noop backend: the figures are the host's ceiling.
    pub ceiling: bool,
    /// Medians over the timed epochs of the host's own seconds and the
    /// device's (timestamp queries; `None` without them), and which was
    /// larger (`host` or `device`).
    pub median_host_seconds: f64,
    pub median_device_seconds: Option<f64>,
    pub bound: Option<String>,
    /// Bytes the device's passes touched per second of device time: SGD's
    /// per rating, and each staged row read and written once by a scatter
    /// and once by a gather.
    pub kernel_bytes_per_sec: Option<f64>,
    /// `kernel_bytes_per_sec / copy_bytes_per_sec`.
    pub kernel_bandwidth_share: Option<f64>,
    /// Device steps and dispatches per epoch (medians): what a step's
    /// latency and a dispatch's overhead multiply.
    pub steps_per_epoch: f64,
    pub dispatches_per_epoch: f64,
    /// The cost model's rows in per epoch, where the policy has one.
    pub predicted_rows_in_per_epoch: Option<f64>,
    /// Rows in per epoch of the offline optimum at this budget (simulated).
    pub belady_rows_in_per_epoch: Option<f64>,
    /// SGD bytes per rating × median ratings/s.
    pub sgd_bytes_per_sec: f64,
    /// The adapter's device copy bandwidth (read + write bytes per second).
    pub copy_bytes_per_sec: Option<f64>,
    /// `sgd_bytes_per_sec / copy_bytes_per_sec`.
    pub bandwidth_share: Option<f64>,
    /// Median ratings/s over the same backend's all-resident median (filled
    /// in by [`fill_ratios`]).
    pub vs_resident: Option<f64>,
    /// Training seconds from the first epoch (warm-up included, evaluation
    /// excluded) to the end of the first epoch whose test RMSE reached the
    /// plan's `target_rmse`, and that epoch; `None` when none did.
    pub seconds_to_target: Option<f64>,
    pub epochs_to_target: Option<usize>,
}

/// A configuration that could not run (e.g. a budget below one batch).
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub backend: String,
    pub budget: String,
    pub policy: String,
    pub reason: String,
}

/// The whole sweep, as exported.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub dataset: crate::report::DatasetInfo,
    pub plan: BenchPlan,
    pub wgpu_version: &'static str,
    /// The machine, adapters, drivers, build and date of the sweep.
    pub environment: Environment,
    /// Bytes of both tables (one model).
    pub table_bytes: u64,
    pub rows: Vec<BenchRow>,
    pub skipped: Vec<Skipped>,
    /// False while the sweep runs and when it was interrupted.
    pub complete: bool,
}

/// Bytes SGD touches per rating: both rows of every model read and written,
/// the 12-byte rating and its two 4-byte slot-map entries.
pub fn sgd_bytes_per_rating(row_bytes: u64) -> u64 {
    4 * row_bytes + 20
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// A figure over the timed epochs: what hyperfine reports of its runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    pub mean: f64,
    /// Sample standard deviation (0 with fewer than two epochs).
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
    pub median: f64,
}

impl Stats {
    /// The statistics of `v` (all zero when empty).
    pub fn of(v: &[f64]) -> Stats {
        if v.is_empty() {
            return Stats::default();
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Stats {
            mean,
            stddev: var.sqrt(),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median: median(v),
        }
    }
}

/// Sets every row's [`BenchRow::vs_resident`]: its median ratings/s over the
/// fastest row of the same backend and adapter whose budget holds both tables.
pub fn fill_ratios(rows: &mut [BenchRow]) {
    for k in 0..rows.len() {
        let base = rows
            .iter()
            .filter(|r| {
                r.backend == rows[k].backend
                    && r.adapter == rows[k].adapter
                    && r.budget_percent.is_some_and(|p| p >= 100.0 - 1e-9)
            })
            .map(|r| r.median_ratings_per_sec)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        rows[k].vs_resident = base.filter(|&b| b > 0.0).map(|b| rows[k].median_ratings_per_sec / b);
    }
}

/// What the sweep tells its caller as it goes.
pub trait Progress {
    /// A configuration starts (`index` of `total`).
    fn start(&mut self, _index: usize, _total: usize, _label: &str) {}
    /// An epoch of the running configuration ended.
    fn epoch(&mut self, _e: &EpochReport) {}
    /// A configuration finished; the report so far (not complete) follows.
    fn row(&mut self, _report: &BenchReport) -> Result<()> {
        Ok(())
    }
    /// A configuration was skipped.
    fn skipped(&mut self, _s: &Skipped) {}
}

/// Rows in per epoch of the offline optimum with a slab of `bytes`, run by
/// the simulator through the same epochs as `settings`: the median over the
/// epochs after `warmup`, as the rows are. `None` when the slab cannot hold a
/// batch.
pub fn belady_floor(
    data: &Dataset,
    settings: &TrainSettings,
    warmup: usize,
    lookahead: usize,
    bytes: u64,
) -> Result<Option<f64>> {
    let sim = SimSetup {
        train: &data.train,
        n_users: data.users.len(),
        n_items: data.items.len(),
        batch: settings.batch,
        seed: settings.seed,
        epochs: settings.epochs,
        row_bytes: settings.row_bytes(),
        lookahead,
        co_partition: settings.co_partition.map(|c| c.side),
        co_partition_visits: settings.co_partition.map_or(1, |c| c.visits),
        order: settings.order,
    };
    let Some(r) = sim.run(PolicyKind::Belady, bytes, None)? else { return Ok(None) };
    let timed: Vec<f64> = r.epoch_rows_in.iter().skip(warmup).map(|&x| x as f64).collect();
    Ok(Some(median(&timed)))
}

/// Runs the sweep of `plan` on `data`. `stop` ends it at the next batch
/// boundary: the configuration then running is dropped and the report comes
/// back with `complete: false`. A configuration that cannot run (a budget
/// below one batch, or, among several backends, one without a usable
/// adapter) is skipped with its reason; any other error ends the sweep.
pub fn run(
    data: &Dataset,
    dataset: crate::report::DatasetInfo,
    plan: &BenchPlan,
    stop: &AtomicBool,
    progress: &mut dyn Progress,
) -> Result<BenchReport> {
    if plan.epochs == 0 {
        return Err(Error::arg("`epochs`", "0", "must be at least 1 timed epoch"));
    }
    let table_bytes = train::table_bytes(data, plan.settings.hp.rank);
    let environment = Environment::capture(&crate::gpu::list_adapters(BackendChoice::Auto));
    let mut report = BenchReport {
        dataset,
        plan: plan.clone(),
        wgpu_version: crate::gpu::WGPU_VERSION,
        environment,
        table_bytes,
        rows: Vec::new(),
        skipped: Vec::new(),
        complete: false,
    };
    let settings = TrainSettings { epochs: plan.warmup + plan.epochs, ..plan.settings.clone() };
    let total = plan.configurations();
    let mut index = 0;
    // Belady floors by (budget, batch, order).
    let mut floors: Vec<(usize, usize, crate::engine::Order, Option<f64>)> = Vec::new();
    for (backend, adapter) in &plan.backends {
        let cpu = *backend == BackendChoice::Cpu;
        let configs: Vec<(Option<usize>, Option<PolicyKind>)> = if cpu {
            vec![(None, None)]
        } else {
            (0..plan.budgets.len()).flat_map(|b| plan.policies.iter().map(move |&p| (Some(b), Some(p)))).collect()
        };
        // One device per adapter for the whole sweep (see GpuContext). Among
        // several backends, one without a usable adapter is skipped, its rows
        // saying why; alone, it is the error.
        let mut unusable = None;
        let ctx = if cpu {
            None
        } else {
            match crate::gpu::GpuContext::new(*backend, adapter.as_deref()) {
                Ok(c) => Some(c),
                Err(e @ (Error::NoAdapter { .. } | Error::BackendMissing { .. })) if plan.backends.len() > 1 => {
                    unusable = Some(e.to_string());
                    None
                }
                Err(e) => return Err(e),
            }
        };
        // The noop backend's copies are the host's memcpy: no device peer.
        let copy =
            ctx.as_ref().filter(|c| !c.summary.is_noop()).map(crate::gpu::calibrate::copy_bandwidth).transpose()?;
        for (b, policy) in configs {
            let budget_text = b.map_or("-".to_string(), |b| plan.budgets[b].0.clone());
            let policy_text = policy.map_or("-", |p| p.name()).to_string();
            progress.start(index, total, &format!("{} {} {}", backend.name(), budget_text, policy_text));
            index += 1;
            let spec = BackendSpec {
                backend: *backend,
                adapter: adapter.clone(),
                device_memory: b.map(|b| plan.budgets[b].1),
                policy: policy.unwrap_or(PolicyKind::Static),
                lookahead: plan.lookahead,
                threads: plan.threads,
                hogwild_width: plan.hogwild_width,
                distributed: train::Distributed::Off,
                ..BackendSpec::default()
            };
            // The batch shrinks (halving) until the slab holds one: a small
            // accelerator memory means small batches, and the row says which.
            let mut settings = settings.clone();
            let opened = match &unusable {
                Some(reason) => Err(reason.clone()),
                None => match train::open_backend_fitting(data, &mut settings, &spec, MIN_BATCH, ctx.as_ref()) {
                    Ok(o) => Ok(o),
                    // The sweep has no `order` to change: no advice of one.
                    Err(e @ Error::BudgetTooSmall { .. }) if settings.order != crate::engine::Order::Shuffled => {
                        Err(e.with_fix("").to_string())
                    }
                    Err(e @ Error::BudgetTooSmall { .. }) => Err(e.to_string()),
                    Err(e) => return Err(e),
                },
            };
            let skip = |reason: String| Skipped {
                backend: backend.name().into(),
                budget: budget_text.clone(),
                policy: policy_text.clone(),
                reason,
            };
            let opened = match opened {
                Ok(o) => o,
                Err(reason) => {
                    let s = skip(reason);
                    progress.skipped(&s);
                    report.skipped.push(s);
                    continue;
                }
            };
            let mut be = opened.backend;
            let control = RunControl { stop: Some(stop), ..RunControl::default() };
            let out = train::train(data, &settings, be.as_mut(), control, &mut |e| progress.epoch(e))?;
            if let Some(e) = &out.diverged {
                // A setting too large for the ratings: this configuration
                // has no figures, the others still do.
                let s = skip(e.to_string());
                progress.skipped(&s);
                report.skipped.push(s);
                continue;
            }
            if !out.complete {
                return Ok(report);
            }
            let timed = &out.epochs[plan.warmup.min(out.epochs.len())..];
            let med = |f: &dyn Fn(&EpochReport) -> f64| median(&timed.iter().map(f).collect::<Vec<_>>());
            let rps: Vec<f64> = timed.iter().map(|e| e.ratings_per_sec).collect();
            let median_rps = median(&rps);
            let (hits, misses) = timed.iter().fold((0, 0), |(h, m), e| (h + e.ledger.hits(), m + e.ledger.misses()));
            let bytes = opened.layout.as_ref().map(|l| l.slab_bytes);
            let floor = match (b, bytes) {
                (Some(b), Some(bytes)) => {
                    match floors.iter().find(|f| f.0 == b && f.1 == settings.batch && f.2 == out.order) {
                        Some(f) => f.3,
                        None => {
                            let run = TrainSettings { order: out.order, ..settings.clone() };
                            let f = belady_floor(data, &run, plan.warmup, plan.lookahead, bytes)?;
                            floors.push((b, settings.batch, out.order, f));
                            f
                        }
                    }
                }
                _ => None,
            };
            let sgd_bytes_per_sec = sgd_bytes_per_rating(settings.row_bytes()) as f64 * median_rps;
            let ceiling = be.is_ceiling();
            let device_seconds = timed.iter().map(|e| e.device_seconds).collect::<Option<Vec<f64>>>();
            let device = device_seconds.as_deref().map(median);
            let host = med(&|e| e.host_seconds);
            let kernel_bytes = med(&|e| {
                sgd_bytes_per_rating(settings.row_bytes()) as f64 * e.ratings as f64
                    + 2.0 * (e.ledger.rows_in() + e.ledger.rows_out()) as f64 * settings.row_bytes() as f64
            });
            let kernel_bytes_per_sec = device.filter(|&d| d > 0.0).map(|d| kernel_bytes / d);
            let reached = plan.target_rmse.filter(|_| !be.is_ceiling()).and_then(|target| {
                let k = out.epochs.iter().position(|e| e.test_rmse <= target)?;
                Some((out.epochs[..=k].iter().map(|e| e.seconds).sum::<f64>(), k + 1))
            });
            report.rows.push(BenchRow {
                backend: be.kind(),
                adapter: be.adapter(),
                budget: budget_text,
                device_memory_bytes: bytes,
                budget_percent: bytes.map(|x| 100.0 * x as f64 / settings.table_bytes(data).max(1) as f64),
                policy: policy_text,
                batch: settings.batch,
                order: out.order.name(),
                workers: med(&|e| e.workers),
                timed_epochs: timed.len(),
                median_ratings_per_sec: median_rps,
                median_epoch_seconds: med(&|e| e.seconds),
                ratings_per_sec_stats: Stats::of(&rps),
                epoch_seconds_stats: Stats::of(&timed.iter().map(|e| e.seconds).collect::<Vec<_>>()),
                host_seconds_stats: Stats::of(&timed.iter().map(|e| e.host_seconds).collect::<Vec<_>>()),
                device_seconds_stats: device_seconds.as_deref().map(Stats::of),
                ratings_per_sec: rps,
                rows_in_per_epoch: med(&|e| e.ledger.rows_in() as f64),
                rows_out_per_epoch: med(&|e| e.ledger.rows_out() as f64),
                bytes_h2d_per_epoch: med(&|e| e.ledger.bytes_h2d() as f64),
                bytes_d2h_per_epoch: med(&|e| e.ledger.bytes_d2h() as f64),
                hit_rate: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
                test_rmse: (!ceiling).then_some(out.final_metrics.rmse),
                ceiling,
                median_host_seconds: host,
                median_device_seconds: device,
                bound: device.map(|d| if d > host { "device" } else { "host" }.to_string()),
                kernel_bytes_per_sec,
                kernel_bandwidth_share: kernel_bytes_per_sec.zip(copy.filter(|&c| c > 0.0)).map(|(k, c)| k / c),
                steps_per_epoch: med(&|e| e.ledger.steps as f64),
                dispatches_per_epoch: med(&|e| e.dispatches as f64),
                // Every epoch's but the run's first, which also loads the resident rows.
                predicted_rows_in_per_epoch: timed.iter().find(|e| e.epoch > 1).and_then(|e| e.predicted_rows_in),
                belady_rows_in_per_epoch: floor,
                sgd_bytes_per_sec,
                copy_bytes_per_sec: copy,
                bandwidth_share: copy.filter(|&c| c > 0.0).map(|c| sgd_bytes_per_sec / c),
                vs_resident: None,
                seconds_to_target: reached.map(|r| r.0),
                epochs_to_target: reached.map(|r| r.1),
            });
            fill_ratios(&mut report.rows);
            progress.row(&report)?;
        }
    }
    report.complete = true;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_hyperfines_mean_sample_sigma_min_max_median() {
        let s = Stats::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!((s.mean, s.min, s.max, s.median), (5.0, 2.0, 9.0, 4.5));
        // Sample σ: the squared deviations sum to 32, over n - 1 = 7.
        assert!((s.stddev - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(Stats::of(&[3.0]), Stats { mean: 3.0, stddev: 0.0, min: 3.0, max: 3.0, median: 3.0 });
        assert_eq!(Stats::of(&[]), Stats::default());
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    fn row(backend: &str, percent: Option<f64>, rps: f64) -> BenchRow {
        BenchRow {
            backend: backend.into(),
            adapter: "a".into(),
            budget: "-".into(),
            device_memory_bytes: None,
            budget_percent: percent,
            policy: "sca".into(),
            batch: 1,
            order: "shuffled".into(),
            workers: 1.0,
            timed_epochs: 1,
            median_ratings_per_sec: rps,
            median_epoch_seconds: 1.0,
            ratings_per_sec: vec![rps],
            ratings_per_sec_stats: Stats::of(&[rps]),
            epoch_seconds_stats: Stats::default(),
            host_seconds_stats: Stats::default(),
            device_seconds_stats: None,
            rows_in_per_epoch: 0.0,
            rows_out_per_epoch: 0.0,
            bytes_h2d_per_epoch: 0.0,
            bytes_d2h_per_epoch: 0.0,
            hit_rate: None,
            test_rmse: Some(1.0),
            ceiling: false,
            median_host_seconds: 1.0,
            median_device_seconds: None,
            bound: None,
            kernel_bytes_per_sec: None,
            kernel_bandwidth_share: None,
            predicted_rows_in_per_epoch: None,
            belady_rows_in_per_epoch: None,
            sgd_bytes_per_sec: 0.0,
            copy_bytes_per_sec: None,
            bandwidth_share: None,
            vs_resident: None,
            ..BenchRow::default()
        }
    }

    #[test]
    fn ratios_are_to_the_fastest_all_resident_row_of_the_same_backend() {
        let mut rows = vec![
            row("vulkan", Some(100.0), 100.0),
            row("vulkan", Some(100.0), 80.0),
            row("vulkan", Some(10.0), 50.0),
            row("gl", Some(10.0), 40.0),
            row("cpu", None, 70.0),
        ];
        fill_ratios(&mut rows);
        assert_eq!(rows[1].vs_resident, Some(0.8));
        assert_eq!(rows[2].vs_resident, Some(0.5));
        assert_eq!(rows[3].vs_resident, None, "gl has no all-resident row");
        assert_eq!(rows[4].vs_resident, None);
    }
}
