"""``--kernels auto``: compile the faster of our Triton kernels and the reference ops into an engine.

Which is faster depends on the card, the shapes and the kernels' state: on an H200 at ViT-L 640,
batch 8, the fused kernels lost to the SDPA-based reference ops (the Shrunk model ran at 0.84x eager
with them; benchmarks/RESULTS.md). So an aoti build on CUDA times the engine's own graph both ways,
on the engine's device and example batch, and keeps the Triton kernels only when they are clearly
faster. On a tie the plain ops win: Inductor can fuse the small ops around them, while our custom
ops stay opaque calls. Eager time is the proxy, since compiling both engines would double a build
of minutes.
"""
from __future__ import annotations

import statistics
from time import perf_counter

import torch

SETTINGS = ("reference", "triton")
MARGIN = 0.02  # the Triton kernels must save at least this fraction of the reference's time


def time_forward_ms(graph: torch.nn.Module, example: torch.Tensor, rounds: int = 5, warmup: int = 2) -> float:
    """Median wall time of one ``graph(example)`` in ms, the device's queue drained around each call;
    the warm-up calls are where Triton's autotuners run."""
    cuda = example.device.type == "cuda"
    times = []
    with torch.no_grad():
        for _ in range(warmup + rounds):
            if cuda:
                torch.cuda.synchronize(example.device)
            start = perf_counter()
            graph(example)
            if cuda:
                torch.cuda.synchronize(example.device)
            times.append((perf_counter() - start) * 1e3)
    return statistics.median(times[warmup:])


def pick(times_ms: dict[str, float]) -> str:
    """``"triton"`` only when it beats the reference by :data:`MARGIN`."""
    return "triton" if times_ms["triton"] < (1.0 - MARGIN) * times_ms["reference"] else "reference"


def choose_kernels(graph: torch.nn.Module, example: torch.Tensor, log=print) -> tuple[str, dict[str, float]]:
    """Time ``graph`` (an ``engines.graph.LogitsGraph``) with each op setting, leave its model set to
    the faster and return that setting with the times (ms per forward). Triton kernels that fail to
    compile or run on this GPU leave the reference ops, and the log says why."""
    times_ms = {}
    for setting in SETTINGS:
        graph.model.set_kernels(setting)
        try:
            times_ms[setting] = time_forward_ms(graph, example)
        except Exception as e:  # Triton raises its own compile and resource errors
            if setting == "reference":
                raise
            graph.model.set_kernels("reference")
            log(f"kernels auto: reference (the Triton kernels failed on {example.device}: {type(e).__name__}: {e})")
            return "reference", times_ms
    choice = pick(times_ms)
    graph.model.set_kernels(choice)
    log(f"kernels auto: {choice} (one forward at batch {example.shape[0]} on {example.device}: "
        f"reference ops {times_ms['reference']:.2f} ms, Triton kernels {times_ms['triton']:.2f} ms; "
        f"the kernels go in when at least {MARGIN:.0%} faster)")
    return choice, times_ms
