"""Evaluate a SegViT model or a built engine: mIoU, aAcc, mAcc and per-class IoU on a dataset split.

``python -m segvit_rt.evaluate (--weights W | --engine E) --data ROOT [--split validation]
[--mode slide|whole] [--tta]``

As the official evaluation: each image is resized keeping its aspect ratio
(``inference.test_size``), predicted whole or by sliding ``crop`` windows every
``stride`` pixels, and the scores are resized back to the original size before
the argmax, so the metrics are computed against the original labels. ``--tta``
adds mmseg's multi-scale and mirrored testing (the papers' "MS" figures).

``--engine`` scores an engine through ``segvit_rt.Runtime.segment``, the path a
deployment takes (its preprocessing, windows and post-process), to see what
the engine's precision and backend cost in mIoU. Its modes are the Runtime's:
``slide`` as above, ``whole`` the image resized to the engine's input size.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .cli import UsageError, check_output, check_outside_engine, exit_on, on_interrupt
from .config import input_multiple
from .data import DatasetError, EvalTransform, open_dataset
from .engines import EngineError
from .engines.format import engine_source
from .inference import MODES, MS_RATIOS, model_logits_fn, predict_image
from .metrics import ConfusionMatrix, chance_levels
from .runtime import Runtime
from .training.distributed import all_reduce_sum_, pick_device
from .training.logs import plot_class_iou, write_json
from .weights import WeightsError, load_weights


def use_interpreter_on_cpu(kernels: str, device: torch.device) -> None:
    """Triton kernels on a CPU device run in Triton's interpreter, which must be switched on
    before triton is first imported (``segvit_rt.kernels`` imports it lazily)."""
    if kernels == "triton" and device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


@torch.no_grad()
def evaluate_model(
    model,
    dataset,
    mode: str = "slide",
    crop: int | None = None,
    stride: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    tta: bool = False,
) -> dict:
    """Metrics of ``model`` on ``dataset`` (samples: normalised image [3, H, W], labels [H, W]);
    ``tta``: multi-scale and mirrored testing (``predict_image`` with ``MS_RATIOS`` and ``flip``).

    Under data parallelism each replica takes every ``world_size``-th image and
    the confusion matrices are summed, so every replica returns the whole
    split's metrics. Also returns ``chance`` (see ``metrics.chance_levels``; ``None`` when no
    pixel of the split is labelled, and the metrics are then NaN).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cfg = model.cfg
    if dataset.num_classes != cfg.num_classes:
        raise DatasetError(f"the dataset has {dataset.num_classes} classes, the model {cfg.num_classes}")
    crop = crop or cfg.crop_size
    stride = stride or cfg.stride_at(crop)
    scale, min_size = cfg.scales(crop)
    device = next(model.parameters()).device
    confusion = ConfusionMatrix(cfg.num_classes, device=device)
    logits_fn = model_logits_fn(model)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    indices = range(rank, len(dataset), world_size)
    for i in tqdm(indices, desc=f"eval ({mode})", unit="img", disable=not progress, leave=False):
        image, label = dataset[i]
        with amp:
            pred = predict_image(logits_fn, image[None].to(device), crop, stride, mode, scale, min_size,
                                 ratios=MS_RATIOS if tta else None, flip=tta)
        confusion.update(pred[0], label.to(device))
    all_reduce_sum_(confusion.mat)
    return summarize(confusion, len(dataset), mode, crop, stride, tta)


def evaluate_runtime(runtime: Runtime, dataset, progress: bool = False) -> dict:
    """Metrics of ``runtime``'s engine on ``dataset``'s samples as stored (``dataset.load``), each
    segmented by ``runtime.segment`` as a deployment would; the same keys as :func:`evaluate_model`."""
    if dataset.num_classes != runtime.num_classes:
        raise DatasetError(f"the dataset has {dataset.num_classes} classes, the engine {runtime.num_classes}")
    confusion = ConfusionMatrix(runtime.num_classes)
    for i in tqdm(range(len(dataset)), desc=f"eval engine ({runtime.mode})", unit="img", disable=not progress,
                  leave=False):
        image, label = dataset.load(i)
        confusion.update(torch.from_numpy(runtime.segment(image).astype(np.int64)), torch.from_numpy(label))
    return summarize(confusion, len(dataset), runtime.mode, runtime.crop, runtime.stride)


def summarize(confusion: ConfusionMatrix, images: int, mode: str, crop: int, stride: int, tta: bool = False) -> dict:
    """The metrics of ``confusion`` with how they were made; ``chance``: see ``metrics.chance_levels``."""
    return {**confusion.compute(), "chance": chance_levels(confusion.mat.sum(1)), "images": images,
            "mode": mode, "crop": crop, "stride": stride if mode == "slide" else None, "tta": tta}


