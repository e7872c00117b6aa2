//! The browser's front end over the library's one entry
//! ([`rowstage::session::Run`]): the page hands over its URL query's pairs
//! (under `rowstage train`'s flag names) and the bytes of the files they
//! name, then steps the run an epoch at a time between frames, so that the
//! page stays live and Stop is heard.
//!
//! Work that may wait for the device (opening a run, which may calibrate;
//! an epoch; finishing) is queued by a `begin_*` method and carried out by
//! [`rowstage_device_call`], which the page calls through
//! `WebAssembly.promising`: the library's waits then suspend this call and
//! hand the browser its event loop (see `rowstage::gpu::browser`). On the
//! CPU backend nothing waits, and the page calls it directly.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rowstage::data::parse_ratings;
use rowstage::session::{Finished, Run, RunOptions, query};
use rowstage::train::CancelToken;
use wasm_bindgen::prelude::*;

/// An error as the page shows it: the library's message, its parameter
/// names as the query spells them (`device_memory` → `device-memory`).
fn shown(e: rowstage::Error) -> String {
    rowstage::error::spell_params(&e.to_string(), "")
}

/// Opens the browser's WebGPU device for the runs that ask for `webgpu`:
/// its adapter as JSON (`rowstage devices`' fields, and `fallback`: a
/// software adapter such as SwiftShader), or `null` where the browser
/// offers none. `name` names an adapter the browser gives wgpu no name
/// for. An adapter whose device cannot be opened is an error.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub async fn open_webgpu(name: String) -> Result<String, JsError> {
    if rowstage::gpu::browser_adapter().await.is_none() {
        return Ok("null".into());
    }
    let a = rowstage::gpu::open_browser_device(&name).await.map_err(|e| JsError::new(&shown(e)))?;
    let mut j = serde_json::to_value(&a)?;
    j["fallback"] = a.is_software().into();
    Ok(j.to_string())
}

/// The staging policies, as `[{"name", "about"}]` (`--policy`'s values).
#[wasm_bindgen]
pub fn policies() -> String {
    use rowstage::Named;
    let all: Vec<_> = rowstage::stage::PolicyKind::ALL
        .iter()
        .map(|&p| serde_json::json!({ "name": Named::name(p), "about": p.about() }))
        .collect();
    serde_json::Value::from(all).to_string()
}

/// Files a front end fetched, by the name its `data` or `test` pair gives.
type Files = Vec<(Option<PathBuf>, Option<Vec<u8>>)>;

/// Reads a request's files from `files` (parsed as `rowstage train` reads
/// them from disk).
fn reader(
    files: &Files,
    options: rowstage::data::LoadOptions,
) -> impl FnMut(&Path) -> rowstage::Result<(rowstage::data::RatingSet, rowstage::data::LoadReport)> + '_ {
    move |p: &Path| {
        let bytes = files.iter().find(|(name, _)| name.as_deref() == Some(p)).and_then(|(_, b)| b.as_deref());
        let bytes = bytes.ok_or_else(|| rowstage::Error::arg("`data`", p.display().to_string(), "was not fetched"))?;
        parse_ratings(p, bytes, options)
    }
}

thread_local! {
    /// The message of the last panic (the page shows it for the trap that
    /// follows, which says only "unreachable").
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether a device call is under way (perhaps suspended).
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The work [`rowstage_device_call`] carries out next, and where its
    /// outcome goes.
    static QUEUED: RefCell<Option<(Outcome, Work)>> = const { RefCell::new(None) };
}

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| LAST_PANIC.set(Some(info.to_string()))));
}

/// The last panic's message, if any (a bug: the run cannot go on).
#[wasm_bindgen]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.with_borrow_mut(Option::take)
}

/// Carries out the work a `begin_*` method queued. A raw export (not
/// wasm-bindgen's), so that the page can wrap it in `WebAssembly.promising`.
///
/// One at a time: a call suspended in a wait keeps its frames on the one
/// shadow stack in linear memory, and a second call interleaved with it
/// would write over them. The page runs one thing at a time; a second call
/// while one is under way is refused (its work's outcome says so).
#[unsafe(no_mangle)]
pub extern "C" fn rowstage_device_call() {
    let Some((outcome, work)) = QUEUED.with_borrow_mut(Option::take) else { return };
    if IN_CALL.replace(true) {
        *outcome.borrow_mut() = Some(Err("another run is under way on this page: stop it first".into()));
        return;
    }
    let result = work();
    *outcome.borrow_mut() = Some(result);
    IN_CALL.set(false);
}

