"""Fused ATM cross-attention kernel vs the float64 reference.

Without CUDA every test runs the real Triton kernels through the interpreter
(``conftest.py`` sets ``TRITON_INTERPRET=1``), at small sizes that still cover
query/key tails, odd head counts and batches; ``@pytest.mark.gpu`` tests use the real
ViT-B/ViT-L ADE20K-640 shapes.
"""
import importlib
import os
import tempfile

import pytest
import torch
import triton
from tuning_keys import recorded_keys

from segvit_rt import ops
from segvit_rt.kernels.atm_attention import atm_attention, atm_attention_op, launch_backward, launch_forward
from segvit_rt.ops import reference

atm_module = importlib.import_module("segvit_rt.kernels.atm_attention")

# (atol, rtol) against float64, by input dtype.
TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 2e-2),
}
DTYPES = list(TOL)
DTYPE_IDS = ["fp32", "fp16", "bf16"]

# (B, N, L, D, H): N in {1, 60, 150, 171} and L in {1, 37, 1600, 1601}; head_dim 32, 64 and 128;
# odd head counts and 3 images (where the forward grid's attention rows end and its mask rows
# begin). Big L only with small N (interpreter time).
FWD_SHAPES = [
    (2, 1, 37, 64, 2),
    (2, 60, 37, 64, 2),
    (1, 150, 1, 128, 2),
    (1, 171, 37, 512, 16),
    (1, 60, 33, 96, 3),
    (3, 5, 70, 96, 3),
    (1, 1, 1600, 64, 1),
    (1, 2, 1601, 128, 2),
    (1, 19, 37, 256, 2),
]
BWD_SHAPES = [
    (2, 60, 37, 64, 2),
    (1, 1, 1, 32, 1),
    (1, 171, 37, 128, 2),
    (1, 17, 33, 96, 3),
    (2, 19, 37, 256, 2),
]
# (prev_mask, sigmoid_mask)
MODES = [(False, False), (True, False), (True, True), (False, True)]
MODE_IDS = ["plain", "prev", "prev-sigmoid", "sigmoid"]


def shape_id(s):
    return "B{}-N{}-L{}-D{}-H{}".format(*s)


def make_inputs(shape, dtype, device, prev=False, seed=0):
    """Random non-zero q, k, v (and prev_mask) in ``dtype`` on ``device``."""
    b, n, length, d, _ = shape
    gen = torch.Generator().manual_seed(seed)

    def rand(*size):
        return torch.randn(*size, generator=gen).to(dtype=dtype, device=device)

    q, k, v = rand(b, n, d), rand(b, length, d), rand(b, length, d)
    return q, k, v, (rand(b, n, length) if prev else None)


def reference64(q, k, v, num_heads, prev_mask=None, **kw):
    f64 = [t.detach().double() if t is not None else None for t in (q, k, v, prev_mask)]
    return reference.atm_attention(*f64[:3], num_heads, prev_mask=f64[3], **kw)


