//! The browser's front end over the library's one entry
//! ([`rowstage::session::Run`]): the page hands over its URL query's pairs
//! (under `rowstage train`'s flag names) and the bytes of the files they
//! name, then steps the run an epoch at a time between frames, so that the
//! page stays live and Stop is heard.

use std::path::{Path, PathBuf};

use rowstage::data::parse_ratings;
use rowstage::session::{Finished, Run, RunOptions, Stage, query};
use wasm_bindgen::prelude::*;

/// An error as the page shows it: the library's message, its parameter
/// names as the query spells them (`device_memory` → `device-memory`).
fn shown(e: rowstage::Error) -> JsError {
    JsError::new(&rowstage::error::spell_params(&e.to_string(), ""))
}

/// The browser's WebGPU adapter as JSON (`rowstage devices`' fields, and
/// `fallback`: a software adapter such as SwiftShader), or `null` where the
/// browser offers none.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub async fn webgpu_adapter() -> String {
    match rowstage::gpu::browser_adapter().await {
        Some(a) => {
            let mut j = serde_json::to_value(&a).expect("an adapter summary serialises");
            j["fallback"] = a.is_software().into();
            j.to_string()
        }
        None => "null".into(),
    }
}

/// One run of the page.
#[wasm_bindgen]
pub struct WebRun {
    run: Option<Run>,
    finished: Option<Finished>,
}

#[wasm_bindgen]
impl WebRun {
    /// `pairs`: a JSON array of `[name, value]`; `data` and `test`: the
    /// bytes of the files the `data` and `test` pairs name, fetched.
    #[wasm_bindgen(constructor)]
    pub fn new(pairs: &str, data: Option<Vec<u8>>, test: Option<Vec<u8>>) -> Result<WebRun, JsError> {
        let pairs: Vec<(String, String)> = serde_json::from_str(pairs)?;
        let request = query::request_from_pairs(&pairs).map_err(shown)?;
        let (data_path, options) = (request.source.path.clone(), request.source.options);
        let files: Vec<(Option<PathBuf>, Option<Vec<u8>>)> = vec![(data_path, data), (request.source.test.clone(), test)];
        let mut read = |p: &Path| {
            let bytes = files.iter().find(|(name, _)| name.as_deref() == Some(p)).and_then(|(_, b)| b.as_deref());
            let bytes = bytes.ok_or_else(|| rowstage::Error::arg("`data`", p.display().to_string(), "was not fetched"))?;
            parse_ratings(p, bytes, options)
        };
        let run = Run::from_request_with(request, RunOptions::default(), &mut read).map_err(shown)?;
        Ok(WebRun { run: Some(run), finished: None })
    }

    /// What the run says before its first epoch: the data, the order, what
    /// it chooses; one line each.
    pub fn notes(&self) -> String {
        self.run.as_ref().map_or(String::new(), |r| r.notes().join("\n"))
    }

    /// The next epoch: `{"stage": "choosing"|"training", "epoch": {…}}` in
    /// `train --json`'s epoch schema, or `undefined` once the run is over.
    pub fn step(&mut self) -> Result<Option<String>, JsError> {
        let Some(run) = self.run.as_mut() else { return Ok(None) };
        Ok(run.step().map_err(shown)?.map(|(stage, e)| {
            let stage = if stage == Stage::Choosing { "choosing" } else { "training" };
            serde_json::json!({ "stage": stage, "epoch": e }).to_string()
        }))
    }

    /// Stops the run at the next epoch's start; `finish` then reports it
    /// with `"complete": false`.
    pub fn stop(&self) {
        if let Some(r) = &self.run {
            r.cancel_token().cancel();
        }
    }

    /// Ends the run: its report in `train --json`'s schema.
    pub fn finish(&mut self) -> Result<String, JsError> {
        if let Some(run) = self.run.take() {
            self.finished = Some(run.finish().map_err(shown)?);
        }
        let f = self.finished.as_ref().ok_or_else(|| JsError::new("the run has not finished"))?;
        Ok(serde_json::to_string(&f.report)?)
    }

    /// The model after `finish`, as the safetensors file `train --save`
    /// writes (what `rowstage eval` and `recommend` read).
    pub fn model(&self) -> Result<Vec<u8>, JsError> {
        let f = self.finished.as_ref().ok_or_else(|| JsError::new("the run has not finished"))?;
        f.model_bytes(Path::new("model.safetensors")).map_err(shown)
    }
}
