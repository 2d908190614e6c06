"""The ATM TensorRT plugin's graph side, without TensorRT: the export marks every ATM layer whose
mask is used with one plugin node, and that graph, its nodes run by the plugin's kernel in
TensorRT's calling convention, computes the PyTorch model."""
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from engine_helpers import sharp_model
from segvit_rt.build import TOLERANCES, resolve_kernels
from segvit_rt.engines import EngineError, onnx_backend, tensorrt_plugin
from segvit_rt.engines.graph import DTYPES, LogitsGraph, example_input
from segvit_rt.engines.tensorrt_backend import check_plugin_driver
from segvit_rt.kernels import atm_attention_aot as plugin_kernel


def as_tensorrt_fields(num_heads, head_dim, scale):
    """The attributes as ``tensorrt.plugin`` hands them to the plugin's functions: the parser's 1-D
    field arrays, ``astype`` the declared array dtype."""
    return np.array([num_heads]).astype(np.int32), np.array([head_dim]).astype(np.int32), \
        np.array([scale], np.float32).astype(np.float32)


class atm_attention(OpRun):  # noqa: N801  (the evaluator finds a custom op by its class name)
    """The plugin node run as TensorRT would: attributes -> kernel constants, our AOT kernel."""

    op_domain = tensorrt_plugin.NAMESPACE
    calls = []

    def _run(self, q, k, v, num_heads=None, head_dim=None, scale=None, plugin_namespace=None, aot=None):
        atm_attention.calls.append((num_heads, head_dim, scale, plugin_namespace, aot))
        num_heads, head_dim, scale = tensorrt_plugin.plugin_attrs(*as_tensorrt_fields(num_heads, head_dim, scale))
        assert q.shape[-1] == num_heads * head_dim
        device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter runs it on the CPU
        out, mask = plugin_kernel.launch(*(torch.from_numpy(t).to(device) for t in (q, k, v)), num_heads,
                                         scale=scale, tactic=2)
        return out.cpu().numpy(), mask.cpu().numpy()


# Full: the last layer of each of the 3 stage decoders (each mask feeds the next); Shrunk: the last
# layer of its one ATM stage (the prediction; the others' masks supervise training only).
USED_MASKS = {"full": 3, "shrunk": 1}


@pytest.fixture(scope="module", params=[("full", "fp32"), ("shrunk", "fp32"), ("shrunk", "fp16")], ids="-".join)
def exported(request, tmp_path_factory):
    """(model, precision, ONNX path): the model exported as the TensorRT backend does with the plugin
    (fp16 is what TensorRT builds; fp32 allows a tight comparison)."""
    variant, precision = request.param
    exported_model = sharp_model(variant).to(DTYPES[precision]).set_kernels("tensorrt_plugin")
    path = tmp_path_factory.mktemp("plugin") / "graph.onnx"
    onnx_backend.export(LogitsGraph(exported_model, precision).eval(), example_input(exported_model.cfg, 2, "cpu"),
                        path, dynamic_batch=True, max_batch=4, translations=tensorrt_plugin.onnx_translations())
    return sharp_model(variant), precision, path


