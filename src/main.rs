//! The `rowstage` command line: a thin layer over the library.
//!
//! Exit codes: 0 success, 1 failure at run time (GPU, device), 2 bad input
//! (files, flags, budgets, ids).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use rowstage::Named;
use rowstage::bench::{self, BenchReport};
use rowstage::data::{self, Dataset, Format, HeaderMode, LoadOptions, SyntheticSpec, UNKNOWN};
use rowstage::error::{Error, Result};
use rowstage::gpu::{BackendChoice, HARDWARE_HOGWILD_WIDTH, HogwildWidth, list_adapters};
use rowstage::model::{self, HyperParams, Setting, serve};
use rowstage::report::{self, DatasetInfo, EpochJson, FinalJson, Report};
use rowstage::stage::{Budget, PolicyKind, human_bytes};
use rowstage::train::{self, BackendSpec};

#[derive(Parser)]
#[command(
    name = "rowstage",
    version,
    about = "Train recommendation embeddings (biased MF, SGD) with WGSL compute shaders through a fixed device-memory budget",
    long_about = "Train recommendation embeddings (biased matrix factorization, SGD) with WGSL compute \
shaders on any device wgpu reaches. The full tables stay in host memory; the GPU holds one \
--device-memory buffer of row slots, and a host scheduler stages into it the rows each batch \
needs, counting every byte that crosses host<->device.",
    after_help = "Examples:
  rowstage train                                          the built-in dataset on the best adapter
  rowstage train --data u.data --device-memory 10% --save model.safetensors
  rowstage recommend --model model.safetensors --user 42 --exclude-rated u.data
  rowstage eval --model model.safetensors --data test.tsv --predictions preds.txt
  rowstage simulate --data u.data --device-memory 1%,5%,10%,25% --policy all
  rowstage bench --backend vulkan,cpu --device-memory 100%,10% --plot charts/
  rowstage devices

`rowstage COMMAND --help` lists a command's flags."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model and report accuracy, speed and host<->device traffic per epoch.
    Train(Box<TrainArgs>),
    /// Score a ratings file with a saved model.
    Eval(EvalArgs),
    /// Print a user's top items with their predicted ratings.
    Recommend(RecommendArgs),
    /// Choose the batch size and the resident/staging split for a budget, and
    /// predict the traffic and speed.
    Plan(PlanArgs),
    /// Replay training's batch sequence through staging policies and budgets,
    /// without kernels, and count what each would move.
    Simulate(SimulateArgs),
    /// List every GPU adapter wgpu finds, with the limits that matter here.
    Devices(DevicesArgs),
    /// Write the train/test split a run of the same data flags trains on, as
    /// tab-separated `user item rating` files, for a peer to train on.
    Split(SplitArgs),
    /// Sweep budgets × policies (× backends) with warm-up and timed epochs;
    /// export the medians as JSON, CSV or Markdown and draw SVG charts.
    Bench(Box<BenchArgs>),
    /// Compare two saved models' tables: the largest |difference| of their
    /// factors and biases, row by row (the same model on two devices?).
    Compare(CompareArgs),
}

#[derive(Args, Clone)]
#[command(next_help_heading = "Data")]
struct DataArgs {
    /// Ratings file (MovieLens u.data / ratings.dat / ratings.csv, or user,item,rating[,timestamp] CSV/TSV).
    /// Without it, the built-in synthetic dataset is used.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Layout of the ratings files.
    #[arg(long, value_parser = Choice::<Format>::new(), default_value = "auto")]
    format: Format,
    /// Whether the first line of a CSV/TSV file is a header.
    #[arg(long, value_parser = Choice::<HeaderMode>::new(), default_value = "auto")]
    header: HeaderMode,
    /// Skip malformed lines (and report how many) instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Held-out ratings file; without it a seeded --test-fraction split is made.
    #[arg(long, value_name = "PATH")]
    test: Option<PathBuf>,
    /// Share of the ratings held out for testing when --test is not given.
    #[arg(long, default_value_t = 0.1, value_name = "F")]
    test_fraction: f64,
    /// Generate USERS,ITEMS,RATINGS synthetic ratings instead of reading --data
    /// (default when no --data: 4000,2000,200000, popularity shaped like
    /// MovieLens 100K's).
    #[arg(long, value_name = "USERS,ITEMS,RATINGS", conflicts_with = "data")]
    synthetic: Option<String>,
    /// Draw the synthetic users and items from a pure Zipf law of this
    /// exponent instead (0 = uniform; 1.05 was the earlier default).
    #[arg(long, value_name = "S")]
    zipf: Option<f64>,
}

#[derive(Args)]
#[command(after_help = "Examples:
  rowstage train                                     the built-in dataset, best adapter, 25% slab
  rowstage train --data u.data --device-memory 10%   MovieLens 100K through a 10% slab
  rowstage train --data u.data --backend cpu --save model.safetensors
  rowstage train --lr 0.02,0.05 --reg 0.05,0.08      a grid search in one run
  rowstage train --data ratings.csv --json - | jq .final")]
