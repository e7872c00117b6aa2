// The page: reads its settings from the URL query (rowstage train's flag
// names), runs the library in wasm an epoch at a time, and publishes the
// outcome where scripts can read it (document.title, window.rowstageReport,
// window.rowstageComparison).
import init, { WebBench, WebRun, last_panic, open_webgpu, policies } from "./pkg/rowstage_web.js";
import { jspi } from "./jspi.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
// Names the page itself reads; the rest go to the library as they are.
// `compare=policies` or `compare=budgets` runs the lesson instead of one
// training; `bench=1` benchmarks the device.
const PAGE = new Set(["autorun", "post", "compare", "bench"]);
let current = null;
let busy = false;

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

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let k = 0;
  while (n >= 1024 && k < units.length - 1) (n /= 1024), k++;
  return `${k ? n.toFixed(2) : n} ${units[k]}`;
}

const percent = (x) => (x == null ? "–" : `${(100 * x).toFixed(1)}%`);

function tableRow(table, cells) {
  const tr = document.createElement("tr");
  for (const v of cells) {
    const td = document.createElement("td");
    td.textContent = v;
    tr.append(td);
  }
  $(table).tBodies[0].append(tr);
  // Keep the newest row in view in a scrolling box.
  const box = $(table).parentElement;
  if (box.classList.contains("scroll")) box.scrollTop = box.scrollHeight;
}

function epochRow(stage, e) {
  // JSON has no NaN: a loss gone non-finite arrives as null (the run then
  // fails with `train`'s error).
  const diverged = e.train_rmse == null;
  const rmse = (x) => (x == null ? (diverged ? "not finite" : "no test ratings") : x.toFixed(4));
  // A clock that did not move (Chromium's virtual time, a coarse timer on a
  // short epoch) gives no speed: show none rather than a huge one.
  const timed = e.seconds > 0;
  const speed = timed ? e.ratings_per_sec.toExponential(3) : "not timed";
  const device = e.device_seconds == null ? "–" : e.device_seconds.toFixed(3);
  tableRow("epochs", [
    stage, e.epoch, rmse(e.train_rmse), rmse(e.test_rmse), speed, e.seconds.toFixed(3),
    `${e.host_seconds.toFixed(3)} / ${device}`, e.bound ?? "–",
    e.rows_in, e.rows_out, bytes(e.bytes_h2d), bytes(e.bytes_d2h), percent(e.hit_rate),
    e.predicted_rows_in == null ? "–" : Math.round(e.predicted_rows_in),
  ]);
}

// The slab as cells: the hue says the area, the lightness how many rows the
// slot has received, a dot a hot row.
function drawSlab(p) {
  $("slab").hidden = false;
  const canvas = $("slab-canvas"), ctx = canvas.getContext("2d");
  const n = p.rows.length;
  const cols = Math.max(1, Math.ceil(Math.sqrt((n * canvas.width) / canvas.height)));
  const size = Math.max(1, Math.floor(canvas.width / cols));
  canvas.height = Math.max(size, Math.ceil(n / cols) * size);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const ends = [p.resident, p.resident + p.cache, p.resident + p.cache + p.staging];
  const hues = [215, 140, 30, 280];
  const most = Math.max(1, ...p.loads);
  let hotHeld = 0;
  for (let s = 0; s < n; s++) {
    const x = (s % cols) * size, y = Math.floor(s / cols) * size;
    if (p.rows[s] == null) {
      ctx.fillStyle = "#eee";
    } else {
      const area = ends.findIndex((e) => s < e);
      const light = 30 + 50 * (Math.log1p(p.loads[s]) / Math.log1p(most));
      ctx.fillStyle = `hsl(${hues[area < 0 ? 3 : area]}, 60%, ${light}%)`;
    }
    ctx.fillRect(x, y, Math.max(1, size - 1), Math.max(1, size - 1));
    if (p.rows[s] != null && p.lookups[s] >= p.hot_lookups) {
      hotHeld++;
      if (size >= 4) {
        ctx.fillStyle = "#000";
        ctx.fillRect(x + size / 2 - 1, y + size / 2 - 1, 2, 2);
      }
    }
  }
  const loads = [...p.loads].sort((a, b) => a - b);
  $("slab-summary").textContent =
    `${n} slots: ${p.resident} resident, ${p.cache} cache, ${p.staging} staging` +
    (p.block ? `, ${p.block} block` : "") +
    `; ${p.rows.filter((r) => r != null).length} hold a row, ${hotHeld} of them hot (≥ ${p.hot_lookups} lookups an epoch). ` +
    `Rows received per slot so far: median ${loads[loads.length >> 1]}, most ${loads[loads.length - 1]}.`;
}

