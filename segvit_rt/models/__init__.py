from .segvit import SegViT, create_model

__all__ = ["SegViT", "create_model"]
