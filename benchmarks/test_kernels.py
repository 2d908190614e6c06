"""ATM cross-attention benchmarks: fused Triton kernel vs eager reference vs SDPA + matmul.

On CUDA at the ViT-L (and ViT-B) ADE20K 640 decoder shapes, fp16: B=8 images,
N=150 classes, L=40·40=1600 tokens, D=512 with 16 heads (ViT-B: 384, 12).
On CPU a tiny shape through the Triton interpreter, only to keep the file working.

Forward group ``atm-fwd-*``: ``reference`` (segvit_rt.ops.reference, eager),
``sdpa+matmul`` (``scaled_dot_product_attention`` for out, one ``baddbmm`` for
the mask: scale/H·q·kᵀ over the full width is the head-mean of the per-head
logits), ``fused``, and ``plugin-kernel``: the fused forward as the TensorRT
plugin runs it (fixed tactic 2, ``prev_mask`` added by a separate op as in the
plugin graph), against ``fused``. On a GPU the forward calls cycle through six
input sets, more than the card's L2 cache holds, so the GB/s are memory's, not
the cache's. Backward group ``atm-bwd-*``: the reference's autograd vs the fused
backward, for the gradients of out and mask. Both run with a ``prev_mask``, as
every decoder layer after the first does.
"""
import functools
import itertools

import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import DEVICE, assert_near, measure, pick, tensor_bytes
from segvit_rt.kernels import atm_attention_aot
from segvit_rt.kernels.atm_attention import atm_attention
from segvit_rt.ops import reference

SHAPES = pick(
    cpu={"tiny": (1, 20, 64, 64, 2)},
    cuda={"vit-l": (8, 150, 1600, 512, 16), "vit-b": (8, 150, 1600, 384, 12)},
)
DTYPE = pick(cpu=torch.float32, cuda=torch.float16)


def sdpa_plus_matmul(q, k, v, num_heads, prev_mask):
    """Best unfused alternative: fused SDPA for out, one batched GEMM (+prev_mask) for the mask."""
    b, n, d = q.shape
    hd = d // num_heads
    qh, kh, vh = (t.unflatten(-1, (num_heads, hd)).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, d)
    mask = torch.baddbmm(prev_mask, q, k.transpose(1, 2), alpha=hd**-0.5 / num_heads)
    return out, mask


def fused(q, k, v, num_heads, prev_mask):
    return atm_attention(q, k, v, num_heads, prev_mask=prev_mask)


FORWARD = {
    "reference": lambda q, k, v, h, prev: reference.atm_attention(q, k, v, h, prev_mask=prev),
    "sdpa+matmul": sdpa_plus_matmul,
    "fused": fused,
    "plugin-kernel": lambda q, k, v, h, prev: plugin_kernel_plus_prev(q, k, v, h, prev),
}
BACKWARD = {"reference": FORWARD["reference"], "fused": FORWARD["fused"]}
# Variants each one is compared with (measured before it: parametrize order).
FORWARD_BASELINES = {
    "reference": None, "sdpa+matmul": "reference",
    "fused": ["reference", "sdpa+matmul"], "plugin-kernel": "fused",
}


def plugin_kernel_plus_prev(q, k, v, num_heads, prev_mask):
    out, mask = atm_attention_aot.launch(q, k, v, num_heads, tactic=2)
    return out, mask + prev_mask


# Input sets the timed forward calls cycle through: one set of the ViT-L shape (~31 MB in fp16) fits
# in an H100's 50 MB L2, so back-to-back calls on it would read from cache, not from memory.
INPUT_SETS = pick(cpu=1, cuda=6)


@functools.cache
def forward_inputs(shape_name: str) -> list[tuple]:
    """The forward benchmarks' input sets of a shape, made once for all variants (read only)."""
    return [make_inputs(SHAPES[shape_name], seed=i) for i in range(INPUT_SETS)]


def make_inputs(shape, requires_grad=False, seed=0):
    b, n, length, d, _ = shape
    gen = torch.Generator().manual_seed(seed)

    def rand(*size):
        return torch.randn(*size, generator=gen).to(DEVICE, DTYPE).requires_grad_(requires_grad)

    return rand(b, n, d), rand(b, length, d), rand(b, length, d), rand(b, n, length)


def attention_flops(shape):
    b, n, length, d, _ = shape
    return 4.0 * b * n * length * d  # q·kᵀ and p·v over all heads


@pytest.mark.parametrize("variant", list(FORWARD))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_atm_forward(benchmark, shape_name, variant):
    shape = SHAPES[shape_name]
    sets = forward_inputs(shape_name)
    q, k, v, prev = sets[0]
    turns = itertools.cycle(sets)

    def call():
        q, k, v, prev = next(turns)
        return FORWARD[variant](q, k, v, shape[-1], prev)

    with torch.no_grad():
        out, mask = FORWARD[variant](q, k, v, shape[-1], prev)
        for got, want in zip((out, mask), FORWARD["reference"](q, k, v, shape[-1], prev)):
            assert_near(got, want)
        measure(
            benchmark,
            call,
            group=f"atm-fwd-{shape_name}",
            name=variant,
            baseline=FORWARD_BASELINES[variant],
            bytes_moved=tensor_bytes(q, k, v, prev, out, mask),
            flops=attention_flops(shape),
        )


@pytest.mark.parametrize("variant", list(BACKWARD))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_atm_backward(benchmark, shape_name, variant):
    shape = SHAPES[shape_name]
    inputs = make_inputs(shape, requires_grad=True)
    out, mask = BACKWARD[variant](*inputs[:3], shape[-1], inputs[3])
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(out.shape, generator=gen).to(DEVICE, DTYPE)
    dmask = torch.randn(mask.shape, generator=gen).to(DEVICE, DTYPE)

    def backward():
        return torch.autograd.grad((out, mask), inputs, (dout, dmask), retain_graph=True)

    grads = backward()
    if variant != "reference":
        ref_out, ref_mask = BACKWARD["reference"](*inputs[:3], shape[-1], inputs[3])
        for got, want in zip(grads, torch.autograd.grad((ref_out, ref_mask), inputs, (dout, dmask))):
            assert_near(got, want)
    measure(
        benchmark,
        backward,
        group=f"atm-bwd-{shape_name}",
        name=variant,
        baseline=None if variant == "reference" else "reference",
        # reads q, k, v, out, dout, dmask; writes dq, dk, dv, dprev (lse is negligible)
        bytes_moved=tensor_bytes(*inputs[:3], out, dout, dmask, *grads),
        flops=2.5 * attention_flops(shape),  # recomputed q·kᵀ, dv, dp, dq, dk
    )
