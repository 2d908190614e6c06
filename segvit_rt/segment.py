"""Segment images with a built engine.

``python -m segvit_rt.segment IMG|FOLDER... --engine E --out DIR [--mode slide|whole] [--batch N] [--alpha 0.5]``

For each image ``<stem>.<ext>`` writes ``DIR/<stem>_labels.png`` (pixel value =
class index; 16-bit past 256 classes) and ``DIR/<stem>_overlay.png`` (the image
blended with the class colours), each atomically. A folder stands for the image
files directly inside it (subfolders and broken links are named, not searched;
when it is ``--out`` too, its ``*_labels.png``/``*_overlay.png`` files are an
earlier run's outputs, not inputs). An image that cannot be read, or whose output
names would be too long for a file name, is reported and skipped: the others are
still segmented, and the exit status is 1.
``--skip-existing`` writes only the outputs not there yet (to continue a stopped
run, after Ctrl-C, say: each output is whole or absent).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from .cli import UsageError, check_output, check_outside_engine, exit_on, few_names, on_interrupt
from .data.datasets import IMAGE_SUFFIXES
from .engines import EngineError
from .images import load_image, save_labels, save_png
from .inference import MODES
from .io_utils import NAME_MAX, sweep_folder

OUTPUT_SUFFIXES = ("_labels.png", "_overlay.png")


def output_paths(image: Path, out: Path) -> tuple[Path, Path]:
    """``out/<stem>_labels.png`` and ``out/<stem>_overlay.png``."""
    labels, overlay = (out / f"{image.stem}{suffix}" for suffix in OUTPUT_SUFFIXES)
    return labels, overlay


def _plural(n: int, thing: str) -> str:
    return f"{thing}{'s' * (n != 1)}"


def _count(n: int, thing: str) -> str:
    return f"{n} {_plural(n, thing)}"


def expand_inputs(args: list[str], out: Path | None = None,
                  note: Callable[[str], None] | None = None) -> tuple[list[Path], list[Path]]:
    """Command-line inputs as image paths: a folder becomes the image files directly inside it, sorted
    (hidden files left out; ``note(text)`` is told of the subfolders and broken links it skips, and of
    earlier outputs left out). When
    the folder is ``out`` itself, its files named as outputs (``*_labels.png``, ``*_overlay.png``) are
    an earlier run's, not inputs: returned second, to be protected from overwriting but not
    segmented; so are the existing outputs of an image named in ``out``."""
    paths, earlier = [], []
    for arg in map(Path, args):
        if not arg.is_dir():
            paths.append(arg)
            if out is not None and out.is_dir() and arg.is_file() and arg.parent.samefile(out):
                earlier.extend(o for o in output_paths(arg, out) if o.is_file())
            continue
        entries = [p for p in arg.iterdir() if not p.name.startswith(".")]
        found = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        folders = sorted(p.name for p in entries if p.is_dir())
        if not found:
            inside = (f" ({_plural(len(folders), 'subfolder')} {few_names(folders)} not searched: pass them too)"
                      if folders else "")
            raise FileNotFoundError(f"no image files ({'/'.join(IMAGE_SUFFIXES)}) in folder {arg}{inside}")
        broken = sorted(p.name for p in entries if p.is_symlink() and not p.exists())
        others = sorted(p.name for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES)
        if note is not None and (folders or broken or others):
            skipped = ([f"{_plural(len(folders), 'subfolder')} {few_names(folders)} (not searched: pass them too)"]
                       if folders else [])
            skipped += [f"{_plural(len(broken), 'broken link')} {few_names(broken)}"] if broken else []
            skipped += ([f"{_count(len(others), 'file')} without an image suffix {few_names(others)} (pass one by name "
                         "to segment it anyway)"] if others else [])
            note(f"{arg}: skipped {' and '.join(skipped)}")
        if out is not None and out.is_dir() and arg.samefile(out):
            outputs = [p for p in found if p.name.lower().endswith(OUTPUT_SUFFIXES)]
            earlier.extend(outputs)
            found = [p for p in found if not p.name.lower().endswith(OUTPUT_SUFFIXES)]
            if outputs and note is not None:
                note(f"{arg} is --out: its {len(outputs)} files named *{'/*'.join(OUTPUT_SUFFIXES)} are taken as "
                     "earlier outputs, not inputs")
            if not found:
                raise FileNotFoundError(f"folder {arg} is --out and holds only outputs ({'/'.join(OUTPUT_SUFFIXES)}), "
                                        "no images to segment")
        paths.extend(found)
    return _once_each(paths, note), earlier


def _once_each(paths: list[Path], note: Callable[[str], None] | None) -> list[Path]:
    """``paths`` without repeats of one path (a folder and a file in it, overlapping globs), first kept.
    Links are not followed: another name for a file is another input, with outputs of its own name
    (``samefile`` confirms a repeat: ``..`` after a linked folder is not where ``abspath`` puts it)."""
    kept, seen = [], {}
    for p in paths:
        key = os.path.abspath(p)
        if key in seen and p.is_file() and seen[key].is_file() and os.path.samefile(p, seen[key]):
            if note is not None:
                note(f"{p} is given twice (also as {seen[key]}): segmented once")
            continue
        seen.setdefault(key, p)
        kept.append(p)
    return kept


def check_inputs(paths: list[Path], out: Path | None = None, writes: dict[Path, list[Path]] | None = None,
                 protected: list[Path] = ()) -> None:
    """Fail before any work on missing files, on two inputs that would write the same outputs, or on
    a file in ``writes`` (input -> the outputs it will write; default: all of every input's) that
    would overwrite an input or a ``protected`` file. Names are compared without case, as macOS and
    Windows file systems do (on Linux that refuses ``Cat.png`` beside ``cat.png``: rather a clear
    error than a lost file)."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image(s) not found: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    seen: dict[str, Path] = {}
    for p in paths:
        key = p.stem.lower()
        if key in seen:
            raise UsageError(f"{seen[key]} and {p} share the stem {p.stem!r}: their outputs would overwrite each other")
        seen[key] = p
    if out is None:
        return
    check_output(out, "--out", folder=True)
    inputs = {str(p.resolve()).lower() for p in paths}
    kept = {str(p.resolve()).lower() for p in protected}
    for p, outputs in (writes if writes is not None else {p: output_paths(p, out) for p in paths}).items():
        for o in outputs:
            if str(o.resolve()).lower() in inputs:
                raise UsageError(f"the output {o} of {p} is one of the input images: it would be overwritten "
                                 "(choose another --out, or leave earlier outputs out of the inputs)")
            if str(o.resolve()).lower() in kept:
                raise UsageError(f"the output {o} of {p} is already in the input folder: it would be overwritten "
                                 "(choose another --out, or pass --skip-existing to continue an earlier run)")


def planned_writes(paths: list[Path], out: Path, skip_existing: bool) -> dict[Path, list[Path]]:
    """The outputs each input is to write: both, or with ``skip_existing`` only those not in ``out``
    yet (existing ones are left as they are; an input with none left is not segmented again)."""
    plan = {}
    for p in paths:
        # os.path.isfile: False for a name too long (segment_files skips that image), not an error
        todo = [o for o in output_paths(p, out) if not (skip_existing and os.path.isfile(o))]
        if todo:
            plan[p] = todo
    return plan


def segment_files(
    runtime,
    paths: list[Path],
    out: Path,
    alpha: float = 0.5,
    progress: bool = True,
    skip_existing: bool = False,
    batch: int = 1,
    protected: list[Path] = (),
) -> tuple[list[Path], dict[Path, str]]:
    """Segment ``paths`` into ``out``, ``batch`` images per ``Runtime.segment_batch`` call (images of
    one size share engine calls); ``protected`` files are never overwritten. Returns the images
    segmented, and those skipped with the reason (unreadable, or with an output name too long for
    a file system: one bad file in a folder does not stop the rest)."""
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    plan = planned_writes(paths, out, skip_existing)
    check_inputs(paths, out, plan, protected)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    sweep_folder(out, OUTPUT_SUFFIXES)  # temporaries of a killed run's PNG writes
    segmented, skipped = [], {}
    for path, outputs in plan.items():
        size, longest = max((len(os.fsencode(o.name)), o.name) for o in outputs)
        if size > NAME_MAX:
            skipped[path] = (f"{path}: its output {longest[:40]}... would be a file name of {size} bytes, more "
                             f"than a file system takes ({NAME_MAX}); rename the image")
    pending = [path for path in plan if path not in skipped]
    bar = tqdm(total=len(pending), desc="segment", unit="img", disable=not progress)
    for reason in skipped.values():
        bar.write(f"skipped: {reason}")
    for start in range(0, len(pending), batch):
        chunk, readable = pending[start : start + batch], {}
        for path in chunk:
            try:
                readable[path] = load_image(path)  # decoded once for the labels and the overlay
            except ValueError as e:
                skipped[path] = str(e)
                bar.write(f"skipped: {e}")
        for (path, rgb), labels in zip(readable.items(), runtime.segment_batch(list(readable.values()))):
            label_png, overlay_png = output_paths(path, out)
            try:
                if label_png in plan[path]:
                    save_labels(labels, label_png, runtime.num_classes)
                if overlay_png in plan[path]:
                    save_png(runtime.overlay(rgb, labels, alpha), overlay_png)
            except OSError as e:  # a full disk, say: name the file (Pillow's message does not)
                error = OSError(f"cannot write the outputs of {path} in {out}: {e.strerror or e}")
                error.errno = e.errno
                raise error from e
            segmented.append(path)
        bar.update(len(chunk))
    bar.close()
    if made and not segmented and not any(out.iterdir()):
        out.rmdir()  # made for outputs that none of the images gave
    return segmented, skipped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segvit_rt.segment", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", help="image files, or folders of them")
    p.add_argument("--engine", required=True, help="engine directory (python -m segvit_rt.build), or a file in it")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--mode", choices=MODES, default="slide",
                   help="slide (default; the official evaluation's windows) or whole (the image resized to the crop)")
    p.add_argument("--device", default="auto",
                   help="auto (default: the engine backend's choice), cpu, cuda or cuda:N")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight in [0, 1] (default 0.5)")
    p.add_argument("--batch", type=int, default=1,
                   help="images per engine call group (default 1; same-size images share calls; use the "
                        "engine's batch)")
    p.add_argument("--skip-existing", action="store_true",
                   help="write only the label maps and overlays not in --out yet (continue a stopped run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> list[Path]:
    args = build_parser().parse_args(argv)
    stopped = (f"the outputs in {args.out} are complete or absent; rerun the same command with --skip-existing "
               "to continue")
    with exit_on(UsageError, EngineError, OSError), on_interrupt(stopped):
        from .runtime import Runtime  # torch: seconds to import

        if not 0.0 <= args.alpha <= 1.0:
            raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
        if args.device == "auto":
            args.device = None
        if args.device is not None:
            import torch

            try:
                kind = torch.device(args.device).type
            except RuntimeError:
                kind = None
            if kind not in ("cpu", "cuda"):
                raise UsageError(f"--device {args.device!r}: use cpu, cuda or cuda:N")
        out = Path(args.out)
        check_outside_engine(out, "--out", args.engine)
        paths, earlier = expand_inputs(args.images, out, note=lambda text: print(f"note: {text}", file=sys.stderr))
        plan = planned_writes(paths, out, args.skip_existing)
        check_inputs(paths, out, plan, earlier)
        runtime = Runtime(args.engine, device=args.device, mode=args.mode)
        segmented, skipped = segment_files(runtime, paths, out, args.alpha, progress=not args.quiet,
                                           skip_existing=args.skip_existing, batch=args.batch, protected=earlier)
    done_before = len(paths) - len(plan)
    print(f"segmented {_count(len(segmented), 'image')} into {args.out}"
          + (f" ({_count(done_before, 'image')} already done there, left as they were)" if done_before else ""))
    if skipped:
        print(f"error: {len(skipped)} of {len(paths)} images could not be segmented:", file=sys.stderr)
        for reason in skipped.values():
            print(f"  {reason}", file=sys.stderr)
        raise SystemExit(1)
    return [output_paths(p, out)[0] for p in segmented]


if __name__ == "__main__":
    main()
