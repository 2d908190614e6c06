"""SegViT semantic segmentation, built for deployment.

Source-tree runs (``PYTHONPATH=.``, no install) resolve ``segvit_rt.kernels``
and ``segvit_rt.engines`` from the top-level ``kernels/`` and ``engines/``
folders; an install maps them the same way through setuptools ``package_dir``.
"""
import os as _os

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


def __getattr__(name):
    if name == "Runtime":
        from .runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'segvit_rt' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "Runtime"])
