"""The kernels compile for Hopper (sm_90) as AOTInductor launches them, and trace on CUDA tensors as
one Triton launch per op, on any machine."""
import json

from compile_helpers import run_compile_script


def test_kernels_compile_for_sm90_with_fp64_float_scalars():
    assert run_compile_script("compile_fp64_scalars.py").stdout.count("compiled") == 7


def test_ops_on_cuda_tensors_trace_to_one_triton_launch_each():
    """What torch.compile, torch.export and AOTInductor see of an op on CUDA: its output allocations
    and one functional Triton launch writing exactly them (no reference fallback, no copies)."""
    traced = json.loads(run_compile_script("trace_cuda_ops.py").stdout.splitlines()[-1])
    expected = {
        "atm": ("_atm_fwd_kernel", ["lse_ptr", "mask_ptr", "out_ptr"], ["k_ptr", "prev_ptr", "q_ptr", "v_ptr"]),
        "qd": ("_qd_fwd_kernel", ["lse_ptr", "out_ptr"], ["k_ptr", "v_ptr", "xq_ptr"]),
    }
    for op, (kernel, writes, reads) in expected.items():
        launches = [n for n in traced[op] if isinstance(n, dict)]
        others = {n for n in traced[op] if not isinstance(n, dict)}
        assert launches == [{"kernel": kernel, "writes": writes, "tensors": sorted(writes + reads)}], traced[op]
        assert others <= {"aten.new_empty.default", "aten.split.Tensor", "<built-in function getitem>"}, others
