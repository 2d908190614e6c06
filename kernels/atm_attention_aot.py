"""The ATM forward compiled ahead of time, for launchers outside PyTorch (the TensorRT plugin).

A TensorRT AOT plugin (``segvit_rt.engines.tensorrt_plugin``) hands TensorRT a
PTX kernel that TensorRT launches itself with exactly: the plugin's input
pointers, then int32 scalars, then its output pointers. ``_atm_plugin_kernel``
is the fused forward of ``atm_attention.py`` in that calling convention, for
contiguous ``q`` [B, N, D] and ``k``/``v`` [B, L, D], writing ``out`` [B, N, D]
and the head-mean ``mask`` [B, N, L] (no ``prev_mask``: the graph adds it
outside; no sigmoid; no log-sum-exp, which only the backward needs). Head
count, head dim and scale are compile-time constants of the engine.

Three things the PTX must respect, as nothing in TensorRT's launcher adapts to
a Triton kernel:

* Triton (>= 3.3) appends hidden pointer parameters (global and profile scratch)
  to every kernel entry; :func:`compile_ptx` removes them from the PTX when the
  kernel does not use them, and refuses a kernel that does.
* Shared memory: TensorRT is not documented to opt a kernel into more than the
  default 48 KiB of dynamic shared memory, so only tactics within it are offered
  (:func:`fitting_tactics`).
* The CUDA driver JIT-compiles the embedded PTX, so its ISA version must not be
  newer than the driver's (:func:`ptx_version_for`); Triton would otherwise write
  its own ptxas's version.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import LOG2E, check_head_dim, check_num_heads, check_same, check_shape, check_tensor
from .atm_attention import _atm_fwd_kernel

PLUGIN_OP = "atm_attention plugin"  # names the plugin kernel in its errors

# (BLOCK_N, BLOCK_L, num_warps, num_stages): the plugin's tactics, timed by TensorRT at build time.
PLUGIN_CONFIGS = (
    (64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (16, 64, 4, 2),
    (64, 64, 8, 2), (128, 64, 8, 2), (64, 128, 8, 2), (128, 128, 8, 2),
)
SHARED_LIMIT = 48 * 1024  # bytes of dynamic shared memory a launch gets without opting in
DTYPES = ("fp16", "fp32")
RUNTIME_ARGS = ("q_ptr", "k_ptr", "v_ptr", "N", "L", "out_ptr", "mask_ptr")  # what TensorRT passes, in order
_atm_fwd = _atm_fwd_kernel.fn  # the @triton.jit function under the autotuner, called inline below


@triton.jit
def _atm_plugin_kernel(
    q_ptr, k_ptr, v_ptr, N, L, out_ptr, mask_ptr,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    QK_SCALE: tl.constexpr, MASK_SCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    D: tl.constexpr = NUM_HEADS * HEAD_DIM
    _atm_fwd(
        q_ptr, k_ptr, v_ptr, q_ptr, out_ptr, mask_ptr, out_ptr,  # prev_mask and lse are never touched
        N * D, D, L * D, D, L * D, D,
        0, 0, 0,
        N * D, D, N * L, L,
        N, L, L, QK_SCALE, MASK_SCALE,  # L as the autotuning bucket (unused in a kernel)
        NUM_HEADS=NUM_HEADS, HEAD_DIM=HEAD_DIM,
        NEED_MASK=True, HAS_PREV=False, SIGMOID=False, STORE_LSE=False,
        DOT_PRECISION=DOT_PRECISION, DOT_UPCAST=False, BLOCK_N=BLOCK_N, BLOCK_L=BLOCK_L,
    )


def check_plugin_shape(num_heads: int, head_dim: int, scale: float) -> None:
    """Raise ``ValueError`` unless the plugin kernel supports this attention."""
    check_num_heads(PLUGIN_OP, num_heads)
    check_head_dim(PLUGIN_OP, head_dim * num_heads, num_heads,
                   fix="build this model with --kernels reference")
    if not math.isfinite(scale):
        raise ValueError(f"{PLUGIN_OP}: scale must be finite, got {scale}")


def head_dim_and_scale(dim: int, num_heads: int, scale: float | None = None) -> tuple[int, float]:
    """``(head_dim, scale)`` of an attention of width ``dim`` (``scale`` defaults to head_dim ** -0.5),
    checked against what the plugin kernel supports."""
    if dim % num_heads:
        raise ValueError(f"{PLUGIN_OP}: dim {dim} is not divisible by num_heads={num_heads}")
    head_dim = dim // num_heads
    scale = head_dim ** -0.5 if scale is None else float(scale)
    check_plugin_shape(num_heads, head_dim, scale)
    return head_dim, scale


def plugin_constexprs(num_heads: int, head_dim: int, scale: float, dtype: str, tactic: int) -> dict:
    """The compile-time arguments of ``_atm_plugin_kernel`` (``tactic``: 1-based index of
    :data:`PLUGIN_CONFIGS`)."""
    check_plugin_shape(num_heads, head_dim, scale)
    if dtype not in DTYPES:
        raise ValueError(f"{PLUGIN_OP}: dtype must be one of {DTYPES}, got {dtype!r}")
    block_n, block_l, _, _ = config(tactic)
    return dict(
        NUM_HEADS=num_heads, HEAD_DIM=head_dim,
        QK_SCALE=scale * LOG2E, MASK_SCALE=scale / num_heads,
        DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", BLOCK_N=block_n, BLOCK_L=block_l,
    )


def config(tactic: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_L, num_warps, num_stages) of a tactic."""
    if not 1 <= tactic <= len(PLUGIN_CONFIGS):
        raise ValueError(f"{PLUGIN_OP}: tactic must be in 1..{len(PLUGIN_CONFIGS)}, got {tactic}")
    return PLUGIN_CONFIGS[tactic - 1]


