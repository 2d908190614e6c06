"""Shared plumbing for the Triton kernels: where they run, op registration, input checks.

Each kernel module registers its op with :func:`define_op` and launches through
:func:`launcher`; its Python entry point checks inputs with the ``check_*``
helpers (errors name the op and the offending argument) and picks the Triton
path or the reference with :func:`runs_triton`. The attention kernels multiply
tiles with :func:`dot` (constexprs from :func:`dot_options`), which also works
around the interpreter's bf16 ``tl.dot``; the post-process kernel's operands are
fp32 and it calls ``tl.dot`` itself.

Where the Triton path runs:

* CUDA tensors: always.
* CPU tensors: only while the Triton interpreter is active (``TRITON_INTERPRET=1``
  before triton is imported; the repository ``conftest.py`` sets it without CUDA),
  so CI exercises the real kernels. Otherwise CPU tensors take the reference.
* Fake/meta tensors (``torch.compile``, ``torch.export`` tracing) on CPU take the
  reference, which traces as plain aten ops; on CUDA they trace the kernel
  through ``torch.library.wrap_triton``.
"""
from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
from collections.abc import Callable, Iterable

import numpy as np
import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from segvit_rt.ops.reference import check_num_heads

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# Triton makes each @triton.jit kernel interpreted or compiled when it is defined, so the kernel
# modules (imported with this one) follow the environment as it was then; a later change of
# TRITON_INTERPRET must not make the launch code disagree with the kernels.
_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")  # as Triton reads it


def interpreter_active() -> bool:
    """True when our kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1`` when
    ``segvit_rt.kernels`` was first imported)."""
    return _INTERPRETER


def _fix_interpreter_index() -> None:
    """Triton 3.6's interpreter turns a scalar into a Python int with ``int()`` on its 1-element
    array, which NumPy >= 2.4 refuses ("only 0-dimensional arrays can be converted to Python
    scalars"), so every ``range(0, L, BLOCK)`` over a runtime ``L`` fails there. Triton 3.7 squeezes
    the array first; this does the same on older triton (torch 2.11 pins triton 3.6)."""
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "squeezes_index", False):
        return

    def patch_tensor_squeezing_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_tensor_squeezing_index.squeezes_index = True
    interpreter._patch_lang_tensor = patch_tensor_squeezing_index


if interpreter_active() and tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 7):
    _fix_interpreter_index()


def is_fake(t: torch.Tensor) -> bool:
    """True for tensors without data: FakeTensors (also under functionalization) and meta tensors."""
    from torch._subclasses.fake_tensor import is_fake as _is_fake

    return t.device.type == "meta" or _is_fake(t)


def runs_triton(t: torch.Tensor) -> bool:
    """Whether an op whose inputs live where ``t`` does should take its Triton path (see module doc)."""
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and interpreter_active() and not is_fake(t)


def launcher(kernel):
    """The launchable form of a ``@triton.jit``/``@triton.autotune`` kernel inside an op.

    ``torch.library.wrap_triton`` makes the launch traceable (compile/export see a
    ``triton_kernel_wrapper`` node); interpreted kernels are launched directly, as
    they only ever run on real CPU tensors.
    """
    return kernel if interpreter_active() else torch.library.wrap_triton(kernel)


def launches_on_input_device(op: str):
    """Decorate a ``launch_*`` function whose first argument is a tensor of the launch.

    Triton launches on the *current* CUDA device, whatever the tensors' device: a launch for
    tensors on ``cuda:1`` is made with that device current. A shape no config of the kernel fits
    in this GPU's shared memory (only far outside the models' shapes: fp32 with a model dim of
    2048, say) becomes a ``ValueError`` naming ``op`` instead of Triton's launch error."""

    def decorate(launch: Callable) -> Callable:
        @functools.wraps(launch)
        def run(first: torch.Tensor, *args, **kwargs):
            on_device = (torch.cuda.device(first.device)
                         if first.device.type == "cuda" and torch.cuda.is_available() else contextlib.nullcontext())
            try:
                with on_device:
                    return launch(first, *args, **kwargs)
            except OutOfResources as e:
                raise ValueError(f"{op}: no kernel config fits this GPU for inputs of shape {tuple(first.shape)} "
                                 f"and dtype {first.dtype} ({e}); use fp16/bf16 or the reference ops") from e

        return run

    return decorate


