"""``Runtime(engine).segment(img)``: label maps from a built engine, for images of any size.

Thin on purpose: preprocessing (load, normalise, test-time resize), the engine
call, and the post-process. Two modes:

* ``"slide"`` (default, the official evaluation): the image is resized
  keeping its aspect ratio to the preset's official test scale
  (``inference.test_size`` with ``SegViTConfig.scales``: ADE20K ViT-L fits
  2048×640, PASCAL-Context's short side goes to 520), scored by ``crop``-sized windows every
  ``slide_stride`` pixels, and the scores are resized back to the original size
  before the argmax (``inference.predict_image``).
* ``"whole"``: engines take a fixed input size, so the image is resized to the
  crop size (aspect ratio not kept) and run once; the mask logits are
  upsampled straight to the original size by the post-process
  (``ops.segment_postprocess``: the fused Triton kernel on CUDA, the reference
  elsewhere). Faster, less accurate on elongated images.

Images are anything ``images.load_image`` reads: a path, a PIL image, an
``HxWx3`` RGB array (uint8, uint16 or float in [0, 1]; grayscale and RGBA
converted) or a ``3xHxW`` tensor (uint8, or float in [0, 1]). Labels come back as ``HxW`` numpy arrays at the
original size: uint8 for up to 256 classes, else int32.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import engines, images, ops
from .inference import MODES, predict_image
from .weights import WeightsError, config_from_metadata

BATCH_PIXELS = 16_000_000  # a segment_batch group ends once its images reach this many pixels (~200 MB of floats)


def _with_context(error: Exception, where: str) -> Exception:
    """``error`` again, its message prefixed with ``where`` (a plain ValueError/TypeError where its
    type takes other arguments)."""
    try:
        return type(error)(f"{where}: {error}")
    except TypeError:
        return (TypeError if isinstance(error, TypeError) else ValueError)(f"{where}: {error}")


class Runtime:
    """A loaded engine plus everything needed around it (see the module doc).

    ``engine``: an engine directory (from ``python -m segvit_rt.build``), or its ``engine.json`` or artifact.
    ``device``: where the engine runs (default: the backend's choice).
    ``mode``: ``"slide"`` or ``"whole"``.
    ``cuda_graph``: replay an aoti engine on CUDA as a CUDA graph (``engines.load_engine``; default:
    wherever possible).
    """

    def __init__(self, engine, device=None, mode: str = "slide", cuda_graph: bool | None = None):
        self.mode = mode
        self.engine = engines.load_engine(engine, device=device, cuda_graph=cuda_graph)
        self._cuda_graph = cuda_graph
        self.meta = self.engine.meta
        self.device = self.engine.device
        try:
            self.cfg = config_from_metadata(self.meta)
        except (WeightsError, TypeError, ValueError) as e:
            raise engines.EngineError(f"{self.engine.path / 'engine.json'}: its model config does not load: {e}") from e
        self.class_names: list[str] = list(self.meta["class_names"])
        self.palette = np.asarray(self.meta["palette"], dtype=np.uint8)
        self.crop = self.cfg.crop_size
        self.stride = self.meta["slide_stride"]
        self._mean = torch.tensor(self.meta["mean"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(self.meta["std"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._post_impl = _postprocess_impl(self.device)

    def __repr__(self) -> str:
        return f"Runtime({self.engine!r}, mode={self.mode!r})"

    def __reduce__(self):
        """Pickled (for a process pool) as its engine's path, device and mode: the other process loads
        the engine again, checks included."""
        return type(self), (os.path.abspath(self.engine.path), str(self.device), self.mode, self._cuda_graph)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._mode = mode

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalise(self, rgb: np.ndarray) -> torch.Tensor:
        """``HxWx3`` uint8 -> normalised float32 ``[1, 3, H, W]`` on the engine's device (in place: a
        large photo's float copy is the biggest tensor of a call)."""
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float()
        return x.sub_(self._mean).div_(self._std)[None]

    @torch.no_grad()
    def segment(self, img) -> np.ndarray:
        """``HxW`` class labels of one image, at its original size."""
        return self._segment([images.load_image(img)])[0]

    @torch.no_grad()
    def segment_batch(self, imgs) -> list[np.ndarray]:
        """Labels for several images (a list or any iterable, or a 4-D ``NxHxWxC`` array / ``NxCxHxW``
        tensor). They are read and run a group at a time (up to the engine's batch and
        ``BATCH_PIXELS``), images of one size sharing engine calls, so a long list of photos never
        sits in memory decoded at once."""
        single = (str, os.PathLike, Image.Image)
        if isinstance(imgs, single) or (isinstance(imgs, (np.ndarray, torch.Tensor)) and imgs.ndim != 4):
            raise TypeError(f"segment_batch takes a list of images (or a 4-D batch), got one "
                            f"{type(imgs).__name__}: for one image use segment(img)")
        results, group, pixels = [], [], 0
        for i, img in enumerate(imgs):
            try:
                rgb = images.load_image(img)
            except (ValueError, TypeError, FileNotFoundError) as e:
                raise _with_context(e, f"image {i} of the batch") from e
            group.append(rgb)
            pixels += rgb.shape[0] * rgb.shape[1]
            if len(group) >= self.engine.max_batch or pixels >= BATCH_PIXELS:
                results += self._segment(group)
                group, pixels = [], 0
        return results + (self._segment(group) if group else [])

    def _segment(self, rgbs: list[np.ndarray]) -> list[np.ndarray]:
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(rgbs):
            by_size.setdefault(rgb.shape[:2], []).append(i)
        results: list[np.ndarray | None] = [None] * len(rgbs)
        for (h, w), indices in by_size.items():
            batch = torch.cat([self.normalise(rgbs[i]) for i in indices])
            labels = self._predict(batch, (h, w))
            del batch
            for i, lab in zip(indices, labels):
                results[i] = self._to_numpy(lab)
        return results

    def _predict(self, batch: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self.mode == "whole":
            x = F.interpolate(batch, size=(self.crop, self.crop), mode="bilinear", align_corners=False)
            cls, masks = self.engine(x)
            return ops.segment_postprocess(cls, masks, hw, impl=self._post_impl)
        return predict_image(self.engine, batch, self.crop, self.stride, "slide", *self.cfg.scales())

    def _to_numpy(self, labels: torch.Tensor) -> np.ndarray:
        dtype = np.uint8 if self.num_classes <= 256 else np.int32
        return labels.cpu().numpy().astype(dtype)

    def overlay(self, img, labels: np.ndarray, alpha: float = 0.5) -> Image.Image:
        """The image blended with the class colours of ``labels`` (``alpha`` = colour weight)."""
        return images.overlay(img, labels, self.palette, alpha)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """``HxW`` labels -> ``HxWx3`` uint8 class colours."""
        return images.colorize(labels, self.palette)


def _postprocess_impl(device: torch.device) -> str:
    """The fused post-process kernel on CUDA where it imports, the reference elsewhere."""
    if device.type != "cuda":
        return "reference"
    try:
        from segvit_rt.kernels import segment_postprocess  # noqa: F401
    except (ImportError, AttributeError):
        return "reference"
    return "triton"
