//! `rowstage plan`: what `train` will do on an adapter, before it trains.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::Choice;
use crate::data::{DataArgs, load_dataset};
use crate::output::{Out, check_paths, write_output};
use rowstage::error::{Error, Result};
use rowstage::gpu::BackendChoice;
use rowstage::model::HyperParams;
use rowstage::stage::Budget;
use rowstage::train::{self, BackendSpec};

#[derive(Args)]
pub(crate) struct PlanArgs {
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
    /// Plan `train --distributed` across this many MPI ranks instead of a
    /// GPU's slab: the bytes handed to MPI per epoch, from the order
    /// (rotate) or every rank's cache schedule (server). Default: the ranks
    /// of the MPI launcher that started `plan`, else 1.
    #[arg(long, value_name = "P", value_parser = crate::at_least_one())]
    ranks: Option<usize>,
    /// With --ranks: the mode planned, rotate or server.
    #[arg(long, value_parser = Choice::<rowstage::train::Distributed>::new(), default_value = "rotate", value_name = "MODE")]
    distributed: rowstage::train::Distributed,
    /// With --distributed server: each rank's cache (as `train --cache`).
    #[arg(long, value_name = "SIZE", default_value = "25%")]
    cache: String,
    /// With --distributed server: as `train --staleness`.
    #[arg(long, value_name = "CLOCKS", default_value_t = train::DEFAULT_STALENESS, value_parser = clap::value_parser!(u32).range(1..))]
    staleness: u32,
    /// With --distributed server: the cache's policy (as `train --policy`).
    #[arg(long, value_parser = Choice::<rowstage::stage::PolicyKind>::new(), default_value = "sca")]
    policy: rowstage::stage::PolicyKind,
    /// Epochs whose traffic --ranks works out.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = crate::at_least_one())]
    epochs: usize,
    /// Write the plan as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub(crate) fn cmd_plan(a: PlanArgs) -> Result<()> {
    // Under a launcher, `plan` is the run across its ranks.
    crate::refuse_lone_copies(rowstage::train::Distributed::Rotate)?;
    let source = a.data.source()?;
    check_paths(
        &[("--json", a.json.as_deref())],
        &[],
        &[("--data", source.path.as_deref()), ("--test", source.test.as_deref())],
    )?;
    let batch = match a.batch.trim() {
        "auto" => train::BatchRequest::Auto,
        b => train::BatchRequest::Fixed(
            b.parse::<usize>()
                .map_err(|_| Error::arg("--batch", b, "must be auto or a whole number of ratings ≥ 1"))?,
        ),
    };
    // What `train` runs with these flags, and its defaults otherwise.
    let spec = train::RunSpec {
        hp: HyperParams { rank: a.rank, ..HyperParams::DEFAULT },
        batch,
        seed: a.seed,
        order: train::Order::parse(&a.order)?,
        backend: BackendSpec {
            backend: a.backend,
            adapter: a.adapter.clone(),
            device_memory: Some(Budget::parse("--device-memory", &a.device_memory)?),
            policy: a.policy,
            cache: Some(Budget::parse("--cache", &a.cache)?),
            staleness: a.staleness,
            ..BackendSpec::default()
        },
        calibration_cache: !a.no_calibration_cache,
        ..train::RunSpec::default()
    };
    spec.validate()?;
    // Each epoch's traffic is worked out and kept: as many as a run may train.
    if a.epochs > train::MAX_EPOCHS {
        return Err(Error::arg("--epochs", a.epochs.to_string(), format!("must be at most {}", train::MAX_EPOCHS)));
    }
    let out = Out { to_stderr: a.json.as_deref() == Some(Path::new("-")) };
    let (data, _) = load_dataset(&source, a.seed, &out)?;
    let ranks = a.ranks.unwrap_or(crate::mpi_world().1);
    if ranks > 1 && a.distributed == rowstage::train::Distributed::Off {
        return Err(Error::arg(
            "--distributed",
            "off",
            format!("plans one process, not {ranks} ranks: give rotate or server, or leave --ranks out"),
        ));
    }
    if ranks > 1 && a.distributed == rowstage::train::Distributed::Server {
        let wire = rowstage::session::server_wire_plan(&data, &spec, ranks, a.epochs)?;
        let footer = format!(
            "mpirun -np {ranks} rowstage train --distributed server with the same data, --rank {}, --order {}, --seed \
             {}, --policy {}, --cache {} and --staleness {} hands MPI these bytes in its final training",
            a.rank,
            a.order,
            a.seed,
            rowstage::Named::name(a.policy),
            a.cache,
            a.staleness
        );
        return show(&out, wire.lines(), &footer, a.json.as_deref(), &wire);
    }
    if ranks > 1 {
        let wire = rowstage::session::wire_plan(&data, &spec, ranks, a.epochs)?;
        let footer = format!(
            "mpirun -np {ranks} rowstage train with the same data, --rank {}, --order {} and --seed {} hands MPI these \
             bytes",
            a.rank, a.order, a.seed
        );
        return show(&out, wire.lines(), &footer, a.json.as_deref(), &wire);
    }
    let plan = rowstage::session::plan(&data, &spec)?;
    // Every flag that shapes the plan, so that the line reproduces it.
    let footer = format!(
        "rowstage train with the same data, --rank {}, --order {}, --device-memory {}, --seed {} and --batch {} \
         applies this plan",
        a.rank, a.order, a.device_memory, a.seed, a.batch
    );
    show(&out, plan.lines(), &footer, a.json.as_deref(), &plan)
}

/// A plan's lines, then the `footer` that says which run applies it, and
/// the plan as JSON to `json` where asked.
fn show(out: &Out, lines: Vec<String>, footer: &str, json: Option<&Path>, plan: &impl serde::Serialize) -> Result<()> {
    for line in lines {
        out.line(&line);
    }
    out.line(footer);
    if let Some(path) = json {
        write_output(path, &serde_json::to_string_pretty(plan).expect("a plan serialises"))?;
    }
    Ok(())
}