def logsumexp64(q, k, num_heads):
    b, n, d = q.shape
    qh = q.double().reshape(b, n, num_heads, -1).transpose(1, 2)
    kh = k.double().reshape(b, k.shape[1], num_heads, -1).transpose(1, 2)
    return (qh @ kh.transpose(-2, -1) * (d // num_heads) ** -0.5).logsumexp(-1)


def assert_close64(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected, atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", FWD_SHAPES, ids=shape_id)
def test_forward_writes_every_element_and_matches_reference(shape, dtype, mode, device):
    check_forward_into_poisoned_buffers(shape, dtype, mode, device)


def check_forward_into_poisoned_buffers(shape, dtype, mode, device):
    """``launch_forward`` into NaN-filled buffers: every element written, each matching float64."""
    has_prev, sigmoid = mode
    q, k, v, prev = make_inputs(shape, dtype, device, prev=has_prev)
    b, n, length, d, heads = shape
    out = torch.full((b, n, d), float("nan"), dtype=dtype, device=device)
    mask = torch.full((b, n, length), float("nan"), dtype=dtype, device=device)
    lse = torch.full((b, heads, n), float("nan"), device=device)

    launch_forward(q, k, v, heads, (d // heads) ** -0.5, prev, sigmoid, out, mask, lse)

    ref_out, ref_mask = reference64(q, k, v, heads, prev_mask=prev, sigmoid_mask=sigmoid)
    assert_close64(out, ref_out, dtype, "out")
    assert_close64(mask, ref_mask, dtype, "mask")
    torch.testing.assert_close(lse.double(), logsumexp64(q, k, heads), atol=1e-4, rtol=1e-4)


def test_forward_without_a_mask_writes_out_and_lse(device):
    """Without a mask the grid has attention rows only."""
    shape = (2, 17, 200, 64, 2)
    q, k, v, _ = make_inputs(shape, torch.float16, device)
    out, lse = torch.full_like(q, float("nan")), torch.full((2, 2, 17), float("nan"), device=device)
    launch_forward(q, k, v, 2, 32**-0.5, None, False, out, None, lse)
    assert_close64(out, reference64(q, k, v, 2)[0], torch.float16, "out")
    torch.testing.assert_close(lse.double(), logsumexp64(q, k, 2), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_op_matches_reference_with_explicit_scale(dtype, device):
    shape = (2, 60, 37, 64, 2)
    q, k, v, prev = make_inputs(shape, dtype, device, prev=True, seed=1)
    out, mask = atm_attention(q, k, v, 2, scale=0.3, prev_mask=prev)
    ref_out, ref_mask = reference64(q, k, v, 2, prev_mask=prev, scale=0.3)
    assert out.dtype == mask.dtype == dtype
    assert_close64(out, ref_out, dtype, "out")
    assert_close64(mask, ref_mask, dtype, "mask")


def test_need_mask_false_returns_no_mask_and_same_out(device):
    q, k, v, prev = make_inputs((2, 60, 37, 64, 2), torch.float16, device, prev=True)
    out, mask = atm_attention(q, k, v, 2, prev_mask=prev, need_mask=False)
    full_out, _ = atm_attention(q, k, v, 2, prev_mask=prev)
    assert mask is None
    torch.testing.assert_close(out, full_out, atol=0, rtol=0)


def test_mask_dtype_promotes_with_prev_mask(device):
    q, k, v, _ = make_inputs((1, 60, 37, 64, 2), torch.float16, device)
    prev = torch.randn(1, 60, 37, device=device)  # fp32 running sum with fp16 activations
    out, mask = atm_attention(q, k, v, 2, prev_mask=prev)
    ref_out, ref_mask = reference.atm_attention(q, k, v, 2, prev_mask=prev)
    assert (out.dtype, mask.dtype) == (ref_out.dtype, ref_mask.dtype) == (torch.float16, torch.float32)
    assert_close64(mask, reference64(q, k, v, 2, prev_mask=prev)[1], torch.float16, "mask")


def test_mixed_dtype_backward_gives_each_input_its_own_dtype(device):
    """AMP training with fused kernels: fp16 q/k/v and an fp32 running ``prev_mask``. The gradients
    come back in each input's dtype and match the float64 reference."""
    q, k, v, _ = make_inputs((2, 21, 37, 64, 2), torch.float16, device)
    prev = torch.randn(2, 21, 37, generator=torch.Generator().manual_seed(4)).to(device)
    inputs = [t.requires_grad_() for t in (q, k, v, prev)]
    out, mask = atm_attention(*inputs[:3], 2, prev_mask=inputs[3])
    g = torch.Generator().manual_seed(5)
    dout = torch.randn(out.shape, generator=g).to(device=device, dtype=out.dtype)
    dmask = torch.randn(mask.shape, generator=g).to(device=device, dtype=mask.dtype)
    torch.autograd.backward((out, mask), (dout, dmask))
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    ref_out, ref_mask = reference.atm_attention(*leaves[:3], 2, prev_mask=leaves[3])
    torch.autograd.backward((ref_out, ref_mask), (dout.double(), dmask.double()))
    assert [t.grad.dtype for t in inputs] == [torch.float16] * 3 + [torch.float32]
    for name, got, want in zip(("dq", "dk", "dv", "dprev"), inputs, leaves):
        assert_close64(got.grad, want.grad, torch.float16, name)


def test_strided_views_give_identical_results(device):
    """q, k, v as views of fused projections, prev_mask transposed in memory: no copies, same numbers."""
    b, n, length, d, heads = 2, 60, 37, 64, 2
    gen = torch.Generator().manual_seed(3)
    xq = torch.randn(b, n, 2 * d, generator=gen).half().to(device)
    kv = torch.randn(b, length, 3 * d, generator=gen).half().to(device)
    prev_t = torch.randn(b, length, n, generator=gen).half().to(device)
    q, k, v, prev = xq[..., d:], kv[..., :d], kv[..., 2 * d:], prev_t.transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous() or prev.is_contiguous())

    out, mask = atm_attention(q, k, v, heads, prev_mask=prev)
    out_c, mask_c = atm_attention(q.contiguous(), k.contiguous(), v.contiguous(), heads, prev_mask=prev.contiguous())
    torch.testing.assert_close(out, out_c, atol=0, rtol=0)
    torch.testing.assert_close(mask, mask_c, atol=0, rtol=0)


def test_results_are_deterministic(device):
    q, k, v, prev = make_inputs((2, 60, 37, 64, 2), torch.float16, device, prev=True)
    tensors = [t.requires_grad_() for t in (q, k, v, prev)]
    runs = []
    for _ in range(2):
        out, mask = atm_attention(*tensors[:3], 2, prev_mask=tensors[3])
        grads = torch.autograd.grad((out.float().square().sum() + mask.float().sum()), tensors)
        runs.append((out, mask, *grads))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


# ---------------------------------------------------------------------------- backward


def grads_vs_reference(shape, dtype, device, *, prev, sigmoid, need_mask=True, seed=0):
    q, k, v, prev_mask = make_inputs(shape, dtype, device, prev=prev, seed=seed)
    heads = shape[-1]
    inputs = [t.requires_grad_() for t in (q, k, v, prev_mask) if t is not None]
    gen = torch.Generator().manual_seed(seed + 7)
    dout = torch.randn(q.shape, generator=gen).to(dtype=dtype, device=device)
    dmask = torch.randn(shape[0], shape[1], shape[2], generator=gen).to(dtype=dtype, device=device)

    out, mask = atm_attention(q, k, v, heads, prev_mask=prev_mask, sigmoid_mask=sigmoid, need_mask=need_mask)
    outs, seeds = ([out, mask], [dout, dmask]) if need_mask else ([out], [dout])
    grads = torch.autograd.grad(outs, inputs, seeds, allow_unused=True)

    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    q64, k64, v64 = inputs64[:3]
    prev64 = inputs64[3] if prev else None
    ref_out, ref_mask = reference.atm_attention(
        q64, k64, v64, heads, prev_mask=prev64, sigmoid_mask=sigmoid, need_mask=need_mask
    )
    ref_outs = [ref_out, ref_mask] if need_mask else [ref_out]
    ref_grads = torch.autograd.grad(ref_outs, inputs64, [s.double() for s in seeds], allow_unused=True)
    return grads, ref_grads


@pytest.mark.parametrize("mode", MODES[1:3] + [None], ids=["prev", "prev-sigmoid", "no-mask"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", BWD_SHAPES, ids=shape_id)
def test_backward_matches_reference_autograd(shape, dtype, mode, device):
    prev, sigmoid = mode or (True, False)
    grads, ref_grads = grads_vs_reference(shape, dtype, device, prev=prev, sigmoid=sigmoid, need_mask=mode is not None)
    names = ["dq", "dk", "dv", "dprev"]
    for name, grad, ref in zip(names, grads, ref_grads):
        if ref is None:  # prev_mask unused when need_mask=False
            assert grad is None, name
            continue
        assert_close64(grad, ref, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_backward_long_sequence(dtype, device):
    grads, ref_grads = grads_vs_reference((1, 3, 1601, 64, 1), dtype, device, prev=True, sigmoid=False)
    for name, grad, ref in zip(["dq", "dk", "dv", "dprev"], grads, ref_grads):
        assert_close64(grad, ref, dtype, name)


def test_backward_through_sum_uses_expanded_gradients(device):
    """``out.sum()`` hands the backward stride-0 (expanded) gradients."""
    q, k, v, _ = make_inputs((1, 20, 37, 256, 8), torch.float32, device)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    out, mask = atm_attention(*inputs, 8)
    grads = torch.autograd.grad(out.sum() + mask.sum(), inputs)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref_out, ref_mask = reference.atm_attention(*inputs64, 8)
    ref_grads = torch.autograd.grad(ref_out.sum() + ref_mask.sum(), inputs64)
    for name, grad, ref in zip("qkv", grads, ref_grads):
        assert_close64(grad, ref, torch.float32, f"d{name}")


@pytest.mark.parametrize("with_dmask", [True, False], ids=["dmask", "no-dmask"])
def test_backward_kernels_write_every_element(with_dmask, device):
    shape = (2, 60, 37, 64, 2)
    b, n, length, d, heads = shape
    q, k, v, _ = make_inputs(shape, torch.float16, device)
    scale = (d // heads) ** -0.5
    out = torch.empty_like(q)
    lse = torch.empty(b, heads, n, device=device)
    launch_forward(q, k, v, heads, scale, None, False, out, None, lse)
    gen = torch.Generator().manual_seed(5)
    dout = torch.randn(q.shape, generator=gen).half().to(device)
    dmask = torch.randn(b, n, length, generator=gen).half().to(device) if with_dmask else None
    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (q, k, v))

    launch_backward(dout, dmask, q, k, v, out, lse, heads, scale, dq, dk, dv)

    inputs64 = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_mask = reference.atm_attention(*inputs64, heads)
    outs, seeds = [ref_out], [dout.double()]
    if with_dmask:
        outs.append(ref_mask)
        seeds.append(dmask.double())
    for name, grad, ref in zip("qkv", (dq, dk, dv), torch.autograd.grad(outs, inputs64, seeds)):
        assert_close64(grad, ref, torch.float16, f"d{name}")


# ---------------------------------------------------------------------------- launch configs


def test_tuned_configs_are_shared_by_sizes_of_one_power_of_two_range(monkeypatch):
    """Whole-image inference changes L with every image size: the autotuning key holds L's
    power-of-two range, so a GPU tunes once per range (and per mask or no mask), not per size."""
    def keys(length, need_mask=True, dmask=True):
        shape = (1, 5, length, 64, 2)
        q, k, v, _ = make_inputs(shape, torch.float32, "cpu")
        out, lse = torch.empty_like(q), torch.empty(1, 2, 5)
        mask = torch.empty(1, 5, length) if need_mask else None

        def launch():
            launch_forward(q, k, v, 2, 0.2, None, False, out, mask, lse)
            launch_backward(out, torch.ones(1, 5, length) if dmask else None, q, k, v, out, lse, 2, 0.2,
                            *(torch.empty_like(t) for t in (q, k, v)))

        return recorded_keys(monkeypatch, atm_module, launch)

    assert set(keys(37)) == {"_atm_fwd_kernel", "_atm_bwd_dkdv_kernel", "_atm_bwd_dq_kernel"}
    assert keys(37) == keys(50) == keys(64) != keys(65)
    assert keys(37)["_atm_fwd_kernel"] != keys(37, need_mask=False)["_atm_fwd_kernel"]
    assert keys(37)["_atm_bwd_dq_kernel"] != keys(37, dmask=False)["_atm_bwd_dq_kernel"]


# ---------------------------------------------------------------------------- integration


def test_tuned_configs_only_offers_the_chosen_configs_inside_the_block(monkeypatch):
    """What an aoti build on CUDA compiles with (``engines.aoti_backend``): the configs each kernel's
    autotuner chose, not its whole list; a kernel that chose none keeps its list, and all come back."""
    from segvit_rt.kernels import _autotuned_kernels, tuned_configs, tuned_configs_only

    a, b, c = (triton.Config({"BLOCK_N": n, "BLOCK_L": 32}) for n in (16, 32, 64))
    tuned, untuned = atm_module._atm_fwd_kernel, atm_module._atm_bwd_dq_kernel
    monkeypatch.setattr(tuned, "configs", [a, b, c])
    monkeypatch.setattr(tuned, "cache", {("key1",): c, ("key2",): a, ("key3",): c})
    monkeypatch.setattr(untuned, "configs", [a, b])
    monkeypatch.setattr(untuned, "cache", {})
    assert sorted(k.fn.__name__ for k in _autotuned_kernels()) == [
        "_atm_bwd_dkdv_kernel", "_atm_bwd_dq_kernel", "_atm_fwd_kernel", "_postprocess_kernel",
        "_qd_bwd_dkdv_kernel", "_qd_bwd_dq_kernel", "_qd_fwd_kernel",
    ]
    with tuned_configs_only():
        assert tuned.configs == [c, a] and untuned.configs == [a, b]
    assert tuned.configs == [a, b, c] and untuned.configs == [a, b]
    with pytest.raises(RuntimeError, match="compile failed"), tuned_configs_only():
        raise RuntimeError("compile failed")
    assert tuned.configs == [a, b, c]
    listed = [line for line in tuned_configs() if line.startswith("_atm_")]
    assert listed == [f"_atm_fwd_kernel {key}: {config}" for key, config in tuned.cache.items()]


def test_dispatcher_triton_path_runs_the_kernel(device):
    q, k, v, prev = make_inputs((2, 60, 37, 64, 2), torch.float32, device, prev=True)
    out, mask = ops.atm_attention(q, k, v, 2, impl="triton", prev_mask=prev)
    direct_out, direct_mask = atm_attention(q, k, v, 2, prev_mask=prev)
    torch.testing.assert_close(out, direct_out, atol=0, rtol=0)
    torch.testing.assert_close(mask, direct_mask, atol=0, rtol=0)


def test_custom_op_and_fake_impl_on_meta_tensors():
    q = torch.empty(2, 7, 64, dtype=torch.float16, device="meta")
    k = torch.empty(2, 9, 64, dtype=torch.float16, device="meta")
    prev = torch.empty(2, 7, 9, dtype=torch.float32, device="meta")
    out, mask, lse = torch.ops.segvit_rt.atm_attention(q, k, k, 4, 0.25, prev, True, False)
    assert (out.shape, out.dtype) == ((2, 7, 64), torch.float16)
    assert (mask.shape, mask.dtype) == ((2, 7, 9), torch.float32)
    assert (lse.shape, lse.dtype) == ((2, 4, 7), torch.float32)
    _, no_mask, _ = torch.ops.segvit_rt.atm_attention(q, k, k, 4, 0.25, None, False, False)
    assert no_mask.shape == (2, 7, 0)


class _TinyATM(torch.nn.Module):
    def __init__(self, heads=2):
        super().__init__()
        self.heads = heads

    def forward(self, q, k, v, prev):
        return atm_attention(q, k, v, self.heads, prev_mask=prev)


def _tiny_inputs(device):
    return make_inputs((2, 5, 7, 64, 2), torch.float32, device, prev=True, seed=11)


def test_torch_export_keeps_the_custom_op(device):
    args = _tiny_inputs(device)
    program = torch.export.export(_TinyATM(), args)
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.segvit_rt.atm_attention.default in targets
    for got, want in zip(program.module()(*args), reference64(*args[:3], 2, prev_mask=args[3])):
        assert_close64(got, want, torch.float32, "exported")


@pytest.mark.parametrize("dynamic", [None, True], ids=["static", "dynamic"])
def test_torch_compile_forward_and_backward(device, dynamic):
    """Also with every size symbolic (``dynamic=True``), where the default scale is symbolic too."""
    args = _tiny_inputs(device)
    compiled = torch.compile(_TinyATM(), backend="inductor", fullgraph=True, dynamic=dynamic)
    inputs = [t.clone().requires_grad_() for t in args]
    out, mask = compiled(*inputs)
    (out.square().sum() + mask.sum()).backward()
    eager_inputs = [t.clone().requires_grad_() for t in args]
    ref_out, ref_mask = atm_attention(*eager_inputs[:3], 2, prev_mask=eager_inputs[3])
    (ref_out.square().sum() + ref_mask.sum()).backward()
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mask, ref_mask, atol=1e-5, rtol=1e-5)
    for got, want in zip(inputs, eager_inputs):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-5)


def test_the_raw_ops_lse_is_not_differentiable(device):
    """The op's third output is the softmax statistic its backward reuses: it takes no gradient
    (one through it would be dropped silently)."""
    q = torch.randn(1, 3, 32, device=device, requires_grad=True)
    k = torch.randn(1, 5, 32, device=device)
    out, mask, lse = atm_attention_op(q, k, k, 2, 0.25, None, True, False)
    assert out.requires_grad and mask.requires_grad and not lse.requires_grad


@pytest.mark.slow
def test_aoti_package_carries_the_op(device):
    args = _tiny_inputs(device)
    program = torch.export.export(_TinyATM(), args)
    with tempfile.TemporaryDirectory() as tmp:
        path = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(tmp, "atm.pt2"))
        runner = torch._inductor.aoti_load_package(path)
        outputs = runner(*args)
    for got, want in zip(outputs, reference64(*args[:3], 2, prev_mask=args[3])):
        assert_close64(got, want, torch.float32, "aoti")


# ---------------------------------------------------------------------------- bad input


BAD_INPUTS = {  # name: (args from q, k, v, prev (fp16, B=2 N=5 L=7 D=64), error, message)
    "q-2d": (lambda q, k, v, p: (q[0], k, v, 2), ValueError, "q must be 3-D"),
    "k-dim": (lambda q, k, v, p: (q, k[..., :32], v, 2), ValueError, r"k must have shape \(2, 7, 64\)"),
    "v-length": (lambda q, k, v, p: (q, k, v[:, :6], 2), ValueError, r"v must have shape \(2, 7, 64\)"),
    "kv-batch": (
        lambda q, k, v, p: (q, k[:1], v[:1], 2), ValueError, r"k must have shape \(2, 7, 64\).*got \(1, 7, 64\)"
    ),
    "heads-divide": (lambda q, k, v, p: (q, k, v, 3), ValueError, "not divisible by num_heads=3"),
    "heads-zero": (lambda q, k, v, p: (q, k, v, 0), ValueError, "num_heads must be a positive int"),
    "heads-bool": (lambda q, k, v, p: (q, k, v, True), ValueError, "num_heads must be a positive int, got True"),
    "dim-zero": (lambda q, k, v, p: (q[..., :0], k[..., :0], v[..., :0], 2), ValueError, "head_dim .* got 0"),
    "head-dim-12": (
        lambda q, k, v, p: (q[..., :48], k[..., :48], v[..., :48], 4), ValueError, "head_dim a power of two"
    ),
    "dtype-mix": (lambda q, k, v, p: (q, k.float(), v, 2), TypeError, "share one dtype"),
    "int-dtype": (lambda q, k, v, p: (q.int(), k, v, 2), TypeError, "q must have dtype in"),
    "strided-last-dim": (
        lambda q, k, v, p: (q, k.transpose(1, 2).contiguous().transpose(1, 2), v, 2), ValueError, "contiguous last dim"
    ),
    "prev-shape": (lambda q, k, v, p: (q, k, v, 2, None, p[:, :, :6]), ValueError, r"prev_mask must have shape"),
    "prev-device": (lambda q, k, v, p: (q, k, v, 2, None, p.to("meta")), ValueError, "share one device"),
    "scale-nan": (lambda q, k, v, p: (q, k, v, 2, float("nan")), ValueError, "scale must be finite"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(case, device):
    build, error, message = BAD_INPUTS[case]
    args = build(*make_inputs((2, 5, 7, 64, 2), torch.float16, device, prev=True))
    with pytest.raises(error, match=message):
        atm_attention(*args)


# ---------------------------------------------------------------------------- real shapes (GPU)

REAL_SHAPES = [(8, 150, 1600, 512, 16), (8, 150, 1600, 384, 12)]  # ViT-L / ViT-B decoders, ADE20K 640


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", REAL_SHAPES, ids=["vit-l", "vit-b"])
def test_real_shapes_forward(shape, dtype, device):
    q, k, v, prev = make_inputs(shape, dtype, device, prev=True)
    out, mask = atm_attention(q, k, v, shape[-1], prev_mask=prev)
    ref_out, ref_mask = reference64(q, k, v, shape[-1], prev_mask=prev)
    assert_close64(out, ref_out, dtype, "out")
    assert_close64(mask, ref_mask, dtype, "mask")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", REAL_SHAPES + [(2, 171, 4096, 512, 16)], ids=["vit-l", "vit-b", "L4096"])
def test_real_shapes_backward(shape, dtype, device):
    grads, ref_grads = grads_vs_reference(shape, dtype, device, prev=True, sigmoid=False)
    for name, grad, ref in zip(["dq", "dk", "dv", "dprev"], grads, ref_grads):
        assert_close64(grad, ref, dtype, name)


@pytest.mark.gpu
def test_real_shape_torch_compile_matches_eager(device):
    q, k, v, prev = make_inputs(REAL_SHAPES[0], torch.float16, device, prev=True)
    compiled = torch.compile(_TinyATM(16), backend="inductor", fullgraph=True)
    out, mask = compiled(q, k, v, prev)
    eager_out, eager_mask = atm_attention(q, k, v, 16, prev_mask=prev)
    torch.testing.assert_close(out, eager_out, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(mask, eager_mask, atol=2e-3, rtol=2e-3)



def test_views_spreading_an_image_beyond_int32_offsets_are_refused():
    """The kernels reach an image's elements with int32 offsets: a sequence-first view over a big
    batch (row stride 131072) with 16386 keys would wrap; its contiguous copy is fine. Fake tensors
    give the strides without the 4 GiB."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, 3, 32, dtype=torch.float16)
        far = torch.empty_strided((1, 16386, 32), (0, 131072, 1), dtype=torch.float16)
        near = torch.empty_strided((1, 16384, 32), (0, 131072, 1), dtype=torch.float16)
        atm_module._check_inputs(q, near, near, 2, None, True, triton_path=True)
        with pytest.raises(ValueError, match=r"k \(shape \(1, 16386, 32\), strides \(0, 131072, 1\)\) spreads one "
                                             r"image over 2147614752 elements, .* pass k.contiguous\(\)"):
            atm_module._check_inputs(q, far, far, 2, None, True, triton_path=True)
        with pytest.raises(ValueError, match="prev_mask .* int32 offsets"):
            prev = torch.empty_strided((1, 3, 16386), (0, 1, 131072), dtype=torch.float16)
            keys = torch.empty(1, 16386, 32, dtype=torch.float16)  # contiguous: only prev_mask spreads too far
            atm_module._check_inputs(q, keys, keys, 2, prev, True, triton_path=True)
        qd = importlib.import_module("segvit_rt.kernels.qd_attention")
        x = torch.empty_strided((1, 130 * 128, 64), (0, 131072, 1), dtype=torch.float16)
        with pytest.raises(ValueError, match="qd_attention: x_q .* int32 offsets"):
            qd._check_inputs(x, x, x, 130, 128, 1, triton_path=True)


def test_launch_forward_refuses_buffers_it_would_write_wrongly(device):
    q, k, v, _ = make_inputs((2, 5, 7, 64, 2), torch.float32, device)
    out, mask, lse = torch.empty_like(q), torch.empty(2, 5, 7, device=device), torch.empty(2, 2, 5, device=device)
    with pytest.raises(ValueError, match=r"lse must be contiguous, got strides \(10, 1, 2\)"):
        launch_forward(q, k, v, 2, 0.2, None, False, out, mask, torch.empty(2, 5, 2, device=device).transpose(1, 2))
    with pytest.raises(ValueError, match=r"lse must have shape \(2, 2, 5\) \[B, H, N\], got \(2, 5, 2\)"):
        launch_forward(q, k, v, 2, 0.2, None, False, out, mask, torch.empty(2, 5, 2, device=device))
    with pytest.raises(ValueError, match="out must be contiguous in its last dim"):
        launch_forward(q, k, v, 2, 0.2, None, False, torch.empty(2, 64, 5, device=device).transpose(1, 2), mask, lse)
    with pytest.raises(ValueError, match="mask must be contiguous in its last dim"):
        launch_forward(q, k, v, 2, 0.2, None, False, out, torch.empty(2, 7, 5, device=device).transpose(1, 2), lse)


def test_more_queries_or_image_heads_than_a_launch_grid_takes_is_a_clear_error(device):
    q = torch.zeros(1, 1, 64, device=device).expand(1, 65535 * 16 + 1, 64)  # blocks of 16 queries
    with pytest.raises(ValueError, match="at most 1048560 queries per image, got 1048561; split the queries"):
        atm_attention(q, q[:, :1], q[:, :1], 4)
    q = torch.zeros(1, 1, 64, device=device).expand(16385, 1, 64)
    lse = torch.zeros(16385, 4, 1, device=device).expand(16385, 4, 1)
    # 16385 images x 4 heads > 65535 (image, head) pairs in the backward's grid
    with pytest.raises(ValueError, match="at most 65535 \\(image, head\\) pairs in the backward"):
        launch_backward(q, None, q, q, q, q, lse, 4, 0.125, q, q, q)
