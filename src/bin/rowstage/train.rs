//! `rowstage train`: flags → a run request → the library's run → text,
//! JSON and model files.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::DataArgs;
use crate::output::{Out, check_paths, flags, write_output};
use crate::{Choice, MATCHES, given_flags};
use rowstage::error::{Error, Result};
use rowstage::gpu::{BackendChoice, HogwildWidth};
use rowstage::model::{self, HyperParams};
use rowstage::report;
use rowstage::session::{Finished, Run, RunOptions, Stage};
use rowstage::stage::{Budget, PolicyKind};
use rowstage::train::tune::Tuning;
use rowstage::train::{self, BackendSpec, Distributed};

#[derive(Args)]
#[command(after_help = "Examples:
  rowstage train                                     the built-in dataset, best adapter, 25% slab
  rowstage train --data u.data --device-memory 10%   MovieLens 100K through a 10% slab
  rowstage train --data u.data --backend cpu --save model.safetensors
  rowstage train --lr 0.02,0.05 --reg 0.05,0.08      a grid search in one run
  rowstage train --data ratings.csv --json - | jq .final")]
pub(crate) struct TrainArgs {
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
    /// Initial learning rate η₀ of SGD (η_t = η₀ / (1 + β t^1.5)). Without
    /// it, chosen on a validation split of the training ratings among 0.02
    /// and 0.05; a comma-separated list is chosen among the same way.
    #[arg(help_heading = "Model", long, value_name = "LR[,LR...]")]
    lr: Option<String>,
    /// L2 regularisation of the factors. Without it, chosen on the
    /// validation split among 0.0125, 0.025, 0.05 and 0.1 (and refined
    /// between them); a list is chosen among.
    #[arg(help_heading = "Model", long, value_name = "REG[,REG...]")]
    reg: Option<String>,
    /// Share of the training ratings held out to choose --lr, --reg and the
    /// epochs on (never the test ratings); the model then trains on all of
    /// them.
    #[arg(help_heading = "Model", long, default_value_t = rowstage::train::tune::DEFAULT_VALIDATION, value_name = "F")]
    validation: f64,
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
    #[arg(help_heading = "Staging", long, default_value_t = 32, value_name = "L", value_parser = crate::at_least_one())]
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
    /// Threads of the CPU backend, and of each rank under MPI (default: all
    /// cores, shared among the ranks a launcher started on this machine).
    #[arg(help_heading = "Device", long)]
    threads: Option<usize>,
    /// Train across MPI ranks (`mpirun -np P rowstage train ...`; a build
    /// with the `mpi` feature). Default: rotate under an MPI launcher with
    /// more than one rank, else off. See the README, "Past one machine".
    #[arg(help_heading = "Device", long, value_parser = Choice::<Distributed>::new(), value_name = "MODE")]
    distributed: Option<Distributed>,
    /// Under MPI: seconds a rank waits for another rank's message before it
    /// ends the run with an error naming that rank (one that stopped, died
    /// or fell far behind).
    #[arg(help_heading = "Device", long, value_name = "SECONDS", default_value_t = train::DEFAULT_RANK_TIMEOUT, value_parser = clap::value_parser!(u32).range(1..))]
    rank_timeout: u32,
    /// Under --distributed server: each rank's cache of the item rows other
    /// ranks serve, in bytes (64MiB) or as a share of the item table (25%),
    /// kept by --policy.
    #[arg(help_heading = "Device", long, value_name = "SIZE", default_value = "25%")]
    cache: String,
    /// Under --distributed server: clocks (rounds of the blocked order, else
    /// parts) between a rank's pushes of every row it holds; a copy it
    /// trains on is at most this many clocks late.
    #[arg(help_heading = "Device", long, value_name = "CLOCKS", default_value_t = train::DEFAULT_STALENESS, value_parser = clap::value_parser!(u32).range(1..))]
    staleness: u32,
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
    /// Let --checkpoint DIR replace the checkpoint of another run found
    /// there (without it, such a folder is refused).
    #[arg(help_heading = "Output", long)]
    overwrite_checkpoint: bool,
    /// Choose the epochs too: stop choosing when the validation RMSE has
    /// not improved for N epochs, and train the model for the best epoch's
    /// count (default while choosing --lr or --reg: 3; given with both
    /// fixed, it makes the run choose its epochs).
    #[arg(help_heading = "Model", long, value_name = "N")]
    patience: Option<usize>,
}