def format_table(metrics: dict, class_names) -> str:
    """Per-class IoU / Acc table and the summary line, in percent."""
    def pct(v):
        return "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"

    width = max([len("class")] + [len(n) for n in class_names])
    stride = "" if metrics["mode"] == "whole" else f", stride {metrics['stride']}"  # whole mode has no windows
    lines = [f"{'class':<{width}}    IoU    Acc"]
    lines += [f"{name:<{width}} {pct(iou)} {pct(acc)}"
              for name, iou, acc in zip(class_names, metrics["IoU"], metrics["Acc"])]
    chance = metrics.get("chance", {})  # None: evaluate_model found no labelled pixel
    lines.append(f"mIoU {pct(metrics['mIoU'])}  aAcc {pct(metrics['aAcc'])}  mAcc {pct(metrics['mAcc'])}  "
                 f"({metrics['images']} images, {metrics['mode']}, crop {metrics['crop']}{stride}"
                 f"{', multi-scale + flip' if metrics.get('tta') else ''}{_engine_words(metrics)})")
    if chance:
        lines.append(f"chance: constant mIoU {pct(chance['constant_mIoU'])}, random mIoU {pct(chance['random_mIoU'])}")
    elif chance is None:
        lines.append("no pixel of these images is labelled (all ignore): the metrics are undefined")
    return "\n".join(lines)


