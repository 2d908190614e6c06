"""Compile the kernels for sm_90 in every autotune config at the ViT-L layouts in fp16 (ATM: the
decoder's 16 heads of 32; QD: the backbone's heads of 64; the post-process) and print, per config, what
its machine code shows: registers, stack (local memory: spills), and the tensor-core
instructions (HGMMA: Hopper's wgmma; HMMA: the older mma.sync path). No GPU needed. Run without
``TRITON_INTERPRET`` (``test_kernels_compile.py`` does)."""
import json
import re
import subprocess
import tempfile
from pathlib import Path

import triton

from compile_fp64_scalars import KERNELS, compile_for_sm90

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def machine_code(kernel, consts, config, tmp: Path) -> dict:
    fn = kernel.fn
    compiled = compile_for_sm90(kernel, {**consts, **config.kwargs},  # the config's blocks over the layout's
                                num_warps=config.num_warps, num_stages=config.num_stages)
    cubin = tmp / f"{fn.__name__}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run([TOOLS / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([TOOLS / "nvdisasm", cubin], capture_output=True, text=True, check=True).stdout
    regs, stack = map(int, re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
    return {"kernel": fn.__name__, "blocks": config.kwargs, "warps": config.num_warps, "stages": config.num_stages,
            "registers": regs, "stack": stack, "local_loads": len(re.findall(r"\bLDL\b", sass)),
            "hgmma": len(re.findall(r"\bHGMMA\b", sass)), "hmma": len(re.findall(r"\bHMMA\b", sass))}


def main():
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps([machine_code(kernel, consts, config, Path(tmp))
                          for kernel, consts in KERNELS for config in kernel.configs]))


if __name__ == "__main__":
    main()
