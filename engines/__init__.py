"""Engine backends (``onnx``, ``aoti``, ``tensorrt``) behind one loader.

Every engine computes the same graph (``graph.LogitsGraph``): a normalised
fp32 image batch at the crop size in, ``(class_logits, mask_logits)`` fp32 out.
A backend module provides ``ARTIFACT`` (file name), ``check_available(device)``,
``default_device()``, ``export(graph, example, path, dynamic_batch=, max_batch=)``
(returns metadata to record), ``check_compatible(meta, path, device)`` and
``load(path, meta, device)`` (returns the raw callable). Backends import their
libraries lazily: ``import segvit_rt.engines`` needs none of them.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .cuda_graph import GraphedRunner
from .format import BACKENDS, FORMAT, EngineError, artifact_path, engine_folder, read_engine

__all__ = ["BACKENDS", "FORMAT", "Engine", "EngineError", "auto_backend", "backend_module", "load_engine", "read_engine"]


def backend_module(name: str):
    if name not in BACKENDS:
        raise EngineError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return importlib.import_module(f".{name}_backend", __name__)


def auto_backend(device=None) -> tuple[str, str]:
    """The backend ``--backend auto`` picks, and why: tensorrt if it imports and there is a GPU,
    else aoti on a GPU, else onnx on the CPU. ``device="cpu"`` asks for a CPU engine: onnx."""
    if device is not None and torch.device(device).type == "cpu":
        return "onnx", "a CPU engine was asked for: ONNX Runtime on the CPU"
    if device is not None and not torch.cuda.is_available():
        raise EngineError(f"a {device} engine was asked for, and torch sees no CUDA GPU: use the CPU (--device cpu)")
    if not torch.cuda.is_available():
        return "onnx", "no CUDA GPU: ONNX Runtime on the CPU"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "aoti", "CUDA GPU present, tensorrt does not import: AOTInductor"
    return "tensorrt", "CUDA GPU present and tensorrt imports"


class Engine:
    """A loaded engine: ``engine(image)`` -> ``(class_logits, mask_logits)``, fp32, on ``engine.device``.

    Takes any batch size: a static-batch engine gets its exact batch (the last
    chunk zero-padded, the padding's outputs dropped), a dynamic one chunks of
    at most ``max_batch`` and at least ``min_batch`` (zero-padded likewise).
    """

    def __init__(self, path: Path, meta: dict, runner, device: torch.device):
        self.path = path
        self.meta = meta
        self.device = device
        self.static_batch: int | None = meta["batch"]
        self.max_batch: int = meta["batch"] or meta["max_batch"]
        self.min_batch: int = meta.get("min_batch") or 1
        self.input_hw = tuple(meta["input_size"])
        self._runner = runner

    def __repr__(self) -> str:
        batch = self.static_batch or f"dynamic<= {self.max_batch}"
        graph = ", cuda_graph=True" if self.cuda_graph else ""
        return (f"Engine({self.path}, backend={self.meta['backend']}, precision={self.meta['precision']}, "
                f"batch={batch}, device={self.device}{graph})")

    @property
    def cuda_graph(self) -> bool:
        """Whether the engine's calls at its batch replay a CUDA graph (one that could not be
        captured, with a warning, makes this False)."""
        return isinstance(self._runner, GraphedRunner) and self._runner.failed is None

    def check_input(self, image: torch.Tensor) -> None:
        expected = (3, *self.input_hw)
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or tuple(image.shape[1:]) != expected:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"{self.path}: the engine takes normalised images [B, {', '.join(map(str, expected))}], got {got}")
        if image.dtype != torch.float32:
            raise TypeError(f"{self.path}: the engine takes float32 images, got {image.dtype}")

    def _check_outputs(self, cls: torch.Tensor, mask: torch.Tensor, batch: int) -> None:
        """The artifact's outputs must be what the record says (its class count names the labels), one
        per image sent (a package compiled for another batch may answer for fewer without an error)."""
        for name, got in zip(("class_logits", "mask_logits"), (cls, mask)):
            if got.shape[0] != batch:
                raise EngineError(f"{self.path}: the artifact gave {name} for {got.shape[0]} images when sent "
                                  f"{batch}: its record's batch does not match it; rebuild the engine")
            if list(got.shape[1:]) != self.meta["outputs"][name][1:]:
                raise EngineError(f"{self.path}: the artifact's {name} are {list(got.shape[1:])} per image, its "
                                  f"record says {self.meta['outputs'][name][1:]}: the record does not belong to "
                                  "this artifact; rebuild the engine")

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_input(image)
        image = image.to(self.device)
        n = image.shape[0]
        classes, masks = [], []
        for start in range(0, n, self.max_batch):
            chunk = image[start : start + self.max_batch]
            size = chunk.shape[0]
            run = self.static_batch or max(size, self.min_batch)
            if size < run:
                chunk = torch.cat([chunk, chunk.new_zeros(run - size, *chunk.shape[1:])])
            cls, mask = self._runner(chunk)
            self._check_outputs(cls, mask, run)
            classes.append(cls[:size])
            masks.append(mask[:size])
        return torch.cat(classes), torch.cat(masks)


def load_engine(directory, device=None, verify: bool = True, cuda_graph: bool | None = None) -> Engine:
    """Check and load an engine directory (or the one holding a file of it given instead: see
    ``format.engine_folder``); ``device`` defaults to the backend's choice
    (onnx: CUDA where ONNX Runtime has the provider, else CPU; aoti: the device it was compiled for).
    ``cuda_graph``: replay an aoti engine on CUDA as a CUDA graph at its batch (``cuda_graph.py``);
    None (default): wherever that is possible."""
    directory = engine_folder(directory).resolve()  # the Runtime pickles it: not relative to this folder
    meta = read_engine(directory, verify=verify)
    backend = backend_module(meta["backend"])
    if device is None:
        device = torch.device(meta["device"]) if meta["backend"] == "aoti" else backend.default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:  # torch lists every device type it knows
        raise EngineError(f"unknown device {device!r}: engines run on 'cpu' or 'cuda' (or 'cuda:N')") from e
    if device.type not in ("cpu", "cuda"):
        raise EngineError(f"engines run on cpu or cuda, not {device.type}")
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    path = artifact_path(directory, meta)
    backend.check_compatible(meta, path, device)
    graphable = meta["backend"] == "aoti" and device.type == "cuda"
    if cuda_graph and not graphable:
        raise EngineError(f"CUDA graphs replay aoti engines on CUDA only; this is a {meta['backend']} engine "
                          f"on {device}: load it with cuda_graph=False or None")
    options = {"cuda_graph": True} if graphable and cuda_graph is not False else {}
    return Engine(directory, meta, backend.load(path, meta, device, **options), device)