/// `--hogwild-width`, shared by train and bench.
#[derive(Args)]
#[command(next_help_heading = "Schedule")]
pub(crate) struct HogwildArgs {
    /// Hogwild on a GPU: how many ratings of a batch update at once (and may
    /// race), each of that many invocations running its share in order; auto
    /// is 64 on a hardware GPU and the whole batch on a software adapter,
    /// step the whole batch. Ignored by the CPU backend and --deterministic.
    #[arg(long, default_value = "auto", value_name = "W|auto|step")]
    hogwild_width: String,
}

impl HogwildArgs {
    /// The width asked for.
    pub(crate) fn width(&self) -> Result<HogwildWidth> {
        HogwildWidth::parse(&self.hogwild_width).map_err(|why| Error::arg("--hogwild-width", &self.hogwild_width, &why))
    }
}

/// `--co-partition` and `--co-partition-visits`, shared by train and simulate.
#[derive(Args)]
#[command(next_help_heading = "Schedule")]
pub(crate) struct CoPartitionArgs {
    /// Order each epoch by blocks of this side's rows, staged once per block:
    /// users, items, larger (the side with more rows) or none (default: the
    /// blocked order still costs test RMSE, see BENCHMARKS.md).
    #[arg(long, value_name = "SIDE")]
    pub(crate) co_partition: Option<String>,
    /// Visits of every co-partitioning block per epoch: each visit takes the
    /// next part of the block's ratings, so the other side meets every block
    /// V times per epoch (better test RMSE, up to V times the block traffic).
    #[arg(long, default_value_t = 1, value_name = "V")]
    pub(crate) co_partition_visits: u32,
}

impl CoPartitionArgs {
    /// The side to co-partition as the library's run specification asks
    /// for it (`None`: none), once `--co-partition-visits` is checked.
    pub(crate) fn request(&self) -> Result<Option<train::SideRequest>> {
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

impl TrainArgs {
    /// The flags as the library's run specification. The `--lr × --reg`
    /// grid is the Cartesian product, lr-major; empty for one setting.
    fn spec(&self) -> Result<train::RunSpec> {
        let list = |flag: &str, text: &Option<String>| text.as_deref().map(|t| train::number_list(flag, t)).transpose();
        let (lrs, regs) = (list("--lr", &self.lr)?, list("--reg", &self.reg)?);
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
                bias_reg: self.bias_reg,
                decay: self.decay,
                init_std: self.init_std,
                ..HyperParams::DEFAULT
            },
            grid: Vec::new(),
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
                threads: self.threads.unwrap_or_else(crate::default_threads),
                hogwild_width: self.hogwild.width()?,
                distributed: self.distributed.unwrap_or_else(crate::launcher_default),
                rank_timeout: self.rank_timeout,
                cache: Some(Budget::parse("--cache", &self.cache)?),
                staleness: self.staleness,
            },
            calibration_cache: !self.no_calibration_cache,
            tune: Tuning { validation: self.validation, patience: self.patience, ..Tuning::default() },
        }
        .with_lr_reg(lrs, regs))
    }
}

/// `train` flags that may stand beside `--config`: where to train and what
/// to write, which change no model (the rest are the request's to set).
const BESIDE_CONFIG: [&str; 18] = [
    "config",
    "backend",
    "adapter",
    "device_memory",
    "policy",
    "lookahead",
    "threads",
    "hogwild_width",
    "distributed",
    "rank_timeout",
    "cache",
    "staleness",
    "no_calibration_cache",
    "json",
    "save",
    "checkpoint",
    "resume",
    "overwrite_checkpoint",
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
    // How many processes run it is this launch's, not the file's.
    b.distributed = from_flags.distributed;
    b.rank_timeout = from_flags.rank_timeout;
    (b.cache, b.staleness) = (from_flags.cache, from_flags.staleness);
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
    // A bad value the file gave is named as the file's, not as a flag the
    // user did not type (and may not type beside --config).
    let given = given_flags("train");
    request.spec.validate().map_err(|e| match e {
        Error::InvalidArg { flag, value, reason } if !given.iter().any(|g| flag == format!("`{g}`")) => {
            Error::arg(&format!("{} in --config {}", flag.replace('`', "\""), path.display()), value, reason)
        }
        e => e,
    })?;
    Ok(request)
}

