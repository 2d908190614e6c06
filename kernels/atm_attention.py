"""Fused ATM cross-attention: softmax attention and the head-mean logit mask in one pass.

Class queries ``q`` [B, N, D] attend to feature tokens ``k``/``v`` [B, L, D]
with ``H`` heads. The op returns ``out`` [B, N, D] = per-head
softmax(q_h k_hᵀ·scale) v_h and ``mask`` [B, N, L] = mean over heads of
q_h k_hᵀ·scale (+ ``prev_mask``, optionally sigmoid-ed). Semantics are those of
:func:`segvit_rt.ops.reference.atm_attention`.

Forward design: one launch, two kinds of program. The first ``B·H`` rows of the grid run
flash attention of one (image, head) over every key, in 2D tiles ([BLOCK_N, head_dim] queries
against [BLOCK_L, head_dim] keys; fp32 running max/sum/accumulator), and write that head's slice
of ``out`` and its log-sum-exp. The ``B·cdiv(L, BLOCK_L)`` rows after them each write one mask
tile: the per-head logits of its keys summed over the heads in registers, then the scale,
``prev_mask`` and the sigmoid, stored once. Neither writes logits to device memory, and every
element has one writer (no atomics; deterministic).

The q·k products are formed twice (per head for the softmax, summed for the mask): 1.5x the
FLOPs of one sweep, paid for with a grid that fills a GPU (ViT-L's 8 images x 16 heads x 150
classes: 384 attention and 600 mask programs at 64 x 64 tiles) and tiles that Hopper's wgmma
takes without spilling. The earlier design, one sweep per (image, block of queries) holding all
heads in [H, BLOCK_N, ·] tiles, had 80 programs at that shape, compiled to 255 registers with
spills and no wgmma for sm_90, and measured 0.29x SDPA + a matmul on an H200 (RESULTS.md);
``tests/kernels/test_kernels_compile.py`` checks the sm_90 machine code of this one.

Backward: flash-attention style recompute from the saved log-sum-exp, one
program per (batch, head, block): a dK/dV kernel that loops over query blocks
and a dQ kernel that loops over key blocks, so every gradient element is
written by exactly one program (no atomics; deterministic). The mask gradient
enters each head's logit gradient as ``dMask / H``; ``prev_mask`` gets ``dMask``.
A sigmoid mask is differentiable too (``dMask · s · (1 - s)`` from the saved
output). Attention dropout is not implemented: ``segvit_rt.ops.atm_attention``
sends ``dropout_p > 0`` to the reference. Recomputing the probabilities from the
log-sum-exp costs accuracy at very large logits, as in every flash-attention
backward: the error is about one fp32 ulp of |lse| (dV in fp32 about 10x torch's
at scaled logits near 200, 20x near 1000; within torch's at the models' ~±60).

Launch configs are autotuned on a GPU per (N, head_dim, head count, dtype, mask or not) and
per power-of-two range of L (``l_bucket``), so whole-image inference, whose L
changes with every image size, tunes once per range instead of once per size;
a single small config runs under the Triton interpreter. Results are deterministic for
a given config (and so within a process once tuned).
"""

import torch
import triton
import triton.language as tl

from segvit_rt.ops import reference

from ._common import (
    FLOAT_DTYPES,
    LOG2E,
    MAX_GRID_Y,
    attention_scale,
    autotune_configs,
    check_grid_y,
    check_head_dim,
    check_int32_offsets,
    check_num_heads,
    check_same,
    check_shape,
    check_tensor,
    define_op,
    dot,
    dot_options,
    launcher,
    launches_on_input_device,
    runs_triton,
    tuning_bucket,
)

OP = "atm_attention"


def _configs(settings):
    """Autotuning space from (BLOCK_N, BLOCK_L, num_warps, num_stages) tuples; (16, 32) under the interpreter."""
    return autotune_configs(("BLOCK_N", "BLOCK_L"), settings, interpreter=(16, 32))


