"""Fused QD attention (``segvit_rt::qd_attention``) against the float64 reference.

Without CUDA the kernels run through the Triton interpreter on CPU tensors
(small shapes; grids whose L/4 and L are not multiples of the 16-wide
interpreter blocks exercise the masked tails). The real ViT-L shape runs under
``@pytest.mark.gpu``.
"""
import importlib

import pytest
import torch
from tuning_keys import recorded_keys

from segvit_rt.kernels.qd_attention import (
    _reference_backward,
    _reference_forward,
    launch_backward,
    launch_forward,
    qd_attention,
    qd_attention_op,
)
from segvit_rt.ops import reference

qd_module = importlib.import_module("segvit_rt.kernels.qd_attention")

# (atol, rtol) of the output and of the gradients against float64, per input dtype.
TOL = {
    torch.float32: ((2e-5, 1e-4), (1e-4, 1e-3)),
    torch.float16: ((3e-3, 3e-3), (6e-3, 1e-2)),
    torch.bfloat16: ((2e-2, 2e-2), (5e-2, 5e-2)),
}
# (B, h, w, heads, head_dim): L/4 = 15 and 9 leave tails of the 16-row blocks, L = 60/36 of the key blocks.
SHAPES = [(2, 6, 10, 2, 16), (1, 6, 6, 1, 32), (1, 8, 4, 2, 64), (1, 4, 6, 1, 128)]


