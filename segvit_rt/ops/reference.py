"""Reference implementations of the hot-path ops, in plain PyTorch.

They define the semantics: the Triton kernels in ``segvit_rt.kernels`` are tested
against these (computed in float64), and they are the CPU implementation of the
custom ops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, hd = x.shape
    return x.transpose(1, 2).reshape(b, n, h * hd)


def check_num_heads(op: str, num_heads) -> None:
    """Shared with the kernels (``segvit_rt.kernels._common``), so every impl words it alike."""
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"{op}: num_heads must be a positive int, got {num_heads!r}")


def _scale(op: str, q: torch.Tensor, num_heads: int, scale: float | None) -> float:
    """``scale``, by default head_dim ** -0.5, once ``q`` [B, N, D] is checked and D to split into
    ``num_heads``."""
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"{op}: the queries must be [B, N, D], got {got}")
    check_num_heads(op, num_heads)
    dim = q.shape[-1]
    if dim % num_heads:
        raise ValueError(f"{op}: dim {dim} is not divisible by num_heads={num_heads}")
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be finite, got {scale!r}")
    return (dim // num_heads) ** -0.5 if scale is None else scale


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Plain multi-head attention of ``q`` [B, N, D] over ``k``/``v`` [B, L, D] through PyTorch's
    ``scaled_dot_product_attention``: :func:`atm_attention`'s ``out`` where no mask is wanted."""
    return _sdpa("attention", q, k, v, num_heads, _scale("attention", q, num_heads, scale), dropout_p)


def _sdpa(op: str, q, k, v, num_heads: int, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """:func:`attention` for an op that has checked its heads and resolved ``scale`` (:func:`_scale`)."""
    b, _, d = q.shape
    if k.dim() != 3 or k.shape[0] != b or k.shape[2] != d or v.shape != k.shape:
        raise ValueError(f"{op}: k and v must be [B, L, D] with q's B and D, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    qh, kh, vh = (_split_heads(t, num_heads) for t in (q, k, v))
    return _merge_heads(F.scaled_dot_product_attention(qh, kh, vh, dropout_p=dropout_p, scale=scale))


def atm_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    scale: float | None = None,
    prev_mask: torch.Tensor | None = None,
    need_mask: bool = True,
    sigmoid_mask: bool = False,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ATM cross-attention: class tokens ``q`` [B, N, D] attend to features ``k``/``v`` [B, L, D].

    Returns ``out`` [B, N, D] (per-head softmax attention, heads concatenated) and
    ``mask`` [B, N, L]: the scaled logits q·kᵀ·scale averaged over heads, taken
    before the softmax, plus ``prev_mask`` when given, sigmoid-ed when
    ``sigmoid_mask``; ``None`` when ``need_mask`` is False. ``dropout_p`` drops
    attention probabilities (training only); it never touches the mask.
    """
    scale = _scale("atm_attention", q, num_heads, scale)
    out = _sdpa("atm_attention", q, k, v, num_heads, scale, dropout_p)
    mask = None
    if need_mask:
        # The mean over heads of q_h·k_hᵀ·scale is one product over the full width, q·kᵀ·scale/H,
        # so the per-head logits [B, H, N, L] are never formed (SDPA forms them only inside). q is
        # scaled first: the unscaled full-width product overflows fp16 H/scale times sooner.
        mask = torch.matmul(q * (scale / num_heads), k.transpose(-2, -1))
        mask = _finish_mask(mask, prev_mask, sigmoid_mask)
    return out, mask


def _finish_mask(mask, prev_mask, sigmoid_mask):
    if prev_mask is not None:
        mask = mask + prev_mask
    return mask.sigmoid() if sigmoid_mask else mask


def atm_attention_by_heads(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    scale: float | None = None,
    prev_mask: torch.Tensor | None = None,
    need_mask: bool = True,
    sigmoid_mask: bool = False,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`atm_attention` as the official code computes it: the per-head logits [B, H, N, L]
    formed once, their softmax weighting the values and their head-mean the mask. Slower, same
    results; ``segvit_rt.flops`` prices this form, as the paper's GFLOPs do."""
    scale = _scale("atm_attention", q, num_heads, scale)
    qh, kh, vh = (_split_heads(t, num_heads) for t in (q, k, v))
    logits = torch.matmul(qh, kh.transpose(-2, -1)) * scale
    attn = logits.softmax(dim=-1)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p, training=True)
    out = _merge_heads(torch.matmul(attn, vh))
    return out, (_finish_mask(logits.mean(dim=1), prev_mask, sigmoid_mask) if need_mask else None)


def downsample_tokens(x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Nearest stride-2 sampling of a token sequence [B, h*w, D] on its grid: top-left of each 2x2."""
    b, l, d = x.shape
    h, w = grid_hw
    if h * w != l:
        raise ValueError(f"token count {l} does not match the grid {h}x{w}")
    if h % 2 or w % 2:
        raise ValueError(f"query downsampling needs an even token grid, got {h}x{w}")
    return x.reshape(b, h, w, d)[:, ::2, ::2].reshape(b, (h // 2) * (w // 2), d)


def qd_attention(
    x_q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid_hw: tuple[int, int],
    num_heads: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Query-downsampled attention (SegViT Shrunk, QD).

    ``x_q``, ``k``, ``v`` are [B, L, D] on an h×w token grid; the queries are
    ``x_q`` at even rows and columns, keys/values stay at full resolution.
    Returns [B, L/4, D].
    """
    scale = _scale("qd_attention", x_q, num_heads, scale)
    if k.dim() != 3 or k.shape[1] != x_q.shape[1]:  # keys/values are the same full-resolution tokens
        raise ValueError(f"qd_attention: k and v must hold the {x_q.shape[1]} tokens of x_q's grid, got k "
                         f"{tuple(k.shape)}")
    return _sdpa("qd_attention", downsample_tokens(x_q, grid_hw), k, v, num_heads, scale)


def check_logits(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> None:
    """A model's outputs as the post-process takes them: [B, Q, C+1] and [B, Q, h, w]."""
    if (class_logits.dim() != 3 or mask_logits.dim() != 4 or class_logits.shape[-1] < 2
            or class_logits.shape[:2] != mask_logits.shape[:2]):
        raise ValueError("class_logits [B, Q, C+1] and mask_logits [B, Q, h, w] must share B and Q (C >= 1), "
                         f"got {tuple(class_logits.shape)} and {tuple(mask_logits.shape)}")


def semantic_logits(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, out_hw: tuple[int, int]
) -> torch.Tensor:
    """Per-class scores [B, C, H, W] of the SegViT inference rule.

    softmax(class_logits)[..., :-1] (drop "no object") mixes the sigmoid of the
    mask logits [B, Q, h, w] upsampled bilinearly (align_corners=False) to ``out_hw``, in the
    wider of the two inputs' dtypes.
    """
    check_logits(class_logits, mask_logits)
    dtype = torch.promote_types(class_logits.dtype, mask_logits.dtype)
    probs = class_logits.to(dtype).softmax(dim=-1)[..., :-1]
    masks = F.interpolate(mask_logits.to(dtype), size=tuple(out_hw), mode="bilinear", align_corners=False).sigmoid()
    return torch.einsum("bqc,bqhw->bchw", probs, masks)


def segment_postprocess(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, out_hw: tuple[int, int]
) -> torch.Tensor:
    """Label map [B, H, W] (int64): argmax over classes of :func:`semantic_logits`."""
    return semantic_logits(class_logits, mask_logits, out_hw).argmax(dim=1)
