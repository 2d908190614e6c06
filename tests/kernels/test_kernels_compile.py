"""The kernels compile for Hopper (sm_90) as AOTInductor launches them, and trace on CUDA tensors as
one Triton launch per op, on any machine."""
import json
import re

from compile_helpers import run_compile_script


def test_kernels_compile_for_sm90_with_fp64_float_scalars():
    assert run_compile_script("compile_fp64_scalars.py").stdout.count("compiled") == 7


def test_ops_on_cuda_tensors_trace_to_one_triton_launch_each():
    """What torch.compile, torch.export and AOTInductor see of an op on CUDA: its output allocations
    and functional Triton launches writing exactly them (no reference fallback, no copies)."""
    traced = json.loads(run_compile_script("trace_cuda_ops.py").stdout.splitlines()[-1])
    atm_reads = ["k_ptr", "prev_ptr", "q_ptr", "v_ptr"]
    expected = {  # op: [(kernel, the tensors it writes, the others it takes)] in launch order
        "atm": [("_atm_fwd_kernel", ["lse_ptr", "mask_ptr", "out_ptr"], atm_reads)],
        "qd": [("_qd_fwd_kernel", ["lse_ptr", "out_ptr"], ["k_ptr", "v_ptr", "xq_ptr"])],
    }
    for op, kernels in expected.items():
        launches = [n for n in traced[op] if isinstance(n, dict)]
        others = {n for n in traced[op] if not isinstance(n, dict)}
        assert launches == [{"kernel": kernel, "writes": writes, "tensors": sorted(writes + reads)}
                            for kernel, writes, reads in kernels], traced[op]
        assert others <= {"aten.new_empty.default", "aten.split.Tensor", "<built-in function getitem>"}, others


def test_atm_op_puts_no_batch_specific_guard_on_a_dynamic_batch():
    """A dynamic-batch engine (``torch.export`` with a ``Dim`` batch) must not be specialised to the
    example's batch: the same guards for batches 2, 8 and 30, only the inputs' batches being one."""
    traced = json.loads(run_compile_script("trace_cuda_ops.py").stdout.splitlines()[-1])
    guards = traced["atm-dynamic-batch-guards"]
    assert guards["2"] == guards["8"] == guards["30"], guards
    assert all(re.fullmatch(r"Eq\(s\d+, s\d+\)", g) for g in guards["2"]), guards


def test_kernels_compile_without_spilling_and_the_atm_forward_to_wgmma():
    """The sm_90 machine code of every autotune config at the ViT-L fp16 layouts: none spills
    registers to local memory, and the fused ATM forward's tiles of 64 queries or more run on
    Hopper's wgmma (HGMMA), not the older mma.sync (HMMA). The ATM forward's all-heads design
    before it had 255 registers, spills and HMMA only in every config."""
    configs = json.loads(run_compile_script("compile_sass.py").stdout.splitlines()[-1])
    kernels = {c["kernel"] for c in configs}
    assert kernels == {"_atm_fwd_kernel", "_atm_bwd_dkdv_kernel", "_atm_bwd_dq_kernel",
                       "_qd_fwd_kernel", "_qd_bwd_dkdv_kernel", "_qd_bwd_dq_kernel", "_postprocess_kernel"}, kernels
    for c in configs:
        assert c["stack"] == 0 and c["local_loads"] == 0, c
    forward = [c for c in configs if c["kernel"] == "_atm_fwd_kernel"]
    assert len(forward) == 10
    for c in forward:
        wide = c["blocks"]["BLOCK_N"] >= 64
        assert (c["hgmma"] > 0, c["hmma"] > 0) == (wide, not wide), c
