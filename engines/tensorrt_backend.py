"""TensorRT backend: the typed ONNX graph parsed into a strongly-typed network, serialized as a plan.

Precision comes from the graph, not from builder flags: an fp16 engine is
exported as an fp16 ONNX graph (fp32 input and outputs cast at its edges) and
parsed into a ``STRONGLY_TYPED`` network, so every tensor keeps the exported
type. No precision flag is set: TensorRT 10 rejects precision flags on
strongly-typed networks and TensorRT 11 has no precision-lowering flags (FP16,
BF16, INT8 ... are gone; TF32 remains and is cleared for fp32 engines); every
network is strongly typed there, the creation flag is accepted and ignored, and
only passed where it exists. Inference binds torch CUDA tensors by address and
enqueues on a torch stream ordered with the caller's (``execute_async_v3``): no pycuda.

A plan runs only under the TensorRT version that built it and is tuned for the
GPU model it was built on (no hardware-compatibility level is asked for, which
would cost speed): another TensorRT version or compute capability is refused
before loading, another GPU model of the same capability is warned about.
"""
from __future__ import annotations

import functools
import hashlib
import sys
import threading
import warnings
from pathlib import Path

import torch

from . import onnx_backend, tensorrt_plugin
from .cuda_driver import driver_cuda_version
from .format import INPUT_NAME, OUTPUT_NAMES, EngineError, check_compute_capability, check_input_shape

ARTIFACT = "model.plan"
OPT_BATCH = 8  # the profile's optimum for dynamic batches: the runtime's sliding-window batch
_INSTALL_HINT = "install TensorRT's Python package (pip install tensorrt) on a machine with a CUDA GPU"


def _trt():
    try:
        import tensorrt
    except ImportError as e:
        raise EngineError(f"the tensorrt backend needs the tensorrt package, which does not import here: {_INSTALL_HINT}") from e
    return tensorrt


def check_available(device: torch.device) -> None:
    _trt()
    if device.type != "cuda" or not torch.cuda.is_available():
        raise EngineError("TensorRT engines need a CUDA GPU, and torch sees none here")


def default_device() -> torch.device:
    return torch.device("cuda")


@functools.cache
def _logger(trt):
    """One logger for the process (TensorRT warns when its runtimes get different ones). It prints
    warnings and errors to stderr, and keeps the errors: a failed build only returns None, and the
    reason (a plugin's own error, say) is in the log alone."""

    class RecordingLogger(trt.ILogger):
        shown = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR, trt.ILogger.Severity.WARNING)
        failures = shown[:2]

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in self.failures:
                self.errors.append(msg)
            if severity in self.shown:
                print(f"TensorRT {getattr(severity, 'name', severity)}: {msg}", file=sys.stderr)

    return RecordingLogger()


def _errors_since(logger, start: int) -> str:
    errors = logger.errors[start:]
    return f": {'; '.join(errors[-3:])}" if errors else " (see its log above)"


def check_plugin_available() -> None:
    """Raise unless the ATM plugin (our Triton kernel as a TensorRT AOT plugin) can be built here."""
    _trt()
    try:
        tensorrt_plugin.check_available()
    except ImportError as e:
        raise EngineError(f"the ATM TensorRT plugin needs TensorRT's tensorrt.plugin API: {e}") from e
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise EngineError("the ATM TensorRT plugin is our Triton kernel compiled to PTX at build time: install "
                          "triton, or build with --kernels reference") from e


def export(graph: torch.nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool, max_batch: int) -> dict:
    """Export the typed ONNX graph beside ``path``, build the plan from it, then drop the ONNX file.
    A graph exported with ``kernels="tensorrt_plugin"`` carries ATM plugin nodes: the plugin is
    registered first, and TensorRT embeds its PTX in the plan."""
    trt = _trt()
    translations = None
    meta = {  # the builder targets the current CUDA device
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": list(torch.cuda.get_device_capability()),
    }
    if getattr(graph.model, "kernels", None) == "tensorrt_plugin":
        check_plugin_available()
        tensorrt_plugin.register()
        translations = tensorrt_plugin.onnx_translations()
        meta["plugin_driver_cuda"] = driver_cuda_version()  # its PTX ISA is the newest this driver takes
    onnx_path = path.with_name("typed_graph.onnx")
    onnx_backend.export(graph, example, onnx_path, dynamic_batch=dynamic_batch, max_batch=max_batch,
                        translations=translations)
    try:
        plan = _build_plan(trt, onnx_path, example.shape, dynamic_batch, max_batch, graph.precision)
    finally:
        onnx_path.unlink(missing_ok=True)
    path.write_bytes(plan)
    return meta


