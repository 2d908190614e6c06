"""Plain ViT backbone (timm parameter names) with optional query downsampling (QD).

Pre-norm blocks, LayerNorm eps 1e-6, no final norm. The position embedding
keeps timm's cls slot so checkpoints load unchanged, but no cls token enters
the sequence: the slot is dropped and the grid part is resized bicubically to
the input's token grid. With ``shrink_idx`` set (SegViT Shrunk), that block
attends from the stride-2 nearest-sampled queries to all keys/values, reusing
the block's own weights, and every later block runs at 1/32.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..config import SegViTConfig
from ..ops.reference import downsample_tokens

Grid = tuple[int, int]


def resize_token_grid(tokens: torch.Tensor, size: int, grid: Grid) -> torch.Tensor:
    """Tokens [1, size*size, C] on a square grid, resized bicubically to ``grid`` (h, w): [1, h*w, C]."""
    if tuple(grid) == (size, size):
        return tokens
    x = tokens.reshape(1, size, size, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(grid), mode="bicubic", align_corners=False)
    return x.flatten(2).transpose(1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (h, w)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.kernels = "reference"

    def forward(self, x: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """Self-attention; with ``grid`` given, QD attention from the stride-2 queries."""
        b, l, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)  # strided views of one projection
        if grid is not None:
            out = ops.qd_attention(q, k, v, grid, self.num_heads, impl=self.kernels)
        else:
            q, k, v = (t.reshape(b, l, self.num_heads, c // self.num_heads).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, l, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(branch: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, a residual branch is dropped for whole samples with probability
    ``rate`` and kept ones are scaled by ``1 / (1 - rate)``; the identity otherwise."""
    if not training or rate == 0.0:
        return branch
    keep = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(1.0 - rate)
    return branch * keep / (1.0 - rate)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, qd_grid: Grid | None = None) -> torch.Tensor:
        rate = self.drop_path_rate
        if qd_grid is None:
            x = x + drop_path(self.attn(self.norm1(x)), rate, self.training)
        else:  # QD: the residual is the downsampled input
            x = downsample_tokens(x, qd_grid) + drop_path(self.attn(self.norm1(x), qd_grid), rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), rate, self.training)

    def extra_repr(self) -> str:
        return f"drop_path_rate={self.drop_path_rate:g}" if self.drop_path_rate else ""


class VisionTransformer(nn.Module):
    """Returns ``[(tokens [B, h*w, C], (h, w)), ...]`` for each block in ``out_indices``."""

    def __init__(self, cfg: SegViTConfig, out_indices: tuple[int, ...], shrink_idx: int | None = None):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.embed_dim = cfg.embed_dim
        self.out_indices = tuple(out_indices)
        self.shrink_idx = shrink_idx
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.pos_grid = cfg.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid**2, cfg.embed_dim))
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # deeper: dropped more
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, r) for r in rates)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def grid_pos_embed(self, grid: Grid) -> torch.Tensor:
        """Grid part of the position embedding (cls slot dropped), bicubically resized to ``grid``."""
        return resize_token_grid(self.pos_embed[:, 1:], self.pos_grid, grid)

    def forward(self, img: torch.Tensor) -> list[tuple[torch.Tensor, Grid]]:
        x, grid = self.patch_embed(img)
        x = x + self.grid_pos_embed(grid)
        outs = []
        for i, block in enumerate(self.blocks):
            if i == self.shrink_idx:
                x = block(x, qd_grid=grid)
                grid = (grid[0] // 2, grid[1] // 2)
            else:
                x = block(x)
            if i in self.out_indices:
                outs.append((x, grid))
        return outs
