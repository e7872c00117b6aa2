//! `rowstage simulate`: training's steps replayed through staging policies
//! and budgets, without kernels.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::data::{DataArgs, load_dataset};
use crate::output::{Out, check_paths, write_output};
use crate::train::CoPartitionArgs;
use rowstage::bench;
use rowstage::error::{Error, Result};
use rowstage::model::{self, HyperParams};
use rowstage::stage::{Budget, PolicyKind, human_bytes};
use rowstage::train;

#[derive(Args)]
pub(crate) struct SimulateArgs {
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
    #[arg(long, default_value_t = 32, value_name = "L", value_parser = crate::at_least_one())]
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

pub(crate) fn cmd_simulate(a: SimulateArgs) -> Result<()> {
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
    let source = a.data.source()?;
    check_paths(
        &[("--json", a.json.as_deref())],
        &[],
        &[("--data", source.path.as_deref()), ("--test", source.test.as_deref())],
    )?;
    let budgets = Budget::parse_list("--device-memory", &a.device_memory)?;
    let policies = PolicyKind::parse_list("--policy", &a.policy)?;
    let out = Out { to_stderr: a.json.as_deref() == Some(Path::new("-")) };
    let (data, _) = load_dataset(&source, a.seed, &out)?;
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
    // Every budget too small: an empty sweep is no result.
    if let Some(SweepOutcome::TooSmall { step, needed }) =
        rows.first().map(|r| &r.outcome).filter(|_| bench::simulate::replayed(&rows).is_empty())
    {
        return Err(Error::NothingMeasured {
            what: "budget and policy",
            reason: format!(
                "the budget is too small: {step} needs --device-memory {needed} ({})",
                human_bytes(*needed)
            ),
        });
    }
    if let Some(path) = &a.json {
        write_output(path, &serde_json::to_string_pretty(&bench::simulate::replayed(&rows)).expect("json"))?;
    }
    Ok(())
}
