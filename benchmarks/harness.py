"""Helpers for the kernel benchmarks (pytest-benchmark).

Typical use inside a benchmark test::

    from benchmarks.harness import measure, pick

    shape = pick(cpu=dict(B=1, N=5), cuda=dict(B=8, N=150))
    measure(benchmark, lambda: op(x), group="op-fwd", name="fused", baseline="reference",
            bytes_moved=..., flops=...)

Each timed round calls ``fn`` ``calls_per_round`` times and then synchronises
CUDA once, so the round covers the GPU work without a per-call sync
(pytest-benchmark's own stats are per round). ``measure`` records into
``benchmark.extra_info`` the per-call median (``median_ms``), achieved GB/s
and TFLOP/s from it, the variant name, and the speedup over each named
baseline of the same group measured earlier in the session (parametrize
baselines first). ``benchmarks/summarize.py`` prints these from the JSON and
recomputes speedups that could not be recorded.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"

# Per-call median seconds of every variant measured in this session, by (group, name).
_MEDIANS: dict[tuple[str, str], float] = {}


def pick(*, cpu, cuda):
    """``cuda`` on a GPU run (real shapes), ``cpu`` otherwise (tiny shapes that keep the interpreter quick)."""
    return cuda if ON_CUDA else cpu


def synchronized(fn: Callable[[], object], calls: int = 1) -> Callable[[], object]:
    """A function that calls ``fn`` ``calls`` times, then waits for the GPU work they queued."""

    def run():
        for _ in range(calls):
            result = fn()
        if ON_CUDA:
            torch.cuda.synchronize()
        return result

    return run


def measure(
    benchmark,
    fn: Callable[[], object],
    *,
    group: str,
    name: str,
    bytes_moved: float,
    flops: float,
    baseline: str | Sequence[str] | None = None,
    rounds: int | None = None,
    warmup_rounds: int | None = None,
    calls_per_round: int | None = None,
):
    """Benchmark ``fn`` and record throughput and speedups in ``benchmark.extra_info``.

    ``bytes_moved`` counts the compulsory traffic of one call (each input read
    once, each output written once); ``flops`` its useful floating-point
    operations. ``baseline``: the variant name(s) of the same group to compare
    against. Returns ``fn``'s last result.
    """
    rounds = rounds or (30 if ON_CUDA else 3)
    warmup_rounds = warmup_rounds if warmup_rounds is not None else (3 if ON_CUDA else 1)
    calls = calls_per_round or (10 if ON_CUDA else 1)
    baselines = [baseline] if isinstance(baseline, str) else list(baseline or [])
    benchmark.group = group
    info = benchmark.extra_info
    info.update(
        variant=name, device=device_name(), bytes=float(bytes_moved), flops=float(flops), calls_per_round=calls
    )
    if baselines:
        info["baseline"] = baselines[0]

    try:
        result = benchmark.pedantic(synchronized(fn, calls), rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    except BaseException:  # a timeout or interrupt too: pytest-benchmark marks only Exceptions, and a
        benchmark.has_error = True  # stats-less entry would stop it from writing any of the run's JSON
        raise

    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: the function ran once, nothing was timed
        return result
    median = stats.stats.median / calls
    _MEDIANS[(group, name)] = median
    info["median_ms"] = median * 1e3
    info["gbps"] = bytes_moved / median / 1e9
    info["tflops"] = flops / median / 1e12
    speedups = {b: _MEDIANS[(group, b)] / median for b in baselines if (group, b) in _MEDIANS}
    if speedups:
        info["speedup_vs"] = speedups
    return result


def peak_extra_bytes(fn):
    """(peak bytes allocated while ``fn`` runs, beyond what was live before; how it was measured)."""
    if ON_CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated delta"
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage  # allocations minus frees of the op itself
        peak = max(peak, live)
    method = "torch.profiler CPU allocator, op granularity (the Triton interpreter's numpy buffers not included)"
    return peak, method


def assert_near(got: torch.Tensor, want: torch.Tensor, rel: float = 0.05) -> None:
    """A timed variant computes what its baseline does: max |got - want| within ``rel`` of max |want|
    (loose enough for fp16 variants at real shapes, tight enough to catch a wrong result)."""
    err = (got.float() - want.float()).abs().max().item()
    bound = rel * want.float().abs().max().item() + 1e-3
    assert err <= bound, f"max |difference| {err:.3g} > {bound:.3g}"


def device_name() -> str:
    """The card's name, or ``cpu`` (where the Triton kernels run through the interpreter)."""
    return torch.cuda.get_device_name() if ON_CUDA else "cpu"


def tensor_bytes(*tensors) -> int:
    """Total bytes of the given tensors (``None`` entries are skipped)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
