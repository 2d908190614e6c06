#!/usr/bin/env bash
# GPU check: versions, card probe, GPU tests, kernel and model benchmarks, summary table and chart.
#
#   bash benchmarks/gpu_check.sh OUTDIR [STEP...]     (from anywhere; installs nothing)
#
# STEP: probe kernel-bench throughput-eager throughput-aoti-shrunk throughput-aoti-shrunk-reference
# gpu-tests (the default, in that order, most needed first), and throughput-aoti-full
# throughput-aoti-full-reference profile aoti-tests config-sweep kernel-tests (by name only).
#
# Time: each step has its own limit, 20+90+50+180+160+40 = 540 s by default, and 10 s more to stop
# after its interrupt (gpu-tests' xdist workers need them); the summary, a few seconds, is written after
# each bench step, outside the limits. That comes to about 570 s of a 600 s call when steps end within
# their limits (600 s if every step also used its 10 s stop allowance: gpu-tests, last and partial
# anyway, would then lose its end). Limits come from two
# runs on an H200 (2026-11-28, benchmarks/RESULTS.md): kernel-bench autotunes from cold caches on a
# fresh machine (the three ViT-L fused ATM benchmarks took 13 s each; 75 s ended it in the fused QD
# benchmark; KERNEL_BENCH_LIMIT gives it more, at the cost of the later steps); the eager throughput
# step took 30 s and its start-up; a ViT-L aoti test after an eager one (build, parity check, load,
# timing) took about 110 s on warm compile caches and more than about 130 s on cold ones (the first
# build of a machine); alone in its step, a test also makes the model and counts its FLOPs (11-14 s).
# The aoti engine builds have steps of their own, the Shrunk ones first: a slow or crashing build
# loses only itself. The Triton-kernel step also times eager on its variant, so that speedup is
# measured in one process; the reference-op steps take eager from the other steps of the run
# (summarize marks such ratios). gpu-tests runs the `--kernels auto` timing test first, then the rest.
# The by-name steps have limits for a second call: throughput-aoti-full 150 s,
# throughput-aoti-full-reference 160 s, profile 60 s, aoti-tests 300 s (with the auto aoti build
# test), config-sweep 240 s, kernel-tests 120 s. `bash benchmarks/gpu_check.sh OUT2
# throughput-aoti-full-reference profile` (220 s of limits, about 235 s) is what a 900 s device budget
# leaves after the default, if issued at once (a machine stays warm 30 s; a fresh one costs minutes
# and starts from cold caches). `python benchmarks/summarize.py OUT/bench_*.json OUT2/bench_*.json
# --device OUT/device.json` then judges both calls' rows together (e.g. Shrunk/full of the
# reference-op engines).
#
# Writes into OUTDIR: log.txt (versions and every step's output), device.json, a bench_*.json per
# bench step (bench_kernels.json, bench_throughput_eager.json, bench_throughput_aoti_shrunk.json, ...),
# summary.txt, throughput.png
# (summarize.py adds the goals met or not, and ratios across the files where a run lacks one, marked).
#
# pytest-benchmark writes its JSON only when pytest exits: a step's limit interrupts pytest (SIGINT),
# so that it still writes what was measured. In the bench steps each test has a limit of its own too
# (pytest-timeout, where installed), so a stuck build fails alone; the partial steps (tests run as far
# as time allows) have none, so a slow test there ends the step as "not run to the end", not as a
# failure (also when pytest had to be killed 10 s after its interrupt). summary.txt and throughput.png
# are rewritten after every bench step.
# Exit status: 0 when every step passed, 1 otherwise; 2 on bad usage (an unknown step, before any work) or
# no CUDA GPU.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR [STEP...]" >&2
    exit 2
fi
KNOWN=" probe kernel-bench throughput-eager throughput-aoti-shrunk throughput-aoti-shrunk-reference gpu-tests
throughput-aoti-full throughput-aoti-full-reference profile aoti-tests config-sweep kernel-tests "
for s in "${@:2}"; do
    [[ $KNOWN == *[[:space:]]"$s"[[:space:]]* ]] || { echo "gpu_check: unknown step $s (steps:$(printf ' %s' $KNOWN))" >&2; exit 2; }