struct TrainArgs {
    /// Reproduce a run: read its data and settings from FILE, a report
    /// written by `train --json` (or a run request alone). Device flags
    /// (--backend, --adapter, --device-memory, --policy, --threads, ...) and
    /// output flags may be given beside it; they change speed and traffic,
    /// not the model. Model and data flags may not.
    #[arg(help_heading = "Data", long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Latent factors per row.
    #[arg(help_heading = "Model", long, default_value_t = 32)]
    rank: usize,
    /// Initial learning rate η₀; a comma-separated list (with --reg) trains
    /// every (lr, reg) pair side by side in one run: a grid search.
    #[arg(help_heading = "Model", long, default_value_t = HyperParams::DEFAULT.lr.to_string(), value_name = "LR[,LR...]")]
    lr: String,
    /// L2 regularisation of the factors; a comma-separated list makes a grid
    /// search with --lr.
    #[arg(help_heading = "Model", long, default_value_t = HyperParams::DEFAULT.reg.to_string(), value_name = "REG[,REG...]")]
    reg: String,
    /// L2 regularisation of the biases.
    #[arg(help_heading = "Model", long, default_value_t = HyperParams::DEFAULT.bias_reg)]
    bias_reg: f32,
    /// Learning-rate decay β: η_t = η₀ / (1 + β t^1.5).
    #[arg(help_heading = "Model", long, default_value_t = HyperParams::DEFAULT.decay)]
    decay: f32,
    /// Standard deviation of the initial factors.
    #[arg(help_heading = "Model", long, default_value_t = HyperParams::DEFAULT.init_std)]
    init_std: f32,
    /// Passes over the training ratings.
    #[arg(help_heading = "Model", long, default_value_t = model::DEFAULT_EPOCHS)]
    epochs: usize,
    /// Ratings per part of the shuffled order (one GPU step), or auto: the
    /// planner's choice for this adapter and budget. Without it, 2048, or the
    /// largest that the budget holds (said in a notice). The blocked order's
    /// parts are its blocks' shares of a sweep, whatever the batch.
    #[arg(help_heading = "Schedule", long, value_name = "N|auto")]
    batch: Option<String>,
    /// Measure the adapter again instead of using the cached calibration.
    #[arg(help_heading = "Device", long)]
    no_calibration_cache: bool,
    /// Seed of the split, the initial factors, the epoch orders and the synthetic data.
    #[arg(help_heading = "Model", long, default_value_t = 42)]
    seed: u64,
    /// With --order shuffled (or --co-partition): train the sequential
    /// model (conflict-free waves on a GPU, one thread on the CPU) instead
    /// of Hogwild, so that every backend and budget trains the same model.
    /// With the default order an alias that changes nothing: it is exact
    /// everywhere already.
    #[arg(help_heading = "Schedule", long)]
    deterministic: bool,
    /// Where to train: the best GPU adapter (falling back to the CPU), a wgpu backend, or the CPU.
    #[arg(help_heading = "Device", long, value_parser = Choice::<BackendChoice>::new(), default_value = "auto")]
    backend: BackendChoice,
    /// Use the adapter whose name contains this text (case-insensitive).
    #[arg(help_heading = "Device", long, value_name = "SUBSTRING")]
    adapter: Option<String>,
    /// Size of the device slab: 64MiB, 512KiB, 1GB, bytes, a share of the two tables such as 10%,
    /// or auto (25% of the tables, raised to the smallest budget that holds a batch).
    #[arg(help_heading = "Staging", long, default_value = "auto", value_name = "SIZE", allow_hyphen_values = true)]
    device_memory: String,
    /// Which rows stay on the device (sca: the split its replay of this
    /// run's steps finds moves fewest rows, never more than static, lru or lfu).
    #[arg(help_heading = "Staging", long, value_parser = Choice::<PolicyKind>::new(), default_value = "sca")]
    policy: PolicyKind,
    /// Horizon of --policy lookahead, in units of 2048 ratings (the default batch's size, whatever --batch is)
    #[arg(help_heading = "Staging", long, default_value_t = 32, value_name = "L")]
    lookahead: usize,
    #[command(flatten)]
    co: CoPartitionArgs,
    /// Epoch order: blocked[:BINS[:SWEEPS[:TILE]]] (FPSGD's user-bin ×
    /// item-bin blocks, a round's blocks trained at once without races, exact
    /// on every backend; SWEEPS a number or auto; TILE bins per tile, whose
    /// rounds a GPU holding every row runs in one dispatch), shuffled (a
    /// seeded permutation, Hogwild: the model then depends on the device),
    /// or auto (blocked without --co-partition, its bins, sweeps and tile
    /// chosen from the data and --rank alone, the same on every backend;
    /// else shuffled). Fields left out are chosen the same way.
    #[arg(help_heading = "Schedule", long, default_value = "auto", value_name = "ORDER")]
    order: String,
    #[command(flatten)]
    hogwild: HogwildArgs,
    /// Threads of the CPU backend (default: all cores).
    #[arg(help_heading = "Device", long)]
    threads: Option<usize>,
    /// Write the JSON report to FILE ("-" for stdout; the text output then goes to stderr).
    #[arg(help_heading = "Output", long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Save the trained model (safetensors) to FILE.
    #[arg(help_heading = "Output", long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Write a checkpoint (model, run state, ledger) into DIR after every
    /// epoch and on Ctrl-C, replacing the previous one atomically.
    #[arg(help_heading = "Output", long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// Continue the run checkpointed in DIR (the data and the settings that
    /// shape the model must match); later checkpoints go to DIR too unless
    /// --checkpoint names another.
    #[arg(help_heading = "Output", long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Stop when test RMSE has not improved for N epochs, and keep the best
    /// epoch's model.
    #[arg(help_heading = "Output", long, value_name = "N")]
    patience: Option<usize>,
}

/// `--hogwild-width`, shared by train and bench.
#[derive(Args)]
#[command(next_help_heading = "Schedule")]
struct HogwildArgs {
    /// Hogwild on a GPU: how many ratings of a batch update at once (and may
    /// race), each of that many invocations running its share in order; auto
    /// is 64 on a hardware GPU and the whole batch on a software adapter,
    /// step the whole batch. Ignored by the CPU backend and --deterministic.
    #[arg(long, default_value = "auto", value_name = "W|auto|step")]
    hogwild_width: String,
}

impl HogwildArgs {
    /// The width asked for.
    fn width(&self) -> Result<HogwildWidth> {
        HogwildWidth::parse(&self.hogwild_width).map_err(|why| Error::arg("--hogwild-width", &self.hogwild_width, &why))
    }
}

/// `--co-partition` and `--co-partition-visits`, shared by train and simulate.
#[derive(Args)]
#[command(next_help_heading = "Schedule")]
struct CoPartitionArgs {
    /// Order each epoch by blocks of this side's rows, staged once per block:
    /// users, items, larger (the side with more rows) or none (default: the
    /// blocked order still costs test RMSE, see BENCHMARKS.md).
    #[arg(long, value_name = "SIDE")]
    co_partition: Option<String>,
    /// Visits of every co-partitioning block per epoch: each visit takes the
    /// next part of the block's ratings, so the other side meets every block
    /// V times per epoch (better test RMSE, up to V times the block traffic).
    #[arg(long, default_value_t = 1, value_name = "V")]
    co_partition_visits: u32,
}

impl CoPartitionArgs {
    /// The side to co-partition as the library's run specification asks
    /// for it (`None`: none), once `--co-partition-visits` is checked.
    fn request(&self) -> Result<Option<train::SideRequest>> {
        if self.co_partition_visits == 0 {
            return Err(Error::arg("--co-partition-visits", "0", "must be at least 1"));
        }
        match self.co_partition.as_deref().map(str::trim) {
            None | Some("none") => Ok(None),
            Some("larger") => Ok(Some(train::SideRequest::Larger)),
            Some("users") => Ok(Some(train::SideRequest::Users)),
            Some("items") => Ok(Some(train::SideRequest::Items)),
            Some(other) => Err(Error::arg("--co-partition", other, "must be users, items, larger or none")),
        }
    }
}

#[derive(Args)]
struct EvalArgs {
    /// A model saved by `rowstage train --save`.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Ratings to score.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Layout of the ratings file.
    #[arg(long, value_parser = Choice::<Format>::new(), default_value = "auto")]
    format: Format,
    /// Whether the first line of a CSV/TSV file is a header.
    #[arg(long, value_parser = Choice::<HeaderMode>::new(), default_value = "auto")]
    header: HeaderMode,
    /// Skip malformed lines (and report how many) instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Write the scores as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the model's prediction for every rating read, one per line in
    /// the file's order (LIBMF's mf-predict convention), to FILE ("-" for
    /// stdout). With --skip-bad-lines, skipped lines have no prediction.
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
}

