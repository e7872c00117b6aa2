#!/usr/bin/env bash
# Grid search in one run against one setting and against the same settings run
# one after another, on one backend, in the same invocation of this script:
#
#   scripts/bench_grid.sh [BACKEND] [DEVICE_MEMORY] [EPOCHS]
#
# BACKEND is vulkan, gl or cpu (default vulkan); DEVICE_MEMORY as for
# `rowstage train` (default 10%); EPOCHS default 5. Runs on the built-in
# default dataset with batch 512 and the sca policy, and prints a Markdown
# table of wall-clock seconds per run (start-up, training and evaluation) and
# the ratios to one setting.
set -euo pipefail
backend=${1:-vulkan}
budget=${2:-10%}
epochs=${3:-5}
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/rowstage
lrs=(0.005 0.01 0.02 0.04)
regs=(0.02 0.05)
common=(train --epochs "$epochs" --batch 512 --policy sca --device-memory "$budget" --backend "$backend")

# Runs rowstage with the given extra flags; prints "SECONDS RMSE".
run() {
    local t0 t1 out
    t0=$(date +%s.%N)
    out=$("$bin" "${common[@]}" "$@" 2>&1) || { echo "$out" >&2; exit 1; }
    t1=$(date +%s.%N)
    echo "$(echo "$t1 - $t0" | bc -l) $(echo "$out" | sed -n 's/^final: test RMSE \([0-9.]*\).*/\1/p')"
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
        seq_total=$(echo "$seq_total + $t" | bc -l)
        best_seq=$(echo "if ($rmse < $best_seq) $rmse else $best_seq" | bc -l)
    done
done
n=$(( ${#lrs[@]} * ${#regs[@]} ))
echo "backend $backend, --device-memory $budget, $epochs epochs, batch 512, sca, default dataset"
echo
echo "| run | wall s | × one setting | best test RMSE |"
echo "|---|---:|---:|---:|"
printf '| one setting (lr 0.01, reg 0.05) | %.2f | 1.00 | %s |\n' "$one" "$one_rmse"
printf '| %d settings in one run (--lr %s --reg %s) | %.2f | %.2f | %s |\n' "$n" "$lr_list" "$reg_list" "$grid" "$(echo "$grid / $one" | bc -l)" "$grid_rmse"
printf '| the same %d settings one after another | %.2f | %.2f | %.4f |\n' "$n" "$seq_total" "$(echo "$seq_total / $one" | bc -l)" "$best_seq"
