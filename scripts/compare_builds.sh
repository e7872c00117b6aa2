#!/usr/bin/env bash
# Before/after figures for a change: two rowstage binaries run the same
# training configurations, interleaved (before, after, before, ...) for
# ROUNDS rounds, so that both see the same minutes of a machine whose speed
# drifts:
#
#   scripts/compare_builds.sh BEFORE_BIN AFTER_BIN [ROUNDS]
#   SET=cpu scripts/compare_builds.sh BEFORE_BIN AFTER_BIN [ROUNDS]
#
# Build BEFORE_BIN from the older commit, e.g.
#   git worktree add /tmp/before OLD && CARGO_TARGET_DIR=/tmp/before-target \
#     cargo build --release --manifest-path /tmp/before/Cargo.toml
# ROUNDS defaults to 3.
#
# SET=gpu (the default): the GPU path. Every run trains the built-in default
# dataset for 4 epochs; a run's figure is the median ratings/s of epochs 2-4
# (epoch 1 also loads the resident rows).
# SET=cpu: the CPU backend (blocked order, 2 threads) on synthetic 1M and
# 10M ratings (Zipf 1.05, rank 32) for 10 epochs, as the LIBMF race runs it;
# a run's figure is its whole training's ratings/s (the blocked copy and the
# epoch orders included, evaluation excluded).
#
# Prints, per configuration, the median over rounds of both binaries, their
# ratio, the ratio in each round, and the test RMSE of the first round of
# each. Needs python3.
set -euo pipefail
before=${1:?usage: compare_builds.sh BEFORE_BIN AFTER_BIN [ROUNDS]}
after=${2:?usage: compare_builds.sh BEFORE_BIN AFTER_BIN [ROUNDS]}
rounds=${3:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
grid=(--lr 0.005,0.01,0.02,0.04 --reg 0.02,0.05)
set=${SET:-gpu}
configs=(
    "vulkan-100%|--backend vulkan --batch 512 --device-memory 200%"
    "vulkan-100%-batch2048|--backend vulkan --device-memory 200%"
    "vulkan-10%-sca|--backend vulkan --batch 512 --device-memory 10% --policy sca"
    "vulkan-10%-lookahead|--backend vulkan --batch 512 --device-memory 10% --policy lookahead"
    "gl-100%|--backend gl --batch 512 --device-memory 200%"
    "vulkan-100%-grid8|--backend vulkan --batch 512 --policy sca --device-memory 100% ${grid[*]}"
    "vulkan-10%-grid8|--backend vulkan --batch 512 --policy sca --device-memory 10% ${grid[*]}"
)
epochs=4
if [ "$set" = cpu ]; then
    epochs=10
    configs=(
        "cpu-1M|--backend cpu --threads 2 --synthetic 50000,20000,1000000"
        "cpu-10M|--backend cpu --threads 2 --synthetic 50000,20000,10000000"
    )
elif [ "$set" != gpu ]; then
    echo "compare_builds.sh: SET must be gpu or cpu, not $set" >&2
    exit 2
fi
for r in $(seq 1 "$rounds"); do
    for c in "${configs[@]}"; do
        name=${c%%|*}
        read -r -a args <<<"${c#*|}"
        for v in before after; do
            bin=$before
            [ "$v" = after ] && bin=$after
            "$bin" train --epochs "$epochs" "${args[@]}" --json "$out/$name.$v.$r.json" >/dev/null
        done
    done
done
python3 - "$out" "$set" "${configs[@]}" <<'PY'
import glob, json, statistics as st, sys
out, kind, configs = sys.argv[1], sys.argv[2], sys.argv[3:]
print("| configuration | before (ratings/s) | after | after / before | per round | test RMSE before / after |")
print("| --- | --- | --- | --- | --- | --- |")
for c in configs:
    name = c.split("|")[0]
    fig, rmse = {}, {}
    for v in ("before", "after"):
        runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}.{v}.*.json"))]
        if kind == "cpu":
            fig[v] = [d["final"]["ratings_per_sec"] for d in runs]
        else:
            fig[v] = [st.median(e["ratings_per_sec"] for e in d["epochs"][1:]) for d in runs]
        rmse[v] = runs[0]["final"]["test_rmse"]
    b, a = st.median(fig["before"]), st.median(fig["after"])
    rounds = " ".join(f"{y / x:.2f}" for x, y in zip(fig["before"], fig["after"]))
    print(f"| {name} | {b:.3e} | {a:.3e} | **{a / b:.2f}** | {rounds} | {rmse['before']:.4f} / {rmse['after']:.4f} |")
PY
