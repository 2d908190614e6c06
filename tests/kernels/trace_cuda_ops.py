"""Trace the attention ops on fake CUDA tensors, as torch.compile / torch.export / AOTInductor do on a GPU,
and print each traced launch: kernel, the outputs it writes, and the tensors it reads.

Without CUDA, Triton is told the driver targets sm_90 (the tracing needs only a target, no device).
Run as a script without ``TRITON_INTERPRET`` (``test_kernels_compile.py`` does).
"""
import json

import torch
import triton
from torch._functorch.aot_autograd import aot_export_module
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from triton.backends.compiler import GPUTarget

if not torch.cuda.is_available():
    class Sm90Driver:
        """Just enough of a driver for tracing: the target, and where torch's tensors would live."""

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self):
            return torch.device("cuda")

    triton.runtime.driver.set_active(Sm90Driver())

from segvit_rt.kernels import atm_attention, qd_attention  # noqa: E402



class Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        out = self.fn(*args)
        return out if isinstance(out, tuple) else (out,)


def launches(fn, *shapes):
    mode = FakeTensorMode()
    with mode:
        args = [torch.empty(s, device="cuda", dtype=torch.float16) for s in shapes]
        graph, _ = aot_export_module(Call(fn), args, trace_joint=False)
    found = []
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if "triton_kernel_wrapper" not in str(node.target):
            found.append(str(node.target))
            continue
        from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

        kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
        tensors = {k: v for k, v in node.kwargs["kwargs"].items() if isinstance(v, torch.fx.Node)}
        found.append({"kernel": getattr(kernel, "fn", kernel).__name__, "writes": sorted(node.kwargs["tensors_to_clone"]),
                      "tensors": sorted(tensors)})
    return found


def atm_at_vit_l_shape():
    """ATM at ViT-L's decoder shape."""
    return launches(lambda q, k, prev: atm_attention(q, k, k, 16, prev_mask=prev, sigmoid_mask=True),
                    (2, 150, 512), (2, 1600, 512), (2, 150, 1600))


def atm_guards_on_a_dynamic_batch(batch_hint):
    """The guards the ATM op puts on a symbolic batch (``torch.export`` with a ``Dim`` batch).
    A guard that holds for one batch only would specialise a dynamic-batch engine to it."""
    with FakeTensorMode():
        examples = [torch.empty((batch_hint, *s), device="cuda", dtype=torch.float16)
                    for s in ((150, 512), (1600, 512), (150, 1600))]
    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env)
    batch_only = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC, DimDynamic.STATIC])
    args = [mode.from_tensor(t, symbolic_context=batch_only) for t in examples]
    with mode:
        aot_export_module(Call(lambda q, k, prev: atm_attention(q, k, k, 16, prev_mask=prev)), args, trace_joint=False)
    return [str(guard.expr) for guard in env.guards]


result = {
    "atm": atm_at_vit_l_shape(),
    "atm-dynamic-batch-guards": {hint: atm_guards_on_a_dynamic_batch(hint) for hint in (2, 8, 30)},
    "qd": launches(lambda qkv: qd_attention(*qkv.split(1024, -1), (40, 40), 16), (2, 1600, 3072)),
}
print(json.dumps(result))
