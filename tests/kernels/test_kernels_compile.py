"""The kernels compile for Hopper (sm_90) as AOTInductor launches them, on any machine."""
from compile_helpers import run_compile_script


def test_kernels_compile_for_sm90_with_fp64_float_scalars():
    assert run_compile_script("compile_fp64_scalars.py").stdout.count("compiled") == 7