# (BLOCK_N, BLOCK_L, num_warps, num_stages). Tiles of 64 queries or more run on Hopper's wgmma; 16 and
# 32 waste less of a small N. The 8192-element tiles take 8 warps: with 4 they spill (compile_sass.py).
_FWD_CONFIGS = _configs([
    (16, 64, 4, 2), (16, 64, 8, 2), (32, 64, 4, 2), (32, 64, 8, 2), (64, 32, 4, 2), (64, 32, 8, 2),
    (64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (128, 64, 8, 2),
])
_BWD_CONFIGS = _configs([(n, 64, w, 2) for n in (32, 64) for w in (4, 8)])  # larger tiles spill (compile_sass.py)
_KEY = ["N", "l_bucket", "HEAD_DIM"]  # triton's autotuner adds the tensor dtypes to the key
# The forward's grid has at most cdiv(N, MIN_BLOCK_N) blocks of queries on its second axis.
MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _FWD_CONFIGS)


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY + ["NUM_HEADS", "NEED_MASK"])
@triton.jit
def _atm_fwd_kernel(
    q_ptr, k_ptr, v_ptr, prev_ptr, out_ptr, mask_ptr, lse_ptr,
    stride_qb, stride_qn, stride_kb, stride_kl, stride_vb, stride_vl,
    stride_pb, stride_pn, stride_pl,
    stride_ob, stride_on, stride_mb, stride_mn,
    N, L, l_bucket, qk_scale, mask_scale,  # l_bucket: the autotuning key's L (see the module doc)
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    NEED_MASK: tl.constexpr, HAS_PREV: tl.constexpr, SIGMOID: tl.constexpr, STORE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """One block of queries (grid axis 1) of one row of axis 0: rows ``[0, B·H)`` are the
    softmax attention of (image, head) over every key, the ``B · cdiv(L, BLOCK_L)`` rows after
    them (``NEED_MASK``) one mask tile each, of (image, block of keys). The batch is not an
    argument: it is the grid's row count over the rows per image (the TensorRT plugin passes
    only N and L)."""
    # Float scalars arrive as fp64 from AOTInductor's launcher: keep the arithmetic fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    mask_scale = tl.cast(mask_scale, tl.float32)
    row = tl.program_id(0)
    key_blocks = tl.cdiv(L, BLOCK_L)
    attention_rows = tl.num_programs(0)
    if NEED_MASK:
        attention_rows = attention_rows // (NUM_HEADS + key_blocks) * NUM_HEADS
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, HEAD_DIM)
    n_ok = offs_n < N

    if row < attention_rows:  # flash attention of one head: [BLOCK_N, HEAD_DIM] x [HEAD_DIM, BLOCK_L] tiles
        b = (row // NUM_HEADS).to(tl.int64)
        h = row % NUM_HEADS
        cols = h * HEAD_DIM + offs_d
        q = tl.load(q_ptr + b * stride_qb + offs_n[:, None] * stride_qn + cols[None, :], mask=n_ok[:, None], other=0.0)
        k_ptrs = k_ptr + b * stride_kb + offs_l[:, None] * stride_kl + cols[None, :]
        v_ptrs = v_ptr + b * stride_vb + offs_l[:, None] * stride_vl + cols[None, :]
        m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        for start in range(0, L, BLOCK_L):
            l_ok = start + offs_l < L
            k = tl.load(k_ptrs + start * stride_kl, mask=l_ok[:, None], other=0.0)
            s = dot(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST)
            s = tl.where(l_ok[None, :], s * qk_scale, float("-inf"))  # log2 domain
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptrs + start * stride_vl, mask=l_ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, DOT_PRECISION, DOT_UPCAST)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(out_ptr + b * stride_ob + offs_n[:, None] * stride_on + cols[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=n_ok[:, None])
        if STORE_LSE:  # for the backward; inference-only launchers (the TensorRT plugin) skip it
            lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # natural log-sum-exp of the scaled logits
            tl.store(lse_ptr + (b * NUM_HEADS + h) * N + offs_n, lse, mask=n_ok)
    elif NEED_MASK:  # one mask tile: the per-head logits of its keys summed over the heads
        tile_row = row - attention_rows
        b = (tile_row // key_blocks).to(tl.int64)
        keys = (tile_row % key_blocks) * BLOCK_L + offs_l
        l_ok = keys < L
        q_ptrs = q_ptr + b * stride_qb + offs_n[:, None] * stride_qn + offs_d[None, :]
        k_ptrs = k_ptr + b * stride_kb + keys[:, None] * stride_kl + offs_d[None, :]
        tile = tl.zeros([BLOCK_N, BLOCK_L], tl.float32)
        for h in range(NUM_HEADS):
            q = tl.load(q_ptrs + h * HEAD_DIM, mask=n_ok[:, None], other=0.0)
            k = tl.load(k_ptrs + h * HEAD_DIM, mask=l_ok[:, None], other=0.0)
            tile += dot(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST)
        tile = tile * mask_scale  # head-mean of the scaled logits
        tile_ok = n_ok[:, None] & l_ok[None, :]
        if HAS_PREV:
            prev = tl.load(prev_ptr + b * stride_pb + offs_n[:, None] * stride_pn + keys[None, :] * stride_pl,
                           mask=tile_ok, other=0.0)
            tile += prev.to(tl.float32)
        if SIGMOID:
            tile = tl.sigmoid(tile)
        tl.store(mask_ptr + b * stride_mb + offs_n[:, None] * stride_mn + keys[None, :],
                 tile.to(mask_ptr.dtype.element_ty), mask=tile_ok)


@triton.autotune(configs=_BWD_CONFIGS, key=_KEY + ["HAS_DMASK"])
@triton.jit
def _atm_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, dmask_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qn, stride_kb, stride_kl, stride_vb, stride_vl,
    stride_dob, stride_don, stride_dmb, stride_dmn, stride_dml,
    stride_dkb, stride_dkl, stride_dvb, stride_dvl,
    N, L, l_bucket, scale, qk_scale, inv_heads,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_DMASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """dK and dV of one (batch, head, block of keys), looping over all query blocks."""
    # Float scalars arrive as fp64 from AOTInductor's launcher: keep the arithmetic fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    inv_heads = tl.cast(inv_heads, tl.float32)
    pid_l = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // NUM_HEADS).to(tl.int64)
    h = pid_bh % NUM_HEADS
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_n = tl.arange(0, BLOCK_N)
    cols = h * HEAD_DIM + tl.arange(0, HEAD_DIM)
    l_ok = offs_l < L

    k = tl.load(k_ptr + b * stride_kb + offs_l[:, None] * stride_kl + cols[None, :], mask=l_ok[:, None], other=0.0)
    v = tl.load(v_ptr + b * stride_vb + offs_l[:, None] * stride_vl + cols[None, :], mask=l_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_L, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_L, HEAD_DIM], tl.float32)
    row_base = (b * NUM_HEADS + h) * N
    for start in range(0, N, BLOCK_N):
        rows = start + offs_n
        n_ok = rows < N
        q = tl.load(q_ptr + b * stride_qb + rows[:, None] * stride_qn + cols[None, :], mask=n_ok[:, None], other=0.0)
        do = tl.load(
            dout_ptr + b * stride_dob + rows[:, None] * stride_don + cols[None, :], mask=n_ok[:, None], other=0.0
        )
        lse2 = tl.load(lse_ptr + row_base + rows, mask=n_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_ptr + row_base + rows, mask=n_ok, other=0.0)
        st = dot(k, tl.trans(q), DOT_PRECISION, DOT_UPCAST)  # [BLOCK_L, BLOCK_N] logitsᵀ, unscaled
        pt = tl.where(l_ok[:, None] & n_ok[None, :], tl.exp2(st * qk_scale - lse2[None, :]), 0.0)
        dv += dot(pt.to(do.dtype), do, DOT_PRECISION, DOT_UPCAST)
        dpt = dot(v, tl.trans(do), DOT_PRECISION, DOT_UPCAST)
        dst = pt * (dpt - delta[None, :])  # gradient of the scaled logits through the softmax
        if HAS_DMASK:
            dmt = tl.load(
                dmask_ptr + b * stride_dmb + rows[None, :] * stride_dmn + offs_l[:, None] * stride_dml,
                mask=n_ok[None, :] & l_ok[:, None], other=0.0,
            )
            dst += dmt.to(tl.float32) * inv_heads
        dk += dot(dst.to(q.dtype), q, DOT_PRECISION, DOT_UPCAST)

    tl.store(
        dk_ptr + b * stride_dkb + offs_l[:, None] * stride_dkl + cols[None, :],
        (dk * scale).to(dk_ptr.dtype.element_ty), mask=l_ok[:, None],
    )
    tl.store(
        dv_ptr + b * stride_dvb + offs_l[:, None] * stride_dvl + cols[None, :],
        dv.to(dv_ptr.dtype.element_ty), mask=l_ok[:, None],
    )


@triton.autotune(configs=_BWD_CONFIGS, key=_KEY + ["HAS_DMASK"])
@triton.jit
def _atm_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, dmask_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qn, stride_kb, stride_kl, stride_vb, stride_vl,
    stride_dob, stride_don, stride_dmb, stride_dmn, stride_dml,
    stride_dqb, stride_dqn,
    N, L, l_bucket, scale, qk_scale, inv_heads,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_DMASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """dQ of one (batch, head, block of queries), looping over all key blocks."""
    # Float scalars arrive as fp64 from AOTInductor's launcher: keep the arithmetic fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    inv_heads = tl.cast(inv_heads, tl.float32)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // NUM_HEADS).to(tl.int64)
    h = pid_bh % NUM_HEADS
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    cols = h * HEAD_DIM + tl.arange(0, HEAD_DIM)
    n_ok = offs_n < N

    q = tl.load(q_ptr + b * stride_qb + offs_n[:, None] * stride_qn + cols[None, :], mask=n_ok[:, None], other=0.0)
    do = tl.load(
        dout_ptr + b * stride_dob + offs_n[:, None] * stride_don + cols[None, :], mask=n_ok[:, None], other=0.0
    )
    row_base = (b * NUM_HEADS + h) * N
    lse2 = tl.load(lse_ptr + row_base + offs_n, mask=n_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + row_base + offs_n, mask=n_ok, other=0.0)
    dq = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start in range(0, L, BLOCK_L):
        keys = start + offs_l
        l_ok = keys < L
        k = tl.load(k_ptr + b * stride_kb + keys[:, None] * stride_kl + cols[None, :], mask=l_ok[:, None], other=0.0)
        v = tl.load(v_ptr + b * stride_vb + keys[:, None] * stride_vl + cols[None, :], mask=l_ok[:, None], other=0.0)
        s = dot(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST)  # [BLOCK_N, BLOCK_L], unscaled
        p = tl.where(l_ok[None, :], tl.exp2(s * qk_scale - lse2[:, None]), 0.0)
        dp = dot(do, tl.trans(v), DOT_PRECISION, DOT_UPCAST)
        ds = p * (dp - delta[:, None])
        if HAS_DMASK:
            dm = tl.load(
                dmask_ptr + b * stride_dmb + offs_n[:, None] * stride_dmn + keys[None, :] * stride_dml,
                mask=n_ok[:, None] & l_ok[None, :], other=0.0,
            )
            ds += dm.to(tl.float32) * inv_heads
        dq += dot(ds.to(k.dtype), k, DOT_PRECISION, DOT_UPCAST)

    tl.store(
        dq_ptr + b * stride_dqb + offs_n[:, None] * stride_dqn + cols[None, :],
        (dq * scale).to(dq_ptr.dtype.element_ty), mask=n_ok[:, None],
    )


@launches_on_input_device(OP)
def launch_forward(q, k, v, num_heads, scale, prev_mask, sigmoid_mask, out, mask, lse):
    """Run the forward into preallocated ``out`` [B, N, D], ``mask`` [B, N, L] or ``None``
    (skip the mask) and ``lse`` [B, H, N] fp32. Exposed so tests can hand in poisoned buffers."""
    b, n, d = q.shape
    length = k.shape[1]
    _check_outputs(out, mask, lse, (b, n, d), (b, n, length), (b, num_heads, n))
    prev_strides = prev_mask.stride() if prev_mask is not None else (0, 0, 0)
    mask_strides = mask.stride()[:2] if mask is not None else (0, 0)

    def grid(meta):
        mask_rows = b * triton.cdiv(length, meta["BLOCK_L"]) if mask is not None else 0
        return (b * num_heads + mask_rows, triton.cdiv(n, meta["BLOCK_N"]))

    launcher(_atm_fwd_kernel)[grid](
        q, k, v, prev_mask if prev_mask is not None else q, out, mask if mask is not None else out, lse,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *prev_strides,
        out.stride(0), out.stride(1), *mask_strides,
        n, length, tuning_bucket(length), scale * LOG2E, scale / num_heads,
        NUM_HEADS=num_heads, HEAD_DIM=d // num_heads,
        NEED_MASK=mask is not None, HAS_PREV=prev_mask is not None, SIGMOID=sigmoid_mask, STORE_LSE=True,
        **dot_options(q.dtype),
    )


@launches_on_input_device(OP)
def launch_backward(dout, dmask, q, k, v, out, lse, num_heads, scale, dq, dk, dv):
    """Run the backward kernels into preallocated ``dq``/``dk``/``dv`` (contiguous, like ``q``/``k``/``v``).

    ``dmask`` [B, N, L] is the gradient of the head-mean logits (``None`` when the
    mask gets none)."""
    b, n, d = q.shape
    check_grid_y(OP, b * num_heads, "(image, head) pairs in the backward")
    check_int32_offsets(OP, dout=dout, dmask=dmask)
    length = k.shape[1]
    head_dim = d // num_heads
    # Per-row softmax correction sum_d dO·O for each (batch, head, query): [B, H, N] fp32.
    delta = (dout.float() * out.float()).reshape(b, n, num_heads, head_dim).sum(-1).transpose(1, 2).contiguous()
    dm_strides = dmask.stride() if dmask is not None else (0, 0, 0)
    common = dict(
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, HAS_DMASK=dmask is not None, **dot_options(q.dtype)
    )
    shared = (
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        dout.stride(0), dout.stride(1), *dm_strides,
    )
    scalars = (n, length, tuning_bucket(length), scale, scale * LOG2E, 1.0 / num_heads)
    dmask_arg = dmask if dmask is not None else dout

    def grid_dkdv(meta):
        return (triton.cdiv(length, meta["BLOCK_L"]), b * num_heads)

    def grid_dq(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), b * num_heads)

    launcher(_atm_bwd_dkdv_kernel)[grid_dkdv](
        q, k, v, dout, dmask_arg, lse, delta, dk, dv,
        *shared, dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), *scalars, **common,
    )
    launcher(_atm_bwd_dq_kernel)[grid_dq](
        q, k, v, dout, dmask_arg, lse, delta, dq,
        *shared, dq.stride(0), dq.stride(1), *scalars, **common,
    )