done
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_check: torch does not import in $PY; nothing to check" >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to torch ($PY: torch.cuda.is_available() is False); nothing to check" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check: cannot create $1" >&2; exit 2; }
shift
STEPS=${*:-probe kernel-bench throughput-eager throughput-aoti-shrunk throughput-aoti-shrunk-reference gpu-tests}
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET            # the real compiler, not the CPU interpreter
LOG="$OUT/log.txt"
status=0


has() { "$PY" -c "import $1" 2>/dev/null; }
PARALLEL=(); has xdist && PARALLEL=(-n 4)
per_test_limit() { has pytest_timeout && echo "--timeout=$1"; }

echo "== versions" | tee -a "$LOG"
{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); print('card', torch.cuda.get_device_name())"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || echo "nvidia-smi unavailable"
    echo "steps: $STEPS"
} 2>&1 | tee -a "$LOG"

PARTIAL_STEPS="gpu-tests aoti-tests config-sweep kernel-tests"  # run as far as their time allows: not a failure
incomplete=""

step() {  # step NAME LIMIT_S COMMAND...: run one step, its output appended to the log
    local name=$1 limit=$2 rc out
    shift 2
    out=$(mktemp)
    echo "== $name (limit ${limit}s)" | tee -a "$LOG"
    # SIGINT, not SIGTERM: pytest then ends as an interrupted session and pytest-benchmark still
    # writes the JSON of what it measured (a killed pytest leaves an empty file).
    timeout -s INT -k 10 "$limit" bash -c '"$@"' step "$@" 2>&1 | tee "$out" | tee -a "$LOG"  # functions run in a child bash
    rc=${PIPESTATUS[0]}
    # 124: stopped by the interrupt; 137: killed 10 s after it (pytest-xdist's workers may not stop)
    if { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && [[ " $PARTIAL_STEPS " == *" $name "* ]]; then
        echo "gpu_check: step $name stopped at its time limit (a partial run; its failures, if any, count)" | tee -a "$LOG"
        incomplete="$incomplete $name"
        grep -qE "^(FAILED|ERROR) " "$out" && status=1  # pytest's summary lines, not captured output
    elif [ "$rc" -ne 0 ]; then
        echo "gpu_check: step $name failed or timed out" | tee -a "$LOG"
        status=1
    fi
    rm -f "$out"
    [[ $name == *bench* || $name == throughput* ]] && { summarize || true; }  # up to date if the call ends early
}

probe() {
    "$PY" - "$OUT/device.json" <<'EOF'
import json, sys
import torch

def time_ms(fn, iters=20):
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters

src = torch.randint(0, 255, (1 << 30,), dtype=torch.uint8, device="cuda")  # 1 GiB, not zeros
dst = torch.empty_like(src)
copy_gbps = 2 * src.numel() / (time_ms(lambda: dst.copy_(src)) * 1e-3) / 1e9  # read + write
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.float16)
b = torch.randn(n, n, device="cuda", dtype=torch.float16)
matmul_tflops = 2 * n**3 / (time_ms(lambda: a @ b) * 1e-3) / 1e12
info = {"name": torch.cuda.get_device_name(), "copy_gbps": copy_gbps, "matmul_tflops": matmul_tflops}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(f"copy {copy_gbps:.0f} GB/s, fp16 matmul {matmul_tflops:.0f} TFLOP/s")
EOF
}

pytest_run() {  # pytest_run ARGS...: verbose, a summary of every outcome, the slowest tests
    "$PY" -m pytest -p no:cacheprovider -v -rA --durations=15 "$@"
}

summarize() {  # the table (summary.txt) and chart of every benchmark JSON so far
    local jsons=("$OUT"/bench_*.json) device_arg=()
    [ -e "${jsons[0]}" ] || { echo "gpu_check: no benchmark JSON to summarise" > "$OUT/summary.txt"; return 1; }
    [ -f "$OUT/device.json" ] && device_arg=(--device "$OUT/device.json")
    "$PY" benchmarks/summarize.py "${jsons[@]}" "${device_arg[@]}" --chart "$OUT/throughput.png" > "$OUT/summary.txt" 2>&1
}

bench() {  # bench NAME PER_TEST_LIMIT FILES/ARGS...: timed serially; autotuning shared by the bench steps only
    local name=$1 limit=$2
    shift 2
    TRITON_CACHE_AUTOTUNING=1 pytest_run $(per_test_limit "$limit") --benchmark-json="$OUT/bench_$name.json" \
        --benchmark-columns=median,iqr,rounds "$@"
}