def _build_plan(trt, onnx_path: Path, shape, dynamic_batch: bool, max_batch: int, precision: str) -> bytes:
    logger = _logger(trt)
    start = len(logger.errors)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):  # on by default: fp32 would not be fp32
        config.clear_flag(trt.BuilderFlag.TF32)
    _, c, h, w = shape
    batch = shape[0]
    if dynamic_batch:
        lo, opt, hi = 1, min(OPT_BATCH, max_batch), max_batch
    else:
        lo = opt = hi = batch
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (lo, c, h, w), (opt, c, h, w), (hi, c, h, w))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build the engine{_errors_since(logger, start)}")
    return bytes(plan)


def check_compatible(meta: dict, path: Path, device: torch.device) -> None:
    trt = _trt()
    check_available(device)
    built = meta.get("versions", {}).get("tensorrt")
    if built != trt.__version__:
        raise EngineError(
            f"{path} was built by TensorRT {built} and this is TensorRT {trt.__version__}: plans load only in "
            "the TensorRT version that built them; rebuild the engine with python -m segvit_rt.build"
        )
    check_compute_capability(meta, path, device)
    gpu = torch.cuda.get_device_name(device)
    if meta.get("gpu") and meta["gpu"] != gpu:
        warnings.warn(f"{path} was built on a {meta['gpu']} and runs on a {gpu}: TensorRT tunes a plan for the GPU "
                      "model it is built on, so it may run slower here (or not load); rebuild it here for the best",
                      stacklevel=2)
    if "plugin_driver_cuda" in meta:  # Triton is needed to build the plugin, not to load its plan
        check_plugin_driver(meta, path, driver_cuda_version())


def check_plugin_driver(meta: dict, path: Path, driver_cuda: str) -> None:
    """A plan with the ATM plugin embeds PTX that the driver compiles when the plan loads; its ISA
    was the newest the build machine's driver took, so an older driver would fail there."""
    built = meta["plugin_driver_cuda"]
    if tuple(map(int, driver_cuda.split("."))) < tuple(map(int, built.split("."))):
        raise EngineError(
            f"{path} embeds the ATM plugin as PTX for a CUDA {built} driver, and this machine's driver is "
            f"CUDA {driver_cuda}: update the driver, or rebuild the engine here"
        )


def load(path: Path, meta: dict, device: torch.device):
    trt = _trt()  # a plan with the ATM plugin embeds its PTX: loading it needs no plugin definition
    plan = path.read_bytes()
    if hashlib.sha256(plan).hexdigest() != meta["sha256"]:  # the bytes deserialized are the bytes checked
        raise EngineError(f"engine artifact {path} changed since its sha256 check; rebuild the engine")
    logger = _logger(trt)
    runtime = trt.Runtime(logger)
    with torch.cuda.device(device):
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(f"TensorRT cannot deserialize {path} (corrupt, or built for another setup)")
        check_input_shape(meta, path, tuple(engine.get_tensor_shape(INPUT_NAME)))
        for name in (INPUT_NAME, *OUTPUT_NAMES):
            if engine.get_tensor_dtype(name) != trt.float32:
                raise EngineError(f"{path}: tensor {name} is {engine.get_tensor_dtype(name)}, engines use float32 I/O")
        context = engine.create_execution_context()
    return _PlanRunner(runtime, engine, context, device, logger)


class _PlanRunner:
    """Runs the plan on a stream of its own, ordered after the caller's current stream and before
    the caller's later work: TensorRT synchronises extra when enqueued on the legacy default
    stream, where torch runs unless told otherwise. Calls are serialised: they share one execution
    context, whose input shape and tensor addresses each call sets."""

    def __init__(self, runtime, engine, context, device: torch.device, logger):
        self.runtime, self.engine, self.context = runtime, engine, context  # keep the owners alive
        self.logger = logger
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._lock = threading.Lock()

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock, torch.cuda.device(self.device):  # the context belongs to the device it was made on
            return self._run(image.contiguous())

    def _run(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self.context
        if not ctx.set_input_shape(INPUT_NAME, tuple(image.shape)):
            raise EngineError(f"the TensorRT engine does not accept an input of shape {tuple(image.shape)}")
        caller = torch.cuda.current_stream(self.device)
        outs = {
            name: torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=torch.float32, device=self.device)
            for name in OUTPUT_NAMES
        }
        for name, t in ((INPUT_NAME, image), *outs.items()):
            if not ctx.set_tensor_address(name, t.data_ptr()):  # TensorRT wants 256-byte aligned addresses
                raise EngineError(f"TensorRT refused the address of {name} ({t.data_ptr():#x}, "
                                  f"{t.data_ptr() % 256} bytes past a 256-byte boundary): pass a tensor of its own, "
                                  "not a view into another")
        self.stream.wait_stream(caller)  # the input is written and the outputs allocated on the caller's stream
        start = len(self.logger.errors)
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed{_errors_since(self.logger, start)}")
        caller.wait_stream(self.stream)  # so the input's memory, too, is reused only after the plan read it
        return outs["class_logits"], outs["mask_logits"]
