"""The engine directory: one artifact plus ``engine.json``, and the checks made before loading it.

An engine is a directory holding the backend's artifact (``model.onnx``,
``model.pt2`` or ``model.plan``) and ``engine.json``: what the artifact is
(format version, backend, precision, batch, input/output shapes, sha256 and
size of the artifact, library versions that built it, parity figures) and
what the runtime needs around it (preset, variant, model config, class names,
palette, mean/std, crop and slide stride).

:func:`read_engine` refuses, with an :class:`EngineError` naming the file, a
directory without ``engine.json``, unreadable JSON, an unknown format version
or backend, a field the loader or the runtime uses that is missing or does not
fit the rest (:func:`check_record`), a missing artifact, and an artifact whose
size or sha256 differs from the record (truncated or corrupt). Whether the
installed libraries can load the artifact is the backend's check
(``check_compatible``); the onnx and tensorrt loaders also compare the artifact's
own input shape with the record (:func:`check_input_shape`; an aoti package states
none outside its compiled code), and every engine's outputs are compared with the
record at each call (``Engine``).
"""
from __future__ import annotations

import importlib
import json
import math
import platform
import re
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch

from segvit_rt.io_utils import atomic_path, sha256_file

FORMAT = "segvit_rt.engine/1"
META_FILE = "engine.json"
BACKENDS = ("onnx", "aoti", "tensorrt")
PRECISIONS = ("fp32", "fp16")
INPUT_NAME = "image"
OUTPUT_NAMES = ("class_logits", "mask_logits")
_LIBRARIES = ("segvit_rt", "torch", "triton", "onnx", "onnxruntime", "onnxscript", "tensorrt", "numpy")
_OWN_VERSION = ("torch", "onnxruntime", "tensorrt")
_REQUIRED = ("backend", "artifact", "sha256", "artifact_bytes", "precision", "device", "config", "batch", "max_batch",
             "input", "input_size", "outputs", "mean", "std", "class_names", "palette", "slide_stride")


class EngineError(ValueError):
    """An engine that cannot be built, read or loaded here."""


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries an engine may depend on (``None``: not installed).

    torch, onnxruntime and tensorrt are asked for their own ``__version__``: their wheels come
    under other distribution names (``onnxruntime-gpu``, ``tensorrt-cu12``) or without the local
    tag (``+cu126``), and the backends compare these records with ``__version__`` at load.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    for name in _OWN_VERSION:
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - absent, or there but unable to load: not usable either way
            versions[name] = None
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


def engine_folder(path) -> Path:
    """The engine directory ``path`` names: itself, or the folder holding a file of an engine given
    instead (its ``engine.json`` or artifact)."""
    path = Path(path)
    if path.is_file() and (path.parent / META_FILE).is_file():
        return path.parent
    return path


def engine_source(path) -> tuple[Path, str | None] | None:
    """The engine folder ``path`` names (see :func:`engine_folder`) and the weights file its record
    says it was built from (None if unrecorded or unreadable); None when ``path`` is no engine."""
    folder = engine_folder(path)
    if not (folder.is_dir() and (folder / META_FILE).is_file()):
        return None
    try:
        source = (json.loads((folder / META_FILE).read_text(encoding="utf-8")).get("weights") or {}).get("path")
    except (OSError, ValueError, AttributeError):
        source = None
    return folder, source


