"""Small models and weights for the engine, runtime and demo tests.

A freshly initialised SegViT predicts one class over a whole image (its mask
logits are tiny next to the class-probability differences), which would make
label comparisons trivially true. ``sharpen`` (and ``sharp_model``) scale up the decoders'
cross-attention query/key projections so that the mask logits vary by several
units over the image and the label maps have real boundaries.
"""
from __future__ import annotations

import re

import torch

import segvit_rt
from segvit_rt.data.synth import class_names
from segvit_rt.weights import save_weights

# Depth 3 keeps exports quick; QD at block 1, full-model stages at blocks 0, 1, 2.
SMALL = dict(depth=3, out_indices=(0, 1, 2), shrink_idx=1)


def sharpen(model: segvit_rt.models.SegViT) -> segvit_rt.models.SegViT:
    """Scale the decoders' cross-attention query/key projections (in place) so labels vary over an image."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if re.search(r"multihead_attn\.(q|k)\.weight$", name):
                param.mul_(12.0)
    return model


def sharp_model(variant: str = "shrunk", seed: int = 0) -> segvit_rt.models.SegViT:
    torch.manual_seed(seed)
    return sharpen(segvit_rt.create_model("tiny", variant=variant, class_names=tuple(class_names(5)), **SMALL).eval())


def save_test_weights(path, model, synth: dict | None = None):
    """Weights as the trainer writes them (class names, and the synthetic data's record when given)."""
    extra = {"synth": {"generator": "segvit_rt.data.synth", **synth}} if synth else None
    return save_weights(path, model, extra=extra)
