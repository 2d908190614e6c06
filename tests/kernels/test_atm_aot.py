"""The ATM forward as the TensorRT plugin runs it: calling convention, constants, PTX."""
import pytest
import torch
from compile_helpers import run_compile_script

from segvit_rt.kernels import atm_attention_aot as aot
from segvit_rt.ops import reference


def _inputs(b, n, length, d, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, m, d, generator=gen).to(device, dtype) for m in (n, length, length))


@pytest.mark.parametrize("tactic", [1, 4])
@pytest.mark.parametrize("dtype,heads,head_dim,tol", [
    (torch.float32, 2, 16, 1e-5),
    (torch.float16, 3, 16, 2e-3),  # 3 heads: an odd count of attention rows per image
])
def test_plugin_kernel_matches_reference(dtype, heads, head_dim, tol, tactic, device):
    # N=5 and L=37 are not multiples of any block: masked tails in both directions.
    q, k, v = _inputs(2, 5, 37, heads * head_dim, dtype, device)
    out, mask = aot.launch(q, k, v, heads, tactic=tactic)
    ref_out, ref_mask = reference.atm_attention(q.double(), k.double(), v.double(), heads)
    assert out.dtype == dtype and mask.shape == (2, 5, 37)
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(mask.double(), ref_mask, atol=tol, rtol=tol)


def test_plugin_kernel_uses_the_given_scale(device):
    q, k, v = _inputs(1, 3, 20, 32, torch.float32, device, seed=1)
    _, mask = aot.launch(q, k, v, 2, scale=0.3)
    _, ref = reference.atm_attention(q, k, v, 2, scale=0.3)
    torch.testing.assert_close(mask, ref, atol=1e-5, rtol=1e-5)


def test_plugin_arguments_are_checked(device):
    with pytest.raises(ValueError, match=r"head_dim a power of two in \[16, 128\], got 24 .*--kernels reference"):
        aot.plugin_constexprs(2, 24, 0.2, "fp16", 1)
    with pytest.raises(ValueError, match=f"tactic must be in 1..{len(aot.PLUGIN_CONFIGS)}"):
        aot.plugin_constexprs(2, 32, 0.2, "fp16", 0)
    with pytest.raises(ValueError, match="dtype"):
        aot.plugin_constexprs(2, 32, 0.2, "bf16", 1)
    with pytest.raises(TypeError, match=r"atm_attention plugin: q must have dtype in \(float16, float32\)"):
        aot.launch(*_inputs(1, 2, 3, 32, torch.bfloat16, device), 2)


@pytest.mark.parametrize("k_shape, v_shape, match", [
    ((1, 7, 32), (1, 7, 32), r"k must have shape \(2, 7, 32\) \[B, L, D\] \(B and D from q\), got \(1, 7, 32\)"),
    ((2, 7, 64), (2, 7, 64), r"k must have shape \(2, 7, 32\)"),
    ((2, 7, 32), (2, 3, 32), r"v must have shape \(2, 7, 32\) \[B, L, D\] \(same as k\), got \(2, 3, 32\)"),
])
def test_plugin_launch_refuses_keys_and_values_that_do_not_fit_the_queries(device, k_shape, v_shape, match):
    """The kernel reads k and v with q's batch and width: a mismatch would read out of bounds."""
    q = torch.randn(2, 5, 32, device=device)
    with pytest.raises(ValueError, match=f"atm_attention plugin: {match}"):
        aot.launch(q, torch.randn(k_shape, device=device), torch.randn(v_shape, device=device), 2)
    with pytest.raises(TypeError, match="atm_attention plugin: inputs must share one dtype"):
        aot.launch(q, torch.randn(2, 7, 32, device=device).half(), torch.randn(2, 7, 32, device=device).half(), 2)


PTX = """.version 8.4
.target sm_90a
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .u64 .ptr .global .align 1 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3
)
{
\tld.param.b64 %rd1, [k_param_0];
\tld.param.b32 %r1, [k_param_1];
BODY
}
"""


