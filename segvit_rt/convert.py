"""Convert an official SegViT checkpoint into segvit_rt weights, ready for the builder.

``python -m segvit_rt.convert CKPT --preset vit_l16_ade20k_640 --variant full --out W.safetensors``

CKPT is a checkpoint of the official SegViT code (mmseg layout: ``backbone.*`` in
mmseg or timm ViT names, ``decode_head.*``; ``.pth`` files are read with
``weights_only=True``). Every parameter of the model must come from it, at the
preset's size: a missing one, or a position embedding for another crop size, is an
error naming it, since such a model would segment without saying that it is wrong.
Keys the model has no use for (an auxiliary head, a cls token) are listed and left
out. The weights are written atomically with the preset's class names; then
``python -m segvit_rt.build --variant V --weights W.safetensors``.

CKPT may also be a ``checkpoint.pt`` of our trainer (a run stopped before its end,
say): its preset, variant, crop and class names come from the checkpoint, so
``--preset``/``--variant`` may be left out (given, they must agree).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import check_output, exit_on
from .config import PRESETS, VARIANTS
from .models import SegViT
from .train import run_config
from .training.checkpoint import CheckpointError, load_checkpoint, mismatch_summary
from .weights import (
    WEIGHTS_DTYPES,
    ShapeMismatchError,
    WeightsError,
    import_official_segvit,
    read_checkpoint,
    read_metadata,
    save_weights,
)


def training_checkpoint(path) -> dict | None:
    """The state of ``path`` if it is a checkpoint of our trainer, else None (mapped, not read, to
    tell: an official checkpoint is not read twice)."""
    try:
        return load_checkpoint(path, mmap=True)
    except CheckpointError:
        return None


def check_not_our_weights(path) -> None:
    """A segvit_rt weights file needs no converting: say so, rather than ask what model it holds."""
    try:
        meta = read_metadata(path)
    except WeightsError:
        return
    raise WeightsError(f"{path} is already segvit_rt weights ({meta.get('preset')} {meta['variant']}): build from it "
                       f"as it is, python -m segvit_rt.build --weights {path}")


def convert_training_checkpoint(state: dict, checkpoint, out, preset: str | None = None,
                                variant: str | None = None) -> tuple[Path, str]:
    """Weights of a training run's checkpoint, as the run would write them at its end (in its
    ``--weights-dtype``, without the final evaluation's figures)."""
    args, names = state["args"], state["extra"].get("class_names")
    for flag, given, saved in (("--preset", preset, args["preset"]), ("--variant", variant, args["variant"])):
        if given is not None and given != saved:
            raise WeightsError(f"{checkpoint} is a training checkpoint of a {args['preset']} {args['variant']} run; "
                               f"{flag} {given} was asked for")
    if not names:
        raise WeightsError(f"{checkpoint} records no class names (written before checkpoints kept them): finish "
                           "the run with train --resume and build from its weights.safetensors")
    try:
        model = SegViT(run_config(args, names), args["variant"])
    except ValueError as e:
        raise WeightsError(f"{checkpoint}: its run's arguments do not make a model this version builds: {e}") from e
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # a checkpoint edited, or written by another version
        raise WeightsError(f"{checkpoint}: its model state does not fit the model its arguments describe "
                           f"({mismatch_summary(e)})") from e
    extra = {"converted_from": Path(checkpoint).name, "trained_iters": state["step"], "dataset": str(args["data"]),
             "train_args": args}
    dtype = WEIGHTS_DTYPES[args.get("weights_dtype", "fp32")]
    return save_weights(out, model, extra=extra, dtype=dtype), f"training checkpoint at step {state['step']}"


def convert(checkpoint, preset: str, variant: str, out) -> tuple[Path, str]:
    """Write ``out`` from an official ``checkpoint``; returns the path and the import report."""
    model = SegViT(PRESETS[preset], variant)
    state = read_checkpoint(checkpoint)
    question = f"is {Path(checkpoint).name} a {variant} SegViT checkpoint of preset {preset}?"
    try:
        report = import_official_segvit(model, state)
    except ShapeMismatchError as e:
        raise WeightsError(f"{checkpoint}: {e.detail}; {question}") from e
    if report.resized:  # trained at another crop size: not the model the preset describes
        raise WeightsError(f"{checkpoint}: {', '.join(report.resized)} is for another input size than the "
                           f"preset's crop ({PRESETS[preset].crop_size}); {question}")
    if report.missing:
        raise WeightsError(
            f"{checkpoint} has no values for {len(report.missing)} parameters of the {preset} {variant} model "
            f"(e.g. {', '.join(report.missing[:4])}); {question}"
        )
    path = save_weights(out, model, extra={"converted_from": Path(checkpoint).name, "import_report": str(report)})
    return path, str(report)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segvit_rt.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="official SegViT checkpoint (.pth, or .safetensors in the same layout), or a "
                                      "checkpoint.pt of segvit_rt.train")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="the model the checkpoint is of (from the checkpoint itself for a segvit_rt training run)")
    p.add_argument("--variant", choices=VARIANTS, help="full or shrunk (likewise)")
    p.add_argument("--out", required=True, help="segvit_rt weights file to write (.safetensors)")
    return p


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    with exit_on(WeightsError, OSError):
        check_output(args.out, "--out", folder=False)
        replacing = Path(args.out).is_file()
        if Path(args.out).suffix != ".safetensors":
            raise WeightsError(f"--out {args.out}: the weights are written as safetensors; name the file *.safetensors")
        if Path(args.out).resolve() == Path(args.checkpoint).resolve():
            raise WeightsError(f"--out {args.out} is the checkpoint being converted: it would be overwritten")
        if not Path(args.checkpoint).exists():
            raise WeightsError(f"checkpoint not found: {args.checkpoint}")
        state = training_checkpoint(args.checkpoint) if Path(args.checkpoint).is_file() else None
        if state is not None:
            path, report = convert_training_checkpoint(state, args.checkpoint, args.out, args.preset, args.variant)
            variant = state["args"]["variant"]
        else:
            missing = [flag for flag, value in (("--preset", args.preset), ("--variant", args.variant)) if not value]
            if missing:
                check_not_our_weights(args.checkpoint)
                read_checkpoint(args.checkpoint)  # a corrupt or truncated file says so first
                raise WeightsError(f"{' and '.join(missing)} needed: {args.checkpoint} is not a segvit_rt training "
                                   "checkpoint, so the model it holds must be named")
            path, report = convert(args.checkpoint, args.preset, args.variant, args.out)
            variant = args.variant
    print(f"{args.checkpoint}: {report}")
    if replacing:
        print(f"note: {path} existed and was replaced")
    print(f"wrote {path} ({variant}); build an engine with: python -m segvit_rt.build --weights {path}")
    return path


if __name__ == "__main__":
    main()
