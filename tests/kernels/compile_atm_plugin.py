"""Compile the ATM plugin kernel for sm_90 as the TensorRT plugin does, and assemble the PTX it
hands TensorRT with Triton's ptxas (no GPU needed). Run without ``TRITON_INTERPRET``."""
import subprocess
import tempfile
from pathlib import Path

from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nvidia

from segvit_rt.kernels import atm_attention_aot as aot

ARCH = 90


def ptxas() -> str:
    try:
        return nvidia.get_ptxas(ARCH).path
    except TypeError:  # triton < 3.7: no arch argument
        return nvidia.get_ptxas().path


def main():
    target = GPUTarget("cuda", ARCH, 32)
    builds = [("fp16", t) for t in range(1, len(aot.PLUGIN_CONFIGS) + 1)] + [("fp32", 1)]
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, tactic in builds:
            kernel = aot.compile_ptx(16, 32, 32 ** -0.5, dtype, tactic, target)
            kinds = ",".join(p.split()[1] for p in aot.entry_params(kernel.ptx, kernel.name))
            src = Path(tmp) / f"{dtype}_{tactic}.ptx"
            src.write_text(kernel.ptx)
            proc = subprocess.run([ptxas(), f"-arch=sm_{ARCH}a", str(src), "-o", str(src.with_suffix(".cubin"))],
                                  capture_output=True, text=True)
            print("ptx", dtype, tactic, kinds, "assembled" if proc.returncode == 0 else proc.stderr.strip())


if __name__ == "__main__":
    main()
