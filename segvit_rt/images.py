"""Images in, images out: any accepted input to an ``HxWx3`` uint8 RGB array, and label visualisation.

Accepted inputs (:func:`load_image`):

* a path (``str`` or ``os.PathLike``) to any image file PIL reads;
* a ``PIL.Image.Image`` in any mode (grayscale, palette, RGBA, 16-bit...);
* a numpy array in the numpy/PIL layout, channels last: ``HxW`` (grayscale),
  ``HxWx1``, ``HxWx3`` (RGB) or ``HxWx4`` (RGBA), uint8 (0–255), uint16 (0–65535,
  as 16-bit files) or floating point in [0, 1];
* a torch tensor in the torchvision layout, channels first: ``HxW``, ``1xHxW``,
  ``3xHxW`` or ``4xHxW``, either uint8 (0–255) or floating point in [0, 1].

Grayscale is replicated to three channels; an alpha channel is dropped (the
colour is kept as is, not composited). Files and PIL images are turned as their
EXIF orientation says (phone cameras store pixels sideways and tag them), so
labels match the image as viewers (and OpenCV's ``imread``) show it; the data
sets read pixels as stored instead (``data.datasets.SegDataset.load``). Anything
else raises a ``TypeError`` or ``ValueError`` that says what was expected.
"""
from __future__ import annotations

import math
import numbers
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .io_utils import atomic_path

EXIF_ORIENTATION = 0x0112  # the tag; 1 = stored as displayed

__all__ = ["load_image", "overlay", "colorize", "save_labels", "save_png", "image_grid"]


def load_image(src, exif_turn: bool = True) -> np.ndarray:
    """Any accepted image (see the module doc) as a new ``HxWx3`` uint8 RGB array; ``exif_turn=False``
    keeps a file's or PIL image's pixels as stored."""
    if isinstance(src, str) and re.match(r"[a-z][a-z0-9+.-]+://", src, re.IGNORECASE):  # not C://x
        raise ValueError(f"{src!r} is a URL: images are read from local files; download it first")
    if isinstance(src, str) and not src:
        raise ValueError("empty image path")
    if isinstance(src, (str, os.PathLike)):
        return _from_path(Path(src), exif_turn)
    if isinstance(src, Image.Image):
        _check_size(src.height, src.width)
        return _from_pil(src, exif_turn)
    if isinstance(src, np.ndarray):
        if src.ndim >= 2:
            _check_size(*src.shape[:2])
        return _from_array(src)
    if isinstance(src, torch.Tensor):
        if src.ndim >= 2:
            _check_size(*src.shape[-2:])
        return _from_tensor(src)
    raise TypeError(
        f"cannot read an image from {type(src).__name__!r}: pass a path, a PIL image, "
        "an HxWx3 uint8 numpy array or a 3xHxW tensor"
    )


def _check_size(h: int, w: int) -> None:
    """Refuse, before any copy, an in-memory image past the size Pillow refuses for files (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``): inference needs about 30 bytes per pixel, so a 400-megapixel
    array would need some 12 GB, and more would be killed for memory without a word."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and h * w > 2 * limit:
        raise ValueError(f"image of {w}x{h} = {h * w} pixels is past the limit of {2 * limit} (as for files: "
                         "twice PIL.Image.MAX_IMAGE_PIXELS; about 30 bytes per pixel are needed); raise "
                         "PIL.Image.MAX_IMAGE_PIXELS to allow it")


def _callers_stacklevel() -> int:
    """``stacklevel`` for a warning raised here that points at the first frame outside segvit_rt and
    torch's decorators (``Runtime.segment`` runs under ``torch.no_grad``)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("segvit_rt.", "torch.")):
        frame, level = frame.f_back, level + 1
    return level


def _from_path(path: Path, exif_turn: bool) -> np.ndarray:
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            return _from_pil(im, exif_turn)
    except Image.DecompressionBombError as e:  # also what a corrupt header claiming a huge size gives
        raise ValueError(f"cannot read image {path}: {e} (Pillow's limit: PIL.Image.MAX_IMAGE_PIXELS)") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