def launch_grid(batch, n, length, num_heads: int, tactic: int, cdiv=triton.cdiv) -> tuple:
    """(grid_x, grid_y) of the fused forward (``atm_attention``'s module doc): per image, a row for
    each head and one for each block of keys; a column per block of queries. ``cdiv`` lets the
    TensorRT plugin build the same grid from symbolic shapes."""
    block_n, block_l, _, _ = config(tactic)
    return batch * (cdiv(length, block_l) + num_heads), cdiv(n, block_n)


def launch(q, k, v, num_heads: int, scale: float | None = None, tactic: int = 1):
    """Run ``_atm_plugin_kernel`` from PyTorch exactly as TensorRT launches it (same arguments,
    constants and grid): ``(out [B, N, D], mask [B, N, L])``. For checking the plugin's kernel
    on a GPU, or on CPU tensors under the Triton interpreter."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(PLUGIN_OP, name, t, ndim=3, dtypes=(torch.float16, torch.float32))
    check_same(PLUGIN_OP, "device", q=q, k=k, v=v)
    check_same(PLUGIN_OP, "dtype", q=q, k=k, v=v)
    b, n, d = q.shape
    length = k.shape[1]
    check_shape(PLUGIN_OP, "k", k, (b, length, d), "[B, L, D] (B and D from q)")
    check_shape(PLUGIN_OP, "v", v, (b, length, d), "[B, L, D] (same as k)")
    head_dim, scale = head_dim_and_scale(d, num_heads, scale)
    dtype = "fp16" if q.dtype == torch.float16 else "fp32"
    q, k, v = (t.contiguous() for t in (q, k, v))
    out, mask = torch.empty_like(q), q.new_empty((b, n, length))
    constexprs = plugin_constexprs(num_heads, head_dim, scale, dtype, tactic)
    _, _, num_warps, num_stages = config(tactic)
    _atm_plugin_kernel[launch_grid(b, n, length, num_heads, tactic)](
        q, k, v, n, length, out, mask, **constexprs, num_warps=num_warps, num_stages=num_stages
    )
    return out, mask


@dataclass(frozen=True)
class AotKernel:
    name: str
    ptx: str
    num_warps: int
    shared: int


@functools.cache
def compile_ptx(
    num_heads: int, head_dim: int, scale: float, dtype: str, tactic: int, target, ptx_version: int | None = None
) -> AotKernel:
    """PTX of ``_atm_plugin_kernel`` for ``target`` (a ``triton.backends.compiler.GPUTarget``),
    with only the parameters an external launcher passes (:data:`RUNTIME_ARGS`), written as PTX
    ISA ``ptx_version`` (e.g. 88 for 8.8; default: what Triton's ptxas supports)."""
    from triton.compiler import ASTSource

    constexprs = plugin_constexprs(num_heads, head_dim, scale, dtype, tactic)
    _, _, num_warps, num_stages = config(tactic)
    fn = _atm_plugin_kernel
    signature = {
        name: "constexpr" if name in constexprs else "i32" if name in ("N", "L") else f"*{dtype}"
        for name in fn.arg_names
    }
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    compiled = triton.compile(src, target=target, options=options)
    meta = compiled.metadata
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, scratch, 0):
            raise RuntimeError(f"{PLUGIN_OP}: the kernel needs {scratch}={getattr(meta, scratch)} bytes, "
                               "which an external launcher does not provide")
    return AotKernel(meta.name, strip_hidden_params(compiled.asm["ptx"], meta.name, len(RUNTIME_ARGS)),
                     meta.num_warps, meta.shared)


