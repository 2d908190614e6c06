"""Fused Triton kernels, each registered as a PyTorch custom op (``torch.ops.segvit_rt.*``).

``import segvit_rt`` does not import this package (the ops dispatcher imports it
on first use of ``kernels="triton"``), so ``TRITON_INTERPRET=1`` can still be
set before triton loads.
"""
from .atm_attention import atm_attention
from .qd_attention import qd_attention
from .segment_postprocess import segment_postprocess

__all__ = ["atm_attention", "qd_attention", "segment_postprocess"]
