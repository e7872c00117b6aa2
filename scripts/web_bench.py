#!/usr/bin/env python3
# Times the browser page: serves web/dist/, opens the page with the query
# given (autorun, posting its report back) in headless Chromium, and prints
# the report's figures. WebGPU is allowed (SwiftShader where there is no
# GPU). Usage: scripts/web_bench.py "synthetic=...&epochs=5", or
# scripts/web_bench.py "bench=1&backend=webgpu" for "Benchmark this device".
import http.server, threading, json, subprocess, sys, time, os, tempfile
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "web", "dist")
got = {}
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(s, *a, **k): super().__init__(*a, directory=root, **k)
    def log_message(s, *a): pass
    def do_POST(s):
        n = int(s.headers.get("Content-Length", 0)); body = s.rfile.read(n)
        got[s.path.split("part=")[-1]] = (time.time(), body)
        s.send_response(200); s.end_headers(); s.wfile.write(b"ok")
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
port = srv.server_address[1]
q = sys.argv[1]
prof = tempfile.mkdtemp()
t0 = time.time()
p = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run", "--enable-unsafe-webgpu", f"--user-data-dir={prof}",
    f"http://127.0.0.1:{port}/?{q}&autorun=1&post=/results"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while not {"report", "bench", "error"} & got.keys() and time.time() - t0 < 600: time.sleep(0.05)
p.kill()
if "error" in got: print("error", got["error"][1]); sys.exit(1)
if "bench" in got:
    # "Benchmark this device" (bench=1): its rows, as `rowstage bench` prints them.
    b = json.loads(got["bench"][1])
    print(json.dumps({"wall_s_to_report": round(got["bench"][0] - t0, 2), "rows": [{k: r[k] for k in
        ("backend", "adapter", "budget", "policy", "median_ratings_per_sec", "vs_resident", "rows_in_per_epoch", "hit_rate", "test_rmse", "bound")}
        for r in b["rows"]]}, indent=1))
    sys.exit(0)
r = json.loads(got["report"][1])
e = r["epochs"]
t = json.loads(got["timings"][1]) if "timings" in got else {}
print(json.dumps({"wall_s_to_report": round(got["report"][0] - t0, 2), "page_timings_ms": {k: round(v) for k, v in t.items()}, "final_rmse": r["final"]["test_rmse"],
  "epoch_rps": [round(x["ratings_per_sec"]) for x in e], "final_rps": round(r["final"]["ratings_per_sec"]),
  "first_epoch_seconds": e[0]["seconds"]}))
