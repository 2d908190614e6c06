"""GFLOP count in the paper's convention (fvcore: one multiply-add = one FLOP).

The model runs once on the ``meta`` device (shapes only, no arithmetic) under a
dispatch mode that prices each ATen op. Unlike ``torch.utils.flop_counter``
this counts attention however it is dispatched (SDPA kernels, which
FlopCounterMode prices at 0 on CPU, the math fallback's matmuls, and our
``segvit_rt::`` custom ops), and it prices layer norms and bilinear upsampling
as fvcore does (5 and 4 per element).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from . import ops
from .models import eval_mode

aten = torch.ops.aten


def _numel(shape) -> int:
    return math.prod(shape)


def _mm(args, out):
    m, k = args[0].shape
    return m * k * args[1].shape[1]


def _addmm(args, out):
    return _mm(args[1:], out)


def _bmm(args, out):
    b, m, k = args[0].shape
    return b * m * k * args[1].shape[-1]


def _baddbmm(args, out):
    return _bmm(args[1:], out)


def _conv(args, out):
    w = args[1]
    return _numel(out.shape) * _numel(w.shape[1:])


def _sdpa(args, out):
    q, k, v = args[:3]
    *batch, lq, e = q.shape
    return _numel(batch) * lq * k.shape[-2] * (e + v.shape[-1])


def _layer_norm(args, out):
    affine = len(args) > 2 and args[2] is not None
    return _numel(args[0].shape) * (5 if affine else 4)


def _upsample_bilinear(args, out):
    return 4 * _numel(out.shape)


def _atm_attention(args, out):
    q, k = args[0], args[1]
    b, n, d = q.shape
    return 2 * b * n * k.shape[1] * d  # logits and the attention-weighted sum


def _qd_attention(args, out):
    x_q, k = args[0], args[1]
    b, l, d = x_q.shape
    return 2 * b * (l // 4) * k.shape[1] * d


_HANDLERS = {
    "aten::mm": _mm,
    "aten::addmm": _addmm,
    "aten::bmm": _bmm,
    "aten::baddbmm": _baddbmm,
    "aten::convolution": _conv,
    "aten::_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "aten::_scaled_dot_product_flash_attention": _sdpa,
    "aten::_scaled_dot_product_efficient_attention": _sdpa,
    "aten::_scaled_dot_product_cudnn_attention": _sdpa,
    "aten::native_layer_norm": _layer_norm,
    "aten::upsample_bilinear2d": _upsample_bilinear,
    "segvit_rt::atm_attention": _atm_attention,
    "segvit_rt::qd_attention": _qd_attention,
}


class FlopCounter(TorchDispatchMode):
    """Sums fvcore-convention FLOPs of the ops run under it, per op name in ``by_op``."""

    def __init__(self):
        super().__init__()
        self.by_op: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._overloadpacket._qualified_op_name
        handler = _HANDLERS.get(name)
        if handler is not None:
            self.by_op[name] = self.by_op.get(name, 0) + handler(args, out)
        return out


class _EvalForward(torch.nn.Module):
    """The whole eval-mode forward as the paper counts it: logits, then (``postprocess``) the
    class/mask mix at full size."""

    def __init__(self, model: torch.nn.Module, postprocess: bool):
        super().__init__()
        self.model = model
        self.postprocess = postprocess

    def forward(self, img: torch.Tensor):
        return self.model.semantic_logits(img) if self.postprocess else self.model(img)


def count_flops(
    model: torch.nn.Module, image_size: int | tuple[int, int], batch: int = 1, postprocess: bool = True
) -> FlopCounter:
    """Count the eval forward, plus the full-resolution post-process unless ``postprocess=False``
    (the graph an engine holds), on ``meta`` copies of the weights."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    wrapper = _EvalForward(model, postprocess)
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*wrapper.named_parameters(), *wrapper.named_buffers()]
    }
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    img = torch.empty(batch, 3, h, w, device="meta", dtype=dtype)
    counter = FlopCounter()
    with eval_mode(model), torch.no_grad(), _official_atm_attention(), counter:
        functional_call(wrapper, state, (img,), strict=True, tie_weights=False)
    return counter


@contextlib.contextmanager
def _official_atm_attention():
    """The reference ATM cross-attention, while counting, as the official code computes it (mask and
    softmax from one set of logits, ``reference.atm_attention_by_heads``): ours computes the mask as
    a product of its own, faster but B·N·L·D more multiply-adds a layer than the paper counts."""
    token = ops.official_atm_form.set(True)  # a context variable: other threads keep the fast form
    try:
        yield
    finally:
        ops.official_atm_form.reset(token)


def gflops(model: torch.nn.Module, image_size: int | tuple[int, int]) -> float:
    """GFLOPs (multiply-adds) of one image's eval-mode forward including the post-process."""
    return count_flops(model, image_size).total / 1e9


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