# ---------------------------------------------------------------------------- input checks


def _check_inputs(q, k, v, num_heads, prev_mask, need_mask, triton_path):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(OP, name, t, ndim=3, dtypes=FLOAT_DTYPES, last_dim_contiguous=True)
    check_same(OP, "device", q=q, k=k, v=v)
    check_same(OP, "dtype", q=q, k=k, v=v)
    b, n, d = q.shape
    length = k.shape[1]
    check_shape(OP, "k", k, (b, length, d), "[B, L, D] (B and D from q)")
    check_shape(OP, "v", v, (b, length, d), "[B, L, D] (same as k)")
    check_num_heads(OP, num_heads)
    if d % num_heads:
        raise ValueError(f"{OP}: dim {d} is not divisible by num_heads={num_heads}")
    if n == 0 or length == 0 or b == 0:
        raise ValueError(f"{OP}: needs B, N and L >= 1, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if triton_path:
        check_head_dim(OP, d, num_heads)
        _check_query_blocks(n)  # the backward's grid has (image, head) pairs: checked there
    if prev_mask is not None and need_mask:
        check_tensor(OP, "prev_mask", prev_mask, ndim=3, dtypes=FLOAT_DTYPES)
        check_shape(OP, "prev_mask", prev_mask, (b, n, length), "[B, N, L]")
        check_same(OP, "device", q=q, prev_mask=prev_mask)
    if triton_path:  # once prev_mask is known to be a tensor (or unused)
        check_int32_offsets(OP, q=q, k=k, v=v, prev_mask=prev_mask if need_mask else None)


def _check_outputs(out, mask, lse, out_shape, mask_shape, lse_shape):
    """``launch_forward``'s buffers: the kernel writes rows of ``out``/``mask`` with their strides but
    contiguous last dims, and ``lse`` as a contiguous [B, H, N]."""
    check_shape(OP, "out", out, out_shape, "[B, N, D]")
    if mask is not None:
        check_shape(OP, "mask", mask, mask_shape, "[B, N, L]")
    check_shape(OP, "lse", lse, lse_shape, "[B, H, N]")
    for name, t in (("out", out), ("mask", mask)):
        if t is not None and t.stride(-1) != 1:
            raise ValueError(f"{OP}: {name} must be contiguous in its last dim, got strides {tuple(t.stride())}")
    if not lse.is_contiguous():
        raise ValueError(f"{OP}: lse must be contiguous, got strides {tuple(lse.stride())}")


def _check_query_blocks(n):
    """The forward's grid has a row per block of at least MIN_BLOCK_N queries on its second axis."""
    if triton.cdiv(n, MIN_BLOCK_N) > MAX_GRID_Y:
        raise ValueError(f"{OP}: the Triton kernel takes at most {MAX_GRID_Y * MIN_BLOCK_N} queries per image, "
                         f"got {n}; split the queries")


def _mask_dtype(q, prev_mask):
    return q.dtype if prev_mask is None else torch.promote_types(q.dtype, prev_mask.dtype)


# ---------------------------------------------------------------------------- CPU fallbacks


def _reference_forward(q, k, v, num_heads, scale, prev_mask, need_mask, sigmoid_mask):
    out, mask = reference.atm_attention(
        q, k, v, num_heads, scale=scale, prev_mask=prev_mask, need_mask=need_mask, sigmoid_mask=sigmoid_mask
    )
    b, n, d = q.shape
    qh = q.reshape(b, n, num_heads, d // num_heads).transpose(1, 2)
    kh = k.reshape(b, k.shape[1], num_heads, d // num_heads).transpose(1, 2)
    lse = (torch.matmul(qh.float(), kh.float().transpose(-2, -1)) * scale).logsumexp(-1)
    if mask is None:
        mask = q.new_empty((b, n, 0))
    return out, mask, lse.contiguous()


def _reference_backward(dout, dmask, q, k, v, num_heads, scale):
    """Closed-form gradients of the reference in plain PyTorch (the CPU path without the interpreter)."""
    b, n, d = q.shape
    length = k.shape[1]
    hd = d // num_heads
    qh, kh, vh, doh = (
        t.reshape(b, t.shape[1], num_heads, hd).transpose(1, 2) for t in (q, k, v, dout.to(q.dtype))
    )
    p = (torch.matmul(qh, kh.transpose(-2, -1)) * scale).softmax(-1)  # [B, H, N, L]
    dp = torch.matmul(doh, vh.transpose(-2, -1))
    dz = p * (dp - (dp * p).sum(-1, keepdim=True))
    if dmask is not None:
        dz = dz + (dmask / num_heads).to(dz.dtype)[:, None]
    dq = torch.matmul(dz, kh) * scale
    dk = torch.matmul(dz.transpose(-2, -1), qh) * scale
    dv = torch.matmul(p.transpose(-2, -1), doh)
    return tuple(g.transpose(1, 2).reshape(b, m, d) for g, m in ((dq, n), (dk, length), (dv, length)))


# ---------------------------------------------------------------------------- custom ops


def _forward_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    scale: float,
    prev_mask: torch.Tensor | None,
    need_mask: bool,
    sigmoid_mask: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    triton_path = runs_triton(q)
    _check_inputs(q, k, v, num_heads, prev_mask, need_mask, triton_path)
    if not need_mask:
        prev_mask = None
    if not triton_path:
        return _reference_forward(q, k, v, num_heads, scale, prev_mask, need_mask, sigmoid_mask)
    b, n, d = q.shape
    length = k.shape[1]
    out = q.new_empty((b, n, d))
    mask = q.new_empty((b, n, length if need_mask else 0), dtype=_mask_dtype(q, prev_mask))
    lse = q.new_empty((b, num_heads, n), dtype=torch.float32)
    launch_forward(q, k, v, num_heads, scale, prev_mask, sigmoid_mask, out, mask if need_mask else None, lse)
    return out, mask, lse


def _forward_fake(q, k, v, num_heads, scale, prev_mask, need_mask, sigmoid_mask):
    _check_inputs(q, k, v, num_heads, prev_mask, need_mask, triton_path=q.device.type == "cuda")
    b, n, d = q.shape
    mask_dtype = _mask_dtype(q, prev_mask if need_mask else None)
    return (
        q.new_empty((b, n, d)),
        q.new_empty((b, n, k.shape[1] if need_mask else 0), dtype=mask_dtype),
        q.new_empty((b, num_heads, n), dtype=torch.float32),
    )


def _backward_impl(
    dout: torch.Tensor,
    dmask: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not runs_triton(q):
        return _reference_backward(dout, dmask, q, k, v, num_heads, scale)
    if dout.stride(-1) != 1:  # e.g. the expanded ones of out.sum(): the kernels read rows as contiguous
        dout = dout.contiguous()
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    launch_backward(dout, dmask, q, k, v, out, lse, num_heads, scale, dq, dk, dv)
    return dq, dk, dv


def _backward_fake(dout, dmask, q, k, v, out, lse, num_heads, scale):
    return (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
        torch.empty(v.shape, dtype=v.dtype, device=v.device),
    )


atm_attention_op = define_op("segvit_rt::atm_attention", _forward_impl, fake=_forward_fake)
atm_attention_backward_op = define_op("segvit_rt::atm_attention_backward", _backward_impl, fake=_backward_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, num_heads, scale, prev_mask, need_mask, sigmoid_mask = inputs
    out, mask, lse = output
    ctx.num_heads, ctx.scale = num_heads, scale
    ctx.need_mask, ctx.sigmoid_mask = need_mask, sigmoid_mask
    ctx.prev_dtype = prev_mask.dtype if (prev_mask is not None and need_mask) else None
    ctx.save_for_backward(q, k, v, out, lse, mask if (need_mask and sigmoid_mask) else None)
    ctx.mark_non_differentiable(lse)  # a softmax statistic the backward reuses, not a result


def _backward(ctx, dout, dmask, _dlse):
    q, k, v, out, lse, sig_mask = ctx.saved_tensors  # autograd hands zeros for unused outputs
    if not ctx.need_mask:
        dmask = None
    if dmask is not None and ctx.sigmoid_mask:
        s = sig_mask.float()
        dmask = dmask.float() * s * (1.0 - s)  # through the sigmoid: gradient of the pre-sigmoid mask
    dq, dk, dv = atm_attention_backward_op(dout, dmask, q, k, v, out, lse, ctx.num_heads, ctx.scale)
    dprev = dmask.to(ctx.prev_dtype) if (dmask is not None and ctx.prev_dtype is not None) else None
    return dq, dk, dv, None, None, dprev, None, None


atm_attention_op.register_autograd(_backward, setup_context=_setup_context)


def atm_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    scale: float | None = None,
    prev_mask: torch.Tensor | None = None,
    need_mask: bool = True,
    sigmoid_mask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused ATM cross-attention (``torch.ops.segvit_rt.atm_attention``); see the module doc.

    ``q`` [B, N, D], ``k``/``v`` [B, L, D] (fp16/bf16/fp32, one dtype, last dim
    contiguous; other strides are free, e.g. views of a fused projection).
    Returns ``out`` [B, N, D] in the input dtype and ``mask`` [B, N, L] (dtype of
    ``q`` promoted with ``prev_mask``'s), or ``None`` when ``need_mask`` is False.
    ``scale`` defaults to head_dim ** -0.5. Differentiable in q, k, v and prev_mask.
    """
    scale = attention_scale(OP, q, num_heads, scale)
    out, mask, _ = atm_attention_op(q, k, v, num_heads, scale, prev_mask, need_mask, sigmoid_mask)
    return out, (mask if need_mask else None)
