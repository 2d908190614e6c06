"""``python -m segvit_rt``: the commands, each a module of its own."""
import sys

from . import __version__

COMMANDS = [
    ("demo", "the main job on the bundled demo weights: engine, segmented images, mIoU, images/s"),
    ("build", "compile weights into an engine (onnx, aoti, tensorrt), checked against PyTorch"),
    ("segment", "label PNGs and overlays of images through an engine"),
    ("train", "train on a data set (ADE20K, COCO-Stuff, PASCAL-Context or images/ + masks/)"),
    ("evaluate", "mIoU of weights or of an engine on a data set split"),
    ("convert", "an official SegViT checkpoint (or a training checkpoint.pt) to our weights"),
    ("data.synth", "a synthetic data set in the ADE20K layout"),
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in ("-h", "--help"):  # python -m segvit_rt build ...
        known = argv[0] in dict(COMMANDS)
        print(f"error: {'run it as' if known else f'no command {argv[0]!r}; the commands run as'} python -m "
              f"segvit_rt.{argv[0] if known else 'COMMAND'}", file=sys.stderr)
        return 2
    print(f"segvit_rt {__version__}: run a command as python -m segvit_rt.COMMAND (--help for its options)")
    width = max(len(name) for name, _ in COMMANDS)
    for name, what in COMMANDS:
        print(f"  {name:<{width}}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
