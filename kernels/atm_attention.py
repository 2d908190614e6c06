"""Fused ATM cross-attention: softmax attention and the head-mean logit mask in one pass.

Class queries ``q`` [B, N, D] attend to feature tokens ``k``/``v`` [B, L, D]
with ``H`` heads. The op returns ``out`` [B, N, D] = per-head
softmax(q_h k_hᵀ·scale) v_h and ``mask`` [B, N, L] = mean over heads of
q_h k_hᵀ·scale (+ ``prev_mask``, optionally sigmoid-ed). Semantics are those of
:func:`segvit_rt.ops.reference.atm_attention`.

Forward design: one program per (batch, block of queries) holds the queries of
*all* heads as a [H, BLOCK_N, head_dim] tile and sweeps K/V once in blocks of
keys. Each step computes the logits of every head with one batched ``tl.dot``
([H, BLOCK_N, BLOCK_L], fp32), sums them over heads in registers for the mask
tile (written once, never per head), and feeds the same logits to a per-head
online softmax (fp32 running max/sum/accumulator). The per-head [N, L] logits
never reach device memory, and K/V are read once per block of queries. A head
count that is not a power of two is padded to one inside the tile (padded
heads load zeros and are never stored; ViT-B's 12 heads run as 16, so a quarter
of that forward's tile work is padding).

That grid is small: ViT-L's 8 images x 150 class queries make 80 programs (BLOCK_N
16), fewer than an H100/H200 has SMs, and the fused forward measured 0.29x of SDPA +
a matmul on an H200 (benchmarks/RESULTS.md). So on a GPU the keys are split too
(flash-decoding): the grid gets a third axis of ``key_splits`` parts of L, each
program writes the mask of its keys (complete: it holds every head) and its
heads' unnormalised softmax partials (fp32), and ``_atm_fwd_combine_kernel``
merges the parts into ``out`` and the log-sum-exp. The split count depends only
on the shapes and the GPU's SM count, so results stay deterministic. Measured on
an H200 since, the split did not pay at the ViT-L shape (0.73x the unsplit kernel,
3 parts) and did at ViT-B's (1.07x): the bottleneck lies elsewhere.

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

Launch configs are autotuned on a GPU per (N, head_dim, padded head count, dtype, mask or not) and
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
# Largest fp32 tile (elements) a forward config may keep live per logits tensor: more spills registers.
_FWD_TILE_BUDGET = 16384


def _configs(blocks, warps_stages):
    """(BLOCK_N, BLOCK_L) tiles x (num_warps, num_stages); one (16, 32) tile under the interpreter."""
    settings = [(n, l, w, s) for n, l in blocks for w, s in warps_stages]
    return autotune_configs(("BLOCK_N", "BLOCK_L"), settings, interpreter=(16, 32))


def _prune_fwd_configs(configs, named_args, **kwargs):
    """Drop forward configs whose all-heads logits/accumulator tiles would not fit in registers."""
    args = {**named_args, **kwargs}
    heads, head_dim = args["HEADS_P2"], args["HEAD_DIM"]

    def tile(c):
        return heads * c.kwargs["BLOCK_N"] * max(c.kwargs["BLOCK_L"], head_dim)

    fitting = [c for c in configs if tile(c) <= _FWD_TILE_BUDGET]
    return fitting or [min(configs, key=tile)]


# Forward K/V tiles span all heads (16 heads x 64 dims x 32 keys in fp16 = 64 KiB each), so deep
# pipelining can exceed shared memory: single-stage configs are the fallback there.
_FWD_BLOCKS = [(16, 32), (16, 64), (32, 32), (32, 64), (64, 32)]  # (BLOCK_N, BLOCK_L)
_FWD_CONFIGS = _configs(_FWD_BLOCKS, [(4, 1), (8, 1), (8, 2)])
_BWD_CONFIGS = _configs([(32, 64), (64, 64), (64, 128), (128, 64)], [(4, 2), (8, 2)])
_KEY = ["N", "l_bucket", "HEAD_DIM"]  # triton's autotuner adds the tensor dtypes to the key
SPLIT_ALIGN = 64  # keys per split are a multiple of this: of every config's BLOCK_L
MIN_SPLIT_KEYS = 256  # fewest keys a split of the forward gets (key_splits)
_COMBINE_BLOCK_N = 16


@triton.autotune(
    configs=_FWD_CONFIGS, key=_KEY + ["HEADS_P2", "NEED_MASK", "SPLIT"],
    prune_configs_by={"early_config_prune": _prune_fwd_configs},
)
@triton.jit
def _atm_fwd_kernel(
    q_ptr, k_ptr, v_ptr, prev_ptr, out_ptr, mask_ptr, lse_ptr, part_ptr, stats_ptr,
    stride_qb, stride_qn, stride_kb, stride_kl, stride_vb, stride_vl,
    stride_pb, stride_pn, stride_pl,
    stride_ob, stride_on, stride_mb, stride_mn,
    N, L, l_bucket, split_len, qk_scale, mask_scale,  # l_bucket: the autotuning key's L (see the module doc)
    NUM_HEADS: tl.constexpr, HEADS_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
    NEED_MASK: tl.constexpr, HAS_PREV: tl.constexpr, SIGMOID: tl.constexpr, STORE_LSE: tl.constexpr,
    SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Keys ``[split · split_len, (split + 1) · split_len)`` of one (block of queries, image, split).
    Unsplit, it writes ``out`` and the log-sum-exp; split (``SPLIT``), each head's unnormalised
    accumulator to ``part_ptr`` [S, B, H, N, HEAD_DIM] and its running max (log2 domain) and sum
    to ``stats_ptr`` [2, S, B, H, N], all fp32, for ``_atm_fwd_combine_kernel``."""
    # Float scalars arrive as fp64 from AOTInductor's launcher: keep the arithmetic fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    mask_scale = tl.cast(mask_scale, tl.float32)
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    lo = split * split_len
    hi = tl.minimum(lo + split_len, L)
    offs_h = tl.arange(0, HEADS_P2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, HEAD_DIM)
    head_ok = offs_h < NUM_HEADS
    n_ok = offs_n < N
    # Column of (head h, dim d) in the [.., D] rows: h * HEAD_DIM + d, as a [HEADS_P2, 1, HEAD_DIM] grid.
    cols = offs_h[:, None, None] * HEAD_DIM + offs_d[None, None, :]

    q = tl.load(
        q_ptr + b * stride_qb + offs_n[None, :, None] * stride_qn + cols,
        mask=head_ok[:, None, None] & n_ok[None, :, None], other=0.0,
    )  # [H, BLOCK_N, HEAD_DIM]
    # kᵀ tile [H, HEAD_DIM, BLOCK_L] and v tile [H, BLOCK_L, HEAD_DIM] of the first key block.
    kt_cols = offs_h[:, None, None] * HEAD_DIM + offs_d[None, :, None]
    kt_ptrs = k_ptr + b * stride_kb + offs_l[None, None, :] * stride_kl + kt_cols
    v_ptrs = v_ptr + b * stride_vb + offs_l[None, :, None] * stride_vl + cols

    m_i = tl.full([HEADS_P2, BLOCK_N], float("-inf"), tl.float32)
    l_i = tl.zeros([HEADS_P2, BLOCK_N], tl.float32)
    acc = tl.zeros([HEADS_P2, BLOCK_N, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK_L):
        l_ok = start + offs_l < hi
        kt = tl.load(kt_ptrs + start * stride_kl, mask=head_ok[:, None, None] & l_ok[None, None, :], other=0.0)
        s = dot(q, kt, DOT_PRECISION, DOT_UPCAST)  # unscaled logits of every head, fp32

        if NEED_MASK:
            tile = tl.sum(s, axis=0) * mask_scale  # [BLOCK_N, BLOCK_L]: head-mean of the scaled logits
            tile_ok = n_ok[:, None] & l_ok[None, :]
            if HAS_PREV:
                prev = tl.load(
                    prev_ptr + b * stride_pb + offs_n[:, None] * stride_pn + (start + offs_l)[None, :] * stride_pl,
                    mask=tile_ok, other=0.0,
                )
                tile += prev.to(tl.float32)
            if SIGMOID:
                tile = tl.sigmoid(tile)
            mask_ptrs = mask_ptr + b * stride_mb + offs_n[:, None] * stride_mn + (start + offs_l)[None, :]
            tl.store(mask_ptrs, tile.to(mask_ptr.dtype.element_ty), mask=tile_ok)

        s = tl.where(l_ok[None, None, :], s * qk_scale, float("-inf"))  # log2 domain
        m_new = tl.maximum(m_i, tl.max(s, axis=2))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, :, None])
        l_i = l_i * alpha + tl.sum(p, axis=2)
        v = tl.load(v_ptrs + start * stride_vl, mask=head_ok[:, None, None] & l_ok[None, :, None], other=0.0)
        acc = acc * alpha[:, :, None] + dot(p.to(v.dtype), v, DOT_PRECISION, DOT_UPCAST)
        m_i = m_new

    row_ok = head_ok[:, None] & n_ok[None, :]
    if SPLIT:
        rows = ((split * tl.num_programs(1) + b) * NUM_HEADS + offs_h[:, None]) * N + offs_n[None, :]
        tl.store(part_ptr + rows[:, :, None] * HEAD_DIM + offs_d[None, None, :], acc, mask=row_ok[:, :, None])
        stats_len = tl.num_programs(2).to(tl.int64) * tl.num_programs(1) * NUM_HEADS * N
        tl.store(stats_ptr + rows, m_i, mask=row_ok)
        tl.store(stats_ptr + stats_len + rows, l_i, mask=row_ok)
    else:
        acc = acc / l_i[:, :, None]
        tl.store(
            out_ptr + b * stride_ob + offs_n[None, :, None] * stride_on + cols,
            acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, :, None],
        )
        if STORE_LSE:  # for the backward; inference-only launchers (the TensorRT plugin) skip it
            lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # natural log-sum-exp of the scaled logits
            tl.store(lse_ptr + (b * NUM_HEADS + offs_h[:, None]) * N + offs_n[None, :], lse, mask=row_ok)


