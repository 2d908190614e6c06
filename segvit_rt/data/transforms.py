"""Training and evaluation transforms (numpy + PIL), following the SegViT / mmseg pipeline.

A transform is a callable ``(image, label, rng=None) -> (image, label)`` taking an
``HxWx3`` uint8 RGB array and an ``HxW`` integer label array, returning a float32
``3xHxW`` tensor and an int64 ``HxW`` tensor. ``rng`` (a ``numpy.random.Generator``)
drives every random choice, so the dataset can make augmentation a function of
(seed, epoch, index).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..config import default_scale
from .datasets import IGNORE_INDEX

__all__ = ["EvalTransform", "TrainTransform", "normalize"]

CROP_TRIES = 10


def _check_stats(mean, std) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        raise ValueError(f"mean and std need 3 values (RGB), got {mean.shape} and {std.shape}")
    if (std <= 0).any():
        raise ValueError(f"std must be positive, got {std.tolist()}")
    return mean, std


def _check_image(image) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an HxWx3 uint8 array, got {image.dtype} of shape {image.shape}")


def _check_pair(image, label) -> None:
    _check_image(image)
    if not isinstance(label, np.ndarray) or not np.issubdtype(label.dtype, np.integer):
        raise TypeError(f"label must be an integer numpy array, got {getattr(label, 'dtype', type(label))}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")
    if label.size and label.min() < 0:
        raise ValueError(f"labels must be >= 0 (classes, then the ignore index), got {label.min()}")


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``HxWx3`` uint8 RGB → float32 ``3xHxW`` tensor ``(image - mean) / std`` (stats in 0–255 units)."""
    _check_image(image)
    mean, std = _check_stats(mean, std)
    return _normalize(image, mean, std)


def _normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    out = (image.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def _labels_tensor(label: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))


class EvalTransform:
    """Normalisation only; resizing and sliding windows are the evaluator's job."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = _check_stats(mean, std)

    def __call__(self, image, label, rng=None):
        _check_pair(image, label)
        return _normalize(image, self.mean, self.std), _labels_tensor(label)


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float RGB (any scale) → hue in [0, 1), saturation in [0, 1], value in RGB's scale."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    safe = np.where(delta > 0, delta, 1.0)
    sat = np.where(value > 0, delta / np.where(value > 0, value, 1.0), 0.0)
    hue = np.select(
        [value == r, value == g],
        [((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
        (r - g) / safe + 4.0,
    )
    hue = np.where(delta > 0, hue / 6.0, 0.0)
    return hue, sat, value


def _hsv_to_rgb(hue: np.ndarray, sat: np.ndarray, value: np.ndarray) -> np.ndarray:
    sector = np.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    sector = sector.astype(np.int64) % 6
    p = value * (1.0 - sat)
    q = value * (1.0 - sat * frac)
    t = value * (1.0 - sat * (1.0 - frac))
    table = (  # (r, g, b) for each hue sector
        (value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q),
    )
    channels = [np.choose(sector, [row[c] for row in table]) for c in range(3)]
    return np.stack(channels, axis=-1)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on float RGB in 0–255: each step with probability 1/2.

    Brightness ±32, then contrast ×[0.5, 1.5] either first or last (coin flip),
    saturation ×[0.5, 1.5] and hue ±36° in between; clipped to 0–255 after each step.
    """
    img = image.astype(np.float32)
    if rng.integers(2):
        img = np.clip(img + rng.uniform(-32, 32), 0, 255)
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img = np.clip(img * rng.uniform(0.5, 1.5), 0, 255)
    sat_scale = rng.uniform(0.5, 1.5) if rng.integers(2) else None
    hue_shift = rng.integers(-18, 19) / 180.0 if rng.integers(2) else None  # OpenCV's 0..180 hue units
    if sat_scale is not None or hue_shift is not None:
        hue, sat, value = _rgb_to_hsv(img)
        if sat_scale is not None:
            sat = np.clip(sat * sat_scale, 0.0, 1.0)
        if hue_shift is not None:
            hue = (hue + hue_shift) % 1.0
        img = np.clip(_hsv_to_rgb(hue, sat, value), 0, 255).astype(np.float32)
    if not contrast_first and rng.integers(2):
        img = np.clip(img * rng.uniform(0.5, 1.5), 0, 255)
    return img


