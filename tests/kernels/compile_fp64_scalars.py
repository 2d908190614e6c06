"""Compile every kernel for sm_90 with its float scalars typed fp64 (no GPU needed).

AOTInductor launches user Triton kernels with Python floats typed fp64; a kernel
whose fp32 loop state then mixes with such a scalar fails to compile there.
Run as a script without ``TRITON_INTERPRET`` (``test_kernels_compile.py`` does).
"""
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime import Autotuner

import segvit_rt.kernels  # noqa: F401  (registers the kernel modules)

atm = sys.modules["segvit_rt.kernels.atm_attention"]
qd = sys.modules["segvit_rt.kernels.qd_attention"]
post = sys.modules["segvit_rt.kernels.segment_postprocess"]
FLOATS = {"qk_scale", "mask_scale", "scale", "inv_heads", "scale_h", "scale_w"}
POINTERS = {"lse_ptr": "*fp32", "delta_ptr": "*fp32", "probs_ptr": "*fp32", "masks_ptr": "*fp32",
            "scores_ptr": "*fp32", "labels_ptr": "*i64"}  # others: fp16
DOT = dict(DOT_PRECISION="tf32", DOT_UPCAST=False)
ATM_BWD = dict(NUM_HEADS=16, HEAD_DIM=32, HAS_DMASK=True, BLOCK_N=32, BLOCK_L=64, **DOT)
QD = dict(HEAD_DIM=64, BLOCK_M=64, BLOCK_N=64, **DOT)
ATM_FWD = dict(NUM_HEADS=16, HEAD_DIM=32, NEED_MASK=True, HAS_PREV=True, SIGMOID=False, STORE_LSE=True,
               BLOCK_N=64, BLOCK_L=64, **DOT)
KERNELS = [  # (kernel, its constexprs at the ViT-L layouts); compile_sass.py reads them too
    (atm._atm_fwd_kernel, ATM_FWD),
    (atm._atm_bwd_dkdv_kernel, ATM_BWD),
    (atm._atm_bwd_dq_kernel, ATM_BWD),
    (qd._qd_fwd_kernel, QD),
    (qd._qd_bwd_dkdv_kernel, QD),
    (qd._qd_bwd_dq_kernel, QD),
    (post._postprocess_kernel, dict(WRITE_SCORES=True, DOT_PRECISION="tf32x3", BLOCK_P=64, BLOCK_Q=16, BLOCK_C=64)),
]


def signature(fn, consts):
    def arg_type(name):
        if name in consts:
            return "constexpr"
        if name.endswith("_ptr"):
            return POINTERS.get(name, "*fp16")
        return "fp64" if name in FLOATS else "i32"

    return {name: arg_type(name) for name in fn.arg_names}


def compile_for_sm90(kernel, consts: dict, **options):
    """``kernel`` (a ``@triton.jit`` function, or the autotuner over one) compiled for sm_90 with the
    constexprs ``consts``, its float scalars typed fp64."""
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    src = ASTSource(fn=fn, signature=signature(fn, consts),
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def main():
    for kernel, consts in KERNELS:
        print("compiled", compile_for_sm90(kernel, consts).metadata.name)


if __name__ == "__main__":
    main()
