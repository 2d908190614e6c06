"""Weights I/O: our safetensors format, and importers for timm ViT and official SegViT checkpoints.

Our files are one ``.safetensors`` file whose header metadata holds a JSON
record (preset, variant, full config, class names, mean/std, crop), so weights
and their description cannot drift apart. Files are written atomically.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import PRESETS, SegViTConfig, get_config
from .io_utils import atomic_path, json_safe
from .models.vit import resize_token_grid

FORMAT = "segvit_rt.weights/1"
_META_KEY = "segvit_rt"
DIGEST_KEY = "tensors_blake2b"  # metadata key of tensors_digest
# Config fields that change no tensor shape and may differ between a file and a model.
_FREE_FIELDS = {"class_names", "slide_stride", "image_scale", "test_min_size", "decoder_dropout", "drop_path_rate",
                "dataset", "name"}
_UNUSED_BY = {"full": "shrink_idx", "shrunk": "out_indices"}  # each variant's block field the other ignores


# train --weights-dtype -> save_weights' dtype (None: as the model holds them, fp32)
WEIGHTS_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


def _config_from_dict(d: dict) -> SegViTConfig:
    known = {f.name for f in fields(SegViTConfig)}
    unknown = set(d) - known
    if unknown:
        raise WeightsError(f"weights metadata has unknown config fields {sorted(unknown)}")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    if d.get("name") in PRESETS and "image_scale" not in d:  # written before presets carried their scales
        preset = get_config(d["name"], crop_size=d.get("crop_size", PRESETS[d["name"]].crop_size))
        d.update(image_scale=preset.image_scale, test_min_size=preset.test_min_size)
    return SegViTConfig(**d)


def model_metadata(model, class_names=None, extra: dict | None = None) -> dict:
    cfg = model.cfg
    names = list(class_names if class_names is not None else cfg.names())
    if len(names) != cfg.num_classes:
        raise WeightsError(f"{len(names)} class names given for a model with {cfg.num_classes} classes")
    return {
        "format": FORMAT,
        "preset": cfg.name,
        "variant": model.variant,
        "config": cfg.to_dict(),
        "class_names": names,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "crop_size": cfg.crop_size,
        **(extra or {}),
    }


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """BLAKE2b of every tensor's name, dtype, shape and bytes, in name order. safetensors keeps no
    checksum; this one, recorded when a file is written, tells one whose tensors changed since (a
    bad copy or disk), which would otherwise load and segment wrongly without a word."""
    digest = hashlib.blake2b(digest_size=32)
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_weights(path, model, class_names=None, extra: dict | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s state dict and metadata (with :func:`tensors_digest`) to ``path``
    (.safetensors), atomically."""
    path = Path(path)
    meta = model_metadata(model, class_names, extra)
    state = {
        k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    _check_finite(state, f"{path} not written")
    meta[DIGEST_KEY] = tensors_digest(state)
    with atomic_path(path, sweep=True) as tmp:
        try:
            save_file(state, str(tmp), metadata={_META_KEY: json.dumps(json_safe(meta))})
        except SafetensorError as e:  # its writer's I/O errors (a full disk) as the OSError they are
            raise OSError(f"{path} could not be written: {e}") from e
    return path


def _is_torch_save(path: Path) -> bool:
    """Whether a file that is not safetensors looks like ``torch.save`` output (a zip, or a raw pickle)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _is_safetensors(path: Path) -> bool:
    """A safetensors file (its 8-byte header length, then the JSON header), or one named so that is not
    ``torch.save`` output (whose reader then names what is wrong)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return head[8:9] == b"{" or (path.suffix == ".safetensors" and not _is_torch_save(path))


def _refuse_an_engine(path: Path) -> None:
    """An engine folder, or a file in one, is named as an engine, with the weights it was built from."""
    from .engines.format import engine_source

    engine = engine_source(path)
    if engine is None:
        return
    built = f"; it was built from {engine[1]}" if engine[1] else ""
    raise WeightsError(f"{path} is an engine (python -m segvit_rt.build), not a weights file{built}")


def read_metadata(path) -> dict:
    """The JSON record of one of our weights files; a clear error for anything else."""
    path = Path(path)
    _refuse_an_engine(path)
    if path.is_dir():
        hint = f"; did you mean {path / 'weights.safetensors'}?" if (path / "weights.safetensors").is_file() else ""
        raise WeightsError(f"weights path {path} is a folder, not a weights file{hint}")
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        if _is_torch_save(path):
            raise WeightsError(f"{path} is a PyTorch checkpoint, not segvit_rt weights: convert it with python -m "
                               "segvit_rt.convert (an official SegViT checkpoint, or a training run's checkpoint.pt), "
                               "or use a training run's weights.safetensors") from e
        raise WeightsError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e
    if _META_KEY not in header:
        raise WeightsError(f"{path} has no segvit_rt metadata: not a segvit_rt weights file (a plain state dict "
                           "converts with python -m segvit_rt.convert FILE --preset P --variant V --out OUT)")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: segvit_rt metadata is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: its segvit_rt metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: unsupported weights format {meta.get('format')!r} (expected {FORMAT!r})")
    lacking = [key for key, kind in (("variant", str), ("config", dict)) if not isinstance(meta.get(key), kind)]
    if lacking:
        raise WeightsError(f"{path}: its segvit_rt metadata lacks a valid {' and '.join(map(repr, lacking))} "
                           "(edited by hand?); convert the state dict again with python -m segvit_rt.convert")
    return meta


def config_from_metadata(meta: dict) -> SegViTConfig:
    cfg = _config_from_dict(dict(meta["config"]))
    names = tuple(meta.get("class_names") or ())
    return cfg if not names else SegViTConfig(**{**cfg.to_dict(), "class_names": names})


def _check_fits(path, meta: dict, model) -> None:
    problems = []
    if meta["variant"] != model.variant:
        problems.append(f"variant {meta['variant']!r} != model's {model.variant!r}")
    file_cfg, cfg = meta["config"], model.cfg.to_dict()
    for key in cfg:
        if key in _FREE_FIELDS or key == _UNUSED_BY[model.variant]:
            continue
        want, got = file_cfg.get(key), cfg[key]
        if (list(want) if isinstance(want, (list, tuple)) else want) != (
            list(got) if isinstance(got, (list, tuple)) else got
        ):
            problems.append(f"{key}={want!r} != model's {got!r}")
    if problems:
        raise WeightsError(
            f"{path} (preset {meta['preset']!r}) does not match the model (preset {model.cfg.name!r}): "
            + "; ".join(problems)
        )


def load_weights(path, model=None, kernels: str = "reference"):
    """Load one of our weights files. Without ``model`` the model is built from the file's metadata
    and returned in eval mode (call ``.train()`` to fine-tune it); with one, the file must describe
    the same architecture, and the model keeps its mode."""
    from .models import SegViT

    path = Path(path)
    meta = read_metadata(path)
    if model is None:
        try:
            model = SegViT(config_from_metadata(meta), variant=meta["variant"], kernels=kernels).eval()
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{path}: its metadata does not describe a model this version builds: {e}") from e
    else:
        _check_fits(path, meta, model)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read tensors (corrupt or truncated?): {e}") from e
    recorded = meta.get(DIGEST_KEY)  # files written before it was kept have none
    if recorded is not None and tensors_digest(state) != recorded:
        raise WeightsError(f"{path} is corrupt: its tensors differ from the digest recorded when it was written "
                           "(a bad copy or disk?); copy it again from its source")
    _load_exact(model, state, path)
    return model


def _check_finite(state: dict, where) -> None:
    """Our loader refuses weights holding NaN or inf (a diverged run's): none are written either."""
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise WeightsError(f"{where}: {k} holds NaN or infinite values (from a diverged run, or out of range "
                               "for the dtype?)")


def _load_exact(model, state: dict, source) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(f"{source}: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise WeightsError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    _check_finite(state, source)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# ---------------------------------------------------------------- importers


class ShapeMismatchError(WeightsError):
    """A checkpoint tensor of another shape than the model's; ``detail`` names it and both shapes."""

    def __init__(self, detail: str, source):
        self.detail = detail
        where = "" if isinstance(source, dict) else f"{source}: "
        super().__init__(f"{where}{detail} (a checkpoint of another preset, variant or class count?); "
                         "the model was left unchanged")


@dataclass
class ImportReport:
    """What an importer loaded: keys the model lacks values for, keys of the file it did not use."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    other_classes: list[str] = field(default_factory=list)  # left out: sized for another class count

    def __str__(self) -> str:
        def few(keys):
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.resized:
            lines.append(f"resized: {few(self.resized)}")
        if self.other_classes:
            lines.append(f"left to start fresh, sized for another class count: {few(self.other_classes)}")
        if self.missing:
            lines.append(f"missing ({len(self.missing)}): {few(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected ({len(self.unexpected)}): {few(self.unexpected)}")
        return "; ".join(lines)


def _numpy_scalar_types() -> list:
    """numpy scalars and dtypes, which mmcv checkpoints hold in their ``meta`` (a best score, for
    one): plain values, allowed to ``weights_only`` loading, which refuses them by default."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "bool")]
    # files written under numpy 1 (every official checkpoint) name the scalar maker numpy.core.*
    return [core.multiarray.scalar, (core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def read_checkpoint(path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` checkpoint (unpickled with
    ``weights_only=True``), unwrapped from a ``state_dict``/``model`` entry."""
    path = Path(path)
    if path.is_dir():
        inside = " (weights.safetensors there?)" if (path / "weights.safetensors").is_file() else ""
        raise WeightsError(f"{path} is a folder: give the checkpoint file in it{inside}")
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if _is_safetensors(path):  # by content: a file may carry the other format's suffix
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        with torch.serialization.safe_globals(_numpy_scalar_types()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own notes on legacy or odd files; the error says it all
            with open(path, "rb") as f:  # a file object: torch >= 2.13 hands a *.safetensors path to safetensors
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe pickles
        # torch's message: the reason, among advice to load with weights_only=False (which runs
        # whatever the file holds), kept out
        lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(e).splitlines()]
        unsafe = next((line.split(" Please use")[0] for line in lines
                       if line.startswith(("Unsupported global", "Trying to load unsupported GLOBAL"))), None)
        if unsafe is not None:
            raise WeightsError(f"{path} holds Python objects besides tensors ({unsafe}); unpickling them would run "
                               "code from the file, which is not done: save its state dict of tensors") from e
        advice = ("Weights only load failed", "weights_only", "Check the documentation", "Please file an issue")
        reason = next((line for line in lines if line and not any(a in line for a in advice)), "")
        reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another format): "
                           f"{reason}") from e
    return _unwrap(obj, path)


def _unwrap(obj, source) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint's ``state_dict``/``model``/``module`` entry (or itself)."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: expected a state dict of tensors, got a {type(obj).__name__}")
    odd = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise WeightsError(f"{source}: expected a state dict of tensors; {odd!r} holds a {type(obj[odd]).__name__}")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _checkpoint_name(checkpoint) -> str:
    """How messages name an importer's ``checkpoint``: its path, or "the checkpoint" for a loaded dict."""
    return "the checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)


def _checkpoint_state(checkpoint) -> dict[str, torch.Tensor]:
    """An importer's ``checkpoint``: a file (:func:`read_checkpoint`) or a loaded dict, unwrapped alike."""
    return _unwrap(checkpoint, "the checkpoint") if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)


# mmseg's VisionTransformer names -> timm names
_MMSEG_VIT = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.attn\.attn\.in_proj_weight$", r"blocks.\1.attn.qkv.weight"),
    (r"^layers\.(\d+)\.attn\.attn\.in_proj_bias$", r"blocks.\1.attn.qkv.bias"),
    (r"^layers\.(\d+)\.attn\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
]


def _timm_name(key: str) -> str:
    for pattern, repl in _MMSEG_VIT:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def _with_cls_slot(pos: torch.Tensor) -> torch.Tensor:
    """A position embedding [1, g*g, C] without timm's cls slot (``no_embed_class`` models) gets a zero
    one, which our backbone drops anyway; [1, 1 + g*g, C] is returned as it is."""
    n = pos.shape[1]
    return torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1) if math.isqrt(n) ** 2 == n else pos


def _resize_pos_embed(pos: torch.Tensor, grid: int, source, key: str) -> torch.Tensor:
    """[1, 1 + g*g, C] (cls slot first) -> [1, 1 + grid*grid, C], bicubic on the grid part."""
    cls, rest = pos[:, :1], pos[:, 1:]
    g = math.isqrt(rest.shape[1])
    if g * g != rest.shape[1]:
        raise WeightsError(f"{source}: {key} of shape {tuple(pos.shape)} is neither a square grid of position "
                           "embeddings nor one after a class-token slot")
    return torch.cat([cls, resize_token_grid(rest.float(), g, (grid, grid)).to(pos.dtype)], dim=1)


def _match_partial(module: torch.nn.Module, state: dict, prefix: str, report: ImportReport, source) -> list:
    """Pair each of ``state``'s tensors with the tensor of ``module`` it loads into, checking every
    shape; nothing is copied yet (see :func:`_copy_pairs`), so a refused checkpoint changes nothing."""
    own = module.state_dict()
    pairs = []
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(prefix + k)
            continue
        if k.rsplit(".", 1)[-1] == "pos_embed" and v.dim() == 3:
            v = _with_cls_slot(v)
            if v.shape != own[k].shape:  # another crop or patch grid
                v = _resize_pos_embed(v, math.isqrt(own[k].shape[1] - 1), source, prefix + k)
                report.resized.append(prefix + k)
        if v.shape != own[k].shape:
            raise ShapeMismatchError(
                f"{prefix}{k}: checkpoint shape {tuple(state[k].shape)} != model shape {tuple(own[k].shape)}", source)
        pairs.append((own[k], v))
        report.loaded.append(prefix + k)
    report.missing.extend(prefix + k for k in own if k not in state)
    return pairs


@torch.no_grad()
def _copy_pairs(pairs: list) -> None:
    for dst, v in pairs:
        dst.copy_(v.to(dst.dtype))


def import_timm_vit(model, checkpoint) -> ImportReport:
    """Load a timm-format ViT (``patch_embed.proj``, ``blocks.N.attn.qkv`` ...) into ``model.backbone``.

    ``checkpoint`` is a path or a state dict; the position embedding is resized
    to the model's grid; cls_token, the final norm and the classifier are
    reported as unexpected (the backbone has no use for them).
    """
    state = _checkpoint_state(checkpoint)
    if any(k.startswith("decode_head.") for k in state):
        raise WeightsError(f"{_checkpoint_name(checkpoint)} holds a whole SegViT model (decode_head.* weights), not a ViT backbone: "
                           "import it with import_official_segvit (train --init-format official), which keeps its head")
    state = {_timm_name(k.removeprefix("backbone.")): v for k, v in state.items()}
    report = ImportReport()
    _copy_pairs(_match_partial(model.backbone, state, "backbone.", report, checkpoint))
    return report


def import_official_segvit(model, checkpoint, other_classes: bool = False) -> ImportReport:
    """Load an official SegViT checkpoint (mmseg layout: ``backbone.*``, ``decode_head.*``).

    Backbone keys may use timm or mmseg ViT names. Decode-head keys match ours
    one to one, full (``input_proj_1``, ``decoder_1.layers.0.multihead_attn.q`` ...) and Shrunk
    (``q`` grid queries, ``decoder_1.layers.0.multihead_attn.in_proj_weight``, ``atm.decoder_1`` ...).
    ``other_classes``: a checkpoint for another class count loads all but the class queries and the
    classifier, which keep the model's values (fine-tuning on other classes); else it is refused.
    """
    state = _checkpoint_state(checkpoint)
    source = _checkpoint_name(checkpoint)
    backbone, head, other, named = {}, {}, [], {}
    for k, v in state.items():
        if k.startswith("backbone."):
            name = _timm_name(k[len("backbone."):])
            if name in named:
                raise WeightsError(f"{source} holds backbone.{name} twice, as {named[name]} and {k} (mmseg and timm "
                                   "names): which one is meant is not for us to guess; keep one")
            named[name] = k
            backbone[name] = v
        elif k.startswith("decode_head."):
            head[k[len("decode_head."):]] = v
        else:
            other.append(k)
    if not backbone and not head:
        raise WeightsError(f"{source} has no backbone.* or decode_head.* keys (it has e.g. "
                           f"{', '.join(list(state)[:3]) or 'none'}): not an mmseg SegViT checkpoint")
    report = ImportReport(unexpected=other)
    if other_classes:
        own = model.decode_head.state_dict()
        for name in _class_tensors(model):
            if name in head and name in own and head[name].shape != own[name].shape:
                del head[name]
                report.other_classes.append("decode_head." + name)
    pairs = _match_partial(model.backbone, backbone, "backbone.", report, checkpoint)
    _copy_pairs(pairs + _match_partial(model.decode_head, head, "decode_head.", report, checkpoint))
    return report


def _class_tensors(model) -> list[str]:
    """The decode head's tensors sized by the class count: class queries and classifier."""
    stage = "atm." if model.variant == "shrunk" else ""
    return [stage + name for name in ("q.weight", "class_embed.weight", "class_embed.bias")]


def _full_to_shrunk_name(key: str) -> str | None:
    """Where a full-model parameter goes in the Shrunk model (None: nowhere).

    The backbone is shared. The full head's projections run deepest stage first,
    so ``input_proj_1`` (last block) feeds QU's 1/32 side (``input_proj_2``) and
    ``input_proj_3`` (the first feature block: the block before QD in the ViT
    presets, block 1 where the Shrunk ``tiny`` reads block 2) its 1/16 side
    (``input_proj_1``), a start that training adapts; the last ATM stage, the
    class queries and the classifier become the single ATM stage.
    """
    if key.startswith("backbone."):
        return key
    for src, dst in (
        ("decode_head.input_proj_1.", "decode_head.input_proj_2."),
        ("decode_head.proj_norm_1.", "decode_head.proj_norm_2."),
        ("decode_head.input_proj_3.", "decode_head.input_proj_1."),
        ("decode_head.proj_norm_3.", "decode_head.proj_norm_1."),
        ("decode_head.decoder_3.", "decode_head.atm.decoder_1."),
        ("decode_head.q.", "decode_head.atm.q."),
        ("decode_head.class_embed.", "decode_head.atm.class_embed."),
    ):
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def import_full_into_shrunk(model, checkpoint) -> ImportReport:
    """Warm-start a Shrunk model from a trained full SegViT (our weights file or a state dict).

    Everything the two share moves over (see ``_full_to_shrunk_name``); only the
    QU decoders and grid queries start fresh. Learning QU's spatial alignment
    from scratch is slow, so this is how the Shrunk demo weights are trained.
    """
    if model.variant != "shrunk":
        raise WeightsError("import_full_into_shrunk needs a Shrunk model")
    state = _checkpoint_state(checkpoint)
    mapped, unused = {}, []
    for k, v in state.items():
        name = _full_to_shrunk_name(k)
        if name is None:
            unused.append(k)
        else:
            mapped[name] = v
    report = ImportReport(unexpected=unused)
    _copy_pairs(_match_partial(model, mapped, "", report, checkpoint))
    return report
