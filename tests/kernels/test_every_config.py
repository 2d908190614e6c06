"""Every autotune config of the kernels against the float64 reference, on shapes with tails.

Autotuning runs one config per GPU and size range, so the other kernel tests check only the winners; a
config that compiled into wrong code would give wrong answers wherever it wins. Under the
interpreter each kernel has one config; on CUDA (``gpu_check.sh``'s config-sweep step) every config
runs, each compiled on its own.
"""
import importlib

import pytest
import torch
from test_atm import assert_close64, make_inputs, reference64
from test_postprocess import assert_labels_match

from segvit_rt.ops import reference

atm = importlib.import_module("segvit_rt.kernels.atm_attention")
qd = importlib.import_module("segvit_rt.kernels.qd_attention")
pp = importlib.import_module("segvit_rt.kernels.segment_postprocess")

ATM_FWD_SHAPE = (2, 37, 203, 512, 16)  # (B, N, L, D, H): the ViT decoders' 16 heads x 32 dims
ATM_BWD_SHAPE = (2, 37, 203, 128, 4)
QD_SHAPE = (2, 10, 14, 2, 64)  # (B, h, w, heads, head_dim): L = 140 and L/4 = 35, tails of every block
DTYPE = torch.float16


def config_id(c):
    return "-".join(f"{v}" for v in c.kwargs.values()) + f"-w{c.num_warps}-s{c.num_stages}"


def only(monkeypatch, kernel, config):
    """Make ``kernel`` (a ``triton.autotune`` object) run ``config`` and nothing else."""
    monkeypatch.setattr(kernel, "configs", [config])
    monkeypatch.setattr(kernel, "cache", {})


# All of them, also those the autotuner's pruning drops at this shape: torch.compile and AOTInductor
# launch the kernel's config list without the pruning, so any config can win inside an engine.
@pytest.mark.parametrize("config", atm._atm_fwd_kernel.configs, ids=config_id)
def test_atm_forward_config(monkeypatch, device, config):
    only(monkeypatch, atm._atm_fwd_kernel, config)
    b, n, length, d, heads = ATM_FWD_SHAPE
    q, k, v, prev = make_inputs(ATM_FWD_SHAPE, DTYPE, device, prev=True)
    out, mask = torch.full_like(q, float("nan")), torch.full_like(prev, float("nan"))
    lse = torch.empty(b, heads, n, device=device)
    atm.launch_forward(q, k, v, heads, (d // heads) ** -0.5, prev, True, out, mask, lse)
    ref_out, ref_mask = reference64(q, k, v, heads, prev_mask=prev, sigmoid_mask=True)
    assert_close64(out, ref_out, DTYPE, "out")
    assert_close64(mask, ref_mask, DTYPE, "mask")


def paired(first, second):
    """The two backward kernels' configs side by side, the shorter list repeated."""
    n = max(len(first), len(second))
    return [(first[i % len(first)], second[i % len(second)]) for i in range(n)]


def pair_id(pair):
    return "+".join(map(config_id, pair))


@pytest.mark.parametrize("configs", paired(atm._atm_bwd_dkdv_kernel.configs, atm._atm_bwd_dq_kernel.configs),
                         ids=pair_id)
def test_atm_backward_config(monkeypatch, device, configs):
    only(monkeypatch, atm._atm_bwd_dkdv_kernel, configs[0])
    only(monkeypatch, atm._atm_bwd_dq_kernel, configs[1])
    heads = ATM_BWD_SHAPE[4]
    inputs = [t.requires_grad_() for t in make_inputs(ATM_BWD_SHAPE, DTYPE, device, prev=True)]
    out, mask = atm.atm_attention(*inputs[:3], heads, prev_mask=inputs[3])
    g = torch.Generator().manual_seed(7)
    dout, dmask = (torch.randn(t.shape, generator=g).to(device=device, dtype=DTYPE) for t in (out, mask))
    torch.autograd.backward((out, mask), (dout, dmask))
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    ref_out, ref_mask = reference.atm_attention(*leaves[:3], heads, prev_mask=leaves[3])
    torch.autograd.backward((ref_out, ref_mask), (dout.double(), dmask.double()))
    for name, got, want in zip(("dq", "dk", "dv", "dprev"), inputs, leaves):
        assert_close64(got.grad, want.grad, DTYPE, name)


@pytest.mark.parametrize("configs", [(c, None, None) for c in qd._qd_fwd_kernel.configs]
                         + [(None, a, b) for a, b in paired(qd._qd_bwd_dkdv_kernel.configs,
                                                            qd._qd_bwd_dq_kernel.configs)],
                         ids=lambda c: "fwd-" + config_id(c[0]) if c[0] else "bwd-" + pair_id(c[1:]))
def test_qd_config(monkeypatch, device, configs):
    for kernel, config in zip((qd._qd_fwd_kernel, qd._qd_bwd_dkdv_kernel, qd._qd_bwd_dq_kernel), configs):
        if config is not None:
            only(monkeypatch, kernel, config)
    b, h, w, heads, head_dim = QD_SHAPE
    d = heads * head_dim
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(b, h * w, 3 * d, generator=g).to(device=device, dtype=DTYPE).requires_grad_()
    out = qd.qd_attention(*qkv.split(d, -1), (h, w), heads)
    dout = torch.randn(out.shape, generator=g).to(device=device, dtype=DTYPE)
    out.backward(dout)
    qkv64 = qkv.detach().double().requires_grad_()
    ref = reference.qd_attention(*qkv64.split(d, -1), (h, w), heads)
    ref.backward(dout.double())
    torch.testing.assert_close(out.double(), ref, atol=3e-3, rtol=3e-3)
    torch.testing.assert_close(qkv.grad.double(), qkv64.grad, atol=6e-3, rtol=1e-2)


@pytest.mark.parametrize("config", pp._postprocess_kernel.configs, ids=config_id)
def test_postprocess_config(monkeypatch, device, config):
    """150 classes (ADE20K's; 1 to 5 class blocks), 37 queries (two 32-wide query blocks, the second
    zero-padded), pixel counts with tails."""
    only(monkeypatch, pp._postprocess_kernel, config)
    g = torch.Generator().manual_seed(5)
    class_logits = (2 * torch.randn(2, 37, 151, generator=g)).to(device)
    mask_logits = (3 * torch.randn(2, 37, 9, 7, generator=g)).to(device)
    labels, max_score = pp.segment_postprocess(class_logits, mask_logits, (29, 23), return_scores=True)
    scores64 = reference.semantic_logits(class_logits.double(), mask_logits.double(), (29, 23))
    assert_labels_match(labels, scores64, max_score)
