#!/usr/bin/env bash
# Grid search in one run against one setting and against the same settings run
# one after another, on one backend, in the same invocation of this script:
#
#   scripts/bench_grid.sh [BACKEND] [DEVICE_MEMORY] [EPOCHS]
#
# BACKEND is vulkan, gl or cpu (default vulkan); DEVICE_MEMORY as for
# `rowstage train` (default 10%); EPOCHS default 5. Runs with batch 512 (or
# $BATCH) and the sca policy on the built-in default dataset, or on what
# $DATA_FLAGS names (e.g. DATA_FLAGS="--synthetic 50000,20000,1000000"), and
# prints a Markdown table of wall-clock seconds per run (start-up, training
# and evaluation) and the ratios to one setting. $ROWSTAGE_BIN names a built
# binary to use instead of building one (a machine without cargo).
set -euo pipefail
backend=${1:-vulkan}
budget=${2:-10%}
epochs=${3:-5}
batch=${BATCH:-512}
cd "$(dirname "$0")/.."
if [[ -n ${ROWSTAGE_BIN:-} ]]; then
    bin=$ROWSTAGE_BIN
else
    cargo build --release --quiet
    bin=target/release/rowstage
fi
read -r -a data_flags <<<"${DATA_FLAGS:-}"
# Arithmetic on decimals with awk (present wherever bash is; bc often is not).
calc() { awk "BEGIN { print $1 }"; }
lrs=(0.005 0.01 0.02 0.04)
regs=(0.02 0.05)
common=(train --epochs "$epochs" --batch "$batch" --policy sca --device-memory "$budget" --backend "$backend" "${data_flags[@]}")

# Runs rowstage with the given extra flags; prints "SECONDS RMSE".
run() {
    local t0 t1 out
    t0=$(date +%s.%N)
    out=$("$bin" "${common[@]}" "$@" 2>&1) || { echo "$out" >&2; exit 1; }
    t1=$(date +%s.%N)
    echo "$(calc "$t1 - $t0") $(echo "$out" | sed -n 's/^final: test RMSE \([0-9.]*\).*/\1/p')"
}

read -r one one_rmse < <(run --lr 0.01 --reg 0.05)
lr_list=$(IFS=,; echo "${lrs[*]}")
reg_list=$(IFS=,; echo "${regs[*]}")
read -r grid grid_rmse < <(run --lr "$lr_list" --reg "$reg_list")
seq_total=0
best_seq=9
for lr in "${lrs[@]}"; do
    for reg in "${regs[@]}"; do
        read -r t rmse < <(run --lr "$lr" --reg "$reg")
        seq_total=$(calc "$seq_total + $t")
        best_seq=$(calc "($rmse < $best_seq) ? $rmse : $best_seq")
    done
done
n=$(( ${#lrs[@]} * ${#regs[@]} ))
echo "backend $backend, --device-memory $budget, $epochs epochs, batch $batch, sca, ${DATA_FLAGS:-default dataset}"
echo
echo "| run | wall s | × one setting | best test RMSE |"
echo "|---|---:|---:|---:|"
printf '| one setting (lr 0.01, reg 0.05) | %.2f | 1.00 | %s |\n' "$one" "$one_rmse"
printf '| %d settings in one run (--lr %s --reg %s) | %.2f | %.2f | %s |\n' "$n" "$lr_list" "$reg_list" "$grid" "$(calc "$grid / $one")" "$grid_rmse"
printf '| the same %d settings one after another | %.2f | %.2f | %.4f |\n' "$n" "$seq_total" "$(calc "$seq_total / $one")" "$best_seq"
