"""Fused QD attention against gather + ``scaled_dot_product_attention`` (flash on CUDA).

Real shape on a GPU: ViT-L at 640 (B = 8, 40×40 grid so L = 1600 → 400
queries, D = 1024, 16 heads, fp16), q/k/v as views of one fused qkv projection
as the backbone makes them. On CPU a tiny shape runs through the Triton
interpreter (the timings then only show the benchmark works).

Recorded per variant in ``extra_info`` (see ``benchmarks/harness.py``): GB/s,
TFLOP/s and the speedup over ``gather+sdpa``. The fused forward also records
``fraction_of_matmul_peak``: its attention TFLOP/s over the fp16 matmul
TFLOP/s measured by ``test_matmul_peak`` earlier in the same run (the issue's
goal is >= 0.5, and >= 1.15x over the baseline).

FLOPs follow ``benchmarks/test_kernels.py``: 2 matmuls in the forward (Q·Kᵀ,
P·V), 5 in the backward (recomputed Q·Kᵀ, dV, dP, dQ, dK). The backward group
times ``torch.autograd.grad`` of a retained graph, as the ATM benchmark does.
"""
import pytest
import torch

from benchmarks.harness import DEVICE, ON_CUDA, assert_near, measure, pick, tensor_bytes
from segvit_rt.kernels.qd_attention import qd_attention
from segvit_rt.ops import reference

SHAPE = pick(cpu=dict(b=1, h=8, w=8, heads=2, d=64), cuda=dict(b=8, h=40, w=40, heads=16, d=1024))
DTYPE = pick(cpu=torch.float32, cuda=torch.float16)
VARIANTS = ["gather+sdpa", "fused"]  # baseline first: the harness divides by it
_PEAK_TFLOPS: dict[str, float] = {}


def _qkv(requires_grad=False):
    b, h, w, d = SHAPE["b"], SHAPE["h"], SHAPE["w"], SHAPE["d"]
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(b, h * w, 3 * d, generator=g).to(device=DEVICE, dtype=DTYPE)
    return qkv.requires_grad_(requires_grad)


# The unfused path, which is the reference: copy out the stride-2 queries, then PyTorch's SDPA.
gather_sdpa = reference.qd_attention


def _sdpa_backend():
    """Pin the flash backend on CUDA (the issue's baseline); any backend on CPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.FLASH_ATTENTION if ON_CUDA else SDPBackend.MATH)


def _variant(name):
    return qd_attention if name == "fused" else gather_sdpa


def _counts(backward):
    """(compulsory bytes, FLOPs) of one forward or one backward call."""
    b, h, w, d = SHAPE["b"], SHAPE["h"], SHAPE["w"], SHAPE["d"]
    seq_k, seq_q = h * w, h * w // 4
    item = torch.finfo(DTYPE).bits // 8
    forward_flops = 4.0 * b * seq_q * seq_k * d  # q·kᵀ and p·v over all heads
    if not backward:  # reads the sampled queries, k, v; writes out
        return b * (2 * seq_q + 2 * seq_k) * d * item, forward_flops
    # reads the sampled queries, k, v, out, dout; writes dx_q, dk, dv
    return b * (3 * seq_q + 5 * seq_k) * d * item, 2.5 * forward_flops  # recomputed q·kᵀ, dv, dp, dq, dk


def test_matmul_peak(benchmark):
    """The card's fp16 matrix throughput, measured in this run (the fused kernel's yardstick)."""
    n = pick(cpu=256, cuda=8192)
    dtype = pick(cpu=torch.float32, cuda=torch.float16)
    a, b = (torch.randn(n, n, device=DEVICE, dtype=dtype) for _ in range(2))
    out = measure(benchmark, lambda: a @ b, group="matmul-peak", name="torch.matmul",
                  bytes_moved=tensor_bytes(a, b, a), flops=2 * n**3)
    assert out.shape == (n, n)
    if "tflops" in benchmark.extra_info:
        _PEAK_TFLOPS["matmul"] = benchmark.extra_info["tflops"]


def _baseline(variant):
    return None if variant == VARIANTS[0] else VARIANTS[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_qd_forward(benchmark, variant):
    x_q, k, v = _qkv().split(SHAPE["d"], -1)
    grid_hw, heads = (SHAPE["h"], SHAPE["w"]), SHAPE["heads"]
    fn = _variant(variant)
    bytes_moved, flops = _counts(backward=False)
    with torch.no_grad(), _sdpa_backend():
        # checked before timing: a wrong result must not reach the JSON as a speedup
        torch.testing.assert_close(fn(x_q, k, v, grid_hw, heads).float(),
                                   gather_sdpa(x_q, k, v, grid_hw, heads).float(), atol=1e-2, rtol=1e-2)
        measure(benchmark, lambda: fn(x_q, k, v, grid_hw, heads), group="qd-attention-fwd", name=variant,
                baseline=_baseline(variant), bytes_moved=bytes_moved, flops=flops)
    info = benchmark.extra_info
    if variant == "fused" and "tflops" in info and "matmul" in _PEAK_TFLOPS:
        info["fraction_of_matmul_peak"] = info["tflops"] / _PEAK_TFLOPS["matmul"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_qd_backward(benchmark, variant):
    qkv = _qkv(requires_grad=True)
    x_q, k, v = qkv.split(SHAPE["d"], -1)
    with _sdpa_backend():
        out = _variant(variant)(x_q, k, v, (SHAPE["h"], SHAPE["w"]), SHAPE["heads"])
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, DTYPE)

    def backward():
        return torch.autograd.grad(out, (x_q, k, v), dout, retain_graph=True)

    with _sdpa_backend():
        expected = gather_sdpa(x_q, k, v, (SHAPE["h"], SHAPE["w"]), SHAPE["heads"])
    for got, want in zip(backward(), torch.autograd.grad(expected, (x_q, k, v), dout)):  # before timing
        assert_near(got, want)
    bytes_moved, flops = _counts(backward=True)
    measure(benchmark, backward, group="qd-attention-bwd", name=variant,
            baseline=_baseline(variant), bytes_moved=bytes_moved, flops=flops)