/// A device call's outcome: its JSON (or nothing), or an error; `None`
/// until the call has completed.
type Outcome = Rc<RefCell<Option<Result<Option<String>, String>>>>;

/// What a device call carries out.
type Work = Box<dyn FnOnce() -> Result<Option<String>, String>>;

/// Takes `outcome` as the page receives it (an error is thrown).
fn take(outcome: &Outcome) -> Result<Option<String>, JsError> {
    let o = outcome.borrow_mut().take();
    // No outcome: the call never returned (the WebAssembly trapped).
    o.unwrap_or_else(|| Err("the device call did not complete: reload the page".into())).map_err(|e| JsError::new(&e))
}

/// What the page's run holds. A device call borrows it for its length,
/// suspended waits included, so the calls made between (the slab's picture,
/// the notes, the model) try to borrow it and do without when it is busy.
#[derive(Default)]
struct State {
    run: Option<Run>,
    finished: Option<Finished>,
}

/// One run of the page.
#[wasm_bindgen]
pub struct WebRun {
    state: Rc<RefCell<State>>,
    outcome: Outcome,
    /// Held apart from the state, so that Stop is heard while an epoch is
    /// suspended waiting for the device, and made before the run is opened,
    /// so that a Stop while it opens (a calibration) is heard too.
    cancel: CancelToken,
    pairs: Vec<(String, String)>,
    files: Rc<Files>,
}

#[wasm_bindgen]
impl WebRun {
    /// `pairs`: a JSON array of `[name, value]`; `data` and `test`: the
    /// bytes of the files the `data` and `test` pairs name, fetched. The
    /// run is opened by `begin_open` and a device call.
    #[wasm_bindgen(constructor)]
    pub fn new(pairs: &str, data: Option<Vec<u8>>, test: Option<Vec<u8>>) -> Result<WebRun, JsError> {
        let pairs: Vec<(String, String)> = serde_json::from_str(pairs)?;
        let request = query::request_from_pairs(&pairs).map_err(|e| JsError::new(&shown(e)))?;
        let files = vec![(request.source.path.clone(), data), (request.source.test.clone(), test)];
        Ok(WebRun {
            state: Rc::default(),
            outcome: Outcome::default(),
            cancel: CancelToken::new(),
            pairs,
            files: Rc::new(files),
        })
    }

    /// Queues opening the run: reading the data, choosing what the run
    /// chooses before training (a calibration on a GPU).
    pub fn begin_open(&mut self) {
        // A run opened again is stopped by its own token.
        self.cancel = CancelToken::new();
        let (state, pairs, files, cancel) =
            (self.state.clone(), self.pairs.clone(), self.files.clone(), self.cancel.clone());
        queue(&self.outcome, move || {
            let request = query::request_from_pairs(&pairs).map_err(shown)?;
            let mut read = reader(&files, request.source.options);
            let mut run = Run::from_request_with(request, RunOptions::default(), &mut read).map_err(shown)?;
            run.set_cancel_token(cancel);
            state.borrow_mut().run = Some(run);
            Ok(None)
        });
    }

    /// What the run says before its first epoch (once opened): the data,
    /// the order, what it chooses; one line each.
    pub fn notes(&self) -> String {
        let Ok(s) = self.state.try_borrow() else { return String::new() };
        s.run.as_ref().map_or(String::new(), |r| r.notes().join("\n"))
    }

    /// What the run chose on the data, one line (once it has chosen; as
    /// `rowstage train` prints it), or `undefined`.
    pub fn choice(&self) -> Option<String> {
        let s = self.state.try_borrow().ok()?;
        s.run.as_ref()?.choice().map(|c| c.line())
    }