def _fused_qkv(b, length, d, dtype, device, seed=0):
    """One fused projection output [B, L, 3D] and its strided q/k/v views (as the backbone makes them)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, length, 3 * d, generator=g).to(device=device, dtype=dtype)
    return qkv


def _reference64(qkv, d, grid_hw, num_heads, dout=None):
    """Reference output and (with ``dout``) the gradient of the fused qkv, all in float64."""
    qkv64 = qkv.detach().double().requires_grad_(dout is not None)
    out = reference.qd_attention(*qkv64.split(d, -1), grid_hw, num_heads)
    if dout is None:
        return out, None
    out.backward(dout.double())
    return out, qkv64.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b, h, w, heads, head_dim", SHAPES)
def test_forward_and_gradients_match_float64_reference(device, dtype, b, h, w, heads, head_dim):
    d = heads * head_dim
    qkv = _fused_qkv(b, h * w, d, dtype, device).requires_grad_()
    x_q, k, v = qkv.split(d, -1)  # strided views: no copies on the way in
    out = qd_attention(x_q, k, v, (h, w), heads)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    out.backward(dout)

    ref, ref_grad = _reference64(qkv, d, (h, w), heads, dout)
    (atol, rtol), (gatol, grtol) = TOL[dtype]
    assert out.shape == (b, h * w // 4, d) and out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(qkv.grad.double(), ref_grad, atol=gatol, rtol=grtol)
    # x_q's gradient is exactly zero at the tokens that are not queries (odd row or column).
    grad_xq = qkv.grad[..., :d].reshape(b, h, w, d)
    sampled = torch.zeros(h, w, dtype=torch.bool, device=device)
    sampled[::2, ::2] = True
    assert torch.count_nonzero(grad_xq[:, ~sampled]) == 0
    assert torch.count_nonzero(grad_xq[:, sampled]) > 0


def test_separate_tensors_with_odd_strides(device):
    """Contiguous, transposed-storage and sliced inputs are read through their strides."""
    b, h, w, heads, head_dim = 2, 4, 6, 2, 16
    d, length = heads * head_dim, h * w
    g = torch.Generator().manual_seed(3)
    x_q = torch.randn(b, d, length, generator=g).to(device).transpose(1, 2)  # last-dim stride L
    k = torch.randn(b, length, d, generator=g).to(device)
    v = torch.randn(b, length, 2 * d, generator=g).to(device)[..., ::2]  # last-dim stride 2
    for t in (x_q, k, v):
        t.requires_grad_()
    out = qd_attention(x_q, k, v, (h, w), heads, scale=0.3)
    out.sum().backward()

    leaves = [t.detach().double().requires_grad_() for t in (x_q, k, v)]
    ref = reference.qd_attention(*leaves, (h, w), heads, scale=0.3)
    ref.sum().backward()
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    for got, want in zip((x_q, k, v), leaves):
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-4, rtol=1e-3)


def test_poisoned_buffers_are_fully_written(device):
    """Every element of out/lse and of all three gradients is written, tails included."""
    b, h, w, heads, head_dim = 2, 6, 10, 2, 16
    d, grid_hw, scale = heads * head_dim, (h, w), head_dim**-0.5
    x_q, k, v = _fused_qkv(b, h * w, d, torch.float32, device).split(d, -1)
    out = torch.full((b, h * w // 4, d), float("nan"), device=device)
    lse = torch.full((b, heads, h * w // 4), float("nan"), device=device)
    launch_forward(x_q, k, v, grid_hw, heads, scale, out, lse)
    ref_out, ref_lse = _reference_forward(x_q.double(), k.double(), v.double(), grid_hw, heads, scale)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-5, rtol=1e-5)

    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device)
    grads = [torch.full(x_q.shape, float("nan"), device=device) for _ in range(3)]
    launch_backward(dout, x_q, k, v, out, lse, grid_hw, heads, scale, *grads)
    want = _reference_backward(dout.double(), x_q.double(), k.double(), v.double(), grid_hw, heads, scale)
    for got, ref in zip(grads, want):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-3)


def test_tuned_configs_are_shared_by_grids_of_one_power_of_two_range(monkeypatch):
    """The autotuning key holds the token count's power-of-two range, not the grid: images of many
    sizes tune once per range on a GPU."""
    def keys(h, w):
        d, heads = 32, 2
        x_q, k, v = _fused_qkv(1, h * w, d, torch.float32, "cpu").split(d, -1)
        out, lse = torch.empty(1, h * w // 4, d), torch.empty(1, heads, h * w // 4)

        def launch():
            launch_forward(x_q, k, v, (h, w), heads, 0.25, out, lse)
            launch_backward(out, x_q, k, v, out, lse, (h, w), heads, 0.25, *(torch.empty_like(x_q) for _ in "qkv"))

        return recorded_keys(monkeypatch, qd_module, launch)

    assert set(keys(6, 10)) == {"_qd_fwd_kernel", "_qd_bwd_dkdv_kernel", "_qd_bwd_dq_kernel"}
    assert keys(6, 10) == keys(10, 6) == keys(8, 8) != keys(8, 10)


def test_backward_is_deterministic(device):
    b, h, w, heads, head_dim = 1, 6, 10, 2, 16
    d = heads * head_dim
    dout = torch.randn(b, h * w // 4, d, generator=torch.Generator().manual_seed(5)).to(device)
    grads = []
    for _ in range(2):
        qkv = _fused_qkv(b, h * w, d, torch.float32, device).requires_grad_()
        qd_attention(*qkv.split(d, -1), (h, w), heads).backward(dout)
        grads.append(qkv.grad)
    assert torch.equal(grads[0], grads[1])


def test_reference_fallback_matches_autograd(monkeypatch):
    """The CPU path without the interpreter: reference forward, closed-form backward."""
    monkeypatch.setattr(qd_module, "runs_triton", lambda t: False)
    b, h, w, heads, d = 2, 4, 6, 3, 24  # head_dim 8: the fallback has no head_dim limit
    qkv = _fused_qkv(b, h * w, d, torch.float32, "cpu").requires_grad_()
    out = qd_attention(*qkv.split(d, -1), (h, w), heads)
    dout = torch.randn_like(out)
    out.backward(dout)
    ref, ref_grad = _reference64(qkv, d, (h, w), heads, dout)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(qkv.grad.double(), ref_grad, atol=1e-4, rtol=1e-3)


def test_dispatcher_routes_to_the_fused_op(device, monkeypatch):
    """``segvit_rt.ops.qd_attention(impl="triton")`` is what the Shrunk backbone calls: it runs the
    kernel, whose output it returns."""
    from segvit_rt import ops

    launches = []
    real_launch = qd_module.launch_forward
    monkeypatch.setattr(qd_module, "launch_forward", lambda *a, **kw: launches.append(1) or real_launch(*a, **kw))
    b, h, w, heads, d = 1, 4, 4, 2, 32
    x_q, k, v = _fused_qkv(b, h * w, d, torch.float32, device).split(d, -1)
    fused = ops.qd_attention(x_q, k, v, (h, w), heads, impl="triton")
    assert launches == [1]
    torch.testing.assert_close(fused, ops.qd_attention(x_q, k, v, (h, w), heads), atol=2e-5, rtol=1e-4)


def test_the_raw_ops_lse_is_not_differentiable(device):
    """The op's second output is the softmax statistic its backward reuses: it takes no gradient
    (one through it would be dropped silently)."""
    x = torch.randn(1, 16, 32, device=device, requires_grad=True)
    out, lse = qd_attention_op(x, x, x, 4, 4, 2, 0.25)
    assert out.requires_grad and not lse.requires_grad


def test_opcheck_and_export(device):
    """Schema, fake impl and autograd registration pass torch's op checks; torch.export keeps one op node."""
    b, h, w, heads, d = 1, 4, 6, 2, 32
    qkv = _fused_qkv(b, h * w, d, torch.float32, device).requires_grad_()
    torch.library.opcheck(qd_attention_op, (*qkv.split(d, -1), h, w, heads, 0.25))

    class QDBlock(torch.nn.Module):
        def forward(self, qkv):
            return qd_attention(*qkv.split(d, -1), (h, w), heads)

    x = qkv.detach()
    exported = torch.export.export(QDBlock(), (x,))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert "segvit_rt.qd_attention.default" in targets
    torch.testing.assert_close(exported.module()(x), QDBlock()(x))


