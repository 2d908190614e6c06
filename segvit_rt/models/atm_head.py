"""ATM (Attention-to-Mask) decoder head, parameter names as the official SegViT head.

Class queries cross-attend to the (projected) ViT tokens. The cross-attention's
scaled q·kᵀ logits averaged over heads are the mask logits; its softmax updates
the queries. Decoder layers are post-norm: self-attention, cross-attention,
ReLU FFN, each followed by add & LayerNorm.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..config import SegViTConfig

Grid = tuple[int, int]


class PackedProjections(nn.Module):
    """``nn.MultiheadAttention``'s parameters (packed ``in_proj_*`` for q, k, v, and ``out_proj``),
    so official checkpoints load; subclasses compute the attention."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)


class SelfAttention(PackedProjections):
    """Multi-head self-attention computed with ``scaled_dot_product_attention``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = (t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2) for t in qkv.split(c, -1))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """ATM cross-attention: returns the attended queries and the head-mean logits (the mask)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.kernels = "reference"

    def forward(self, x, memory, prev_mask=None, need_mask=True):
        out, mask = ops.atm_attention(
            self.q(x), self.k(memory), self.v(memory), self.num_heads,
            impl=self.kernels, dropout_p=self.attn_drop if self.training else 0.0,
            prev_mask=prev_mask, need_mask=need_mask,
        )
        return self.proj(out), mask


class PackedCrossAttention(PackedProjections):
    """Plain cross-attention, as in the QU decoders of the official Shrunk head: the ATM op without
    the mask, which runs as PyTorch SDPA whatever the model's kernels (``segvit_rt.ops``)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__(dim, num_heads, dropout)
        self.kernels = "reference"

    def forward(self, x, memory, prev_mask=None, need_mask=False):
        """``(attended, None)``; takes ``CrossAttention``'s arguments, but makes no mask."""
        if prev_mask is not None or need_mask:
            raise ValueError("the QU cross-attention makes no mask: it takes no prev_mask and need_mask=False")
        w_q, w_kv = self.in_proj_weight.split((x.shape[-1], 2 * x.shape[-1]))
        b_q, b_kv = self.in_proj_bias.split((x.shape[-1], 2 * x.shape[-1]))
        k, v = F.linear(memory, w_kv, b_kv).chunk(2, dim=-1)
        out, _ = ops.atm_attention(
            F.linear(x, w_q, b_q), k, v, self.num_heads, impl=self.kernels,
            dropout_p=self.dropout if self.training else 0.0, need_mask=False,
        )
        return self.out_proj(out), None


class ATMDecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float, cross_attn: type = CrossAttention):
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, dropout)
        self.multihead_attn = cross_attn(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q, memory, prev_mask=None, need_mask=True):
        q = self.norm1(q + self.dropout(self.self_attn(q)))
        attended, mask = self.multihead_attn(q, memory, prev_mask=prev_mask, need_mask=need_mask)
        q = self.norm2(q + self.dropout(attended))
        q = self.norm3(q + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(q))))))
        return q, mask


class ATMDecoder(nn.Module):
    """A stack of decoder layers (no final norm).

    Returns the queries and the mask logits of the layers in ``mask_layers``
    (``prev_mask`` is added to each of those masks).
    """

    def __init__(self, dim: int, num_heads: int, num_layers: int, dropout: float, cross_attn: type = CrossAttention):
        super().__init__()
        self.layers = nn.ModuleList(ATMDecoderLayer(dim, num_heads, dropout, cross_attn) for _ in range(num_layers))

    def forward(self, q, memory, mask_layers=(), prev_mask=None):
        masks = []
        for i, layer in enumerate(self.layers):
            need = i in mask_layers
            q, mask = layer(q, memory, prev_mask=prev_mask if need else None, need_mask=need)
            if need:
                masks.append(mask)
        return q, masks


def _output(class_logits: torch.Tensor, mask: torch.Tensor, grid: Grid) -> dict:
    b, n, _ = mask.shape
    return {"pred_logits": class_logits, "pred_masks": mask.reshape(b, n, *grid)}


class ATMHead(nn.Module):
    """Full SegViT head: one ATM decoder per backbone stage, deepest stage first.

    Each stage's output queries feed the next; stage mask logits are summed
    cumulatively. Returns the per-stage outputs, last = final (the final alone
    with ``aux_outputs=False``).
    """

    def __init__(self, cfg: SegViTConfig, in_channels: int, num_stages: int = 3):
        super().__init__()
        dim = cfg.decoder_dim
        self.num_stages = num_stages
        for i in range(1, num_stages + 1):
            self.add_module(f"input_proj_{i}", nn.Linear(in_channels, dim))
            self.add_module(f"proj_norm_{i}", nn.LayerNorm(dim))
            self.add_module(
                f"decoder_{i}", ATMDecoder(dim, cfg.decoder_heads, cfg.decoder_layers, cfg.decoder_dropout)
            )
        self.q = nn.Embedding(cfg.num_classes, dim)
        self.class_embed = nn.Linear(dim, cfg.num_classes + 1)

    def forward(self, features: list[tuple[torch.Tensor, Grid]], aux_outputs: bool = True) -> list[dict]:
        """Outputs of the stages, last = final; ``aux_outputs=False``: the final alone (every
        stage still makes its mask, which the next one adds to)."""
        if len(features) != self.num_stages:
            raise ValueError(f"ATMHead expects {self.num_stages} feature maps, got {len(features)}")
        b = features[0][0].shape[0]
        q = self.q.weight.unsqueeze(0).expand(b, -1, -1)
        mask, outputs = None, []
        for i, (x, grid) in enumerate(reversed(features), start=1):
            memory = getattr(self, f"proj_norm_{i}")(getattr(self, f"input_proj_{i}")(x))
            decoder = getattr(self, f"decoder_{i}")
            q, (mask,) = decoder(q, memory, mask_layers=(len(decoder.layers) - 1,), prev_mask=mask)
            if aux_outputs or i == self.num_stages:
                outputs.append(_output(self.class_embed(q), mask, grid))
        return outputs