// The backend a run asks for, as the page can give it: WebGPU where the
// browser has it (and can wait for it: see jspi.js), else the CPU backend,
// compiled to wasm (one thread), which trains the same model.
function chooseBackend(pairs, notes) {
  const asked = (pairs.find(([k]) => k === "backend") || [, "auto"])[1];
  let backend = asked;
  if (asked === "auto" || asked === "webgpu") {
    const why = !window.rowstageAdapter
      ? (webgpuError ? `WebGPU failed to open (${webgpuError})` : "this browser offers no WebGPU adapter")
      : !jspi ? "this browser cannot wait for WebGPU from WebAssembly (no JavaScript Promise Integration)" : null;
    backend = why ? "cpu" : "webgpu";
    if (why) notes.push(`${why}: the CPU backend (wasm, one thread) trains the same model`);
  }
  return pairs.filter(([k]) => k !== "backend").concat([["backend", backend]]);
}

// The files the pairs name (fetched same-origin) or the one picked.
async function files(pairs, file) {
  if (file) {
    const data = new Uint8Array(await file.arrayBuffer());
    pairs = pairs.filter(([k]) => k !== "data" && k !== "synthetic").concat([["data", file.name]]);
    return { pairs, data, test: null };
  }
  const d = pairs.find(([k]) => k === "data"), t = pairs.find(([k]) => k === "test");
  return { pairs, data: d ? await fetchBytes(d[1]) : null, test: t ? await fetchBytes(t[1]) : null };
}

function clear() {
  $("epochs").tBodies[0].replaceChildren();
  // The epochs' box is a training run's; the lesson and the benchmark hide it.
  $("epochs").parentElement.hidden = false;
  $("compared").tBodies[0].replaceChildren();
  $("benched").tBodies[0].replaceChildren();
  $("bench-section").hidden = true;
  $("final").textContent = $("notes").textContent = $("downloads").textContent = "";
  $("final").className = "";
  $("slab").hidden = $("comparison").hidden = true;
  window.rowstageReport = window.rowstageComparison = window.rowstageSlab = window.rowstageBench = undefined;
}

// One run from name-value pairs; `file` is a File the user picked.
async function train(pairs, file) {
  const notes = [];
  pairs = chooseBackend(pairs, notes);
  const onGpu = pairs.some(([k, v]) => k === "backend" && v === "webgpu");
  const f = await files(pairs, file);
  window.rowstageTimings = { run_start_ms: performance.now() };
  const run = new WebRun(JSON.stringify(f.pairs), f.data, f.test);
  // Work that may wait for the device runs suspendable (src/gpu/browser.rs).
  const call = async (begin) => {
    begin();
    if (onGpu) await deviceCallSuspending();
    else deviceCall();
    return run.outcome();
  };
  current = run;
  $("stop").disabled = false;
  let report, slab, choseShown = false;
  try {
    await call(() => run.begin_open());
    $("notes").textContent = notes.concat(run.notes().split("\n").filter((l) => l)).join("\n");
    for (;;) {
      const step = await call(() => run.begin_step());
      if (step === undefined) break;
      const { stage, epoch } = JSON.parse(step);
      // Milliseconds since the page began to load (performance.now()'s origin).
      window.rowstageTimings.first_epoch_ms ??= performance.now();
      epochRow(stage, epoch);
      // Once chosen, what was chosen (as `rowstage train` prints it).
      const chose = stage === "training" && !choseShown ? run.choice() : undefined;
      if (chose) {
        $("notes").textContent += `\n${chose}`;
        choseShown = true;
      }
      slab = run.slab_picture();
      if (slab) drawSlab((window.rowstageSlab = JSON.parse(slab)));
      // Let the page draw and hear Stop between epochs.
      await new Promise((r) => setTimeout(r, 0));
    }
    report = JSON.parse(await call(() => run.begin_finish()));
  } finally {
    $("stop").disabled = true;
    current = null;
  }
  // A stopped run keeps no model, as `rowstage train --save` keeps none.
  const model = report.complete ? run.model() : undefined;
  window.rowstageReport = report;
  const fin = report.final;
  $("final").textContent = (report.complete ? "" : "stopped: ") +
    (fin.test_rmse == null ? "no test ratings to score" : `test RMSE ${fin.test_rmse.toFixed(4)}  MAE ${fin.test_mae.toFixed(4)}`) +
    (report.epochs.every((e) => e.seconds > 0) ? `  ${fin.ratings_per_sec.toExponential(3)} ratings/s` : "") +
    ` on ${report.config.backend === "webgpu" ? `WebGPU (${report.config.adapter})` : "the CPU (wasm, one thread)"}`;
  download("report.json", JSON.stringify(report, null, 2), "application/json");
  if (model) download("model.safetensors", model, "application/octet-stream");
  // The slab after the last epoch (where the backend has one), posted first.
  return { ...(slab ? { slab } : {}), notes: $("notes").textContent, report: JSON.stringify(report), ...(model ? { model } : {}) };
}

