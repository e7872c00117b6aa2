// The page: reads its settings from the URL query (rowstage train's flag
// names), runs the library in wasm an epoch at a time, and publishes the
// outcome where scripts can read it (document.title, window.rowstageReport).
import init, { WebRun, last_panic, open_webgpu } from "./pkg/rowstage_web.js";
import { jspi } from "./jspi.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
// Names the page itself reads; the rest go to the library as they are.
const PAGE = new Set(["autorun", "post"]);
let current = null;

function pairsFrom(params) {
  return [...params].filter(([k, v]) => !PAGE.has(k) && v !== "");
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

function download(name, bytes, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([bytes], { type }));
  a.download = name;
  a.textContent = name;
  $("downloads").append(a, " ");
}

function row(stage, e) {
  const tr = document.createElement("tr");
  const rmse = (x) => (x == null ? "no test ratings" : x.toFixed(4));
  // A clock that did not move (Chromium's virtual time, a coarse timer on a
  // short epoch) gives no speed: show none rather than a huge one.
  const timed = e.seconds > 0;
  const speed = timed ? e.ratings_per_sec.toExponential(3) : "not timed";
  for (const v of [stage, e.epoch, e.train_rmse.toFixed(4), rmse(e.test_rmse), speed, e.seconds.toFixed(3)]) {
    const td = document.createElement("td");
    td.textContent = v;
    tr.append(td);
  }
  $("epochs").tBodies[0].append(tr);
}

// One run from name-value pairs; `file` is a File the user picked.
async function train(pairs, file) {
  $("epochs").tBodies[0].replaceChildren();
  $("final").textContent = $("notes").textContent = $("downloads").textContent = "";
  $("final").className = "";
  document.title = "rowstage: running";
  let data = null, test = null, notes = [];
  const asked = (pairs.find(([k]) => k === "backend") || [, "auto"])[1];
  let backend = asked;
  if (asked === "auto" || asked === "webgpu") {
    // WebGPU where the browser has it (and can wait for it: see jspi.js);
    // otherwise the CPU backend, compiled to wasm (one thread), trains the
    // same model.
    const why = !window.rowstageAdapter
      ? (webgpuError ? `WebGPU failed to open (${webgpuError})` : "this browser offers no WebGPU adapter")
      : !jspi ? "this browser cannot wait for WebGPU from WebAssembly (no JavaScript Promise Integration)" : null;
    backend = why ? "cpu" : "webgpu";
    if (why) notes.push(`${why}: the CPU backend (wasm, one thread) trains the same model`);
  }
  pairs = pairs.filter(([k]) => k !== "backend").concat([["backend", backend]]);
  const onGpu = backend === "webgpu";
  // Work that may wait for the device runs suspendable (src/gpu/browser.rs).
  const call = async (begin) => {
    begin();
    if (onGpu) await deviceCallSuspending();
    else deviceCall();
    return run.outcome();
  };
  if (file) {
    data = new Uint8Array(await file.arrayBuffer());
    pairs = pairs.filter(([k]) => k !== "data" && k !== "synthetic").concat([["data", file.name]]);
  } else {
    const d = pairs.find(([k]) => k === "data"), t = pairs.find(([k]) => k === "test");
    if (d) data = await fetchBytes(d[1]);
    if (t) test = await fetchBytes(t[1]);
  }
  window.rowstageTimings = { run_start_ms: performance.now() };
  const run = new WebRun(JSON.stringify(pairs), data, test);
  current = run;
  $("stop").disabled = false;
  let report;
  try {
    await call(() => run.begin_open());
    $("notes").textContent = notes.concat(run.notes().split("\n").filter((l) => l)).join("\n");
    for (;;) {
      const step = await call(() => run.begin_step());
      if (step === undefined) break;
      const { stage, epoch } = JSON.parse(step);
      // Milliseconds since the page began to load (performance.now()'s origin).
      window.rowstageTimings.first_epoch_ms ??= performance.now();
      row(stage, epoch);
      // Let the page draw and hear Stop between epochs.
      await new Promise((r) => setTimeout(r, 0));
    }
    report = JSON.parse(await call(() => run.begin_finish()));
  } finally {
    $("stop").disabled = true;
    current = null;
  }
  const model = run.model();
  window.rowstageReport = report;
  const f = report.final;
  $("final").textContent = (report.complete ? "" : "stopped: ") +
    (f.test_rmse == null ? "no test ratings to score" : `test RMSE ${f.test_rmse.toFixed(4)}  MAE ${f.test_mae.toFixed(4)}`) +
    (report.epochs.every((e) => e.seconds > 0) ? `  ${f.ratings_per_sec.toExponential(3)} ratings/s` : "");
  download("report.json", JSON.stringify(report, null, 2), "application/json");
  download("model.safetensors", model, "application/octet-stream");
  return { report, model };
}

