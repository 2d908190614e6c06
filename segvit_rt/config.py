"""Model presets: one frozen dataclass per (backbone, dataset, crop).

Figures follow the SegViT paper and its official configs: ViT-B/16 uses blocks
[5, 7, 11], ViT-L/16 uses [7, 15, 23] and QD at block 8; the decoder works at
half the backbone width with head_dim 32. The official code has Shrunk configs
for ViT-L only: QD at block 6 of ViT-B, right after its first feature block (5),
as ViT-L's block 8 follows its block 7, is our choice.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace


def default_scale(crop: int) -> tuple[int, int]:
    """The image scale (long edge, short edge) of a preset that sets none: mmseg's ADE20K rule,
    2048x512 for a 512 crop."""
    return 4 * crop, crop


VARIANTS = ("full", "shrunk")

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
HALF_RANGE = (127.5, 127.5, 127.5)


@dataclass(frozen=True)
class SegViTConfig:
    name: str
    dataset: str
    num_classes: int
    crop_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # backbone
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    # training only: stochastic depth rising linearly over the blocks to this rate (official: ViT-L 0.3,
    # ViT-B 0.1); the identity in eval mode, so engines and inference never see it
    drop_path_rate: float = 0.0
    out_indices: tuple[int, ...] = (7, 15, 23)
    shrink_idx: int = 8
    # decoder
    decoder_dim: int = 512
    decoder_heads: int = 16
    decoder_layers: int = 3
    decoder_dropout: float = 0.1
    # evaluation: sliding-window crop and stride (official configs)
    slide_stride: int = 608
    # Image scale (long edge, short edge) of the official pipelines: training resizes to fit a random
    # 0.5-2.0 times it, testing to fit it; None is (4 * crop, crop). test_min_size is mmseg's
    # Resize(min_size) at test time: the short side becomes max(short edge, min size), the long side
    # follows (PASCAL-Context's official setting).
    image_scale: tuple[int, int] | None = None
    test_min_size: int | None = None
    class_names: tuple[str, ...] | None = field(default=None, compare=False)

    def __post_init__(self):
        problems = _config_problems(self)
        if problems:
            raise ValueError(f"config {self.name!r}: " + "; ".join(problems))

    @property
    def grid_size(self) -> int:
        """Tokens per side at the crop size (1/16 resolution)."""
        return self.crop_size // self.patch_size

    def scales(self, crop: int | None = None) -> tuple[tuple[int, int], int | None]:
        """``(image_scale, test_min_size)`` for training or testing at ``crop`` (default: the preset's
        crop size), scaled in proportion to it."""
        crop = crop or self.crop_size
        long, short = self.image_scale or default_scale(self.crop_size)

        def at_crop(n: int) -> int:
            return max(1, round(n * crop / self.crop_size))

        min_size = None if self.test_min_size is None else at_crop(self.test_min_size)
        return (at_crop(long), at_crop(short)), min_size

    def stride_at(self, crop: int | None = None) -> int:
        """The sliding-window stride for windows of ``crop`` (default: the preset's crop size), the
        slide stride scaled in proportion."""
        return max(1, round(self.slide_stride * (crop or self.crop_size) / self.crop_size))

    def names(self) -> tuple[str, ...]:
        """Class names: the preset's, else the dataset's list, else ``class_i``."""
        if self.class_names is not None:
            return self.class_names
        from .class_names import DATASET_CLASSES

        names = DATASET_CLASSES.get(self.dataset)
        if names is not None and len(names) == self.num_classes:
            return tuple(names)
        return tuple(f"class_{i}" for i in range(self.num_classes))

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _config_problems(c: SegViTConfig) -> list[str]:
    """What makes a config unbuildable, field by field (empty when it is sound)."""
    problems = []

    def positive(*names):
        problems.extend(f"{n} must be a positive integer, got {getattr(c, n)!r}" for n in names
                        if not (_is_int(getattr(c, n)) and getattr(c, n) >= 1))

    positive("num_classes", "crop_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_dim",
             "decoder_heads", "decoder_layers", "slide_stride")
    if problems:
        return problems
    if c.crop_size % c.patch_size:
        problems.append(f"crop_size {c.crop_size} is not a multiple of patch_size {c.patch_size}")
    for dim, heads in (("embed_dim", "num_heads"), ("decoder_dim", "decoder_heads")):
        if getattr(c, dim) % getattr(c, heads):
            problems.append(f"{dim} {getattr(c, dim)} is not divisible by {heads} {getattr(c, heads)}")
    # out_indices (full) and shrink_idx (Shrunk) are checked against depth for the variant built: check_blocks
    blocks = tuple(c.out_indices)
    if not blocks or any(not _is_int(i) for i in blocks) or len(set(blocks)) != len(blocks):
        problems.append(f"out_indices {blocks} must be distinct block numbers")
    if not _is_int(c.shrink_idx):
        problems.append(f"shrink_idx must be a block number, got {c.shrink_idx!r}")
    for name in ("mean", "std"):
        if len(getattr(c, name)) != 3:
            problems.append(f"{name} needs 3 values (R, G, B), got {tuple(getattr(c, name))}")
    if not all(_is_real(v) and math.isfinite(v) for v in c.mean):
        problems.append(f"mean values must be finite numbers, got {tuple(c.mean)}")
    if not all(_is_real(v) and 0 < v < math.inf for v in c.std):
        problems.append(f"std values must be positive finite numbers, got {tuple(c.std)}")
    if not (_is_real(c.mlp_ratio) and 0 < c.mlp_ratio < math.inf):
        problems.append(f"mlp_ratio must be positive and finite, got {c.mlp_ratio!r}")
    for name in ("drop_path_rate", "decoder_dropout"):
        if not 0 <= getattr(c, name) < 1:
            problems.append(f"{name} must be in [0, 1), got {getattr(c, name)!r}")
    if c.image_scale is not None and (len(c.image_scale) != 2 or min(c.image_scale) < 1):
        problems.append(f"image_scale must be two positive sizes (long, short), got {c.image_scale!r}")
    if c.test_min_size is not None and c.test_min_size < 1:
        problems.append(f"test_min_size must be positive, got {c.test_min_size!r}")
    if c.class_names is not None and len(c.class_names) != c.num_classes:
        problems.append(f"{len(c.class_names)} class names for {c.num_classes} classes")
    return problems


_VIT_L = dict(
    embed_dim=1024, depth=24, num_heads=16, out_indices=(7, 15, 23), shrink_idx=8,
    decoder_dim=512, decoder_heads=16, mean=HALF_RANGE, std=HALF_RANGE, drop_path_rate=0.3,
)
_VIT_B = dict(
    embed_dim=768, depth=12, num_heads=12, out_indices=(5, 7, 11), shrink_idx=6,
    decoder_dim=384, decoder_heads=12, drop_path_rate=0.1,
)

PRESETS: dict[str, SegViTConfig] = {
    c.name: c
    for c in (
        SegViTConfig("vit_l16_ade20k_640", "ade20k", 150, 640, slide_stride=608, image_scale=(2048, 640), **_VIT_L),
        SegViTConfig("vit_b16_ade20k_512", "ade20k", 150, 512, slide_stride=341, **_VIT_B),
        SegViTConfig("vit_l16_cocostuff10k_512", "cocostuff10k", 171, 512, slide_stride=341, test_min_size=512,
                     **_VIT_L),
        SegViTConfig("vit_l16_pcontext_480", "pcontext", 60, 480, slide_stride=320, image_scale=(520, 520),
                     test_min_size=480, **_VIT_L),
        # Small enough to train on 2 CPU cores in minutes (tests and the demo, on synthetic data).
        SegViTConfig(
            "tiny", "synthetic", 5, 128, patch_size=16, embed_dim=128, depth=6, num_heads=4,
            out_indices=(1, 3, 5), shrink_idx=3, decoder_dim=64, decoder_heads=2,
            mean=HALF_RANGE, std=HALF_RANGE, slide_stride=96,
        ),
    )
}


def get_config(preset: str | SegViTConfig, **overrides) -> SegViTConfig:
    """Look up a preset by name (or pass a config through), with field overrides. A new
    ``crop_size`` scales the preset's slide stride, image scale and test min size with it
    (unless they are overridden too)."""
    if isinstance(preset, SegViTConfig):
        cfg = preset
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        cfg = PRESETS[preset]
    crop = overrides.get("crop_size")
    if crop is not None and crop != cfg.crop_size:  # the official stride and image scales follow the crop
        overrides.setdefault("slide_stride", cfg.stride_at(crop))
        scale, min_size = cfg.scales(crop)
        if cfg.image_scale is not None:
            overrides.setdefault("image_scale", scale)
        if cfg.test_min_size is not None:
            overrides.setdefault("test_min_size", min_size)
    return replace(cfg, **overrides) if overrides else cfg


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def check_blocks(cfg: SegViTConfig, variant: str) -> None:
    """The blocks a variant takes features from must exist: the full model's ``out_indices``, the
    Shrunk model's ``shrink_idx`` (QD's block; the one before it feeds the head). Each variant
    ignores the other's field."""
    last = cfg.depth - 1
    if check_variant(variant) == "full" and not all(0 <= i <= last for i in cfg.out_indices):
        raise ValueError(f"config {cfg.name!r}: out_indices {tuple(cfg.out_indices)} must be block numbers in "
                         f"0..{last} (depth {cfg.depth})")
    if variant == "shrunk" and not 1 <= cfg.shrink_idx <= last:
        raise ValueError(f"config {cfg.name!r}: shrink_idx {cfg.shrink_idx} (the block QD replaces) must be in "
                         f"1..{last} (depth {cfg.depth})")


def input_multiple(cfg: SegViTConfig, variant: str) -> int:
    """What an input's sides must be a multiple of: the patch, and for Shrunk an even token grid (QD)."""
    return cfg.patch_size * (2 if check_variant(variant) == "shrunk" else 1)