def test_hidden_params_are_dropped_only_when_unused():
    ptx = aot.strip_hidden_params(PTX.replace("BODY", ""), "k", 2)
    assert [p.split()[-1] for p in aot.entry_params(ptx, "k")] == ["k_param_0", "k_param_1"]
    assert "ld.param.b32 %r1, [k_param_1];" in ptx
    with pytest.raises(ValueError, match="reads its hidden parameter k_param_2"):
        aot.strip_hidden_params(PTX.replace("BODY", "\tld.param.b64 %rd2, [k_param_2];"), "k", 2)
    with pytest.raises(ValueError, match="no .entry other"):
        aot.strip_hidden_params(PTX, "other", 2)


def test_plugin_ptx_for_sm90_fits_tensorrts_launch():
    """Compiled for Hopper without a GPU (a subprocess without the interpreter): the entry takes
    exactly q, k, v, N, L, out, mask; ptxas assembles the PTX TensorRT would get, also when
    written for an older driver's ISA; only tactics within 48 KiB of shared memory are offered
    (all of them at ViT-L's heads of 32, not the widest tiles at heads of 128)."""
    proc = run_compile_script("compile_atm_plugin.py")
    builds = [line.split(maxsplit=6)[1:] for line in proc.stdout.splitlines() if line.startswith("ptx ")]
    assert len(builds) == len(aot.PLUGIN_CONFIGS) + 2
    shared = {}
    for dtype, tactic, params, isa, nbytes, assembled in builds:
        assert params == ",".join([".u64"] * 3 + [".u32"] * 2 + [".u64"] * 2), params
        assert assembled == "assembled", assembled
        if dtype == "fp16":
            shared[int(tactic)] = int(nbytes)
    assert builds[-1][3] == "8.4"  # ptx_version=84
    wide = {int(line.split()[1]): int(line.split()[2]) for line in proc.stdout.splitlines() if line.startswith("wide ")}
    for prefix, sizes in (("fitting ", shared), ("fitting-wide ", wide)):
        fitting = next(line for line in proc.stdout.splitlines() if line.startswith(prefix))
        offered = [int(t) for t in fitting.split()[1].split(",")]
        assert offered == [t for t in sorted(sizes) if sizes[t] <= aot.SHARED_LIMIT], prefix
    assert max(shared.values()) <= aot.SHARED_LIMIT < max(wide.values())
    assert min(wide.values()) <= aot.SHARED_LIMIT


def test_ptx_version_is_capped_by_the_driver():
    ptxas = aot.ptx_version_for("99.0", 90)  # a future driver: Triton's ptxas is the limit
    assert aot.ptx_version_for("12.4", 90) == 84 <= ptxas
    assert aot.ptx_version_for("13.0", 90) == min(90, ptxas)


@pytest.mark.gpu
@pytest.mark.parametrize("tactic", [1, 4, 6])  # (64, 64), (16, 64) and (128, 64) tiles
def test_plugin_kernel_at_vit_l_shape_on_gpu(tactic):
    """Tactics TensorRT may pick, compiled for this GPU, at the ViT-L decoder shape."""
    q, k, v = _inputs(8, 150, 1600, 512, torch.float16, "cuda")
    out, mask = aot.launch(q, k, v, 16, tactic=tactic)
    ref_out, ref_mask = reference.atm_attention(q.double(), k.double(), v.double(), 16)
    for got, ref in ((out, ref_out), (mask, ref_mask)):
        scale = max(1.0, ref.abs().max().item())
        torch.testing.assert_close(got.double(), ref, atol=4e-3 * scale, rtol=4e-3)


def test_plugin_launch_grid_is_an_expression_of_the_symbolic_shapes():
    """TensorRT builds the grid from symbolic shapes (``trtp.ShapeExpr``: +, * and ``trtp.cdiv``
    only): per image a row for each head and each block of keys, a column per block of queries."""
    import sympy

    b, n, length = sympy.symbols("b n l", positive=True, integer=True)
    grid = aot.launch_grid(b, n, length, 16, 1, cdiv=lambda x, y: sympy.ceiling(x / y))
    assert grid == (b * (sympy.ceiling(length / 64) + 16), sympy.ceiling(n / 64))
    assert aot.launch_grid(8, 150, 1600, 16, 6) == (8 * (25 + 16), 2)  # tactic 6: (128, 64) tiles
