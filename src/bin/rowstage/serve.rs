//! Using a saved model: `rowstage eval`, `recommend` and `compare`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::Choice;
use crate::data::load_opts;
use crate::output::{Out, check_paths, write_output};
use rowstage::data::{self, Format, HeaderMode, UNKNOWN};
use rowstage::error::{Error, Result};
use rowstage::model::{self, serve};

#[derive(Args)]
pub(crate) struct EvalArgs {
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
pub(crate) struct RecommendArgs {
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
pub(crate) struct CompareArgs {
    /// Two model files written by `train --save`, trained on the same data.
    #[arg(value_name = "MODEL", num_args = 2, required = true)]
    models: Vec<PathBuf>,
    /// Write the differences as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub(crate) fn cmd_compare(a: CompareArgs) -> Result<()> {
    check_paths(
        &[("--json", a.json.as_deref())],
        &[],
        &[("MODEL", Some(&a.models[0])), ("MODEL", Some(&a.models[1]))],
    )?;
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

pub(crate) fn cmd_eval(a: EvalArgs) -> Result<()> {
    check_paths(
        &[("--json", a.json.as_deref()), ("--predictions", a.predictions.as_deref())],
        &[],
        &[("--model", Some(&a.model)), ("--data", Some(&a.data))],
    )?;
    let (m, _) = model::load_model(&a.model)?;
    let (set, rep) = data::load_ratings(&a.data, load_opts(a.format, a.header, a.skip_bad_lines))?;
    let ratings = serve::onto_model(&m, &set);
    let cold = ratings.iter().filter(|r| r.user == UNKNOWN || r.item == UNKNOWN).count();
    let metrics = m.evaluate(&ratings);
    if !ratings.is_empty() && cold == ratings.len() {
        // Not one rating the model has rows for: the figures are the mean's
        // and the biases' alone, likely another data set's ids.
        warn!(
            "notice: none of the {} ratings has both its user and its item in the model: are these the ids it was \
             trained on? The figures below score the mean and the biases alone",
            ratings.len()
        );
    }
    let to_stdout = |p: &Option<PathBuf>| p.as_deref() == Some(Path::new("-"));
    let out = Out { to_stderr: to_stdout(&a.json) || to_stdout(&a.predictions) };
    out.line(&format!(
        "{}: {} ratings ({} with a user or item unknown to the model{}): {}",
        a.data.display(),
        ratings.len(),
        cold,
        if rep.skipped > 0 { format!(", {} bad lines skipped", rep.skipped) } else { String::new() },
        if metrics.count == 0 {
            "no ratings to score".to_string()
        } else {
            format!("RMSE {:.4}  MAE {:.4}", metrics.rmse, metrics.mae)
        }
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

pub(crate) fn cmd_recommend(a: RecommendArgs) -> Result<()> {
    check_paths(
        &[("--json", a.json.as_deref()), ("--output", a.output.as_deref())],
        &[],
        &[("--model", Some(&a.model)), ("--exclude-rated", a.exclude_rated.as_deref())],
    )?;
    let (m, _) = model::load_model(&a.model)?;
    let users: Vec<u32> = match &a.user {
        Some(id) => vec![m.user_ids.get(id).ok_or_else(|| Error::UnknownId { kind: "user", id: id.clone() })?],
        None => (0..m.n_users() as u32).collect(),
    };
    let rated = match &a.exclude_rated {
        Some(p) => {
            let rated = serve::rated_items(&m, &data::load_ratings(p, load_opts(a.format, HeaderMode::Auto, false))?.0);
            if rated.iter().all(Vec::is_empty) {
                warn!(
                    "notice: --exclude-rated {}: none of its ratings is of a user and an item the model has, so \
                     nothing is left out (are these the ids it was trained on?)",
                    p.display()
                );
            }
            Some(rated)
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
                let (user, item) = (m.user_ids.name(u), m.item_ids.name(*i));
                data::check_tsv_field(user)?;
                data::check_tsv_field(item)?;
                let _ = writeln!(text, "{user}\t{}\t{item}\t{s:.4}", k + 1);
            }
        }
    }
    write_output(a.output.as_deref().unwrap_or(Path::new("-")), text.trim_end())
}
