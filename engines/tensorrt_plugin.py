"""The ATM cross-attention as a TensorRT plugin: our Triton kernel, compiled ahead of time.

Three pieces, only the last of which needs TensorRT:

* ``torch.ops.segvit_rt.atm_attention_plugin(q, k, v, num_heads, scale)`` ->
  ``(out, mask)``: an opaque op (reference semantics) that marks, in a model
  exported with ``kernels="tensorrt_plugin"``, each ATM layer whose mask is used.
  ``prev_mask`` is added outside it, as a plain ``Add``.
* Its ONNX form (:func:`onnx_translations`): a node ``atm_attention`` in domain
  ``segvit_rt`` with attributes ``num_heads``, ``head_dim``, ``scale``,
  ``plugin_namespace="segvit_rt"`` and ``aot=1``, the two attributes by which
  TensorRT's ONNX parser maps a node to the plugin ``segvit_rt::atm_attention``
  and to its ahead-of-time implementation.
* :func:`register` defines that plugin with ``tensorrt.plugin`` (TensorRT >= 10.9,
  the first with AOT plugins): output shapes, fp16 I/O with one tactic per
  kernel config that fits TensorRT's launch (TensorRT times them at build), and
  the AOT implementation: PTX from ``segvit_rt.kernels.atm_attention_aot``, for
  this GPU and driver, with its launch grid. TensorRT embeds the chosen PTX in
  the plan, so the engine loads and runs without Python, Triton or this module.

Not written as ``from __future__ import annotations``: ``tensorrt.plugin``
reads the decorated functions' annotations as types.

The attributes are declared as one-element NumPy arrays, not ``int``/``float``:
``tensorrt.plugin`` rebuilds a builtin-typed attribute with ``int(field.data)``
on the parser's 1-D field array, which NumPy >= 2.4 refuses ("only 0-dimensional
arrays can be converted to Python scalars"), while an array attribute is
rebuilt with ``field.data.astype(dtype)``. :func:`plugin_attrs` unpacks them.
"""
import functools
from typing import List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt
import torch

from segvit_rt.ops import reference

NAMESPACE = "segvit_rt"
NAME = "atm_attention"
PLUGIN_ID = f"{NAMESPACE}::{NAME}"


@torch.library.custom_op("segvit_rt::atm_attention_plugin", mutates_args=())
def _atm_attention_plugin_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    out, mask = reference.atm_attention(q, k, v, num_heads, scale=scale)
    return out, mask


@_atm_attention_plugin_op.register_fake
def _(q, k, v, num_heads, scale):
    b, n, d = q.shape
    return q.new_empty((b, n, d)), q.new_empty((b, n, k.shape[1]))


def atm_attention_plugin(q, k, v, num_heads: int, scale: Optional[float] = None, prev_mask=None):
    """ATM cross-attention with its mask, as the plugin computes it (``prev_mask`` added after)."""
    from segvit_rt.kernels.atm_attention_aot import head_dim_and_scale

    _, scale = head_dim_and_scale(q.shape[-1], num_heads, scale)
    out, mask = _atm_attention_plugin_op(q, k, v, num_heads, scale)
    return out, (mask if prev_mask is None else mask + prev_mask)


# ---------------------------------------------------------------------------- ONNX


@functools.cache
def _onnx_op():
    """The ONNX schema of the node (registered with ``onnx.defs`` once, so ``onnx.checker`` checks
    its inputs, outputs and attributes) and the onnxscript op that emits it."""
    import onnxscript
    from onnx import defs

    param = defs.OpSchema.FormalParameter
    attr = defs.OpSchema.Attribute
    kinds = defs.OpSchema.AttrType
    if not defs.has(NAME, NAMESPACE):
        defs.register_schema(defs.OpSchema(
            NAME, NAMESPACE, 1,
            doc="ATM cross-attention (TensorRT plugin segvit_rt::atm_attention): q [B,N,D], k/v [B,L,D] -> "
                "out [B,N,D], head-mean scaled logits mask [B,N,L]",
            inputs=[param("q", "T"), param("k", "T"), param("v", "T")],
            outputs=[param("out", "T"), param("mask", "T")],
            type_constraints=[("T", ["tensor(float16)", "tensor(float)"], "fp16 (TensorRT plugin) or fp32")],
            attributes=[
                attr("num_heads", kinds.INT, "attention heads"),
                attr("head_dim", kinds.INT, "channels per head"),
                attr("scale", kinds.FLOAT, "logit scale"),
                attr("plugin_namespace", kinds.STRING, "TensorRT plugin namespace"),
                attr("aot", kinds.INT, "1: use the plugin's ahead-of-time implementation"),
            ],
        ))
    return getattr(onnxscript.values.Opset(NAMESPACE, 1), NAME)


