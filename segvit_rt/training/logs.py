"""The run's JSONL log and the loss / mIoU curves drawn from it.

The log is appended one line per record (rewriting it whole at every record
would cost quadratic time); a kill can at worst cut the last line short, and
:meth:`JsonlLog.truncate`, run on resume, drops such a line along with every
record after the checkpoint, so the resumed log reads as if never interrupted.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..io_utils import atomic_path, json_safe


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON (NaN -> null), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(obj), indent=2) + "\n", encoding="utf-8")
    return path


class JsonlLog:
    """Records ``{"kind": "train"|"eval", "step": ..., ...}``, one JSON object a line."""

    def __init__(self, path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
            f.flush()

    def records(self) -> list[dict]:
        """Every complete record (a half-written last line is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate(self, step: int) -> None:
        """Keep only the records up to ``step`` (rewritten atomically)."""
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path) -> Path:
    """Write ``fig`` as a PNG atomically, and close it."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)
    return path


def plot_curves(records: list[dict], path) -> Path:
    """PNG of the training loss (left) and validation mIoU (right) against the step, written atomically."""
    plt = _pyplot()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval" and r.get("mIoU") is not None]
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss (final + aux outputs)")
    ax_loss.set_yscale("log")
    ax_miou.plot([r["step"] for r in evals], [r["mIoU"] for r in evals], "o-")
    ax_miou.set(xlabel="step", ylabel="mIoU", title="validation mIoU", ylim=(0, 1))
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
    return _save_png(fig, path)


def plot_class_iou(metrics: dict, class_names, path) -> Path:
    """PNG of each class's IoU as a horizontal bar, best first, with the mIoU marked (atomically);
    classes absent from the split (IoU undefined) are left out."""
    plt = _pyplot()
    rows = sorted(((iou, name) for name, iou in zip(class_names, metrics["IoU"]) if iou is not None and iou == iou),
                  reverse=True)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 1.2 + 0.18 * len(rows))))
    ax.barh(range(len(rows)), [iou for iou, _ in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), [name for _, name in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(metrics["mIoU"], color="tab:red", lw=1, label=f"mIoU {metrics['mIoU']:.3f}")
    ax.set(xlim=(0, 1), xlabel="IoU", title=f"per-class IoU ({metrics['images']} images, {metrics['mode']})")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save_png(fig, path)