    /// Queues the next epoch; its outcome is `{"stage": "choosing" |
    /// "training", "epoch": {…}}` in `train --json`'s epoch schema, or
    /// `undefined` once the run is over.
    pub fn begin_step(&self) {
        let state = self.state.clone();
        queue(&self.outcome, move || {
            let mut s = state.borrow_mut();
            let Some(run) = s.run.as_mut() else { return Ok(None) };
            Ok(run.step().map_err(shown)?.map(|(stage, e)| {
                // No noop backend in a browser: every epoch's figures are a model's.
                let e = rowstage::report::EpochJson::of(&e, false);
                serde_json::json!({ "stage": stage.name(), "epoch": e }).to_string()
            }))
        });
    }

    /// Queues ending the run; its outcome is the report in `train
    /// --json`'s schema.
    pub fn begin_finish(&self) {
        let state = self.state.clone();
        queue(&self.outcome, move || {
            let mut s = state.borrow_mut();
            if let Some(run) = s.run.take() {
                s.finished = Some(run.finish().map_err(shown)?);
            }
            let f = s.finished.as_ref().ok_or("the run has not finished")?;
            // What `rowstage train` ends with an error, the page does too.
            if let Some(e) = &f.outcome.diverged {
                return Err(rowstage::error::spell_params(&e.to_string(), ""));
            }
            Ok(Some(serde_json::to_string(&f.report).map_err(|e| e.to_string())?))
        });
    }

    /// The outcome of the last device call (an error is thrown).
    pub fn outcome(&self) -> Result<Option<String>, JsError> {
        take(&self.outcome)
    }

    /// The device slab now, slot by slot (`rowstage::stage::SlabPicture`
    /// as JSON), or `undefined` where the backend has none (the CPU) or
    /// while a device call is under way.
    pub fn slab_picture(&self) -> Option<String> {
        let mut s = self.state.try_borrow_mut().ok()?;
        let picture = s.run.as_mut()?.slab_picture()?;
        serde_json::to_string(&picture).ok()
    }

    /// Stops the run at its next batch (heard while an epoch waits for the
    /// device); the run's report then says `"complete": false`.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// The model after `finish`, as the safetensors file `train --save`
    /// writes (what `rowstage eval` and `recommend` read).
    pub fn model(&self) -> Result<Vec<u8>, JsError> {
        let s = self.state.try_borrow().map_err(|_| JsError::new("the run is busy: wait for it to finish"))?;
        let f = s.finished.as_ref().ok_or_else(|| JsError::new("the run has not finished"))?;
        f.model_bytes(Path::new("model.safetensors")).map_err(|e| JsError::new(&shown(e)))
    }
}

/// Queues `work` for the next device call; its outcome lands in `outcome`.
fn queue(outcome: &Outcome, work: impl FnOnce() -> Result<Option<String>, String> + 'static) {
    QUEUED.set(Some((outcome.clone(), Box::new(work))));
}

/// A sweep of really trained configurations: "Benchmark this device" (the
/// sweep `rowstage bench --preset web` runs, on this page's backend), or
/// "Compare policies" and "Compare budgets" (the memory-limit lesson,
/// `rowstage::bench::lesson`, on the page's data and settings).
#[wasm_bindgen]
pub struct WebBench {
    outcome: Outcome,
    stop: Arc<AtomicBool>,
    /// What the sweep is doing, one line (read while it is suspended).
    doing: Rc<RefCell<String>>,
}

impl Default for WebBench {
    fn default() -> Self {
        Self::new()
    }
}

#[wasm_bindgen]
impl WebBench {
    #[wasm_bindgen(constructor)]
    pub fn new() -> WebBench {
        WebBench { outcome: Outcome::default(), stop: Arc::default(), doing: Rc::default() }
    }

