"""Hot-path ops behind one switch: ``impl="reference"`` (plain PyTorch) or ``"triton"`` (fused kernels).

``"tensorrt_plugin"`` is for export only: the ATM cross-attention layers that
produce a mask become one ``segvit_rt::atm_attention_plugin`` op each, which
the TensorRT backend exports as an ONNX node that TensorRT maps to our Triton
kernel (``segvit_rt.engines.tensorrt_plugin``); everything else is the reference.
"""
from __future__ import annotations

import contextvars

from . import full_size, reference

IMPLS = ("reference", "triton", "tensorrt_plugin")
ATM_OPTIONS = {"scale", "prev_mask", "need_mask", "sigmoid_mask"}  # atm_attention's keywords besides dropout_p
# True while segvit_rt.flops counts: the reference ATM then runs in the official per-head form.
official_atm_form = contextvars.ContextVar("official_atm_form", default=False)


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"kernels must be one of {IMPLS}, got {impl!r}")
    return impl


def atm_attention(q, k, v, num_heads, *, impl="reference", dropout_p=0.0, **kw):
    """ATM cross-attention. Attention dropout (training) always runs the reference:
    the fused kernel has no dropout, so ``dropout_p > 0`` selects the reference op.

    Without a mask (``need_mask=False``: the Shrunk head's QU decoders, ATM layers whose mask
    goes unused) this is plain multi-head attention, which every impl runs as PyTorch's
    ``scaled_dot_product_attention`` (flash attention on CUDA). The fused kernel is built
    around the all-heads mask, which these layers do not use (on an H200 the Shrunk model with
    the kernels ran at 0.85x of eager with the fused kernel in its QU decoders, and 0.84x with
    SDPA there: that was not the cause; benchmarks/RESULTS.md)."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"atm_attention: dropout_p must be in [0, 1), got {dropout_p!r}")
    check_impl(impl)
    unknown = sorted(set(kw) - ATM_OPTIONS)
    if unknown:
        raise TypeError(f"atm_attention got unexpected keyword arguments {unknown}; it takes {sorted(ATM_OPTIONS)}")
    if not kw.get("need_mask", True):
        return reference.attention(q, k, v, num_heads, scale=kw.get("scale"), dropout_p=dropout_p), None
    if impl == "triton" and dropout_p == 0.0:
        from segvit_rt.kernels import atm_attention as fused

        return fused(q, k, v, num_heads, **kw)
    if impl == "tensorrt_plugin" and not kw.get("sigmoid_mask") and dropout_p == 0.0:
        from segvit_rt.engines.tensorrt_plugin import atm_attention_plugin

        return atm_attention_plugin(q, k, v, num_heads, scale=kw.get("scale"), prev_mask=kw.get("prev_mask"))
    form = reference.atm_attention_by_heads if official_atm_form.get() else reference.atm_attention
    return form(q, k, v, num_heads, dropout_p=dropout_p, **kw)


def qd_attention(x_q, k, v, grid_hw, num_heads, *, impl="reference", scale=None):
    if check_impl(impl) == "triton":
        from segvit_rt.kernels import qd_attention as fused

        return fused(x_q, k, v, grid_hw, num_heads, scale=scale)
    return reference.qd_attention(x_q, k, v, grid_hw, num_heads, scale=scale)


def segment_postprocess(class_logits, mask_logits, out_hw, *, impl="reference"):
    """Labels [B, H, W]. The reference holds every query and class at full size; above
    ``full_size.BUDGET`` bytes of that it runs a band of rows at a time (``ops.full_size``)."""
    if check_impl(impl) == "triton":
        from segvit_rt.kernels import segment_postprocess as fused

        return fused(class_logits, mask_logits, out_hw)
    channels = mask_logits.shape[1] + class_logits.shape[-1] - 1
    if full_size.nbytes(mask_logits.shape[0], channels, out_hw) > full_size.BUDGET:
        return full_size.segment_postprocess(class_logits, mask_logits, out_hw, budget=full_size.BUDGET)
    return reference.segment_postprocess(class_logits, mask_logits, out_hw)