#[derive(Args)]
struct RecommendArgs {
    /// A model saved by `rowstage train --save`.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// The user's id as it appears in the training data.
    #[arg(long, value_name = "ID", required_unless_present = "all_users", conflicts_with = "all_users")]
    user: Option<String>,
    /// Every user of the model: top items for each, as tab-separated
    /// `user rank item score` lines.
    #[arg(long)]
    all_users: bool,
    /// How many items per user.
    #[arg(short = 'n', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    n: u32,
    /// Leave out the items each user rated in FILE (e.g. the training ratings).
    #[arg(long, value_name = "FILE")]
    exclude_rated: Option<PathBuf>,
    /// Layout of the --exclude-rated file.
    #[arg(long, value_parser = Choice::<Format>::new(), default_value = "auto")]
    format: Format,
    /// Write the table (one user) or the lines (--all-users) to FILE instead
    /// of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write the recommendations as JSON to FILE ("-" for stdout, in place
    /// of the table).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The slab: a size or a share of the tables.
    #[arg(long, default_value = "25%", value_name = "SIZE", allow_hyphen_values = true)]
    device_memory: String,
    /// Latent factors per row (sets the row size).
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// Seed of the split and the orders planned.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The adapter to plan for (its calibration and limits).
    #[arg(long, value_parser = Choice::<BackendChoice>::new(), default_value = "auto")]
    backend: BackendChoice,
    /// Use the adapter whose name contains this text (case-insensitive).
    #[arg(long, value_name = "SUBSTRING")]
    adapter: Option<String>,
    /// Ratings per batch of the shuffled order: "auto" (the planner's, as
    /// `train --batch auto` takes it) or a number.
    #[arg(long, default_value = "auto", value_name = "N|auto")]
    batch: String,
    /// The epoch order, as `train --order` takes it.
    #[arg(long, default_value = "auto", value_name = "ORDER")]
    order: String,
    /// Measure the adapter again instead of using the cached calibration.
    #[arg(long)]
    no_calibration_cache: bool,
    /// Write the plan as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct SimulateArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Budgets to compare, comma-separated (sizes or shares of the tables).
    #[arg(long, default_value = "1%,5%,10%,25%", value_name = "LIST", allow_hyphen_values = true)]
    device_memory: String,
    /// Policies to compare, comma-separated, or "all".
    #[arg(long, default_value = "all", value_name = "LIST")]
    policy: String,
    /// Latent factors per row (sets the row size, hence the slots a budget holds).
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// Ratings per part of the shuffled order; without it 2048, or the
    /// largest each budget holds.
    #[arg(long)]
    batch: Option<usize>,
    /// Epochs replayed.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Seed of the split and the epoch orders.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Horizon of the lookahead policy, in units of 2048 ratings (the default batch's size, whatever --batch is)
    #[arg(long, default_value_t = 32, value_name = "L")]
    lookahead: usize,
    #[command(flatten)]
    co: CoPartitionArgs,
    /// Epoch order replayed: auto (what a GPU run takes on each budget:
    /// blocked without --co-partition, else shuffled), shuffled,
    /// blocked[:BINS[:SWEEPS[:TILE]]].
    #[arg(long, default_value = "auto", value_name = "ORDER")]
    order: String,
    /// Write the results as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
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
    #[arg(long, default_value_t = 32, value_name = "L")]
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
    /// Draw SVG charts into DIR: rows moved, ratings/s and hit rate against the budget.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct SplitArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Seed of the split (the same as train's for the same flags).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory to write train.tsv and test.tsv into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn cmd_split(a: SplitArgs) -> Result<()> {
    let out = Out { to_stderr: false };
    let (data, _) = load_dataset(&a.data.source()?, a.seed, &out)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    for (name, ratings) in [("train.tsv", &data.train), ("test.tsv", &data.test)] {
        let path = a.out.join(name);
        model::write_atomically(&path, data.to_tsv(ratings).as_bytes())?;
        out.line(&format!("wrote {} ({} ratings)", path.display(), ratings.len()));
    }
    Ok(())
}

#[derive(Args)]
struct DevicesArgs {
    /// Write the adapters as JSON to FILE ("-" for stdout) instead of the list.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct CompareArgs {
    /// Two model files written by `train --save`, trained on the same data.
    #[arg(value_name = "MODEL", num_args = 2, required = true)]
    models: Vec<PathBuf>,
    /// Write the differences as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn cmd_compare(a: CompareArgs) -> Result<()> {
    if let Some(p) = &a.json {
        model::check_output("--json", p)?;
    }
    let (x, _) = model::load_model(&a.models[0])?;
    let (y, _) = model::load_model(&a.models[1])?;
    let d = model::compare(&x, &y)?;
    let out = Out { to_stderr: a.json.as_deref() == Some(Path::new("-")) };
    out.line(&format!(
        "{} users, {} items: largest |difference| {:.3e} (users {:.3e}, items {:.3e}){}",
        d.users,
        d.items,
        d.max_abs,
        d.max_abs_users,
        d.max_abs_items,
        if d.identical { "; bit-identical" } else { "" }
    ));
    if let Some(path) = &a.json {
        write_output(path, &serde_json::to_string_pretty(&d).expect("json"))?;
    }
    Ok(())
}

/// A flag's value parser for a library setting with named values: the
/// values and their help come from [`Named`], so the library needs no
/// command-line crate.
struct Choice<T>(std::marker::PhantomData<T>);

impl<T> Clone for Choice<T> {
    fn clone(&self) -> Self {
        Choice(std::marker::PhantomData)
    }
}

impl<T: Named> Choice<T> {
    fn new() -> Self {
        Choice(std::marker::PhantomData)
    }

    fn values() -> impl Iterator<Item = clap::builder::PossibleValue> {
        T::ALL.iter().map(|v| clap::builder::PossibleValue::new(v.name()).help(v.about()))
    }
}

impl<T: Named> clap::builder::TypedValueParser for Choice<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<T, clap::Error> {
        let name = clap::builder::PossibleValuesParser::new(Self::values()).parse_ref(cmd, arg, value)?;
        Ok(T::from_name(&name).expect("a value clap found among the names"))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(Self::values()))
    }
}

/// The command line as parsed, kept so that a command can tell the flags
/// given from their defaults.
static MATCHES: std::sync::OnceLock<clap::ArgMatches> = std::sync::OnceLock::new();

/// The ids of subcommand `sub`'s flags given on the command line.
fn given_flags(sub: &str) -> Vec<String> {
    let Some(m) = MATCHES.get().and_then(|m| m.subcommand_matches(sub)) else { return Vec::new() };
    m.ids()
        .map(|id| id.as_str().to_string())
        .filter(|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .collect()
}

/// The command line, where `--lr -0.1` or `--zipf -2` is a value that
/// validation then refuses by name, not an unknown flag `-0`.
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().mut_subcommands(|sub| sub.allow_negative_numbers(true)).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let _ = MATCHES.set(matches);
    cli
}

fn main() {
    // Rust ignores SIGPIPE, so that a closed pipe (`| head`) becomes a write
    // error and, in `println!`, a panic; the default action ends the process
    // quietly as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // SAFETY: the process has one thread here; nothing reads the
    // environment concurrently.
    unsafe { rowstage::gpu::context::quiet_gl_probe() };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = parse_cli();
    let result = match cli.command {
        Command::Train(a) => cmd_train(*a),
        Command::Eval(a) => cmd_eval(a),
        Command::Recommend(a) => cmd_recommend(a),
        Command::Plan(a) => cmd_plan(a),
        Command::Simulate(a) => cmd_simulate(a),
        Command::Devices(a) => cmd_devices(a),
        Command::Split(a) => cmd_split(a),
        Command::Bench(a) => cmd_bench(*a),
        Command::Compare(a) => cmd_compare(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", flags(&e.to_string()));
        std::process::exit(e.exit_code());
    }
}

/// `println!` that neither panics nor hides a failed write: a closed pipe
/// ends the process by SIGPIPE (restored in `main`), the conventional quiet
/// exit; any other failure (a full disk) is an error naming stdout, exit 2.
macro_rules! say {
    ($($t:tt)*) => { say_line(&format!($($t)*)) };
}

fn say_line(s: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{s}").and_then(|_| out.flush()) {
        eprintln!("error: writing to <stdout>: {e}");
        std::process::exit(2);
    }
}

