//! `rowstage._rowstage`: the library's one entry ([`rowstage::session::Run`])
//! for Python. The package's `rowstage/__init__.py` is the API a user sees
//! (`MF`, `load`, `devices`, `simulate`); this module does what needs the
//! library: ratings in, a run stepped an epoch at a time with the GIL
//! released, the model's tables out as numpy arrays, and the model file.
//! Ids are the library's strings here; the package maps them to the ids
//! the user gave.

use std::path::PathBuf;

use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use rowstage::data::{Dataset, IdMap, Rating, RatingSet, rating_problem};
use rowstage::model::{FileKind, Model};
use rowstage::session::{Run, RunOptions, query};
use rowstage::train::CancelToken;

mod interrupt;

/// A library error as Python raises it: settings and data a caller gave
/// are a `ValueError`, files an `OSError`, the rest (a device that failed)
/// a `RuntimeError`. Parameter names are spelt as the keyword arguments
/// (`device_memory`).
fn raised(e: rowstage::Error) -> PyErr {
    use rowstage::Error as E;
    let text = rowstage::error::spell_params_with(&e.to_string(), "", "_");
    match e {
        E::Io { .. } => PyOSError::new_err(text),
        E::Parse { .. }
        | E::EmptyData { .. }
        | E::InvalidArg { .. }
        | E::BudgetTooSmall { .. }
        | E::BudgetTooLarge { .. }
        | E::BadModel { .. }
        | E::UnknownId { .. }
        | E::BackendMissing { .. }
        | E::NoAdapter { .. } => PyValueError::new_err(text),
        _ => PyRuntimeError::new_err(text),
    }
}

/// `T` moved into a closure that runs with the GIL released. `Python::detach`
/// runs it on this same thread: only the GIL is let go, so a value that is
/// not `Send` (a run holding a GPU backend) is never used from two threads.
struct SameThread<T>(T);
// SAFETY: see above; `detach` calls its closure on the calling thread.
unsafe impl<T> Send for SameThread<T> {}

impl<T> SameThread<T> {
    /// The value, taken inside the closure (a method call moves the whole
    /// wrapper in, where a field access would capture the field alone).
    fn take(self) -> T {
        self.0
    }
}

/// A ratings table from ids (`users[u]` names user code `u`) and codes.
fn rating_set(
    what: &str,
    (users, items): (Vec<String>, Vec<String>),
    (u, i, r): (&[u32], &[u32], &[f32]),
) -> PyResult<RatingSet> {
    if u.len() != i.len() || u.len() != r.len() {
        return Err(PyValueError::new_err(format!(
            "{what}: {} users, {} items and {} ratings: the three must be as long",
            u.len(),
            i.len(),
            r.len()
        )));
    }
    let mut ratings = Vec::with_capacity(u.len());
    for (k, ((&u, &i), &v)) in u.iter().zip(i).zip(r).enumerate() {
        if u as usize >= users.len() || i as usize >= items.len() {
            return Err(PyValueError::new_err(format!("{what}[{k}]: an id code beyond the ids given")));
        }
        if let Some(problem) = rating_problem(v) {
            return Err(PyValueError::new_err(format!("{what}[{k}]: rating {v} is {problem}")));
        }
        ratings.push(Rating { user: u, item: i, value: v });
    }
    Ok(RatingSet { users: IdMap::from_names(users), items: IdMap::from_names(items), ratings })
}

type Ids = (Vec<String>, Vec<String>);
type Codes<'py> = (PyReadonlyArray1<'py, u32>, PyReadonlyArray1<'py, u32>, PyReadonlyArray1<'py, f32>);

/// A training run, stepped by the package an epoch at a time.
#[pyclass(unsendable)]
struct Trainer {
    run: Option<Run>,
    cancel: CancelToken,
    /// Each user's training items (model codes), for `recommend`.
    rated: Option<Vec<Vec<u32>>>,
}

