"""Query-downsampled (QD) attention: the stride-2 query gather fused into flash attention.

SegViT Shrunk's QD layer lets the tokens at even rows and even columns of the
h×w token grid attend to all h·w tokens. Semantics are those of
:func:`segvit_rt.ops.reference.qd_attention`: ``x_q``, ``k``, ``v`` [B, L, D]
with L = h·w, queries ``x_q`` at grid positions (2i, 2j), output [B, L/4, D].

Forward: one program per (batch·head, block of queries). Query row ``m`` is
read straight from ``x_q`` at token ``2·(m // (w/2))·w + 2·(m % (w/2))``, so no
downsampled copy is made; all tensors are addressed through their strides, so
q/k/v may be views of one fused qkv projection ``[B, L, 3D]`` (no copies).
The keys are swept in blocks with the flash-style online softmax (exp2, fp32
running max/sum/accumulator); full key blocks run unmasked and only the last,
partial one is masked. The log-sum-exp of every query row is saved.

Backward: flash-attention recompute from the saved log-sum-exp, one kernel for
dK/dV (a program per block of keys loops over all queries) and one for dQ (a
program per block of queries loops over all keys). Every gradient element is
written by exactly one program (no atomics: deterministic); the dQ kernel also
writes the zeros of the three unsampled tokens of each 2×2 cell of dx_q.

Launch configs are autotuned on a GPU per (head_dim, dtype) and per power-of-two
range of L (``size_bucket``), so inputs of many sizes tune once per range; a
single small config runs under the Triton interpreter.
"""

import torch
import triton
import triton.language as tl

from segvit_rt.ops import reference