def _engine_words(metrics: dict) -> str:
    return f", {metrics['backend']} {metrics['precision']} engine" if "backend" in metrics else ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segvit_rt.evaluate", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="a segvit_rt .safetensors weights file (evaluated in PyTorch)")
    source.add_argument("--engine", help="an engine folder from python -m segvit_rt.build (evaluated through "
                                         "segvit_rt.Runtime, as deployed)")
    p.add_argument("--data", required=True,
                   help="dataset root (ADE20K, COCO-Stuff 10k or 164k, PASCAL-Context or images/ + masks/ layout)")
    p.add_argument("--split", default="validation",
                   help="validation (default), training, or none: a generic images/ + masks/ folder without "
                        "split folders")
    p.add_argument("--mode", choices=MODES, default="slide",
                   help="slide (default): crop-sized windows, as the official evaluation; whole: the whole image "
                        "at once (an engine's: the image resized to its input size)")
    p.add_argument("--crop", type=int,
                   help="window size (default: the crop size the weights were trained at; an engine's is fixed); "
                        "the test scale is scaled with it, in whole mode too")
    p.add_argument("--stride", type=int,
                   help="window stride, slide mode only (default: the weights' slide stride, scaled with --crop "
                        "when that is given)")
    p.add_argument("--kernels", choices=("reference", "triton"),
                   help="ops of the PyTorch model (default: reference; an engine's were chosen when it was built)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--tta", action="store_true",
                   help="multi-scale (0.5-1.75 of the test scale) and mirrored testing, as mmseg's aug_test "
                        "(--weights only)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--chart", help="also write a per-class IoU bar chart to this PNG file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_windows(cfg, variant: str, mode: str, crop: int, stride: int | None) -> None:
    """Refuse --crop/--stride that cannot work with these weights, before any image is read."""
    stride = stride or cfg.stride_at(crop)
    if stride > crop:
        raise UsageError(f"--stride {stride} is larger than the window (--crop {crop}): pixels between windows "
                         "would go unscored")
    multiple = input_multiple(cfg, variant)
    if mode == "slide" and crop % multiple:
        raise UsageError(f"--crop {crop} must be a multiple of {multiple} for a {variant} model (its windows are "
                         "the model's input)")


def check_not_an_engine(path: Path) -> None:
    """``--weights`` naming an engine (its folder, or a file in it) gets a hint instead of a weights-file error."""
    engine = engine_source(path)
    if engine is None:
        return
    folder, source = engine
    built = f", or --weights {source}, the file it was built from" if source else ""
    raise UsageError(f"--weights {path} is an engine: evaluate it with --engine {folder}{built}")


def engine_only_flags(args) -> None:
    """Refuse the options an engine cannot honour: its window, ops and single view were fixed by the build."""
    reasons = {"--crop": "its window is its input size", "--kernels": "its ops were compiled in by the build",
               "--tta": "the Runtime segments one view of each image"}
    for flag, given in (("--crop", args.crop is not None), ("--kernels", args.kernels is not None),
                        ("--tta", args.tta)):
        if given:
            raise UsageError(f"{flag} is for --weights, not an engine ({reasons[flag]}); evaluate the weights the "
                             "engine was built from for that")


def open_runtime(args) -> Runtime:
    if Path(args.engine).suffix == ".safetensors" and Path(args.engine).is_file():
        raise UsageError(f"--engine {args.engine} is a weights file: evaluate it with --weights")
    engine_only_flags(args)
    runtime = Runtime(args.engine, device=None if args.device == "auto" else args.device, mode=args.mode)
    if args.stride is not None:
        if args.stride > runtime.crop:
            raise UsageError(f"--stride {args.stride} is larger than the engine's window ({runtime.crop}): pixels "
                             "between windows would go unscored")
        runtime.stride = args.stride
    return runtime


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    with on_interrupt("no metrics were written"), exit_on(UsageError, WeightsError, EngineError, DatasetError,
                                                          OSError):
        if args.weights:
            check_not_an_engine(Path(args.weights))
        outputs = [(flag, path) for flag, path in (("--json", args.json), ("--chart", args.chart)) if path]
        for flag, path in outputs:
            check_output(path, flag, folder=False)
            check_not_inside_input(path, flag, args)
        if args.chart and Path(args.chart).suffix.lower() != ".png":
            raise UsageError(f"--chart {args.chart}: the chart is a PNG image; name it *.png")
        if len(outputs) == 2 and Path(args.json).resolve() == Path(args.chart).resolve():
            raise UsageError(f"--json and --chart name the same file {args.json}: one would overwrite the other")
        for flag, value in (("--crop", args.crop), ("--stride", args.stride)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be >= 1, got {value}")
        if args.stride is not None and args.mode == "whole":
            raise UsageError("--stride is the slide mode's window stride: --mode whole has no windows")
        if args.engine:
            runtime = open_runtime(args)
            names = runtime.class_names
        else:
            model = load_model(args)
            names = list(model.cfg.names())
        split = None if args.split == "none" else args.split
        transform = None if args.engine else EvalTransform(model.cfg.mean, model.cfg.std)
        dataset = open_dataset(args.data, split, transform=transform,
                               context_classes=59 if len(names) == 59 else 60)  # the model's protocol
        for flag, path in outputs:
            dataset.check_writes_outside(path, flag)
        warn_if_names_differ(dataset.classes, names, "the engine's" if args.engine else "the weights'")
        if args.engine:
            metrics = evaluate_runtime(runtime, dataset, progress=not args.quiet)
        else:
            metrics = evaluate_model(model, dataset, args.mode, args.crop, args.stride, progress=not args.quiet,
                                     tta=args.tta)
    made_by = ({"engine": str(args.engine), "backend": runtime.meta["backend"], "precision": runtime.meta["precision"],
                "device": str(runtime.device)} if args.engine else {"weights": str(args.weights)})
    metrics = {**metrics, **made_by, "data": str(args.data), "split": args.split, "class_names": names}
    print(format_table(metrics, names))
    with exit_on(OSError):  # a full disk, say
        if args.json:
            write_json(args.json, metrics)
            print(f"wrote {args.json}")
        if args.chart:
            plot_class_iou(metrics, names, args.chart)
            print(f"wrote {args.chart}")
    return metrics


def warn_if_names_differ(data_names, names, source: str) -> None:
    """Before the work: names that differ may only be spelt otherwise, but the same names in
    another order mean the label indices differ, and the figures would be misattributed."""
    if tuple(data_names) == tuple(names):
        return
    if sorted(data_names) == sorted(names):
        print(f"warning: the dataset lists {source} class names in another order (first difference at index "
              f"{next(i for i, (a, b) in enumerate(zip(data_names, names)) if a != b)}): its label numbers mean "
              "other classes than the model's, so these metrics are not the model's", file=sys.stderr)
    else:
        print(f"warning: the dataset's class names differ from {source} ({list(data_names)[:5]} ... vs "
              f"{list(names)[:5]} ...); the table uses {source}", file=sys.stderr)


def load_model(args):
    """The ``--weights`` model on its device, after checking ``--crop``/``--stride`` against it."""
    try:
        device = pick_device(args.device)
    except ValueError as e:  # no CUDA device
        raise UsageError(str(e)) from None
    kernels = args.kernels or "reference"
    use_interpreter_on_cpu(kernels, device)
    model = load_weights(args.weights, kernels=kernels).to(device)
    check_windows(model.cfg, model.variant, args.mode, args.crop or model.cfg.crop_size, args.stride)
    return model


def check_not_inside_input(path, flag: str, args) -> None:
    """An output must not replace the --weights file, nor land in the --engine folder (whose rebuild
    refuses a folder holding other files)."""
    out = Path(path).resolve()
    if args.weights and out == Path(args.weights).resolve():
        raise UsageError(f"{flag} {path} is the --weights file: it would be overwritten")
    if args.engine:
        check_outside_engine(path, flag, args.engine)


if __name__ == "__main__":
    main()