#[pymethods]
impl Trainer {
    /// `pairs`: `rowstage train`'s settings by flag name; the training
    /// ratings as ids and codes; `test` likewise, or `None` (nothing held
    /// out).
    #[new]
    #[pyo3(signature = (pairs, ids, codes, test=None))]
    fn new(
        py: Python<'_>,
        pairs: Vec<(String, String)>,
        ids: Ids,
        codes: Codes<'_>,
        test: Option<(Ids, Codes<'_>)>,
    ) -> PyResult<Self> {
        let request = query::request_from_pairs(&pairs).map_err(raised)?;
        let train = rating_set("ratings", ids, (codes.0.as_slice()?, codes.1.as_slice()?, codes.2.as_slice()?))?;
        if train.ratings.is_empty() {
            return Err(PyValueError::new_err("no ratings given: there is nothing to train on"));
        }
        let test_set = match &test {
            Some((ids, c)) => rating_set("test", ids.clone(), (c.0.as_slice()?, c.1.as_slice()?, c.2.as_slice()?))?,
            None => RatingSet { users: IdMap::new(), items: IdMap::new(), ratings: Vec::new() },
        };
        let source = rowstage::data::DataSource {
            path: Some(PathBuf::from("(arrays)")),
            test: test.is_some().then(|| PathBuf::from("(test arrays)")),
            test_fraction: 0.0,
            ..request.source
        };
        let spec = request.spec;
        let data = Dataset::from_sets("arrays", train, test_set);
        let opened = SameThread((data, source, spec));
        let run = py.detach(move || {
            let (data, source, spec) = opened.take();
            SameThread(Run::new(data, source, spec, RunOptions::default()))
        });
        let run = run.0.map_err(raised)?;
        let cancel = run.cancel_token();
        Ok(Trainer { run: Some(run), cancel, rated: None })
    }

    /// What the run says before its first epoch, a line each.
    fn notes(&self) -> Vec<String> {
        self.run.as_ref().map_or_else(Vec::new, |r| r.notes().to_vec())
    }

    /// The next epoch with the GIL released: `(stage, epoch JSON)` in
    /// `train --json`'s epoch schema, or `None` when the run is over. With
    /// `watch_ctrl_c` (the caller is Python's main thread, where
    /// `KeyboardInterrupt` is raised), Ctrl-C stops the epoch at its next
    /// batch and raises it.
    fn step(&mut self, py: Python<'_>, watch_ctrl_c: bool) -> PyResult<Option<(String, String)>> {
        let ceiling = self.is_ceiling();
        let Some(run) = self.run.as_mut() else { return Ok(None) };
        let token = self.cancel.clone();
        let watch = if watch_ctrl_c {
            let w = interrupt::Watch::new(token.flag())
                .map_err(|e| PyRuntimeError::new_err(format!("cannot watch for Ctrl-C: {e}")))?;
            Some(w)
        } else {
            None
        };
        let run = SameThread(run);
        let stepped = py.detach(move || SameThread(run.take().step()));
        let unhandled = watch.as_ref().is_some_and(interrupt::Watch::unhandled);
        drop(watch);
        // Ctrl-C stopped the run. Python's handler noted it, so
        // `check_signals` runs it: the default one raises KeyboardInterrupt,
        // a program's own decides (one that does not raise leaves a run
        // stopped as a callback's `False` does). Where no Python handler was
        // installed (`signal.SIG_DFL`), raise KeyboardInterrupt all the same.
        py.check_signals()?;
        if unhandled {
            return Err(pyo3::exceptions::PyKeyboardInterrupt::new_err("Ctrl-C: the run was stopped"));
        }
        Ok(stepped.0.map_err(raised)?.map(|(stage, e)| {
            let e = rowstage::report::EpochJson::of(&e, ceiling);
            (stage.name().to_string(), serde_json::to_string(&e).expect("an epoch serialises"))
        }))
    }

    /// Ends the run at the next batch (a callback returned `False`).
    fn stop(&self) {
        self.cancel.cancel();
    }

    /// Ends the run: the model kept, with its report.
    fn finish(&mut self, py: Python<'_>) -> PyResult<Fitted> {
        let run = self.run.take().ok_or_else(|| PyRuntimeError::new_err("the run has already finished"))?;
        let train = run.data().train.clone();
        let finished = SameThread(run);
        let mut finished = py.detach(move || SameThread(finished.take().finish())).0.map_err(raised)?;
        // What `rowstage train` refuses to keep: a model whose loss went
        // non-finite (its error says what to lower).
        if let Some(e) = finished.outcome.diverged.take() {
            return Err(raised(e));
        }
        let config = serde_json::to_value(finished.config()).expect("a run's configuration serialises");
        let report = serde_json::to_string(&finished.report).expect("a report serialises");
        let model = finished.outcome.model;
        let mut rated = self.rated.take().unwrap_or_else(|| vec![Vec::new(); model.n_users()]);
        for r in &train {
            rated[r.user as usize].push(r.item);
        }
        for v in &mut rated {
            v.sort_unstable();
            v.dedup();
        }
        Ok(Fitted { model, config, report: Some(report), rated: Some(rated) })
    }
}

impl Fitted {
    /// Refuses a code past the model's rows (`u32::MAX` is an unknown id,
    /// predicted from the rest).
    fn check_codes(&self, u: &[u32], i: &[u32]) -> PyResult<()> {
        for (codes, n, side) in [(u, self.model.n_users(), "user"), (i, self.model.n_items(), "item")] {
            if let Some(&c) = codes.iter().find(|&&c| c != u32::MAX && c as usize >= n) {
                return Err(PyValueError::new_err(format!("{side} code {c}: the model has {n} {side}s")));
            }
        }
        Ok(())
    }