def onnx_translations() -> dict:
    """``custom_translation_table`` entries for ``torch.onnx.export`` (dynamo exporter)."""
    op = _onnx_op()

    def atm_attention(q, k, v, num_heads: int, scale: float):
        head_dim = q.shape[-1] // num_heads
        return op(q, k, v, num_heads=num_heads, head_dim=head_dim, scale=scale, plugin_namespace=NAMESPACE, aot=1)

    return {torch.ops.segvit_rt.atm_attention_plugin.default: atm_attention}


# ---------------------------------------------------------------------------- TensorRT

Int32Attr = npt.NDArray[np.int32]  # how the attributes reach the plugin (see the module doc)
Float32Attr = npt.NDArray[np.float32]


def plugin_attrs(num_heads, head_dim, scale) -> Tuple[int, int, float]:
    """The node's attributes as Python scalars, from the one-element arrays TensorRT hands over."""
    values = []
    for name, value, kind in (("num_heads", num_heads, int), ("head_dim", head_dim, int), ("scale", scale, float)):
        array = np.asarray(value)
        if array.size != 1:
            raise ValueError(f"the {PLUGIN_ID} plugin's attribute {name} must be one value, got {array.tolist()}")
        values.append(kind(array.reshape(())))
    return tuple(values)


def check_available() -> None:
    """Raise ``ImportError`` naming what is missing unless TensorRT's plugin API is importable."""
    import tensorrt.plugin as trtp

    if not (hasattr(trtp, "aot_impl") and hasattr(trtp, "KernelLaunchParams")):
        raise ImportError("this tensorrt.plugin has no ahead-of-time plugins: they need TensorRT >= 10.9")


def register() -> None:
    """Define the plugin in TensorRT's registry (once per process)."""
    import tensorrt as trt
    import tensorrt.plugin as trtp
    import triton

    from segvit_rt.kernels import atm_attention_aot as aot

    from .cuda_driver import driver_cuda_version

    if hasattr(getattr(trtp.op, NAMESPACE, None), NAME):
        return

    def kernel_target():
        target = triton.runtime.driver.active.get_current_target()
        return target, aot.ptx_version_for(driver_cuda_version(), target.arch)

    @trtp.register(PLUGIN_ID)
    def atm_desc(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
        num_heads: Int32Attr, head_dim: Int32Attr, scale: Float32Attr,
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        mask = trtp.from_shape_expr((q.shape_expr[0], q.shape_expr[1], k.shape_expr[1]), dtype=q.dtype)
        return q.like(), mask

    @trtp.autotune(PLUGIN_ID)
    def atm_autotune(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
        num_heads: Int32Attr, head_dim: Int32Attr, scale: Float32Attr, outputs: Tuple[trtp.TensorDesc],
    ) -> List[trtp.AutoTuneCombination]:
        tactics = aot.fitting_tactics(*plugin_attrs(num_heads, head_dim, scale), "fp16", *kernel_target())
        return [trtp.AutoTuneCombination("FP16, FP16, FP16, FP16, FP16", "LINEAR", tactics)]

    # autotune gets the attributes by name; aot_impl gets all of them by position, in the order of
    # the fields the plugin is created with, which the ONNX parser takes from the creator, that is,
    # in the order register declares them (not the node's order). So both take all three, in that order.
    @trtp.aot_impl(PLUGIN_ID)
    def atm_aot(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
        num_heads: Int32Attr, head_dim: Int32Attr, scale: Float32Attr, outputs: Tuple[trtp.TensorDesc], tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        if q.dtype != trt.float16:
            raise ValueError(f"the {PLUGIN_ID} plugin runs fp16 only, got {q.dtype}")
        attrs = plugin_attrs(num_heads, head_dim, scale)
        kernel = aot.compile_ptx(*attrs, "fp16", tactic, *kernel_target())
        batch, n, length = q.shape_expr[0], q.shape_expr[1], k.shape_expr[1]
        grid_x, grid_y = aot.launch_grid(batch, n, length, attrs[0], tactic, cdiv=trtp.cdiv)
        params = trtp.KernelLaunchParams(
            grid_x=grid_x, grid_y=grid_y, block_x=kernel.num_warps * 32, shared_mem=kernel.shared
        )
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(n), trtp.SymInt32(length)])  # N, L
        return kernel.name.encode(), kernel.ptx.encode(), params, scalars