/// The library names its parameters in backticks (`` `device_memory` ``);
/// the command line says them as its flags (`--device-memory`). Backticked
/// text that is not a parameter name (`` `rowstage devices` ``) stays.
fn flags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('`') {
        let Some(len) = rest[open + 1..].find('`') else { break };
        let name = &rest[open + 1..open + 1 + len];
        out.push_str(&rest[..open]);
        if name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            out.push_str("--");
            out.push_str(&name.replace('_', "-"));
        } else {
            out.push_str(&rest[open..open + len + 2]);
        }
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Where human-readable output goes: stderr when stdout carries JSON.
struct Out {
    to_stderr: bool,
}

impl Out {
    fn line(&self, s: &str) {
        let s = &flags(s);
        if self.to_stderr {
            eprintln!("{s}");
        } else {
            say_line(s);
        }
    }
}

fn load_opts(format: Format, header: HeaderMode, skip_bad_lines: bool) -> LoadOptions {
    LoadOptions { format, header, skip_bad_lines }
}

impl DataArgs {
    /// The data flags as the library's description of a run's data.
    fn source(&self) -> Result<data::DataSource> {
        Ok(data::DataSource {
            path: self.data.clone(),
            options: load_opts(self.format, self.header, self.skip_bad_lines),
            test: self.test.clone(),
            test_fraction: self.test_fraction,
            synthetic: match self.synthetic.as_deref() {
                Some(s) => SyntheticSpec::parse(s, self.zipf)?,
                None => SyntheticSpec { zipf: self.zipf, ..SyntheticSpec::DEFAULT },
            },
        })
    }
}

/// Loads or generates the dataset `source` describes, telling `out` what was
/// skipped; returns it and the lines skipped.
fn load_dataset(source: &data::DataSource, seed: u64, out: &Out) -> Result<(Dataset, usize)> {
    let loaded = source.load(seed)?;
    for n in &loaded.notes {
        out.line(n);
    }
    Ok((loaded.dataset, loaded.skipped))
}

fn write_output(path: &Path, text: &str) -> Result<()> {
    if path == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes()).and_then(|_| stdout.write_all(b"\n")).map_err(|e| Error::io("<stdout>", e))
    } else {
        model::write_atomically(path, format!("{text}\n").as_bytes())
    }
}

/// The share of an epoch's ratings in Hogwild conflict above which `train`
/// on a GPU says what it costs and how to avoid it.
const CONFLICT_NOTE_SHARE: f64 = 0.1;

/// Parses a comma-separated list of `flag`'s numbers, each checked by `ok`.
fn number_list(flag: &str, text: &str, ok: impl Fn(f32) -> bool, rule: &str) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        match part.parse::<f32>() {
            Ok(v) if ok(v) => out.push(v),
            _ => return Err(Error::arg(flag, part, rule)),
        }
    }
    Ok(out)
}

impl TrainArgs {
    /// The flags as the library's run specification. The `--lr × --reg`
    /// grid is the Cartesian product, lr-major; empty for one setting.
    fn spec(&self) -> Result<train::RunSpec> {
        let lrs = number_list("--lr", &self.lr, |v| v.is_finite() && v > 0.0, "must be a finite number above 0")?;
        let regs = number_list("--reg", &self.reg, |v| v.is_finite() && v >= 0.0, "must be a finite number ≥ 0")?;
        let grid: Vec<Setting> = lrs.iter().flat_map(|&lr| regs.iter().map(move |&reg| Setting { lr, reg })).collect();
        let batch = match self.batch.as_deref().map(str::trim) {
            None => train::BatchRequest::Default,
            Some("auto") => train::BatchRequest::Auto,
            Some(b) => train::BatchRequest::Fixed(
                b.parse()
                    .map_err(|_| Error::arg("--batch", b, "must be auto or a whole number between 1 and 1048576"))?,
            ),
        };
        Ok(train::RunSpec {
            hp: HyperParams {
                rank: self.rank,
                lr: lrs[0],
                reg: regs[0],
                bias_reg: self.bias_reg,
                decay: self.decay,
                init_std: self.init_std,
            },
            grid: if grid.len() > 1 { grid } else { Vec::new() },
            epochs: self.epochs,
            batch,
            seed: self.seed,
            deterministic: self.deterministic,
            order: train::Order::parse(&self.order)?,
            co_partition: self.co.request()?,
            co_partition_visits: self.co.co_partition_visits,
            backend: BackendSpec {
                backend: self.backend,
                adapter: self.adapter.clone(),
                device_memory: match self.device_memory.trim() {
                    "auto" => None,
                    s => Some(Budget::parse("--device-memory", s)?),
                },
                policy: self.policy,
                lookahead: self.lookahead,
                threads: self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                hogwild_width: self.hogwild.width()?,
            },
            calibration_cache: !self.no_calibration_cache,
        })
    }
}

/// `train` flags that may stand beside `--config`: where to train and what
/// to write, which change no model (the rest are the request's to set).
const BESIDE_CONFIG: [&str; 14] = [
    "config",
    "backend",
    "adapter",
    "device_memory",
    "policy",
    "lookahead",
    "threads",
    "hogwild_width",
    "no_calibration_cache",
    "json",
    "save",
    "checkpoint",
    "resume",
    "patience",
];