    /// Each user's rated items from (user, item) code pairs, sorted.
    fn rated_from(&self, u: &[u32], i: &[u32]) -> PyResult<Vec<Vec<u32>>> {
        if u.len() != i.len() {
            return Err(PyValueError::new_err(format!(
                "rated: {} users and {} items: pass one of each per pair",
                u.len(),
                i.len()
            )));
        }
        let (n_users, n_items) = (self.model.n_users(), self.model.n_items());
        let mut rated = vec![Vec::new(); n_users];
        for (&u, &i) in u.iter().zip(i) {
            if u as usize >= n_users || i as usize >= n_items {
                return Err(PyValueError::new_err(format!(
                    "rated: code ({u}, {i}) outside the model's {n_users} users and {n_items} items"
                )));
            }
            rated[u as usize].push(i);
        }
        for v in &mut rated {
            v.sort_unstable();
            v.dedup();
        }
        Ok(rated)
    }
}

impl Trainer {
    /// Whether the run trains on wgpu's noop backend (no model).
    fn is_ceiling(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.resolved().opened.backend.is_ceiling())
    }
}

/// A trained (or loaded) model: its tables, its configuration, and what
/// `recommend` leaves out.
#[pyclass]
struct Fitted {
    model: Model,
    config: serde_json::Value,
    report: Option<String>,
    /// Each user's rated items (model codes, sorted), where known.
    rated: Option<Vec<Vec<u32>>>,
}

#[pymethods]
impl Fitted {
    /// The model's user ids, in code order.
    fn user_ids(&self) -> Vec<String> {
        self.model.user_ids.names().to_vec()
    }

    fn item_ids(&self) -> Vec<String> {
        self.model.item_ids.names().to_vec()
    }

    /// The run's report in `train --json`'s schema (`None` for a loaded model).
    fn report(&self) -> Option<String> {
        self.report.clone()
    }

    /// The run's configuration, as the model file records it.
    fn config(&self) -> String {
        self.config.to_string()
    }

    /// `(user_factors, item_factors, user_biases, item_biases)`.
    #[allow(clippy::type_complexity)]
    fn tables<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(
        Bound<'py, PyArray2<f32>>,
        Bound<'py, PyArray2<f32>>,
        Bound<'py, PyArray1<f32>>,
        Bound<'py, PyArray1<f32>>,
    )> {
        let m = &self.model;
        // Rows of `rank` factors and a bias, padded to `stride` floats.
        let split = |table: &[f32], n: usize| {
            let (mut factors, mut biases) = (Vec::with_capacity(n * m.rank), Vec::with_capacity(n));
            for row in table.chunks_exact(m.stride).take(n) {
                factors.extend_from_slice(&row[..m.rank]);
                biases.push(row[m.rank]);
            }
            (factors, biases)
        };
        let (uf, ub) = split(&m.users, m.n_users());
        let (itf, ib) = split(&m.items, m.n_items());
        Ok((
            uf.into_pyarray(py).reshape([m.n_users(), m.rank])?,
            itf.into_pyarray(py).reshape([m.n_items(), m.rank])?,
            ub.into_pyarray(py),
            ib.into_pyarray(py),
        ))
    }