def _resize_nearest(label: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.minimum(((np.arange(height) + 0.5) * label.shape[0] / height).astype(np.int64), label.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * label.shape[1] / width).astype(np.int64), label.shape[1] - 1)
    return label[rows[:, None], cols[None, :]]


class TrainTransform:
    """Random resize, cat-max-ratio crop, flip, photometric distortion, normalise, pad.

    ``crop_size`` is an int or ``(height, width)``; ``scale`` is ``(long_edge,
    short_edge)`` before the random ratio, by default ``(4 * crop, crop)`` with
    ``crop`` the larger crop side (mmseg's ADE20K setting, e.g. 2048x512 for a
    512 crop). ``ignore_index`` is the label value that carries no supervision.
    ``seed`` seeds the generator used when a call passes no ``rng``.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[int, int] | None = None,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        ignore_index: int = IGNORE_INDEX,
        seed: int | None = None,
    ):
        crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if len(crop) != 2 or min(crop) <= 0:
            raise ValueError(f"crop_size must be a positive int or (height, width), got {crop_size!r}")
        self.crop_size = crop
        self.mean, self.std = _check_stats(mean, std)
        side = max(crop)
        self.scale = tuple(scale) if scale is not None else default_scale(side)
        if len(self.scale) != 2 or min(self.scale) <= 0:
            raise ValueError(f"scale must be (long_edge, short_edge) > 0, got {scale!r}")
        lo, hi = ratio_range
        if not 0 < lo <= hi:
            raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {ratio_range!r}")
        self.ratio_range = (float(lo), float(hi))
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.cat_max_ratio = cat_max_ratio
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.ignore_index = ignore_index
        self._rng = np.random.default_rng(seed)

    def resize(self, image, label, rng):
        """Scale to fit ``ratio * scale`` (long edge and short edge limits), keeping the aspect ratio."""
        ratio = rng.uniform(*self.ratio_range)
        long_max, short_max = max(self.scale) * ratio, min(self.scale) * ratio
        h, w = label.shape
        factor = min(long_max / max(h, w), short_max / min(h, w))
        new_h, new_w = max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        return image, _resize_nearest(label, new_h, new_w)

    def crop(self, image, label, rng):
        """Random crop; retried so that no class covers ``cat_max_ratio`` or more of its labelled pixels.

        After ``CROP_TRIES`` failures the last crop is kept; ``cat_max_ratio=1`` disables the retries.
        """
        ch, cw = self.crop_size
        h, w = label.shape
        for _ in range(CROP_TRIES if self.cat_max_ratio < 1 else 1):
            top = int(rng.integers(0, max(h - ch, 0) + 1))
            left = int(rng.integers(0, max(w - cw, 0) + 1))
            window = label[top:top + ch, left:left + cw]
            counts = np.bincount(window[window != self.ignore_index])
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return image[top:top + ch, left:left + cw], window

    def pad(self, image: torch.Tensor, label: torch.Tensor):
        """Pad bottom/right to the crop: 0 for the (normalised) image, ``ignore_index`` for labels."""
        ch, cw = self.crop_size
        h, w = label.shape
        if (h, w) == (ch, cw):
            return image, label
        padded_image = image.new_zeros((3, ch, cw))
        padded_image[:, :h, :w] = image
        padded_label = label.new_full((ch, cw), self.ignore_index)
        padded_label[:h, :w] = label
        return padded_image, padded_label

    def __call__(self, image, label, rng: np.random.Generator | None = None):
        _check_pair(image, label)
        rng = self._rng if rng is None else rng
        image, label = self.resize(image, label, rng)
        image, label = self.crop(image, label, rng)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(image, rng)
        image = torch.from_numpy(np.ascontiguousarray(((image - self.mean) / self.std).transpose(2, 0, 1),
                                                      dtype=np.float32))
        return self.pad(image, _labels_tensor(label))
