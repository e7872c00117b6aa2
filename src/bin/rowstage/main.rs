//! The `rowstage` command line: a thin layer over the library. Each command
//! parses its flags into the library's request, calls the library, and
//! prints what comes back (docs/ARCHITECTURE.md, "The library's entry").
//!
//! Exit codes: 0 success, 1 failure at run time (GPU, device), 2 bad input
//! (files, flags, budgets, ids).

#[macro_use]
mod output;
mod bench;
mod data;
mod devices;
mod plan;
mod serve;
mod simulate;
mod train;

use clap::{Parser, Subcommand};

use rowstage::Named;

use output::flags;

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
    Train(Box<train::TrainArgs>),
    /// Score a ratings file with a saved model.
    Eval(serve::EvalArgs),
    /// Print a user's top items with their predicted ratings.
    Recommend(serve::RecommendArgs),
    /// Choose the batch size and the resident/staging split for a budget, and
    /// predict the traffic and speed.
    Plan(plan::PlanArgs),
    /// Replay training's batch sequence through staging policies and budgets,
    /// without kernels, and count what each would move.
    Simulate(simulate::SimulateArgs),
    /// List every GPU adapter wgpu finds, with the limits that matter here.
    Devices(devices::DevicesArgs),
    /// Write the train/test split a run of the same data flags trains on, as
    /// tab-separated `user item rating` files, for a peer to train on.
    Split(data::SplitArgs),
    /// Sweep budgets × policies (× backends) with warm-up and timed epochs;
    /// export the medians as JSON, CSV or Markdown and draw SVG charts.
    Bench(Box<bench::BenchArgs>),
    /// Compare two saved models' tables: the largest |difference| of their
    /// factors and biases, row by row (the same model on two devices?).
    Compare(serve::CompareArgs),
}

/// A flag's value parser for a library setting with named values: the
/// values and their help come from [`Named`], so the library needs no
/// command-line crate.
pub(crate) struct Choice<T>(std::marker::PhantomData<T>);

impl<T> Clone for Choice<T> {
    fn clone(&self) -> Self {
        Choice(std::marker::PhantomData)
    }
}

impl<T: Named> Choice<T> {
    pub(crate) fn new() -> Self {
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
pub(crate) static MATCHES: std::sync::OnceLock<clap::ArgMatches> = std::sync::OnceLock::new();

/// A whole number of at least 1, as `--lookahead` takes (clap refuses 0
/// with the flag's name).
pub(crate) fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// The ids of subcommand `sub`'s flags given on the command line.
pub(crate) fn given_flags(sub: &str) -> Vec<String> {
    use clap::CommandFactory;
    let Some(m) = MATCHES.get().and_then(|m| m.subcommand_matches(sub)) else { return Vec::new() };
    // A flattened struct's group (`HogwildArgs`) is listed beside its
    // flags; it is no flag of its own.
    let command = Cli::command();
    let groups: Vec<String> = command
        .find_subcommand(sub)
        .map(|c| c.get_groups().map(|g| g.get_id().as_str().to_string()).collect())
        .unwrap_or_default();
    m.ids()
        .map(|id| id.as_str().to_string())
        .filter(|id| !groups.contains(id) && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
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

/// This process's MPI rank and the world's size: `(0, 1)` without MPI.
pub(crate) fn mpi_world() -> (usize, usize) {
    #[cfg(feature = "mpi")]
    return rowstage::distributed::world();
    #[cfg(not(feature = "mpi"))]
    (0, 1)
}

/// `--distributed` when not given: rotate where an MPI launcher started
/// more than one rank.
pub(crate) fn launcher_default() -> rowstage::train::Distributed {
    if mpi_world().1 > 1 { rowstage::train::Distributed::Rotate } else { rowstage::train::Distributed::Off }
}

/// Threads when `--threads` is not given: the cores, shared among the
/// copies a launcher started on this machine (Open MPI and MPICH say how
/// many), so that ranks on one machine do not oversubscribe its cores.
pub(crate) fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let here = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(1);
    (cores / here.max(1)).max(1)
}

/// Copies of this process a launcher started: `mpirun` (Open MPI), Hydra
/// (MPICH) and `srun` say so in the environment.
fn launched_copies() -> usize {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .filter_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
        .max()
        .unwrap_or(1)
}

/// Refuses a run that a launcher started several times but that would not
/// train as one: each copy would train alone and write the same files.
pub(crate) fn refuse_lone_copies(distributed: rowstage::train::Distributed) -> rowstage::error::Result<()> {
    let (copies, world) = (launched_copies(), mpi_world().1);
    let why = if copies <= 1 {
        return Ok(());
    } else if !cfg!(feature = "mpi") {
        "but it was built without MPI: build it with `cargo build --release --features mpi` \
         (scripts/deps.sh --mpi installs what that needs)"
    } else if world == 1 {
        "but MPI sees a world of one: the launcher is not of the MPI rowstage was built with"
    } else if distributed == rowstage::train::Distributed::Off {
        "and `distributed` off asks each to train alone: use rotate, or start one copy"
    } else {
        return Ok(());
    };
    Err(rowstage::error::Error::arg(
        "`distributed`",
        format!("{copies} processes"),
        format!("an MPI launcher started {copies} copies of rowstage, {why}"),
    ))
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
    output::guard_closed_stdio();
    // SAFETY: the process has one thread here; nothing reads the
    // environment concurrently.
    unsafe { rowstage::gpu::context::quiet_gl_probe() };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = parse_cli();
    // MPI is started where a launcher started this process, or
    // `--distributed` asks for it, and finalised when `_mpi` drops.
    #[cfg(feature = "mpi")]
    let _mpi = (rowstage::distributed::launched() || std::env::args().any(|a| a.starts_with("--distributed")))
        .then(rowstage::distributed::start)
        .flatten();
    output::set_rank(mpi_world().0);
    let result = match cli.command {
        Command::Train(a) => train::cmd_train(*a),
        Command::Eval(a) => serve::cmd_eval(a),
        Command::Recommend(a) => serve::cmd_recommend(a),
        Command::Plan(a) => plan::cmd_plan(a),
        Command::Simulate(a) => simulate::cmd_simulate(a),
        Command::Devices(a) => devices::cmd_devices(a),
        Command::Split(a) => data::cmd_split(a),
        Command::Bench(a) => bench::cmd_bench(*a),
        Command::Compare(a) => serve::cmd_compare(a),
    };
    if let Err(e) = result {
        // A stop is every rank's: rank 0 alone says so.
        if output::speaks() || !matches!(e, rowstage::Error::Interrupted) {
            warn!("error: {}", flags(&e.to_string()));
        }
        let signal = train::STOPPED_BY.load(std::sync::atomic::Ordering::SeqCst);
        std::process::exit(match e {
            rowstage::Error::Interrupted if signal > 0 => 128 + signal,
            e => e.exit_code(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
