"""The engine directory: one artifact plus ``engine.json``, and the checks made before loading it.

An engine is a directory holding the backend's artifact (``model.onnx``,
``model.pt2`` or ``model.plan``) and ``engine.json``: what the artifact is
(format version, backend, precision, batch, input/output shapes, sha256 and
size of the artifact, library versions that built it, parity figures) and
what the runtime needs around it (preset, variant, model config, class names,
palette, mean/std, crop and slide stride).

:func:`read_engine` refuses, with an :class:`EngineError` naming the file, a
directory without ``engine.json``, unreadable JSON, an unknown format version
or backend, a missing artifact, and an artifact whose size or sha256 differs
from the record (truncated or corrupt). Whether the installed libraries can
load the artifact is the backend's check (``check_compatible``).
"""
from __future__ import annotations

import json
import platform
import re
from importlib import metadata as importlib_metadata
from pathlib import Path

from segvit_rt.io_utils import atomic_path, sha256_file

FORMAT = "segvit_rt.engine/1"
META_FILE = "engine.json"
BACKENDS = ("onnx", "aoti", "tensorrt")
PRECISIONS = ("fp32", "fp16")
INPUT_NAME = "image"
OUTPUT_NAMES = ("class_logits", "mask_logits")
_LIBRARIES = ("segvit_rt", "torch", "triton", "onnx", "onnxruntime", "onnxscript", "tensorrt", "numpy")


class EngineError(ValueError):
    """An engine that cannot be built, read or loaded here."""


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries an engine may depend on (``None``: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    if versions["torch"] is not None:  # the wheel's metadata lacks the local tag (+cu126...)
        import torch

        versions["torch"] = torch.__version__
    if versions["segvit_rt"] is None:  # a source checkout that was not pip-installed
        versions["segvit_rt"] = "source"
    return versions


def major_minor(version: str | None) -> tuple[int, int] | None:
    """``"2.13.0+cu126"`` -> ``(2, 13)``; ``None`` for a missing or unparsable version."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(match[1]), int(match[2])) if match else None


def write_engine_json(directory: Path, meta: dict) -> Path:
    path = Path(directory) / META_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def read_engine(directory, verify: bool = True) -> dict:
    """``engine.json`` of an engine directory, after checking the record and (``verify``) the artifact."""
    directory = Path(directory)
    if directory.is_file() and directory.name == META_FILE:
        directory = directory.parent
    if not directory.is_dir():
        raise EngineError(f"engine not found: {directory} is not a directory (build one with python -m segvit_rt.build)")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise EngineError(f"{meta_path} is missing: {directory} is not a segvit_rt engine (or its build did not finish)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f"{meta_path} is not readable JSON (corrupt?): {e}") from e
    if not isinstance(meta, dict):
        raise EngineError(f"{meta_path} does not hold a JSON object")
    if meta.get("format") != FORMAT:
        raise EngineError(
            f"{meta_path}: unknown engine format {meta.get('format')!r}; this segvit_rt reads {FORMAT!r} "
            "(rebuild the engine with this version's python -m segvit_rt.build)"
        )
    missing = [k for k in ("backend", "artifact", "sha256", "artifact_bytes", "precision", "config") if k not in meta]
    if missing:
        raise EngineError(f"{meta_path} lacks the fields {missing}")
    if meta["backend"] not in BACKENDS:
        raise EngineError(f"{meta_path}: unknown backend {meta['backend']!r} (known: {', '.join(BACKENDS)})")
    if verify:
        verify_artifact(directory, meta)
    return meta


def artifact_path(directory, meta: dict) -> Path:
    name = str(meta["artifact"])
    if Path(name).name != name:
        raise EngineError(f"{Path(directory) / META_FILE}: artifact {name!r} must be a file name inside the engine")
    return Path(directory) / name


def verify_artifact(directory, meta: dict) -> None:
    """Raise unless the artifact exists with the recorded size and sha256."""
    path = artifact_path(directory, meta)
    if not path.is_file():
        raise EngineError(f"engine artifact {path} is missing")
    size = path.stat().st_size
    if size != meta["artifact_bytes"]:
        raise EngineError(
            f"engine artifact {path} has {size} bytes, {META_FILE} records {meta['artifact_bytes']}: "
            "truncated or replaced; rebuild the engine"
        )
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise EngineError(
            f"engine artifact {path} fails its sha256 check ({digest[:12]}... != recorded {str(meta['sha256'])[:12]}...): "
            "corrupt or modified; rebuild the engine"
        )
