"""The kernels compile for Hopper (sm_90) as AOTInductor launches them, and trace on CUDA tensors as
one Triton launch per op (two for an ATM forward with split keys), on any machine."""
import json
import re

from compile_helpers import run_compile_script


def test_kernels_compile_for_sm90_with_fp64_float_scalars():
    assert run_compile_script("compile_fp64_scalars.py").stdout.count("compiled") == 9


def test_ops_on_cuda_tensors_trace_to_one_triton_launch_each():
    """What torch.compile, torch.export and AOTInductor see of an op on CUDA: its output allocations
    and functional Triton launches writing exactly them (no reference fallback, no copies)."""
    traced = json.loads(run_compile_script("trace_cuda_ops.py").stdout.splitlines()[-1])
    atm_reads = ["k_ptr", "prev_ptr", "q_ptr", "v_ptr"]
    expected = {  # op: [(kernel, the tensors it writes, the others it takes)] in launch order
        # Unsplit, the forward's unused partials arguments are the lse buffer.
        "atm": [("_atm_fwd_kernel", ["lse_ptr", "mask_ptr", "out_ptr"], atm_reads + ["part_ptr", "stats_ptr"])],
        "atm-split": [("_atm_fwd_kernel", ["mask_ptr", "part_ptr", "stats_ptr"], atm_reads + ["lse_ptr", "out_ptr"]),
                      ("_atm_fwd_combine_kernel", ["lse_ptr", "out_ptr"], ["part_ptr", "stats_ptr"])],
        "qd": [("_qd_fwd_kernel", ["lse_ptr", "out_ptr"], ["k_ptr", "v_ptr", "xq_ptr"])],
    }
    for op, kernels in expected.items():
        launches = [n for n in traced[op] if isinstance(n, dict)]
        others = {n for n in traced[op] if not isinstance(n, dict)}
        assert launches == [{"kernel": kernel, "writes": writes, "tensors": sorted(writes + reads)}
                            for kernel, writes, reads in kernels], traced[op]
        allocations = {"aten.new_empty.default"} | ({"aten.empty.memory_format"} if op == "atm-split" else set())
        assert others <= allocations | {"aten.split.Tensor", "<built-in function getitem>"}, others


def test_atm_op_puts_no_batch_specific_guard_on_a_dynamic_batch():
    """A dynamic-batch engine (``torch.export`` with a ``Dim`` batch) must not be specialised to the
    example's batch by the key-split choice: the same guards for batches 2, 8 and 30, only the
    inputs' batches being one and the launch grid's limit."""
    traced = json.loads(run_compile_script("trace_cuda_ops.py").stdout.splitlines()[-1])
    guards = traced["atm-dynamic-batch-guards"]
    assert guards["2"] == guards["8"] == guards["30"], guards
    assert all(re.fullmatch(r"Eq\(s\d+, s\d+\)|(16\*)?s\d+ <= 65535", g) for g in guards["2"]), guards