@pytest.mark.parametrize(
    "args, error, match",
    [
        (dict(grid_hw=(5, 4), shape=(1, 20, 32)), ValueError, "even token grid"),
        (dict(grid_hw=(-4, -4)), ValueError, "grid_hw must be positive, got -4x-4"),
        (dict(grid_hw=(4, 4), shape=(1, 20, 32)), ValueError, "does not match the grid"),
        (dict(grid_hw=(4, 4), shape=(1, 16, 33)), ValueError, "not divisible by num_heads"),
        (dict(grid_hw=(4, 4), shape=(1, 16, 48)), ValueError, "power of two"),
        (dict(grid_hw=(4, 4), dtype=torch.float64), TypeError, "dtype"),
        (dict(grid_hw=(4, 4), dtype=torch.int32), TypeError, "dtype"),
        (dict(grid_hw=(4, 4), k_shape=(1, 16, 64)), ValueError, "k must have shape"),
        (dict(grid_hw=(4, 4), x_ndim=2), ValueError, "x_q must be 3-D"),
        (dict(grid_hw=4), ValueError, "grid_hw must be two ints"),
        (dict(grid_hw=(4.5, 4)), ValueError, r"grid_hw must be two ints \(h, w\)"),
        (dict(grid_hw=(4, 4), num_heads=0), ValueError, "num_heads must be a positive int"),
    ],
)
def test_bad_inputs_raise_clear_errors(device, args, error, match):
    shape = args.get("shape", (1, 16, 32))
    dtype = args.get("dtype", torch.float32)
    x_q = torch.zeros(shape, device=device).to(dtype)
    k = torch.zeros(args.get("k_shape", shape), device=device).to(dtype)
    v = torch.zeros(shape, device=device).to(dtype)
    if args.get("x_ndim") == 2:
        x_q = x_q[0]
    with pytest.raises(error, match=match):
        qd_attention(x_q, k, v, args["grid_hw"], args.get("num_heads", 2))


def test_mixed_dtypes_raise(device):
    x = torch.zeros(1, 16, 32, device=device)
    with pytest.raises(TypeError, match="share one dtype"):
        qd_attention(x, x.half(), x, (4, 4), 2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_vit_l_640_shape_on_gpu(dtype):
    """ViT-L at 640: 40×40 grid, D = 1024, 16 heads, q/k/v views of one qkv projection."""
    b, h, w, heads, d = 2, 40, 40, 16, 1024
    qkv = _fused_qkv(b, h * w, d, dtype, "cuda").requires_grad_()
    out = qd_attention(*qkv.split(d, -1), (h, w), heads)
    dout = torch.randn_like(out)
    out.backward(dout)
    ref, ref_grad = _reference64(qkv, d, (h, w), heads, dout)
    (atol, rtol), (gatol, grtol) = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(qkv.grad.double(), ref_grad, atol=gatol, rtol=grtol)


def test_more_batch_heads_than_a_launch_grid_takes_is_a_clear_error(device):
    x = torch.zeros(1, 4, 64, device=device).expand(16385, 4, 64)  # 16385 x 4 heads > 65535
    with pytest.raises(ValueError, match="at most 65535 \\(image, head\\) pairs per call, got 65540"):
        qd_attention(x, x, x, (2, 2), 4)


def test_torch_compile_with_every_size_symbolic_matches_eager(device):
    """``dynamic=True``: the default scale is symbolic there, and must not break the graph."""
    class QD(torch.nn.Module):
        def forward(self, x, k, v):
            return qd_attention(x, k, v, (4, 6), 2)

    gen = torch.Generator().manual_seed(0)
    x, k, v = (torch.randn(2, 24, 64, generator=gen).to(device) for _ in range(3))
    out = torch.compile(QD(), fullgraph=True, dynamic=True)(x, k, v)
    torch.testing.assert_close(out, qd_attention(x, k, v, (4, 6), 2), atol=1e-5, rtol=1e-5)
