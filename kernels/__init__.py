"""Fused Triton kernels, each registered as a PyTorch custom op (``segvit_rt::*``).

Imported lazily so that ``import segvit_rt`` does not import triton (the
interpreter switch ``TRITON_INTERPRET=1`` must be set before triton loads).
"""
import importlib

_EXPORTS = {
    "atm_attention": ".atm_attention",
    "qd_attention": ".qd_attention",
    "segment_postprocess": ".segment_postprocess",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
