"""SegViT: ViT backbone + ATM head (``variant="full"``) or QD backbone + QU/ATM head (``"shrunk"``)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from .. import ops
from ..config import SegViTConfig, check_blocks, get_config, input_multiple
from .atm_head import ATMHead
from .shrunk_head import ShrunkATMHead
from .vit import VisionTransformer


class SegViT(nn.Module):
    """``forward(img)`` returns ``{"pred_logits": [B, Q, C+1], "pred_masks": [B, Q, h, w]}``
    (mask logits on the 1/16 grid); in training mode also ``"aux_outputs"``, the
    earlier supervised outputs, each the same kind of dict."""

    def __init__(self, cfg: SegViTConfig, variant: str = "full", kernels: str = "reference"):
        super().__init__()
        check_blocks(cfg, variant)
        self.cfg = cfg
        self.variant = variant
        if variant == "full":
            self.backbone = VisionTransformer(cfg, cfg.out_indices)
            self.decode_head = ATMHead(cfg, cfg.embed_dim, num_stages=len(cfg.out_indices))
        else:
            self.backbone = VisionTransformer(cfg, (cfg.shrink_idx - 1, cfg.depth - 1), shrink_idx=cfg.shrink_idx)
            self.decode_head = ShrunkATMHead(cfg, cfg.embed_dim)
        self._init_weights()
        self.set_kernels(kernels)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def set_kernels(self, kernels: str) -> "SegViT":
        """Switch every hot-path op between ``"reference"`` PyTorch and fused ``"triton"`` kernels
        (``"tensorrt_plugin"``: export to a TensorRT engine with the ATM plugin, see ``segvit_rt.ops``)."""
        ops.check_impl(kernels)
        self.kernels = kernels
        for m in self.modules():
            if hasattr(m, "kernels") and m is not self:
                m.kernels = kernels
        return self

    def check_input(self, img: torch.Tensor) -> None:
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"SegViT expects an image batch [B, 3, H, W], got {shape}")
        weight = self.backbone.patch_embed.proj.weight
        if not img.is_floating_point():
            raise TypeError(f"SegViT expects a normalised float image batch ((pixel - mean) / std), got {img.dtype}")
        autocast = torch.amp.is_autocast_available(img.device.type) and torch.is_autocast_enabled(img.device.type)
        if img.dtype != weight.dtype and not autocast:
            raise TypeError(f"the image batch is {img.dtype} and the model's weights {weight.dtype}: "
                            f"convert one to the other (or run under torch.autocast)")
        multiple = input_multiple(self.cfg, self.variant)
        h, w = img.shape[-2:]
        if not h or not w or h % multiple or w % multiple:
            raise ValueError(
                f"image size {h}x{w} must be a positive multiple of {multiple} for the {self.variant} model "
                f"(patch {self.cfg.patch_size}{', even token grid for QD' if self.variant == 'shrunk' else ''})"
            )

    def forward(self, img: torch.Tensor) -> dict:
        self.check_input(img)
        outputs = self.decode_head(self.backbone(img), aux_outputs=self.training)
        final = dict(outputs[-1])
        if self.training:
            final["aux_outputs"] = outputs[:-1]
        return final

    def semantic_logits(self, img: torch.Tensor) -> torch.Tensor:
        """Per-class scores [B, C, H, W] at the image size, from the eval-mode forward (whatever
        mode the model is in: dropout and stochastic depth never blur a prediction)."""
        with eval_mode(self):
            out = self.forward(img)
        return ops.reference.semantic_logits(out["pred_logits"], out["pred_masks"], img.shape[-2:])

    def predict(self, img: torch.Tensor) -> torch.Tensor:
        """Label map [B, H, W] at the image size, from the eval-mode forward."""
        with eval_mode(self):
            out = self.forward(img)
        return ops.segment_postprocess(out["pred_logits"], out["pred_masks"], img.shape[-2:], impl=self.kernels)


@contextmanager
def eval_mode(model: nn.Module):
    """Run the block with every submodule of ``model`` in eval mode; each gets its own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def create_model(preset: str | SegViTConfig, variant: str = "full", kernels: str = "reference", **overrides) -> SegViT:
    """Build a randomly initialised SegViT for a preset (see ``segvit_rt.PRESETS``)."""
    return SegViT(get_config(preset, **overrides), variant=variant, kernels=kernels)
