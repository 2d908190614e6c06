"""ONNX backend: ``torch.onnx.export`` (dynamo exporter, opset 18) run by ONNX Runtime.

The graph is exported on the CPU: fp32, or fp16 throughout with fp32 input and
outputs cast at its edges (``graph.LogitsGraph``). ONNX Runtime runs it with the
CUDA provider where torch sees a GPU and onnxruntime has that provider (I/O
bound to torch CUDA tensors, no host copies), else with the CPU provider. An
fp16 graph also runs on the CPU provider (ONNX Runtime computes the ops it
has no fp16 CPU kernel for in fp32), correctly but without a speed-up: fp16
engines are meant for GPUs.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch

from .format import INPUT_NAME, OUTPUT_NAMES, EngineError, check_input_shape
from .graph import quiet_export

ARTIFACT = "model.onnx"
OPSET = 18
BUILD_NEEDS = ("onnx", "onnxscript", "onnxruntime")  # the exporter, its checker, the parity check
RUN_NEEDS = ("onnxruntime",)


def _import(modules) -> None:
    for name in modules:
        try:
            __import__(name)
        except ImportError as e:
            broken = f" (its dependency {e.name} does not import)" if e.name not in (None, name) else ""
            raise EngineError(f"the onnx backend needs {name}{broken}: pip install {' '.join(modules)} (the ONNX "
                              "extras, segvit_rt[onnx]; onnxruntime-gpu instead of onnxruntime for CUDA)") from e


def check_available(device: torch.device, modules=BUILD_NEEDS) -> None:
    """Building needs onnx, onnxscript and onnxruntime; running a built engine (``modules=RUN_NEEDS``)
    only onnxruntime, with its CUDA provider on a CUDA ``device``."""
    _import(modules)
    import onnxruntime as ort

    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("a CUDA onnx engine needs a CUDA GPU, and torch sees none: use the CPU (--device cpu)")
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise EngineError(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider: install onnxruntime-gpu, or use the CPU"
        )


def default_device() -> torch.device:
    """CUDA where torch sees a GPU and onnxruntime has its CUDA provider, else the CPU (also without
    onnxruntime: ``check_available`` then names what is missing)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return torch.device("cpu")

    cuda = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
    return torch.device("cuda" if cuda else "cpu")


@contextlib.contextmanager
def _quiet_exporter():
    """Silence what the exporter says about itself, none of it actionable here: a warning per
    torchvision op it cannot register, onnxscript's optimizer on every multi-output ``Split`` it
    leaves unfolded, and a deprecation inside torch's own pytree copying (torch 2.13)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with quiet_export():
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export(
    graph: torch.nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool, max_batch: int,
    translations: dict | None = None,
) -> dict:
    """Write ``graph`` to ``path`` as one self-contained ONNX file and run the full ONNX checker.
    ``translations``: ONNX forms of custom ops in the graph (``custom_translation_table``)."""
    import onnx

    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if dynamic_batch else None
    with _quiet_exporter():
        torch.onnx.export(
            graph, (example,), str(path), dynamo=True, opset_version=OPSET, verbose=False,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes, external_data=False, custom_translation_table=translations,
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise EngineError(f"the exported graph {path} fails onnx.checker: {e}") from e
    return {"opset": OPSET}


def check_compatible(meta: dict, path: Path, device: torch.device) -> None:
    check_available(device, RUN_NEEDS)


def load(path: Path, meta: dict, device: torch.device):
    """A callable ``image [B, 3, H, W] fp32 -> (class_logits, mask_logits)`` on ``device``."""
    import onnxruntime as ort

    if device.type == "cuda":
        options = {"device_id": device.index or 0}
        if meta["precision"] == "fp32":  # computes in fp32, as its parity check assumed: no TF32 (on by default)
            options["use_tf32"] = 0
        providers = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        settings = ort.SessionOptions()
        settings.log_severity_level = 3  # errors only: not its notes on fp16 ops it has no CPU kernel for
        session = ort.InferenceSession(str(path), sess_options=settings, providers=providers)
    except Exception as e:  # onnxruntime raises its own pybind exception types
        built = meta.get("versions", {}).get("onnxruntime")
        raise EngineError(
            f"onnxruntime {ort.__version__} cannot load {path} (opset {meta.get('opset')}, "
            f"built next to onnxruntime {built}): {e}"
        ) from e
    check_input_shape(meta, path, session.get_inputs()[0].shape)
    shapes = {o.name: list(o.shape[1:]) for o in session.get_outputs()}
    for name in OUTPUT_NAMES:  # the CUDA runner allocates outputs from the record: it must be the artifact's
        if shapes.get(name) != meta["outputs"][name][1:]:
            raise EngineError(f"{path} outputs {name} of {shapes.get(name)} per image, its record says "
                              f"{meta['outputs'][name][1:]}: the record does not belong to this artifact; rebuild")
    if device.type == "cuda":
        if session.get_providers()[0] != "CUDAExecutionProvider":  # ONNX Runtime falls back to the CPU silently
            raise EngineError(f"onnxruntime {ort.__version__} could not start its CUDA provider for {path} "
                              "(see its log above; often CUDA/cuDNN libraries of another version)")
        return _CudaRunner(session, device, meta["outputs"])
    return _cpu_runner(session)


def _cpu_runner(session):
    def run(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, masks = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.detach().cpu().contiguous().numpy()})
        return torch.from_numpy(cls), torch.from_numpy(masks)

    return run


class _CudaRunner:
    """Binds the input and preallocated outputs as torch CUDA memory (``IOBinding``): no host copies."""

    def __init__(self, session, device: torch.device, output_shapes: dict):
        self.session = session
        self.device = device
        self.output_shapes = output_shapes

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.contiguous()
        batch = image.shape[0]
        index = self.device.index or 0
        outs = {
            name: torch.empty([batch, *self.output_shapes[name][1:]], dtype=torch.float32, device=self.device)
            for name in OUTPUT_NAMES
        }
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(image.shape), image.data_ptr())
        for name, t in outs.items():
            binding.bind_output(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ONNX Runtime reads on its own stream
        self.session.run_with_iobinding(binding)
        return outs["class_logits"], outs["mask_logits"]
