"""Whole-image and sliding-window inference, as the official evaluation does it.

Shared by ``segvit_rt.evaluate`` (a PyTorch model) and ``segvit_rt.Runtime``
(any engine): both only supply ``logits_fn(batch [n, 3, h, w]) -> (class_logits,
mask_logits)``. Scores are the SegViT mix of class probabilities and mask
sigmoids (``ops.reference.semantic_logits``), accumulated per pixel.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .ops import full_size
from .ops.reference import semantic_logits

LogitsFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
MODES = ("whole", "slide")


def test_size(
    h: int, w: int, crop: int, scale: tuple[int, int] | None = None, min_size: int | None = None
) -> tuple[int, int]:
    """mmseg's test-time Resize with keep_ratio to ``scale`` = (long, short), default (4·crop, crop):
    the short side reaches ``short`` unless the long side would pass ``long``. With ``min_size``
    (mmseg's Resize(min_size)) the short side becomes max(short, min_size) and the long side is
    not limited. A side never shrinks below one pixel (a 1x5000 strip would round to zero rows)."""
    long_edge, short_edge = (max(scale), min(scale)) if scale is not None else (4 * crop, crop)
    if min_size is not None:
        factor = max(short_edge, min_size) / min(h, w)
    else:
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def whole_scores(logits_fn: LogitsFn, img: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Scores [B, C, H, W] of the whole (normalised) image, zero-padded to a multiple of ``multiple``."""
    h, w = img.shape[-2:]
    padded = _pad_to(img, _round_up(h, multiple), _round_up(w, multiple))
    cls, masks = logits_fn(padded)
    return semantic_logits(cls.float(), masks.float(), padded.shape[-2:])[..., :h, :w]


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window origins along one axis: every ``stride``, the last one flush with the edge."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, size - crop), 0) for i in range(n)})


def slide_scores(
    logits_fn: LogitsFn, img: torch.Tensor, crop: int, stride: int, batch_windows: int = 8
) -> torch.Tensor:
    """Scores [B, C, H, W] averaged over ``crop``×``crop`` windows every ``stride`` pixels
    (windows past a small image's edge are zero-padded)."""
    if not 0 < stride <= crop:
        raise ValueError(f"the sliding-window stride must be in 1..crop ({crop}), got {stride}: "
                         "a larger stride leaves pixels between windows unscored")
    b, _, h, w = img.shape
    boxes = [(y, x) for y in window_starts(h, crop, stride) for x in window_starts(w, crop, stride)]
    total, count = None, img.new_zeros(1, 1, h, w)
    for i in range(0, len(boxes), batch_windows):
        chunk = boxes[i : i + batch_windows]
        crops = torch.cat([_pad_to(img[..., y : y + crop, x : x + crop], crop, crop) for y, x in chunk])
        cls, masks = logits_fn(crops)
        scores = semantic_logits(cls.float(), masks.float(), (crop, crop))
        if total is None:
            total = img.new_zeros(b, scores.shape[1], h, w, dtype=torch.float32)
        for j, (y, x) in enumerate(chunk):
            ch, cw = min(crop, h - y), min(crop, w - x)
            total[..., y : y + ch, x : x + cw] += scores[j * b : (j + 1) * b, :, :ch, :cw]
            count[..., y : y + ch, x : x + cw] += 1
    return total / count


def predict_labels(
    logits_fn: LogitsFn,
    img: torch.Tensor,
    crop: int,
    stride: int,
    mode: str = "slide",
    out_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Label maps [B, H, W] (int64) for a normalised batch; scores are resized bilinearly to
    ``out_hw`` (the original image size) before the argmax, as mmseg does. The resize and argmax
    go a few classes at a time (``ops.full_size.upsample_argmax``, the same labels) on the CPU,
    where that measured faster, and on CUDA where every class at full size passes
    ``full_size.BUDGET`` bytes."""
    if mode not in MODES:
        raise ValueError(f"inference mode must be one of {MODES}, got {mode!r}")
    scores = slide_scores(logits_fn, img, crop, stride) if mode == "slide" else whole_scores(logits_fn, img)
    if out_hw is None or tuple(out_hw) == tuple(scores.shape[-2:]):
        return scores.argmax(dim=1)
    out_hw = tuple(out_hw)
    if scores.is_cuda and full_size.nbytes(scores.shape[0], scores.shape[1], out_hw) <= full_size.BUDGET:
        return F.interpolate(scores, size=out_hw, mode="bilinear", align_corners=False).argmax(dim=1)
    return full_size.upsample_argmax(scores, out_hw, budget=full_size.BUDGET)


def model_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """Adapter: a SegViT model as a ``logits_fn``."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(x)
        return out["pred_logits"], out["pred_masks"]

    return run
