#!/usr/bin/env bash
# Before/after figures for a change of the GPU path: two rowstage binaries run
# the same training configurations, interleaved (before, after, before, ...)
# for ROUNDS rounds, so that both see the same minutes of a machine whose
# speed drifts:
#
#   scripts/compare_builds.sh BEFORE_BIN AFTER_BIN [ROUNDS]
#
# Build BEFORE_BIN from the older commit, e.g.
#   git worktree add /tmp/before OLD && CARGO_TARGET_DIR=/tmp/before-target \
#     cargo build --release --manifest-path /tmp/before/Cargo.toml
# ROUNDS defaults to 3. Every run trains the built-in default dataset for 4
# epochs; a run's figure is the median ratings/s of epochs 2-4 (epoch 1 also
# loads the resident rows). Prints, per configuration, the median over rounds
# of both binaries, their ratio, the ratio in each round, and the test RMSE of
# the first round of each. Needs python3.
set -euo pipefail
before=${1:?usage: compare_builds.sh BEFORE_BIN AFTER_BIN [ROUNDS]}
after=${2:?usage: compare_builds.sh BEFORE_BIN AFTER_BIN [ROUNDS]}
rounds=${3:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
grid=(--lr 0.005,0.01,0.02,0.04 --reg 0.02,0.05)
configs=(
    "vulkan-100%|--backend vulkan --batch 512 --device-memory 200%"
    "vulkan-100%-batch2048|--backend vulkan --device-memory 200%"
    "vulkan-10%-sca|--backend vulkan --batch 512 --device-memory 10% --policy sca"
    "vulkan-10%-lookahead|--backend vulkan --batch 512 --device-memory 10% --policy lookahead"
    "gl-100%|--backend gl --batch 512 --device-memory 200%"
    "vulkan-100%-grid8|--backend vulkan --batch 512 --policy sca --device-memory 100% ${grid[*]}"
    "vulkan-10%-grid8|--backend vulkan --batch 512 --policy sca --device-memory 10% ${grid[*]}"
)
for r in $(seq 1 "$rounds"); do
    for c in "${configs[@]}"; do
        name=${c%%|*}
        read -r -a args <<<"${c#*|}"
        for v in before after; do
            bin=$before
            [ "$v" = after ] && bin=$after
            "$bin" train --epochs 4 "${args[@]}" --json "$out/$name.$v.$r.json" >/dev/null
        done
    done
done
python3 - "$out" "${configs[@]}" <<'PY'
import glob, json, statistics as st, sys
out, configs = sys.argv[1], sys.argv[2:]
print("| configuration | before (ratings/s) | after | after / before | per round | test RMSE before / after |")
print("| --- | --- | --- | --- | --- | --- |")
for c in configs:
    name = c.split("|")[0]
    fig, rmse = {}, {}
    for v in ("before", "after"):
        runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}.{v}.*.json"))]
        fig[v] = [st.median(e["ratings_per_sec"] for e in d["epochs"][1:]) for d in runs]
        rmse[v] = runs[0]["final"]["test_rmse"]
    b, a = st.median(fig["before"]), st.median(fig["after"])
    rounds = " ".join(f"{y / x:.2f}" for x, y in zip(fig["before"], fig["after"]))
    print(f"| {name} | {b:.3e} | {a:.3e} | **{a / b:.2f}** | {rounds} | {rmse['before']:.4f} / {rmse['after']:.4f} |")
PY
