"""Procedural segmentation dataset in the ADE20K layout, for demos and tests.

``python -m segvit_rt.data.synth OUT --classes K --train N --val M [--size 160] [--seed 0]``

Each image is cut into regions (warped Voronoi cells with a few blobs on top).
A region's class decides only its texture family: stripes, checkerboard, dots,
rings, a random-wave grain... Colours are drawn afresh for every region (two
random colours blended by the texture), the period and phase of the texture
are random too, so neither colour nor scale identifies a class: a model has to
learn texture. Textures are chosen to survive the training augmentation: no
class is the mirror image of another (horizontal flip) and none differ only by
scale (random resize). Classes beyond the first ``len(FAMILIES)`` reuse the
families with a different duty cycle (thin lines, small dots).

Annotations store 0 for a one-pixel ignore band along region boundaries and
``c + 1`` for class ``c``. Output is deterministic for a seed, and written to a
temporary folder renamed into place at the end (``io_utils.atomic_dir``), so an
interrupted run leaves no partial dataset behind, and a killed run's folder is
cleared by the next.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..cli import check_output, user_message
from ..io_utils import atomic_dir
from .datasets import ADE_FOLDER

__all__ = ["FAMILIES", "class_names", "generate", "render_sample"]

FAMILIES = (
    "horizontal-stripes", "vertical-stripes", "checkerboard", "dots", "grain",
    "diagonal-stripes", "rings", "grid", "diamonds", "horizontal-waves",
    "vertical-waves", "diagonal-grid",
)
DUTY_CYCLES = (0.5, 0.22, 0.36, 0.12)  # fraction of a period in the foreground colour
PERIOD_RANGE = (7.0, 12.0)  # texture period in pixels at --size 160, scaled with the size
MIN_COLOUR_DISTANCE = 100.0  # between a region's two colours, so its texture is visible
PIXEL_NOISE = 5.0
SPLITS = (("training", 0), ("validation", 1))


def class_names(num_classes: int) -> list[str]:
    names = []
    for c in range(num_classes):
        family, variant = FAMILIES[c % len(FAMILIES)], c // len(FAMILIES)
        names.append(family if variant == 0 else f"{family}-{variant}")
    return names


def _soft_square(phase: np.ndarray, duty: float, period: float) -> np.ndarray:
    """Square wave of ``phase`` (in cycles): 1 on a ``duty`` fraction, edges about a pixel wide."""
    threshold = math.cos(math.pi * duty)
    sharpness = period / (2 * math.pi * max(math.sin(math.pi * duty), 0.2))
    return np.clip(0.5 + (np.cos(2 * math.pi * phase) - threshold) * sharpness, 0.0, 1.0)


def _random_waves(y, x, period, directions, rng) -> np.ndarray:
    """Sum of cosines with the given wavelength along random directions (a smooth random field)."""
    field = np.zeros_like(x)
    for theta in directions:
        field += np.cos(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / period
                        + rng.uniform(0, 2 * math.pi))
    return field / math.sqrt(len(directions) / 2)  # about unit variance


def texture(cls: int, y: np.ndarray, x: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Foreground weight in [0, 1] of class ``cls``'s texture over pixel coordinates ``y``, ``x``."""
    family = FAMILIES[cls % len(FAMILIES)]
    variant = cls // len(FAMILIES)
    duty = DUTY_CYCLES[variant % len(DUTY_CYCLES)]
    period *= 1.0 + 0.6 * (variant // len(DUTY_CYCLES))  # only past 48 classes does scale matter
    py, px = rng.uniform(0, 1, size=2)
    diag = rng.choice((-1.0, 1.0))  # either diagonal: a flip maps one onto the other
    u, v = (x + diag * y) / math.sqrt(2), (x - diag * y) / math.sqrt(2)
    if family == "horizontal-stripes":
        return _soft_square(y / period + py, duty, period)
    if family == "vertical-stripes":
        return _soft_square(x / period + px, duty, period)
    if family == "diagonal-stripes":
        return _soft_square(u / period + px, duty, period)
    if family in ("checkerboard", "diamonds"):
        a, b = (x, y) if family == "checkerboard" else (u, v)
        sa, sb = _soft_square(a / period + px, duty, period), _soft_square(b / period + py, duty, period)
        return sa * (1 - sb) + sb * (1 - sa)  # exclusive or: a checkerboard, a plaid when duty != 1/2
    if family in ("grid", "diagonal-grid"):
        a, b = (x, y) if family == "grid" else (u, v)
        line = duty / 2
        return np.maximum(_soft_square(a / period + px, line, period), _soft_square(b / period + py, line, period))
    if family == "dots":
        dy = (y / period + py) % 1.0 - 0.5
        dx = (x / period + px) % 1.0 - 0.5
        radius = math.sqrt(duty / math.pi) * period
        return np.clip(0.5 + radius - np.hypot(dx, dy) * period, 0.0, 1.0)
    if family == "rings":
        cy, cx = rng.uniform(y.min(), y.max()), rng.uniform(x.min(), x.max())
        return _soft_square(np.hypot(y - cy, x - cx) / period + py, duty, period)
    if family in ("horizontal-waves", "vertical-waves"):
        along, across = (x, y) if family == "horizontal-waves" else (y, x)
        wobble = 0.3 * np.sin(2 * math.pi * along / (2.5 * period) + rng.uniform(0, 2 * math.pi))
        return _soft_square(across / period + wobble + py, duty, period)
    # grain: blobs and worms of a random wave field, thresholded so ``duty`` of it is foreground
    field = _random_waves(y, x, period, rng.uniform(0, math.pi, size=6), rng)
    return np.clip(0.5 + (field - _GAUSS_UPPER_QUANTILE[duty]) * period / 4, 0.0, 1.0)


# z with P(N(0, 1) > z) = duty, for the grain family's threshold
_GAUSS_UPPER_QUANTILE = {0.5: 0.0, 0.22: 0.772, 0.36: 0.358, 0.12: 1.175}


def _regions(size: int, rng: np.random.Generator) -> np.ndarray:
    """Region ids: warped Voronoi cells, then up to two warped elliptic blobs on top."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    amplitude = 0.06 * size
    wy = y + amplitude * _random_waves(y, x, 0.6 * size, rng.uniform(0, 2 * math.pi, size=3), rng)
    wx = x + amplitude * _random_waves(y, x, 0.6 * size, rng.uniform(0, 2 * math.pi, size=3), rng)
    seeds = rng.uniform(0, size, size=(int(rng.integers(2, 5)), 2))
    dist = (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2
    region = dist.argmin(axis=0)
    next_id = len(seeds)
    for _ in range(int(rng.integers(0, 3))):
        cy, cx = rng.uniform(0.15 * size, 0.85 * size, size=2)
        ay, ax = rng.uniform(0.1 * size, 0.3 * size, size=2)
        angle = rng.uniform(0, math.pi)
        dy, dx = wy - cy, wx - cx
        ry = dy * math.cos(angle) - dx * math.sin(angle)
        rx = dy * math.sin(angle) + dx * math.cos(angle)
        region = np.where((ry / ay) ** 2 + (rx / ax) ** 2 < 1.0, next_id, region)
        next_id += 1
    return region


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two uniformly random RGB colours at least MIN_COLOUR_DISTANCE apart (same law for every class)."""
    while True:
        a, b = rng.uniform(0, 255, size=(2, 3))
        if np.linalg.norm(a - b) >= MIN_COLOUR_DISTANCE:
            return a, b


def render_sample(num_classes: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One ``size x size`` image (uint8 RGB) and its annotation (uint8: 0 ignore, ``c + 1`` class ``c``)."""
    region = _regions(size, rng)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((size, size, 3), dtype=np.float32)
    annotation = np.zeros((size, size), dtype=np.uint8)
    scale = size / 160.0
    for rid in np.unique(region):
        inside = region == rid
        cls = int(rng.integers(num_classes))
        period = rng.uniform(*PERIOD_RANGE) * scale
        weight = texture(cls, y[inside], x[inside], period, rng)
        background, foreground = _colour_pair(rng)
        image[inside] = background + weight[:, None] * (foreground - background)
        annotation[inside] = cls + 1
    boundary = np.zeros(region.shape, dtype=bool)
    boundary[:, :-1] |= region[:, :-1] != region[:, 1:]
    boundary[:-1, :] |= region[:-1, :] != region[1:, :]
    annotation[boundary] = 0
    image += rng.normal(0.0, PIXEL_NOISE, size=image.shape)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), annotation


def generate(
    out,
    classes: int,
    train: int,
    val: int,
    size: int = 160,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``out/ADEChallengeData2016`` (images, annotations, classes.txt) and return that folder."""
    if not 2 <= classes <= 254:
        raise ValueError(f"classes must be in 2..254 (8-bit annotations, 0 = ignore), got {classes}")
    if train < 1 or val < 1:
        raise ValueError(f"need at least one image per split, got train={train}, val={val}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    out = Path(out)
    target = out / ADE_FOLDER
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
    with atomic_dir(target) as partial:  # also clears what a killed run left
        _write(partial, classes, train, val, size, seed, progress)
    return target


def _write(root: Path, classes: int, train: int, val: int, size: int, seed: int, progress: bool) -> None:
    counts = {"training": train, "validation": val}
    with tqdm(total=train + val, desc="synth", unit="img", disable=not progress) as bar:
        for split, code in SPLITS:
            (root / "images" / split).mkdir(parents=True)
            (root / "annotations" / split).mkdir(parents=True)
            for index in range(counts[split]):
                rng = np.random.default_rng(np.random.SeedSequence([seed, code, index]))
                image, annotation = render_sample(classes, size, rng)
                stem = f"synth_{split}_{index:06d}"
                Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg", quality=95)
                Image.fromarray(annotation).save(root / "annotations" / split / f"{stem}.png")
                bar.update()
    (root / "classes.txt").write_text("\n".join(class_names(classes)) + "\n", encoding="utf-8")
    meta = dict(generator="segvit_rt.data.synth", classes=classes, train=train, val=val, size=size, seed=seed)
    (root / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segvit_rt.data.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder; the dataset goes to OUT/ADEChallengeData2016")
    parser.add_argument("--classes", type=int, required=True, help="number of classes K (2..254)")
    parser.add_argument("--train", type=int, required=True, help="training images")
    parser.add_argument("--val", type=int, required=True, help="validation images")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels (default 160)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (Path(args.out) / ADE_FOLDER).exists() and not args.overwrite:
        parser.error(f"{Path(args.out) / ADE_FOLDER} already exists: pass --overwrite to replace it")
    try:
        check_output(args.out, "OUT", folder=True)
        root = generate(args.out, args.classes, args.train, args.val, args.size, args.seed,
                        overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileExistsError) as exc:  # OutputPathError is a ValueError
        parser.error(str(exc))
    except OSError as exc:  # a full disk, a name too long, ...
        parser.exit(2, f"error: {user_message(exc)}\n")
    print(root)


if __name__ == "__main__":
    main()
