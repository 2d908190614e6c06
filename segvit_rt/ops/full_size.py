"""Full-size label maps within a memory budget, for images too large to hold every class at full size.

Upsampling the scores (or mask logits) of a 12-megapixel photo to its size before the argmax takes
``channels x 12M x 4`` bytes: 7 GB for the 150 ADE20K classes.

* ``upsample_argmax`` (scores -> labels, the sliding-window path) upsamples a few classes at a time
  with ``F.interpolate`` itself and keeps a running maximum: the same labels, but where interpolating
  fewer channels rounds a score by an ulp and so breaks an exact tie otherwise. On the CPU it
  is also faster than an argmax across full-size planes (``benchmarks/test_labels_full_size.py``),
  so it is used there at every size; on CUDA above ``BUDGET``.
* ``segment_postprocess`` (class and mask logits -> labels, the whole-image path) needs every query
  of a pixel before its argmax, so it goes a band of output rows at a time, with the taps of
  ``F.interpolate`` (``align_corners=False``); its sums run in another order, so scores agree to
  float rounding and a label can differ only where two classes tie within it. ``ops.segment_postprocess``
  switches to it above ``BUDGET`` bytes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import check_logits

BUDGET = 256 << 20  # about the float32 bytes of full-size planes (or full-width rows) held at once

Taps = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def nbytes(batch: int, channels: int, out_hw: tuple[int, int]) -> int:
    """Bytes of ``batch x channels`` float32 planes of size ``out_hw``."""
    return 4 * batch * channels * out_hw[0] * out_hw[1]


def bilinear_taps(in_size: int, out_size: int, device: torch.device) -> Taps:
    """For each output index: the two source indices and their weights (``align_corners=False``)."""
    scale = torch.tensor(float(in_size), dtype=torch.float32) / out_size  # float32, as PyTorch's kernel
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0.0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    w_hi = src - lo
    return lo.to(device), hi.to(device), (1.0 - w_hi).to(device), w_hi.to(device)


def upsample_band(x: torch.Tensor, rows: Taps, cols: Taps, y0: int, y1: int) -> torch.Tensor:
    """Output rows ``y0:y1`` of the bilinear upsampling of ``x`` [..., h, w] (taps from ``bilinear_taps``)."""
    lo, hi, w_lo, w_hi = (t[y0:y1, None] for t in rows)
    band = x[..., lo[:, 0], :] * w_lo + x[..., hi[:, 0], :] * w_hi  # [..., y1 - y0, w]
    lo, hi, w_lo, w_hi = cols
    return band[..., lo].mul_(w_lo).add_(band[..., hi].mul_(w_hi))


def _bands(x: torch.Tensor, out_hw: tuple[int, int], budget: int):
    """``(y0, y1, upsampled rows y0:y1 of x)`` over the output, each band within ``budget`` bytes."""
    h, w = out_hw
    rows, cols = bilinear_taps(x.shape[-2], h, x.device), bilinear_taps(x.shape[-1], w, x.device)
    per_row = nbytes(x.shape[0], x.shape[1], (1, w))
    step = max(1, budget // per_row)
    for y0 in range(0, h, step):
        y1 = min(h, y0 + step)
        yield y0, y1, upsample_band(x, rows, cols, y0, y1)


def upsample_argmax(scores: torch.Tensor, out_hw: tuple[int, int], budget: int = BUDGET) -> torch.Tensor:
    """``F.interpolate(scores, out_hw, bilinear).argmax(1)`` [B, H, W], a few classes at a time (a
    running maximum and the labels are all that is kept besides them)."""
    b, classes = scores.shape[:2]
    step = max(1, budget // nbytes(b, 1, out_hw))
    has_nan = bool(scores.isnan().any())  # argmax picks a pixel's first NaN: followed only when needed
    best = torch.full((b, *out_hw), float("-inf"), device=scores.device)
    labels = torch.zeros((b, *out_hw), dtype=torch.long, device=scores.device)
    better = torch.empty((b, *out_hw), dtype=torch.bool, device=scores.device)
    for c0 in range(0, classes, step):
        up = F.interpolate(scores[:, c0 : c0 + step].float(), size=out_hw, mode="bilinear", align_corners=False)
        for i in range(up.shape[1]):
            torch.gt(up[:, i], best, out=better)  # strictly: a tie keeps the lower class, as argmax does
            if has_nan:
                better |= up[:, i].isnan() & ~best.isnan()
            labels.masked_fill_(better, c0 + i)
            torch.maximum(best, up[:, i], out=best)  # NaN stays NaN
        del up  # before the next chunk is allocated
    return labels


def segment_postprocess(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, out_hw: tuple[int, int], budget: int = BUDGET
) -> torch.Tensor:
    """``ops.reference.segment_postprocess`` a band of rows at a time (budget shared by the upsampled
    masks and the class scores of a band)."""
    check_logits(class_logits, mask_logits)
    probs = class_logits.float().softmax(dim=-1)[..., :-1]
    labels = torch.empty(mask_logits.shape[0], *out_hw, dtype=torch.long, device=mask_logits.device)
    per_band = budget * mask_logits.shape[1] // (mask_logits.shape[1] + probs.shape[-1])
    for y0, y1, band in _bands(mask_logits.float(), out_hw, per_band):
        labels[:, y0:y1] = torch.einsum("bqc,bqhw->bchw", probs, band.sigmoid_()).argmax(dim=1)
    return labels
