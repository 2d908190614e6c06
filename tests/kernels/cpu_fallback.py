"""The custom ops on CPU tensors without the Triton interpreter take their reference path, forward
and backward. Run as a script without ``TRITON_INTERPRET`` (``test_cpu_fallback.py`` does)."""
import os

import torch

from segvit_rt.kernels import atm_attention, qd_attention, segment_postprocess
from segvit_rt.ops import reference

# Set after the kernels were defined (compiled, not interpreted): the ops must keep to that choice.
os.environ["TRITON_INTERPRET"] = "1"


def leaves(*shapes):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=gen).requires_grad_() for s in shapes]


def grads_match(fused, ref, inputs):
    fused_grads = torch.autograd.grad(fused, inputs)
    ref_grads = torch.autograd.grad(ref, inputs)
    for got, want in zip(fused_grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


q, k, v, prev = leaves((2, 5, 64), (2, 9, 64), (2, 9, 64), (2, 5, 9))
out, mask = atm_attention(q, k, v, 2, prev_mask=prev, sigmoid_mask=True)
ref_out, ref_mask = reference.atm_attention(q, k, v, 2, prev_mask=prev, sigmoid_mask=True)
torch.testing.assert_close(out, ref_out)
torch.testing.assert_close(mask, ref_mask)
grads_match(out.square().sum() + mask.sum(), ref_out.square().sum() + ref_mask.sum(), [q, k, v, prev])
print("atm ok")

x_q, k, v = leaves((2, 24, 64), (2, 24, 64), (2, 24, 64))
out = qd_attention(x_q, k, v, (4, 6), 2)
ref = reference.qd_attention(x_q, k, v, (4, 6), 2)
torch.testing.assert_close(out, ref)
grads_match(out.square().sum(), ref.square().sum(), [x_q, k, v])
print("qd ok")

class_logits = torch.randn(2, 4, 5, dtype=torch.float64)  # mixed dtypes, as the kernel takes them
mask_logits = 4 * torch.randn(2, 4, 3, 5)
labels = segment_postprocess(class_logits, mask_logits, (7, 11))
expected = reference.segment_postprocess(class_logits, mask_logits.double(), (7, 11))
assert labels.shape == (2, 7, 11) and torch.equal(labels, expected)
print("postprocess ok")