    /// The model's prediction for each (user, item) pair of codes
    /// (`u32::MAX`: an id the model does not know, which contributes
    /// neither bias nor factors), clamped to the training ratings' range.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        users: PyReadonlyArray1<'py, u32>,
        items: PyReadonlyArray1<'py, u32>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let (u, i) = (users.as_slice()?, items.as_slice()?);
        if u.len() != i.len() {
            return Err(PyValueError::new_err(format!(
                "{} users and {} items: pass one of each per pair",
                u.len(),
                i.len()
            )));
        }
        self.check_codes(u, i)?;
        let ratings: Vec<Rating> = u.iter().zip(i).map(|(&user, &item)| Rating { user, item, value: 0.0 }).collect();
        let model = &self.model;
        let out = py.detach(|| rowstage::model::serve::predictions(model, &ratings));
        Ok(out.into_pyarray(py))
    }

    /// The `n` best items of each user (codes), best first, and their
    /// scores; where fewer than `n` are left, `u32::MAX` and NaN fill the
    /// row. `exclude`: leave out the items each user rated: `rated`'s
    /// (user, item) code pairs where given (for this call only), else what
    /// `fit` trained on.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (users, n, exclude, rated=None))]
    fn recommend<'py>(
        &self,
        py: Python<'py>,
        users: PyReadonlyArray1<'py, u32>,
        n: usize,
        exclude: bool,
        rated: Option<(PyReadonlyArray1<'py, u32>, PyReadonlyArray1<'py, u32>)>,
    ) -> PyResult<(Bound<'py, PyArray2<u32>>, Bound<'py, PyArray2<f32>>)> {
        // The rows are `n` wide: no wider than the items there are.
        if n == 0 || n > self.model.n_items() {
            return Err(PyValueError::new_err(format!(
                "n={n}: must be from 1 to the model's {} items",
                self.model.n_items()
            )));
        }
        let users = users.as_slice()?.to_vec();
        if let Some(&u) = users.iter().find(|&&u| u as usize >= self.model.n_users()) {
            return Err(PyValueError::new_err(format!("user code {u}: the model has {} users", self.model.n_users())));
        }
        let given = match &rated {
            Some((u, i)) => Some(self.rated_from(u.as_slice()?, i.as_slice()?)?),
            None => None,
        };
        let rated = match (exclude, given.as_ref().or(self.rated.as_ref())) {
            (false, _) => None,
            (true, Some(r)) => Some(r),
            (true, None) => {
                return Err(PyValueError::new_err(
                    "exclude_rated needs the rated pairs: a loaded model does not know them (pass rated=(users, items))",
                ));
            }
        };
        let model = &self.model;
        let (ids, scores) = py.detach(|| {
            let (mut ids, mut scores) = (vec![u32::MAX; users.len() * n], vec![f32::NAN; users.len() * n]);
            for (k, &u) in users.iter().enumerate() {
                let excluded = rated.map_or(&[][..], |r| &r[u as usize][..]);
                for (j, (item, score)) in
                    rowstage::model::serve::top_items(model, u, n, excluded).into_iter().enumerate()
                {
                    ids[k * n + j] = item;
                    scores[k * n + j] = score;
                }
            }
            (ids, scores)
        });
        Ok((ids.into_pyarray(py).reshape([users.len(), n])?, scores.into_pyarray(py).reshape([users.len(), n])?))
    }

    /// Writes the model file `rowstage train --save` writes.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        let bytes =
            rowstage::model::tables_bytes(&path, FileKind::Model, &self.model, None, &self.config).map_err(raised)?;
        rowstage::model::write_atomically(&path, &bytes).map_err(raised)
    }
}

/// A model file written by `rowstage train --save` (or `MF.save`).
#[pyfunction]
fn load(path: PathBuf) -> PyResult<Fitted> {
    let (model, config) = rowstage::model::load_model(&path).map_err(raised)?;
    Ok(Fitted { model, config, report: None, rated: None })
}

/// A ratings file in any format `rowstage train` reads: its user and item
/// ids and the ratings as codes into them.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn read_ratings<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(Vec<String>, Vec<String>, Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<f32>>)>
{
    let (set, _) =
        py.detach(|| rowstage::data::load_ratings(&path, rowstage::data::LoadOptions::default())).map_err(raised)?;
    let u: Vec<u32> = set.ratings.iter().map(|r| r.user).collect();
    let i: Vec<u32> = set.ratings.iter().map(|r| r.item).collect();
    let r: Vec<f32> = set.ratings.iter().map(|r| r.value).collect();
    Ok((
        set.users.names().to_vec(),
        set.items.names().to_vec(),
        u.into_pyarray(py),
        i.into_pyarray(py),
        r.into_pyarray(py),
    ))
}