def autotune_configs(blocks: Iterable[str], settings: Iterable[tuple], interpreter: tuple) -> list:
    """``triton.Config``s from ``(*block_sizes, num_warps, num_stages)`` tuples, block sizes named by
    ``blocks``. Under the interpreter, autotuning is slow and pointless: only the ``interpreter``
    block sizes, with one warp and one stage."""
    blocks = tuple(blocks)
    if interpreter_active():
        return [triton.Config(dict(zip(blocks, interpreter)), num_warps=1, num_stages=1)]
    return [triton.Config(dict(zip(blocks, s[:-2])), num_warps=s[-2], num_stages=s[-1]) for s in settings]


def tuning_bucket(size: int) -> int:
    """What an autotuning key holds for a size that changes from call to call (tokens of images of
    many sizes): the power of two at or above it, so sizes of one range share a tuned config."""
    return triton.next_power_of_2(size)


def dot_options(dtype: torch.dtype) -> dict:
    """Constexpr arguments for :func:`dot` given the kernel's input dtype.

    fp32 inputs keep full fp32 products ("ieee"; PyTorch's matmul default is no
    TF32). The Triton interpreter multiplies bf16 operands as raw uint16 bit
    patterns (triton 3.9 ``create_dot``), so there bf16 operands are upcast first.
    """
    return {
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
        "DOT_UPCAST": interpreter_active() and dtype == torch.bfloat16,
    }