/// The request `train` runs: `--config`'s, its device flags replaced by
/// those given beside it, or the flags'.
fn train_request(a: &TrainArgs) -> Result<train::RunRequest> {
    let Some(path) = &a.config else {
        return Ok(train::RunRequest { source: a.data.source()?, spec: a.spec()? });
    };
    if let Some(flag) = given_flags("train").into_iter().find(|id| !BESIDE_CONFIG.contains(&id.as_str())) {
        let value = MATCHES
            .get()
            .and_then(|m| m.subcommand_matches("train"))
            .and_then(|m| m.get_raw(&flag))
            .map_or(String::new(), |v| v.map(|x| x.to_string_lossy()).collect::<Vec<_>>().join(" "));
        return Err(Error::arg(
            &format!("--{}", flag.replace('_', "-")),
            value,
            "cannot be given with --config, whose request sets the data and the model's settings \
             (edit the file to change them)",
        ));
    }
    let mut request = train::RunRequest::read(path)?;
    let from_flags = a.spec()?.backend;
    let b = &mut request.spec.backend;
    for id in given_flags("train") {
        match id.as_str() {
            "backend" => b.backend = from_flags.backend,
            "adapter" => b.adapter = from_flags.adapter.clone(),
            "device_memory" => b.device_memory = from_flags.device_memory,
            "policy" => b.policy = from_flags.policy,
            "lookahead" => b.lookahead = from_flags.lookahead,
            "threads" => b.threads = from_flags.threads,
            "hogwild_width" => b.hogwild_width = from_flags.hogwild_width,
            "no_calibration_cache" => request.spec.calibration_cache = false,
            _ => {}
        }
    }
    // A report from another machine may name more threads than this one has.
    if a.threads.is_none() {
        b.threads = b.threads.min(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    Ok(request)
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let train::RunRequest { source, spec } = train_request(&a)?;
    spec.validate()?;
    if a.patience == Some(0) {
        return Err(Error::arg("--patience", "0", "must be at least 1 epoch"));
    }
    // Output paths are checked before the data is read or a step trained:
    // writable, and none of them an input or another output.
    for (flag, path) in [("--json", &a.json), ("--save", &a.save)] {
        if let Some(p) = path {
            model::check_output(flag, p)?;
        }
    }
    fn given<'p>(pairs: [(&'static str, Option<&'p Path>); 3]) -> Vec<(&'static str, &'p Path)> {
        pairs.into_iter().filter_map(|(f, p)| Some((f, p?))).collect()
    }
    let outputs = given([
        ("--json", a.json.as_deref()),
        ("--save", a.save.as_deref()),
        ("--checkpoint", a.checkpoint.as_deref()),
    ]);
    let inputs = given([
        ("--config", a.config.as_deref()),
        ("--data", source.path.as_deref()),
        ("--test", source.test.as_deref()),
    ]);
    model::check_distinct(&outputs, &inputs)?;
    let out = Out { to_stderr: a.json.as_deref() == Some(Path::new("-")) };
    let (data, skipped) = load_dataset(&source, spec.seed, &out)?;
    let request = train::RunRequest { source: source.clone(), spec: spec.clone() };
    let resume = match &a.resume {
        Some(dir) => Some(train::checkpoint::load_checkpoint(dir)?),
        None => None,
    };
    let resumed = resume.as_ref().map(|c| (c.path.clone(), c.state.epoch, c.state.position));
    let options =
        train::RunOptions { checkpoint: a.checkpoint.clone().or(a.resume.clone()), resume, patience: a.patience };
    let mut run = train::Run::new(data, source.describe(), spec, options)?;
    let resolved = run.resolved();
    for n in &resolved.notes {
        out.line(n);
    }
    if let Some(n) = &resolved.opened.notice {
        eprintln!("notice: {}", flags(n));
    }
    let (settings, at_once) = (resolved.settings.clone(), resolved.at_once);
    let backend = resolved.opened.backend.as_ref();
    let data = run.data();
    let tables = settings.table_bytes(data);
    out.line(&format!(
        "data: {} — {} users, {} items, {} train / {} test ratings ({} test ratings with a user or item unseen in training)",
        data.name,
        data.users.len(),
        data.items.len(),
        data.train.len(),
        data.test.len(),
        data.cold_test()
    ));
    if let (true, Some(path)) = (backend.is_ceiling(), &a.save) {
        return Err(Error::arg(
            "--save",
            path.display().to_string(),
            "the noop backend runs no kernel, so it trains no model to save",
        ));
    }
    out.line(&format!("backend: {} on {}", backend.kind(), backend.adapter()));
    if backend.is_ceiling() {
        out.line(
            "noop: the whole GPU path on the host with no kernel run: its speed is what the host can feed an \
             infinitely fast GPU (a ceiling), and its tables are no model (no RMSE is shown)",
        );
    }
    // Hogwild on a GPU (the shuffled order): how many ratings update at
    // once (the whole batch where the width resolves to none).
    if let Some(w) = at_once {
        out.line(&format!(
            "hogwild: {w} of a batch's {} ratings update at once, each of {w} invocations running its share in order",
            settings.batch
        ));
    }
    out.line(&settings.order.describe(settings.deterministic));
    if !settings.grid.is_empty() {
        out.line(&format!(
            "grid search: {} settings (--lr {} × --reg {}) trained side by side, every row holding each setting's copy",
            settings.grid.len(),
            a.lr,
            a.reg
        ));
    }
    if let Some(l) = &resolved.opened.layout {
        out.line(&layout_line(l, tables));
    }

    let bar = if std::io::stderr().is_terminal() && a.epochs > 1 {
        let b = ProgressBar::new(a.epochs as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} epochs, {elapsed} elapsed, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let staged = resolved.opened.layout.is_some();
    if let Some((path, epoch, position)) = resumed {
        out.line(&format!("resuming {} at epoch {} ({position} of its ratings done)", path.display(), epoch + 1));
        bar.inc(epoch as u64);
    }
    interrupt_on_signal(run.cancel_token());
    // A GPU (not a software adapter) runs the updates it is given at once;
    // more than the default width of them lose updates to hot rows.
    let races = resolved.opened.adapter.as_ref().is_some_and(|a| !a.is_software())
        && at_once.is_some_and(|w| w > HARDWARE_HOGWILD_WIDTH as usize);
    let mut warned = false;
    let ceiling = backend.is_ceiling();
    let info = DatasetInfo::of(data, skipped);
    while let Some(e) = run.step()? {
        bar.suspend(|| out.line(&report::epoch_line(&e, staged, ceiling)));
        if races && !warned && e.conflicts as f64 >= CONFLICT_NOTE_SHARE * e.ratings.max(1) as f64 {
            warned = true;
            bar.suspend(|| eprintln!("note: {}", flags(&report::conflict_note(&e, at_once.unwrap_or(settings.batch)))));
        }
        bar.inc(1);
    }
    let train::Finished { outcome, config } = run.finish()?;
    bar.finish_and_clear();
    if outcome.diverged.is_some() {
        out.line(&format!("stopped: the loss of epoch {} is not finite", outcome.epochs.len()));
    } else if !outcome.complete {
        out.line(&format!("interrupted after {} complete epoch(s)", outcome.epochs.len()));
    }
    if let Some(b) = outcome.best_epoch
        && outcome.complete
    {
        let why = if outcome.stopped_early {
            format!("stopped early: no better test RMSE for {} epoch(s); ", a.patience.unwrap_or(0))
        } else {
            String::new()
        };
        out.line(&format!("{why}keeping the model of epoch {b}"));
    }
    if let Some(p) = &outcome.checkpoint {
        out.line(&format!("checkpoint: {}", p.display()));
    }
    let grid =
        report::grid_results(&outcome.settings, &outcome.epochs, outcome.best_epoch.filter(|_| outcome.complete));
    if !grid.is_empty() {
        out.line("grid search, best first (test figures at the epoch kept):");
        for l in report::grid_table(&grid) {
            out.line(&l);
        }
    }
    let kept = outcome.settings[outcome.best_setting];
    if outcome.settings.len() > 1 {
        out.line(&format!("best setting: lr {} reg {}", kept.lr, kept.reg));
    }
    if outcome.diverged.is_some() {
        // No final score: the error below says why.
    } else if ceiling {
        out.line(&format!(
            "final: {:.3e} ratings/s, the host's ceiling (noop: no kernel ran, so there is no model to score)",
            outcome.ratings_per_sec
        ));
    } else {
        out.line(&format!(
            "final: test RMSE {:.4}  MAE {:.4}  {:.3e} ratings/s",
            outcome.final_metrics.rmse, outcome.final_metrics.mae, outcome.ratings_per_sec
        ));
    }

    let config_json = serde_json::to_value(&config).expect("the run's configuration serialises");
    match &a.save {
        Some(path) if outcome.complete => {
            model::save_model(&outcome.model, &config_json, path)?;
            out.line(&format!("saved model to {}", path.display()));
        }
        Some(path) if outcome.diverged.is_some() => {
            out.line(&format!("not saving {}: training diverged", path.display()))
        }
        Some(path) => out.line(&format!(
            "not saving {}: the run was interrupted{}",
            path.display(),
            if outcome.checkpoint.is_some() { " (resume it from the checkpoint)" } else { "" }
        )),
        None => {}
    }
    if let Some(path) = &a.json {
        let report = Report {
            dataset: info,
            config,
            request,
            epochs: outcome.epochs.iter().map(|e| EpochJson::of(e, ceiling)).collect(),
            final_: FinalJson {
                test_rmse: (!ceiling).then_some(outcome.final_metrics.rmse),
                test_mae: (!ceiling).then_some(outcome.final_metrics.mae),
                ratings_per_sec: outcome.ratings_per_sec,
            },
            complete: outcome.complete,
            best_epoch: outcome.best_epoch,
            stopped_early: outcome.stopped_early,
            best: grid.first().cloned(),
            grid: (!grid.is_empty()).then_some(grid),
        };
        let text = serde_json::to_string_pretty(&report).expect("report serialises");
        write_output(path, &text)?;
    }
    if let Some(e) = outcome.diverged {
        return Err(e);
    }
    if !outcome.complete {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Cancels `token` on the first Ctrl-C (SIGINT): training stops at the next
/// batch boundary and writes what it has. A second Ctrl-C exits at once.
fn interrupt_on_signal(token: train::CancelToken) {
    let handler = move || {
        if token.is_cancelled() {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(130);
        }
        token.cancel();
        eprintln!("\ninterrupt: finishing the current batch, then writing what the run has (Ctrl-C again to exit now)");
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        log::warn!("cannot install the Ctrl-C handler ({e}); Ctrl-C will end the run without a report");
    }
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    for (flag, p) in [("--json", &a.json), ("--predictions", &a.predictions)] {
        if let Some(p) = p {
            model::check_output(flag, p)?;
        }
    }
    let (m, _) = model::load_model(&a.model)?;
    let (set, rep) = data::load_ratings(&a.data, load_opts(a.format, a.header, a.skip_bad_lines))?;
    let ratings = serve::onto_model(&m, &set);
    let cold = ratings.iter().filter(|r| r.user == UNKNOWN || r.item == UNKNOWN).count();
    let metrics = m.evaluate(&ratings);
    let to_stdout = |p: &Option<PathBuf>| p.as_deref() == Some(Path::new("-"));
    let out = Out { to_stderr: to_stdout(&a.json) || to_stdout(&a.predictions) };
    out.line(&format!(
        "{}: {} ratings ({} with a user or item unknown to the model{}): RMSE {:.4}  MAE {:.4}",
        a.data.display(),
        ratings.len(),
        cold,
        if rep.skipped > 0 { format!(", {} bad lines skipped", rep.skipped) } else { String::new() },
        metrics.rmse,
        metrics.mae
    ));
    if let Some(path) = &a.predictions {
        let mut text = String::with_capacity(ratings.len() * 8);
        for p in serve::predictions(&m, &ratings) {
            let _ = writeln!(text, "{p}");
        }
        write_output(path, text.trim_end())?;
    }
    if let Some(path) = &a.json {
        let j = serde_json::json!({
            "model": a.model.display().to_string(),
            "data": a.data.display().to_string(),
            "ratings": ratings.len(),
            "cold": cold,
            "skipped_lines": rep.skipped,
            "rmse": metrics.rmse,
            "mae": metrics.mae,
        });
        write_output(path, &serde_json::to_string_pretty(&j).expect("json"))?;
    }
    Ok(())
}

fn cmd_recommend(a: RecommendArgs) -> Result<()> {
    for (flag, p) in [("--json", &a.json), ("--output", &a.output)] {
        if let Some(p) = p {
            model::check_output(flag, p)?;
        }
    }
    let (m, _) = model::load_model(&a.model)?;
    let users: Vec<u32> = match &a.user {
        Some(id) => vec![m.user_ids.get(id).ok_or_else(|| Error::UnknownId { kind: "user", id: id.clone() })?],
        None => (0..m.n_users() as u32).collect(),
    };
    let rated = match &a.exclude_rated {
        Some(p) => {
            Some(serve::rated_items(&m, &data::load_ratings(p, load_opts(a.format, HeaderMode::Auto, false))?.0))
        }
        None => None,
    };
    let n = a.n as usize;
    let tops = match a.user {
        Some(_) => vec![serve::top_items(&m, users[0], n, rated.as_ref().map_or(&[][..], |r| &r[users[0] as usize]))],
        None => serve::top_items_all(&m, n, rated.as_deref()),
    };
    if let Some(path) = &a.json {
        let users_json: Vec<_> = users
            .iter()
            .zip(&tops)
            .map(|(&u, top)| {
                let items: Vec<_> =
                    top.iter().map(|&(i, s)| serde_json::json!({"item": m.item_ids.name(i), "score": s})).collect();
                serde_json::json!({"user": m.user_ids.name(u), "items": items})
            })
            .collect();
        let j = match a.user {
            Some(_) => users_json.into_iter().next().expect("one user"),
            None => serde_json::json!({ "users": users_json }),
        };
        write_output(path, &serde_json::to_string_pretty(&j).expect("json"))?;
        // JSON on stdout takes the place of the table there.
        if a.output.is_none() && path == Path::new("-") {
            return Ok(());
        }
    }
    let mut text = String::new();
    if a.user.is_some() {
        let _ = writeln!(text, "{:>4}  {:<24} {:>6}", "rank", "item", "score");
        for (k, (i, s)) in tops[0].iter().enumerate() {
            let _ = writeln!(text, "{:>4}  {:<24} {:>6.3}", k + 1, m.item_ids.name(*i), s);
        }
    } else {
        for (&u, top) in users.iter().zip(&tops) {
            for (k, (i, s)) in top.iter().enumerate() {
                let _ = writeln!(text, "{}\t{}\t{}\t{:.4}", m.user_ids.name(u), k + 1, m.item_ids.name(*i), s);
            }
        }
    }
    write_output(a.output.as_deref().unwrap_or(Path::new("-")), text.trim_end())
}

fn cmd_plan(a: PlanArgs) -> Result<()> {
    let budget = Budget::parse("--device-memory", &a.device_memory)?;
    let fixed = match a.batch.trim() {
        "auto" => None,
        b => Some(
            b.parse::<usize>()
                .map_err(|_| Error::arg("--batch", b, "must be auto or a whole number of ratings ≥ 1"))?,
        ),
    };
    // What `train` runs with these flags, and its defaults otherwise.
    let spec = train::RunSpec {
        hp: HyperParams { rank: a.rank, ..HyperParams::DEFAULT },
        batch: fixed.map_or(train::BatchRequest::Auto, train::BatchRequest::Fixed),
        seed: a.seed,
        order: train::Order::parse(&a.order)?,
        backend: BackendSpec {
            backend: a.backend,
            adapter: a.adapter.clone(),
            device_memory: Some(budget),
            ..BackendSpec::default()
        },
        calibration_cache: !a.no_calibration_cache,
        ..train::RunSpec::default()
    };
    spec.validate()?;
    let out = Out { to_stderr: a.json.as_deref() == Some(Path::new("-")) };
    let (data, _) = load_dataset(&a.data.source()?, a.seed, &out)?;
    let mut settings = spec.settings();
    let spec = spec.backend;
    let ctx = rowstage::gpu::GpuContext::new(a.backend, a.adapter.as_deref())?;
    let adapter = ctx.summary.clone();
    let ctx_name = ctx.describe();
    let tables = train::table_bytes(&data, a.rank);
    let cache = !a.no_calibration_cache;
    let (calibration, planned) = match fixed {
        // The batch `train --batch auto` takes, and the planner's figures.
        None => {
            let (batch, p, notes) = train::auto_batch(&data, &settings, &spec, cache, train::DEFAULT_BATCH)?;
            settings.batch = batch;
            (notes, p)
        }
        Some(b) => {
            let p = train::plan_budget(ctx, &data, a.rank, 1, Some(budget), cache, Some(b))?;
            (vec![p.calibration.summary()], p.plan)
        }
    };
    out.line(&format!("adapter: {}", ctx_name));
    for n in &calibration {
        out.line(n);
    }
    let setup = train::gpu_setup(&data, &settings, &spec, &adapter)?;
    let layout = rowstage::gpu::GpuBackend::plan(&setup, &adapter)?;
    let order = setup.layout.spec().order;
    out.line(&format!(
        "{}: {} training ratings; order {}{}",
        data.name,
        data.train.len(),
        order.name(),
        match order {
            train::Order::Shuffled => format!(", batch {}", settings.batch),
            _ => String::new(),
        }
    ));
    out.line(&layout_line(&layout, tables));
    if let Some(p) = &planned {
        out.line(&format!(
            "planner (i.i.d. model): batch {} at a modelled {:.3e} ratings/s{}",
            p.batch,
            p.predicted_ratings_per_sec,
            if fixed.is_none() && p.batch != settings.batch {
                format!("; {} is the largest the slab holds", settings.batch)
            } else {
                String::new()
            }
        ));
    }
    if let Some(pr) = layout.prediction {
        out.line(&format!(
            "sca: predicted per epoch {:.0} rows in ({} host→device), from a replay of this run's own steps; the first epoch also loads {} resident rows{}",
            pr.rows_per_epoch,
            human_bytes((pr.rows_per_epoch * pr.row_bytes as f64) as u64),
            pr.resident,
            if pr.cold >= 0.5 { format!(" and fills the cache ({:.0} rows)", pr.cold) } else { String::new() }
        ));
    }
    out.line(&format!(
        "rowstage train with the same data, --device-memory {}, --seed {} and --batch {} applies this plan",
        a.device_memory, a.seed, a.batch
    ));
    if let Some(path) = &a.json {
        let j = serde_json::json!({
            "adapter": adapter.name,
            "calibration": calibration,
            "planner": planned,
            "order": order.name(),
            "batch": settings.batch,
            "device_memory_bytes": layout.slab_bytes,
            "slots": layout.slots,
            "resident_slots": layout.areas.resident,
            "cache_slots": layout.areas.cache,
            "staging_slots": layout.areas.staging,
            "cache_policy": layout.sca_cache,
            "predicted_rows_in_per_epoch": layout.prediction.map(|p| p.rows_per_epoch),
        });
        write_output(path, &serde_json::to_string_pretty(&j).expect("json"))?;
    }
    Ok(())
}

/// The slab's layout in one line, as `train` and `plan` print it.
fn layout_line(l: &rowstage::gpu::layout::GpuLayout, tables: u64) -> String {
    format!(
        "device memory: {} slab = {} slots of {} B ({:.1}% of the {} tables): {} resident, {} cache, {} staging, {} block; transfer windows {}",
        human_bytes(l.slab_bytes),
        l.slots,
        l.row_bytes,
        100.0 * l.slab_bytes as f64 / tables.max(1) as f64,
        human_bytes(tables),
        l.areas.resident,
        l.areas.cache,
        l.areas.staging,
        l.block_slots,
        human_bytes(l.window_bytes()),
    )
}

/// `--device-memory`'s comma-separated budgets, each with its text.
fn budget_list(text: &str) -> Result<Vec<(String, Budget)>> {
    text.split(',').map(|b| Ok((b.trim().to_string(), Budget::parse("--device-memory", b)?))).collect()
}

/// `--policy`'s comma-separated policies, or `all`.
fn policy_list(text: &str) -> Result<Vec<PolicyKind>> {
    if text.trim() == "all" {
        return Ok(PolicyKind::ALL.to_vec());
    }
    text.split(',')
        .map(|p| {
            <PolicyKind as Named>::from_name(p)
                .ok_or_else(|| Error::arg("--policy", p, format!("expected all, or a list of {}", PolicyKind::names())))
        })
        .collect()
}

fn cmd_simulate(a: SimulateArgs) -> Result<()> {
    use bench::simulate::{SweepOutcome, sweep};
    // The run replayed, as `train` would take these flags.
    let spec = train::RunSpec {
        hp: HyperParams { rank: a.rank, ..HyperParams::DEFAULT },
        epochs: a.epochs,
        batch: a.batch.map_or(train::BatchRequest::Default, train::BatchRequest::Fixed),
        seed: a.seed,
        order: rowstage::engine::Order::parse(&a.order)?,
        co_partition: a.co.request()?,
        co_partition_visits: a.co.co_partition_visits,
        ..train::RunSpec::default()
    };
    spec.validate()?;
    if a.epochs == 0 {
        return Err(Error::arg("--epochs", "0", "must be at least 1"));
    }
    let budgets = budget_list(&a.device_memory)?;
    let policies = policy_list(&a.policy)?;
    let out = Out { to_stderr: a.json.as_deref() == Some(Path::new("-")) };
    let (data, _) = load_dataset(&a.data.source()?, a.seed, &out)?;
    let row_bytes = (model::row_stride(a.rank) * 4) as u64;
    out.line(&format!(
        "data: {} — {} users, {} items, {} training ratings; order {}, batch {}, {} epoch(s), rows of {} B, tables {}; co-partitioning: {}",
        data.name,
        data.users.len(),
        data.items.len(),
        data.train.len(),
        a.order,
        a.batch.map_or("the largest each budget holds, up to 2048".into(), |b| b.to_string()),
        a.epochs,
        row_bytes,
        human_bytes(train::table_bytes(&data, a.rank)),
        spec.co_partition.map_or("none", |s| s.resolve(&data).name())
    ));
    out.line(&format!(
        "{:<8} {:>10} {:<20} {:<10} {:>8} {:>11} {:>11} {:>11} {:>11} {:>7} {:>11} {:>11} {:>13} {:>10}",
        "budget",
        "bytes",
        "order",
        "policy",
        "slots",
        "rows in",
        "rows out",
        "hits",
        "misses",
        "hit %",
        "h2d",
        "d2h",
        "predicted in",
        "lookups/s"
    ));
    let rows = sweep(&data, &spec, a.lookahead, &budgets, &policies, &mut |row| {
        let (label, bytes, name, policy) = (&row.label, row.bytes, &row.order, row.policy);
        match &row.outcome {
            SweepOutcome::TooSmall { step, needed } => out.line(&format!(
                "{label:<8} {bytes:>10} {name:<20} {policy:<10} budget too small: {step} needs --device-memory {needed} ({})",
                human_bytes(*needed)
            )),
            SweepOutcome::Replayed(r) => out.line(&format!(
                "{label:<8} {bytes:>10} {name:<20} {policy:<10} {:>8} {:>11} {:>11} {:>11} {:>11} {:>6.1}% {:>11} {:>11} {:>13} {:>10.2e}",
                r.slots,
                r.rows_in,
                r.rows_out,
                r.hits,
                r.misses,
                100.0 * r.hits as f64 / (r.hits + r.misses).max(1) as f64,
                human_bytes(r.bytes_h2d),
                human_bytes(r.bytes_d2h),
                r.predicted_rows_in.map_or("-".to_string(), |p| format!("{p:.0}")),
                r.lookups_per_sec,
            )),
        }
    })?;
    if let Some(path) = &a.json {
        let results: Vec<_> = rows
            .iter()
            .filter_map(|r| match &r.outcome {
                SweepOutcome::Replayed(r) => Some(r),
                SweepOutcome::TooSmall { .. } => None,
            })
            .collect();
        write_output(path, &serde_json::to_string_pretty(&results).expect("json"))?;
    }
    Ok(())
}

fn cmd_devices(a: DevicesArgs) -> Result<()> {
    if let Some(p) = &a.json {
        model::check_output("--json", p)?;
    }
    let adapters = list_adapters(BackendChoice::Auto);
    if let Some(p) = &a.json {
        return write_output(p, &serde_json::to_string_pretty(&adapters).expect("json"));
    }
    if adapters.is_empty() {
        say!(
            "no GPU adapter found; `rowstage train` will use the CPU backend (install GPU drivers, or Mesa's software drivers: apt-get install mesa-vulkan-drivers)"
        );
        return Ok(());
    }
    for (k, d) in adapters.iter().enumerate() {
        say!("[{k}] {} — {} / {}", d.name, d.backend, d.device_type);
        say!("    driver: {} {}", d.driver, d.driver_info);
        if !d.compute_shaders {
            say!(
                "    no compute shaders (OpenGL before 4.3 or GLES before 3.1): rowstage cannot train on this adapter"
            );
        }
        say!(
            "    max storage binding {}  max buffer {}  (largest --device-memory: {})",
            human_bytes(d.max_storage_buffer_binding_size),
            human_bytes(d.max_buffer_size),
            human_bytes(d.max_slab_bytes())
        );
        say!(
            "    workgroups per dimension {}  invocations per workgroup {}  workgroup size x {}  storage buffers per stage {}",
            d.max_compute_workgroups_per_dimension,
            d.max_compute_invocations_per_workgroup,
            d.max_compute_workgroup_size_x,
            d.max_storage_buffers_per_shader_stage
        );
    }
    Ok(())
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
            match path {
                Some(p) if p == Path::new("-") && !last => {}
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
            "{:<7} {:<8} {:<10} {:>6} {:>11.3e} {:>8} {:>11.0} {:>11} {:>7} {:>8} {:>7} {:>8} {:>8}",
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

fn cmd_bench(a: BenchArgs) -> Result<()> {
    // Every configuration is a `train` run of these settings.
    let spec = train::RunSpec {
        hp: HyperParams { rank: a.rank, lr: a.lr, reg: a.reg, ..HyperParams::default() },
        epochs: a.warmup + a.epochs,
        batch: train::BatchRequest::Fixed(a.batch),
        seed: a.seed,
        backend: BackendSpec {
            threads: a.threads.unwrap_or(BackendSpec::default().threads),
            lookahead: a.lookahead,
            hogwild_width: a.hogwild.width()?,
            ..BackendSpec::default()
        },
        ..train::RunSpec::default()
    };
    spec.validate()?;
    if a.epochs == 0 {
        return Err(Error::arg("--epochs", "0", "must be at least 1 timed epoch"));
    }
    let budgets = budget_list(&a.device_memory)?;
    let policies = policy_list(&a.policy)?;
    let mut backends = Vec::new();
    for b in a.backend.split(',') {
        let choice = <BackendChoice as Named>::from_name(b)
            .ok_or_else(|| Error::arg("--backend", b, format!("expected a list of {}", BackendChoice::names())))?;
        backends.push(choice);
    }
    let exports =
        Exports { json: a.export_json.clone(), csv: a.export_csv.clone(), markdown: a.export_markdown.clone() };
    exports.check()?;
    let out = Out { to_stderr: exports.to_stdout() };
    // `auto` is resolved now: the best adapter, or the CPU when there is none.
    let mut resolved = Vec::new();
    for b in backends {
        let choice = if b == BackendChoice::Auto {
            match rowstage::gpu::GpuContext::new(b, a.adapter.as_deref()) {
                Ok(ctx) => {
                    let backend = ctx.summary.backend.to_lowercase();
                    <BackendChoice as Named>::from_name(&backend).unwrap_or(BackendChoice::Auto)
                }
                Err(Error::NoAdapter { hint, .. }) if a.adapter.is_none() => {
                    eprintln!("notice: no GPU adapter found ({}); benchmarking the CPU backend instead", flags(&hint));
                    BackendChoice::Cpu
                }
                Err(e) => return Err(e),
            }
        } else {
            b
        };
        let adapter = if choice == BackendChoice::Cpu { None } else { a.adapter.clone() };
        if !resolved.contains(&(choice, adapter.clone())) {
            resolved.push((choice, adapter));
        }
    }
    let (data, skipped) = load_dataset(&a.data.source()?, a.seed, &out)?;
    let plan = bench::BenchPlan {
        backends: resolved,
        budgets,
        policies,
        warmup: a.warmup,
        epochs: a.epochs,
        settings: spec.settings(),
        lookahead: spec.backend.lookahead,
        threads: spec.backend.threads,
        hogwild_width: spec.backend.hogwild_width,
    };
    let per_config = (a.warmup + a.epochs) as u64;
    out.line(&format!(
        "bench: {} — {} train / {} test ratings, tables {} at rank {}; {} configuration(s), {} warm-up + {} timed epoch(s) each",
        data.name,
        data.train.len(),
        data.test.len(),
        human_bytes(train::table_bytes(&data, a.rank)),
        a.rank,
        plan.configurations(),
        a.warmup,
        a.epochs
    ));
    out.line(&format!(
        "{:<7} {:<8} {:<10} {:>6} {:>11} {:>8} {:>11} {:>11} {:>7} {:>8} {:>7} {:>8} {:>8}",
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
        "dev GB/s"
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_librarys_parameter_names_become_flags() {
        assert_eq!(
            flags("use a larger `device_memory` or `order` blocked:BINS"),
            "use a larger --device-memory or --order blocked:BINS"
        );
        assert_eq!(flags("invalid value \"x\" for `lr`: no"), "invalid value \"x\" for --lr: no");
        assert_eq!(
            flags("run `rowstage devices`, `Foo` stays, an odd ` quote"),
            "run `rowstage devices`, `Foo` stays, an odd ` quote"
        );
        assert_eq!(flags("no backticks"), "no backticks");
    }

    /// Every flag of every command says what it does, and `train`'s sit
    /// under headings.
    #[test]
    fn every_flag_is_described_and_trains_flags_are_grouped() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let mut bare = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    bare.push(format!("{} --{}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(bare.is_empty(), "flags without a description: {bare:?}");
        let train = cli.find_subcommand("train").expect("train");
        for arg in train.get_arguments().filter(|a| a.get_id() != "help") {
            assert!(arg.get_help_heading().is_some(), "train --{} has no heading", arg.get_id());
        }
    }

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
