"""Fused Triton kernels, each registered as a PyTorch custom op (``torch.ops.segvit_rt.*``).

``import segvit_rt`` does not import this package (the ops dispatcher imports it
on first use of ``kernels="triton"``), so ``TRITON_INTERPRET=1`` can still be
set before triton loads.
"""
import contextlib
import sys

from triton.runtime import Autotuner

from .atm_attention import atm_attention
from .qd_attention import qd_attention
from .segment_postprocess import segment_postprocess

__all__ = ["atm_attention", "qd_attention", "segment_postprocess", "tuned_configs", "tuned_configs_only"]


def _autotuned_kernels() -> list[Autotuner]:
    modules = (sys.modules[f"{__name__}.{name}"] for name in __all__[:3])
    return [k for module in modules for k in vars(module).values() if isinstance(k, Autotuner)]


@contextlib.contextmanager
def tuned_configs_only():
    """Inside the block, each autotuned kernel offers only the configs it has chosen so far in this
    process (kernels that chose none keep their whole list).

    AOTInductor cannot tune at run time: while compiling, it benchmarks every config of a kernel at
    every launch site, without the kernels' pruning. Run the model once first, so each kernel tunes
    once per key with its pruning, then export and compile inside this block."""
    saved = [(kernel, kernel.configs) for kernel in _autotuned_kernels()]
    try:
        for kernel, configs in saved:
            chosen = list({id(c): c for c in kernel.cache.values()}.values())  # each config once, in order
            if chosen:
                kernel.configs = chosen
        yield
    finally:
        for kernel, configs in saved:
            kernel.configs = configs


def tuned_configs() -> list[str]:
    """One line per kernel and tuning key that this process has autotuned: the config that won
    (``gpu_check.sh``'s log prints them after the benchmarks, for tuning the config lists)."""
    return [f"{kernel.fn.__name__} {key}: {config}"
            for kernel in _autotuned_kernels() for key, config in kernel.cache.items()]
