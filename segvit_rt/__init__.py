"""SegViT semantic segmentation, built for deployment.

Source-tree runs (``PYTHONPATH=.``, no install) resolve ``segvit_rt.kernels``
and ``segvit_rt.engines`` from the top-level ``kernels/`` and ``engines/``
folders; an install maps them the same way through setuptools ``package_dir``.
"""
import os as _os

__version__ = "0.1.0"  # setup.py reads it from here

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "kernels")) and _os.path.isfile(
    _os.path.join(_root, "kernels", "__init__.py")
):
    # Running from a checkout: let submodule lookup fall through to the repository root
    # (only kernels/ and engines/ are imported that way).
    __path__.append(_root)

from .config import PRESETS, SegViTConfig, get_config  # noqa: E402
from .models import create_model  # noqa: E402

__all__ = ["PRESETS", "SegViTConfig", "get_config", "create_model", "Runtime"]


# Submodules ``segvit_rt.X`` reaches after a bare ``import segvit_rt``, imported on first use (the
# engines and kernels need their libraries only then).
_SUBMODULES = ("build", "class_names", "cli", "config", "convert", "data", "demo", "engines", "evaluate", "flops",
               "images", "inference", "io_utils", "kernel_choice", "kernels", "metrics", "models", "ops", "runtime", "segment",
               "train", "training", "weights")


def __getattr__(name):
    if name == "Runtime":
        from .runtime import Runtime

        return Runtime
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'segvit_rt' has no attribute {name!r}")


def __dir__():
    # Not kernels: listing it would let help() or tab completion import triton, which fixes the Triton
    # interpreter on or off before train/evaluate --kernels triton can turn it on for a CPU.
    return sorted({*globals(), "Runtime", *_SUBMODULES} - {"kernels"})
