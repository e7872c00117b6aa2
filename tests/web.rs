//! The browser page (`scripts/web.sh build` writes it to web/dist/) in
//! headless Chromium, served same-origin by a small server of this test's
//! own: the page trains from its URL query, posts its report and model back
//! (`post=`), and they must equal what `rowstage train` makes of the same
//! flags natively, bit for bit (docs/ARCHITECTURE.md, "The browser page").
//!
//! Needs web/dist/ and a Chromium; without either each test says so on
//! stdout and passes, unless `ROWSTAGE_REQUIRE_WEB=1` (CI) makes that a
//! failure.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The page and a Chromium, or why this test cannot run.
fn page_and_browser(test: &str) -> Option<PathBuf> {
    let why = if !root().join("web/dist/index.html").is_file() {
        "web/dist/ is not built (scripts/web.sh build)".to_string()
    } else {
        match ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|b| which(b)) {
            Some(b) => return Some(b),
            None => "no Chromium on PATH (Debian: apt-get install chromium)".to_string(),
        }
    };
    if std::env::var("ROWSTAGE_REQUIRE_WEB").as_deref() == Ok("1") {
        panic!("{test}: ROWSTAGE_REQUIRE_WEB=1 but {why}");
    }
    println!("{test}: skipped: {why}");
    None
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// What the page posted back: `report`, `model` or `error`.
type Posted = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// Serves web/dist/ and `extra` (URL path → file) on 127.0.0.1, and keeps
/// what is posted to /results?part=NAME.
fn serve(extra: Vec<(String, PathBuf)>) -> (String, Posted) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let posted: Posted = Arc::default();
    let keep = posted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (keep, extra) = (keep.clone(), extra.clone());
            std::thread::spawn(move || {
                let _ = answer(stream, &extra, &keep);
            });
        }
    });
    (origin, posted)
}

/// Reads an HTTP message's header lines; its Content-Length (0 if none).
fn content_length(reader: &mut impl BufRead) -> std::io::Result<usize> {
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim().is_empty() {
            return Ok(length);
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
}

fn answer(mut stream: TcpStream, extra: &[(String, PathBuf)], posted: &Posted) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/").to_string());
    let length = content_length(&mut reader)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let reply = |stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body))
    };
    if method == "POST" {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let part = query.strip_prefix("part=").unwrap_or("unnamed").to_string();
        posted.lock().unwrap().insert(part, body);
        return reply(&mut stream, "200 OK", "text/plain", b"kept");
    }
    let file = match extra.iter().find(|(p, _)| p == path) {
        Some((_, f)) => f.clone(),
        None => root().join("web/dist").join(if path == "/" { "index.html" } else { path.trim_start_matches('/') }),
    };
    let kind = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    };
    match std::fs::read(&file) {
        Ok(bytes) if !path.contains("..") => reply(&mut stream, "200 OK", kind, &bytes),
        _ => reply(&mut stream, "404 Not Found", "text/plain", b"not found"),
    }
}

