"""Data-parallel helpers: process-group set-up from ``torchrun``'s environment, reductions, and a
replica check.

A plain ``python -m segvit_rt.train`` is a world of one; every helper then
does nothing, so the trainer has a single code path.

Our own collectives run on a process group of their own, apart from DDP's (the default one).
They hand the backend tensors made in Python, and a gloo worker thread that frees the last
reference to one once the interpreter has begun to finalise aborts the process ("terminate
called without an active exception"). DDP's reducer keeps the default group, and its threads,
alive to the end, whatever :func:`cleanup` does; our group :func:`cleanup` really tears down,
worker threads joined, while Python is still alive.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

_collectives: dist.ProcessGroup | None = None  # the group every helper below runs on


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT``): NCCL on CUDA, gloo on CPU. Without those variables: one process."""
    global _collectives
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        _collectives = dist.new_group(backend=dist.get_backend())
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup() -> None:
    """Destroy the process groups: the collectives' group first, its last reference dropped so
    that its worker threads are joined now, even while a DDP wrapper (or a traceback holding
    one) pins the default group."""
    global _collectives
    if dist.is_initialized():
        if _collectives is not None:
            dist.destroy_process_group(_collectives)
            _collectives = None
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over the replicas (a new tensor; the input is unchanged). Identity in a world of one."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, group=_collectives)
    return out / dist.get_world_size()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over the replicas (e.g. confusion matrices). Identity in a world of one."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, group=_collectives)
    return tensor


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def replica_digests(model: torch.nn.Module) -> list[str]:
    """Every replica's :func:`parameter_digest`, by rank: all equal when the replicas are in sync."""
    return gather_objects(parameter_digest(model))


def gather_objects(obj) -> list:
    """Every replica's ``obj`` (picklable), by rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=_collectives)
    return gathered
