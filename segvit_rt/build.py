"""Build a deployment engine from SegViT weights, checked against PyTorch before it is kept.

``python -m segvit_rt.build --variant shrunk [--preset tiny] [--weights W.safetensors]
[--backend auto|tensorrt|aoti|onnx] [--precision fp16|fp32] [--batch N|dynamic]
[--kernels auto|triton|reference] [--out DIR]``

The engine (one directory: the artifact and ``engine.json``, see
``segvit_rt.engines.format``) is written to a temporary directory, loaded back
through the same loader the runtime uses, and compared with the fp32 PyTorch
model on a random normalised batch at the crop size: labels after the
post-process must agree on at least 99.5% of the pixels and both logits must
lie within the precision's tolerance. Only then does the directory move to
``--out``; a failed build leaves nothing there (and an older engine in place).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import engines
from .class_names import palette
from .cli import OutputPathError, check_output, exit_on, few_names, on_interrupt
from .config import PRESETS, VARIANTS
from .engines.format import FORMAT, META_FILE, PRECISIONS, EngineError, library_versions, write_engine_json
from .engines.graph import DTYPES, LogitsGraph, example_input, output_shapes
from .io_utils import atomic_dir, sha256_file
from .kernel_choice import DYNAMIC_BATCH, choose_kernels
from .ops.reference import segment_postprocess
from .weights import WeightsError, load_weights

DEMO_PRESET = "tiny"
# The synthetic data the bundled demo weights are trained on (segvit_rt.data.synth arguments).
DEMO_DATA = dict(classes=5, train=300, val=60, size=160, seed=0)
MIN_LABEL_AGREEMENT = 0.995


@dataclass(frozen=True)
class Tolerance:
    """Allowed max |engine - PyTorch| of a logit tensor: ``atol + rtol * max |PyTorch|``."""

    atol: float
    rtol: float

    def bound(self, reference: torch.Tensor) -> float:
        return self.atol + self.rtol * reference.abs().max().item()


# fp32: graph rewrites and kernel choices only reorder float sums (errors ~1e-6 relative).
# fp16: 10-bit mantissas through every layer; half-precision ViT logits drift by about 1% of their range.
TOLERANCES = {"fp32": Tolerance(atol=1e-4, rtol=1e-3), "fp16": Tolerance(atol=2e-2, rtol=3e-2)}


DEFAULT_MAX_BATCH = 32  # a dynamic engine's largest batch unless asked otherwise


class BuildError(RuntimeError):
    """The build could not produce an engine that matches the PyTorch model."""


@dataclass
class Parity:
    batch: int
    label_agreement: float
    class_logits_err: float
    class_logits_tol: float
    mask_logits_err: float
    mask_logits_tol: float

    @property
    def ok(self) -> bool:
        return (self.label_agreement >= MIN_LABEL_AGREEMENT and self.class_logits_err <= self.class_logits_tol
                and self.mask_logits_err <= self.mask_logits_tol)

    def __str__(self) -> str:
        return (f"labels agree on {100 * self.label_agreement:.3f}% of pixels (need >= {100 * MIN_LABEL_AGREEMENT}%); "
                f"max |d class logits| {self.class_logits_err:.3g} (tol {self.class_logits_tol:.3g}), "
                f"max |d mask logits| {self.mask_logits_err:.3g} (tol {self.mask_logits_tol:.3g}), batch {self.batch}")


def check_parity(engine, reference: torch.nn.Module, precision: str, batch: int, seed: int = 1) -> Parity:
    """Compare ``engine`` with the fp32 PyTorch ``reference`` on a random normalised batch."""
    cfg = reference.cfg
    device = next(reference.parameters()).device
    image = example_input(cfg, batch, device, seed=seed)
    with torch.no_grad():
        out = reference(image)
        ref_cls, ref_masks = out["pred_logits"].float(), out["pred_masks"].float()
        cls, masks = (t.to(device).float() for t in engine(image.to(engine.device)))
        size = (cfg.crop_size, cfg.crop_size)
        agree = (segment_postprocess(cls, masks, size) == segment_postprocess(ref_cls, ref_masks, size))
    tol = TOLERANCES[precision]
    return Parity(
        batch=batch,
        label_agreement=agree.float().mean().item(),
        class_logits_err=(cls - ref_cls).abs().max().item(),
        class_logits_tol=tol.bound(ref_cls),
        mask_logits_err=(masks - ref_masks).abs().max().item(),
        mask_logits_tol=tol.bound(ref_masks),
    )


def resolve_backend(name: str, log=print, device=None) -> str:
    if name == "auto":
        name, why = engines.auto_backend(None if device == "auto" else device)
        log(f"backend: {name} ({why})")
    elif name not in engines.BACKENDS:
        raise EngineError(f"unknown backend {name!r}; choose from auto, {', '.join(engines.BACKENDS)}")
    return name


def engine_device(backend: str, device=None) -> torch.device:
    """Where the engine runs (and its parity is checked)."""
    if device not in (None, "auto"):
        return torch.device(device)
    return engines.backend_module(backend).default_device()


def resolve_precision(precision: str | None, backend: str, device: torch.device) -> str:
    if precision is None:
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend == "aoti" and precision == "fp16" and device.type != "cuda":
        raise EngineError("fp16 aoti engines need CUDA (the CPU build compiles fp32 C++); use --precision fp32")
    return precision


KERNELS = ("auto", "triton", "reference")


def resolve_kernels(kernels: str | None, backend: str, device: torch.device, precision: str) -> str:
    """Where our Triton kernels go into an engine: all of them into AOTInductor on CUDA, the ATM
    attention into fp16 TensorRT engines as an AOT plugin. ``"auto"`` (the default) stays ``"auto"``
    for aoti on CUDA, where the build times both and keeps the faster (``segvit_rt.kernel_choice``),
    and is ``"reference"`` elsewhere: ONNX engines get plain ONNX operators, TensorRT the plugin only
    on request (``"triton"``)."""
    if kernels is None or kernels == "auto":
        return "auto" if backend == "aoti" and device.type == "cuda" else "reference"
    if kernels not in KERNELS:
        raise EngineError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "reference" or (backend == "aoti" and device.type == "cuda"):
        return kernels
    if backend != "tensorrt":
        raise EngineError(f"Triton kernels go into aoti engines on CUDA and tensorrt engines (the ATM plugin), "
                          f"not {backend} engines on {device.type}")
    if precision != "fp16":
        raise EngineError("the ATM TensorRT plugin runs fp16 only: use --precision fp16 or --kernels reference")
    engines.backend_module("tensorrt").check_plugin_available()
    return kernels


def export_impl(kernels: str, backend: str) -> str:
    """The model's op implementation for export: a TensorRT engine's Triton kernel is the ATM plugin."""
    return "tensorrt_plugin" if backend == "tensorrt" and kernels == "triton" else kernels


def default_out(preset: str, variant: str, backend: str, precision: str) -> Path:
    """``engines/built/<preset>_<variant>_<backend>_<precision>`` in the repository when run from a
    checkout (where ``segvit_rt.engines`` is the checkout's ``engines/`` folder), else under the
    current directory (an installed package: never inside site-packages)."""
    engines_dir = Path(engines.__file__).resolve().parent
    repo = Path(__file__).resolve().parent.parent
    base = repo if engines_dir == repo / "engines" else Path.cwd()
    return base / "engines" / "built" / f"{preset}_{variant}_{backend}_{precision}"


def check_out(out: Path) -> None:
    """``out`` is replaced whole by the new engine: refuse anything there but an engine (or a path
    that cannot be a folder)."""
    try:
        check_output(out, "--out", folder=True)
        check_output(out.resolve().parent, "--out's folder", folder=True)  # the new engine is swapped in there
    except OutputPathError as e:
        raise EngineError(str(e)) from None
    if not out.is_dir():
        return
    if os.path.ismount(out):
        raise EngineError(f"--out {out} is a mount point, which the build cannot swap a new folder into the place "
                          "of: give a folder inside it")
    names = [p.name for p in out.iterdir()]
    engine_files = {META_FILE} | {engines.backend_module(b).ARTIFACT for b in engines.BACKENDS}
    others = sorted(name for name in names if name not in engine_files)
    if names and not (out / META_FILE).is_file():
        raise EngineError(f"--out {out} is a directory holding other things than an engine (no {META_FILE}); "
                          "the build replaces its directory whole, so give a new or an engine directory")
    if others:
        raise EngineError(f"--out {out} holds an engine and other files ({few_names(others)}), which the build would "
                          "delete with the old engine (it replaces the directory whole): move them out, or give "
                          "another --out")


def build_engine(
    model,
    *,
    backend: str = "auto",
    precision: str | None = None,
    batch: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    out=None,
    device=None,
    class_names=None,
    weights=None,
    kernels: str | None = None,
    log=print,
) -> Path:
    """Build, check and write an engine of ``model`` (a ``SegViT``); returns its directory.

    ``batch``: a static batch size, or ``None`` for a dynamic batch of 1..``max_batch``.
    ``precision``: fp16 on a GPU and fp32 on the CPU unless given. ``weights``: the file the
    model was loaded from, recorded with its sha256. ``kernels``: ``"auto"`` (default),
    ``"triton"`` or ``"reference"`` ops, see :func:`resolve_kernels`.
    """
    backend = resolve_backend(backend, log, device)
    module = engines.backend_module(backend)
    device = engine_device(backend, device)
    module.check_available(device)
    precision = resolve_precision(precision, backend, device)
    if batch is not None and not 1 <= batch <= 1024:
        raise EngineError(f"batch must be between 1 and 1024, got {batch}")
    if batch is None and not 2 <= max_batch <= 1024:
        raise EngineError(f"a dynamic batch needs max_batch between 2 and 1024, got {max_batch}")
    cfg, variant = model.cfg, model.variant
    names = list(class_names if class_names is not None else cfg.names())
    if len(names) != cfg.num_classes:
        raise EngineError(f"{len(names)} class names for a model with {cfg.num_classes} classes")
    out = Path(out) if out is not None else default_out(cfg.name, variant, backend, precision)
    check_out(out)
    replaced = []  # what the swap replaced, found then: --out may have changed during the build

    def check_again(_):
        try:
            check_out(out)
        except EngineError as e:
            raise EngineError(f"{e} (changed while the engine was built: it was not written)") from None
        replaced.append(earlier_engine(out))

    reference = copy.deepcopy(model).float().eval().to(device).set_kernels("reference")
    # ONNX export traces on the CPU (the graph is device-free); aoti compiles for its device.
    export_device = device if backend == "aoti" else torch.device("cpu")
    kernels = resolve_kernels(kernels, backend, device, precision)
    exported = copy.deepcopy(model).eval().to(export_device, DTYPES[precision])
    graph = LogitsGraph(exported, precision).eval()
    example = example_input(cfg, batch or min(2, max_batch), export_device)
    # Backends that compile for a GPU (aoti, tensorrt, the plugin's PTX) target the current one.
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    kernel_choice = None
    if kernels == "auto":
        with on_device:  # a dynamic engine is timed at up to DYNAMIC_BATCH images
            kernels, kernel_choice = choose_kernels(
                graph, example_input(cfg, batch or min(DYNAMIC_BATCH, max_batch), export_device), log)
    exported.set_kernels(export_impl(kernels, backend))
    log(f"building {backend} {precision} engine of {cfg.name} {variant} "
        f"(batch {batch or f'1..{max_batch}'}, input {cfg.crop_size}x{cfg.crop_size}, kernels {kernels}, device {device})")

    with atomic_dir(out, before_swap=check_again) as tmp, on_device:
        artifact = tmp / module.ARTIFACT
        extra = module.export(graph, example, artifact, dynamic_batch=batch is None, max_batch=max_batch)
        del graph, exported
        meta = {
            "format": FORMAT,
            "backend": backend,
            "artifact": module.ARTIFACT,
            "sha256": sha256_file(artifact),
            "artifact_bytes": artifact.stat().st_size,
            "precision": precision,
            "device": device.type,
            "batch": batch,
            "max_batch": batch or max_batch,
            "input": {"name": "image", "shape": [batch, 3, cfg.crop_size, cfg.crop_size], "dtype": "float32",
                      "meaning": "RGB, (pixel - mean) / std, mean/std in 0-255 units"},
            "outputs": output_shapes(cfg, batch),
            "input_size": [cfg.crop_size, cfg.crop_size],
            "preset": cfg.name,
            "variant": variant,
            "config": cfg.to_dict(),
            "class_names": names,
            "palette": palette(cfg.num_classes).tolist(),
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "crop_size": cfg.crop_size,
            "slide_stride": cfg.slide_stride,
            "kernels": kernels,
            "kernel_choice": kernel_choice,  # --kernels auto: eager times of each setting (segvit_rt.kernel_choice)
            "versions": library_versions(),
            "weights": None if weights is None else {"path": str(Path(weights).resolve()),
                                                     "sha256": sha256_file(weights)},
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        write_engine_json(tmp, meta)
        engine = engines.load_engine(tmp, device=device)
        parity = check_parity(engine, reference, precision, batch or min(2, max_batch))
        del engine
        log(f"parity vs PyTorch fp32: {parity}")
        if not parity.ok:
            raise BuildError(f"the {backend} {precision} engine does not match the PyTorch model: {parity}; "
                             f"nothing was written to {out}")
        meta["parity"] = {**asdict(parity), "min_label_agreement": MIN_LABEL_AGREEMENT,
                          "tolerance": asdict(TOLERANCES[precision])}
        write_engine_json(tmp, meta)
    log(f"engine written to {out}" + (f" (replacing {replaced[0]})" if replaced[0] else ""))
    return out


def earlier_engine(out: Path) -> str | None:
    """What engine ``out`` holds, in a few words (a build replaces it: worth saying), or None."""
    if not (out / META_FILE).is_file():
        return None
    try:
        meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
        weights = (meta.get("weights") or {}).get("path") or "unrecorded weights"
        return f"the engine built there on {meta.get('built_at', '?')} from {weights}"
    except (OSError, ValueError, AttributeError):
        return "the engine there"


def default_weights(variant: str) -> Path:
    return Path(__file__).resolve().parent / "assets" / f"{DEMO_PRESET}_{variant}.safetensors"


def load_build_model(variant: str | None, preset: str | None, weights: str | None):
    """The model to build, from ``--weights`` or the bundled demo weights; checks preset and variant
    (``variant`` None: the weights file's)."""
    if weights is None:
        if variant is None:
            raise EngineError("--variant full or shrunk is needed to pick the bundled demo weights")
        if preset not in (None, DEMO_PRESET):
            raise EngineError(f"no weights are bundled for preset {preset!r}: pass --weights W.safetensors")
        path = default_weights(variant)
        if not path.is_file():
            raise EngineError(
                f"the bundled demo weights {path} are missing. Train them on synthetic data:\n"
                f"  python -m segvit_rt.data.synth data/synth --classes {DEMO_DATA['classes']} "
                f"--train {DEMO_DATA['train']} --val {DEMO_DATA['val']} --size {DEMO_DATA['size']}\n"
                f"  python -m segvit_rt.train --data data/synth --preset tiny --variant {variant} --out runs/{variant}\n"
                f"then pass --weights runs/{variant}/weights.safetensors (or copy it to {path})"
            )
    else:
        path = Path(weights)
    model = load_weights(path)
    if variant is not None and model.variant != variant:
        raise EngineError(f"{path} holds a {model.variant} model, but --variant {variant} was asked for")
    if preset is not None and model.cfg.name != preset:
        raise EngineError(f"{path} holds preset {model.cfg.name!r}, but --preset {preset} was asked for")
    return model, path


def _batch_arg(text: str) -> int | None:
    if text == "dynamic":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch takes a number or 'dynamic', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segvit_rt.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=VARIANTS, help="default: the --weights file's (needed for the bundled ones)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help=f"model preset (default: the weights' own; the bundled weights are {DEMO_PRESET!r})")
    p.add_argument("--weights", help=f"a segvit_rt .safetensors file (default: the bundled {DEMO_PRESET} demo weights; "
                                      "an official SegViT checkpoint: python -m segvit_rt.convert first)")
    p.add_argument("--backend", default="auto", choices=("auto", *engines.BACKENDS),
                   help="auto: tensorrt if it imports and a GPU is present, else aoti on a GPU, else onnx")
    p.add_argument("--precision", choices=PRECISIONS, help="default: fp16 on a GPU, fp32 on the CPU")
    p.add_argument("--batch", type=_batch_arg, default=None, metavar="N|dynamic",
                   help="static batch size, or 'dynamic' (default) for 1..--max-batch")
    p.add_argument("--max-batch", type=int, help=f"largest batch of a dynamic engine (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--kernels", choices=KERNELS, default="auto",
                   help="triton: our kernels in an aoti engine on CUDA, or the ATM attention as a plugin in an "
                        "fp16 tensorrt engine; reference: plain ops; auto (default): for aoti on CUDA, whichever "
                        "of the two runs eager forwards of the model faster on this GPU (timed at build), "
                        "else reference")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the engine runs (default: the backend's choice)")
    p.add_argument("--out", help="engine directory (default: engines/built/<preset>_<variant>_<backend>_<precision> "
                                 "in the repository checkout, or in the current folder for an installed package)")
    return p


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    with on_interrupt("no engine was written (an engine already at --out is left as it was)"), \
            exit_on(EngineError, WeightsError, BuildError, OSError):
        if args.batch is not None and args.max_batch is not None:
            raise EngineError(f"--max-batch is for dynamic engines; --batch {args.batch} builds a static one")
        model, weights = load_build_model(args.variant, args.preset, args.weights)
        return build_engine(model, backend=args.backend, precision=args.precision, batch=args.batch,
                            max_batch=DEFAULT_MAX_BATCH if args.max_batch is None else args.max_batch,
                            out=args.out, device=args.device, weights=weights, kernels=args.kernels)


if __name__ == "__main__":
    main()