/// Epochs whose traffic `train` works out for each stage across ranks.
const WIRE_PLAN_EPOCHS: usize = 3;

pub(crate) fn cmd_train(a: TrainArgs) -> Result<()> {
    let request = train_request(&a)?;
    crate::refuse_lone_copies(request.spec.backend.distributed)?;
    request.spec.validate()?;
    // Output paths are checked before the data is read or a step trained:
    // writable, and none of them an input or another output.
    let inputs = [
        ("--config", a.config.as_deref()),
        ("--data", request.source.path.as_deref()),
        ("--test", request.source.test.as_deref()),
    ];
    // `--checkpoint` names a folder, or the checkpoint file itself where it
    // ends in .safetensors (`checkpoint::checkpoint_path`).
    let checkpoint_file = a.checkpoint.as_deref().filter(|d| train::checkpoint::checkpoint_path(d).as_path() == *d);
    let checkpoint_folder = a.checkpoint.as_deref().filter(|_| checkpoint_file.is_none());
    check_paths(
        &[("--json", a.json.as_deref()), ("--save", a.save.as_deref()), ("--checkpoint", checkpoint_file)],
        &[("--checkpoint", checkpoint_folder)],
        &inputs,
    )?;
    let out = Out { to_stderr: a.json.as_deref() == Some(Path::new("-")) };
    let checkpoints = [("--checkpoint", &a.checkpoint), ("--resume", &a.resume)];
    if let Some((flag, Some(dir))) = checkpoints.into_iter().find(|(_, d)| d.is_some())
        && request.spec.backend.backend == rowstage::gpu::BackendChoice::Noop
    {
        return Err(Error::arg(
            flag,
            dir.display().to_string(),
            "the noop backend runs no kernel: its tables are no model to checkpoint or resume",
        ));
    }
    // A resume reads its checkpoint before anything is made: a folder that
    // holds none is not created by the attempt.
    if let Some(dir) = &a.resume
        && !train::checkpoint::checkpoint_exists(dir)
    {
        let file = train::checkpoint::checkpoint_path(dir);
        return Err(Error::io(&file, std::io::Error::new(std::io::ErrorKind::NotFound, "no checkpoint to resume")));
    }
    // The folder checkpoints go to: made now (a read-only place fails here,
    // before any work), locked for this run, and never another run's.
    // Under MPI, rank 0 checks and locks the folder, and every rank writes
    // its share of each checkpoint there (`checkpoint::save_share`).
    let speaks = crate::output::speaks();
    let _lock = match a.checkpoint.as_ref().or(a.resume.as_ref()).filter(|_| speaks) {
        Some(dir) => {
            let written = train::checkpoint::checkpoint_path(dir);
            // Only the checkpoint being resumed may be written over without
            // being asked: `--resume A --checkpoint B` keeps B's own.
            let resumed_here = a.resume.as_ref().is_some_and(|r| same_checkpoint(r, dir));
            if !resumed_here && train::checkpoint::checkpoint_exists(dir) && !a.overwrite_checkpoint {
                return Err(Error::arg(
                    "--checkpoint",
                    dir.display().to_string(),
                    "holds another run's checkpoint: resume it (--resume), choose another folder, or pass \
                     --overwrite-checkpoint to replace it",
                ));
            }
            let folder = written.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Some(train::checkpoint::lock_folder(folder)?)
        }
        None => None,
    };
    let resume = match &a.resume {
        Some(dir) => Some(train::checkpoint::load_checkpoint(dir)?),
        None => None,
    };
    let resumed = resume.as_ref().map(|c| (c.path.clone(), c.state.epoch, c.state.position));
    let options = RunOptions { checkpoint: a.checkpoint.clone().or(a.resume.clone()), resume };
    let request_distributed = request.spec.backend.distributed;
    let mut run = Run::from_request(request, options)?;
    for n in run.notes() {
        out.line(n);
    }
    let resolved = run.resolved();
    if let Some(n) = &resolved.opened.notice {
        warn!("notice: {}", flags(n));
    }
    // The parameter server's flags on another run: said, not dropped.
    let server_flags: Vec<String> = crate::given_flags("train")
        .into_iter()
        .filter(|f| f == "cache" || f == "staleness")
        .map(|f| format!("--{f}"))
        .collect();
    if !server_flags.is_empty() && request_distributed != train::Distributed::Server {
        warn!(
            "notice: {} set{} the parameter server's cache (--distributed server); this run is not one, so {} nothing",
            server_flags.join(" and "),
            if server_flags.len() == 1 { "s" } else { "" },
            if server_flags.len() == 1 { "it changes" } else { "they change" }
        );
    }
    let (settings, at_once) = (&resolved.settings, resolved.at_once);
    let backend = resolved.opened.backend.as_ref();
    let data = run.data();
    out.line(&format!(
        "data: {} — {} users, {} items, {} train / {} test ratings ({} test ratings with a user or item unseen in training)",
        data.name,
        data.users.len(),
        data.items.len(),
        data.train.len(),
        data.test.len(),
        data.cold_test()
    ));
    let ceiling = backend.is_ceiling();
    if let (true, Some(path)) = (ceiling, &a.save) {
        return Err(Error::arg(
            "--save",
            path.display().to_string(),
            "the noop backend runs no kernel, so it trains no model to save",
        ));
    }
    out.line(&format!("backend: {} on {}", backend.kind(), backend.adapter()));
    if ceiling {
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
    // Across ranks: the traffic of the stage about to train, from its order.
    let next = run.epochs_done();
    for l in run.wire_plan(next..next + WIRE_PLAN_EPOCHS)?.iter().flat_map(|w| w.lines()) {
        out.line(&l);
    }
    if let Some(l) = &resolved.opened.layout {
        out.line(&report::layout_line(l, settings.table_bytes(data)));
    }
    let staged = resolved.opened.layout.is_some();
    let hardware = resolved.opened.adapter.as_ref().is_some_and(|a| !a.is_software());

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
    if let Some((path, epoch, position)) = resumed {
        out.line(&format!(
            "resuming {} at epoch {} ({position} of its ratings done)",
            path.display(),
            epoch.saturating_add(1)
        ));
        bar.inc(epoch as u64);
    }
    interrupt_on_signal(run.cancel_token());
    let mut warned = false;
    let mut stage = run.stage();
    while let Some((now, e)) = run.step()? {
        if now != stage {
            // Choosing ended: what it kept, and the final training's slab.
            stage = now;
            bar.set_position(0);
            if let Some(c) = run.choice() {
                bar.set_length(c.epochs as u64);
                bar.suspend(|| out.line(&c.line()));
            }
            if let Some(l) = &run.resolved().opened.layout {
                bar.suspend(|| out.line(&report::layout_line(l, run.resolved().settings.table_bytes(run.data()))));
            }
            // The final training's first epochs (its first is trained by
            // now; the figures are the order's, not the ledger's).
            for l in run.wire_plan(0..WIRE_PLAN_EPOCHS)?.iter().flat_map(|w| w.lines()) {
                bar.suspend(|| out.line(&l));
            }
        }
        let choosing = now == Stage::Choosing;
        bar.suspend(|| out.line(&report::epoch_line(&e, staged, ceiling, choosing)));
        if let Some(note) = report::conflict_note(&e, at_once, hardware).filter(|_| !warned) {
            warned = true;
            bar.suspend(|| warn!("note: {}", flags(&note)));
        }
        bar.inc(1);
    }
    // Choosing ended, but the run stopped before the final training's
    // first epoch came back: what it chose is still said.
    if stage == Stage::Choosing
        && let Some(c) = run.choice()
    {
        bar.suspend(|| out.line(&c.line()));
    }
    let done = run.finish()?;
    bar.finish_and_clear();
    let (outcome, report) = (&done.outcome, &done.report);
    if outcome.diverged.is_some() {
        out.line(&format!("stopped: the loss of epoch {} is not finite", outcome.epochs.len()));
    } else if !outcome.complete
        && report.choice.as_ref().is_some_and(|c| c.choice.as_ref().is_none_or(|k| k.stopped == "interrupted"))
    {
        out.line(&format!("interrupted while choosing the settings, after {} epoch(s)", outcome.epochs.len()));
        if a.checkpoint.is_some() || a.resume.is_some() {
            out.line(
                "no checkpoint written: choosing is not checkpointed; run the command again (it chooses the same)",
            );
        }
    } else if !outcome.complete {
        out.line(&format!("interrupted after {} complete epoch(s)", outcome.epochs.len()));
    }
    if let Some(p) = &outcome.checkpoint {
        out.line(&format!("checkpoint: {}", p.display()));
    }
    if let Some(c) = report.choice.as_ref().filter(|c| c.candidates.len() > 1) {
        out.line("the candidates, best first (validation figures at the epoch kept):");
        for l in report::grid_table(&c.candidates, "validation") {
            out.line(&l);
        }
    }
    if outcome.diverged.is_some() {
        // No final score: the error below says why.
    } else if ceiling {
        out.line(&format!(
            "final: {:.3e} ratings/s, the host's ceiling (noop: no kernel ran, so there is no model to score)",
            outcome.ratings_per_sec
        ));
    } else if outcome.final_metrics.count == 0 {
        out.line(&format!("final: no test ratings to score  {:.3e} ratings/s", outcome.ratings_per_sec));
    } else {
        out.line(&format!(
            "final: test RMSE {:.4}  MAE {:.4}  {:.3e} ratings/s",
            outcome.final_metrics.rmse, outcome.final_metrics.mae, outcome.ratings_per_sec
        ));
    }
    match &a.save {
        Some(_) if outcome.complete && !speaks => {}
        Some(path) if outcome.complete => {
            done.save_model(path)?;
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
        write_output(path, &serde_json::to_string_pretty(report).expect("report serialises"))?;
    }
    let Finished { outcome, .. } = done;
    if let Some(e) = outcome.diverged {
        return Err(e);
    }
    if !outcome.complete {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// The signal that stopped the run, for the exit status (128 + its
/// number); 0 while none has.
pub(crate) static STOPPED_BY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Cancels `token` on the first SIGINT (Ctrl-C), SIGTERM or SIGHUP: training
/// stops at the next batch boundary and writes what it has (the report with
/// `"complete": false`, the checkpoint). A second signal exits at once. The
/// exit status is 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM).
pub(crate) fn interrupt_on_signal(token: train::CancelToken) {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot install the signal handlers ({e}); a signal will end the run without a report");
                return;
            }
        };
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if token.is_cancelled() {
                    warn!("\ninterrupted again: exiting now");
                    std::process::exit(128 + signal);
                }
                STOPPED_BY.store(signal, std::sync::atomic::Ordering::SeqCst);
                token.cancel();
                let name = signal_hook::low_level::signal_name(signal).unwrap_or("a signal");
                warn!("\n{name}: finishing the current batch, then writing what the run has (again to exit now)");
            }
        });
    }
    #[cfg(not(unix))]
    {
        let handler = move || {
            if token.is_cancelled() {
                warn!("\ninterrupted again: exiting now");
                std::process::exit(130);
            }
            STOPPED_BY.store(2, std::sync::atomic::Ordering::SeqCst);
            token.cancel();
            warn!("\ninterrupt: finishing the current batch, then writing what the run has (Ctrl-C again to exit now)");
        };
        if let Err(e) = ctrlc::set_handler(handler) {
            log::warn!("cannot install the Ctrl-C handler ({e}); Ctrl-C will end the run without a report");
        }
    }
}

/// Whether two `--checkpoint`/`--resume` values name the same checkpoint
/// (the same file in the same folder, however the path is spelt).
fn same_checkpoint(a: &Path, b: &Path) -> bool {
    let place = |d: &Path| {
        let file = train::checkpoint::checkpoint_path(d);
        let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (std::fs::canonicalize(folder).ok(), file.file_name().map(|n| n.to_owned()))
    };
    let (x, y) = (place(a), place(b));
    x.0.is_some() && x == y
}