// Seconds as a person reads them: 27.5 µs, 2.56 ms, 1.20 s.
function seconds(x) {
  if (x < 1e-3) return `${(x * 1e6).toPrecision(3)} µs`;
  if (x < 1) return `${(x * 1e3).toPrecision(3)} ms`;
  return `${x.toPrecision(3)} s`;
}

// Horizontal bars, one per label, scaled to the largest value; `mark`, where
// given, draws a second value as a line across its bar (Belady's floor).
function bars(title, rows, value, shown, mark) {
  const box = document.createElement("figure");
  box.className = "bars";
  box.append(Object.assign(document.createElement("figcaption"), { textContent: title }));
  const top = Math.max(...rows.map((r) => Math.max(value(r) ?? 0, mark?.(r) ?? 0)), 1e-30);
  for (const r of rows) {
    const line = document.createElement("div");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * (value(r) ?? 0)) / top}%`;
    const track = document.createElement("span");
    track.className = "track";
    track.append(bar);
    const floor = mark?.(r);
    if (floor != null) {
      const m = document.createElement("span");
      m.className = "floor";
      m.style.left = `${(100 * floor) / top}%`;
      m.title = `Belady's floor: ${Math.round(floor)}`;
      track.append(m);
    }
    line.append(Object.assign(document.createElement("span"), { className: "label", textContent: `${r.budget} ${r.policy}` }),
      track, Object.assign(document.createElement("span"), { className: "value", textContent: shown(r) }));
    box.append(line);
  }
  return box;
}

// A sweep of training runs (WebBench), queued by `begin`, carried out on
// `backend`, what it is doing shown as it goes; returns its outcome parsed.
async function sweep(backend, begin) {
  const bench = new WebBench();
  current = bench;
  $("stop").disabled = false;
  const shown = setInterval(() => ($("final").textContent = bench.doing()), 250);
  try {
    begin(bench);
    if (backend === "webgpu") await deviceCallSuspending();
    else deviceCall();
    return JSON.parse(bench.outcome());
  } finally {
    clearInterval(shown);
    $("stop").disabled = true;
    current = null;
  }
}

// The memory-limit lesson: every policy at the slider's budget, or the
// chosen policy at 100, 25, 5 and 1%; each configuration really trains, its
// counts from its own byte ledger (rowstage::bench::lesson).
async function lesson(pairs, file, kind) {
  $("epochs").parentElement.hidden = true;
  const notes = [];
  pairs = chooseBackend(pairs, notes);
  const backend = pairs.find(([k]) => k === "backend")[1];
  const f = await files(pairs, file);
  $("notes").textContent = notes.concat([
    kind === "policies"
      ? "every policy trained at this device memory (one warm-up epoch, then one timed), beside the offline optimum"
      : "this policy trained at 100%, 25%, 5% and 1% of the tables (one warm-up epoch, then one timed), beside the offline optimum",
  ]).join("\n");
  const out = await sweep(backend, (bench) =>
    bench.begin_lesson(JSON.stringify(f.pairs), kind, f.data, f.test, navigator.userAgent));
  window.rowstageComparison = out;
  const { report, profiles, projected_staging_seconds: projected } = out;
  const hp = report.plan?.settings?.hp;
  if (hp) {
    $("notes").textContent += `\nlr ${hp.lr}, reg ${hp.reg}: as given, else fixed defaults; the lesson compares where rows ` +
      "live, not settings, so it chooses none on the data";
  }
  $("comparison").hidden = false;
  $("comparison-title").textContent = kind === "policies" ? "Policies compared" : "Budgets compared";
  const head = $("compared").tHead.rows[0];
  while (head.cells.length > 11) head.deleteCell(-1);
  for (const p of profiles) {
    const th = document.createElement("th");
    th.textContent = `on ${p.name} (projected)`;
    th.title = `${p.source}. A projection: the run's bytes over the link plus its steps times the step latency, a lower bound of staging seconds per epoch.`;
    head.append(th);
  }
  report.rows.forEach((r, k) => {
    tableRow("compared", [
      r.budget, r.policy, Math.round(r.workers), Math.round(r.rows_in_per_epoch),
      r.belady_rows_in_per_epoch == null ? "–" : Math.round(r.belady_rows_in_per_epoch),
      bytes(r.bytes_h2d_per_epoch), percent(r.hit_rate), r.median_ratings_per_sec.toExponential(3),
      r.vs_resident == null ? "–" : `${r.vs_resident.toFixed(2)}×`,
      r.test_rmse == null ? "–" : r.test_rmse.toFixed(4), r.bound ?? "no timestamps",
      ...projected[k].map(seconds),
    ]);
  });
  for (const k of report.skipped) tableRow("compared", [k.budget, k.policy, `skipped: ${k.reason}`]);
  const charts = $("lesson-charts");
  charts.replaceChildren(
    bars("rows in per epoch (the line: Belady's floor)", report.rows, (r) => r.rows_in_per_epoch,
      (r) => String(Math.round(r.rows_in_per_epoch)), (r) => r.belady_rows_in_per_epoch),
    bars("ratings/s (measured on this adapter)", report.rows, (r) => r.median_ratings_per_sec,
      (r) => r.median_ratings_per_sec.toExponential(2)),
    bars("hit rate", report.rows, (r) => r.hit_rate, (r) => percent(r.hit_rate)),
    bars(`staging seconds per epoch on ${profiles[0].name} (projected)`, report.rows.map((r, k) => ({ ...r, s: projected[k][0] })),
      (r) => r.s, (r) => seconds(r.s)),
  );
  $("lesson").replaceChildren(...out.explanation.map((line) => Object.assign(document.createElement("li"), { textContent: line })));
  $("final").textContent = report.complete ? "lesson done" : "lesson stopped";
  const json = JSON.stringify(out, null, 2);
  download("lesson.json", json, "application/json");
  return { comparison: json };
}

