#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md for a lent machine, in one invocation of
# well under 8 minutes, from binaries built elsewhere (it builds nothing):
#
#   ROWSTAGE_BIN=path/to/rowstage [RACE_BIN=path/to/rowstage-race] \
#       scripts/bench_device.sh OUTDIR [STAGE...]
#
# Default stages, in this order (not yet run on a lent machine as a whole;
# estimated at 5-6 minutes on an H100 or H200 machine, each command capped,
# the whole run by BENCH_SECONDS):
#   devices  the machine, the driver and what wgpu finds
#   engine   10M synthetic ratings (50k x 20k, rank 32): the GPU backend
#            ($GPU_BACKEND, default vulkan) all-resident and at 10%, the noop
#            backend (the host's ceiling) at both, and the CPU backend on all
#            cores, in one sweep: ratings/s, host and device seconds, the
#            bound, the kernels' bandwidth against the device's copy
#            bandwidth; then the order chosen for 10% (blocked:12:1:3) on
#            the GPU and the noop backend, 2 epochs each
#   accuracy the default dataset, 25 epochs: the GPU's default schedule
#            (the blocked order), deterministic, Hogwild (--order shuffled),
#            and the sequential CPU reference (test RMSE)
#   schedules 10M ratings all-resident, 3 epochs each: the default (blocked,
#            its bins, in tiles: a dispatch per tile shift), the plain rounds
#            (blocked:128:auto:1, a dispatch per round, what tiles replaced),
#            blocked at 64/256/1024 bins, at 256 bins with 16 and
#            8 sweeps (what fewer sweeps buy: BENCHMARKS.md, "Sweeps and
#            accuracy at 10M"), Hogwild at the auto
#            width and the whole batch (the fastest racing schedule), and
#            deterministic waves of the shuffled order: the deterministic
#            cost against the fastest racing schedule
#   torch    the PyTorch peer (scripts/torch_mf.py: biased MF, sparse
#            embeddings, SGD) on the same 10M split, 10 epochs, on the GPU
# Optional stages (name them): sweep (budgets 100%..1% x sca,lookahead on the
# default dataset), race (LIBMF against rowstage at 10M ratings; needs
# RACE_BIN).
#
# Each stage writes its exports and its terminal output (NAME.log) into a
# work folder, and after every stage the whole folder is packed into
# OUTDIR/bench.tgz (the device tool brings back at most 8 files from $OUT),
# beside OUTDIR/machine.txt and OUTDIR/engine.md for a first look; a stage
# cut short keeps what the stages before it measured, and a failing stage is
# reported and the next one runs. Where OUTDIR/../.gl holds the
# Vulkan/EGL loader packages (see the device tool's README), they are
# unpacked first.
set -uo pipefail
out=${1:?usage: ROWSTAGE_BIN=... bench_device.sh OUTDIR [STAGE...]}
shift
stages=("$@")
[[ ${#stages[@]} -eq 0 ]] && stages=(devices engine schedules accuracy torch)
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z ${ROWSTAGE_BIN:-} || ! -x ${ROWSTAGE_BIN} ]]; then
    echo "bench_device.sh: set ROWSTAGE_BIN to a built rowstage (this script builds nothing)" >&2
    exit 2
fi
if compgen -G "$root/.gl/*.deb" >/dev/null && ! ldconfig -p | grep -q libvulkan; then
    for f in "$root"/.gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
gpu=${GPU_BACKEND:-vulkan}
# The large synthetic set of the engine, schedules and torch stages (smaller
# only to try the script out on a machine without a GPU).
big_data=${BENCH_DATA:-50000,20000,10000000}
cores=$(nproc)
mkdir -p "$out"
out=$(realpath "$out")
dest=$out
# Everything is written here and packed into $dest after each stage.
out=${BENCH_WORK:-$(mktemp -d)}
mkdir -p "$out"
pack() {
    tar czf "$dest/bench.tgz.part" -C "$out" . && mv "$dest/bench.tgz.part" "$dest/bench.tgz"
    for f in machine.txt engine.md; do
        [[ -f $out/$f ]] && cp "$out/$f" "$dest/$f"
    done
}
bin=$(realpath "$ROWSTAGE_BIN")
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
failed=()

# The whole run ends within BENCH_SECONDS (default 450: a device call is
# capped at 600 s, machine start and transfers apart); a step gets the
# smaller of its own limit and what is left, and is skipped, said so in its
# log, when under 10 s are left.
deadline=$((SECONDS + ${BENCH_SECONDS:-450}))

# Runs one stage's command under a time limit, its output to the terminal
# and to OUTDIR/NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((deadline - SECONDS))
    if ((left < 10)); then
        echo "== $name: skipped, ${left} s left of BENCH_SECONDS" | tee -a "$out/$name.log"
        failed+=("$name")
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name: $*" | tee -a "$out/$name.log"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.log"
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
            "$bin" --version
        } 2>&1 | tee "$out/machine.txt"
        step devices 60 "$bin" devices
        ;;
    engine)
        step engine 300 "$bin" bench --synthetic "$big_data" --backend "$gpu,noop,cpu" \
            --device-memory 100%,10% --policy sca --warmup 1 --epochs 3 --threads "$cores" \
            --export-json "$out/engine.json" --export-markdown "$out/engine.md"
        # An order chosen for the 10% budget (few large blocks, one sweep:
        # BENCHMARKS.md, "What a 10% budget can reach"): the host's ceiling
        # beside what the device makes of one worker a step.
        for b in "$gpu" noop; do
            step "engine-budget-order-$b" 60 "$bin" train --synthetic "$big_data" --backend "$b" \
                --device-memory 10% --order blocked:12:1:3 --epochs 2 --json "$out/engine-budget-order-$b.json"
        done
        ;;
    accuracy)
        step accuracy-cpu-sequential 120 "$bin" train --backend cpu --deterministic --order shuffled \
            --json "$out/accuracy-cpu-sequential.json"
        step accuracy-gpu-default 120 "$bin" train --backend "$gpu" --json "$out/accuracy-gpu-default.json"
        step accuracy-gpu-deterministic 150 "$bin" train --backend "$gpu" --deterministic \
            --json "$out/accuracy-gpu-deterministic.json"
        step accuracy-gpu-hogwild 120 "$bin" train --backend "$gpu" --order shuffled \
            --json "$out/accuracy-gpu-hogwild.json"
        ;;
    schedules)
        big=(--synthetic "$big_data" --backend "$gpu" --device-memory 100% --epochs 3)
        for s in default blocked:128:auto:1 blocked:64 blocked:256 blocked:1024 blocked:256:16 blocked:256:8 shuffled \
            shuffled-step \
            shuffled-deterministic; do
            case $s in
            default) flags=() ;;
            shuffled-step) flags=(--order shuffled --hogwild-width step) ;;
            shuffled-deterministic) flags=(--order shuffled --deterministic) ;;
            *) flags=(--order "$s") ;;
            esac
            name=schedule-${s//:/-}
            step "$name" 90 "$bin" train "${big[@]}" "${flags[@]}" --json "$out/$name.json"
        done
        ;;
    torch)
        step torch-split 120 "$bin" split --synthetic "$big_data" --out "$out/split10m"
        step torch 240 python3 "$root/scripts/torch_mf.py" --train "$out/split10m/train.tsv" \
            --test "$out/split10m/test.tsv" --epochs 10 --device "${TORCH_DEVICE:-cuda}" --json "$out/torch.json"
        rm -rf "$out/split10m"
        ;;
    sweep)
        step sweep 300 "$bin" bench --backend "$gpu,cpu" --device-memory 100%,25%,10%,5%,1% \
            --policy sca,lookahead --export-markdown "$out/sweep.md" --export-json "$out/sweep.json"
        ;;
    race)
        if [[ -z ${RACE_BIN:-} ]]; then
            echo "race: set RACE_BIN to a built rowstage-race" >&2
            failed+=(race)
            continue
        fi
        step race 300 "$(realpath "$RACE_BIN")" --ratings 10000000 --threads "$cores" --repeat 2 --gpu "$gpu" \
            --gpu-epochs 10 --gpu-modes hogwild,deterministic --json "$out/race.json"
        ;;
    *)
        echo "unknown stage: $stage (devices, engine, schedules, accuracy, torch, sweep, race)" >&2
        exit 2
        ;;
    esac
    pack
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "failed stages: ${failed[*]}" >&2
    exit 1
fi
