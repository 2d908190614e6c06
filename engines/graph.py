"""The graph every engine holds: a normalised image batch in, ``(class_logits, mask_logits)`` out.

The full-resolution ``[B, C, H, W]`` score mix is not part of it: the runtime
does that post-process (and the sliding window) outside the engine. The
graph's input and outputs are fp32 whatever the engine's precision: an fp16
engine casts at its edges, so callers never handle half tensors.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn as nn


@contextlib.contextmanager
def quiet_export():
    """Silence torch.export's deprecation inside torch's own pytree copying (torch 2.13): nothing a
    user of the builder can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
        yield


DTYPES = {"fp32": torch.float32, "fp16": torch.float16}  # keys: format.PRECISIONS


class LogitsGraph(nn.Module):
    """``image [B, 3, H, W]`` fp32 -> ``class_logits [B, Q, C+1]``, ``mask_logits [B, Q, H/16, W/16]``, fp32."""

    def __init__(self, model: nn.Module, precision: str):
        super().__init__()
        self.model = model
        self.precision = precision
        self.dtype = DTYPES[precision]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(image.to(self.dtype))
        return out["pred_logits"].float(), out["pred_masks"].float()


def example_input(cfg, batch: int, device, seed: int = 0) -> torch.Tensor:
    """A random normalised image batch at the crop size (seeded: builds are reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, cfg.crop_size, cfg.crop_size, generator=gen).to(device)


def output_shapes(cfg, batch: int | None) -> dict[str, list]:
    """Output shapes of the graph (``None`` for a dynamic batch)."""
    grid = cfg.crop_size // cfg.patch_size
    return {
        "class_logits": [batch, cfg.num_classes, cfg.num_classes + 1],
        "mask_logits": [batch, cfg.num_classes, grid, grid],
    }