def test_every_used_atm_mask_is_one_plugin_node(exported):
    model, precision, path = exported
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    nodes = [n for n in graph.node if n.domain == tensorrt_plugin.NAMESPACE]
    elem = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16}
    fp_inputs = {p: {v.name for v in graph.value_info if v.type.tensor_type.elem_type == elem[p]} for p in elem}
    assert len(nodes) == USED_MASKS[model.variant]
    cfg = model.cfg
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert node.op_type == tensorrt_plugin.NAME and len(node.input) == 3 and len(node.output) == 2
        assert node.input[0] in fp_inputs[precision], f"{node.input[0]} is not {precision}"
        assert attrs["num_heads"] == cfg.decoder_heads and attrs["head_dim"] == cfg.decoder_dim // cfg.decoder_heads
        assert attrs["scale"] == pytest.approx((cfg.decoder_dim // cfg.decoder_heads) ** -0.5)
        assert attrs["plugin_namespace"] == b"segvit_rt" and attrs["aot"] == 1


def test_plugin_graph_computes_the_model(exported):
    model, precision, path = exported
    x = example_input(model.cfg, 3, "cpu", seed=5)
    atm_attention.calls.clear()
    cls, masks = ReferenceEvaluator(str(path), new_ops=[atm_attention]).run(None, {"image": x.numpy()})
    assert len(atm_attention.calls) == USED_MASKS[model.variant]
    with torch.no_grad():
        ref = model(x)
    for got, want in ((masks, ref["pred_masks"]), (cls, ref["pred_logits"])):
        if precision == "fp32":
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
        else:
            assert np.abs(got - want.numpy()).max() <= TOLERANCES["fp16"].bound(want)


def test_tensorrt_plugin_kernels_in_eager_mode_equal_the_reference():
    model = sharp_model("full")
    x = example_input(model.cfg, 2, "cpu", seed=1)
    with torch.no_grad():
        ref = model(x)
        out = model.set_kernels("tensorrt_plugin")(x)
    torch.testing.assert_close(out["pred_masks"], ref["pred_masks"])


def test_triton_kernels_go_only_where_they_can():
    cuda = torch.device("cuda")
    with pytest.raises(EngineError, match="fp16 only"):
        resolve_kernels("triton", "tensorrt", cuda, "fp32")
    with pytest.raises(EngineError, match="not onnx engines"):
        resolve_kernels("triton", "onnx", torch.device("cpu"), "fp32")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(EngineError, match="needs the tensorrt package"):
            resolve_kernels("triton", "tensorrt", cuda, "fp16")
    assert resolve_kernels(None, "tensorrt", cuda, "fp16") == "reference"
    assert resolve_kernels(None, "aoti", cuda, "fp16") == "auto"  # timed at build (segvit_rt.kernel_choice)


def test_a_plugin_plan_refuses_an_older_driver(tmp_path):
    meta = {"plugin_driver_cuda": "12.8"}
    for newer_or_same in ("12.8", "12.10", "13.0"):
        check_plugin_driver(meta, tmp_path, newer_or_same)
    with pytest.raises(EngineError, match=r"PTX for a CUDA 12\.8 driver.*driver is CUDA 12\.4"):
        check_plugin_driver(meta, tmp_path, "12.4")


def test_plugin_attributes_unpack_to_scalars_and_refuse_arrays():
    heads, head_dim, scale = tensorrt_plugin.plugin_attrs(*as_tensorrt_fields(8, 64, 0.125))
    assert (heads, head_dim, scale) == (8, 64, 0.125)
    assert type(heads) is int and type(head_dim) is int and type(scale) is float
    with pytest.raises(ValueError, match="attribute num_heads must be one value"):
        tensorrt_plugin.plugin_attrs(np.array([8, 8], np.int32), *as_tensorrt_fields(8, 64, 0.125)[1:])


def test_a_plugin_plan_loads_without_triton():
    """Triton builds the plugin's PTX; the driver check that loading a plan runs must not need it."""
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "from segvit_rt.engines.tensorrt_backend import driver_cuda_version\n"
        "try:\n    print(driver_cuda_version())\n"
        "except OSError:\n    print('no CUDA driver')\n"  # no libcuda on a CPU machine
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no CUDA driver" or re.fullmatch(r"\d+\.\d+", done.stdout.strip())


def test_the_tensorrt_log_keeps_the_errors_a_failed_build_is_reported_with(capsys, monkeypatch):
    """``_logger`` subclasses ``tensorrt.ILogger`` as TensorRT's Python docs show; here a stand-in
    with its Severity names checks what our subclass prints and keeps (a plugin's error, raised in
    a build callback, reaches the user through the log alone)."""
    import enum
    import types

    from segvit_rt.engines import tensorrt_backend

    class ILogger:
        Severity = enum.Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")

        def __init__(self):
            pass

    fake = types.ModuleType("tensorrt")
    fake.ILogger = ILogger
    logger = tensorrt_backend._logger(fake)
    assert tensorrt_backend._logger(fake) is logger  # one per process
    start = len(logger.errors)
    assert tensorrt_backend._errors_since(logger, start) == " (see its log above)"
    severity = ILogger.Severity
    for level, message in ((severity.VERBOSE, "tactic 3"), (severity.INFO, "built"), (severity.WARNING, "slow"),
                           (severity.ERROR, "atm_attention: no kernel config fits; use --kernels reference")):
        logger.log(level, message)
    printed = capsys.readouterr().err
    assert printed == ("TensorRT WARNING: slow\n"
                       "TensorRT ERROR: atm_attention: no kernel config fits; use --kernels reference\n")
    assert tensorrt_backend._errors_since(logger, start) == ": atm_attention: no kernel config fits; use --kernels reference"
