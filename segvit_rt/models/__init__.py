from .segvit import SegViT, create_model, eval_mode

__all__ = ["SegViT", "create_model", "eval_mode"]
