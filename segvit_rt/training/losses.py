"""The ATM loss of SegViT with fixed assignment: query i predicts class i.

Per supervised output (the final one and each auxiliary one):

* class loss: cross-entropy over C+1 logits of every query, target ``i`` when
  class ``i`` appears in the image (any non-ignore pixel) and the "no object"
  index ``C`` otherwise; no-object targets weigh 0.1 and the sum is divided by
  the total weight (as ``F.cross_entropy(weight=...)`` does);
* mask losses, over the classes present: the query's mask logits upsampled
  bilinearly to the label size against the binary class mask, sigmoid focal
  loss (alpha 0.25, gamma 2) averaged over the non-ignore pixels, and dice
  over the non-ignore pixels (+1 smoothing); each averaged over the present
  (image, class) pairs, and 0 when there are none.

Total = 1 * class + 20 * focal + 1 * dice, summed over the outputs.

One deliberate difference from the official code: it averages focal and dice
over every pixel, so ignore (255) and crop-padding pixels count as background
of every class mask; here they count for nothing, as they do in the class
targets and the metrics.

Every term is a sum divided by a count (total class weight, number of present
masks). Under data parallelism the counts can be averaged over the replicas
(``count_reducer``) so that the mean of the replicas' losses, and of their
gradients, equals the loss of one process seeing the whole global batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX

CountReducer = Callable[[torch.Tensor], torch.Tensor]


def present_classes(labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Bool [B, C]: which classes have at least one (non-ignore) pixel in each label map [B, H, W]."""
    b = labels.shape[0]
    flat = labels.reshape(b, -1)
    valid = flat != ignore_index
    if valid.any() and (flat[valid].min() < 0 or flat[valid].max() >= num_classes):
        bad = flat[valid & ((flat < 0) | (flat >= num_classes))].unique()[:5].tolist()
        raise ValueError(
            f"labels hold values {bad} outside 0..{num_classes - 1} (and ignore_index {ignore_index})"
        )
    onehot = torch.zeros(b, num_classes + 1, dtype=torch.bool, device=labels.device)
    onehot.scatter_(1, torch.where(valid, flat, num_classes), True)
    return onehot[:, :num_classes]


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """Element-wise focal loss of sigmoid logits against {0, 1} targets (RetinaNet form)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** gamma


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-mask dice loss [N] of [N, P] logits, counting only ``valid`` pixels."""
    prob = logits.sigmoid() * valid
    targets = targets * valid
    numerator = 2 * (prob * targets).sum(-1) + 1
    denominator = prob.sum(-1) + targets.sum(-1) + 1
    return 1 - numerator / denominator


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    focal: float = 20.0
    dice: float = 1.0
    no_object: float = 0.1


class ATMLoss(torch.nn.Module):
    """``loss(outputs, labels)`` -> dict with ``loss`` (to backpropagate) and the unweighted terms
    of the final output (``ce``, ``focal``, ``dice``), all scalars."""

    def __init__(
        self,
        num_classes: int,
        weights: LossWeights = LossWeights(),
        alpha: float = 0.25,
        gamma: float = 2.0,
        ignore_index: int = IGNORE_INDEX,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.weights = weights
        self.alpha = alpha
        self.gamma = gamma
        self.ignore_index = ignore_index

    def forward(self, outputs: dict, labels: torch.Tensor, count_reducer: CountReducer | None = None) -> dict:
        if labels.dim() != 3 or labels.dtype != torch.int64:
            raise ValueError(f"labels must be an int64 [B, H, W] tensor, got {labels.dtype} {tuple(labels.shape)}")
        present = present_classes(labels, self.num_classes, self.ignore_index)
        n_present = present.sum().double()
        class_weight = n_present + self.weights.no_object * (present.numel() - n_present)
        counts = torch.stack([class_weight, n_present])
        if count_reducer is not None:
            counts = count_reducer(counts)
        class_weight, n_present = counts[0], counts[1].clamp(min=1.0)

        # Binary target and non-ignore pixels of each present (image, class) pair, flattened.
        image, cls = present.nonzero(as_tuple=True)
        targets = (labels[image] == cls[:, None, None]).flatten(1)
        valid = (labels[image] != self.ignore_index).flatten(1)
        per_output = [
            self.output_terms(out, labels.shape[-2:], present, targets, valid, class_weight, n_present)
            for out in [outputs, *outputs.get("aux_outputs", ())]
        ]
        total = sum(getattr(self.weights, k) * v for terms in per_output for k, v in terms.items())
        return {"loss": total, **per_output[0]}

    def output_terms(self, out, label_hw, present, targets, valid, class_weight, n_present) -> dict:
        # Losses in float32 (or float64) whatever precision the model ran in.
        logits = out["pred_logits"].to(torch.promote_types(out["pred_logits"].dtype, torch.float32))
        masks = out["pred_masks"].to(torch.promote_types(out["pred_masks"].dtype, torch.float32))
        b, q, c1 = logits.shape
        if q != self.num_classes or c1 != self.num_classes + 1 or masks.shape[:2] != (b, q):
            raise ValueError(
                f"outputs for {self.num_classes} classes need pred_logits [B, {self.num_classes}, "
                f"{self.num_classes + 1}] and pred_masks [B, {self.num_classes}, h, w], got "
                f"{tuple(logits.shape)} and {tuple(masks.shape)}"
            )
        query = torch.arange(q, device=logits.device).expand(b, q)
        cls_target = torch.where(present, query, self.num_classes)
        weight = torch.ones(c1, dtype=logits.dtype, device=logits.device)
        weight[-1] = self.weights.no_object
        ce = F.cross_entropy(logits.reshape(b * q, c1), cls_target.reshape(-1), weight=weight, reduction="sum")

        valid, targets = valid.to(masks.dtype), targets.to(masks.dtype)
        pred = F.interpolate(masks[present][:, None], size=tuple(label_hw), mode="bilinear", align_corners=False)
        pred = pred.flatten(1)
        focal = (sigmoid_focal_loss(pred, targets, self.alpha, self.gamma) * valid).sum(-1)
        focal = focal / valid.sum(-1).clamp(min=1.0)
        dice = dice_loss(pred, targets, valid)
        # With no class present the mask sums are empty (0); masks.sum() * 0 keeps every output in the graph.
        zero = masks.sum() * 0
        class_weight, n_present = class_weight.to(ce.dtype), n_present.to(ce.dtype)
        return {
            "ce": ce / class_weight,
            "focal": focal.sum() / n_present + zero,
            "dice": dice.sum() / n_present + zero,
        }