/// Chromium, headless, on `url`, in a profile of its own; killed when
/// dropped, so that a test that fails part-way leaves no browser running
/// (a page left training would take the machine's cores).
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser(chromium: &Path, profile: &Path, url: &str, extra: &[&str]) -> Browser {
    Browser(
        Command::new(chromium)
            .args(["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Chromium starts"),
    )
}

/// What a page's run posted: its report, its model (safetensors bytes) and
/// the WebGPU adapter it found (`null`: none).
struct PageRun {
    report: serde_json::Value,
    model: Vec<u8>,
    adapter: serde_json::Value,
    /// The slab as training left it (a GPU backend's).
    slab: Option<serde_json::Value>,
}

/// Opens the page on `query` (with WebGPU allowed, as Chromium's headless
/// mode needs asked) and waits for the parts it posts: every one of `parts`.
fn page_parts(chromium: &Path, query: &str, extra: Vec<(String, PathBuf)>, parts: &[&str]) -> HashMap<String, Vec<u8>> {
    page_parts_with(chromium, query, extra, parts, &["--enable-unsafe-webgpu"])
}

/// [`page_parts`] with Chromium's `flags`.
fn page_parts_with(
    chromium: &Path,
    query: &str,
    extra: Vec<(String, PathBuf)>,
    parts: &[&str],
    flags: &[&str],
) -> HashMap<String, Vec<u8>> {
    let (origin, posted) = serve(extra);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{origin}/?{query}&autorun=1&post=/results");
    let child = browser(chromium, profile.path(), &url, flags);
    let t0 = Instant::now();
    let outcome = loop {
        {
            let p = posted.lock().unwrap();
            if let Some(e) = p.get("error") {
                break Err(String::from_utf8_lossy(e).into_owned());
            }
            if parts.iter().all(|k| p.contains_key(*k)) {
                break Ok(p.clone());
            }
        }
        if t0.elapsed() > Duration::from_secs(300) {
            break Err("nothing posted in 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(child);
    outcome.unwrap_or_else(|e| panic!("the page at {url} failed: {e}"))
}

/// [`page_parts`] of a training run: its report, model and adapter.
fn page_run(chromium: &Path, query: &str, extra: Vec<(String, PathBuf)>) -> PageRun {
    let p = page_parts(chromium, query, extra, &["report", "model", "adapter"]);
    PageRun {
        report: serde_json::from_slice(&p["report"]).expect("the report is JSON"),
        model: p["model"].clone(),
        adapter: serde_json::from_slice(&p["adapter"]).expect("the adapter is JSON"),
        slab: p.get("slab").map(|s| serde_json::from_slice(s).expect("the slab picture is JSON")),
    }
}

/// `rowstage train` with `flags` on one CPU thread, its model saved.
fn native_model(flags: &[&str], dir: &Path) -> rowstage::model::Model {
    let path = dir.join("native.safetensors");
    let out = Command::new(assert_cmd::cargo::cargo_bin("rowstage"))
        .args(["train", "--backend", "cpu", "--threads", "1"])
        .args(flags)
        .arg("--save")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    rowstage::model::load_model(&path).unwrap().0
}

/// The page's model equals the native CPU backend's, bit for bit.
fn same_tables(page: &[u8], native: &rowstage::model::Model, dir: &Path) {
    let path = dir.join("page.safetensors");
    std::fs::write(&path, page).unwrap();
    let (m, _) = rowstage::model::load_model(&path).expect("the page's model reads as `train --save`'s");
    let d = rowstage::model::compare(&m, native).unwrap();
    assert!(d.identical, "the page's tables differ from the native CPU backend's: largest |difference| {}", d.max_abs);
}

#[test]
fn the_page_trains_the_native_model_bit_for_bit_from_its_url() {
    let Some(chromium) = page_and_browser("page, synthetic") else { return };
    let dir = tempfile::tempdir().unwrap();
    // Settings left to the run are chosen on the data, as natively.
    let PageRun { report, model, adapter, .. } =
        page_run(&chromium, "synthetic=400,200,6000&epochs=4&seed=7&backend=cpu", Vec::new());
    // Chromium offers WebGPU here (SwiftShader where there is no GPU); the
    // page finds it through wgpu and says whether it is a fallback adapter.
    println!("page, synthetic: WebGPU adapter {adapter}");
    assert!(adapter["backend"].is_string() && adapter["fallback"].is_boolean(), "no WebGPU adapter found: {adapter}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["config"]["backend"], "cpu");
    assert!(report["choice"]["lr"].is_number(), "the page chose its settings: {report}");
    let native = native_model(&["--synthetic", "400,200,6000", "--epochs", "4", "--seed", "7"], dir.path());
    same_tables(&model, &native, dir.path());
}

#[test]
fn the_page_trains_movielens_served_same_origin() {
    let Some(chromium) = page_and_browser("page, MovieLens") else { return };
    let ml = root().join("../shared/data/ml-100k/u.data");
    if !ml.is_file() {
        println!("page, MovieLens: skipped: {} is absent", ml.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--epochs", "2", "--seed", "1", "--lr", "0.05", "--reg", "0.08"];
    let native = native_model(&[&["--data", ml.to_str().unwrap()][..], &flags].concat(), dir.path());
    for backend in ["cpu", "webgpu"] {
        let PageRun { report, model, .. } = page_run(
            &chromium,
            &format!("data=/data/u.data&epochs=2&seed=1&lr=0.05&reg=0.08&backend={backend}"),
            vec![("/data/u.data".into(), ml.clone())],
        );
        assert_eq!(report["dataset"]["train"], 90000, "{}", report["dataset"]);
        assert_eq!(report["config"]["backend"], backend, "{}", report["config"]);
        if backend == "cpu" {
            same_tables(&model, &native, dir.path());
        } else {
            close_tables(&model, &native, dir.path(), "page, MovieLens, WebGPU");
        }
    }
}

/// The error the page at `query` (with `autorun=1`) posts.
fn page_error(chromium: &Path, query: &str, flags: &[&str]) -> String {
    let (origin, posted) = serve(Vec::new());
    let profile = tempfile::tempdir().unwrap();
    let child = browser(chromium, profile.path(), &format!("{origin}/?{query}&autorun=1&post=/results"), flags);
    let t0 = Instant::now();
    let error = loop {
        if let Some(e) = posted.lock().unwrap().get("error") {
            break String::from_utf8_lossy(e).into_owned();
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{query}: the page posted no error");
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(child);
    println!("{query}: {error}");
    error
}

#[test]
fn a_bad_setting_in_the_url_fails_the_page_by_name() {
    let Some(chromium) = page_and_browser("page, bad setting") else { return };
    let error = page_error(&chromium, "epochs=0", &[]);
    assert!(error.contains("epochs") && error.contains("at least 1"), "{error}");
    // A loss gone non-finite fails the page with `train`'s error, and no
    // model is offered as if trained.
    let error = page_error(&chromium, "synthetic=400,200,6000&epochs=3&lr=50&reg=0.05&backend=cpu", &[]);
    assert!(error.contains("diverged") && error.contains("lower lr"), "{error}");
    // The lesson: a comparison it does not know, a budget spelt wrong, and
    // the CPU backend, which stages nothing to compare.
    let webgpu = ["--enable-unsafe-webgpu"];
    let error = page_error(&chromium, "synthetic=400,200,6000&compare=everything&backend=webgpu", &webgpu);
    assert!(error.contains("compare=everything") && error.contains("policies or budgets"), "{error}");
    let error =
        page_error(&chromium, "synthetic=400,200,6000&compare=policies&backend=webgpu&device-memory=lots", &webgpu);
    assert!(error.contains("device-memory") && error.contains("lots"), "{error}");
    let error = page_error(&chromium, "synthetic=400,200,6000&compare=budgets&backend=cpu", &[]);
    assert!(error.contains("needs WebGPU"), "{error}");
}

#[test]
fn a_screenshot_of_a_finished_run_is_not_blank() {
    use base64::Engine;
    let Some(chromium) = page_and_browser("page, screenshot") else { return };
    // A slab of a tenth of the tables, so that the picture shows rows staged.
    let query = "synthetic=2000,1000,30000&epochs=4&seed=7&device-memory=10%25&autorun=1";
    let mut driven = driven(&chromium, query, &["--window-size=1200,1400", "--enable-unsafe-webgpu"]);
    let page = &mut driven.page;
    page.wait_for("document.title.startsWith('rowstage: done')", "the finished run");
    assert_eq!(page.eval("window.rowstageReport.config.backend"), "webgpu");
    let shot =
        page.call("Page.captureScreenshot", serde_json::json!({ "format": "png", "captureBeyondViewport": true }));
    drop(driven);
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("a screenshot")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // A blank page of this size compresses to a few KiB; text, a table of
    // epochs and the slab's cells take far more.
    assert!(png.len() > 20_000, "the screenshot looks blank: {} bytes", png.len());
    if let Ok(keep) = std::env::var("ROWSTAGE_KEEP_SCREENSHOT") {
        std::fs::write(keep, &png).unwrap();
    }
}

/// A page open in Chromium, driven over the DevTools protocol.
/// The page at `query` in a Chromium with `flags`, driven over DevTools;
/// the browser and its profile live as long as it (dropped in this order).
struct Driven {
    page: DevTools,
    _browser: Browser,
    _profile: tempfile::TempDir,
}

fn driven(chromium: &Path, query: &str, flags: &[&str]) -> Driven {
    let (origin, _) = serve(Vec::new());
    let profile = tempfile::tempdir().unwrap();
    let flags: Vec<&str> = ["--remote-debugging-port=0"].into_iter().chain(flags.iter().copied()).collect();
    let browser = browser(chromium, profile.path(), &format!("{origin}/?{query}"), &flags);
    let page = DevTools::attach(profile.path());
    Driven { page, _browser: browser, _profile: profile }
}

struct DevTools {
    socket: tungstenite::WebSocket<TcpStream>,
    next: u64,
}

impl DevTools {
    /// Connects to the page that the Chromium using `profile` has open
    /// (`--remote-debugging-port=0` writes its port into the profile).
    fn attach(profile: &Path) -> DevTools {
        let t0 = Instant::now();
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(profile.join("DevToolsActivePort"))
                && let Some(p) = text.lines().next().and_then(|l| l.trim().parse::<u16>().ok())
            {
                break p;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "Chromium opened no DevTools port");
            std::thread::sleep(Duration::from_millis(50));
        };
        let url = loop {
            // Chromium answers HTTP/1.1 only, and keeps the connection
            // open: read the length it gives.
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(&s, "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
            let mut reader = BufReader::new(s);
            let mut body = vec![0; content_length(&mut reader).unwrap()];
            reader.read_exact(&mut body).unwrap();
            let json = String::from_utf8_lossy(&body).into_owned();
            let pages: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let page = pages.as_array().into_iter().flatten().find(|p| p["type"] == "page");
            if let Some(u) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                break u.to_string();
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "Chromium lists no page");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (socket, _) = tungstenite::client(url.as_str(), stream).expect("a DevTools WebSocket");
        DevTools { socket, next: 1 }
    }

    /// The result of the DevTools `method` with `params`.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next;
        self.next += 1;
        let call = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket.send(tungstenite::Message::text(call.to_string())).unwrap();
        loop {
            let msg = self.socket.read().expect("a DevTools reply");
            let Ok(text) = msg.to_text() else { continue };
            let reply: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            if reply["id"] == id {
                return reply["result"].clone();
            }
        }
    }

    /// The value of `expression` in the page.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({ "expression": expression, "returnByValue": true });
        self.call("Runtime.evaluate", params)["result"]["value"].clone()
    }

    /// Clicks Stop once `ready` is true, waits for the stopped title, and
    /// returns the page's `outcome` (a window property) as JSON.
    fn stop_when(&mut self, ready: &str, outcome: &str) -> serde_json::Value {
        self.wait_for(ready, ready);
        self.eval("document.getElementById('stop').click()");
        self.wait_for("document.title.startsWith('rowstage: stopped')", "the stopped title");
        let json = self.eval(&format!("JSON.stringify({outcome})"));
        serde_json::from_str(json.as_str().unwrap_or_else(|| panic!("{outcome} is not set: {json}"))).unwrap()
    }

    /// Waits until `expression` is true in the page.
    fn wait_for(&mut self, expression: &str, what: &str) {
        let t0 = Instant::now();
        while self.eval(expression) != serde_json::Value::Bool(true) {
            assert!(t0.elapsed() < Duration::from_secs(120), "{what}: not within 120 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn stop_ends_a_run_between_epochs_and_reports_it_incomplete() {
    let Some(chromium) = page_and_browser("page, Stop") else { return };
    // A run far longer than the test: only Stop ends it.
    let query = "synthetic=2000,1000,50000&epochs=100000&lr=0.05&reg=0.08&autorun=1";
    let mut driven = driven(&chromium, query, &[]);
    let page = &mut driven.page;
    let report = page.stop_when("document.querySelectorAll('#epochs tbody tr').length >= 2", "window.rowstageReport");
    drop(driven);
    assert_eq!(report["complete"], false, "{}", report["final"]);
    let epochs = report["epochs"].as_array().unwrap().len();
    assert!((2..100_000).contains(&epochs), "stopped after {epochs} epochs");
}

#[test]
fn stop_ends_a_lesson_on_webgpu_and_reports_it_incomplete() {
    let Some(chromium) = page_and_browser("page, Stop in a lesson") else { return };
    // Four budgets of the default data, the last ones slow on SwiftShader:
    // Stop comes while the second configuration trains, suspended on the
    // device.
    let mut driven = driven(&chromium, "compare=budgets&backend=webgpu&autorun=1", &["--enable-unsafe-webgpu"]);
    let page = &mut driven.page;
    let lesson = page.stop_when(
        "document.getElementById('final').textContent.startsWith('configuration 2 of 4')",
        "window.rowstageComparison",
    );
    let buttons = page
        .eval("['run', 'compare', 'compare-budgets', 'bench'].every((id) => !document.getElementById(id).disabled)");
    drop(driven);
    let report = &lesson["report"];
    assert_eq!(report["complete"], false, "{report}");
    let rows = report["rows"].as_array().unwrap();
    assert!(rows.len() < 4, "Stop during the second configuration: {} rows", rows.len());
    assert!(lesson["explanation"].as_array().is_some_and(|e| !e.is_empty()), "{lesson}");
    assert_eq!(buttons, serde_json::Value::Bool(true), "the page's buttons are on again after Stop");
}

/// The page's WebGPU tables within 1e-4 of the native CPU backend's
/// (`what` names the run in the output).
fn close_tables(page: &[u8], native: &rowstage::model::Model, dir: &Path, what: &str) {
    let path = dir.join("page.safetensors");
    std::fs::write(&path, page).unwrap();
    let (m, _) = rowstage::model::load_model(&path).expect("the page's model reads as `train --save`'s");
    let d = rowstage::model::compare(&m, native).unwrap().max_abs;
    println!("{what}: largest |difference| from the native CPU backend's tables {d:e}");
    assert!(d <= 1e-4, "{what}: the page's WebGPU tables differ from the native CPU backend's by {d}");
}

#[test]
fn the_page_trains_the_native_model_on_webgpu() {
    let Some(chromium) = page_and_browser("page, WebGPU") else { return };
    let dir = tempfile::tempdir().unwrap();
    // All resident, then a slab of a quarter of the tables (rows staged).
    for (budget, share) in [("&device-memory=100%25", "100%"), ("&device-memory=25%25", "25%")] {
        let query = format!("synthetic=400,200,6000&epochs=3&seed=7&backend=webgpu{budget}");
        let PageRun { report, model, adapter, slab } = page_run(&chromium, &query, Vec::new());
        println!("page, WebGPU{budget}: adapter {adapter}");
        assert_eq!(report["complete"], true, "{report}");
        assert_eq!(report["config"]["backend"], "webgpu", "the page fell back: {report}");
        assert!(adapter["name"].as_str().is_some_and(|n| !n.is_empty()), "the adapter has no name: {adapter}");
        assert_eq!(report["config"]["adapter"], adapter["name"], "{report}");
        // The picture of the slab: one cell per slot, in the areas the
        // report gives; staged rows moved only where the slab is small.
        let slab = slab.expect("a WebGPU run posts its slab");
        let config = &report["config"];
        assert_eq!(slab["rows"].as_array().unwrap().len() as u64, config["slots"].as_u64().unwrap(), "{slab}");
        assert_eq!(slab["resident"], config["resident_slots"], "{slab}");
        let rows_in: u64 = report["epochs"].as_array().unwrap().iter().map(|e| e["rows_in"].as_u64().unwrap()).sum();
        let most_loads = slab["loads"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap()).max().unwrap();
        if share == "100%" {
            assert_eq!(most_loads, 1, "all resident, every slot received its row once: {slab}");
        } else {
            assert!(rows_in > 0 && most_loads > 1, "at 25% rows are staged: {rows_in} rows in, {slab}");
        }
        let mut flags = vec!["--synthetic", "400,200,6000", "--epochs", "3", "--seed", "7"];
        flags.extend(["--device-memory", share]);
        let native = native_model(&flags, dir.path());
        close_tables(&model, &native, dir.path(), &format!("page, WebGPU{budget}"));
    }
    // The default data (no data setting at all), one epoch.
    let PageRun { report, model, .. } = page_run(&chromium, "epochs=1&backend=webgpu", Vec::new());
    assert_eq!(report["config"]["backend"], "webgpu", "{report}");
    let native = native_model(&["--epochs", "1"], dir.path());
    close_tables(&model, &native, dir.path(), "page, WebGPU, default data");
}

/// Checks the page's lesson (`rowstage::bench::lesson::Lesson` as JSON)
/// against the simulator: every configuration trained on WebGPU, and each
/// row's rows in per timed epoch (the second: one warm-up) from its own
/// ledger equal to `rowstage simulate`'s count for the same data, settings,
/// budget, policy and batch, as is its Belady floor. Returns the rows.
fn lesson_counts_what_simulate_counts(lesson: &serde_json::Value, data: &[&str]) -> Vec<serde_json::Value> {
    let report = &lesson["report"];
    let rows = report["rows"].as_array().expect("rows").clone();
    let profiles = lesson["profiles"].as_array().expect("profiles").len();
    assert!(profiles >= 3, "named hardware profiles: {lesson}");
    assert_eq!(lesson["projected_staging_seconds"].as_array().unwrap().len(), rows.len());
    assert!(lesson["explanation"].as_array().is_some_and(|e| e.len() >= 3), "{lesson}");
    let dir = tempfile::tempdir().unwrap();
    for r in &rows {
        assert_eq!(r["backend"], "webgpu", "the lesson trains on WebGPU: {r}");
        let (budget, policy, batch) =
            (r["budget"].as_str().unwrap(), r["policy"].as_str().unwrap(), r["batch"].to_string());
        let path = dir.path().join("simulate.json");
        let out = Command::new(assert_cmd::cargo::cargo_bin("rowstage"))
            .arg("simulate")
            .args(data)
            .args(["--epochs", "2", "--batch", &batch, "--device-memory", budget, "--policy"])
            .arg(format!("{policy},belady"))
            .arg("--json")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let native: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let second = |p: &str| {
            let n = native.as_array().unwrap().iter().find(|n| n["policy"] == p).expect("simulated");
            assert_eq!(n["order"], r["order"], "{n}\n{r}");
            n["epoch_rows_in"][1].as_f64().unwrap()
        };
        println!(
            "{budget} {policy}: trained {} rows in, simulated {}; Belady {} and {}",
            r["rows_in_per_epoch"],
            second(policy),
            r["belady_rows_in_per_epoch"],
            second("belady")
        );
        assert_eq!(r["rows_in_per_epoch"].as_f64(), Some(second(policy)), "{budget} {policy}: {r}");
        assert_eq!(r["belady_rows_in_per_epoch"].as_f64(), Some(second("belady")), "{budget} {policy}: {r}");
    }
    rows
}

#[test]
fn the_pages_lesson_trains_every_policy_and_counts_what_rowstage_simulate_counts() {
    let Some(chromium) = page_and_browser("page, lesson") else { return };
    let data = ["--synthetic", "400,200,6000", "--seed", "7"];
    let query = "synthetic=400,200,6000&seed=7&lr=0.05&reg=0.08&device-memory=25%25&backend=webgpu";
    let parts = page_parts(&chromium, &format!("{query}&compare=policies"), Vec::new(), &["comparison"]);
    let lesson: serde_json::Value = serde_json::from_slice(&parts["comparison"]).expect("the lesson is JSON");
    let rows = lesson_counts_what_simulate_counts(&lesson, &data);
    let policies: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["none", "static", "lru", "lfu", "sca", "lookahead"], "every policy that trains");

    // The chosen policy at 100, 25, 5 and 1%: each trained, or skipped
    // with its reason (1% of these small tables holds no batch).
    let parts = page_parts(&chromium, &format!("{query}&policy=sca&compare=budgets"), Vec::new(), &["comparison"]);
    let lesson: serde_json::Value = serde_json::from_slice(&parts["comparison"]).expect("the lesson is JSON");
    let rows = lesson_counts_what_simulate_counts(&lesson, &data);
    let mut budgets: Vec<String> = rows.iter().map(|r| r["budget"].as_str().unwrap().to_string()).collect();
    for k in lesson["report"]["skipped"].as_array().unwrap() {
        println!("skipped: {k}");
        budgets.push(k["budget"].as_str().unwrap().to_string());
    }
    assert_eq!(budgets, ["100%", "25%", "5%", "1%"], "{lesson}");
    assert!(rows.len() >= 3, "100%, 25% and 5% train: {lesson}");
}

/// The keys of `v`'s objects, recursively (`path.key`), arrays by their
/// first element.
fn key_paths(v: &serde_json::Value, path: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                out.insert(p.clone());
                key_paths(v, &p, out);
            }
        }
        serde_json::Value::Array(a) => {
            if let Some(first) = a.first() {
                key_paths(first, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn benchmark_this_device_runs_bench_preset_web_in_its_schema() {
    let Some(chromium) = page_and_browser("page, benchmark") else { return };
    let parts = page_parts(&chromium, "bench=1&backend=webgpu", Vec::new(), &["bench"]);
    let page: serde_json::Value = serde_json::from_slice(&parts["bench"]).expect("the benchmark is JSON");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.json");
    let out = Command::new(assert_cmd::cargo::cargo_bin("rowstage"))
        .args(["bench", "--preset", "web", "--backend", "cpu", "--threads", "1", "--export-json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let native: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(page["complete"], true);
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "three budgets of sca: {page}");
    assert!(rows.iter().all(|r| r["backend"] == "webgpu"), "{page}");
    assert!(page["environment"]["browser"].as_str().is_some_and(|b| b.contains("Chrome")), "{}", page["environment"]);
    // The same sweep: the same data and plan, and (the same model) the
    // same test RMSE as the native CPU backend's.
    assert_eq!(page["dataset"], native["dataset"]);
    let plan = |v: &serde_json::Value| {
        let mut p = v["plan"].clone();
        for k in ["backends", "threads"] {
            p.as_object_mut().unwrap().remove(k);
        }
        p
    };
    assert_eq!(plan(&page), plan(&native), "the page's sweep differs from bench --preset web's");
    let native_rmse = native["rows"][0]["test_rmse"].as_f64().unwrap();
    for r in rows {
        let d = (r["test_rmse"].as_f64().unwrap() - native_rmse).abs();
        assert!(d <= 1e-4, "test RMSE {} on the page, {native_rmse} natively", r["test_rmse"]);
    }
    // In `rowstage bench --export-json`'s schema: the same keys.
    let (mut a, mut b) = (Default::default(), Default::default());
    key_paths(&page, "", &mut a);
    key_paths(&native, "", &mut b);
    // The CPU backend has no device time: its `device_seconds_stats` is null.
    let differ: Vec<_> = a.symmetric_difference(&b).filter(|k| !k.contains(".device_seconds_stats.")).collect();
    assert!(differ.is_empty(), "the page's benchmark JSON and rowstage bench's differ in keys: {differ:?}");
}

#[test]
fn without_webgpu_the_page_trains_on_the_cpu_and_says_so() {
    let Some(chromium) = page_and_browser("page, no WebGPU") else { return };
    let dir = tempfile::tempdir().unwrap();
    // WebGPU switched off: the page must fall back by itself, even where
    // the query asks for it.
    let flags = ["--disable-features=WebGPU,Vulkan", "--disable-gpu"];
    let parts = page_parts_with(
        &chromium,
        "synthetic=400,200,6000&epochs=2&seed=7&backend=webgpu",
        Vec::new(),
        &["report", "model", "adapter"],
        &flags,
    );
    assert_eq!(parts["adapter"], b"null", "WebGPU was still offered");
    let report: serde_json::Value = serde_json::from_slice(&parts["report"]).unwrap();
    assert_eq!(report["config"]["backend"], "cpu", "{}", report["config"]);
    let notes = String::from_utf8_lossy(&parts["notes"]);
    assert!(notes.contains("offers no WebGPU adapter: the CPU backend"), "the page did not say so: {notes}");
    // No lr or reg in the query: the page says what the run chose.
    let chose = format!("chose lr {} reg {}", report["choice"]["lr"], report["choice"]["reg"]);
    assert!(notes.contains(&chose), "the page did not say `{chose}`: {notes}");
    let native = native_model(&["--synthetic", "400,200,6000", "--epochs", "2", "--seed", "7"], dir.path());
    same_tables(&parts["model"], &native, dir.path());
}