from ._common import (
    FLOAT_DTYPES,
    LOG2E,
    attention_scale,
    autotune_configs,
    check_grid_y,
    check_head_dim,
    check_int32_offsets,
    check_int_pair,
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

OP = "qd_attention"


def _configs(settings):
    """Autotuning space from (BLOCK_M, BLOCK_N, num_warps, num_stages) tuples; (16, 16) under the interpreter."""
    return autotune_configs(("BLOCK_M", "BLOCK_N"), settings, interpreter=(16, 16))


# None spills registers in fp16/bf16 at head_dim 64 on sm_90 with triton 3.6 or 3.9
# (tests/kernels/compile_sass.py): the larger tiles take 8 warps, and the backward keeps to
# 64 x 64. fp32 (IEEE products) spills in all but small tiles, hence the (32, 32) ones.
_FWD_CONFIGS = _configs(
    [(64, 64, w, s) for w, s in ((4, 2), (4, 3), (8, 3), (8, 4))]
    + [(m, n, 8, s) for m, n in ((128, 64), (64, 128), (128, 128)) for s in (3, 4)]
    + [(32, 32, 8, 2)]
)
_BWD_CONFIGS = _configs(
    [(m, n, w, 2) for m, n in ((32, 64), (64, 32)) for w in (4, 8)]
    + [(64, 64, 8, 2), (32, 32, 4, 2)]
)
_KEY = ["size_bucket", "HEAD_DIM"]  # triton's autotuner adds the tensor dtypes to the key


@triton.jit
def _query_tokens(rows, half_w, grid_w):
    """Full-grid token index of downsampled query row ``rows``: grid position (2i, 2j)."""
    return 2 * (rows // half_w) * grid_w + 2 * (rows % half_w)


@triton.jit
def _load_rows(base, rows, ok, stride_l, cols, stride_d, MASKED: tl.constexpr):
    """Tile [len(rows), len(cols)] of a [L, D]-strided matrix; rows where ``ok`` is False read 0."""
    ptrs = base + rows[:, None] * stride_l + cols[None, :] * stride_d
    if MASKED:
        tile = tl.load(ptrs, mask=ok[:, None], other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _fwd_step(
    q, k_base, v_base, keys, seq_k, stride_kl, stride_kd, stride_vl, stride_vd, cols, qk_scale,
    row_max, row_sum, acc,
    MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    """Online-softmax update of one query block with one block of keys (log2 domain)."""
    key_ok = keys < seq_k
    k = _load_rows(k_base, keys, key_ok, stride_kl, cols, stride_kd, MASKED)
    v = _load_rows(v_base, keys, key_ok, stride_vl, cols, stride_vd, MASKED)
    s = dot(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST) * qk_scale
    if MASKED:
        s = tl.where(key_ok[None, :], s, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(s, 1))
    alpha = tl.exp2(row_max - new_max)
    p = tl.exp2(s - new_max[:, None])
    row_sum = row_sum * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, DOT_PRECISION, DOT_UPCAST)
    return new_max, row_sum, acc


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY)
@triton.jit
def _qd_fwd_kernel(
    xq_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    stride_qb, stride_ql, stride_qd, stride_kb, stride_kl, stride_kd, stride_vb, stride_vl, stride_vd,
    stride_ob, stride_ol, stride_od,
    num_heads, seq_q, seq_k, half_w, grid_w, size_bucket, qk_scale,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Float scalars arrive as fp64 from AOTInductor's launcher: keep the arithmetic fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // num_heads).to(tl.int64)
    head = pid_bh % num_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_q
    offs_n = tl.arange(0, BLOCK_N)
    cols = head * HEAD_DIM + tl.arange(0, HEAD_DIM)

    q = _load_rows(xq_ptr + batch * stride_qb, _query_tokens(rows, half_w, grid_w), row_ok,
                   stride_ql, cols, stride_qd, True)
    k_base = k_ptr + batch * stride_kb
    v_base = v_ptr + batch * stride_vb
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    full_end = (seq_k // BLOCK_N) * BLOCK_N
    for start in range(0, full_end, BLOCK_N):
        row_max, row_sum, acc = _fwd_step(
            q, k_base, v_base, start + offs_n, seq_k, stride_kl, stride_kd, stride_vl, stride_vd, cols, qk_scale,
            row_max, row_sum, acc, False, DOT_PRECISION, DOT_UPCAST,
        )
    if full_end < seq_k:
        row_max, row_sum, acc = _fwd_step(
            q, k_base, v_base, full_end + offs_n, seq_k, stride_kl, stride_kd, stride_vl, stride_vd, cols, qk_scale,
            row_max, row_sum, acc, True, DOT_PRECISION, DOT_UPCAST,
        )

    out = acc / row_sum[:, None]
    out_ptrs = out_ptr + batch * stride_ob + rows[:, None] * stride_ol + cols[None, :] * stride_od
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    lse = (row_max + tl.log2(row_sum)) * 0.6931471805599453  # natural log-sum-exp of the scaled logits
    tl.store(lse_ptr + pid_bh.to(tl.int64) * seq_q + rows, lse, mask=row_ok)


@triton.autotune(configs=_BWD_CONFIGS, key=_KEY)
@triton.jit
def _qd_bwd_dkdv_kernel(
    xq_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_ql, stride_qd, stride_kb, stride_kl, stride_kd, stride_vb, stride_vl, stride_vd,
    stride_dob, stride_dol, stride_dod, stride_gb, stride_gl,
    num_heads, seq_q, seq_k, half_w, grid_w, size_bucket, qk_scale, scale,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dV = Pᵀ·dO and dK = scale·dSᵀ·Q for one (batch, head, block of keys), over all queries.

    ``dk``/``dv`` share the strides ``stride_gb``/``stride_gl`` with a unit last dim."""
    # Float scalars arrive as fp64 from AOTInductor's launcher: keep the arithmetic fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // num_heads).to(tl.int64)
    head = pid_bh % num_heads
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < seq_k
    cols = head * HEAD_DIM + tl.arange(0, HEAD_DIM)
    k = _load_rows(k_ptr + batch * stride_kb, keys, key_ok, stride_kl, cols, stride_kd, True)
    v = _load_rows(v_ptr + batch * stride_vb, keys, key_ok, stride_vl, cols, stride_vd, True)
    q_base = xq_ptr + batch * stride_qb
    do_base = dout_ptr + batch * stride_dob
    stats = pid_bh.to(tl.int64) * seq_q

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start in range(0, seq_q, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < seq_q
        q = _load_rows(q_base, _query_tokens(rows, half_w, grid_w), row_ok, stride_ql, cols, stride_qd, True)
        do = _load_rows(do_base, rows, row_ok, stride_dol, cols, stride_dod, True)
        lse2 = tl.load(lse_ptr + stats + rows, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_ptr + stats + rows, mask=row_ok, other=0.0)
        s_t = dot(k, tl.trans(q), DOT_PRECISION, DOT_UPCAST) * qk_scale  # [BLOCK_N, BLOCK_M], log2 domain
        p_t = tl.where(row_ok[None, :], tl.exp2(s_t - lse2[None, :]), 0.0)
        dv += dot(p_t.to(do.dtype), do, DOT_PRECISION, DOT_UPCAST)
        dp_t = dot(v, tl.trans(do), DOT_PRECISION, DOT_UPCAST)
        ds_t = p_t * (dp_t - delta[None, :])  # gradient of the scaled logits through the softmax
        dk += dot(ds_t.to(q.dtype), q, DOT_PRECISION, DOT_UPCAST)

    offs = batch * stride_gb + keys[:, None] * stride_gl + cols[None, :]
    tl.store(dk_ptr + offs, (dk * scale).to(dk_ptr.dtype.element_ty), mask=key_ok[:, None])
    tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=key_ok[:, None])


@triton.autotune(configs=_BWD_CONFIGS, key=_KEY)
@triton.jit
def _qd_bwd_dq_kernel(
    xq_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dxq_ptr,
    stride_qb, stride_ql, stride_qd, stride_kb, stride_kl, stride_kd, stride_vb, stride_vl, stride_vd,
    stride_dob, stride_dol, stride_dod, stride_gb, stride_gl,
    num_heads, seq_q, seq_k, half_w, grid_w, size_bucket, qk_scale, scale,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ = scale·dS·K for one (batch, head, block of queries), over all keys, written to the
    sampled tokens of ``dx_q`` (strides ``stride_gb``/``stride_gl``, unit last dim); the other
    three tokens of each 2×2 cell get zeros."""
    # Float scalars arrive as fp64 from AOTInductor's launcher: keep the arithmetic fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // num_heads).to(tl.int64)
    head = pid_bh % num_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_q
    offs_n = tl.arange(0, BLOCK_N)
    cols = head * HEAD_DIM + tl.arange(0, HEAD_DIM)
    tokens = _query_tokens(rows, half_w, grid_w)
    q = _load_rows(xq_ptr + batch * stride_qb, tokens, row_ok, stride_ql, cols, stride_qd, True)
    do = _load_rows(dout_ptr + batch * stride_dob, rows, row_ok, stride_dol, cols, stride_dod, True)
    stats = pid_bh.to(tl.int64) * seq_q + rows
    lse2 = tl.load(lse_ptr + stats, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + stats, mask=row_ok, other=0.0)
    k_base = k_ptr + batch * stride_kb
    v_base = v_ptr + batch * stride_vb

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(0, seq_k, BLOCK_N):
        keys = start + offs_n
        key_ok = keys < seq_k
        k = _load_rows(k_base, keys, key_ok, stride_kl, cols, stride_kd, True)
        v = _load_rows(v_base, keys, key_ok, stride_vl, cols, stride_vd, True)
        s = dot(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST) * qk_scale
        p = tl.where(key_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dp = dot(do, tl.trans(v), DOT_PRECISION, DOT_UPCAST)
        ds = p * (dp - delta[:, None])
        dq += dot(ds.to(k.dtype), k, DOT_PRECISION, DOT_UPCAST)

    base = dxq_ptr + batch * stride_gb + cols[None, :]
    mask = row_ok[:, None]
    tl.store(base + tokens[:, None] * stride_gl, (dq * scale).to(dxq_ptr.dtype.element_ty), mask=mask)
    zeros = tl.zeros([BLOCK_M, HEAD_DIM], dxq_ptr.dtype.element_ty)
    tl.store(base + (tokens + 1)[:, None] * stride_gl, zeros, mask=mask)
    tl.store(base + (tokens + grid_w)[:, None] * stride_gl, zeros, mask=mask)
    tl.store(base + (tokens + grid_w + 1)[:, None] * stride_gl, zeros, mask=mask)


def _sizes(grid_hw):
    """(queries, keys, half grid width, grid width, autotuning bucket of the keys): the kernels'
    size arguments."""
    h, w = grid_hw
    return (h // 2) * (w // 2), h * w, w // 2, w, tuning_bucket(h * w)


@launches_on_input_device(OP)
def launch_forward(x_q, k, v, grid_hw, num_heads, scale, out, lse):
    """Run the forward kernel into preallocated ``out`` [B, L/4, D] and ``lse`` [B, H, L/4] fp32
    (contiguous). Exposed so tests can hand in poisoned buffers."""
    b, _, d = x_q.shape
    sizes = _sizes(grid_hw)

    def grid(meta):
        return (triton.cdiv(sizes[0], meta["BLOCK_M"]), b * num_heads)

    launcher(_qd_fwd_kernel)[grid](
        x_q, k, v, out, lse,
        *x_q.stride(), *k.stride(), *v.stride(), *out.stride(),
        num_heads, *sizes, scale * LOG2E,
        HEAD_DIM=d // num_heads, **dot_options(x_q.dtype),
    )


@launches_on_input_device(OP)
def launch_backward(dout, x_q, k, v, out, lse, grid_hw, num_heads, scale, dxq, dk, dv):
    """Run the backward kernels into preallocated ``dxq``/``dk``/``dv`` [B, L, D] (one layout,
    unit last dim). Every element of the three is written."""
    b, _, d = x_q.shape
    head_dim = d // num_heads
    sizes = _sizes(grid_hw)
    seq_q, seq_k = sizes[:2]
    # Softmax correction sum_d dO·O per (batch, head, query row): [B, H, L/4] fp32.
    delta = (dout.float() * out.float()).reshape(b, seq_q, num_heads, head_dim).sum(-1).transpose(1, 2).contiguous()
    args = (
        *x_q.stride(), *k.stride(), *v.stride(), *dout.stride(), dk.stride(0), dk.stride(1),
        num_heads, *sizes, scale * LOG2E, scale,
    )
    meta = dict(HEAD_DIM=head_dim, **dot_options(x_q.dtype))

    def grid_dkdv(m):
        return (triton.cdiv(seq_k, m["BLOCK_N"]), b * num_heads)

    def grid_dq(m):
        return (triton.cdiv(seq_q, m["BLOCK_M"]), b * num_heads)

    launcher(_qd_bwd_dkdv_kernel)[grid_dkdv](x_q, k, v, dout, lse, delta, dk, dv, *args, **meta)
    launcher(_qd_bwd_dq_kernel)[grid_dq](x_q, k, v, dout, lse, delta, dxq, *args, **meta)


# ---------------------------------------------------------------------------- input checks


def _check_inputs(x_q, k, v, grid_h, grid_w, num_heads, triton_path):
    for name, t in (("x_q", x_q), ("k", k), ("v", v)):
        check_tensor(OP, name, t, ndim=3, dtypes=FLOAT_DTYPES)
    check_same(OP, "device", x_q=x_q, k=k, v=v)
    check_same(OP, "dtype", x_q=x_q, k=k, v=v)
    b, length, d = x_q.shape
    check_shape(OP, "k", k, (b, length, d), "[B, L, D] (as x_q)")
    check_shape(OP, "v", v, (b, length, d), "[B, L, D] (as x_q)")
    if b == 0 or d == 0:
        raise ValueError(f"{OP}: needs B and D >= 1, got x_q {tuple(x_q.shape)}")
    check_num_heads(OP, num_heads)
    if d % num_heads:
        raise ValueError(f"{OP}: dim {d} is not divisible by num_heads={num_heads}")
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"{OP}: grid_hw must be positive, got {grid_h}x{grid_w}")
    if grid_h % 2 or grid_w % 2:
        raise ValueError(f"{OP}: query downsampling needs an even token grid, got {grid_h}x{grid_w}")
    if grid_h * grid_w != length:
        raise ValueError(f"{OP}: token count L={length} does not match the grid {grid_h}x{grid_w}")
    if triton_path:
        check_head_dim(OP, d, num_heads)
        check_grid_y(OP, b * num_heads, "(image, head) pairs")
        check_int32_offsets(OP, x_q=x_q, k=k, v=v)


def _grid_ints(grid_hw) -> tuple[int, int]:
    return check_int_pair(OP, "grid_hw", grid_hw, "(h, w)")


# ---------------------------------------------------------------------------- CPU fallbacks


def _heads(t, num_heads):
    b, n, d = t.shape
    return t.reshape(b, n, num_heads, d // num_heads).transpose(1, 2)


def _merge(t):
    b, h, n, hd = t.shape
    return t.transpose(1, 2).reshape(b, n, h * hd)


def _reference_forward(x_q, k, v, grid_hw, num_heads, scale):
    out = reference.qd_attention(x_q, k, v, grid_hw, num_heads, scale=scale)
    qh = _heads(reference.downsample_tokens(x_q, grid_hw), num_heads)
    lse = (torch.matmul(qh.float(), _heads(k, num_heads).float().transpose(-2, -1)) * scale).logsumexp(-1)
    return out, lse.contiguous()


def _reference_backward(dout, x_q, k, v, grid_hw, num_heads, scale):
    """Closed-form gradients of the reference in plain PyTorch (the CPU path without the interpreter)."""
    b, length, d = x_q.shape
    h, w = grid_hw
    qh = _heads(reference.downsample_tokens(x_q, grid_hw), num_heads)
    kh, vh, doh = (_heads(t, num_heads) for t in (k, v, dout.to(x_q.dtype)))
    p = (torch.matmul(qh, kh.transpose(-2, -1)) * scale).softmax(-1)  # [B, H, L/4, L]
    dp = torch.matmul(doh, vh.transpose(-2, -1))
    dz = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = torch.matmul(dz, kh) * scale
    dk = torch.matmul(dz.transpose(-2, -1), qh) * scale
    dv = torch.matmul(p.transpose(-2, -1), doh)
    dxq = x_q.new_zeros((b, h, w, d))
    dxq[:, ::2, ::2] = _merge(dq).reshape(b, h // 2, w // 2, d)
    return dxq.reshape(b, length, d), _merge(dk), _merge(dv)


# ---------------------------------------------------------------------------- custom ops


def _forward_impl(
    x_q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid_h: int, grid_w: int, num_heads: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    triton_path = runs_triton(x_q)
    _check_inputs(x_q, k, v, grid_h, grid_w, num_heads, triton_path)
    if not triton_path:
        return _reference_forward(x_q, k, v, (grid_h, grid_w), num_heads, scale)
    b, length, d = x_q.shape
    out = x_q.new_empty((b, length // 4, d))
    lse = x_q.new_empty((b, num_heads, length // 4), dtype=torch.float32)
    launch_forward(x_q, k, v, (grid_h, grid_w), num_heads, scale, out, lse)
    return out, lse


def _forward_fake(x_q, k, v, grid_h, grid_w, num_heads, scale):
    _check_inputs(x_q, k, v, grid_h, grid_w, num_heads, triton_path=x_q.device.type == "cuda")
    b, length, d = x_q.shape
    return x_q.new_empty((b, length // 4, d)), x_q.new_empty((b, num_heads, length // 4), dtype=torch.float32)


def _backward_impl(
    dout: torch.Tensor,
    x_q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grid_h: int,
    grid_w: int,
    num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not runs_triton(x_q):
        return _reference_backward(dout, x_q, k, v, (grid_h, grid_w), num_heads, scale)
    dxq, dk, dv = (torch.empty(x_q.shape, dtype=x_q.dtype, device=x_q.device) for _ in range(3))
    launch_backward(dout, x_q, k, v, out, lse, (grid_h, grid_w), num_heads, scale, dxq, dk, dv)
    return dxq, dk, dv


def _backward_fake(dout, x_q, k, v, out, lse, grid_h, grid_w, num_heads, scale):
    return tuple(torch.empty(x_q.shape, dtype=x_q.dtype, device=x_q.device) for _ in range(3))


qd_attention_op = define_op("segvit_rt::qd_attention", _forward_impl, fake=_forward_fake)
qd_attention_backward_op = define_op("segvit_rt::qd_attention_backward", _backward_impl, fake=_backward_fake)


def _setup_context(ctx, inputs, output):
    x_q, k, v, grid_h, grid_w, num_heads, scale = inputs
    out, lse = output
    ctx.args = (grid_h, grid_w, num_heads, scale)
    ctx.save_for_backward(x_q, k, v, out, lse)
    ctx.mark_non_differentiable(lse)  # a softmax statistic the backward reuses, not a result


def _backward(ctx, dout, _dlse):
    x_q, k, v, out, lse = ctx.saved_tensors
    dxq, dk, dv = qd_attention_backward_op(dout, x_q, k, v, out, lse, *ctx.args)
    return dxq, dk, dv, None, None, None, None


qd_attention_op.register_autograd(_backward, setup_context=_setup_context)


def qd_attention(
    x_q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid_hw: tuple[int, int],
    num_heads: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused QD attention (``torch.ops.segvit_rt.qd_attention``); see the module doc.

    ``x_q``, ``k``, ``v`` [B, L, D] on the ``grid_hw`` = (h, w) token grid (h, w
    even, L = h·w), fp16/bf16/fp32, one dtype; any strides (e.g. views of a fused
    qkv projection output). Returns [B, L/4, D] in the input dtype. ``scale``
    defaults to head_dim ** -0.5. Differentiable in x_q (zero gradient at the
    unsampled tokens), k and v.
    """
    grid_h, grid_w = _grid_ints(grid_hw)
    scale = attention_scale(OP, x_q, num_heads, scale)
    out, _ = qd_attention_op(x_q, k, v, grid_h, grid_w, num_heads, scale)
    return out