_BATCH_HINT = "for a batch, pass the 4-D batch itself to Runtime.segment_batch (not inside a list)"

# PIL modes whose conversion to RGB would give a wrong picture without an error: (why, what to do).
_NO_RGB_MEANING = {
    "F": ("floats of no fixed range", "pass np.asarray(image) scaled to [0, 1] as a float array"),
    "LAB": ("Pillow copies L*a*b* channels into RGB unconverted", "convert to RGB first"),
}


def _from_pil(im: Image.Image, exif_turn: bool = True) -> np.ndarray:
    if getattr(im, "_im", True) is None and getattr(im, "fp", True) is None:  # Pillow asserts, silently
        raise ValueError("the PIL image is closed and was never loaded: call .load() (or .copy()) inside its "
                         "'with Image.open(...)' block, or pass the file's path")
    if im.width == 0 or im.height == 0:
        raise ValueError(f"empty image ({im.width}x{im.height})")
    fmt = im.format  # the turned copy below has none
    if exif_turn and im.getexif().get(EXIF_ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)  # a turned copy; the caller's image is left as it is
    if im.mode.startswith("I"):
        return _from_wide_gray(np.asarray(im, dtype=np.int64), im.mode, fmt)
    if im.mode in _NO_RGB_MEANING:
        why, fix = _NO_RGB_MEANING[im.mode]
        raise ValueError(f"{im.mode!r} images are not taken ({why}): {fix}")
    if im.mode != "RGB":
        if im.mode == "La":  # premultiplied alpha, which Pillow converts only to LA
            im = im.convert("LA")
        im = im.convert("RGBA" if "A" in im.mode.upper() or im.mode == "P" else "RGB")
    return np.array(np.asarray(im)[..., :3])  # a writable copy


