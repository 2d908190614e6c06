"""Training building blocks: the ATM loss, optimizer and schedule, checkpoints, DDP helpers, logs.

The trainer itself is ``segvit_rt.train`` (``python -m segvit_rt.train``).
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .losses import ATMLoss, LossWeights
from .optim import WarmupPoly, make_optimizer, make_scheduler, param_groups

__all__ = [
    "ATMLoss",
    "CheckpointError",
    "LossWeights",
    "WarmupPoly",
    "load_checkpoint",
    "make_optimizer",
    "make_scheduler",
    "param_groups",
    "save_checkpoint",
]