def fitting_tactics(num_heads: int, head_dim: int, scale: float, dtype: str, target, ptx_version=None) -> list[int]:
    """The tactics whose kernel needs at most :data:`SHARED_LIMIT` bytes of shared memory."""
    tactics = [
        t for t in range(1, len(PLUGIN_CONFIGS) + 1)
        if compile_ptx(num_heads, head_dim, scale, dtype, t, target, ptx_version).shared <= SHARED_LIMIT
    ]
    if not tactics:
        raise ValueError(f"{PLUGIN_OP}: no kernel config for {num_heads} heads of {head_dim} {dtype} fits in "
                         f"{SHARED_LIMIT // 1024} KiB of shared memory; build with --kernels reference")
    return tactics


def ptx_version_for(driver_cuda: str, arch: int) -> int:
    """Highest PTX ISA that both the CUDA driver of version ``driver_cuda`` ("13.0") and Triton's
    ptxas for ``arch`` (e.g. 90) accept."""
    from triton.backends.nvidia import compiler as nvidia

    return min(nvidia.ptx_get_version(driver_cuda), nvidia.ptx_get_version(nvidia.get_ptxas(arch).version))


def strip_hidden_params(ptx: str, name: str, visible: int) -> str:
    """Drop the entry parameters of ``name`` after the first ``visible`` ones, which must be unused."""
    entry = _entry(ptx, name)
    params = _split_params(entry)
    if len(params) < visible:
        raise ValueError(f".entry {name} has {len(params)} parameters, expected at least {visible}")
    body = ptx[entry.end():]
    for p in params[visible:]:
        param_name = p.split()[-1]
        if re.search(rf"\b{re.escape(param_name)}\b", body):
            raise ValueError(f"the kernel reads its hidden parameter {param_name}: it cannot drop it")
    kept = ",\n\t".join(params[:visible])
    return ptx[:entry.start(1)] + f"\n\t{kept}\n" + ptx[entry.end(1):]


def entry_params(ptx: str, name: str) -> list[str]:
    """The parameter declarations of ``.entry name``."""
    return _split_params(_entry(ptx, name))


def _split_params(entry: re.Match) -> list[str]:
    return [p.strip() for p in entry.group(1).split(",") if p.strip()]


def _entry(ptx: str, name: str) -> re.Match:
    entry = re.search(rf"\.entry\s+{re.escape(name)}\s*\((.*?)\)", ptx, re.S)
    if entry is None:
        raise ValueError(f"no .entry {name} in the PTX")
    return entry