def _from_wide_gray(values: np.ndarray, mode: str, fmt: str | None = None) -> np.ndarray:
    """16-bit grayscale (PIL modes ``I;16*``, and ``I`` as older Pillow opens 16-bit PNGs) to 8 bits:
    PIL's own conversion clips at 255 instead of scaling. Mode ``I`` from another source (a TIFF,
    a PIL image made in memory) holding only 0..255 is taken as 8-bit."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"unsupported {mode!r} image: values outside 0..65535")
    if mode.startswith("I;16") or fmt == "PNG" or (values.size and values.max() > 255):
        if fmt is None and values.size and 0 < values.max() <= 255:  # made in memory, from a uint16 array perhaps
            warnings.warn(f"a {mode!r} image holding only values 0-255 is read as 16-bit (0-65535), so nearly "
                          "black; if it holds 8-bit values, make it from arr.astype(np.uint8)",
                          stacklevel=_callers_stacklevel())
        values = (values + 128) // 257
    return np.repeat(values.astype(np.uint8)[..., None], 3, axis=2)


def _float_range_error(kind: str, lo: float, hi: float) -> str:
    """The values in full (an overshoot such as 1.0000001 must not print as 1), with the fix that fits."""
    if math.isnan(lo) or math.isnan(hi):
        fix = "they hold NaN"
    elif lo >= -0.01 and hi <= 1.01:
        fix = "clip them to [0, 1] (np.clip / torch.clamp): they overshoot it, by rounding perhaps"
    elif lo >= 0.0 and hi <= 255.0:
        fix = f"pass uint8 {kind} for 0-255 values (or divide by 255)"
    else:
        fix = "scale them to [0, 1]"
    return f"float image {kind} must hold values in [0, 1], got [{lo!r}, {hi!r}]; {fix}"


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 4:
        raise ValueError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}; {_BATCH_HINT}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # uint16 of either byte order
        if arr.size and 0 < arr.max() <= 255:
            warnings.warn("a uint16 image array holding only values 0-255 is read as 16-bit (0-65535), so nearly "
                          "black; if it holds 8-bit values, pass arr.astype(np.uint8)",
                          stacklevel=_callers_stacklevel())
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)  # as 16-bit files are read
    elif np.issubdtype(arr.dtype, np.floating):
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if not (0.0 <= lo and hi <= 1.0):  # also NaN
            raise ValueError(_float_range_error("arrays", lo, hi))
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (0-255), uint16 (0-65535) or float in [0, 1], got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4 (channels last), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image array of shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.array(arr[..., :3])  # a writable copy: never an alias of the caller's array


def _from_tensor(t: torch.Tensor) -> np.ndarray:
    # (3, 90, 3): a 90x3 RGB image, or a 3x90 one channels last?
    ambiguous = t.dim() == 3 and t.shape[0] in (1, 3, 4) and t.shape[2] in (3, 4) and t.shape[1] > 4
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
        hint = f"; {_BATCH_HINT}" if t.dim() == 4 else ""
        raise ValueError(
            f"image tensors must be HxW, 1xHxW, 3xHxW or 4xHxW (channels first), got shape {tuple(t.shape)}{hint}"
        )
    if t.device.type == "meta":
        raise ValueError("a tensor on the meta device holds no pixels: pass a cpu or cuda tensor")
    if ambiguous:
        warnings.warn(f"an image tensor of shape {tuple(t.shape)} is read channels first ({t.shape[0]} channels, "
                      f"{t.shape[1]}x{t.shape[2]} pixels); if it is channels last, pass t.permute(2, 0, 1)",
                      stacklevel=_callers_stacklevel())
    t = t.detach().cpu()
    if t.is_floating_point():
        lo, hi = (t.min().item(), t.max().item()) if t.numel() else (0.0, 0.0)
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(_float_range_error("tensors", lo, hi))
        t = (t * 255.0).round().to(torch.uint8)
    elif t.dtype != torch.uint8:
        raise TypeError(f"image tensors must be uint8 (0-255) or float in [0, 1], got {t.dtype}")
    return _from_array(t.permute(1, 2, 0).numpy())


def overlay(image, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with each pixel blended with its class colour (``alpha`` = weight of the colour)."""
    rgb = load_image(image)
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels of shape {labels.shape} do not match the image's (height, width) {rgb.shape[:2]}: "
                         "pass the labels segment() returned for this image (files are read turned by their "
                         "EXIF orientation)")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    colours = colorize(labels, palette).astype(np.float32)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``HxW`` labels -> ``HxWx3`` uint8 colours; labels outside the palette (e.g. ignore) are black."""
    from .class_names import colorize as _colorize

    return _colorize(np.asarray(labels), np.asarray(palette, dtype=np.uint8))


def save_png(image: Image.Image, path) -> Path:
    """Write a PIL image as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def save_labels(labels: np.ndarray, path, num_classes: int | None = None) -> Path:
    """Write a label map as a PNG whose pixel values are the class indices, atomically: 8-bit up to
    256 classes, else 16-bit (``num_classes``: the model's, so that every map of one model has one
    bit depth; default: from the labels present)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be an HxW array, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError(f"labels must be in 0..65535 to be stored as PNG, got [{labels.min()}, {labels.max()}]")
    top = max(num_classes - 1 if num_classes else 0, int(labels.max()) if labels.size else 0)
    dtype = np.uint16 if top > 255 else np.uint8
    return save_png(Image.fromarray(np.ascontiguousarray(labels, dtype=dtype)), path)


def image_grid(rows: list[list[np.ndarray]], gap: int = 4) -> Image.Image:
    """Tile ``HxWx3`` uint8 arrays into one image: one list per row, white gaps between cells."""
    if not rows or not all(rows):
        raise ValueError("image_grid needs at least one non-empty row")
    cell_h = max(a.shape[0] for row in rows for a in row)
    cell_w = max(a.shape[1] for row in rows for a in row)
    ncols = max(len(row) for row in rows)
    canvas = np.full(
        (len(rows) * cell_h + (len(rows) - 1) * gap, ncols * cell_w + (ncols - 1) * gap, 3), 255, np.uint8
    )
    for r, row in enumerate(rows):
        for c, a in enumerate(row):
            y, x = r * (cell_h + gap), c * (cell_w + gap)
            canvas[y : y + a.shape[0], x : x + a.shape[1]] = load_image(a)
    return Image.fromarray(canvas)