def read_engine(directory, verify: bool = True) -> dict:
    """``engine.json`` of an engine directory (see :func:`engine_folder`), after checking the record
    and (``verify``) the artifact."""
    directory = engine_folder(directory)
    if directory.is_file():
        raise EngineError(f"{directory} is a file, not an engine: an engine is the folder python -m segvit_rt.build "
                          "writes (engine.json beside the artifact)")
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
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise EngineError(f"{meta_path} lacks the fields {missing}")
    if meta["backend"] not in BACKENDS:
        raise EngineError(f"{meta_path}: unknown backend {meta['backend']!r} (known: {', '.join(BACKENDS)})")
    check_record(meta, meta_path)
    if verify:
        verify_artifact(directory, meta)
    return meta


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _numbers(value, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def check_record(meta: dict, meta_path) -> None:
    """Check the fields the loader and the runtime use: a damaged or hand-edited ``engine.json``
    fails here, naming the field, rather than inside the first ``segment`` call."""

    def bad(field: str, want: str):
        raise EngineError(f"{meta_path}: {field} must be {want}, got {meta.get(field)!r}")

    config = meta["config"]
    if not isinstance(config, dict) or not all(_positive_int(config.get(k)) for k in ("crop_size", "num_classes")):
        bad("config", "the model config (with crop_size and num_classes)")
    crop, classes = config["crop_size"], config["num_classes"]
    if meta["precision"] not in PRECISIONS:
        bad("precision", f"one of {PRECISIONS}")
    if meta["device"] not in ("cpu", "cuda"):
        bad("device", "'cpu' or 'cuda'")
    if not isinstance(meta["sha256"], str):
        bad("sha256", "a hex digest")
    if not _positive_int(meta["artifact_bytes"]):
        bad("artifact_bytes", "a byte count")
    if meta["input_size"] != [crop, crop]:
        bad("input_size", f"[{crop}, {crop}] (the config's crop size)")
    if not (meta["batch"] is None or _positive_int(meta["batch"])):
        bad("batch", "a batch size, or null for a dynamic batch")
    record = meta["input"]
    want_input = {"name": INPUT_NAME, "shape": [meta["batch"], 3, crop, crop], "dtype": "float32"}
    if not (isinstance(record, dict) and all(record.get(k) == v for k, v in want_input.items())):
        bad("input", f"{json.dumps(want_input)} (from batch and the config's crop size)")
    if not _positive_int(meta["max_batch"]) or (meta["batch"] and meta["max_batch"] != meta["batch"]):
        bad("max_batch", "a batch size (the static batch itself, if there is one)")
    min_batch = meta.get("min_batch")
    if not (min_batch is None or (_positive_int(min_batch) and min_batch <= meta["max_batch"])):
        bad("min_batch", "null or a batch size up to max_batch")
    if not _numbers(meta["mean"], 3):
        bad("mean", "3 numbers")
    if not (_numbers(meta["std"], 3) and all(v > 0 for v in meta["std"])):
        bad("std", "3 positive numbers")
    names = meta["class_names"]
    if not (isinstance(names, list) and len(names) == classes and all(isinstance(n, str) for n in names)):
        bad("class_names", f"{classes} names (the config's num_classes)")
    palette = meta["palette"]
    if not (isinstance(palette, list) and len(palette) == classes
            and all(_numbers(c, 3) and all(v == int(v) and 0 <= v <= 255 for v in c) for c in palette)):
        bad("palette", f"{classes} RGB colours of 0-255")
    if not (_positive_int(meta["slide_stride"]) and meta["slide_stride"] <= crop):
        bad("slide_stride", f"a stride of 1-{crop} pixels")
    for field in ("mean", "std", "slide_stride", "crop_size"):  # the runtime reads them here, the model there
        if field in config and meta.get(field) != config[field]:
            raise EngineError(f"{meta_path}: {field} {meta.get(field)!r} differs from the config's {config[field]!r}")
    if config.get("class_names") not in (None, names):  # the runtime names classes by the one, the model the other
        raise EngineError(f"{meta_path}: class_names differ from the config's class_names")
    if not isinstance(meta.get("versions", {}), dict):
        bad("versions", "an object of library versions")
    scale, min_size = config.get("image_scale"), config.get("test_min_size")
    if not (scale is None or (isinstance(scale, list) and len(scale) == 2 and all(map(_positive_int, scale)))):
        raise EngineError(f"{meta_path}: config.image_scale must be null or 2 positive pixel sizes, got {scale!r}")
    if not (min_size is None or _positive_int(min_size)):
        raise EngineError(f"{meta_path}: config.test_min_size must be null or a positive pixel size, got {min_size!r}")
    outputs = meta["outputs"]
    grid = crop // config.get("patch_size", 16) if _positive_int(config.get("patch_size", 16)) else None
    want = {"class_logits": [classes, classes + 1], "mask_logits": [classes, grid, grid]}  # per image
    if not (isinstance(outputs, dict) and all(isinstance(outputs.get(n), list) and outputs[n][1:] == want[n]
                                              for n in OUTPUT_NAMES)):
        bad("outputs", f"per image {want} (from the config's num_classes, crop_size and patch_size)")


def check_input_shape(meta: dict, path, shape) -> None:
    """Raise unless an artifact's input ``shape`` (``None`` or a negative size: dynamic) is the
    ``[batch, 3, crop, crop]`` its record says."""
    dims = [d if isinstance(d, int) and d >= 0 else None for d in shape]
    want = [meta["batch"], 3, *meta["input_size"]]
    if dims != want:
        def show(sizes):
            return ", ".join("dynamic" if d is None else str(d) for d in sizes)

        raise EngineError(f"{path} takes input [{show(dims)}], its {META_FILE} records [{show(want)}]: "
                          "the record does not belong to this artifact; rebuild the engine")


def check_compute_capability(meta: dict, path, device: torch.device) -> None:
    """Raise unless ``device`` has the compute capability the artifact was compiled for."""
    capability = list(torch.cuda.get_device_capability(device))
    if meta.get("compute_capability") != capability:
        built_on = f" ({meta['gpu']})" if meta.get("gpu") else ""
        raise EngineError(f"{path} was built for a GPU of compute capability {meta.get('compute_capability')}"
                          f"{built_on}, this GPU has {capability}: rebuild the engine here")


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
