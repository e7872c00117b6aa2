#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md for one machine, in one invocation, so that
# a device lent for an hour (or a new laptop) gives the whole set of figures:
#
#   scripts/bench_device.sh OUTDIR [STAGE...]
#
# Stages (all by default, in this order):
#   devices  what wgpu finds (the adapter and driver every figure is for)
#   sweep    budgets 100%..1% x policies sca,lookahead on the default dataset,
#            on every backend in $BACKENDS (default vulkan,gl,cpu), with charts
#   scale    synthetic 1M and 10M ratings (50k x 20k, Zipf 1.05), 100% and 10%
#   batch    all-resident throughput against the batch size at 1M ratings
#   grid     8 settings in one run against one setting and against 8 runs
#            (scripts/bench_grid.sh), default dataset and 1M ratings
#   hogwild  test RMSE and speed of Hogwild against deterministic waves on the
#            GPU, by batch size and Hogwild width ($WIDTHS, default
#            "step auto 16 256"), with the sequential CPU reference beside
#   race     LIBMF against the CPU backend and the GPU backends at 1M and 10M
#            ratings, 2 threads and all cores
#
# Each stage writes its exports and its terminal output (NAME.log) to OUTDIR
# as it goes, so a stage cut short keeps what it measured; a failing stage is
# reported and the next one runs. $ROWSTAGE_BIN and $RACE_BIN name built
# binaries to use instead of building them here (a machine without cargo).
# $GPU_BACKEND (default vulkan) is the GPU backend of the scale, batch, grid
# and race stages.
set -uo pipefail
out=${1:?usage: bench_device.sh OUTDIR [STAGE...]}
shift
stages=("$@")
[[ ${#stages[@]} -eq 0 ]] && stages=(devices sweep scale batch grid hogwild race)
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z ${ROWSTAGE_BIN:-} ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" || exit 1
    ROWSTAGE_BIN=$root/target/release/rowstage
fi
if [[ -z ${RACE_BIN:-} ]] && [[ " ${stages[*]} " == *" race "* ]]; then
    cargo build --release --quiet --manifest-path "$root/race/Cargo.toml" || exit 1
    RACE_BIN=$root/race/target/release/rowstage-race
fi
backends=${BACKENDS:-vulkan,gl,cpu}
gpu=${GPU_BACKEND:-vulkan}
cores=$(nproc)
mkdir -p "$out"
bin=$(realpath "$ROWSTAGE_BIN")
[[ -n ${RACE_BIN:-} ]] && RACE_BIN=$(realpath "$RACE_BIN")
failed=()

# Runs one stage's command, its output to the terminal and to OUTDIR/NAME.log.
step() {
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$out/$name.log"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/$name.log"
    [[ $rc -eq 0 ]] || failed+=("$name")
}

for stage in "${stages[@]}"; do
    case $stage in
    devices)
        {
            date -u +%FT%TZ
            uname -srm
            grep -m1 'model name' /proc/cpuinfo
            echo "cores: $cores"
            command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        } 2>&1 | tee "$out/machine.txt"
        step devices "$bin" devices
        ;;
    sweep)
        step sweep "$bin" bench --backend "$backends" --device-memory 100%,25%,10%,5%,1% --policy sca,lookahead \
            --export-markdown "$out/sweep.md" --export-json "$out/sweep.json" --plot "$out/charts"
        ;;
    scale)
        for n in 1000000 10000000; do
            step "scale-$n" "$bin" bench --synthetic "50000,20000,$n" --backend "$gpu,cpu" --device-memory 100%,10% \
                --policy sca --warmup 1 --epochs 2 --batch 8192 --export-json "$out/scale-$n.json" \
                --export-markdown "$out/scale-$n.md"
        done
        ;;
    batch)
        for b in 2048 8192 32768 131072; do
            step "batch-$b" "$bin" bench --synthetic 50000,20000,1000000 --backend "$gpu" --device-memory 100%,10% \
                --policy sca --warmup 1 --epochs 3 --batch "$b" --export-json "$out/batch-$b.json"
        done
        ;;
    grid)
        for budget in 100% 10%; do
            step "grid-default-$budget" env ROWSTAGE_BIN="$bin" bash "$root/scripts/bench_grid.sh" "$gpu" "$budget" 5
        done
        step grid-1m env ROWSTAGE_BIN="$bin" BATCH=8192 DATA_FLAGS="--synthetic 50000,20000,1000000" \
            bash "$root/scripts/bench_grid.sh" "$gpu" 100% 5
        ;;
    hogwild)
        for data in default 1m; do
            flags=(--epochs 5)
            batches=(512 2048)
            if [[ $data == 1m ]]; then
                flags+=(--synthetic 50000,20000,1000000)
                batches=(2048 8192)
            fi
            step "hogwild-$data-cpu-sequential" "$bin" train "${flags[@]}" --backend cpu --deterministic \
                --order shuffled --json "$out/hogwild-$data-cpu-sequential.json"
            for b in "${batches[@]}"; do
                for mode in ${WIDTHS:-step auto 16 256} deterministic; do
                    extra=(--hogwild-width "$mode")
                    [[ $mode == deterministic ]] && extra=(--deterministic)
                    step "hogwild-$data-$b-$mode" timeout 150 "$bin" train "${flags[@]}" --backend "$gpu" \
                        --device-memory 100% --batch "$b" "${extra[@]}" --json "$out/hogwild-$data-$b-$mode.json"
                done
            done
        done
        ;;
    race)
        for n in 1000000 10000000; do
            step "race-$n-2t" "$RACE_BIN" --ratings "$n" --threads 2 --repeat 3 --gpu "$gpu,gl" --gpu-epochs 10 \
                --gpu-modes hogwild,hogwild:step,deterministic --json "$out/race-$n-2t.json"
        done
        step "race-10000000-${cores}t" "$RACE_BIN" --ratings 10000000 --threads "$cores" --repeat 3 --gpu "" \
            --json "$out/race-10000000-${cores}t.json"
        ;;
    *)
        echo "unknown stage: $stage (devices, sweep, scale, batch, grid, hogwild, race)" >&2
        exit 2
        ;;
    esac
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "failed stages: ${failed[*]}" >&2
    exit 1
fi