// "Benchmark this device": `rowstage bench --preset web`'s sweep, on the
// backend the form asks for (as the page can give it).
async function benchmark(pairs) {
  $("epochs").parentElement.hidden = true;
  const notes = [];
  const backend = chooseBackend(pairs, notes).find(([k]) => k === "backend")[1];
  $("notes").textContent = notes.concat([
    `benchmarking ${backend === "webgpu" ? `WebGPU (${window.rowstageAdapter.name})` : "the CPU (wasm, one thread)"} ` +
      "on rowstage bench --preset web's sweep: its data, settings and budgets are fixed, so the figures compare with " +
      "any device's",
  ]).join("\n");
  const report = await sweep(backend, (bench) => bench.begin(backend, navigator.userAgent));
  window.rowstageBench = report;
  $("bench-section").hidden = false;
  for (const r of report.rows) {
    tableRow("benched", [
      r.backend, r.budget, r.policy, r.median_ratings_per_sec.toExponential(3),
      r.vs_resident == null ? "–" : `${r.vs_resident.toFixed(2)}×`, Math.round(r.rows_in_per_epoch),
      percent(r.hit_rate), r.test_rmse == null ? "–" : r.test_rmse.toFixed(4), r.bound ?? "–",
    ]);
  }
  for (const k of report.skipped) tableRow("benched", [k.backend, k.budget, k.policy, `skipped: ${k.reason}`]);
  $("final").textContent = report.complete ? "benchmark done" : "benchmark stopped";
  const json = JSON.stringify(report, null, 2);
  download("bench.json", json, "application/json");
  return { bench: json };
}

// Runs `work`, then posts what it returns (part name → body) to the `post`
// URL, for scripts and tests, and sets the title they wait for.
async function start(work) {
  // One thing at a time: a run's device waits suspend the library, and a
  // second run interleaved with it would corrupt it (web/src/lib.rs).
  if (busy) return;
  busy = true;
  for (const id of ["run", "compare", "compare-budgets", "bench"]) $(id).disabled = true;
  try {
    await startOne(work);
  } finally {
    busy = false;
    // After a trap the library's memory is not to be trusted: no more runs.
    for (const id of ["run", "compare", "compare-budgets", "bench"]) $(id).disabled = trapped;
  }
}

// Whether the WebAssembly trapped (a panic): the page must be reloaded.
let trapped = false;

