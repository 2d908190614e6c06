"""``segvit_rt.ops``: which implementation each call reaches.

The fused ATM kernel has no attention dropout and the TensorRT plugin produces only an unsquashed
mask, so those calls must fall back to the reference; a wrong route would train without dropout
or export a plugin that computes something else.
"""
import pytest
import torch

import segvit_rt.engines.tensorrt_plugin as plugin_module
import segvit_rt.kernels
from segvit_rt import ops
from segvit_rt.ops import reference


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for shape in ((2, 5, 16), (2, 9, 16), (2, 9, 16))]


@pytest.fixture
def calls(monkeypatch):
    """Replace the fused kernel and the plugin op by recorders that compute the reference."""
    seen = []

    def recorder(name):
        def run(q, k, v, num_heads, **kw):
            seen.append(name)
            return reference.atm_attention(q, k, v, num_heads, scale=kw.get("scale"), prev_mask=kw.get("prev_mask"),
                                           need_mask=kw.get("need_mask", True),
                                           sigmoid_mask=kw.get("sigmoid_mask", False))
        return run

    monkeypatch.setattr(segvit_rt.kernels, "atm_attention", recorder("triton"))
    monkeypatch.setattr(plugin_module, "atm_attention_plugin", recorder("plugin"))
    return seen


@pytest.mark.parametrize("impl, kw, route", [
    ("triton", {}, ["triton"]),
    ("triton", {"sigmoid_mask": True, "need_mask": True}, ["triton"]),
    ("triton", {"dropout_p": 0.1}, []),
    ("triton", {"need_mask": False}, []),
    ("tensorrt_plugin", {}, ["plugin"]),
    ("tensorrt_plugin", {"need_mask": False}, []),
    ("tensorrt_plugin", {"sigmoid_mask": True}, []),
    ("tensorrt_plugin", {"dropout_p": 0.1}, []),
    ("reference", {}, []),
])
def test_atm_attention_routes(calls, impl, kw, route):
    q, k, v = _inputs()
    ops.atm_attention(q, k, v, 2, impl=impl, **kw)
    assert calls == route


def test_dropout_drops_attention_but_never_touches_the_mask(calls):
    q, k, v = _inputs(1)
    torch.manual_seed(0)
    out, mask = ops.atm_attention(q, k, v, 2, impl="triton", dropout_p=0.5)
    plain_out, plain_mask = reference.atm_attention(q, k, v, 2)
    assert calls == []
    assert torch.equal(mask, plain_mask)
    assert not torch.allclose(out, plain_out)


@pytest.mark.parametrize("impl", ["reference", "triton", "tensorrt_plugin"])
def test_attention_without_a_mask_is_sdpa_in_every_impl(calls, monkeypatch, impl):
    q, k, v = _inputs(2)
    sdpa = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: sdpa.append(1) or real_sdpa(*a, **kw))
    prev = torch.randn(2, 5, 9)
    out, mask = ops.atm_attention(q, k, v, 2, impl=impl, scale=0.3, prev_mask=prev, need_mask=False)
    assert calls == [] and sdpa == [1] and mask is None
    want, _ = reference.atm_attention_by_heads(q, k, v, 2, scale=0.3)  # not through SDPA
    torch.testing.assert_close(out, want)


def test_attention_without_a_mask_drops_attention_probabilities_in_training(calls):
    """With v = 1 every output is the kept probabilities' sum / (1 - p): dropping probabilities gives
    sums between 0 and 2 at p = 0.5; dropping outputs would give only 0 or 2."""
    q, k, _ = _inputs(3)
    torch.manual_seed(0)
    dropped, _ = ops.atm_attention(q, k, torch.ones_like(k), 2, impl="triton", dropout_p=0.5, need_mask=False)
    assert calls == []
    assert ((dropped > 0.01) & (dropped < 1.99)).any() and not torch.allclose(dropped, torch.ones_like(dropped))


def test_attention_without_a_mask_names_keys_that_do_not_fit():
    q, k, v = _inputs(4)
    with pytest.raises(ValueError, match=r"k and v must be \[B, L, D\]"):
        ops.atm_attention(q, k[..., :8], v[..., :8], 2, impl="triton", need_mask=False)


def test_unknown_impl_is_refused():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="kernels must be one of"):
        ops.atm_attention(q, k, v, 2, impl="cuda")
    with pytest.raises(ValueError, match="kernels must be one of"):
        ops.atm_attention(q, k, v, 2, impl="cuda", need_mask=False)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_a_dropout_rate_outside_0_1_is_refused(calls, p):
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        ops.atm_attention(q, k, v, 2, impl="triton", dropout_p=p)
    assert calls == []


@pytest.mark.parametrize("big", [False, True], ids=["whole", "bands"])
def test_postprocess_takes_mixed_dtypes_and_names_logits_that_do_not_pair(monkeypatch, big):
    """The reference defines the semantics for what the kernel takes: mixed float dtypes compute in
    the wider one; class and mask logits of different query counts are named, on both CPU paths."""
    if big:
        monkeypatch.setattr(ops.full_size, "BUDGET", 1)
    g = torch.Generator().manual_seed(0)
    class_logits, mask_logits = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 3, 3, generator=g)
    labels = ops.segment_postprocess(class_logits, mask_logits.half(), (8, 8))
    assert torch.equal(labels, ops.segment_postprocess(class_logits, mask_logits.half().float(), (8, 8)))
    with pytest.raises(ValueError, match=r"must share B and Q .*got \(2, 5, 4\) and \(2, 6, 3, 3\)"):
        ops.segment_postprocess(class_logits, torch.randn(2, 6, 3, 3), (8, 8))


@pytest.mark.parametrize("call, message", [
    (lambda q, k: ops.atm_attention(q, k, k, 0, need_mask=False), "attention: num_heads must be a positive int, got 0"),
    (lambda q, k: reference.atm_attention(q, k, k, 0), "atm_attention: num_heads must be a positive int, got 0"),
    (lambda q, k: reference.qd_attention(k[:, :6], k[:, :6], k[:, :6], (2, 3), True),
     "qd_attention: num_heads must be a positive int, got True"),
    (lambda q, k: reference.atm_attention(q[0], k, k, 2), r"the queries must be \[B, N, D\], got \(5, 32\)"),
    (lambda q, k: reference.qd_attention(k[:, :6], k, k, (2, 3), 2),
     r"qd_attention: k and v must hold the 6 tokens of x_q's grid, got k \(2, 7, 32\)"),
    (lambda q, k: ops.atm_attention(q, k, k, 2, need_mask=False, scale=float("nan")), "scale must be finite, got nan"),
    (lambda q, k: ops.atm_attention(q, k, k, 2, need_mask=False, sacle=0.1),
     r"unexpected keyword arguments \['sacle'\]"),
])
def test_the_reference_ops_name_bad_heads_shapes_scales_and_keywords(call, message):
    """As the kernels do, whichever impl runs (the one without a mask always runs the reference)."""
    with pytest.raises((ValueError, TypeError), match=message):
        call(torch.randn(2, 5, 32), torch.randn(2, 7, 32))