async function start(pairs, file) {
  try {
    const { report, model } = await train(pairs, file);
    const post = query.get("post");
    if (post) {
      // For scripts and tests: the adapter, the report and the model, to a
      // same-origin URL.
      window.rowstageTimings.done_ms = performance.now();
      await fetch(post + "?part=timings", { method: "POST", body: JSON.stringify(window.rowstageTimings) });
      await fetch(post + "?part=adapter", { method: "POST", body: JSON.stringify(window.rowstageAdapter) });
      await fetch(post + "?part=report", { method: "POST", body: JSON.stringify(report) });
      await fetch(post + "?part=model", { method: "POST", body: model });
    }
    document.title = report.complete ? "rowstage: done" : "rowstage: stopped";
  } catch (e) {
    let message = e && e.message ? e.message : String(e);
    // A trap in the library: its panic says what happened.
    if (e instanceof WebAssembly.RuntimeError) message = `${message}: ${last_panic() ?? "no panic message"}`;
    $("final").textContent = "error: " + message;
    $("final").className = "error";
    document.title = "rowstage: failed: " + message;
    const post = query.get("post");
    if (post) await fetch(post + "?part=error", { method: "POST", body: message });
  }
}

const wasm = await init();
const deviceCall = wasm.rowstage_device_call;
const deviceCallSuspending = jspi ? WebAssembly.promising(wasm.rowstage_device_call) : null;
// The adapter, as wgpu finds it through the browser (null: no WebGPU), with
// its device opened once for every run of the page.
let webgpuError = null;
try {
  window.rowstageAdapter = navigator.gpu ? JSON.parse(await open_webgpu()) : null;
} catch (e) {
  window.rowstageAdapter = null;
  webgpuError = e && e.message ? e.message : String(e);
}
{
  const a = window.rowstageAdapter;
  $("device").textContent = a
    ? `WebGPU adapter: ${a.name || "(the browser does not name it)"}${a.fallback ? ", a fallback (software) adapter" : ""}; ` +
      `largest storage binding ${(a.max_storage_buffer_binding_size / 2 ** 20).toFixed(0)} MiB.` +
      (jspi ? "" : " This browser cannot wait for it from WebAssembly (no JavaScript Promise Integration): the CPU backend trains.")
    : `WebGPU: ${webgpuError ? `failed to open (${webgpuError})` : "this browser offers no adapter"}; the CPU backend trains.`;
}
for (const [k, v] of query) {
  const input = document.querySelector(`#settings [name="${k}"]`);
  if (input) input.value = v;
}
$("settings").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = new FormData($("settings"));
  const pairs = [...form].filter(([, v]) => v !== "" && typeof v === "string");
  // Settings of the query that the form has no field for still apply.
  for (const p of pairsFrom(query)) if (!form.has(p[0])) pairs.push(p);
  start(pairs, $("file").files[0]);
});
$("stop").addEventListener("click", () => current && current.stop());
if (query.get("autorun") === "1") start(pairsFrom(query), null);
