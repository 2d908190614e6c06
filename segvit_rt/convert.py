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
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import check_output, exit_on
from .config import PRESETS, VARIANTS
from .models import SegViT
from .weights import WeightsError, import_official_segvit, read_checkpoint, save_weights


def convert(checkpoint, preset: str, variant: str, out) -> tuple[Path, str]:
    """Write ``out`` from ``checkpoint``; returns the path and the import report."""
    model = SegViT(PRESETS[preset], variant)
    state = read_checkpoint(checkpoint)
    question = f"is {Path(checkpoint).name} a {variant} SegViT checkpoint of preset {preset}?"
    try:
        report = import_official_segvit(model, state)
    except WeightsError as e:  # a tensor of another shape
        raise WeightsError(f"{checkpoint}: {e}; {question}") from e
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
    p.add_argument("checkpoint", help="official SegViT checkpoint (.pth, or .safetensors in the same layout)")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="the model the checkpoint is of")
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--out", required=True, help="segvit_rt weights file to write (.safetensors)")
    return p


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    with exit_on(WeightsError):
        check_output(args.out, "--out", folder=False)
        if Path(args.out).suffix != ".safetensors":
            raise WeightsError(f"--out {args.out}: the weights are written as safetensors; name the file *.safetensors")
        if Path(args.out).resolve() == Path(args.checkpoint).resolve():
            raise WeightsError(f"--out {args.out} is the checkpoint being converted: it would be overwritten")
        path, report = convert(args.checkpoint, args.preset, args.variant, args.out)
    print(f"{args.checkpoint}: {report}")
    print(f"wrote {path}; build an engine with: python -m segvit_rt.build --variant {args.variant} --weights {path}")
    return path


if __name__ == "__main__":
    main()
