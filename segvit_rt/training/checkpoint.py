"""Full training state, written atomically and read back with ``torch.load(weights_only=True)``.

A checkpoint holds the model, optimizer, LR scheduler and gradient-scaler
states, the step, the run's arguments and every replica's RNG states (torch CPU
and CUDA, numpy, Python; dropout draws differ between replicas). RNG states that are not tensors are stored as tensors and lists
so that no pickled object has to be trusted on load. Where the data stream
stands follows from the step (see ``ResumableSampler``), so it needs no state.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..io_utils import atomic_path

FORMAT = "segvit_rt.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run."""


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [version, list(mt), gauss_next],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, mt, gauss_next = state["python"]
    random.setstate((version, tuple(mt), gauss_next))


def save_checkpoint(path, *, model, optimizer, scheduler, step: int, args: dict, rng: list[dict],
                    scaler=None, extra: dict | None = None) -> Path:
    """Write the full training state after ``step`` optimizer steps (atomically: a kill mid-write
    leaves the previous checkpoint in place). ``rng`` holds each replica's :func:`rng_state`, by rank;
    ``extra`` any other plain values (numbers, strings, lists, dicts)."""
    path = Path(path)
    state = {
        "format": FORMAT,
        "step": step,
        "args": args,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "extra": extra or {},
    }
    with atomic_path(path, sweep=True) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) this way
            if "PytorchStreamWriter" not in str(e) and "unexpected pos" not in str(e):
                raise
            raise OSError(f"{path} could not be written (is the disk full?): {str(e).splitlines()[0]}") from e
    return path


def load_checkpoint(path, map_location="cpu", mmap: bool = False) -> dict:
    """The state written by :func:`save_checkpoint` (tensors on ``map_location``; with ``mmap``,
    mapped from the file rather than read, for a look at its plain values)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        if f.read(9)[8:9] == b"{":  # a safetensors header: 8 bytes of length, then JSON
            raise CheckpointError(f"{path} is a safetensors file (weights), not a training checkpoint: start a "
                                  "new run from it with --init, or build and evaluate it as it is")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt, truncated or unsafe): {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a segvit_rt training checkpoint (format {found!r}, "
                              f"expected {FORMAT!r})")
    return state


def mismatch_summary(error: RuntimeError) -> str:
    """The start of ``load_state_dict``'s error (its first lines, which name the keys), for a message."""
    return " ".join(str(error).strip().splitlines()[:3])[:300]


def restore(state: dict, *, model, optimizer, scheduler, rank: int = 0, world_size: int = 1, scaler=None) -> int:
    """Load a checkpoint's states into the training objects and this replica's RNGs; returns the
    step to continue from."""
    if len(state["rng"]) != world_size:
        raise CheckpointError(
            f"the checkpoint was written by {len(state['rng'])} process(es); resume it with as many "
            f"(got {world_size}) to continue exactly"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # another class count, crop or variant than the run it continues
        raise CheckpointError(f"the checkpoint's model does not fit this run's ({mismatch_summary(e)}): "
                              "resume with the run's data and arguments") from e
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"][rank])
    return int(state["step"])
