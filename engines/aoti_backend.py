"""AOTInductor backend: ``torch.export`` then ``torch._inductor.aoti_compile_and_package`` into a ``.pt2``.

On CUDA the model is exported with our Triton kernels (``--kernels triton``, or
``auto`` when they time faster, see ``segvit_rt.kernel_choice``) or the plain
ops: our fused ops are ``torch.library.triton_op`` custom ops, which
``torch.export`` keeps as single nodes and Inductor compiles into the package. On the CPU the reference ops are
exported (fp32 only) and Inductor compiles C++ (a C++ compiler is needed).

A package runs only on the device type it was compiled for, and only in the
torch release that built it (AOTInductor has no stable ABI across releases):
both are recorded and checked before loading.

A dynamic batch is exported as ``Dim("batch", min=2)``, as PyTorch's AOTInductor
tutorial does: a size-1 dim is special-cased by the compiler (0/1
specialization), so the package never sees batch 1; ``Engine`` pads a
single image to two (``min_batch`` in the engine's metadata).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

from .format import EngineError, check_compute_capability, major_minor
from .graph import quiet_export

ARTIFACT = "model.pt2"
MIN_BATCH = 2  # smallest batch of a dynamic-batch package


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def check_available(device: torch.device) -> None:
    if _compiler() is None:  # the package's wrapper is C++ on either device
        raise EngineError("the aoti backend compiles C++: install g++ (or set CXX)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("a CUDA aoti engine needs a CUDA GPU, and torch sees none")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_dims(dynamic_batch: bool, max_batch: int):
    """``dynamic_shapes`` for the export: ``MIN_BATCH..max_batch``, or none (a fixed batch of
    ``MIN_BATCH``) when that range holds one size, which ``torch.export`` refuses as a ``Dim``."""
    if not dynamic_batch or max_batch <= MIN_BATCH:
        return None
    return ({0: torch.export.Dim("batch", min=MIN_BATCH, max=max_batch)},)


def export(graph: torch.nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool, max_batch: int) -> dict:
    import torch._inductor

    with torch.no_grad(), quiet_export(), _tuned_kernels(graph, example):
        program = torch.export.export(graph, (example,), dynamic_shapes=batch_dims(dynamic_batch, max_batch))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    meta = {"device": example.device.type, "min_batch": MIN_BATCH if dynamic_batch else None}
    if example.device.type == "cuda":  # Inductor's kernels are compiled for this architecture
        meta["gpu"] = torch.cuda.get_device_name(example.device)
        meta["compute_capability"] = list(torch.cuda.get_device_capability(example.device))
    return meta


def _tuned_kernels(graph, example: torch.Tensor):
    """On CUDA with our kernels in ``graph`` (a ``graph.LogitsGraph``), run it once so that they tune
    at the engine's shapes, and compile with only the configs they chose
    (``kernels.tuned_configs_only``): AOTInductor would otherwise tune each kernel's whole list at
    every launch site while compiling, and a ViT-L build with the kernels outran 60 s on an H200
    (benchmarks/RESULTS.md; how much this saves is not measured yet)."""
    if example.device.type != "cuda" or graph.model.kernels != "triton":  # nothing to tune
        return contextlib.nullcontext()
    from segvit_rt.kernels import tuned_configs_only

    with torch.no_grad():
        graph(example)
    return tuned_configs_only()


def check_compatible(meta: dict, path: Path, device: torch.device) -> None:
    built = meta.get("versions", {}).get("torch")
    if major_minor(built) != major_minor(torch.__version__):
        raise EngineError(
            f"{path} was compiled by torch {built} and this is torch {torch.__version__}: AOTInductor packages "
            "load only in the torch release that built them; rebuild the engine with python -m segvit_rt.build"
        )
    if meta.get("device") != device.type:
        raise EngineError(f"{path} was compiled for {meta.get('device')}, it cannot run on {device}")
    check_available(device)
    if device.type == "cuda" and "compute_capability" in meta:  # packages of older builds lack it
        check_compute_capability(meta, path, device)


def load(path: Path, meta: dict, device: torch.device, cuda_graph: bool = False):
    """The package's runner; with ``cuda_graph`` (CUDA only) replayed as a CUDA graph at the engine's
    batch (``cuda_graph.GraphedRunner``), for which AOTInductor's runtime must run single-threaded: its
    default one synchronises its model instances in ways a stream capture refuses."""
    import torch._inductor

    try:
        index = -1 if device.index is None else device.index  # -1: the current device
        runner = torch._inductor.aoti_load_package(str(path), run_single_threaded=cuda_graph, device_index=index)
    except Exception as e:  # the loader raises RuntimeError or C++ errors alike
        raise EngineError(f"cannot load the AOTInductor package {path}: {e}") from e

    def run(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, masks = runner(image.contiguous())
        return cls, masks

    if not cuda_graph:
        return run
    from .cuda_graph import GraphedRunner

    return GraphedRunner(run, (meta["batch"] or meta["max_batch"], 3, *meta["input_size"]))
