"""The FLOP counter's conventions (fvcore: one multiply-add = one FLOP) on hand-countable modules."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import segvit_rt
from segvit_rt.flops import FlopCounter, count_flops


def _count(fn, *args):
    with torch.no_grad(), FlopCounter() as counter:
        fn(*args)
    return counter


def test_linear_conv_and_bmm_count_one_per_multiply_add():
    lin = nn.Linear(8, 4)
    assert _count(lin, torch.randn(3, 5, 8)).total == 3 * 5 * 8 * 4
    conv = nn.Conv2d(3, 6, kernel_size=4, stride=4)
    assert _count(conv, torch.randn(1, 3, 16, 16)).total == 6 * 4 * 4 * (3 * 4 * 4)
    assert _count(torch.bmm, torch.randn(2, 3, 5), torch.randn(2, 5, 7)).total == 2 * 3 * 5 * 7


def test_sdpa_is_priced_on_cpu():
    q = torch.randn(2, 4, 10, 8)
    k = torch.randn(2, 4, 12, 8)
    c = _count(F.scaled_dot_product_attention, q, k, k)
    assert c.total == 2 * 4 * 10 * 12 * (8 + 8)


def test_layer_norm_and_bilinear_upsample_follow_fvcore():
    assert _count(nn.LayerNorm(16), torch.randn(4, 16)).total == 4 * 16 * 5
    up = _count(lambda x: F.interpolate(x, size=(10, 12), mode="bilinear"), torch.randn(1, 3, 5, 6))
    assert up.total == 4 * 3 * 10 * 12


def test_model_count_does_not_touch_weights_or_mode():
    model = segvit_rt.create_model("tiny", "full").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counter = count_flops(model, 128)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the full-resolution class/mask mix is included: C·Q·H·W multiply-adds
    assert counter.by_op["aten::bmm"] >= 5 * 5 * 128 * 128


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_counts_as_its_float_twin(dtype):
    model = segvit_rt.create_model("tiny", "shrunk")
    assert count_flops(model.to(dtype), 128).by_op == count_flops(model.float(), 128).by_op


def test_engine_graph_count_leaves_out_only_the_full_resolution_post_process():
    model = segvit_rt.create_model("tiny", "full")
    whole, graph = count_flops(model, 128), count_flops(model, 128, postprocess=False)
    q = c = model.cfg.num_classes
    # the post-process: bilinear upsampling of Q masks (4 per output) and the C·Q·H·W class/mask mix
    assert whole.total - graph.total == 4 * q * 128 * 128 + c * q * 128 * 128


def test_fused_ops_are_priced_as_the_reference_ops_they_replace():
    """With ``kernels="triton"`` the attention runs as ``segvit_rt::`` ops (their meta kernels here);
    they must be priced exactly as the reference's matmuls, or the paper-figure check would drift."""
    for variant, fused_ops in (("full", {"segvit_rt::atm_attention"}),
                               ("shrunk", {"segvit_rt::atm_attention", "segvit_rt::qd_attention"})):
        reference = count_flops(segvit_rt.create_model("tiny", variant), 128)
        fused = count_flops(segvit_rt.create_model("tiny", variant, kernels="triton"), 128)
        assert fused_ops <= set(fused.by_op) and not any(op.startswith("segvit_rt::") for op in reference.by_op)
        assert fused.total == reference.total