async function startOne(work) {
  clear();
  document.title = "rowstage: running";
  const post = query.get("post");
  const send = (part, body) => fetch(`${post}?part=${part}`, { method: "POST", body });
  try {
    const parts = await work();
    if (post) {
      window.rowstageTimings = { ...window.rowstageTimings, done_ms: performance.now() };
      await send("timings", JSON.stringify(window.rowstageTimings));
      await send("adapter", JSON.stringify(window.rowstageAdapter));
      // The parts the test waits for last.
      for (const [part, body] of Object.entries(parts)) await send(part, body);
    }
    const ended = window.rowstageReport || window.rowstageBench || window.rowstageComparison?.report;
    const stopped = ended && ended.complete === false;
    document.title = stopped ? "rowstage: stopped" : "rowstage: done";
  } catch (e) {
    let message = e && e.message ? e.message : String(e);
    // A trap in the library: its panic says what happened.
    if (e instanceof WebAssembly.RuntimeError) {
      trapped = true;
      message = `${message}: ${last_panic() ?? "no panic message"} (a bug in rowstage; reload the page to run again)`;
    }
    $("final").textContent = "error: " + message;
    $("final").className = "error";
    document.title = "rowstage: failed: " + message;
    if (post) await send("error", message);
  }
}

const wasm = await init();
const deviceCall = wasm.rowstage_device_call;
const deviceCallSuspending = jspi ? WebAssembly.promising(wasm.rowstage_device_call) : null;
// The adapter, as wgpu finds it through the browser (null: no WebGPU), with
// its device opened once for every run of the page. The browser gives wgpu
// no name for it; GPUAdapterInfo has a vendor and an architecture.
let webgpuError = null;
try {
  let name = "WebGPU adapter";
  if (navigator.gpu) {
    const info = (await navigator.gpu.requestAdapter())?.info;
    if (info) name = [info.vendor, info.architecture, info.description].filter((s) => s).join(" ") || name;
  }
  window.rowstageAdapter = navigator.gpu ? JSON.parse(await open_webgpu(name)) : null;
} catch (e) {
  window.rowstageAdapter = null;
  webgpuError = e && e.message ? e.message : String(e);
}
{
  const a = window.rowstageAdapter;
  $("device").textContent = a
    ? `WebGPU adapter: ${a.name}${a.fallback ? ", a fallback (software) adapter" : ""}; ` +
      `largest storage binding ${(a.max_storage_buffer_binding_size / 2 ** 20).toFixed(0)} MiB.` +
      (jspi ? "" : " This browser cannot wait for it from WebAssembly (no JavaScript Promise Integration): the CPU backend trains.")
    : `WebGPU: ${webgpuError ? `failed to open (${webgpuError})` : "this browser offers no adapter"}; the CPU backend trains.`;
}
for (const p of JSON.parse(policies())) {
  const o = new Option(p.name, p.name, p.name === "sca", p.name === "sca");
  o.title = p.about;
  $("policy").append(o);
}

// The device-memory slider: a share of the tables, or auto.
function showShare() {
  const auto = $("share-auto").checked;
  $("share").disabled = auto;
  const value = auto ? "auto" : `${$("share").value}%`;
  document.querySelector('#settings [name="device-memory"]').value = value;
  $("share-shown").textContent = auto ? "auto" : `${$("share").value}% of the tables`;
}
for (const [k, v] of query) {
  if (k === "device-memory") {
    const share = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(v);
    $("share-auto").checked = !share;
    if (share) $("share").value = share[1];
  }
  const input = document.querySelector(`#settings [name="${k}"]`);
  if (input) input.value = v;
}
$("share").addEventListener("input", showShare);
$("share-auto").addEventListener("change", showShare);
if (query.has("device-memory") && $("share-auto").checked) {
  // A size such as 64KiB: kept as given, shown as it is.
  $("share-shown").textContent = query.get("device-memory");
} else {
  showShare();
}

function formPairs() {
  const form = new FormData($("settings"));
  const pairs = [...form].filter(([, v]) => v !== "" && typeof v === "string");
  // Settings of the query that the form has no field for still apply.
  for (const p of pairsFrom(query)) if (!form.has(p[0])) pairs.push(p);
  return pairs;
}
$("settings").addEventListener("submit", (ev) => {
  ev.preventDefault();
  start(() => train(formPairs(), $("file").files[0]));
});
$("compare").addEventListener("click", () => start(() => lesson(formPairs(), $("file").files[0], "policies")));
$("compare-budgets").addEventListener("click", () => start(() => lesson(formPairs(), $("file").files[0], "budgets")));
$("bench").addEventListener("click", () => start(() => benchmark(formPairs())));
$("stop").addEventListener("click", () => current && current.stop());
if (query.get("autorun") === "1") {
  const kind = query.get("compare");
  start(() =>
    query.get("bench") === "1" ? benchmark(pairsFrom(query))
      : kind ? lesson(pairsFrom(query), null, kind)
      : train(pairsFrom(query), null));
}
