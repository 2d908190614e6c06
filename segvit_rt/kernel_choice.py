"""``--kernels auto``: compile the faster of our Triton kernels and the reference ops into an engine.

Which is faster depends on the card, the shapes and the kernels' state: on an H200 at ViT-L 640,
batch 8, the fused kernels lost to the SDPA-based reference ops (the Shrunk model ran at 0.84x eager
with them, before its head stopped making two unused masks; benchmarks/RESULTS.md). So an aoti build on CUDA times eager forwards of the engine's own
graph both ways, on the engine's device, and keeps the Triton kernels only when they are at least
:data:`MARGIN` faster. On a tie the plain ops win: Inductor can fuse the small ops around them, while
our custom ops stay opaque calls, so eager timing if anything favours the kernels. Eager time is the
proxy because compiling both engines would double a build of minutes.
"""
from __future__ import annotations

import statistics
from time import perf_counter

import torch

from .engines.format import EngineError

SETTINGS = ("reference", "triton")
MARGIN = 0.02  # the Triton kernels must save at least this fraction of the reference's time
ROUNDS = 15
WARMUP = 2  # calls per setting before timing: Triton's autotuners run in the first
DYNAMIC_BATCH = 8  # a dynamic-batch engine is timed at this batch (or its largest, if smaller)
MAX_ERROR_CHARS = 500  # of a Triton error's first line kept in the log and engine.json (ptxas logs run long)


def time_call_ms(graph: torch.nn.Module, example: torch.Tensor) -> float:
    """Wall time of one ``graph(example)`` in ms, the device's queue drained before and after."""
    cuda = example.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(example.device)
    start = perf_counter()
    graph(example)
    if cuda:
        torch.cuda.synchronize(example.device)
    return (perf_counter() - start) * 1e3


def pick(times_ms: dict[str, float]) -> str:
    """``"triton"`` only when it beats the reference by :data:`MARGIN`."""
    return "triton" if times_ms["triton"] < (1.0 - MARGIN) * times_ms["reference"] else "reference"


def _check_device_usable(device: torch.device, error: Exception) -> None:
    """After a failed Triton run: a CUDA error such as an illegal address poisons the context, and
    the reference build would then fail far from the cause; say so here instead."""
    if device.type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
    except Exception as e:
        raise EngineError(f"the Triton kernels failed on {device} ({type(error).__name__}: {error}) and left the "
                          f"GPU unusable for this process ({e}); rebuild with --kernels reference") from error


def _short(text: str) -> str:
    line = text.splitlines()[0] if text else text
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS] + "…"


def choose_kernels(graph: torch.nn.Module, example: torch.Tensor, log=print) -> tuple[str, dict]:
    """Time ``graph`` (an ``engines.graph.LogitsGraph``) with each op setting, leave its model set to
    the faster and return that setting with a record for ``engine.json``: the median ms per forward
    of each setting (``times_ms``, over :data:`ROUNDS` interleaved rounds, so that clock changes
    reach both alike) and, where the Triton kernels failed to compile or run here, the error
    (``triton_error``), which leaves the reference ops."""
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    try:
        with torch.no_grad():
            for setting in SETTINGS:
                graph.model.set_kernels(setting)
                for _ in range(WARMUP):
                    graph(example)
            for i in range(ROUNDS):
                for setting in SETTINGS[:: 1 if i % 2 else -1]:
                    graph.model.set_kernels(setting)
                    times[setting].append(time_call_ms(graph, example))
    except Exception as e:  # Triton raises its own compile and resource errors
        if graph.model.kernels != "triton":
            raise
        graph.model.set_kernels("reference")
        _check_device_usable(example.device, e)
        error = _short(f"{type(e).__name__}: {e}")
        log(f"kernels auto: reference (the Triton kernels failed on {example.device}: {error})")
        return "reference", {"times_ms": {}, "triton_error": error}
    times_ms = {setting: statistics.median(t) for setting, t in times.items()}
    choice = pick(times_ms)
    graph.model.set_kernels(choice)
    log(f"kernels auto: {choice} (median of {ROUNDS} eager forwards at batch {example.shape[0]} on {example.device}: "
        f"reference ops {times_ms['reference']:.2f} ms, Triton kernels {times_ms['triton']:.2f} ms; "
        f"the kernels go in when at least {MARGIN:.0%} faster)")
    return choice, {"times_ms": times_ms}
