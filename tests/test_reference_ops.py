"""The reference ops against their definitions written out head by head (float64).

The reference computes the ATM mask as one product over the full width and the attention through
SDPA; the kernels are tested against it, so it is checked here against the plain definition.
"""
import pytest
import torch

from segvit_rt.ops import reference


def per_head(q, k, v, num_heads, scale, prev_mask=None, sigmoid_mask=False):
    """ATM cross-attention by its definition: per-head logits, softmax, head-mean mask."""
    b, n, d = q.shape
    hd = d // num_heads
    outs, logits = [], []
    for h in range(num_heads):
        cols = slice(h * hd, (h + 1) * hd)
        z = q[..., cols] @ k[..., cols].transpose(1, 2) * scale  # [B, N, L]
        logits.append(z)
        outs.append(z.softmax(-1) @ v[..., cols])
    mask = torch.stack(logits).mean(0)
    if prev_mask is not None:
        mask = mask + prev_mask
    return torch.cat(outs, -1), (mask.sigmoid() if sigmoid_mask else mask)


@pytest.mark.parametrize("form", [reference.atm_attention, reference.atm_attention_by_heads],
                         ids=["atm_attention", "by_heads"])
@pytest.mark.parametrize("prev, sigmoid", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("heads, scale", [(1, None), (4, None), (4, 0.3)])
def test_atm_attention_is_the_per_head_definition(heads, scale, prev, sigmoid, form):
    g = torch.Generator().manual_seed(heads)
    q, k, v = (torch.randn(2, n, 32, generator=g, dtype=torch.float64) for n in (5, 9, 9))
    prev_mask = torch.randn(2, 5, 9, generator=g, dtype=torch.float64) if prev else None
    out, mask = form(q, k, v, heads, scale=scale, prev_mask=prev_mask, sigmoid_mask=sigmoid)
    want_out, want_mask = per_head(q, k, v, heads, scale or (32 // heads) ** -0.5, prev_mask, sigmoid)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(mask, want_mask)


def test_fp16_mask_stays_finite_where_the_per_head_logits_do():
    """Mask logits near 1000 (fp16 holds 65504): the full-width product, unscaled, would pass 65504
    (by H/scale = 16·√32 at the ViT-L decoder's 16 heads of 32) and become inf."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 512, generator=g) * 15
    k, v = q.clone(), torch.randn(1, 4, 512, generator=g)
    _, mask = reference.atm_attention(q.half(), k.half(), v.half(), 16)
    _, want = reference.atm_attention_by_heads(q.double(), k.double(), v.double(), 16)
    assert want.abs().max() > 700 and torch.isfinite(mask).all()
    torch.testing.assert_close(mask.double(), want, rtol=2e-3, atol=0.5)


def test_qd_attention_attends_from_the_even_grid_positions():
    g = torch.Generator().manual_seed(0)
    x_q, k, v = (torch.randn(1, 4 * 6, 16, generator=g, dtype=torch.float64) for _ in range(3))
    out = reference.qd_attention(x_q, k, v, (4, 6), 2)
    queries = x_q.view(1, 4, 6, 16)[:, ::2, ::2].reshape(1, 6, 16)
    torch.testing.assert_close(out, per_head(queries, k, v, 2, 8**-0.5)[0])
