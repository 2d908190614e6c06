"""AdamW with SegViT's parameter groups, and the warm-up + poly learning-rate schedule.

The decode head learns 10x faster than the backbone, as in the official
configs. Norms, biases, the position embedding and the (class and QU) query
embeddings get no weight decay, the usual ViT fine-tuning rule; the official
configs exempt only parameters named by their norm keys (mmcv ``custom_keys``).
The schedule is mmseg's: poly decay to 0 over the run (power 1; COCO-Stuff's
config uses 2), multiplied by a linear warm-up.
"""
from __future__ import annotations

import torch
import torch.nn as nn

HEAD_PREFIX = "decode_head."


def no_weight_decay(module: nn.Module, param_name: str, param: nn.Parameter) -> bool:
    """Biases and other vectors, norms, query embeddings and the position embedding."""
    return param.ndim <= 1 or isinstance(module, (nn.LayerNorm, nn.Embedding)) or param_name == "pos_embed"


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 10.0) -> list[dict]:
    """Up to four groups, ``{backbone, head} x {decay, no decay}``, each with a ``name`` and ``lr``."""
    groups: dict[tuple[bool, bool], dict] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            head = full_name.startswith(HEAD_PREFIX)
            decay = not no_weight_decay(module, param_name, param)
            group = groups.setdefault((head, decay), {
                "name": f"{'head' if head else 'backbone'}{'' if decay else '_no_decay'}",
                "params": [],
                "param_names": [],
                "lr": lr * (head_lr_mult if head else 1.0),
                "weight_decay": weight_decay if decay else 0.0,
            })
            group["params"].append(param)
            group["param_names"].append(full_name)
    return [groups[key] for key in sorted(groups)]


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.01, head_lr_mult: float = 10.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    groups = param_groups(model, lr, weight_decay, head_lr_mult)
    for group in groups:
        del group["param_names"]  # names stay out of the optimizer state (and its checkpoints)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


class WarmupPoly:
    """LR factor at a step: poly decay ``(1 - step / max_iters) ** power`` (floored at ``min_ratio``)
    times a linear warm-up from ``warmup_ratio`` to 1 over ``warmup_iters`` steps.

    A plain-attribute callable, so ``LambdaLR.state_dict()`` stores it as numbers.
    """

    def __init__(self, max_iters: int, warmup_iters: int = 0, power: float = 1.0,
                 warmup_ratio: float = 1e-6, min_ratio: float = 0.0):
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        self.max_iters = max_iters
        self.warmup_iters = warmup_iters
        self.power = power
        self.warmup_ratio = warmup_ratio
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        progress = min(step, self.max_iters) / self.max_iters
        factor = (1.0 - self.min_ratio) * (1.0 - progress) ** self.power + self.min_ratio
        if step < self.warmup_iters:
            factor *= 1.0 - (1.0 - step / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return factor


def make_scheduler(optimizer: torch.optim.Optimizer, max_iters: int, warmup_iters: int, power: float = 1.0):
    """Per-iteration schedule: call ``step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupPoly(max_iters, warmup_iters, power))