/// Every adapter wgpu finds, as JSON (`rowstage devices`' fields).
#[pyfunction]
fn devices() -> String {
    serde_json::to_string(&rowstage::gpu::list_adapters(rowstage::gpu::BackendChoice::Auto))
        .expect("adapters serialise")
}

/// `rowstage simulate`'s sweep over the (user, item) pairs given as codes
/// (every pair a training rating: nothing held out), one epoch by default,
/// at `budgets` through `policies`: its rows as JSON.
#[pyfunction]
fn simulate(
    py: Python<'_>,
    pairs: Vec<(String, String)>,
    ids: Ids,
    users: PyReadonlyArray1<'_, u32>,
    items: PyReadonlyArray1<'_, u32>,
    budgets: String,
    policies: String,
) -> PyResult<String> {
    let request = query::request_from_pairs(&pairs).map_err(raised)?;
    let (u, i) = (users.as_slice()?, items.as_slice()?);
    if u.is_empty() {
        return Err(PyValueError::new_err("no ratings given: simulate needs (user, item) pairs"));
    }
    let ones = vec![1.0f32; u.len()];
    let set = rating_set("pairs", ids, (u, i, &ones))?;
    let data =
        Dataset::from_sets("pairs", set, RatingSet { users: IdMap::new(), items: IdMap::new(), ratings: vec![] });
    let budgets = rowstage::stage::Budget::parse_list("`device_memory`", &budgets).map_err(raised)?;
    let policies = rowstage::stage::PolicyKind::parse_list("`policy`", &policies).map_err(raised)?;
    let spec = request.spec;
    let rows = py
        .detach(|| {
            rowstage::bench::simulate::sweep(&data, &spec, spec.backend.lookahead, &budgets, &policies, &mut |_| {})
        })
        .map_err(raised)?;
    // A budget too small for the run is refused by name, as `rowstage
    // simulate` names it, rather than left out of the rows.
    for r in &rows {
        if let rowstage::bench::simulate::SweepOutcome::TooSmall { step, needed } = &r.outcome {
            return Err(PyValueError::new_err(format!(
                "device_memory {}: too small, {step} needs device_memory={needed} (bytes) at least",
                r.label
            )));
        }
    }
    Ok(serde_json::to_string(&rowstage::bench::simulate::replayed(&rows)).expect("rows serialise"))
}

/// Integer ids numbered in order of first appearance (as the file loader
/// numbers a file's): the distinct ids in that order, and each id's number.
/// One hash map pass, where sorting (`numpy.unique`) took longer than
/// reading the same ratings from a file.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn number_ints<'py>(
    py: Python<'py>,
    ids: PyReadonlyArray1<'py, i64>,
) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<u32>>)> {
    // With the GIL held: the array is the caller's, which another Python
    // thread could write meanwhile (one pass over it is quick).
    let ids = ids.as_slice()?;
    let (distinct, codes) = {
        let mut seen: std::collections::HashMap<i64, u32> = std::collections::HashMap::with_capacity(1024);
        let mut distinct = Vec::new();
        let codes: Vec<u32> = ids
            .iter()
            .map(|&id| {
                *seen.entry(id).or_insert_with(|| {
                    distinct.push(id);
                    distinct.len() as u32 - 1
                })
            })
            .collect();
        (distinct, codes)
    };
    if distinct.len() > u32::MAX as usize {
        return Err(PyValueError::new_err("more than 2^32 distinct ids"));
    }
    Ok((distinct.into_pyarray(py), codes.into_pyarray(py)))
}

/// The library's version and the wgpu it was built with.
#[pyfunction]
fn versions() -> (String, String) {
    (rowstage::VERSION.to_string(), rowstage::gpu::WGPU_VERSION.to_string())
}

#[pymodule]
fn _rowstage(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Trainer>()?;
    m.add_class::<Fitted>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(read_ratings, m)?)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_function(wrap_pyfunction!(versions, m)?)?;
    m.add_function(wrap_pyfunction!(number_ints, m)?)?;
    Ok(())
}
