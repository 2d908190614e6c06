"""Whole-image and sliding-window inference, as the official evaluation does it.

Shared by ``segvit_rt.evaluate`` (a PyTorch model) and ``segvit_rt.Runtime``
(any engine): both only supply ``logits_fn(batch [n, 3, h, w]) -> (class_logits,
mask_logits)``. Scores are the SegViT mix of class probabilities and mask
sigmoids (``ops.reference.semantic_logits``), accumulated per pixel.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
import torch.nn.functional as F

from .config import default_scale
from .models import eval_mode
from .ops import full_size
from .ops.reference import semantic_logits

LogitsFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
MODES = ("whole", "slide")


def _edges(crop: int, scale: tuple[int, int] | None) -> tuple[int, int]:
    """(long, short) edges of a test scale; None is the default (4·crop, crop)."""
    return (max(scale), min(scale)) if scale is not None else default_scale(crop)


def test_size(
    h: int, w: int, crop: int, scale: tuple[int, int] | None = None, min_size: int | None = None
) -> tuple[int, int]:
    """mmseg's test-time Resize with keep_ratio to ``scale`` = (long, short), default (4·crop, crop):
    the short side reaches ``short`` unless the long side would pass ``long``. With ``min_size``
    (mmseg's Resize(min_size)) the short side becomes max(short, min_size) and the long side is
    not limited. A side never shrinks below one pixel (a 1x5000 strip would round to zero rows)."""
    long_edge, short_edge = _edges(crop, scale)
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


def mode_scores(logits_fn: LogitsFn, img: torch.Tensor, crop: int, stride: int, mode: str) -> torch.Tensor:
    """Scores [B, C, H, W] of ``img`` by ``mode``: ``"slide"`` windows or the ``"whole"`` image."""
    if mode not in MODES:
        raise ValueError(f"inference mode must be one of {MODES}, got {mode!r}")
    return slide_scores(logits_fn, img, crop, stride) if mode == "slide" else whole_scores(logits_fn, img)


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
    scores = mode_scores(logits_fn, img, crop, stride, mode)
    if out_hw is None or tuple(out_hw) == tuple(scores.shape[-2:]):
        return scores.argmax(dim=1)
    out_hw = tuple(out_hw)
    if scores.is_cuda and full_size.nbytes(scores.shape[0], scores.shape[1], out_hw) <= full_size.BUDGET:
        return F.interpolate(scores, size=out_hw, mode="bilinear", align_corners=False).argmax(dim=1)
    return full_size.upsample_argmax(scores, out_hw, budget=full_size.BUDGET)


MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmseg's multi-scale test (left commented out in SegViT's configs)


def predict_image(
    logits_fn,
    image: torch.Tensor,
    crop: int,
    stride: int,
    mode: str = "slide",
    scale: tuple[int, int] | None = None,
    min_size: int | None = None,
    ratios: tuple[float, ...] | None = None,
    flip: bool = False,
) -> torch.Tensor:
    """Labels [B, H, W] for a normalised batch [B, 3, H, W] at its own size (test-time resize inside:
    ``test_size`` with ``scale`` and ``min_size``, see ``SegViTConfig.scales``).

    With ``ratios`` (e.g. ``MS_RATIOS``) or ``flip``: multi-scale and mirrored testing as mmseg's
    ``aug_test``: the test scale times each ratio, and each view mirrored too; every view's scores
    resized to the image's size and softmaxed, their sum's argmax."""
    h, w = image.shape[-2:]
    if ratios is None and not flip:
        th, tw = test_size(h, w, crop, scale, min_size)
        resized = image if (th, tw) == (h, w) else F.interpolate(image, size=(th, tw), mode="bilinear",
                                                                align_corners=False)
        return predict_labels(logits_fn, resized, crop, stride, mode=mode, out_hw=(h, w))
    long_edge, short_edge = _edges(crop, scale)
    # Ratios that give one size (min_size raises the small ones) count once each, as in mmseg's mean,
    # but run once.
    sizes = Counter(test_size(h, w, crop, (int(long_edge * r), int(short_edge * r)), min_size)
                    for r in ratios or (1.0,))
    total = None
    for (th, tw), times in sizes.items():
        resized = F.interpolate(image, size=(th, tw), mode="bilinear", align_corners=False)
        views = [(resized, False), (resized.flip(-1), True)] if flip else [(resized, False)]
        pair = None
        for view, mirrored in views:
            scores = mode_scores(logits_fn, view, crop, stride, mode)
            scores = scores.flip(-1) if mirrored else scores
            if scores.shape[-2:] != (h, w):
                scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False)
            pair = scores.softmax(dim=1) if pair is None else pair + scores.softmax(dim=1)
        pair = pair * times if times > 1 else pair
        total = pair if total is None else total + pair  # a view and its mirror added first: order-free
    return total.argmax(dim=1)


def model_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """Adapter: a SegViT model as a ``logits_fn``, run in eval mode whatever mode the model is in."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with eval_mode(model):
            out = model(x)
        return out["pred_logits"], out["pred_masks"]

    return run
