#!/usr/bin/env bash
# GPU check: versions, card bandwidth/matmul probe, GPU tests, kernel benchmarks, summary table.
#
#   bash benchmarks/gpu_check.sh OUTDIR        (from the repository root; installs nothing)
#
# Writes into OUTDIR: versions.txt, device.json, tests.log, bench_<step>.json/.log, summary.txt.
# Each step has its own time limit (40 + 110 + 100 + 200 s) so the whole script ends within 8 minutes.
# Exit status: 0 when every step passed, 1 otherwise; 2 on bad usage or no CUDA GPU.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check: cannot create $1" >&2; exit 2; }
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
unset TRITON_INTERPRET  # the real compiler, not the CPU interpreter
status=0

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); nothing to check" >&2
    exit 2
fi

echo "== versions" | tee "$OUT/versions.txt"
{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    python -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); print('card', torch.cuda.get_device_name())"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || echo "nvidia-smi unavailable"
} | tee -a "$OUT/versions.txt"

echo "== card probe (copy bandwidth, fp16 matmul)"
timeout 40 python - "$OUT/device.json" <<'EOF' || status=1
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

src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB
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

echo "== GPU tests (pytest -m gpu tests/)"
timeout 110 python -m pytest -m gpu tests/ -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_check: GPU tests failed or timed out (see tests.log)"; status=1; }

# Each benchmark step writes its own JSON, so a step cut off by its time limit loses only its own figures.
run_bench() {  # run_bench NAME LIMIT_S FILES...
    local name=$1 limit=$2
    shift 2
    echo "== benchmarks: $name"
    timeout "$limit" python -m pytest "$@" -q -p no:cacheprovider \
        --benchmark-json="$OUT/bench_$name.json" --benchmark-columns=median,iqr,rounds 2>&1 | tee "$OUT/bench_$name.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_check: $name benchmarks failed or timed out (see bench_$name.log)"; status=1; }
}
run_bench kernels 100 benchmarks/test_kernels*.py
run_bench throughput 200 benchmarks/test_throughput.py  # ViT-L 640 engines: AOTInductor compiles dominate

echo "== summary"
jsons=("$OUT"/bench_*.json)
if [ -e "${jsons[0]}" ]; then
    device_arg=()
    [ -f "$OUT/device.json" ] && device_arg=(--device "$OUT/device.json")
    python benchmarks/summarize.py "${jsons[@]}" "${device_arg[@]}" | tee "$OUT/summary.txt" || status=1
else
    echo "gpu_check: no benchmark JSON to summarise" | tee "$OUT/summary.txt"
    status=1
fi
echo "gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo some steps FAILED); outputs in $OUT"
exit $status
