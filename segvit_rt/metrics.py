"""Semantic-segmentation metrics from a confusion matrix, as mmseg reports them.

IoU of class c = TP / (TP + FP + FN); a class absent from both the labels and
the predictions has no IoU (NaN) and is left out of the mean (mIoU). aAcc is
the fraction of labelled pixels predicted right, Acc of class c its recall.
Pixels labelled ``ignore_index`` count nowhere.
"""
from __future__ import annotations

import math

import torch

from .data import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates ``mat[label, prediction]`` pixel counts over batches."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device="cpu"):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add predicted and true label maps of the same shape (any integer dtype)."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
        if pred.is_floating_point() or label.is_floating_point():
            raise TypeError(f"predictions and labels must be integer maps, got {pred.dtype} and {label.dtype}")
        k = self.num_classes
        label = label.to(self.mat.device).reshape(-1).long()
        pred = pred.to(self.mat.device).reshape(-1).long()
        valid = label != self.ignore_index
        label, pred = label[valid], pred[valid]
        for name, values in (("label", label), ("prediction", pred)):
            if values.numel() and (values.min() < 0 or values.max() >= k):
                bad = values[(values < 0) | (values >= k)].unique()[:5].tolist()
                raise ValueError(f"{name} values {bad} are outside 0..{k - 1} (ignore_index {self.ignore_index})")
        self.mat += torch.bincount(label * k + pred, minlength=k * k).reshape(k, k)

    def compute(self) -> dict:
        return metrics_from_confusion(self.mat)


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return kept.mean().item() if kept.numel() else math.nan


def metrics_from_confusion(mat: torch.Tensor) -> dict:
    """``mIoU``, ``aAcc``, ``mAcc`` (floats) and per-class ``IoU``, ``Acc`` (lists, NaN where undefined)."""
    mat = mat.double().cpu()
    tp = mat.diag()
    label_area = mat.sum(1)
    pred_area = mat.sum(0)
    union = label_area + pred_area - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    acc = torch.where(label_area > 0, tp / label_area.clamp(min=1), torch.full_like(tp, math.nan))
    total = label_area.sum().item()
    return {
        "mIoU": _nanmean(iou),
        "aAcc": tp.sum().item() / total if total else math.nan,
        "mAcc": _nanmean(acc),
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }


def chance_levels(label_counts: torch.Tensor) -> dict | None:
    """What predictions that ignore the image score, given each class's labelled pixel count:
    ``constant`` always predicts the most frequent class; ``random`` draws a class uniformly per
    pixel (expected counts: IoU_c = n_c / (N + (K - 1) n_c), aAcc = 1 / K; a class never labelled
    is still predicted, so its IoU 0 counts in the mean, where the constant prediction leaves it
    out, as the metric does a class absent from labels and predictions). ``None`` when no
    pixel is labelled."""
    n = label_counts.double().cpu()
    total, k = n.sum(), n.numel()
    if total <= 0:
        return None
    present = n > 0
    majority = int(n.argmax())
    constant_iou = torch.zeros(k, dtype=torch.float64)
    constant_iou[majority] = n[majority] / total
    random_iou = n / (total + (k - 1) * n)
    return {
        "constant_mIoU": constant_iou[present].mean().item(),
        "constant_aAcc": (n[majority] / total).item(),
        "random_mIoU": random_iou.mean().item(),
        "random_aAcc": 1.0 / k,
    }
