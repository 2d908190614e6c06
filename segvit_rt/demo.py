"""The main job, end to end on a fresh machine: demo weights -> engine -> segmented held-out images.

``python -m segvit_rt.demo [--out demo_out] [--variant shrunk] [--images N] [--device auto|cpu|cuda]``

1. Takes the bundled tiny demo weights (``segvit_rt/assets/tiny_<variant>.safetensors``,
   trained by ``segvit_rt.train`` on synthetic data); if they are missing,
   trains them here first (around 10 minutes on 2 CPU cores: say so up front).
2. Regenerates the held-out synthetic split those weights were evaluated on
   (the generator's arguments travel in the weights' metadata, ``synth``).
3. Builds the engine with the builder's defaults (``--backend auto``: ONNX
   Runtime on a CPU-only machine), which checks parity with PyTorch first.
4. Segments the held-out images through ``segvit_rt.Runtime`` (sliding window,
   as the official evaluation), prints mIoU and images/s, and writes overlays
   plus ``grid.png`` (image | ground truth | prediction for a few images) and
   ``results.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .build import DEMO_DATA, BuildError, build_engine, check_out, default_weights, load_build_model
from .cli import UsageError, check_output, exit_on, on_interrupt
from .data import IGNORE_INDEX, DatasetError, open_dataset
from .data.synth import generate
from .engines import EngineError
from .evaluate import format_table, summarize
from .images import image_grid, save_png
from .io_utils import atomic_dir
from .metrics import ConfusionMatrix
from .runtime import Runtime
from .training.logs import write_json
from .weights import WeightsError, read_metadata

GRID_ROWS = 4


def _train(data: Path, run: Path, variant: str, extra_args: list[str]) -> Path:
    from .train import main as train_main

    weights = run / "weights.safetensors"
    if weights.is_file():
        print(f"using the weights trained by an earlier demo run: {weights}")
        return weights
    args = ["--data", str(data), "--out", str(run), "--preset", "tiny", "--variant", variant, "--quiet", *extra_args]
    if (run / "checkpoint.pt").is_file():
        args.append("--resume")  # an interrupted earlier attempt
    train_main(args)
    return weights


def train_demo_weights(variant: str, work: Path) -> Path:
    """Train the tiny demo weights on freshly generated synthetic data, as the bundled ones were:
    the full model from scratch, the Shrunk one warm-started from it (QU learns its spatial
    alignment far faster on a trained backbone). Returns the weights file."""
    print(f"the bundled demo weights are missing: training tiny {variant} on synthetic data now "
          "(around 10 minutes on 2 CPU cores; bundled weights skip this step)", flush=True)
    data = work / "data" / "ADEChallengeData2016"
    if not data.is_dir():
        data = generate(work / "data", **DEMO_DATA)
    full = _train(data, work / "run_full", "full", [])
    if variant == "full":
        return full
    return _train(data, work / "run_shrunk", "shrunk", ["--init", str(full), "--init-format", "full", "--iters", "3000"])


def held_out_split(weights: Path, out: Path) -> Path:
    """Regenerate the validation images the weights' metadata describes (the training split is not
    needed: each image depends only on the seed, the split and its index)."""
    synth = read_metadata(weights).get("synth")
    if not synth:
        raise WeightsError(f"{weights} records no synthetic dataset (metadata 'synth'): the demo needs weights "
                           "trained by segvit_rt.train on segvit_rt.data.synth data")
    return generate(out, classes=synth["classes"], train=1, val=synth["val"], size=synth["size"],
                    seed=synth["seed"], overwrite=True, progress=False)


def check_demo_folder(out: Path) -> None:
    """Refuse an ``out`` whose ``data/ADEChallengeData2016``, ``overlays`` or ``engine`` the demo did
    not write: it replaces those whole (a real ADE20K tree or someone's notes there would be lost).
    Anything else in ``out`` is left alone."""
    data = out / "data" / "ADEChallengeData2016"
    if data.exists() and not (data / "synth.json").is_file():
        raise UsageError(f"--out {out}: {data} is not synthetic data the demo wrote (no synth.json), and the demo "
                         "replaces it whole; choose another --out")
    overlays = out / "overlays"
    if overlays.exists() and not overlays.is_dir():
        raise UsageError(f"--out {out}: {overlays} is a file, where the demo writes a folder; choose another --out")
    elif overlays.exists():
        foreign = [p.name for p in overlays.iterdir() if not (p.is_file() and p.name.endswith("_overlay.png"))]
        if foreign:
            raise UsageError(f"--out {out}: {overlays} holds what the demo did not write ({', '.join(foreign[:3])}), "
                             "and the demo replaces that folder whole; choose another --out")
    for name in ("grid.png", "results.json"):
        if (out / name).is_dir():
            raise UsageError(f"--out {out}: {out / name} is a folder, where the demo writes a file; "
                             "choose another --out")
    check_out(out / "engine")


def run_demo(out: Path, variant: str | None = "shrunk", weights=None, max_images: int | None = None,
             progress: bool = True, device: str = "auto") -> dict:
    """``variant`` None: the ``weights`` file's (shrunk for the bundled ones). ``device``: where the
    engine runs, as ``build --device`` (auto: the GPU's backend where there is one)."""
    out = Path(out)
    check_demo_folder(out)
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA GPU here; use --device cpu (or auto)")
    if variant is None:
        variant = read_metadata(weights)["variant"] if weights is not None else "shrunk"
    weights = Path(weights) if weights is not None else default_weights(variant)
    if not weights.is_file():
        if weights != default_weights(variant):
            raise WeightsError(f"weights file not found: {weights}")
        weights = train_demo_weights(variant, out / "train")
    model, weights = load_build_model(variant, None, weights)
    print(f"weights: {weights} ({model.cfg.name} {variant}, {model.cfg.num_classes} classes)")

    data_root = held_out_split(weights, out / "data")
    engine_dir = build_engine(model, out=out / "engine", weights=weights, device=device)
    runtime = Runtime(engine_dir, device=None if device == "auto" else device)
    dataset = open_dataset(data_root, "validation")
    if tuple(dataset.classes) != tuple(runtime.class_names):
        raise WeightsError(f"the regenerated data's classes {dataset.classes} differ from the engine's "
                           f"{runtime.class_names}")
    count = len(dataset) if max_images is None else min(max_images, len(dataset))

    runtime.segment(dataset.load(0)[0])  # warm-up: first-call allocations stay out of the timing
    confusion = ConfusionMatrix(runtime.num_classes, IGNORE_INDEX)
    grid_rows, seconds = [], 0.0
    overlays = out / "overlays"
    with atomic_dir(overlays) as written:  # this run's overlays only, not an earlier, longer run's too
        for i in tqdm(range(count), desc="segment", unit="img", disable=not progress):
            image, label = dataset.load(i)
            start = time.perf_counter()
            pred = runtime.segment(image)
            seconds += time.perf_counter() - start
            confusion.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(label))
            stem = Path(dataset.samples[i][0]).stem
            save_png(runtime.overlay(image, pred), written / f"{stem}_overlay.png")
            if len(grid_rows) < GRID_ROWS:
                grid_rows.append([image, runtime.colorize(label), runtime.colorize(pred)])
    save_png(image_grid(grid_rows), out / "grid.png")

    metrics = summarize(confusion, count, runtime.mode, runtime.crop, runtime.stride)
    throughput = count / seconds
    trained = read_metadata(weights)
    results = {
        "mIoU": metrics["mIoU"], "aAcc": metrics["aAcc"], "mAcc": metrics["mAcc"], "IoU": metrics["IoU"],
        "images": count, "images_per_s": throughput, "engine": str(engine_dir),
        "backend": runtime.meta["backend"], "precision": runtime.meta["precision"], "device": str(runtime.device),
        "weights": str(weights), "pytorch_mIoU_at_training": trained.get("miou"),
        "parity": runtime.meta["parity"], "class_names": runtime.class_names,
    }
    write_json(out / "results.json", results)
    print(format_table(metrics, runtime.class_names))
    if trained.get("miou") is not None:
        subset = f", on all {len(dataset)} images" if count < len(dataset) else ""
        print(f"(the PyTorch evaluation recorded at training time{subset}: mIoU {100 * trained['miou']:.2f})")
    print(f"{throughput:.1f} images/s through the {results['backend']} {results['precision']} engine on "
          f"{results['device']} ({count} images, {runtime.mode} inference, preprocessing and post-process included; "
          "reading images and writing overlays not timed)")
    print(f"overlays in {overlays}, grid in {out / 'grid.png'}, figures in {out / 'results.json'}")
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segvit_rt.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--variant", choices=("full", "shrunk"), help="default: the --weights file's, else shrunk")
    p.add_argument("--weights", help="weights to use instead of the bundled ones (must record their synthetic data)")
    p.add_argument("--images", type=int, help="segment only the first N held-out images")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the engine runs (default auto: a GPU engine where there is a GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.images is not None and args.images < 1:
        build_parser().error(f"--images must be at least 1, got {args.images}")
    start = time.perf_counter()
    with exit_on(UsageError, EngineError, WeightsError, BuildError, DatasetError, OSError), \
            on_interrupt("every output the demo wrote is whole or absent; run it again (it starts over)"):
        check_output(args.out, "--out", folder=True)
        results = run_demo(Path(args.out), args.variant, args.weights, args.images, progress=not args.quiet,
                           device=args.device)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
