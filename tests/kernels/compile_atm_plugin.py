"""Compile the ATM plugin kernel for sm_90 as the TensorRT plugin does, and assemble the PTX it
hands TensorRT with Triton's ptxas (no GPU needed). Run without ``TRITON_INTERPRET``."""
import subprocess
import tempfile
from pathlib import Path

from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nvidia

from segvit_rt.kernels import atm_attention_aot as aot

ARCH = 90
VIT_L = (16, 32, 32 ** -0.5)  # the ViT-L decoder: 16 heads of 32
WIDE = (4, 128, 128 ** -0.5)  # the widest head the kernel takes


def assemble(ptx: str, tmp: str, name: str) -> str:
    src = Path(tmp) / f"{name}.ptx"
    src.write_text(ptx)
    proc = subprocess.run([nvidia.get_ptxas(ARCH).path, f"-arch=sm_{ARCH}a", str(src), "-o", str(src.with_suffix(".cubin"))],
                          capture_output=True, text=True)
    return "assembled" if proc.returncode == 0 else proc.stderr.strip().replace("\n", " | ")


def main():
    target = GPUTarget("cuda", ARCH, 32)
    builds = [("fp16", t, None) for t in range(1, len(aot.PLUGIN_CONFIGS) + 1)] + [("fp32", 1, None), ("fp16", 1, 84)]
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, tactic, ptx_version in builds:
            kernel = aot.compile_ptx(*VIT_L, dtype, tactic, target, ptx_version)
            kinds = ",".join(p.split()[1] for p in aot.entry_params(kernel.ptx, kernel.name))
            isa = next(line.split()[1] for line in kernel.ptx.splitlines() if line.startswith(".version"))
            print("ptx", dtype, tactic, kinds, isa, kernel.shared, assemble(kernel.ptx, tmp, f"{dtype}_{tactic}_{ptx_version}"))
    print("fitting", ",".join(map(str, aot.fitting_tactics(*VIT_L, "fp16", target))))
    for tactic in range(1, len(aot.PLUGIN_CONFIGS) + 1):
        print("wide", tactic, aot.compile_ptx(*WIDE, "fp16", tactic, target).shared)
    print("fitting-wide", ",".join(map(str, aot.fitting_tactics(*WIDE, "fp16", target))))


if __name__ == "__main__":
    main()