@triton.jit
def _atm_fwd_combine_kernel(
    part_ptr, stats_ptr, out_ptr, lse_ptr, stride_ob, stride_on, N, num_splits,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``out`` and log-sum-exp of one (block of queries, image·head) from the splits' partials."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # b * NUM_HEADS + h
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    n_ok = offs_n < N
    split_rows = tl.num_programs(1).to(tl.int64) * N  # rows of one split: B·H·N
    rows = bh * N + offs_n
    # Every split holds at least one key, so its running max is finite: start from the first.
    m = tl.load(stats_ptr + rows, mask=n_ok, other=0.0)
    total = tl.load(stats_ptr + num_splits * split_rows + rows, mask=n_ok, other=1.0)
    acc = tl.load(part_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=n_ok[:, None], other=0.0)
    for s in range(1, num_splits):
        r = s * split_rows + rows
        m_s = tl.load(stats_ptr + r, mask=n_ok, other=0.0)
        l_s = tl.load(stats_ptr + num_splits * split_rows + r, mask=n_ok, other=1.0)
        acc_s = tl.load(part_ptr + r[:, None] * HEAD_DIM + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        m_new = tl.maximum(m, m_s)
        alpha, beta = tl.exp2(m - m_new), tl.exp2(m_s - m_new)
        total = total * alpha + l_s * beta
        acc = acc * alpha[:, None] + acc_s * beta[:, None]
        m = m_new
    b, h = bh // NUM_HEADS, bh % NUM_HEADS
    tl.store(
        out_ptr + b * stride_ob + offs_n[:, None] * stride_on + h * HEAD_DIM + offs_d[None, :],
        (acc / total[:, None]).to(out_ptr.dtype.element_ty), mask=n_ok[:, None],
    )
    tl.store(lse_ptr + rows, (m + tl.log2(total)) * 0.6931471805599453, mask=n_ok)


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


def key_splits(b, n, length, num_heads: int, sm_count: int) -> tuple[int, int]:
    """``(splits, split_len)``: the forward's keys in ``splits`` parts of ``split_len`` keys (the last
    one shorter), flash-decoding style.

    Unsplit, the forward has one program per (block of queries, image): 80 for ViT-L's
    8 x 150 class queries, fewer than an H100/H200 has SMs. Splits are added while the programs
    stay within one wave of two per SM (``sm_count``; 0 on the CPU: never split), each keeping
    about :data:`MIN_SPLIT_KEYS` keys at least so the combine stays cheap. Sizes traced as
    symbols (a dynamic batch in ``torch.export``) must not be branched on, or the export would
    be specialised to one batch: a symbolic batch plans for one image, symbolic N or L do not
    split."""
    if not isinstance(n, int) or not isinstance(length, int):
        return 1, length
    b = b if isinstance(b, int) else 1
    programs = b * triton.cdiv(n, min(block_n for block_n, _ in _FWD_BLOCKS))  # the most a config launches
    splits = 1
    if b * num_heads <= MAX_GRID_Y:  # the combine's grid axis 1
        splits = max(1, min(length // MIN_SPLIT_KEYS, (2 * sm_count) // programs))
    return split_layout(length, splits)


def split_layout(length: int, splits: int) -> tuple[int, int]:
    """``(splits, split_len)`` for about ``splits`` parts of ``length`` keys: each a multiple of
    :data:`SPLIT_ALIGN` keys, none empty (so the count can come out lower)."""
    if splits < 1:
        raise ValueError(f"{OP}: splits must be >= 1, got {splits}")
    split_len = triton.cdiv(triton.cdiv(length, splits), SPLIT_ALIGN) * SPLIT_ALIGN
    return triton.cdiv(length, split_len), split_len


def _sm_count(device: torch.device) -> int:
    """SMs of a CUDA device; 0 on the CPU, and while tracing for CUDA on a machine without one."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return 0
    return torch.cuda.get_device_properties(device).multi_processor_count


@launches_on_input_device(OP)
def launch_forward(q, k, v, num_heads, scale, prev_mask, sigmoid_mask, out, mask, lse, splits=None):
    """Run the forward into preallocated ``out`` [B, N, D], ``mask`` [B, N, L] or ``None``
    (skip the mask), ``lse`` [B, H, N] fp32, the keys split in ``splits`` parts (default:
    :func:`key_splits`). Exposed so tests can hand in poisoned buffers and choose the splits."""
    b, n, d = q.shape
    length = k.shape[1]
    head_dim = d // num_heads
    prev_strides = prev_mask.stride() if prev_mask is not None else (0, 0, 0)
    mask_strides = mask.stride()[:2] if mask is not None else (0, 0)
    if splits is None:
        splits, split_len = key_splits(b, n, length, num_heads, _sm_count(q.device))
    else:
        splits, split_len = split_layout(length, splits)
    part = stats = lse
    if splits > 1:
        check_grid_y(OP, b * num_heads, "(image, head) pairs with split keys")
        part = torch.empty((splits, b, num_heads, n, head_dim), dtype=torch.float32, device=q.device)
        stats = torch.empty((2, splits, b, num_heads, n), dtype=torch.float32, device=q.device)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), b, splits)

    launcher(_atm_fwd_kernel)[grid](
        q, k, v, prev_mask if prev_mask is not None else q, out, mask if mask is not None else out, lse, part, stats,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *prev_strides,
        out.stride(0), out.stride(1), *mask_strides,
        n, length, tuning_bucket(length), split_len, scale * LOG2E, scale / num_heads,
        NUM_HEADS=num_heads, HEADS_P2=triton.next_power_of_2(num_heads), HEAD_DIM=head_dim,
        NEED_MASK=mask is not None, HAS_PREV=prev_mask is not None, SIGMOID=sigmoid_mask, STORE_LSE=True,
        SPLIT=splits > 1, **dot_options(q.dtype),
    )
    if splits > 1:
        launcher(_atm_fwd_combine_kernel)[(triton.cdiv(n, _COMBINE_BLOCK_N), b * num_heads)](
            part, stats, out, lse, out.stride(0), out.stride(1), n, splits,
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_N=_COMBINE_BLOCK_N, num_warps=4,
        )


@launches_on_input_device(OP)
def launch_backward(dout, dmask, q, k, v, out, lse, num_heads, scale, dq, dk, dv):
    """Run the backward kernels into preallocated ``dq``/``dk``/``dv`` (contiguous, like ``q``/``k``/``v``).

    ``dmask`` [B, N, L] is the gradient of the head-mean logits (``None`` when the
    mask gets none)."""
    b, n, d = q.shape
    check_grid_y(OP, b * num_heads, "(image, head) pairs in the backward")
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
        check_grid_y(OP, b, "images")  # the backward's grid has (image, head) pairs: checked there
    if prev_mask is not None and need_mask:
        check_tensor(OP, "prev_mask", prev_mask, ndim=3, dtypes=FLOAT_DTYPES)
        check_shape(OP, "prev_mask", prev_mask, (b, n, length), "[B, N, L]")
        check_same(OP, "device", q=q, prev_mask=prev_mask)


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