export PY OUT
gpu_tests() {  # gpu_tests [XDIST ARGS...]: the -m gpu tests but the aoti ones, --kernels auto's first
    pytest_run -m gpu tests/test_kernel_choice.py
    local rc=$?
    [ "$rc" -eq 2 ] && return 2  # interrupted (the step's limit): no second session
    pytest_run "$@" -m gpu -k "not aoti" --ignore=tests/test_kernel_choice.py tests/ || return $?
    return "$rc"
}

export -f has per_test_limit probe pytest_run summarize bench gpu_tests

for s in $STEPS; do
    case $s in
        probe) step probe 20 probe ;;
        # The aoti engine tests (CUDA compiles, two in subprocesses) have their own step below.
        gpu-tests) step gpu-tests 40 gpu_tests "${PARALLEL[@]}" ;;
        kernel-bench) step kernel-bench "${KERNEL_BENCH_LIMIT:-90}" bench kernels 50 benchmarks/test_kernels.py benchmarks/test_kernels_qd.py benchmarks/test_kernels_postprocess.py benchmarks/test_labels_full_size.py ;;
        # Eager ViT-L (plain ops, and our Triton kernels), both variants, plus ONNX Runtime/TensorRT where present.
        throughput-eager) step throughput-eager 50 bench throughput_eager 40 benchmarks/test_throughput.py -k "not aoti" ;;
        # Eager again (plain ops, "not triton"): the aoti speedup over it from the same process; the engine
        # timed with its CUDA graph (aoti) and without (aoti-nograph). The first aoti build of a machine
        # compiles from cold caches: this step comes first and has the most time.
        throughput-aoti-shrunk) step throughput-aoti-shrunk 180 bench throughput_aoti_shrunk 160 benchmarks/test_throughput.py -k "shrunk and (aoti or eager) and not triton and not reference" ;;
        # The aoti engine with the reference ops (SDPA-based) instead of the Triton kernels.
        throughput-aoti-shrunk-reference) step throughput-aoti-shrunk-reference 160 bench throughput_aoti_shrunk_reference 150 benchmarks/test_throughput.py -k "shrunk-aoti-reference" ;;
        throughput-aoti-full) step throughput-aoti-full 150 bench throughput_aoti_full 130 benchmarks/test_throughput.py -k "full and (aoti or eager) and not triton and not reference" ;;
        throughput-aoti-full-reference) step throughput-aoti-full-reference 160 bench throughput_aoti_full_reference 150 benchmarks/test_throughput.py -k "full-aoti-reference" ;;
        # Where the CUDA time of one ViT-L forward goes, per kernel, eager with and without the Triton kernels.
        profile) step profile 60 env TRITON_CACHE_AUTOTUNING=1 "$PY" benchmarks/profile_model.py ;;
        aoti-tests) step aoti-tests 300 pytest_run -m gpu -k aoti tests/ ;;
        # Every autotune config of the kernels against the reference (the other tests see only the
        # winners), as many as fit.
        config-sweep) step config-sweep 240 pytest_run "${PARALLEL[@]}" tests/kernels/test_every_config.py ;;
        # The kernel tests without the gpu mark (tails, odd head counts, poisoned outputs, opcheck, export,
        # torch.compile) at small shapes, on CUDA: as many as fit. Not the sm_90 compile checks, which
        # need no GPU and run in CI.
        kernel-tests) step kernel-tests 120 pytest_run "${PARALLEL[@]}" -m "not gpu" --ignore=tests/kernels/test_every_config.py \
            --ignore=tests/kernels/test_kernels_compile.py tests/kernels ;;
        *) echo "gpu_check: unknown step $s" | tee -a "$LOG"; status=1 ;;
    esac
done

echo "== summary" | tee -a "$LOG"
if ! summarize; then
    [[ "$STEPS" == *bench* || "$STEPS" == *throughput* ]] && status=1
fi
tee -a "$LOG" < "$OUT/summary.txt"
verdict=$([ $status -eq 0 ] && echo "all steps passed" || echo "some steps FAILED")
[ -n "$incomplete" ] && verdict="$verdict (not run to the end, out of time:$incomplete)"
echo "gpu_check: $verdict; outputs in $OUT" | tee -a "$LOG"
exit $status
