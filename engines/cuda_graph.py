"""Replay an engine's forward as one CUDA graph at its main batch shape.

An AOTInductor package launches each of its hundreds of kernels from the host;
a captured CUDA graph launches them all at once, which matters when the GPU is
fast enough to wait on the host (the Shrunk model's 1/32 blocks are small).
The runner is captured on its first call at the main shape (the engine's
batch, or a dynamic engine's largest), which runs uncaptured and whose result
checks the first replay, from a buffer that held zeros while capturing: a
replay that does not match is never used. Other shapes run uncaptured, and a
capture that fails leaves the runner uncaptured, with a warning.
The graph keeps its own memory pool of one forward's activations.
"""
from __future__ import annotations

import threading
import warnings

import torch

REPLAY_RTOL = 1e-3  # a replay runs the captured kernels: it differs from the plain run by rounding at most


class GraphedRunner:
    """``runner(image) -> (class_logits, mask_logits)`` on CUDA, replayed as a CUDA graph at ``shape``.

    Calls are serialised: a graph reads and writes fixed buffers."""

    def __init__(self, runner, shape: tuple[int, ...]):
        self.runner = runner
        self.shape = tuple(shape)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None  # why capture was given up
        self._lock = threading.Lock()

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            if tuple(image.shape) != self.shape or self.failed:
                return self.runner(image)
            if self.graph is None:
                return self._capture(image)
            self._input.copy_(image)
            self.graph.replay()
            return tuple(t.clone() for t in self._outputs)

    def _capture(self, image: torch.Tensor):
        expected = self.runner(image)
        try:
            self._input = torch.zeros_like(image)
            side = torch.cuda.Stream(image.device)  # warm-up off the default stream, as capture runs
            side.wait_stream(torch.cuda.current_stream(image.device))
            with torch.cuda.stream(side):
                self.runner(self._input)
            torch.cuda.current_stream(image.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self.runner(self._input)
            self._input.copy_(image)
            graph.replay()
            check_replay(outputs, expected)
        except Exception as e:  # noqa: BLE001 - any failure: run uncaptured, as without graphs
            self.failed = f"{type(e).__name__}: {e}"
            self._input = None
            warnings.warn(f"CUDA graph capture failed, the engine runs without it: {self.failed}", stacklevel=3)
            return expected
        self.graph, self._outputs = graph, outputs
        return expected


def check_replay(got, expected) -> None:
    """Raise unless the replay's outputs are the plain run's up to rounding."""
    for name, a, b in zip(("class_logits", "mask_logits"), got, expected):
        err = (a.float() - b.float()).abs().max().item()
        bound = REPLAY_RTOL * (1 + b.float().abs().max().item())
        if not err <= bound:
            raise RuntimeError(f"the replayed graph's {name} differ from the plain run's by {err:.3g} (> {bound:.3g})")