@triton.jit
def dot(a, b, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """``tl.dot`` with fp32 accumulation; pass :func:`dot_options` as the constexprs."""
    if DOT_UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


def define_op(name: str, impl: Callable, *, fake: Callable, mutates_args: Iterable[str] = ()):
    """Register ``impl`` as the PyTorch custom op ``name`` ("segvit_rt::op_name").

    ``torch.library.triton_op``: Inductor sees and can fuse the kernel;
    ``torch.export`` keeps the op as one node. The schema is inferred from ``impl``'s
    type annotations, so they must be real types (no string annotations).
    ``fake`` computes output metadata only (``torch.export``, meta tensors,
    shape propagation). With ``triton_op``, ``torch.compile`` also traces
    ``impl`` itself on fake tensors, so ``impl`` may only use torch ops and
    kernels launched through :func:`launcher`. Returns the op object: call it,
    and attach autograd with ``op.register_autograd(backward, setup_context=...)``.
    """
    op = torch.library.triton_op(name, impl, mutates_args=tuple(mutates_args))
    op.register_fake(fake)
    return op


def check_tensor(
    op: str,
    name: str,
    t,
    *,
    ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    last_dim_contiguous: bool = False,
) -> torch.Tensor:
    """Raise a ``TypeError``/``ValueError`` naming ``op`` and ``name`` unless ``t`` fits; return it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise TypeError(f"{op}: {name} must have dtype in ({names}), got {t.dtype}")
    if last_dim_contiguous and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{op}: {name} needs a contiguous last dim (stride 1), got strides {tuple(t.stride())}; "
            "call .contiguous() first"
        )
    return t


MAX_GRID_Y = 65535  # CUDA's limit on a launch grid's second axis


LOG2E = 1.4426950408889634  # the kernels' exp2 takes logits scaled by log2(e); written out inside @triton.jit


def _is_int(s) -> bool:
    if isinstance(s, np.ndarray):
        return s.ndim == 0 and s.dtype.kind in "iu"
    if isinstance(s, torch.Tensor):
        return s.numel() == 1 and not (s.is_floating_point() or s.is_complex() or s.dtype == torch.bool)
    return isinstance(s, (numbers.Integral, torch.SymInt)) and not isinstance(s, bool)


def check_int_pair(op: str, name: str, pair, meaning: str) -> tuple[int, int]:
    """``pair`` as two ints: Python, NumPy or one-element tensor integers (SymInts while tracing); a
    float such as 7.9 is refused rather than truncated. ``meaning`` names the two, e.g. "(H, W)"."""
    try:
        first, second = pair
    except (TypeError, ValueError):
        first = second = None
    if not (_is_int(first) and _is_int(second)):
        raise ValueError(f"{op}: {name} must be two ints {meaning}, got {pair!r}")
    return int(first), int(second)


def check_head_dim(op: str, dim: int, num_heads: int, fix: str = "use kernels='reference' for this model") -> int:
    """The head dim of ``dim`` over ``num_heads``: a power of two in [16, 128], as the kernels need
    (``fix``: what the user can do instead)."""
    head_dim = dim // num_heads
    if head_dim < 16 or head_dim > 128 or head_dim & (head_dim - 1):
        raise ValueError(
            f"{op}: the Triton kernel needs head_dim a power of two in [16, 128], got {head_dim} "
            f"(dim {dim} / {num_heads} heads); {fix}"
        )
    return head_dim


def attention_scale(op: str, x, num_heads: int, scale: float | None) -> float:
    """``scale``, by default head_dim ** -0.5 of the [B, *, D] input ``x``; finite. (A malformed ``x``
    gets 1.0 here: the op's input check then names the problem.)"""
    check_num_heads(op, num_heads)
    if scale is None:
        well_formed = isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] >= num_heads \
            and x.shape[-1] % num_heads == 0
        # Finite by construction; left as it is, since under torch.compile(dynamic=True) the width
        # is symbolic and float() or isfinite() of it would break the graph.
        return (x.shape[-1] // num_heads) ** -0.5 if well_formed else 1.0
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be finite, got {scale}")
    return scale


def check_int32_offsets(op: str, **tensors) -> None:
    """The kernels reach an image's elements with int32 offsets from its start (the image's own
    offset is int64): refuse a tensor whose elements of one image lie further apart, as views with
    large strides can (e.g. a sequence-first projection over a big batch). ``None`` (an optional
    input not given) and symbolic sizes (tracing) are not checked."""
    for name, t in tensors.items():
        if t is None:
            continue
        sizes, strides = t.shape[1:], t.stride()[1:]
        if not all(isinstance(x, int) for x in (*sizes, *strides)):
            continue
        span = sum((size - 1) * abs(stride) for size, stride in zip(sizes, strides) if size)
        if span > 2**31 - 1:
            raise ValueError(f"{op}: {name} (shape {tuple(t.shape)}, strides {tuple(t.stride())}) spreads one image "
                             f"over {span + 1} elements, more than the kernel's int32 offsets reach; "
                             f"pass {name}.contiguous()")


def check_grid_y(op: str, rows: int, what: str) -> None:
    """Kernels put one program per image (or per (image, head) pair) on the grid's second axis."""
    if rows > MAX_GRID_Y:
        raise ValueError(f"{op}: the Triton kernel runs at most {MAX_GRID_Y} {what} per call, got {rows}; "
                         "split the batch")


def check_same(op: str, attr: str, **tensors: torch.Tensor) -> None:
    """Raise unless all ``tensors`` agree on ``attr`` ("device" or "dtype")."""
    values = {name: getattr(t, attr) for name, t in tensors.items()}
    if len(set(values.values())) > 1:
        listing = ", ".join(f"{name}={value}" for name, value in values.items())
        error = ValueError if attr == "device" else TypeError
        raise error(f"{op}: inputs must share one {attr}, got {listing}")


def check_shape(op: str, name: str, t: torch.Tensor, expected: tuple[int, ...], meaning: str = "") -> None:
    """Raise unless ``t.shape == expected``; ``meaning`` spells out the dims, e.g. "[B, N, L]"."""
    if tuple(t.shape) != tuple(expected):
        hint = f" {meaning}" if meaning else ""
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}{hint}, got {tuple(t.shape)}")
