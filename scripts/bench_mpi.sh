#!/usr/bin/env bash
# Training across MPI ranks against one process (BENCHMARKS.md, "Past one
# machine"). `scripts/bench_mpi.sh DATA` (or `DATA rotate`): per data set
# and order, the CPU backend on 1 and 2 threads and `--distributed rotate`
# on 1, 2 and 4 ranks (each rank's threads the
# default: the cores shared among the ranks, unbound: `--bind-to none`).
# `scripts/bench_mpi.sh DATA server`: per data set, in the default and the
# shuffled order, the CPU backend on 1 thread and `--distributed server` on
# 1, 2 and 4 ranks at its defaults (cache 25%, policy sca, staleness 4);
# `scripts/bench_mpi.sh DATA gpu`: MovieLens 100K in the default and the
# cluster order on one process's GPU and `--distributed rotate` on each
# rank's GPU at 1, 2 and 4 ranks, and `--distributed server` on each
# rank's GPU at 2 and 4 (also in the shuffled order) (`--backend` ROWSTAGE_BENCH_GPU, vulkan by default;
# its default slab and cache); with lr and reg fixed (no choosing) for 6 epochs. Prints a Markdown row each: the median ratings/s of
# epochs 2-6, the bytes handed to MPI per epoch (measured, and as the order
# predicts them), each rank's peak memory (GNU time's maximum RSS), and the
# test RMSE. Needs a build with the `mpi` feature and GNU time; ranks past
# the cores are oversubscribed.
set -euo pipefail
B=${ROWSTAGE_BIN:-target/release/rowstage}
DATA=${1:-../shared/data/ml-100k/u.data}
MODE=${2:-rotate}
GPU=${ROWSTAGE_BENCH_GPU:-vulkan}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
row() { # label, data flags, order, how (1t, 2t or a number of ranks)
  local label=$1 data=$2 order=$3 how=$4
  : >"$tmp/err"
  local args="train $data --lr 0.05 --reg 0.1 --epochs 6 --order $order --json $tmp/r.json"
  case $how in
    g1) /usr/bin/time -f "rss %M" $B $args --backend "$GPU" >/dev/null 2>>"$tmp/err" ;;
    v*) mpirun --oversubscribe --bind-to none -np "${how#v}" sh -c "/usr/bin/time -f 'rss %M' -o $tmp/rss.\$OMPI_COMM_WORLD_RANK \
         $B $args --distributed server --backend $GPU" >/dev/null 2>>"$tmp/err"
       cat "$tmp"/rss.* >>"$tmp/err" && rm -f "$tmp"/rss.* ;;
    g*) mpirun --oversubscribe --bind-to none -np "${how#g}" sh -c "/usr/bin/time -f 'rss %M' -o $tmp/rss.\$OMPI_COMM_WORLD_RANK \
         $B $args --distributed rotate --backend $GPU" >/dev/null 2>>"$tmp/err"
       cat "$tmp"/rss.* >>"$tmp/err" && rm -f "$tmp"/rss.* ;;
    1t) /usr/bin/time -f "rss %M" $B $args --backend cpu --threads 1 >/dev/null 2>>"$tmp/err" ;;
    2t) /usr/bin/time -f "rss %M" $B $args --backend cpu --threads 2 >/dev/null 2>>"$tmp/err" ;;
    # Each rank's figure to its own file: mpirun merges the ranks' stderr.
    s*) mpirun --oversubscribe --bind-to none -np "${how#s}" sh -c "/usr/bin/time -f 'rss %M' -o $tmp/rss.\$OMPI_COMM_WORLD_RANK \
         $B $args --distributed server" >/dev/null 2>>"$tmp/err"
       cat "$tmp"/rss.* >>"$tmp/err" && rm -f "$tmp"/rss.* ;;
    *) mpirun --oversubscribe --bind-to none -np "$how" sh -c "/usr/bin/time -f 'rss %M' -o $tmp/rss.\$OMPI_COMM_WORLD_RANK \
         $B $args --distributed rotate" >/dev/null 2>>"$tmp/err"
       cat "$tmp"/rss.* >>"$tmp/err" && rm -f "$tmp"/rss.* ;;
  esac
  python3 - "$label" "$order" "$how" "$tmp" <<'PY'
import json, re, statistics, sys
label, order, how, tmp = sys.argv[1:]
j = json.load(open(f"{tmp}/r.json"))
e = j["epochs"][1:]
rss = [int(x) / 1024 for x in re.findall(r"rss (\d+)", open(f"{tmp}/err").read())]
rate = statistics.median(x["ratings_per_sec"] for x in e)
if "wire_bytes" in e[0]:
    w = statistics.mean(x["wire_bytes"] for x in e) / 2**20
    p = statistics.mean(x["predicted_wire_bytes"] for x in e) / 2**20
    wire = f"{w:.2f} MiB ({p:.2f})"
else:
    wire = "-"
threads = re.search(r"(\d+) threads? each", j["config"]["adapter"])
if how.startswith("v"):
    who = f"server on {j['config']['backend']}, {how[1:]} rank(s)"
elif how == "g1":
    who = f"{j['config']['backend']}, one process"
elif how.startswith("g"):
    who = f"rotate on {j['config']['backend']}, {how[1:]} rank(s)"
elif how.startswith("s"):
    who = f"server, {how[1:]} rank(s) × 1 thread"
else:
    who = {"1t": "CPU, 1 thread", "2t": "CPU, 2 threads"}.get(how, f"rotate, {how} rank(s) × {threads.group(1) if threads else '?'} thread(s)")
print(f"| {label} | {order} | {who} | {rate:.3e} | {wire} | {', '.join(f'{r:.0f}' for r in rss)} | {j['final']['test_rmse']:.4f} |")
PY
}
echo "| data | order | where | ratings/s | wire per epoch (predicted) | peak MiB per rank | test RMSE |"
echo "| --- | --- | --- | ---: | ---: | --- | ---: |"
for set in "MovieLens 100K|--data $DATA" "synthetic 1M|--synthetic 10000,5000,1000000"; do
  label=${set%%|*} data=${set#*|}
  if [ "$MODE" = gpu ]; then
    [ "$label" = "MovieLens 100K" ] || continue
    for order in auto blocked:16:2:4; do
      for how in g1 g2 g4 v2 v4; do row "$label" "$data" "$order" "$how"; done
    done
    for how in g1 v2 v4; do row "$label" "$data" shuffled "$how"; done
    continue
  fi
  if [ "$MODE" = server ]; then
    for order in auto shuffled; do
      for how in 1t s1 s2 s4; do row "$label" "$data" "$order" "$how"; done
    done
    continue
  fi
  for order in auto blocked:16:2:4; do
    for how in 1t 2t 1 2 4; do row "$label" "$data" "$order" "$how"; done
  done
done