    /// Queues the sweep on `backend` (`webgpu` or `cpu`); its outcome is
    /// the report in `rowstage bench --export-json`'s schema, with
    /// `environment.browser` set to `browser`.
    pub fn begin(&self, backend: String, browser: String) {
        let (stop, doing) = (self.stop.clone(), self.doing.clone());
        queue(&self.outcome, move || {
            let preset = rowstage::bench::Preset::named("web").map_err(shown)?;
            let (plan, _) = preset.plan(&backend, None).map_err(shown)?;
            let mut no_file =
                |p: &Path| Err(rowstage::Error::arg("`data`", p.display().to_string(), "was not fetched"));
            let source = preset.source().map_err(shown)?;
            let data = source.load_with(plan.settings.seed, &mut no_file).map_err(shown)?.dataset;
            let info = rowstage::report::DatasetInfo::of(&data, 0);
            let mut progress = Doing(doing);
            let mut report = rowstage::bench::run(&data, info, &plan, &stop, &mut progress).map_err(shown)?;
            report.environment.browser = Some(browser);
            Ok(Some(rowstage::bench::export::json(&report)))
        });
    }

    /// Queues the lesson on the run that `pairs` asks for (with the bytes
    /// of the files it names): `compare` is `policies` (every policy at the
    /// run's device memory, 25% where that is auto) or `budgets` (the run's
    /// policy at 100, 25, 5 and 1%). Its outcome is
    /// `rowstage::bench::lesson::Lesson` as JSON: the report in `rowstage
    /// bench --export-json`'s schema, what it shows, and the projections.
    pub fn begin_lesson(
        &self,
        pairs: String,
        compare: String,
        data: Option<Vec<u8>>,
        test: Option<Vec<u8>>,
        browser: String,
    ) {
        let (stop, doing) = (self.stop.clone(), self.doing.clone());
        queue(&self.outcome, move || {
            use rowstage::Named;
            use rowstage::bench::lesson::{Comparison, Lesson};
            let pairs: Vec<(String, String)> = serde_json::from_str(&pairs).map_err(|e| e.to_string())?;
            let request = query::request_from_pairs(&pairs).map_err(shown)?;
            let backend = request.spec.backend.backend;
            if backend == rowstage::gpu::BackendChoice::Cpu {
                return Err(
                    "the lesson needs WebGPU: the CPU backend keeps the tables in host memory and stages nothing"
                        .into(),
                );
            }
            let comparison = match compare.as_str() {
                "policies" => {
                    let budget = request
                        .spec
                        .backend
                        .device_memory
                        .unwrap_or(rowstage::stage::Budget::Percent(rowstage::train::AUTO_SHARE));
                    Comparison::Policies(budget.to_string(), budget)
                }
                "budgets" => Comparison::Budgets(request.spec.backend.policy),
                other => return Err(format!("compare={other}: expected policies or budgets")),
            };
            let files = vec![(request.source.path.clone(), data), (request.source.test.clone(), test)];
            let loaded = request
                .source
                .load_with(request.spec.seed, &mut reader(&files, request.source.options))
                .map_err(shown)?;
            // The backend is named (webgpu), so there is no `auto` to notice about.
            let (plan, _) = comparison.plan(&request.spec, Named::name(backend)).map_err(shown)?;
            let info = rowstage::report::DatasetInfo::of(&loaded.dataset, loaded.skipped);
            let mut progress = Doing(doing);
            let mut report = rowstage::bench::run(&loaded.dataset, info, &plan, &stop, &mut progress).map_err(shown)?;
            report.environment.browser = Some(browser);
            for k in &mut report.skipped {
                k.reason = rowstage::error::spell_params(&k.reason, "");
            }
            serde_json::to_string(&Lesson::of(report)).map(Some).map_err(|e| e.to_string())
        });
    }

    /// What the sweep is doing now.
    pub fn doing(&self) -> String {
        self.doing.borrow().clone()
    }

    /// The outcome of the sweep's device call (an error is thrown).
    pub fn outcome(&self) -> Result<Option<String>, JsError> {
        take(&self.outcome)
    }

    /// Ends the sweep at the next batch; its report says `"complete": false`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The sweep's progress as one line.
struct Doing(Rc<RefCell<String>>);

impl rowstage::bench::Progress for Doing {
    fn start(&mut self, index: usize, total: usize, label: &str) {
        *self.0.borrow_mut() = format!("configuration {} of {total}: {label}", index + 1);
    }

    fn epoch(&mut self, e: &rowstage::train::EpochReport) {
        let mut line = self.0.borrow_mut();
        let head = line.split(", epoch").next().unwrap_or_default().to_string();
        *line = format!("{head}, epoch {} done", e.epoch);
    }
}
