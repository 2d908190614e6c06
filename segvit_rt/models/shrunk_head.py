"""SegViT Shrunk head: query upsampling (QU) followed by a single-stage ATM decoder.

QU recovers the 1/16 token grid from the shrunk backbone: learnable grid
queries ``q`` (one per 1/16 token at the crop size) pass through two plain
transformer decoders (``decoder_1``, ``decoder_2``), the first attending to the
projected 1/16 features taken before QD, the second to the projected 1/32
features of the last block. The resulting 1/16 grid is, without further
projection, the memory of one ATM stage (``atm``) whose every layer is
supervised in training; its last layer's mask is the prediction (no cumulative
sum), and in inference the only mask made.
Parameter names follow the official Shrunk head, so its checkpoints load as they are.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import SegViTConfig
from .atm_head import ATMDecoder, Grid, PackedCrossAttention, _output
from .vit import resize_token_grid


class SingleStageATM(nn.Module):
    """One ATM decoder over a memory that is already projected: class queries, a mask per layer."""

    def __init__(self, cfg: SegViTConfig):
        super().__init__()
        dim = cfg.decoder_dim
        self.decoder_1 = ATMDecoder(dim, cfg.decoder_heads, cfg.decoder_layers, cfg.decoder_dropout)
        self.q = nn.Embedding(cfg.num_classes, dim)
        self.class_embed = nn.Linear(dim, cfg.num_classes + 1)

    def forward(self, memory: torch.Tensor, grid: Grid, aux_outputs: bool = True) -> list[dict]:
        """The output of every layer, or with ``aux_outputs=False`` of the last alone: the other
        layers then make no mask (inference needs only the last)."""
        q = self.q.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        outputs = []
        last = len(self.decoder_1.layers) - 1
        for i, layer in enumerate(self.decoder_1.layers):
            q, mask = layer(q, memory, need_mask=aux_outputs or i == last)
            if mask is not None:
                outputs.append(_output(self.class_embed(q), mask, grid))
        return outputs


class ShrunkATMHead(nn.Module):
    def __init__(self, cfg: SegViTConfig, in_channels: int):
        super().__init__()
        dim, heads, layers, drop = cfg.decoder_dim, cfg.decoder_heads, cfg.decoder_layers, cfg.decoder_dropout
        self.query_grid = cfg.grid_size
        self.input_proj_1 = nn.Linear(in_channels, dim)  # 1/16 features (before QD)
        self.proj_norm_1 = nn.LayerNorm(dim)
        self.input_proj_2 = nn.Linear(in_channels, dim)  # 1/32 features (last block)
        self.proj_norm_2 = nn.LayerNorm(dim)
        self.decoder_1 = ATMDecoder(dim, heads, layers, drop, cross_attn=PackedCrossAttention)
        self.decoder_2 = ATMDecoder(dim, heads, layers, drop, cross_attn=PackedCrossAttention)
        self.q = nn.Embedding(self.query_grid**2, dim)
        self.atm = SingleStageATM(cfg)

    def grid_queries(self, grid: Grid) -> torch.Tensor:
        """QU queries for a 1/16 grid; resized bicubically when the input is not the crop size."""
        return resize_token_grid(self.q.weight.unsqueeze(0), self.query_grid, grid)

    def forward(self, features: list[tuple[torch.Tensor, Grid]], aux_outputs: bool = True) -> list[dict]:
        """Outputs of the ATM layers, last = final; ``aux_outputs=False``: the final alone."""
        if len(features) != 2:
            raise ValueError(f"ShrunkATMHead expects the 1/16 and 1/32 feature maps, got {len(features)} maps")
        (x16, grid16), (x32, _) = features
        up = self.grid_queries(grid16).expand(x16.shape[0], -1, -1)
        up, _ = self.decoder_1(up, self.proj_norm_1(self.input_proj_1(x16)))
        up, _ = self.decoder_2(up, self.proj_norm_2(self.input_proj_2(x32)))
        return self.atm(up, grid16, aux_outputs)
