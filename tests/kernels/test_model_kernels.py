"""The model behind ``kernels="triton"`` computes what the reference model computes (forward and grads).

Runs the real kernels: through the Triton interpreter on CPU, natively on CUDA.
"""
import pytest
import torch

import segvit_rt
from engine_helpers import sharpen


def _pair(variant, device):
    """The reference model (sharpened: its label maps hold several classes) and a fused copy."""
    torch.manual_seed(0)
    ref = sharpen(segvit_rt.create_model("tiny", variant, decoder_dropout=0.0)).to(device)
    fused = segvit_rt.create_model("tiny", variant, decoder_dropout=0.0, kernels="triton").to(device)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_eval_outputs_and_labels_match_reference(variant, device):
    ref, fused = _pair(variant, device)
    x = torch.randn(1, 3, 128, 128, device=device)
    with torch.no_grad():
        a, b = ref.eval()(x), fused.eval()(x)
        torch.testing.assert_close(b["pred_masks"], a["pred_masks"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b["pred_logits"], a["pred_logits"], rtol=1e-4, atol=1e-4)
        scores = segvit_rt.ops.reference.semantic_logits(a["pred_logits"], a["pred_masks"], (128, 128))
        top2 = scores.topk(2, dim=1).values
        near_tie = (top2[:, 0] - top2[:, 1]) <= 1e-4 * top2[:, 0].abs()
        labels = ref.predict(x)
        differ = fused.predict(x) != labels
    assert len(labels.unique()) >= 2
    assert not (differ & ~near_tie).any()


@pytest.mark.parametrize("variant", ["full", "shrunk"])
def test_training_gradients_match_reference(variant, device):
    ref, fused = _pair(variant, device)
    x = torch.randn(1, 3, 128, 128, device=device)
    grads = []
    for model in (ref, fused):
        out = model.train()(x)
        loss = out["pred_masks"].square().mean() + out["pred_logits"].logsumexp(-1).mean()
        loss = loss + sum(aux["pred_masks"].square().mean() for aux in out["aux_outputs"])
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    # Tolerance relative to each gradient's scale (many are ~1e-5); the key biases' (~1e-9, nearly
    # cancelled by the softmax) are compared down to 1e-7.
    for name, g in grads[0].items():
        atol = max(1e-4 * g.abs().max().item(), 1e-7)
        torch.testing.assert_close(grads[1][name], g, rtol=1e-3, atol=atol, msg=name)
