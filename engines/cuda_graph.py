"""Replay an engine's forward as one CUDA graph at its main batch shape.

An AOTInductor package launches each of its hundreds of kernels from the host;
a captured CUDA graph launches them all at once, which matters when the GPU is
fast enough to wait on the host (the Shrunk model's 1/32 blocks are small).
The runner is captured on its first call at the main shape (the engine's
batch, or a dynamic engine's largest), which runs uncaptured and whose result
checks the first replay, from a buffer that held zeros while capturing: a
replay that does not match is never used. Other shapes run uncaptured. A
capture that fails turns graphs off for the whole process, with a warning:
a failed capture can leave PyTorch's allocator state behind (torch < 2.12),
so it is not tried again.
The graph keeps its own memory pool of one forward's activations.
"""
from __future__ import annotations

import threading
import warnings

import torch

REPLAY_RTOL = 1e-3  # a replay runs the captured kernels: it differs from the plain run by rounding at most
_process_failure: str | None = None  # why a capture failed in this process: none is tried after it


class GraphedRunner:
    """``runner(image) -> (class_logits, mask_logits)`` on CUDA, replayed as a CUDA graph at ``shape``.

    Calls are serialised, also across CUDA streams (a graph reads and writes fixed buffers): each
    call's stream waits for the previous call's copies out of them."""

    def __init__(self, runner, shape: tuple[int, ...]):
        self.runner = runner
        self.shape = tuple(shape)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None  # why this runner runs uncaptured
        self._lock = threading.Lock()
        self._done: torch.cuda.Event | None = None  # recorded after the last replay's outputs were copied

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The buffers are updated in place by every call: no inference tensors (nor grad, which
        # inference_mode(False) turns back on)
        with self._lock, torch.inference_mode(False), torch.no_grad():
            if tuple(image.shape) != self.shape or self.failed or _process_failure:
                self.failed = self.failed or _process_failure
                return self.runner(image)
            if self.graph is None:
                return self._capture(image)
            stream = torch.cuda.current_stream(image.device)
            stream.wait_event(self._done)
            self._input.copy_(image)
            self.graph.replay()
            outputs = tuple(t.clone() for t in self._outputs)
            self._done.record(stream)
            return outputs

    def _capture(self, image: torch.Tensor):
        global _process_failure
        expected = self.runner(image)
        caller = None
        try:
            caller = torch.cuda.current_stream(image.device)
            with torch.cuda.device(image.device):
                self._input = torch.zeros_like(image)
                side = torch.cuda.Stream(image.device)  # warm-up and capture off the caller's stream
                side.wait_stream(caller)
                with torch.cuda.stream(side):
                    self.runner(self._input)
                caller.wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                    outputs = self.runner(self._input)
                self._input.copy_(image)
                graph.replay()
                check_replay(outputs, expected)
        except Exception as e:  # noqa: BLE001 - any failure: run uncaptured, as without graphs
            if caller is not None:
                torch.cuda.set_stream(caller)  # a capture that raised may leave its stream current
            self.failed = _process_failure = f"{type(e).__name__}: {e}"
            self._input = None
            warnings.warn(f"CUDA graph capture failed, engines in this process run without graphs: {self.failed}",
                          stacklevel=3)
            return expected
        self.graph, self._outputs = graph, outputs
        self._done = torch.cuda.Event()
        self._done.record(caller)
        return expected


def check_replay(got, expected) -> None:
    """Raise unless the replay's outputs are the plain run's up to rounding."""
    for name, a, b in zip(("class_logits", "mask_logits"), got, expected):
        err = (a.float() - b.float()).abs().max().item()
        bound = REPLAY_RTOL * (1 + b.float().abs().max().item())
        if not err <= bound:
            raise RuntimeError(f"the replayed graph's {name} differ from the plain run's by {err:.3g} (> {bound:.3g})")
